"""Live buffers: what the acquisition thread saw lately, kept for the GUI to draw.

:class:`LiveBuffers` reads the rings a :class:`~mea_control.gui.feed.LiveFeed`
fills (in this process or, through shared memory, in the rig's). The GUI thread
calls :meth:`LiveBuffers.snapshot` about 30 times a second: it takes what is new
from the rings, folds the samples into min/max envelopes of raw and filtered
microvolts at three resolutions, keeps spikes and pulses, builds the PSTH, and
copies what the frame needs. Everything is kept for :data:`KEEP_S` seconds of
device time; the acquisition thread never waits for any of it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mea_control.gui import feed as f
from mea_control.gui.snapshot import Snapshot
from mea_control.run_stats import expand_counts
from mea_control.types import DeviceInfo

#: Seconds of device time the buffers keep.
KEEP_S = 60.0
#: Finest envelope bins per second of device time (a bin holds the min and max of its samples).
ENVELOPE_HZ = 2000.0
#: Envelope resolutions: each level's bins are LEVEL_STEP times longer than the previous.
LEVELS = 3
LEVEL_STEP = 8
RATE_WINDOW_S = 2.0
PSTH_MS = 300.0
PSTH_BIN_MS = 5.0
#: A pulse joins the PSTH this long after its window closed (spikes arrive late).
PSTH_SETTLE_MS = 20.0
_NO_BIN = np.iinfo(np.int64).min
#: Gives what the rings do not hold (events, decisions, the model): LiveFeed.take_notes
#: or the rig process's copy of it.
Notes = Callable[..., dict[str, Any]]


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


def _contiguous(blocks: np.ndarray) -> list[tuple[int, int]]:
    """(start, samples) of each stretch of back-to-back block records."""
    runs: list[list[int]] = []
    for start, n in blocks.tolist():
        if runs and start == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += n
        else:
            runs.append([start, n])
    return [(a, n) for a, n in runs]


def _get(ring: np.ndarray, first: int, n: int) -> np.ndarray:
    """A copy of ``n`` entries of ``ring`` from absolute index ``first``, wrapping around."""
    at = first % len(ring)
    if at + n <= len(ring):
        return ring[at:at + n].copy()
    return np.concatenate((ring[at:], ring[:at + n - len(ring)]))


class _Spikes:
    """Spikes as growing arrays (sample, channel); old ones dropped when the arrays fill."""

    def __init__(self) -> None:
        self.sample = np.empty(1 << 14, np.int64)
        self.channel = np.empty(1 << 14, np.int32)
        self.n = 0

    def add(self, sample: np.ndarray, channel: np.ndarray, oldest: int) -> None:
        if self.n + len(sample) > len(self.sample):
            keep = self.sample[:self.n] >= oldest
            kept = int(keep.sum())
            size = max(len(self.sample), 2 * (kept + len(sample)))
            new_sample, new_channel = np.empty(size, np.int64), np.empty(size, np.int32)
            new_sample[:kept] = self.sample[:self.n][keep]
            new_channel[:kept] = self.channel[:self.n][keep]
            self.sample, self.channel, self.n = new_sample, new_channel, kept
        self.sample[self.n:self.n + len(sample)] = sample
        self.channel[self.n:self.n + len(sample)] = channel
        self.n += len(sample)

    def between(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the spikes with ``start <= sample < stop``."""
        sample = self.sample[:self.n]
        keep = (sample >= start) & (sample < stop)
        return sample[keep], self.channel[:self.n][keep]


class LiveBuffers:
    """The latest minute of a run for the GUI: traces, spikes, pulses, PSTH, events.

    One object serves a whole session; :meth:`bind` points it at a device's
    rings (or none: the views go blank). The views are continuous across runs:
    a device whose clock restarts with each run (the simulator starts again at
    sample 0) is shifted so that the views' clock runs on from the previous
    run's last sample. A run's start resets only its counts (blocks, spikes,
    pulses, latency); the PSTH is kept until the first pulse of a later run, so
    it stays on screen after its run. The PSTH holds the pulses whose window
    (PSTH_MS) has passed: at a run's end, those with the whole window in the
    data; a pulse whose window the end of its run cut is left out.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rings: f.Rings | None = None
        self.info: DeviceInfo | None = None
        self._notes: Notes = lambda model=True: {}
        self._psth_sum = np.zeros(int(round(PSTH_MS / PSTH_BIN_MS)))
        self._psth_pulses = 0
        self._psth_stale = True  # the next executed pulse starts a new PSTH
        self._protocol: str | None = None
        self._disarmed: str | None = None
        self._clear()
        self._run = -1

    def bind(self, rings: f.Rings | None, info: DeviceInfo | None, notes: Notes | None = None
             ) -> None:
        """Read ``rings`` of device ``info`` from now on, and events and the model from
        ``notes(model=...)`` (a LiveFeed's take_notes, or the rig process's)."""
        with self._lock:
            self.rings, self.info = rings, info
            self._notes = notes or (lambda model=True: {})
            self._run = -1
            self._clear()

    # -- from the GUI (any thread) ---------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked every few ms); False on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    @property
    def now(self) -> int:
        """The device sample just after the newest data of the run shown."""
        with self._lock:
            self._pull()
            return self._now - self._shift

    @property
    def protocol(self) -> str | None:
        """The name of the protocol whose run the buffers show (as of the last snapshot)."""
        return self._protocol

    @property
    def counts(self) -> dict[str, int]:
        """This run's blocks, spikes, pulses by fate (executed, dropped, refused, sent) and
        the pulses in the PSTH."""
        with self._lock:
            self._pull()
            return {"blocks": self._blocks, "spikes": self._n_spikes,
                    "psth_pulses": self._psth_pulses, **self._stim_counts}

    def snapshot(self, window_s: float = 10.0, channels: Sequence[int] | None = None,
                 filtered: bool = True, pixels: int = 1000, model: bool = True,
                 trace_window_s: float | None = None) -> Snapshot:
        """One frame: traces of ``channels`` (default all) over ``trace_window_s`` (default
        ``window_s``) as ``pixels`` min/max columns (NaN where there are no data) with their
        detection thresholds, the raster over ``window_s``, rates, PSTH, status and
        (``model``) the model; takes the events and decisions."""
        window_s = float(min(max(window_s, 1e-3), KEEP_S))
        trace_s = window_s if trace_window_s is None else float(
            min(max(trace_window_s, 1e-3), KEEP_S))
        notes = self._notes(model=model)
        with self._lock:
            self._pull()
            info = self.info
            if info is None:
                return Snapshot(sample_rate=0.0, now=0, n_electrodes=0, window_s=window_s,
                                trace_window_s=trace_s, events=notes.get("events", []))
            fs, n = info.sample_rate, info.n_channels
            chans = list(range(n)) if channels is None else [int(c) for c in channels]
            if any(not 0 <= c < n for c in chans):
                raise ValueError(f"channels must be 0 to {n - 1}, not {chans}")
            now = self._now
            self._protocol = notes.get("protocol", self._protocol)
            self._disarmed = notes.get("disarmed")
            snap = Snapshot(sample_rate=fs, now=now, n_electrodes=n, window_s=window_s,
                            trace_filtered=filtered, trace_window_s=trace_s,
                            events=notes.get("events", []),
                            decisions=notes.get("decisions", []), model=notes.get("model"))
            if self._raw_seen and now > 0 and chans and pixels > 0:
                trace = self._window(filtered, now, int(trace_s * fs), chans, pixels)
                _traces(snap, *trace, chans, pixels)
            if self.rings is not None:
                snap.trace_threshold_uV = self.rings.threshold[chans].astype(float)
            start = now - int(max(window_s, trace_s) * fs)
            sample, channel = self._spikes.between(start, now)
            stims = [(at, c) for at, c in self._stims if at >= start]
            _raster(snap, sample, channel, stims, self._t0 if self._t0 >= 0 else now)
            snap.psth_edges_ms = np.arange(0.0, PSTH_MS + PSTH_BIN_MS / 2, PSTH_BIN_MS)
            snap.psth = self._psth_sum / max(self._psth_pulses, 1)
            snap.psth_pulses = self._psth_pulses
            snap.status = self._status()
        if "model_error" in notes:
            snap.status["model_error"] = notes["model_error"]
        return snap

    # -- taking what is new from the rings (hold the lock) ---------------------------------
    def _clear(self) -> None:
        """Forget what the views showed (a new device, or none); not the PSTH."""
        self.raw: _Trace | None = None
        self.filtered: _Trace | None = None
        self._spikes = _Spikes()
        self._stims: deque[tuple[int, tuple[int, ...]]] = deque()
        self._open_pulses: deque[int] = deque()
        #: The views' clock (samples): the device's plus ``_shift`` for the run shown.
        self._now = 0
        self._shift = 0
        self._t0 = -1  # the views' first sample
        self._raw_seen = False
        self._new_run(0)

    def _new_run(self, t0: int) -> None:
        """A run starting at device sample ``t0``: its counts start from zero, the views'
        clock runs on. Pulses still waiting for their PSTH window join it if the data
        hold the whole window; the others are left out (the run's end cut them)."""
        self._settle(margin_ms=0.0)
        self._open_pulses.clear()
        self._latency: Counter[int] = Counter()
        self._stim_counts = {"executed": 0, "dropped": 0, "refused": 0, "sent": 0}
        self._n_spikes = self._blocks = self._lost = self._block_samples = 0
        self._armed = True
        self._taken = (0, 0, 0)  # blocks, spikes, pulses read so far
        if t0 + self._shift < self._now:  # the device's clock went back: follow on
            self._shift = self._now - t0

    def _pull(self) -> None:
        """Take the blocks, spikes and pulses the feed wrote since the last pull."""
        r, info = self.rings, self.info
        if r is None or info is None:
            return
        h = r.header
        run = int(h[f.RUN])
        if run % 2:
            return  # a run is starting: next time
        if run != self._run:
            self._new_run(int(h[f.T0]))
            self._run = run
            self._psth_stale = True
        nb, ns, nst = (int(h[k]) for k in (f.BLOCKS, f.SPIKES, f.STIMS))
        now, t0 = int(h[f.NOW]), int(h[f.T0])
        status = (int(h[f.N_BLOCKS]), int(h[f.SAMPLES_LOST]), bool(h[f.ARMED]),
                  int(h[f.BLOCK_SAMPLES]))
        b0, s0, st0 = self._taken
        b0, s0, st0 = max(b0, nb - f.BLOCK_SLOTS), max(s0, ns - f.SPIKE_SLOTS), \
            max(st0, nst - f.STIM_SLOTS)
        runs = _contiguous(_get(r.blocks, b0, nb - b0))  # one fold a stretch: cheaper
        samples = [(a, _get(r.raw, a, n), _get(r.filtered, a, n)) for a, n in runs]
        spikes = _get(r.spike_sample, s0, ns - s0), _get(r.spike_channel, s0, ns - s0)
        stims = (_get(r.stim_at, st0, nst - st0), _get(r.stim_status, st0, nst - st0),
                 _get(r.stim_electrodes, st0, nst - st0))
        if int(h[f.RUN]) != run:
            return  # a new run began meanwhile: the next pull starts over
        # what the feed overwrote while we copied is not to be trusted
        oldest = int(h[f.RAW_END]) - r.sample_slots
        lapped_spikes = max(0, int(h[f.SPIKES]) - f.SPIKE_SLOTS - s0)
        lapped_stims = max(0, int(h[f.STIMS]) - f.STIM_SLOTS - st0)
        self._taken = nb, ns, nst
        shift = self._shift
        self._now = max(self._now, now + shift)
        if self._t0 < 0:
            self._t0 = t0 + shift
        self._blocks, self._lost, self._armed, self._block_samples = status
        self._fold([(max(a, oldest) + shift, raw[max(0, oldest - a):], uV[max(0, oldest - a):])
                    for a, raw, uV in samples if a + len(raw) > oldest])
        sample, channel = (x[lapped_spikes:] for x in spikes)
        fs = info.sample_rate
        self._spikes.add(sample + shift, channel, self._now - int(KEEP_S * fs))
        self._n_spikes += len(sample)
        self._add_stims(*(x[lapped_stims:] for x in stims))
        self._settle()

    def _fold(self, runs: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Fold stretches of contiguous samples into the envelopes."""
        info = self.info
        assert info is not None
        if not runs:
            return
        if self.raw is None or self.filtered is None:
            self.raw = _Trace(info.sample_rate, info.n_channels, 1.0)
            self.filtered = _Trace(info.sample_rate, info.n_channels, info.uV_per_bit)
        for start, raw, uV in runs:
            self.raw.add(start, raw)
            self.filtered.add(start, uV)
        self._raw_seen = True

    def _window(self, filtered: bool, now: int, n_samples: int, channels: list[int],
                pixels: int) -> tuple[tuple[np.ndarray, ...], int, float]:
        """Copies of the envelope bins of ``channels`` over the last ``n_samples`` before
        ``now``: ((bins, ids, lo, hi), bin samples, microvolts a unit)."""
        signal = self.filtered if filtered else self.raw
        assert signal is not None and self.info is not None
        envelope = signal.level(n_samples, pixels)
        last = (now - 1) // envelope.bin
        first = max(-(-(now - n_samples) // envelope.bin), last - len(envelope.ids) + 1)
        return envelope.window(first, last, channels), envelope.bin, self.info.uV_per_bit

    def _add_stims(self, at: np.ndarray, status: np.ndarray, electrodes: np.ndarray) -> None:
        """Count new pulses by fate; file the executed ones for the raster and the PSTH."""
        assert self.info is not None
        keep = int(KEEP_S * self.info.sample_rate)
        for (executed, trigger), code, mask in zip(at, status, electrodes, strict=True):
            fate = f.STATUSES[int(code)]
            self._stim_counts[fate] += 1
            if fate != "executed" or executed < 0:
                continue
            self._latency[int(executed - trigger)] += 1
            executed = int(executed) + self._shift  # on the views' clock
            self._stims.append((executed, tuple(int(c) for c in np.flatnonzero(mask))))
            if self._psth_stale:
                self._psth_sum[:] = 0.0
                self._psth_pulses = 0
                self._psth_stale = False
            self._open_pulses.append(executed)
        while self._stims and self._stims[0][0] < self._now - keep:
            self._stims.popleft()

    def _settle(self, margin_ms: float = PSTH_SETTLE_MS) -> None:
        """Move the pulses whose window closed (plus ``margin_ms`` for late spikes) into
        the PSTH."""
        if not self._open_pulses:
            return
        fs = self.info.sample_rate if self.info is not None else 1.0
        span = int(PSTH_MS * fs / 1000.0)
        wait = int((PSTH_MS + margin_ms) * fs / 1000.0)
        while self._open_pulses and self._open_pulses[0] + wait <= self._now:
            at = self._open_pulses.popleft()
            sample, _ = self._spikes.between(at, at + span)
            bins = np.floor((sample - at) * (1000.0 / PSTH_BIN_MS / fs)).astype(np.int64)
            self._psth_sum += np.bincount(bins, minlength=len(self._psth_sum))[
                :len(self._psth_sum)]
            self._psth_pulses += 1

    def _status(self) -> dict[str, Any]:
        """Loop and device health for the status bar."""
        assert self.info is not None
        fs = self.info.sample_rate
        lat = expand_counts(self._latency).astype(np.float64)
        return {
            "protocol": self._protocol or "",
            "blocks": self._blocks,
            "blocks_dropped": -(-self._lost // max(self._block_samples, 1)),
            "samples_lost": self._lost,
            "latency_p50_ms": float(np.percentile(lat, 50)) * 1000 / fs if len(lat) else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) * 1000 / fs if len(lat) else None,
            "watchdog": "armed" if self._armed else f"disarmed: {self._disarmed or 'stopped'}",
            "spikes": self._n_spikes,
            "stims_executed": self._stim_counts["executed"],
            "stims_dropped": self._stim_counts["dropped"],
            "stims_refused": self._stim_counts["refused"],
        }


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


def _raster(snap: Snapshot, sample: np.ndarray, channel: np.ndarray,
            stims: list[tuple[int, tuple[int, ...]]], t0: int) -> None:
    """Spikes and pulses of the window, and the rates of its last RATE_WINDOW_S."""
    fs, now = snap.sample_rate, snap.now
    snap.spike_t = (sample - now) / fs
    snap.spike_channel = channel
    rate_start = now - int(RATE_WINDOW_S * fs)
    span_s = (now - max(rate_start, t0)) / fs
    counts = np.bincount(channel[sample >= rate_start], minlength=snap.n_electrodes)
    snap.rates_hz = counts / span_s if span_s > 0 else np.zeros(snap.n_electrodes)
    snap.rate_window_s = RATE_WINDOW_S
    # a pulse reported executed may run in the block after ``now`` (t >= 0)
    snap.stim_t = np.array([(at - now) / fs for at, _ in stims])
    snap.stim_channels = [chans for _, chans in stims]
    first = now - int(snap.window_s * fs)  # the raster's window (the traces' may be longer)
    snap.stimulated = np.unique(np.array([c for at, chans in stims if at >= first
                                          for c in chans], np.int32))
