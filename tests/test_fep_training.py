"""Choosing training trials with the culture's model (mea_control.fep.training), and the
short form of ``benchmarks/fep.py --train``."""

import copy
import json

import numpy as np
import pytest

from benchmarks.fep import TRAIN_ARMS, train_job
from mea_control.fep import model, online, training

GROUP = np.repeat([0, 1], 16)
MIXING = 0.25


def bss_draw(rng, n):
    """n BSS patterns (mixing 0.25) and their sources."""
    return training.bss_candidates(rng, n, MIXING)


def one_source_tests(rng, n):
    return training.one_source_patterns(rng, n, MIXING)


def respond(o):
    """A synthetic culture that does not learn: ensemble k answers its group's electrodes."""
    on = np.array([o[GROUP == k].mean() - o[GROUP != k].mean() for k in (0, 1)])
    return model.sigmoid(4 * on)


def taught_model(rng, trials=256):
    m = online.OnlineModel(2, 32, 256, thresholds=model.Thresholds.fit(np.full((2, 1), 0.5)))
    for o in bss_draw(rng, trials)[0]:
        m.update(o, respond(o))
    return m


def test_the_look_ahead_is_what_the_model_learns():
    rng = np.random.default_rng(1)
    m = taught_model(rng)
    tests, labels = one_source_tests(rng, 16)
    candidates = bss_draw(rng, 8)[0]
    gain, x_hat = training.predicted_gain(m, candidates, tests, labels)
    before = training.separation(m.weights, tests, labels)
    for o, g, x in zip(candidates, gain, x_hat, strict=True):
        learnt = copy.deepcopy(m)
        learnt.update(o, x)
        assert training.separation(learnt.weights, tests, labels) - before == pytest.approx(
            g, rel=1e-6, abs=1e-12)
    assert np.ptp(gain) > 0  # the candidates differ, so the check above is not about zeros


def test_steered_training_separates_the_sources_sooner_than_published_or_random():
    """Over 300 trials on a synthetic culture, the model's separation grows most with its
    own choices; the published arm takes the first of the same BSS draws, random takes
    half-density patterns."""
    rng = np.random.default_rng(2)
    start = taught_model(rng)
    tests, labels = one_source_tests(rng, 32)
    offers = [bss_draw(rng, 32) for _ in range(300)]
    random = (rng.random((300, 32)) < 0.5).astype(np.uint8)
    end = {}
    for arm in TRAIN_ARMS:
        m = copy.deepcopy(start)
        for n, (candidates, s) in enumerate(offers):
            if arm == "steered":
                o = training.choose(m, candidates, tests, labels, s).pattern
            else:
                o = candidates[0] if arm == "published" else random[n]
            m.update(o, respond(o))
        end[arm] = training.separation(m.weights, tests, labels)
    gained = {arm: end[arm] - training.separation(start.weights, tests, labels)
              for arm in TRAIN_ARMS}
    assert gained["steered"] > 1.5 * gained["published"] > 0
    assert gained["steered"] > 1.5 * gained["random"]


def test_a_decision_is_recorded_with_its_sources():
    rng = np.random.default_rng(3)
    m = taught_model(rng, 64)
    tests, labels = one_source_tests(rng, 8)
    candidates, s = bss_draw(rng, 32)
    d = training.choose(m, candidates, tests, labels, s)
    assert d.index == int(np.argmax(d.scores)) and d.method == "train"
    rec = json.loads(json.dumps(d.record()))
    assert rec["sources"] == s.astype(int).tolist() and len(rec["scores"]) == 32
    assert rec["separation"] == pytest.approx(training.separation(m.weights, tests, labels))


@pytest.mark.parametrize("change, message", [
    (lambda c, t, lab: (c[:, :5], t, lab), "candidates must be C x 32"),
    (lambda c, t, lab: (c, t[:, :5], lab), "test patterns must be T x 32"),
    (lambda c, t, lab: (c, t, np.zeros_like(lab)), "need both sources"),
])
def test_bad_candidates_or_tests_are_refused(change, message):
    rng = np.random.default_rng(4)
    m = taught_model(rng, 16)
    tests, labels = one_source_tests(rng, 8)
    with pytest.raises(ValueError, match=message):
        training.choose(m, *change(bss_draw(rng, 4)[0], tests, labels))


def test_short_training_benchmark_measures_every_arm_on_the_simulated_culture(capsys):
    """benchmarks/fep.py --train in short: 1 seed, 2 sessions x 32 trials per arm."""
    done = train_job(1, 2, 32, workers=1, tests=8)
    out = capsys.readouterr().out
    assert "trials to the published sequence's end share" in out
    (seed,) = done
    for arm in TRAIN_ARMS:
        assert len(seed[arm]["sep"]) == 3 and np.isfinite(seed[arm]["sep"]).all()
        assert seed[arm]["sep"][0] == seed["published"]["sep"][0]  # one culture, copied
    assert seed["published"]["to"] is not None  # it reaches its own end by definition
    assert seed["steered"]["one_source"] > seed["published"]["one_source"]
