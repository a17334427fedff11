"""The model updated after every trial, for closed loops.

:class:`OnlineModel` keeps the Hebbian and homeostatic sums of
:mod:`mea_control.fep.model` and adds each trial as it finishes. At every
session boundary its sums, weights and the finished session's free energy are
the batch form's (``model.session_weights``, ``model.session_free_energy``):
the session's free energy is taken under the weights of its start, as
published, while ``predict`` and each trial's own free energy use the weights
after the latest trial.

Thresholds: given ones (e.g. from an earlier analysis) are used throughout;
otherwise phi follows the running mean of x until ``initial_sessions`` have
finished and then stays fixed, as in the batch form (whose phi comes from the
initial sessions). :class:`OnlineNormaliser` turns raw ensemble means into x
causally, with running statistics in place of the batch form's whole-run ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mea_control.fep.model import EPS, INITIAL_SESSIONS, LAMBDA, Sums, Thresholds, Weights


@dataclass
class TrialUpdate:
    """What one trial did to the model."""

    trial: int
    session: int
    x: np.ndarray  # observed (normalised) ensemble responses, K
    x_hat: np.ndarray  # what the model predicted for this trial's pattern, K
    free_energy: float  # of this trial, under the weights before it
    session_done: float | None = None  # the session's free energy when this trial ended one


@dataclass
class OnlineModel:
    """Per-trial Hebbian/homeostatic learning of the effective weights of K ensembles."""

    n_ensembles: int
    n_stim: int
    trials_per_session: int
    lam: float = LAMBDA
    thresholds: Thresholds | None = None
    initial_sessions: int = INITIAL_SESSIONS
    trials: int = 0
    session_free_energy: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sums = Sums.prior(self.n_ensembles, self.n_stim, self.lam)
        self._fixed = self.thresholds is not None
        self._x_total = np.zeros(self.n_ensembles)
        self._session_fe = 0.0
        self._refresh()
        self._start = self.weights

    @property
    def session(self) -> int:
        return self.trials // self.trials_per_session

    def _phi(self) -> Thresholds:
        if self.thresholds is not None:
            return self.thresholds
        m = self._x_total / self.trials if self.trials else np.full(self.n_ensembles, 0.5)
        return Thresholds.fit(m[:, None])

    @property
    def current_thresholds(self) -> Thresholds:
        """The thresholds the weights use now (given, settled, or the running ones)."""
        return self._phi()

    def _refresh(self) -> None:
        self.weights: Weights = self.sums.weights(self._phi())

    def predict(self, o: np.ndarray) -> np.ndarray:
        """Expected ensemble responses to patterns o (candidates x stim electrodes) -> (C x K)."""
        return self.weights.predict(np.asarray(o, float))

    def update(self, o: np.ndarray, x: np.ndarray) -> TrialUpdate:
        """Learn from one trial: pattern o (stim electrodes) and responses x (K, in [0, 1])."""
        o = np.asarray(o, float).reshape(1, self.n_stim)
        x = np.asarray(x, float).reshape(self.n_ensembles, 1)
        if not (np.isfinite(x).all() and np.isfinite(o).all()):
            raise ValueError(f"trial {self.trials}: NaN or infinite o or x; not learned from")
        x_hat = self.weights.predict(o)[0]
        fe = float(self.weights.free_energy(x, o)[0])
        self._session_fe += float(self._start.free_energy(x, o)[0])
        self.sums.add(x, o)
        self.trials += 1
        if not self._fixed:
            self._x_total += x[:, 0]
            if self.trials == self.initial_sessions * self.trials_per_session:
                self.thresholds = self._phi()
                self._fixed = True
        self._refresh()
        done = None
        if self.trials % self.trials_per_session == 0:
            done = self._session_fe
            self.session_free_energy.append(done)
            self._session_fe = 0.0
            self._start = self.weights
        return TrialUpdate(self.trials - 1, (self.trials - 1) // self.trials_per_session,
                           x[:, 0].copy(), x_hat, fe, done)


class OnlineNormaliser:
    """Raw ensemble means -> x in [0, 1], causally (module docstring).

    The batch steps with running statistics: each source condition's mean in
    session 1 (running until session 1 ends), the trend as the last finished
    session's mean relative to session 1's (the current session's own running
    mean would take the responses' stimulus-driven part with it), and a running
    z-score of what is left. On the published data this x correlates with the
    batch x at r = 0.99 after session 10.
    """

    def __init__(self, n_ensembles: int, trials_per_session: int, baseline: float) -> None:
        if not baseline > 0:
            raise ValueError(f"the baseline must be a positive response, not {baseline}")
        self.per = trials_per_session
        self.baseline = baseline
        k = n_ensembles
        self.trials = 0
        self._cond_sum: dict[int, np.ndarray] = {}
        self._cond_n: dict[int, int] = {}
        self._first_sum = np.zeros(k)
        self._session_sum = np.zeros(k)
        self._trend = np.zeros(k)
        self._n = 0
        self._mean = np.zeros(k)
        self._m2 = np.zeros(k)

    def __call__(self, x_raw: np.ndarray, s: np.ndarray | None = None) -> np.ndarray:
        x_raw = np.asarray(x_raw, float)
        # s None: no source condition (e.g. a probe pattern); referenced to session 1's mean
        cond = int(np.asarray(s, np.int64) @ (1 << np.arange(len(s)))) if s is not None else None
        if self.trials < self.per:  # session 1
            self._first_sum += x_raw
            if cond is not None:
                self._cond_sum[cond] = self._cond_sum.get(cond, 0) + x_raw
                self._cond_n[cond] = self._cond_n.get(cond, 0) + 1
        first_n = min(self.trials + 1, self.per)
        first_mean = self._first_sum / first_n
        ref = (self._cond_sum[cond] / self._cond_n[cond] if cond in self._cond_n
               else first_mean)
        y = x_raw - ref - self._trend
        self._session_sum += x_raw
        self.trials += 1
        if self.trials % self.per == 0:
            self._trend = self._session_sum / self.per - self._first_sum / self.per
            self._session_sum[:] = 0
        self._n += 1
        delta = y - self._mean
        self._mean += delta / self._n
        self._m2 += delta * (y - self._mean)
        sd = np.sqrt(self._m2 / (self._n - 1)) if self._n > 1 else np.ones_like(y)
        z = (y - self._mean) / np.where(sd > EPS, sd, 1.0)
        offset = (first_mean - self.baseline) / self.baseline / 4
        return np.clip(0.5 + z / 2 + offset, 0.0, 1.0)
