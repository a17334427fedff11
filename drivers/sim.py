"""``sim://``: the simulated MEA (:mod:`hardware_sim.mea`) in-process, as a Driver.

The device itself (its clock in lockstep with the reader, paced in real time or not,
stimulation booked where it will run, blocks or spikes-only events rendered from the
culture) is :class:`hardware_sim.mea.SimulatedMEA`; this adapter gives it the Driver
interface: URL parameters (:data:`hardware_sim.mea.OPTIONS`, e.g.
``sim://?seed=3&noise_uV=5``), :class:`DeviceInfo`, and DriverError for the simulator's
errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from hardware_sim import mea
from hardware_sim.mea import OPTIONS, PulseRan, SimError, SimulatedMEA
from mea_control.driver import Driver, DriverError, Event, Param
from mea_control.types import Capabilities, DeviceInfo, SpikeEvents, StimPattern


class _DeviceErrors:
    """``with _DEVICE_ERRORS:`` turns the simulator's SimError into a DriverError."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, trace: object) -> None:
        if isinstance(exc, SimError):
            raise DriverError(str(exc)) from None


_DEVICE_ERRORS = _DeviceErrors()


class SimDriver(Driver):
    """A simulated 25 kHz MEA with a living culture on it (by default a spiking network)."""

    scheme: ClassVar[str] = "sim"
    params: ClassVar[dict[str, Param]] = {name: Param(*option) for name, option in OPTIONS.items()}

    def __init__(self, url: str, options: dict[str, Any], location: str = "") -> None:
        super().__init__(url, options, location)
        with _DEVICE_ERRORS:
            #: the simulated device this driver runs
            self.mea = SimulatedMEA(options)
        #: what open() will report: the simulator knows it before it runs
        self.described = DeviceInfo(
            name=mea.NAME,
            n_channels=self.mea.layout.n_electrodes,
            sample_rate=self.mea.sample_rate,
            uV_per_bit=mea.UV_PER_BIT,
            layout=self.mea.layout,
            capabilities=Capabilities(
                raw_stream=self.mea.raw,
                onboard_detection=not self.mea.raw,
                stim_modes=mea.STIM_MODES,
                scheduled_stim=True,
            ),
            limits=dict(mea.DEVICE_LIMITS),
            simulated=True,
        )
        self._info: DeviceInfo | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        self.mea.open()
        self._info = self.described

    def close(self) -> None:
        self.mea.close()

    def start(self, block_samples: int | None = None) -> None:
        with _DEVICE_ERRORS:
            self.mea.start(block_samples)

    def stop(self) -> None:
        self.mea.stop()

    def set_fast(self, fast: bool) -> None:
        """Run as fast as possible (True) or paced by the wall clock (False); same blocks."""
        self.mea.set_fast(fast)

    # -- streaming -------------------------------------------------------------------------

    @property
    def block_samples(self) -> int:
        return self.mea.block_samples

    @property
    def next_sample(self) -> int:
        """Start of the next block not yet returned: where a pattern sent now would run."""
        return self.mea.next_sample

    @property
    def pulse_listener(self) -> Callable[[list[PulseRan]], None] | None:
        """The device's own record of what ran: see :attr:`SimulatedMEA.pulse_listener`."""
        return self.mea.pulse_listener

    @pulse_listener.setter
    def pulse_listener(self, listener: Callable[[list[PulseRan]], None] | None) -> None:
        self.mea.pulse_listener = listener

    def read(self, timeout: float | None = None) -> Event | None:
        """The next StimReport or Block; None once stopped or if no block is due in ``timeout``."""
        try:  # not _DEVICE_ERRORS: a try costs nothing on this path, once a block
            return self.mea.read(timeout)
        except SimError as exc:
            raise DriverError(str(exc)) from None

    # -- stimulation -----------------------------------------------------------------------

    def stimulate(self, pattern: StimPattern) -> int:
        """Queue a pattern: at its ``at_sample``, or as soon as possible. Returns its ticket."""
        with _DEVICE_ERRORS:
            return self.mea.stimulate(pattern)

    def earliest_stim_sample(self) -> int:
        """Where a pattern sent now without ``at_sample`` would run (kept for it)."""
        return self.mea.earliest_stim_sample()

    def abort_stimulation(self) -> None:
        """Drop every queued pulse. Patterns that had not started are reported as not run;
        trains that had started are reported cut, with the number of pulses that ran."""
        self.mea.abort_stimulation()

    # -- ground truth ----------------------------------------------------------------------

    def ground_truth(self) -> tuple[SpikeEvents, np.ndarray]:
        """Every spike generated so far: see :meth:`SimulatedMEA.ground_truth` (``truth=1``)."""
        with _DEVICE_ERRORS:
            return self.mea.ground_truth()
