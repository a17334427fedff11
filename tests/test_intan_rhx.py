"""rhx:// against the fake RHX: handshake, streaming, stimulation, refusals, faults, the CLI."""

import json
import os
import re
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from conftest import ROOT, cli_command, read_until, wait_until

from drivers import intan_rhx
from drivers.sim import SimDriver
from hardware_sim.intan_rhx import FakeRHX, default_wiring
from mea_control.driver import DriverError, open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.layouts import load_layout
from mea_control.protocol import load_protocol
from mea_control.recording import Recorder, reader
from mea_control.recording.nwbfile import RecordingMeta
from mea_control.recording.writer import run_provenance
from mea_control.rig import load_rig
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse, StimReport, Tick

LAYOUT = load_layout("grid8x8_200um")
#: the fake's wiring: RHX channel -> electrode, shuffled (the rig file must undo it)
WIRING = dict(zip(default_wiring(64), np.random.default_rng(7).permutation(64).tolist(),
                  strict=True))


def rig_file(path, wiring=WIRING, extra=""):
    lines = ["[rig]", 'name = "rhx test rig"', "[channels]"]
    lines += [f'"{native}" = "{LAYOUT.labels[ch]}"' for native, ch in wiring.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return str(path)


@pytest.fixture(scope="module")
def rhx():
    with FakeRHX(wiring=WIRING) as fake:
        yield fake


@pytest.fixture
def fake(rhx):
    """The module's fake RHX, stopped, its command server listening and its logs empty."""
    rhx.hang_up()  # whatever the last test left running
    rhx.enable_command_server()  # what a user clicks after each disconnect
    wait_until(lambda: rhx._server is not None and rhx._client is None and not rhx.running,
               what="the fake RHX getting ready")
    rhx.commands.clear()
    rhx.received.clear()
    yield rhx


@pytest.fixture
def rig(tmp_path):
    return rig_file(tmp_path / "rig.toml")


def opened(fake, rig, query=""):
    driver = open_driver(fake.url + query, rig=rig)
    driver.open()
    return driver


def native(label):
    return next(n for n, ch in WIRING.items() if LAYOUT.labels[ch] == label)


def pulse(amplitude=10.0, phase_us=200.0, **kw):
    return StimPulse.biphasic(amplitude, phase_us, **kw)


# -- handshake ------------------------------------------------------------------------------------
def test_open_sets_rhx_up_as_documented(fake, rig):
    driver = opened(fake, rig)
    info = driver.info
    assert info.sample_rate == 30000.0 and info.uV_per_bit == 0.195 and info.n_channels == 64
    assert info.capabilities.stim_modes == ("current",) and not info.capabilities.scheduled_stim
    assert info.limits == {"max_phase_us": 5000.0, "max_current_uA": 255.0}
    assert info.simulated and "RHS" in info.name and ":" not in info.name
    order = sorted(WIRING, key=lambda n: (n[0], int(n[2:])))
    expected = ["get type", "get sampleratehertz", "get version", "get stimstepsizemicroamps",
                "get runmode", "execute ClearAllDataOutputs", "set TCPNumberDataBlocksPerWrite 1"]
    for n in order:
        expected += [f"set {n.lower()}.TCPDataOutputEnabled true",
                     f"set {n.lower()}.TCPDataOutputEnabledStim true"]
    expected += [f"set {n.lower()}.StimEnabled false" for n in order]
    expected += ["execute UploadStimParameters", "execute ConnectTCPWaveformDataOutput",
                 "get runmode"]
    assert fake.commands == expected
    assert fake.globals["tcpnumberdatablocksperwrite"][1] == 1
    driver.close()
    # close() does not wait for an answer that is late (a busy machine): the fake may
    # still be reading the last commands
    wait_until(lambda: len(fake.commands) >= len(expected) + 3, 20.0, "the closing commands")
    assert fake.commands[len(expected):] == ["execute DisconnectTCPWaveformDataOutput",
                                             "execute DisconnectTCPSpikeDataOutput", "get runmode"]


def test_without_a_channels_table_the_driver_says_what_to_write(fake, tmp_path):
    bare = tmp_path / "bare.toml"
    bare.write_text('[rig]\nname = "x"\n')
    with pytest.raises(DriverError, match=r"needs the rig file's \[channels\] table.*--rig"):
        open_driver(fake.url, rig=str(bare)).open()
    assert fake.commands == []  # nothing was sent


def test_the_driver_takes_the_rig_the_cli_read_as_it_is(fake, rig):
    parsed = load_rig(rig)
    os.remove(rig)  # the driver does not read the file again
    driver = opened(fake, parsed)
    assert sorted(driver.natives) == sorted(WIRING)
    driver.close()


def test_a_channel_rhx_does_not_have_is_named(fake, tmp_path):
    wiring = dict(WIRING)
    wiring["C-000"] = wiring.pop("B-031")
    with pytest.raises(DriverError, match="has no channel C-000 .*Unrecognized parameter"):
        opened(fake, rig_file(tmp_path / "r.toml", wiring))


def test_nothing_listening_says_what_to_check(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    driver = open_driver(f"rhx://127.0.0.1:{port}?timeout=1", rig=rig_file(tmp_path / "r.toml"))
    with pytest.raises(DriverError, match="cannot reach RHX's command server.*TCP server is "
                                          "started"):
        driver.open()


def test_rhx_takes_one_client_until_connect_is_clicked_again(fake, rig):
    opened(fake, rig).close()
    with pytest.raises(DriverError, match="Connect"):
        open_driver(fake.url + "&timeout=1", rig=rig).open()
    wait_until(lambda: fake._client is None, what="RHX noticing the first client leave")
    fake.enable_command_server()
    opened(fake, rig).close()


def test_a_waveform_port_that_is_not_rhx_s_is_reported(fake, rig):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = open_driver(f"rhx://127.0.0.1:{fake.command_port}?waveform={port}&timeout=0.2",
                         rig=rig)
    with pytest.raises(DriverError, match=f"waveform output at 127.0.0.1:{port}.*"
                                          f"\\?waveform={port}"):
        driver.open()


# -- streaming ------------------------------------------------------------------------------------
def test_blocks_are_the_cultures_samples_in_layout_order(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    blocks = [b for b in read_until(driver, lambda e: isinstance(e, Block) and
                                    e.start_sample >= 20 * 128) if isinstance(b, Block)]
    driver.close()
    defaults = {name: p.default for name, p in SimDriver.params.items()}
    sim = SimDriver("sim://", dict(defaults, rate=30000.0))
    sim.open()
    sim.set_fast(True)
    sim.start(128)
    reference = [e for e in (sim.read() for _ in range(40)) if isinstance(e, Block)][:len(blocks)]
    assert [b.start_sample for b in blocks] == [128 * i for i in range(len(blocks))]
    for ours, theirs in zip(blocks, reference, strict=True):
        assert ours.data.shape == (128, 64)
        assert np.array_equal(ours.data, theirs.data)  # 0.195 uV x (raw - 32768), unshuffled


# -- stimulation ----------------------------------------------------------------------------------
def _fire(driver, fake, pattern):
    """Stimulate once streaming; (the command bytes it sent, its report)."""
    mark = len(fake.received)
    ticket = driver.stimulate(pattern)
    items = read_until(driver, lambda e: isinstance(e, StimReport) and e.ticket == ticket)
    time.sleep(0.05)
    return bytes(fake.received[mark:]).decode(), items[-1]


def _upload(n, items):
    return "".join(f"set {n}.{k} {v};" for k, v in items) + f"execute UploadStimParameters {n};"


SINGLE = [("PostTriggerDelayMicroseconds", "0"), ("RefractoryPeriodMicroseconds", "1000"),
          ("StimEnabled", "true")]


MAPPINGS = [  # (electrode, pulse, train, the items RHX must receive, in order)
    ("34", pulse(10, 200), (1, 0.0),
     [("Shape", "Biphasic"), ("Polarity", "NegativeFirst"),
      ("FirstPhaseDurationMicroseconds", "200"), ("FirstPhaseAmplitudeMicroAmps", "10"),
      ("SecondPhaseDurationMicroseconds", "200"), ("SecondPhaseAmplitudeMicroAmps", "10"),
      ("PulseOrTrain", "SinglePulse")]),
    ("45", pulse(7, 100, interphase_us=100, negative_first=False), (1, 0.0),
     [("Shape", "BiphasicWithInterphaseDelay"), ("Polarity", "PositiveFirst"),
      ("FirstPhaseDurationMicroseconds", "100"), ("FirstPhaseAmplitudeMicroAmps", "7"),
      ("SecondPhaseDurationMicroseconds", "100"), ("SecondPhaseAmplitudeMicroAmps", "7"),
      ("InterphaseDelayMicroseconds", "100"), ("PulseOrTrain", "SinglePulse")]),
    ("56", StimPulse("current", ((100, -4.0), (200, 4.0), (100, -4.0))), (1, 0.0),
     [("Shape", "Triphasic"), ("Polarity", "NegativeFirst"),
      ("FirstPhaseDurationMicroseconds", "100"), ("FirstPhaseAmplitudeMicroAmps", "4"),
      ("SecondPhaseDurationMicroseconds", "200"), ("SecondPhaseAmplitudeMicroAmps", "4"),
      ("PulseOrTrain", "SinglePulse")]),
    ("67", pulse(5, 300), (3, 100.0),
     [("Shape", "Biphasic"), ("Polarity", "NegativeFirst"),
      ("FirstPhaseDurationMicroseconds", "300"), ("FirstPhaseAmplitudeMicroAmps", "5"),
      ("SecondPhaseDurationMicroseconds", "300"), ("SecondPhaseAmplitudeMicroAmps", "5"),
      ("PulseOrTrain", "PulseTrain"), ("NumberOfStimPulses", "3"),
      ("PulseTrainPeriodMicroseconds", "10000")]),
]


def test_each_parameter_reaches_rhx_byte_for_byte(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    for number, (label, stim_pulse, train, items) in enumerate(MAPPINGS, start=1):
        n = native(label).lower()
        pattern = StimPattern(((LAYOUT.channel(label), stim_pulse),), *train)
        sent, report = _fire(driver, fake, pattern)
        key = f"F{number}"  # each pattern on a key of its own
        assert sent == (_upload(n, [("Source", f"KeyPressF{number}"), *items, *SINGLE])
                        + f"get runmode;execute ManualStimTriggerPulse {key};")
        assert report.executed, report.reason
        uploaded = fake.uploaded(n)  # what the fake made of the text
        assert uploaded["stimenabled"] and uploaded["source"] == f"KeyPressF{number}"
        for name, value in items:
            got = uploaded[name.lower()]
            assert (got if isinstance(got, str) else intan_rhx.settings._text(got)) == value
    for number, (label, stim_pulse, train, _) in enumerate(MAPPINGS, start=1):
        pattern = StimPattern(((LAYOUT.channel(label), stim_pulse),), *train)
        again, report = _fire(driver, fake, pattern)  # held by a key: the fast path
        assert again == f"execute ManualStimTriggerPulse F{number};" and report.executed
    assert driver.stats.fast == len(MAPPINGS) and driver.stats.uploads == len(MAPPINGS)
    driver.close()


def test_patterns_share_the_keys_and_uploads_send_only_what_changed(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    a, b = (LAYOUT.channel(x) for x in ("34", "35"))
    na, nb = native("34").lower(), native("35").lower()
    first = StimPattern.single([a], pulse(10))
    second = StimPattern.single([a, b], pulse(10))
    _fire(driver, fake, first)
    sent, report = _fire(driver, fake, second)  # F1 is taken: F2, a moves over, b is new
    assert sent.startswith(f"set {na}.Source KeyPressF2;execute UploadStimParameters {na};"
                           f"set {nb}.Source KeyPressF2;set {nb}.Shape Biphasic;")
    assert sent.endswith("get runmode;execute ManualStimTriggerPulse F2;") and report.executed
    third, report3 = _fire(driver, fake, StimPattern.single([b], pulse(10)))  # F3: never used
    assert third.startswith(f"set {nb}.Source KeyPressF3;execute UploadStimParameters {nb};")
    assert report3.executed
    assert driver.stats.fast == 0 and driver.stats.uploads == 3
    assert ("stim_upload", ) == tuple(k for k, _ in driver.drain_events())[:1]
    driver.close()


UNPLAYABLE = [
    (StimPulse("voltage", ((200, -100.0), (200, 100.0))), "current only"),
    (StimPulse("current", ((200, -10.0),)), "not 1-phase"),
    (StimPulse("current", ((100, -5.0), (100, 5.0), (100, -5.0), (100, 5.0))), "not 4-phase"),
    (StimPulse("current", ((100, -5.0), (200, 5.0), (200, -5.0))), "repeats its first phase"),
    (StimPulse("current", ((200, -5.0), (200, -5.0))), "alternate in sign"),
    (pulse(10, 150), "150 us is not a whole number of samples at 30 kHz"),
    (pulse(2.5, 200), "2.5 uA is not a whole number of the controller's 1 uA steps"),
    (pulse(300, 200), "beyond the controller's range of 255 steps"),
]


def test_patterns_rhs_cannot_play_are_refused_unsent(fake, rig, tmp_path):
    wiring = {n: ch for n, ch in WIRING.items() if LAYOUT.labels[ch] != "88"}
    driver = opened(fake, rig_file(tmp_path / "r.toml", wiring))
    assert driver.info.limits["forbidden"] == ["88"]  # not wired: the safety gate refuses it
    driver.start()
    mark = len(fake.received)
    cases = [*UNPLAYABLE, (pulse(10), "electrode 88 has no stimulating RHX channel")]
    for stim_pulse, reason in cases:
        channel = LAYOUT.channel("88") if "88" in reason else 0
        ticket = driver.stimulate(StimPattern.single([channel], stim_pulse))
        report = read_until(driver, lambda e: isinstance(e, StimReport))[-1]
        assert report.ticket == ticket and not report.executed
        assert "RHS cannot play this pattern" in report.reason and reason in report.reason
    assert fake.received[mark:] == b""
    driver.close()


def test_rhx_error_strings_refuse_the_pattern_and_the_next_one_runs(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    too_long = StimPattern.single([LAYOUT.channel("34")], pulse(10, 6000))
    _, report = _fire(driver, fake, too_long)
    assert not report.executed
    assert report.reason == ("RHX refused the stimulation parameters: Invalid value for "
                             "FirstPhaseDurationMicroseconds command. Acceptable: [ 0 , 5000 ]"
                             "Invalid value for SecondPhaseDurationMicroseconds command. "
                             "Acceptable: [ 0 , 5000 ]")
    sent, report = _fire(driver, fake, StimPattern.single([LAYOUT.channel("34")], pulse(10)))
    assert report.executed and "set " + native("34").lower() + ".Source KeyPressF" in sent
    driver.close()


def test_stimulation_evokes_the_cultures_response_on_the_right_electrode(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    channel = LAYOUT.channel("45")
    _, report = _fire(driver, fake, StimPattern.single([channel], pulse(10)))
    blocks = [e for e in read_until(driver, lambda e: isinstance(e, Block)
                                    and e.start_sample > report.sample + 256)
              if isinstance(e, Block)]
    driver.close()
    data = np.concatenate([b.data for b in blocks]).astype(float)
    start = blocks[0].start_sample
    window = np.abs(data[report.sample - start: report.sample - start + 30])
    assert window.max(axis=0).argmax() == channel  # the artifact is largest where we stimulated


def test_a_pattern_for_a_later_sample_waits_for_it(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    first = read_until(driver, lambda e: isinstance(e, Block))[-1]
    at = first.stop_sample + 3000
    ticket = driver.stimulate(StimPattern.single([0], pulse(10), at_sample=at))
    report = read_until(driver, lambda e: isinstance(e, StimReport) and e.ticket == ticket)[-1]
    assert report.executed and report.sample >= at
    driver.close()


def test_waiting_patterns_fire_in_the_order_of_their_samples(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    first = read_until(driver, lambda e: isinstance(e, Block))[-1]
    late = driver.stimulate(StimPattern.single([0], pulse(10), at_sample=first.stop_sample + 9000))
    early = driver.stimulate(StimPattern.single([1], pulse(10), at_sample=first.stop_sample + 3000))
    reports = {}
    while len(reports) < 2:
        report = read_until(driver, lambda e: isinstance(e, StimReport))[-1]
        reports[report.ticket] = report
    assert reports[early].executed and reports[late].executed
    assert reports[early].sample < first.stop_sample + 9000 <= reports[late].sample
    driver.close()


def test_rig_presets_are_uploaded_before_the_run_and_fire_at_once(fake, tmp_path):
    rig = rig_file(tmp_path / "r.toml", extra='[stimulator]\nF3 = { electrodes = ["34", "35"], '
                   'amplitude_uA = 8, phase_us = 100 }\n')
    driver = opened(fake, rig)
    driver.start()
    start = fake.commands.index("set runmode run")
    assert "execute UploadStimParameters " + native("35").lower() in fake.commands[:start]
    pattern = StimPattern.single([LAYOUT.channel("35"), LAYOUT.channel("34")], pulse(8, 100))
    sent, report = _fire(driver, fake, pattern)
    assert sent == "execute ManualStimTriggerPulse F3;" and report.executed
    driver.close()


# -- faults ---------------------------------------------------------------------------------------
def test_garbage_on_the_waveform_stream_is_skipped_and_counted(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    read_until(driver, lambda e: isinstance(e, Block))
    fake.inject("waveform", b"\x00garbage\x08\x7a" * 50)
    blocks = [e for e in read_until(driver, lambda e: isinstance(e, Block)
                                    and e.start_sample >= 30 * 128) if isinstance(e, Block)]
    starts = [b.start_sample for b in blocks]
    assert starts == list(range(starts[0], starts[-1] + 1, 128))  # nothing lost
    events = driver.drain_events()
    assert any(kind == "link_error" and "not RHX data" in message for kind, message in events)
    assert sum(driver._garbage.values()) == 500
    driver.close()


def test_losing_rhx_mid_run_is_a_clear_error(fake, rig):
    driver = opened(fake, rig)
    driver.start()
    read_until(driver, lambda e: isinstance(e, Block))
    fake.hang_up()
    with pytest.raises(DriverError, match="lost the connection to RHX's .* port .*Connect"):
        read_until(driver, lambda e: False)
    driver.close()


# -- RHX's own spike detection --------------------------------------------------------------------
def test_detect_rhx_gives_spikes_from_the_spike_port_and_ticks(fake, rig):
    driver = opened(fake, rig, "&detect=rhx")
    assert driver.info.capabilities.onboard_detection
    assert f"set {native('11').lower()}.TCPDataOutputEnabledSpike true" in fake.commands
    driver.start()
    fake.inject("spike", b"junk!")
    items = read_until(driver, lambda e: isinstance(e, Tick) and e.sample >= 15000)
    driver.close()
    ticks = [e.sample for e in items if isinstance(e, Tick)]
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 128))
    spikes = SpikeEvents.concat([e for e in items if isinstance(e, SpikeEvents)])
    assert len(spikes) > 5 and not any(isinstance(e, Block) for e in items)
    assert np.isnan(spikes.amplitude_uV).all() and spikes.channel.max() < 64
    assert driver._garbage["spike"] == len(b"junk!")  # skipped up to the next record


# -- the fake speaks RHX ---------------------------------------------------------------------------
def test_the_fake_answers_as_rhx_does(fake):
    with socket.create_connection((fake.host, fake.command_port)) as c:
        def ask(text, silence=False):
            """The answer: what comes until a 0.3 s pause (up to 3 s for its first byte)."""
            c.sendall(text.encode())
            answer = b""
            c.settimeout(0.3 if silence else 3.0)
            try:
                while True:
                    answer += c.recv(4096)
                    c.settimeout(0.3)
            except TimeoutError:
                return answer.decode()

        assert ask("get SampleRateHertz;get a-000.Shape;set a-000.Shape Square;set x;frob;"
                   "set foo 1;execute Fly;set SampleRateHertz 20000;set runmode stop") == (
            "Return: SampleRateHertz 30000Return: Shape BiphasicInvalid value for Shape command. "
            "Acceptable: Biphasic;BiphasicWithInterphaseDelay;Triphasic;Error - Command 4: Set "
            "commands require a parameter and a valueError - Command 5: Unrecognized command"
            "Unrecognized parameterUnrecognized actionSampleRateHertz cannot be changed once "
            "software has started.Board must be running in order to stop")
        # what follows `set runmode run` in its batch waits for the board to stop
        assert ask("set runmode run;get runmode", silence=True) == ""
        assert ask("set TCPNumberDataBlocksPerWrite 1;execute UploadStimParameters;"
                   "get runmode") == ("TCPNumberDataBlocksPerWrite cannot be set while controller"
                                      " is running.UploadStimParameters cannot be executed while "
                                      "the board is running" "Return: RunMode Run")
        assert ask("set runmode stop") == "Return: RunMode Stop"


# -- discovery ------------------------------------------------------------------------------------
def test_discovery_finds_listeners_without_connecting(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert port in intan_rhx.discovery._listening_ports()
    monkeypatch.setattr(intan_rhx.discovery, "_listening_ports", lambda: {22, 5000})
    (url, text), = intan_rhx.RHXDriver.discover(0.5)
    assert url == "rhx://127.0.0.1:5000?waveform=5001&spikes=5002" and "not probed" in text


# -- the CLI, end to end --------------------------------------------------------------------
def test_a_protocol_runs_through_the_cli_and_its_recording_holds_the_pulses(fake, tmp_path):
    rig = rig_file(tmp_path / "rig.toml")
    proc = subprocess.run(
        cli_command("run", "protocols/bss_isomura.py", "--rig", rig, "--device", fake.url,
                    "--param", "sessions=1", "--param", "trials_per_session=6",
                    "--param", "isi_s=0.25", "--param", "window_stop_ms=200",
                    "--record", str(tmp_path / "run.nwb"),
                    "--summary-json", str(tmp_path / "run.json")),
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["sample_rate"] == 30000.0 and summary["trials"] == 6
    assert summary["stims_executed"] > 0 and summary["stims_dropped"] == 0
    assert "Intan RHX" in proc.stdout + proc.stderr and "latency" in proc.stdout
    with reader.open(tmp_path / "run.nwb") as rec:
        assert rec.complete and rec.n_samples >= 6 * 0.25 * 30000
        pulses = rec.pulses
        executed = pulses["status"] == "executed"
        assert executed.any()
        assert (pulses["execution_sample"][executed] >= pulses["trigger_sample"][executed]).all()
        # each executed pulse shows in the raw samples of its electrode: the artifact
        for sample, electrode in zip(pulses["execution_sample"][executed][:3],
                                     pulses["electrode"][executed][:3], strict=True):
            uv = rec.microvolts(int(sample), int(sample) + 12)
            assert np.abs(uv).max(axis=0).argmax() in pulses["electrode"][
                pulses["execution_sample"] == sample]
            assert np.abs(uv[:, electrode]).max() > 100.0
    assert any(c.startswith("execute ManualStimTriggerPulse") for c in fake.commands)


def test_a_disconnect_mid_run_stops_stimulation_and_closes_the_recording(fake, rig, tmp_path):
    """What `mea-control run` does, in-process: the engine, a recorder, RHX going away."""
    cls, path = load_protocol("bss_isomura")
    protocol = cls(sessions=1, trials_per_session=400, isi_s=0.25, window_stop_ms=200)
    driver = opened(fake, rig)
    engine = Engine(driver, protocol, EngineConfig(limits=load_rig(rig).limits))
    recorder = Recorder(tmp_path / "cut.nwb", engine.info, run_provenance(engine.describe(), path),
                        meta=RecordingMeta().for_simulator())
    engine.sinks.append(recorder)

    def cut():
        deadline = time.monotonic() + 30
        while not any(c.startswith("execute ManualStimTriggerPulse") for c in fake.commands):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        fake.hang_up()

    cutter = threading.Thread(target=cut)
    cutter.start()
    summary = engine.run()
    cutter.join()
    recorder.close()
    driver.close()
    assert summary["error"] == "device" and not summary["stimulation_armed"]
    assert re.match(r"lost the connection to RHX's (waveform|command) port at 127\.0\.0\.1",
                    engine.error)
    assert "start its TCP server (Connect) again" in engine.error
    with reader.open(tmp_path / "cut.nwb") as rec:
        assert rec.complete and rec.n_samples > 0
        kinds = [e["kind"] for e in rec.events]
        assert "device_error" in kinds and "stop" in kinds
