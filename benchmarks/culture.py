"""The network culture: speed, spontaneous activity, and learning under the BSS protocol.

Run: ``.venv/bin/python benchmarks/culture.py`` for speed (fast mode over the whole
BSS protocol, raw mode in 1 ms blocks) and activity figures;
``--learning --seeds 5 --sessions 100`` for the learning comparison (control
mixing=0.25, mix50 mixing=0.5, control without plasticity but with homeostasis),
with the published criteria for source-preferring electrodes (Isomura et al. 2023; see
``mea_control/fep/ensembles.py``); ``--real DIR`` puts the simulated culture's BSS
responses beside the real cultures' in that folder (mix0 and mix50; ``make data`` puts
them in ``data/isomura2023``).

Fast mode advances the culture one trial (1 s) at a time and turns its spikes
into electrode events with :meth:`ElectrodeArray.events` (threshold 5 x 7 uV),
without rendering voltage. The stimulation comes from the protocol class
itself (``protocols/bss_isomura.py``: its electrode choice and its trial design).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware_sim.cultures.network import NetworkCulture, NetworkParams  # noqa: E402
from hardware_sim.electrodes import ElectrodeArray  # noqa: E402
from mea_control.bursts import network_bursts, starts_and_stops  # noqa: E402
from mea_control.fep.ensembles import by_sources  # noqa: E402
from mea_control.layouts import load_layout  # noqa: E402
from mea_control.protocol import load_protocol  # noqa: E402

RATE = 25000.0
THRESHOLD_UV = 35.0  # 5 sigma at 7 uV rms
CONDITIONS = {
    "control": (0.25, True),
    "mix50": (0.5, True),
    "control-noplast": (0.25, False),
}


def bss_protocol(layout, mixing: float, seed: int, sessions: int, trials: int):
    """The BSS protocol, set up for ``layout`` outside the engine (its own design)."""
    cls, _ = load_protocol("bss_isomura")
    protocol = cls(mixing=mixing, sessions=sessions, trials_per_session=trials)
    ctx = SimpleNamespace(
        layout=layout,
        can_stimulate=lambda ch: bool(layout.can_stimulate[ch]),
        rng=np.random.default_rng(seed),
        use_trials=lambda trials: trials,
    )
    protocol.setup(ctx)
    return protocol, ctx


def run_bss(
    mixing: float, seed: int, sessions: int, trials: int, params: NetworkParams | None = None
) -> dict[str, np.ndarray]:
    """Drive a culture with the BSS protocol in fast mode: s, o, r per trial, and the culture."""
    layout = load_layout("grid8x8_200um")
    seq_culture, seq_electrodes = np.random.SeedSequence(seed).spawn(2)
    culture = NetworkCulture(layout, RATE, seed=seq_culture, params=params, keep_log=False)
    electrodes = ElectrodeArray(layout, culture.unit_positions_um, RATE, seed=seq_electrodes)
    protocol, ctx = bss_protocol(layout, mixing, seed, sessions, trials)
    n = sessions * trials
    isi = int(RATE * protocol.p.isi_s)
    lo = int(RATE * protocol.p.window_start_ms / 1000)
    hi = int(RATE * protocol.p.window_stop_ms / 1000)
    s = np.zeros((n, 2), np.uint8)
    o = np.zeros((n, len(protocol.channels)), np.uint8)
    r = np.zeros((n, layout.n_electrodes), np.int32)
    culture.advance(0, isi)  # one second to settle
    for k in range(n):
        t0 = (k + 1) * isi
        spec = protocol.design(ctx, k)
        stims = [(t0, ch, p) for ch, p in spec.pattern.pulses] if spec.pattern else []
        spikes, units = culture.advance(t0, isi, stims)
        ev = electrodes.events(spikes, units, THRESHOLD_UV)
        win = (ev.sample >= t0 + lo) & (ev.sample < t0 + hi)
        r[k] = np.bincount(ev.channel[win], minlength=layout.n_electrodes)
        s[k] = spec.s
        on = {ch for ch, _ in spec.pattern.pulses} if spec.pattern else set()
        o[k] = [ch in on for ch in protocol.channels]
    return {"s": s, "o": o, "r": r, "culture": culture, "channels": protocol.channels}


def summarise(r: np.ndarray, s: np.ndarray, sessions: int) -> dict[str, float]:
    """Counts and mean selectivity of each ensemble (all sessions, first 10, last 10);
    the responsive electrodes' mean |selectivity| in the first and last 10 sessions, also
    over their mean response there (``rel_*``: how much of a response the source decides,
    whatever the response's size)."""
    e = by_sources(r, s, sessions)
    sel = e.selectivity
    m = min(10, max(1, sessions // 2))
    out = {"n1": int(e.members[0].sum()), "n2": int(e.members[1].sum())}
    for name, members in (("e1", e.members[0]), ("e2", e.members[1])):
        for part, rows in (("all", slice(None)), ("first", slice(0, m)), ("last", slice(-m, None))):
            out[f"{name}_{part}"] = float(sel[rows][:, members].mean()) if members.any() else 0.0
    resp = e.responsive
    for part, rows in (("first", slice(0, m)), ("last", slice(-m, None))):
        out[f"abs_{part}"] = float(np.abs(sel[rows][:, resp]).mean()) if resp.any() else 0.0
        size = r.reshape(sessions, -1, r.shape[1])[rows][..., resp].mean() if resp.any() else 0.0
        out[f"rel_{part}"] = out[f"abs_{part}"] / size if size > 0 else 0.0
    out["mean_r"] = float(r.mean())
    return out


def response_figures(r: np.ndarray, s: np.ndarray, sessions: int) -> dict[str, float]:
    """How responses to BSS patterns look: their size, the activity without a pulse, how
    often a trial is all-or-none (array mean above twice the median + 1), the source-
    preferring electrodes' answer to their own and to the other source, the response to
    both sources over the response to one (2 when responses add up), and the response to
    one source after a trial without pulses over that after a trial with pulses (1 when
    the last trial leaves no trace)."""
    r = r.astype(float)
    m = r.mean(1)
    e = by_sources(r, s, sessions)
    a = (s[:, 0] == 1) & (s[:, 1] == 0)
    b = (s[:, 0] == 0) & (s[:, 1] == 1)
    e1, e2 = e.members
    own = np.concatenate([r[a][:, e1].mean(0), r[b][:, e2].mean(0)])
    other = np.concatenate([r[b][:, e1].mean(0), r[a][:, e2].mean(0)])
    one, both = s.sum(1) == 1, s.sum(1) == 2
    after_rest = np.r_[False, s[:-1].sum(1) == 0]
    return {
        "r": float(m.mean()),
        "no_pulse": float(r[s.sum(1) == 0].mean()),
        "all_or_none": float(np.mean(m > 2 * np.median(m) + 1)),
        "responsive": float(e.responsive.sum()),
        "preferring": float(e1.sum() + e2.sum()),
        "own": float(own.mean()) if len(own) else 0.0,
        "other": float(other.mean()) if len(other) else 0.0,
        "both_over_one": float(m[both].mean() / m[one].mean()),
        "after_rest": float(m[one & after_rest].mean() / m[one & ~after_rest].mean()),
    }


def compare_real(folder: Path, seed: int, sessions: int) -> None:
    """The real cultures' BSS responses (mix0, mix50) beside the simulated culture's."""
    from scipy.io import loadmat

    print(f"{'':22s} {'r':>5s} {'no pulse':>8s} {'all-or-none':>11s} {'responsive':>10s} "
          f"{'preferring':>10s} {'own source':>10s} {'other':>6s} {'both/one':>8s} "
          f"{'after rest':>10s}")

    def row(label: str, f: dict[str, float]) -> None:
        print(f"{label:22s} {f['r']:5.2f} {f['no_pulse']:8.2f} {f['all_or_none']:11.0%} "
              f"{f['responsive']:10.0f} {f['preferring']:10.0f} {f['own']:10.1f} {f['other']:6.1f} "
              f"{f['both_over_one']:8.2f} {f['after_rest']:10.2f}", flush=True)

    for name, mixing in (("mix0", 0.0), ("mix50", 0.5)):
        path = folder / f"response_data_{name}.mat"
        if path.exists():
            for i, c in enumerate(loadmat(path, simplify_cells=True)[f"data_{name}"]):
                trials = len(c["s"]) // 256
                row(f"real {name} culture {i}", response_figures(c["r"], c["s"], trials))
        run = run_bss(mixing, seed, sessions, 256)
        row(f"simulated {name} seed {seed}", response_figures(run["r"], run["s"], sessions))


def _learning_job(job: tuple[str, int, int, int]) -> tuple[str, int, dict[str, float], float]:
    condition, seed, sessions, trials = job
    mixing, plastic = CONDITIONS[condition]
    t0 = time.perf_counter()
    run = run_bss(mixing, seed, sessions, trials, NetworkParams(plasticity=plastic))
    out = summarise(run["r"], run["s"], sessions)
    out["burst_trials"] = burst_trials(run["r"])
    return condition, seed, out, time.perf_counter() - t0


def burst_trials(r: np.ndarray) -> float:
    """Fraction of trials whose response is a network burst: more than 5 events per
    electrode on average over the array in the 10-300 ms window (graded responses give 1-3
    on the responsive electrodes, a burst 10-50 on every electrode)."""
    return float((r.mean(1) > 5.0).mean())


def learning(seeds: int, sessions: int, trials: int, workers: int) -> None:
    jobs = [(c, seed, sessions, trials) for seed in range(seeds) for c in CONDITIONS]
    print(
        f"learning: {seeds} seeds x {len(CONDITIONS)} conditions, {sessions} sessions x "
        f"{trials} trials, {workers} workers",
        flush=True,
    )
    head = (
        f"{'condition':16s} {'seed':>4s} {'n1':>3s} {'n2':>3s} {'sel1 all/first/last':>21s} "
        f"{'sel2 all/first/last':>21s} {'|sel| first/last':>16s} {'|sel|/r first/last':>18s} "
        f"{'r':>5s} {'burst':>5s} "
        f"{'time':>6s}"
    )
    print(head, flush=True)
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CONDITIONS}
    with Pool(workers) as pool:
        for condition, seed, out, seconds in pool.imap_unordered(_learning_job, jobs):
            results[condition].append(out)
            print(_row(condition, str(seed), out) + f" {seconds:5.0f}s", flush=True)
    print("\nmean over seeds:")
    print(head[: -len(" time") - 2])
    for condition, outs in results.items():
        mean = {k: float(np.mean([o[k] for o in outs])) for k in outs[0]}
        print(_row(condition, "mean", mean))


def _row(condition: str, seed: str, o: dict[str, float]) -> str:
    return (
        f"{condition:16s} {seed:>4s} {o['n1']:3.0f} {o['n2']:3.0f} "
        f"{o['e1_all']:6.2f} {o['e1_first']:6.2f} {o['e1_last']:6.2f}  "
        f"{o['e2_all']:6.2f} {o['e2_first']:6.2f} {o['e2_last']:6.2f}  "
        f"{o['abs_first']:7.2f} {o['abs_last']:7.2f}  {o['rel_first']:8.2f} {o['rel_last']:8.2f}  "
        f"{o['mean_r']:5.2f} {o['burst_trials']:5.2f}"
    )


def speed_fast(seed: int, sessions: int, trials: int) -> None:
    t0 = time.perf_counter()
    run = run_bss(0.25, seed, sessions, trials)
    elapsed = time.perf_counter() - t0
    seconds = sessions * trials + 1
    r = run["r"]
    graded = r[r.mean(1) <= 5.0]
    print(
        f"fast mode, BSS protocol {sessions} x {trials} trials ({seconds} s): {elapsed:.0f} s, "
        f"{seconds / elapsed:.0f}x real time; response (10-300 ms) {r.mean():.2f} spikes per "
        f"electrode per trial, a network burst in {burst_trials(r):.0%} of the trials, "
        f"{graded[:, graded.mean(0) > 0.5].mean():.2f} per responsive electrode in the others"
    )


def speed_raw(seed: int, seconds: float) -> None:
    """Culture + ElectrodeArray.render in 1 ms blocks, with the BSS pulses once a second."""
    layout = load_layout("grid8x8_200um")
    culture = NetworkCulture(layout, RATE, seed=seed, keep_log=False)
    electrodes = ElectrodeArray(layout, culture.unit_positions_um, RATE, seed=seed)
    protocol, ctx = bss_protocol(layout, 0.25, seed, 1, 256)
    block = int(RATE / 1000)
    isi = int(RATE)
    n_blocks = int(seconds * 1000)

    def step(b: int) -> None:
        start = b * block
        stims = []
        if start % isi == 0 and start > 0:
            spec = protocol.design(ctx, start // isi - 1)
            stims = [(start, ch, p) for ch, p in spec.pattern.pulses] if spec.pattern else []
        spikes, units = culture.advance(start, block, stims)
        electrodes.render(start, block, spikes, units, stims)

    for b in range(1000):  # warm up: numba, first noise chunks
        step(b)
    t0 = time.perf_counter()
    for b in range(1000, 1000 + n_blocks):
        step(b)
    elapsed = time.perf_counter() - t0
    print(
        f"raw mode, 64 ch @ 25 kHz, 1 ms blocks, BSS pulses at 1 Hz: "
        f"{elapsed / n_blocks * 1e6:.0f} us/block, {seconds / elapsed:.1f}x real time"
    )


def activity(seed: int, seconds: float, **changes) -> dict[str, float]:
    """Spontaneous firing per electrode and network bursts, after a 1 s settling period."""
    layout = load_layout("grid8x8_200um")
    culture = NetworkCulture(layout, RATE, seed=seed, params=replace(NetworkParams(), **changes))
    electrodes = ElectrodeArray(layout, culture.unit_positions_um, RATE, seed=seed)
    stats = spontaneous(culture, electrodes, seconds)
    label = ", ".join(f"{k}={v}" for k, v in changes.items()) or "defaults"
    print(
        f"spontaneous ({label}), {seconds:g} s: {stats['neuron_hz']:.2f} Hz per neuron, "
        f"{stats['electrode_hz']:.1f} Hz per active electrode ({stats['active']:.0f} active), "
        f"{stats['between_hz']:.1f} Hz between bursts; {stats['bursts']:.0f} bursts, every "
        f"{stats['interval_s']:.1f} s, lasting {stats['duration_ms']:.0f} ms (median), "
        f"{stats['spikes_per_burst']:.0f} spikes each; network_bursts (mea_control.bursts): "
        f"{stats['pop_bursts']:.0f}, every {stats['pop_interval_s']:.1f} s (mean), lasting "
        f"{stats['pop_duration_ms']:.0f} ms (median)"
    )
    return stats


def spontaneous(
    culture: NetworkCulture, electrodes: ElectrodeArray, seconds: float
) -> dict[str, float]:
    """Firing and burst figures of a fresh culture run for 1 + ``seconds`` s (the first unused).

    Bursts by the culture's own detector (its core: > 10 % of the neurons in 10 ms) and by
    mea_control.bursts.network_bursts (10 ms bins over max(4 x median, 5)).
    """
    t0 = int(RATE)
    culture.advance(0, t0 + int(RATE * seconds))
    samples, units = culture.spike_log()
    keep = samples >= t0
    samples, units = samples[keep], units[keep]
    ev = electrodes.events(samples, units, THRESHOLD_UV)
    per_el = np.bincount(ev.channel, minlength=electrodes.n_channels) / seconds
    active = per_el > 0.1
    onsets, ends = culture.bursts()
    keep = onsets >= t0
    onsets, ends = onsets[keep][: len(ends[ends > t0])], ends[ends > t0][: keep.sum()]
    in_burst = np.zeros(len(ev.sample), bool)
    for a, b in zip(onsets, ends, strict=True):
        in_burst |= (ev.sample >= a - RATE * 0.05) & (ev.sample < b + RATE * 0.05)
    quiet_s = seconds - (ends - onsets + RATE * 0.1).sum() / RATE
    between = np.bincount(ev.channel[~in_burst], minlength=electrodes.n_channels) / quiet_s
    in_spk = np.searchsorted(samples, ends) - np.searchsorted(samples, onsets)
    starts, stops = np.divide(starts_and_stops(
        network_bursts(samples - t0, RATE, 0, int(RATE * seconds))), RATE)
    return {
        "pop_bursts": float(len(starts)),
        "pop_interval_s": float(np.diff(starts).mean()) if len(starts) > 1 else np.inf,
        "pop_duration_ms": float(np.median(stops - starts) * 1e3) if len(starts) else 0.0,
        "neuron_hz": len(samples) / seconds / culture.n_units,
        "electrode_hz": float(per_el[active].mean()) if active.any() else 0.0,
        "active": float(active.sum()),
        "between_hz": float(between[active].mean()) if active.any() else 0.0,
        "bursts": float(len(onsets)),
        "interval_s": float(np.median(np.diff(onsets)) / RATE) if len(onsets) > 1 else np.inf,
        "duration_ms": float(np.median(ends - onsets) / RATE * 1e3) if len(onsets) else 0.0,
        "spikes_per_burst": float(np.median(in_spk)) if len(onsets) else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--trials", type=int, default=256, help="trials per session")
    parser.add_argument("--seconds", type=float, default=60.0, help="spontaneous activity, s")
    parser.add_argument("--raw-seconds", type=float, default=20.0)
    parser.add_argument("--learning", action="store_true", help="the learning comparison")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--real", type=Path, metavar="DIR",
                        help="compare BSS responses with the real data in DIR (isomura2023)")
    args = parser.parse_args()
    if args.real:
        compare_real(args.real, args.seed, min(args.sessions, 10))
        return
    if args.learning:
        learning(args.seeds, args.sessions, args.trials, args.workers)
        return
    activity(args.seed, args.seconds)
    activity(args.seed, args.seconds, inhibition=0.2)
    activity(args.seed, args.seconds, inhibition=2.0)
    speed_raw(args.seed, args.raw_seconds)
    speed_fast(args.seed, args.sessions, args.trials)


if __name__ == "__main__":
    main()
