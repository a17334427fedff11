"""Latency floor of stimulation through a Pulse Pal (the fake one, on a pty), next to sim://.

Run: ``.venv/bin/python benchmarks/pulsepal.py [--patterns 200] [--block 25]``. In real
time, acquisition from ``sim://?culture=poisson_burst`` (25 kHz) in blocks of ``--block``
samples, stimulation through ``pulsepal://`` on a fake Pulse Pal served from a thread.
Prints, as median / p99 / max:

- the serial link: op 74 (program one parameter) written -> its acknowledgement read,
  and op 77 (trigger) written -> the fake has read it (one way, same clock);
- against the acquisition clock, in samples: a pattern scheduled at ``at_sample`` ->
  the trigger reaching the fake, and a pattern sent "now" (as a protocol reacting to the
  block it just got) -> the trigger reaching the fake, counted from the block's end;
- the same two for ``sim://`` alone, where the device itself runs the pattern:
  scheduled ones run at their sample, "now" ones at the next block's start.

The acquisition clock's sample s is taken on the wall clock at the simulator's start plus
s / rate (the simulator paces its blocks so). Nothing here is asserted: these are figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.pulsepal import OP_TRIGGER  # noqa: E402
from hardware_sim.device import PtyLink  # noqa: E402
from hardware_sim.pulsepal import FakePulsePal  # noqa: E402
from mea_control.driver import open_driver  # noqa: E402
from mea_control.types import Block, StimPattern, StimPulse, StimReport  # noqa: E402

ACQUIRE = "sim://?culture=poisson_burst&truth=0"
RIG = '[stimulator]\nuA_per_V = 2.0\n[stimulator.wiring]\n1 = "23"\n2 = "47"\n'
#: Patterns are this far apart (ms), so that a channel's pulse is long over.
SPACING_MS = 20.0
WARM_UP_BLOCKS = 500


def figures(values: list[float]) -> str:
    a = np.asarray(values, float)
    return f"{np.median(a):7.3f} / {np.percentile(a, 99):7.3f} / {a.max():7.3f}"


def next_block(driver) -> Block:
    while True:
        item = driver.read(1.0)
        if isinstance(item, Block):
            return item


def until_report(driver, ticket: int) -> StimReport:
    while True:
        item = driver.read(1.0)
        if isinstance(item, StimReport) and item.ticket == ticket:
            return item


def patterns(driver, n: int, scheduled: bool) -> list[tuple[int, int]]:
    """Send n patterns on alternating electrodes; (reference sample, executed sample) of each.

    Scheduled: at_sample a few blocks ahead, the reference is at_sample. Now: at_sample
    None, sent as soon as a block arrived, the reference is that block's end.
    """
    layout = driver.info.layout
    wired = [c for c in range(layout.n_electrodes) if layout.can_stimulate[c]][:2]
    pulse = StimPulse.biphasic(4.0, 200.0)
    spacing = int(SPACING_MS * driver.info.sample_rate / 1000)
    out = []
    for k in range(n):
        block = next_block(driver)
        at = block.stop_sample + spacing if scheduled else None
        ticket = driver.stimulate(StimPattern.single([wired[k % 2]], pulse, at_sample=at))
        report = until_report(driver, ticket)
        assert report.executed, report.reason
        out.append((at if scheduled else block.stop_sample, report.sample))
        if not scheduled:
            for _ in range(spacing // block.n_samples):
                next_block(driver)
    return out


def bench_pulsepal(n: int, block: int) -> None:
    link, stop = PtyLink(), threading.Event()
    fake = FakePulsePal()
    server = threading.Thread(target=fake.serve, args=(link, stop), daemon=True)
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        rig = Path(tmp) / "rig.toml"
        rig.write_text(RIG)
        driver = open_driver(f"pulsepal://{link.name}?acquire={quote(ACQUIRE, safe='')}"
                             f"&rig={rig}")
        driver.open()
        try:
            inner = driver.inner
            fs = driver.info.sample_rate
            # the serial link, before streaming: program a parameter, await its answer
            acks, one_way = [], []
            for k in range(n):
                t = time.monotonic()
                driver._program({1: {2: 30000 + k % 2}})  # phase 1 voltage: toggles, is sent
                acks.append((time.monotonic() - t) * 1e3)
            driver.start(block)
            for _ in range(WARM_UP_BLOCKS):
                next_block(driver)
            writes: list[float] = []
            write = driver._write

            def timed_write(data: bytes) -> None:
                if data[1] == OP_TRIGGER:
                    writes.append(time.monotonic())
                write(data)

            driver._write = timed_write
            for kind, scheduled in (("scheduled", True), ("now", False)):
                mark = len(fake.commands(OP_TRIGGER))
                sent = patterns(driver, n, scheduled)
                arrived = fake.wait_for(OP_TRIGGER, mark + n)[mark:mark + n]
                one_way += [(r.time - w) * 1e3 for r, w in zip(arrived, writes[-n:],
                                                                 strict=True)]
                # inner.mea.t0: when the simulator's sample 0 was taken (it paces blocks so)
                lat = [(r.time - (inner.mea.t0 + ref / fs)) * fs
                       for r, (ref, _) in zip(arrived, sent, strict=True)]
                print(f"pulsepal:// {kind:>9}: reference sample -> trigger at the Pulse Pal, "
                      f"samples (median / p99 / max): {figures(lat)}")
            print(f"pulsepal:// serial link, ms (median / p99 / max): op 74 -> ack "
                  f"{figures(acks)}; op 77 -> read by the fake {figures(one_way)}")
        finally:
            driver.close()
            stop.set()
            server.join(5)
            link.close()


def bench_sim(n: int, block: int) -> None:
    driver = open_driver(ACQUIRE)
    driver.open()
    driver.start(block)
    try:
        for _ in range(WARM_UP_BLOCKS):
            next_block(driver)
        for kind, scheduled in (("scheduled", True), ("now", False)):
            lat = [executed - ref for ref, executed in patterns(driver, n, scheduled)]
            print(f"sim://      {kind:>9}: reference sample -> pulse executed, samples "
                  f"(median / p99 / max): {figures(lat)}")
    finally:
        driver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=200, help="patterns per figure")
    parser.add_argument("--block", type=int, default=25, help="samples per block (25: 1 ms)")
    args = parser.parse_args()
    print(f"{args.patterns} patterns each, blocks of {args.block} samples at 25 kHz "
          f"({args.block / 25:g} ms), real time")
    bench_pulsepal(args.patterns, args.block)
    bench_sim(args.patterns, args.block)


if __name__ == "__main__":
    main()
