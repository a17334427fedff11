"""Network bursts and the burstiness index on hand-made spike trains."""

import numpy as np
import pytest

from mea_control.bursts import (
    BurstDetector,
    SpikeCounts,
    burstiness,
    burstiness_index,
    network_bursts,
    per_minute,
    starts_and_stops,
    threshold_from,
)

RATE = 25000.0
SECONDS = 60


def poisson(rng, hz, seconds=SECONDS, electrodes=64):
    """Spike samples of ``electrodes`` independent Poisson trains, sorted."""
    n = rng.poisson(hz * electrodes * seconds)
    return np.sort(rng.integers(0, int(seconds * RATE), n))


def bursty(rng, onsets_s, spikes=1000, width_s=0.1, background_hz=5.0):
    """Poisson background plus ``spikes`` spikes spread over ``width_s`` at each onset."""
    parts = [poisson(rng, background_hz)]
    for t in onsets_s:
        parts.append(rng.integers(int(t * RATE), int((t + width_s) * RATE), spikes))
    return np.sort(np.concatenate(parts))


ONSETS = np.arange(2.0, 58.0, 4.0)  # 14 bursts, one every 4 s


def test_bursts_found_where_they_are_and_none_in_poisson():
    rng = np.random.default_rng(0)
    found = network_bursts(bursty(rng, ONSETS), RATE, 0, int(SECONDS * RATE))
    starts, stops = starts_and_stops(found)
    assert len(found) == len(ONSETS)
    assert np.all(np.abs(starts / RATE - ONSETS) <= 0.01)
    assert np.all(np.abs(stops / RATE - (ONSETS + 0.1)) <= 0.01)
    assert all(b.spikes >= 1000 for b in found)
    assert per_minute(found, SECONDS) == pytest.approx(14.0)
    # the same mean rate without bursts: none
    flat = poisson(rng, 5.0 + 14 * 1000 / 64 / SECONDS)
    assert network_bursts(flat, RATE, 0, int(SECONDS * RATE)) == []


def test_burstiness_index_flat_is_near_0_bursty_near_1():
    rng = np.random.default_rng(1)
    stop = int(SECONDS * RATE)
    assert burstiness(poisson(rng, 5.0), RATE, 0, stop) < 0.05
    rare = ONSETS[::2]  # in 7 of the 60 1-s bins: fewer than 15 %
    assert burstiness(bursty(rng, rare, background_hz=0.1), RATE, 0, stop) > 0.95
    assert 0.2 < burstiness(bursty(rng, rare), RATE, 0, stop) < 0.4  # a third of spikes in bursts
    # bursts in 14 of 60 bins: the 9 busiest hold 9 of them
    assert 0.5 < burstiness(bursty(rng, ONSETS, background_hz=0.1), RATE, 0, stop) < 0.65
    # the definition: (f15 - 0.15) / 0.85 over 1-s bins
    counts = np.r_[np.full(85, 10), np.full(15, 50)]
    f15 = 750 / (850 + 750)
    assert burstiness_index(counts) == pytest.approx((f15 - 0.15) / 0.85)
    assert burstiness_index(np.full(100, 7)) == pytest.approx(0.0)
    assert burstiness_index(np.r_[np.zeros(85), np.ones(15)]) == pytest.approx(1.0)
    assert burstiness_index(np.zeros(10)) == 0.0


def test_online_in_batches_finds_what_offline_finds():
    """Fed block by block (1 ms), the detector reports each burst once it has ended, and
    finds the bursts the offline function finds."""
    rng = np.random.default_rng(2)
    samples = bursty(rng, ONSETS)
    stop = int(SECONDS * RATE)
    offline = network_bursts(samples, RATE, 0, stop, threshold=20.0)
    counts = SpikeCounts(RATE, 0)
    detector = BurstDetector(counts, 20.0)
    ended = []
    block = 25
    for t in range(0, stop, block):
        counts.add(samples[(samples >= t) & (samples < t + block)])
        for burst in detector.update(t + block):
            assert t + block > burst.stop  # reported after it ended, not before
            ended.append(burst)
    ended += detector.finish()
    assert ended == offline == detector.bursts
    assert len(ended) == len(ONSETS)


def test_gaps_are_bridged_short_runs_and_low_peaks_left_out():
    counts = SpikeCounts(RATE, 0)
    bins = np.zeros(200, int)
    bins[10:14] = 30  # 40 ms: a burst
    bins[18:22] = 30  # after a 40 ms gap: the same burst
    bins[50:53] = 30  # 30 ms: too short
    bins[100:110] = 12  # long but its peak is low
    bins[150:154] = 30
    bins[159:163] = 30  # after a 50 ms gap: another burst
    per_bin = int(RATE * 0.01)
    counts.add(np.repeat(np.arange(200) * per_bin, bins))
    detector = BurstDetector(counts, threshold=10.0, peak=20.0)
    detector.update(200 * per_bin)
    detector.finish()
    starts, stops = starts_and_stops(detector.bursts)
    assert (starts // per_bin).tolist() == [10, 150, 159]
    assert (stops // per_bin).tolist() == [22, 154, 163]
    assert [b.spikes for b in detector.bursts] == [240, 120, 120]


def test_threshold_from_counts():
    assert threshold_from(np.array([0, 0, 1, 1, 1])) == 5.0
    assert threshold_from(np.array([3, 4, 4, 5, 100])) == 16.0
    assert threshold_from(np.array([], int)) == 5.0


def test_spikes_before_the_start_are_left_out():
    counts = SpikeCounts(RATE, 1000)
    counts.add(np.array([0, 999, 1000, 1249, 1250]))
    assert counts.counts(0, 2).tolist() == [2, 1]
    assert counts.complete(1000 + 250 * 3) == 3
