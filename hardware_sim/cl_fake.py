"""A stand-in for the ``cl`` Python API (Cortical Labs CL1), for tests and demos in Python 3.11.

It follows the API published in cl-sdk 1.0.0 (PyPI ``cl-sdk``, Python >= 3.12): the same
names, positional/keyword signatures, units and refusals for what ``drivers.cl_api``
uses - :func:`open`, ``Neurons.read/timestamp/loop/stim/interrupt``, :class:`ChannelSet`,
:class:`StimDesign`, :class:`BurstDesign`, ``LoopTick.analysis`` with :class:`Spike` and
:class:`Stim`, and the error classes. It is written for mea-control, not taken from
cl-sdk: behind the API is the project's simulated culture (its quick-to-build Poisson
culture, :class:`~hardware_sim.cultures.poisson_burst.PoissonBurstCulture`, rendered by
:class:`~hardware_sim.electrodes.ElectrodeArray`), so stimulation evokes spikes.

As in cl-sdk: 64 channels at 25 kHz, int16 frames at 0.195 uV a unit, timestamps counted
in frames from 0 at :func:`open`; stimulation timing on a 20 us grid (``lead_time_us`` >=
80); a stim on a grounded channel (0, 7, 56, 63) is dropped without a word; a stim on a
busy channel waits for it; wall-clock time unless ``CL_SDK_ACCELERATED_TIME=1``.

Tests make it misbehave with :func:`configure` (a device that fails to open, is slow to,
stops sending, or is lost mid-run), and read the device's own record of what ran:
``Neurons.delivered`` (every pulse, as the culture got it) and ``Neurons.interrupts`` (the
frame from which each ``interrupt()`` cancelled). To use it as ``cl``, put it in
``sys.modules["cl"]``.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware_sim.cultures.poisson_burst import PoissonBurstCulture
from hardware_sim.electrodes import ElectrodeArray
from mea_control.layouts import load_layout
from mea_control.types import StimPulse

FRAMES_PER_SECOND = 25_000
CHANNELS = 64
UV_PER_SAMPLE_UNIT = 0.195
GROUNDED = (0, 7, 56, 63)
_STEP_US = 20  # stimulation timing grid
_MIN_LEAD_US = 80
_FRAME_US = 1_000_000 // FRAMES_PER_SECOND  # 40
_BUFFER_FRAMES = 5 * FRAMES_PER_SECOND  # how far back read() can reach
_SPIKE_SD = 5.0  # on-board detection threshold, x noise


# -- errors (as cl.error) -----------------------------------------------------------------------
class ControlRequestError(RuntimeError):
    """Another process has control of the device."""


class ControlRequiredError(RuntimeError):
    """The call needs control of the device."""


class TransactionRejected(RuntimeError):
    """The system rejected a stimulation."""


class ChannelQueueFull(TransactionRejected):
    """A channel has too many operations queued."""


# -- value types --------------------------------------------------------------------------------
class Spike:
    """A spike the device detected: the triggering frame, its channel, 75 uV samples around it
    (25 before, 50 after; here the trough at index 25 and zeros elsewhere)."""

    def __init__(self, timestamp: int, channel: int, channel_mean_sample: float,
                 samples: np.ndarray) -> None:
        self.timestamp = int(timestamp)
        self.channel = int(channel)
        self.channel_mean_sample = float(channel_mean_sample)
        self.samples = samples

    def __repr__(self) -> str:
        return f"Spike(timestamp={self.timestamp}, channel={self.channel})"


class Stim:
    """A stimulation pulse the device delivered."""

    def __init__(self, timestamp: int, channel: int) -> None:
        self.timestamp = int(timestamp)
        self.channel = int(channel)

    def __repr__(self) -> str:
        return f"Stim(timestamp={self.timestamp}, channel={self.channel})"


class DetectionResult:
    """Spikes and stims of the frames ``[start_timestamp, stop_timestamp)``."""

    def __init__(self, start_timestamp: int, stop_timestamp: int,
                 spikes: list[Spike] | None = None, stims: list[Stim] | None = None) -> None:
        self.start_timestamp = start_timestamp
        self.stop_timestamp = stop_timestamp
        self.spikes = spikes or []
        self.stims = stims or []


class ChannelSet:
    """Channels to stimulate: ``ChannelSet(8, 9)`` or ``ChannelSet([8, 9])``."""

    def __init__(self, *channels: int | Iterable[int]) -> None:
        self._channels = np.zeros(CHANNELS, bool)
        for item in channels:
            for ch in [item] if isinstance(item, int) else _ints(item):
                if not 0 <= ch < CHANNELS:
                    raise ValueError(f"Channel number {ch} is out of range")
                self._channels[ch] = True

    def __iter__(self) -> Iterator[int]:
        return iter(int(ch) for ch in np.flatnonzero(self._channels))

    def __or__(self, other: ChannelSet) -> ChannelSet:
        return ChannelSet(list(self) + list(other))

    def __invert__(self) -> ChannelSet:
        return ChannelSet([ch for ch in range(CHANNELS) if not self._channels[ch]])

    def __repr__(self) -> str:
        return f"ChannelSet({', '.join(map(str, self))})"


def _ints(items: Any) -> list[int]:
    if not isinstance(items, Iterable):
        raise TypeError("channels must be an int, list or tuple")
    out = list(items)
    if not all(isinstance(ch, int) for ch in out):
        raise TypeError("Channels within tuples and lists must be ints")
    return out


class StimDesign:
    """A mono-, bi- or triphasic pulse: ``StimDesign(d1, i1[, d2, i2[, d3, i3]])``, durations
    in us (>= 20, multiples of 20), currents in uA (|i| <= 3, polarity alternating), at most
    3 nC a phase; ValueError otherwise."""

    def __init__(self, *args: float) -> None:
        if len(args) not in (2, 4, 6):
            raise ValueError("StimDesign requires 2, 4, or 6 arguments.")
        durations, currents = args[0::2], args[1::2]
        for i, (d, c) in enumerate(zip(durations, currents, strict=True)):
            if abs(d * c) > 3000.0:
                raise ValueError(f"Charge injection of {d} us x {c} uA = {d * c / 1000} nC "
                                 "cannot be greater than 3.0 nC.")
            if not abs(c) <= 3.0:
                raise ValueError(f"Stim current of {c:.3f} uA is beyond +-3.000 uA.")
            if i and np.sign(currents[i - 1]) == np.sign(c):
                raise ValueError(f"current_uA_{i} and current_uA_{i + 1} must have different "
                                 "polarities")
            if d < _STEP_US:
                raise ValueError(f"duration_us_{i + 1} must be at least {_STEP_US}")
            if d % _STEP_US:
                raise ValueError(f"duration_us_{i + 1} must be evenly divisible by {_STEP_US}")
        self.duration_us = int(sum(durations))
        self._args = args

    def pulse(self) -> StimPulse:
        """The same pulse as the project's value type (for the simulated culture)."""
        return StimPulse("current", tuple(zip(self._args[0::2], self._args[1::2], strict=True)))

    def __repr__(self) -> str:
        return f"StimDesign{self._args}"


class BurstDesign:
    """``BurstDesign(count, hz)``: count pulses at hz (<= 200), the interval rounded to 20 us."""

    def __init__(self, burst_count: int, burst_hz: float, /) -> None:
        if not (isinstance(burst_count, int) and burst_count >= 0):
            raise ValueError("requires a unsigned integer for burst_count")
        if not isinstance(burst_hz, int | float):
            raise ValueError("requires a floating point number for burst_hz")
        if burst_hz < 0:
            raise ValueError("Burst frequency must be positive")
        if burst_hz > 200:
            raise ValueError("Burst frequency cannot be greater than 200Hz")
        self.burst_count = burst_count
        self.interval_us = int(1_000_000 / burst_hz / _STEP_US + 0.5) * _STEP_US if burst_hz else 0
        self._args = (burst_count, burst_hz)

    def __repr__(self) -> str:
        return f"BurstDesign{self._args}"


# -- misbehaviour for tests ---------------------------------------------------------------------
@dataclass
class Faults:
    open_error: Exception | None = None  #: raised by open()
    open_delay_s: float = 0.0  #: open() takes this long
    stall_after_s: float | None = None  #: device time stops here: no more frames
    lost_after_s: float | None = None  #: from here every call raises ConnectionError
    seed: int = 0


_faults = Faults()


def configure(**faults: Any) -> None:
    """Set how the next opened device misbehaves (see :class:`Faults`); no arguments: behave."""
    global _faults
    _faults = Faults(**faults)


# -- the device ---------------------------------------------------------------------------------
class Neurons:
    """The device: use it through :func:`open`."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._accelerated = os.getenv("CL_SDK_ACCELERATED_TIME", "0") == "1"
        layout = load_layout("grid8x8_200um")
        seq_culture, seq_el = np.random.SeedSequence(faults.seed).spawn(2)
        self._culture = PoissonBurstCulture(layout, FRAMES_PER_SECOND, seed=seq_culture,
                                       keep_log=False)
        self._array = ElectrodeArray(layout, self._culture.unit_positions_um, FRAMES_PER_SECOND,
                                     uV_per_bit=UV_PER_SAMPLE_UNIT, seed=seq_el,
                                     max_block_samples=2500)
        self._lock = threading.RLock()
        self._frames = np.zeros((_BUFFER_FRAMES, CHANNELS), np.int16)  # ring by timestamp
        self._made = 0  # frames rendered so far
        self._asked = 0  # accelerated time: the clock runs to what was asked for
        self._spikes: list[Spike] = []
        self._stims: list[Stim] = []
        #: every pulse delivered, as (frame, channel, StimPulse), in order: the device's record
        self.delivered: list[tuple[int, int, StimPulse]] = []
        #: for each interrupt(): the frame from which it cancelled queued stims
        self.interrupts: list[int] = []
        self._queue: list[tuple[int, int, StimDesign]] = []  # (internal ts, channel, design)
        self._free_at = np.zeros(CHANNELS, np.int64)  # internal ts (20 us) each channel is free
        self._loop_tick: int | None = None  # a loop body's causal timestamp, internal
        self._t0 = time.perf_counter()

    # -- time
    def get_channel_count(self) -> int:
        return CHANNELS

    def get_frames_per_second(self) -> int:
        return FRAMES_PER_SECOND

    def get_frame_duration_us(self) -> float:
        return 1e6 / FRAMES_PER_SECOND

    def timestamp(self) -> int:
        """The device's current frame."""
        now = self._asked if self._accelerated else int(
            (time.perf_counter() - self._t0) * FRAMES_PER_SECOND)
        f = self._faults
        if f.lost_after_s is not None and now >= f.lost_after_s * FRAMES_PER_SECOND:
            raise ConnectionError("connection to the CL1 device lost")
        if f.stall_after_s is not None:
            now = min(now, int(f.stall_after_s * FRAMES_PER_SECOND))
        return now

    def _wait_for(self, ts: int) -> None:
        if self._accelerated:
            self._asked = max(self._asked, ts)
        deadline = time.perf_counter() + 30.0
        while (now := self.timestamp()) < ts:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"Timeout waiting for timestamp {ts}")
            time.sleep(min((ts - now) / FRAMES_PER_SECOND, 0.05))

    # -- data
    def read(self, frame_count: int, from_timestamp: int | None = None, /, *,
             analysis: bool = False) -> np.ndarray | DetectionResult:
        """Frames ``[from, from + frame_count)`` (default from now), waiting for them."""
        start = self.timestamp() if from_timestamp is None else int(from_timestamp)
        stop = start + int(frame_count)
        if start < self.timestamp() - _BUFFER_FRAMES:
            raise Exception(f"Requested read from past timestamp (from={start}) exceeds "
                            "buffer capacity")
        self._wait_for(stop)
        self._render_to(stop)
        if analysis:
            return DetectionResult(start, stop, _between(self._spikes, start, stop),
                                   _between(self._stims, start, stop))
        return self._frames[np.arange(start, stop) % _BUFFER_FRAMES].copy()

    def _render_to(self, stop: int) -> None:
        with self._lock:
            while self._made < stop:
                start = self._made
                end = min(stop, start + 2500)
                due = [(ts, ch, d) for ts, ch, d in self._queue if ts // 2 < end]
                self._queue = [q for q in self._queue if q[0] // 2 >= end]
                # a stim sent after its frames were rendered (a read ahead) runs at once
                stims = [(max(ts // 2, start), ch, d.pulse()) for ts, ch, d in due]
                samples, units = self._culture.advance(start, end - start, stims)
                data = self._array.render(start, end - start, samples, units, stims)
                self._frames[np.arange(start, end) % _BUFFER_FRAMES] = data
                events = self._array.events(samples, units,
                                            _SPIKE_SD * self._array.noise_uV)
                for ts, ch, amp in zip(events.sample.tolist(), events.channel.tolist(),
                                       events.amplitude_uV.tolist(), strict=True):
                    shape = np.zeros(75, np.float32)
                    shape[25] = amp
                    self._spikes.append(Spike(ts, ch, amp / 75, shape))
                self._stims += [Stim(ts, ch) for ts, ch, _ in stims]
                self.delivered += stims
                self._made = end
                for kept in (self._spikes, self._stims):
                    old = bisect.bisect_left(kept, end - _BUFFER_FRAMES, key=_timestamp)
                    if old > 1000:
                        del kept[:old]

    # -- stimulation
    def _command_timestamp(self) -> int:
        """The causal time of a command, internal (20 us): a loop body's tick, else now."""
        if self._loop_tick is not None:
            return self._loop_tick
        return max(self.timestamp(), self._made) * 2

    def stim(self, channel_set: ChannelSet | int, stim_design: StimDesign | float, /,
             burst_design: BurstDesign | None = None, lead_time_us: int = 80) -> None:
        """Queue ``stim_design`` on the channels, ``lead_time_us`` after the causal time."""
        channels = _channel_list(channel_set)
        if isinstance(stim_design, int | float):
            stim_design = StimDesign(160, -stim_design, 160, stim_design)
        if not isinstance(stim_design, StimDesign):
            raise ValueError(f"stim_design must be StimDesign object or a float, not "
                             f"{type(stim_design).__name__}")
        if burst_design is not None and not isinstance(burst_design, BurstDesign):
            raise ValueError(f"burst_design must be a BurstDesign object, not "
                             f"{type(burst_design).__name__}")
        if lead_time_us < _MIN_LEAD_US:
            raise ValueError(f"lead_time_us must be at least {_MIN_LEAD_US}")
        if lead_time_us % _STEP_US:
            raise ValueError(f"lead_time_us must be evenly divisible by {_STEP_US}")
        if burst_design is not None and burst_design.interval_us < (
                _MIN_LEAD_US + stim_design.duration_us):
            raise ValueError(f"Burst interval {burst_design.interval_us} us must be at least "
                             f"{_MIN_LEAD_US} us + duration {stim_design.duration_us}")
        count, interval_us = ((1, stim_design.duration_us + _MIN_LEAD_US) if burst_design is None
                              else (burst_design.burst_count, burst_design.interval_us))
        channels = [ch for ch in channels if ch not in GROUNDED]  # dropped without a word
        if not channels:
            return
        with self._lock:
            now = self._command_timestamp()
            begin = max([now, *(int(self._free_at[ch]) for ch in channels)])
            first = begin + lead_time_us // _STEP_US
            for ch in channels:
                if sum(1 for q in self._queue if q[1] == ch) + count > 1024:
                    raise ChannelQueueFull(f"channel {ch} has too many stims queued")
            for ch in channels:
                for i in range(count):
                    self._queue.append((first + i * interval_us // _STEP_US, ch, stim_design))
                self._free_at[ch] = first + count * interval_us // _STEP_US - 4
            self._queue.sort(key=lambda q: (q[0], q[1]))

    def interrupt(self, channel_set: ChannelSet | int, /) -> None:
        """Cancel the queued stims of these channels."""
        channels = set(_channel_list(channel_set))
        with self._lock:
            now = self._command_timestamp()
            self._queue = [q for q in self._queue if q[1] not in channels or q[0] < now]
            for ch in channels:
                self._free_at[ch] = now
            self.interrupts.append(now // 2)

    # -- the closed loop
    def loop(self, ticks_per_second: float, stop_after_seconds: float | None = None,
             stop_after_ticks: int | None = None, ignore_jitter: bool = False,
             jitter_tolerance_frames: int = 0) -> Loop:
        return Loop(self, ticks_per_second, stop_after_seconds, stop_after_ticks)

    def close(self) -> None:
        with self._lock:
            self._queue.clear()


def _timestamp(item: Spike | Stim) -> int:
    return item.timestamp


def _between(items: list[Any], start: int, stop: int) -> list[Any]:
    """The items (sorted by timestamp) with ``start <= timestamp < stop``."""
    lo = bisect.bisect_left(items, start, key=_timestamp)
    return items[lo:bisect.bisect_left(items, stop, lo=lo, key=_timestamp)]


def _channel_list(channel_set: ChannelSet | int) -> list[int]:
    if isinstance(channel_set, int):
        return list(ChannelSet(channel_set))
    if not isinstance(channel_set, ChannelSet):
        raise ValueError(f"channel_set must be ChannelSet object or an int, not "
                         f"{type(channel_set).__name__}")
    return list(channel_set)


class LoopTick:
    """One loop iteration: ``frames`` and ``analysis`` of the tick just ended."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.iteration = 0
        self.iteration_timestamp = 0
        self.iteration_next_timestamp = 0
        self.frames = np.empty((0, CHANNELS), np.int16)
        self.analysis = DetectionResult(0, 0)


class Loop:
    """Iterate to get a :class:`LoopTick` every ``frames_per_tick`` frames."""

    def __init__(self, neurons: Neurons, ticks_per_second: float,
                 stop_after_seconds: float | None, stop_after_ticks: int | None) -> None:
        if ticks_per_second <= 0:
            raise ValueError("ticks_per_second must be greater than zero")
        self._neurons = neurons
        self.frames_per_tick = int(FRAMES_PER_SECOND // ticks_per_second)
        self._stop_after = (int(np.ceil(stop_after_seconds * ticks_per_second))
                            if stop_after_seconds else stop_after_ticks or 2**63 - 1)
        self._tick = LoopTick(self)

    def __iter__(self) -> Generator[LoopTick]:
        n, tick, fpt = self._neurons, self._tick, self.frames_per_tick
        next_ts = n.timestamp()
        try:
            while tick.iteration < self._stop_after:
                stop = next_ts + fpt
                n._loop_tick = None
                result = n.read(fpt, next_ts, analysis=True)
                tick.frames = n.read(fpt, next_ts)
                tick.analysis = result
                tick.iteration_timestamp = stop
                tick.iteration_next_timestamp = stop + fpt
                n._loop_tick = stop * 2
                yield tick
                next_ts = stop
                tick.iteration += 1
        finally:
            n._loop_tick = None

    def stop(self) -> None:
        self._stop_after = self._tick.iteration


# -- module functions ---------------------------------------------------------------------------
@contextlib.contextmanager
def open(take_control: bool = True, wait_until_recordable: bool = True) -> Generator[Neurons]:
    """Connect to the device (here: start a simulated one) and yield it."""
    faults = _faults
    if faults.open_delay_s:
        time.sleep(faults.open_delay_s)
    if faults.open_error is not None:
        raise faults.open_error
    neurons = Neurons(faults)
    try:
        yield neurons
    finally:
        neurons.close()


def is_simulator() -> bool:
    return True


def get_system_attributes() -> dict[str, Any]:
    return {"project_id": "mea-control", "chip_id": "cl-fake-chip",
            "cell_batch_id": "cl-fake-cells", "plugin": {}, "system_id": "cl1-fake-000",
            "hostname": "localhost"}


def _compile_the_renderer() -> None:
    """Render 0.1 s of a culture once, at import: on a fresh checkout the renderer's numba
    functions compile then (several seconds), not while a device hands out its first
    frames, which a CL1 does at once after open()."""
    Neurons(Faults())._render_to(FRAMES_PER_SECOND // 10)


_compile_the_renderer()
