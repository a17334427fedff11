"""Latency floor of the cl:// path on the device's own sample clock, next to sim://.

Run with the real cl-sdk: ``.venv-cl/bin/python benchmarks/cl.py [--seconds 5]`` (``make
cl-env`` first); with the project's stand-in instead: ``.venv/bin/python benchmarks/cl.py
--fake``. In real time, 64 channels at 25 kHz in 1 ms blocks (``--block``); a pattern is
sent "now" (as a protocol reacting to the block it just got: at ``earliest_stim_sample()``,
as the engine books it) every ``--every`` blocks.
Prints, as median / p99 / max, in samples of the device's clock (``neurons.timestamp()``,
40 us each):

- delivery: the device clock when ``read()`` hands over a block, minus the block's end;
- reaction: the device clock when ``stimulate()`` has returned, minus the block's end
  (the stim counts from the loop's tick, so this is how stale that tick is by then);
- booked: the sample the device reports the pulse at, minus the block's end (the API's
  80 us minimum lead, 2 samples; cl-sdk books a stim from the loop's tick however late it
  comes, so "reaction" is the floor on its clock; a CL1 reports when the pulse ran);

and the same "booked" figure for ``sim://`` (its clock is the wall clock). Nothing here is
asserted: these are figures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# this file is cl.py: its folder must not hide the real cl package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from mea_control.driver import open_driver  # noqa: E402
from mea_control.types import Block, StimPattern, StimPulse, StimReport  # noqa: E402

PULSE = StimPulse.biphasic(1.0, 100)


def figures(name: str, samples: list[int]) -> str:
    a = np.asarray(samples, float)
    if not len(a):
        return f"{name}: none"
    return (f"{name}: {np.median(a):.1f} / {np.percentile(a, 99):.1f} / {a.max():.0f} samples "
            f"({np.median(a) * 40:.0f} / {np.percentile(a, 99) * 40:.0f} / {a.max() * 40:.0f} us)")


def run(url: str, seconds: float, block: int, every: int, clock) -> dict[str, list[int]]:
    driver = open_driver(url)
    driver.open()
    driver.start(block)
    out: dict[str, list[int]] = {"delivery": [], "reaction": [], "booked": []}
    sent: dict[int, int] = {}  # ticket -> end of the block it reacted to
    n_blocks, warm = int(seconds * 1000 * 25 / block), 200
    seen = 0
    try:
        while seen < n_blocks + warm:
            event = driver.read(timeout=2.0)
            if isinstance(event, StimReport) and event.ticket in sent:
                out["booked"].append(event.sample - sent.pop(event.ticket))
            if not isinstance(event, Block):
                continue
            seen += 1
            if seen <= warm:  # first blocks: imports, JIT, the device's start
                continue
            now = clock(driver)
            if now is not None:
                out["delivery"].append(now - event.stop_sample)
            if seen % every == 0:
                at = driver.earliest_stim_sample()  # as the engine books a pattern "now"
                ticket = driver.stimulate(StimPattern.single([9], PULSE, at_sample=at))
                now = clock(driver)
                if now is not None:
                    out["reaction"].append(now - event.stop_sample)
                sent[ticket] = event.stop_sample
    finally:
        driver.close()
    return out


def cl_clock(driver) -> int:
    return int(driver.neurons.timestamp())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--block", type=int, default=25, help="frames a block (25: 1 ms)")
    ap.add_argument("--every", type=int, default=50, help="blocks between patterns")
    ap.add_argument("--fake", action="store_true", help="the stand-in hardware_sim.cl_fake")
    args = ap.parse_args()
    os.environ.pop("CL_SDK_ACCELERATED_TIME", None)  # the device's real-time clock
    os.environ.setdefault("CL_SDK_VISUALISATION", "0")
    if args.fake:
        from hardware_sim import cl_fake

        sys.modules["cl"] = cl_fake
    import cl

    version = "stand-in" if args.fake else f"cl-sdk in Python {sys.version.split()[0]}"
    print(f"cl:// ({version}, {cl.__name__}), {args.seconds:g} s, blocks of {args.block} "
          f"frames, a pattern every {args.every} blocks")
    got = run("cl://?timeout=60", args.seconds, args.block, args.every, cl_clock)
    for name in ("delivery", "reaction", "booked"):
        print("  " + figures(name, got[name]))
    sim = run("sim://?culture=poisson_burst&truth=0", args.seconds, args.block, args.every,
              lambda driver: None)
    print("sim://")
    print("  " + figures("booked", sim["booked"]))


if __name__ == "__main__":
    main()
