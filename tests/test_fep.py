"""The free-energy model against the published data and its own batch form."""

import subprocess
import warnings

import numpy as np
import pytest
from conftest import ROOT, cli_command

from mea_control import fep
from mea_control.fep import ensembles, model, online
from mea_control.fep.data import FEPInputError, TrialData

KEYS = ("corr_post", "mse_post", "L_first", "L_last", "phi1", "phi0", "n_g1", "n_g2",
        "x_sum", "xp_sum")


@pytest.fixture(scope="module")
def published(isomura_data, isomura_expected):
    return {cond: (fep.load(isomura_data / f"response_data_{cond}.mat"), isomura_expected[cond])
            for cond in ("mix0", "mix50")}


@pytest.fixture(scope="module")
def mix0_analysis(published):
    cultures, expected = published["mix0"]
    return cultures[0], fep.analyze(cultures[0], baseline=expected["baseline"])


@pytest.mark.parametrize("cond", ["mix0", "mix50"])
def test_every_published_figure_is_matched(published, cond):
    """Each figure of expected.json to 1e-6 relative (plus its 6-decimal rounding)."""
    cultures, expected = published[cond]
    assert len(cultures) == len(expected["cultures"]) == 4
    for i, (data, want) in enumerate(zip(cultures, expected["cultures"], strict=True)):
        got = fep.analyze(data, baseline=expected["baseline"]).to_json()
        got["L_first"], got["L_last"] = got["free_energy"][0], got["free_energy"][-1]
        for key in KEYS:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6,
                                       err_msg=f"{cond} culture {i}: {key}")


def test_lone_member_counts_twice(published):
    """mix50 culture 3 has one member per ensemble; the published sizes say 2 and 2."""
    data, _ = published["mix50"][0][3], None
    found = ensembles.find(data)
    assert found.members.sum(1).tolist() == [1, 1]
    assert found.sizes == (2, 2)


def test_analysis_reads_as_a_pomdp(mix0_analysis):
    data, a = mix0_analysis
    out = a.to_json()
    A11, A10, D = np.array(out["A11"]), np.array(out["A10"]), np.array(out["D"])
    assert A11.shape == A10.shape == (2, 32) and D.shape == (2, 2)
    np.testing.assert_allclose(D.sum(1), 1.0)
    np.testing.assert_allclose(A11, model.sigmoid(np.array(out["W1_final"])))
    # Ensemble 1 prefers source 1, which drives electrodes 1-16 in mix0: their A11 is
    # larger than the others', and the ideal observer's is 1 - its prior's pull.
    assert A11[0, :16].mean() > A11[0, 16:].mean() and A11[1, 16:].mean() > A11[1, :16].mean()
    ideal = np.array(out["A11_ideal"])
    assert ideal[0, :16].min() > 0.9 and abs(ideal[0, 16:].mean() - 0.5) < 0.05
    assert 0 < out["A_distance"] < 0.5
    # the sources are on half the time: the ideal prior is 1/2, the culture's x is lower
    np.testing.assert_allclose(out["D_ideal"], 0.5, atol=0.02)
    assert out["D_distance"] == pytest.approx(np.abs(D - np.array(out["D_ideal"])).mean())
    # free energy falls over training, as published
    assert out["free_energy"][-1] < out["free_energy"][0]


def test_default_baseline_is_the_cultures_own(mix0_analysis):
    data, _ = mix0_analysis
    a = fep.analyze(data)
    own = a.ensembles.responses(data.r[: 10 * 256]).mean()
    assert a.baseline == pytest.approx(own)
    assert np.isfinite(a.to_json()["corr_post"])


def test_online_model_equals_batch_at_session_boundaries(mix0_analysis):
    """Fed the batch x trial by trial (with the batch thresholds), the online model's weights
    and each finished session's free energy are the batch form's."""
    data, a = mix0_analysis
    m = online.OnlineModel(2, 32, 256, thresholds=a.thresholds)
    o = data.o.astype(float)
    sessions = 0
    for t in range(256 * 6):
        before = m.predict(o[t:t + 1])[0]
        update = m.update(o[t], a.x[:, t])
        np.testing.assert_array_equal(update.x_hat, before)
        if update.session_done is not None:
            k = update.session
            assert update.session_done == pytest.approx(a.free_energy[k], rel=1e-12)
            w = a.weights.session(k + 1)
            for name in ("W1", "W0", "h1", "h0"):
                np.testing.assert_allclose(getattr(m.weights, name), getattr(w, name),
                                           rtol=1e-12, atol=1e-12)
            sessions += 1
    assert sessions == 6
    # and between boundaries it has moved: weights after trial 100 differ from session 0's
    m2 = online.OnlineModel(2, 32, 256, thresholds=a.thresholds)
    for t in range(100):
        m2.update(o[t], a.x[:, t])
    assert np.abs(m2.weights.W1 - a.weights.session(0).W1).max() > 1e-4


def test_online_thresholds_settle_after_the_initial_sessions(mix0_analysis):
    data, a = mix0_analysis
    m = online.OnlineModel(2, 32, 256, initial_sessions=2)
    o = data.o.astype(float)
    for t in range(256 * 3):
        m.update(o[t], a.x[:, t])
    np.testing.assert_allclose(m.thresholds.phi1, np.log(a.x[:, :512].mean(1)), rtol=1e-12)


def test_online_normaliser_tracks_the_batch_form(mix0_analysis):
    data, a = mix0_analysis
    n = online.OnlineNormaliser(2, 256, a.baseline)
    x_raw = a.ensembles.responses(data.r)
    x = np.array([n(x_raw[:, t], data.s[t]) for t in range(256 * 20)]).T
    assert x.min() >= 0 and x.max() <= 1
    late = slice(256 * 10, 256 * 20)
    assert np.corrcoef(x[:, late].ravel(), a.x[:, late].ravel())[0, 1] > 0.97


def test_profiles_find_the_source_ensembles_without_sources(published):
    """mix0 without s: the grouping by stimulation profiles finds mostly the published
    ensembles (electrodes 1-16 and 17-32 follow one source each)."""
    for data in published["mix0"][0]:
        by_s = ensembles.find(data)
        blind = ensembles.find(TrialData(data.o, data.s[:, :0], data.r, 256))
        assert blind.method == "profiles"
        for k in range(2):
            found, true = blind.members[k], by_s.members[k]
            assert (found & true).sum() >= 0.9 * true.sum()
            assert not (found & by_s.members[1 - k]).any()


def _table(t=512, per=256, **changes):
    rng = np.random.default_rng(0)
    s = (rng.random((t, 2)) < 0.5).astype(np.uint8)
    o = np.repeat(s, 16, axis=1)
    r = rng.poisson(1 + 3 * np.repeat(s, 32, axis=1)).astype(float)
    parts = {"o": o, "s": s, "r": r, **changes}
    return parts["o"], parts["s"], parts["r"], per


@pytest.mark.parametrize("changes, message", [
    ({"r": np.zeros((300, 64))}, "different trial counts"),
    ({"r": np.full((512, 64), np.nan)}, "NaN"),
    ({"o": np.full((512, 32), 2)}, "o must be 0 or 1"),
    ({"per": 300}, "not a whole number of sessions"),
])
def test_bad_trial_data_is_refused_in_one_line(changes, message):
    with pytest.raises(FEPInputError, match=message) as err:
        TrialData(*_table(**changes))
    assert "\n" not in str(err.value)


def test_silent_electrodes_give_a_clear_error():
    o, s, r, per = _table()
    with pytest.raises(FEPInputError, match="no responsive electrode"):
        fep.analyze(TrialData(o, s, np.zeros_like(r), per), initial_sessions=1)


def test_synthetic_culture_with_known_ensembles_is_analysed():
    o, s, r, per = _table(t=256 * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = fep.analyze(TrialData(o, s, r, per), initial_sessions=2)
    assert a.ensembles.members[0, :32].all() and a.ensembles.members[1, 32:].all()
    out = a.to_json()
    assert all(np.isfinite(out["free_energy"])) and np.isfinite(out["corr_post"])


def test_trial_data_from_a_recording_and_its_trial_table(tmp_path):
    """A simulated BSS run: the recording and the saved trial table give the same trial data,
    and the model analyses it."""
    rec, table = tmp_path / "run.nwb", tmp_path / "t.npz"
    proc = subprocess.run(cli_command(
        "run", "bss_isomura", "--device", "sim://?seed=2&raw=0", "--fast", "--quiet",
        "--block-ms", "100",
        "--sessions", "3", "--param", "trials_per_session=48", "--trials", str(table),
        "--record", str(rec)), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (from_rec,), (from_npz,) = fep.load(rec), fep.load(table)
    assert from_rec.trials_per_session == from_npz.trials_per_session == 48
    for key in ("o", "s", "r"):
        np.testing.assert_array_equal(getattr(from_rec, key), getattr(from_npz, key))
    assert from_rec.o.shape == (144, 32) and from_rec.r.shape == (144, 64)
    out = fep.analyze(from_rec, initial_sessions=1).to_json()
    assert min(out["n_g1"], out["n_g2"]) >= 2
    assert all(np.isfinite(out["free_energy"]))


def test_an_unfinished_last_session_is_left_out_with_a_warning(tmp_path):
    o, s, r, _ = _table(t=600)
    path = tmp_path / "stopped.npz"
    np.savez(path, o=o, s=s, r=r, session=np.arange(600) // 256)
    with pytest.warns(UserWarning, match="last session has 88 of 256 trials"):
        (data,) = fep.load(path)
    assert data.n_sessions == 2 and len(data.r) == 512


def test_files_without_the_arrays_are_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, o=np.zeros((4, 2)))
    with pytest.raises(FEPInputError, match="no r array"):
        fep.load(path)
    with pytest.raises(FEPInputError, match="no such file"):
        fep.load(tmp_path / "missing.mat")
    bad = tmp_path / "bad.nwb"
    bad.write_text("not hdf5")
    with pytest.raises(FEPInputError, match="not a .mat, .npz or readable recording"):
        fep.load(bad)


def test_online_model_refuses_nan_instead_of_learning_it():
    m = online.OnlineModel(2, 4, 8)
    with pytest.raises(ValueError, match="trial 0: NaN or infinite"):
        m.update([1, 0, 0, 1], [np.nan, 0.5])
    assert m.trials == 0 and np.isfinite(m.weights.W1).all()
