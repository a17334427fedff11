"""Recorder figures: sustained NWB write rate and memory over a long recording.

Run: ``.venv/bin/python benchmarks/recording.py [--seconds-64 60] [--seconds-1024 20]
[--repeats 3] [--hour] [--dir /some/disk]``. Feeds the real ``Recorder`` pre-generated
int16 blocks (noise plus spikes, a few seconds cycled, consecutive start samples, 1 ms
blocks as the engine sends them) and spike batches (~5 Hz per channel) as fast as its
writer keeps up: the feeder waits while the writer is more than 1 s behind, so no block
should be dropped. Prints, at 64 ch / 25 kHz and 1024 ch / 30 kHz, the real-time factor
(seconds of data / wall seconds) from the first block to the end of ``on_stop`` (tables
included) and of the raw append alone, best of a few runs, with samples lost and file
size. ``--hour`` also records 3600 s at 64 ch (~11.5 GB, a few minutes) and samples the
process RSS every 10 s of data. Files go to a temporary folder deleted at the end.
Timings are from one (shared) machine and disk: an order of magnitude, not a promise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mea_control import __version__  # noqa: E402
from mea_control.layouts import load_layout  # noqa: E402
from mea_control.recording import tables  # noqa: E402
from mea_control.recording.writer import Recorder  # noqa: E402
from mea_control.types import Block, DeviceInfo, Layout, SpikeEvents  # noqa: E402

UV_PER_BIT = 0.195
NOISE_UV = 15.0
SPIKE_RATE_HZ = 5.0
WAIT_BACKLOG_S = 1.0
GOALS_RTF = {64: 20.0, 1024: 3.0}


def grid_layout(side: int = 32, pitch_um: float = 100.0) -> Layout:
    rows = [(r, c) for r in range(side) for c in range(side)]
    return Layout(
        name=f"grid{side}x{side}_{pitch_um:g}um",
        labels=tuple(f"r{r + 1:02d}c{c + 1:02d}" for r, c in rows),
        positions_um=np.array([(c * pitch_um, (side - 1 - r) * pitch_um) for r, c in rows]),
        diameters_um=np.full(len(rows), 30.0),
        can_stimulate=np.ones(len(rows), bool),
    )


def device(n_channels: int, sample_rate: float) -> DeviceInfo:
    layout = load_layout("grid8x8_200um") if n_channels == 64 else grid_layout()
    assert layout.n_electrodes == n_channels
    return DeviceInfo(f"bench{n_channels}", n_channels, sample_rate, UV_PER_BIT, layout)


def make_pool(info: DeviceInfo, seconds: float, block_n: int, seed: int = 0):
    """int16 data (noise + spikes) cut in blocks, and each block's spikes (None if none)."""
    rng = np.random.default_rng(seed)
    fs, n_ch = info.sample_rate, info.n_channels
    n = int(seconds * fs) // block_n * block_n
    data = np.empty((n, n_ch), np.int16)
    step = int(fs // 10)
    for i in range(0, n, step):
        chunk = rng.standard_normal((min(step, n - i), n_ch), dtype=np.float32)
        data[i:i + step] = np.round(chunk * np.float32(NOISE_UV / UV_PER_BIT))
    t = (np.arange(int(2e-3 * fs)) - int(0.4e-3 * fs)) / fs * 1e3  # ms from the trough
    shape = -np.exp(-0.5 * (t / 0.1) ** 2) + 0.2 * np.exp(-0.5 * ((t - 0.5) / 0.4) ** 2)
    n_spikes = int(SPIKE_RATE_HZ * seconds * n_ch)
    starts = np.sort(rng.integers(0, n - len(shape), n_spikes))
    channels = rng.integers(0, n_ch, n_spikes)
    amps = rng.uniform(40.0, 150.0, n_spikes)
    for s, c, a in zip(starts, channels, amps, strict=True):
        seg = data[s:s + len(shape), c] + a / UV_PER_BIT * shape
        data[s:s + len(shape), c] = np.clip(np.round(seg), -32768, 32767)
    peaks = starts + int(0.4e-3 * fs)
    edges = np.searchsorted(peaks, np.arange(0, n + 1, block_n))
    spikes = [
        SpikeEvents(peaks[lo:hi], channels[lo:hi], -amps[lo:hi]) if hi > lo else None
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    return data, spikes


def record(info: DeviceInfo, pool: tuple, seconds: float, folder: Path,
           rss_every_s: float | None = None) -> dict:
    """Feed ``seconds`` of data through a Recorder as fast as it writes; times and counters."""
    data, spikes = pool
    fs, block_n, pool_blocks = info.sample_rate, len(data) // len(spikes), len(spikes)
    path = folder / f"bench{info.n_channels}.nwb"
    provenance = {"software_version": __version__, "protocol": "benchmark",
                  "parameters": {"seconds": seconds}, "device_info": info.describe()}
    c0 = time.perf_counter()
    rec = Recorder(path, info, provenance, duration_s=seconds)
    create_s = time.perf_counter() - c0

    finalize_s = []  # time in tables.finalize, measured by wrapping it (behaviour unchanged)
    finalize = tables.finalize

    def timed_finalize(*args, **kwargs):
        f0 = time.perf_counter()
        try:
            return finalize(*args, **kwargs)
        finally:
            finalize_s.append(time.perf_counter() - f0)

    proc = psutil.Process()

    def total_rss() -> int:
        """This process and the recording process it started."""
        return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True)))

    rss = [(0.0, total_rss())]
    n_blocks = int(seconds * fs) // block_n
    check_every = max(1, int(0.1 * fs) // block_n)  # look at the backlog every 100 ms of data
    rss_every = int(rss_every_s * fs) // block_n if rss_every_s else 0
    waited, n_spikes = 0.0, 0
    t0 = time.perf_counter()
    for i in range(n_blocks):
        j = i % pool_blocks
        offset = (i - j) * block_n  # start sample of this pass over the pool
        rec.on_block(Block(i * block_n, data[j * block_n:(j + 1) * block_n], UV_PER_BIT), None)
        batch = spikes[j]
        if batch is not None:
            rec.on_spikes(SpikeEvents(batch.sample + offset, batch.channel, batch.amplitude_uV))
            n_spikes += len(batch)
        if i % check_every == 0:
            w0 = time.perf_counter()
            while rec.stats()["backlog_s"] > WAIT_BACKLOG_S:
                time.sleep(0.002)
            waited += time.perf_counter() - w0
        if rss_every and (i + 1) % rss_every == 0:
            rss.append(((i + 1) * block_n / fs, total_rss()))
    fed_s = time.perf_counter() - t0
    while rec.stats()["backlog_s"] > 0:
        time.sleep(0.001)
    raw_s = time.perf_counter() - t0
    summary: dict = {}
    tables.finalize = timed_finalize
    try:
        rec.on_stop(summary)
    finally:
        tables.finalize = finalize
    total_s = time.perf_counter() - t0
    stats = summary["recording"]
    path.unlink()
    data_s = n_blocks * block_n / fs
    return {
        "info": info, "data_s": data_s, "block_n": block_n, "create_s": create_s,
        "rtf": data_s / total_s, "rtf_raw": data_s / raw_s, "raw_s": raw_s, "total_s": total_s,
        "stop_s": total_s - raw_s, "finalize_s": sum(finalize_s), "spikes": n_spikes,
        "waited": waited / fed_s, "lost": stats["samples_lost"],
        "written": stats["samples_written"], "backlog_peak_s": stats["backlog_peak_s"],
        "bytes": stats["bytes"], "rss": rss, "rss_end": proc.memory_info().rss,
    }


def print_rates(runs_by_config: list[list[dict]]) -> None:
    print(f"{'data':<17}{'seconds':>8}{'to end of on_stop':>22}  {'goal':<11}{'raw append':>18}"
          f"{'on_stop':>10}{'tables':>9}{'file':>9}{'lost':>6}{'feeder waited':>15}")
    for runs in runs_by_config:
        r = max(runs, key=lambda run: run["rtf"])
        info = r["info"]
        goal = GOALS_RTF.get(info.n_channels, 0.0)
        verdict = "ok" if r["rtf"] >= goal else "MISS"
        print(f"{info.n_channels:>4} ch @ {info.sample_rate / 1000:g} kHz {r['data_s']:>8.0f}"
              f"{r['rtf']:>12.1f}x ({r['total_s']:5.1f} s)  >={goal:>3.0f}x {verdict:<4}"
              f"{r['rtf_raw']:>8.1f}x ({r['raw_s']:5.1f} s){r['stop_s']:>8.2f} s"
              f"{r['finalize_s']:>7.2f} s{r['bytes'] / 1e6:>6.0f} MB{r['lost']:>6}"
              f"{r['waited']:>15.0%}")
    for runs in runs_by_config:
        r = max(runs, key=lambda run: run["rtf"])
        rtfs = sorted(run["rtf"] for run in runs)
        spread = ", ".join(f"{x:.1f}x" for x in rtfs)
        print(f"  {r['info'].n_channels} ch: to end of on_stop, {len(runs)} run(s): {spread}; "
              f"samples lost in all: {sum(run['lost'] for run in runs)}\n"
              f"    {r['written']} samples written in blocks of {r['block_n']}, "
              f"{r['spikes']} spikes, backlog peak {r['backlog_peak_s']:.2f} s, "
              f"structure by pynwb {r['create_s']:.2f} s (not timed)")
    print("  best run shown. raw append: first block until the writer has taken every block; "
          "on_stop: drain,\n  close, journal -> tables (tables = tables.finalize alone); "
          "feeder waited: share of feeding\n  time spent waiting for the writer's backlog to "
          f"fall under {WAIT_BACKLOG_S:g} s")


def peak_rss() -> int | None:
    """The process's peak RSS so far, bytes (None without the resource module: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


def print_memory(r: dict, peak: int | None) -> None:
    mb = np.array([v for _, v in r["rss"]]) / 1e6
    times = np.array([t for t, _ in r["rss"]])

    def at(frac: float) -> float:
        return float(mb[np.argmin(np.abs(times - frac * r["data_s"]))])

    print(f"one hour at 64 ch @ 25 kHz: {r['rtf']:.1f}x real time ({r['total_s']:.0f} s wall; "
          f"raw append {r['rtf_raw']:.1f}x, on_stop {r['stop_s']:.1f} s of which tables "
          f"{r['finalize_s']:.1f} s), file {r['bytes'] / 1e9:.2f} GB, {r['spikes']} spikes, "
          f"{r['lost']} samples lost")
    print(f"  RSS (with the recording process) before the first block {mb[0]:.0f} MB; at 10 % "
          f"{at(0.1):.0f} MB, 50 % "
          f"{at(0.5):.0f} MB, 100 % {at(1.0):.0f} MB; highest sample {mb.max():.0f} MB "
          f"({len(mb) - 1} samples, every 10 s of data)")
    peak_text = "n/a" if peak is None else f"{peak / 1e6:.0f} MB"
    print(f"  after on_stop {r['rss_end'] / 1e6:.0f} MB; process peak (ru_maxrss, tables "
          f"included) {peak_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-64", type=float, default=60.0, help="data at 64 ch, s")
    parser.add_argument("--seconds-1024", type=float, default=20.0, help="data at 1024 ch, s")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (best shown)")
    parser.add_argument("--block-ms", type=float, default=1.0, help="block length (engine: 1)")
    parser.add_argument("--pool-s", type=float, default=3.0, help="generated data, cycled")
    parser.add_argument("--hour", action="store_true", help="also record 3600 s (~11.5 GB)")
    parser.add_argument("--dir", default=None, help="where the temporary folder goes")
    args = parser.parse_args()

    def pool(info: DeviceInfo) -> tuple:
        return make_pool(info, args.pool_s, max(1, round(args.block_ms * info.sample_rate / 1e3)))

    with tempfile.TemporaryDirectory(prefix="mea-bench-", dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"Recorder write rate into {folder}: flush every 100 ms of data, "
              f"{args.block_ms:g} ms blocks, spikes at {SPIKE_RATE_HZ:g} Hz per channel")
        hour = None
        if args.hour:  # first, so that the process peak RSS is this run's
            info = device(64, 25_000.0)
            hour = record(info, pool(info), 3600.0, folder, rss_every_s=10.0)
            peak = peak_rss()
        runs_by_config = []
        for n_ch, fs, seconds in ((64, 25_000.0, args.seconds_64),
                                  (1024, 30_000.0, args.seconds_1024)):
            info = device(n_ch, fs)
            generated = pool(info)
            runs_by_config.append([record(info, generated, seconds, folder)
                                   for _ in range(args.repeats)])
        print_rates(runs_by_config)
        if hour is not None:
            print_memory(hour, peak)


if __name__ == "__main__":
    main()
