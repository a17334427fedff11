"""burst_quieting and rate_clamp through `mea-control run` on the simulated culture, as a
user runs them: what each is for, in a short form, and what the safety gate refuses."""

import json
import subprocess

import numpy as np
import pytest
from conftest import ROOT, cli_batch, cli_command, run_paused

from mea_control import recording
from mea_control.protocol import load_protocol

#: The default network culture, spikes only (fast): it bursts every 3-5 s.
DEVICE = "sim://?raw=0&seed=0"
PHASES = ["--param", "baseline_s=15", "--param", "quieting_s=20", "--param", "after_s=10"]


def runs(tmp_path, **argvs):
    """The summaries of fast runs (run side by side), after checking each ended well."""
    procs = {}
    for name, args in argvs.items():
        summary = tmp_path / f"{name}.json"
        argv = cli_command("run", *args, "--device", DEVICE, "--fast", "--quiet",
                           "--block-ms", "10", "--summary-json", str(summary))
        procs[name] = (summary, subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.PIPE, text=True))
    summaries = {}
    for name, (summary, proc) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        summaries[name] = json.loads(summary.read_text())
    return summaries


def test_burst_quieting_lowers_the_burst_rate_against_the_same_culture_unstimulated(tmp_path):
    done = runs(tmp_path, quieted=["burst_quieting", *PHASES],
                control=["burst_quieting", *PHASES, "--param", "stimulate=false"])
    quieted, control = done["quieted"], done["control"]
    q, c = quieted["protocol_summary"], control["protocol_summary"]
    # the same culture until stimulation starts
    for key in ("bursts", "burstiness", "rate_hz"):
        assert q[f"baseline_{key}"] == c[f"baseline_{key}"]
    assert c["baseline_bursts"] >= 2 and c["quieting_bursts"] >= 3  # it bursts
    assert q["quieting_bursts_per_min"] <= c["quieting_bursts_per_min"] / 2
    assert q["quieting_burstiness"] < c["quieting_burstiness"] / 3
    # pulses only while quieting, every one through the gate, none refused
    assert q["baseline_pulses"] == q["after_pulses"] == 0 < q["quieting_pulses"]
    assert quieted["stims_executed"] + quieted["stims_dropped"] == q["quieting_pulses"]
    assert quieted["stims_refused"] == 0
    assert control["stims_executed"] == 0
    # the run ends itself after the three phases
    assert quieted["duration_s"] == pytest.approx(45.0, abs=0.01) and not quieted["ended_early"]
    # the controller held the rate near twice the baseline's
    assert q["clamp_target_hz"] == pytest.approx(2 * q["baseline_rate_hz"], rel=0.01)
    assert abs(q["quieting_rate_hz"] / q["clamp_target_hz"] - 1) < 0.2


def test_rate_clamp_reaches_the_target_and_holds_it(tmp_path):
    nwb = tmp_path / "clamp.nwb"
    s = runs(tmp_path, clamp=["rate_clamp", "--duration", "30", "--param", "target_hz=18",
                              "--record", str(nwb)])["clamp"]
    p = s["protocol_summary"]
    assert p["reached_s"] <= 10.0
    assert p["mae_percent"] <= 15.0 and p["held_within"] >= 0.8
    assert abs(p["held_rate_hz"] / 18.0 - 1) < 0.05
    assert s["stims_refused"] == p["refused"] == 0
    # every pulse sent ran, but one the end of the run cancelled before it was due
    assert s["stims_dropped"] <= 1 and s["stims_executed"] + s["stims_dropped"] == p["pulses"]
    # the controller's trace, one decision an update (0.5 s): the new stimulation rate
    with recording.open(nwb) as rec:
        d = rec.decisions
    assert 59 <= len(d) <= 60  # the last period ends with the run
    measured = np.array([x["details"]["measured_hz"] for x in d])
    error = np.array([x["details"]["error_hz"] for x in d])
    np.testing.assert_allclose(measured + error, 18.0, atol=0.002)
    rates = np.array([x["choice"] for x in d])
    assert np.all((rates >= 0) & (rates <= 200)) and rates[-20:].min() > 50
    assert np.mean(np.abs(measured[-20:] - 18) <= 0.2 * 18) >= 0.8


def test_rate_clamp_counts_refused_pulses_and_goes_on(tmp_path):
    """One electrode at up to 100 Hz breaks mean_rate_hz (40 Hz over 10 s): the gate refuses
    pulses, the protocol counts them and the run goes on to its end."""
    s = runs(tmp_path, one=["rate_clamp", "--duration", "12", "--param", "stim_electrodes=44",
                            "--param", "max_rate_hz=100", "--param", "target_hz=40"])["one"]
    p = s["protocol_summary"]
    assert p["refused"] > 0 and s["stims_refused"] == p["refused"]
    assert s["stims_executed"] + s["stims_dropped"] == p["pulses"] > 0
    assert s["duration_s"] == pytest.approx(12.0, abs=0.01) and s["ended"] == "completed"


REFUSED_AT_START = [
    (["rate_clamp", "--param", "amplitude=15"], "amplitude = 15"),
    (["rate_clamp", "--param", "amplitude=5", "--param", "max_amplitude=30"],
     "max_amplitude = 30"),
    (["burst_quieting", "--param", "amplitude=25"], "amplitude = 25"),
    (["rate_clamp", "--param", "stim_electrodes=44,99"], "stim_electrodes: layout"),
    (["rate_clamp", "--param", "max_rate_hz=1", "--param", "min_rate_hz=2"],
     "max_rate_hz=1 is below min_rate_hz=2"),
]


def test_settings_that_cannot_work_are_refused_at_start():
    """Each names the parameter (one line, exit 2), before a pulse."""
    results = cli_batch([["run", *argv, "--device", DEVICE, "--fast", "--duration", "1"]
                         for argv, _ in REFUSED_AT_START])
    for (argv, named), (code, stderr, _) in zip(REFUSED_AT_START, results, strict=True):
        assert code == 2, (argv, stderr)
        assert named in stderr and "Traceback" not in stderr, (argv, stderr)


def test_listed_with_one_line_each():
    [(code, _, stdout)] = cli_batch([["protocols"]])
    assert code == 0
    lines = {line.split(":")[0]: line for line in stdout.splitlines()
             if not line.startswith(" ")}
    assert "Wagenaar et al. 2005" in lines["burst_quieting"]
    assert "Newman et al. 2015" in lines["rate_clamp"]


def test_rate_clamp_after_a_pause_goes_on_from_where_it_stood():
    """The operator pauses from 8 to 12 s: no update measures the silent pause (the integral
    does not wind up), the first one after it a whole period heard."""
    cls, _ = load_protocol("rate_clamp")
    s, _, decisions, resumed = run_paused(cls(target_hz=18.0), DEVICE, 16.0, 8.0, 12.0)
    assert s["error"] is None and s["stims_refused"] == 0
    before = [d for at, d in decisions if at < resumed]
    after = [(at, d) for at, d in decisions if at > resumed]
    assert len(after) >= 6 and after[0][0] >= resumed + 0.5 * 25_000  # update_s = 0.5
    assert min(d["measured_hz"] for _, d in after) > 5.0  # every update heard the culture
    assert after[0][1]["integral"] <= max(d["integral"] for d in before) + 18.0 * 0.5


def test_burst_quieting_leaves_a_pause_out_of_its_phase():
    """A 4 s pause in the quieting phase lengthens it by 4 s; its rate is of the time heard."""
    cls, _ = load_protocol("burst_quieting")
    protocol = cls(baseline_s=10.0, quieting_s=10.0, after_s=5.0)
    s, ran, _, resumed = run_paused(protocol, DEVICE, 60.0, 14.0, 18.0)
    q = s["protocol_summary"]
    assert s["duration_s"] == pytest.approx(29.0, abs=0.02) and s["paused_s"] == 4.0
    assert protocol.ends[1] - protocol.ends[0] == 14 * 25_000  # 10 s heard + 4 s paused
    assert abs(q["quieting_rate_hz"] / q["clamp_target_hz"] - 1) < 0.25
    assert not [x for x in ran if resumed - 4 * 25_000 + 250 < x[0] < resumed]
