"""The rig side of benchmarks/gui.py's latency part, without Qt.

``python benchmarks/gui_rig.py SHM_NAME N_CHANNELS DEVICE [--quick]`` runs
benchmarks/loop.py's (c) with the GUI's feed filling rings in the shared-memory
block SHM_NAME, as the rig process of ``mea-control gui`` does, and prints the
figures as JSON. benchmarks/gui.py also calls :func:`measured_run` in its own
process for the variants without a rig process.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # one core; set before numba loads

import contextlib  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from multiprocessing import resource_tracker, shared_memory  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mea_control.engine  # noqa: E402
from benchmarks.loop import bench_reaction_latency  # noqa: E402
from mea_control.gui.feed import LiveFeed, Rings  # noqa: E402


@contextlib.contextmanager
def _engines(feed: LiveFeed | None):
    """Collect the engines made meanwhile; with ``feed``, they fill it as the rig
    session's engines do (loop.py makes its own engine: this adds the sink, no copy)."""
    base, made = mea_control.engine.Engine, []

    class Watched(base):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)
            if feed is not None:
                self.sinks.append(feed)
                feed.expect(self.protocol)

    mea_control.engine.Engine = Watched
    try:
        yield made
    finally:
        mea_control.engine.Engine = base


@contextlib.contextmanager
def _gc_pauses():
    """Collect the durations (ms) of the garbage collections meanwhile (they hold the GIL)."""
    pauses: list[float] = []
    began = [0.0]

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append(1e3 * (time.perf_counter() - began[0]))

    gc.callbacks.append(note)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(note)


def measured_run(quick: bool, device: str, feed: LiveFeed | None) -> dict:
    """loop.py (c) on this thread, ``feed`` filled by its engine; a run whose gate was
    disarmed (the watchdog) is stopped: it would never reach its count."""
    out: dict = {}
    with _engines(feed) as made, contextlib.redirect_stdout(io.StringIO()), \
            _gc_pauses() as pauses:
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.1):
                if made and not made[0].gate.armed:
                    made[0].stop()

        threading.Thread(target=watch, daemon=True).start()
        try:
            out.update(bench_reaction_latency(quick, device=device))
        finally:
            done.set()
        out["watchdog_trips"] = made[0].stats.watchdog_trips
        out["gc_max_ms"] = max(pauses, default=0.0)
    return out


def main(argv: list[str]) -> None:
    shm_name, n_channels, device = argv[0], int(argv[1]), argv[2]
    shm = shared_memory.SharedMemory(name=shm_name)
    # the block is benchmarks/gui.py's: this process's own resource tracker must not
    # unlink it at exit (Python < 3.13 registers every attached block)
    resource_tracker.unregister(shm._name, "shared_memory")
    feed = LiveFeed(Rings(n_channels, shm.buf))
    gc.freeze()  # as the rig process does after connecting (mea_control/gui/remote.py)
    out = measured_run("--quick" in argv, device, feed)
    print(json.dumps(out, default=float))
    feed.rings = None
    del feed
    shm.close()


if __name__ == "__main__":
    main(sys.argv[1:])
