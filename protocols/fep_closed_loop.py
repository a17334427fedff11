"""Closed-loop BSS training with two models in the loop: the culture's and the experimenter's.

Source: the training of Isomura, Kotani, Jimbo & Friston 2023 (Nat Commun 14:4547), with
its culture model fitted online, and this project's experimenter's model (Bayesian
experimental design on a GLM of the responses). The blind-source-separation training of
``bss_isomura`` (same parameters, electrodes and sequence) with two models of
:mod:`mea_control.fep`:

- the culture's model (:class:`~mea_control.fep.online.OnlineModel`, the
  published reading of the culture as a free-energy minimiser) learns online
  from every trial, as an offline analysis of the recording would;
- the experimenter's model (:class:`~mea_control.fep.forward.ForwardModel`, a
  Bayesian GLM of the response to a pattern) learns from every trial too, and
  chooses the probe trials for the run's ``job``:

  - ``identify``: a Poisson GLM of the spike count of each responsive electrode
    (mean response > 1 spike over the calibration trials and > 0.1 in each
    calibration session; the ``max_electrodes`` most responsive of them, 32 by
    default, which keeps a choice under 1 ms of CPU). Targets: the distinct
    patterns of the session's BSS sequence, weighted by how often each occurs.
    ``selection``: ``targeted`` (the largest expected reduction of the
    targets' weighted predictive variance), ``infomax`` (the most information
    about the weights), ``random`` (uniform among the candidates) or
    ``passive`` (a pattern of the sequence drawn with the experiment's own
    frequencies). Each trial records
    ``target_sd``, the targets' weighted predictive sd (what is still unknown
    about the predictions that matter).
  - ``control``: a logistic GLM of the on/off state of each of the two
    ensembles (on: the ensemble's mean response above its median over the
    calibration trials). The preferred state is ``preferred`` (on-probabilities
    of ensembles 1 and 2) for the first half of the trials after calibration
    and the reverse (swapped) for the second half. ``selection``: ``efe``
    (expected free energy: risk + ambiguity) or ``random``. Each trial records
    ``success``: every ensemble with a preference (not 0.5) in its preferred
    state.
  - ``train``: steering learning. The chosen trials are training trials, not
    probes: ``n_candidates`` BSS trials are drawn from the BSS process (sources
    through the mixing) and ``steer`` takes the one after which the culture's
    model predicts the largest separation of the two sources on 32 one-source
    target patterns (:mod:`mea_control.fep.training`), ``random`` any of them.
    The trial keeps its hidden sources. The experimenter's model learns the
    ensembles' states as for control, for the record. Each trial records
    ``separation``, the separation the culture's model predicts. (On the
    simulated culture steering does worse than the published sequence: see the
    README.)

  ``selection = generative`` (any job) makes no probes; ``auto`` (the default)
  is the job's first method. A job is a small class in ``JOBS``: it builds its
  model from the calibration trials (and ``ctx.rng``, for what it draws at the
  start), turns a trial's responses into the model's outputs, offers candidates
  and scores a trial.

Calibration. The first ``calibration_sessions`` sessions are plain training.
At their end the source-preferring ensembles are found from those trials (the
published criteria), the baseline is their mean ensemble response, and the
calibration trials are replayed through the causal normaliser and both models.
When calibration finds too little, the run stops with one line saying what it
found and what to change (more ``calibration_sessions`` or
``trials_per_session``, a stronger pulse). For ``identify`` only responsive
electrodes are needed: without two ensembles the culture's model is left out
(logged) and the run goes on.

Closed loop. Each trial after calibration is a probe with probability
``probe_fraction``: the job's model scores ``n_candidates`` patterns by
``selection`` and the chosen one is delivered in place of that trial's
training pattern (the sequence position is skipped, not shifted). Candidates:
distinct patterns of the current session's BSS sequence (up to half of them),
the rest random sparse patterns with 1 to 16 of the 32 electrodes on; for
``passive``, every distinct pattern of the sequence, weighted by its count.

Probe trials have no hidden sources. They are labelled s = (0, 0) in the trial
table, their pulses are labelled "probe" and their decision records say
"probe": true, with the trial index. The normaliser gets them without sources:
they never enter its source-condition means and are referenced to session 1's
mean response. s = (0, 0) keeps them out of the ensembles' selectivity
contrast; an offline normalisation would reference them to the unstimulated
condition, so leave them out there.

Parameters, beyond ``bss_isomura``'s: ``job`` and ``selection`` (above),
``probe_fraction`` (a probability), ``n_candidates`` (patterns scored a choice),
``calibration_sessions`` (sessions), ``gamma`` (efe's softmax precision, per nat of G),
``preferred`` (two on-probabilities, comma-separated), ``max_electrodes``,
``drift_sd`` (the experimenter's model's weight random walk, sd a trial) and
``lambda`` (pseudo-trials, below).

Records (``ctx.decision``). Every choice: method, candidates, scores, the
experimenter's model's ``prediction`` and its posterior ``sd`` (candidates x
outputs), ``electrode_sd`` (the posterior sd of each stimulated electrode's
weight: what is still unknown, per electrode), the culture's model's
predicted ``x_hat``, trial, probe, job (training trials as "generative" with
their one pattern). Every update: kind "update", trial, probe, the culture's
model's x, x_hat and free energy (at a session's end also the session's free
energy and W1, W0), and the experimenter's ``observed`` and ``predicted``
outputs (before learning the trial) with their ``sd`` and the job's measure.
The start: kind "calibration" (ensemble members, baseline, the calibration
sessions' free energies, W1, W0, the job and its outputs).

lambda, the prior strength of the culture model's weights in pseudo-trials,
defaults to 256 (one published session) instead of the published 3000, so that
the model follows the data after a few sessions. To compare with an offline
analysis, run it with the same lambda (``mea-control analyze --lambda 256``).
"""

import threading
from collections import deque

import numpy as np

from mea_control.fep import ensembles as ens
from mea_control.fep import training
from mea_control.fep.data import FEPInputError, TrialData
from mea_control.fep.forward import ForwardModel
from mea_control.fep.model import LAMBDA
from mea_control.fep.online import OnlineModel, OnlineNormaliser
from mea_control.fep.selection import choose
from mea_control.protocol import Parameter, ProtocolError, TrialSpec
from mea_control.types import StimPattern
from protocols.bss_isomura import N_PER_GROUP, BSSIsomura

#: Trials of history that model_state() returns.
HISTORY = 512
#: Decisions that model_state() returns.
LAST_DECISIONS = 8
#: Trials over which model_state() gives the job's success rate.
SUCCESS_WINDOW = 100
#: Calibration trials whose sources the check before the run looks at.
CHECKED_TRIALS = 100_000


def _round(values, digits=4):
    return np.round(np.asarray(values, float), digits).tolist()


def _stack(rows, width):
    """Rows of ``width`` values as an array (0 x width when there are none)."""
    return np.array(rows, float).reshape(len(rows), width)


def _calibration_error(p, what):
    """The one line a failed calibration stops with."""
    return ProtocolError(
        f"after {p.calibration_sessions} calibration session(s) of {p.trials_per_session} "
        f"trials: {what}. Try more calibration_sessions or trials_per_session, or a "
        f"stronger pulse (amplitude={p.amplitude:g})")


class Identify:
    """Learn the response map: the spike count of each responsive electrode per pattern."""

    name = "identify"
    selections = ("targeted", "infomax", "random", "passive")

    def __init__(self, protocol, o, s, r, found, rng):
        p = protocol.p
        self.protocol = protocol
        responsive = np.flatnonzero(ens.responsive(r, p.calibration_sessions))
        if not len(responsive):
            raise _calibration_error(
                p, f"no responsive electrode (mean response > {ens.MIN_MEAN_RESPONSE:g} "
                f"spike, every session's > {ens.MIN_SESSION_MEAN:g})")
        most = np.argsort(-np.asarray(r, float)[:, responsive].mean(0), kind="stable")
        self.electrodes = np.sort(responsive[most[:p.max_electrodes]])
        self.model = ForwardModel(2 * N_PER_GROUP, len(self.electrodes), "poisson",
                                  drift_sd=p.drift_sd)
        self._targets = (None, None)  # (the sequence they are of, (patterns, weights))

    def outputs(self, r, trial):
        return np.asarray(r, float)[self.electrodes]

    def targets(self):
        """The distinct patterns of the session's sequence and how often each occurs (worked
        out again only when the protocol draws a new sequence)."""
        sequence = self.protocol.sequence
        if self._targets[0] is not sequence:
            patterns, counts = np.unique(sequence[1], axis=0, return_counts=True)
            self._targets = (sequence, (patterns, counts / counts.sum()))
        return self._targets[1]

    def choose(self, method, candidates, rng, trial):
        targets, weights = self.targets()
        if method == "passive":
            return choose(method, self.model, targets, rng, weights=weights)
        return choose(method, self.model, candidates, rng, targets=targets,
                      target_weights=weights)

    def measure(self, trial, observed, predicted):
        """The targets' weighted predictive sd after learning this trial (mean over
        electrodes), and the trial's rms prediction error."""
        targets, weights = self.targets()
        _, sd = self.model.predict(targets)
        return {"target_sd": round(float(weights @ sd.mean(1)), 5),
                "error": round(float(np.sqrt(np.mean((observed - predicted) ** 2))), 5)}

    def record(self):
        return {"outputs": "responsive electrodes", "electrodes": self.electrodes.tolist()}


class Control:
    """Drive the two ensembles to a preferred on/off state (ensemble 1 on and 2 off, then
    the reverse)."""

    name = "control"
    selections = ("efe", "random")

    def __init__(self, protocol, o, s, r, found, rng):
        if found is None:
            raise _calibration_error(protocol.p, protocol.no_ensembles)
        p = protocol.p
        self.protocol = protocol
        self.found = found
        self.threshold = np.median(found.responses(r), axis=1)  # per ensemble
        self.model = ForwardModel(2 * N_PER_GROUP, 2, "logistic", drift_sd=p.drift_sd)
        calibration = p.calibration_sessions * p.trials_per_session
        self.switch = calibration + (p.sessions * p.trials_per_session - calibration) // 2
        self.first = protocol.preferred

    def preferred(self, trial):
        """On-probabilities wanted of ensembles 1 and 2 at this trial."""
        return self.first if trial < self.switch else self.first[::-1]

    def outputs(self, r, trial):
        x = self.found.responses(np.asarray(r, float)[None])[:, 0]
        return (x > self.threshold).astype(float)

    def choose(self, method, candidates, rng, trial):
        gamma = self.protocol.p.gamma or None
        return choose(method, self.model, candidates, rng, preferred=self.preferred(trial),
                      gamma=gamma)

    def measure(self, trial, observed, predicted):
        """success: every ensemble with a preference is in its preferred state."""
        c = self.preferred(trial)
        cares = c != 0.5
        return {"success": bool(np.all(observed[cares] == (c[cares] > 0.5))),
                "preferred": c.tolist()}

    def record(self):
        return {"outputs": "ensemble states", "threshold": _round(self.threshold),
                "switch_trial": int(self.switch)}


class Train(Control):
    """Steer learning: training trials (with their hidden sources) chosen with the culture's
    model so that it predicts a larger separation of the two sources (fep.training). The
    experimenter's model of the ensembles' states learns alongside, for the record."""

    name = "train"
    selections = ("steer", "random")

    def __init__(self, protocol, o, s, r, found, rng):
        super().__init__(protocol, o, s, r, found, rng)
        self.aims, self.labels = training.one_source_patterns(rng, TRAIN_AIMS,
                                                              protocol.p.mixing)

    def choose(self, method, candidates, rng, trial):
        """A BSS trial drawn among ``n_candidates`` from the BSS process: the one the
        culture's model predicts to raise the separation most (steer), or any (random).
        ``candidates`` (the probes') are not used; the decision carries the sources."""
        p = self.protocol.p
        offered, sources = training.bss_candidates(rng, p.n_candidates, p.mixing)
        d = training.choose(self.protocol.model, offered, self.aims, self.labels, sources)
        d.method = method
        if method == "random":
            d.index = int(rng.integers(len(offered)))
        d.prediction, d.sd = self.model.predict(offered)
        return d

    def measure(self, trial, observed, predicted):
        """The separation of the sources that the culture's model predicts now."""
        sep = training.separation(self.protocol.model.weights, self.aims, self.labels)
        return {"separation": round(float(sep), 5)}

    def record(self):
        return {"outputs": "ensemble states", "threshold": _round(self.threshold)}


#: Target patterns of the train job (half with source 1 alone, half with source 2 alone).
TRAIN_AIMS = 32
#: The jobs a run can give the experimenter's model.
JOBS = {job.name: job for job in (Identify, Control, Train)}


class FEPClosedLoop(BSSIsomura):
    """BSS training with two models learning online; the experimenter's chooses probes."""

    name = "fep_closed_loop"
    parameters = {
        **BSSIsomura.parameters,
        "job": Parameter(str, "identify", choices=tuple(JOBS),
                         help="what the experimenter's model chooses probes for"),
        "selection": Parameter(str, "auto", help="how probes are chosen: auto (the job's "
                               "first), generative (no probes), or one of the job's: "
                               + "; ".join(f"{j.name}: {', '.join(j.selections)}"
                                           for j in JOBS.values())),
        "probe_fraction": Parameter(float, 0.1, range=(0.0, 1.0),
                                    help="share of trials after calibration that the job "
                                    "chooses (probes; train: training trials)"),
        "n_candidates": Parameter(int, 16, range=(2, 1024),
                                  help="candidate patterns scored for each probe"),
        "calibration_sessions": Parameter(int, 1, range=(1, 10_000),
                                          help="sessions of plain training before the models "
                                          "start (ensembles, responsive electrodes)"),
        "gamma": Parameter(float, 0.0, range=(0.0, 1e6),
                           help="efe: precision of the softmax over -G; 0: the least G"),
        "preferred": Parameter(str, "0.95,0.05",
                               help="control: on-probabilities of ensembles 1, 2 wanted in the "
                               "first half of the trials after calibration (swapped after)"),
        "max_electrodes": Parameter(int, 32, range=(1, 4096),
                                    help="identify: model at most this many responsive "
                                    "electrodes, the most responsive (keeps a choice under "
                                    "1 ms)"),
        "drift_sd": Parameter(float, 0.0, range=(0.0, 10.0),
                              help="experimenter's model: random-walk sd of each weight a "
                              "trial (0: none; 0.01: predictions follow the culture's drift "
                              "from trial to trial)"),
        "lambda": Parameter(float, 256.0, unit="trials", range=(1.0, 1e7),
                            help=f"culture's model: prior strength of the effective weights "
                            f"(published: {LAMBDA:g})"),
    }

    def __init__(self, **values):
        super().__init__(**values)
        self.model = None  # the culture's
        self.job = None  # the experimenter's model and its job
        self.normaliser = None
        self.ensembles = None
        self.no_ensembles = None  # why the culture's model is left out
        self.probes = 0
        self._pending_probes = set()  # probe trials designed and not yet learned from
        self._calibration = []  # (o, s, r) of the calibration trials
        self._lock = threading.Lock()
        self._free_energy = deque(maxlen=HISTORY)
        self._x = deque(maxlen=HISTORY)
        self._x_hat = deque(maxlen=HISTORY)
        self._observed = deque(maxlen=HISTORY)  # (trial, probe, observed, predicted, sd)
        self._measures = deque(maxlen=HISTORY)  # (trial, probe, the job's measure)
        self._decisions = deque(maxlen=LAST_DECISIONS)
        self._electrode_sd = None
        self._weights = None
        self._session_fe = []
        self._trials = 0

    def validate(self):
        super().validate()
        p = self.p
        if p.calibration_sessions >= p.sessions:
            raise ProtocolError(
                f"calibration_sessions={p.calibration_sessions} leaves no session for the "
                f"models: it must be fewer than sessions={p.sessions}")
        job = JOBS[p.job]
        self.selection = job.selections[0] if p.selection == "auto" else p.selection
        if self.selection not in (*job.selections, "generative"):
            raise ProtocolError(
                f"selection={p.selection!r} does not suit job={p.job}: use one of "
                f"{', '.join(job.selections)}, generative (no probes) or auto")
        try:
            c = [float(v) for v in p.preferred.split(",")]
        except ValueError:
            c = []
        if len(c) != 2 or not all(0.0 <= v <= 1.0 for v in c):
            raise ProtocolError(f"preferred={p.preferred!r}: give two probabilities from 0 to "
                                "1, for ensembles 1 and 2, e.g. 0.95,0.05")
        self.preferred = np.array(c)

    def planned_patterns(self, ctx):
        """BSS's, after checking that the calibration can find the two ensembles that
        control and train need (see _check_calibration)."""
        patterns = super().planned_patterns(ctx)
        if self.p.job != "identify":  # identify runs without the ensembles
            self._check_calibration(ctx.rng)
        return patterns

    def _check_calibration(self, rng):
        """ProtocolError unless every calibration session has a trial with only source 1
        on and one with only source 2 on (the ensembles' selectivity needs both). ``rng``
        draws the sessions' sequences as the run will (nothing else draws before the
        models start); checked up to CHECKED_TRIALS trials, past which a miss is
        vanishingly rare."""
        p = self.p
        sessions = 1 if p.repeat_sequence else p.calibration_sessions
        sessions = min(sessions, max(1, CHECKED_TRIALS // p.trials_per_session))
        for session in range(sessions):
            s, _ = self._sequence(rng)
            for source, other in ((0, 1), (1, 0)):
                if not np.any((s[:, source] == 1) & (s[:, other] == 0)):
                    which = "the session's sequence" if p.repeat_sequence else (
                        f"calibration session {session + 1}")
                    raise ProtocolError(
                        f"job={p.job} needs a trial with only source {source + 1} on in "
                        f"every calibration session to find the ensembles, and "
                        f"{which} ({p.trials_per_session} trials) has none: use more "
                        "trials_per_session")

    # -- trials ------------------------------------------------------------------------
    def design(self, ctx, index):
        spec = super().design(ctx, index)  # keeps the BSS sequence's bookkeeping
        if self.job is None:
            return spec
        o = self.sequence[1][index % self.p.trials_per_session]
        if self.selection == "generative" or ctx.rng.random() >= self.p.probe_fraction:
            self._decide(ctx, choose("generative", self.job.model, o[None]), index, False)
            return spec
        decision = self.job.choose(self.selection, self._candidates(ctx.rng), ctx.rng, index)
        on = [ch for ch, bit in zip(self.channels, decision.pattern, strict=True) if bit]
        sources = decision.details.get("sources")
        if sources is not None:  # train: a chosen training trial, with its hidden sources
            self._decide(ctx, decision, index, False)
            pattern = StimPattern.single(on, self.pulse, label="bss") if on else None
            return TrialSpec(pattern, tuple(int(v) for v in sources[decision.index]))
        self.probes += 1
        self._pending_probes.add(index)
        self._decide(ctx, decision, index, True)
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
        electrode_sd = self.job.model.electrode_sd()
        x_hat = self.model.predict(decision.candidates) if self.model is not None else None
        ctx.decision(record["choice"], record["candidates"], record["scores"],
                     trial=int(index), probe=probe, job=self.p.job,
                     electrode_sd=_round(electrode_sd, 6),
                     x_hat=None if x_hat is None else _round(x_hat, 6), **details)
        with self._lock:
            self._electrode_sd = electrode_sd
            self._decisions.append({
                "trial": int(index), "probe": probe, "method": decision.method,
                "choice": record["choice"], "scores": record["scores"],
                "prediction": record["prediction"][record["choice"]],
                "sd": record["sd"][record["choice"]]})

    def on_trial(self, ctx, trial):
        with self._lock:
            self._trials += 1
        if self.job is not None:
            self._learn(ctx, trial.o, trial.s, trial.r, trial.index)
            return
        self._calibration.append((trial.o, trial.s, trial.r))
        if len(self._calibration) == self.p.calibration_sessions * self.p.trials_per_session:
            self._start_models(ctx)

    # -- the models ----------------------------------------------------------------------
    def _start_models(self, ctx):
        o, s, r = (np.array(a) for a in zip(*self._calibration, strict=True))
        self._calibration = []
        per = self.p.trials_per_session
        try:
            found = ens.find(TrialData(o, s, r, per))
        except FEPInputError as exc:
            found, self.no_ensembles = None, str(exc)
        # ProtocolError: what to change
        self.job = JOBS[self.p.job](self, o, s, r, found, ctx.rng)
        if found is not None:
            self.ensembles = found
            self.normaliser = OnlineNormaliser(2, per, float(found.responses(r).mean()))
            self.model = OnlineModel(2, 2 * N_PER_GROUP, per, lam=self.values["lambda"])
        for i in range(len(r)):
            self._learn(None, o[i], s[i], r[i], i)
        self._record_start(ctx, len(r))

    def _record_start(self, ctx, trials):
        job = {"job": self.p.job, **self.job.record()}
        if self.model is None:
            ctx.decision(None, kind="calibration", trials=trials,
                         culture_model=f"left out: {self.no_ensembles}", **job)
            ctx.log(f"the culture's model is left out ({self.no_ensembles}); the "
                    f"experimenter's model runs the {self.p.job} job")
            return
        found, model = self.ensembles, self.model
        ctx.decision(None, kind="calibration", trials=trials,
                     baseline=round(self.normaliser.baseline, 4),
                     members_g1=np.flatnonzero(found.members[0]).tolist(),
                     members_g2=np.flatnonzero(found.members[1]).tolist(),
                     session_free_energy=_round(model.session_free_energy),
                     W1=_round(model.weights.W1), W0=_round(model.weights.W0), **job)
        ctx.log(f"models started: ensembles of {found.sizes[0]} and {found.sizes[1]} "
                f"electrodes, baseline {self.normaliser.baseline:.3g} spikes; "
                f"{self.p.job} with {self.job.model.n_outputs} outputs")

    def _learn(self, ctx, o, s, r, index):
        """Update both models with one trial; record it if ctx (not during the replay of
        the calibration trials)."""
        probe = index in self._pending_probes
        self._pending_probes.discard(index)
        extra = self._learn_culture(o, s, r, probe)
        extra.update(self._learn_forward(o, r, index, probe, ctx is not None))
        if ctx is not None:
            ctx.decision(None, kind="update", trial=int(index), probe=probe, **extra)

    def _learn_culture(self, o, s, r, probe):
        """The culture's model learns the trial; its part of the update record."""
        if self.model is None:
            return {}
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
        out = {"x": _round(update.x), "x_hat": _round(update.x_hat),
               "free_energy": round(update.free_energy, 4)}
        if update.session_done is not None:
            out.update(session_free_energy=round(update.session_done, 4),
                       W1=_round(w.W1), W0=_round(w.W0))
        return out

    def _learn_forward(self, o, r, index, probe, measured):
        """The experimenter's model learns the trial: predicted (before) vs observed, and
        after calibration the job's measure."""
        observed = self.job.outputs(r, index)
        predicted, sd = (a[0] for a in self.job.model.predict(np.asarray(o)[None]))
        self.job.model.update(o, observed)
        out = {"observed": _round(observed), "predicted": _round(predicted),
               "sd": _round(sd)}
        if measured:
            out.update(self.job.measure(index, observed, predicted))
        with self._lock:
            self._electrode_sd = self.job.model.electrode_sd()
            if measured:
                self._observed.append((int(index), probe, observed, predicted, sd))
                self._measures.append((int(index), probe, out))
        return out

    # -- for the GUI and the summary -------------------------------------------------------
    def model_state(self):
        """A snapshot of both models for displays; cheap, and safe to call from any thread.

        running, job, selection, trials finished (of calibration_trials before the models
        start), trials_per_session, the stimulated electrodes (the columns of W1, W0 and
        electrode_sd), probes; the culture's model: the latest per-trial free energies
        (nats), observed x and predicted x_hat (trials x 2), W1 and W0 (2 x 32, or None),
        the session free energies (each the sum over its trials_per_session trials, nats);
        the experimenter's model: electrode_sd (32, or None: what is still unknown), and for
        each trial after calibration its trial index, probe flag, observed and predicted
        outputs and sd (trials x outputs), the job's measure per trial (``measure``:
        success for control, target_sd for identify) and ``success_rate`` (control: over
        the last SUCCESS_WINDOW probes, else None); the last decisions with their scores.
        Arrays are copies.
        """
        with self._lock:
            rows = list(self._observed)
            measures = list(self._measures)
            key = {"control": "success", "identify": "target_sd"}.get(self.p.job,
                                                                      "separation")
            values = [m[key] for _, _, m in measures]
            probed = [m["success"] for _, probe, m in measures if probe and key == "success"]
            n_out = self.job.model.n_outputs if self.job is not None else 0
            return {
                "running": self.job is not None,
                "job": self.p.job,
                "selection": self.selection,
                "channels": [int(c) for c in getattr(self, "channels", [])],
                "trials": self._trials,
                "calibration_trials": self.p.calibration_sessions * self.p.trials_per_session,
                "trials_per_session": self.p.trials_per_session,
                "probes": self.probes,
                "free_energy": list(self._free_energy),
                "x": np.array(self._x).reshape(-1, 2),
                "x_hat": np.array(self._x_hat).reshape(-1, 2),
                "W1": None if self._weights is None else self._weights[0].copy(),
                "W0": None if self._weights is None else self._weights[1].copy(),
                "session_free_energy": list(self._session_fe),
                "electrode_sd": (None if self._electrode_sd is None
                                 else self._electrode_sd.copy()),
                "update_trials": [t for t, *_ in rows],
                "update_probe": [p for _, p, *_ in rows],
                "observed": _stack([row[2] for row in rows], n_out),
                "predicted": _stack([row[3] for row in rows], n_out),
                "predicted_sd": _stack([row[4] for row in rows], n_out),
                "measure_name": key,
                "measure": values,
                "success_rate": (float(np.mean(probed[-SUCCESS_WINDOW:])) if probed
                                 else None),
                "decisions": list(self._decisions),
            }

    def summary(self):
        out = super().summary()
        out.update(job=self.p.job, selection=self.selection, probes=self.probes)
        if self.model is not None:
            out["session_free_energy"] = _round(self.model.session_free_energy)
            out["ensemble_sizes"] = [int(n) for n in self.ensembles.members.sum(1)]
        if self.job is not None:
            state = self.model_state()
            out["outputs"] = self.job.model.n_outputs
            if state["success_rate"] is not None:
                out["success_rate_last100"] = round(state["success_rate"], 4)
            if state["measure_name"] == "target_sd" and state["measure"]:
                out["target_sd"] = state["measure"][-1]
        return out
