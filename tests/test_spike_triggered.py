"""protocols/spike_triggered.py through `mea-control run`, as a user runs it, on the simulator:
its reaction latency, its dead time, its random-delay control, refusals at start and during
the run. Figures are device samples from the recording and the summary."""

import json
import subprocess

import numpy as np
import pytest
from conftest import ROOT, cli_batch, cli_command

from mea_control import recording
from mea_control.layouts import load_layout

BUDGET = 50  # LATENCY_BUDGET_SAMPLES, as the protocol's docstring states it
FS = 25_000.0
TRIGGER, TARGET = "82", "28"  # the defaults; 82 is the busiest electrode of sim://
DEAD_MS = 50.0


def run(tmp_path, name, *args, duration=10.0, fast=True):
    """Summary and the recording's executed pulses (trigger, execution samples) and
    the trigger electrode's spike samples of one run."""
    summary, nwb = tmp_path / f"{name}.json", tmp_path / f"{name}.nwb"
    argv = ["run", "spike_triggered", "--quiet", "--duration", str(duration),
            "--summary-json", str(summary), "--record", str(nwb), *args]
    # real time: a loaded machine must not trip the watchdog (200 ms) and fail the run;
    # the loop's lag shows as pulses dropped, never as pulses run late
    argv += ["--fast"] if fast else ["--watchdog-ms", "10000"]
    proc = subprocess.run(cli_command(*argv), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    with recording.open(nwb) as rec:
        pulses, spikes = rec.pulses, rec.spikes
    ran = np.asarray(pulses["status"]) == "executed"
    trigger = np.asarray(pulses["trigger_sample"], np.int64)[ran]
    executed = np.asarray(pulses["execution_sample"], np.int64)[ran]
    assert set(np.asarray(pulses["electrode"])[ran]) <= {load_layout().channel(TARGET)}
    trigger_spikes = spikes.sample[spikes.channel == load_layout().channel(TRIGGER)]
    return json.loads(summary.read_text()), trigger, executed, trigger_spikes


def test_it_reacts_to_the_trigger_electrode_within_its_latency_budget(tmp_path):
    """Real time: every pulse that ran did so within the budget after a spike of the
    trigger electrode; a pulse the loop was too late for was dropped, never run late."""
    s, trigger, executed, trigger_spikes = run(tmp_path, "rt", duration=3.0, fast=False)
    assert len(executed) >= 3, s
    assert np.isin(trigger, trigger_spikes).all()  # each pulse follows a trigger spike
    latency = executed - trigger
    assert latency.min() >= 0 and latency.max() <= BUDGET, latency
    assert s["latency_samples"]["p99"] <= BUDGET and s["latency_samples"]["max"] <= BUDGET
    ps = s["protocol_summary"]
    assert ps["pulses_sent"] == s["stims_executed"] + s["stims_dropped"]
    assert ps["reaction_latency_samples"]["max"] <= BUDGET
    assert ps["reaction_latency_ms"]["p99"] == pytest.approx(
        ps["reaction_latency_samples"]["p99"] / FS * 1000, abs=1e-3)
    assert ps["latency_budget_samples"] == BUDGET


def test_no_two_pulses_are_closer_than_the_dead_time(tmp_path):
    s, trigger, executed, trigger_spikes = run(tmp_path, "dead")
    dead = DEAD_MS / 1000 * FS
    assert np.diff(trigger_spikes).min() < dead  # the culture gave triggers inside dead times
    assert s["protocol_summary"]["trigger_spikes"] > s["protocol_summary"]["pulses_sent"]
    assert len(executed) >= 10
    assert np.diff(np.sort(executed)).min() >= dead
    assert np.diff(np.sort(trigger)).min() >= dead


def test_the_random_delay_control_gives_as_many_pulses_at_delays_in_its_range(tmp_path):
    lo_ms, hi_ms = 100.0, 500.0
    _, trig_t, exec_t, _ = run(tmp_path, "triggered")
    s, trig_r, exec_r, _ = run(tmp_path, "random", "--param", "condition=random_delay",
                               "--param", f"random_delay_min_ms={lo_ms}",
                               "--param", f"random_delay_max_ms={hi_ms}")
    assert len(exec_t) >= 10 and 0.5 <= len(exec_r) / len(exec_t) <= 2.0, (len(exec_t),
                                                                           len(exec_r))
    delay = exec_r - trig_r
    assert delay.min() >= lo_ms / 1000 * FS and delay.max() <= hi_ms / 1000 * FS, delay
    assert np.ptp(delay) >= (hi_ms - lo_ms) / 2 / 1000 * FS  # spread over the range
    assert (exec_t - trig_t).max() <= BUDGET  # the triggered condition reacts at once
    assert np.diff(np.sort(exec_r)).min() >= DEAD_MS / 1000 * FS
    assert s["protocol_summary"]["condition"] == "random_delay"


def test_a_set_delay_gives_every_pulse_the_same_latency(tmp_path):
    _, trigger, executed, _ = run(tmp_path, "delay", "--param", "delay_ms=2", duration=5.0)
    assert len(executed) >= 5 and set(executed - trigger) == {50}


def test_parameters_that_cannot_work_are_refused_at_start_naming_the_parameter():
    cases = {
        ("--param", "amplitude=25"): "set by amplitude = 25",
        ("--param", "phase_us=700"): "set by phase_us = 700",
        ("--param", "trigger_electrode=99"): "trigger_electrode: layout grid8x8_200um has no "
                                             "electrode '99'",
        ("--param", "target_electrodes=82"): "target_electrodes: the trigger electrode cannot",
        ("--param", "random_delay_max_ms=10"): "random_delay_max_ms must not be below",
    }
    argvs = [["run", "spike_triggered", "--duration", "1", *args] for args in cases]
    for (code, err, _), message in zip(cli_batch(argvs), cases.values(), strict=True):
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], err
        assert "[start]" not in err


def test_refusals_during_the_run_are_counted_and_not_retried_on_every_spike(tmp_path):
    """A rig that allows 5 pulses in 10 s: the rest are refused, at most one a second."""
    rig = tmp_path / "rig.toml"
    rig.write_text("[limits]\nmean_rate_hz = 0.5\nmean_window_s = 10\n")
    s, _, executed, _ = run(tmp_path, "refused", "--rig", str(rig))
    ps = s["protocol_summary"]
    assert len(executed) == 5
    assert 1 <= ps["pulses_refused"] == s["stims_refused"] <= 10 + 1
    assert "mean_rate_hz" in ps["last_refusal"]
    assert s["error"] is None
