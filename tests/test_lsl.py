"""LSL outlet: what receivers on this machine get, alone and from a closed-loop run."""

import json
import sys
import threading
import uuid

import numpy as np
import pytest
from conftest import wait_until

from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.lsl import LslOutlet, LslUnavailable
from mea_control.protocol import load_protocol
from mea_control.sinks import RunEvent, Sink, StimRecord
from mea_control.trials import Trial
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse


@pytest.fixture
def lsl():
    return pytest.importorskip("pylsl")


@pytest.fixture
def driver():
    d = open_driver("sim://?seed=1")
    d.open()
    yield d
    d.close()


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def connect(lsl, stream):
    """An open inlet on ``stream`` and its full description."""
    found = lsl.resolve_byprop("name", stream, timeout=30)
    assert len(found) == 1, f"stream {stream} not found"
    inlet = lsl.StreamInlet(found[0], max_buflen=60)
    # fetch the description now: pull_chunk otherwise fetches it on first use with no
    # timeout, and hangs for good if the outlet has gone by then
    full = inlet.info(timeout=30)
    inlet.open_stream(timeout=30)
    return inlet, full


def pull(inlet, n):
    """Exactly ``n`` samples (returns as soon as they are in; fails after 30 s)."""
    data, stamps = inlet.pull_chunk(timeout=30, max_samples=n)
    assert len(stamps) == n
    return data, np.array(stamps)


def test_receivers_get_blocks_spikes_and_markers(lsl, driver):
    info = driver.info
    fs = info.sample_rate
    name = unique_name()
    outlet = LslOutlet(info, name)
    raw, raw_info = connect(lsl, f"{name}-raw")
    spikes, spikes_info = connect(lsl, f"{name}-spikes")
    markers, markers_info = connect(lsl, f"{name}-markers")

    # descriptions: enough for a receiver to label channels and convert to microvolts
    assert (raw_info.type(), raw_info.channel_count(), raw_info.nominal_srate()) == (
        "MEA", info.n_channels, fs)
    assert raw_info.channel_format() == lsl.cf_int16
    assert raw_info.source_id() == f"{info.name}:{name}-raw"
    assert raw_info.get_channel_labels() == list(info.layout.labels)
    assert raw_info.get_channel_units() == ["microvolts"] * info.n_channels
    channel = raw_info.desc().child("channels").child("channel")
    assert float(channel.child_value("scale")) == info.uV_per_bit
    assert spikes_info.get_channel_labels() == ["sample", "electrode", "amplitude"]
    assert spikes_info.channel_format() == lsl.cf_double64
    assert spikes_info.nominal_srate() == lsl.IRREGULAR_RATE
    assert markers_info.type() == "Markers" and markers_info.channel_format() == lsl.cf_string
    device = spikes_info.desc().child("device")
    assert float(device.child_value("sample_rate")) == fs
    label, labels = device.child("electrodes").child("label"), []
    while not label.empty():
        labels.append(label.first_child().value())
        label = label.next_sibling()
    assert labels == list(info.layout.labels)

    # raw blocks arrive as they are, int16
    rng = np.random.default_rng(0)
    blocks = [
        Block(1000 + 25 * k, rng.integers(-32768, 32767, (25, info.n_channels), np.int16,
                                          endpoint=True), info.uV_per_bit, seq=k)
        for k in range(4)
    ]
    for block in blocks:
        outlet.on_block(block, None)
    data, raw_stamps = pull(raw, 100)
    np.testing.assert_array_equal(data, np.concatenate([b.data for b in blocks]))
    # each block's last sample is stamped when pushed, the others 1/fs apart before it
    np.testing.assert_allclose(np.diff(raw_stamps.reshape(4, 25)), 1 / fs, atol=1e-9)
    assert np.all(np.diff(raw_stamps[24::25]) > 0)
    last = raw_stamps[-1]  # the stamp of sample 1099

    # one sample per spike, placed at its sample on the raw stream's clock
    outlet.on_spikes(SpikeEvents([1090, 1097, 1099], [3, 60, 3], [-41.5, -87.25, 120.0]))
    got, stamps = pull(spikes, 3)
    np.testing.assert_array_equal(got, [[1090, 3, -41.5], [1097, 60, -87.25], [1099, 3, 120.0]])
    np.testing.assert_allclose(stamps, last - np.array([9, 2, 0]) / fs, atol=1e-9)

    # markers: a pattern, an event and a trial, as JSON
    a, b = info.layout.channel("12"), info.layout.channel("45")
    pattern = StimPattern.single([a, b], StimPulse.biphasic(5.0, 200.0), label="probe")
    outlet.on_stim(StimRecord(7, pattern, trigger_sample=1050, decision_sample=1060,
                              execution_sample=1080, status="executed"))
    outlet.on_event(RunEvent(1099, "gap", "5 samples missing before sample 1000"))
    r = np.zeros(info.n_channels, np.int32)
    r[[a, b]] = 4, 2
    outlet.on_trial(Trial(index=2, session=1, trigger_sample=1080, decision_sample=1060,
                          stim_sample=1080, o=np.array([1, 0], np.uint8),
                          s=np.array([1], np.uint8), r=r, r_pre=r, ticket=7, status="executed"))
    texts, stamps = pull(markers, 3)
    stim, event, trial = (json.loads(text) for (text,) in texts)
    pulse = {"mode": "current", "amplitude": 5.0, "unit": "uA", "duration_us": 400.0}
    assert stim == {
        "type": "stim", "status": "executed", "ticket": 7, "trigger_sample": 1050,
        "decision_sample": 1060, "execution_sample": 1080, "label": "probe", "reason": "",
        "train_count": 1, "train_rate_hz": 0.0,
        "pulses": [{"electrode": "12", "channel": a, **pulse},
                   {"electrode": "45", "channel": b, **pulse}],
    }
    assert event == {"type": "event", "kind": "gap", "sample": 1099,
                     "message": "5 samples missing before sample 1000"}
    assert trial == {"type": "trial", "index": 2, "session": 1, "status": "executed",
                     "trigger_sample": 1080, "stim_sample": 1080, "o": [1, 0], "s": [1],
                     "r": r.tolist()}
    np.testing.assert_allclose(stamps, last - np.array([19, 0, 19]) / fs, atol=1e-9)

    # the end: a stop marker that still reaches the receiver, then no outlets
    outlet.on_stop({"spikes": 3, "duration_s": 0.004, "error": None})
    [[text]], _ = pull(markers, 1)
    assert json.loads(text) == {"type": "stop", "duration_s": 0.004, "spikes": 3,
                                "stims_executed": None, "trials": None,
                                "interrupted": None, "error": None}
    assert outlet.raw is outlet.spikes is outlet.markers is None
    outlet.on_block(blocks[0], None)  # later calls do nothing
    outlet.on_spikes(SpikeEvents([1100], [1], [-50.0]))
    outlet.on_event(RunEvent(1100, "log", "after the end"))


def test_without_raw_and_close_lets_the_last_samples_out(lsl, driver):
    outlet = LslOutlet(driver.info, unique_name(), raw=False)
    assert outlet.raw is None  # (a negative resolve would take its whole timeout, or more)
    outlet.on_block(Block(0, np.zeros((25, 64), np.int16), 0.195), None)
    spikes, _ = connect(lsl, f"{outlet.name}-spikes")
    # liblsl drops what it has not sent yet when an outlet is destroyed, most often on a
    # fresh connection like this one: close() waits for it
    for k in range(50):
        outlet.on_spikes(SpikeEvents(np.arange(20) + 20 * k, np.arange(20), np.full(20, -60.0)))
    outlet.close()
    got, _ = pull(spikes, 1000)
    np.testing.assert_array_equal(np.array(got)[:, 0], np.arange(1000))


class KeepSpikes(Sink):
    def __init__(self):
        self.batches = []

    def on_spikes(self, spikes):
        self.batches.append(spikes)


def test_closed_loop_run_streams_every_spike(lsl, driver):
    name = unique_name()
    outlet = LslOutlet(driver.info, name)
    inlet, _ = connect(lsl, f"{name}-spikes")
    markers, _ = connect(lsl, f"{name}-markers")
    got: list[list[float]] = []
    enough = threading.Event()

    def receive():
        while not enough.is_set():
            data, _ = inlet.pull_chunk(timeout=0.2, max_samples=4096)
            got.extend(data)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    cls, _ = load_protocol("spontaneous")
    sent = KeepSpikes()
    engine = Engine(driver, cls(), EngineConfig(fast=True, duration_s=2.0, block_ms=1.0),
                    sinks=[sent, outlet])
    summary = engine.run()
    wait_until(lambda: len(got) >= summary["spikes"], what="every spike reaching the inlet")
    enough.set()
    receiver.join(timeout=10)
    assert not receiver.is_alive()

    assert summary["error"] is None and summary["spikes"] > 100
    assert len(got) == summary["spikes"]
    expected = np.concatenate([np.column_stack((b.sample, b.channel, b.amplitude_uV))
                               for b in sent.batches])  # what the engine gave its sinks
    np.testing.assert_array_equal(got, expected)

    seen = []
    while not seen or seen[-1]["type"] != "stop":
        sample, _ = markers.pull_sample(timeout=30)
        assert sample is not None, "the stop marker did not arrive"
        seen.append(json.loads(sample[0]))
    kinds = [marker.get("kind") for marker in seen]
    assert kinds[0] == "start" and kinds[-2:] == ["stop", None]  # the run event, the marker
    assert seen[-1]["spikes"] == summary["spikes"]


def test_missing_pylsl_says_how_to_install_it(monkeypatch, driver):
    monkeypatch.setitem(sys.modules, "pylsl", None)
    with pytest.raises(LslUnavailable) as missing:
        LslOutlet(driver.info)
    message = str(missing.value)
    assert "pip install pylsl" in message and "mea-control[lsl]" in message
    assert "\n" not in message

    class NoLiblsl:  # pylsl installed without its library: importing it raises RuntimeError
        def find_spec(self, name, path=None, target=None):
            if name == "pylsl":
                raise RuntimeError("LSL binary library file was not found.")

    monkeypatch.delitem(sys.modules, "pylsl")
    monkeypatch.setattr(sys, "meta_path", [NoLiblsl(), *sys.meta_path])
    with pytest.raises(LslUnavailable, match="pip install --force-reinstall pylsl"):
        LslOutlet(driver.info)


def test_cli_streams_with_lsl():
    import subprocess

    from conftest import ROOT, cli_command

    proc = subprocess.run(cli_command("run", "spontaneous", "--fast", "--duration", "0.5",
                                      "--lsl", "--quiet"),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
