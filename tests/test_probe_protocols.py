"""probe_map, paired_pulse and tetanus through `mea-control run`, as a user runs them, on
the simulated culture (short forms, fast mode)."""

import json
import subprocess

import numpy as np
import pytest
from conftest import ROOT, cli_command, run_paused

from mea_control.layouts import load_layout
from mea_control.protocol import load_protocol, shipped_protocols

DEVICE = "sim://?seed=1"


def run(tmp_path, protocol, *params, device=DEVICE):
    summary = tmp_path / f"{protocol}.json"
    args = ["run", protocol, "--device", device, "--fast", "--summary-json", str(summary)]
    for p in params:
        args += ["--param", p]
    done = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the printed summary stays readable: a long table is named by its size
    printed = next(line for line in done.stdout.splitlines() if line.startswith(protocol))
    assert len(printed) < 1000, printed
    return json.loads(summary.read_text())["protocol_summary"]


#: A raw stream, and a device that streams spikes only (the protocols pace on on_clock).
DEVICES = [DEVICE, DEVICE + "&raw=0"]


@pytest.mark.parametrize(("device", "repetitions", "baseline_s"),
                         [(DEVICES[0], 10, 2.0), (DEVICES[1], 20, 5.0)])
def test_probe_map_finds_the_stimulated_electrodes_neighbours(tmp_path, device, repetitions,
                                                             baseline_s):
    """Without network bursts (which carry a pulse's response over the whole array).
    Spikes only: the device's detector hears the culture's first half second, whose
    activity the host's (still learning the noise) misses; a longer baseline dilutes it."""
    out = tmp_path / "sets.json"
    summary = run(tmp_path, "probe_map", "electrodes=44,53", f"repetitions={repetitions}",
                  "interval_ms=200", f"out={out}", "n_sensory=2", "n_motor=6",
                  f"baseline_s={baseline_s}", device=device + "&bursts=0")
    assert summary["pulses_answered"] == 2 * repetitions and summary["pulses_refused"] == 0
    layout = load_layout("grid8x8_200um")
    data = json.loads(out.read_text())
    strength = np.nan_to_num(np.array(data["strength"], float))
    for k, label in enumerate(data["stimulated"]):
        dist = layout.distances_um(layout.channel(label))
        neighbours, far = (dist > 0) & (dist <= 300), dist > 300
        assert dist[np.argmax(strength[k])] <= 300  # itself or a neighbour
        assert strength[k][neighbours].mean() > 3 * max(strength[k][far].mean(), 0.01)
    # the sets pong reads: labels, disjoint, sensory among the stimulated
    assert sorted(data["sensory"]) == ["44", "53"]
    motor = data["motor_up"] + data["motor_down"]
    assert len(motor) == 6 and not set(motor) & set(data["sensory"])
    ys = {lab: layout.positions_um[layout.channel(lab)][1] for lab in motor}
    assert min(ys[lab] for lab in data["motor_up"]) >= max(ys[lab] for lab in data["motor_down"])
    if "pong" in shipped_protocols():  # pong accepts the file
        subprocess.run(cli_command("run", "pong", "--device", DEVICE, "--fast", "--quiet",
                                   "--duration", "0.5", "--param", f"electrodes_file={out}"),
                       check=True, capture_output=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("device", DEVICES)
def test_paired_pulse_gives_a_ratio_per_interval(tmp_path, device):
    summary = run(tmp_path, "paired_pulse", "intervals_ms=20,100,500", "pairs=5",
                  "pair_interval_s=1.5", device=device)
    table = summary["by_interval_ms"]
    assert set(table) == {"20", "100", "500"}
    for row in table.values():
        assert row["pairs"] == 5 and row["first"] > 0 and row["ppr"] is not None


@pytest.mark.parametrize("device", DEVICES)
def test_tetanus_reports_before_and_after_per_pair(tmp_path, device):
    summary = run(tmp_path, "tetanus", "n_probe=4", "probe_repetitions=5",
                  "probe_interval_ms=200", "bursts=3", "rest_s=0.5", device=device)
    assert summary["complete"] and summary["tetanus_bursts_sent"] == 3
    assert summary["pairs"] == len(summary["before_after_change"]) > 0
    for before, after, change in summary["before_after_change"].values():
        assert before > 0 and change == pytest.approx((after - before) / before, abs=0.01)
    assert 0 <= summary["fraction_up"] + summary["fraction_down"] <= 1


@pytest.mark.parametrize("protocol", ["probe_map", "paired_pulse", "tetanus"])
def test_an_amplitude_above_the_limit_is_refused_at_start(tmp_path, protocol):
    done = subprocess.run(cli_command("run", protocol, "--device", DEVICE, "--fast",
                                      "--param", "amplitude_uA=20"),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert "max_current_uA" in done.stderr and "set by amplitude_uA = 20" in done.stderr
    assert not (tmp_path / "probe_map.json").exists()


def test_a_sham_tetanus_sends_only_the_probes(tmp_path):
    summary = run(tmp_path, "tetanus", "n_probe=2", "probe_repetitions=3",
                  "probe_interval_ms=200", "bursts=3", "rest_s=0.5", "tetanus=none")
    assert summary["complete"] and summary["tetanus"] == []
    assert summary["tetanus_bursts_sent"] == 0 and summary["probes_refused"] == 0


@pytest.mark.parametrize(("protocol", "params"), [
    ("probe_map", {"baseline_s": 0.5, "interval_ms": 100.0}),
    ("paired_pulse", {"pair_interval_s": 1.0, "intervals_ms": "20,100"}),
    ("tetanus", {"probe_interval_ms": 100.0})])
def test_after_a_pause_the_pulses_resume_at_their_pace_not_in_a_burst(tmp_path, protocol,
                                                                     params):
    """The simulator's own record: one probe (or one pair) in the 100 ms after the resume,
    not the two seconds' worth the schedule fell behind."""
    cls, _ = load_protocol(protocol)
    extra = {"out": str(tmp_path / "map.json")} if protocol == "probe_map" else {}
    s, ran, _, resumed = run_paused(cls(**params, **extra), DEVICE, 6.0, 2.0, 4.0)
    soon = [sample for sample, *_ in ran if resumed <= sample < resumed + 2500]
    assert 1 <= len(soon) <= 2 and s["stims_refused"] == 0 and s["error"] is None
