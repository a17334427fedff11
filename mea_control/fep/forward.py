"""The experimenter's model: a Bayesian forward model of the response to a pattern.

The culture's model (:mod:`mea_control.fep.model`) says what the culture learns;
this one says what we know about the culture. Following Lewi, Butera & Paninski
2009 (Neural Computation 21:619), each output (a responsive electrode's spike
count, or an ensemble's on/off state) is a GLM of the pattern's features

    eta = b + sum_j w_j o_j + w_empty [no electrode on] + w_all [every electrode on]
          (+ network-state covariates, e.g. the last trial's firing)

with a Poisson (log link, counts) or Bernoulli (logit link, states) likelihood.
The posterior over each output's parameters is Gaussian (Laplace), updated
after every trial by one rank-one step: a 1-D Newton solve for the new mean
along Sigma x, then Sigma -= J Sigma x x' Sigma / (1 + J x' Sigma x). The
likelihood stays valid however the patterns were chosen, as long as each
choice depends only on earlier trials, so the estimate is not biased by
adaptive choice (a moment estimate would be). Slow drift is a random walk:
``drift_sd`` is added (as a variance) to every parameter before each trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

LINKS = ("poisson", "logistic")
#: Safeguarded Newton steps of the 1-D posterior-mode solve per trial.
NEWTON_STEPS = 10
#: Largest linear predictor of a Poisson output (exp(12) spikes is far beyond any trial).
ETA_MAX = 12.0


@dataclass
class ForwardModel:
    """GLM per output on a pattern's electrodes, Gaussian posterior (module docstring).

    ``mean`` is outputs x features, ``cov`` outputs x features x features; features
    are [intercept, the ``n_stim`` electrodes, empty, all, the ``n_state`` covariates].
    """

    n_stim: int
    n_outputs: int
    link: str = "poisson"
    prior_sd: float = 0.3  # of each electrode's, the empty and the all-pattern weight
    intercept_sd: float = 2.0
    drift_sd: float = 0.0  # random walk of every parameter, per trial
    n_state: int = 0
    trials: int = 0
    mean: np.ndarray = field(init=False, repr=False)
    cov: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"unknown link {self.link!r}; one of {', '.join(LINKS)}")
        if self.n_stim < 1 or self.n_outputs < 1:
            raise ValueError(f"need at least one electrode and one output, not "
                             f"{self.n_stim} and {self.n_outputs}")
        if not (self.prior_sd > 0 and self.intercept_sd > 0 and self.drift_sd >= 0):
            raise ValueError("prior_sd and intercept_sd must be > 0 and drift_sd >= 0")
        d = self.n_features
        var = np.full(d, self.prior_sd ** 2)
        var[0] = self.intercept_sd ** 2
        self.mean = np.zeros((self.n_outputs, d))
        self.cov = np.broadcast_to(np.diag(var), (self.n_outputs, d, d)).copy()

    @property
    def n_features(self) -> int:
        return 1 + self.n_stim + 2 + self.n_state

    def features(self, patterns: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Patterns (C x n_stim, 0/1) and the network state (n_state) -> C x features."""
        o = np.atleast_2d(np.asarray(patterns, float))
        if o.shape[1] != self.n_stim:
            raise ValueError(f"patterns must have {self.n_stim} electrodes, not {o.shape[1]}")
        on = o.sum(1)
        x = np.empty((len(o), self.n_features))
        x[:, 0] = 1.0
        x[:, 1:1 + self.n_stim] = o
        x[:, 1 + self.n_stim] = on == 0
        x[:, 2 + self.n_stim] = on == self.n_stim
        if self.n_state:
            st = np.zeros(self.n_state) if state is None else np.asarray(state, float)
            x[:, 3 + self.n_stim:] = st
        return x

    # -- the posterior's view of a set of patterns -------------------------------------
    def outlook(self, patterns: np.ndarray, state: np.ndarray | None = None) -> Outlook:
        """What the posterior says about each pattern (one pass over the covariances)."""
        x = self.features(patterns, state)
        e, d, _ = self.cov.shape
        sx = (self.cov.reshape(e * d, d) @ x.T).reshape(e, d, len(x))
        eta = self.mean @ x.T
        s = np.maximum(np.einsum("edc,cd->ec", sx, x), 0.0)
        if self.link == "poisson":
            mean = np.exp(np.minimum(eta + s / 2, ETA_MAX))
            var, slope = mean ** 2 * np.expm1(np.minimum(s, ETA_MAX)), mean
        else:
            mean = expit(eta / np.sqrt(1 + np.pi * s / 8))  # the probit approximation
            slope = mean * (1 - mean)
            var = slope ** 2 * s
        return Outlook(x, sx, eta, s, mean, var, slope)

    def predict(self, patterns: np.ndarray, state: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mean response (counts, or the probability of the on state) and its
        posterior sd, each C x outputs."""
        look = self.outlook(patterns, state)
        return look.mean.T, np.sqrt(look.var).T

    def electrode_sd(self) -> np.ndarray:
        """Posterior sd of each stimulated electrode's weight, rms over outputs (n_stim)."""
        diag = np.diagonal(self.cov, axis1=1, axis2=2)[:, 1:1 + self.n_stim]
        return np.sqrt(diag.mean(0))

    # -- learning ---------------------------------------------------------------------
    def update(self, pattern: np.ndarray, response: np.ndarray,
               state: np.ndarray | None = None) -> None:
        """Learn from one trial: its pattern (n_stim) and each output's response
        (counts for poisson, 0/1 for logistic)."""
        y = np.asarray(response, float).reshape(-1)
        if len(y) != self.n_outputs or not np.isfinite(y).all() or (y < 0).any():
            raise ValueError(f"trial {self.trials}: need {self.n_outputs} finite responses "
                             f">= 0, got {np.asarray(response).tolist()}")
        if self.link == "logistic" and ((y != 0) & (y != 1)).any():
            raise ValueError(f"trial {self.trials}: logistic outputs take 0 or 1")
        if self.drift_sd:
            idx = np.arange(self.n_features)
            self.cov[:, idx, idx] += self.drift_sd ** 2
        look = self.outlook(pattern, state)
        sx, m, s = look.sx[:, :, 0], look.eta[:, 0], np.maximum(look.var_eta[:, 0], 1e-12)
        rho = self._mode(y, m, s)
        curv = self._slope(rho)
        self.mean += sx * ((rho - m) / s)[:, None]
        self.cov -= (curv / (1 + curv * s))[:, None, None] * sx[:, :, None] * sx[:, None, :]
        self.trials += 1

    def _slope(self, eta: np.ndarray) -> np.ndarray:
        """d mean / d eta at eta (no parameter uncertainty)."""
        if self.link == "poisson":
            return np.exp(np.minimum(eta, ETA_MAX))
        p = expit(eta)
        return p * (1 - p)

    def _mode(self, y: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The new mean of x' theta: the root of y - mean(rho) - (rho - m) / s, by Newton
        steps kept inside a bracket of the root (bisection when a step leaves it)."""
        if self.link == "poisson":
            up = y > np.exp(np.minimum(m, ETA_MAX))
            logy = np.log(np.where(y > 0, y, 1.0))
            lo = np.where(up, m, np.maximum(m + s * (y - np.exp(np.minimum(m, ETA_MAX))),
                                            np.where(y > 0, logy, -np.inf)))
            hi = np.where(up, np.minimum(m + s * y, logy), m)
        else:
            lo, hi = m - s, m + s
        rho = (lo + hi) / 2
        for _ in range(NEWTON_STEPS):
            mean = np.exp(np.minimum(rho, ETA_MAX)) if self.link == "poisson" else expit(rho)
            grad = y - mean - (rho - m) / s
            lo = np.where(grad > 0, rho, lo)
            hi = np.where(grad > 0, hi, rho)
            step = rho + grad / (self._slope(rho) + 1 / s)
            step = np.where((step >= lo) & (step <= hi), step, (lo + hi) / 2)
            if np.abs(step - rho).max() < 1e-10:
                return step
            rho = step
        return rho

    # -- what a trial with each candidate would teach ---------------------------------
    def information_gain(self, candidates: np.ndarray | Outlook,
                         state: np.ndarray | None = None) -> np.ndarray:
        """Expected information (nats) about the parameters from one trial of each
        candidate, summed over outputs (C); see :meth:`Outlook.information`."""
        look = candidates if isinstance(candidates, Outlook) else self.outlook(candidates, state)
        return look.information().sum(0)

    def variance_reduction(self, candidates: np.ndarray | Outlook, targets: np.ndarray,
                           weights: np.ndarray | None = None,
                           state: np.ndarray | None = None) -> np.ndarray:
        """Expected reduction of the predictive variance of the mean response to the target
        patterns, weighted by ``weights`` (how often each occurs) and summed over outputs,
        from one trial of each candidate (C). The variance of a target's mean is taken by
        the delta method at the posterior mean: slope(x_t' mu)^2 x_t' Sigma x_t."""
        look = candidates if isinstance(candidates, Outlook) else self.outlook(candidates, state)
        xt = self.features(targets, state)
        w = np.full(len(xt), 1 / len(xt)) if weights is None else np.asarray(weights, float)
        if w.shape != (len(xt),):
            raise ValueError(f"need one weight per target pattern ({len(xt)}), not {w.shape}")
        e, d, c = look.sx.shape
        cross = (xt @ look.sx.transpose(1, 0, 2).reshape(d, e * c)).reshape(len(xt), e, c)
        slope_t = self._slope(xt @ self.mean.T)  # targets x outputs
        per = np.einsum("te,tec->ec", w[:, None] * slope_t ** 2, cross ** 2)
        j = look.slope
        return (per * j / (1 + j * look.var_eta)).sum(0)


@dataclass
class Outlook:
    """The posterior's view of C patterns, per output (outputs x C unless noted)."""

    x: np.ndarray  # C x features
    sx: np.ndarray  # outputs x features x C: Sigma x
    eta: np.ndarray  # x' mu
    var_eta: np.ndarray  # x' Sigma x
    mean: np.ndarray  # predicted mean response
    var: np.ndarray  # its posterior variance
    slope: np.ndarray  # d mean / d eta: the Fisher information of a trial per unit x' Sigma x

    def information(self) -> np.ndarray:
        """Expected information (nats) about each output's parameters from one trial of
        each pattern: 1/2 ln(1 + J x' Sigma x) (Lewi et al. 2009)."""
        return 0.5 * np.log1p(self.slope * self.var_eta)
