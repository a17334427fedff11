"""Offline reverse engineering of one culture: the published procedure, end to end.

``analyze(data)`` finds the ensembles, normalises their responses, fits the
thresholds on the initial sessions, estimates the effective weights and the
free energy session by session, and predicts sessions after the initial ones
from those alone (Isomura et al. 2023; the steps are in the docstrings of
:mod:`mea_control.fep.ensembles` and :mod:`mea_control.fep.model`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mea_control.fep import ensembles as ens
from mea_control.fep import model
from mea_control.fep.data import FEPInputError, TrialData

#: Sessions at the end over which prediction is scored.
POST_SESSIONS = 10


@dataclass
class Analysis:
    """Everything ``analyze`` finds for one culture."""

    name: str
    ensembles: ens.Ensembles
    baseline: float
    x: np.ndarray  # K x trials, normalised ensemble responses
    x_hat: np.ndarray  # K x trials, predicted from the initial sessions
    thresholds: model.Thresholds
    weights: model.Weights  # estimated, stacked per session (before its trials)
    predicted_weights: model.Weights  # stacked per session
    final: model.Weights  # from the sums after all trials
    free_energy: np.ndarray  # per session
    predicted_free_energy: np.ndarray  # per session, of x_hat under the predicted weights
    mse: np.ndarray  # per session, x vs x_hat
    corr_post: float | None
    mse_post: float
    ideal: tuple[model.Weights, model.Thresholds] | None  # A and D from the true sources
    trials_per_session: int
    initial_sessions: int

    def to_json(self) -> dict[str, Any]:
        n1, n2 = self.ensembles.sizes
        out: dict[str, Any] = {
            "name": self.name,
            "ensemble_method": self.ensembles.method,
            "n_g1": n1, "n_g2": n2,
            "members_g1": np.flatnonzero(self.ensembles.members[0]).tolist(),
            "members_g2": np.flatnonzero(self.ensembles.members[1]).tolist(),
            "baseline": self.baseline,
            "phi1": self.thresholds.phi1.tolist(), "phi0": self.thresholds.phi0.tolist(),
            "free_energy": self.free_energy.tolist(),
            "predicted_free_energy": self.predicted_free_energy.tolist(),
            "mse": self.mse.tolist(),
            "corr_post": self.corr_post, "mse_post": self.mse_post,
            "W1_final": self.final.W1.tolist(), "W0_final": self.final.W0.tolist(),
            "A11": self.final.A11.tolist(), "A10": self.final.A10.tolist(),
            "D": self.thresholds.D.tolist(),
            "x_sum": float(self.x.sum()), "xp_sum": float(self.x_hat.sum()),
            "sessions": len(self.free_energy), "trials_per_session": self.trials_per_session,
            "initial_sessions": self.initial_sessions,
        }
        if self.ideal is not None:
            w, th = self.ideal
            out["A11_ideal"], out["A10_ideal"] = w.A11.tolist(), w.A10.tolist()
            out["D_ideal"] = th.D.tolist()
            out["A_distance"] = float(np.mean(np.abs(np.concatenate(
                [self.final.A11 - w.A11, self.final.A10 - w.A10]))))
            out["D_distance"] = float(np.mean(np.abs(self.thresholds.D - th.D)))
        return out


def default_baseline(data: TrialData, groups: ens.Ensembles,
                     initial: int = model.INITIAL_SESSIONS) -> float:
    """The culture's own mean ensemble response over the initial sessions."""
    return float(groups.responses(data.r[: initial * data.trials_per_session]).mean())


def analyze(data: TrialData, baseline: float | None = None, lam: float = model.LAMBDA,
            gain: float = model.GAIN,
            initial_sessions: int = model.INITIAL_SESSIONS) -> Analysis:
    """Reverse-engineer one culture (see the module docstring)."""
    per, sessions = data.trials_per_session, data.n_sessions
    if not 1 <= initial_sessions < sessions:
        raise FEPInputError(f"{data.name}: {sessions} session(s) and {initial_sessions} initial "
                            "one(s); the model needs at least one initial session to fit and "
                            "one later session to predict")
    if lam <= 0 or gain <= 0:
        raise FEPInputError("lambda and gain must be positive")
    groups = ens.find(data, data.r.astype(float))
    x_raw = groups.responses(data.r)
    if baseline is None:
        baseline = default_baseline(data, groups, initial_sessions)
    if not 0 < baseline < np.inf:
        raise FEPInputError(f"{data.name}: the baseline must be a positive response, "
                            f"not {baseline}")
    x = model.normalise(x_raw, data.s, per, baseline)
    n0 = initial_sessions * per
    th = model.Thresholds.fit(x[:, :n0])
    o = data.o.astype(float)
    weights, final_sums = model.session_weights(x, o, per, th, lam)
    free_energy = model.session_free_energy(x, o, per, weights)
    x_hat, predicted = model.predict(x, o, per, th, weights, initial_sessions, lam, gain)
    predicted_fe = model.session_free_energy(x_hat, o, per, predicted)
    err = (x - x_hat).reshape(x.shape[0], sessions, per) ** 2
    mse = err.mean((0, 2))
    post = min(POST_SESSIONS, sessions - initial_sessions)
    xp, hp = x[:, -post * per:].ravel(), x_hat[:, -post * per:].ravel()
    corr: float | None = None
    if xp.std() > 0 and hp.std() > 0:
        corr = float(np.corrcoef(xp, hp)[0, 1])
    else:
        warnings.warn(f"{data.name}: observed or predicted responses are constant in the last "
                      f"{post} sessions; corr_post is null", stacklevel=2)
    return Analysis(
        name=data.name, ensembles=groups, baseline=float(baseline), x=x, x_hat=x_hat,
        thresholds=th, weights=weights, predicted_weights=predicted,
        final=final_sums.weights(th), free_energy=free_energy,
        predicted_free_energy=predicted_fe, mse=mse, corr_post=corr,
        mse_post=float(((xp - hp) ** 2).mean()),
        ideal=model.ideal_posterior(data.s, o, lam), trials_per_session=per,
        initial_sessions=initial_sessions,
    )
