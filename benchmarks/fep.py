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
- ``--jobs [--seeds 5 --workers 2 --plasticity]``: the experimenter's model in
  ``protocols/fep_closed_loop.py`` on the simulated culture, driven in process trial by
  trial (see :func:`jobs`): identify (targeted, infomax, passive against random: trials to
  reach random's error after 400) and control (efe against random and the best fixed
  pattern, success over the last 100 of 300 trials);
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
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.culture import RATE, THRESHOLD_UV, bss_protocol, run_bss  # noqa: E402
from hardware_sim.culture import NetworkCulture, NetworkParams  # noqa: E402
from hardware_sim.electrodes import ElectrodeArray  # noqa: E402
from mea_control import fep  # noqa: E402
from mea_control.fep import ensembles, model, online, published, selection  # noqa: E402
from mea_control.fep.data import FEPInputError, TrialData  # noqa: E402
from mea_control.layouts import load_layout  # noqa: E402
from mea_control.protocol import load_protocol  # noqa: E402

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
# jobs: the experimenter's model in the protocol, on the simulated culture
# ---------------------------------------------------------------------------------------
#: The simulated runs of --jobs: trials a session, calibration sessions, trials after them.
JOB_TRIALS = {"identify": 400, "control": 300}
JOB_PER, JOB_CALIBRATION = 50, 4
#: identify: test trials of the culture after calibration (truth); control: oracle trials.
TRUTH_TRIALS, ORACLE_REPEATS, ORACLE_SPARSE, ORACLE_CHECK = 1500, 8, 48, 100


class Rig:
    """A simulated culture answering one pattern a trial, as ``run_bss`` drives it; a deep
    copy answers held-out trials from the same state."""

    def __init__(self, seed: int, plasticity: bool) -> None:
        self.layout = load_layout("grid8x8_200um")
        seq_culture, seq_electrodes = np.random.SeedSequence(seed).spawn(2)
        params = NetworkParams(plasticity=plasticity)
        self.culture = NetworkCulture(self.layout, RATE, seed=seq_culture, params=params,
                                      keep_log=False)
        self.electrodes = ElectrodeArray(self.layout, self.culture.unit_positions_um, RATE,
                                         seed=seq_electrodes)
        self.culture.advance(0, int(RATE))  # one second to settle

    def respond(self, protocol, o: np.ndarray) -> np.ndarray:
        """Deliver pattern o (0/1 over the protocol's channels); spikes per electrode."""
        p = protocol.p
        t0, isi = self.culture.next_sample, int(RATE * p.isi_s)
        stims = [(t0, ch, protocol.pulse) for ch, on in zip(protocol.channels, o, strict=True)
                 if on]
        spikes, units = self.culture.advance(t0, isi, stims)
        ev = self.electrodes.events(spikes, units, THRESHOLD_UV)
        win = ((ev.sample >= t0 + int(RATE * p.window_start_ms / 1000))
               & (ev.sample < t0 + int(RATE * p.window_stop_ms / 1000)))
        return np.bincount(ev.channel[win], minlength=self.layout.n_electrodes)


def drive_job(job: str, selection_: str, seed: int, plasticity: bool = False,
              trials: int | None = None, at_start=None, after_trial=None):
    """Run ``protocols/fep_closed_loop.py`` in process on a simulated culture, every trial
    after calibration a probe: the protocol's own design and on_trial, as the engine calls
    them, in fast mode. ``at_start(rig, protocol)`` runs when the models start,
    ``after_trial(protocol, k)`` after each later trial. Returns the protocol."""
    n = trials or JOB_TRIALS[job]
    sessions = JOB_CALIBRATION + -(-n // JOB_PER)
    cls, _ = load_protocol("fep_closed_loop")
    protocol = cls(job=job, selection=selection_, trials_per_session=JOB_PER,
                   calibration_sessions=JOB_CALIBRATION, sessions=sessions, probe_fraction=1.0)
    rig = Rig(seed, plasticity)
    ctx = SimpleNamespace(layout=rig.layout, rng=np.random.default_rng(seed),
                          can_stimulate=lambda ch: bool(rig.layout.can_stimulate[ch]),
                          use_trials=lambda t: t, decision=lambda *a, **k: None,
                          log=lambda message: None)
    protocol.setup(ctx)
    calibration = JOB_CALIBRATION * JOB_PER
    for k in range(calibration + n):
        spec = protocol.design(ctx, k)
        on = {ch for ch, _ in spec.pattern.pulses} if spec.pattern else set()
        o = np.array([ch in on for ch in protocol.channels], np.uint8)
        r = rig.respond(protocol, o)
        protocol.on_trial(ctx, SimpleNamespace(o=o, s=np.asarray(spec.s), r=r, index=k))
        if k == calibration - 1 and at_start:
            at_start(rig, protocol)
        elif k >= calibration and after_trial:
            after_trial(protocol, k - calibration)
    return protocol


def _identify_truth(rig: Rig, protocol, trials: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Held-out trials on a copy of the culture, in random order, each target pattern in
    proportion to its frequency (at least 3 trials): per target the mean response of the
    job's electrodes and its squared standard error (targets x electrodes each)."""
    rig = copy.deepcopy(rig)
    job = protocol.job
    targets, weights = job.targets()
    n = np.maximum(3, np.round(trials * weights).astype(int))
    picks = rng.permutation(np.repeat(np.arange(len(targets)), n))
    r = np.array([rig.respond(protocol, targets[i])[job.electrodes] for i in picks], float)
    mean = np.array([r[picks == t].mean(0) for t in range(len(targets))])
    var = np.array([r[picks == t].var(0, ddof=1) for t in range(len(targets))])
    return mean, var / n[:, None]


IDENTIFY_METHODS = ("random", "targeted", "infomax", "passive")


def _identify_seed(args: tuple[int, bool]) -> tuple[int, dict[str, np.ndarray]]:
    """Per method, the error of the predictions of the targets after each trial: the
    weighted rms over targets and responsive electrodes of predicted - true mean count, the
    truth's own sampling variance subtracted (an unbiased estimate of the squared error).
    Every method starts from the same calibration (same seed); the truth is measured once,
    on a copy of the culture after it."""
    seed, plasticity = args
    truth = {}

    def at_start(rig, protocol):
        if not truth:
            truth["mean"], truth["se2"] = _identify_truth(
                rig, protocol, TRUTH_TRIALS, np.random.default_rng(seed + 10_000))

    out = {}
    for method in IDENTIFY_METHODS:
        errors = []

        def after_trial(protocol, k, errors=errors):
            targets, weights = protocol.job.targets()
            pred, _ = protocol.job.model.predict(targets)
            mse = weights @ ((pred - truth["mean"]) ** 2 - truth["se2"]).mean(1)
            errors.append(np.sqrt(max(mse, 0.0)))

        drive_job("identify", method, seed, plasticity, at_start=at_start,
                  after_trial=after_trial)
        out[method] = np.array(errors)
    return seed, out


def _control_seed(args: tuple[str, int, bool]) -> tuple[str, int, np.ndarray | float]:
    """Success per trial after calibration; for "oracle" the success rate over
    ORACLE_CHECK fresh trials of the best fixed pattern in hindsight for the second half's
    preferred state (best among the BSS patterns, each group alone and random sparse
    ones, ORACLE_REPEATS trials each, on a copy of the culture after calibration)."""
    method, seed, plasticity = args
    out = {}

    def at_start(rig, protocol):
        if method == "oracle":
            out["rate"] = _oracle(rig, protocol, np.random.default_rng(seed + 20_000))

    success = []

    def after_trial(protocol, k):
        success.append(protocol.model_state()["measure"][-1])

    drive_job("control", "random" if method == "oracle" else method, seed, plasticity,
              trials=1 if method == "oracle" else None, at_start=at_start,
              after_trial=after_trial)
    return method, seed, out["rate"] if method == "oracle" else np.array(success, float)


def _oracle(rig: Rig, protocol, rng) -> float:
    job = protocol.job
    last = job.switch + 1  # a trial of the second half: its preferred state
    own = np.unique(protocol.sequence[1], axis=0)
    groups = np.repeat(np.eye(2, dtype=np.uint8), 16, axis=1)
    sparse = np.zeros((ORACLE_SPARSE, 32), np.uint8)
    for row in sparse:
        row[rng.choice(32, rng.integers(1, 17), replace=False)] = 1
    pool = np.concatenate([own, groups, sparse])

    def rate(copy_rig, pattern, n):
        hits = [job.measure(last, job.outputs(copy_rig.respond(protocol, pattern), last),
                            None)["success"] for _ in range(n)]
        return float(np.mean(hits))

    trial_rig = copy.deepcopy(rig)
    order = rng.permutation(np.repeat(np.arange(len(pool)), ORACLE_REPEATS))
    hits = np.zeros(len(pool))
    for i in order:
        hits[i] += rate(trial_rig, pool[i], 1)
    best = pool[int(np.argmax(hits))]
    return rate(copy.deepcopy(rig), best, ORACLE_CHECK)


def _first_below(err: np.ndarray, criterion: float) -> int | None:
    hit = np.flatnonzero(err <= criterion)
    return int(hit[0]) + 1 if len(hit) else None


def jobs(seeds: int, workers: int, plasticity: bool = False,
         parts: tuple[str, ...] = ("identify", "control")) -> dict:
    """The experimenter's model in the loop on the simulated culture (module docstring):
    identify, trials to reach the error random probing reaches at its end (400 trials);
    control, success over the last 100 of 300 trials against random and the oracle."""
    print(f"Jobs on the simulated culture (in process: protocols/fep_closed_loop.py driven "
          f"trial by trial as benchmarks/culture.py's run_bss does, fast mode), {seeds} "
          f"seeds, mixing 0.25, plasticity {'on' if plasticity else 'off'}; calibration "
          f"{JOB_CALIBRATION} sessions of {JOB_PER} trials, then every trial a probe")
    results = {}
    if "identify" in parts:
        results["identify"] = _jobs_identify(seeds, workers, plasticity)
    if "control" in parts:
        results["control"] = _jobs_control(seeds, workers, plasticity)
    return results


def _jobs_identify(seeds, workers, plasticity):
    methods = IDENTIFY_METHODS
    with Pool(workers) as pool:
        done = pool.map(_identify_seed, [(s, plasticity) for s in range(1, seeds + 1)])
    err = {(m, s): e for s, per in done for m, e in per.items()}
    n = JOB_TRIALS["identify"]
    print(f"\nidentify: weighted rms error of the predicted mean counts of the BSS patterns "
          f"(weights: their frequency; truth: {TRUTH_TRIALS} held-out trials), criterion = "
          f"random's error after {n} trials; trials to reach it (>{n}: not reached)")
    print(f"{'seed':>4}  {'criterion':>9}  " + "  ".join(f"{m:>9}" for m in methods)
          + "  " + "  ".join(f"{'random/' + m[:4]:>12}" for m in methods[1:]))
    rows = []
    for s in range(1, seeds + 1):
        crit = err["random", s][-1]
        t = {m: _first_below(err[m, s], crit) or n + 1 for m in methods}
        rows.append({"seed": s, "criterion": float(crit), **{m: t[m] for m in methods},
                     **{f"error_{m}_end": float(err[m, s][-1]) for m in methods}})
        print(f"{s:>4}  {crit:>9.3f}  " + "  ".join(f"{_censored(t[m], n):>9}"
                                                     for m in methods)
              + "  " + "  ".join(f"{t['random'] / t[m]:>12.2f}" for m in methods[1:]))
    med = {m: float(np.median([row["random"] / row[m] for row in rows])) for m in methods[1:]}
    print("median speed-up over random: " + ", ".join(f"{m} {v:.2f}x" for m, v in med.items())
          + f"; over passive: targeted "
          f"{np.median([row['passive'] / row['targeted'] for row in rows]):.2f}x")
    return {"rows": rows, "median_speedup": med}


def _jobs_control(seeds, workers, plasticity):
    methods = ("efe", "random", "oracle")
    runs = [(m, s, plasticity) for s in range(1, seeds + 1) for m in methods]
    with Pool(workers) as pool:
        done = pool.map(_control_seed, runs)
    got = {(m, s): v for m, s, v in done}
    print(f"\ncontrol: share of trials in the preferred state over the last 100 of "
          f"{JOB_TRIALS['control']} (ensemble 1 on and 2 off, swapped after "
          f"{JOB_TRIALS['control'] // 2}); oracle: "
          f"the best fixed pattern in hindsight")
    print(f"{'seed':>4}  {'efe':>6}  {'random':>6}  {'oracle':>6}  {'efe/oracle':>10}")
    rows = []
    for s in range(1, seeds + 1):
        efe, rand = (float(got[m, s][-100:].mean()) for m in ("efe", "random"))
        oracle = got["oracle", s]
        rows.append({"seed": s, "efe": efe, "random": rand, "oracle": oracle})
        print(f"{s:>4}  {efe:>6.2f}  {rand:>6.2f}  {oracle:>6.2f}  "
              f"{efe / oracle if oracle else float('nan'):>10.2f}")
    med = {m: float(np.median([row[m] for row in rows])) for m in methods}
    print("median: " + ", ".join(f"{m} {v:.2f}" for m, v in med.items()))
    return {"rows": rows, "median": med}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--simulated", action="store_true")
    parser.add_argument("--active", action="store_true")
    parser.add_argument("--jobs", action="store_true",
                        help="identify and control on the simulated culture, 5 seeds")
    parser.add_argument("--plasticity", action="store_true",
                        help="jobs: the simulated culture keeps learning (default: off)")
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
    parts = [args.speed, args.simulated, args.active]
    if args.jobs:
        jobs(args.seeds or 5, args.workers, args.plasticity)
        if not any(parts):
            return
    if not any(parts):
        if not args.quick:
            parser.error("choose --speed, --simulated, --active or --quick (all, tiny)")
        parts = [True, True, True]
    q = args.quick
    if (parts[0] or parts[1]) and args.data is None:
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


if __name__ == "__main__":
    main()
