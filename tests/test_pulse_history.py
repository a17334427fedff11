"""The gate's pulse history outlives a run: in a GUI session, and between CLI processes.

Runs use the simulated device in fast mode; counts are in pulses and samples.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from mea_control import pulse_history
from mea_control.gui.session import RigSession
from mea_control.layouts import load_layout
from mea_control.limits import SafetyLimits
from mea_control.pulse_history import PulseHistory, default_path, history_path
from mea_control.rig import load_rig
from mea_control.safety import SafetyGate, SafetyRefusal
from mea_control.types import StimPattern, StimPulse
from tests.conftest import cli_command, wait_until

FS = 20_000.0
GRID = load_layout("grid8x8_200um")
CH34 = GRID.channel("34")
PULSE = StimPulse.biphasic(5.0, 200.0)  # 400 us: 8 samples at 20 kHz
#: 60 pulses per electrode in any hour: two runs of 40 pulses cannot both pass.
LIMITS = {"mean_rate_hz": 60 / 3600, "mean_window_s": 3600}
WAIT_S = 120.0

#: Stimulates electrode 34 at 10 Hz for the whole run, counting refusals.
PULSER = '''
from mea_control.protocol import Parameter, Protocol
from mea_control.safety import SafetyRefusal
from mea_control.types import StimPattern, StimPulse


class Pulser(Protocol):
    """One pulse on electrode 34 every 100 ms."""

    name = "pulser"
    parameters = {"rate_hz": Parameter(float, 10.0, range=(0.1, 100.0))}

    def setup(self, ctx):
        self.channel = ctx.layout.channel("34")
        self.step = ctx.samples(1.0 / self.p.rate_hz)
        self.next = ctx.now
        self.pulse = StimPulse.biphasic(5.0, 200.0)

    def on_block(self, ctx, block, filtered):
        while ctx.now >= self.next:
            self.next += self.step
            ctx.stimulate(StimPattern.single([self.channel], self.pulse))
'''


@pytest.fixture
def pulser(tmp_path):
    path = tmp_path / "pulser.py"
    path.write_text(PULSER)
    return path


def admitted(summary: dict) -> int:
    return summary["stims_executed"] + summary["stims_dropped"] + summary["stims_unreported"]


def gate(limits: SafetyLimits | None = None) -> SafetyGate:
    return SafetyGate(limits or SafetyLimits(**LIMITS), GRID, FS)


def at(sample: int) -> StimPattern:
    return StimPattern.single([CH34], PULSE, at_sample=sample)


# -- the mapping between runs -----------------------------------------------------------------


def test_a_restarted_clock_gets_the_pulses_at_their_wall_clock_distance(monkeypatch):
    """Run 1 admits pulses at samples 1000 and 3000 and ends at sample 5000 at wall 100 s;
    run 2's device restarts at sample 0 at wall 101 s: the pulses are 1 s + (5000 - s)
    samples before its start."""
    store = PulseHistory(None, "sim://")
    first = gate()
    monkeypatch.setattr(pulse_history.time, "time", lambda: 100.0)
    store.restore(first, 0, 99.0, clock=lambda: 0)
    for sample in (1000, 3000):
        first.admit(at(sample), 0)
    store.keep(first, 5000)

    second = gate()
    store.restore(second, 0, 101.0, clock=lambda: 0)
    expected = [(1000 - 5000 - 20_000, 8), (3000 - 5000 - 20_000, 8)]
    assert second.export_history(0) == {CH34: expected}
    assert second.admitted == 0  # the counters are the run's own


def test_the_file_carries_the_same_samples_to_another_process(tmp_path, monkeypatch):
    path = tmp_path / "rig2.json"
    monkeypatch.setattr(pulse_history.time, "time", lambda: 1_700_000_000.25)
    first = gate()
    store = PulseHistory(path, "serial:///dev/ttyACM0")
    assert store.restore(first, 10_000, 1_700_000_000.0, clock=lambda: 10_000)
    first.admit(at(12_345), 10_000)
    store.keep(first, 15_000)
    doc = json.loads(path.read_text())
    assert doc["device"] == "serial:///dev/ttyACM0" and doc["version"] == 1

    second = gate()  # "another process": a new store reads the file
    notes = PulseHistory(path, "serial:///dev/ttyACM0").restore(
        second, 0, 1_700_000_002.25, clock=lambda: 0)
    assert notes == ["pulse history: 1 pulse(s) of earlier runs on 1 electrode(s) count "
                     "toward the rate limits"]
    assert second.export_history(0) == {CH34: [(12_345 - 15_000 - 40_000, 8)]}


def test_restored_pulses_count_for_both_rate_limits_and_for_overlap():
    limits = SafetyLimits(burst_rate_hz=100, burst_window_ms=50)  # 5 pulses in 50 ms
    store = PulseHistory(None, "sim://")
    first = gate(limits)
    store.restore(first, 0, 0.0, clock=lambda: 0)
    for k in range(5):
        first.admit(at(100 + k * 100), 0)  # 5 pulses, 5 ms apart, up to sample 500
    store.keep(first, 600)  # the run ends 5 ms after the last pulse

    second = gate(limits)
    store.restore(second, 0, pulse_history.time.time(), clock=lambda: 0)
    with pytest.raises(SafetyRefusal) as refused:
        second.admit(at(0), 0)
    assert refused.value.limit == "burst_rate_hz"
    second.admit(at(second.export_history(0)[CH34][0][0] + 1000), 0)  # the window has passed


# -- the file -----------------------------------------------------------------------------------


def test_default_path_is_per_device_under_the_state_folder(state_dir, monkeypatch):
    assert default_path("sim://?seed=1").parent == state_dir / "pulse-history"
    assert default_path("sim://?seed=1") != default_path("sim://?seed=2")
    monkeypatch.delenv(pulse_history.STATE_DIR_ENV)
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    assert str(default_path("sim://")).startswith("/xdg/mea-control/pulse-history/sim")


def test_the_rig_file_names_the_file_relative_to_itself(tmp_path):
    rig = tmp_path / "rig.toml"
    rig.write_text('[rig]\nname = "rig 2"\npulse_history = "state/rig2.json"\n')
    assert history_path("sim://", load_rig(rig)) == tmp_path / "state" / "rig2.json"
    rig.write_text("[rig]\npulse_history = 3\n")
    with pytest.raises(ValueError, match=r"\[rig\] pulse_history must be a file path"):
        history_path("sim://", load_rig(rig))


@pytest.mark.parametrize("content", [
    b"{\"format\": \"mea-control pulse history\", \"vers",  # cut short
    b"\x00\xff garbage",
    b"[1, 2]",
    b'{"format": "mea-control pulse history", "version": 99}',
    b'{"format": "mea-control pulse history", "version": 1, "saved_at": 5, '
    b'"electrodes": {"34": {"start_s": [1, "x"], "length_us": [1, 2]}}}',
])
def test_an_unreadable_file_is_a_warning_and_is_kept_aside(tmp_path, content):
    path = tmp_path / "h.json"
    path.write_bytes(content)
    g = gate()
    notes = PulseHistory(path, "sim://").restore(g, 0, 0.0, clock=lambda: 0)
    assert len(notes) == 1 and notes[0].startswith(f"warning: pulse history {path} is unreadable")
    assert "may exceed mean_rate_hz" in notes[0]
    assert (tmp_path / "h.json.unreadable").read_bytes() == content
    assert g.export_history(0) == {}


def test_a_missing_file_is_a_note_and_the_end_of_a_run_writes_it(tmp_path):
    path = tmp_path / "new" / "h.json"
    store = PulseHistory(path, "sim://")
    g = gate()
    notes = store.restore(g, 0, 0.0, clock=lambda: 0)
    assert notes == [f"pulse history: none kept yet for sim:// ({path}); the rate limits "
                     "count from this run"]
    store.keep(g, 100)
    assert json.loads(path.read_text())["electrodes"] == {}
    assert [p.name for p in path.parent.iterdir()] == ["h.json"]  # no temporary file left


def test_a_run_that_never_began_leaves_the_history_alone():
    store = PulseHistory(None, "sim://")
    first = gate()
    store.restore(first, 0, 0.0, clock=lambda: 0)
    first.admit(at(10), 0)
    store.keep(first, 100)
    store.keep(gate(), 0)  # an engine whose device never sent a sample
    assert len(store.pulses()["34"]) == 1


def test_an_unwritable_file_is_one_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    said = []
    store = PulseHistory(blocker / "h.json", "sim://", log=said.append)
    for _ in range(2):
        g = gate()
        store.restore(g, 0, 0.0, clock=lambda: 0)
        store.keep(g, 10)
    assert len(said) == 1 and said[0].startswith("warning: cannot write pulse history")


# -- end to end ---------------------------------------------------------------------------------


def rig_file(tmp_path, history: bool = True):
    """The test's limits; ``history``: the rig names a pulse history file (the simulator
    keeps none otherwise), pulses.json beside it."""
    rig = tmp_path / "rig.toml"
    rig.write_text(('[rig]\npulse_history = "pulses.json"\n' if history else "")
                   + "[limits]\n" + "".join(f"{k} = {v}\n" for k, v in LIMITS.items()))
    return rig


def run_cli(pulser, tmp_path, name: str, history: bool = True) -> tuple[dict, str]:
    rig = rig_file(tmp_path, history)
    summary = tmp_path / f"{name}.json"
    done = subprocess.run(
        cli_command("run", str(pulser), "--device", "sim://?seed=1", "--fast", "--duration",
                    "4", "--rig", str(rig), "--summary-json", str(summary)),
        capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    return json.loads(summary.read_text()), done.stderr


def test_two_cli_runs_back_to_back_share_the_mean_rate_window(pulser, tmp_path, state_dir):
    first, log = run_cli(pulser, tmp_path, "first")
    assert first["stims_refused"] == 0 and admitted(first) >= 35
    assert "none kept yet" in log
    assert (tmp_path / "pulses.json").exists()

    second, log = run_cli(pulser, tmp_path, "second")
    assert f"pulse history: {admitted(first)} pulse(s) of earlier runs on 1 electrode(s)" in log
    assert admitted(first) + admitted(second) == 60  # the hour's 60 pulses, over both runs
    assert second["stims_refused"] > 0
    assert "exceeds mean_rate_hz" in log


def test_the_simulator_repeats_exactly_without_a_named_file(pulser, tmp_path, state_dir):
    """A simulated culture is new in every CLI run: nothing carries over by default."""
    first, _ = run_cli(pulser, tmp_path, "first", history=False)
    second, log = run_cli(pulser, tmp_path, "second", history=False)
    assert admitted(first) == admitted(second) >= 35 and second["stims_refused"] == 0
    assert "earlier runs" not in log and not (state_dir / "pulse-history").exists()


def test_a_gui_session_keeps_the_history_across_runs(pulser):
    session = RigSession(limits=SafetyLimits(**LIMITS))
    session.connect("sim://?seed=1", fast=True)
    try:
        summaries = []
        for _ in range(2):
            session.start(str(pulser), {}, fast=True, duration_s=4)
            assert session.wait(WAIT_S)
            summaries.append(session.last_summary)
    finally:
        assert session.disconnect(timeout=WAIT_S)
    first, second = summaries
    assert first["stims_refused"] == 0 and admitted(first) >= 35
    assert admitted(first) + admitted(second) == 60
    assert second["stims_refused"] > 0


def test_a_killed_run_leaves_the_pulses_of_all_but_its_last_second(pulser, tmp_path,
                                                                   state_dir):
    """The file is rewritten during the run, so a SIGKILL does not reset the windows."""
    rig = rig_file(tmp_path)
    run = subprocess.Popen(
        cli_command("run", str(pulser), "--device", "sim://?seed=1", "--duration", "60",
                    "--rig", str(rig), "--quiet"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "pulses.json"

    def kept() -> int:
        if not path.exists():
            return 0
        return len(json.loads(path.read_text())["electrodes"].get("34", {}).get("start_s", []))

    try:
        wait_until(lambda: kept() >= 30, timeout=WAIT_S, what="30 pulses in the state file")
    finally:
        run.kill()
        run.wait()
    before = kept()
    second, _ = run_cli(pulser, tmp_path, "second")
    assert admitted(second) <= 60 - before and second["stims_refused"] > 0
