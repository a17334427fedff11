"""Tests for mea_control.dsp: filter, noise, detection, blanking, block invariance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mea_control.dsp import DetectorConfig, SpikeDetector, detect
from mea_control.types import Block, SpikeEvents

FS = 25_000.0
UV = 0.195
# White noise of this rms has ~7 uV rms in the 300-3000 Hz band at 25 kHz.
WHITE_UV = 15.0


def spike_shape(fs: float = FS) -> np.ndarray:
    """A unit extracellular spike: sharp trough at index 10, slower positive lobe.

    After the 300-3000 Hz band-pass its trough is about half as deep, followed by a
    positive rebound and a second, shallower negative lobe about 1 ms later.
    """
    t = (np.arange(int(2e-3 * fs)) - 10) / fs * 1e3  # ms from the trough
    return -np.exp(-0.5 * (t / 0.1) ** 2) + 0.2 * np.exp(-0.5 * ((t - 0.5) / 0.4) ** 2)


def recording(
    n: int,
    n_ch: int,
    seed: int,
    spikes: list[tuple[int, int, float]] = (),  # type: ignore[assignment]
    noise_uV: float = WHITE_UV,
) -> np.ndarray:
    """int16 raw samples: white noise plus spikes (trough sample, channel, amplitude uV)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, noise_uV, (n, n_ch))
    shape = spike_shape()
    for trough, ch, amp in spikes:
        a = trough - 10
        seg = shape[: max(0, min(len(shape), n - a))]
        x[a : a + len(seg), ch] += amp * seg
    return np.clip(np.round(x / UV), -32768, 32767).astype(np.int16)


def run_blocks(
    det: SpikeDetector,
    data: np.ndarray,
    sizes: list[int],
    blanks: list[tuple[int, int]] = (),  # type: ignore[assignment]
    start: int = 0,
) -> tuple[np.ndarray, SpikeEvents]:
    """Feed ``data`` in blocks (sizes cycled); call blank() just before each window's block.

    Returns the filtered signal and all spikes sorted by (sample, channel).
    """
    outs, parts = [], []
    pending = sorted(blanks)
    i, k = 0, 0
    while i < len(data):
        m = sizes[k % len(sizes)]
        k += 1
        block = Block(start + i, data[i : i + m], UV)
        while pending and pending[0][0] < block.stop_sample:
            det.blank(*pending.pop(0))
        out, spk = det.process(block)
        outs.append(out)
        parts.append(spk)
        i += m
    return np.concatenate(outs), sort_spikes(parts)


def sort_spikes(parts: list[SpikeEvents]) -> SpikeEvents:
    allp = SpikeEvents.concat(parts)
    order = np.lexsort((allp.channel, allp.sample))
    return SpikeEvents(allp.sample[order], allp.channel[order], allp.amplitude_uV[order])


def matched(truth: list[tuple[int, int, float]], found: SpikeEvents, tol: int = 15) -> int:
    """How many true spikes have a detection on their channel within ``tol`` samples."""
    hits = 0
    for trough, ch, _ in truth:
        on_ch = found.sample[found.channel == ch]
        hits += bool(np.any(np.abs(on_ch - trough) <= tol))
    return hits


def spike_train(n: int, n_ch: int, seed: int, per_ch: int, lo: float, hi: float, start: int):
    """Spikes at least 5 ms apart per channel, amplitudes uniform in [lo, hi] uV."""
    rng = np.random.default_rng(seed)
    out = []
    for ch in range(n_ch):
        gaps = rng.integers(125, (n - start) // per_ch, per_ch)
        times = start + np.cumsum(gaps)
        out += [
            (int(t), ch, float(a)) for t, a in zip(times, rng.uniform(lo, hi, per_ch), strict=True)
        ]
    return [s for s in out if s[0] < n - 60]


# -- filter and noise ---------------------------------------------------------------------


def test_filter_matches_scipy_sosfilt():
    data = recording(20_000, 8, seed=1)
    det = SpikeDetector(8, FS, UV)
    sos = scipy.signal.butter(3, (300, 3000), btype="bandpass", fs=FS, output="sos")
    np.testing.assert_allclose(det.sos, sos, rtol=1e-6)
    out, _ = det.process(Block(0, data, UV))
    x = data * UV
    zi = scipy.signal.sosfilt_zi(sos)[:, :, None] * x[0]  # steady state at the first sample
    ref, _ = scipy.signal.sosfilt(sos, x, axis=0, zi=zi)
    assert out.dtype == np.float32 and out.shape == data.shape
    assert np.max(np.abs(out - ref)) < 1e-4 * ref.std()


def test_noise_matches_mad_of_filtered_signal():
    data = recording(50_000, 16, seed=2)
    det = SpikeDetector(16, FS, UV)
    out, _ = det.process(Block(0, data, UV))
    last_second = out[-25_000:]
    mad = np.median(np.abs(last_second), axis=0) / 0.6745
    np.testing.assert_allclose(det.noise_uV, mad, rtol=0.03)
    np.testing.assert_allclose(det.noise_uV, last_second.std(axis=0), rtol=0.04)
    np.testing.assert_allclose(det.thresholds_uV, -5.0 * det.noise_uV, rtol=1e-6)
    assert det.noise_uV.dtype == np.float32


def test_noise_follows_a_change_in_noise_level():
    quiet = recording(25_000, 4, seed=3, noise_uV=10.0)
    loud = recording(50_000, 4, seed=4, noise_uV=20.0)
    det = SpikeDetector(4, FS, UV)
    det.process(Block(0, quiet, UV))
    before = det.noise_uV.copy()
    det.process(Block(25_000, loud, UV))
    np.testing.assert_allclose(det.noise_uV / before, 2.0, rtol=0.06)


def test_warmup_is_short_and_silent():
    n_warm = SpikeDetector(1, FS, UV).warmup_samples
    assert n_warm <= 0.1 * FS
    big = [(100 + 250 * i, 0, 150.0) for i in range(n_warm // 250 + 5)]
    data = recording(n_warm + 1_200, 1, seed=5, spikes=big)
    det = SpikeDetector(1, FS, UV)
    _, early = det.process(Block(0, data[: n_warm - 1], UV))
    assert len(early) == 0 and np.isnan(det.noise_uV).all() and not det.warmed_up
    _, late = det.process(Block(n_warm - 1, data[n_warm - 1 :], UV))
    assert det.warmed_up and np.isfinite(det.thresholds_uV).all()
    assert len(late) >= 4 and late.sample.min() >= n_warm


# -- detection ----------------------------------------------------------------------------


def test_detects_injected_spikes_with_peak_sample_and_amplitude():
    n, n_ch = 100_000, 16
    # Raw trough 100-150 uV: about 50-75 uV after the band-pass, 7-11 sigma.
    truth = spike_train(n, n_ch, seed=6, per_ch=60, lo=100.0, hi=150.0, start=5_000)
    data = recording(n, n_ch, seed=7, spikes=truth)
    found = detect(data, FS, UV)
    assert found.sample.dtype == np.int64 and found.amplitude_uV.dtype == np.float32
    assert matched(truth, found) >= 0.97 * len(truth)
    # A detection up to 2 ms after a true spike can be its filtered after-lobe, not noise.
    truth_at = {(t + d, c) for t, c, _ in truth for d in range(-15, 51)}
    false_pos = sum(
        (int(t), int(c)) not in truth_at for t, c in zip(found.sample, found.channel, strict=True)
    )
    assert false_pos <= 0.02 * len(truth)
    # Reported at the negative peak of the filtered signal, amplitude is that value.
    det = SpikeDetector(n_ch, FS, UV)
    out, spk = det.process(Block(0, data, UV))
    np.testing.assert_array_equal(out[spk.sample, spk.channel], spk.amplitude_uV)
    for t, c in zip(spk.sample, spk.channel, strict=True):
        assert out[t, c] == out[t - 2 : t + 3, c].min()


def test_few_false_positives_on_pure_noise():
    n, n_ch = 125_000, 16  # 5 s
    found = detect(recording(n, n_ch, seed=8), FS, UV)
    per_ch_per_s = len(found) / n_ch / (n / FS)
    assert per_ch_per_s < 0.1


def test_dead_time_respected():
    # Pairs of spikes 0.8 ms apart: one detection within a 1 ms dead time, two within 0.2 ms.
    firsts = [5_000 + 400 * i for i in range(20)]
    pairs = [(t + d, ch, 150.0) for t in firsts for d in (0, 20) for ch in (0, 1)]
    data = recording(14_000, 2, seed=9, spikes=pairs)
    for dead_ms, per_pair in ((1.0, 1), (0.2, 2)):
        cfg = DetectorConfig(dead_time_ms=dead_ms, peak_window_ms=0.3)
        found = detect(data, FS, UV, cfg)
        for ch in (0, 1):
            s = found.sample[found.channel == ch]
            assert np.all(np.diff(s) >= dead_ms * 1e-3 * FS)
            near = [np.sum((s >= t - 5) & (s <= t + 26)) for t in firsts]
            assert near == [per_pair] * len(firsts)


def test_peak_window_zero_reports_the_crossing_sample():
    data = recording(10_000, 2, seed=10, spikes=[(5_500, 0, 200.0), (5_800, 1, 200.0)])
    det = SpikeDetector(2, FS, UV, DetectorConfig(peak_window_ms=0.0))
    assert det.max_report_delay_samples == 0
    det.process(Block(0, data[:5_000], UV))
    thr = det.thresholds_uV  # in force until the next noise epoch, at sample 6250
    out, spk = det.process(Block(5_000, data[5_000:6_250], UV))
    assert {(t, c) for t, c in zip(spk.sample, spk.channel, strict=True)} >= {
        (5_499, 0),
        (5_799, 1),
    }
    for t, c, amp in zip(spk.sample - 5_000, spk.channel, spk.amplitude_uV, strict=True):
        assert out[t, c] < thr[c] <= out[t - 1, c]
        assert amp == out[t, c]


def test_spikes_reported_within_the_documented_delay():
    truth = spike_train(30_000, 4, seed=11, per_ch=30, lo=60.0, hi=150.0, start=2_000)
    data = recording(30_000, 4, seed=12, spikes=truth)
    det = SpikeDetector(4, FS, UV)
    delays = []
    for i in range(len(data)):  # 1-sample blocks: the block's sample is the report time
        _, spk = det.process(Block(i, data[i : i + 1], UV))
        delays += [i - s for s in spk.sample]
    assert len(delays) > 100
    assert 0 <= min(delays) and max(delays) <= det.max_report_delay_samples == 11


# -- blanking -----------------------------------------------------------------------------


def artifact(data: np.ndarray, at: int, amp_uV: float = 3000.0) -> None:
    """Add a stimulus artifact in place: a 0.2 ms biphasic swing then a decaying offset."""
    n = len(data)
    w = int(1e-4 * FS)
    tail = 400.0 * np.exp(-np.arange(n - at - 2 * w) / (0.02 * FS))
    x = data.astype(np.float64)
    x[at : at + w] -= amp_uV / UV
    x[at + w : at + 2 * w] += amp_uV / UV
    x[at + 2 * w :] += tail[:, None] / UV
    data[:] = np.clip(x, -32768, 32767).astype(np.int16)


def test_blanking_suppresses_artifact_and_window():
    n, n_ch = 40_000, 4
    stims = [10_000, 20_000, 30_000]
    # A real spike inside each blank window must not be reported either.
    data = recording(n, n_ch, seed=13, spikes=[(s + 20, 0, 150.0) for s in stims])
    for s in stims:
        artifact(data, s)
    blank_len = int(2e-3 * FS)
    unblanked = detect(data, FS, UV)
    near = [np.sum((unblanked.sample >= s) & (unblanked.sample < s + 500)) for s in stims]
    assert min(near) > 0  # the artifact alone would make spikes
    det = SpikeDetector(n_ch, FS, UV)
    out, spk = run_blocks(det, data, [25], blanks=[(s, s + blank_len) for s in stims])
    for s in stims:
        assert not np.any((spk.sample >= s) & (spk.sample < s + 25 * blank_len)), s
    assert np.max(np.abs(out[stims[0] - 100 : stims[0] + 2_000])) < 8 * det.noise_uV.max()


def test_blank_default_length_and_validation():
    det = SpikeDetector(2, FS, UV, DetectorConfig(blank_ms=3.0))
    det.blank(100)
    assert det._windows == [(100, 175)]
    det.blank(150, 300)
    det.blank(400, 400)
    assert det._windows == [(100, 300)]
    with pytest.raises(ValueError, match="stop_sample"):
        det.blank(10, 5)


def test_detect_offline_equals_streaming_with_blanks():
    truth = spike_train(30_000, 3, seed=14, per_ch=25, lo=60.0, hi=150.0, start=2_000)
    data = recording(30_000, 3, seed=15, spikes=truth)
    artifact(data, 12_345)
    windows = [(12_345, 12_345 + 50), (20_000, 20_010)]
    offline = detect(
        data, FS, UV, start_sample=1_000, blank_windows=[(a + 1_000, b + 1_000) for a, b in windows]
    )
    det = SpikeDetector(3, FS, UV)
    _, online = run_blocks(det, data, [25], [(a + 1_000, b + 1_000) for a, b in windows], 1_000)
    np.testing.assert_array_equal(offline.sample, online.sample)
    np.testing.assert_array_equal(offline.amplitude_uV, online.amplitude_uV)


def test_gap_in_start_sample_restarts_the_filter_without_spikes():
    data = recording(20_000, 2, seed=19)
    det = SpikeDetector(2, FS, UV)
    det.process(Block(0, data[:10_000], UV))
    jump = (data[10_000:] + np.int16(2_000)).astype(np.int16)  # +390 uV offset after the gap
    out, spk = det.process(Block(12_000, jump, UV))
    assert len(spk) <= 1 and np.abs(out[:50]).max() < 6 * det.noise_uV.max()


def test_reset_restarts_from_scratch():
    data = recording(5_000, 2, seed=16, spikes=[(3_000, 0, 150.0)])
    det = SpikeDetector(2, FS, UV)
    out1, spk1 = det.process(Block(0, data, UV))
    det.blank(10)
    det.reset()
    out2, spk2 = det.process(Block(0, data, UV))
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(spk1.sample, spk2.sample)


# -- the key invariant --------------------------------------------------------------------

N_INV, CH_INV = 12_000, 6
INV_CONFIG = DetectorConfig(noise_update_ms=20.0, noise_window_ms=100.0)
INV_TRUTH = spike_train(N_INV, CH_INV, seed=17, per_ch=25, lo=40.0, hi=150.0, start=200)
INV_DATA = recording(N_INV, CH_INV, seed=18, spikes=INV_TRUTH)
INV_STIMS = [3_000, 5_037, 5_080, 9_999]
for _s in INV_STIMS:
    artifact(INV_DATA, _s, amp_uV=1500.0)
# Windows of several lengths, one overlapping the next, one running to the end.
INV_BLANKS = [(3_000, 3_050), (5_037, 5_090), (5_080, 5_140), (9_999, 12_500)]


def _reference() -> tuple[np.ndarray, SpikeEvents]:
    det = SpikeDetector(CH_INV, FS, UV, INV_CONFIG)
    out, spk = run_blocks(det, INV_DATA, [N_INV], INV_BLANKS, start=777)
    return out, spk


INV_REF = _reference()


def test_invariance_reference_is_meaningful():
    out, spk = INV_REF
    assert len(spk) >= 0.5 * len(INV_TRUTH)
    # Some spikes inside blank windows would have been found without blanking.
    det = SpikeDetector(CH_INV, FS, UV, INV_CONFIG)
    _, unblanked = run_blocks(det, INV_DATA, [N_INV], start=777)
    assert len(unblanked) > len(spk)


@settings(
    max_examples=150, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(
    sizes=st.lists(
        st.one_of(st.integers(1, 3), st.integers(4, 60), st.integers(61, 3_000)),
        min_size=1,
        max_size=40,
    )
)
def test_output_is_identical_for_any_block_split(sizes: list[int]):
    det = SpikeDetector(CH_INV, FS, UV, INV_CONFIG)
    out, spk = run_blocks(det, INV_DATA, sizes, INV_BLANKS, start=777)
    ref_out, ref_spk = INV_REF
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(spk.sample, ref_spk.sample)
    np.testing.assert_array_equal(spk.channel, ref_spk.channel)
    np.testing.assert_array_equal(spk.amplitude_uV, ref_spk.amplitude_uV)


def test_one_sample_blocks_match_one_block():
    det = SpikeDetector(CH_INV, FS, UV, INV_CONFIG)
    out, spk = run_blocks(det, INV_DATA, [1], INV_BLANKS, start=777)
    np.testing.assert_array_equal(out, INV_REF[0])
    np.testing.assert_array_equal(spk.sample, INV_REF[1].sample)
    np.testing.assert_array_equal(spk.amplitude_uV, INV_REF[1].amplitude_uV)


# -- noise floor --------------------------------------------------------------------------


def flat_recording(n: int, n_ch: int, seed: int, spikes: list[tuple[int, int, float]]):
    """No noise at all: zeros, the given spikes, and 2 uV spikes of distant units (~50 Hz).

    Like ``sim://?noise_uV=0``: the signal is flat but for a few ADC steps now and then.
    """
    rng = np.random.default_rng(seed)
    distant = [
        (int(t), ch, 2.0) for ch in range(n_ch) for t in rng.integers(100, n - 100, n // 500)
    ]
    return recording(n, n_ch, seed, spikes=[*spikes, *distant], noise_uV=0.0)


def test_flat_channel_gives_only_the_real_spikes():
    truth = [(5_000 + 2_500 * i, i % 4, 80.0) for i in range(16)]
    data = flat_recording(50_000, 4, seed=12, spikes=truth)
    # A 2 ms dead time covers the spikes' filtered after-lobe (~1.2 ms after the trough),
    # which a 5 uV threshold would otherwise also catch.
    cfg = DetectorConfig(dead_time_ms=2.0)
    found = detect(data, FS, UV, cfg)
    assert len(found) == len(truth) and matched(truth, found) == len(truth)
    det = SpikeDetector(4, FS, UV)
    det.process(Block(0, data, UV))
    assert det.noise_floor_uV == DetectorConfig().min_noise_uV == 1.0
    np.testing.assert_array_equal(det.noise_uV, np.float32(1.0))
    np.testing.assert_array_equal(det.thresholds_uV, np.float32(-5.0))


def test_noise_floor_is_at_least_two_adc_steps():
    det = SpikeDetector(2, FS, 2.0)
    det.process(Block(0, np.zeros((5_000, 2), np.int16), 2.0))
    assert det.noise_floor_uV == 4.0
    np.testing.assert_array_equal(det.noise_uV, np.float32(4.0))
    assert SpikeDetector(2, FS, UV, DetectorConfig(min_noise_uV=3.0)).noise_floor_uV == 3.0


def test_noise_floor_does_not_change_a_normal_noise_estimate():
    data = recording(50_000, 4, seed=13)
    det = SpikeDetector(4, FS, UV)
    det.process(Block(0, data, UV))
    loose = SpikeDetector(4, FS, UV, DetectorConfig(min_noise_uV=1e-6))
    loose.process(Block(0, data, UV))
    assert det.noise_uV.min() > 5.0
    np.testing.assert_array_equal(det.noise_uV, loose.noise_uV)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"band_hz": (0.0, 3000.0)}, "band_hz"),
        ({"band_hz": (3000.0, 300.0)}, "band_hz"),
        ({"order": 0}, "order"),
        ({"threshold_sigma": 5.0}, "threshold_sigma"),
        ({"threshold_sigma": 0.0}, "threshold_sigma"),
        ({"dead_time_ms": -1.0}, "dead_time_ms"),
        ({"blank_ms": float("nan")}, "blank_ms"),
        ({"noise_update_ms": 0.0}, "noise_update_ms"),
        ({"noise_window_ms": 10.0}, "noise_window_ms"),
        ({"min_noise_uV": 0.0}, "min_noise_uV"),
        ({"min_noise_uV": -1.0}, "min_noise_uV"),
        ({"min_noise_uV": float("nan")}, "min_noise_uV"),
        ({"min_noise_uV": float("inf")}, "min_noise_uV"),
    ],
)
def test_bad_config_raises_clear_error(kwargs: dict, word: str):
    with pytest.raises(ValueError, match=word):
        DetectorConfig(**kwargs)


def test_bad_detector_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="Nyquist"):
        SpikeDetector(4, 5_000.0, UV)
    with pytest.raises(ValueError, match="n_channels"):
        SpikeDetector(0, FS, UV)
    with pytest.raises(ValueError, match="sample_rate"):
        SpikeDetector(4, 0.0, UV)
    with pytest.raises(ValueError, match="uV_per_bit"):
        SpikeDetector(4, FS, -1.0)
    det = SpikeDetector(4, FS, UV)
    with pytest.raises(ValueError, match="channels"):
        det.process(Block(0, np.zeros((10, 3), np.int16), UV))
    with pytest.raises(ValueError, match="int16"):
        detect(np.zeros((10, 3)), FS, UV)
