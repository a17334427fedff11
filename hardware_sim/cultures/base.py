"""What every simulated culture is: units on the array, advanced in sample time.

A :class:`Culture` is advanced in sample time, interval by interval, with the
pulses that the device executed in each interval; it returns the spikes its
units fired there (sample of spike initiation, unit id). Units have positions
in um on the array, so :mod:`hardware_sim.electrodes` can turn their spikes
into voltage. Every culture can keep a ground-truth log of its spikes for tests.
The pulse helpers say what a pulse delivers, in current and charge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from mea_control.types import Layout, StimPulse

#: Nominal electrode impedance used to turn voltage-mode pulses into current:
#: I[uA] = V[mV] / Z[kOhm]. 50 kOhm is typical of a 30 um TiN electrode at 1 kHz.
NOMINAL_IMPEDANCE_KOHM = 50.0

#: One executed pulse: (sample, channel, pulse).
StimEvent = tuple[int, int, StimPulse]


def pulse_phases_uA(pulse: StimPulse) -> tuple[tuple[float, float], ...]:
    """The phases as (duration_us, current_uA); voltage goes through the nominal impedance."""
    if pulse.mode == "current":
        return pulse.phases
    return tuple((d, a / NOMINAL_IMPEDANCE_KOHM) for d, a in pulse.phases)


def pulse_charge_nC(pulse: StimPulse) -> float:
    """Charge of the pulse's first non-zero phase, nC (the effective stimulus strength)."""
    for d, a in pulse_phases_uA(pulse):
        if a != 0.0:
            return abs(a) * d * 1e-3
    return 0.0


class Culture(ABC):
    """A population of units on the array, advanced interval by interval in sample time.

    Subclasses set ``unit_positions_um`` (n_units, 2) and implement :meth:`_advance`;
    those named in :data:`hardware_sim.cultures.CULTURES` are built as ``cls(layout, sample_rate,
    seed=SeedSequence, bursts=bool, keep_log=bool)`` by the simulated MEA. Their state
    advances on a tick of about 1 ms (``tick_samples``). ``keep_log`` keeps the ground
    truth (every spike, the burst onsets), which grows with time; the simulated MEA asks
    for it only with ``truth=1``.
    """

    def __init__(self, layout: Layout, sample_rate: float, keep_log: bool = True) -> None:
        self.layout = layout
        self.sample_rate = float(sample_rate)
        self.keep_log = keep_log
        self.tick_samples = max(1, int(round(self.sample_rate / 1000.0)))
        self.unit_positions_um = np.empty((0, 2), np.float64)
        self._next_sample = 0
        self._log_samples: list[np.ndarray] = []
        self._log_units: list[np.ndarray] = []

    @property
    def n_units(self) -> int:
        return int(self.unit_positions_um.shape[0])

    @property
    def next_sample(self) -> int:
        """The first sample the next :meth:`advance` must start at."""
        return self._next_sample

    def advance(
        self, start_sample: int, n_samples: int, stims: Sequence[StimEvent] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``[start_sample, start_sample + n_samples)`` with ``stims`` executed in it.

        Intervals must be consecutive. Returns (spike samples int64, unit ids int32),
        sorted by sample, all inside the interval.
        """
        if start_sample != self._next_sample:
            raise ValueError(
                f"culture advanced out of order: expected sample {self._next_sample}, "
                f"got {start_sample}"
            )
        stop = start_sample + n_samples
        for sample, _, _ in stims:
            if not start_sample <= sample < stop:
                raise ValueError(f"stimulus at sample {sample} outside [{start_sample}, {stop})")
        samples, units = self._advance(start_sample, stop, sorted(stims, key=_stim_key))
        self._next_sample = stop
        if self.keep_log and len(samples):
            self._log_samples.append(samples)
            self._log_units.append(units)
        return samples, units

    @abstractmethod
    def _advance(
        self, start: int, stop: int, stims: list[StimEvent]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Spikes in ``[start, stop)``; ``stims`` are sorted by sample."""

    def _check_log(self) -> None:
        if not self.keep_log:
            raise RuntimeError("this culture keeps no ground truth: make it with keep_log=True")

    def spike_log(self) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth: every spike so far as (samples int64, unit ids int32).

        Kept only with ``keep_log`` (it grows with time), as are the burst onsets;
        without it, asking for either is an error.
        """
        self._check_log()
        if not self._log_samples:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        return np.concatenate(self._log_samples), np.concatenate(self._log_units)


def _stim_key(stim: StimEvent) -> tuple[int, int]:
    return stim[0], stim[1]
