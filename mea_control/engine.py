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
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from drivers.base import DeviceInfo, Driver, DriverError, Event
from mea_control import __version__
from mea_control.dsp import DetectorConfig, SpikeDetector
from mea_control.protocol import Protocol
from mea_control.safety import SafetyGate, SafetyLimits, SafetyRefusal, effective_limits
from mea_control.trials import Trial, Trials
from mea_control.types import Block, SpikeEvents, StimPattern, StimReport, Tick

#: How many recent events, pattern records and refusals the engine keeps in memory.
KEEP_RECENT = 10_000
#: How fast the watchdog lets the loop's offset from the device clock creep: drift
#: between the device's clock and the computer's (crystals: tens of ppm).
DRIFT_ALLOWANCE = 2e-4


def expand_counts(counts: Counter[int]) -> np.ndarray:
    """The values of a value -> count tally, each repeated count times, sorted."""
    values = sorted(counts)
    return np.repeat(np.array(values, np.int64), [counts[v] for v in values])


class SinkError(Exception):
    """A sink (recorder, display) failed; the run stops."""


@dataclass(frozen=True)
class EngineConfig:
    block_ms: float = 1.0
    fast: bool = False
    duration_s: float | None = None
    #: Stimulation stops when the loop falls this far behind the device (real time only).
    watchdog_ms: float = 200.0
    #: Seed of ``ctx.rng``, the protocol's random generator.
    seed: int = 0
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    #: A device silent for this long ends the run with an error.
    device_timeout_s: float = 5.0


@dataclass
class StimRecord:
    """One pattern's life: trigger, decision and execution samples, and its fate."""

    ticket: int | None
    pattern: StimPattern
    trigger_sample: int
    decision_sample: int
    execution_sample: int | None = None
    status: str = "sent"  # sent (no report by the end of the run), executed, dropped, refused
    reason: str = ""


@dataclass(frozen=True)
class RunEvent:
    sample: int
    kind: str  # start, stop, gap, watchdog, rearm, refusal, protocol_error, device_error
    message: str


class Sink:
    """Receives everything the loop sees; recorders and the GUI plug in here.

    Methods run on the acquisition thread and must return quickly (queue the
    work, never write to disk or draw here).
    """

    def on_start(self, info: DeviceInfo, protocol: Protocol) -> None: ...
    def on_block(self, block: Block, filtered: np.ndarray | None, spikes: SpikeEvents) -> None: ...
    def on_spikes(self, spikes: SpikeEvents) -> None: ...
    def on_stim(self, record: StimRecord) -> None: ...
    def on_trial(self, trial: Trial) -> None: ...
    def on_decision(self, sample: int, decision: dict[str, Any]) -> None: ...
    def on_event(self, event: RunEvent) -> None: ...
    def on_stop(self, summary: dict[str, Any]) -> None: ...


class Context:
    """What a protocol's hooks see: the clock, the device, the gate and helpers."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        info = engine.info
        self.info = info
        self.layout = info.layout
        self.sample_rate = info.sample_rate
        self.n_channels = info.n_channels
        self.rng = np.random.default_rng(engine.config.seed)

    @property
    def now(self) -> int:
        """The device sample just after the latest processed block."""
        return self._engine.now

    @property
    def start_sample(self) -> int:
        return self._engine.t0

    def can_stimulate(self, channel: int) -> bool:
        """Whether the layout and the limits in force let this electrode stimulate."""
        return self._engine.gate.can_stimulate(channel)

    def samples(self, seconds: float) -> int:
        """Seconds -> samples at the device's rate."""
        return int(round(seconds * self.sample_rate))

    def stimulate(self, pattern: StimPattern, trigger_sample: int | None = None) -> int:
        """Send a pattern through the safety gate; returns the device's ticket.

        ``trigger_sample`` is the sample of what caused the pattern (a spike, a
        scheduled trial); it defaults to now. Raises SafetyRefusal if the gate
        refuses it, in which case nothing was sent.
        """
        return self._engine.stimulate(pattern, trigger_sample)

    def use_trials(self, trials: Trials) -> Trials:
        """Let the engine run a trial design (one per run)."""
        self._engine.set_trials(trials)
        return trials

    def log(self, message: str) -> None:
        self._engine.event("log", message)

    def decision(self, choice: Any, candidates: Any = None, scores: Any = None,
                 **details: Any) -> None:
        """Record a model's stimulus choice: what it chose, among what, with which scores.

        Values must be JSON-friendly (numbers, strings, lists, numpy arrays);
        recorders keep them in the recording's decisions table.
        """
        self._engine.notify_decision({"choice": choice, "candidates": candidates,
                                      "scores": scores, **details})

    def finish(self) -> None:
        """End the run after this block."""
        self._engine.stop()


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


class _LoopCost:
    """Histogram of per-block processing time in microseconds (constant memory)."""

    def __init__(self) -> None:
        self.hist = np.zeros(100_001, np.int64)

    def add(self, seconds: float) -> None:
        self.hist[min(int(seconds * 1e6), 100_000)] += 1

    def quantiles(self) -> dict[str, float | None]:
        total = int(self.hist.sum())
        if not total:
            return {"p50": None, "p99": None, "max": None}
        cum = np.cumsum(self.hist)
        q = {k: float(np.searchsorted(cum, p * total)) for k, p in (("p50", 0.5), ("p99", 0.99))}
        q["max"] = float(np.flatnonzero(self.hist)[-1])
        return q


class Engine:
    """Runs one protocol on one device until it finishes, the duration ends, or stop()."""

    def __init__(
        self,
        driver: Driver,
        protocol: Protocol,
        config: EngineConfig | None = None,
        sinks: Iterable[Sink] = (),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.driver = driver
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
        #: Patterns sent and not yet reported by the device, by ticket.
        self.pending: dict[int, StimRecord] = {}
        #: The latest pattern records (executed, dropped, refused), oldest first.
        self.recent_stims: deque[StimRecord] = deque(maxlen=KEEP_RECENT)
        self.recent_events: deque[RunEvent] = deque(maxlen=KEEP_RECENT)
        self.counts = {"executed": 0, "dropped": 0, "refused": 0, "gaps": 0}
        #: trigger -> execution latency in samples -> number of patterns (constant memory)
        self.latency_counts: Counter[int] = Counter()
        self.error: str | None = None
        self.error_kind: str | None = None
        #: The exception that ended the run, if any.
        self.exception: BaseException | None = None
        self.interrupted = False
        self.n_blocks = 0
        self.n_spikes = 0
        self.samples_lost = 0
        self.watchdog_trips = 0
        #: The protocol is held by the operator (pause()); samples spent held so far.
        self.paused = False
        self.paused_samples = 0
        self._pause_wanted = False
        self._paused_at = 0
        self._expected: int | None = None
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._cost = _LoopCost()
        self._wall_start = 0.0
        self._wall_end = 0.0
        self._lag_anchor: tuple[float, float] | None = None  # (offset s, wall s)
        self._queued_events: deque[tuple[str, str]] = deque()
        self.ctx: Context | None = None

    # -- control, from any thread -------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end after the current block."""
        self._stop.set()

    def stop_stimulation(self, reason: str) -> None:
        """A person stops stimulation now (any thread): the gate refuses every pattern
        until rearm(), the device's queued pulses are cancelled, and a "disarm" event
        goes to the log and the recording. Raises DriverError if the abort failed (the
        gate is closed anyway)."""
        self.gate.disarm(reason)
        self._queued_events.append(("disarm", reason))
        self.driver.abort_stimulation()

    def pause(self) -> None:
        """Hold the protocol until resume(): its hooks are not called and no trial starts;
        acquisition, detection and recording go on, trials begun finish. The trials after
        the pause move later by its length, and a run's duration does not count it."""
        self._pause_wanted = True

    def resume(self) -> None:
        self._pause_wanted = False

    def rearm(self) -> None:
        """A person re-enables stimulation after the watchdog or an error stopped it."""
        self.gate.rearm()
        self._lag_anchor = None
        self._queued_events.append(("rearm", "stimulation re-armed"))

    def set_trials(self, trials: Trials) -> None:
        if self.trials is not None:
            raise RuntimeError("a run has one trial design; use_trials was called twice")
        trials.attach(self.info.sample_rate, self.t0, self.info.n_channels,
                      scheduled=self.info.capabilities.scheduled_stim,
                      block_samples=self.block_samples)
        self.trials = trials

    def event(self, kind: str, message: str) -> None:
        """Log an event and give it to the sinks (acquisition thread)."""
        ev = RunEvent(self.now, kind, message)
        self.recent_events.append(ev)
        self._log(f"[{kind}] {message}" if kind != "log" else message)
        self._notify("on_event", ev)

    def notify_decision(self, decision: dict[str, Any]) -> None:
        self._notify("on_decision", self.now, decision)

    def _notify(self, method: str, *args: Any) -> None:
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
            active = elapsed - self._held() / fs
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
        trigger = self.now if trigger_sample is None else int(trigger_sample)
        if pattern.at_sample is None:
            # book the pulse where the device will run it, not where the loop is
            earliest = self.driver.earliest_stim_sample()
            if earliest is not None:
                pattern = replace(pattern, at_sample=max(self.now, earliest))
        try:
            self._check_mode(pattern)
            self.gate.admit(pattern, self.now)
        except SafetyRefusal as refusal:
            record = StimRecord(None, pattern, trigger, self.now, status="refused",
                                reason=str(refusal))
            self.counts["refused"] += 1
            self.recent_stims.append(record)
            self.event("refusal", str(refusal))
            self._notify("on_stim", record)
            raise
        ticket = self.driver.stimulate(pattern)
        self.pending[ticket] = StimRecord(ticket, pattern, trigger, self.now)
        return ticket

    def _check_mode(self, pattern: StimPattern) -> None:
        modes = self.info.capabilities.stim_modes
        for channel, pulse in pattern.pulses:
            if pulse.mode not in modes:
                label = self.info.layout.labels[channel]
                raise SafetyRefusal(
                    "mode", label, pulse.mode, modes,
                    f"refused: {pulse.mode} stimulation on electrode {label}: "
                    f"{self.info.name} supports {', '.join(modes) or 'no stimulation'}",
                )

    def _on_report(self, report: StimReport) -> None:
        record = self.pending.pop(report.ticket, None)
        if record is None:
            return
        record.execution_sample = report.sample
        record.status = "executed" if report.executed else "dropped"
        record.reason = report.reason
        self.counts[record.status] += 1
        self.recent_stims.append(record)
        if report.executed:
            self.latency_counts[report.sample - record.trigger_sample] += 1
            # Blank the artifact in the raw stream. A spikes-only device sends no blocks, so
            # the detector would never reach (and drop) its windows: they would pile up.
            if self.info.capabilities.raw_stream or self._expected is not None:
                for offset in record.pattern.pulse_offsets(self.info.sample_rate):
                    self.detector.blank(report.sample + offset)
        else:
            self.event("stim_dropped", f"device dropped pattern {report.ticket}: {report.reason}")
        if self.trials is not None:
            self.trials.on_report(report)
        self._notify("on_stim", record)

    # -- the loop ------------------------------------------------------------------
    def run(self, progress: Callable[[float, str], None] | None = None,
            interval_s: float = 0.25) -> dict[str, Any]:
        """Run to the end on a worker thread; returns the summary. Ctrl-C stops cleanly."""
        self.driver.set_fast(self.config.fast)
        self.driver.start(self.block_samples)
        worker = threading.Thread(target=self._loop, name="mea-acquisition", daemon=True)
        self._wall_start = time.perf_counter()
        worker.start()
        try:
            while not self._finished.wait(interval_s):
                if progress is not None:
                    progress(*self.progress())
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop()
            while True:  # further Ctrl-C while the loop winds down changes nothing
                try:
                    self._finished.wait()
                    break
                except KeyboardInterrupt:
                    continue
        worker.join()
        if progress is not None:
            progress(*self.progress())
        try:  # patterns the device never reported on: sent, fate unknown
            for record in self.pending.values():
                self.recent_stims.append(record)
                self._notify("on_stim", record)
            summary = self.summary()
            with _ctrl_c_ignored():  # recorders finish their files whatever the user presses
                self._notify("on_stop", summary)
        except SinkError as exc:
            self._fail("sink", traceback.format_exc(), exc)
            summary = self.summary()
            summary["error"] = "sink"
        return summary

    def _loop(self) -> None:
        try:
            self._acquire()
        except DriverError as exc:
            self._fail("device", str(exc), exc)
        except SinkError as exc:
            self._fail("sink", traceback.format_exc(), exc)
        except Exception as exc:  # a driver bug must still end the run cleanly
            self._fail("device", traceback.format_exc(), exc)
        finally:
            self._wall_end = time.perf_counter()
            try:
                self.driver.stop()
            except Exception as exc:  # stopping a broken device must not hide the first error
                try:
                    self.event("device_error", f"stopping the device failed: {exc}")
                except SinkError:
                    pass
            finally:
                self._finished.set()

    def _fail(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        if self.error is None:
            self.error, self.error_kind, self.exception = message, kind, exc
        self.gate.disarm(f"{kind} error")
        try:
            self.driver.abort_stimulation()
        except Exception:
            pass
        try:
            self.event(f"{kind}_error", message.strip().splitlines()[-1])
        except SinkError:
            pass  # the first error is the one reported
        self._stop.set()

    def _call(self, hook: Callable[..., Any], *args: Any) -> Any:
        """Run a protocol hook; an exception stops stimulation and the run."""
        try:
            return hook(*args)
        except SafetyRefusal:
            return None  # counted and logged by stimulate(); the run goes on
        except (DriverError, SinkError):
            raise  # not the protocol's fault: the loop reports it as such
        except Exception as exc:
            self._fail("protocol", traceback.format_exc(), exc)
            return None

    def _acquire(self) -> None:
        first, early_spikes = self._wait_first_clock()
        if first is None:
            return
        if isinstance(first, Block):
            self.t0 = first.start_sample
        else:  # a Tick ends the first interval, of the block size asked for
            self.t0 = max(0, first.sample - self.block_samples)
        self.now = self.t0
        self._notify("on_start", self.info, self.protocol)
        self.ctx = Context(self)
        self.event("start", f"protocol {self.protocol.name} on {self.info.name}")
        for note in self.limit_notes:
            self.event("limits", note)
        try:
            self._call(self.protocol.setup, self.ctx)
            for spikes in early_spikes:
                self._on_spikes(spikes)
            self._stream(first)
        finally:
            self._call(self.protocol.teardown, self.ctx)
            for kind, message in self.driver.drain_events():
                self.event(kind, message)
            self.event("stop", "interrupted" if self.interrupted else "end of run")

    def _stream(self, first: Block | Tick) -> None:
        duration = (
            int(round(self.config.duration_s * self.info.sample_rate))
            if self.config.duration_s is not None else None
        )
        item: Event | None = first
        while item is not None:
            while self._queued_events:
                self.event(*self._queued_events.popleft())
            if self._pause_wanted != self.paused:
                self._hold(self._pause_wanted)
            for kind, message in self.driver.drain_events():
                self.event(kind, message)
            if isinstance(item, Block):
                tick = time.perf_counter()
                self._on_block(item)
                self._cost.add(time.perf_counter() - tick)
            elif isinstance(item, Tick):
                tick = time.perf_counter()
                self.n_blocks += 1
                self._on_clock(item.sample)
                self._cost.add(time.perf_counter() - tick)
            elif isinstance(item, StimReport):
                self._on_report(item)
            elif isinstance(item, SpikeEvents):
                self._on_spikes(item)
            if self.trials is not None and self.trials.done:
                break
            if duration is not None and self.now - self.t0 - self._held() >= duration:
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
            self.samples_lost += max(lost, 0)
            self.counts["gaps"] += 1
            # the detector restarts its filter at the gap by itself and keeps its noise estimate
            self.event("gap", f"{lost} samples missing before sample {block.start_sample}")
        self._expected = block.stop_sample
        self.n_blocks += 1
        filtered, spikes = self.detector.process(block)
        self.now = block.stop_sample
        if not self.paused:
            self._call(self.protocol.on_block, self.ctx, block, filtered)
        if self.error is None and len(spikes):
            self._on_spikes(spikes)
        self._notify("on_block", block, filtered, spikes)
        self._on_clock(block.stop_sample)

    def _on_clock(self, sample: int) -> None:
        """The device delivered everything before ``sample``: trials and the watchdog move on."""
        self.now = sample
        if self.trials is not None and self.error is None:
            for trial in self._call(self.trials.on_block, self.ctx, sample) or ():
                self._call(self.protocol.on_trial, self.ctx, trial)
                self._notify("on_trial", trial)
        if not self.config.fast:
            self._watchdog()

    def _on_spikes(self, spikes: SpikeEvents) -> None:
        self.n_spikes += len(spikes)
        if self.trials is not None:
            self.trials.on_spikes(spikes)
        if not self.paused:
            self._call(self.protocol.on_spikes, self.ctx, spikes)
        self._notify("on_spikes", spikes)

    def _hold(self, pause: bool) -> None:
        """Pause or resume the protocol now (acquisition thread)."""
        fs = self.info.sample_rate
        if pause:
            self.paused, self._paused_at = True, self.now
            self.event("pause", "protocol paused by the operator")
        else:
            held = self.now - self._paused_at
            self.paused_samples += held
            self.paused = False
            if self.trials is not None:
                self.trials.delay(held)
            self.event("resume", f"protocol resumed after {held / fs:.1f} s paused")
        if self.trials is not None:
            self.trials.held = self.paused

    def _held(self) -> int:
        """Samples spent paused, the pause in progress included."""
        return self.paused_samples + (self.now - self._paused_at if self.paused else 0)

    def _watchdog(self) -> None:
        """Disarm stimulation when the loop falls behind the device by more than watchdog_ms.

        Lag is the growth of (wall time - data time) above its running minimum,
        which is allowed to creep up by DRIFT_ALLOWANCE so that the drift
        between the device's and the computer's clocks, and the time setup
        took, are not taken for lag. The backlog after a stall is.
        """
        wall = time.perf_counter()
        offset = wall - (self.now - self.t0) / self.info.sample_rate
        last = self._lag_anchor  # one read: rearm() may reset it from another thread
        if last is None:
            self._lag_anchor = (offset, wall)
            return
        anchor, since = last
        anchor = min(offset, anchor + DRIFT_ALLOWANCE * (wall - since))
        self._lag_anchor = (anchor, wall)
        behind_ms = (offset - anchor) * 1000.0
        if behind_ms > self.config.watchdog_ms and self.gate.armed:
            self.watchdog_trips += 1
            self.gate.disarm(f"watchdog: the loop fell {behind_ms:.0f} ms behind")
            self.driver.abort_stimulation()
            self.event(
                "watchdog",
                f"loop fell {behind_ms:.0f} ms behind the device "
                f"(limit {self.config.watchdog_ms:g} ms); stimulation stopped until re-armed",
            )

    # -- results -------------------------------------------------------------------
    def latency_samples(self) -> np.ndarray:
        """Trigger -> execution, in samples, for every executed pattern."""
        return expand_counts(self.latency_counts)

    def summary(self) -> dict[str, Any]:
        fs = self.info.sample_rate
        lat = self.latency_samples()
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
            "blocks": self.n_blocks,
            "blocks_dropped": -(-self.samples_lost // self.block_samples),
            "samples_lost": self.samples_lost,
            "spikes": self.n_spikes,
            "stims_executed": self.counts["executed"],
            "stims_dropped": self.counts["dropped"],
            "stims_refused": self.counts["refused"],
            "stims_unreported": len(self.pending),
            "latency_samples": {
                "p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "p99": float(np.percentile(lat, 99)) if len(lat) else None,
                "max": int(lat.max()) if len(lat) else None,
            },
            "loop_cost_us": self._cost.quantiles(),
            "watchdog_trips": self.watchdog_trips,
            "gaps": self.counts["gaps"],
            "stimulation_armed": self.gate.armed,
            "trials": len(self.trials.finished) if self.trials is not None else 0,
            "limits": self.gate.limits.as_dict(),
            "interrupted": self.interrupted,
            "error": self.error_kind,
        }
        if self.trials is not None and self.trials.finished:
            out["evoked"] = self.trials.table().evoked_summary()
        try:
            out["protocol_summary"] = self.protocol.summary()
        except Exception as exc:
            out["protocol_summary"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
