"""Choosing training trials with the culture's model (steering learning).

The culture's model (:class:`~mea_control.fep.online.OnlineModel`, the published
reading) says how a trial changes the effective weights: the Hebbian and
homeostatic sums add the ensembles' response x times the pattern o. Before the
trial x is unknown, so the model's own prediction x_hat stands in for it.

Target: the separation of the two sources, on a fixed set of test patterns each
labelled with the source it shows (0: source 1 alone, 1: source 2 alone):

    separation = mean over source-1 tests of (x_hat_1 - x_hat_2)
               - mean over source-2 tests of (x_hat_1 - x_hat_2)

(ensemble 1 selective to source 1, ensemble 2 to source 2; 2 at most, 0 for no
selectivity). :func:`choose` scores each candidate pattern by the separation
after learning it with its predicted response, minus the separation now, and
takes the largest: a one-trial greedy look-ahead, vectorised over candidates
(tens of microseconds for 32 candidates and 32 electrodes).
"""

from __future__ import annotations

import numpy as np

from mea_control.fep.model import Sums, Thresholds, Weights, sigmoid
from mea_control.fep.online import OnlineModel
from mea_control.fep.selection import Decision

METHOD = "train"
#: Stimulated electrodes per source group in the BSS design (16 + 16).
N_PER_GROUP = 16


def through_mixing(rng: np.random.Generator, s: np.ndarray, mixing: float) -> np.ndarray:
    """The patterns of sources s (... x 2) as the BSS protocol mixes them: each of the
    16 + 16 stimulated electrodes follows its group's source, or the other source with
    p = ``mixing``."""
    group = np.repeat([0, 1], N_PER_GROUP)
    follow = np.where(rng.random((*s.shape[:-1], 2 * N_PER_GROUP)) < mixing, 1 - group, group)
    return np.take_along_axis(np.asarray(s, np.uint8), follow, -1)


def bss_candidates(rng: np.random.Generator, n: int,
                   mixing: float) -> tuple[np.ndarray, np.ndarray]:
    """n candidate patterns (n x 32) drawn as the BSS process draws them, and their
    sources (n x 2): each source on with p = 1/2."""
    s = (rng.random((n, 2)) < 0.5).astype(np.uint8)
    return through_mixing(rng, s, mixing), s


def one_source_patterns(rng: np.random.Generator, n: int,
                        mixing: float) -> tuple[np.ndarray, np.ndarray]:
    """A target set: n // 2 BSS patterns with only source 1 on, n // 2 with only source 2
    (shuffled), and their labels (0: source 1, 1: source 2)."""
    labels = rng.permutation(np.repeat([0, 1], n // 2))
    return through_mixing(rng, np.stack([1 - labels, labels], 1), mixing), labels


def _check_tests(tests: np.ndarray, labels: np.ndarray, n_stim: int) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    tests = np.asarray(tests, float)
    labels = np.asarray(labels)
    if tests.ndim != 2 or tests.shape[1] != n_stim or len(labels) != len(tests):
        raise ValueError(f"test patterns must be T x {n_stim} with T labels, not "
                         f"{tests.shape} and {labels.shape}")
    if not ((labels == 0).any() and (labels == 1).any()):
        raise ValueError("the test patterns need both sources (labels 0 and 1)")
    return tests, labels


def separation(weights: Weights, tests: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The target (module docstring) under ``weights`` (K x J, or stacked: ... x K x J)."""
    u = np.einsum("tj,...kj->...tk", np.asarray(tests, float), weights.W1 - weights.W0)
    x_hat = sigmoid(u + (weights.h1 - weights.h0)[..., None, :])
    diff = x_hat[..., 0] - x_hat[..., 1]  # ... x T: ensemble 1 minus ensemble 2
    return diff[..., labels == 0].mean(-1) - diff[..., labels == 1].mean(-1)


def after_one_trial(sums: Sums, candidates: np.ndarray, x_hat: np.ndarray) -> Sums:
    """The sums after each candidate (C x J) with its response x_hat (C x K): ``Sums.add``
    for one trial, stacked over candidates (C x K x J and C x K x 1)."""
    o = np.asarray(candidates, float)[:, None, :]
    xo = x_hat[:, :, None] * o
    return Sums(sums.hebb1 + xo, sums.home1 + x_hat[:, :, None],
                sums.hebb0 + o - xo, sums.home0 + (1 - x_hat)[:, :, None])


def predicted_gain(model: OnlineModel, candidates: np.ndarray, tests: np.ndarray,
                   labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: the change of the separation if the culture learned it with the
    predicted response; and that response x_hat (C x K)."""
    tests, labels = _check_tests(tests, labels, model.n_stim)
    x_hat = model.predict(candidates)
    th: Thresholds = model.current_thresholds
    after = separation(after_one_trial(model.sums, candidates, x_hat).weights(th), tests, labels)
    return after - separation(model.weights, tests, labels), x_hat


def choose(model: OnlineModel, candidates: np.ndarray, tests: np.ndarray,
           labels: np.ndarray, sources: np.ndarray | None = None) -> Decision:
    """The candidate (C x J) whose predicted learning raises the separation most.

    ``sources``: the candidates' hidden-source labels (C x 2), when they come from the
    BSS process; recorded only (the culture's model sees the patterns, not the sources).
    """
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or candidates.shape[1] != model.n_stim or not len(candidates):
        raise ValueError(f"candidates must be C x {model.n_stim} patterns, "
                         f"not {candidates.shape}")
    gain, x_hat = predicted_gain(model, candidates, tests, labels)
    details = {"separation": float(separation(model.weights, tests, labels))}
    if sources is not None:
        details["sources"] = np.asarray(sources, int)
    return Decision(METHOD, int(np.argmax(gain)), candidates, gain, x_hat, details)
