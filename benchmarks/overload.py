"""Overload: how the watchdog answers a hook that stalls, and a CPU that other programs use.

    python benchmarks/overload.py [--seconds 20] [--busy 2] [--stall-s 2]

Runs a stimulating protocol in real time on sim:// three ways: quiet, with one hook that
sleeps ``--stall-s`` seconds, and beside ``--busy`` processes that spin. For each it
prints the watchdog's trips, the lag at which it tripped, the furthest the loop fell
behind (summary ``max_lag_ms``), pulses run by the device after the first trip (its own
record; must be 0 until a person re-arms) and the pulses executed in all.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mea_control.driver import open_driver  # noqa: E402
from mea_control.engine import Engine, EngineConfig  # noqa: E402
from mea_control.protocol import Protocol  # noqa: E402
from mea_control.safety import SafetyRefusal  # noqa: E402
from mea_control.types import StimPattern, StimPulse  # noqa: E402

PULSE = StimPulse.biphasic(5.0, 200.0)


class Pulser(Protocol):
    """A pulse 20 ms ahead every 50 ms on one electrode; one hook may stall once."""

    def __init__(self, stall_s: float = 0.0, stall_at_s: float = 2.0) -> None:
        super().__init__()
        self.stall_s, self.stall_at_s, self.stalled = stall_s, stall_at_s, False
        self.next = 0

    def on_block(self, ctx, block, filtered):
        if self.stall_s and not self.stalled and ctx.now >= ctx.samples(self.stall_at_s):
            self.stalled = True
            time.sleep(self.stall_s)
        if ctx.now >= self.next:
            self.next = ctx.now + ctx.samples(0.05)
            try:
                ctx.stimulate(StimPattern(((10, PULSE),), at_sample=ctx.now + ctx.samples(0.02)))
            except SafetyRefusal:
                pass


def spin() -> None:
    while True:
        pass


def measure(seconds: float, stall_s: float = 0.0, busy: int = 0) -> dict:
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        driver = open_driver("sim://?seed=1")
        driver.open()
        ran: list = []
        trip_at: list[int] = []  # length of the device's log when the watchdog tripped
        driver.pulse_listener = ran.extend
        engine = Engine(driver, Pulser(stall_s), EngineConfig(duration_s=seconds))
        disarm = engine.gate.disarm

        def noted(reason: str) -> None:
            if reason.startswith("watchdog") and not trip_at:
                trip_at.append(len(ran))
            disarm(reason)

        engine.gate.disarm = noted
        try:
            s = engine.run()
        finally:
            driver.close()
    finally:
        for p in spinners:
            p.kill()
    lags = [float(m.group(1)) for e in engine.recent_events if e.kind == "watchdog"
            for m in [re.search(r"fell (\d+) ms", e.message)] if m]
    return {"trips": s["watchdog_trips"], "trip_lag_ms": lags[0] if lags else None,
            "max_lag_ms": s["max_lag_ms"], "executed": s["stims_executed"],
            "after_trip": len(ran) - trip_at[0] if trip_at else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--stall-s", type=float, default=2.0)
    args = parser.parse_args()
    rows = [("quiet", measure(args.seconds)),
            (f"a hook sleeps {args.stall_s:g} s", measure(args.seconds, stall_s=args.stall_s)),
            (f"{args.busy} busy processes", measure(args.seconds, busy=args.busy))]
    print(f"{'case':<24} {'trips':>5} {'trip lag ms':>11} {'max lag ms':>10} "
          f"{'pulses run':>10} {'run after trip':>14}")
    for name, r in rows:
        lag = "-" if r["trip_lag_ms"] is None else f"{r['trip_lag_ms']:.0f}"
        print(f"{name:<24} {r['trips']:>5} {lag:>11} {r['max_lag_ms']:>10.0f} "
              f"{r['executed']:>10} {r['after_trip']:>14}")


if __name__ == "__main__":
    main()
