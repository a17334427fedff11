"""Simulator figures: speed of raw generation, firing, bursts and evoked responses.

Run: ``.venv/bin/python benchmarks/sim.py [--seconds 60] [--seed 1]``. For the Poisson
culture (``culture=poisson_burst``; the network culture has ``benchmarks/culture.py``), prints the
real-time factor of ``sim://`` in fast mode (64 channels, 25 kHz, 1 ms blocks),
the mean firing rate per electrode, the network burst interval and duration,
and the spikes evoked near a stimulated electrode against the spontaneous count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.sim import SimDriver  # noqa: E402
from mea_control.bursts import network_bursts, starts_and_stops  # noqa: E402
from mea_control.driver import open_driver  # noqa: E402
from mea_control.types import Block, StimPattern, StimPulse  # noqa: E402


def fast_driver(url: str) -> SimDriver:
    driver = open_driver(url)
    assert isinstance(driver, SimDriver)
    driver.open()
    driver.set_fast(True)
    driver.start()
    return driver


def speed(seed: int, seconds: float) -> None:
    driver = fast_driver(f"sim://?seed={seed}&culture=poisson_burst")
    for _ in range(200):  # warm up (numba compilation, first noise chunks)
        driver.read()
    n = int(seconds * 1000)
    t0 = time.perf_counter()
    for _ in range(n):
        driver.read()
    elapsed = time.perf_counter() - t0
    print(
        f"raw generation, 64 ch @ 25 kHz, 1 ms blocks: {elapsed / n * 1e6:.1f} us/block, "
        f"{n / 1000 / elapsed:.1f}x real time"
    )


def activity(seed: int, seconds: float) -> None:
    driver = fast_driver(f"sim://?seed={seed}&culture=poisson_burst&truth=1")
    for _ in range(int(seconds * 1000)):
        driver.read()
    events, _ = driver.ground_truth()
    n_ch = driver.info.n_channels
    per_channel = np.bincount(events.channel, minlength=n_ch) / seconds
    active = per_channel > 0
    print(
        f"firing: {per_channel.mean():.2f} Hz per electrode (all {n_ch}), "
        f"{per_channel[active].mean():.2f} Hz per active electrode ({active.sum()} active)"
    )
    rate = driver.info.sample_rate
    onsets, ends = np.divide(starts_and_stops(
        network_bursts(events.sample, rate, 0, int(seconds * rate))), rate)
    if len(onsets) > 1:
        ibi = np.diff(onsets)
        dur = (ends - onsets) * 1e3
        print(
            f"bursts: {len(onsets)} in {seconds:g} s, interval {ibi.mean():.2f} +- "
            f"{ibi.std():.2f} s, duration median {np.median(dur):.0f} ms "
            f"(10-90%: {np.percentile(dur, 10):.0f}-{np.percentile(dur, 90):.0f} ms)"
        )
    else:
        print(f"bursts: {len(onsets)} in {seconds:g} s")


def evoked(seed: int, trials: int) -> None:
    """Spikes 5-50 ms after a pulse on units near electrode 44, per amplitude."""
    driver = fast_driver(f"sim://?seed={seed}&bursts=0&culture=poisson_burst&truth=1")
    layout = driver.info.layout
    rate = driver.info.sample_rate
    stim_ch = layout.channel("44")
    near = np.nonzero(layout.distances_um(stim_ch) <= 250.0)[0]
    amplitudes = (5.0, 10.0, 20.0, 40.0)
    executed: dict[float, list[int]] = {a: [] for a in amplitudes}
    for a in amplitudes:
        for _ in range(trials):
            ticket_sample = driver.next_sample
            driver.stimulate(StimPattern.single([stim_ch], StimPulse.biphasic(a, 200)))
            executed[a].append(ticket_sample)
            for _ in range(250):
                while not isinstance(driver.read(), Block):
                    pass
    events, _ = driver.ground_truth()
    is_near = np.isin(events.channel, near)
    samples = events.sample[is_near]
    lo, hi = int(0.005 * rate), int(0.050 * rate)

    def count(starts: list[int], a: int, b: int) -> int:
        s = np.asarray(starts)
        return int((np.searchsorted(samples, s + b) - np.searchsorted(samples, s + a)).sum())

    print(
        f"evoked on {len(near)} electrodes within 250 um of 44, {trials} trials each, "
        "spikes in 5-50 ms after the pulse (spontaneous: same window before it):"
    )
    for a in amplitudes:
        ev = count(executed[a], lo, hi)
        spont = count(executed[a], -hi, -lo)
        print(
            f"  {a:4.0f} uA x 200 us: evoked {ev:5d}  spontaneous {spont:4d}  "
            f"({ev / max(spont, 1):.1f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated time per figure")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trials", type=int, default=40, help="pulses per amplitude")
    args = parser.parse_args()
    speed(args.seed, min(args.seconds, 20.0))
    activity(args.seed, args.seconds)
    evoked(args.seed, args.trials)


if __name__ == "__main__":
    main()
