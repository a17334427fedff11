"""Network bursts and burstiness, from a culture's spikes: online (batch by batch) or for a
whole recording.

A network burst (Wagenaar, Pine & Potter 2006, BMC Neurosci 7:11; Wagenaar et al. 2005,
J Neurosci 25:680) is a period in which the array-wide spike rate is far above its usual
level. Here the spikes of every electrode given are counted in bins of ``bin_s`` (10 ms);
a bin with more than ``threshold`` spikes is high; a burst runs from its first high bin to
the end of its last, bridging runs of at most ``gap_bins`` low bins (40 ms), and counts
if it spans at least ``min_bins`` bins (40 ms) and its highest bin reaches ``peak``
spikes (a network burst recruits the array at once; a flurry of responses to pulses
crosses the threshold but stays far below a burst's peak). With no threshold given, the offline
functions take ``max(4 x median bin count, 5)`` (:func:`threshold_from`).

The burstiness index of Wagenaar et al. 2005 is ``(f15 - 0.15) / 0.85``, ``f15`` the
fraction of all spikes that fall in the 15 % most active 1-s bins: 0 for a flat rate, 1
when every spike is in bursts (:func:`burstiness_index`).

Times are device samples; an online caller makes a :class:`SpikeCounts` at its start,
``add``s each batch of spike samples, and hands the complete bins to a
:class:`BurstDetector` (as ``burst_quieting`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Width of the bins the array-wide rate is counted in, s.
BIN_S = 0.01
#: Share of the 1-s bins whose spikes make f15.
TOP_FRACTION = 0.15


@dataclass(frozen=True)
class Burst:
    """A network burst: from ``start`` to ``stop`` (device samples), ``spikes`` in it."""

    start: int
    stop: int
    spikes: int


class SpikeCounts:
    """Array-wide spike counts in bins of ``bin_s`` from ``start_sample``, fed a batch of
    spike samples at a time (spikes before ``start_sample`` are left out)."""

    def __init__(self, sample_rate: float, start_sample: int, bin_s: float = BIN_S) -> None:
        self.sample_rate = sample_rate
        self.start_sample = int(start_sample)
        self.bin_samples = sample_rate * bin_s
        self._counts = np.zeros(1024, np.int32)

    def add(self, samples: np.ndarray) -> None:
        """Count a batch of spike samples."""
        index = ((np.asarray(samples, np.int64) - self.start_sample) // self.bin_samples)
        index = index[index >= 0].astype(np.int64)
        if not len(index):
            return
        need = int(index.max()) + 1
        if need > len(self._counts):
            grown = np.zeros(max(need, 2 * len(self._counts)), np.int32)
            grown[: len(self._counts)] = self._counts
            self._counts = grown
        lo = int(index.min())
        self._counts[lo:need] += np.bincount(index - lo).astype(np.int32)

    def complete(self, sample: int) -> int:
        """How many bins end at or before ``sample``."""
        return max(0, int((sample - self.start_sample) // self.bin_samples))

    def counts(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """Counts of bins ``first`` to ``stop`` (exclusive; zeros past the last spike)."""
        stop = len(self._counts) if stop is None else stop
        out = np.zeros(max(stop - first, 0), np.int64)
        have = self._counts[first:stop]
        out[: len(have)] = have
        return out

    def bin_start(self, index: int) -> int:
        """The device sample at which bin ``index`` starts."""
        return self.start_sample + int(round(index * self.bin_samples))


class BurstDetector:
    """Network bursts found online in the bins of a :class:`SpikeCounts`: runs of bins
    above ``threshold`` (spikes per bin) whose highest bin reaches ``peak``.

    ``update(sample)`` looks at the bins complete at that sample and returns the bursts
    that ended (``gap_bins`` low bins after their last high bin); ``finish`` ends the one
    still open at the end of a recording or a phase. Every burst found is in ``bursts``.
    """

    def __init__(self, counts: SpikeCounts, threshold: float, peak: float = 0.0,
                 gap_bins: int = 4, min_bins: int = 4, first_bin: int = 0) -> None:
        self.bins = counts
        self.threshold = float(threshold)
        self.peak = float(peak)
        self.gap_bins = gap_bins
        self.min_bins = min_bins
        self.bursts: list[Burst] = []
        self._next = first_bin  # the next bin to look at
        self._open: tuple[int, int] | None = None  # (first, last) high bin of a burst

    def update(self, sample: int) -> list[Burst]:
        """Look at the bins complete at ``sample``; the bursts that ended."""
        first, stop = self._next, self.bins.complete(sample)
        if stop <= first:
            return []
        self._next = stop
        ended: list[Burst] = []
        for k in first + np.flatnonzero(self.bins.counts(first, stop) > self.threshold):
            if self._open is not None and k - self._open[1] - 1 > self.gap_bins:
                ended += self.finish()
            self._open = (int(k), int(k)) if self._open is None else (self._open[0], int(k))
        if self._open is not None and stop - self._open[1] - 1 > self.gap_bins:
            ended += self.finish()
        return ended

    def finish(self) -> list[Burst]:
        """End the burst still open (at the end of a recording or a phase)."""
        if self._open is None:
            return []
        first, last = self._open
        self._open = None
        counts = self.bins.counts(first, last + 1)
        if last + 1 - first < self.min_bins or counts.max() < self.peak:
            return []
        spikes = int(counts.sum())
        burst = Burst(self.bins.bin_start(first), self.bins.bin_start(last + 1), spikes)
        self.bursts.append(burst)
        return [burst]


def threshold_from(counts: np.ndarray) -> float:
    """A burst threshold for bins of array-wide counts: 4 x their median, at least 5."""
    return max(4.0 * float(np.median(counts)) if len(counts) else 0.0, 5.0)


def network_bursts(samples: np.ndarray, sample_rate: float, start: int, stop: int,
                   threshold: float | None = None, bin_s: float = BIN_S) -> list[Burst]:
    """The network bursts of a recording's spikes between ``start`` and ``stop`` (device
    samples); ``threshold`` in spikes per bin, by default :func:`threshold_from`."""
    samples = np.asarray(samples, np.int64)
    counts = SpikeCounts(sample_rate, start, bin_s)
    counts.add(samples[samples < stop])
    n = counts.complete(stop)
    detector = BurstDetector(counts, threshold if threshold is not None
                             else threshold_from(counts.counts(0, n)))
    detector.update(stop)
    detector.finish()
    return detector.bursts


def starts_and_stops(bursts: list[Burst]) -> tuple[np.ndarray, np.ndarray]:
    """The bursts' start and stop samples as two int64 arrays."""
    return (np.array([b.start for b in bursts], np.int64),
            np.array([b.stop for b in bursts], np.int64))


def per_minute(bursts: list[Burst], seconds: float) -> float:
    """Bursts per minute over ``seconds``."""
    return 60.0 * len(bursts) / seconds if seconds > 0 else 0.0


def burstiness_index(per_second: np.ndarray) -> float:
    """Wagenaar et al. 2005's burstiness index from array-wide spike counts in 1-s bins:
    (f15 - 0.15) / 0.85, f15 the fraction of the spikes in the 15 % most active bins
    (the share taken is the nearest whole number of bins, at least one); 0 for no spikes."""
    counts = np.sort(np.asarray(per_second, float))[::-1]
    total = counts.sum()
    if not len(counts) or total <= 0:
        return 0.0
    top = max(1, int(round(TOP_FRACTION * len(counts))))
    share = top / len(counts)
    if share >= 1.0:
        return 0.0
    return float((counts[:top].sum() / total - share) / (1.0 - share))


def burstiness(samples: np.ndarray, sample_rate: float, start: int, stop: int) -> float:
    """The burstiness index of a recording's spikes between ``start`` and ``stop``
    (whole seconds from ``start``)."""
    counts = SpikeCounts(sample_rate, start, bin_s=1.0)
    samples = np.asarray(samples, np.int64)
    counts.add(samples[samples < stop])
    return burstiness_index(counts.counts(0, counts.complete(stop)))
