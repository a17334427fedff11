"""The rig in its own process, so drawing never delays the closed loop.

Painting with pyqtgraph holds Python's GIL for whole paint passes, and a
switch interval does not break them up: in one process the window made the
loop's p99 reaction latency ten times worse (benchmarks/gui.py). So the GUI
runs the :class:`~mea_control.gui.session.RigSession` in a child process
(``multiprocessing``, spawn) and :class:`RemoteSession` stands in for it in
the window, with the same calls:

- the feed's rings live in one ``SharedMemory`` block the GUI's
  :class:`~mea_control.gui.live.LiveBuffers` reads directly;
- commands go over a pipe and wait for their answer (connect, start, stop, ...);
- the window's thread runs at a lower CPU priority than the rig (nice +10), so
  on a busy machine the kernel runs the loop first;
- the status the window shows each frame (running, progress, armed, the log,
  events, decisions, the model) comes from one state request a frame, sent
  without waiting and read at the next frame.

The rig process freezes its objects after each connect and start (``gc.freeze``):
the collector then never walks the imported modules, whose full collections
otherwise held the GIL for tens of milliseconds in the middle of a run.

If the GUI dies, the child sees its pipe close, stops the run and closes the
recording cleanly.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

from mea_control.gui.feed import RING_BYTES, Rings
from mea_control.gui.live import LiveBuffers
from mea_control.limits import SafetyLimits
from mea_control.types import DeviceInfo

#: Seconds a command may take in the rig process before the GUI gives up on it
#: (connect opens the device; disconnect waits for a recording to close).
CALL_TIMEOUT_S = 120.0
#: How often the window asks the rig process for the protocol's model.
MODEL_HZ = 5.0
#: How many nice levels the window's thread gives up for the rig process.
GUI_NICE = 10
_yielded = False
#: The calls the GUI may make, all RigSession methods.
CALLS = ("connect", "disconnect", "close", "start", "stop", "wait", "pause", "resume",
         "record", "stop_recording", "stop_stimulation", "rearm")


def yield_cpu_to_the_rig() -> None:
    """Lower the calling thread's CPU priority by GUI_NICE (once): on a busy machine the
    kernel then runs the rig process's threads before the window's painting. Threads
    this one starts later inherit it; the rig process must be started before. The
    application calls it (``mea-control gui``, once its window and rig process exist),
    not RemoteSession: a window made in another program, such as a test suite, leaves
    that program's priority alone."""
    global _yielded
    if _yielded:
        return
    _yielded = True
    try:  # on Linux a thread id names one thread; elsewhere this may fail: no harm
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + GUI_NICE))
    except (AttributeError, OSError):
        pass


class RigProcessError(RuntimeError):
    """The rig process ended or stopped answering."""


def _state(session: Any, model: bool) -> dict[str, Any]:
    """What the window shows each frame, taken from the rig's session (in the child)."""
    error, session.last_error = session.last_error, None
    return {"connected": session.connected, "running": session.running,
            "protocol": session.protocol, "progress": session.progress(),
            "armed": session.armed, "paused": session.paused,
            "recording": session.recording, "last_summary": session.last_summary,
            "log": session.drain_log(), "last_error": error,
            "notes": session.feed.take_notes(model=model)}


def serve(conn: Connection, shm_name: str, limits: SafetyLimits, seed: int,
          block_ms: float) -> None:
    """The rig process: run a RigSession on the shared rings, answering ``conn``."""
    from mea_control.gui.session import RigSession

    shm = shared_memory.SharedMemory(name=shm_name)
    session = RigSession(limits, seed, block_ms, ring_buffer=shm.buf)
    try:
        while True:
            try:
                kind, *message = conn.recv()
            except (EOFError, OSError):  # the GUI is gone: end the run and the recording
                break
            if kind == "close":
                break
            if kind == "state":
                conn.send(("state", _state(session, *message)))
                continue
            name, args, kwargs = message
            try:
                if name not in CALLS:
                    raise RigProcessError(f"the rig process has no call {name!r}")
                result = getattr(session, name)(*args, **kwargs)
                if name in ("connect", "start"):
                    gc.freeze()  # what exists now is never collected: no long pauses later
                if name == "start":
                    result = None  # a protocol object stays in the rig process
                reply: tuple = ("ok", result, _state(session, False))
            except Exception as exc:
                reply = ("error", exc, _state(session, False))
            try:
                conn.send(reply)
            except Exception:  # an exception that does not pickle: send its text
                conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}"),
                           reply[2]))
    finally:
        session.close(timeout=CALL_TIMEOUT_S)  # the window closed or went away
        session.feed.rings = None
        session.buffers.bind(None, None)
        del session
        try:
            shm.close()
        except BufferError:  # a view still held somewhere: the exit unmaps it
            pass


class RemoteSession:
    """A :class:`RigSession` in a child process, with the same calls for the window."""

    def __init__(self, limits: SafetyLimits | None = None, seed: int = 0,
                 block_ms: float = 1.0) -> None:
        self.limits = limits or SafetyLimits()
        #: The live buffers every view draws from, reading the child's rings.
        self.buffers = LiveBuffers()
        self.info: DeviceInfo | None = None
        self.url: str | None = None
        self.last_summary: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._shm = shared_memory.SharedMemory(create=True, size=RING_BYTES)
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child, self._shm.name, self.limits, seed, block_ms),
            name="mea-control rig", daemon=True)
        self._process.start()
        child.close()
        self._asked = False  # a state request is on its way
        self._state: dict[str, Any] = {"connected": False, "running": False, "protocol": None,
                                       "progress": (0.0, ""), "armed": True,
                                       "paused": False, "recording": None}
        self._log: list[str] = []
        self._events: list[Any] = []
        self._decisions: list[dict[str, Any]] = []
        self._model: dict[str, Any] | None = None
        self._notes: dict[str, Any] = {}
        self._model_due = 0.0

    # -- the calls -----------------------------------------------------------------------------
    def connect(self, url: str, fast: bool = False) -> DeviceInfo:
        """Open the device in the rig process and start monitoring it."""
        info = self._call("connect", url, fast=fast)
        self.info, self.url = info, url
        self.buffers.bind(Rings(info.n_channels, self._shm.buf), info, self._take_notes)
        return info

    def disconnect(self, timeout: float = 2.0) -> bool:
        """Stop what runs and close the device; False while a recording still closes."""
        if not self._process.is_alive():
            return True
        return self._call("disconnect", timeout=timeout, wait_s=timeout)

    def start(self, protocol: str, params: dict[str, Any] | None = None,
              record_path: Any = None, fast: bool = False, *, duration_s: float | None = None,
              overwrite: bool = False, meta: Any = None) -> None:
        """Run a protocol (shipped name or .py path); errors as RigSession.start raises them."""
        self._call("start", protocol, params, record_path, fast, duration_s=duration_s,
                   overwrite=overwrite, meta=meta)

    def stop(self) -> None:
        if self._process.is_alive():
            self._call("stop")

    def wait(self, timeout: float) -> bool:
        """Wait until no protocol runs or waits to run; False after ``timeout`` s."""
        return self._call("wait", timeout, wait_s=timeout)

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def record(self, path: Any, overwrite: bool = False, meta: Any = None) -> Any:
        """Record the run in progress until stop_recording() or its end (RigSession.record)."""
        return self._call("record", path, overwrite=overwrite, meta=meta)

    def stop_recording(self) -> dict[str, Any] | None:
        return self._call("stop_recording", wait_s=CALL_TIMEOUT_S)

    def stop_stimulation(self) -> None:
        self._call("stop_stimulation")

    def rearm(self) -> None:
        self._call("rearm")

    def close(self, timeout: float = 30.0) -> bool:
        """Disconnect (a recording is closed) and end the rig process; False if it had
        to be killed after ``timeout`` s."""
        if self._conn.closed:
            return True
        clean = self._process.exitcode in (None, 0)  # a rig process that died is not clean
        if self._process.is_alive():
            try:
                self._call("close", timeout=timeout, wait_s=timeout)  # the window closes
                self._conn.send(("close",))
            except (RigProcessError, OSError):
                clean = False
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5.0)
                clean = False
        self._conn.close()
        self.buffers.bind(None, None)
        try:
            self._shm.close()
        except BufferError:  # a snapshot still holds a view; the exit unmaps it
            pass
        self._shm.unlink()
        return clean

    # -- what the window reads each frame ------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._fresh("connected")

    @property
    def running(self) -> bool:
        return self._fresh("running")

    @property
    def protocol(self) -> str | None:
        return self._fresh("protocol")

    @property
    def armed(self) -> bool:
        return self._fresh("armed")

    @property
    def paused(self) -> bool:
        return self._fresh("paused")

    @property
    def recording(self) -> dict[str, Any] | None:
        return self._fresh("recording")

    def progress(self) -> tuple[float, str]:
        return self._fresh("progress")

    def drain_log(self) -> list[str]:
        self._exchange(False)
        lines, self._log = self._log, []
        return lines

    # -- the pipe --------------------------------------------------------------------------------
    def _fresh(self, key: str) -> Any:
        self._exchange(False)
        return self._state[key]

    def _take_notes(self, model: bool = True) -> dict[str, Any]:
        """The notes for a snapshot: events and decisions since the last one, the model."""
        self._exchange(model)
        notes = dict(self._notes, events=self._events, decisions=self._decisions,
                     model=self._model)
        self._events, self._decisions = [], []
        return notes

    def _exchange(self, model: bool) -> None:
        """Read the state reply if it came, and ask for the next one (with the model at
        most MODEL_HZ times a second: the protocol computes it); never waits."""
        if not self._process.is_alive() or self._conn.closed:
            self._state.update(connected=False, running=False)
            return
        try:
            if self._asked and self._conn.poll():
                self._apply(self._conn.recv()[1])
                self._asked = False
            if not self._asked:
                now = time.monotonic()
                model = model and now >= self._model_due
                if model:
                    self._model_due = now + 1.0 / MODEL_HZ
                self._conn.send(("state", model))
                self._asked = True
        except (EOFError, OSError):
            self._state.update(connected=False, running=False)

    def _call(self, name: str, *args: Any, wait_s: float = 0.0, **kwargs: Any) -> Any:
        """Run ``session.name(*args, **kwargs)`` in the rig process and return its result."""
        if not self._process.is_alive():
            raise RigProcessError(f"the rig process has ended (exit code "
                                  f"{self._process.exitcode}); restart mea-control gui")
        try:
            if self._asked:  # the state reply comes first
                self._wait_reply()
                self._apply(self._conn.recv()[1])
                self._asked = False
            self._conn.send(("call", name, args, kwargs))
            self._wait_reply(CALL_TIMEOUT_S + wait_s)
            status, result, state = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise RigProcessError(f"the rig process stopped answering: {exc}") from None
        self._apply(state)
        if status == "error":
            raise result
        return result

    def _wait_reply(self, timeout: float = CALL_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self._conn.poll(0.1):
            if not self._process.is_alive():
                raise RigProcessError(f"the rig process ended (exit code "
                                      f"{self._process.exitcode})")
            if time.monotonic() > deadline:
                raise RigProcessError(f"the rig process did not answer within {timeout:g} s")

    def _apply(self, state: dict[str, Any]) -> None:
        self._log.extend(state.pop("log"))
        notes = state.pop("notes")
        self._events.extend(notes.pop("events"))
        self._decisions.extend(notes.pop("decisions"))
        if "model" in notes:
            self._model = notes.pop("model")
        self._notes = notes
        if state["last_error"]:
            self.last_error = state["last_error"]
        if state["last_summary"] is not None:
            self.last_summary = state["last_summary"]
        self._state.update(state)
