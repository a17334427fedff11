"""Closed-loop protocols on the simulator: reaction latency and loop cost in real time, outcome.

Run ``python benchmarks/protocols.py [--quick] [--seconds S] [--only NAME]``. For each
closed-loop protocol of ``protocols/`` that :data:`BENCHES` knows, it runs the protocol
in process on ``sim://`` in real time (paced by the device, 1 ms blocks), then its
paired control run when it has one, and prints for each run:

- reaction latency: trigger -> the sample the device ran the pulse, p50/p99/max in
  device samples and ms (the engine's ``latency_samples``, over the pulses that ran; a
  protocol that paces its own pulses triggers them at the loop's sample, so theirs is
  how far the device runs ahead of the loop); pulses ran / dropped (the device was past
  their sample) / refused (safety gate);
- loop cost per block: the engine's ``loop_cost_us`` (p50/p99, time of one block's
  processing on the loop thread: detection, the protocol's hooks, the sinks; as in
  benchmarks/loop.py), and the process's CPU time over the run per block, which also
  holds the in-process simulated culture and the watchdog;
- its outcome figure. Where the figure needs minutes of culture time (the burst rate,
  the clamp error, the pong hit rate), it comes from a :class:`Study`: runs as fast as
  the simulator goes (``fast=True``) of each condition on several seeds; the outcome
  line names its runs (real time or fast, length, seeds, device):
  ``burst_quieting`` - network bursts per minute and burstiness index in the quieting
  phase, stimulated against the same culture and seed unstimulated (``stimulate=false``),
  reduction in %; ``rate_clamp`` - clamp error, the mean of |rate - target_hz| /
  target_hz over the held part (from the first update period within 20 %: the summary's
  ``mae_percent``), and the time to come within 20 % (``reached_s``); ``pong`` - hit
  rate in the stimulus condition against the no-feedback condition on the default
  (learning) network culture.

Adding a protocol is one :class:`Bench` entry in :data:`BENCHES`: its parameters, the
parameter changes of its control run, its study, and an outcome function.
``--quick`` runs 3 s in real time and short studies on one seed (a smoke run, with a
watchdog that tolerates a busy machine); the default is 30 s each. Timings are from a
shared machine: orders of magnitude.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # one core; set before numba loads

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# the package protocols/, not this file (whose folder is first on the path): burst_quieting
# imports protocols.rate_clamp
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mea_control.driver import open_driver  # noqa: E402
from mea_control.engine import Engine, EngineConfig  # noqa: E402
from mea_control.protocol import load_protocol, shipped_protocols  # noqa: E402

DEVICE = "sim://?seed=0"
#: Summaries by run label: the real-time runs, or a study's runs (a list, one a seed).
Runs = dict[str, Any]
#: Outcome of the real-time runs and the study's runs ({} without a study) -> one line.
Outcome = Callable[[Runs, Runs], str]


@dataclass(frozen=True)
class Study:
    """The runs an outcome figure is computed from, as fast as the simulator goes: each
    condition (its parameter changes) on each seed (the culture's and ``ctx.rng``'s)."""

    conditions: dict[str, dict[str, Any]]
    seconds: float
    quick_seconds: float
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "sim://?raw=0&seed={seed}"
    block_ms: float = 10.0

    def describe(self, seconds: float, seeds: tuple[int, ...]) -> str:
        return (f"fast runs, {seconds:g} s each, seeds {', '.join(map(str, seeds))}, "
                f"{self.device.replace('{seed}', 'S')}, {self.block_ms:g} ms blocks")


@dataclass(frozen=True)
class Bench:
    """How to benchmark one shipped protocol."""

    params: dict[str, Any]
    outcome: Outcome
    #: Parameter changes of the paired control run (None: no control run).
    control: dict[str, Any] | None = None
    device: str = DEVICE
    label: str = "run"
    control_label: str = "control"
    #: The fast runs of the outcome figure (None: it comes from the real-time runs).
    study: Study | None = None
    #: Parameters that share a run's length equally (a protocol that ends after phases).
    phases: tuple[str, ...] = ()


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _per_seed(values: list[Any], digits: int) -> str:
    return ", ".join(_fmt(v, digits) for v in values)


def spike_triggered_outcome(runs: Runs, study: Runs) -> str:
    """Reaction latency against the budget, and pulses triggered against the control's."""
    run, control = runs["triggered"], runs.get("random_delay")
    ps = run["protocol_summary"]
    text = (f"reaction p99 {_fmt(run['latency_samples']['p99'], 1)} samples (budget "
            f"{ps['latency_budget_samples']}), {run['stims_executed']} pulses ran of "
            f"{ps['pulses_sent']} sent on {ps['trigger_spikes']} trigger spikes")
    if control is not None:
        delay = control["latency_samples"]["p50"]
        delay_ms = None if delay is None else delay * 1000.0 / control["sample_rate"]
        text += (f"; random-delay control: {control['stims_executed']} ran of "
                 f"{control['protocol_summary']['pulses_sent']} sent, delay p50 "
                 f"{_fmt(delay_ms)} ms")
    return text


def _figure(summaries: list[dict[str, Any]], key: str) -> list[Any]:
    """A protocol's summary figure from each run (each seed)."""
    return [s["protocol_summary"].get(key) for s in summaries]


def burst_quieting_outcome(runs: Runs, study: Runs) -> str:
    """Bursts per minute and burstiness in the quieting phase, with and without pulses."""
    on, off = study["stimulated"], study["unstimulated"]
    rate_on, rate_off = (_figure(on, "quieting_bursts_per_min"),
                         _figure(off, "quieting_bursts_per_min"))
    index_on, index_off = _figure(on, "quieting_burstiness"), _figure(off, "quieting_burstiness")
    reduction = 100.0 * (1.0 - _mean(rate_on) / _mean(rate_off)) if _mean(rate_off) else None
    return (f"quieting phase, bursts per minute {_fmt(_mean(rate_on), 1)} stimulated "
            f"({_per_seed(rate_on, 1)}) against {_fmt(_mean(rate_off), 1)} unstimulated "
            f"({_per_seed(rate_off, 1)}): reduction {_fmt(reduction)} %; burstiness "
            f"{_fmt(_mean(index_on), 3)} against {_fmt(_mean(index_off), 3)}")


def rate_clamp_outcome(runs: Runs, study: Runs) -> str:
    """Clamp error over the held part and the time to come within 20 % of the target."""
    clamped = study["clamped"]
    reached, errors = _figure(clamped, "reached_s"), _figure(clamped, "mae_percent")
    held = [e for e in errors if e is not None]
    return (f"target {_figure(clamped, 'target_hz')[0]:g} Hz per electrode, reached within "
            f"20 % in {_per_seed(reached, 1)} s; clamp error |rate - target| / target over "
            f"the held part {_fmt(_mean(held) if held else None, 1)} % "
            f"({_per_seed(errors, 1)}), {len(held)} of {len(clamped)} seeds reached")


def _hit_rate(summaries: list[dict[str, Any]]) -> tuple[float | None, int]:
    """Hits / (hits + misses) over all the runs, and the hits and misses counted."""
    hits = sum(_figure(summaries, "hits"))
    outcomes = hits + sum(_figure(summaries, "misses"))
    return (hits / outcomes if outcomes else None), outcomes


def pong_outcome(runs: Runs, study: Runs) -> str:
    """Hit rate with feedback against without, pooled over the seeds."""
    (on, n_on), (off, n_off) = _hit_rate(study["stimulus"]), _hit_rate(study["no_feedback"])
    per_seed = [_per_seed(_figure(study[c], "hit_rate"), 3) for c in ("stimulus", "no_feedback")]
    return (f"hit rate {_fmt(on, 3)} in the stimulus condition ({n_on} balls; per seed "
            f"{per_seed[0]}) against {_fmt(off, 3)} with no feedback ({n_off} balls; "
            f"{per_seed[1]})")


#: The closed-loop protocols this benchmark knows, by shipped name.
BENCHES: dict[str, Bench] = {
    "spike_triggered": Bench({"condition": "triggered"}, spike_triggered_outcome,
                             control={"condition": "random_delay"}, label="triggered",
                             control_label="random_delay"),
    "burst_quieting": Bench(
        {}, burst_quieting_outcome, label="stimulated",
        phases=("baseline_s", "quieting_s", "after_s"),
        study=Study({"stimulated": {}, "unstimulated": {"stimulate": False}},
                    seconds=180.0, quick_seconds=30.0)),
    "rate_clamp": Bench({}, rate_clamp_outcome, label="clamped",
                        study=Study({"clamped": {}}, seconds=60.0, quick_seconds=8.0)),
    "pong": Bench({"condition": "stimulus"}, pong_outcome, label="stimulus",
                  study=Study({"stimulus": {"condition": "stimulus"},
                               "no_feedback": {"condition": "no_feedback"}},
                              seconds=300.0, quick_seconds=10.0, device="sim://?seed={seed}",
                              block_ms=1.0)),
}


def run_protocol(name: str, params: dict[str, Any], seconds: float, device: str,
                 quick: bool, fast: bool = False, phases: tuple[str, ...] = (),
                 seed: int = 0, block_ms: float = 1.0) -> dict[str, Any]:
    """One run on ``device`` (real time unless ``fast``): the engine's summary plus CPU per
    block. ``phases`` share the ``seconds``; the protocol then ends the run itself."""
    cls, _ = load_protocol(name)
    params = {**params, **{phase: seconds / len(phases) for phase in phases}}
    driver = open_driver(device)
    driver.open()
    # a smoke run must not depend on how busy the machine is (see benchmarks/loop.py)
    watchdog = {"watchdog_ms": 10_000.0} if quick else {}
    duration = seconds + 1.0 if phases else seconds  # room for the last phase's end
    try:
        engine = Engine(driver, cls(**params),
                        EngineConfig(fast=fast, duration_s=duration, seed=seed,
                                     block_ms=block_ms, **watchdog))
        cpu = time.process_time()
        summary = engine.run()
        cpu = time.process_time() - cpu
    finally:
        driver.close()
    if summary["error"]:
        raise RuntimeError(f"{name} {params}: the run ended with a {summary['error']} error")
    summary["cpu_us_per_block"] = cpu / max(summary["blocks"], 1) * 1e6
    return summary


def run_study(name: str, spec: Bench, quick: bool) -> tuple[Runs, str]:
    """The study's fast runs by condition (a summary a seed), and what they were."""
    study = spec.study
    if study is None:
        return {}, "real-time runs above"
    seconds = study.quick_seconds if quick else study.seconds
    seeds = study.seeds[:1] if quick else study.seeds
    runs = {label: [run_protocol(name, {**spec.params, **changes}, seconds,
                                 study.device.format(seed=seed), quick, fast=True,
                                 phases=spec.phases, seed=seed, block_ms=study.block_ms)
                    for seed in seeds]
            for label, changes in study.conditions.items()}
    return runs, study.describe(seconds, seeds)


def bench(name: str, spec: Bench, seconds: float, quick: bool) -> dict[str, Any]:
    """The real-time run and its control run of one protocol, its study, the outcome."""
    def real_time(params):
        return run_protocol(name, params, seconds, spec.device, quick, phases=spec.phases)

    runs = {spec.label: real_time(spec.params)}
    if spec.control is not None:
        runs[spec.control_label] = real_time({**spec.params, **spec.control})
    study, described = run_study(name, spec, quick)
    return {"runs": runs, "study": study, "study_runs": described,
            "outcome": spec.outcome(runs, study)}


HEADER = (f"{'protocol':<16} {'run':<13} {'s':>4} {'ran/drop/ref':>13}  "
          f"{'latency samples p50/p99/max':>28} {'ms p50/p99':>12}  "
          f"{'loop us p50/p99':>15} {'process CPU us/block':>20}")


def print_run(name: str, label: str, s: dict[str, Any]) -> None:
    lat, cost = s["latency_samples"], s["loop_cost_us"]
    ms = 1000.0 / s["sample_rate"]
    fates = f"{s['stims_executed']}/{s['stims_dropped']}/{s['stims_refused']}"
    samples = f"{_fmt(lat['p50'])}/{_fmt(lat['p99'], 1)}/{_fmt(lat['max'])}"
    in_ms = "/".join(_fmt(None if lat[k] is None else lat[k] * ms, 2) for k in ("p50", "p99"))
    loop = f"{_fmt(cost['p50'])}/{_fmt(cost['p99'])}"
    print(f"{name:<16} {label:<13} {s['duration_s']:>4.0f} {fates:>13}  {samples:>28} "
          f"{in_ms:>12}  {loop:>15} {s['cpu_us_per_block']:>20.1f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 s real-time runs, short studies on one seed (a smoke run)")
    parser.add_argument("--seconds", type=float, help="seconds of each real-time run "
                        "(default 30)")
    parser.add_argument("--only", action="append", metavar="NAME", help="only this protocol")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    shipped = shipped_protocols()
    names = [n for n in BENCHES if n in shipped and (not args.only or n in args.only)]
    print(f"closed-loop protocols on {DEVICE} in real time, 1 ms blocks, {seconds:g} s a run "
          "(a protocol in phases: equal phases); outcomes from the runs named")
    print(HEADER)
    results = {}
    for name in names:
        results[name] = bench(name, BENCHES[name], seconds, args.quick)
        for label, summary in results[name]["runs"].items():
            print_run(name, label, summary)
        print(f"  {name} outcome ({results[name]['study_runs']}): "
              f"{results[name]['outcome']}", flush=True)
    return results


if __name__ == "__main__":
    main()
