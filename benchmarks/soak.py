"""Soak: does a long recorded run stay flat in memory, threads and speed?

Run: ``.venv/bin/python benchmarks/soak.py [--hours H | --seconds S] [--fast] [--no-raw]
[--device URL] [--block-ms MS] [--every S] [--dir DIR] [--keep]``, or ``--quick`` (one
simulated minute in fast mode sampled every 0.5 s: the suite's check that this script works).

Starts ``mea-control run bss_isomura --duration S --record FILE`` (64 channels on the
default ``sim://``, every other setting at its default) as a subprocess and samples,
every few seconds, the resident memory of the CLI and its child processes (the
recorder's disk process), their thread count and the size of the recording (file plus
side journal). Prints the samples as they come, then a table and the memory slope in MB
per hour (least squares over the second half of the samples taken while all of the run's
processes were up, against wall time and, for
a fast run, against simulated time). The recording goes to a temporary folder (or
``--dir``) and is deleted unless ``--keep``. Exit status: the run's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mea_control.recording.journal import journal_path  # noqa: E402

MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    wall_s: float
    rss_mb: float  # the CLI and its children, summed
    threads: int
    processes: int
    file_mb: float


def command(args: argparse.Namespace, record: Path, summary: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mea_control.cli", "run", args.protocol, "--device",
           args.device, "--duration", f"{args.seconds:g}", "--record", str(record),
           "--summary-json", str(summary), "--quiet"]
    if args.fast:
        cmd.append("--fast")
    if args.no_raw:
        cmd.append("--no-raw")
    for pair in args.param:
        cmd += ["--param", pair]
    if args.block_ms is not None:
        cmd += ["--block-ms", f"{args.block_ms:g}"]
    return cmd


def sample(proc: psutil.Process, record: Path, t0: float) -> Sample | None:
    """The run's processes now; None once the CLI has gone."""
    rss, threads, n = 0, 0, 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    for p in family:
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                threads += p.num_threads()
            n += 1
        except psutil.NoSuchProcess:
            if p is proc:
                return None
    size = sum(f.stat().st_size for f in (record, journal_path(record)) if f.exists())
    return Sample(time.monotonic() - t0, rss / MB, threads, n, size / MB)


def running(samples: list[Sample]) -> list[Sample]:
    """The samples taken while every process of the run was up (not starting or closing)."""
    most = max(s.processes for s in samples)
    return [s for s in samples if s.processes == most]


def slope_mb_per_hour(samples: list[Sample]) -> float:
    """Least-squares RSS slope over the second half of the run, MB per wall hour."""
    steady = running(samples)
    half = steady[len(steady) // 2:]
    if len(half) < 2 or half[-1].wall_s <= half[0].wall_s:
        return float("nan")
    t = np.array([s.wall_s for s in half]) / 3600.0
    return float(np.polyfit(t, [s.rss_mb for s in half], 1)[0])


def table(samples: list[Sample], rows: int = 12) -> str:
    picks = sorted({round(i) for i in np.linspace(0, len(samples) - 1, min(rows, len(samples)))})
    lines = ["   wall s   RSS MB  threads  procs   file MB"]
    for s in (samples[i] for i in picks):
        lines.append(f"{s.wall_s:9.0f} {s.rss_mb:8.1f} {s.threads:8d} {s.processes:6d} "
                     f"{s.file_mb:9.1f}")
    return "\n".join(lines)


def soak(args: argparse.Namespace, folder: Path) -> int:
    record, summary_file = folder / "soak.nwb", folder / "soak-summary.json"
    cmd = command(args, record, summary_file)
    print("command:", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    samples: list[Sample] = []
    while child.poll() is None:
        s = sample(proc, record, t0)
        if s is not None:
            samples.append(s)
            print(f"t={s.wall_s:8.1f} s  rss={s.rss_mb:8.1f} MB  threads={s.threads:3d}  "
                  f"procs={s.processes}  file={s.file_mb:9.1f} MB", flush=True)
        time.sleep(args.every)
    wall = time.monotonic() - t0
    code = child.wait()
    report(samples, wall, code, summary_file)
    return code


def report(samples: list[Sample], wall: float, code: int, summary_file: Path) -> None:
    if not samples:
        print(f"the run ended (exit {code}) before the first sample")
        return
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    slope = slope_mb_per_hour(samples)
    print()
    print(table(samples))
    print(f"exit {code}; wall {wall:.0f} s; simulated {summary.get('duration_s', 0):.0f} s "
          f"({summary.get('realtime_factor', '?')}x real time)")
    steady = running(samples)
    print(f"peak RSS {max(s.rss_mb for s in steady):.1f} MB while running, "
          f"{max(s.rss_mb for s in samples):.1f} MB overall (the end writes the tables); "
          f"threads {min(s.threads for s in steady)}-{max(s.threads for s in steady)} "
          f"while running; "
          f"file {samples[-1].file_mb:.1f} MB at the last sample; "
          f"{summary.get('recording', {}).get('samples_lost', '?')} raw samples lost; "
          f"watchdog trips {summary.get('watchdog_trips', '?')}")
    line = f"memory slope over the second half: {slope:+.1f} MB per wall hour"
    factor = summary.get("realtime_factor")
    if factor and factor > 1.5:
        line += f", {slope / factor:+.2f} MB per simulated hour"
    print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--hours", type=float, help="simulated hours (default 1)")
    length.add_argument("--seconds", type=float, help="simulated seconds")
    ap.add_argument("--fast", action="store_true", help="run as fast as possible")
    ap.add_argument("--no-raw", action="store_true", help="record no raw samples")
    ap.add_argument("--device", default="sim://", help="device URL (default sim://)")
    ap.add_argument("--protocol", default="bss_isomura")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a protocol parameter, e.g. sessions=113 for 8 h of bss_isomura")
    ap.add_argument("--block-ms", type=float, help="block length (default: the CLI's)")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--dir", type=Path, help="where the recording goes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the recording")
    ap.add_argument("--quick", action="store_true",
                    help="one simulated minute, fast, sampled every 0.5 s (the suite runs it)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.fast, args.every = 60.0, True, 0.5
    args.seconds = args.seconds or 3600.0 * (args.hours or 1.0)
    folder = Path(tempfile.mkdtemp(prefix="mea-soak-", dir=args.dir))
    try:
        return soak(args, folder)
    finally:
        if args.keep:
            print(f"recording kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
