"""Choosing the next stimulation pattern with the experimenter's model, every choice recorded.

Methods (``choose(method, model, candidates, ...)``, ``model`` a
:class:`~mea_control.fep.forward.ForwardModel`):

- ``generative``: the first candidate, which the protocol draws from its own
  process (the published experiment); scored like infomax for the record only.
- ``random``: uniform among the candidates (the baseline of every job).
- ``passive``: drawn with the candidates' ``weights`` (how often the experiment
  itself delivers each: passive sampling).
- ``infomax``: the largest expected information about the model's weights,
  sum over outputs of 1/2 ln(1 + J x' Sigma x) (Lewi et al. 2009).
- ``targeted``: the largest expected reduction of the predictive variance of the
  responses to the ``targets`` (default: the candidates), weighted by
  ``target_weights`` (how often the experiment delivers each): the predictions
  that matter, not the weights as such.
- ``efe``: expected free energy (active inference) for a logistic model whose
  outputs are on/off states, with preferred on-probabilities C:
  G = risk + ambiguity = sum over outputs of [KL(p || C) + E_theta H(y | theta)]
  = cross-entropy(p, C) - I(y; theta), with I = 1/2 ln(1 + J x' Sigma x). The
  choice is argmin G, or drawn from softmax(-gamma G) when gamma is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mea_control.fep.forward import ForwardModel, Outlook

METHODS = ("generative", "random", "passive", "infomax", "targeted", "efe")


@dataclass
class Decision:
    """A choice among candidate patterns, with the scores and predictions behind it."""

    method: str
    index: int
    candidates: np.ndarray  # C x stim electrodes
    scores: np.ndarray  # C: the method's score (higher is better; -G for efe)
    prediction: np.ndarray  # C x outputs: predicted mean response
    details: dict[str, Any]
    sd: np.ndarray | None = None  # C x outputs: its posterior sd (what is still unknown)

    @property
    def pattern(self) -> np.ndarray:
        return self.candidates[self.index]

    def record(self) -> dict[str, Any]:
        """JSON-friendly fields for ``ctx.decision``."""
        return {"choice": int(self.index), "candidates": self.candidates.astype(int).tolist(),
                "scores": np.round(self.scores, 9).tolist(), "method": self.method,
                "prediction": np.round(self.prediction, 6).tolist(),
                **({} if self.sd is None else {"sd": np.round(self.sd, 6).tolist()}),
                **{k: np.round(v, 9).tolist() if isinstance(v, np.ndarray) else v
                   for k, v in self.details.items()}}


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def expected_free_energy(model: ForwardModel, candidates: np.ndarray | Outlook,
                         preferred: np.ndarray,
                         state: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """G and its parts (risk, ambiguity, information gain) per candidate (C each)."""
    if model.link != "logistic":
        raise ValueError("efe needs a logistic model (outputs that are on/off states)")
    c = np.clip(np.asarray(preferred, float), 1e-6, 1 - 1e-6)
    if c.shape != (model.n_outputs,):
        raise ValueError(f"need {model.n_outputs} preferred probabilities, not {c.shape}")
    look = candidates if isinstance(candidates, Outlook) else model.outlook(candidates, state)
    p = np.clip(look.mean.T, 1e-12, 1 - 1e-12)  # C x outputs
    risk = (p * np.log(p / c) + (1 - p) * np.log((1 - p) / (1 - c))).sum(1)
    gain = np.minimum(look.information().T, _entropy(p))  # a Bernoulli holds at most H(p)
    ambiguity = (_entropy(p) - gain).sum(1)
    return {"G": risk + ambiguity, "risk": risk, "ambiguity": ambiguity,
            "information_gain": gain.sum(1)}


def choose(method: str, model: ForwardModel, candidates: np.ndarray,
           rng: np.random.Generator | None = None, *, weights: np.ndarray | None = None,
           targets: np.ndarray | None = None, target_weights: np.ndarray | None = None,
           preferred: np.ndarray | None = None, gamma: float | None = None,
           state: np.ndarray | None = None) -> Decision:
    """Score candidate patterns (C x stim electrodes) and pick one (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; one of {', '.join(METHODS)}")
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or candidates.shape[1] != model.n_stim or not len(candidates):
        raise ValueError(f"candidates must be C x {model.n_stim} patterns, "
                         f"not {candidates.shape}")
    rng = rng or np.random.default_rng()
    look = model.outlook(candidates, state)
    details: dict[str, Any] = {}
    if method == "efe":
        if preferred is None:
            raise ValueError("efe needs the preferred response of each output")
        parts = expected_free_energy(model, look, preferred)
        scores = -parts["G"]
        details = {k: v for k, v in parts.items() if k != "G"}
    elif method == "targeted":
        if targets is None:
            targets, target_weights = candidates, weights
        scores = model.variance_reduction(look, targets, target_weights, state)
    else:
        scores = model.information_gain(look)
    if method == "generative":
        index = 0
    elif method == "random":
        index = int(rng.integers(len(candidates)))
    elif method == "passive":
        if weights is None:
            raise ValueError("passive needs the weights (frequencies) of the candidates")
        w = np.asarray(weights, float)
        index = int(rng.choice(len(candidates), p=w / w.sum()))
    elif method == "efe" and gamma is not None:
        logits = gamma * scores
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        index = int(rng.choice(len(prob), p=prob))
        details.update(probability=prob, gamma=gamma)
    else:
        index = int(np.argmax(scores))
    return Decision(method, index, candidates, scores, look.mean.T, details,
                    np.sqrt(look.var).T)
