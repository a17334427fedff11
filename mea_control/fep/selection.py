"""Choosing the next stimulation pattern with the model, every choice recorded.

Methods (``choose(method, model, candidates, ...)``):

- ``generative``: the first candidate, which the protocol samples from its
  hidden-source process (the published experiment); scored like infomax for the
  record only.
- ``infomax``: the candidate with the largest expected information gain about
  the effective weights. Each ensemble's response is treated as a binary state
  that is on with the predicted probability x_hat; on, its Beta posteriors
  A11 ~ Beta(hebb1, home1 - hebb1) count the pattern (one more "pulsed" for the
  electrodes in it, one more "not pulsed" for the rest); off, the A10 ones do.
  The gain is the expected KL divergence of the updated posteriors from the
  current ones.
- ``efe``: expected free energy G = risk + ambiguity - information gain, with
  risk the KL divergence of the predicted responses (Bernoulli x_hat) from the
  preferred ones C, and ambiguity the entropy of the likelihood A under the
  states the pattern is predicted to evoke (sum_j H(A1[k, j]) weighted by
  x_hat, H(A0[k, j]) by 1 - x_hat). The choice is drawn from softmax(-gamma G).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import digamma

from mea_control.fep.online import OnlineModel

METHODS = ("generative", "infomax", "efe")


@dataclass
class Decision:
    """A choice among candidate patterns, with the scores behind it."""

    method: str
    index: int
    candidates: np.ndarray  # C x stim electrodes
    scores: np.ndarray  # C: information gain (infomax, generative) or -G (efe)
    x_hat: np.ndarray  # C x K predicted responses
    details: dict[str, Any]

    @property
    def pattern(self) -> np.ndarray:
        return self.candidates[self.index]

    def record(self) -> dict[str, Any]:
        """JSON-friendly fields for ``ctx.decision``."""
        return {"choice": int(self.index), "candidates": self.candidates.astype(int).tolist(),
                "scores": np.round(self.scores, 9).tolist(), "method": self.method,
                "x_hat": np.round(self.x_hat, 6).tolist(),
                **{k: np.round(v, 9).tolist() if isinstance(v, np.ndarray) else v
                   for k, v in self.details.items()}}


def _one_more_kl(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KL(Beta(a + 1, b) || Beta(a, b)) and KL(Beta(a, b + 1) || Beta(a, b)), in closed form:
    ln((a + b) / a) + psi(a + 1) - psi(a + b + 1), and the same with b for a."""
    psi_ab = digamma(a + b) + 1 / (a + b)  # psi(a + b + 1)
    pulsed = np.log1p(b / a) + digamma(a) + 1 / a - psi_ab
    not_pulsed = np.log1p(a / b) + digamma(b) + 1 / b - psi_ab
    return pulsed, not_pulsed


def information_gain(model: OnlineModel, candidates: np.ndarray,
                     x_hat: np.ndarray) -> np.ndarray:
    """Expected KL gain of the Beta posteriors over A for each candidate (module docstring)."""
    s = model.sums
    a = np.stack([s.hebb1, s.hebb0])  # 2 x K x J: [state on, state off]
    b = np.stack([s.home1, s.home0]) - a
    pulsed, not_pulsed = _one_more_kl(a, b)
    o = np.asarray(candidates, float)
    # per candidate, state and ensemble: sum_j o_j pulsed + (1 - o_j) not_pulsed
    gain = o @ (pulsed - not_pulsed).transpose(0, 2, 1) + not_pulsed.sum(-1)[:, None, :]
    return (x_hat * gain[0] + (1 - x_hat) * gain[1]).sum(1)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def expected_free_energy(model: OnlineModel, candidates: np.ndarray, x_hat: np.ndarray,
                         preferred: np.ndarray) -> dict[str, np.ndarray]:
    """G and its parts (risk, ambiguity, information gain) per candidate."""
    c = np.clip(np.asarray(preferred, float), 1e-6, 1 - 1e-6)
    p = np.clip(x_hat, 1e-12, 1 - 1e-12)
    risk = (p * np.log(p / c) + (1 - p) * np.log((1 - p) / (1 - c))).sum(1)
    w = model.weights
    h_on = _entropy(w.A11).sum(1)
    h_off = _entropy(w.A10).sum(1)
    ambiguity = (x_hat * h_on + (1 - x_hat) * h_off).sum(1)
    gain = information_gain(model, candidates, x_hat)
    return {"G": risk + ambiguity - gain, "risk": risk, "ambiguity": ambiguity,
            "information_gain": gain}


def choose(method: str, model: OnlineModel, candidates: np.ndarray,
           rng: np.random.Generator | None = None, preferred: np.ndarray | None = None,
           gamma: float = 1.0) -> Decision:
    """Score candidate patterns (C x stim electrodes) and pick one (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; one of {', '.join(METHODS)}")
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or candidates.shape[1] != model.n_stim or not len(candidates):
        raise ValueError(f"candidates must be C x {model.n_stim} patterns, "
                         f"not {candidates.shape}")
    x_hat = model.predict(candidates)
    if method != "efe":
        gain = information_gain(model, candidates, x_hat)
        index = 0 if method == "generative" else int(np.argmax(gain))
        return Decision(method, index, candidates, gain, x_hat, {})
    if preferred is None:
        preferred = np.full(model.n_ensembles, 0.5)
    parts = expected_free_energy(model, candidates, x_hat, preferred)
    logits = -gamma * parts["G"]
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    rng = rng or np.random.default_rng()
    index = int(rng.choice(len(prob), p=prob))
    return Decision("efe", index, candidates, -parts["G"], x_hat,
                    {"probability": prob, "risk": parts["risk"],
                     "ambiguity": parts["ambiguity"],
                     "information_gain": parts["information_gain"], "gamma": gamma})
