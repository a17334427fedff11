"""The pool-based replay (mea_control.fep.replay, `mea-control replay`): the pool never gives a
response twice and keeps the truth apart, the CLI writes its measures and refuses bad input
with one line. A small synthetic culture serves what needs no real data; the published data
serve the rest (skipped without them, saying how to get them; failed under CI)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from mea_control.fep import load, replay
from mea_control.fep.data import TrialData

CLI = [sys.executable, "-m", "mea_control.cli", "replay"]
SESSIONS, PER = 14, 64


def _synthetic(seed=0, stim=8, recorded=6, patterns=None):
    """A culture like the published design: one sequence of o and s repeated every session
    (a quarter of the trials empty), Poisson responses; recorded electrodes 0-2 follow
    stimulated electrodes 0-3 (source 1), 3-5 follow 4-7 (source 2)."""
    rng = np.random.default_rng(seed)
    s = (rng.random((PER, 2)) < 0.5).astype(np.uint8)
    follows = np.where(rng.random((PER, stim)) < 0.75, np.arange(stim) // (stim // 2),
                       1 - np.arange(stim) // (stim // 2))
    o = s[np.arange(PER)[:, None], follows]
    o[::4] = 0
    if patterns is not None:
        o = patterns[np.arange(PER) % len(patterns)]
    o = np.tile(o, (SESSIONS, 1)).astype(np.uint8)
    w = np.zeros((recorded, stim))
    w[:3, :4], w[3:, 4:] = 0.5, 0.5
    r = rng.poisson(np.exp(0.3 + o @ w.T)).astype(np.uint8)
    return o, np.tile(s, (SESSIONS, 1)), r


@pytest.fixture(scope="module")
def culture_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "culture.npz"
    o, s, r = _synthetic()
    np.savez(path, o=o, s=s, r=r)
    return path


def _data(**kw):
    o, s, r = _synthetic(**kw)
    return TrialData(o, s, r, PER, "synthetic")


def run(*args, timeout=120):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# -- the pool ---------------------------------------------------------------------------
@pytest.mark.parametrize("order", replay.ORDERS)
def test_the_pool_gives_each_response_once_and_keeps_the_truth_apart(order):
    data = _data()
    trial = np.arange(len(data.r))[:, None]  # each response names the trial it came from
    pool = replay.build_pool(data, trial, order, np.random.default_rng(0))
    session = trial[:, 0] // PER + 1
    truth = np.concatenate(pool.truth)[:, 0]
    if order == "shuffled":
        assert set(session[truth]) == {12, 14}
    else:
        assert set(session[truth]) == set(range(11, SESSIONS + 1))
    drawn = []
    rng = np.random.default_rng(1)
    for t in range(pool.size):
        pool.at_trial(t)
        ok = np.flatnonzero(pool.available())
        if not len(ok):
            break
        p = int(rng.choice(ok))
        got = int(pool.draw(p)[0])
        assert (data.o[got] == pool.patterns[p]).all()  # a response to the chosen pattern
        if order == "chronological":
            assert session[got] >= 1 + t // PER  # never from a session already past
        drawn.append(got)
    assert len(drawn) == len(set(drawn))  # no response used twice
    assert not set(drawn) & set(truth)  # nor one of the truth
    expected = (session % 2 == 1) if order == "shuffled" else (session <= 10)
    assert set(drawn) <= set(np.flatnonzero(expected))
    if order == "shuffled":  # nothing passes by: every pool response is drawn
        assert sorted(drawn) == sorted(np.flatnonzero(expected))
    with pytest.raises(IndexError, match="used up"):
        pool.draw(int(np.argmin(pool.available())))


def test_a_used_up_pattern_is_no_longer_a_candidate():
    pool = replay.build_pool(_data(), np.zeros((SESSIONS * PER, 1)), "shuffled",
                             np.random.default_rng(0))
    rare = int(np.argmin(pool.frequency))
    for _ in range(len(pool.responses[rare])):
        assert pool.available()[rare]
        pool.draw(rare)
    assert not pool.available()[rare] and pool.available().sum() == len(pool.patterns) - 1


def test_a_shuffled_pool_is_the_same_for_the_same_seed_only():
    data = _data()
    trial = np.arange(len(data.r))[:, None]
    a, b, c = (replay.build_pool(data, trial, "shuffled", np.random.default_rng(s))
               for s in (3, 3, 4))
    assert all((x == y).all() for x, y in zip(a.responses, b.responses, strict=True))
    assert any((x != y).any() for x, y in zip(a.responses, c.responses, strict=True))


def test_identify_error_is_the_frequency_weighted_rms():
    pred, truth = np.array([[1.0, 1.0], [3.0, 3.0]]), np.zeros((2, 2))
    assert replay.weighted_rms(pred, truth, np.array([3.0, 1.0])) == pytest.approx(
        np.sqrt((3 * 1 + 1 * 9) / 4))


# -- the CLI on a synthetic culture -------------------------------------------------------
def test_identify_writes_its_measures(culture_file, tmp_path):
    out = tmp_path / "identify.json"
    done = run(culture_file, "--trials-per-session", PER, "--job", "identify", "--selection",
               "targeted", "--trials", 60, "--seed", 2, "--json", out)
    assert done.returncode == 0, done.stderr
    j = json.loads(out.read_text())
    assert (j["job"], j["selection"], j["trials"], j["seed"], j["order"], j["culture"]) == (
        "identify", "targeted", 60, 2, "shuffled", 0)
    assert len(j["error"]) == len(j["error_equal"]) == 61
    assert j["criterion_from"].startswith("random, 400 trials")
    ttc = j["trials_to_criterion"]
    first = next((t for t, e in enumerate(j["error"]) if t and e <= j["criterion"]), None)
    assert ttc == first
    assert "criterion" in done.stdout and "error" in done.stdout
    given = run(culture_file, "--trials-per-session", PER, "--job", "identify", "--selection",
                "random", "--trials", 30, "--criterion", 1e6, "--json", out)
    assert given.returncode == 0, given.stderr
    j = json.loads(out.read_text())
    assert j["criterion"] == 1e6 and j["trials_to_criterion"] == 1


def test_control_writes_its_measures(culture_file, tmp_path):
    out = tmp_path / "control.json"
    done = run(culture_file, "--trials-per-session", PER, "--job", "control", "--selection",
               "efe", "--order", "chronological", "--trials", 200, "--json", out)
    assert done.returncode == 0, done.stderr
    j = json.loads(out.read_text())
    assert (j["job"], j["selection"], j["trials"], j["order"]) == ("control", "efe", 200,
                                                                    "chronological")
    for key in ("success_rate_last100", "random_success_rate_last100", "oracle_success_rate"):
        assert 0 <= j[key] <= 1
    assert j["success_rate_last100"] == np.mean(j["success"][-100:])
    assert "oracle" in done.stdout


@pytest.mark.parametrize("args, says", [
    (["--job", "identify", "--selection", "efe"], "--selection efe does not fit --job identify"),
    (["--job", "control", "--selection", "infomax"], "control takes efe, random"),
    (["--job", "control", "--selection", "efe", "--culture", 3], "--culture 3: "),
    (["--job", "control", "--selection", "efe", "--trials", 5000], "more than the 448 recorded"),
    (["--job", "control", "--selection", "efe", "--trials", 150], "at least 200 trials"),
    (["--job", "control", "--selection", "efe", "--criterion", 1], "--criterion is for"),
    (["--job", "identify", "--selection", "random", "--order", "backwards"], "invalid choice"),
])
def test_bad_input_is_one_line(culture_file, args, says):
    done = run(culture_file, "--trials-per-session", PER, *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mea-control: error: "), done.stderr
    assert says in lines[0]


def test_a_missing_file_and_too_few_patterns_are_one_line(tmp_path):
    done = run(tmp_path / "none.mat", "--job", "control", "--selection", "efe")
    assert done.stderr.strip().splitlines() == [
        f"mea-control: error: {tmp_path / 'none.mat'}: no such file"]
    four = np.array([[0] * 8, [1] * 8, [1] * 4 + [0] * 4, [0] * 4 + [1] * 4])
    path = tmp_path / "four.npz"
    o, s, r = _synthetic(patterns=four)
    np.savez(path, o=o, s=s, r=r)
    done = run(path, "--trials-per-session", PER, "--job", "identify", "--selection", "random")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "only 4 distinct patterns" in done.stderr and "control only" in done.stderr


# -- the published data ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def mix50(isomura_data):
    return isomura_data / "response_data_mix50.mat"


def test_the_published_pool_holds_one_response_per_session(mix50):
    data = load(mix50)[0]
    trial = np.arange(len(data.r))[:, None]
    pool = replay.build_pool(data, trial, "shuffled", np.random.default_rng(0))
    sizes = np.array([len(r) for r in pool.responses])
    truth = np.array([len(t) for t in pool.truth])
    assert len(pool.patterns) == 135
    once = pool.frequency == 1 / 256  # a pattern delivered once a session
    assert (sizes[once] == 50).all() and (truth[once] == 45).all()
    assert pool.frequency[~once].sum() > 0.45  # the empty and the all-electrode pattern
    session = trial[:, 0] // 256 + 1
    drawn = np.concatenate(pool.responses)[:, 0]
    assert (session[drawn] % 2 == 1).all() and len(set(drawn)) == len(drawn)


def test_the_published_mix0_serves_control_not_identify(isomura_data, tmp_path):
    mix0 = isomura_data / "response_data_mix0.mat"
    done = run(mix0, "--job", "identify", "--selection", "infomax")
    assert done.returncode == 2 and "only 4 distinct patterns" in done.stderr
    out = tmp_path / "c.json"
    done = run(mix0, "--culture", 1, "--job", "control", "--selection", "efe", "--json", out)
    assert done.returncode == 0, done.stderr
    j = json.loads(out.read_text())
    assert j["success_rate_last100"] > j["random_success_rate_last100"] + 0.3


def test_targeted_identifies_a_published_culture_sooner_than_random(mix50, tmp_path):
    out = tmp_path / "i.json"
    done = run(mix50, "--culture", 3, "--job", "identify", "--selection", "targeted",
               "--trials", 150, "--json", out)
    assert done.returncode == 0, done.stderr
    j = json.loads(out.read_text())
    assert j["outputs"] == 17 and j["patterns"] == 135
    assert j["trials_to_criterion"] is not None and j["trials_to_criterion"] < 150
