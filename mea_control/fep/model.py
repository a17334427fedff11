"""The canonical network read as variational Bayes in a POMDP (Isomura et al. 2023).

Ensemble responses x (K x trials, in [0, 1]) are posterior beliefs that each
hidden source is on; stimuli o (trials x J) are the observations. Hebbian sums
``hebb = lambda/2 + sum x o'`` and homeostatic sums ``home = lambda + sum x`` (and
the same with 1 - x) define Beta posteriors over the likelihood A, whose
logits are the effective synaptic weights W1 and W0; thresholds phi are the
log state prior D. The network's cost is the variational free energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from mea_control.fep.data import FEPInputError

#: The published prior strength (pseudo-trials) of the effective weights.
LAMBDA = 3000.0
#: The published weight on the initial sessions when predicting.
GAIN = 2.0
#: Sessions used for thresholds and for prediction.
INITIAL_SESSIONS = 10
EPS = 1e-6


def sigmoid(u: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-u)), without overflow warnings for large |u|."""
    return expit(u)


def normalise(x_raw: np.ndarray, s: np.ndarray, per: int, baseline: float) -> np.ndarray:
    """Published step 2: raw ensemble means (K x trials) -> responses in [0, 1].

    Subtract each source condition's session-1 mean, then the session-mean trend
    relative to session 1; z-score each row (ddof 1); x = 1/2 + z/2 +
    (session-1 mean - baseline) / baseline / 4, clipped to [0, 1].
    """
    k, t = x_raw.shape
    sessions = t // per
    first = x_raw[:, :per]
    x = x_raw.astype(float)
    if s.shape[1]:
        cond = s.astype(np.int64) @ (1 << np.arange(s.shape[1]))
        n_cond = 1 << s.shape[1]
        count = np.bincount(cond[:per], minlength=n_cond)
        ref = np.stack([np.bincount(cond[:per], row, n_cond) for row in first])
        ref = np.where(count > 0, ref / np.maximum(count, 1), first.mean(1, keepdims=True))
        x -= ref[:, cond]
    else:
        x -= first.mean(1, keepdims=True)
    xs = x.reshape(k, sessions, per)
    trend = xs.mean(2)
    xs -= (trend - trend[:, :1])[:, :, None]
    x = xs.reshape(k, t)
    sd = x.std(1, ddof=1, keepdims=True)
    if (sd == 0).any() or not np.isfinite(sd).all():
        raise FEPInputError("an ensemble's response does not vary after normalisation; "
                            "nothing to model")
    z = (x - x.mean(1, keepdims=True)) / sd
    offset = (first.mean(1) - baseline) / baseline / 4
    return np.clip(0.5 + z / 2 + offset[:, None], 0.0, 1.0)


@dataclass
class Thresholds:
    """phi1 = ln<x>, phi0 = ln(1 - <x>) over the initial sessions (the log state prior D)."""

    phi1: np.ndarray
    phi0: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Thresholds:
        m = np.clip(x.mean(1), EPS, 1 - EPS)
        return cls(np.log(m), np.log1p(-m))

    @property
    def D(self) -> np.ndarray:
        """State prior per ensemble: [P(on), P(off)] (K x 2)."""
        return np.exp(np.stack([self.phi1, self.phi0], 1))


@dataclass
class Weights:
    """Effective weights W1, W0 (K x J) and thresholds h1, h0 (K)."""

    W1: np.ndarray
    W0: np.ndarray
    h1: np.ndarray
    h0: np.ndarray

    def predict(self, o: np.ndarray) -> np.ndarray:
        """x_hat = sigmoid((W1 - W0) o + h1 - h0) for patterns o (... x J) -> (... x K)."""
        return sigmoid(o @ (self.W1 - self.W0).T + (self.h1 - self.h0))

    def free_energy(self, x: np.ndarray, o: np.ndarray) -> np.ndarray:
        """Per trial: [x; 1-x]' (ln([x; 1-x] + 1e-6) - [W1; W0] o - [h1; h0]); x is K x n."""
        u1 = self.W1 @ o.T + self.h1[:, None]
        u0 = self.W0 @ o.T + self.h0[:, None]
        return (x * (np.log(x + EPS) - u1) + (1 - x) * (np.log(1 - x + EPS) - u0)).sum(0)

    def session(self, i: int | slice) -> Weights:
        """The weights of session ``i`` (or a range) from weights stacked per session."""
        return Weights(self.W1[i], self.W0[i], self.h1[i], self.h0[i])

    @property
    def A11(self) -> np.ndarray:
        """P(o_j = 1 | source i on) = sigmoid(W1)."""
        return sigmoid(self.W1)

    @property
    def A10(self) -> np.ndarray:
        """P(o_j = 1 | source i off) = sigmoid(W0)."""
        return sigmoid(self.W0)


@dataclass
class Sums:
    """Hebbian and homeostatic sums: hebb1 = lambda/2 + sum x o', home1 = lambda + sum x (K x
    1), and hebb0, home0 the same with 1 - x. They are the Beta posteriors over A: A11 ~
    Beta(hebb1, home1 - hebb1), A10 ~ Beta(hebb0, home0 - hebb0)."""

    hebb1: np.ndarray
    home1: np.ndarray
    hebb0: np.ndarray
    home0: np.ndarray

    @classmethod
    def prior(cls, k: int, j: int, lam: float = LAMBDA) -> Sums:
        half = np.full((k, j), lam / 2)
        full = np.full((k, 1), float(lam))
        return cls(half, full, half.copy(), full.copy())

    def add(self, x: np.ndarray, o: np.ndarray) -> None:
        """Learn from responses x (K x n) to patterns o (n x J)."""
        xo = x @ o
        xs = x.sum(-1, keepdims=True)
        n = o.sum(0)
        self.hebb1 += xo
        self.home1 += xs
        self.hebb0 += n - xo
        self.home0 += x.shape[1] - xs

    def scaled(self, gain: float) -> Sums:
        return Sums(gain * self.hebb1, gain * self.home1, gain * self.hebb0, gain * self.home0)

    def weights(self, th: Thresholds) -> Weights:
        """W = logit(hebb / home); h = sum_j ln(1 - sigmoid(W)) + phi."""
        miss1 = np.log(self.home1 - self.hebb1)
        miss0 = np.log(self.home0 - self.hebb0)
        W1 = np.log(self.hebb1) - miss1
        W0 = np.log(self.hebb0) - miss0
        h1 = (miss1 - np.log(self.home1)).sum(-1) + th.phi1
        h0 = (miss0 - np.log(self.home0)).sum(-1) + th.phi0
        return Weights(W1, W0, h1, h0)


def session_weights(x: np.ndarray, o: np.ndarray, per: int, th: Thresholds,
                    lam: float = LAMBDA) -> tuple[Weights, Sums]:
    """Published step 4: the weights of every session (from the sums before its trials),
    stacked along a first axis, and the final sums after all trials."""
    k, t = x.shape
    sessions = t // per
    xs = x.reshape(k, sessions, per).transpose(1, 0, 2)
    os_ = o.reshape(sessions, per, -1)
    d_hebb1 = xs @ os_
    d_home1 = xs.sum(2, keepdims=True)
    d_hebb0 = os_.sum(1)[:, None, :] - d_hebb1
    d_home0 = per - d_home1
    start = Sums.prior(k, o.shape[1], lam)
    parts = []
    for d, s0 in ((d_hebb1, start.hebb1), (d_home1, start.home1), (d_hebb0, start.hebb0),
                  (d_home0, start.home0)):
        c = np.cumsum(d, 0)
        parts.append(np.concatenate([s0[None], s0 + c[:-1]], 0))
        parts.append(s0 + c[-1])
    before = Sums(*parts[0::2])
    final = Sums(*parts[1::2])
    return before.weights(th), final


def session_free_energy(x: np.ndarray, o: np.ndarray, per: int, weights: Weights) -> np.ndarray:
    """Published step 5: free energy of each session under that session's weights (stacked
    along the first axis, as ``session_weights`` gives them)."""
    k, t = x.shape
    sessions = t // per
    xs = x.reshape(k, sessions, per).transpose(1, 0, 2)
    ot = o.reshape(sessions, per, -1).transpose(0, 2, 1)
    u1 = weights.W1 @ ot + weights.h1[..., None]
    u0 = weights.W0 @ ot + weights.h0[..., None]
    f = xs * (np.log(xs + EPS) - u1) + (1 - xs) * (np.log(1 - xs + EPS) - u0)
    return f.sum((1, 2))


def predict(x: np.ndarray, o: np.ndarray, per: int, th: Thresholds, weights: Weights,
            initial: int = INITIAL_SESSIONS, lam: float = LAMBDA,
            gain: float = GAIN) -> tuple[np.ndarray, Weights]:
    """Published step 6: x_hat for every trial, and the predicted weights of each session.

    Sessions 1..initial use the estimated weights (stacked per session); later
    sessions are generated by the model alone: sums start at gain x (prior + the
    initial sessions' x), and each later session's x_hat is learned from.
    """
    k, t = x.shape
    sessions = t // per
    n0 = initial * per
    os_ = o.reshape(sessions, per, -1)
    x_hat = np.empty((sessions, k, per))
    first = weights.session(slice(0, initial))
    x_hat[:initial] = sigmoid((first.W1 - first.W0) @ os_[:initial].transpose(0, 2, 1)
                              + (first.h1 - first.h0)[..., None])
    sums = Sums.prior(k, o.shape[1], lam)
    sums.add(x[:, :n0], o[:n0])
    sums = sums.scaled(gain)
    # The loop below is Sums.add and Sums.weights on stacked [1; 0] arrays, written out:
    # it runs once per session and is most of the analysis time.
    hebb = np.stack([sums.hebb1, sums.hebb0])  # 2 x K x J
    home = np.stack([sums.home1, sums.home0])  # 2 x K x 1
    phi = np.stack([th.phi1, th.phi0])
    counts = os_.sum(1)
    n_later = sessions - initial
    W = np.empty((n_later, 2, k, o.shape[1]))
    h = np.empty((n_later, 2, k))
    for n, i in enumerate(range(initial, sessions)):
        miss = np.log(home - hebb)
        W[n] = np.log(hebb) - miss
        h[n] = (miss - np.log(home)).sum(-1) + phi
        xi = sigmoid((W[n, 0] - W[n, 1]) @ os_[i].T + (h[n, 0] - h[n, 1])[:, None])
        x_hat[i] = xi
        xo = xi @ os_[i]
        xs = xi.sum(1, keepdims=True)
        hebb[0] += xo
        hebb[1] += counts[i] - xo
        home[0] += xs
        home[1] += per - xs
    stacked = Weights(np.concatenate([first.W1, W[:, 0]]), np.concatenate([first.W0, W[:, 1]]),
                      np.concatenate([first.h1, h[:, 0]]), np.concatenate([first.h0, h[:, 1]]))
    return x_hat.transpose(1, 0, 2).reshape(k, t), stacked


def ideal_posterior(s: np.ndarray, o: np.ndarray,
                    lam: float = LAMBDA) -> tuple[Weights, Thresholds] | None:
    """A11, A10 and D learned from the true sources instead of the responses: the posterior
    an ideal observer of the protocol's generative process would hold (source i for
    ensemble i). None when the data have fewer than two sources."""
    if s.shape[1] < 2:
        return None
    sources = s[:, :2].T.astype(float)
    sums = Sums.prior(2, o.shape[1], lam)
    sums.add(sources, o.astype(float))
    th = Thresholds.fit(sources)
    return sums.weights(th), th
