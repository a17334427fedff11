"""Process faults over the real wire (issue 19): kill a recorded run, read the device's log.

Each run serves the simulated device on a pty with its own log (``mea-control sim serve
--pty --pulse-log``), starts ``mea-control run benchmarks/booked_trains.py --device
serial://PTY --record run.nwb`` (a 10-pulse train at 20 Hz booked 250 ms ahead every
100 ms: something is always booked or in flight), waits for the first pulse in the
device's log, waits a random delay more, and kills the CLI with SIGKILL or SIGTERM
(alternately). Then:

(a) the recording: after SIGTERM the exit code is 143 and the file is complete, its
    executed pulses exactly those the device logged; after SIGKILL the file opens
    incomplete (raw samples up to the last flush: how far behind the death is measured),
    ``mea-control recover`` writes the side journal's spikes and pulses into it, and every
    pulse it then lists as executed is in the device's log;
(b) the device's log: every pulse ran before the entry that ended stimulation after the
    kill (``abort``, ``host_timeout``, ``host_gone`` or ``stop``; exact, in device samples),
    and none later than ``host_timeout_ms`` plus MARGIN_MS after the kill (the kill's wall
    time placed on the device's clock through its ``start`` entry).

Run: ``.venv/bin/python benchmarks/kill.py [--kills 50] [--seed 0]`` prints a table:
runs, kills by signal, files readable, recovered, pulses checked, late pulses (must be 0)
and the worst time from the kill to the last pulse; exit code 1 on any problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mea_control import recording  # noqa: E402
from mea_control.pulse_history import STATE_DIR_ENV  # noqa: E402

PROTOCOL = ROOT / "benchmarks" / "booked_trains.py"
CLI = [sys.executable, "-m", "mea_control.cli"]
HOST_TIMEOUT_MS = 300
#: What a busy machine may add to the device's reaction to a death (a pty hang-up, the
#: missing heartbeat or the host's abort), on top of host_timeout_ms.
MARGIN_MS = 250.0
#: Entries of the device's log after which nothing booked before them runs.
ENDS = ("abort", "host_timeout", "host_gone", "stop")
#: Generous waits (a busy 2-core machine), never asserted on.
STARTUP_S = 90.0
EXIT_S = 60.0


@dataclass
class Kill:
    """One killed run and what was found."""

    signal: str
    delay_s: float
    held: bool = False  # the port stayed open after the kill: only the heartbeat's silence tells
    exit_code: int | None = None
    state: str = ""  # the file's health before recover: complete, incomplete, unreadable
    recovered: bool = False
    pulses: int = 0  # in the device's log
    late: list[dict[str, Any]] = field(default_factory=list)
    death_to_last_pulse_ms: float = float("-inf")
    death_to_end_ms: float | None = None  # kill -> the device's entry that ended stimulation
    end_kind: str = ""  # that entry's kind
    behind_ms: float | None = None  # kill -> the last raw sample in the file (SIGKILL)
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- the device's log
def read_log(path: Path) -> list[dict[str, Any]]:
    """The served device's JSON-lines log (a torn last line is skipped)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else ():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def pulses_of(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log if e["kind"] == "pulse"]


def check_device(log: list[dict[str, Any]], died: float, fs: float, host_timeout_ms: float,
                 margin_ms: float, kill: Kill) -> None:
    """Fill ``kill`` from the device's log: the pulses that ran too late after ``died``
    (wall time of the kill), and the times from it to the last pulse and to the end."""
    starts = [e for e in log if e["kind"] == "start" and e["wall"] <= died]
    if not starts:
        kill.problems.append("the device's log has no start before the kill")
        return
    start = starts[-1]
    died_sample = start["sample"] + (died - start["wall"]) * fs
    ran = [p for p in pulses_of(log) if p["wall"] >= start["wall"]]
    kill.pulses = len(ran)
    end = next((e for e in log if e["kind"] in ENDS and e["wall"] >= died), None)
    limit = died_sample + (host_timeout_ms + margin_ms) * fs / 1000
    if end is None:
        kill.problems.append("the device never stopped stimulating after the kill")
    else:
        kill.death_to_end_ms = (end["sample"] - died_sample) * 1000 / fs
        kill.end_kind = end["kind"]
        limit = min(limit, end["sample"] - 1)  # nothing runs from the end's sample on
    kill.late = [p for p in ran if p["sample"] > limit]
    if ran:
        kill.death_to_last_pulse_ms = (ran[-1]["sample"] - died_sample) * 1000 / fs
    if kill.late:
        first = kill.late[0]
        kill.problems.append(
            f"{len(kill.late)} pulse(s) ran late, the first at sample {first['sample']} "
            f"({(first['sample'] - died_sample) * 1000 / fs:.0f} ms after the kill; the device "
            f"ended stimulation at sample {end['sample'] if end else '-'})")


# ------------------------------------------------------------------------- the recording
def executed(rec: recording.Recording) -> Counter:
    """The file's executed pulses as (ticket, electrode, sample) counts."""
    p = rec.pulses
    rows = zip(p.get("status", ()), p.get("ticket", ()), p.get("electrode", ()),
               p.get("execution_sample", ()), strict=True)
    return Counter((int(t), int(e), int(s)) for status, t, e, s in rows if status == "executed")


def device_ran(log: list[dict[str, Any]]) -> Counter:
    return Counter((p["ticket"], p["channel"], p["sample"]) for p in pulses_of(log))


def check_file(path: Path, log: list[dict[str, Any]], died_sample: float | None,
               fs: float, kill: Kill) -> None:
    """(a): the file opens; after SIGTERM complete and true to the device's log; after
    SIGKILL incomplete, recoverable, and claiming no pulse the device did not run."""
    try:
        with recording.open(path) as rec:
            kill.state = recording.health(rec)[0]
            journal_spikes = len(rec.spikes)
            if died_sample is not None and rec.samples is not None:
                kill.behind_ms = (died_sample - rec.first_sample - rec.n_samples) * 1000 / fs
            before = executed(rec)
    except recording.RecordingError as exc:
        kill.state = "unreadable"
        kill.problems.append(f"the file does not open: {exc}")
        return
    ran = device_ran(log)
    if kill.signal == "SIGTERM":
        if kill.state != "complete":
            kill.problems.append(f"after SIGTERM the file is {kill.state}, not complete")
        if before != ran:
            kill.problems.append(f"after SIGTERM the file lists {sum(before.values())} executed "
                                 f"pulses, the device ran {sum(ran.values())}; not in the "
                                 f"log: {sorted(before - ran)[:3]}, not in the file: "
                                 f"{sorted(ran - before)[:3]}")
        return
    if kill.state == "complete":  # SIGKILL before the recorder ever started writing tables
        kill.problems.append("after SIGKILL the file is complete: the kill came too late")
        return
    done = subprocess.run(CLI + ["recover", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=EXIT_S)
    if done.returncode != 0:
        kill.problems.append(f"recover failed: {done.stderr.strip()[-300:]}")
        return
    with recording.open(path) as rec:
        kill.recovered = rec.complete and recording.health(rec)[0] == "recovered"
        after, spikes = executed(rec), len(rec.spikes)
    if not kill.recovered:
        kill.problems.append("recover did not complete the file")
    if spikes != journal_spikes or after != before:
        kill.problems.append(f"recover changed what the journal held: spikes {journal_spikes} "
                             f"-> {spikes}, executed pulses {sum(before.values())} -> "
                             f"{sum(after.values())}")
    if after - ran:
        kill.problems.append(f"the recovered file claims {sum((after - ran).values())} pulses "
                             f"the device never ran, e.g. {sorted(after - ran)[:3]}")


# --------------------------------------------------------------------------------- a run
@contextlib.contextmanager
def served(log: Path, host_timeout_ms: int = HOST_TIMEOUT_MS) -> Iterator[str]:
    """The simulated device on a pty with its own log; yields the pty's name."""
    server = subprocess.Popen(
        CLI + ["sim", "serve", "--pty", "--pulse-log", str(log),
               "--host-timeout-ms", str(host_timeout_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        match = re.search(r"serving on (\S+)", line)
        if not match:
            raise RuntimeError(f"the device did not serve: {line!r} {server.stderr.read()[-500:]}")
        yield match[1]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()
        server.stderr.close()


def wait_for(what: str, until: Any, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:g} s")
        time.sleep(0.02)


def group_gone(pgid: int) -> bool:
    """True once no process of the run's group (the CLI, its recording process) is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@contextlib.contextmanager
def port_held(pty: str, hold: bool) -> Iterator[threading.Event]:
    """With ``hold``, keep the pty open beside the host, as a USB adapter that stays plugged
    in after its host died: the device sees no hang-up, only silence. Set the yielded event
    once the host is dead: from then on what the device sends is read and dropped."""
    dead = threading.Event()
    if not hold:
        yield dead
        return
    fd = os.open(pty, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    over = threading.Event()

    def drain() -> None:
        dead.wait()
        while not over.is_set():
            try:
                os.read(fd, 1 << 16)
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield dead
    finally:
        over.set()
        dead.set()
        os.close(fd)
        reader.join(5)


def kill_run(workdir: Path, sig: signal.Signals, delay_s: float, hold: bool = False,
             host_timeout_ms: int = HOST_TIMEOUT_MS, margin_ms: float = MARGIN_MS,
             protocol: Path = PROTOCOL) -> Kill:
    """Serve a device, run a recorded protocol over serial://, kill the CLI ``delay_s``
    after the device's first pulse, wait for its recording process to finish, check.
    ``hold``: the port stays open after the kill (see :func:`port_held`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path, nwb = workdir / "device.jsonl", workdir / "run.nwb"
    kill = Kill(sig.name, delay_s, hold)
    fs = 25_000.0
    env = {**os.environ, STATE_DIR_ENV: str(workdir / "state")}
    with served(log_path, host_timeout_ms) as pty, port_held(pty, hold) as dead:
        run = subprocess.Popen(
            CLI + ["run", str(protocol), "--device", f"serial://{pty}", "--record", str(nwb),
                   "--duration", "600", "--quiet"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own group: the recording process is found by it
        try:
            wait_for("the device's first pulse", lambda: pulses_of(read_log(log_path)),
                     STARTUP_S, run)
            time.sleep(delay_s)
            died = time.time()
            run.send_signal(sig)
            kill.exit_code = run.wait(EXIT_S)
            dead.set()
            deadline = time.monotonic() + EXIT_S
            while not group_gone(run.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            # the device notices (a pty hang-up, or host_timeout_ms of silence), then a
            # switch that failed would show pulses here
            time.sleep(2 * host_timeout_ms / 1000 + 0.5)
        except RuntimeError as exc:
            kill.problems.append(f"{exc}: {run.stderr.read()[-500:] if run.poll() else ''}")
            return kill
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            run.stderr.close()
    log = read_log(log_path)
    check_device(log, died, fs, host_timeout_ms, margin_ms, kill)
    if sig == signal.SIGTERM and kill.exit_code != 128 + signal.SIGTERM:
        kill.problems.append(f"exit code {kill.exit_code} after SIGTERM, not 143")
    start = next((e for e in reversed(log) if e["kind"] == "start" and e["wall"] <= died), None)
    died_sample = start["sample"] + (died - start["wall"]) * fs if start else None
    check_file(nwb, log, died_sample if sig == signal.SIGKILL else None, fs, kill)
    return kill


# ---------------------------------------------------------------------------- the table
def table(kills: list[Kill], margin_ms: float, host_timeout_ms: float) -> str:
    by_signal = Counter(k.signal for k in kills)
    sigkills = [k for k in kills if k.signal == "SIGKILL"]
    readable = sum(k.state not in ("", "unreadable") for k in kills)
    last = [k.death_to_last_pulse_ms for k in kills if k.pulses]
    ends = [k.death_to_end_ms for k in kills if k.death_to_end_ms is not None]
    behind = [k.behind_ms for k in kills if k.behind_ms is not None]
    rows = [
        ("runs", len(kills)),
        ("kills by signal", ", ".join(f"{s} {n}" for s, n in sorted(by_signal.items()))
         + f" ({sum(k.held for k in kills)} SIGKILLs with the port held open)"),
        ("files readable", f"{readable} of {len(kills)}"),
        ("recovered (SIGKILL)", f"{sum(k.recovered for k in sigkills)} of {len(sigkills)}"),
        ("complete with exit 143 (SIGTERM)",
         f"{sum(k.state == 'complete' and k.exit_code == 143 for k in kills)} of "
         f"{by_signal['SIGTERM']}"),
        ("pulses checked", sum(k.pulses for k in kills)),
        (f"late pulses (> {host_timeout_ms:g} + {margin_ms:g} ms, or after the device's end)",
         sum(len(k.late) for k in kills)),
        ("worst kill -> last pulse", f"{max(last):.1f} ms" if last else "-"),
        ("worst kill -> device ended stimulation", f"{max(ends):.1f} ms" if ends else "-"),
        ("worst raw data lost at SIGKILL (kill -> last sample in the file)",
         f"{max(behind):.0f} ms" if behind else "-"),
        ("runs with problems", sum(bool(k.problems) for k in kills)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=4.0, metavar="S",
                        help="kill within this many seconds of the first pulse (default 4)")
    parser.add_argument("--margin-ms", type=float, default=MARGIN_MS)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kills = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mea-kill-") as tmp:
        for i in range(args.kills):
            sig = (signal.SIGKILL, signal.SIGTERM)[i % 2]
            hold = sig == signal.SIGKILL and i % 4 == 2  # every other SIGKILL
            kill = kill_run(Path(tmp) / f"run{i}", sig, rng.uniform(0.0, args.max_delay),
                            hold=hold, margin_ms=args.margin_ms)
            kills.append(kill)
            end = (f"{kill.death_to_end_ms:.0f} ms" if kill.death_to_end_ms is not None
                   else "-")
            held = " (port held)" if hold else ""
            print(f"run {i}: {kill.signal}{held} {kill.delay_s:.2f} s after the first pulse, exit "
                  f"{kill.exit_code}, file {kill.state}{', recovered' if kill.recovered else ''}"
                  f", {kill.pulses} pulses, device ended {end} after the kill, last pulse "
                  f"{kill.death_to_last_pulse_ms:.0f} ms", flush=True)
            for problem in kill.problems:
                print(f"  problem: {problem}", flush=True)
    print(f"\n{args.kills} runs in {time.monotonic() - started:.0f} s "
          f"(seed {args.seed}, host_timeout_ms {HOST_TIMEOUT_MS}, margin {args.margin_ms:g} ms)")
    print(table(kills, args.margin_ms, HOST_TIMEOUT_MS))
    return 1 if any(k.problems for k in kills) else 0


if __name__ == "__main__":
    sys.exit(main())
