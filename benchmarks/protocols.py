"""Closed-loop protocols on the simulator in real time: reaction latency, loop cost, outcome.

Run ``python benchmarks/protocols.py [--quick] [--seconds S] [--only NAME]``. For each
closed-loop protocol of ``protocols/`` that :data:`BENCHES` knows, it runs the protocol
in process on ``sim://`` in real time (paced by the device, 1 ms blocks), then its
paired control run when it has one, and prints for each run:

- reaction latency: trigger -> the sample the device ran the pulse, p50/p99/max in
  device samples and ms (the engine's ``latency_samples``, over the pulses that ran);
  pulses ran / dropped (the device was past their sample) / refused (safety gate);
- loop cost per block: the engine's ``loop_cost_us`` (p50/p99, time of one block's
  processing on the loop thread: detection, the protocol's hooks, the sinks; as in
  benchmarks/loop.py), and the process's CPU time over the run per block, which also
  holds the in-process simulated culture and the watchdog;
- its outcome figure, comparing the run with its control.

Adding a protocol is one :class:`Bench` entry in :data:`BENCHES`: its parameters, the
parameter changes of its control run, and an outcome function of the two summaries.
The figures the issue asks for, once those protocols are shipped:
``burst_quieting`` - burst rate with stimulation against the same culture and seed
unstimulated (reduction in %); ``rate_clamp`` - clamp error, |rate - target_hz| /
target_hz over the held part (its controller trace); ``pong`` - hit rate in the
stimulus condition against the no-feedback condition on the learning culture.
``--quick`` runs 3 s each (a smoke run, with a watchdog that tolerates a busy machine);
the default is 30 s each. Timings are from a shared machine: orders of magnitude.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # one core; set before numba loads

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from mea_control.driver import open_driver  # noqa: E402
from mea_control.engine import Engine, EngineConfig  # noqa: E402
from mea_control.protocol import load_protocol, shipped_protocols  # noqa: E402

DEVICE = "sim://?seed=0"
#: Outcome of a run and its control run (None when the bench has none) -> one line.
Outcome = Callable[[dict[str, Any], dict[str, Any] | None], str]


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


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def spike_triggered_outcome(run: dict[str, Any], control: dict[str, Any] | None) -> str:
    """Reaction latency against the budget, and pulses triggered against the control's."""
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


#: The closed-loop protocols this benchmark knows, by shipped name.
BENCHES: dict[str, Bench] = {
    "spike_triggered": Bench({"condition": "triggered"}, spike_triggered_outcome,
                             control={"condition": "random_delay"}, label="triggered",
                             control_label="random_delay"),
}


def run_protocol(name: str, params: dict[str, Any], seconds: float, device: str,
                 quick: bool) -> dict[str, Any]:
    """One real-time run on ``device``: the engine's summary plus CPU per block."""
    cls, _ = load_protocol(name)
    driver = open_driver(device)
    driver.open()
    # a smoke run must not depend on how busy the machine is (see benchmarks/loop.py)
    watchdog = {"watchdog_ms": 10_000.0} if quick else {}
    try:
        engine = Engine(driver, cls(**params),
                        EngineConfig(fast=False, duration_s=seconds, **watchdog))
        cpu = time.process_time()
        summary = engine.run()
        cpu = time.process_time() - cpu
    finally:
        driver.close()
    if summary["error"]:
        raise RuntimeError(f"{name} {params}: the run ended with a {summary['error']} error")
    summary["cpu_us_per_block"] = cpu / max(summary["blocks"], 1) * 1e6
    return summary


def bench(name: str, spec: Bench, seconds: float, quick: bool) -> dict[str, Any]:
    """The run and its control run of one protocol, and the outcome line."""
    runs = {spec.label: run_protocol(name, spec.params, seconds, spec.device, quick)}
    control = None
    if spec.control is not None:
        control = run_protocol(name, {**spec.params, **spec.control}, seconds, spec.device, quick)
        runs[spec.control_label] = control
    return {"runs": runs, "outcome": spec.outcome(runs[spec.label], control)}


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
    parser.add_argument("--quick", action="store_true", help="3 s runs (a smoke run)")
    parser.add_argument("--seconds", type=float, help="seconds of each run (default 30)")
    parser.add_argument("--only", action="append", metavar="NAME", help="only this protocol")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    shipped = shipped_protocols()
    names = [n for n in BENCHES if n in shipped and (not args.only or n in args.only)]
    print(f"closed-loop protocols on {DEVICE} in real time, 1 ms blocks, {seconds:g} s a run")
    print(HEADER)
    results = {}
    for name in names:
        results[name] = bench(name, BENCHES[name], seconds, args.quick)
        for label, summary in results[name]["runs"].items():
            print_run(name, label, summary)
        print(f"  {name} outcome: {results[name]['outcome']}")
    return results


if __name__ == "__main__":
    main()
