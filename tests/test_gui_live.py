"""The GUI's live buffers and rig session, without Qt: simulated device, fast mode.

The GUI runs in real time; fast mode here only makes the same runs quicker.
Every wait is on the buffers' or the session's condition, with a timeout.
"""

import numpy as np
import pytest

from mea_control import recording
from mea_control.driver import DriverError, open_driver
from mea_control.dsp import DetectorConfig, SpikeDetector
from mea_control.gui.feed import FLUSH_S, LiveFeed, Rings
from mea_control.gui.live import LiveBuffers
from mea_control.gui.session import RigSession
from mea_control.protocol import Protocol, ProtocolError
from mea_control.sinks import RunDescription
from mea_control.types import Block

FS = 25_000
WAIT_S = 60.0
#: A short BSS run: pulses every half second.
BSS = {"sessions": 1, "trials_per_session": 12, "isi_s": 0.5}
#: One that outlasts the test that stops it.
BSS_LONG = {"sessions": 1, "trials_per_session": 400, "isi_s": 0.5}


def connected(url: str) -> RigSession:
    session = RigSession()
    session.connect(url, fast=True)
    return session


@pytest.fixture
def rig():
    session = connected("sim://?seed=1")
    yield session
    assert session.disconnect(timeout=WAIT_S)


def wait_counts(session: RigSession, **least: int) -> None:
    """Wait until the buffers' counts (this run) reach ``least``."""
    buffers = session.buffers
    assert buffers.wait_for(
        lambda: all(buffers.counts.get(k, 0) >= v for k, v in least.items()), WAIT_S
    ), (least, buffers.counts)


def evoked_and_baseline(psth: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Mean spikes a bin 0-50 ms after the pulses and 200-300 ms after them."""
    return psth[edges[:-1] < 50].mean(), psth[edges[:-1] >= 200].mean()


def test_envelopes_keep_every_extreme_and_show_gaps():
    info = open_driver("sim://").described
    feed, buffers = LiveFeed(Rings(info.n_channels)), LiveBuffers()
    buffers.bind(feed.rings, info, feed.take_notes)
    feed.on_start(RunDescription(
        protocol="monitor", parameters={}, device_url="sim://", info=info, limits={},
        limit_notes=(), block_samples=25, fast=True, seed=0, watchdog_ms=200.0, detector={},
        software_version="test"))
    data = np.random.default_rng(0).integers(-3000, 3000, (FS, 64)).astype(np.int16)
    uV = data.astype(np.float32) * np.float32(info.uV_per_bit)
    sent = np.zeros(FS, bool)
    start = 0
    for i, size in enumerate(np.resize([25, 7, 31, 3], 2000)):  # bins never fit blocks
        stop = min(start + int(size), FS)
        if not 0.5 * FS <= start < 0.6 * FS:  # 100 ms lost
            feed.on_block(Block(start, data[start:stop], info.uV_per_bit, i), uV[start:stop])
            feed.on_clock(stop)
            sent[start:stop] = True
        start = stop
        if start == FS:
            break
    feed.on_stop({})  # the feed writes every 10 ms of data, and what is left at the end
    # each resolution (12, 96 and 768-sample bins), raw and filtered
    for window_s, pixels, bin_samples in ((0.2, 1000, 12), (1.0, 100, 96), (1.0, 10, 768)):
        for filtered in (False, True):
            snap = buffers.snapshot(window_s, channels=[3, 60], filtered=filtered, pixels=pixels)
            assert snap.trace_min.shape == (2, pixels)
            lo, hi = columns(snap, bin_samples, uV[:, [3, 60]], sent)
            np.testing.assert_allclose(snap.trace_min, lo, rtol=1e-6)
            np.testing.assert_allclose(snap.trace_max, hi, rtol=1e-6)
    snap = buffers.snapshot(1.0, channels=[0], pixels=100)
    assert 8 <= np.isnan(snap.trace_min).sum() <= 10  # the 100 ms lost


def test_a_run_stopped_before_its_first_block_leaves_the_feed_alone():
    # the monitor is stopped at once when a protocol starts right after connecting
    feed = LiveFeed(Rings(64))
    feed.on_stop({"interrupted": True})
    assert not feed.rings.header.any()


def _description(info):
    return RunDescription(
        protocol="monitor", parameters={}, device_url="sim://", info=info, limits={},
        limit_notes=(), block_samples=25, fast=True, seed=0, watchdog_ms=200.0, detector={},
        software_version="test")


def test_snapshot_carries_the_detectors_threshold_of_each_trace():
    """The feed writes the run's detection thresholds with the data; a snapshot gives
    those of its traces' electrodes (NaN before the detector's first noise estimate)."""
    info = open_driver("sim://").described
    detector = SpikeDetector(info.n_channels, FS, info.uV_per_bit, DetectorConfig())
    feed, buffers = LiveFeed(Rings(info.n_channels)), LiveBuffers()
    buffers.bind(feed.rings, info, feed.take_notes)
    feed.expect(None, lambda: detector.thresholds_uV)
    feed.on_start(_description(info))
    sigma_bits = np.linspace(2, 40, info.n_channels)  # each channel its own noise
    data = (np.random.default_rng(0).normal(0, 1, (FS // 2, info.n_channels))
            * sigma_bits).astype(np.int16)
    seen = []
    for i, start in enumerate(range(0, len(data), 25)):
        block = Block(start, data[start:start + 25], info.uV_per_bit, i)
        filtered, _ = detector.process(block)
        feed.on_block(block, filtered)
        feed.on_clock(block.stop_sample)
        if start in (500, len(data) - 25):  # 20 ms (warm-up) and the end
            seen.append(buffers.snapshot(0.2, channels=[3, 60], pixels=50))
    assert np.isnan(seen[0].trace_threshold_uV).all()
    want = detector.thresholds_uV[[3, 60]]
    assert np.isfinite(want).all() and want[1] < want[0] < 0
    assert seen[1].trace_threshold_uV == pytest.approx(want)
    feed.on_start(_description(info))  # a new run: a new detector, no threshold yet
    assert np.isnan(buffers.snapshot(0.2, channels=[3], pixels=50).trace_threshold_uV).all()


def test_the_rigs_thresholds_reach_the_window(rig):
    buffers = rig.buffers
    assert buffers.wait_for(lambda: np.isfinite(buffers.snapshot(
        1.0, channels=[0, 9], pixels=20).trace_threshold_uV).all(), WAIT_S)
    thr = buffers.snapshot(1.0, channels=[0, 9], pixels=20).trace_threshold_uV
    # the monitor's detector at -5 sigma of noise of about 7 uV rms
    assert ((thr > -100) & (thr < -10)).all()
    assert thr == pytest.approx(rig._engine.detector.thresholds_uV[[0, 9]], rel=0.25)


def columns(snap, bin_samples: int, uV: np.ndarray, sent: np.ndarray):
    """What each trace column must show: the extremes of the samples sent in its bins."""
    starts = np.rint((snap.trace_t * FS + snap.now) / bin_samples - 0.5).astype(int)
    ends = np.append(np.maximum(starts[1:], starts[:-1] + 1), (snap.now - 1) // bin_samples + 1)
    lo = np.full((uV.shape[1], len(starts)), np.nan)
    hi = lo.copy()
    for k, (a, b) in enumerate(zip(starts * bin_samples, ends * bin_samples, strict=True)):
        part = uV[max(a, 0):b][sent[max(a, 0):b]]
        if len(part):
            lo[:, k], hi[:, k] = part.min(axis=0), part.max(axis=0)
    return lo, hi


def test_monitor_feeds_traces_raster_and_rates(rig):
    buffers = rig.buffers
    assert rig.connected and not rig.running and rig.info.n_channels == 64
    assert buffers.wait_for(lambda: buffers.now >= 3 * FS, WAIT_S)
    snap = buffers.snapshot(window_s=2.0, channels=[0, 5, 9], pixels=400)
    assert snap.now >= 3 * FS and snap.sample_rate == FS and snap.n_electrodes == 64
    assert snap.trace_channels == [0, 5, 9] and snap.trace_filtered
    assert snap.trace_min.shape == snap.trace_max.shape == (3, 400)
    assert snap.trace_t.shape == (400,) and -2.0 <= snap.trace_t[0] < snap.trace_t[-1] < 0
    assert np.isfinite(snap.trace_min).all() and (snap.trace_min <= snap.trace_max).all()
    # band-passed noise of 7 uV rms with spikes: tens of uV, centred on zero
    assert 10 < np.median(snap.trace_max - snap.trace_min) < 200
    assert abs(np.median(snap.trace_min + snap.trace_max)) < 10
    raw = buffers.snapshot(window_s=2.0, channels=[0], filtered=False, pixels=50)
    assert raw.trace_min.shape == (1, 50) and not raw.trace_filtered
    assert np.abs(raw.trace_max).max() < 2000
    assert len(snap.spike_t) > 0 and ((snap.spike_t >= -2.0) & (snap.spike_t < 0)).all()
    assert set(snap.spike_channel) <= set(range(64))
    assert snap.rates_hz.shape == (64,) and snap.rates_hz.sum() > 0
    assert snap.status["blocks"] > 0 and snap.status["watchdog"] == "armed"
    assert "start" in [e.kind for e in snap.events]
    assert buffers.snapshot().events == []  # drained
    # a window longer than the data: the same shape, NaN where nothing was recorded yet
    wide = buffers.snapshot(window_s=60.0, channels=[1], pixels=300)
    assert wide.trace_min.shape == (1, 300)
    assert np.isnan(wide.trace_min[0, 0]) and np.isfinite(wide.trace_min[0, -1])
    with pytest.raises(ValueError, match="channels"):
        buffers.snapshot(channels=[64])


def test_bss_run_fills_psth_and_marks_pulses(rig):
    protocol = rig.start("bss_isomura", BSS, fast=True)
    assert rig.running and rig.protocol == "bss_isomura" and rig.protocol_instance is protocol
    wait_counts(rig, executed=4)
    snap = rig.buffers.snapshot(window_s=10.0)
    assert snap.status["protocol"] == "bss_isomura"
    assert len(snap.stim_t) >= 4 and len(snap.stim_channels) == len(snap.stim_t)
    assert all(chans for chans in snap.stim_channels)
    assert set(snap.stimulated) <= set(protocol.channels)
    assert snap.status["latency_p50_ms"] is not None
    assert rig.wait(WAIT_S) and not rig.running
    assert rig.last_summary["protocol"] == "bss_isomura"
    assert rig.last_summary["stims_executed"] >= snap.status["stims_executed"]
    # the PSTH outlives its run, and once the last pulse's window has passed (the
    # monitor's data carries it on) it holds every pulse the run's summary counts
    executed = rig.last_summary["stims_executed"]
    assert rig.buffers.wait_for(lambda: rig.buffers.snapshot().psth_pulses == executed, WAIT_S)
    snap = rig.buffers.snapshot()
    assert snap.psth_pulses == executed >= 4 and snap.psth.shape == (60,)
    assert snap.psth_edges_ms[0] == 0 and snap.psth_edges_ms[-1] == 300
    evoked, baseline = evoked_and_baseline(snap.psth, snap.psth_edges_ms)
    assert evoked > 3 * baseline and evoked > 1


def test_stop_stimulation_refuses_until_rearmed(rig):
    rig.start("bss_isomura", BSS_LONG, fast=True)
    wait_counts(rig, executed=2)
    rig.stop_stimulation()
    assert not rig.armed
    wait_counts(rig, refused=1)
    snap = rig.buffers.snapshot()
    kinds = [e.kind for e in snap.events]
    assert "disarm" in kinds and "refusal" in kinds
    assert snap.status["watchdog"].startswith("disarmed: stimulation stopped by the operator")
    executed = rig.buffers.counts["executed"]
    rig.rearm()
    assert rig.armed
    wait_counts(rig, executed=executed + 2)
    snap = rig.buffers.snapshot()
    assert snap.status["watchdog"] == "armed" and "rearm" in [e.kind for e in snap.events]
    # stopped stimulation outlasts the run: the next run starts disarmed
    rig.stop_stimulation()
    rig.stop()
    assert rig.wait(WAIT_S)
    assert not rig.armed
    rig.rearm()
    assert rig.armed
    assert any("disarm" in line for line in rig.drain_log())
    assert rig.drain_log() == []


def test_recording_from_the_session(rig, tmp_path):
    path = tmp_path / "live.nwb"
    rig.start("spontaneous", {}, record_path=path, fast=True, duration_s=1.0)
    assert rig.wait(WAIT_S)
    assert rig.last_summary["recording"]["file"] == str(path)
    rec = recording.open(path)
    try:
        assert rec.n_samples == FS and len(rec.spikes) > 0
    finally:
        rec.close()


@pytest.fixture
def real_time_rig():
    session = RigSession()
    session.connect("sim://?seed=1")
    yield session
    assert session.disconnect(timeout=WAIT_S)


def test_record_now_records_the_run_in_progress_until_stopped(real_time_rig, tmp_path):
    rig, path = real_time_rig, tmp_path / "monitor.nwb"
    with pytest.raises(RuntimeError, match="connect a device first"):
        RigSession().record(path)
    assert rig.recording is None and rig.stop_recording() is None
    wait_counts(rig, blocks=100)
    assert rig.record(path) == path
    with pytest.raises(RuntimeError, match="already recording"):
        rig.record(tmp_path / "other.nwb")
    start = rig.buffers.now
    assert rig.buffers.wait_for(lambda: rig.buffers.now >= start + 2 * FS, WAIT_S)
    status = rig.recording
    assert status["file"] == str(path) and status["bytes"] > 0 and status["samples_lost"] == 0
    stats = rig.stop_recording()
    assert rig.recording is None and stats["samples_lost"] == 0
    # the buffers' clock runs up to one flush of the feed behind the engine's
    assert stats["samples_written"] >= (2 - FLUSH_S) * FS
    with recording.open(path) as rec:  # the monitor's blocks from the moment it began
        assert rec.complete and rec.n_samples == stats["samples_written"]
        assert rec.duration_s == pytest.approx(rec.n_samples / FS, abs=0.01)
        assert rec.first_sample > 0 and len(rec.spikes) > 0
    # a recording ends with its run: the protocol's start ends the monitor's
    rig.record(tmp_path / "until_start.nwb")
    rig.start("spontaneous", {}, fast=True, duration_s=0.5)
    assert rig.wait(WAIT_S) and rig.recording is None
    with recording.open(tmp_path / "until_start.nwb") as rec:
        assert rec.complete and rec.summary["protocol"] == "monitor"


def test_pause_holds_a_protocol_run_until_resumed(rig):
    with pytest.raises(RuntimeError, match="no protocol is running"):
        rig.pause()
    # a run paused before it began starts held, and resumes
    rig.start("bss_isomura", BSS_LONG, fast=True)
    rig.pause()
    assert rig.buffers.wait_for(lambda: rig.progress()[1].endswith("(paused)"), WAIT_S)
    assert rig.buffers.counts["executed"] == 0
    rig.resume()
    assert not rig.paused
    wait_counts(rig, executed=2)
    rig.pause()
    assert rig.paused  # asked; the loop holds the protocol at its next block
    assert rig.buffers.wait_for(lambda: rig.progress()[1].endswith("(paused)"), WAIT_S)
    executed, now = rig.buffers.counts["executed"], rig.buffers.now
    assert rig.buffers.wait_for(lambda: rig.buffers.now > now + 10 * FS, WAIT_S)
    assert rig.buffers.counts["executed"] <= executed + 1  # a trial begun may finish
    rig.resume()
    wait_counts(rig, executed=executed + 3)
    kinds = [e.kind for e in rig.buffers.snapshot().events]
    assert "pause" in kinds and "resume" in kinds and not rig.paused
    rig.stop()
    assert rig.wait(WAIT_S) and rig.last_summary["paused_s"] >= 10.0


def test_spikes_only_device_with_a_model_protocol():
    rig = connected("sim://?seed=1&raw=0")
    try:
        buffers = rig.buffers
        wait_counts(rig, spikes=200)
        snap = buffers.snapshot(window_s=5.0, channels=[0, 1])
        assert snap.trace_channels == [] and snap.trace_min.size == 0 and snap.trace_t.size == 0
        assert snap.now > 0 and len(snap.spike_t) > 0 and snap.rates_hz.sum() > 0
        rig.start("fep_closed_loop", {"sessions": 2, "trials_per_session": 40, "isi_s": 0.5},
                  fast=True)
        decisions = []
        while not rig.wait(0.5):
            decisions += buffers.snapshot().decisions
        snap = buffers.snapshot()  # the monitor's, after the run: PSTH and model stay
        decisions += snap.decisions
        assert rig.last_summary["error"] is None and rig.last_error is None
        assert snap.psth_pulses >= 20
        evoked, baseline = evoked_and_baseline(snap.psth, snap.psth_edges_ms)
        assert evoked > 3 * baseline
        assert any(d.get("kind") == "update" and "sample" in d for d in decisions)
        assert snap.model is not None and snap.model["running"] and snap.model["trials"] == 80
    finally:
        assert rig.disconnect(timeout=WAIT_S)


class Shows(Protocol):
    """A protocol whose model_state() returns what it is given (or raises it)."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def model_state(self):
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def test_the_feed_shows_the_model_a_protocol_returns_and_nothing_for_none():
    info = open_driver("sim://").described
    feed = LiveFeed(Rings(info.n_channels))

    def notes_of(protocol):
        feed.expect(protocol)
        feed.on_start(RunDescription(
            protocol=protocol.name, parameters={}, device_url="sim://", info=info, limits={},
            limit_notes=(), block_samples=25, fast=True, seed=0, watchdog_ms=200.0,
            detector={}, software_version="test"))
        return feed.take_notes()

    assert Protocol().model_state() is None  # the default: nothing to show
    assert notes_of(Shows({"trials": 3}))["model"] == {"trials": 3}
    assert "model" not in notes_of(Shows(None)) and "model" not in notes_of(Protocol())
    assert notes_of(Shows(ValueError("no")))["model_error"] == "ValueError: no"


def test_disconnect_while_running_ends_cleanly(rig):
    rig.start("bss_isomura", BSS_LONG, fast=True)
    wait_counts(rig, executed=1)
    assert rig.disconnect(timeout=WAIT_S)
    assert not rig.connected and not rig.running and rig.protocol is None
    assert rig.last_summary["protocol"] == "bss_isomura" and rig.last_summary["error"] is None
    assert rig.progress() == (0.0, "")
    assert list(rig.log)[-1].startswith("disconnected from sim://")


def test_errors_are_one_line_and_early(rig):
    with pytest.raises(DriverError, match="unknown device scheme"):
        RigSession().connect("nope://x")
    with pytest.raises(RuntimeError, match="connect a device first"):
        RigSession().start("spontaneous", {})
    with pytest.raises(RuntimeError, match="already connected"):
        rig.connect("sim://?seed=2")
    with pytest.raises(ProtocolError, match="no protocol file"):
        rig.start("no_such_protocol", {})
    with pytest.raises(ProtocolError, match="mixing"):
        rig.start("bss_isomura", {"mixing": 0.9})
    rig.start("bss_isomura", BSS_LONG, fast=True)
    with pytest.raises(RuntimeError, match="bss_isomura is running"):
        rig.start("spontaneous", {})
    wait_counts(rig, executed=1)
    fraction, text = rig.progress()
    assert 0.0 <= fraction < 1.0 and "trial" in text and "t=" in text
    rig.stop()
    assert rig.wait(WAIT_S) and rig.last_summary["error"] is None
