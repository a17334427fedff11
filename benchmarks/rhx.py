"""Latency floor of ``rhx://`` on the fake RHX (its sample clock), next to ``sim://``.

Run: ``.venv/bin/python benchmarks/rhx.py [--reactions 200]``. The fake RHX runs in this
process, in real time at 30 kHz, writing one 128-sample block per write (as the driver
sets ``TCPNumberDataBlocksPerWrite 1``); the fake and the driver share the wall clock, so
the fake's sample s happens at its start + s / 30000. Prints, as median / p99 / max:

(a) delivery: the fake's clock passing a block's last sample -> ``read()`` returning the
    Block (the floor adds the block itself: a spike waits up to 128 samples, 4.27 ms);
(b) spike -> pulse through the engine with the protocol of ``benchmarks/loop.py``
    (:func:`loop.bench_reaction_latency`: react to a spike, rotating over every electrode),
    on ``rhx://`` and on ``sim://?rate=30000``. Through RHX each of these patterns needs an
    upload (the keys hold 8 patterns; the rotation has 64);
(c) the same with 8 electrodes, each held by one of F1-F8 after its first use: the fast
    path, one ``execute ManualStimTriggerPulse`` per pattern;
(d) what an upload costs as in (b): commands and round trip.

The execution sample is where the pulse shows in RHX's STIM band. Nothing here is
asserted: these are figures from a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loop  # noqa: E402

from hardware_sim.intan_rhx import FakeRHX, default_wiring  # noqa: E402
from mea_control.driver import open_driver  # noqa: E402
from mea_control.engine import Engine, EngineConfig  # noqa: E402
from mea_control.layouts import load_layout  # noqa: E402
from mea_control.types import Block, StimPattern, StimPulse  # noqa: E402

RATE = 30000.0


def write_rig(folder: Path) -> str:
    """A rig file whose [channels] table matches the fake's default wiring."""
    layout = load_layout("grid8x8_200um")
    lines = ["[rig]", 'name = "benchmark"', "[limits]", "max_current_uA = 10",
             "[channels]"]
    lines += [f'"{native}" = "{layout.labels[ch]}"' for native, ch in default_wiring(64).items()]
    path = folder / "rig.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@contextlib.contextmanager
def served_fake():
    """``python -m hardware_sim.intan_rhx`` in a subprocess (listening again after each
    client, as if someone clicked Connect); yields its rhx:// URL."""
    server = subprocess.Popen([sys.executable, "-m", "hardware_sim.intan_rhx"],
                              stdout=subprocess.PIPE, text=True)
    try:
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait(10)


def _stats(values: np.ndarray, scale: float = 1.0) -> str:
    v = np.asarray(values, float) * scale
    return f"p50 {np.percentile(v, 50):.2f}, p99 {np.percentile(v, 99):.2f}, max {v.max():.2f}"


def bench_delivery(fake: FakeRHX, rig: str, seconds: float) -> np.ndarray:
    """(a) ms from the fake's clock passing a block's end to read() returning it."""
    driver = open_driver(fake.url, rig=rig)
    driver.open()
    driver.start()
    t0 = fake._t0  # the fake's wall-clock time of sample 0
    delays = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        item = driver.read(timeout=0.5)
        if isinstance(item, Block):
            delays.append(time.monotonic() - (t0 + item.stop_sample / RATE))
    driver.close()
    return np.array(delays[10:]) * 1000.0  # the first blocks include the start


def bench_held(url: str, reactions: int) -> tuple[np.ndarray, object]:
    """(c) spike -> pulse, samples, with the patterns the keys hold."""
    driver = open_driver(url)
    driver.open()
    # loop.py's reactions on 8 electrodes only: F1-F8 hold their patterns
    engine = Engine(driver, loop.React(reactions=reactions, electrodes=8),
                    EngineConfig(duration_s=600.0))
    engine.run()
    driver.close()
    return engine.stats.latency_samples()[8:], driver.stats  # after each key's first upload


def bench_uploads(url: str) -> object:
    """(d) 64 patterns on 64 electrodes: each one an upload; the driver's tally."""
    driver = open_driver(url)
    driver.open()
    driver.start()
    pulse = StimPulse.biphasic(5.0, 200.0)
    for i in range(64):
        driver.stimulate(StimPattern.single([i], pulse))
        driver.read(timeout=0.1)
    driver.close()
    return driver.stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reactions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0, help="for (a)")
    args = parser.parse_args(argv)
    ms = 1000.0 / RATE
    with tempfile.TemporaryDirectory() as folder:
        rig = write_rig(Path(folder))
        with FakeRHX(sample_rate=RATE) as fake:
            print(f"fake RHX at {RATE / 1000:g} kHz, 128-sample blocks, 1 block per write")
            delivery = bench_delivery(fake, rig, args.seconds)
        print(f"(a) block end on the fake's clock -> read() returns it, ms: "
              f"{_stats(delivery)} ({len(delivery)} blocks; fake in this process)")
        print(f"    floor for a spike: up to 128 samples ({128 * ms:.2f} ms) waiting for its "
              "block to end, plus this")
        with served_fake() as url:
            print("(b)-(d): the fake RHX in a process of its own, as RHX is")
            devices = (("rhx://", f"{url}&rig={rig}"), ("sim://", "sim://?seed=7&rate=30000"))
            for name, device in devices:
                print(f"(b) {name}, loop.bench_reaction_latency:")
                out = loop.bench_reaction_latency(quick=args.reactions <= 200, device=device)
                print(f"    = p50 {out['p50_samples'] * ms:.2f} ms, "
                      f"p99 {out['p99_samples'] * ms:.2f} ms")
            held, stats = bench_held(f"{url}&rig={rig}", args.reactions)
            print(f"(c) rhx:// with the patterns F1-F8 hold ({stats.fast} fast-path triggers, "
                  f"{stats.uploads} uploads), spike -> pulse, ms: {_stats(held, ms)}")
            s = bench_uploads(f"{url}&rig={rig}")
    per = s.upload_commands / max(s.uploads, 1)
    print(f"(d) a pattern on a new electrode: {per:.0f} commands (its 12, 2 to take the key's "
          "last electrode off, `get runmode`); round trip on the fake, ms: "
          f"{_stats(np.array(s.upload_s) * 1000)} (the fake uploads at once; RHX also waits "
          "for the controller's USB writes)")


if __name__ == "__main__":
    main()
