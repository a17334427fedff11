"""`mea-control analyze`: the published figures from the real data, the figures it draws,
warnings, and one-line errors for data the model cannot use. The real data run as
`mea-control` subprocesses; the small cases share one subprocess (see conftest.CLI_BATCH)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI_BATCH, cli_command, isomura_expected_path

from mea_control.fep import published

FIGURES = ("responses", "prediction", "weights", "free_energy")
CONDITIONS = ("mix0", "mix50")
PER, SESSIONS = 16, 12  # synthetic cultures: small, so that they run fast


def strict_json(path):
    """The file's JSON; NaN or Infinity in it fails the test."""
    def reject(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(Path(path).read_text(), parse_constant=reject)


def close(got, expected):
    """Within 1e-6 relative, plus the rounding of expected.json's 6 decimals."""
    return abs(got - expected) <= 1e-6 * abs(expected) + 1e-6


@pytest.mark.parametrize("condition", CONDITIONS)
def test_published_figures(condition, runs, isomura_expected):
    expected = isomura_expected[condition]
    folder, procs = runs
    proc = procs[condition]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "100.0%" in proc.stderr  # progress, 4 cultures
    assert "warning" not in proc.stderr
    result = strict_json(folder / f"{condition}.json")
    assert result["parameters"]["baseline"] == expected["baseline"]
    assert len(result["cultures"]) == len(expected["cultures"]) == 4
    for i, (got, want) in enumerate(zip(result["cultures"], expected["cultures"], strict=True)):
        assert got["culture"] == i and f"culture {i}" in proc.stdout
        assert (got["n_g1"], got["n_g2"]) == (want["n_g1"], want["n_g2"])
        figures = {"corr_post": got["corr_post"], "mse_post": got["mse_post"],
                   "L_first": got["free_energy"][0], "L_last": got["free_energy"][-1],
                   "x_sum": got["x_sum"], "xp_sum": got["xp_sum"]}
        for key, value in figures.items():
            assert close(value, want[key]), (condition, i, key, value, want[key])
        for key in ("phi1", "phi0"):
            assert all(close(g, w) for g, w in zip(got[key], want[key], strict=True)), \
                (condition, i, key, got[key], want[key])
        assert len(got["free_energy"]) == len(got["mse"]) == 100
        assert 0 <= got["A_distance"] < 1
    assert proc.stdout.count("A_distance") == 4 and "corr_post" in proc.stdout


def synthetic(seed=0):
    """o, s, r of a culture like the published no-mixing condition: stimulated electrodes
    1-16 follow source 1, 17-32 source 2; recorded electrodes 1-8 respond to source 1, 9-16
    to source 2."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, (PER * SESSIONS, 2)).astype(np.uint8)
    o = np.repeat(s, 16, axis=1)
    gain = np.zeros((2, 64))
    gain[0, :8] = gain[1, 8:16] = 3.0
    r = rng.poisson(0.5 + s @ gain).astype(np.uint8)
    return o, s, r


PER_ARG = ["--trials-per-session", str(PER)]
BAD = [
    (["missing.npz"], "missing.npz: no such file"),
    (["no_r.npz", *PER_ARG], "no r array"),
    (["lengths.npz", *PER_ARG], "different trial counts"),
    (["partial.npz", *PER_ARG], "not a whole number of sessions of 16 trials"),
    (["nan.npz", *PER_ARG], "r has 64 NaN or infinite values"),
    (["silent.npz", *PER_ARG], "no responsive electrode"),
    (["two.npz", *PER_ARG, "--culture", "2"], "--culture 2: two.npz has 2 culture(s)"),
    (["two.npz", *PER_ARG, "--initial-sessions", "0"], "--initial-sessions: must be 1 or more"),
    (["two.npz", *PER_ARG, "--initial-sessions", "x"], "'x' is not a whole number"),
    (["two.npz", *PER_ARG, "--initial-sessions", str(SESSIONS)],
     "12 session(s) and 12 initial one(s)"),
    (["two.npz"], "not a whole number of sessions of 256 trials"),
    (["two.npz", *PER_ARG, "--plots", "two.npz"], "--plots two.npz: not a folder"),
    (["two.npz", *PER_ARG, "--json", "no/such/dir/out.json"], "folder no/such/dir does not"),
]
#: A trial table whose last session was cut short: analysed without it, with a warning.
SHORT = ["table.npz", "--initial-sessions", "3"]
PLOTS = ["two.npz", *PER_ARG, "--culture", "1", "--initial-sessions", "3", "--plots", "figures",
         "--json", "fep.json"]
BATCH_ARGVS = [["analyze", *args] for args, _ in BAD] + [["analyze", *SHORT], ["analyze", *PLOTS]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess of this file, started together (they spend most of their time
    importing): the folder they ran in and {name: CompletedProcess}; "batch" runs the BAD
    cases, SHORT and PLOTS, and each of CONDITIONS its published data."""
    folder = tmp_path_factory.mktemp("analyze")
    o, s, r = synthetic()
    files = {
        "no_r": {"o": o, "s": s},
        "lengths": {"o": o, "s": s, "r": r[:-PER]},
        "partial": {"o": o[:-5], "s": s[:-5], "r": r[:-5]},
        "nan": {"o": o, "s": s, "r": np.where(np.arange(len(r))[:, None] == 7, np.nan, r)},
        "silent": {"o": o, "s": s, "r": np.zeros_like(r)},
        "two": {"o": np.stack([o, o]), "s": np.stack([s, s]), "r": np.stack([r, r])},
        "table": {"o": o[:-3], "s": s[:-3], "r": r[:-3], "session": np.arange(len(r) - 3) // PER},
    }
    for name, arrays in files.items():
        np.savez(folder / f"{name}.npz", **arrays)
    commands = {"batch": [sys.executable, "-c", CLI_BATCH]}
    data = published.locate()
    if data is not None:
        baselines = json.loads(isomura_expected_path(data).read_text())
        for c in CONDITIONS:
            commands[c] = cli_command("analyze", str(data / f"response_data_{c}.mat"), "--baseline",
                                      str(baselines[c]["baseline"]), "--json", f"{c}.json")
    # The matrices are small: BLAS threads only add start-up and, on a busy machine, seconds.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    started = {name: subprocess.Popen(command, cwd=folder, env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
               for name, command in commands.items()}
    argvs = json.dumps(BATCH_ARGVS)
    procs = {}
    for name, proc in started.items():
        out, err = proc.communicate(argvs if name == "batch" else None, timeout=120)
        procs[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return folder, procs


@pytest.fixture(scope="module")
def batch(runs):
    """The folder, and {args: (exit code, stderr)} for the BAD cases, SHORT and PLOTS."""
    folder, procs = runs
    proc = procs["batch"]
    assert proc.returncode == 0, proc.stderr
    return folder, {tuple(argv[1:]): tuple(result[:2])
                    for argv, result in zip(BATCH_ARGVS, json.loads(proc.stdout), strict=True)}


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(batch, args, message):
    code, stderr = batch[1][tuple(args)]
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("mea-control: error:") and message in lines[0], stderr


def test_model_warnings_reach_stderr_as_one_line(batch):
    code, stderr = batch[1][tuple(SHORT)]
    assert code == 0, stderr
    assert stderr.splitlines() == [
        f"mea-control: warning: table.npz: the last session has {PER - 3} of {PER} trials; "
        f"analysing the first {SESSIONS - 1} whole sessions"]


def test_plots_and_json(batch):
    folder, results = batch
    code, stderr = results[tuple(PLOTS)]
    assert code == 0 and stderr == "", stderr  # one culture: no progress; and no warning
    result = strict_json(folder / "fep.json")
    assert [c["culture"] for c in result["cultures"]] == [1]
    assert result["parameters"]["initial_sessions"] == 3
    assert len(result["cultures"][0]["free_energy"]) == SESSIONS
    figures = list((folder / "figures").iterdir())
    assert sorted(p.name for p in figures) == sorted(f"two_c1_{f}.png" for f in FIGURES)
    for path in figures:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", path
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert width >= 600 and height >= 300, (path, width, height)
        assert 10_000 < path.stat().st_size < 2_000_000, path
