"""The simulated MEA: a culture on an electrode array, an amplifier clock and a stimulator.

:class:`SimulatedMEA` is the core that every simulated device is built on: ``sim://``
(:mod:`drivers.sim`, a thin Driver over it), the served firmware (:mod:`hardware_sim.device`)
and the fake RHX (:mod:`hardware_sim.intan_rhx`). It runs in lockstep with its reader:
:meth:`SimulatedMEA.read` generates the next block on demand, so the same seed and the
same patterns at the same points of the stream give the same blocks, paced in real time
or not (:meth:`SimulatedMEA.set_fast`). A pattern without ``at_sample`` runs at the start
of the next block not yet returned or, in real time, if the reader has fallen a block or
more behind the wall clock, at the block the device is acquiring then (so a slow reader's
latency shows); :meth:`SimulatedMEA.earliest_stim_sample` says which. A pattern with
``at_sample`` runs exactly there, or is dropped (reported, not run) if the device is
already past it. The :class:`StimReport` of a pattern comes out of ``read()`` just before
the block that holds its first pulse.

With ``raw=0`` the device streams spikes only, as a rig that detects on board: each
interval gives the spikes of the culture's units as electrode events (an event wherever a
unit's amplitude reaches ``threshold_sd`` times the noise, see
:meth:`ElectrodeArray.events`) and then a :class:`Tick`; no voltage is rendered, which is
the fast way to dry-run long protocols. ``drop`` loses raw blocks only.

Options (:data:`OPTIONS`, given as a ``sim://?seed=3&noise_uV=5`` URL's query):
``seed`` must be >= 0. ``rate`` is 10000 to 100000 Hz: real MEA amplifiers sample at
10-50 kHz, and the engine's default 300-3000 Hz spike band needs a rate above 6000 Hz
(twice its upper edge). A bad option, or a call out of order, raises :class:`SimError`.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from hardware_sim.cultures import CULTURES, Culture, culture_class
from hardware_sim.cultures.base import StimEvent
from mea_control.layouts import DEFAULT_LAYOUT, LayoutError, load_layout
from mea_control.types import (
    Block,
    Layout,
    SpikeEvents,
    StimPattern,
    StimPulse,
    StimReport,
    Tick,
    parse_value,
)

NAME = "mea-control simulator"
UV_PER_BIT = 0.195
#: the simulated device's own stimulation limits, by SafetyLimits field name
DEVICE_LIMITS: dict[str, float] = {"max_current_uA": 50.0, "max_voltage_mV": 1500.0}
STIM_MODES = ("current", "voltage")
_MAX_BLOCK_S = 0.1
#: Sample rates the simulator accepts, Hz (real MEA amplifiers: 10-50 kHz).
MIN_RATE_HZ = 10_000.0
MAX_RATE_HZ = 100_000.0

#: What read() hands out.
Item = Block | SpikeEvents | StimReport | Tick
#: One pulse as the culture receives it: (sample, ticket, channel, pulse).
PulseRan = tuple[int, int, int, StimPulse]


class SimError(Exception):
    """A bad simulator option or a call out of order; the message is one line."""


class Option(NamedTuple):
    """One option of the simulator (a ``sim://`` URL parameter)."""

    type: type
    default: Any
    help: str = ""


OPTIONS: dict[str, Option] = {
    "seed": Option(int, 0, "random seed (>= 0) of the culture, the noise and the drops"),
    "layout": Option(str, DEFAULT_LAYOUT, "layout name or probeinterface JSON path"),
    "rate": Option(float, 25000.0, "sample rate, 10000 to 100000 Hz"),
    "noise_uV": Option(float, 7.0, "rms noise per channel, uV"),
    "drop": Option(float, 0.0, "probability of losing a block (to test gap handling)"),
    "culture": Option(str, "network", "culture model: " + ", ".join(CULTURES)),
    "bursts": Option(bool, True, "network bursts on (off: spontaneous + evoked only)"),
    "inhibition": Option(float, 1.0, "network culture: inhibitory synapse scale (0.2 "
                         "bicuculline-like, 2 diazepam-like)"),
    "truth": Option(bool, False, "keep every spike for ground_truth() (tests, benchmarks; "
                    "memory grows with time)"),
    "raw": Option(bool, True, "stream raw voltage (off: spikes only, detected on board)"),
    "threshold_sd": Option(float, 5.0, "spikes-only detection threshold, x noise_uV"),
}


def options_from_url(url: str) -> dict[str, Any]:
    """Every option of a ``sim://`` URL: those its query sets, the defaults for the rest."""
    parts = urlsplit(url)
    if "://" not in url or parts.scheme != "sim":
        raise SimError(f"the simulator runs sim:// URLs, not {url!r}")
    options = {name: option.default for name, option in OPTIONS.items()}
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key not in OPTIONS:
            raise SimError(
                f"unknown parameter {key!r} for sim://; accepted: {', '.join(sorted(OPTIONS))}"
            )
        kind = OPTIONS[key].type
        try:
            options[key] = parse_value(kind, text)
        except ValueError:
            raise SimError(
                f"bad value {text!r} for URL parameter {key!r}: expected {kind.__name__}"
            ) from None
    return options


class SimulatedMEA:
    """A simulated 25 kHz MEA with a living culture on it (by default a spiking network).

    Lifecycle: open -> start -> read/admit ... -> stop -> close, as a Driver's.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        """``options``: every name of :data:`OPTIONS`; checked here (SimError)."""
        check_options(options)
        self.options = options
        self.layout = _load_layout(options["layout"])
        self.sample_rate = float(options["rate"])
        self.raw = bool(options["raw"])
        self._lock = threading.Lock()
        self._fast = False
        #: Called (lock held) with every pulse the moment the culture receives it, as
        #: (sample, ticket, channel, StimPulse) tuples: the device's own record of what ran.
        self.pulse_listener: Callable[[list[PulseRan]], None] | None = None
        self._state = "closed"

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Build the culture and the electrodes (their numba kernels are imported here, not
        with this module: naming the simulator's options costs nothing)."""
        if self._state != "closed":
            return
        from hardware_sim.cultures.network import NetworkParams
        from hardware_sim.electrodes import ElectrodeArray

        opts = self.options
        layout, rate = self.layout, self.sample_rate
        seq_culture, seq_electrodes, seq_drop = np.random.SeedSequence(opts["seed"]).spawn(3)
        culture_cls = culture_class(opts["culture"])
        extra = {}
        if opts["inhibition"] != 1.0:
            extra["params"] = NetworkParams(inhibition=opts["inhibition"])
        self.culture: Culture = culture_cls(
            layout, rate, seed=seq_culture, bursts=opts["bursts"], keep_log=opts["truth"], **extra
        )
        self.electrodes = ElectrodeArray(
            layout,
            self.culture.unit_positions_um,
            rate,
            uV_per_bit=UV_PER_BIT,
            noise_uV=opts["noise_uV"],
            seed=seq_electrodes,
            max_block_samples=int(rate * _MAX_BLOCK_S),
        )
        self._rng_drop = np.random.default_rng(seq_drop)
        self._block_samples = int(round(rate / 1000.0))
        self._next_sample = 0
        # made, not yet due: (stop sample, what read() returns for it, in order)
        self._ready: tuple[int, list[Item]] | None = None
        self._later = SpikeEvents.empty()  # spikes-only: events whose trough is in a later block
        self.threshold_sd = float(opts["threshold_sd"])
        self._promised: int | None = None  # offered by earliest_stim_sample()
        self._seq = 0
        self._ticket = 0
        self._pulses: list[PulseRan] = []
        self._trains: dict[int, int] = {}  # ticket -> train_count, for trains with pulses to run
        self._unreported: list[tuple[int, int]] = []  # (first pulse sample, ticket)
        self._reports: deque[StimReport] = deque()  # for read(), before the next block
        #: wall-clock time (time.monotonic) of sample 0, from start()
        self.t0 = 0.0
        self._state = "open"

    def close(self) -> None:
        self._state = "closed"

    def start(self, block_samples: int | None = None) -> None:
        if self._state == "closed":
            raise SimError("sim:// start() before open()")
        if self._state != "open":
            raise SimError("sim:// can be started once per open(); open a new driver")
        if block_samples is not None:
            limit = int(self.sample_rate * _MAX_BLOCK_S)
            if not 1 <= int(block_samples) <= limit:
                raise SimError(f"sim:// block size {block_samples} must be 1 to {limit} samples")
            self._block_samples = int(block_samples)
        self.t0 = time.monotonic()
        self._state = "running"

    def stop(self) -> None:
        if self._state == "running":
            self._state = "stopped"

    def set_fast(self, fast: bool) -> None:
        """Run as fast as possible (True) or paced by the wall clock (False); same blocks."""
        if not fast and self._fast and self._state == "running":
            # resume pacing from here: the next block is due one block from now
            self.t0 = time.monotonic() - self._next_sample / self.sample_rate
        self._fast = bool(fast)

    # -- streaming -------------------------------------------------------------------------

    @property
    def block_samples(self) -> int:
        return self._block_samples

    @property
    def next_sample(self) -> int:
        """Start of the next block not yet returned: where a pattern sent now would run."""
        return self._next_sample

    def read(self, timeout: float | None = None) -> Item | None:
        """The next StimReport or Block; None once stopped or if no block is due in ``timeout``."""
        if self._state == "stopped":
            return None
        if self._state != "running":
            raise SimError("sim:// read() before start()")
        rate = self.sample_rate
        while True:
            with self._lock:
                if self._ready is None:
                    # Make the block now and hand it over when it is due, as a device
                    # whose data are ready the moment their last sample is taken, after
                    # the reports due before it. A pattern reported executed has its
                    # pulses in this block already: an abort cannot un-run it.
                    reports: list[Item] = []
                    while (report := self._due_report()) is not None:
                        reports.append(report)
                    start = self._next_sample
                    stop = start + self._block_samples
                    block = self._generate(start, stop, self._take_pulses(stop))
                    self._ready = (stop, reports + block)
                stop, items = self._ready
            if not self._fast:
                wait = self.t0 + stop / rate - time.monotonic()
                if wait > 0:
                    if timeout is not None and wait > timeout:
                        time.sleep(max(0.0, timeout))
                        return None
                    _sleep_until(time.monotonic() + wait)
            with self._lock:
                item = items.pop(0) if items else None
                if not items:
                    self._ready = None
            if item is not None:
                return item

    def _due_report(self) -> StimReport | None:
        """A report that must precede the next block, if any."""
        if self._reports:
            return self._reports.popleft()
        if self._unreported and self._unreported[0][0] < self._next_sample + self._block_samples:
            sample, ticket = self._unreported.pop(0)
            return StimReport(ticket, sample)
        return None

    def _take_pulses(self, stop: int) -> list[StimEvent]:
        if not self._pulses or self._pulses[0][0] >= stop:
            return []
        i = bisect.bisect_left(self._pulses, (stop,))
        taken = self._pulses[:i]
        del self._pulses[:i]
        if self._trains:
            left = {ticket for _, ticket, _, _ in self._pulses}
            for ticket in [t for t in self._trains if t not in left]:
                del self._trains[ticket]
        if self.pulse_listener is not None:
            self.pulse_listener(taken)
        return [(sample, channel, pulse) for sample, _, channel, pulse in taken]

    def _generate(self, start: int, stop: int, stims: list[StimEvent]) -> list[Item]:
        """What the device delivers for ``[start, stop)``: a Block, or spikes and a Tick."""
        spikes, units = self.culture.advance(start, stop - start, stims)
        self._next_sample = stop
        el = self.electrodes
        if not self.raw:
            found = el.events(spikes, units, self.threshold_sd * self.options["noise_uV"])
            events = SpikeEvents.concat([self._later, found])
            self._later = events.between(stop, np.iinfo(np.int64).max)  # troughs after the block
            events = events.between(0, stop)
            return ([events] if len(events) else []) + [Tick(stop)]
        data = el.render(start, stop - start, spikes, units, stims)
        seq = self._seq
        self._seq += 1
        if self.options["drop"] > 0.0 and self._rng_drop.random() < self.options["drop"]:
            return []
        return [Block(start, data, UV_PER_BIT, seq)]

    def set_threshold(self, threshold_sd: float) -> None:
        """Spikes-only mode: report spikes reaching ``threshold_sd`` x the noise from now on."""
        check_threshold(threshold_sd)
        self.threshold_sd = float(threshold_sd)

    # -- stimulation -----------------------------------------------------------------------

    def stimulate(self, pattern: StimPattern) -> int:
        """Queue a pattern: at its ``at_sample``, or as soon as possible. Returns its ticket;
        a refusal is reported through :meth:`read`."""
        ticket, at, _, problem = self.admit(pattern)
        if problem:
            with self._lock:
                self._reports.append(StimReport(ticket, at, False, problem))
        return ticket

    def admit(self, pattern: StimPattern) -> tuple[int, int, str, str]:
        """Queue ``pattern`` unless the device refuses it: (ticket, sample, kind, message).

        ``kind`` is "" when queued, else why not: "electrode", "mode", "limit" or "late".
        A refusal is not reported through :meth:`read` (:meth:`stimulate` does that);
        firmware that answers refusals at once uses this directly.
        """
        if self._state in ("closed", "stopped"):
            raise SimError(f"sim:// cannot stimulate: the device is {self._state}")
        with self._lock:
            self._ticket += 1
            ticket = self._ticket
            earliest = max(self._next_sample, self._device_block_start())
            promised, self._promised = self._promised, None
            if promised is not None and pattern.at_sample == promised >= self._next_sample:
                earliest = promised  # the slot earliest_stim_sample() offered is kept
            at = earliest if pattern.at_sample is None else int(pattern.at_sample)
            kind, problem = self._check(pattern)
            if not kind and at < earliest:
                kind = "late"
                problem = f"late: asked for sample {at}, the device is at sample {earliest}"
            if kind:
                return ticket, at, kind, problem
            for offset in pattern.pulse_offsets(self.sample_rate):
                for channel, pulse in pattern.pulses:
                    bisect.insort(self._pulses, (at + offset, ticket, channel, pulse))
            if pattern.train_count > 1:
                self._trains[ticket] = pattern.train_count
            bisect.insort(self._unreported, (at, ticket))
        return ticket, at, "", ""

    def earliest_stim_sample(self) -> int:
        """Where a pattern sent now without ``at_sample`` would run.

        The sample is kept for the next :meth:`admit` that asks for it, so the
        time the caller spends between the two calls (the safety gate) does not
        make the pattern late.
        """
        with self._lock:
            self._promised = max(self._next_sample, self._device_block_start())
            return self._promised

    def _device_block_start(self) -> int:
        """In real time, the start of the block the device is acquiring by the wall clock.

        A reader that keeps up sends its patterns within one block of the last
        block's end, so they run at the next block either way and real time
        matches fast mode; a reader that lags has its patterns run late, as on
        a real device.
        """
        if self._fast or self._state != "running":
            return 0
        elapsed = int((time.monotonic() - self.t0) * self.sample_rate)
        return elapsed // self._block_samples * self._block_samples

    def _check(self, pattern: StimPattern) -> tuple[str, str]:
        """Why the device refuses ``pattern``: (kind, message), kind "electrode", "mode" or
        "limit"; ("", "") if it does not."""
        layout = self.layout
        for channel, pulse in pattern.pulses:
            if not 0 <= channel < layout.n_electrodes:
                return "electrode", f"no channel {channel} on {layout.name}"
            if not layout.can_stimulate[channel]:
                label = layout.labels[channel]
                return "electrode", f"electrode {label} (channel {channel}) cannot stimulate"
            if pulse.mode not in STIM_MODES:
                return "mode", f"stimulation mode {pulse.mode!r} is not supported"
            key = "max_current_uA" if pulse.mode == "current" else "max_voltage_mV"
            if pulse.peak_amplitude > DEVICE_LIMITS[key]:
                return "limit", (
                    f"{pulse.peak_amplitude:g} {pulse.unit} exceeds the device limit "
                    f"{key}={DEVICE_LIMITS[key]:g}"
                )
        return "", ""

    def abort_stimulation(self) -> None:
        """Drop every queued pulse. Patterns that had not started are reported as not run;
        trains that had started are reported cut, with the number of pulses that ran."""
        with self._lock:
            unstarted = {ticket for _, ticket in self._unreported}
            cut: dict[int, set[int]] = {}  # started train -> samples of the pulses dropped
            for sample, ticket, _, _ in self._pulses:
                if ticket not in unstarted:
                    cut.setdefault(ticket, set()).add(sample)
            self._pulses.clear()
            for sample, ticket in self._unreported:
                self._reports.append(StimReport(ticket, sample, executed=False, reason="aborted"))
            self._unreported.clear()
            for ticket, samples in sorted(cut.items()):
                ran = self._trains[ticket] - len(samples)
                self._reports.append(StimReport(ticket, min(samples), True, "aborted", ran))
            self._trains.clear()

    # -- ground truth ----------------------------------------------------------------------

    def ground_truth(self) -> tuple[SpikeEvents, np.ndarray]:
        """Every spike generated so far: (trough sample, nearest channel, peak uV) and unit ids.

        Only a device opened with ``truth=1`` keeps them (the log grows with time).
        """
        if not self.options["truth"]:
            raise SimError("sim:// keeps no ground truth: open it with truth=1")
        samples, units = self.culture.spike_log()
        el = self.electrodes
        events = SpikeEvents(
            samples + el.trough_offset, el.unit_home[units], -el.unit_peak_uV[units]
        )
        return events, units


#: The last stretch of a wait is spun, not slept: waking from sleep costs the
#: loop hundreds of microseconds (cold caches, scheduler), a real device's data
#: arrives on a thread that is already awake.
_SPIN_S = 0.0003


def _sleep_until(deadline: float) -> None:
    rest = deadline - time.monotonic()
    if rest > _SPIN_S:
        time.sleep(rest - _SPIN_S)
    while time.monotonic() < deadline:
        pass


def check_options(options: dict[str, Any]) -> None:
    """SimError, one line, for the first option out of range (the layout is checked
    when the device loads it)."""
    rate, noise, drop = options["rate"], options["noise_uV"], options["drop"]
    if options["seed"] < 0:
        raise SimError(f"sim:// seed={options['seed']} is out of range; use a seed >= 0")
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise SimError(
            f"sim:// rate={rate:g} Hz is out of range; use {MIN_RATE_HZ:g} to "
            f"{MAX_RATE_HZ:g} Hz (real MEA amplifiers sample at 10-50 kHz, and the "
            "default 300-3000 Hz spike band needs more than 6000 Hz)"
        )
    if not 0.0 <= noise <= 1000.0:
        raise SimError(f"sim:// noise_uV={noise} is out of range; use 0 to 1000")
    if not 0.0 <= drop < 1.0:
        raise SimError(f"sim:// drop={drop} is out of range; use 0 <= drop < 1")
    check_threshold(options["threshold_sd"])
    if not 0.0 <= options["inhibition"] <= 10.0:
        raise SimError(f"sim:// inhibition={options['inhibition']} is out of range; use 0 to 10")
    if options["inhibition"] != 1.0 and options["culture"] != "network":
        raise SimError("sim:// inhibition applies to culture=network only")
    if options["culture"] not in CULTURES:
        raise SimError(
            f"sim:// has no culture {options['culture']!r}; accepted: " + ", ".join(CULTURES)
        )


def check_threshold(threshold_sd: float) -> None:
    """Spikes-only detection threshold, in noise standard deviations: (0, 100]."""
    if not 0.0 < threshold_sd <= 100.0:
        raise SimError(
            f"sim:// threshold_sd={threshold_sd} is out of range; use 0 to 100 (x noise_uV)"
        )


def _load_layout(name: str) -> Layout:
    try:
        return load_layout(name)
    except LayoutError as exc:
        raise SimError(f"sim:// layout: {exc}") from None
