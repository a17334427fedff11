"""Closed-loop BSS training: the free-energy model learns online and chooses probe trials.

The blind-source-separation training of ``bss_isomura`` (same parameters,
electrodes and sequence) with the model of :mod:`mea_control.fep` in the loop.

Calibration. The first ``calibration_sessions`` sessions are plain training.
At their end the source-preferring ensembles are found from those trials (the
published criteria), the baseline is their mean ensemble response, and the
calibration trials are replayed through the causal normaliser and the online
model: the normaliser's session-1 statistics come from pure training, and the
model's sessions are the run's, as in an offline analysis of the recording.
Without two ensembles the run stops with an error saying what to change.

Closed loop. After every trial, x = normaliser(mean response of each ensemble,
s) and the model learns from (o, x). Each later trial is a probe with
probability ``probe_fraction``: the model scores ``n_candidates`` patterns by
``selection`` and the chosen one is delivered in place of that trial's
training pattern (the sequence position is skipped, not shifted). Candidates:
distinct patterns of the current session's BSS sequence (up to half of them),
the rest random sparse patterns with 1 to 16 of the 32 electrodes on.
``selection = generative`` makes no probes.

Probe trials have no hidden sources. They are labelled s = (0, 0) in the trial
table, their pulses are labelled "probe" and their decision records say
"probe": true, with the trial index. The normaliser gets them without sources:
they never enter its source-condition means and are referenced to session 1's
mean response (they do enter its session trend and z-score, and the model,
whose weights they are meant to inform). s = (0, 0) keeps them out of the
ensembles' selectivity contrast ((1, 0) against (0, 1)); an offline
normalisation would reference them to the unstimulated condition, so leave
them out there.

Every choice is recorded with ``ctx.decision`` (method, candidates, scores,
predicted x_hat, trial, probe; training trials as "generative" with their one
pattern), and every model update as a record with choice None and kind
"update" (trial, x, x_hat, free energy; at a session's end also the session's
free energy and W1, W0); the model's start as kind "calibration" (ensemble
members, baseline, the calibration sessions' free energies, W1, W0).

lambda, the prior strength of the weights in pseudo-trials, defaults to 256
(one published session) instead of the published 3000. With 3000 the first
sessions barely move the weights: predictions hardly differ between patterns,
infomax scores differ by a few in ten thousand and efe chooses almost
uniformly. With a session's worth the model follows the data after a few
sessions. To compare with an offline analysis, run it with the same lambda
(``mea-control analyze --lambda 256``).
"""

import threading
from collections import deque

import numpy as np

from mea_control.fep import ensembles as ens
from mea_control.fep.data import FEPInputError, TrialData
from mea_control.fep.model import LAMBDA
from mea_control.fep.online import OnlineModel, OnlineNormaliser
from mea_control.fep.selection import METHODS, choose
from mea_control.protocol import Parameter, ProtocolError, TrialSpec
from mea_control.types import StimPattern
from protocols.bss_isomura import N_PER_GROUP, BSSIsomura

#: Trials of history that model_state() returns.
HISTORY = 512
#: Decisions that model_state() returns.
LAST_DECISIONS = 8


def _round(values, digits=4):
    return np.round(np.asarray(values, float), digits).tolist()


class FEPClosedLoop(BSSIsomura):
    """BSS training with the free-energy model learning online and choosing probe trials."""

    name = "fep_closed_loop"
    parameters = {
        **BSSIsomura.parameters,
        "selection": Parameter(str, "infomax", choices=METHODS,
                               help="how probes are chosen; generative: no probes"),
        "probe_fraction": Parameter(float, 0.1, range=(0.0, 1.0),
                                    help="share of trials after calibration that are probes"),
        "n_candidates": Parameter(int, 16, range=(2, 1024),
                                  help="candidate patterns scored for each probe"),
        "calibration_sessions": Parameter(int, 1, range=(1, 10_000),
                                          help="sessions of plain training before the model "
                                          "starts (ensembles, baseline)"),
        "gamma": Parameter(float, 20.0, range=(0.0, 1e6),
                           help="efe: precision of the softmax over -G (G differs by about "
                           "0.1 nat between candidates at lambda 256)"),
        "preferred": Parameter(str, "0.5,0.5",
                               help="efe: preferred response probabilities C of ensembles 1, 2"),
        "lambda": Parameter(float, 256.0, unit="trials", range=(1.0, 1e7),
                            help=f"prior strength of the effective weights (published: "
                            f"{LAMBDA:g})"),
    }

    def __init__(self, **values):
        super().__init__(**values)
        self.model = None
        self.normaliser = None
        self.ensembles = None
        self.probes = 0
        self._pending_probes = set()  # probe trials designed and not yet learned from
        self._calibration = []  # (o, s, r) of the calibration trials
        self._lock = threading.Lock()
        self._free_energy = deque(maxlen=HISTORY)
        self._x = deque(maxlen=HISTORY)
        self._x_hat = deque(maxlen=HISTORY)
        self._decisions = deque(maxlen=LAST_DECISIONS)
        self._weights = None
        self._session_fe = []
        self._trials = 0

    def validate(self):
        super().validate()
        p = self.p
        if p.calibration_sessions >= p.sessions:
            raise ProtocolError(
                f"calibration_sessions={p.calibration_sessions} leaves no session for the "
                f"model: it must be fewer than sessions={p.sessions}")
        try:
            c = [float(v) for v in p.preferred.split(",")]
        except ValueError:
            c = []
        if len(c) != 2 or not all(0.0 <= v <= 1.0 for v in c):
            raise ProtocolError(f"preferred={p.preferred!r}: give two probabilities from 0 to "
                                "1, for ensembles 1 and 2, e.g. 0.5,0.5")
        self.preferred = np.array(c)

    # -- trials ------------------------------------------------------------------------
    def design(self, ctx, index):
        spec = super().design(ctx, index)  # keeps the BSS sequence's bookkeeping
        if self.model is None:
            return spec
        o = self.sequence[1][index % self.p.trials_per_session]
        probe = (self.p.selection != "generative"
                 and ctx.rng.random() < self.p.probe_fraction)
        if not probe:
            self._decide(ctx, choose("generative", self.model, o[None]), index, False)
            return spec
        self.probes += 1
        self._pending_probes.add(index)
        decision = choose(self.p.selection, self.model, self._candidates(ctx.rng), ctx.rng,
                          self.preferred, self.p.gamma)
        self._decide(ctx, decision, index, True)
        on = [ch for ch, bit in zip(self.channels, decision.pattern, strict=True) if bit]
        pattern = StimPattern.single(on, self.pulse, label="probe") if on else None
        return TrialSpec(pattern, (0, 0))

    def _candidates(self, rng):
        """Distinct patterns of the session's BSS sequence, up to half, the rest random sparse
        ones (1 to 16 of the 32 electrodes)."""
        n = self.p.n_candidates
        own = np.unique(self.sequence[1], axis=0)
        own = own[rng.choice(len(own), min(n // 2, len(own)), replace=False)]
        sparse = np.zeros((n - len(own), 2 * N_PER_GROUP), np.uint8)
        for row in sparse:
            row[rng.choice(len(row), rng.integers(1, N_PER_GROUP + 1), replace=False)] = 1
        return np.concatenate([own, sparse])

    def _decide(self, ctx, decision, index, probe):
        record = decision.record()
        details = {k: v for k, v in record.items() if k not in ("choice", "candidates", "scores")}
        ctx.decision(record["choice"], record["candidates"], record["scores"],
                     trial=int(index), probe=probe, **details)
        with self._lock:
            self._decisions.append({"trial": int(index), "probe": probe, "method": decision.method,
                                    "choice": record["choice"], "scores": record["scores"]})

    def on_trial(self, ctx, trial):
        with self._lock:
            self._trials += 1
        if self.model is not None:
            self._learn(ctx, trial.o, trial.s, trial.r, trial.index)
            return
        self._calibration.append((trial.o, trial.s, trial.r))
        if len(self._calibration) == self.p.calibration_sessions * self.p.trials_per_session:
            self._start_model(ctx)

    # -- the model -----------------------------------------------------------------------
    def _start_model(self, ctx):
        o, s, r = (np.array(a) for a in zip(*self._calibration, strict=True))
        self._calibration = []
        per = self.p.trials_per_session
        try:
            found = ens.find(TrialData(o, s, r, per))
        except FEPInputError as exc:
            raise ProtocolError(
                f"after {self.p.calibration_sessions} calibration session(s): {exc}. Try more "
                "calibration_sessions or trials_per_session, or a stronger pulse") from None
        baseline = float(found.responses(r).mean())
        self.ensembles = found
        self.normaliser = OnlineNormaliser(2, per, baseline)
        model = OnlineModel(2, 2 * N_PER_GROUP, per, lam=self.values["lambda"])
        self.model = model
        for i in range(len(r)):
            self._learn(None, o[i], s[i], r[i], i)
        ctx.decision(None, kind="calibration", trials=len(r), baseline=round(baseline, 4),
                     members_g1=np.flatnonzero(found.members[0]).tolist(),
                     members_g2=np.flatnonzero(found.members[1]).tolist(),
                     session_free_energy=_round(model.session_free_energy),
                     W1=_round(model.weights.W1), W0=_round(model.weights.W0))
        ctx.log(f"model started: ensembles of {found.sizes[0]} and {found.sizes[1]} "
                f"electrodes, baseline {baseline:.3g} spikes")

    def _learn(self, ctx, o, s, r, index):
        """Normalise one trial's ensemble responses and update the model; record it if ctx."""
        probe = index in self._pending_probes
        self._pending_probes.discard(index)
        x_raw = self.ensembles.responses(np.asarray(r)[None])[:, 0]
        x = self.normaliser(x_raw, None if probe else s)
        update = self.model.update(o, x)
        w = self.model.weights
        with self._lock:
            self._free_energy.append(update.free_energy)
            self._x.append(update.x)
            self._x_hat.append(update.x_hat)
            self._weights = (w.W1.copy(), w.W0.copy())
            if update.session_done is not None:
                self._session_fe.append(update.session_done)
        if ctx is None:
            return
        extra = {}
        if update.session_done is not None:
            extra = {"session_free_energy": round(update.session_done, 4),
                     "W1": _round(w.W1), "W0": _round(w.W0)}
        ctx.decision(None, kind="update", trial=int(index), probe=probe, x=_round(update.x),
                     x_hat=_round(update.x_hat), free_energy=round(update.free_energy, 4),
                     **extra)

    # -- for the GUI and the summary -------------------------------------------------------
    def model_state(self):
        """A snapshot of the model for displays; cheap, and safe to call from any thread.

        running, trials finished (of calibration_trials before the model starts), the
        stimulated electrodes (the columns of W1 and W0),
        probes, the latest per-trial free energies, observed x and predicted x_hat
        (trials x 2), W1 and W0 (2 x 32, or None), the session free energies and
        the last decisions with their scores. Arrays are copies.
        """
        with self._lock:
            return {
                "running": self._weights is not None,
                "selection": self.p.selection,
                "channels": [int(c) for c in getattr(self, "channels", [])],
                "trials": self._trials,
                "calibration_trials": self.p.calibration_sessions * self.p.trials_per_session,
                "probes": self.probes,
                "free_energy": list(self._free_energy),
                "x": np.array(self._x).reshape(-1, 2),
                "x_hat": np.array(self._x_hat).reshape(-1, 2),
                "W1": None if self._weights is None else self._weights[0].copy(),
                "W0": None if self._weights is None else self._weights[1].copy(),
                "session_free_energy": list(self._session_fe),
                "decisions": list(self._decisions),
            }

    def summary(self):
        out = super().summary()
        out["probes"] = self.probes
        if self.model is not None:
            out["session_free_energy"] = _round(self.model.session_free_energy)
            out["ensemble_sizes"] = [int(n) for n in self.ensembles.members.sum(1)]
        return out
