"""Online signal processing for the closed loop: band-pass, noise, detection, blanking.

:class:`SpikeDetector` runs on the engine's acquisition thread once per block. It
filters each channel with a causal Butterworth band-pass (second-order sections,
state carried across blocks), estimates each channel's noise from the median
absolute deviation of the *filtered* signal, detects negative threshold
crossings with a per-channel dead time, and blanks a window after each
stimulus.

The key invariant: the filtered signal and the spikes are identical whether a
recording arrives as one block or as many blocks of any sizes. A numba kernel
(compiled once, cached on disk, releases the GIL) does the same float32
arithmetic for every sample whatever the block boundaries, carries all state
(filter, hold value, pending peak search, dead time, noise histogram) between
blocks, and changes the noise estimate only on a fixed grid of samples counted
from the first processed sample.

Spike time and amplitude. After a crossing the detector follows the signal
until it rises back above the threshold or ``peak_window_ms`` has passed,
whichever comes first, and reports the negative peak in that span: its device
sample index and its filtered value in uV. A spike is therefore reported in the
block holding the sample that ends its search, at most
:attr:`SpikeDetector.max_report_delay_samples` after its peak, so a block's
spikes may include one whose peak lies in an earlier block. Each block's spikes
are sorted by (sample, channel); across blocks the order is by report time, so a
later block can hold a spike up to that delay earlier than one already reported.

Warm-up. No spike is detected before the first noise estimate, which exists
after ``noise_update_ms`` (default 50 ms) of processed samples.

Noise. Every ``noise_update_ms`` (on a grid of samples counted from the first
processed sample) the median of ``|filtered|`` over that epoch's non-blanked
samples (one sample in ``round(sample_rate / 6250)``, i.e. every 4th at 25 kHz)
is read from a per-channel histogram (1/16 uV bins, exact integer counts) and
turned into sigma = median / 0.6745. The noise is the mean of the
last ``noise_window_ms / noise_update_ms`` such epoch estimates; epochs that are
mostly blanked are skipped. Medians above 64 uV (sigma above ~95 uV) saturate.
The noise never goes below a floor, :attr:`SpikeDetector.noise_floor_uV` =
``max(min_noise_uV, 2 * uV_per_bit)``: on a flat channel (a noiseless simulator, a
disconnected input) the median is ~0 and without the floor every ADC step would
cross the threshold.

Blanking. :meth:`SpikeDetector.blank` marks ``[start, stop)`` in device samples.
Inside it the raw input is held at the last value before the window (so the
artifact never enters the filter) and nothing is detected; a search in progress
when the window starts is closed and reported. On the first sample after the
window the filter state is reset to the steady state of that sample's value, so
a DC offset left by the artifact does not make the filter ring. The same reset
happens on the first sample ever and after a gap in ``start_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numba import njit

from mea_control.types import Block, SpikeEvents

# Histogram for the noise median: bin width and count (covers |x| up to 64 uV).
NOISE_BIN_UV = 1.0 / 16.0
NOISE_BINS = 1024
MAD_TO_SIGMA = 0.6745
# The noise histogram takes one sample in round(sample_rate / NOISE_SAMPLE_HZ).
NOISE_SAMPLE_HZ = 6250.0

# Rows of the per-channel float32 state.
_HOLD, _PREV, _THR, _PEAK_VAL, _NOISE = range(5)
_N_FSTATE = 5
# Rows of the per-channel int64 state.
_LEFT, _PEAK_SAMPLE, _DEAD_UNTIL, _ACTIVE = range(4)
_N_ISTATE = 4
# Scalar counters (int64).
_N_SEEN, _RESET, _HIST_COUNT, _RING_POS, _RING_FILL, _N_ACTIVE, _N_SPIKES = range(7)
_N_COUNTERS = 7
# Integer parameters.
_P_PEAK, _P_DEAD, _P_EPOCH, _P_MIN_COUNT, _P_STRIDE = range(5)


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters of :class:`SpikeDetector` (times in ms, frequencies in Hz).

    ``threshold_sigma`` is negative: spikes are negative-going crossings of
    ``threshold_sigma * noise``. ``peak_window_ms`` bounds the search for the
    negative peak after a crossing (0 reports the crossing sample itself).
    ``noise_update_ms`` is the epoch of the noise estimate and the warm-up;
    ``noise_window_ms`` is how far back the estimate averages.

    ``min_noise_uV`` is the floor of the noise estimate (sigma, uV), so the threshold
    is never closer to zero than ``threshold_sigma * min_noise_uV``. The default 1 uV
    is below the band-limited noise of any real MEA recording (amplifier and electrode
    together give about 2 uV rms or more in the 300-3000 Hz band); it only matters on a
    flat channel, where the noise estimate would otherwise be ~0. The detector also
    never uses a floor below two ADC steps (``2 * uV_per_bit``).
    """

    band_hz: tuple[float, float] = (300.0, 3000.0)
    order: int = 3
    threshold_sigma: float = -5.0
    dead_time_ms: float = 1.0
    peak_window_ms: float = 0.5
    blank_ms: float = 3.0
    noise_update_ms: float = 50.0
    noise_window_ms: float = 1000.0
    min_noise_uV: float = 1.0

    def __post_init__(self) -> None:
        low, high = (float(f) for f in self.band_hz)
        if not 0.0 < low < high:
            raise ValueError(
                f"band_hz must be (low, high) with 0 < low < high Hz, not {self.band_hz}"
            )
        if int(self.order) != self.order or not 1 <= self.order <= 10:
            raise ValueError(f"order must be an integer from 1 to 10, not {self.order}")
        if not self.threshold_sigma < 0:
            raise ValueError(
                f"threshold_sigma must be negative (e.g. -5.0), not {self.threshold_sigma}"
            )
        for name in ("dead_time_ms", "peak_window_ms", "blank_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 ms, not {value}")
        if not (math.isfinite(self.noise_update_ms) and self.noise_update_ms > 0):
            raise ValueError(f"noise_update_ms must be > 0 ms, not {self.noise_update_ms}")
        if not self.noise_window_ms >= self.noise_update_ms:
            raise ValueError(
                f"noise_window_ms must be >= noise_update_ms ({self.noise_update_ms} ms), "
                f"not {self.noise_window_ms}"
            )
        if not (math.isfinite(self.min_noise_uV) and self.min_noise_uV > 0):
            raise ValueError(
                f"min_noise_uV must be a finite number > 0 uV (e.g. 1.0), not {self.min_noise_uV}"
            )


@njit(cache=True, nogil=True)
def _emit(c, sample, amp, counters, spk_sample, spk_channel, spk_amp):
    i = counters[_N_SPIKES]
    spk_sample[i] = sample
    spk_channel[i] = c
    spk_amp[i] = amp
    counters[_N_SPIKES] = i + 1


@njit(cache=True, nogil=True)
def _close_search(c, dead, fstate, istate, counters, spk_sample, spk_channel, spk_amp):
    """Report channel ``c``'s pending spike and start its dead time."""
    peak = istate[_PEAK_SAMPLE, c]
    _emit(c, peak, fstate[_PEAK_VAL, c], counters, spk_sample, spk_channel, spk_amp)
    istate[_LEFT, c] = 0
    istate[_DEAD_UNTIL, c] = peak + dead


@njit(cache=True, nogil=True)
def _update_noise(hist, ring, fstate, counters, thr_sigma, noise_floor):
    """Close a noise epoch: histogram median -> sigma, push to ring, refresh thresholds.

    The noise is the mean of the ring, but never below ``noise_floor``.
    """
    n_ch, n_bins = hist.shape
    half = counters[_HIST_COUNT] / 2.0
    pos = counters[_RING_POS]
    for c in range(n_ch):
        cum = 0.0
        med = (n_bins - 1) * NOISE_BIN_UV
        for b in range(n_bins):
            h = hist[c, b]
            if h > 0 and cum + h >= half:
                med = (b + (half - cum) / h) * NOISE_BIN_UV
                break
            cum += h
        ring[pos, c] = np.float32(med / MAD_TO_SIGMA)
    k = ring.shape[0]
    counters[_RING_POS] = (pos + 1) % k
    fill = min(counters[_RING_FILL] + 1, k)
    counters[_RING_FILL] = fill
    for c in range(n_ch):
        acc = 0.0
        for r in range(fill):
            acc += ring[r, c]
        noise = np.float32(max(acc / fill, noise_floor))
        fstate[_NOISE, c] = noise
        fstate[_THR, c] = noise * np.float32(thr_sigma)


@njit(cache=True, nogil=True, inline="always")
def _section(sos, k):
    """Coefficients b0, b1, b2, a1, a2 of second-order section ``k`` (a0 is 1)."""
    return sos[k, 0], sos[k, 1], sos[k, 2], sos[k, 4], sos[k, 5]


@njit(cache=True, nogil=True)
def _run(
    data, start_sample, uv_per_bit, thr_sigma, noise_floor, out, win_start, win_stop, sos,
    zi_unit, zf, fstate, istate, hist, ring, counters, params, spk_sample, spk_channel, spk_amp,
):  # fmt: skip
    """Filter and detect one block in three passes over it (input, filter, detection).

    Every pass does per sample exactly what it would do in any other split of
    the recording, so results do not depend on block boundaries.
    """
    n, n_ch = data.shape
    if n == 0:
        return
    uv = np.float32(uv_per_bit)
    hold = fstate[_HOLD]
    # Pass 1: input in uV, held inside blank windows; rows where the filter restarts.
    n_win = win_start.shape[0]
    blanked = np.zeros(n, np.bool_)
    reset_t = np.empty(n_win + 1, np.int64)
    reset_x = np.empty((n_win + 1, n_ch), np.float32)
    n_reset = 0
    if counters[_N_SEEN] == 0:
        for c in range(n_ch):
            hold[c] = np.float32(data[0, c]) * uv
    w = 0
    for t in range(n):
        s = start_sample + t
        while w < n_win and win_stop[w] <= s:
            w += 1
        if w < n_win and win_start[w] <= s:
            blanked[t] = True
            counters[_RESET] = 1
            for c in range(n_ch):
                out[t, c] = hold[c]
        else:
            for c in range(n_ch):
                x = np.float32(data[t, c]) * uv
                out[t, c] = x
                hold[c] = x
            if counters[_RESET] == 1:
                counters[_RESET] = 0
                reset_t[n_reset] = t
                reset_x[n_reset] = out[t]
                n_reset += 1
    # Pass 2: the band-pass, transposed direct form II as scipy.signal.sosfilt, in
    # groups of three second-order sections (the sections are padded with exact
    # pass-throughs to a multiple of three), channels innermost so it vectorises.
    for k in range(0, sos.shape[0], 3):
        b00, b01, b02, a01, a02 = _section(sos, k)
        b10, b11, b12, a11, a12 = _section(sos, k + 1)
        b20, b21, b22, a21, a22 = _section(sos, k + 2)
        # Separate fresh arrays: LLVM then knows they do not alias and vectorises.
        s0 = zf[k, 0].copy()
        s1 = zf[k, 1].copy()
        s2 = zf[k + 1, 0].copy()
        s3 = zf[k + 1, 1].copy()
        s4 = zf[k + 2, 0].copy()
        s5 = zf[k + 2, 1].copy()
        r = 0
        for t in range(n):
            if r < n_reset and reset_t[r] == t:
                for c in range(n_ch):
                    x0 = reset_x[r, c]
                    s0[c] = zi_unit[k, 0] * x0
                    s1[c] = zi_unit[k, 1] * x0
                    s2[c] = zi_unit[k + 1, 0] * x0
                    s3[c] = zi_unit[k + 1, 1] * x0
                    s4[c] = zi_unit[k + 2, 0] * x0
                    s5[c] = zi_unit[k + 2, 1] * x0
                r += 1
            for c in range(n_ch):
                x = out[t, c]
                y = b00 * x + s0[c]
                s0[c] = b01 * x - a01 * y + s1[c]
                s1[c] = b02 * x - a02 * y
                x = y
                y = b10 * x + s2[c]
                s2[c] = b11 * x - a11 * y + s3[c]
                s3[c] = b12 * x - a12 * y
                x = y
                y = b20 * x + s4[c]
                s4[c] = b21 * x - a21 * y + s5[c]
                s5[c] = b22 * x - a22 * y
                out[t, c] = y
        zf[k, 0, :] = s0
        zf[k, 1, :] = s1
        zf[k + 1, 0, :] = s2
        zf[k + 1, 1, :] = s3
        zf[k + 2, 0, :] = s4
        zf[k + 2, 1, :] = s5
    # Pass 3: detection, noise histogram, noise epochs. Channels in a peak search
    # are kept in a list; other channels cost one vectorised comparison a sample.
    peak_w = params[_P_PEAK]
    dead = params[_P_DEAD]
    epoch = params[_P_EPOCH]
    min_count = params[_P_MIN_COUNT]
    stride = params[_P_STRIDE]
    top = hist.shape[1] - 1
    bin_inv = np.float32(1.0 / NOISE_BIN_UV)
    thr = fstate[_THR]
    pval = fstate[_PEAK_VAL]
    left = istate[_LEFT]
    psamp = istate[_PEAK_SAMPLE]
    dead_until = istate[_DEAD_UNTIL]
    active = istate[_ACTIVE]
    prev0 = fstate[_PREV].copy()
    hist_phase = counters[_N_SEEN] % stride
    epoch_phase = counters[_N_SEEN] % epoch
    r = 0
    for t in range(n):
        s = start_sample + t
        is_reset = r < n_reset and reset_t[r] == t
        if is_reset:
            r += 1
        if blanked[t] or is_reset:
            for i in range(counters[_N_ACTIVE]):
                _close_search(
                    active[i], dead, fstate, istate, counters, spk_sample, spk_channel, spk_amp
                )
            counters[_N_ACTIVE] = 0
        if not blanked[t]:
            row = out[t]
            i = 0
            while i < counters[_N_ACTIVE]:
                c = active[i]
                y = row[c]
                if y < thr[c]:
                    if y < pval[c]:
                        pval[c] = y
                        psamp[c] = s
                    left[c] -= 1
                    if left[c] > 0:
                        i += 1
                        continue
                _close_search(c, dead, fstate, istate, counters, spk_sample, spk_channel, spk_amp)
                last = counters[_N_ACTIVE] - 1
                active[i] = active[last]
                counters[_N_ACTIVE] = last
            crossings = 0
            if t == 0:
                for c in range(n_ch):
                    crossings += row[c] < thr[c] <= prev0[c]
            else:
                for c in range(n_ch):
                    if out[t, c] < thr[c] and out[t - 1, c] >= thr[c]:
                        crossings += 1
            if crossings > 0:
                for c in range(n_ch):
                    y = row[c]
                    p = out[t - 1, c] if t > 0 else prev0[c]
                    if y < thr[c] <= p and left[c] == 0 and s >= dead_until[c]:
                        pval[c] = y
                        psamp[c] = s
                        if peak_w == 1:
                            _emit(c, s, y, counters, spk_sample, spk_channel, spk_amp)
                            dead_until[c] = s + dead
                        else:
                            left[c] = peak_w - 1
                            active[counters[_N_ACTIVE]] = c
                            counters[_N_ACTIVE] += 1
            if hist_phase == 0:
                for c in range(n_ch):
                    a = abs(row[c]) * bin_inv
                    b = top if a >= top else np.int64(a)
                    hist[c, b] += 1
                counters[_HIST_COUNT] += 1
        counters[_N_SEEN] += 1
        hist_phase = 0 if hist_phase == stride - 1 else hist_phase + 1
        epoch_phase += 1
        if epoch_phase == epoch:
            epoch_phase = 0
            if counters[_HIST_COUNT] >= min_count:
                _update_noise(hist, ring, fstate, counters, thr_sigma, noise_floor)
            hist[:, :] = 0
            counters[_HIST_COUNT] = 0
    fstate[_PREV, :] = out[n - 1]


def _ms_to_samples(ms: float, sample_rate: float) -> int:
    return int(round(ms * sample_rate / 1000.0))


class SpikeDetector:
    """Causal band-pass, MAD noise, threshold detection and blanking, block by block.

    ``process(block)`` returns the filtered signal in uV (float32, samples x
    channels) and the spikes reported while processing the block. The numba
    kernel is compiled (or loaded from the on-disk cache) in the constructor.
    ``noise_floor_uV`` is the smallest noise the detector uses,
    ``max(config.min_noise_uV, 2 * uV_per_bit)``. Not thread-safe: one thread calls
    :meth:`blank` and :meth:`process`.
    """

    def __init__(
        self,
        n_channels: int,
        sample_rate: float,
        uV_per_bit: float,
        config: DetectorConfig = DetectorConfig(),  # noqa: B008 (frozen, so safe)
    ) -> None:
        if int(n_channels) != n_channels or n_channels < 1:
            raise ValueError(f"n_channels must be a positive integer, not {n_channels}")
        if not (math.isfinite(sample_rate) and sample_rate > 0):
            raise ValueError(f"sample_rate must be a positive number of Hz, not {sample_rate}")
        if not (math.isfinite(uV_per_bit) and uV_per_bit > 0):
            raise ValueError(f"uV_per_bit must be a positive number, not {uV_per_bit}")
        nyquist = sample_rate / 2.0
        low, high = (float(f) for f in config.band_hz)
        if not high < nyquist:
            raise ValueError(
                f"band_hz must lie inside (0, {nyquist:g}) Hz, the Nyquist range of "
                f"{sample_rate:g} Hz sampling, not {config.band_hz}"
            )
        self.n_channels = int(n_channels)
        self.sample_rate = float(sample_rate)
        self.uV_per_bit = float(uV_per_bit)
        self.config = config
        self.noise_floor_uV = max(float(config.min_noise_uV), 2.0 * self.uV_per_bit)
        import scipy.signal  # here: it costs a second or two to import, and only a run needs it

        sos = scipy.signal.butter(
            int(config.order), (low, high), btype="bandpass", fs=sample_rate, output="sos"
        )
        self.sos = np.ascontiguousarray(sos, dtype=np.float32)
        # The kernel runs sections in threes: pad with exact pass-throughs (y = x).
        n_pad = -len(sos) % 3
        padded = np.vstack([sos, np.tile([1.0, 0, 0, 1.0, 0, 0], (n_pad, 1))])
        self._sos_run = np.ascontiguousarray(padded, dtype=np.float32)
        self._zi_unit = np.ascontiguousarray(scipy.signal.sosfilt_zi(padded), dtype=np.float32)
        self._peak = max(1, _ms_to_samples(config.peak_window_ms, sample_rate))
        self._dead = _ms_to_samples(config.dead_time_ms, sample_rate)
        self._blank_len = _ms_to_samples(config.blank_ms, sample_rate)
        self._epoch = max(1, _ms_to_samples(config.noise_update_ms, sample_rate))
        n_epochs = max(1, int(round(config.noise_window_ms / config.noise_update_ms)))
        stride = max(1, int(round(sample_rate / NOISE_SAMPLE_HZ)))
        min_count = max(1, -(-self._epoch // stride) // 2)
        self._params = np.array(
            [self._peak, self._dead, self._epoch, min_count, stride], dtype=np.int64
        )
        n_sec = self._sos_run.shape[0]
        self._zf = np.zeros((n_sec, 2, self.n_channels), np.float32)
        self._fstate = np.zeros((_N_FSTATE, self.n_channels), np.float32)
        self._istate = np.zeros((_N_ISTATE, self.n_channels), np.int64)
        self._hist = np.zeros((self.n_channels, NOISE_BINS), np.int32)
        self._ring = np.zeros((n_epochs, self.n_channels), np.float32)
        self._counters = np.zeros(_N_COUNTERS, np.int64)
        self._alloc_spikes(self._spike_capacity(25))
        self._no_windows = np.zeros(0, np.int64)
        self._no_spikes = SpikeEvents.empty()  # shared: zero-length arrays cannot change
        self.reset()
        self._warm_up()

    # -- public API -----------------------------------------------------------------

    @property
    def noise_uV(self) -> np.ndarray:
        """Current noise sigma per channel (float32 uV, >= ``noise_floor_uV``); NaN in warm-up."""
        noise = self._fstate[_NOISE].copy()
        if self._counters[_RING_FILL] == 0:
            noise[:] = np.nan
        return noise

    @property
    def thresholds_uV(self) -> np.ndarray:
        """Current detection thresholds per channel (float32 uV, negative); NaN in warm-up."""
        return self.noise_uV * np.float32(self.config.threshold_sigma)

    @property
    def warmed_up(self) -> bool:
        """Whether a noise estimate exists, i.e. detection is live."""
        return bool(self._counters[_RING_FILL] > 0)

    @property
    def warmup_samples(self) -> int:
        """Samples processed before the first noise estimate (and first possible spike)."""
        return self._epoch

    @property
    def max_report_delay_samples(self) -> int:
        """Most samples between a spike's reported sample and the sample that reports it."""
        return self._peak - 1

    def reset(self) -> None:
        """Forget all state: filter, noise, detection, pending blank windows."""
        self._zf[:] = 0
        self._fstate[:] = 0
        self._fstate[_THR] = -np.inf
        self._istate[:] = 0
        self._istate[_DEAD_UNTIL] = np.iinfo(np.int64).min
        self._hist[:] = 0
        self._ring[:] = 0
        self._counters[:] = 0
        self._counters[_RESET] = 1
        self._windows: list[tuple[int, int]] = []
        self._next_sample: int | None = None

    def blank(self, start_sample: int, stop_sample: int | None = None) -> None:
        """Blank ``[start_sample, stop_sample)`` (default length ``blank_ms``).

        Call before processing the block that contains ``start_sample``; samples
        already processed are not revisited. Overlapping windows merge.
        """
        start = int(start_sample)
        stop = start + self._blank_len if stop_sample is None else int(stop_sample)
        if stop < start:
            raise ValueError(
                f"blank window must have stop_sample >= start_sample, got [{start}, {stop})"
            )
        if stop == start:
            return
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self._windows, (start, stop)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._windows = merged

    def process(self, block: Block) -> tuple[np.ndarray, SpikeEvents]:
        """Filter and detect one block; return (filtered uV float32, spikes reported).

        A jump in ``block.start_sample`` (a gap) resets the filter like the end
        of a blank window; the sample grid of the noise estimate counts only
        samples processed.
        """
        data = block.data
        if data.shape[1] != self.n_channels:
            raise ValueError(
                f"block has {data.shape[1]} channels; this detector expects {self.n_channels}"
            )
        if block.uV_per_bit != self.uV_per_bit:
            raise ValueError(
                f"block uV_per_bit {block.uV_per_bit} differs from the detector's "
                f"{self.uV_per_bit}; make a detector for this device's scale"
            )
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        start = int(block.start_sample)
        n = data.shape[0]
        if self._next_sample is not None and start != self._next_sample:
            self._counters[_RESET] = 1
        self._next_sample = start + n
        if self._spk_sample.shape[0] < self._spike_capacity(n):
            self._alloc_spikes(self._spike_capacity(n))
        out = np.empty((n, self.n_channels), np.float32)
        win_start, win_stop = self._windows_in(start, start + n)
        _run(
            data, start, self.uV_per_bit, self.config.threshold_sigma, self.noise_floor_uV,
            out, win_start, win_stop, self._sos_run, self._zi_unit, self._zf, self._fstate,
            self._istate, self._hist, self._ring, self._counters, self._params, self._spk_sample,
            self._spk_channel, self._spk_amp,
        )  # fmt: skip
        n_spk = int(self._counters[_N_SPIKES])
        if n_spk:
            self._counters[_N_SPIKES] = 0
            spikes = _sorted_spikes(
                self._spk_sample[:n_spk], self._spk_channel[:n_spk], self._spk_amp[:n_spk]
            )
        else:
            spikes = self._no_spikes
        if self._windows and self._windows[0][1] <= start + n:
            self._windows = [w for w in self._windows if w[1] > start + n]
        return out, spikes

    # -- internals ---------------------------------------------------------------------

    def _spike_capacity(self, n_samples: int) -> int:
        """Most spikes one block can report: one pending plus one per dead time a channel."""
        return self.n_channels * (n_samples // max(self._dead, 1) + 2)

    def _alloc_spikes(self, capacity: int) -> None:
        self._spk_sample = np.empty(capacity, np.int64)
        self._spk_channel = np.empty(capacity, np.int16)
        self._spk_amp = np.empty(capacity, np.float32)

    def _windows_in(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        hits = [w for w in self._windows if w[0] < stop and w[1] > start]
        if not hits:
            return self._no_windows, self._no_windows
        return (
            np.array([w[0] for w in hits], np.int64),
            np.array([w[1] for w in hits], np.int64),
        )

    def _warm_up(self) -> None:
        """Compile (or load) the kernel with the exact argument types, touching no state."""
        empty = np.zeros((0, self.n_channels), np.int16)
        _run(
            empty, 0, self.uV_per_bit, self.config.threshold_sigma, self.noise_floor_uV,
            np.zeros((0, self.n_channels), np.float32), self._no_windows, self._no_windows,
            self._sos_run, self._zi_unit, self._zf, self._fstate, self._istate, self._hist,
            self._ring, self._counters, self._params, self._spk_sample, self._spk_channel,
            self._spk_amp,
        )  # fmt: skip


def _sorted_spikes(sample: np.ndarray, channel: np.ndarray, amp: np.ndarray) -> SpikeEvents:
    """Copy spikes into a SpikeEvents sorted by (sample, channel)."""
    if len(sample) > 1:
        order = np.lexsort((channel, sample))
        return SpikeEvents(sample[order], channel[order], amp[order])
    return SpikeEvents(sample.copy(), channel.copy(), amp.copy())


def detect(
    data: np.ndarray,
    sample_rate: float,
    uV_per_bit: float,
    config: DetectorConfig = DetectorConfig(),  # noqa: B008 (frozen, so safe)
    start_sample: int = 0,
    blank_windows: Iterable[tuple[int, int | None]] = (),
) -> SpikeEvents:
    """Detect spikes in a whole recording (int16, samples x channels) in one call.

    Same results as feeding the recording to a :class:`SpikeDetector` block by
    block. ``blank_windows`` are ``(start, stop)`` device samples (``stop=None``
    for ``blank_ms``), e.g. around recorded stimuli. Processes 1 s at a time to
    bound memory.
    """
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype != np.int16:
        raise ValueError("data must be a 2-D int16 array (samples x channels) of raw ADC values")
    det = SpikeDetector(data.shape[1], sample_rate, uV_per_bit, config)
    for a, b in blank_windows:
        det.blank(a, b)
    step = max(1, int(sample_rate))
    parts = []
    for i in range(0, data.shape[0], step):
        _, spikes = det.process(Block(start_sample + i, data[i : i + step], uV_per_bit))
        parts.append(spikes)
    return _sorted_concat(parts)


def _sorted_concat(parts: list[SpikeEvents]) -> SpikeEvents:
    """Concatenate spikes and sort by (sample, channel)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return SpikeEvents.empty()
    return _sorted_spikes(
        np.concatenate([p.sample for p in parts]),
        np.concatenate([p.channel for p in parts]),
        np.concatenate([p.amplitude_uV for p in parts]),
    )
