"""The closed loop: acquisition thread, protocol callbacks, stimulation in sample time.

One thread reads the driver, filters and detects spikes, calls the protocol's
hooks and sends its patterns through the safety gate. The caller's thread
only waits and reports progress, so Ctrl-C there stops the run cleanly.
Everything is stamped with the device's sample index; wall-clock time is used
only by the watchdog and for loop-cost figures.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mea_control import __version__
from mea_control.context import Context
from mea_control.driver import Driver, DriverError, Event
from mea_control.dsp import DetectorConfig, SpikeDetector
from mea_control.limits import SafetyLimits, effective_limits
from mea_control.patterns import PatternLog
from mea_control.protocol import Protocol, ProtocolError
from mea_control.pulse_history import PulseHistory
from mea_control.run_stats import RunStats
from mea_control.safety import SafetyGate, SafetyRefusal, check_stim_mode
from mea_control.sinks import (
    RUN_ENDED,
    EventKind,
    RunDescription,
    RunEvent,
    Sink,
    SinkError,
    StimRecord,
    ending_text,
)
from mea_control.trials import Trials
from mea_control.types import Block, SpikeEvents, StimPattern, StimReport, Tick
from mea_control.watchdog import STOP_GRACE_S, LagWatch, where_in

#: How many recent events the engine keeps in memory.
KEEP_RECENT = 10_000
#: After the end-of-run abort, how long the loop waits for the device's last reports.
LAST_REPORTS_S = 0.5


class _Abandoned(BaseException):
    """Unwinds a loop that run() gave up as hung, once its hook returns: the run is over
    and the driver may serve another run already."""


@dataclass(frozen=True)
class EngineConfig:
    block_ms: float = 1.0
    fast: bool = False
    duration_s: float | None = None
    #: Stimulation stops when the loop falls this far behind the device (real time only).
    watchdog_ms: float = 200.0
    #: A protocol hook (after setup) that has not returned after this long ends the run as
    #: a protocol error; stimulation stops long before, when the loop falls behind.
    hook_timeout_s: float = 60.0
    #: Seed of ``ctx.rng``, the protocol's random generator.
    seed: int = 0
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    #: A device silent for this long ends the run with an error.
    device_timeout_s: float = 5.0




@contextlib.contextmanager
def _ctrl_c_ignored():
    """Ignore SIGINT for a while (main thread only; elsewhere signals cannot arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Engine:
    """Runs one protocol on one device until it finishes, the duration ends, or stop().

    It is the :class:`~mea_control.context.Loop` behind the protocol's ``ctx``.
    """

    def __init__(
        self,
        driver: Driver,
        protocol: Protocol,
        config: EngineConfig | None = None,
        sinks: Iterable[Sink] = (),
        log: Callable[[str], None] | None = None,
        pulse_history: PulseHistory | None = None,
    ) -> None:
        self.driver = driver
        #: The culture's recent pulses, given to the gate at start and kept at the end.
        self.pulse_history = pulse_history
        self.protocol = protocol
        self.config = config or EngineConfig()
        self.sinks = list(sinks)
        self._log = log or (lambda message: None)
        self.info = driver.info
        fs = self.info.sample_rate
        try:
            limits, self.limit_notes = effective_limits(self.config.limits, self.info.limits)
            self.gate = SafetyGate(limits, self.info.layout, fs)
        except ValueError as exc:
            raise ValueError(f"safety limits: {exc}") from None
        try:
            self.detector = SpikeDetector(
                self.info.n_channels, fs, self.info.uV_per_bit, self.config.detector
            )
        except ValueError as exc:
            raise ValueError(f"spike detection at {fs:g} Hz: {exc}") from None
        self.block_samples = max(1, int(round(self.config.block_ms * fs / 1000.0)))
        self.now = 0
        self.t0 = 0
        self.trials: Trials | None = None
        #: Every pattern sent or refused: pending, running, and how each ended.
        self.patterns = PatternLog(fs)
        self.recent_events: deque[RunEvent] = deque(maxlen=KEEP_RECENT)
        #: The run's figures so far (the loop's thread adds to them).
        self.stats = RunStats()
        self.error: str | None = None
        self.error_kind: str | None = None
        #: The exception that ended the run, if any.
        self.exception: BaseException | None = None
        self.interrupted = False
        #: Why the run was asked to stop (the first reason given to stop()), "" if none was.
        self.stop_reason = ""
        #: The run reached its planned end: all its trials, or its duration.
        self.reached_end = False
        #: The operator paused the protocol (pause()); samples spent in ended pauses.
        self.paused = False
        self.paused_samples = 0
        self._pause_wanted = False
        self._paused_at = 0
        #: Whether the protocol hears of its patterns' fates (on_stim): from its first block
        #: until teardown; the fates settled while it is paused wait here for the resume.
        self._telling = False
        self._untold: deque[StimRecord] = deque()
        self._expected: int | None = None
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._wall_start = 0.0
        self._wall_end = 0.0
        #: The loop's lag behind the device (real time only).
        self.lag = LagWatch(fs)
        #: Events from other threads (operator, watchdog), logged at once and given to the
        #: sinks by the loop.
        self._queued_events: deque[RunEvent] = deque()
        #: Admission and sending are one step with respect to aborting (see stop_stimulation).
        self._stim_lock = threading.Lock()
        #: (hook name, wall time it was called) while a protocol hook runs.
        self._hook: tuple[str, float] | None = None
        #: The hooks that let a SafetyRefusal escape this run (said once for each).
        self._refusal_escaped: set[str] = set()
        self._worker: threading.Thread | None = None
        #: A hook never returned: run() ended the run without its loop.
        self._abandoned = False
        self._started = False
        #: Whether the gate was armed when the run ended (its gate is closed after that).
        self.armed_at_end: bool | None = None
        self._summary_requests: deque[tuple[threading.Event, list[dict[str, Any]]]] = deque()
        self.ctx: Context | None = None

    # -- control, from any thread -------------------------------------------------
    def stop(self, reason: str = "") -> None:
        """Ask the loop to end after the current block; ``reason`` (the first one given)
        is how the summary and the recording say the run ended, e.g. "stopped by the
        operator"."""
        if reason and not self.stop_reason:
            self.stop_reason = reason
        self._stop.set()

    def stop_stimulation(self, reason: str) -> None:
        """A person stops stimulation now (any thread): the gate refuses every pattern
        until rearm(), the device's queued pulses are cancelled, and a "disarm" event
        goes to the log and the recording. When it returns, no pattern the loop sent
        will run (beyond what the driver documents it cannot stop). Raises DriverError
        if the abort failed (the gate is closed anyway)."""
        self._queue_event(EventKind.DISARM, reason, armed=False, disarm_reason=reason)
        self._halt(reason)

    def _halt(self, reason: str) -> None:
        """Close the gate, then cancel what the device holds.

        The abort waits for a send in progress (admitted before the gate closed),
        so it cancels that pattern too. A send that does not finish within a
        second (a stuck link) gets an abort now, and stimulate() aborts again once
        that send is through, as it finds the gate closed.
        """
        self.gate.disarm(reason)
        if self._abandoned and threading.current_thread() is self._worker:
            return  # run() ended the run without this loop and cancelled everything then
        got = self._stim_lock.acquire(timeout=1.0)
        try:
            self.driver.abort_stimulation()
        finally:
            if got:
                self._stim_lock.release()

    def _queue_event(self, kind: str, message: str, armed: bool | None = None,
                     disarm_reason: str = "") -> None:
        """An event from another thread: logged now, recorded by the loop."""
        self._log(f"[{kind}] {message}")
        self._queued_events.append(RunEvent(self.now, EventKind.of(kind), message, armed,
                                            disarm_reason))

    def pause(self) -> None:
        """Pause the protocol until resume(): its hooks are not called and no trial starts;
        acquisition, detection and recording go on, trials begun finish. The trials after
        the pause move later by its length, and a run's duration does not count it."""
        self._pause_wanted = True

    def resume(self) -> None:
        self._pause_wanted = False

    def rearm(self) -> None:
        """A person re-enables stimulation after the watchdog or an error stopped it."""
        self.lag.restart()
        self.driver.rearm_stimulation()
        self.gate.rearm()
        self._queue_event(EventKind.REARM, "stimulation re-armed", armed=True)

    def set_trials(self, trials: Trials) -> None:
        if self.trials is not None:
            raise RuntimeError("a run has one trial design; use_trials was called twice")
        trials.attach(self.info.sample_rate, self.t0, self.info.n_channels,
                      scheduled=self.info.capabilities.scheduled_stim,
                      block_samples=self.block_samples, layout=self.info.layout)
        self.trials = trials

    def can_stimulate(self, channel: int) -> bool:
        return self.gate.can_stimulate(channel)

    def outcome(self, ticket: int) -> StimRecord | None:
        return self.patterns.outcome(ticket)

    def log(self, message: str) -> None:
        """A protocol's message (ctx.log): logged and given to the sinks as an event."""
        self.event(EventKind.LOG, message)

    def event(self, kind: str, message: str, armed: bool | None = None,
              disarm_reason: str = "") -> None:
        """Log an event and give it to the sinks (acquisition thread); ``armed`` and
        ``disarm_reason`` tell the sinks how the event left the safety gate."""
        self._log(f"[{kind}] {message}" if kind != EventKind.LOG else message)
        self._record_event(RunEvent(self.now, EventKind.of(kind), message, armed,
                                    disarm_reason))

    def _record_event(self, ev: RunEvent) -> None:
        self.recent_events.append(ev)
        self._notify("on_event", ev)

    def notify_decision(self, decision: dict[str, Any]) -> None:
        self._notify("on_decision", self.now, decision)

    def _notify(self, method: str, *args: Any) -> None:
        if self._abandoned and threading.current_thread() is self._worker:
            return  # run() ended the run without this hung loop: the sinks are closed
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception as exc:
                raise SinkError(f"{type(sink).__name__}.{method} failed: {exc}") from exc

    def progress(self) -> tuple[float, str]:
        """(fraction done, "session s/S trial n/N t=..s, m:ss left") of the run."""
        fs = self.info.sample_rate
        elapsed = (self.now - self.t0) / fs
        left_s = None
        if self.trials is not None:
            fraction, text = self.trials.progress()
            last = self.trials.trigger_sample(self.trials.n_trials - 1)
            left_s = (last - self.now) / fs + self.trials.window_ms[1] / 1000.0
        elif self.config.duration_s:
            active = elapsed - self._paused_so_far() / fs
            fraction, text = active / self.config.duration_s, ""
            left_s = self.config.duration_s - active
        else:
            fraction, text = 0.0, ""
        text = (text + f" t={elapsed:.1f}s").strip()
        if left_s is not None:
            minutes, seconds = divmod(int(round(max(left_s, 0.0))), 60)
            text += f", {minutes}:{seconds:02d} left"
        if self.paused:
            text += " (paused)"
        return min(fraction, 1.0), text

    # -- stimulation ---------------------------------------------------------------
    def stimulate(self, pattern: StimPattern, trigger_sample: int | None) -> int:
        if self._abandoned:
            raise _Abandoned  # a hook run() gave up on: the driver is not this run's now
        trigger = self.now if trigger_sample is None else int(trigger_sample)
        try:
            # One step with respect to _halt(): a STOP either comes first (the gate refuses)
            # or waits for the send and then cancels it.
            with self._stim_lock:
                if pattern.at_sample is None:
                    # book the pulse where the device will run it, not where the loop is
                    earliest = self.driver.earliest_stim_sample()
                    if earliest is not None:
                        pattern = replace(pattern, at_sample=max(self.now, earliest))
                check_stim_mode(pattern, self.info)
                self.gate.admit(pattern, self.now)
                ticket = self.driver.stimulate(pattern)
                if not self.gate.armed:  # a STOP came while it was on its way (see _halt)
                    self.driver.abort_stimulation()
        except SafetyRefusal as refusal:
            record = self.patterns.refused(pattern, trigger, self.now, str(refusal))
            self.stats.refused += 1
            self.event(EventKind.REFUSAL, str(refusal))
            self._notify("on_stim", record)
            raise
        self.patterns.sent(ticket, pattern, trigger, self.now)
        return ticket

    def _on_report(self, report: StimReport) -> None:
        if report.pulses_run is not None:
            record = self.patterns.cut(report)
            if record is not None:
                self._stim_final(record)
            return
        record = self.patterns.reported(report)
        if record is None:
            return
        if report.executed:
            self.stats.executed += 1
            self.stats.latency[report.sample - record.trigger_sample] += 1
            # Blank the artifact in the raw stream. A spikes-only device sends no blocks, so
            # the detector would never reach (and drop) its windows: they would pile up.
            if self.info.capabilities.raw_stream or self._expected is not None:
                for offset in record.pattern.pulse_offsets(self.info.sample_rate):
                    self.detector.blank(report.sample + offset)
        else:
            self.stats.dropped += 1
            self.event(EventKind.STIM_DROPPED,
                       f"device dropped pattern {report.ticket}: {report.reason}")
        if self.trials is not None:
            self.trials.on_report(report)
        if not self.patterns.running(record):  # a train: the sinks hear of it when it ends
            self._notify("on_stim", record)
            self._tell(record)

    def _stim_final(self, record: StimRecord) -> None:
        """A pattern's record is final: a train cut short is an event too."""
        if record.pulses_run is not None:
            self.event(EventKind.TRAIN_CUT, f"pattern {record.ticket}: {record.reason}")
        self._notify("on_stim", record)
        self._tell(record)

    def _tell(self, record: StimRecord) -> None:
        """The protocol's on_stim for a pattern whose fate is final (after the sinks'):
        not once the run is ending (a stop asked for, an error), as on_clock."""
        if not self._telling or self.error is not None or self._stop.is_set():
            return
        if self.paused:
            self._untold.append(record)
        else:
            self._call(self.protocol.on_stim, self.ctx, record)

    # -- the loop ------------------------------------------------------------------
    def run(self, progress: Callable[[float, str], None] | None = None,
            interval_s: float = 0.25) -> dict[str, Any]:
        """Run to the end on a worker thread; returns the summary. Ctrl-C stops cleanly.

        A watchdog thread runs beside the loop: it stops stimulation when the loop
        falls behind the device, and ends the run when a protocol hook hangs.
        """
        self.driver.set_fast(self.config.fast)
        self._start_wall_clock = time.time()  # at or before the device's first sample
        self.driver.start(self.block_samples)
        self._worker = threading.Thread(target=self._loop, name="mea-acquisition", daemon=True)
        watchdog = threading.Thread(target=self._watch, name="mea-watchdog", daemon=True)
        self._wall_start = time.perf_counter()
        self._worker.start()
        watchdog.start()
        try:
            while not self._ended(interval_s):
                if progress is not None:
                    progress(*self.progress())
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop()
            while True:  # further Ctrl-C while the loop winds down changes nothing
                try:
                    while not self._ended(0.1):
                        pass
                    break
                except KeyboardInterrupt:
                    continue
        if self._abandoned:
            self._end_without_loop()
        else:
            self._worker.join()
        watchdog.join()
        if progress is not None:
            progress(*self.progress())
        try:  # patterns the device never reported on: sent, fate unknown
            for record in self.patterns.unreported():
                self._notify("on_stim", record)
            summary = self.summary()
            with _ctrl_c_ignored():  # recorders finish their files whatever the user presses
                self._notify("on_stop", summary)
        except SinkError as exc:
            self._fail("sink", traceback.format_exc(), exc)
            summary = self.summary()
            summary["error"] = "sink"
        return summary

    def _ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s: True once the loop finished or was given up as hung.

        It polls, lock-free, rather than Event.wait(): a KeyboardInterrupt that lands
        inside Event.wait can leave the event's lock held, and the loop's set() then
        hangs the process (bpo-29988)."""
        deadline = time.monotonic() + timeout
        while not (self._finished.is_set() or self._abandoned):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _loop(self) -> None:
        try:
            self._acquire()
        except _Abandoned:
            pass
        except DriverError as exc:
            self._fail("device", str(exc), exc)
        except SinkError as exc:
            self._fail("sink", traceback.format_exc(), exc)
        except Exception as exc:  # a driver bug must still end the run cleanly
            self._fail("device", traceback.format_exc(), exc)
        finally:
            if not self._abandoned:
                self._end_run()
                self._serve_summaries()
            self._finished.set()

    def _end_run(self) -> None:
        """However the run ends: on the loop's thread, or on run()'s for a hung loop."""
        self._wall_end = time.perf_counter()
        self._end_stimulation()
        self._stop_device()
        self._keep_pulses()

    def _keep_pulses(self) -> None:
        """However the run ended, its pulses stay in the device's pulse history."""
        if self.pulse_history is not None:
            try:
                self.pulse_history.keep(self.gate, self.now)
            except Exception as exc:  # never in the way of ending the run
                self._log(f"[limits] warning: keeping the pulse history failed: {exc}")

    def _end_stimulation(self) -> None:
        """Every way a run ends: close the gate, cancel what the device holds, and take
        the device's last reports (what ran, what was cancelled, where trains were cut)."""
        self.armed_at_end = self.gate.armed
        self.gate.close(RUN_ENDED)
        try:
            self._halt(RUN_ENDED)
        except Exception as exc:
            self._event_quietly(EventKind.DEVICE_ERROR,
                                f"cancelling queued stimulation failed: {exc}")
            return
        clock = self.now
        deadline = time.perf_counter() + LAST_REPORTS_S
        try:  # (a hung loop's driver is not read from another thread: no reports then)
            while self.patterns.outstanding and not self._abandoned \
                    and time.perf_counter() < deadline:
                self._serve_summaries()
                item = self.driver.read(timeout=0.05)
                if isinstance(item, StimReport):
                    self._on_report(item)
                elif isinstance(item, Block | Tick):
                    clock = item.stop_sample if isinstance(item, Block) else item.sample
                    for record in self.patterns.trains_done(clock):
                        self._stim_final(record)
        except Exception:
            pass  # a lost device has no more reports; what is pending stays "sent"
        for record in self.patterns.trains_unknown(clock):
            self._stim_final(record)

    def _stop_device(self) -> None:
        try:
            self.driver.stop()
        except Exception as exc:  # stopping a broken device must not hide the first error
            self._event_quietly(EventKind.DEVICE_ERROR, f"stopping the device failed: {exc}")

    def _event_quietly(self, kind: str, message: str, armed: bool | None = None,
                       disarm_reason: str = "") -> None:
        """An event whose own failure (a broken sink) must not hide the first error."""
        try:
            self.event(kind, message, armed, disarm_reason)
        except SinkError:
            pass

    def _end_without_loop(self) -> None:
        """The loop is stuck in a protocol hook: end the run from here (caller's thread)."""
        self._end_run()
        while self._queued_events:
            self._record_event(self._queued_events.popleft())

    def _fail(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        """Stop stimulation and the run; the first error is the one reported (any thread)."""
        if self.error is None:
            self.error, self.error_kind, self.exception = message, kind, exc
        reason = f"{kind} error"
        try:
            self._halt(reason)
        except Exception:
            pass
        text = message.strip().splitlines()[-1] if message.strip() else kind
        if threading.current_thread() is self._worker:
            self._event_quietly(EventKind.error(kind), text, armed=False, disarm_reason=reason)
        else:
            self._queue_event(EventKind.error(kind), text, armed=False, disarm_reason=reason)
        self._stop.set()

    def _call(self, hook: Callable[..., Any], *args: Any) -> Any:
        """Run a protocol hook; an exception stops stimulation and the run."""
        self._hook = (getattr(hook, "__name__", "hook"), time.perf_counter())
        try:
            return hook(*args)
        except SafetyRefusal as refusal:
            self._say_refusal_escaped(hook, refusal)
            return None  # counted and logged by stimulate(); the run goes on
        except (DriverError, SinkError):
            raise  # not the protocol's fault: the loop reports it as such
        except Exception as exc:
            # on the last line, which the log shows
            where = where_in(self.protocol, traceback.extract_tb(exc.__traceback__))
            trace = traceback.format_exc().rstrip()
            if isinstance(exc, ProtocolError):  # the log's line: its message, no class name
                trace += f"\n{exc}"
            self._fail("protocol", f"{trace} {where}".rstrip() + "\n", exc)
            return None
        finally:
            self._hook = None
            if self._abandoned:
                raise _Abandoned

    def _say_refusal_escaped(self, hook: Callable[..., Any], refusal: SafetyRefusal) -> None:
        """Once per hook per run: a refusal it did not catch ended that call early."""
        name = getattr(hook, "__qualname__", getattr(hook, "__name__", "hook"))
        if name in self._refusal_escaped:
            return
        self._refusal_escaped.add(name)
        where = where_in(self.protocol, traceback.extract_tb(refusal.__traceback__))
        self.event(EventKind.REFUSAL_UNCAUGHT,
                   f"{name} did not catch a SafetyRefusal{' ' + where if where else ''}: "
                   "the rest of that call did not run; catch SafetyRefusal around "
                   "ctx.stimulate, or check ctx.can_stimulate first (said once per hook "
                   "per run)")

    def _watch(self) -> None:
        """The watchdog thread: the loop's lag behind the device, and hooks that hang."""
        period = min(max(self.config.watchdog_ms / 4000.0, 0.005), 0.05)
        while not self._finished.wait(period):
            if self._abandoned:
                return
            self._check_hook()
            if self._started and not self.config.fast:
                self._watchdog()

    def _check_hook(self) -> None:
        running = self._hook
        if running is None or not self._started or self._abandoned:
            return
        name, since = running
        limit = self.config.hook_timeout_s
        if self._stop.is_set():
            limit = min(limit, STOP_GRACE_S)  # the run is ending: do not wait long for it
        stuck = time.perf_counter() - since
        if stuck <= limit:
            return
        frame = sys._current_frames().get(self._worker.ident) if self._worker else None
        where = where_in(self.protocol, traceback.extract_stack(frame)) if frame else ""
        message = (f"protocol hook {name} has not returned for {stuck:.1f} s {where}; the "
                   "run ended without it and stimulation was stopped").replace("  ", " ")
        self._fail("protocol", message)
        self._abandoned = True

    def _acquire(self) -> None:
        first, early_spikes = self._wait_first_clock()
        if first is None:
            return
        if isinstance(first, Block):
            self.t0 = first.start_sample
        else:  # a Tick ends the first interval, of the block size asked for
            self.t0 = max(0, first.sample - self.block_samples)
        self.now = self.t0
        self._notify("on_start", self.describe())
        self.ctx = Context(self, self.info, self.t0, self.config.seed)
        self.event(EventKind.START, f"protocol {self.protocol.name} on {self.info.name}")
        for note in self.limit_notes:
            self.event(EventKind.LIMITS, note)
        if self.pulse_history is not None:
            for note in self.pulse_history.restore(self.gate, self.t0, self._start_wall_clock,
                                                   lambda: self.now):
                self.event(EventKind.LIMITS, note)
        try:
            self._call(self.protocol.setup, self.ctx)
            if self.gate.armed:
                # a device whose dead-man switch tripped while setup kept the loop from
                # reading (and beating) may stimulate: the host is alive and armed
                self.driver.rearm_stimulation()
            for spikes in early_spikes:
                self._on_spikes(spikes)
            self._started = self._telling = True
            self._stream(first)
        finally:
            self._telling = False
            if not self._abandoned:
                self._call(self.protocol.teardown, self.ctx)
                self._device_events()
                self._events_from_elsewhere()
                self.event(EventKind.STOP, "interrupted" if self.interrupted else "end of run")

    def _device_events(self) -> None:
        """Log what the driver saw on the link; a device that disarmed itself (it heard
        nothing from this computer for too long) disarms the gate too, until a person
        re-arms both."""
        for name, message in self.driver.drain_events():
            kind = EventKind.of(name)  # a kind no member names stays the driver's string
            if kind == EventKind.DEVICE_DISARMED:
                reason = "the device disarmed itself"
                self.gate.disarm(reason)
                self.event(kind, message, armed=False, disarm_reason=reason)
            else:
                self.event(kind, message)

    def _events_from_elsewhere(self) -> None:
        while self._queued_events:
            self._record_event(self._queued_events.popleft())
        self._serve_summaries()

    def _serve_summaries(self) -> None:
        """Make the summaries other threads asked for, here between two items."""
        while self._summary_requests:
            done, out = self._summary_requests.popleft()
            out.append(self._summary())
            done.set()

    def _stream(self, first: Block | Tick) -> None:
        duration = (
            int(round(self.config.duration_s * self.info.sample_rate))
            if self.config.duration_s is not None else None
        )
        item: Event | None = first
        while item is not None and not self._abandoned:
            self._events_from_elsewhere()
            if self._pause_wanted != self.paused:
                self._set_paused(self._pause_wanted)
            self._device_events()
            if isinstance(item, Block):
                tick = time.perf_counter()
                self._on_block(item)
                self.stats.loop_cost.add(time.perf_counter() - tick)
            elif isinstance(item, Tick):
                tick = time.perf_counter()
                self.stats.blocks += 1
                self._on_clock(item.sample)
                self.stats.loop_cost.add(time.perf_counter() - tick)
            elif isinstance(item, StimReport):
                self._on_report(item)
            elif isinstance(item, SpikeEvents):
                self._on_spikes(item)
            if self.trials is not None and self.trials.done:
                self.reached_end = True
                break
            if duration is not None and self.now - self.t0 - self._paused_so_far() >= duration:
                self.reached_end = True
                break
            item = self._read()

    def _wait_first_clock(self) -> tuple[Block | Tick | None, list[SpikeEvents]]:
        """The first Block or Tick (where the run's time starts), and spikes that came before."""
        early: list[SpikeEvents] = []
        while (item := self._read()) is not None:
            if isinstance(item, Block | Tick):
                return item, early
            if isinstance(item, StimReport):
                self._on_report(item)
            elif isinstance(item, SpikeEvents):
                early.append(item)
        return None, early

    def _read(self) -> Event | None:
        """The device's next item, or None once a stop was asked for.

        Raises DriverError if the device stays silent for ``device_timeout_s``.
        """
        deadline = time.perf_counter() + self.config.device_timeout_s
        while not self._stop.is_set():
            self._serve_summaries()
            item = self.driver.read(timeout=0.5)
            if item is not None:
                return item
            if time.perf_counter() > deadline:
                raise DriverError(
                    f"device {self.driver.url} sent nothing for {self.config.device_timeout_s:g} s"
                )
        return None

    def _on_block(self, block: Block) -> None:
        if self._expected is not None and block.start_sample != self._expected:
            lost = block.start_sample - self._expected
            self.stats.samples_lost += max(lost, 0)
            self.stats.gaps += 1
            # the detector restarts its filter at the gap by itself and keeps its noise estimate
            self.event(EventKind.GAP, f"{lost} samples missing before sample {block.start_sample}")
        self._expected = block.stop_sample
        self.stats.blocks += 1
        filtered, spikes = self.detector.process(block)
        self.now = block.stop_sample
        if not self.config.fast:
            self._watchdog()  # before the protocol decides anything on this block
        if not self.paused:
            self._call(self.protocol.on_block, self.ctx, block, filtered)
        if self.error is None and len(spikes):
            self._on_spikes(spikes)
        self._notify("on_block", block, filtered)
        self._on_clock(block.stop_sample)

    def _on_clock(self, sample: int) -> None:
        """The device delivered everything before ``sample``: trials, the watchdog and then
        the protocol's on_clock move on (not while paused, nor once the run is ending)."""
        self.now = sample
        self._notify("on_clock", sample)
        for record in self.patterns.trains_done(sample):
            self._stim_final(record)
        if not self.config.fast:
            self._watchdog()  # before the protocol decides anything at this sample
        if self.trials is not None and self.error is None:
            for trial in self._call(self.trials.on_block, self.ctx, sample) or ():
                self._call(self.protocol.on_trial, self.ctx, trial)
                self._notify("on_trial", trial)
        if not self.paused and self.error is None and not self._stop.is_set():
            self._call(self.protocol.on_clock, self.ctx, sample)

    def _on_spikes(self, spikes: SpikeEvents) -> None:
        self.stats.spikes += len(spikes)
        if self.trials is not None:
            self.trials.on_spikes(spikes)
        if not self.paused:
            self._call(self.protocol.on_spikes, self.ctx, spikes)
        self._notify("on_spikes", spikes)

    def _set_paused(self, pause: bool) -> None:
        """Pause or resume the protocol now (acquisition thread)."""
        fs = self.info.sample_rate
        if pause:
            self.paused, self._paused_at = True, self.now
            self.event(EventKind.PAUSE, "protocol paused by the operator")
        else:
            length = self.now - self._paused_at
            self.paused_samples += length
            self.paused = False
            if self.trials is not None:
                self.trials.delay(length)
            self.event(EventKind.RESUME, f"protocol resumed after {length / fs:.1f} s paused")
            while self._untold:
                self._tell(self._untold.popleft())
        if self.trials is not None:
            self.trials.paused = self.paused

    def _paused_so_far(self) -> int:
        """Samples spent paused, the pause in progress included."""
        return self.paused_samples + (self.now - self._paused_at if self.paused else 0)

    def _watchdog(self) -> None:
        """Disarm stimulation when the loop falls behind the device by more than watchdog_ms
        (see LagWatch).

        The watchdog thread calls it every few ms, and the loop before it hands a
        block to the protocol, so that a hook that hangs is caught while it hangs
        and no decision is taken on stale data.
        """
        with self.lag.lock:
            behind_ms = self.lag.behind_ms(self.now - self.t0)
            if behind_ms <= self.config.watchdog_ms or not self.gate.armed:
                return
            self.stats.watchdog_trips += 1
            reason = f"watchdog: the loop fell {behind_ms:.0f} ms behind"
            self.gate.disarm(reason)
        self._queue_event(
            EventKind.WATCHDOG,
            f"loop fell {behind_ms:.0f} ms behind the device "
            f"(limit {self.config.watchdog_ms:g} ms); stimulation stopped until re-armed",
            armed=False, disarm_reason=reason,
        )
        self._halt(reason)

    def describe(self) -> RunDescription:
        """The run as its sinks and recordings are told of it (any thread; the start
        sample is known once the run has started)."""
        return RunDescription(
            protocol=self.protocol.name, parameters=self.protocol.values,
            device_url=self.driver.url, info=self.info, limits=self.gate.limits.as_dict(),
            limit_notes=tuple(self.limit_notes), block_samples=self.block_samples,
            fast=self.config.fast, seed=self.config.seed, watchdog_ms=self.config.watchdog_ms,
            detector=asdict(self.config.detector), software_version=__version__,
            start_sample=self.t0, armed=self.gate.armed, disarm_reason=self.gate.disarm_reason)

    # -- results -------------------------------------------------------------------
    def _ending(self) -> dict[str, Any]:
        """How the run ended, in words ("ended") and whether before its planned end
        ("ended_early"; a run with no planned end that is stopped ends as it should)."""
        planned_end = self.trials is not None or self.config.duration_s is not None
        early = not self.reached_end and (
            planned_end or self.error_kind is not None or self.interrupted)
        if self.error_kind is not None:
            how = f"ended by a {self.error_kind} error"
        elif self.interrupted:
            how = "interrupted (Ctrl-C or a stop signal)"
        elif self.stop_reason and not self.reached_end:
            how = self.stop_reason
        else:
            how = "ended early" if early else "completed"
        trials = self.trials
        return {"ended": ending_text(how, len(trials.finished) if trials else 0,
                                     trials.n_trials if trials else None),
                "ended_early": early}

    def summary(self) -> dict[str, Any]:
        """The run's figures. Any thread: while the loop runs, it computes them between
        two items, so that nothing changes under them."""
        worker = self._worker
        if worker is not None and threading.current_thread() is not worker:
            done, out = threading.Event(), []
            self._summary_requests.append((done, out))
            while not done.wait(0.05):
                if self._finished.is_set() or self._abandoned or not worker.is_alive():
                    break  # the loop is over (or given up as hung): nothing moves under us
            if out:
                return out[0]
        for _ in range(10):  # a hung loop's figures: copy, again if they changed meanwhile
            try:
                return self._summary()
            except RuntimeError:
                time.sleep(0.01)
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        fs = self.info.sample_rate
        duration_s = (self.now - self.t0) / fs
        wall = max((self._wall_end or time.perf_counter()) - self._wall_start, 1e-9)
        out: dict[str, Any] = {
            "software_version": __version__,
            "protocol": self.protocol.name,
            "parameters": self.protocol.values,
            "device": self.driver.url,
            "device_info": self.info.describe(),
            "sample_rate": fs,
            "block_samples": self.block_samples,
            "fast": self.config.fast,
            "seed": self.config.seed,
            "duration_s": round(duration_s, 6),
            "paused_s": round(self.paused_samples / fs, 3),
            "wall_s": round(wall, 3),
            "realtime_factor": round(duration_s / wall, 2),
            **self.stats.counts(self.block_samples),
            "stims_unreported": len(self.patterns.pending),
            "latency_samples": self.stats.latency_quantiles(),
            "loop_cost_us": self.stats.loop_cost.quantiles(),
            "watchdog_trips": self.stats.watchdog_trips,
            "gaps": self.stats.gaps,
            "stimulation_armed": self.gate.armed if self.armed_at_end is None
            else self.armed_at_end,
            "max_lag_ms": round(self.lag.max_ms, 1),
            "trials": len(self.trials.finished) if self.trials is not None else 0,
            "trials_planned": self.trials.n_trials if self.trials is not None else None,
            "limits": self.gate.limits.as_dict(),
            "interrupted": self.interrupted,
            "error": self.error_kind,
        }
        if self._finished.is_set() or self._abandoned:  # the run is over: how it ended
            out.update(self._ending())
        if self.trials is not None and self.trials.finished:
            out["evoked"] = self.trials.table().evoked_summary()
        try:
            out["protocol_summary"] = self.protocol.summary()
        except Exception as exc:
            out["protocol_summary"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
