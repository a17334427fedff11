"""The live feed: rings the acquisition thread fills and the GUI reads, shareable across processes.

:class:`Rings` lays out one fixed-size buffer (plain memory, or a
``multiprocessing.shared_memory`` block so the GUI can draw from another
process) as rings of samples, spikes and pulses with a header of counters.
:class:`LiveFeed` is the engine sink that fills them: it files each block and
spike batch and every :data:`FLUSH_S` of device time copies them into the rings
and bumps the counters, nothing else, so the acquisition thread never waits for
the GUI and spends a few microseconds a block on it. Like every sink, it knows
the run only by what it is handed: the run's description at its start, the
data, and the events (the safety gate's state among them). The reader
(:class:`~mea_control.gui.live.LiveBuffers`) takes what is new about 30 times a
second and does all the reducing.

A run's start makes the header's ``RUN`` odd while the counters reset, then
even again (a sequence lock): a reader that sees it odd or changed retries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from mea_control.protocol import Protocol
from mea_control.sinks import RUN_ENDED, RunDescription, RunEvent, Sink, StimRecord
from mea_control.types import Block, DeviceInfo, SpikeEvents

#: Bytes of one ring buffer (samples get what the other rings leave).
RING_BYTES = 24 * 1024 * 1024
BLOCK_SLOTS = 8192
SPIKE_SLOTS = 1 << 17
STIM_SLOTS = 2048
#: Device time between two writes into the rings: the acquisition thread only files
#: each block and spike batch in between (a write costs about what one block's did).
FLUSH_S = 0.01
#: Events and decisions kept for the reader between two takes.
KEEP_NOTES = 1000
# Header fields (int64).
(RUN, NOW, T0, BLOCKS, SPIKES, STIMS, N_BLOCKS, SAMPLES_LOST, ARMED, RAW_END,
 BLOCK_SAMPLES) = range(11)
HEADER_FIELDS = 16
#: Pulse fates as stored in the stim ring.
STATUSES = ("executed", "dropped", "refused", "sent")


class Rings:
    """Rings of raw and filtered samples, block records, spikes and pulses in one buffer.

    ``buffer`` (RING_BYTES long, e.g. a SharedMemory's ``buf``) is laid out for
    ``n_channels``; without one, plain memory is allocated.
    """

    def __init__(self, n_channels: int, buffer: Any = None) -> None:
        if n_channels < 1:
            raise ValueError(f"a device needs at least one channel, not {n_channels}")
        self.n_channels = n_channels
        self.buffer = buffer if buffer is not None else bytearray(RING_BYTES)
        self._offset = 0
        self.header = self._take(np.int64, (HEADER_FIELDS,))
        self.blocks = self._take(np.int64, (BLOCK_SLOTS, 2))  # start sample, samples
        self.spike_sample = self._take(np.int64, (SPIKE_SLOTS,))
        self.spike_channel = self._take(np.int32, (SPIKE_SLOTS,))
        self.stim_at = self._take(np.int64, (STIM_SLOTS, 2))  # execution (-1: none), trigger
        self.stim_status = self._take(np.int8, (STIM_SLOTS,))
        self.stim_electrodes = self._take(np.bool_, (STIM_SLOTS, n_channels))
        #: The spike detector's threshold per channel (uV; NaN: none yet).
        self.threshold = self._take(np.float32, (n_channels,))
        left = (len(self.buffer) - self._offset - 64) // (6 * n_channels)
        if left < 1024:
            raise ValueError(f"{n_channels} channels do not fit the live rings")
        self.raw = self._take(np.int16, (left, n_channels))
        self.filtered = self._take(np.float32, (left, n_channels))

    @property
    def sample_slots(self) -> int:
        return len(self.raw)

    def _take(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        dtype = np.dtype(dtype)
        self._offset = -(-self._offset // 8) * 8  # 8-byte aligned
        count = int(np.prod(shape))
        array = np.frombuffer(self.buffer, dtype, count, self._offset).reshape(shape)
        self._offset += count * dtype.itemsize
        return array

    def reset(self) -> None:
        """Zero the header and forget the thresholds (before the first run on a new layout)."""
        self.header[:] = 0
        self.threshold[:] = np.nan


def _put(ring: np.ndarray, first: int, values: np.ndarray) -> None:
    """Write ``values`` into ``ring`` at absolute index ``first``, wrapping around."""
    n, size = len(values), len(ring)
    if n > size:
        first, values, n = first + n - size, values[n - size:], size
    at = first % size
    head = min(n, size - at)
    ring[at:at + head] = values[:head]
    if head < n:
        ring[:n - head] = values[head:]


def _runs(blocks: list[tuple[int, np.ndarray, np.ndarray | None]], uV_per_bit: float
          ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(start, raw, filtered microvolts) of each stretch of back-to-back blocks."""
    runs: list[list[Any]] = []
    for start, raw, uV in blocks:
        if uV is None:  # no filter output: show the raw signal there
            uV = raw.astype(np.float32) * np.float32(uV_per_bit)
        if runs and start == runs[-1][0] + runs[-1][3]:
            runs[-1][1].append(raw)
            runs[-1][2].append(uV)
            runs[-1][3] += len(raw)
        else:
            runs.append([start, [raw], [uV], len(raw)])
    return [(start, np.concatenate(raws), np.concatenate(uVs)) for start, raws, uVs, _ in runs]


class LiveFeed(Sink):
    """The engine sink behind the GUI: copies each block, spike batch and pulse into :class:`Rings`.

    Events and decisions wait in deques for :meth:`take_notes`; the model is the
    latest protocol's ``Protocol.model_state()``, read on the caller's thread (see
    :meth:`expect`).
    """

    def __init__(self, rings: Rings | None = None) -> None:
        self.rings = rings
        self.info: DeviceInfo | None = None
        #: The name of the protocol of the latest run.
        self.protocol: str | None = None
        self._next_protocol: Protocol | None = None
        self._next_thresholds: Callable[[], np.ndarray] | None = None
        self._thresholds: Callable[[], np.ndarray] | None = None
        self._model_source: Protocol | None = None
        self._events: deque[RunEvent] = deque(maxlen=KEEP_NOTES)
        self._decisions: deque[dict[str, Any]] = deque(maxlen=KEEP_NOTES)
        self._started = False
        self._armed, self._disarm_reason = True, ""

    def expect(self, protocol: Protocol,
               thresholds: Callable[[], np.ndarray] | None = None) -> None:
        """The protocol of the next run (call before it): from that run's start, the model
        panel shows its ``model_state()``; a passive run keeps the model shown.
        ``thresholds`` gives that run's detection threshold per channel (uV, NaN in its
        warm-up); it is read on the acquisition thread at every write into the rings."""
        self._next_protocol = protocol
        self._next_thresholds = thresholds

    # -- Sink, on the acquisition thread ---------------------------------------------------
    def on_start(self, run: RunDescription) -> None:
        info = run.info
        if self.rings is None or self.rings.n_channels != info.n_channels:
            raise ValueError(f"the live rings are not laid out for {info.n_channels} "
                             "channels (the session lays them out at connect)")
        h = self.rings.header
        h[RUN] += 1  # odd: resetting
        h[BLOCKS] = h[SPIKES] = h[STIMS] = h[N_BLOCKS] = h[SAMPLES_LOST] = h[RAW_END] = 0
        h[T0] = h[NOW] = run.start_sample
        h[ARMED] = run.armed
        h[BLOCK_SAMPLES] = run.block_samples
        self.rings.threshold[:] = np.nan
        self._thresholds, self._next_thresholds = self._next_thresholds, None
        self.info, self.protocol = info, run.protocol
        self._armed, self._disarm_reason = run.armed, run.disarm_reason
        self._blocks: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self._spikes: list[SpikeEvents] = []
        self._ticks = self._lost = self._flushed = 0
        self._now = run.start_sample
        self._expected: int | None = None
        self._flushed_raw = False
        self._every = max(1, int(FLUSH_S * info.sample_rate))
        protocol, self._next_protocol = self._next_protocol, None
        if protocol is not None and not getattr(protocol, "passive", False):
            self._model_source = protocol
        self._started = True
        h[RUN] += 1  # even: a run's data follow

    def on_block(self, block: Block, filtered: np.ndarray | None) -> None:
        if self._expected is not None and block.start_sample > self._expected:
            self._lost += block.start_sample - self._expected  # a gap in the stream
        self._expected = block.stop_sample
        if block.n_samples:
            self._blocks.append((block.start_sample, block.data, filtered))

    def on_clock(self, sample: int) -> None:
        self._ticks += 1
        self._now = max(self._now, sample)
        if self._now - self._flushed >= self._every:
            self.flush()

    def on_spikes(self, spikes: SpikeEvents) -> None:
        if len(spikes):
            self._spikes.append(spikes)
            if not self._blocks and not self._flushed_raw:  # a spikes-only device
                self._now = max(self._now, int(spikes.sample[-1]) + 1)
                if self._now - self._flushed >= self._every:
                    self.flush()

    def on_stop(self, summary: dict[str, Any]) -> None:
        if self._started:  # a run stopped before its first block never started
            self._armed, self._disarm_reason = False, RUN_ENDED
            self.flush()
        self._started = False

    def flush(self) -> None:
        """Write the blocks and spikes gathered since the last flush (acquisition thread)."""
        assert self.rings is not None and self.info is not None
        r, h, now = self.rings, self.rings.header, self._now
        self._flushed = now
        blocks, self._blocks = self._blocks, []
        self._flushed_raw = self._flushed_raw or bool(blocks)
        for start, raw, uV in _runs(blocks, self.info.uV_per_bit):
            _put(r.raw, start, raw)
            _put(r.filtered, start, uV)
            k = int(h[BLOCKS])
            r.blocks[k % BLOCK_SLOTS] = (start, len(raw))
            h[RAW_END] = start + len(raw)
            h[BLOCKS] = k + 1
        spikes = SpikeEvents.concat(self._spikes)
        self._spikes = []
        if len(spikes):
            k = int(h[SPIKES])
            _put(r.spike_sample, k, spikes.sample)
            _put(r.spike_channel, k, spikes.channel)
            h[SPIKES] = k + len(spikes)
            if not h[RAW_END]:  # a spikes-only device: its spikes move the clock too
                now = max(now, int(spikes.sample[-1]) + 1)
        if self._thresholds is not None:
            r.threshold[:] = self._thresholds()
        h[N_BLOCKS] = self._ticks
        h[SAMPLES_LOST] = self._lost
        h[ARMED] = self._armed
        h[NOW] = max(int(h[NOW]), now)

    def on_stim(self, record: StimRecord) -> None:
        assert self.rings is not None
        r, h = self.rings, self.rings.header
        k = int(h[STIMS])
        slot = k % STIM_SLOTS
        executed = record.execution_sample
        r.stim_at[slot] = (-1 if executed is None else executed, record.trigger_sample)
        r.stim_status[slot] = STATUSES.index(record.status) if record.status in STATUSES else 3
        r.stim_electrodes[slot] = False
        r.stim_electrodes[slot, list(record.pattern.channels)] = True
        h[STIMS] = k + 1

    def on_decision(self, sample: int, decision: dict[str, Any]) -> None:
        self._decisions.append({"sample": sample, **decision})

    def on_event(self, event: RunEvent) -> None:
        self._events.append(event)
        if event.armed is not None:  # the event armed or disarmed the gate
            self._armed, self._disarm_reason = event.armed, event.disarm_reason

    # -- from other threads ----------------------------------------------------------------
    def take_notes(self, model: bool = True) -> dict[str, Any]:
        """What the rings do not hold, taken once: events and decisions since the last
        take, the protocol's name, why the gate is disarmed, and (``model``) the model."""
        events = [self._events.popleft() for _ in range(len(self._events))]
        decisions = [self._decisions.popleft() for _ in range(len(self._decisions))]
        notes: dict[str, Any] = {
            "events": events, "decisions": decisions, "protocol": self.protocol,
            "disarmed": None if self._armed else self._disarm_reason or "stopped"}
        source = self._model_source
        if model and source is not None:
            try:  # on this thread, while the protocol's hooks run on the loop's
                state = source.model_state()
            except Exception as exc:  # a protocol's display hook must not stop the display
                notes["model_error"] = f"{type(exc).__name__}: {exc}"
            else:
                if state is not None:  # None: the protocol has no model to show
                    notes["model"] = state
        return notes
