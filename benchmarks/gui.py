"""GUI figures: the live views' frame cost offscreen, and the window's effect on the loop.

Run ``python benchmarks/gui.py [--quick] [--repeats 3]`` (Qt's offscreen platform unless
QT_QPA_PLATFORM says otherwise). Parts:

(a) :func:`bench_frames` - the cost of one frame of the main window, in wall ms on the
    GUI thread, while ``sim://?seed=1`` is monitored in real time by a rig process (a
    :class:`RemoteSession`, as ``mea-control gui`` runs it: 64 channels at 25 kHz; live
    data, not synthetic snapshots): ``LiveBuffers.snapshot`` (taking the new samples from
    the shared rings and folding them into envelopes; traces of 8 or 64 electrodes in rows
    or all 64 in the array layout ("64 grid"), over 10 s or 60 s windows, the raster and
    rates of all 64) and each view's ``update_view`` plus the paints the event loop then
    does (a few ``processEvents`` calls: pyqtgraph's scene paints in two passes). Frames
    come every 33 ms as the window's timer makes them. The 60 s windows wait for 60 s of
    data (``--quick``: what 2 s gave). Goal: traces + raster + heatmap <= 10 ms a frame.
(b) :func:`bench_gui_latency` - benchmarks/loop.py's (c) (spike -> pulse execution in
    real time on the simulator) without any GUI; with the GUI's feed filled by the run but
    no window; with a MainWindow drawing that feed at 30 Hz in the same process (the run
    on another thread); and with the run in a child process filling the rings in shared
    memory while the window draws them (what ``mea-control gui`` does). Goal: p99 no more
    than 10 % above the run without GUI.

Timings are from a shared 2-core machine: each figure is given as a range over rounds.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # one core; set before numba loads
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from multiprocessing import shared_memory  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PySide6.QtCore import QEvent, QEventLoop, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gui_rig import measured_run  # noqa: E402
from mea_control.driver import open_driver  # noqa: E402
from mea_control.gui.feed import RING_BYTES, LiveFeed, Rings  # noqa: E402
from mea_control.gui.remote import RemoteSession, yield_cpu_to_the_rig  # noqa: E402
from mea_control.gui.session import RigSession  # noqa: E402
from mea_control.gui.window import FRAME_MS, MainWindow  # noqa: E402

DEVICE = "sim://?seed=1"
GOAL_FRAME_MS = 10.0
GOAL_P99_WORSE = 0.10
MS_PER_SAMPLE = 1000.0 / 25_000.0  # the simulator's rate
PARTS = ("snapshot", "traces", "raster", "heatmap", "psth", "model")
TOGETHER = ("traces", "raster", "heatmap")


def _window(session: RigSession, folder: str, cls: type = MainWindow) -> MainWindow:
    """A main window shown offscreen, with settings in ``folder`` (not the user's)."""
    settings = QSettings(str(Path(folder) / "settings.ini"), QSettings.Format.IniFormat)
    window = cls(session=session, settings=settings, confirm=lambda question: True)
    window.show()
    return window


def _discard(window: MainWindow) -> None:
    """Close and delete the window now, and collect the garbage (the next run starts clean)."""
    window.timer.stop()
    window.close()
    window.deleteLater()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


def _paint(app: QApplication) -> None:
    """Let the event loop do what an update left it (the second pass repaints too)."""
    for _ in range(3):
        app.processEvents()


# -- (a) frame cost --------------------------------------------------------------------------
def bench_frames(app: QApplication, window: MainWindow, window_s: float, traces: str,
                 frames: int, warmup: int = 5) -> dict[str, np.ndarray]:
    """Wall ms per frame of the snapshot and of each view (update_view + paint), for
    ``traces``: "8" or "64" electrodes in rows, or "64 grid" (every electrode on the array);
    the traces' time base is the raster's window (the heaviest)."""
    grid = traces.endswith("grid")
    window.traces.set_arrangement("array" if grid else "rows")
    chans = window.traces.grid.channels() if grid else list(range(int(traces)))
    buffers = window.session.buffers
    views = {"traces": window.traces, "raster": window.raster, "heatmap": window.array,
             "psth": window.psth, "model": window.model}
    ms = {part: np.empty(frames + warmup) for part in PARTS}
    spikes = np.empty(frames + warmup)
    due = time.perf_counter()
    for i in range(frames + warmup):
        due = max(due + FRAME_MS / 1000.0, time.perf_counter())
        t0 = time.perf_counter()
        snap = buffers.snapshot(window_s, chans,  # as MainWindow.refresh()
                                pixels=window.traces.columns(len(chans)))
        t1 = time.perf_counter()
        ms["snapshot"][i] = t1 - t0
        for name, view in views.items():
            view.update_view(snap)
            _paint(app)
            t0, t1 = t1, time.perf_counter()
            ms[name][i] = t1 - t0
        spikes[i] = len(snap.spike_t)
        time.sleep(max(0.0, due - time.perf_counter()))
    out = {part: 1e3 * v[warmup:] for part, v in ms.items()}
    out["spikes"] = spikes[warmup:]
    return out


def run_frames(app: QApplication, quick: bool, repeats: int) -> dict:
    """(a) for 8 and 64 traces in rows and 64 on the array over 10 s and 60 s, ``repeats``
    rounds each: {"rounds":
    {(window s, traces): [per-part ms of each round]}, "data_s": {window s: data at the end}}."""
    frames, fill = (12, 2.0) if quick else (150, None)
    results: dict = {"rounds": {}, "data_s": {}}
    with tempfile.TemporaryDirectory() as folder:
        session = RemoteSession()  # the rig in its own process, as mea-control gui runs it
        window = _window(session, folder)
        window.timer.stop()  # the benchmark makes the frames
        try:
            window.connect_device(DEVICE)
            fs = session.info.sample_rate
            for window_s in (10.0, 60.0):
                need = (fill or window_s) * fs
                if not session.buffers.wait_for(lambda n=need: session.buffers.now >= n,
                                                window_s + 30.0):
                    raise RuntimeError(f"{DEVICE} gave no {need / fs:g} s of data")
                for _ in range(repeats):
                    for traces in ("8", "64", "64 grid"):
                        rounds = results["rounds"].setdefault((window_s, traces), [])
                        rounds.append(bench_frames(app, window, window_s, traces, frames))
                results["data_s"][window_s] = session.buffers.now / fs
        finally:
            _discard(window)
            session.close(timeout=10.0)
    return results


def _stats(rounds: list[dict[str, np.ndarray]], parts: tuple[str, ...]) -> tuple[str, str]:
    """'a-b' ranges over rounds of the median and p95 of the per-frame sum of ``parts``."""
    sums = [sum(r[p] for p in parts) for r in rounds]
    cells = []
    for q in (50, 95):
        values = [float(np.percentile(s, q)) for s in sums]
        lo, hi = min(values), max(values)
        cells.append(f"{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}")
    return cells[0], cells[1]


def print_frames(results: dict, repeats: int) -> None:
    first = next(iter(results["rounds"].values()))
    print(f"(a) frame cost offscreen, wall ms on the GUI thread: {DEVICE} monitored live in "
          f"real time,\n    a frame every {FRAME_MS} ms; median and p95 over "
          f"{len(first[0]['snapshot'])} frames, ranges over {repeats} round(s)")
    print(f"  {'window':<8}{'traces':>7}  {'part':<34}{'median':>12}{'p95':>12}")
    rows = [(p, (p,)) for p in PARTS] + [
        ("traces + raster + heatmap", TOGETHER), ("frame (snapshot + every view)", PARTS)]
    notes = {"snapshot": "LiveBuffers.snapshot", "psth": "psth (hidden tab)",
             "model": "model (hidden tab, no model)"}
    for (window_s, n_traces), rounds in results["rounds"].items():
        for k, (name, parts) in enumerate(rows):
            median, p95 = _stats(rounds, parts)
            label = notes.get(name, name if len(parts) > 1 else f"{name} update + paint")
            if parts == TOGETHER:
                worst = max(float(np.median(sum(r[p] for p in parts))) for r in rounds)
                label += " ok" if worst <= GOAL_FRAME_MS else " MISS"
            head = f"{window_s:>5g} s {n_traces:>7}" if k == 0 else " " * 15
            print(f"  {head}  {label:<34}{median:>12}{p95:>12}")
        spikes = np.concatenate([r["spikes"] for r in rounds])
        print(f"  {'':15}  ({np.median(spikes):.0f} spikes in the raster, "
              f"{results['data_s'][window_s]:.0f} s of data at the end)")
    print(f"  goal: traces + raster + heatmap <= {GOAL_FRAME_MS:g} ms (median; ok/MISS for "
          "the worst round)")


# -- (b) closed-loop latency -----------------------------------------------------------------
class _TimedWindow(MainWindow):
    """The main window, timing its refresh (snapshot + update_view, not the paint)."""

    def __init__(self, **kwargs) -> None:
        self.refresh_ms: list[float] = []  # before MainWindow's own first refresh
        super().__init__(**kwargs)

    def refresh(self) -> None:
        t0 = time.perf_counter()
        super().refresh()
        self.refresh_ms.append(1e3 * (time.perf_counter() - t0))


#: Starts the rig processes from a thread made before the GUI thread lowered its CPU
#: priority (yield_cpu_to_the_rig), so that they run at the normal priority, as the
#: rig process of mea-control gui does (it starts before the window yields).
_LAUNCHER = concurrent.futures.ThreadPoolExecutor(1)
_LAUNCHER.submit(lambda: None).result()


def _latency_run(variant: str, quick: bool, device: str) -> dict:
    """One loop.py (c) run; the main thread in a Qt event loop meanwhile. ``variant``:
    "none"; "feed" (the GUI's sink filled by the run, in this process, no window);
    "window" (that feed drawn by a MainWindow at 30 Hz in this process: the run on another
    thread, as a RigSession's rig thread does); "process" (the run in a child process
    filling the rings in shared memory, the window here drawing them: what
    ``mea-control gui`` does)."""
    info = open_driver(device).described
    session = RigSession()  # never connected: its buffers read the run's rings
    gc.collect()
    with tempfile.TemporaryDirectory() as folder:
        window = (_window(session, folder, _TimedWindow)
                  if variant in ("window", "process") else None)
        out: dict = {}
        if variant == "process":
            shm = shared_memory.SharedMemory(create=True, size=RING_BYTES)
            session.buffers.bind(Rings(info.n_channels, shm.buf), info)
            rig = _LAUNCHER.submit(
                subprocess.Popen,
                [sys.executable, str(Path(__file__).with_name("gui_rig.py")), shm.name,
                 str(info.n_channels), device] + (["--quick"] if quick else []),
                stdout=subprocess.PIPE, text=True).result()
            yield_cpu_to_the_rig()  # what mea-control gui does (this thread, for good)
            running = lambda: rig.poll() is None  # noqa: E731
        else:
            feed = LiveFeed(Rings(info.n_channels)) if variant != "none" else None
            if feed is not None:
                session.buffers.bind(feed.rings, info, feed.take_notes)
            worker = threading.Thread(
                target=lambda: out.update(measured_run(quick, device, feed)))
            worker.start()
            running = worker.is_alive

        def poll() -> None:
            if not running():
                loop.quit()

        cpu0, wall0 = time.thread_time(), time.perf_counter()
        loop, timer = QEventLoop(), QTimer()
        timer.timeout.connect(poll)
        timer.start(100)
        loop.exec()  # the window's timer refreshes it meanwhile
        wall = time.perf_counter() - wall0
        if variant == "process":
            stdout, _ = rig.communicate()
            session.buffers.bind(None, None)
            shm.close()
            shm.unlink()
            if rig.returncode:
                raise RuntimeError(f"benchmarks/gui_rig.py failed (exit {rig.returncode})")
            out.update(json.loads(stdout.splitlines()[-1]))
        else:
            worker.join()
        out["main_cpu_share"] = (time.thread_time() - cpu0) / wall
        if window is not None:
            out["frames_per_s"] = len(window.refresh_ms) / wall
            out["refresh_ms_p50"] = float(np.median(window.refresh_ms))
            _discard(window)
    return out


VARIANTS = {"none": "no GUI", "feed": "GUI feed, no window",
            "window": "window, same process", "process": "window, rig process"}


def bench_gui_latency(quick: bool, repeats: int,
                      device: str = DEVICE) -> dict[str, list[dict]]:
    """(b) loop.py's reaction latency per variant, ``repeats`` interleaved rounds
    (``quick``: loop.py's short runs, and only no GUI and the GUI as it runs)."""
    variants = ("none", "process") if quick else tuple(VARIANTS)
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant, rounds in results.items():
            rounds.append(_latency_run(variant, quick, device))
    return results


def print_gui_latency(results: dict[str, list[dict]], device: str = DEVICE) -> None:
    print(f"(b) closed-loop reaction latency on {device} in real time (benchmarks/loop.py "
          "(c): spike -> pulse\n    execution, 1 ms blocks), with and without the GUI; "
          "one line a run, runs interleaved")
    print(f"  {'variant':<25}{'reactions':>10}{'dropped':>8}{'watchdog':>9}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'max ms':>8}{'loop CPU us p50/p99/max':>25}{'GC max ms':>10}"
          f"{'main CPU':>9}{'frames/s':>9}{'refresh ms':>11}")
    for variant, rounds in results.items():
        for r in rounds:
            p50, p99, top = (r[k] * MS_PER_SAMPLE for k in
                             ("p50_samples", "p99_samples", "max_samples"))
            cost = "/".join(f"{r['loop_cost_us'][k]:.0f}" for k in ("p50", "p99", "max"))
            fps = f"{r['frames_per_s']:.1f}" if "frames_per_s" in r else "-"
            refresh = f"{r['refresh_ms_p50']:.1f}" if "refresh_ms_p50" in r else "-"
            print(f"  {VARIANTS[variant]:<25}{r['reactions']:>10}{r['dropped_late']:>8}"
                  f"{r['watchdog_trips']:>9}{p50:>8.2f}{p99:>8.2f}{top:>8.2f}{cost:>25}"
                  f"{r['gc_max_ms']:>10.0f}"
                  f"{100 * r['main_cpu_share']:>7.0f} %{fps:>9}{refresh:>11}")
    base = np.median([r["p99_samples"] for r in results["none"]])
    for variant in [v for v in results if v != "none"]:
        worse = np.median([r["p99_samples"] for r in results[variant]]) / base - 1.0
        verdict = "ok" if worse <= GOAL_P99_WORSE else "MISS"
        print(f"  p99, {VARIANTS[variant]} vs no GUI (medians of runs): {100 * worse:+.0f} % "
              f"(goal <= +{100 * GOAL_P99_WORSE:.0f} %) {verdict}")
    print("  watchdog: trips (a tripped run is stopped: its gate stays disarmed); GC max: the "
          "longest\n  garbage collection in the run's process (it holds the GIL); main CPU: "
          "the GUI thread's CPU time /\n  wall time; refresh ms: median of MainWindow.refresh "
          "(snapshot + update_view; the paints follow)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few frames and short runs")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of each measurement (default 3, --quick 1)")
    parser.add_argument("--part", choices=("frames", "latency"), help="only this part")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    app = QApplication.instance() or QApplication([])
    results = {}
    if args.part != "latency":
        results["frames"] = run_frames(app, args.quick, repeats)
        print_frames(results["frames"], repeats)
    if args.part != "frames":
        results["latency"] = bench_gui_latency(args.quick, repeats)
        print_gui_latency(results["latency"])
    return results


if __name__ == "__main__":
    main()
