"""The CLI as a user runs it: a subprocess, exit codes, one-line errors, the summary."""

import json
import os
import re
import signal
import subprocess

import numpy as np
import pytest
from conftest import ROOT, cli_batch, cli_command, ctrl_c_works

from mea_control import cli
from mea_control.engine import EngineConfig
from mea_control.protocol import shipped_protocols
from mea_control.trials import TrialTable


def run_cli(*args, timeout=300):
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_bss_run_end_to_end(tmp_path):
    summary, trials = tmp_path / "s.json", tmp_path / "t.npz"
    proc = run_cli("run", "protocols/bss_isomura.py", "--device", "sim://?seed=1",
                   "--sessions", "2", "--param", "trials_per_session=16", "--fast",
                   "--summary-json", str(summary), "--trials", str(trials))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(summary.read_text())
    for key in ("sample_rate", "duration_s", "blocks", "blocks_dropped", "spikes",
                "stims_executed", "stims_refused", "latency_samples", "trials"):
        assert key in s
    assert s["trials"] == 32 and s["sample_rate"] == 25000.0 and s["stims_refused"] == 0
    assert set(s["latency_samples"]) == {"p50", "p99", "max"}
    assert s["latency_samples"]["p99"] <= 2 * s["block_samples"]
    table = TrialTable.load_npz(trials)
    assert table.o.shape == (32, 32) and table.s.shape == (32, 2) and table.r.shape == (32, 64)
    # Stimulated trials evoke more spikes than the spontaneous rate predicts.
    stimulated = table.o.any(axis=1)
    assert table.r[stimulated].sum(axis=1).mean() > 2 * table.r_pre.sum(axis=1).mean()
    assert "evoked" in proc.stdout and "latency" in proc.stdout
    assert "100.0%" in proc.stderr  # progress reached the end


USER_ERRORS = [
    (["run", "no_such_protocol.py"], "no protocol file 'no_such_protocol.py'"),
    (["run", "bss_isomura", "--param", "mixing=0.9"], "mixing=0.9 is out of range"),
    (["run", "bss_isomura", "--param", "mixing"], "--param takes NAME=VALUE"),
    (["run", "bss_isomura", "--param", "speed=3"], "has no parameter 'speed'"),
    (["run", "bss_isomura", "--device", "usb://x"], "unknown device scheme 'usb://'"),
    (["run", "bss_isomura", "--device", "sim://?sed=1"], "unknown parameter 'sed'"),
    (["run", "bss_isomura", "--device", "sim://?seed=x"], "bad value 'x'"),
    (["run", "spontaneous", "--sessions", "2"], "has no sessions"),
    (["run", "spontaneous", "--rig", "missing.toml"], "missing.toml"),
    (["run", "spontaneous", "--summary-json", "/no/such/dir/s.json"], "does not exist"),
]
BAD_RUN_OPTIONS = [
    (["--duration", "0"], "--duration: 0 must be a finite number above 0"),
    (["--duration", "nan"], "--duration: nan must be"),
    (["--duration", "inf"], "--duration: inf must be"),
    (["--block-ms", "0"], "--block-ms: 0 must be a finite number above 0 and at most 100"),
    (["--block-ms", "x"], "--block-ms: 'x' is not a number"),
    (["--seed", "-1"], "--seed: -1 must be 0 or more"),
    (["--watchdog-ms", "-5"], "--watchdog-ms: -5 must be"),
    (["--sessions", "0"], "--sessions: must be 1 or more"),
    (["--summary-json", "."], "it is a folder"),
    (["--trials", "t.csv"], "end it in .npz"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--device", "sim://?seed=-1"], "seed"),
]


def _user_error_argv(args: list[str]) -> list[str]:
    return [*args, "--duration", "0.1"] if "--sessions" not in args else args


@pytest.fixture(scope="module")
def refused() -> dict[tuple[str, ...], tuple]:
    """{argv: (exit code, stderr, stdout)} of USER_ERRORS and BAD_RUN_OPTIONS, run by one process
    (each case spends its time importing; conftest.CLI_BATCH)."""
    argvs = [_user_error_argv(args) for args, _ in USER_ERRORS]
    argvs += [["run", "bss_isomura", *args] for args, _ in BAD_RUN_OPTIONS]
    return dict(zip(map(tuple, argvs), cli_batch(argvs), strict=True))


@pytest.mark.parametrize(("args", "message"), USER_ERRORS)
def test_user_errors_are_one_line_and_exit_2(refused, args, message):
    code, stderr, _ = refused[tuple(_user_error_argv(args))]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mea-control: error:")
    assert message in lines[0]


@pytest.mark.parametrize(("args", "message"), BAD_RUN_OPTIONS)
def test_bad_run_options_are_one_line_and_exit_2(refused, args, message):
    code, stderr, _ = refused[("run", "bss_isomura", *args)]
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mea-control: error:"), stderr
    assert message in lines[0]


def test_unwritable_result_file_is_refused_before_the_run(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    proc = run_cli("run", "spontaneous", "--duration", "0.1",
                   "--summary-json", str(locked / "sub" / "s.json"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert "[start]" not in proc.stderr


def test_protocol_exception_prints_traceback_and_exits_1(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "from mea_control.protocol import Protocol\n"
        "class Bad(Protocol):\n"
        "    def on_block(self, ctx, block, filtered):\n"
        "        if ctx.now - ctx.start_sample > 100:\n"
        "            raise ZeroDivisionError('oops')\n"
    )
    proc = run_cli("run", str(path), "--fast", "--duration", "1")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError: oops" in proc.stderr
    assert "stimulation was stopped" in proc.stderr


def test_protocols_lists_shipped_protocols_and_parameters():
    """One line a shipped protocol, its summary a whole sentence (not a docstring's first
    line cut mid-sentence), then its parameters; nothing wider than a 100-column terminal."""
    proc = run_cli("protocols")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    summaries = dict(line.split(": ", 1) for line in lines if not line.startswith(" "))
    assert list(summaries) == list(shipped_protocols())
    for name, summary in summaries.items():
        assert summary[0].isupper() and summary.endswith(".") and "..." not in summary, name
    assert max(len(line) for line in lines) <= 100
    assert "mixing" in proc.stdout and "[0.0 .. 0.5]" in proc.stdout


def run_cli_into_closed_pipe(*args, unbuffered=False):
    """The CLI writing to a pipe whose reader has gone, as in `mea-control protocols | head -1`
    once head has its line; stdout block-buffered as in a shell, unless ``unbuffered``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(cli_command(*args), stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300, cwd=ROOT, env=env)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args, unbuffered", [
    (("protocols",), False), (("protocols",), True), (("--help",), False),
    (("info", "--help"), False)])
def test_a_closed_output_pipe_ends_the_command_quietly_with_141(args, unbuffered):
    proc = run_cli_into_closed_pipe(*args, unbuffered=unbuffered)
    assert (proc.returncode, proc.stderr) == (128 + signal.SIGPIPE, "")  # as `git log | head`


def test_a_run_whose_output_pipe_closed_still_ends_cleanly(tmp_path):
    summary = tmp_path / "s.json"
    proc = run_cli_into_closed_pipe("run", "spontaneous", "--fast", "--duration", "0.5",
                                    "--summary-json", str(summary))
    assert proc.returncode == 128 + signal.SIGPIPE and "Traceback" not in proc.stderr
    assert "[stop]" in proc.stderr and json.loads(summary.read_text())["duration_s"] == 0.5


def test_demo_runs_and_writes_its_results(tmp_path):
    proc = subprocess.run(cli_command("demo", "--trials", "16"), capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("demo-summary.json", "demo-summary-random.json", "demo-trials.npz", "demo.nwb"):
        assert (tmp_path / name).exists()
    # calibration, the model's choices, and the comparison with random ones
    assert "Calibration (32 trials): " in proc.stdout
    assert "The model's last choices (targeted" in proc.stdout
    assert re.search(r"targeted \d\.\d+ spikes, random \d\.\d+ spikes", proc.stdout)


def test_ctrl_c_ends_cleanly_with_a_summary(tmp_path):
    summary = tmp_path / "s.json"
    proc = subprocess.Popen(
        cli_command("run", "spontaneous", "--summary-json", str(summary)),
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=ctrl_c_works,
    )
    # wait until the run reports progress (blocks are flowing), then interrupt
    for line in proc.stderr:
        if "%" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    s = json.loads(summary.read_text())
    assert s["interrupted"] is True and s["blocks"] > 0


def test_info_says_how_a_recorded_run_ended(tmp_path):
    """A run stopped by Ctrl-C mid-trials says so in its file and in `mea-control info`:
    ended early, n of N trials; a run that ran all its trials says completed."""
    stopped, done = tmp_path / "stopped.nwb", tmp_path / "done.nwb"
    proc = subprocess.Popen(
        cli_command("run", "bss_isomura", "--sessions", "1", "--param", "trials_per_session=40",
                    "--param", "isi_s=0.35", "--no-raw", "--record", str(stopped)),
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=ctrl_c_works,
    )
    for line in proc.stderr:  # progress every 10 %: trials are being run
        if re.search(r"trial [1-9]\d*/40", line):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert run_cli("run", "bss_isomura", "--fast", "--quiet", "--sessions", "1", "--param",
                   "trials_per_session=4", "--no-raw", "--record", str(done)).returncode == 0
    (code, _, early), (code_done, _, complete) = cli_batch([["info", str(stopped)],
                                                            ["info", str(done)]])
    assert code == 0 and code_done == 0
    n = int(re.search(r"^trials +(\d+) in", early, re.M).group(1))
    assert 0 < n < 40
    ended = f"interrupted (Ctrl-C or a stop signal), {n} of 40 trials"
    assert f"ended           {ended}\n" in early
    assert f"health          ended early: {ended}" in early
    assert "ended           completed, 4 of 4 trials\n" in complete
    assert "health          ok" in complete


def test_sim_serve_with_a_bad_option_is_a_one_line_error(capsys):
    """The simulated device checks its own options (hardware_sim.mea.SimError): the CLI
    says which, in one line, and serves nothing."""
    code = cli.main(["sim", "serve", "--sim", "noise_uV=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err == "mea-control: error: sim:// noise_uV=-1.0 is out of range; use 0 to 1000\n"


def test_device_that_does_not_answer_is_a_one_line_error(monkeypatch, capsys, plugin_driver):
    plugin_driver("mute", """
        from drivers.sim import SimDriver


        class Mute(SimDriver):
            def read(self, timeout=None):
                return None
    """, "Mute")
    monkeypatch.setattr(EngineConfig, "__init__", _short_timeout(EngineConfig.__init__))
    code = cli.main(["run", "spontaneous", "--device", "mute://", "--duration", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "sent nothing for 0.5 s" in err and "Traceback" not in err


def _short_timeout(init):
    def wrapped(self, *args, **kwargs):
        kwargs["device_timeout_s"] = 0.5
        init(self, *args, **kwargs)

    return wrapped


def test_trial_table_arrays_are_integers(tmp_path):
    trials = tmp_path / "t.npz"
    proc = run_cli("run", "bss_isomura", "--fast", "--quiet", "--param", "trials_per_session=4",
                   "--sessions", "1", "--trials", str(trials))
    assert proc.returncode == 0 and proc.stdout == ""
    with np.load(trials) as f:
        assert f["o"].dtype == np.uint8 and f["r"].dtype == np.int32


def run_bss_with_rig(tmp_path, rig_text, trials):
    """A short BSS run under a rig file; returns the process and its summary."""
    rig = tmp_path / "rig.toml"
    rig.write_text(rig_text)
    summary = tmp_path / "s.json"
    proc = run_cli("run", "bss_isomura", "--fast", "--rig", str(rig), "--sessions", "1",
                   "--param", f"trials_per_session={trials}", "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(summary.read_text())


#: A protocol that cannot tell what it will send (no planned_patterns): 5 uA every 100 ms.
BLIND = """
from mea_control.protocol import Protocol
from mea_control.types import StimPattern, StimPulse

class Blind(Protocol):
    def setup(self, ctx):
        self.next = ctx.now

    def on_block(self, ctx, block, filtered):
        if ctx.now >= self.next:
            self.next = ctx.now + ctx.samples(0.1)
            ctx.stimulate(StimPattern.single([ctx.layout.channel("12")],
                                             StimPulse.biphasic(5.0, 200.0)))
"""


def test_rig_file_limits_are_enforced_and_reported(tmp_path):
    rig = tmp_path / "rig.toml"
    rig.write_text('[rig]\nname = "rig 2"\n[limits]\nmax_current_uA = 2.0\n')
    # before the run: what BSS would send breaks the rig's limit, so it does not start
    proc = run_cli("run", "bss_isomura", "--fast", "--rig", str(rig), "--sessions", "1",
                   "--param", "trials_per_session=6")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "mea-control: error: bss_isomura cannot start: current 5.00 uA on electrode 12 "
        "exceeds max_current_uA = 2.00 uA (the rig's limit); set by amplitude = 5")
    # during the run: the gate refuses what a protocol that cannot tell sends
    blind, summary = tmp_path / "blind.py", tmp_path / "s.json"
    blind.write_text(BLIND)
    proc = run_cli("run", str(blind), "--fast", "--rig", str(rig), "--duration", "0.5",
                   "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    s = json.loads(summary.read_text())
    assert s["limits"]["max_current_uA"] == 2.0
    assert s["stims_executed"] == 0 and s["stims_refused"] > 0
    assert "refused: " in proc.stderr and "max_current_uA" in proc.stderr


def test_bss_avoids_electrodes_the_rig_forbids(tmp_path):
    _, s = run_bss_with_rig(tmp_path, '[limits]\nforbidden = ["18", "22", "12"]\n', trials=20)
    assert s["stims_refused"] == 0 and s["stims_executed"] > 0
    forbidden = {7, 9, 1}  # channels of electrodes 18, 22, 12 (column-major)
    assert not forbidden & set(s["protocol_summary"]["stim_channels"])


def test_rig_file_forbidding_an_unknown_electrode_is_a_user_error(tmp_path):
    rig = tmp_path / "rig.toml"
    rig.write_text('[limits]\nforbidden = ["99"]\n')
    proc = run_cli("run", "spontaneous", "--rig", str(rig), "--duration", "0.1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "99" in proc.stderr.strip().splitlines()[-1]


def test_version_and_missing_command():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("mea-control 0.")
    proc = run_cli()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "required: COMMAND" in proc.stderr
