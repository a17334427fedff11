"""The free-energy model (``mea_control.fep``): speed, simulated cultures, active probing.

Run ``.venv/bin/python benchmarks/fep.py`` with

- ``--speed``: ``fep.analyze`` on one real culture (25,600 trials; loading excluded) and
  one closed-loop step (``OnlineModel.update`` + ``selection.choose`` over 16 candidate
  patterns for 64 stimulated electrodes), on one core;
- ``--simulated [--seeds 3 --sessions 60]``: the BSS protocol on simulated cultures
  (control, mixing 0.25; mix50, 0.5; plasticity on), analysed like the real ones, beside
  the real cultures of the shared data cut to the same number of sessions;
- ``--active [--seeds 6]``: whether infomax probes estimate the model faster than random
  ones (see :func:`active`);
- ``--replay [--seeds 5 --workers 2]``: the pool-based replay of the real cultures
  (:mod:`mea_control.fep.replay`), identify on mix50 and control on mix50 and mix0, each
  shuffled and chronological, the chosen method against random (and passive for
  identify, the oracle for control), median and range over seeds 0..N-1 (see
  :func:`replay_jobs`);
- ``--quick``: each part tiny (a smoke run for CI; its figures mean nothing).

The real data are found as the tests find them (``$MEA_CONTROL_ISOMURA_DATA``,
``data/isomura2023`` after ``make data``, ``../shared/data/isomura2023``), or given with
``--data DIR``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core; set before numpy and numba load

import argparse  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from multiprocessing import Pool  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.culture import RATE, THRESHOLD_UV, bss_protocol, run_bss  # noqa: E402
from hardware_sim.culture import NetworkParams  # noqa: E402
from hardware_sim.electrodes import ElectrodeArray  # noqa: E402
from mea_control import fep  # noqa: E402
from mea_control.fep import ensembles, model, online, published, replay, selection  # noqa: E402
from mea_control.fep.data import FEPInputError, TrialData  # noqa: E402

DATA = published.locate()
GOAL_ANALYZE_MS = 20.0
GOAL_STEP_P99_US = 1000.0
CONDITIONS = {"control": 0.25, "mix50": 0.5}
REAL = {"control": "mix0", "mix50": "mix50"}  # the real condition beside each simulated one


# ---------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------
def speed(data_dir: Path, runs: int, steps: int) -> None:
    """Time ``fep.analyze`` on real culture mix0[0] and the closed-loop step."""
    data = fep.load(data_dir / "response_data_mix0.mat")[0]
    fep.analyze(data)  # warm up
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fep.analyze(data)
        ms.append((time.perf_counter() - t0) * 1e3)
    print(f"fep.analyze, real culture {data.name} ({len(data.r)} trials, "
          f"{data.n_sessions} sessions), one core, {runs} runs, load excluded")
    verdict = "ok" if np.median(ms) <= GOAL_ANALYZE_MS else "MISS"
    print(f"  {'min ms':>8s} {'median ms':>10s} {'max ms':>8s}  goal")
    print(f"  {min(ms):8.1f} {np.median(ms):10.1f} {max(ms):8.1f}  <= {GOAL_ANALYZE_MS:.0f} ms "
          f"(median) {verdict}")
    print(f"\nclosed-loop step: OnlineModel.update + selection.choose over 16 candidates, "
          f"64 stimulated electrodes, 2 ensembles, lambda {model.LAMBDA:g}, {steps} steps")
    print(f"  {'method':8s} {'CPU p50 us':>10s} {'CPU p99 us':>10s} {'wall p50 us':>11s} "
          f"{'wall p99 us':>11s} {'wall max us':>11s}  goal")
    for method in ("infomax", "efe"):
        cpu, wall = step_times(method, steps)
        p99 = np.percentile(cpu, 99)
        verdict = "ok" if p99 <= GOAL_STEP_P99_US else "MISS"
        print(f"  {method:8s} {np.median(cpu):10.0f} {p99:10.0f} {np.median(wall):11.0f} "
              f"{np.percentile(wall, 99):11.0f} {wall.max():11.0f}  p99 <= "
              f"{GOAL_STEP_P99_US:.0f} us (CPU) {verdict}")


def step_times(method: str, steps: int, warm: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """CPU and wall time (us) of update + choose per step, random responses and candidates."""
    rng = np.random.default_rng(0)
    m = online.OnlineModel(2, 64, 256)
    candidates = (rng.random((warm + steps, 16, 64)) < 0.5).astype(np.uint8)
    x = rng.random((warm + steps, 2))
    cpu = np.empty(warm + steps)
    wall = np.empty(warm + steps)
    pattern = candidates[0, 0]
    for i in range(warm + steps):
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        m.update(pattern, x[i])
        pattern = selection.choose(method, m, candidates[i], rng).pattern
        cpu[i] = time.thread_time_ns() - c0
        wall[i] = time.perf_counter_ns() - w0
    return cpu[warm:] / 1e3, wall[warm:] / 1e3


# ---------------------------------------------------------------------------------------
# simulated cultures beside the real ones
# ---------------------------------------------------------------------------------------
def _simulate(job: tuple[str, int, int, int]) -> tuple[str, TrialData, float]:
    condition, seed, sessions, trials = job
    t0 = time.perf_counter()
    run = run_bss(CONDITIONS[condition], seed, sessions, trials)
    data = TrialData(run["o"], run["s"], run["r"], trials, f"{condition} seed {seed}")
    return condition, data, time.perf_counter() - t0


def figures(data: TrialData, initial: int) -> dict:
    """The analysis' headline figures (own baseline); when it finds no ensemble, why, and
    with sources the sizes the published criteria give."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = fep.analyze(data, initial_sessions=initial)
    except FEPInputError as exc:
        out: dict = {"error": str(exc).split(";")[0]}
        if data.has_sources:
            r, n = data.r.astype(float), data.n_sessions
            ok = ensembles.responsive(r, n)
            sel = ensembles.selectivity(r, data.s, n).mean(0)
            out["n_g1"] = int((ok & (sel > ensembles.MIN_SELECTIVITY)).sum())
            out["n_g2"] = int((ok & (sel < -ensembles.MIN_SELECTIVITY)).sum())
        return out
    f = a.free_energy
    n1, n2 = a.ensembles.sizes
    return {"n_g1": n1, "n_g2": n2, "corr_post": a.corr_post, "mse_post": a.mse_post,
            "F_first": f[0], "F_last": f[-1], "decrease": (f[0] - f[-1]) / f[0]}


SIM_HEAD = (f"  {'culture':20s} {'n_g1/n_g2':>9s} {'corr_post':>9s} {'mse_post':>8s} "
            f"{'F first':>8s} {'F last':>8s} {'F decrease':>10s}")


def _sim_row(label: str, f: dict) -> str:
    sizes = f"{f['n_g1']:.0f}/{f['n_g2']:.0f}" if "n_g1" in f else "-"
    if "error" in f:
        return f"  {label:20s} {sizes:>9s}   not analysed: {f['error']}"
    corr = "n/a" if f["corr_post"] is None else f"{f['corr_post']:.3f}"
    return (f"  {label:20s} {sizes:>9s} {corr:>9s} {f['mse_post']:8.3f} {f['F_first']:8.0f} "
            f"{f['F_last']:8.0f} {f['decrease']:10.1%}")


def _mean_row(label: str, rows: list[dict]) -> str:
    done = [f for f in rows if "error" not in f and f["corr_post"] is not None]
    if not done:
        return f"  {label:18s} no culture analysed (of {len(rows)})"
    out = []
    for key, fmt in (("n_g1", ".1f"), ("n_g2", ".1f"), ("corr_post", ".3f"),
                     ("mse_post", ".3f"), ("decrease", ".1%")):
        v = [f[key] for f in done]
        out.append(f"{key} {np.mean(v):{fmt}} +- {np.std(v):{fmt}}")
    return f"  {label:18s} {len(done)} of {len(rows)}: " + ", ".join(out)


def simulated(seeds: int, sessions: int, trials: int, initial: int, workers: int,
              data_dir: Path) -> None:
    """BSS on simulated cultures, analysed with ``fep.analyze``, beside the real cultures
    (their first ``sessions`` sessions)."""
    jobs = [(c, seed, sessions, trials) for c in CONDITIONS for seed in range(seeds)]
    print(f"simulated: {seeds} seeds x {len(CONDITIONS)} conditions, {sessions} sessions x "
          f"{trials} trials, plasticity on; fep.analyze with {initial} initial sessions, "
          f"each culture's own baseline; {workers} worker(s); real cultures: {data_dir}, "
          f"their first {sessions} sessions")
    rows: dict[str, list[tuple[str, dict]]] = {}
    with Pool(workers) as pool:
        for condition, data, seconds in pool.imap_unordered(_simulate, jobs):
            print(f"  {data.name}: simulated in {seconds:.0f} s", flush=True)
            rows.setdefault(f"simulated {condition}", []).append(
                (data.name, figures(data, initial)))
    for name in REAL.values():
        path = data_dir / f"response_data_{name}.mat"
        for i, data in enumerate(fep.load(path) if path.exists() else []):
            n = min(sessions, data.n_sessions) * data.trials_per_session
            cut = TrialData(data.o[:n], data.s[:n], data.r[:n], data.trials_per_session)
            rows.setdefault(f"real {name}", []).append((f"real {name} {i}",
                                                        figures(cut, initial)))
    order = [k for c in CONDITIONS for k in (f"simulated {c}", f"real {REAL[c]}")]
    print("\n" + SIM_HEAD)
    for key in order:
        for label, f in sorted(rows.get(key, [])):
            print(_sim_row(label, f))
    print("\nper condition, mean +- SD over the cultures analysed")
    for key in order:
        print(_mean_row(key, [f for _, f in rows.get(key, [])]))


# ---------------------------------------------------------------------------------------
# active probing
# ---------------------------------------------------------------------------------------
class Probe:
    """A simulated culture answering one pattern a second, as ``run_bss`` drives it."""

    def __init__(self, run: dict, seed: int, mixing: float) -> None:
        self.culture, self.channels = run["culture"], run["channels"]
        layout = self.culture.layout
        seq = np.random.SeedSequence(seed).spawn(2)[1]  # run_bss's electrode seed
        self.electrodes = ElectrodeArray(layout, self.culture.unit_positions_um, RATE, seed=seq)
        protocol, _ = bss_protocol(layout, mixing, seed, 1, 256)
        self.pulse, p = protocol.pulse, protocol.p
        self.isi = int(RATE * p.isi_s)
        self.window = (int(RATE * p.window_start_ms / 1000), int(RATE * p.window_stop_ms / 1000))

    def respond(self, o: np.ndarray) -> np.ndarray:
        """Deliver pattern o (0/1 over the stimulation channels); spikes per electrode."""
        t0 = self.culture.next_sample
        stims = [(t0, ch, self.pulse) for ch, on in zip(self.channels, o, strict=True) if on]
        spikes, units = self.culture.advance(t0, self.isi, stims)
        ev = self.electrodes.events(spikes, units, THRESHOLD_UV)
        lo, hi = self.window
        win = (ev.sample >= t0 + lo) & (ev.sample < t0 + hi)
        return np.bincount(ev.channel[win], minlength=self.culture.layout.n_electrodes)


def bss_patterns(rng: np.random.Generator, shape: tuple[int, ...], mixing: float) -> np.ndarray:
    """Patterns drawn as the BSS protocol draws them (its two sources, 16 + 16 electrodes)."""
    s = (rng.random((*shape, 2)) < 0.5).astype(np.uint8)
    group = np.repeat([0, 1], 16)
    follow = np.where(rng.random((*shape, 32)) < mixing, 1 - group, group)
    return np.take_along_axis(s, follow, -1)


def active(seeds: int, calibration: tuple[int, int], probes: int, tests: int, repeats: int,
           lams: tuple[float, ...], candidates: int = 16, mixing: float = 0.25,
           every: int = 10, fractions: tuple[float, ...] = (0.5, 0.9)) -> None:
    """Does infomax pay? Probe trials to estimate the model, infomax vs random choice.

    Each seed: a culture without plasticity (homeostasis on), so what it answers does
    not drift with the probes, is first driven with the BSS protocol (``calibration``:
    sessions x trials). That finds the ensembles (published criteria) and fixes the
    normaliser x = clip(1/2 + (m - mean) / (2 SD), 0, 1), with m an ensemble's mean
    response and mean, SD over the calibration, and the thresholds (phi). The culture
    is then copied, state and random generators included, for the truth and each arm.

    Truth: ``tests`` patterns drawn as the protocol draws them, each delivered
    ``repeats`` times in shuffled order; the truth is each pattern's mean x (K x tests).

    Arms: an ``OnlineModel`` (prior ``lam``, the calibration's thresholds) learns from
    ``probes`` trials; each trial offers the same ``candidates`` patterns (drawn as the
    protocol draws them) to both arms, and ``infomax`` (``selection.choose``) or a
    uniformly random choice picks one. The random arm's choices do not depend on the
    model, so one random run feeds a model for every lambda. Error: RMS over ensembles
    and test patterns of the model's predicted x minus the truth, after every ``every``
    probes. Level f: the start error (the prior's) minus f times the improvement the
    random arm reaches with all its probes; trials-to-level is the first count from
    which the error stays at or under the level until the last probe.

    Lambda: the published 3000 and a weak 10. 3000 does not swamp a few hundred probes
    here: a prediction sums the small weight changes of 32 electrodes. With 10 the
    weights are the data's, and the model's over-confidence shows.

    Per seed the table also gives the homeostatic E->E gain when the culture is copied
    and after the truth trials (how far it drifts over that many trials), and the
    standard error of the truth (sets a floor under the error).
    """
    print(f"active probing: {seeds} seeds; culture without plasticity (homeostasis on); "
          f"calibration {calibration[0]} x {calibration[1]} BSS trials (mixing {mixing}); "
          f"truth: {tests} test patterns x {repeats} repeats; {probes} probes per arm, "
          f"{candidates} candidates a trial; OnlineModel lambda "
          + ", ".join(f"{lam:g}" for lam in lams))
    levels = " ".join(f"{'to ' + format(f, '.0%') + ' r/i':>11s}" for f in fractions)
    print(f"  {'seed':>4s} {'n_g1/n_g2':>9s} {'E->E gain':>9s} {'truth SE':>8s} "
          f"{'lambda':>6s} {'start':>6s} {'random end':>10s} {'infomax end':>11s} {levels}")
    done = []
    for seed in range(seeds):
        try:
            out = _active_seed(seed, calibration, probes, tests, repeats, lams, candidates,
                               mixing, every)
        except FEPInputError as exc:
            print(f"  {seed:4d} skipped: {exc}")
            continue
        done.append(out)
        n1, n2 = out["sizes"]
        for lam in lams:
            rand, info = out[lam]["random"], out[lam]["infomax"]
            out[lam]["trials"] = {f: _trials_to(rand, info, f, every) for f in fractions}
            cells = " ".join(f"{_censored(a, probes):>5s}/{_censored(b, probes):<5s}"
                             for a, b in out[lam]["trials"].values())
            print(f"  {seed:4d} {f'{n1}/{n2}':>9s} {out['gain'][0]:4.2f}>{out['gain'][1]:4.2f} "
                  f"{out['se']:8.3f} {lam:6g} {rand[0]:6.3f} {rand[-1]:10.3f} "
                  f"{info[-1]:11.3f} {cells}", flush=True)
    if not done:
        return
    marks = sorted({n - n % every for n in (0, 25, 50, 100, 200, 400, 800, probes)
                    if n <= probes})
    print("\nerror (RMS, x units) after n probes, mean +- SD over seeds")
    print(f"  {'lambda':>6s} {'arm':>7s} " + " ".join(f"{n:>13d}" for n in marks))
    for lam in lams:
        for arm in ("random", "infomax"):
            e = np.array([o[lam][arm][[n // every for n in marks]] for o in done])
            print(f"  {lam:6g} {arm:>7s} " + " ".join(
                f"{a:6.3f} +-{b:5.3f}" for a, b in zip(e.mean(0), e.std(0), strict=True)))
    print(f"\ntrials to level, random / infomax (> 1: infomax pays), over seeds; where infomax "
          f"never stays under the level within {probes} probes the ratio is at most "
          f"random's trials / {probes} (marked <)")
    for lam in lams:
        for f in fractions:
            pairs = [o[lam]["trials"][f] for o in done if o[lam]["trials"][f][0] is not None]
            ratio = [(a / (b if b > 0 else probes), b < 0) for a, b in pairs]
            cells = ", ".join(f"{'<' if c else ''}{r:.2f}" for r, c in ratio) or "-"
            bound = "<" if ratio and all(c for _, c in ratio) else ""
            med = f"median {bound}{np.median([r for r, _ in ratio]):.2f}" if ratio else "no seed"
            print(f"  lambda {lam:g}, level {f:.0%} of random's improvement: {med} ({cells}); "
                  f"random's error does not fall in {len(done) - len(pairs)} seed(s)")
        sizes = {arm: np.mean([o[lam][arm + "_pulsed"] for o in done]) for arm in
                 ("random", "infomax")}
        empty = {arm: np.mean([o[lam][arm + "_empty"] for o in done]) for arm in
                 ("random", "infomax")}
        print(f"  lambda {lam:g}, probes chosen: {sizes['random']:.1f} / {sizes['infomax']:.1f} "
              f"electrodes pulsed (random / infomax), {empty['random']:.0%} / "
              f"{empty['infomax']:.0%} without a pulse")
        split = {arm: np.array([o[lam][arm + "_split"] for o in done]) for arm in
                 ("random", "infomax")}
        cells = " / ".join(
            ", ".join("-" if np.isnan(v).all() else f"{np.nanmean(v):.3f}" for v in split[arm].T)
            for arm in ("random", "infomax"))
        print(f"  lambda {lam:g}, error after {probes} probes on the test patterns with a pulse, "
              f"without (random / infomax): {cells}")


def _censored(n: int | None, probes: int) -> str:
    return "-" if n is None else (f">{probes}" if n < 0 else str(n))


def _trials_to(rand: np.ndarray, info: np.ndarray, fraction: float,
               every: int) -> tuple[int | None, int | None]:
    """Probes from which each arm's error stays <= the level (see ``active``): None for
    both when random's error does not fall, -1 for an arm that never stays under it."""
    if rand[-1] >= rand[0]:
        return None, None
    level = rand[0] - fraction * (rand[0] - rand[-1])

    def first(err: np.ndarray) -> int:
        above = np.flatnonzero(err > level)
        if not len(above):
            return 0
        return -1 if above[-1] == len(err) - 1 else int(above[-1] + 1) * every

    return first(rand), first(info)


def _active_seed(seed: int, calibration: tuple[int, int], probes: int, tests: int,
                 repeats: int, lams: tuple[float, ...], candidates: int, mixing: float,
                 every: int) -> dict:
    sessions, per = calibration
    run = run_bss(mixing, seed, sessions, per, NetworkParams(plasticity=False))
    groups = ensembles.by_sources(run["r"].astype(float), run["s"], sessions)
    raw = groups.responses(run["r"])
    mean, sd = raw.mean(1, keepdims=True), raw.std(1, ddof=1, keepdims=True)

    def norm(r: np.ndarray) -> np.ndarray:  # trials x electrodes -> trials x K
        return np.clip(0.5 + (groups.responses(np.atleast_2d(r)) - mean) / sd / 2, 0, 1).T

    th = model.Thresholds.fit(norm(run["r"]).T)
    k = len(th.phi1)
    probe = Probe(run, seed, mixing)
    gain = [probe.culture.homeostatic_state()[0]]
    rng = np.random.default_rng([seed, 1])
    test = bss_patterns(rng, (tests,), mixing)
    order = rng.permutation(np.repeat(np.arange(tests), repeats))
    p = copy.deepcopy(probe)
    xs = np.concatenate([norm(p.respond(test[i])) for i in order])
    gain.append(p.culture.homeostatic_state()[0])
    truth = np.stack([xs[order == i].mean(0) for i in range(tests)])  # tests x K
    se = np.sqrt(np.mean([xs[order == i].var(0, ddof=1) for i in range(tests)]) / repeats)
    out: dict = {"sizes": groups.sizes, "gain": gain, "se": float(se)}
    offers = bss_patterns(np.random.default_rng([seed, 2]), (probes, candidates), mixing)
    runs = [("random", lams)] + [("infomax", (lam,)) for lam in lams]
    for arm, arm_lams in runs:
        p = copy.deepcopy(probe)
        models = [online.OnlineModel(k, 32, per, lam=lam, thresholds=th) for lam in arm_lams]
        pick = np.random.default_rng([seed, 3])
        err = [[_rms(m.predict(test), truth)] for m in models]
        pulsed = []
        for n in range(probes):
            if arm == "random":
                o = offers[n, pick.integers(candidates)]
            else:
                o = selection.choose("infomax", models[0], offers[n]).pattern
            pulsed.append(int(o.sum()))
            x = norm(p.respond(o))[0]
            for i, m in enumerate(models):
                m.update(o, x)
                if (n + 1) % every == 0:
                    err[i].append(_rms(m.predict(test), truth))
        empty = test.sum(1) == 0
        for lam, e, m in zip(arm_lams, err, models, strict=True):
            x_hat = m.predict(test)
            split = [_rms(x_hat[w], truth[w]) if w.any() else np.nan for w in (~empty, empty)]
            out.setdefault(lam, {}).update({arm: np.array(e), arm + "_pulsed": np.mean(pulsed),
                                            arm + "_empty": np.mean(np.equal(pulsed, 0)),
                                            arm + "_split": split})
    return out


def _rms(x_hat: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x_hat - truth) ** 2)))


# ---------------------------------------------------------------------------------------
# the jobs replayed on the real cultures
# ---------------------------------------------------------------------------------------
REPLAY_JOBS = (("identify", "mix50"), ("control", "mix50"), ("control", "mix0"))
IDENTIFY_METHODS = ("targeted", "infomax", "passive")
GOAL_IDENTIFY_VS_RANDOM, GOAL_IDENTIFY_VS_PASSIVE, GOAL_CONTROL_OF_ORACLE = 2.0, 1.5, 0.8
_CULTURES: dict[str, list[TrialData]] = {}


def _replay_case(case: tuple[Path, str, str, int, str, int, int]) -> tuple[tuple, dict]:
    """One culture, job, order and seed: {method: trials to criterion} (identify; None
    when not reached) or the control rates."""
    data_dir, job, condition, culture, order, seed, trials = case
    if condition not in _CULTURES:
        _CULTURES[condition] = fep.load(data_dir / f"response_data_{condition}.mat")
    data = _CULTURES[condition][culture]
    if job == "control":
        out = replay.replay(data, "control", "efe", order, trials, seed)
        return case[1:6], {k: out[k] for k in ("success_rate_last100",
                                               "random_success_rate_last100",
                                               "oracle_success_rate")}
    base = replay.replay(data, "identify", "random", order, replay.CRITERION_TRIALS, seed)
    got = {"random": base["trials_to_criterion"], "criterion": base["criterion"]}
    for method in IDENTIFY_METHODS:
        got[method] = replay.replay(data, "identify", method, order, trials, seed,
                                    base["criterion"])["trials_to_criterion"]
    return case[1:6], got


def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    v = np.asarray(values, float)
    return f"{fmt.format(np.median(v))} [{fmt.format(v.min())}-{fmt.format(v.max())}]"


def replay_jobs(seeds: int, workers: int, data_dir: Path, quick: bool = False) -> None:
    """The identify and control jobs replayed on the real cultures (module docstring): per
    culture, order and job, the median and range over seeds. Identify: trials to reach the
    criterion (random's frequency-weighted error after 400 trials, same seed), a method
    that does not reach it in ``trials`` counts as ``trials`` (so its gain is an upper
    bound, marked >). Control: the success rate over the last 100 of 300 trials."""
    orders = ("shuffled",) if quick else replay.ORDERS
    identify_trials = 60 if quick else replay.CRITERION_TRIALS
    cases = [(data_dir, job, cond, c, order, seed,
              identify_trials if job == "identify" else replay.DEFAULT_TRIALS[job])
             for job, cond in REPLAY_JOBS for order in orders for c in range(1 if quick else 4)
             for seed in range(seeds)]
    print(f"replay of the real cultures ({data_dir}), seeds 0-{seeds - 1}, {len(cases)} cases; "
          "settings tuned on mix50 culture 0 with seeds 100-104 (not these)")
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        results = dict(pool.map(_replay_case, cases))
    for job, cond in REPLAY_JOBS:
        for order in orders:
            rows = {c: [results[job, cond, c, order, s] for s in range(seeds)]
                    for c in range(1 if quick else 4)}
            (_identify_table if job == "identify" else _control_table)(cond, order, rows,
                                                                         identify_trials)
    print(f"\n({time.perf_counter() - t0:.0f} s, {workers} worker(s))")


def _identify_table(cond: str, order: str, rows: dict[int, list[dict]], trials: int) -> None:
    print(f"\nidentify, {cond}, {order}: trials to the criterion (median [range] over seeds); "
          "gain = random / method and passive / method, per seed, median")
    print(f"  {'culture':8s} {'random':>12s} {'passive':>12s} {'infomax':>12s} {'targeted':>12s}"
          f" {'targeted vs random':>19s} {'vs passive':>11s} {'infomax vs random':>18s}")
    gains: dict[str, list[float]] = {"random": [], "passive": [], "infomax": []}
    for c, seeds in rows.items():
        n = {m: [trials if s[m] is None else s[m] for s in seeds]
             for m in ("random", *IDENTIFY_METHODS)}
        censored = {m: any(s[m] is None for s in seeds) for m in n}
        g = {"random": np.median(np.divide(n["random"], n["targeted"])),
             "passive": np.median(np.divide(n["passive"], n["targeted"])),
             "infomax": np.median(np.divide(n["random"], n["infomax"]))}
        for k, v in g.items():
            gains[k].append(float(v))
        cells = [_spread(n[m]) + ("+" if censored[m] else " ")
                 for m in ("random", "passive", "infomax", "targeted")]
        print(f"  {c:<8d} {cells[0]:>12s} {cells[1]:>12s} {cells[2]:>12s} {cells[3]:>12s} "
              f"{g['random']:18.2f}x {g['passive']:10.2f}x {g['infomax']:17.2f}x")
    vr, vp = np.median(gains["random"]), np.median(gains["passive"])
    print(f"  median over cultures: targeted {vr:.2f}x fewer trials than random (goal "
          f">= {GOAL_IDENTIFY_VS_RANDOM:g}x: {'ok' if vr >= GOAL_IDENTIFY_VS_RANDOM else 'MISS'}),"
          f" {vp:.2f}x than passive (goal >= {GOAL_IDENTIFY_VS_PASSIVE:g}x: "
          f"{'ok' if vp >= GOAL_IDENTIFY_VS_PASSIVE else 'MISS'}); infomax "
          f"{np.median(gains['infomax']):.2f}x than random"
          "   (+: some seed never reached it; counted as the last trial)")


def _control_table(cond: str, order: str, rows: dict[int, list[dict]], _trials: int) -> None:
    print(f"\ncontrol, {cond}, {order}: success over the last 100 of 300 trials "
          "(median [range] over seeds)")
    print(f"  {'culture':8s} {'efe':>16s} {'random':>16s} {'oracle':>16s} {'efe / oracle':>13s}")
    fractions = []
    for c, seeds in rows.items():
        efe = [s["success_rate_last100"] for s in seeds]
        rnd = [s["random_success_rate_last100"] for s in seeds]
        ora = [s["oracle_success_rate"] for s in seeds]
        frac = float(np.median(np.divide(efe, np.maximum(ora, 1e-9))))
        fractions.append(frac)
        print(f"  {c:<8d} {_spread(efe, '{:.2f}'):>16s} {_spread(rnd, '{:.2f}'):>16s} "
              f"{_spread(ora, '{:.2f}'):>16s} {frac:12.2f}")
    f = np.median(fractions)
    print(f"  median over cultures: efe reaches {f:.2f} of the oracle (goal >= "
          f"{GOAL_CONTROL_OF_ORACLE:g}: {'ok' if f >= GOAL_CONTROL_OF_ORACLE else 'MISS'})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--simulated", action="store_true")
    parser.add_argument("--active", action="store_true")
    parser.add_argument("--replay", action="store_true", help="the jobs on the real cultures")
    parser.add_argument("--probes", type=int, default=400, help="active: probe trials per arm")
    parser.add_argument("--lam", type=float, nargs="+", default=[model.LAMBDA, 10.0],
                        help="active: the model's lambda(s)")
    parser.add_argument("--quick", action="store_true", help="each part tiny (CI smoke run)")
    parser.add_argument("--seeds", type=int, help="cultures per condition (default 3; active 6)")
    parser.add_argument("--sessions", type=int, default=60, help="simulated sessions")
    parser.add_argument("--trials", type=int, default=256, help="trials per simulated session")
    parser.add_argument("--initial", type=int, default=10, help="initial sessions of analyze")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA, help="the isomura2023 folder")
    args = parser.parse_args(argv)
    parts = [args.speed, args.simulated, args.active, args.replay]
    if not any(parts):
        if not args.quick:
            parser.error("choose --speed, --simulated, --active, --replay or --quick (all, "
                         "tiny)")
        parts = [True, True, True, True]
    q = args.quick
    if (parts[0] or parts[1] or parts[3]) and args.data is None:
        parser.error(f"the published data are missing: {published.HOW_TO_GET}, or give --data DIR")
    if parts[0]:
        speed(args.data, 3 if q else 50, 300 if q else 5000)
    if parts[1]:
        print()
        simulated(args.seeds or (1 if q else 3), 3 if q else args.sessions,
                  64 if q else args.trials, 1 if q else args.initial, args.workers, args.data)
    if parts[2]:
        print()
        active(args.seeds or (1 if q else 6), (2, 64) if q else (4, 256),
               40 if q else args.probes, 8 if q else 32, 4 if q else 24, tuple(args.lam))
    if parts[3]:
        print()
        replay_jobs(args.seeds or (1 if q else 5), args.workers, args.data, q)


if __name__ == "__main__":
    main()
