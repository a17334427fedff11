"""The simulated device (sim://): determinism, signal realism, stimulation semantics."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import imported_modules

from drivers.sim import SimDriver
from hardware_sim.cultures.poisson_burst import PoissonBurstCulture
from hardware_sim.mea import SimError
from mea_control.driver import DriverError, open_driver
from mea_control.dsp import SpikeDetector
from mea_control.layouts import load_layout
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse, StimReport, Tick

PULSE = StimPulse.biphasic(20.0, 200.0)


def make(url: str = "sim://?seed=1", block: int | None = None, fast: bool = True) -> SimDriver:
    driver = open_driver(url)
    assert isinstance(driver, SimDriver)
    driver.open()
    driver.set_fast(fast)
    driver.start(block)
    return driver


def read_blocks(driver: SimDriver, n: int) -> tuple[list[Block], list[StimReport]]:
    """The next ``n`` blocks, and the reports read on the way."""
    blocks: list[Block] = []
    reports: list[StimReport] = []
    while len(blocks) < n:
        event = driver.read()
        if isinstance(event, Block):
            blocks.append(event)
        else:
            assert isinstance(event, StimReport)
            reports.append(event)
    return blocks, reports


def trace_uV(blocks: list[Block]) -> np.ndarray:
    return np.concatenate([b.microvolts() for b in blocks])


def scripted_run(url: str, n_blocks: int, block: int | None = None, fast: bool = True,
                 ahead: int | None = None, fixed_at: int = 1234) -> list:
    """Every event of a run with pulses sent at fixed points of the stream: two as soon as
    possible, or (``ahead``) that many samples after the last block read; one at
    ``fixed_at``."""
    driver = make(url, block, fast)
    ch = driver.info.layout.channel("44")
    events: list = []
    end = 0
    for n in range(n_blocks):
        if n in (10, 30):
            at = None if ahead is None else end + ahead
            driver.stimulate(StimPattern.single([ch], PULSE, at_sample=at))
        if n == 12:
            driver.stimulate(StimPattern.single([ch, ch + 1], PULSE, at_sample=fixed_at))
        while True:
            events.append(driver.read())
            if isinstance(events[-1], Block):
                end = events[-1].stop_sample
                break
    return events


def same_events(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if type(x) is not type(y):
            return False
        if isinstance(x, Block):
            if (x.start_sample, x.seq) != (y.start_sample, y.seq):
                return False
            if not np.array_equal(x.data, y.data):
                return False
        elif x != y:
            return False
    return True


# -- URL, info, lifecycle ----------------------------------------------------------------------


def test_url_parameters_and_info():
    driver = open_driver("sim://?seed=3&layout=mcs60mea200&noise_uV=5&drop=0.1&bursts=no")
    assert isinstance(driver, SimDriver)
    assert driver.options["seed"] == 3 and driver.options["noise_uV"] == 5.0
    assert driver.options["bursts"] is False and driver.options["drop"] == 0.1
    with pytest.raises(DriverError):
        driver.info  # noqa: B018 - only after open()
    driver.open()
    info = driver.info
    assert info.name == "mea-control simulator" and info.simulated
    assert info.n_channels == 60 and info.layout.name == "mcs60mea200"
    assert info.sample_rate == 25000.0 and info.uV_per_bit == 0.195
    caps = info.capabilities
    assert caps.raw_stream and not caps.onboard_detection and caps.scheduled_stim
    assert set(caps.stim_modes) == {"current", "voltage"}
    assert info.limits["max_current_uA"] > 0 and info.limits["max_voltage_mV"] > 0
    assert info.describe()["layout"] == "mcs60mea200"

    default = open_driver("sim://")
    default.open()
    assert default.info.layout.name == "grid8x8_200um" and default.info.n_channels == 64


@pytest.mark.parametrize(
    "url, message",
    [
        ("sim://?drop=1.5", r"drop=1.5 is out of range"),
        ("sim://?noise_uV=-1", r"noise_uV=-1.0 is out of range"),
        ("sim://?culture=brain", r"has no culture 'brain'; accepted: poisson_burst"),
        ("sim://?seed=-1", r"seed=-1 is out of range; use a seed >= 0"),
        ("sim://?rate=5000", r"rate=5000 Hz is out of range; use 10000 to 100000 Hz"),
        ("sim://?rate=9999", r"real MEA amplifiers sample at 10-50 kHz"),
        ("sim://?rate=200000", r"rate=200000 Hz is out of range"),
        ("sim://?inhibition=-1", r"inhibition=-1.0 is out of range"),
        ("sim://?inhibition=0.2&culture=poisson_burst", r"applies to culture=network only"),
        ("sim://?raw=0&threshold_sd=0", r"threshold_sd=0.0 is out of range"),
    ],
)
def test_out_of_range_parameters_are_one_line_driver_errors(url, message):
    with pytest.raises(DriverError, match=message) as info:
        open_driver(url)
    assert "\n" not in str(info.value)


def test_lowest_rate_runs_the_default_detector():
    driver = make("sim://?seed=2&rate=10000")
    assert driver.info.sample_rate == 10_000.0
    blocks, _ = read_blocks(driver, 5)
    assert blocks[0].data.shape == (10, 64)
    SpikeDetector(64, driver.info.sample_rate, driver.info.uV_per_bit)  # band fits Nyquist
    assert "10000" in SimDriver.params["rate"].help


def test_unknown_layout_is_a_driver_error_with_the_other_option_checks():
    with pytest.raises(DriverError, match="nope"):
        open_driver("sim://?layout=nope")


def test_devices_does_not_import_the_simulators_physics_or_the_loop():
    """`mea-control devices` asks sim:// without building a simulator: no numba (the culture
    and electrode kernels, imported when the simulator opens), no scipy (scipy.signal is for
    a simulator's noise), no engine."""
    modules = imported_modules("-m", "mea_control.cli", "devices", "--timeout", "0.2")
    assert "hardware_sim.mea" in modules  # sim:// was asked (entry points load untraced)
    assert modules.intersection({"numba", "scipy", "mea_control.engine"}) == set()


def test_lifecycle():
    driver = open_driver("sim://?seed=1")
    driver.open()
    with pytest.raises(DriverError):
        driver.read()
    driver.set_fast(True)
    driver.start()
    with pytest.raises(DriverError):
        driver.start()
    block = driver.read()
    assert isinstance(block, Block) and block.data.shape == (25, 64)
    assert block.data.dtype == np.int16 and block.start_sample == 0 and block.seq == 0
    driver.stop()
    assert driver.read() is None
    with pytest.raises(DriverError):
        driver.stimulate(StimPattern.single([0], PULSE))
    driver.close()


def test_blocks_are_consecutive_and_sized():
    driver = make(block=40)
    blocks, _ = read_blocks(driver, 20)
    assert [b.start_sample for b in blocks] == [40 * i for i in range(20)]
    assert [b.seq for b in blocks] == list(range(20))
    assert all(b.n_samples == 40 for b in blocks)


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_same_blocks_different_seed_differs():
    a = scripted_run("sim://?seed=5", 200)
    b = scripted_run("sim://?seed=5", 200)
    c = scripted_run("sim://?seed=6", 200)
    assert same_events(a, b)
    assert not same_events(a, c)


def test_block_size_does_not_change_the_signal():
    """Pulses at fixed samples give the same samples whatever the block size."""
    pulses = [(2000, 20.0), (9000, 40.0), (9500, 40.0), (30000, 10.0)]

    def run(block: int) -> np.ndarray:
        driver = make("sim://?seed=4", block)
        for at, amp in pulses:
            driver.stimulate(StimPattern.single([27], StimPulse.biphasic(amp, 200), at))
        blocks, reports = read_blocks(driver, 50000 // block)
        assert [r.sample for r in reports] == [at for at, _ in pulses]
        return np.concatenate([b.data for b in blocks])

    assert np.array_equal(run(25), run(40))


def test_fast_and_paced_give_identical_blocks():
    # pulses booked 300 ms or more ahead of the last block read, in 10 ms blocks: "as soon
    # as possible" is wherever a paced device has got to, which a loaded machine moves by
    # blocks, and a reader that a busy machine holds up falls behind the device by tens of
    # ms (a pulse booked for a sample the device has passed is dropped)
    script = {"n_blocks": 120, "block": 250, "ahead": 7500, "fixed_at": 20_000}
    fast = scripted_run("sim://?seed=7", fast=True, **script)
    paced = scripted_run("sim://?seed=7", fast=False, **script)
    # the same blocks, samples and pulse reports; where a report falls between two blocks
    # depends, when paced, on when the device thread ran
    blocks = [[e for e in run if isinstance(e, Block)] for run in (fast, paced)]
    others = [[e for e in run if not isinstance(e, Block)] for run in (fast, paced)]
    assert same_events(*blocks) and others[0] == others[1] and len(others[0]) == 3


def test_paced_read_honours_timeout():
    driver = make("sim://?seed=1", block=2500, fast=False)  # one 100 ms block
    assert driver.read(timeout=0.001) is None
    block = driver.read()
    assert isinstance(block, Block) and block.start_sample == 0


def test_dropped_blocks_leave_gaps_and_change_nothing_else():
    full, _ = read_blocks(make("sim://?seed=2"), 300)
    driver = make("sim://?seed=2&drop=0.2")
    lossy: list[Block] = []
    while not lossy or lossy[-1].seq < 299:
        lossy.append(driver.read())
    seqs = [b.seq for b in lossy]
    assert len(seqs) < 290 and seqs == sorted(set(seqs))
    for b in lossy:
        assert b.start_sample == 25 * b.seq
        assert np.array_equal(b.data, full[b.seq].data)


# -- the signal --------------------------------------------------------------------------------


def test_noise_rms_in_range():
    driver = make("sim://?seed=1&bursts=0")
    blocks, _ = read_blocks(driver, 1000)
    x = trace_uV(blocks)
    robust_rms = np.median(np.abs(x - np.median(x, axis=0)), axis=0) / 0.6745
    assert np.all((robust_rms > 5.5) & (robust_rms < 8.5))
    assert 5.0 < np.median(x.std(axis=0)) < 10.0


def test_spike_waveforms_have_realistic_peaks_and_shape():
    # units 10-50 um from their electrode (the network's are anywhere: tests/test_culture.py)
    driver = make("sim://?seed=3&noise_uV=0&bursts=0&culture=poisson_burst&truth=1")
    blocks, _ = read_blocks(driver, 4000)
    x = trace_uV(blocks)
    events, _ = driver.ground_truth()
    assert len(events) > 200
    window = int(0.003 * 25000)
    checked = 0
    for i, (s, ch, amp) in enumerate(
        zip(events.sample, events.channel, events.amplitude_uV, strict=True)
    ):
        others = np.abs(events.sample - s) < window
        others[i] = False
        if others.any() or not window <= s < len(x) - window:
            continue  # overlapping spikes or too near the edge
        seg = x[s - window : s + window, ch]
        assert -150.0 <= seg.min() <= -40.0
        assert np.argmin(seg) == window  # the trough is at the ground-truth sample
        assert abs(seg.min() - amp) < 0.05 * abs(amp) + 1.0
        half = np.nonzero(seg < seg.min() / 2)[0]
        assert 0.1e-3 < len(half) / 25000 < 0.6e-3  # sharp trough, ~1 ms spike overall
        assert seg[window + 5 : window + 25].max() > 0.05 * abs(amp)  # repolarisation
        checked += 1
    assert checked > 100


def test_spontaneous_rate_and_bursts():
    """The Poisson culture's burst process (the network's: tests/test_culture.py)."""
    driver = make("sim://?seed=1&culture=poisson_burst&truth=1")
    read_blocks(driver, 20000)
    events, _ = driver.ground_truth()
    rates = np.bincount(events.channel, minlength=64) / 20.0
    active = rates > 0.2
    assert active.sum() > 32
    assert 1.0 < np.median(rates[active]) < 15.0
    # population rate in 10 ms bins: bursts are runs of high bins, every few seconds
    counts = np.bincount(events.sample // 250, minlength=2000)
    high = counts > max(4 * np.median(counts), 5)
    edges = np.diff(np.concatenate([[0], high.astype(int), [0]]))
    starts, stops = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    gaps = starts[1:] - stops[:-1]
    starts = starts[np.concatenate([[True], gaps > 10])]  # merge runs < 100 ms apart
    stops = stops[np.concatenate([gaps > 10, [True]])]
    long = (stops - starts) >= 8
    starts, stops = starts[long] * 0.01, stops[long] * 0.01
    assert 3 <= len(starts) <= 12
    assert 1.5 < np.median(np.diff(starts)) < 8.0
    assert np.all((stops - starts > 0.08) & (stops - starts < 0.8))
    # and the culture's own log agrees
    onsets = driver.mea.culture.burst_onsets() / 25000
    assert len(onsets) == pytest.approx(len(starts), abs=2)


def test_stimulation_evokes_spikes_nearby_rising_with_amplitude():
    """The Poisson culture's evoked responses (the network's: tests/test_culture.py)."""
    driver = make("sim://?seed=2&bursts=0&culture=poisson_burst&truth=1")
    layout = driver.info.layout
    ch = layout.channel("44")
    near = np.nonzero(layout.distances_um(ch) <= 250.0)[0]
    starts: dict[float, list[int]] = {}
    for amp in (5.0, 15.0, 40.0):
        starts[amp] = []
        for _ in range(25):
            driver.stimulate(StimPattern.single([ch], StimPulse.biphasic(amp, 200)))
            _, reports = read_blocks(driver, 200)
            starts[amp].append(reports[0].sample)
    events, _ = driver.ground_truth()
    samples = events.sample[np.isin(events.channel, near)]

    def count(at: list[int], lo_ms: float, hi_ms: float) -> int:
        s = np.asarray(at)
        lo, hi = s + int(lo_ms * 25), s + int(hi_ms * 25)
        return int((np.searchsorted(samples, hi) - np.searchsorted(samples, lo)).sum())

    evoked = {amp: count(at, 5, 50) for amp, at in starts.items()}
    spontaneous = sum(count(at, -50, -5) for at in starts.values()) / 3
    assert evoked[5.0] < evoked[15.0] < evoked[40.0]
    assert evoked[15.0] > 3 * spontaneous + 10
    # nothing is evoked outside 5-50 ms beyond the spontaneous level
    assert count(starts[40.0], 0.6, 4.5) <= 2 * spontaneous / 45 * 4 + 5
    # the effect falls with distance: far electrodes barely notice
    far = np.nonzero(layout.distances_um(ch) >= 800.0)[0]
    far_samples = events.sample[np.isin(events.channel, far)]
    at = np.asarray(starts[40.0])
    far_after = (
        np.searchsorted(far_samples, at + 1250) - np.searchsorted(far_samples, at + 125)
    ).sum()
    far_before = (
        np.searchsorted(far_samples, at - 125) - np.searchsorted(far_samples, at - 1250)
    ).sum()
    assert far_after < 2 * far_before + 10


def test_culture_is_independent_of_interval_size():
    layout = load_layout("grid8x8_200um")
    stims = [(1000, 27, PULSE), (1000, 28, PULSE), (40123, 30, StimPulse.biphasic(40, 200))]

    def run(step: int) -> tuple[np.ndarray, np.ndarray]:
        culture = PoissonBurstCulture(layout, 25000.0, seed=9)
        for start in range(0, 100000, step):
            culture.advance(start, step, [s for s in stims if start <= s[0] < start + step])
        return culture.spike_log()

    (s1, u1), (s2, u2) = run(25), run(1000)
    assert np.array_equal(s1, s2) and np.array_equal(u1, u2)


# -- stimulation semantics ---------------------------------------------------------------------


def test_report_precedes_the_block_with_the_pulse_and_artifact_is_there():
    driver = make("sim://?seed=1")
    blocks, _ = read_blocks(driver, 10)
    ch = driver.info.layout.channel("44")
    ticket = driver.stimulate(StimPattern.single([ch], PULSE))
    report = driver.read()
    assert isinstance(report, StimReport) and report.ticket == ticket and report.executed
    assert report.sample == blocks[-1].stop_sample
    block = driver.read()
    assert isinstance(block, Block) and block.start_sample == report.sample
    x = block.microvolts()
    assert abs(x[0, ch]) > 5000.0  # saturating on the stimulated electrode
    neighbour = driver.info.layout.channel("45")
    assert 200.0 < abs(x[0, neighbour]) < abs(x[0, ch])


def test_future_pattern_runs_at_its_sample_and_artifact_decays():
    driver = make("sim://?seed=1")
    ch = driver.info.layout.channel("44")
    at = 5000 + 7
    ticket = driver.stimulate(StimPattern.single([ch], PULSE, at_sample=at))
    events = [driver.read() for _ in range(260)]
    i = next(k for k, e in enumerate(events) if isinstance(e, StimReport))
    report = events[i]
    assert report == StimReport(ticket, at)
    before = [e for e in events[:i] if isinstance(e, Block)]
    assert before[-1].stop_sample <= at < before[-1].stop_sample + 25
    after = [e for e in events[i + 1 :] if isinstance(e, Block)]
    x = trace_uV(before + after)
    quiet = make("sim://?seed=1")  # the same culture and noise, never stimulated
    x0 = trace_uV([quiet.read() for _ in range(len(before))])
    assert np.array_equal(x[: at - 25], x0[: at - 25])  # nothing before
    assert abs(x[at, ch]) > 5000.0
    assert np.abs(x[at + 100 : at + 150, ch]).max() < 300.0  # recovered within 4 ms


def test_train_pulses_fall_in_later_blocks_with_one_report():
    driver = make("sim://?seed=1")
    ch = driver.info.layout.channel("44")
    pattern = StimPattern(((ch, PULSE),), train_count=3, train_rate_hz=50.0, at_sample=1000)
    driver.stimulate(pattern)
    blocks, reports = read_blocks(driver, 100)
    assert [r.sample for r in reports] == [1000]
    x = trace_uV(blocks)
    for offset in pattern.pulse_offsets(25000.0):
        assert abs(x[1000 + offset, ch]) > 5000.0
    assert np.abs(x[1100:1400, ch]).max() < 300.0


def test_voltage_mode_pulse_is_executed():
    driver = make("sim://?seed=1")
    pulse = StimPulse.biphasic(800.0, 200.0, mode="voltage")
    driver.stimulate(StimPattern.single([10], pulse, at_sample=500))
    blocks, reports = read_blocks(driver, 30)
    assert reports[0].executed and reports[0].sample == 500
    assert abs(trace_uV(blocks)[500, 10]) > 5000.0


def test_refused_patterns_are_reported_not_executed():
    driver = make("sim://?seed=1&layout=mcs60mea200")
    layout = driver.info.layout
    ref = layout.reference[0]
    bad = [
        (StimPattern.single([ref], PULSE), "cannot stimulate"),
        (StimPattern.single([0], StimPulse.biphasic(80.0, 200.0)), "limit"),
        (StimPattern.single([99], PULSE), "no channel"),
    ]
    tickets = [driver.stimulate(p) for p, _ in bad]
    blocks, reports = read_blocks(driver, 5)
    assert [r.ticket for r in reports] == tickets
    for report, (_, reason) in zip(reports, bad, strict=True):
        assert not report.executed and reason in report.reason
    assert np.abs(trace_uV(blocks)).max() < 1000.0  # no artifact anywhere


def test_abort_drops_queued_pulses():
    driver = make("sim://?seed=1")
    ticket = driver.stimulate(StimPattern.single([27], PULSE, at_sample=2000))
    read_blocks(driver, 10)
    driver.abort_stimulation()
    blocks, reports = read_blocks(driver, 100)
    assert len(reports) == 1 and reports[0].ticket == ticket
    assert not reports[0].executed and reports[0].reason == "aborted"
    assert np.abs(trace_uV(blocks)).max() < 1000.0


def test_stimulating_does_not_change_the_noise():
    """The noise has its own random stream: away from spikes and the artifact, the
    traces of a run with a pulse equal those of the same run without it."""
    # a culture whose pulses only add spikes, so that stretches without spikes remain
    url = "sim://?seed=8&bursts=0&culture=poisson_burst&truth=1"
    quiet, _ = read_blocks(make(url), 400)
    driver = make(url)
    driver.stimulate(StimPattern.single([27], PULSE, at_sample=1000))
    stimulated, _ = read_blocks(driver, 400)
    a, b = trace_uV(quiet), trace_uV(stimulated)
    events, _ = driver.ground_truth()
    untouched = np.ones(len(a), bool)
    untouched[1000 : 1000 + 200] = False  # the artifact
    for s in events.sample:
        untouched[max(0, s - 25) : s + 50] = False
    assert untouched[:1000].sum() > 500 and untouched[1200:].sum() > 2000
    assert np.array_equal(a[untouched], b[untouched])


def test_pattern_for_a_sample_already_past_is_dropped_not_run_late():
    driver = make("sim://?seed=1")
    read_blocks(driver, 10)
    assert driver.earliest_stim_sample() == 250
    ticket = driver.stimulate(StimPattern.single([27], PULSE, at_sample=100))
    blocks, reports = read_blocks(driver, 20)
    assert [r.ticket for r in reports] == [ticket] and not reports[0].executed
    assert "late: asked for sample 100, the device is at sample 250" in reports[0].reason
    assert np.abs(trace_uV(blocks)).max() < 1000.0  # nothing ran


def test_the_offered_sample_is_kept_for_the_next_pattern():
    driver = make("sim://?seed=1")
    read_blocks(driver, 4)
    offered = driver.earliest_stim_sample()
    assert offered == 100
    ticket = driver.stimulate(StimPattern.single([27], PULSE, at_sample=offered))
    _, reports = read_blocks(driver, 3)
    assert reports[0].ticket == ticket and reports[0].executed and reports[0].sample == 100
    # an offer is for one pattern only
    late = driver.stimulate(StimPattern.single([27], PULSE, at_sample=offered))
    _, reports = read_blocks(driver, 1)
    assert reports[0].ticket == late and not reports[0].executed


# -- spikes-only mode (raw=0) -------------------------------------------------------------------


def read_spikes_only(driver: SimDriver, n_ticks: int) -> tuple[list[SpikeEvents], list[Tick]]:
    """The next ``n_ticks`` Ticks and the spikes before them, each batch checked to lie
    between the Tick before it and the Tick after it."""
    spikes: list[SpikeEvents] = []
    ticks: list[Tick] = []
    batch: SpikeEvents | None = None
    while len(ticks) < n_ticks:
        event = driver.read()
        if isinstance(event, Tick):
            assert batch is None or batch.sample[-1] < event.sample
            ticks.append(event)
            batch = None
        elif isinstance(event, SpikeEvents):
            assert len(event) and batch is None  # one batch an interval, never empty
            assert not ticks or event.sample[0] >= ticks[-1].sample
            spikes.append(batch := event)
        else:
            assert isinstance(event, StimReport)
    return spikes, ticks


def test_spikes_only_streams_electrode_events_and_ticks():
    driver = make("sim://?seed=1&raw=0&truth=1")
    caps = driver.info.capabilities
    assert not caps.raw_stream and caps.onboard_detection
    spikes, ticks = read_spikes_only(driver, 3000)
    assert [t.sample for t in ticks] == list(range(25, 25 * 3001, 25))
    events = SpikeEvents.concat(spikes)
    # ground truth: each unit's spike appears on its home electrode when it is large enough
    truth, units = driver.ground_truth()
    big = (-truth.amplitude_uV >= 5 * 7.0) & (truth.sample < ticks[-1].sample)
    found = set(zip(events.sample.tolist(), events.channel.tolist(), strict=True))
    expected = set(zip(truth.sample[big].tolist(), truth.channel[big].tolist(), strict=True))
    assert expected and expected <= found
    assert (events.amplitude_uV <= -35.0).all()


def test_spikes_only_threshold_changes_what_is_reported():
    low = SpikeEvents.concat(read_spikes_only(make("sim://?seed=1&raw=0"), 2000)[0])
    strict = make("sim://?seed=1&raw=0&threshold_sd=12")
    high = SpikeEvents.concat(read_spikes_only(strict, 2000)[0])
    assert len(low) > len(high) > 0
    assert (high.amplitude_uV <= -12 * 7.0).all()
    driver = make("sim://?seed=1&raw=0")
    with pytest.raises(SimError, match="out of range"):
        driver.mea.set_threshold(0.0)


def test_spikes_only_trials_are_the_same_for_any_block_size():
    """Fast dry runs may use long blocks: the trials' patterns still run at their samples."""
    from mea_control.engine import Engine, EngineConfig
    from mea_control.protocol import load_protocol

    tables = []
    for block_ms in (1.0, 20.0, 100.0):
        cls, _ = load_protocol("bss_isomura")
        driver = open_driver("sim://?seed=4&raw=0")
        driver.open()
        engine = Engine(driver, cls(sessions=1, trials_per_session=12),
                        EngineConfig(block_ms=block_ms, fast=True))
        summary = engine.run()
        assert summary["error"] is None and summary["trials"] == 12
        assert 12.3 <= summary["duration_s"] <= 12.4  # last trigger at 12 s + 300 ms window
        tables.append(engine.trials.table())
    a = tables[0]
    assert a.r.sum() > 0
    for b in tables[1:]:
        for name in ("o", "s", "r", "r_pre", "trigger_sample", "stim_sample"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.stim_sample[a.o.any(1)], a.trigger_sample[a.o.any(1)])


def test_inhibition_knob_reaches_the_network():
    """Bicuculline-like (less inhibition) fires more than control (1.4x in these 10 s),
    diazepam-like less."""
    counts = {}
    for inhibition in (0.2, 1.0, 2.0):
        driver = make(f"sim://?seed=2&raw=0&inhibition={inhibition}", block=2500)
        counts[inhibition] = len(SpikeEvents.concat(read_spikes_only(driver, 100)[0]))
    assert counts[0.2] > 1.3 * counts[1.0] > 0 and counts[2.0] < counts[1.0]


def test_electrode_events_sorted_by_sample_then_channel_like_the_reference():
    """The compiled ElectrodeArray.events against the plain numpy definition: every
    (spike, electrode) pair over the threshold, at the trough, sorted stably."""
    from hardware_sim.electrodes import ElectrodeArray

    layout = load_layout("grid8x8_200um")
    rng = np.random.default_rng(0)
    electrodes = ElectrodeArray(layout, rng.uniform(-800, 800, (300, 2)), 25000.0, seed=0)

    def reference(samples, units, threshold):
        start = electrodes.footprint_start
        counts = start[units + 1] - start[units]
        idx = np.repeat(start[units] - np.cumsum(counts) + counts, counts)
        idx += np.arange(int(counts.sum()))
        amp = electrodes.footprint_uV[idx]
        seen = amp >= threshold
        s = np.repeat(samples + electrodes.trough_offset, counts)[seen]
        ch = electrodes.footprint_channel[idx][seen]
        order = np.lexsort((ch, s))
        return s[order], ch[order], -amp[seen][order]

    # coincident spikes (same sample, shared electrodes) and unsorted input included
    for samples in (np.sort(rng.integers(0, 200, 400)), rng.integers(0, 200, 400)):
        units = rng.integers(0, 300, 400).astype(np.int32)
        for threshold in (35.0, 28.7, 5.0):
            ev = electrodes.events(samples, units, threshold)
            assert ev.sample.dtype == np.int64 and ev.channel.dtype == np.int16
            for got, want in zip((ev.sample, ev.channel, ev.amplitude_uV),
                                 reference(samples, units, threshold), strict=True):
                np.testing.assert_array_equal(got, want)
    assert len(electrodes.events(np.empty(0, np.int64), np.empty(0, np.int32), 35.0)) == 0


def test_spikes_only_run_keeps_no_blanking_windows():
    """No raw blocks come, so the detector would never drop its blanking windows: a long
    dry run must not pile them up (it once made runs slow down quadratically)."""
    from mea_control.engine import Engine, EngineConfig
    from mea_control.protocol import load_protocol

    cls, _ = load_protocol("bss_isomura")
    driver = open_driver("sim://?seed=4&raw=0")
    driver.open()
    engine = Engine(driver, cls(sessions=1, trials_per_session=8),
                    EngineConfig(block_ms=100.0, fast=True))
    summary = engine.run()
    assert summary["error"] is None and summary["stims_executed"] > 0
    assert engine.detector._windows == []


def test_ground_truth_is_kept_only_when_asked_for():
    """The spike log grows with every simulated spike (a long run on the default sim://
    once reached 1.4 GB): it is opt-in, with the burst log, and asking a driver that keeps
    none is an error."""
    default = make("sim://?seed=1")
    read_blocks(default, 200)
    with pytest.raises(DriverError, match="truth=1"):
        default.ground_truth()
    with pytest.raises(RuntimeError, match="keep_log=True"):
        default.mea.culture.bursts()  # the network's burst log grew too (about 1 MB an hour)
    kept = make("sim://?seed=1&truth=1")
    read_blocks(kept, 200)
    events, units = kept.ground_truth()
    assert len(events) == len(units) > 0
    kept.mea.culture.bursts()
