"""Live buffers: what the acquisition thread saw lately, kept for the GUI to draw.

:class:`LiveBuffers` is an engine sink. Per block the acquisition thread
only files references under a lock (blocks, spikes, pulses, events); the GUI
thread calls :meth:`LiveBuffers.snapshot` about 30 times a second, which folds
the new blocks into min/max envelopes of raw and filtered microvolts at three
resolutions, copies what the frame needs and reduces it outside the lock.
Everything is kept for :data:`KEEP_S` seconds of device time.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from drivers.base import DeviceInfo
from mea_control.engine import Engine, RunEvent, Sink, StimRecord
from mea_control.gui.snapshot import Snapshot
from mea_control.protocol import Protocol
from mea_control.types import Block, SpikeEvents

#: Seconds of device time the buffers keep.
KEEP_S = 60.0
#: Finest envelope bins per second of device time (a bin holds the min and max of its samples).
ENVELOPE_HZ = 2000.0
#: Envelope resolutions: each level's bins are LEVEL_STEP times longer than the previous.
LEVELS = 3
LEVEL_STEP = 8
#: The acquisition thread folds blocks into the envelopes itself when no snapshot took
#: them for this long (device time); otherwise the GUI thread does it.
FOLD_LAG_S = 0.1
RATE_WINDOW_S = 2.0
PSTH_MS = 300.0
PSTH_BIN_MS = 5.0
#: A pulse joins the PSTH this long after its window closed (spikes arrive late).
PSTH_SETTLE_MS = 20.0
#: Events and decisions kept between two snapshots.
KEEP_NOTES = 1000
_NO_BIN = np.iinfo(np.int64).min


class _Envelope:
    """Min and max of each bin of ``bin_samples`` samples for every channel, in a ring.

    It is fed rows of mins and maxes, ``step`` rows a bin (samples, or the bins of
    a finer envelope). Values are stored as int16 device units (value / ``scale``);
    ``ids`` holds the absolute bin in each slot, so stale slots (gaps, the run's
    start) show.
    """

    def __init__(self, capacity: int, n_channels: int, bin_samples: int, step: int,
                 scale: float) -> None:
        self.bin = bin_samples
        self.step = step
        self.scale = scale
        self.lo = np.zeros((capacity, n_channels), np.int16)
        self.hi = np.zeros((capacity, n_channels), np.int16)
        self.ids = np.full(capacity, _NO_BIN, np.int64)
        self.last = _NO_BIN

    def clear(self) -> None:
        self.ids[:] = _NO_BIN
        self.last = _NO_BIN

    def add(self, first: int, lo: np.ndarray, hi: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Fold rows ``first, first + 1, ...`` in; returns the bins touched: (first, lo, hi)."""
        b0 = first // self.step
        b1 = (first + len(lo) - 1) // self.step
        head, tail = first - b0 * self.step, (b1 + 1) * self.step - first - len(lo)
        shape = (b1 - b0 + 1, self.step, lo.shape[1])
        lo_rows = _edge_pad(lo, head, tail).reshape(shape).min(axis=1)
        hi_rows = _edge_pad(hi, head, tail).reshape(shape).max(axis=1)
        lo_rows, hi_rows = self._units(lo_rows), self._units(hi_rows)
        bins = np.arange(b0, b1 + 1)
        slots = bins % len(self.ids)
        if b0 == self.last:  # these rows go on with a bin the previous ones began
            np.minimum(lo_rows[0], self.lo[slots[0]], out=lo_rows[0])
            np.maximum(hi_rows[0], self.hi[slots[0]], out=hi_rows[0])
        self.lo[slots] = lo_rows
        self.hi[slots] = hi_rows
        self.ids[slots] = bins
        self.last = b1
        return b0, lo_rows, hi_rows

    def _units(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == np.int16:
            return x
        return np.clip(np.rint(x / self.scale), -32768, 32767).astype(np.int16)

    def window(self, first: int, last: int, channels: list[int]) -> tuple[np.ndarray, ...]:
        """Copies of bins ``first..last`` of ``channels``: (bins, ids, lo, hi)."""
        bins = np.arange(first, last + 1)
        slots = bins % len(self.ids)
        rows = np.ix_(slots, channels)
        return bins, self.ids[slots], self.lo[rows], self.hi[rows]


def _edge_pad(x: np.ndarray, head: int, tail: int) -> np.ndarray:
    """``x`` with its first row repeated ``head`` times before it and its last ``tail``
    times after it (copies of a bin's own values change neither its min nor its max)."""
    if not head and not tail:
        return x
    return np.concatenate((np.repeat(x[:1], head, axis=0), x, np.repeat(x[-1:], tail, axis=0)))


class _Trace:
    """One signal (raw or filtered) as min/max envelopes at :data:`LEVELS` resolutions,
    each level fed by the one below."""

    def __init__(self, sample_rate: float, n_channels: int, scale: float) -> None:
        self.n_channels = n_channels
        finest = max(1, int(sample_rate // ENVELOPE_HZ))
        self.levels = []
        for k in range(LEVELS):
            bin_samples = finest * LEVEL_STEP**k
            capacity = int(np.ceil(KEEP_S * sample_rate / bin_samples))
            step = finest if k == 0 else LEVEL_STEP
            self.levels.append(_Envelope(capacity, n_channels, bin_samples, step, scale))

    def add(self, start: int, values: np.ndarray) -> None:
        """Fold samples ``values`` (samples x channels) that begin at sample ``start``."""
        first, lo, hi = start, values, values
        for level in self.levels:
            first, lo, hi = level.add(first, lo, hi)

    def clear(self) -> None:
        for level in self.levels:
            level.clear()

    def level(self, n_samples: int, pixels: int) -> _Envelope:
        """The finest level with at most LEVEL_STEP bins a pixel over ``n_samples``."""
        for level in self.levels:
            if n_samples <= level.bin * pixels * LEVEL_STEP:
                return level
        return self.levels[-1]


#: Blocks not yet folded into the envelopes: (start sample, raw int16, filtered uV).
_Batch = list[tuple[int, np.ndarray, np.ndarray]]


class _TraceStore:
    """The raw and filtered envelopes, behind their own lock.

    Blocks are folded in batches by whoever holds :attr:`lock`: the GUI thread
    in each snapshot, or the acquisition thread when no snapshot came for
    :data:`FOLD_LAG_S` (it only tries the lock, never waits for it).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.raw: _Trace | None = None
        self.filtered: _Trace | None = None

    def fold(self, batch: _Batch, reset: bool, info: DeviceInfo | None) -> None:
        """Clear the envelopes if ``reset`` (a new run), then fold ``batch`` in (hold lock)."""
        if reset and self.raw is not None and self.filtered is not None:
            self.raw.clear()
            self.filtered.clear()
        if not batch or info is None:
            return
        if self.raw is None or self.raw.n_channels != info.n_channels:
            self.raw = _Trace(info.sample_rate, info.n_channels, 1.0)
            self.filtered = _Trace(info.sample_rate, info.n_channels, info.uV_per_bit)
        run: _Batch = []
        for item in batch:  # fold each stretch of contiguous blocks in one go
            if run and item[0] != run[-1][0] + len(run[-1][1]):
                self._add(run)
                run = []
            run.append(item)
        self._add(run)

    def _add(self, run: _Batch) -> None:
        assert self.raw is not None and self.filtered is not None
        self.raw.add(run[0][0], np.concatenate([raw for _, raw, _ in run]))
        self.filtered.add(run[0][0], np.concatenate([uV for _, _, uV in run]))

    def window(self, filtered: bool, now: int, n_samples: int, channels: list[int],
               pixels: int) -> tuple[tuple[np.ndarray, ...], int] | None:
        """Copies of the envelope bins of ``channels`` over the last ``n_samples`` before
        ``now`` (hold lock): ((bins, ids, lo, hi), bin samples), or None without data."""
        signal = self.filtered if filtered else self.raw
        if signal is None:
            return None
        envelope = signal.level(n_samples, pixels)
        last = (now - 1) // envelope.bin
        first = max((now - n_samples) // envelope.bin, last - len(envelope.ids) + 1)
        return envelope.window(first, last, channels), envelope.bin


class LiveBuffers(Sink):
    """The latest minute of a run for the GUI: traces, spikes, pulses, PSTH, events.

    One object serves a whole session: each run's start clears the traces,
    spikes and pulses (the device clock may restart); the PSTH is kept until
    the first pulse of a later run, so it stays on screen after its run.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._store = _TraceStore()
        self.info: DeviceInfo | None = None
        self._engine: Engine | None = None
        self._protocol: Protocol | None = None
        self._model_source: Any = None
        self._events: deque[RunEvent] = deque(maxlen=KEEP_NOTES)
        self._decisions: deque[dict[str, Any]] = deque(maxlen=KEEP_NOTES)
        self._psth_sum = np.zeros(int(round(PSTH_MS / PSTH_BIN_MS)))
        self._psth_pulses = 0
        self._psth_stale = True  # the next executed pulse starts a new PSTH
        self._clear()

    # -- the run's engine, from the session ----------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Read the clock, loop figures and gate of ``engine`` (call before its run)."""
        with self._lock:
            self._engine = engine

    # -- Sink, on the acquisition thread ---------------------------------------------------
    def on_start(self, info: DeviceInfo, protocol: Protocol) -> None:
        with self._lock:
            self.info = info
            self._protocol = protocol
            if not getattr(protocol, "passive", False):
                self._model_source = protocol if hasattr(protocol, "model_state") else None
            self._clear()
            engine = self._engine
            if engine is not None and engine.protocol is protocol:
                self._t0 = self._now = engine.t0
            self._psth_stale = True
            self._changed.notify_all()

    def on_block(self, block: Block, filtered: np.ndarray | None, spikes: SpikeEvents) -> None:
        # ``spikes`` came through on_spikes already (the only way on a spikes-only device)
        if block.n_samples == 0:
            return
        if filtered is None:  # no filter output: show the raw signal there
            filtered = block.microvolts()
        with self._lock:
            self._unfolded.append((block.start_sample, block.data, filtered))
            lag = block.stop_sample - self._unfolded[0][0]
            if lag > FOLD_LAG_S * self._rate() and self._store.lock.acquire(blocking=False):
                try:  # no snapshot lately: fold here rather than pile blocks up
                    self._store.fold(*self._take_unfolded())
                finally:
                    self._store.lock.release()
            self._raw_seen = True
            self._blocks += 1
            if self._t0 is None:
                self._t0 = block.start_sample
            self._now = max(self._now, block.stop_sample)
            self._settle(self._now)
            self._changed.notify_all()

    def on_spikes(self, spikes: SpikeEvents) -> None:
        if not len(spikes):
            return
        fs = self._rate()
        with self._lock:
            self._spikes.append(spikes)
            self._n_spikes += len(spikes)
            if self._t0 is None:
                self._t0 = int(spikes.sample[0])
            if not self._raw_seen:
                self._now = max(self._now, int(spikes.sample[-1]) + 1)
            for at, hist in self._open_pulses:
                _psth_add(hist, at, spikes, fs)
            oldest = int(spikes.sample[-1]) - int(KEEP_S * fs)
            while self._spikes[0].sample[-1] < oldest:
                self._spikes.popleft()
            self._settle(self._clock())
            self._changed.notify_all()

    def on_stim(self, record: StimRecord) -> None:
        fs = self._rate()
        with self._lock:
            self._stim_counts[record.status] = self._stim_counts.get(record.status, 0) + 1
            if record.status == "executed" and record.execution_sample is not None:
                at = int(record.execution_sample)
                self._latency[at - record.trigger_sample] += 1
                self._stims.append((at, record.pattern.channels))
                while self._stims[0][0] < at - int(KEEP_S * fs):
                    self._stims.popleft()
                self._open_pulse(at, fs)
            self._changed.notify_all()

    def on_decision(self, sample: int, decision: dict[str, Any]) -> None:
        with self._lock:
            self._decisions.append({"sample": sample, **decision})

    def on_event(self, event: RunEvent) -> None:
        with self._lock:
            self._events.append(event)
            self._changed.notify_all()

    def on_stop(self, summary: dict[str, Any]) -> None:
        with self._lock:
            self._changed.notify_all()

    # -- from other threads ----------------------------------------------------------------
    def note(self, kind: str, message: str) -> None:
        """Add an event of the GUI's own (an operator's action) to the event list."""
        with self._lock:
            self._events.append(RunEvent(self._clock(), kind, message))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked whenever data arrive); False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    @property
    def now(self) -> int:
        """The device sample just after the newest data."""
        with self._lock:
            return self._clock()

    @property
    def protocol(self) -> str | None:
        """The name of the protocol whose run the buffers show."""
        with self._lock:
            return self._protocol.name if self._protocol is not None else None

    @property
    def counts(self) -> dict[str, int]:
        """This run's blocks, spikes, pulses by fate (executed, dropped, refused, sent) and
        the pulses in the PSTH."""
        with self._lock:
            return {"blocks": self._blocks, "spikes": self._n_spikes,
                    "psth_pulses": self._psth_pulses, **self._stim_counts}

    def snapshot(self, window_s: float = 10.0, channels: Sequence[int] | None = None,
                 filtered: bool = True, pixels: int = 1000) -> Snapshot:
        """One frame: traces of ``channels`` (default all) over ``window_s`` as ``pixels``
        min/max columns (NaN where there are no data), the raster, rates, PSTH, status and
        model; drains the events and decisions."""
        window_s = float(min(max(window_s, 1e-3), KEEP_S))
        with self._store.lock:
            with self._lock:
                info = self.info
                if info is None:
                    return Snapshot(sample_rate=0.0, now=0, n_electrodes=0, window_s=window_s)
                fs, n = info.sample_rate, info.n_channels
                chans = list(range(n)) if channels is None else [int(c) for c in channels]
                if any(not 0 <= c < n for c in chans):
                    raise ValueError(f"channels must be 0 to {n - 1}, not {chans}")
                now = self._clock()
                self._settle(now)
                unfolded = self._take_unfolded()
                has_traces = self._raw_seen and now > 0 and bool(chans) and pixels > 0
                chunks, stims = list(self._spikes), list(self._stims)
                psth_sum, psth_pulses = self._psth_sum.copy(), self._psth_pulses
                latency = sorted(self._latency.items())
                events, decisions = list(self._events), list(self._decisions)
                self._events.clear()
                self._decisions.clear()
                t0 = self._t0 if self._t0 is not None else now
                counts = dict(self._stim_counts, spikes=self._n_spikes, blocks=self._blocks)
                protocol, model_source, engine = self._protocol, self._model_source, self._engine
            self._store.fold(*unfolded)
            trace = (self._store.window(filtered, now, int(window_s * fs), chans, pixels)
                     if has_traces else None)
        snap = Snapshot(sample_rate=fs, now=now, n_electrodes=n, window_s=window_s,
                        trace_filtered=filtered, events=events, decisions=decisions)
        if trace is not None:
            _traces(snap, *trace, info.uV_per_bit, chans, pixels)
        _raster(snap, chunks, stims, t0)
        snap.psth_edges_ms = np.arange(0.0, PSTH_MS + PSTH_BIN_MS / 2, PSTH_BIN_MS)
        snap.psth = psth_sum / max(psth_pulses, 1)
        snap.psth_pulses = psth_pulses
        snap.status = _status(counts, latency, fs, engine, protocol)
        if model_source is not None:
            try:
                snap.model = model_source.model_state()
            except Exception as exc:  # a protocol's display hook must not stop the display
                snap.status["model_error"] = f"{type(exc).__name__}: {exc}"
        return snap

    # -- internals (hold the lock) ---------------------------------------------------------
    def _clear(self) -> None:
        """Forget the previous run's data (not the PSTH, not the notes)."""
        self._spikes: deque[SpikeEvents] = deque()
        self._stims: deque[tuple[int, tuple[int, ...]]] = deque()
        self._open_pulses: list[tuple[int, np.ndarray]] = []
        self._latency: Counter[int] = Counter()
        self._stim_counts = {"executed": 0, "dropped": 0, "refused": 0}
        self._n_spikes = 0
        self._blocks = 0
        self._now = 0
        self._t0: int | None = None
        self._raw_seen = False
        self._unfolded: _Batch = []
        self._reset_traces = True

    def _take_unfolded(self) -> tuple[_Batch, bool, DeviceInfo | None]:
        """The blocks to fold, whether the envelopes must be cleared first, the device."""
        taken = (self._unfolded, self._reset_traces, self.info)
        self._unfolded, self._reset_traces = [], False
        return taken

    def _rate(self) -> float:
        return self.info.sample_rate if self.info is not None else 1.0

    def _clock(self) -> int:
        """Newest sample: from the blocks, or the engine's clock for a spikes-only device."""
        engine = self._engine
        if self._raw_seen or engine is None or engine.protocol is not self._protocol:
            return self._now
        return max(self._now, engine.now)

    def _open_pulse(self, at: int, fs: float) -> None:
        """Start a pulse's PSTH row with the spikes already here (late device reports)."""
        if self._psth_stale:
            self._psth_sum[:] = 0.0
            self._psth_pulses = 0
            self._psth_stale = False
        hist = np.zeros(len(self._psth_sum))
        for chunk in reversed(self._spikes):
            if chunk.sample[-1] < at:
                break
            _psth_add(hist, at, chunk, fs)
        self._open_pulses.append((at, hist))

    def _settle(self, now: int) -> None:
        """Move the pulses whose window closed (plus a margin) into the PSTH."""
        if not self._open_pulses:
            return
        wait = int((PSTH_MS + PSTH_SETTLE_MS) * self._rate() / 1000.0)
        while self._open_pulses and self._open_pulses[0][0] + wait <= now:
            _, hist = self._open_pulses.pop(0)
            self._psth_sum += hist
            self._psth_pulses += 1


def _psth_add(hist: np.ndarray, at: int, spikes: SpikeEvents, fs: float) -> None:
    """Count ``spikes`` into the PSTH row of the pulse at sample ``at``."""
    bins = np.floor((spikes.sample - at) * (1000.0 / PSTH_BIN_MS / fs)).astype(np.int64)
    bins = bins[(bins >= 0) & (bins < len(hist))]
    if len(bins):
        hist += np.bincount(bins, minlength=len(hist))


def _traces(snap: Snapshot, window: tuple[np.ndarray, ...], bin_samples: int,
            uV_per_bit: float, channels: list[int], pixels: int) -> None:
    """Reduce envelope bins to ``pixels`` min/max columns of microvolts."""
    bins, ids, lo, hi = window
    stale = ids != bins
    edges = (np.arange(pixels) * len(bins)) // pixels
    columns = []
    for values, reduce in ((lo, np.fmin), (hi, np.fmax)):  # NaN only if a column has no data
        uV = values.astype(np.float32) * np.float32(uV_per_bit)
        uV[stale] = np.nan
        columns.append(reduce.reduceat(uV, edges, axis=0).T)
    snap.trace_channels = channels
    snap.trace_min, snap.trace_max = columns
    snap.trace_t = ((bins[edges] + 0.5) * bin_samples - snap.now) / snap.sample_rate


def _raster(snap: Snapshot, chunks: list[SpikeEvents],
            stims: list[tuple[int, tuple[int, ...]]], t0: int) -> None:
    """Spikes and pulses of the window, and the rates of its last RATE_WINDOW_S."""
    fs, now = snap.sample_rate, snap.now
    start = now - int(snap.window_s * fs)
    recent = []
    for chunk in reversed(chunks):
        if chunk.sample[-1] < start:
            break
        recent.append(chunk)
    spikes = SpikeEvents.concat(recent[::-1]).between(start, now)
    snap.spike_t = (spikes.sample - now) / fs
    snap.spike_channel = spikes.channel.astype(np.int32)
    rate_start = now - int(RATE_WINDOW_S * fs)
    span_s = (now - max(rate_start, t0)) / fs
    counts = np.bincount(spikes.channel[spikes.sample >= rate_start].astype(np.int64),
                         minlength=snap.n_electrodes)
    snap.rates_hz = counts / span_s if span_s > 0 else np.zeros(snap.n_electrodes)
    snap.rate_window_s = RATE_WINDOW_S
    # a pulse reported executed may run in the block after ``now`` (t >= 0)
    shown = [(at, chans) for at, chans in stims if at >= start]
    snap.stim_t = np.array([(at - now) / fs for at, _ in shown])
    snap.stim_channels = [chans for _, chans in shown]
    snap.stimulated = np.unique(np.array([c for _, chans in shown for c in chans], np.int32))


def _status(counts: dict[str, int], latency: list[tuple[int, int]], fs: float,
            engine: Engine | None, protocol: Protocol | None) -> dict[str, Any]:
    """Loop and device health for the status bar."""
    lat = np.repeat([v for v, _ in latency], [n for _, n in latency]).astype(np.float64)
    status: dict[str, Any] = {
        "protocol": protocol.name if protocol is not None else "",
        "blocks": counts["blocks"],
        "blocks_dropped": 0,
        "latency_p50_ms": float(np.percentile(lat, 50)) * 1000 / fs if len(lat) else None,
        "latency_p99_ms": float(np.percentile(lat, 99)) * 1000 / fs if len(lat) else None,
        "watchdog": "armed",
        "spikes": counts["spikes"],
        "stims_executed": counts["executed"],
        "stims_dropped": counts["dropped"],
        "stims_refused": counts["refused"],
    }
    if engine is not None and engine.protocol is protocol:
        status["blocks"] = engine.n_blocks  # a spikes-only device's ticks count too
        status["blocks_dropped"] = -(-engine.samples_lost // engine.block_samples)
        if not engine.gate.armed:
            status["watchdog"] = f"disarmed: {engine.gate.disarm_reason}"
    return status
