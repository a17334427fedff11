"""The rig session behind the GUI window: one device, its runs, and the live buffers.

:class:`RigSession` owns the driver and one "rig" thread that runs engines on
it one after the other: a passive :class:`Monitor` whenever no protocol runs,
so the live views stay fed, and the protocol the operator started. Calls
return at once (the rig thread does the waiting; connect() opens the device,
disconnect() waits at most its timeout); errors the operator can fix are
raised as one-line exceptions, those of a run go to :attr:`log`.

A driver streams once per open(), so the rig thread re-opens it between runs;
the simulator then starts again from its seed, at sample 0.

The session keeps one :class:`PulseHistory` for the connected device, so the safety
gate's rate limits count the pulses of the earlier runs too (docs/safety.md).

Every run's engine feeds the session's :class:`LiveFeed` (the views' data) and
its :class:`RecordingSwitch` (the recording in force, started and stopped at
any moment). The window runs a RigSession in a child process
(:mod:`mea_control.gui.remote`); tests and scripts may use one directly.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mea_control.driver import Driver, DriverError, open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.gui.feed import LiveFeed, Rings
from mea_control.gui.live import LiveBuffers
from mea_control.limits import SafetyLimits
from mea_control.preflight import check_start
from mea_control.protocol import Protocol, ProtocolError, load_protocol
from mea_control.pulse_history import PulseHistory
from mea_control.recording.errors import RecordingError
from mea_control.recording.nwbfile import RecordingMeta
from mea_control.recording.switch import RecordingSwitch
from mea_control.sinks import EventKind, Sink, ending_text
from mea_control.types import DeviceInfo

#: Lines kept in the log panel's deque.
KEEP_LOG = 2000
OPERATOR_STOP = "stimulation stopped by the operator"
#: What the log says when the monitor takes over.
WATCHING = "watching the culture (no protocol runs, no stimulation)"
#: How a run ends (the summary's and the recording's "ended"), by who ended it.
STOPPED_BY_OPERATOR = "stopped by the operator"
DISCONNECTED = "stopped: the device was disconnected"
WINDOW_CLOSED = "stopped: the window was closed"


class Monitor(Protocol):
    """Watch the culture between protocol runs; never stimulates."""

    name = "monitor"
    #: Marks a run that only keeps the views fed (the live buffers keep the last PSTH and model).
    passive = True


@dataclass(frozen=True)
class _Job:
    """A protocol run the operator asked for."""

    protocol: Protocol
    path: Path
    record_path: Path | None
    fast: bool
    duration_s: float | None
    overwrite: bool
    meta: RecordingMeta | None


class RigSession:
    """Connect a device, keep it monitored, run protocols on it; all calls return fast."""

    def __init__(self, limits: SafetyLimits | None = None, seed: int = 0,
                 block_ms: float = 1.0, ring_buffer: Any = None) -> None:
        self.limits = limits or SafetyLimits()
        self.seed = seed
        self.block_ms = block_ms
        #: Where the feed's rings live (a shared-memory buffer for a GUI in another process).
        self.ring_buffer = ring_buffer
        #: The sink every run of the session fills.
        self.feed = LiveFeed()
        #: The sink every run of the session records through, when a recording is on.
        self.switch = RecordingSwitch()
        #: The live buffers every view draws from; one object for the session's life.
        self.buffers = LiveBuffers()
        #: Log lines (engine events, errors, the session's own notes), oldest first.
        self.log: deque[str] = deque(maxlen=KEEP_LOG)
        self.info: DeviceInfo | None = None
        self.url: str | None = None
        #: The summary of the latest protocol run (None until one ended).
        self.last_summary: dict[str, Any] | None = None
        #: The latest error as one line (a run's, the device's or the recorder's).
        self.last_error: str | None = None
        self._driver: Driver | None = None
        #: The connected device's recent pulses, kept across its runs (and in its state file).
        self.pulse_history: PulseHistory | None = None
        self._monitor_fast = False
        self._thread: threading.Thread | None = None
        self._state = threading.Condition()
        self._connected = False
        self._engine: Engine | None = None  # the run in progress (monitor or protocol)
        self._job: _Job | None = None  # the protocol run in progress
        self._queued: _Job | None = None  # asked for, waiting for the monitor to end
        self._instance: Protocol | None = None
        self._stim_stopped: str | None = None
        self._pause_asked = False  # the operator paused the protocol run

    # -- connection --------------------------------------------------------------------------
    def connect(self, url: str, fast: bool = False) -> DeviceInfo:
        """Open the device and start monitoring it; ``fast`` (simulator only) for tests."""
        if self.connected:
            raise RuntimeError(f"already connected to {self.url}; disconnect first")
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.url} is still closing (a recording being finished); "
                               "try again in a moment")
        driver = open_driver(url, truth=False)  # the simulator's spike log would grow for hours
        try:
            driver.open()
        except OSError as exc:
            raise DriverError(f"device {url} is not answering: {exc}") from None
        try:
            if fast and not driver.info.simulated:
                raise DriverError(f"fast mode works with the simulator only, not {url}")
            self._driver, self._monitor_fast = driver, fast
            self.pulse_history = PulseHistory.for_device(url, log=self._say)
            monitor = self._monitor_engine()
        except (DriverError, ValueError):
            driver.close()
            self._driver = None
            raise
        rings = Rings(driver.info.n_channels, self.ring_buffer)
        rings.reset()
        self.feed.rings = rings
        self.buffers.bind(rings, driver.info, self.feed.take_notes)
        with self._state:
            self.info, self.url, self._connected = driver.info, url, True
            self._engine = monitor
        self._say(f"connected to {url} ({driver.info.name}, {driver.info.n_channels} channels "
                  f"at {driver.info.sample_rate:g} Hz); {WATCHING}")
        self._thread = threading.Thread(target=self._serve, args=(monitor,),
                                        name="mea-rig", daemon=True)
        self._thread.start()
        return driver.info

    def disconnect(self, timeout: float = 2.0, reason: str = DISCONNECTED) -> bool:
        """Stop what runs (``reason``: how its recording says it ended) and close the
        device; False if it is still winding down after ``timeout`` s (a recorder
        finishing its file): it closes when done."""
        with self._state:
            self._connected = False
            self._queued = None
            if self._engine is not None:
                self._engine.stop(reason)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """End the session (the window closes): stop, disconnect; False if a recording
        is still being closed after ``timeout`` s."""
        self.stop(WINDOW_CLOSED)
        return self.disconnect(timeout, WINDOW_CLOSED)

    @property
    def connected(self) -> bool:
        with self._state:
            return self._connected

    # -- protocol runs -------------------------------------------------------------------------
    def start(self, protocol: str, params: dict[str, Any] | None = None,
              record_path: str | Path | None = None, fast: bool = False, *,
              duration_s: float | None = None, overwrite: bool = False,
              meta: RecordingMeta | None = None) -> Protocol:
        """Run a protocol (shipped name or .py path) in place of the monitor; ``meta``:
        the recording's culture, DIV, experimenter and description.

        Bad names, parameters (and values the limits in force would refuse, checked by
        :func:`~mea_control.preflight.check_start`) and recording paths raise
        ProtocolError, RecordingError or ValueError here; nothing has started then. The
        run itself reports to :attr:`log`.
        """
        if not self.connected or self.info is None:
            raise RuntimeError("connect a device first")
        if self.running:
            raise RuntimeError(f"protocol {self.protocol} is running; stop it first")
        if fast and not self.info.simulated:
            raise ValueError(f"fast mode works with the simulator only, not {self.url}")
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"the duration must be positive, not {duration_s} s")
        cls, path = load_protocol(protocol)
        try:
            instance = cls(**(params or {}))
        except ProtocolError:
            raise
        except Exception as exc:  # a user's validate() may raise anything
            raise ProtocolError(f"protocol {cls.name} failed while checking its parameters: "
                                f"{type(exc).__name__}: {exc}") from None
        try:
            check_start(instance, self.info, self.limits, self.seed)
        except ProtocolError:
            raise
        except Exception as exc:  # a user's planned_patterns may raise anything
            raise ProtocolError(f"protocol {cls.name} failed while planning its patterns: "
                                f"{type(exc).__name__}: {exc}") from None
        target = None
        if record_path is not None:
            from mea_control.recording.writer import check_target

            target = check_target(record_path, overwrite)
        job = _Job(instance, path, target, fast, duration_s, overwrite, meta)
        with self._state:
            if not self._connected:
                raise RuntimeError("the device was disconnected")
            self._queued, self._instance, self._pause_asked = job, instance, False
            if self._job is None and self._engine is not None:
                self._engine.stop()  # the monitor; the rig thread starts the job next
        self._say(f"starting {cls.name}" + (f", recording to {target}" if target else ""))
        return instance

    def stop(self, reason: str = STOPPED_BY_OPERATOR) -> None:
        """End the protocol run (``reason``: how its recording says it ended), or cancel
        it if it has not begun (the monitor takes over)."""
        with self._state:
            if self._queued is not None:
                self._say(f"cancelled {self._queued.protocol.name}")
                self._queued = None
            if self._job is not None and self._engine is not None:
                self._engine.stop(reason)
                self._say(f"stopping {self._job.protocol.name}")

    def wait(self, timeout: float) -> bool:
        """Wait until no protocol runs or waits to run; False after ``timeout`` s."""
        with self._state:
            return self._state.wait_for(lambda: self._job is None and self._queued is None,
                                        timeout)

    @property
    def running(self) -> bool:
        """A protocol runs or is about to (the monitor does not count)."""
        with self._state:
            return self._job is not None or self._queued is not None

    @property
    def protocol(self) -> str | None:
        """The name of the protocol that runs or is about to, else None."""
        with self._state:
            job = self._job or self._queued
            return job.protocol.name if job is not None else None

    @property
    def protocol_instance(self) -> Protocol | None:
        """The latest protocol started (running or ended), for the model panel."""
        with self._state:
            return self._instance

    def progress(self) -> tuple[float, str]:
        """(fraction done, text) of the protocol run; (0, "") when none runs."""
        with self._state:
            engine = self._engine if self._job is not None else None
            waiting = self._queued is not None
        if engine is not None:
            return engine.progress()
        return (0.0, "starting") if waiting else (0.0, "")

    def pause(self) -> None:
        """Pause the protocol run (no hooks, no new trials; acquisition and recording go on);
        a run about to start starts paused."""
        self._ask_pause(True)

    def resume(self) -> None:
        self._ask_pause(False)

    @property
    def paused(self) -> bool:
        """Whether the operator paused the protocol run (it takes effect within a block)."""
        with self._state:
            return self._pause_asked and (self._job is not None or self._queued is not None)

    def _ask_pause(self, pause: bool) -> None:
        with self._state:
            job = self._job or self._queued
            if job is None:
                raise RuntimeError("no protocol is running")
            self._pause_asked = pause
            engine = self._engine if self._job is not None else None
        if engine is not None:
            engine.pause() if pause else engine.resume()
        self._say(f"{'pausing' if pause else 'resuming'} {job.protocol.name}")

    # -- recording -------------------------------------------------------------------------
    def record(self, path: str | Path, overwrite: bool = False,
               meta: RecordingMeta | None = None) -> Path:
        """Record the run in progress (the monitor's or a protocol's) from now until
        stop_recording() or the end of that run; returns the file's path. ``meta``: as
        for start()."""
        with self._state:
            engine = self._engine if self._connected else None
            job = self._job
        if engine is None:
            raise RuntimeError("connect a device first")
        if self.switch.recorder is not None:
            raise RuntimeError(f"already recording to {self.switch.recorder.path}")
        recorder = self._recorder(engine, job.path if job else None, path, overwrite, None,
                                  meta)
        try:
            self.switch.put(recorder)
        except RuntimeError:
            recorder.discard()
            raise
        self._say(f"recording {engine.protocol.name} to {recorder.path} until stopped or "
                  "the run ends")
        return recorder.path

    def stop_recording(self) -> dict[str, Any] | None:
        """End the recording now and close its file; its stats (None if none was on)."""
        recorder = self.switch.take()
        if recorder is None:
            return None
        with self._state:
            engine = self._engine  # the recorder's run: it ends only after its recording
        # the run's figures so far, which the engine computes on its loop between two items
        summary = engine.summary() if engine is not None else {}
        summary["note"] = "recording stopped by the operator"
        summary["ended"] = ending_text("recording stopped by the operator; the run went on",
                                       summary.get("trials", 0),
                                       summary.get("trials_planned"))
        summary["ended_early"] = False
        self.switch.close(recorder, summary)
        stats = recorder.stats()
        self._say(f"recording {recorder.path} closed: {stats['samples_written']} samples, "
                  f"{stats['samples_lost']} lost" + (f"; {recorder.finalize_error}"
                                                     if recorder.finalize_error else ""))
        return stats

    @property
    def recording(self) -> dict[str, Any] | None:
        """The recording in progress: file, seconds, bytes, backlog_s, samples_lost; or None."""
        recorder = self.switch.recorder
        if recorder is None:
            return None
        stats = recorder.stats()
        fs = recorder.info.sample_rate
        path = recorder.path
        return {"file": str(path), "seconds": stats["samples_written"] / fs,
                "bytes": path.stat().st_size if path.exists() else 0,
                "backlog_s": stats["backlog_s"], "samples_lost": recorder.samples_dropped}

    # -- stimulation safety --------------------------------------------------------------------
    def stop_stimulation(self) -> None:
        """Disarm the gate now and cancel the device's queued pulses, until rearm()."""
        with self._state:
            self._stim_stopped = OPERATOR_STOP
            engine = self._engine
        if engine is not None:
            try:  # logged and recorded as a "disarm" event by the engine
                engine.stop_stimulation(OPERATOR_STOP)
            except DriverError as exc:
                self._error(f"aborting the device's stimulation failed: {exc}")
        else:
            self._say(f"[disarm] {OPERATOR_STOP}")

    def rearm(self) -> None:
        """Let stimulation through again (after stop_stimulation or the watchdog)."""
        with self._state:
            self._stim_stopped = None
            engine = self._engine
        if engine is not None:
            engine.rearm()  # logs and records a "rearm" event
        else:
            self._say("stimulation re-armed")

    @property
    def armed(self) -> bool:
        """Whether the gate of the run in progress lets pulses through."""
        with self._state:
            engine, stopped = self._engine, self._stim_stopped
        return engine.gate.armed if engine is not None else stopped is None

    # -- the log -------------------------------------------------------------------------------
    def drain_log(self) -> list[str]:
        """The log lines added since the previous call (safe while the rig thread logs)."""
        lines = []
        while self.log:
            try:
                lines.append(self.log.popleft())
            except IndexError:
                break
        return lines

    def _say(self, message: str) -> None:
        self.log.append(message)

    def _error(self, message: str) -> None:
        self.last_error = message
        self._say(f"error: {message}")

    # -- the rig thread ------------------------------------------------------------------------
    def _serve(self, engine: Engine | None) -> None:
        """Run engines until disconnected: the first monitor, then jobs and monitors."""
        assert self._driver is not None
        fresh = True  # the driver was just opened: it can start once
        try:
            while engine is not None:
                fresh = self._run(engine, fresh)
                engine = self._next()
        finally:
            try:
                self._driver.close()
            except Exception as exc:  # closing a broken device: say so, end anyway
                self._error(f"closing {self.url} failed: {exc}")
            with self._state:
                self._connected, self._engine, self._job, self._queued = False, None, None, None
                self._state.notify_all()
            self._say(f"disconnected from {self.url}")

    def _next(self) -> Engine | None:
        """The next run: the queued job, else the monitor; None once disconnected."""
        with self._state:
            self._engine, self._job = None, None
            self._state.notify_all()
            if not self._connected:
                return None
            job, self._queued = self._queued, None
            engine = None
            if job is not None:
                try:
                    engine = self._job_engine(job)
                    self._job = job
                    if self._pause_asked:  # paused before it began
                        engine.pause()
                except ValueError as exc:
                    self._error(f"{job.protocol.name}: {exc}")
            self._engine = engine or self._monitor_engine()
            return self._engine

    def _run(self, engine: Engine, fresh: bool) -> bool:
        """Run one engine to its end on this thread; False: the driver needs re-opening."""
        assert self._driver is not None
        job = self._job
        try:
            if not fresh:
                self._driver.close()
                self._driver.open()
        except (DriverError, OSError) as exc:
            self._lost(f"device {self.url}: {exc}")
            return False
        recorder = None
        if job is not None and job.record_path is not None:
            try:
                recorder = self._recorder(engine, job.path, job.record_path, job.overwrite,
                                          job.duration_s, job.meta)
                self.switch.put(recorder)
            except (RecordingError, OSError, RuntimeError) as exc:
                if recorder is not None:
                    recorder.discard()
                self._error(f"{job.protocol.name} did not run: {exc}")
                return True  # the driver has not started: it still can
        self.feed.expect(engine.protocol, lambda: engine.detector.thresholds_uV)
        try:
            summary = engine.run()
        except Exception as exc:  # the device did not start (or a bug): say so, disconnect
            self._lost(f"device {self.url}: {type(exc).__name__}: {exc}")
            return False
        finally:
            left = self.switch.take()  # a run that ended without on_stop (a device error)
            if left is not None:
                left.close()
        if engine.error_kind == "device" or (engine.error and job is None):
            self._lost(f"{engine.protocol.name}: {_last_line(engine.error)}")
        elif isinstance(engine.exception, ProtocolError):  # its own one line, as the CLI's
            self._error(f"{engine.protocol.name}: {engine.exception}")
        elif engine.error:
            self._error(f"{engine.protocol.name}: {_last_line(engine.error)}")
        if job is not None:
            summary["protocol_file"] = str(job.path)
            self.last_summary = summary
            self._say(f"{engine.protocol.name} ended: {summary['duration_s']:g} s, "
                      f"{summary['stims_executed']} pulses, {summary['spikes']} spikes"
                      + (f"; {WATCHING}" if self.connected else ""))
        return False

    def _lost(self, message: str) -> None:
        """The device failed: report it and disconnect (no monitor restarts on a dead link)."""
        self._error(message)
        with self._state:
            self._connected = False

    def _config(self, fast: bool, duration_s: float | None = None) -> EngineConfig:
        return EngineConfig(block_ms=self.block_ms, fast=fast, duration_s=duration_s,
                            seed=self.seed, limits=self.limits)

    def _engine_with(self, protocol: Protocol, config: EngineConfig,
                     sinks: list[Sink], log: Any = None) -> Engine:
        assert self._driver is not None
        engine = Engine(self._driver, protocol, config, sinks=sinks, log=log or self._say,
                        pulse_history=self.pulse_history)
        if self._stim_stopped is not None:  # an operator's stop holds until rearm()
            engine.gate.disarm(self._stim_stopped)
        return engine

    def _monitor_engine(self) -> Engine:
        return self._engine_with(Monitor(), self._config(self._monitor_fast),
                                 [self.feed, self.switch], log=self._monitor_say)

    def _monitor_say(self, message: str) -> None:
        """The monitor's log, but its start and end: the session says what runs instead
        (a monitor's "end of run" at a protocol's start reads as if that had ended)."""
        if not message.startswith((f"[{EventKind.START}] ", f"[{EventKind.STOP}] ")):
            self._say(message)

    def _job_engine(self, job: _Job) -> Engine:
        return self._engine_with(job.protocol, self._config(job.fast, job.duration_s),
                                 [self.feed, self.switch])

    def _recorder(self, engine: Engine, protocol_file: Path | None, path: str | Path,
                  overwrite: bool, duration_s: float | None,
                  meta: RecordingMeta | None = None) -> Any:
        """An NWB recorder of ``engine``'s run (it creates the file: bad paths raise here)."""
        from mea_control.recording import Recorder
        from mea_control.recording.writer import run_provenance

        meta = meta or RecordingMeta()
        if not meta.session_description:
            meta = replace(meta, session_description=f"{engine.protocol.name} (mea-control gui)")
        if engine.info.simulated:
            meta = meta.for_simulator()
        provenance = run_provenance(engine.describe(), protocol_file, source="gui")
        return Recorder(path, engine.info, provenance, meta=meta, overwrite=overwrite,
                        duration_s=duration_s)


def _last_line(text: str | None) -> str:
    """The last line of an error (a traceback ends with the exception)."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "error"
