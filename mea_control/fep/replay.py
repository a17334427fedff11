"""Pool-based replay of a recorded culture: the experimenter's model chooses, the recording
answers.

The published design repeats one sequence of patterns every session, so each distinct
pattern has many recorded responses (one per session and occurrence). A replay keeps,
per distinct pattern, a pool of recorded responses to draw and a held-out truth:

- ``shuffled`` (default, drift-free): the pool is the odd sessions' responses in random
  order; the truth is the mean over the even sessions from session 12 on;
- ``chronological``: the pool is the first 10 sessions' responses in session order, and
  the replay walks through them at the recording's pace: trial t (0-based) falls in
  session 1 + t // (trials a session), and a choice returns the pattern's earliest
  unused response from that session or later (earlier ones are past). The truth is
  sessions 11 on. The model then allows drift (a random walk of its weights,
  ``drift_sd``).

Choosing a pattern returns one unused response to it; a pattern whose responses are used
up stops being a candidate. Nothing the model sees is part of the truth.

Jobs (:func:`replay`):

- ``identify`` (selections infomax, targeted, random, passive): the outputs are the
  responsive electrodes (mean count over all trials >= 1), a Poisson
  :class:`~mea_control.fep.forward.ForwardModel` on the stimulated electrodes plus the
  empty and all-electrode indicators. The error after each trial is the RMS of predicted
  mean vs truth over the distinct patterns and responsive electrodes, each pattern
  weighted by how often the recorded sequence delivers it (``error``; ``error_equal``
  weights the patterns equally). The criterion is the error random choice reaches after
  400 trials on that culture with that seed; ``trials_to_criterion`` is the first trial
  whose error is at or below it (None if none).
- ``control`` (selections efe, random): the outputs are the on/off states of the two
  source-preferring ensembles (on: the ensemble's mean response is above its median over
  the recording's trials), a logistic model. The preferred state is ensemble 1 on and 2
  off for the first half of the trials, the reverse for the second half; a trial succeeds
  when the drawn response is in the preferred state. Reported beside the rate over the
  last 100 trials: random choice in the same replay (same seed) and the oracle, the best
  single pattern in hindsight for the last 100 trials' preference, scored on its truth
  responses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mea_control.fep import ensembles, selection
from mea_control.fep.data import FEPInputError, TrialData
from mea_control.fep.forward import ForwardModel

ORDERS = ("shuffled", "chronological")
SELECTIONS = {"identify": ("infomax", "targeted", "random", "passive"),
              "control": ("efe", "random")}
DEFAULT_TRIALS = {"identify": 400, "control": 300}
#: Shuffled: the truth is the even sessions from this one on (1-based; the first sessions
#: drift most). Chronological: the pool is sessions 1 to INITIAL_SESSIONS, the truth after.
TRUTH_FROM = 12
INITIAL_SESSIONS = 10
#: identify: an electrode is an output when its mean count over all trials is at least this.
MIN_MEAN_COUNT = 1.0
#: identify: random choice's error after this many trials is the default criterion.
CRITERION_TRIALS = 400
#: control: the success rate is taken over this many last trials.
LAST = 100
#: The experimenter's model per job and order (tuned on mix50 culture 0, seeds 100-104).
MODELS = {
    ("identify", "shuffled"): dict(link="poisson", prior_sd=0.3, drift_sd=0.0),
    ("identify", "chronological"): dict(link="poisson", prior_sd=0.3, drift_sd=0.01),
    ("control", "shuffled"): dict(link="logistic", prior_sd=1.0, drift_sd=0.0),
    ("control", "chronological"): dict(link="logistic", prior_sd=1.0, drift_sd=0.01),
}
#: efe's precision over G (softmax(-gamma G)); None would be argmin G.
EFE_GAMMA = 4.0


@dataclass
class Pool:
    """Per distinct pattern: the responses a replay may draw (in draw order) and the truth
    responses (held out). ``frequency``: each pattern's share of the recorded trials."""

    patterns: np.ndarray  # P x stimulated electrodes
    frequency: np.ndarray  # P
    responses: list[np.ndarray]  # P arrays, n_p x outputs
    sessions: list[np.ndarray]  # P arrays, n_p: the session (1-based) of each response
    truth: list[np.ndarray]  # P arrays, m_p x outputs
    pace: int | None = None  # chronological: trials a session (None: no clock)
    used: np.ndarray = field(init=False)  # P: responses drawn or passed so far

    def __post_init__(self) -> None:
        self.used = np.zeros(len(self.patterns), int)

    @property
    def size(self) -> int:
        return int(sum(len(r) for r in self.responses))

    def available(self) -> np.ndarray:
        """Which patterns still have an unused response (P, bool)."""
        return self.used < np.array([len(r) for r in self.responses])

    def draw(self, p: int) -> np.ndarray:
        """The next unused recorded response to pattern ``p``."""
        if not self.available()[p]:
            raise IndexError(f"pattern {p}: its {len(self.responses[p])} responses are used up")
        self.used[p] += 1
        return self.responses[p][self.used[p] - 1]

    def at_trial(self, t: int) -> None:
        """Set the clock to replay trial t (0-based): with a pace, the responses recorded
        before its session are past."""
        if self.pace is None or t % self.pace:
            return
        session = 1 + t // self.pace
        for p, at in enumerate(self.sessions):
            self.used[p] = max(self.used[p], int(np.searchsorted(at, session)))

    def truth_mean(self) -> np.ndarray:
        """The mean truth response of each pattern (P x outputs)."""
        return np.stack([t.mean(0) for t in self.truth])


def build_pool(data: TrialData, outputs: np.ndarray, order: str,
               rng: np.random.Generator) -> Pool:
    """The pool and truth of ``outputs`` (trials x outputs, one row per recorded trial) by
    ``order`` (module docstring). Patterns lacking pool or truth responses are left out."""
    if order not in ORDERS:
        raise FEPInputError(f"unknown order {order!r}; one of {', '.join(ORDERS)}")
    sessions = data.n_sessions
    need = TRUTH_FROM if order == "shuffled" else INITIAL_SESSIONS + 1
    if sessions < need:
        raise FEPInputError(f"{data.name or 'the data'}: {sessions} session(s); a {order} "
                            f"replay needs at least {need}")
    session = np.arange(len(outputs)) // data.trials_per_session + 1  # 1-based
    if order == "shuffled":
        in_pool = session % 2 == 1
        in_truth = (session % 2 == 0) & (session >= TRUTH_FROM)
    else:
        in_pool = session <= INITIAL_SESSIONS
        in_truth = session > INITIAL_SESSIONS
    patterns, which = np.unique(data.o, axis=0, return_inverse=True)
    which = which.reshape(-1)
    kept, responses, at, truth = [], [], [], []
    for p in range(len(patterns)):
        pool_trials = np.flatnonzero(in_pool & (which == p))  # in session order
        truth_trials = np.flatnonzero(in_truth & (which == p))
        if not len(pool_trials) or not len(truth_trials):
            continue
        if order == "shuffled":
            pool_trials = rng.permutation(pool_trials)
        kept.append(p)
        responses.append(outputs[pool_trials])
        at.append(session[pool_trials])
        truth.append(outputs[truth_trials])
    if not kept:
        raise FEPInputError(f"{data.name or 'the data'}: no pattern recurs in both the pool "
                            "and the truth sessions; nothing to replay")
    frequency = np.bincount(which, minlength=len(patterns))[kept] / len(which)
    return Pool(patterns[kept].astype(np.uint8), frequency, responses, at, truth,
                None if order == "shuffled" else data.trials_per_session)


# ---------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------
def responsive_electrodes(data: TrialData) -> np.ndarray:
    """Electrodes whose mean count over all trials is at least MIN_MEAN_COUNT (bool)."""
    return np.asarray(data.r, float).mean(0) >= MIN_MEAN_COUNT


def ensemble_states(data: TrialData) -> np.ndarray:
    """On (1) / off (0) of the two source-preferring ensembles per trial (trials x 2): on when
    the ensemble's mean response is above its median over the recording's trials."""
    x = ensembles.find(data).responses(np.asarray(data.r, float))  # 2 x trials
    return (x > np.median(x, axis=1, keepdims=True)).T.astype(np.uint8)


def weighted_rms(prediction: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> float:
    """RMS over patterns (rows, weighted) and outputs (columns, equally)."""
    per_pattern = ((prediction - truth) ** 2).mean(1)
    return float(np.sqrt(per_pattern @ weights / weights.sum()))


# ---------------------------------------------------------------------------------------
# the jobs
# ---------------------------------------------------------------------------------------
Progress = Callable[[float, str], None]


def replay(data: TrialData, job: str, selection_method: str, order: str = "shuffled",
           trials: int | None = None, seed: int = 0, criterion: float | None = None,
           progress: Progress | None = None) -> dict[str, Any]:
    """Replay ``job`` on one culture with one selection method (module docstring): a JSON-
    friendly dict of the settings and the measures."""
    if job not in SELECTIONS:
        raise FEPInputError(f"unknown job {job!r}; one of {', '.join(SELECTIONS)}")
    if selection_method not in SELECTIONS[job]:
        other = next(j for j, s in SELECTIONS.items() if selection_method in s) \
            if any(selection_method in s for s in SELECTIONS.values()) else None
        why = f" ({selection_method} is for {other})" if other else ""
        raise FEPInputError(f"selection {selection_method} does not fit job {job}{why}; "
                            f"{job} takes {', '.join(SELECTIONS[job])}")
    trials = DEFAULT_TRIALS[job] if trials is None else trials
    out = {"job": job, "selection": selection_method, "order": order, "trials": trials,
           "seed": seed, "culture_name": data.name}
    run = _identify if job == "identify" else _control
    out.update(run(data, selection_method, order, trials, seed, criterion,
                   progress or (lambda f, t: None)))
    return out


def _model(job: str, order: str, n_stim: int, n_outputs: int) -> ForwardModel:
    return ForwardModel(n_stim, n_outputs, **MODELS[job, order])


def _check_size(pool: Pool, trials: int, what: str) -> None:
    if trials > pool.size:
        raise FEPInputError(f"{trials} trials is more than the {pool.size} recorded responses "
                            f"{what} can replay")


def _identify(data: TrialData, method: str, order: str, trials: int, seed: int,
              criterion: float | None, progress: Progress) -> dict[str, Any]:
    outputs = responsive_electrodes(data)
    if not outputs.any():
        raise FEPInputError(f"{data.name}: no electrode responds with a mean count >= "
                            f"{MIN_MEAN_COUNT:g}; nothing to identify")
    r = np.asarray(data.r, float)[:, outputs]
    pool = build_pool(data, r, order, np.random.default_rng(seed))
    if len(pool.patterns) < 8:
        raise FEPInputError(f"{data.name}: only {len(pool.patterns)} distinct patterns recur; "
                            "identify needs many (the mix50 design has about 135), a "
                            "condition like mix0 serves control only")
    _check_size(pool, trials, "the pool")
    need_base = criterion is None and not (method == "random" and trials >= CRITERION_TRIALS)
    if criterion is None and pool.size < CRITERION_TRIALS:
        raise FEPInputError(f"the pool holds {pool.size} responses, fewer than the "
                            f"{CRITERION_TRIALS} random trials that set the criterion; give "
                            "--criterion")
    if need_base:  # random choice's error after CRITERION_TRIALS trials, same seed
        base = _identify_run(build_pool(data, r, order, np.random.default_rng(seed)),
                             "random", order, CRITERION_TRIALS, seed,
                             lambda f, t: progress(f / 2, f"criterion: {t}"))
    own = _identify_run(pool, method, order, trials, seed,
                        (lambda f, t: progress(0.5 + f / 2, t)) if need_base else progress)
    out = {"outputs": int(outputs.sum()), "electrodes": np.flatnonzero(outputs).tolist(),
           "patterns": len(pool.patterns), "error_weighting": "frequency", **own}
    if criterion is None:
        criterion = (base if need_base else own)["error"][CRITERION_TRIALS]
        out["criterion_from"] = f"random, {CRITERION_TRIALS} trials, seed {seed}"
    else:
        out["criterion_from"] = "given"
    out["criterion"] = float(criterion)
    hits = np.flatnonzero(np.asarray(own["error"][1:]) <= criterion)
    out["trials_to_criterion"] = int(hits[0]) + 1 if len(hits) else None
    return out


def _identify_run(pool: Pool, method: str, order: str, trials: int, seed: int,
                  progress: Progress) -> dict[str, Any]:
    """Error curves (frequency-weighted and equal-weight; index t = after t trials)."""
    model = _model("identify", order, pool.patterns.shape[1], len(pool.truth[0][0]))
    rng = np.random.default_rng([seed, 1])
    truth = pool.truth_mean()
    equal = np.ones(len(truth))

    def errors() -> tuple[float, float]:
        prediction, _ = model.predict(pool.patterns)
        return (weighted_rms(prediction, truth, pool.frequency),
                weighted_rms(prediction, truth, equal))

    curve, curve_equal = [errors()[0]], [errors()[1]]
    chosen = np.zeros(len(pool.patterns), int)
    for t in range(trials):
        pool.at_trial(t)
        ok = np.flatnonzero(pool.available())
        decision = selection.choose(method, model, pool.patterns[ok], rng,
                                    weights=pool.frequency[ok], targets=pool.patterns,
                                    target_weights=pool.frequency)
        p = ok[decision.index]
        chosen[p] += 1
        model.update(pool.patterns[p], pool.draw(p))
        e, e_equal = errors()
        curve.append(e)
        curve_equal.append(e_equal)
        if (t + 1) % 50 == 0:
            progress((t + 1) / trials, f"{method}: trial {t + 1} of {trials}")
    share = np.round(chosen[np.argsort(-pool.frequency)[:2]] / trials, 4).tolist()
    return {"error": curve, "error_equal": curve_equal,
            "final_error": curve[-1], "final_error_equal": curve_equal[-1],
            "share_of_two_most_frequent": share}


def _control(data: TrialData, method: str, order: str, trials: int, seed: int,
             criterion: float | None, progress: Progress) -> dict[str, Any]:
    if criterion is not None:
        raise FEPInputError("--criterion is for identify; control reports success rates")
    if trials < 2 * LAST:
        raise FEPInputError(f"control needs at least {2 * LAST} trials (the preference "
                            f"switches halfway and the last {LAST} are scored), not {trials}")
    states = ensemble_states(data)
    pool = build_pool(data, states, order, np.random.default_rng(seed))
    _check_size(pool, trials, "the pool")
    own = _control_run(pool, method, order, trials, seed, progress)
    if method == "random":
        base = own
    else:
        base = _control_run(build_pool(data, states, order, np.random.default_rng(seed)),
                            "random", order, trials, seed, lambda f, t: None)
    late = _preferred(trials - 1, trials)
    hit = [(t == late).all(1).mean() for t in pool.truth]
    best = int(np.argmax(hit))
    return {"patterns": len(pool.patterns), "on_fraction": states.mean(0).round(4).tolist(),
            "success": own["success"],
            "success_rate_last100": own["rate"],
            "random_success_rate_last100": base["rate"],
            "oracle_success_rate": float(hit[best]),
            "oracle_pattern": np.flatnonzero(pool.patterns[best]).tolist(),
            "gamma": EFE_GAMMA if method == "efe" else None}


def _preferred(t: int, trials: int) -> np.ndarray:
    """Trial t's (0-based) preferred state: ensemble 1 on, 2 off, then the reverse."""
    return np.array([1, 0]) if t < trials // 2 else np.array([0, 1])


def _control_run(pool: Pool, method: str, order: str, trials: int, seed: int,
                 progress: Progress) -> dict[str, Any]:
    model = _model("control", order, pool.patterns.shape[1], 2)
    rng = np.random.default_rng([seed, 2])
    success = []
    for t in range(trials):
        pool.at_trial(t)
        ok = np.flatnonzero(pool.available())
        want = _preferred(t, trials)
        decision = selection.choose(method, model, pool.patterns[ok], rng,
                                    preferred=np.where(want == 1, 0.99, 0.01),
                                    gamma=EFE_GAMMA)
        p = ok[decision.index]
        y = pool.draw(p)
        model.update(pool.patterns[p], y)
        success.append(bool((y == want).all()))
        if (t + 1) % 50 == 0:
            progress((t + 1) / trials, f"{method}: trial {t + 1} of {trials}")
    return {"success": success, "rate": float(np.mean(success[-LAST:]))}
