"""The closed-loop free-energy protocol on the simulator: probes, records, errors, live state."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, cli_command

from mea_control import recording
from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.protocol import ProtocolError, load_protocol
from mea_control.sinks import Sink

#: Spikes detected on the simulated device: no raw stream, so short runs are quick.
DEVICE = "sim://?seed=1&raw=false"
PER = 32
#: Short sessions, trials 0.35 s apart (the response window ends at 300 ms).
SHORT = ["--param", f"trials_per_session={PER}", "--param", "isi_s=0.35"]


def run_cli(*args):
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.mark.parametrize(("job", "selection"), [("identify", "targeted"), ("control", "efe"),
                                               ("train", "steer")])
def test_probes_are_chosen_delivered_and_recorded(tmp_path, job, selection):
    """Every decision is recorded with the experimenter's model's uncertainty; identify and
    control choose probes (no sources), train chooses training trials (with sources)."""
    nwb = tmp_path / "run.nwb"
    proc = run_cli("run", "fep_closed_loop", "--device", DEVICE, "--fast", "--quiet",
                   "--sessions", "3", *SHORT, "--param", "probe_fraction=0.3",
                   "--param", f"job={job}", "--param", f"selection={selection}",
                   "--record", str(nwb), "--no-raw")
    assert proc.returncode == 0, proc.stderr
    with recording.open(nwb) as rec:
        decisions, table = rec.decisions, rec.trials
    assert len(table) == 3 * PER
    choices = [d for d in decisions if d["choice"] is not None]
    updates = [d["details"] for d in decisions if d["details"].get("kind") == "update"]
    probes = [d for d in choices if d["details"]["method"] == selection]
    assert all(d["details"]["probe"] == (job != "train") for d in probes)
    calibration = [d["details"] for d in decisions if d["details"].get("kind") == "calibration"]
    assert len(calibration) == 1 and calibration[0]["job"] == job
    n_out = len(calibration[0]["electrodes"]) if job == "identify" else 2
    # The models start after the calibration session and decide every later trial.
    trials = sorted(d["details"]["trial"] for d in choices)
    assert trials[0] >= PER and trials == list(range(trials[0], 3 * PER))
    assert abs(len(probes) / len(choices) - 0.3) < 0.15
    for d in choices:  # every decision with the experimenter's model's uncertainty
        details, n = d["details"], len(d["candidates"])
        assert details["job"] == job
        assert np.shape(details["prediction"]) == np.shape(details["sd"]) == (n, n_out)
        assert np.all(np.asarray(details["sd"]) > 0)
        assert len(details["electrode_sd"]) == 32 and min(details["electrode_sd"]) > 0
        assert np.shape(details["x_hat"]) == (n, 2)  # the culture's model's prediction
    for d in probes:
        details = d["details"]
        assert len(d["candidates"]) == len(d["scores"]) == 16
        assert all(math.isfinite(v) for v in d["scores"])
        s = table.s[details["trial"]].tolist()
        if job == "train":  # the trial keeps the chosen candidate's hidden sources
            assert s == details["sources"][d["choice"]]
            assert math.isfinite(details["separation"])
        else:  # probes carry no sources
            assert s == [0, 0]
        # what was chosen is what the trial delivered
        np.testing.assert_array_equal(d["candidates"][d["choice"]], table.o[details["trial"]])
    training = [d for d in choices if d["details"]["method"] != selection]
    assert all(d["details"]["method"] == "generative" and d["choice"] == 0 for d in training)
    for d in training:
        np.testing.assert_array_equal(d["candidates"][0], table.o[d["details"]["trial"]])
    # one update a trial from the models' start on: predicted (before learning) vs observed
    assert [u["trial"] for u in updates] == list(range(PER, 3 * PER))
    assert all(math.isfinite(u["free_energy"]) for u in updates)
    for u in updates:
        assert len(u["observed"]) == len(u["predicted"]) == len(u["sd"]) == n_out
        if job == "control":
            assert set(u["observed"]) <= {0, 1} and isinstance(u["success"], bool)
            assert u["preferred"] == ([0.95, 0.05] if u["trial"] < 2 * PER else [0.05, 0.95])
        elif job == "train":
            assert set(u["observed"]) <= {0, 1} and -2 <= u["separation"] <= 2
        else:
            assert u["target_sd"] > 0 and u["error"] >= 0
            # what the update observed is the trial's recorded response
            np.testing.assert_array_equal(
                u["observed"], table.r[u["trial"]][calibration[0]["electrodes"]])
    if job == "identify":  # what is still unknown shrinks as the model learns
        assert updates[-1]["target_sd"] < updates[0]["target_sd"]
    chosen = {d["details"]["trial"] for d in probes}
    assert {u["trial"] for u in updates if u["probe"]} == (set() if job == "train" else chosen)
    ends = [u for u in updates if "session_free_energy" in u]
    assert [u["trial"] for u in ends] == [2 * PER - 1, 3 * PER - 1]
    assert all(np.shape(u["W1"]) == np.shape(u["W0"]) == (2, 32) for u in ends)
    assert calibration[0]["members_g1"]
    assert calibration[0]["members_g2"] and calibration[0]["baseline"] > 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"probe_fraction": 1.5}, "probe_fraction=1.5 is out of range"),
        ({"job": "bogus"}, "job='bogus' is not one of"),
        ({"job": "train", "selection": "efe"}, "selection='efe' does not suit job=train: use "
         "one of steer, random"),
        ({"selection": "efe"}, "selection='efe' does not suit job=identify: use one of "
         "targeted, infomax, random, passive, generative"),
        ({"job": "control", "selection": "targeted"}, "selection='targeted' does not suit "
         "job=control: use one of efe, random"),
        ({"selection": "bogus"}, "selection='bogus' does not suit job=identify"),
        ({"preferred": "0.5"}, "preferred='0.5': give two probabilities"),
        ({"preferred": "0.5,x"}, "give two probabilities from 0 to 1"),
        ({"preferred": "0.5,1.5"}, "give two probabilities from 0 to 1"),
        ({"calibration_sessions": 3, "sessions": 3}, "must be fewer than sessions=3"),
        ({"n_candidates": 1}, "n_candidates=1 is out of range"),
        ({"lambda": 0}, "lambda=0.0 is out of range"),
        ({"isi_s": 0.2}, "must end before the next trial"),
    ],
)
def test_bad_parameters_are_refused(values, message):
    cls, _ = load_protocol("fep_closed_loop")
    with pytest.raises(ProtocolError, match=message):
        cls(**values)


def test_control_without_ensembles_stops_with_one_line_saying_what_to_change():
    proc = run_cli("run", "fep_closed_loop", "--device", DEVICE, "--fast", "--sessions", "2",
                   *SHORT, "--param", "amplitude=0.5", "--param", "job=control")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mea-control: error: after 1 calibration session(s) of {PER} "
                           "trials: no source-preferring ensemble")
    assert "calibration_sessions" in last and "stronger pulse (amplitude=0.5)" in last


def test_identify_without_ensembles_goes_on_without_the_cultures_model(tmp_path):
    summary = tmp_path / "s.json"
    proc = run_cli("run", "fep_closed_loop", "--device", DEVICE, "--fast", "--sessions", "2",
                   *SHORT, "--param", "amplitude=0.5", "--param", "probe_fraction=1",
                   "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    assert "the culture's model is left out (no source-preferring ensemble" in proc.stderr
    out = json.loads(summary.read_text())["protocol_summary"]
    # the engine designs a trial ahead: the first after calibration may be a training one
    assert PER - 2 <= out["probes"] <= PER
    assert out["outputs"] > 0 and "ensemble_sizes" not in out


class Snapshots(Sink):
    """Reads the protocol's model state after every trial."""

    def __init__(self, protocol):
        self.protocol = protocol
        self.states = []

    def on_trial(self, trial):
        self.states.append(self.protocol.model_state())


def test_model_state_before_and_after_calibration():
    cls, _ = load_protocol("fep_closed_loop")
    protocol = cls(sessions=2, trials_per_session=PER, isi_s=0.35, probe_fraction=0.3)
    idle = protocol.model_state()
    assert not idle["running"] and idle["trials"] == 0 and idle["W1"] is None
    assert idle["x"].shape == (0, 2) and idle["free_energy"] == []
    driver = open_driver(DEVICE)
    driver.open()
    snapshots = Snapshots(protocol)
    from_main = []  # read on the caller's thread while the loop runs
    engine = Engine(driver, protocol, EngineConfig(fast=True), sinks=[snapshots])
    try:
        summary = engine.run(progress=lambda *_: from_main.append(protocol.model_state()),
                             interval_s=0.01)
    finally:
        driver.close()
    assert summary["error"] is None and summary["trials"] == 2 * PER
    states = snapshots.states
    assert not any(s["running"] for s in states[: PER - 1])
    assert [s["trials"] for s in states[: PER - 1]] == list(range(1, PER))
    assert all(s["running"] for s in states[PER - 1:])
    last = states[-1]
    # calibration trials were replayed into the model: its history covers every trial
    assert len(last["free_energy"]) == 2 * PER and np.isfinite(last["free_energy"]).all()
    assert last["x"].shape == last["x_hat"].shape == (2 * PER, 2)
    assert last["W1"].shape == last["W0"].shape == (2, 32)
    assert len(last["session_free_energy"]) == 2
    assert last["probes"] == summary["protocol_summary"]["probes"] > 0
    assert 0 < len(last["decisions"]) <= 8 and "scores" in last["decisions"][-1]
    # the experimenter's model: what is still unknown, predicted vs observed per trial
    assert last["job"] == "identify" and last["selection"] == "targeted"
    assert last["electrode_sd"].shape == (32,) and (last["electrode_sd"] > 0).all()
    n_out = last["observed"].shape[1]
    assert last["observed"].shape == last["predicted"].shape == (PER, n_out)
    assert last["update_trials"] == list(range(PER, 2 * PER))
    assert last["measure_name"] == "target_sd" and len(last["measure"]) == PER
    assert last["success_rate"] is None
    assert "sd" in last["decisions"][-1] and "prediction" in last["decisions"][-1]
    assert len(from_main) > 1 and from_main[-1]["trials"] == 2 * PER
    assert summary["protocol_summary"]["session_free_energy"] == pytest.approx(
        last["session_free_energy"], abs=1e-4)


def test_identify_models_the_most_responsive_electrodes_up_to_max_electrodes():
    cls, _ = load_protocol("fep_closed_loop")
    protocol = cls(max_electrodes=3, calibration_sessions=2, trials_per_session=10)
    module = sys.modules[cls.__module__]
    rng = np.random.default_rng(0)
    rates = np.zeros(64)
    rates[[5, 9, 20, 40, 41]] = [2.0, 8.0, 4.0, 6.0, 1.5]  # five responsive, 1.5 to 8 spikes
    r = rng.poisson(rates, (20, 64))
    job = module.JOBS["identify"](protocol, np.zeros((20, 32)), np.zeros((20, 2)), r, None, rng)
    assert job.electrodes.tolist() == [9, 20, 40]
    assert job.model.n_outputs == 3
