"""cl:// - a Cortical Labs CL1 through the ``cl`` API.

In this Python (3.11) ``cl`` cannot be installed: the tests put the project's stand-in,
hardware_sim.cl_fake, in its place (in-process through sys.modules, in a subprocess through
a one-line ``cl`` module on PYTHONPATH). The tests at the end run the same driver against
the real cl-sdk in the Python 3.12 environment .venv-cl (``make cl-env``) when it exists.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, cli_command, read_until

from drivers import cl_api
from hardware_sim import cl_fake
from mea_control import cli, recording
from mea_control.driver import DriverError, open_driver
from mea_control.engine import EngineConfig
from mea_control.layouts import load_layout
from mea_control.limits import SafetyLimits, effective_limits
from mea_control.safety import SafetyGate, SafetyRefusal
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse, StimReport, Tick

CL_PYTHON = ROOT / ".venv-cl" / "bin" / "python"
needs_cl_env = pytest.mark.skipif(not CL_PYTHON.exists(),
                                  reason="no .venv-cl with the real cl-sdk: make cl-env")


@pytest.fixture
def fake_cl(monkeypatch):
    """The stand-in as ``cl``, in accelerated time (frames as fast as they are read)."""
    monkeypatch.setitem(sys.modules, "cl", cl_fake)
    monkeypatch.setenv("CL_SDK_ACCELERATED_TIME", "1")
    cl_fake.configure()
    yield cl_fake
    cl_fake.configure()


@pytest.fixture
def stim_calls(fake_cl, monkeypatch):
    """Each ``Neurons.stim`` call: (channels, StimDesign args, BurstDesign args, lead_time_us)."""
    calls = []
    real = cl_fake.Neurons.stim

    def spy(self, channel_set, stim_design, /, burst_design=None, lead_time_us=80):
        calls.append((list(channel_set), stim_design._args,
                      None if burst_design is None else burst_design._args, lead_time_us))
        return real(self, channel_set, stim_design, burst_design=burst_design,
                    lead_time_us=lead_time_us)

    monkeypatch.setattr(cl_fake.Neurons, "stim", spy)
    return calls


def running(url="cl://"):
    return running_with(25, url)


def running_with(block, url="cl://"):
    driver = open_driver(url)
    driver.open()
    driver.start(block)
    return driver


def report_of(driver, ticket):
    events = read_until(driver, lambda e: isinstance(e, StimReport) and e.ticket == ticket)
    return events[-1]


def fake_cl_env(tmp_path, **faults):
    """Environment for a subprocess whose ``cl`` is the stand-in, with these faults."""
    shim = tmp_path / "cl_shim"
    shim.mkdir(exist_ok=True)
    (shim / "cl.py").write_text(
        "import sys\nfrom hardware_sim import cl_fake\n"
        f"cl_fake.configure(**{faults!r})\nsys.modules[__name__] = cl_fake\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), str(ROOT)]),
                CL_SDK_ACCELERATED_TIME="1", CL_SDK_VISUALISATION="0")


def run(command, env=None, timeout=120):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


BSS = ["run", "protocols/bss_isomura.py", "--quiet", "--fast", "--param", "sessions=1",
       "--param", "trials_per_session=6", "--param", "isi_s=0.4", "--param", "amplitude=2",
       "--param", "phase_us=200"]


def check_bss_recording(path, summary):
    assert summary["trials"] == 6 and summary["device_info"]["name"].startswith("Cortical Labs")
    executed = summary["stims_executed"]
    assert executed == summary["evoked"]["stimulated_trials"] >= 1
    assert summary["stims_refused"] == summary["stims_dropped"] == summary["gaps"] == 0
    with recording.open(path) as rec:
        assert rec.complete and rec.sample_rate == 25000.0 and rec.n_samples > 6 * 0.4 * 25000
        pulses = rec.pulses
        assert len(pulses["electrode"]) > 0
        assert not {int(ch) for ch in pulses["electrode"]} & {0, 7, 56, 63}  # grounded
        status = rec.trials.status
        assert len(status) == 6 and (status == "executed").sum() == executed
        assert set(status) <= {"executed", "none"}  # "none": a trial without stimulation


# -- without cl --------------------------------------------------------------------------------
def test_without_cl_the_run_says_to_install_the_extra_in_python_312(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cl", None)  # not importable, as in this Python 3.11
    code = cli.main(["run", "spontaneous", "--device", "cl://", "--duration", "0.1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("mea-control: error: cl:// needs the cl package (cl-sdk), which "
                               "is not installed in this Python 3.")
    assert "Python >= 3.12" in lines[0] and "pip install 'mea-control[cl]'" in lines[0]


def test_discover_lists_nothing_without_cl(monkeypatch):
    monkeypatch.setattr(cl_api.importlib.util, "find_spec", lambda name: None)
    assert cl_api.CLDriver.discover(0.5) == []


# -- a whole protocol --------------------------------------------------------------------------
def test_bss_protocol_through_cl_records_what_ran(tmp_path):
    summary, nwb = tmp_path / "s.json", tmp_path / "cl.nwb"
    proc = run(cli_command(*BSS, "--device", "cl://", "--record", str(nwb),
                           "--summary-json", str(summary)), env=fake_cl_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(summary.read_text())
    check_bss_recording(nwb, s)


def test_device_lost_mid_run_stops_and_closes_the_recording(fake_cl, capsys, tmp_path):
    fake_cl.configure(lost_after_s=0.5)
    nwb = tmp_path / "lost.nwb"
    code = cli.main(["run", "spontaneous", "--device", "cl://", "--fast", "--duration", "5",
                     "--record", str(nwb)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    message = ("lost the CL device: ConnectionError: connection to the CL1 device lost; check "
               "the CL1 and the connection to it")
    assert code == 2 and last == f"mea-control: error: {message}", last
    with recording.open(nwb) as rec:
        assert rec.complete  # closed cleanly
        assert 0.45 * 25000 <= rec.n_samples <= 0.5 * 25000  # what came, nothing made up
        kinds = [e["kind"] for e in rec.events]
        assert {"start", "stop", "device_error"} <= set(kinds)
        error = next(e for e in rec.events if e["kind"] == "device_error")
        assert error["message"] == message


def test_device_that_goes_silent_ends_the_run(fake_cl, monkeypatch, capsys):
    fake_cl.configure(stall_after_s=0.5)
    init = EngineConfig.__init__  # the engine gives up after 0.5 s instead of 5
    monkeypatch.setattr(EngineConfig, "__init__",
                        lambda self, *a, **kw: init(self, *a, **{**kw, "device_timeout_s": 0.5}))
    code = cli.main(["run", "spontaneous", "--device", "cl://", "--fast", "--duration", "5"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1] == (
        "mea-control: error: device cl:// sent nothing for 0.5 s")
    assert "[device_error]" in err and "[stop]" in err


def test_the_gate_keeps_protocols_within_the_cl1s_limits(fake_cl, capsys, tmp_path):
    bss = ["run", "protocols/bss_isomura.py", "--device", "cl://", "--fast",
           "--param", "sessions=1", "--param", "trials_per_session=4", "--param", "isi_s=0.4"]
    first_32 = ",".join(load_layout("grid8x8_200um").labels[:32])  # with grounded 11 and 18
    assert cli.main([*bss, "--param", f"electrodes={first_32}"]) == 2
    assert "electrodes: 11, 18 cannot stimulate here" in capsys.readouterr().err
    summary = tmp_path / "s.json"
    assert cli.main([*bss, "--summary-json", str(summary)]) == 2  # its default is 5 uA
    assert ("cannot start: current 5.00 uA on electrode 13 exceeds max_current_uA = 3.00 uA "
            "(the device's limit); set by amplitude = 5") in capsys.readouterr().err
    assert not summary.exists()  # refused before the run


# -- open, discover ----------------------------------------------------------------------------
def test_open_describes_the_cl1_with_its_limits_and_grounded_channels(fake_cl, monkeypatch):
    driver = open_driver("cl://")
    driver.open()
    driver.set_fast(True)  # a simulator in accelerated time
    monkeypatch.setenv("CL_SDK_ACCELERATED_TIME", "0")
    with pytest.raises(DriverError, match="--fast with cl:// needs the cl-sdk simulator in "
                       "accelerated time: set CL_SDK_ACCELERATED_TIME=1"):
        driver.set_fast(True)
    info = driver.info
    assert (info.n_channels, info.sample_rate, info.uV_per_bit) == (64, 25000.0, 0.195)
    assert info.capabilities.stim_modes == ("current",) and info.capabilities.scheduled_stim
    assert info.limits == {"max_current_uA": 3.0, "max_charge_nC": 3.0, "min_phase_us": 20.0,
                           "forbidden": ["11", "18", "81", "88"]}
    assert [info.layout.labels.index(x) for x in info.limits["forbidden"]] == [0, 7, 56, 63]
    driver.close()


def test_a_device_controlled_elsewhere_is_a_clear_error(fake_cl):
    fake_cl.configure(open_error=fake_cl.ControlRequestError("control held by pid 4242"))
    with pytest.raises(DriverError, match="controlled by another process .*pid 4242"):
        open_driver("cl://").open()


#: A device that answers this late (s): a driver that waited for it would take this long, which
#: no loaded machine stretches a 0.3-0.5 s timeout to.
HANGS_S = 10.0


def test_a_device_that_does_not_open_fails_within_the_timeout(fake_cl):
    fake_cl.configure(open_delay_s=HANGS_S)
    t0 = time.monotonic()
    with pytest.raises(DriverError, match="no answer from the CL device within 0.3 s: check"):
        open_driver("cl://?timeout=0.3").open()
    assert time.monotonic() - t0 < HANGS_S / 2  # it did not wait for the device


@pytest.mark.parametrize(("url", "message"), [
    ("cl://?mode=both", "use mode=raw or mode=spikes"),
    ("cl://?layout=mcs60mea200", "has 60 electrodes; the CL1 has 64"),
    ("cl://?timeout=0", "timeout=0 is out of range"),
])
def test_bad_urls(url, message):
    with pytest.raises(DriverError, match=message):
        open_driver(url)


def test_discover_says_whether_a_device_opens(tmp_path, monkeypatch):
    env = fake_cl_env(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "cl_shim"))
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    assert cl_api.CLDriver.discover(60.0) == [  # a fresh checkout compiles the fake culture first
        ("cl://", "Cortical Labs CL1 cl1-fake-000 (cl-sdk simulator): 64 channels at 25 kHz")]
    fake_cl_env(tmp_path, open_delay_s=HANGS_S)  # the probe is left to end on its own
    t0 = time.monotonic()
    (url, text), = cl_api.CLDriver.discover(0.5)
    assert url == "cl://" and "no CL device opened within 0.5 s" in text
    assert time.monotonic() - t0 < HANGS_S / 2  # it did not wait for the device


# -- streaming ---------------------------------------------------------------------------------
def test_frames_stream_as_consecutive_blocks(fake_cl):
    driver = running()
    blocks = [e for e in read_until(driver, lambda e: isinstance(e, Block) and e.seq == 40)
              if isinstance(e, Block)]
    assert [b.seq for b in blocks] == list(range(41))
    assert all(b.n_samples == 25 and b.n_channels == 64 for b in blocks)
    assert all(a.stop_sample == b.start_sample for a, b in zip(blocks, blocks[1:], strict=False))
    assert np.std(np.concatenate([b.microvolts() for b in blocks])) > 1.0  # noise, not zeros
    driver.close()


@pytest.mark.parametrize("block", [1, 10, 30, 250, 2500])
def test_blocks_have_the_frames_asked_for(fake_cl, block):
    driver = running_with(block)
    first, second = (e for e in read_until(driver, lambda e: isinstance(e, Block) and e.seq == 1)
                     if isinstance(e, Block))
    assert first.n_samples == second.n_samples == block == second.start_sample - first.start_sample
    driver.close()


def test_spikes_mode_gives_the_devices_spikes_and_ticks(fake_cl):
    driver = running("cl://?mode=spikes")
    assert driver.info.capabilities.onboard_detection and not driver.info.capabilities.raw_stream
    events = read_until(driver, lambda e: isinstance(e, Tick) and e.sample >= 25 * 1000)
    assert not any(isinstance(e, Block) for e in events)
    ticks = [e.sample for e in events if isinstance(e, Tick)]
    assert np.all(np.diff(ticks) == 25)
    spikes = SpikeEvents.concat([e for e in events if isinstance(e, SpikeEvents)])
    assert len(spikes) > 10 and (spikes.amplitude_uV < 0).all()
    driver.close()


def test_a_lost_device_raises_and_stays_lost(fake_cl):
    fake_cl.configure(lost_after_s=0.05)
    driver = running()
    with pytest.raises(DriverError, match="lost the CL device: ConnectionError"):
        read_until(driver, lambda e: False)
    with pytest.raises(DriverError, match="lost the CL device"):
        driver.read(timeout=0.1)
    with pytest.raises(DriverError, match="lost the CL device"):
        driver.stimulate(StimPattern.single([9], bi(1.0, 100)))
    driver.abort_stimulation()  # what the engine does next: says so, does not raise
    assert [kind for kind, _ in driver.drain_events()] == ["device_error"]
    driver.close()


# -- stimulation: the exact stim() calls -------------------------------------------------------
def bi(uA, us, **kw):
    return StimPulse.biphasic(uA, us, **kw)


@pytest.mark.parametrize(("pulses", "train", "extra", "expected"), [
    ({9: bi(2.0, 200)}, (1, 0.0), 0,
     [([9], (200, -2.0, 200, 2.0), None, 80)]),
    ({9: bi(1.5, 100), 10: bi(1.5, 100), 20: bi(1.5, 100)}, (1, 0.0), 0,
     [([9, 10, 20], (100, -1.5, 100, 1.5), None, 80)]),
    ({12: bi(1.0, 160, negative_first=False)}, (1, 0.0), 10,
     [([12], (160, 1.0, 160, -1.0), None, 480)]),
    ({30: StimPulse("current", ((100, -1.0), (200, 1.0), (100, -1.0)))}, (1, 0.0), 0,
     [([30], (100, -1.0, 200, 1.0, 100, -1.0), None, 80)]),
    ({5: bi(2.0, 200)}, (5, 50.0), 25,
     [([5], (200, -2.0, 200, 2.0), (5, 50.0), 1080)]),
    ({2: bi(1.0, 100), 3: bi(2.5, 400)}, (2, 200.0), 0,
     [([2], (100, -1.0, 100, 1.0), (2, 200.0), 80),
      ([3], (400, -2.5, 400, 2.5), (2, 200.0), 80)]),
])
def test_pattern_becomes_these_stim_calls_and_runs_at_its_sample(
        stim_calls, pulses, train, extra, expected):
    driver = running()
    read_until(driver, lambda e: isinstance(e, Block) and e.seq == 3)
    at = driver.earliest_stim_sample() + extra
    pattern = StimPattern(pulses, train_count=train[0], train_rate_hz=train[1], at_sample=at)
    ticket = driver.stimulate(pattern)
    assert stim_calls == expected
    report = report_of(driver, ticket)
    assert report.executed and report.sample == at, report
    driver.close()


def test_train_pulses_run_on_the_apis_20us_grid(fake_cl):
    driver = running()
    read_until(driver, lambda e: isinstance(e, Block) and e.seq == 3)
    at = driver.earliest_stim_sample()
    driver.stimulate(StimPattern({9: bi(1.0, 100)}, train_count=4, train_rate_hz=30.0,
                                 at_sample=at))
    neurons = driver.neurons
    read_until(driver, lambda e: isinstance(e, Block) and e.stop_sample > at + 3000)
    stims = [s.timestamp for s in neurons.read(3000, at, analysis=True).stims]
    interval_us = cl_api.burst_interval_us(30.0)
    assert interval_us == 33340
    assert stims == [at + (i * interval_us // 20) // 2 for i in range(4)]
    driver.close()


@pytest.mark.parametrize(("pulse", "train", "reason"), [
    (bi(1.0, 30), (1, 0.0), "phase 1 lasts 30 us; phases are whole multiples of 20 us"),
    (bi(1.0, 10), (1, 0.0), "phase 1 lasts 10 us"),
    (bi(4.0, 100), (1, 0.0), "phase 1 is 4 uA; at most 3 uA"),
    (bi(2.0, 1600), (1, 0.0), "phase 1 carries 3.2 nC; at most 3 nC a phase"),
    (bi(1.0, 100, interphase_us=40), (1, 0.0), "phase 2 is 0 uA, an interphase gap"),
    (StimPulse("current", ((100, -1.0), (100, -1.0))), (1, 0.0), "phases 1 and 2 have the same"),
    (StimPulse("current", ((100, -1.0), (100, 1.0)) * 2), (1, 0.0), "4 phases"),
    (bi(100.0, 100, mode="voltage"), (1, 0.0), "current only, not voltage"),
    (bi(1.0, 100), (3, 250.0), "train at 250 Hz: its bursts go up to 200 Hz"),
    (bi(0.5, 2500), (2, 200.0), "5000 us interval is shorter than the pulse (5000 us) + 80 us"),
])
def test_patterns_the_api_cannot_run_are_reported_dropped_unsent(stim_calls, pulse, train,
                                                                reason):
    driver = running()
    read_until(driver, lambda e: isinstance(e, Block) and e.seq == 2)
    ticket = driver.stimulate(StimPattern({9: pulse}, train_count=train[0],
                                          train_rate_hz=train[1]))
    report = report_of(driver, ticket)
    assert not report.executed and "the CL API cannot run" in report.reason
    assert reason in report.reason
    assert stim_calls == []
    driver.close()


def test_grounded_channels_and_late_patterns_are_never_sent(stim_calls):
    driver = running()
    read_until(driver, lambda e: isinstance(e, Block) and e.seq == 2)
    grounded = driver.stimulate(StimPattern.single([7], bi(1.0, 100)))
    late = driver.stimulate(StimPattern.single([9], bi(1.0, 100),
                                               at_sample=driver.earliest_stim_sample() - 1))
    reports = {r.ticket: r for r in read_until(driver, lambda e: isinstance(e, Block))
               if isinstance(r, StimReport)}
    assert "electrode 18 is grounded on the CL1" in reports[grounded].reason
    assert reports[late].reason.startswith("late: asked for sample")
    assert stim_calls == []
    driver.close()


def test_the_gate_refuses_grounded_electrodes_and_what_the_device_cannot(fake_cl):
    """The device's limits reach the safety gate: grounded channels are refused, not dropped."""
    driver = open_driver("cl://")
    driver.open()
    info = driver.info
    # a rig that allows 2 ms phases: the device's 3 nC a phase is what stops 2 uA x 1.6 ms
    limits, notes = effective_limits(SafetyLimits(max_phase_us=2000.0), info.limits)
    gate = SafetyGate(limits, info.layout, info.sample_rate)
    for channel in (0, 7, 56, 63):
        with pytest.raises(SafetyRefusal, match="is forbidden") as refused:
            gate.admit(StimPattern.single([channel], bi(1.0, 100)), 0)
        assert refused.value.limit == "forbidden"
        assert not gate.can_stimulate(channel)
    for pulse, limit in ((bi(4.0, 100), "max_current_uA"), (bi(2.0, 1600), "max_charge_nC"),
                         (bi(1.0, 10), "min_phase_us")):
        with pytest.raises(SafetyRefusal) as refused:
            gate.admit(StimPattern.single([9], pulse), 0)
        assert refused.value.limit == limit
    gate.admit(StimPattern.single([9], bi(3.0, 200)), 0)
    assert any("forbids electrode(s) 11, 18, 81, 88" in n for n in notes)
    driver.close()


def test_abort_interrupts_and_reports_what_will_not_run(fake_cl):
    driver = running()
    read_until(driver, lambda e: isinstance(e, Block) and e.seq == 2)
    later = driver.earliest_stim_sample() + 2500
    ticket = driver.stimulate(StimPattern.single([9, 10], bi(1.0, 100), at_sample=later))
    driver.abort_stimulation()
    report = report_of(driver, ticket)
    assert not report.executed and report.reason == "aborted"
    read_until(driver, lambda e: isinstance(e, Block) and e.start_sample > later + 100)
    assert driver.neurons.read(500, later - 100, analysis=True).stims == []
    driver.close()


def test_a_pattern_far_ahead_waits_on_the_host_until_200_ms_before_it(stim_calls):
    driver = running()
    read_until(driver, lambda e: isinstance(e, Block) and e.seq == 2)
    at = driver.earliest_stim_sample() + 25_000  # 1 s ahead
    ticket = driver.stimulate(StimPattern.single([9], bi(1.0, 100), at_sample=at))
    assert stim_calls == []  # nothing the device would run should the host die now
    read_until(driver, lambda e: isinstance(e, Block) and e.stop_sample >= at - 4000)
    assert len(stim_calls) == 1 and stim_calls[0][3] <= cl_api.HOLD_AHEAD_S * 1e6
    assert report_of(driver, ticket) == StimReport(ticket, at)
    driver.close()


def test_stop_cancels_what_the_device_still_holds(fake_cl):
    driver = running()
    read_until(driver, lambda e: isinstance(e, Block) and e.seq == 2)
    at = driver.earliest_stim_sample() + 2500  # booked on the device: 100 ms ahead
    driver.stimulate(StimPattern.single([9, 10], bi(1.0, 100), at_sample=at))
    neurons = driver.neurons
    driver.stop()
    assert neurons.interrupts
    assert neurons.read(500, at - 100, analysis=True).stims == []
    driver.close()


# -- the real cl-sdk (Python 3.12, .venv-cl) ---------------------------------------------------
#: Run by the real cl-sdk and by the stand-in: what the API refuses, and what the driver does.
PARITY = r"""
import json, sys
import cl
from mea_control.driver import open_driver
from mea_control.types import Block, StimPattern, StimPulse, StimReport

def refused(make):
    try:
        make()
        return "ok"
    except (ValueError, TypeError) as exc:
        return type(exc).__name__

out = {"designs": [refused(lambda a=a: cl.StimDesign(*a)) for a in [
           (200, -2.0, 200, 2.0), (30, -1.0, 30, 1.0), (10, -1.0, 10, 1.0),
           (200, -4.0, 200, 4.0), (1600, -2.0, 1600, 2.0), (200, -1.0, 200, -1.0),
           (100, -1.0, 200, 1.0, 100, -1.0), (100, -1.0), (100, -1.0, 100, 1.0, 100, -1.0, 1)]],
       "bursts": [refused(lambda a=a: cl.BurstDesign(*a)) for a in [
           (5, 50), (2, 200.0), (3, 250.0), (-1, 10.0), (2.5, 10.0)]],
       "channels": [refused(lambda a=a: cl.ChannelSet(*a)) for a in [(8, 9), (64,), (-1,)]],
       "runs": []}
driver = open_driver("cl://?timeout=60")
driver.open()
driver.start(25)
def until(done):
    while True:
        event = driver.read(timeout=5)
        assert event is not None, "the device sent nothing"
        if done(event):
            return event
until(lambda e: isinstance(e, Block) and e.seq == 5)
b = lambda uA, us, **kw: StimPulse.biphasic(uA, us, **kw)
for pulses, train, extra in [({9: b(2.0, 200)}, (1, 0.0), 0),
                             ({9: b(1.0, 100), 10: b(1.0, 100)}, (1, 0.0), 7),
                             ({12: b(2.0, 160)}, (3, 100.0), 3),
                             ({9: b(1.0, 30)}, (1, 0.0), 0),
                             ({7: b(1.0, 100)}, (1, 0.0), 0)]:
    at = driver.earliest_stim_sample() + extra
    ticket = driver.stimulate(StimPattern(pulses, train_count=train[0],
                                          train_rate_hz=train[1], at_sample=at))
    r = until(lambda e: isinstance(e, StimReport) and e.ticket == ticket)
    out["runs"].append([r.executed, r.sample - at, r.reason.split(":")[0]])
    until(lambda e: isinstance(e, Block) and e.start_sample > at + 3000)
driver.close()
print(json.dumps(out))
"""


def parity_in(python, env):
    proc = run([str(python), "-c", PARITY], env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def real_cl_env():
    return dict(os.environ, CL_SDK_ACCELERATED_TIME="1", CL_SDK_VISUALISATION="0",
                PYTHONPATH=str(ROOT))


def parity_with_stand_in(capsys):
    exec(PARITY, {})
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_stand_in_refuses_and_runs_what_the_driver_sends_as_expected(fake_cl, capsys):
    got = parity_with_stand_in(capsys)
    assert got["designs"] == ["ok", "ValueError", "ValueError", "ValueError", "ValueError",
                              "ValueError", "ok", "ok", "ValueError"]
    assert got["bursts"] == ["ok", "ok", "ValueError", "ValueError", "ValueError"]
    assert got["channels"] == ["ok", "ValueError", "ValueError"]
    assert got["runs"] == [[True, 0, ""], [True, 0, ""], [True, 0, ""],
                           [False, 0, "the CL API cannot run the pulse on electrode 22"],
                           [False, 0, "electrode 18 is grounded on the CL1 "
                                      "(channels 0, 7, 56, 63)"]]


@needs_cl_env
def test_real_cl_sdk_refuses_and_runs_as_the_stand_in(fake_cl, capsys):
    assert parity_in(CL_PYTHON, real_cl_env()) == parity_with_stand_in(capsys)


@needs_cl_env
def test_real_cl_sdk_runs_the_bss_protocol_and_records_it(tmp_path):
    summary, nwb = tmp_path / "s.json", tmp_path / "real.nwb"
    proc = run([str(CL_PYTHON), "-m", "mea_control.cli", *BSS, "--device", "cl://?timeout=60",
                "--record", str(nwb), "--summary-json", str(summary)], env=real_cl_env(),
               timeout=180)
    assert proc.returncode == 0, proc.stderr
    check_bss_recording(nwb, json.loads(summary.read_text()))
