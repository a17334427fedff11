"""STOP means stop, proven from the device's own record (issue 19, "the property").

In process (the default): random scenarios drive :class:`mea_control.engine.Engine` on
``sim://``. A protocol follows a drawn script (legal and illegal patterns, trains, bursts,
booked now or ahead; a hook that raises or hangs), an operator acts from another thread
(STOP, re-arm, pause, resume, end the run; some STOPs land between the gate's admission
and the driver's send), and the link may be lost mid-run. The ground truth is the
device's own record, :attr:`drivers.sim.SimDriver.pulse_listener`: every pulse as the
culture receives it. From it alone, :func:`check` finds

- pulses that broke a limit in force (recomputed here from the SafetyLimits values, not
  by the gate): amplitude, phase, charge, Shannon k, imbalance, overlap, burst and mean
  rate windows per electrode, electrodes that do not exist, cannot stimulate or are
  forbidden;
- pulses that ran after a STOP returned (unless sent after a later re-arm), after the
  abort that follows a protocol error, a link loss or any disarm (watchdog included),
  after a hang had lasted longer than the watchdog (plus a scheduling margin), or after
  ``Engine.run`` returned;
- rows of the host's record that claim pulses the device never ran.

Host events (a pattern handed to the device, an abort or a STOP returned, a re-arm begun)
carry a sequence number and the length of the device's log at that moment, so they are
placed in the log's order (the listener runs under the driver's lock).

Fast runs use ``sim://`` in lockstep. Real-time runs wrap it in a free-running device (a
thread keeps the device's clock going whatever the host does, as real hardware does), so
that a hung hook lets booked pulses run. After every run the device is driven on, in fast
mode, past the last booked pulse: what still runs then was left queued by the run.

Run: ``.venv/bin/python benchmarks/reliability.py [--actions 10000] [--seed 0]
[--real-time 0.05]`` prints actions tried, pulses checked, violations by rule and the
first counterexample in full; ``--shrink RULE`` lets hypothesis shrink a counterexample
of one rule (e.g. ``after_stop``) and prints it.

Over a pty (``--wire [--actions N]``): the same scenarios in real time, the Engine in
process on ``serial://`` against the simulated device served on a pty from a thread; the
device's own log (``pulse_log``) is the ground truth, each fault guarded by the device's
next abort, host_timeout or stop entry (an abort over serial:// returns once written), and
link loss shuts the served device down. Killing a recorded CLI run: benchmarks/kill.py.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import queue
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from drivers.sim import SimDriver  # noqa: E402
from hardware_sim.mea import DEVICE_LIMITS  # noqa: E402
from mea_control.driver import DriverError, open_driver  # noqa: E402
from mea_control.engine import Engine, EngineConfig  # noqa: E402
from mea_control.limits import SafetyLimits  # noqa: E402
from mea_control.protocol import Protocol  # noqa: E402
from mea_control.safety import SafetyRefusal  # noqa: E402
from mea_control.sinks import Sink  # noqa: E402
from mea_control.types import Block, StimPattern, StimPulse, Tick  # noqa: E402

BLOCK_MS = 1.0
#: How long a STOP drawn "inside the n-th send" may take before the send goes on (a fixed
#: engine makes the STOP wait for the send: then the send goes on after this).
AT_SEND_WAIT_S = 0.2
#: A watchdog running beside the loop trips within its time plus this (a busy machine).
WATCHDOG_MARGIN_MS = 300.0
_EPS = 1e-9
#: A run held by a pause is ended at this many times its duration (in device time).
RUN_LIMIT = 4


# ------------------------------------------------------------------------------ scenarios
@dataclass(frozen=True)
class Shot:
    """A pattern a hook sends: one pulse shape on electrodes, maybe a train, now or ahead.

    ``imbalance`` shrinks the second phase (0: balanced). ``ahead_ms`` None sends it
    "as soon as possible"; a negative value books it in the past. ``repeat`` sends it that
    many times, each ``spacing_ms`` after the last (a rate-limit burst).
    """

    channels: tuple[int, ...]
    amplitude: float
    phase_us: float
    mode: str = "current"
    imbalance: float = 0.0
    train_count: int = 1
    train_rate_hz: float = 0.0
    ahead_ms: float | None = None
    repeat: int = 1
    spacing_ms: float = 0.0

    def pulse(self) -> StimPulse:
        a, d = self.amplitude, self.phase_us
        second = (d, a * (1.0 - self.imbalance))
        return StimPulse(self.mode, ((d, -a), second) if second[1] else ((d, -a),))

    def patterns(self, now: int, fs: float) -> list[StimPattern]:
        pulse = self.pulse()
        out = []
        for i in range(self.repeat):
            at = None
            if self.ahead_ms is not None:
                at = now + int(round((self.ahead_ms + i * self.spacing_ms) * fs / 1000))
            out.append(StimPattern(tuple((ch, pulse) for ch in self.channels),
                                   self.train_count, self.train_rate_hz, at_sample=at))
        return out


@dataclass(frozen=True)
class Step:
    """What the protocol does in its ``block``-th block (0: the first): send a shot, raise
    an exception, or hang (sleep) for ``hang_s``."""

    block: int
    kind: str  # "stim", "raise", "hang"
    shot: Shot | None = None
    hang_s: float = 0.0


@dataclass(frozen=True)
class Act:
    """An operator's action: once the engine reaches ``block`` (from another thread, racing
    the loop; or ``sync``: from a sink on the loop's thread, deterministic), or inside the
    loop's ``send``-th call of driver.stimulate (after the gate admitted the pattern,
    before the device has it)."""

    kind: str  # "stop_stimulation", "rearm", "pause", "resume", "stop"
    block: int | None = None
    send: int | None = None
    sync: bool = False


@dataclass(frozen=True)
class Scenario:
    steps: tuple[Step, ...] = ()
    acts: tuple[Act, ...] = ()
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    #: The host's reads fail (DriverError, the link is lost) from this block on.
    link_loss_block: int | None = None
    #: A pattern the protocol's teardown sends.
    teardown: Shot | None = None
    blocks: int = 300
    real_time: bool = False
    watchdog_ms: float = 100.0
    layout: str = "grid8x8_200um"
    seed: int = 1

    @property
    def n_actions(self) -> int:
        return (len(self.steps) + len(self.acts) + (self.link_loss_block is not None)
                + (self.teardown is not None))


@dataclass(frozen=True)
class Violation:
    rule: str
    index: int  # in the device's log
    sample: int
    ticket: int
    channel: int
    detail: str

    def __str__(self) -> str:
        return (f"{self.rule}: pulse #{self.index} (sample {self.sample}, pattern "
                f"{self.ticket}, channel {self.channel}): {self.detail}")


# ------------------------------------------------------------------------- the bench
@dataclass
class Fault:
    """A moment after which no pulse sent before it may run, once ``guard`` pulses are in
    the log (an abort returned); a pattern sent after it may run only after a re-arm."""

    kind: str
    seq: int
    at: int  # log length at the fault
    guard: int | None = None  # log length once it must hold; None: the next abort's


class Bench:
    """The host-side record, against the device's log: sequence numbers and log lengths."""

    def __init__(self) -> None:
        self._seq = itertools.count()
        self.log: list[tuple[int, int, int, StimPulse]] = []
        #: ticket -> (seq just before the device got it, seq after, the pattern)
        self.sent: dict[int, tuple[int, int, StimPattern]] = {}
        self.aborts: list[tuple[int, int]] = []  # (seq, log length) as each abort returned
        self.rearms: list[int] = []  # seq as each re-arm began
        self.faults: list[Fault] = []
        #: (seq at start, log length, wall time at start, seq at end, hang seconds)
        self.hangs: list[tuple[int, int, float, int, float]] = []
        self.end: tuple[int, int] | None = None  # (seq, log length) once Engine.run returned
        self.hanging = threading.Event()

    def next(self) -> int:
        return next(self._seq)

    def on_pulses(self, pulses: list[tuple[int, int, int, StimPulse]]) -> None:
        self.log.extend(pulses)  # called under the driver's lock, in the device's order

    def fault(self, kind: str, guard_now: bool = False) -> None:
        n = len(self.log)
        self.faults.append(Fault(kind, self.next(), n, n if guard_now else None))

    def hang(self, seconds: float) -> None:
        self.hanging.set()
        start, n, wall = self.next(), len(self.log), time.monotonic()
        time.sleep(seconds)
        self.hangs.append((start, n, wall, self.next(), seconds))
        self.hanging.clear()


class Device:
    """``sim://`` as the engine's driver, with the bench's record and injected faults.

    ``stop()`` ends streaming to the host; the device's clock and queue go on (as on
    hardware), so what a run leaves queued runs when :meth:`drain` drives it on. With
    ``free_running`` a thread keeps the device's clock going by the wall clock whatever
    the host does. From ``link_loss_block`` on, read() and stimulate() raise DriverError;
    abort still reaches the device (in process there is no link to lose).
    """

    def __init__(self, sim: SimDriver, bench: Bench, link_loss_block: int | None = None,
                 free_running: bool = False) -> None:
        self.sim = sim
        self.bench = bench
        self.url = sim.url
        self.info = sim.info
        self.free_running = free_running
        self.operator: Operator | None = None
        self.wall_t0 = 0.0
        self.lost = False
        self._loss_sample = None
        if link_loss_block is not None:
            self._loss_sample = link_loss_block * round(BLOCK_MS * self.info.sample_rate / 1000)
        self._sends = 0
        self._streaming = False
        self._inbox: queue.Queue = queue.Queue()
        self._pump: threading.Thread | None = None
        self._pumping = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sim, name)

    # -- lifecycle -------------------------------------------------------------------
    def start(self, block_samples: int | None = None) -> None:
        self.sim.start(block_samples)
        self.wall_t0 = time.monotonic()
        self._streaming = True
        if self.free_running:
            self._pumping.set()
            self._pump = threading.Thread(target=self._run_clock, daemon=True)
            self._pump.start()

    def stop(self) -> None:
        self._streaming = False

    def set_fast(self, fast: bool) -> None:
        self.sim.set_fast(fast)

    def _run_clock(self) -> None:
        while self._pumping.is_set():
            item = self.sim.read(timeout=0.05)
            if item is not None and self._streaming:
                self._inbox.put(item)

    def drain(self) -> None:
        """Stop the free-running clock, then drive the device on, fast, past every pulse
        that was booked: whatever the run left queued runs now and is logged."""
        self._pumping.clear()
        if self._pump is not None:
            self._pump.join()
        fs = self.info.sample_rate
        horizon = 0
        for _, _, pattern in self.bench.sent.values():
            start = pattern.at_sample if pattern.at_sample is not None else self.sim.next_sample
            horizon = max(horizon, start + pattern.pulse_offsets(fs)[-1])
        self.sim.set_fast(True)
        while self.sim.next_sample <= horizon + 2 * self.sim.block_samples:
            self.sim.read()

    # -- streaming -------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Any:
        if self.lost:
            raise DriverError("link lost (injected)")
        if self.free_running:
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return None
        else:
            item = self.sim.read(timeout)
        clock = item.start_sample if isinstance(item, Block) else (
            item.sample if isinstance(item, Tick) else None)
        if self._loss_sample is not None and clock is not None and clock >= self._loss_sample:
            self.lost = True
            self.bench.fault("link_loss")
            raise DriverError("link lost (injected)")
        return item

    # -- stimulation -----------------------------------------------------------------
    def stimulate(self, pattern: StimPattern) -> int:
        self._sends += 1
        if self.operator is not None:
            self.operator.inside_send(self._sends)
        if self.lost:
            raise DriverError("link lost (injected): cannot send the pattern")
        before = self.bench.next()
        ticket = self.sim.stimulate(pattern)
        self.bench.sent[ticket] = (before, self.bench.next(), pattern)
        return ticket

    def abort_stimulation(self) -> None:
        try:
            self.sim.abort_stimulation()
        finally:
            self.bench.aborts.append((self.bench.next(), len(self.bench.log)))


class Operator(threading.Thread):
    """Performs a scenario's operator actions on the engine, from its own thread; the
    ``sync`` ones through :meth:`pacer`, on the loop's thread."""

    def __init__(self, engine: Engine, bench: Bench, acts: tuple[Act, ...],
                 block_samples: int, at_send_wait_s: float) -> None:
        super().__init__(name="operator", daemon=True)
        self.engine, self.bench = engine, bench
        self.block_samples = block_samples
        self.at_send_wait_s = at_send_wait_s
        self.over = threading.Event()  # set once Engine.run returned
        self.acts = [(a, threading.Event()) for a in acts if not a.sync]
        self.sync = [a for a in acts if a.sync]
        self._sends = {a.send: (reached, threading.Event()) for a, reached in self.acts
                       if a.send is not None}
        self.performed = 0
        self.pause_wanted = False
        #: Exceptions the engine's control methods raised (a STOP must not raise but
        #: DriverError), as (action, exception text).
        self.errors: list[tuple[str, str]] = []

    def pacer(self) -> Sink:
        """The sink that wakes this thread when a block is reached and does sync actions."""
        return Pacer(self, [(a.block * self.block_samples, reached) for a, reached in self.acts
                            if a.block is not None])

    def inside_send(self, n: int) -> None:
        """Called by the device in the loop's n-th send: let the operator act now."""
        if n in self._sends:
            reached, done = self._sends[n]
            reached.set()
            done.wait(self.at_send_wait_s)

    def run(self) -> None:
        for act, reached in self.acts:
            while not reached.wait(0.05):
                if self.over.is_set():
                    return
            self.perform(act.kind)
            if act.send is not None:
                self._sends[act.send][1].set()
        if self.pause_wanted:  # a pause drawn last: let the run end
            self.perform("resume")

    def perform(self, kind: str) -> None:
        """One action, recorded in the bench's order. A control method that raises anything
        but DriverError is a defect: recorded in ``errors``, and the run goes on."""
        self.performed += 1
        engine, bench = self.engine, self.bench
        if kind == "rearm":
            while bench.hanging.is_set():  # a re-arm during a hang would excuse the hang
                time.sleep(0.001)
            bench.rearms.append(bench.next())
        elif kind in ("pause", "resume"):
            self.pause_wanted = kind == "pause"
        try:
            if kind == "stop_stimulation":
                engine.stop_stimulation("operator STOP")
            else:
                getattr(engine, kind)()
        except DriverError:
            pass
        except Exception as exc:
            self.errors.append((kind, f"{type(exc).__name__}: {exc}"))
        if kind == "stop_stimulation":  # returned, if with an error: nothing may run now
            bench.fault("stop", guard_now=True)


class Pacer(Sink):
    """On the loop's thread: wakes the operator when a block is reached, does sync actions."""

    def __init__(self, operator: Operator, alarms: list[tuple[int, threading.Event]]) -> None:
        self.operator = operator
        self.alarms = sorted(alarms, key=lambda alarm: alarm[0])
        self.due = sorted((a.block * operator.block_samples, i, a.kind)
                          for i, a in enumerate(operator.sync))

    def on_block(self, block, filtered) -> None:
        engine = self.operator.engine
        elapsed = block.stop_sample - engine.t0
        if elapsed >= RUN_LIMIT * engine.config.duration_s * engine.info.sample_rate:
            engine.resume()  # held by a pause whose resume waits for a send that never comes
            engine.stop()
        while self.alarms and elapsed >= self.alarms[0][0]:
            self.alarms.pop(0)[1].set()
        while self.due and elapsed >= self.due[0][0]:
            self.operator.perform(self.due.pop(0)[2])


class Scripted(Protocol):
    """A protocol whose hooks follow a scenario's steps."""

    name = "scripted"

    def __init__(self, scenario: Scenario, bench: Bench) -> None:
        super().__init__()
        self.scenario, self.bench = scenario, bench
        self.by_block: dict[int, list[Step]] = defaultdict(list)
        for step in scenario.steps:
            self.by_block[step.block].append(step)

    def on_block(self, ctx, block, filtered) -> None:
        index = (ctx.now - ctx.start_sample) // block.n_samples - 1
        for step in self.by_block.get(index, ()):
            if step.kind == "raise":
                self.bench.fault("protocol_error")
                raise RuntimeError(f"scripted protocol error in block {index}")
            if step.kind == "hang":
                self.bench.hang(step.hang_s)
            else:
                self.send(ctx, step.shot)

    def teardown(self, ctx) -> None:
        if self.scenario.teardown is not None:
            self.send(ctx, self.scenario.teardown)

    @staticmethod
    def send(ctx, shot: Shot) -> None:
        for pattern in shot.patterns(ctx.now, ctx.sample_rate):
            try:
                ctx.stimulate(pattern)
            except SafetyRefusal:
                pass


# ------------------------------------------------------------------------------ a run
@dataclass
class Outcome:
    scenario: Scenario
    violations: list[Violation]
    pulses: int
    actions: int
    summary: dict[str, Any]

    def report(self, limit: int = 10) -> str:
        lines = [f"scenario: {self.scenario!r}", f"summary: error={self.summary.get('error')} "
                 f"executed={self.summary.get('stims_executed')} refused="
                 f"{self.summary.get('stims_refused')} watchdog_trips="
                 f"{self.summary.get('watchdog_trips')}; {self.pulses} pulses in the log"]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... {len(self.violations) - limit} more")
        return "\n".join(lines)


#: The short form in CI: reproducible, database-free, no shrinking (use --shrink here).
SHORT = settings(deadline=None, derandomize=True, database=None, max_examples=25,
                 phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                 suppress_health_check=list(HealthCheck))


def _drive(scenario: Scenario, bench: Bench, device: Any,
           at_send_wait_s: float) -> tuple[Engine, Operator, dict]:
    """Run the scenario's protocol on ``device`` with its operator beside the loop."""
    config = EngineConfig(block_ms=BLOCK_MS, fast=not scenario.real_time,
                          duration_s=scenario.blocks * BLOCK_MS / 1000,
                          watchdog_ms=scenario.watchdog_ms, limits=scenario.limits)
    engine = Engine(device, Scripted(scenario, bench), config)
    operator = Operator(engine, bench, scenario.acts, engine.block_samples, at_send_wait_s)
    engine.sinks.append(operator.pacer())
    device.operator = operator
    _record_disarms(engine, bench)
    operator.start()
    try:
        summary = engine.run()
        bench.end = (bench.next(), len(bench.log))
    finally:
        operator.over.set()
        operator.join()
    return engine, operator, summary


def run_scenario(scenario: Scenario, at_send_wait_s: float = AT_SEND_WAIT_S) -> Outcome:
    """Run one scenario on sim:// and check the device's log."""
    bench = Bench()
    sim = open_driver(f"sim://?seed={scenario.seed}&truth=0&culture=poisson_burst"
                      f"&layout={scenario.layout}")
    sim.open()
    sim.pulse_listener = bench.on_pulses
    device = Device(sim, bench, scenario.link_loss_block, free_running=scenario.real_time)
    engine, operator, summary = _drive(scenario, bench, device, at_send_wait_s)
    device.drain()
    sim.close()
    violations = check(scenario, bench, engine, device)
    violations += [Violation(f"{kind}_raised", -1, -1, -1, -1, text)
                   for kind, text in operator.errors]
    return Outcome(scenario, violations, len(bench.log), scenario.n_actions, summary)


def _record_disarms(engine: Engine, bench: Bench) -> None:
    """Every disarm of the gate (a STOP, the watchdog, an error) becomes a fault."""
    disarm = engine.gate.disarm

    def recorded(reason: str) -> None:
        disarm(reason)
        bench.fault("disarm: " + reason.split(":")[0])

    engine.gate.disarm = recorded


# ---------------------------------------------------------------------------- checks
def limits_in_force(limits: SafetyLimits) -> SafetyLimits:
    """The rig's limits with the device's where stricter (worked out here, not by the gate)."""
    stricter = {k: min(getattr(limits, k), v) for k, v in DEVICE_LIMITS.items()}
    return SafetyLimits(**{**limits.as_dict(), "forbidden": limits.forbidden, **stricter})


def check(scenario: Scenario, bench: Bench, engine: Engine, device: Device) -> list[Violation]:
    info = device.info
    return (limit_violations(bench.log, limits_in_force(scenario.limits), info.layout,
                             info.sample_rate)
            + late_violations(bench, scenario, device)
            + record_violations(bench, engine))


def limit_violations(log, limits: SafetyLimits, layout, fs: float) -> list[Violation]:
    """Pulses of the log that broke a limit, each pulse on its own and per electrode."""
    out: list[Violation] = []
    by_channel: dict[int, list[tuple[int, int, int, float]]] = defaultdict(list)
    for i, (sample, ticket, channel, pulse) in enumerate(log):
        for rule, detail in pulse_problems(channel, pulse, limits, layout):
            out.append(Violation("limit:" + rule, i, sample, ticket, channel, detail))
        by_channel[channel].append((sample, i, ticket, pulse.duration_us))
    bursts = (("burst_rate_hz", limits.burst_window_ms * 1e-3 * fs, limits.burst_max_pulses),
              ("mean_rate_hz", limits.mean_window_s * fs, limits.mean_max_pulses))
    for channel, pulses in by_channel.items():
        pulses.sort()
        for k, (sample, i, ticket, _) in enumerate(pulses[1:], 1):
            prev, _, _, prev_us = pulses[k - 1]
            length = max(1, math.ceil(prev_us * 1e-6 * fs - _EPS))
            if sample < prev + length:
                out.append(Violation("limit:overlap", i, sample, ticket, channel,
                                     f"starts before the pulse at sample {prev} ends"))
        for rule, span, most in bursts:
            for k in range(len(pulses) - most):
                first, last = pulses[k], pulses[k + most]
                if last[0] - first[0] < span - _EPS:
                    out.append(Violation(f"limit:{rule}", last[1], last[0], last[2], channel,
                                         f"{most + 1} pulses within {span:g} samples "
                                         f"(from sample {first[0]}); at most {most} allowed"))
    return out


def pulse_problems(channel: int, pulse: StimPulse, lim: SafetyLimits, layout):
    """(limit, detail) for each limit one pulse breaks on one electrode."""
    if not 0 <= channel < layout.n_electrodes:
        return [("electrode", f"channel {channel} is not in layout {layout.name}")]
    found = []
    label = layout.labels[channel]
    if not layout.can_stimulate[channel] or channel in layout.ground + layout.reference:
        found.append(("electrode", f"electrode {label} cannot stimulate"))
    if label in lim.forbidden:
        found.append(("forbidden", f"electrode {label} is forbidden"))
    peak = max(abs(a) for _, a in pulse.phases)
    allowed = lim.max_current_uA if pulse.mode == "current" else lim.max_voltage_mV
    if peak > allowed * (1 + _EPS):
        found.append((f"max_{pulse.mode}", f"{peak:g} {pulse.unit} > {allowed:g}"))
    for duration, amplitude in pulse.phases:
        if amplitude and not lim.min_phase_us * (1 - _EPS) <= duration <= lim.max_phase_us * (
                1 + _EPS):
            found.append(("phase_us", f"phase of {duration:g} us outside "
                                      f"{lim.min_phase_us:g}..{lim.max_phase_us:g}"))
    charges = [a * d * (1e-3 if pulse.mode == "current" else 1.0) for d, a in pulse.phases if a]
    if pulse.mode == "current":
        q = max(abs(c) for c in charges)
        if q > lim.max_charge_nC * (1 + _EPS):
            found.append(("max_charge_nC", f"{q:g} nC per phase > {lim.max_charge_nC:g}"))
        area = math.pi * (layout.diameters_um[channel] / 2 * 1e-4) ** 2
        k = math.log10(q * 1e-3) + math.log10(q * 1e-3 / area)
        if k > lim.max_shannon_k + _EPS:
            found.append(("max_shannon_k", f"k = {k:.2f} > {lim.max_shannon_k:g}"))
    total = sum(abs(c) for c in charges)
    imbalance = abs(sum(charges)) / (total / 2)
    if imbalance > lim.max_imbalance + _EPS:
        found.append(("max_imbalance", f"imbalance {imbalance:.3f} > {lim.max_imbalance:g}"))
    return found


def late_violations(bench: Bench, scenario: Scenario, device: Device) -> list[Violation]:
    """Pulses that ran when nothing may run: after a fault's abort, a hang past the
    watchdog, or the end of the run."""
    out: list[Violation] = []
    log = bench.log
    end_seq, end_n = bench.end if bench.end is not None else (math.inf, len(log))

    def sent_at(ticket: int) -> float:
        return bench.sent[ticket][0] if ticket in bench.sent else -math.inf

    def rearmed_for(ticket: int, since: int) -> bool:
        """Sent after ``since`` and after a re-arm that began after it."""
        sent = sent_at(ticket)
        return sent > since and any(since < r < sent for r in bench.rearms)

    for fault in bench.faults:
        guard = fault.guard
        if guard is None:  # the abort that must follow the fault
            guard = next((n for seq, n in bench.aborts if seq > fault.seq), end_n)
        for i in range(guard, len(log)):
            sample, ticket, channel, _ = log[i]
            if not rearmed_for(ticket, fault.seq):
                sent = "after" if sent_at(ticket) > fault.seq else "before"
                out.append(Violation("after_" + fault.kind.split(":")[0], i, sample, ticket,
                                     channel, f"ran after {fault.kind} (pattern sent {sent} "
                                              f"it, no re-arm between)"))
    fs = device.info.sample_rate
    for start, n, wall, _end, seconds in bench.hangs:
        if not scenario.real_time or seconds * 1000 <= scenario.watchdog_ms + WATCHDOG_MARGIN_MS:
            continue
        deadline = (wall - device.wall_t0 + (scenario.watchdog_ms + WATCHDOG_MARGIN_MS) / 1000)
        limit_sample = int(deadline * fs)
        for i in range(n, len(log)):
            sample, ticket, channel, _ = log[i]
            if sample >= limit_sample and not rearmed_for(ticket, start):
                out.append(Violation("after_hang", i, sample, ticket, channel,
                                     f"ran {(sample / fs - (wall - device.wall_t0)) * 1000:.0f}"
                                     f" ms into a {seconds:g} s hang (watchdog "
                                     f"{scenario.watchdog_ms:g} ms)"))
    for i in range(end_n, len(log)):
        sample, ticket, channel, _ = log[i]
        out.append(Violation("after_run_end", i, sample, ticket, channel,
                             "ran after Engine.run returned"))
    return out


def record_violations(bench: Bench, engine: Engine) -> list[Violation]:
    """Rows of the host's record that claim pulses the device never ran (or miss some)."""
    end_n = bench.end[1] if bench.end is not None else len(bench.log)
    ran: Counter[int] = Counter(t for _, t, _, _ in bench.log[:end_n])
    first: dict[int, tuple[int, int, int]] = {}
    for i, (sample, ticket, channel, _) in enumerate(bench.log):
        first.setdefault(ticket, (i, sample, channel))
    out = []
    for record in engine.patterns.recent:
        if record.ticket is None or record.status not in ("executed", "dropped"):
            continue
        n_channels = len(record.pattern.channels)
        pulses_run = getattr(record, "pulses_run", None)
        claimed = 0 if record.status == "dropped" else n_channels * (
            record.pattern.train_count if pulses_run is None else pulses_run)
        got = ran[record.ticket]
        if claimed != got:
            i, sample, channel = first.get(record.ticket, (-1, -1, -1))
            rule = "record:claims_unrun" if claimed > got else "record:misses_run"
            out.append(Violation(rule, i, sample, record.ticket, channel,
                                 f"the host lists {claimed} pulses {record.status}, the "
                                 f"device ran {got} before the run ended"))
    return out


# ---------------------------------------------------------------------------- strategies
#: Within every limit LIMITS may draw (5 uA x 200 us = 1 nC, k < 0 on 30 um electrodes).
LEGAL = dict(channels=[(0,), (9,), (27,), (63,), (9, 27)], amplitude=[1.0, 3.0, 5.0],
             phase_us=[20.0, 60.0, 200.0], mode=["current"], imbalance=[0.0],
             train=[(1, 0.0)] * 3 + [(2, 100.0), (5, 20.0)])
#: Beyond some limit, device or layout: 64 and -1 are no electrode, 1 is "12" and 14 is
#: "27" (forbidden in some LIMITS), channel 3 is mcs60mea200's reference electrode; the
#: trains break the burst or mean rate windows (or not, with the pulses already sent).
ILLEGAL = dict(channels=[(64,), (-1,), (1,), (14,), (3,), (9, 64)],
               amplitude=[9.99, 10.0, 10.5, 20.0, 49.0, 60.0], phase_us=[10.0, 500.0, 501.0, 900.0],
               mode=["voltage"], imbalance=[0.005, 0.05, 1.0],
               train=[(11, 1000.0), (11, 250.0), (40, 100.0), (40, 20.0), (300, 1000.0),
                      (300, 250.0)])
VOLTAGES = [100.0, 899.0, 900.0, 950.0, 1600.0]


@st.composite
def shots(draw) -> Shot:
    """A legal pattern, or one with one or two of its values beyond a limit."""
    illegal = set(draw(st.lists(st.sampled_from(sorted(LEGAL)), max_size=2)))
    values = {k: draw(st.sampled_from((ILLEGAL if k in illegal else LEGAL)[k])) for k in LEGAL}
    if values["mode"] == "voltage":
        values["amplitude"] = draw(st.sampled_from(VOLTAGES))
    count, rate = values.pop("train")
    return Shot(**values, train_count=count, train_rate_hz=rate,
                ahead_ms=draw(st.one_of(st.none(), st.sampled_from([-5.0, 0.0, 1.0, 5.0, 40.0,
                                                                    200.0, 800.0]))),
                repeat=draw(st.sampled_from([1, 1, 1, 3, 12])),
                spacing_ms=draw(st.sampled_from([0.0, 2.0, 4.5, 20.0])))


LIMITS = st.builds(
    SafetyLimits,
    max_current_uA=st.sampled_from([5.0, 10.0, 20.0]),
    max_charge_nC=st.sampled_from([1.0, 4.0]),
    max_shannon_k=st.sampled_from([1.85, 0.0]),
    burst_rate_hz=st.sampled_from([100.0, 200.0]),
    mean_rate_hz=st.sampled_from([10.0, 40.0]),
    mean_window_s=st.sampled_from([1.0, 10.0]),
    forbidden=st.sampled_from([(), ("12",), ("12", "27")]),
)


@st.composite
def scenarios(draw, real_time: bool = False) -> Scenario:
    """Random protocol behaviour, operator actions and faults; real time adds hangs."""
    blocks = 1200 if real_time else 300
    block = st.integers(0, blocks - 1)
    kinds = ["stim"] * 12 + ["raise"] + (["hang"] * 3 if real_time else [])
    steps = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(kinds))
        steps.append(Step(draw(block), kind,
                          shot=draw(shots()) if kind == "stim" else None,
                          hang_s=draw(st.sampled_from([0.05, 0.8])) if kind == "hang" else 0.0))
    acts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["stop_stimulation"] * 3 + ["rearm"] * 2
                                    + ["pause", "resume", "stop"]))
        if draw(st.booleans()):
            acts.append(Act(kind, send=draw(st.integers(1, 4))))
        else:
            acts.append(Act(kind, block=draw(block), sync=draw(st.booleans())))
        if kind == "pause":
            acts.append(Act("resume", block=draw(block)))
    return Scenario(
        steps=tuple(sorted(steps, key=lambda s: s.block)),
        acts=tuple(acts),
        limits=draw(LIMITS),
        link_loss_block=draw(block) if draw(st.integers(0, 3)) == 0 else None,
        teardown=draw(st.one_of(st.none(), shots())),
        blocks=blocks,
        real_time=real_time,
        layout=draw(st.sampled_from(["grid8x8_200um"] * 3 + ["mcs60mea200"])),
        seed=draw(st.integers(0, 3)),
    )


# ------------------------------------------------------------------------- long form
#: Scenarios per hypothesis run of the long form (each run has its own seed).
CHUNK = 50


def long_form(actions: int, seed: int, real_time_share: float, run=None) -> int:
    """Random scenarios until ``actions`` actions were tried; prints the figures. ``run``:
    how a scenario is run (default: in process, :func:`run_scenario`)."""
    run = run or run_scenario
    tally = Counter()
    rules: Counter[str] = Counter()
    first: list[Outcome] = []
    started = time.perf_counter()
    per_mille = int(round(real_time_share * 1000))

    @settings(max_examples=CHUNK, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def explore(data) -> None:
        real_time = data.draw(st.integers(0, 999)) < per_mille
        outcome = run(data.draw(scenarios(real_time=real_time)))
        tally.update(runs=1, actions=outcome.actions, pulses=outcome.pulses,
                     **{f"window:{k}": n for k, n in getattr(outcome, "stop_to_abort", {}).items()},
                     unseen=getattr(outcome, "unseen_at_link_loss", 0),
                     violations=len(outcome.violations), real_time_runs=int(real_time),
                     failing_runs=int(bool(outcome.violations)))
        rules.update(v.rule for v in outcome.violations)
        if outcome.violations and not first:
            first.append(outcome)
        if tally["runs"] % 50 == 0:
            print(f"  {tally['runs']} runs, {tally['actions']} actions, "
                  f"{tally['violations']} violations", flush=True)

    for chunk in itertools.count():
        if tally["actions"] >= actions:
            break
        hypothesis_seed(seed * 100_003 + chunk)(explore)()
    print(f"runs: {tally['runs']} ({tally['real_time_runs']} in real time) in "
          f"{time.perf_counter() - started:.0f} s")
    print(f"actions tried: {tally['actions']}")
    print(f"pulses checked: {tally['pulses']}")
    if run is not run_scenario:
        window = {k.split(":", 1)[1]: n for k, n in tally.items() if k.startswith("window:")}
        print(f"pulses between a host's STOP/fault and the device's abort (allowed over the "
              f"wire), by fault: {window or 0}")
        print(f"patterns whose last pulses the host never saw (the link went first): "
              f"{tally['unseen']}")
    print(f"violations: {tally['violations']} in {tally['failing_runs']} runs")
    for rule, n in rules.most_common():
        print(f"  {rule}: {n}")
    if first:
        print("first counterexample:")
        print(first[0].report(limit=20))
    return 1 if tally["violations"] else 0


def shrink(rule: str, seed: int, real_time: bool, max_examples: int) -> None:
    """Let hypothesis find and shrink a scenario that breaks ``rule``; print it."""

    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(scenarios(real_time=real_time))
    def breaks(scenario: Scenario) -> None:
        outcome = run_scenario(scenario)
        hits = [v for v in outcome.violations if v.rule.startswith(rule)]
        assert not hits, outcome.report()

    try:
        hypothesis_seed(seed)(breaks)()
        print(f"no violation of {rule} in {max_examples} examples")
    except AssertionError as exc:
        print(f"shortest counterexample found for {rule}:\n{exc}")


# --------------------------------------------------------------------------- over a pty
#: The device's log entries after which nothing booked before them runs.
DEVICE_ENDS = ("abort", "host_timeout", "stop", "host_gone")


class WireBench(Bench):
    """The bench fed by the served device's own log (its ``pulse_log``, called on the
    device's thread as each pulse is generated). Over serial:// an abort returns once the
    Abort frame is written, not when the device has carried it out: so each fault's guard
    is the device's next entry that ends stimulation (abort, host_timeout, stop, host_gone)
    logged after the fault, and the pulses between the host's moment and that entry are
    counted apart (``stop_to_abort``: what the wire lets run after STOP returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[tuple[int, str, int]] = []  # (log length, kind, sample)
        self.ends_seen: list[int] = []  # how many end entries were logged at each fault
        self.start_wall: float | None = None

    def fault(self, kind: str, guard_now: bool = False) -> None:
        seen = len(self.ends)
        if kind == "stop" and self.faults and self.faults[-1].kind.startswith("disarm"):
            seen = self.ends_seen[-1]  # a STOP's own abort may be logged before it returns
        self.ends_seen.append(seen)
        super().fault(kind, guard_now)

    def on_entry(self, entry: dict[str, Any]) -> None:
        kind = entry["kind"]
        if kind == "pulse":
            half = entry["duration_us"] / 2  # the log holds peak and total duration
            pulse = StimPulse.biphasic(entry["amplitude"], half, mode=entry["mode"])
            self.log.append((entry["sample"], entry["ticket"], entry["channel"], pulse))
        elif kind in DEVICE_ENDS:
            self.ends.append((len(self.log), kind, entry["sample"]))
        elif kind == "start":
            self.start_wall = entry["wall"] - time.time() + time.monotonic()

    def resolve_guards(self) -> Counter:
        """Place each fault's guard at the device's next end entry; the pulses that ran
        between the host's moment and it (allowed over the wire), by kind of fault."""
        window: Counter[str] = Counter()
        for fault, seen in zip(self.faults, self.ends_seen, strict=True):
            # the first end entry logged after the fault (by order, not by log length: an
            # earlier one may have been logged at the same length)
            later = self.ends[seen:]
            device_end = later[0][0] if later else len(self.log)
            window[fault.kind.split(":")[0]] += max(0, device_end - fault.at)
            fault.guard = device_end
        return window


class WireDevice:
    """The serial:// driver as the engine's driver, with the bench's record, the operator's
    actions inside a send, and link loss: from ``link_loss_block`` on, the served device
    is shut down (its thread ends, the pty closes), as a device that dies or is unplugged."""

    def __init__(self, driver: Any, bench: WireBench, server: Any,
                 link_loss_block: int | None) -> None:
        self.driver, self.bench, self.server = driver, bench, server
        self.url, self.info = driver.url, driver.info
        self.operator: Operator | None = None
        self._sends = 0
        self._loss_sample = None
        if link_loss_block is not None:
            self._loss_sample = link_loss_block * round(BLOCK_MS * self.info.sample_rate / 1000)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    @property
    def wall_t0(self) -> float:
        return self.bench.start_wall or 0.0

    def read(self, timeout: float | None = None) -> Any:
        item = self.driver.read(timeout)
        clock = item.start_sample if isinstance(item, Block) else (
            item.sample if isinstance(item, Tick) else None)
        if self._loss_sample is not None and clock is not None and clock >= self._loss_sample:
            self._loss_sample = None
            self.bench.fault("link_loss")
            self.server.kill()
        return item

    def stimulate(self, pattern: StimPattern) -> int:
        self._sends += 1
        if self.operator is not None:
            self.operator.inside_send(self._sends)
        before = self.bench.next()
        ticket = self.driver.stimulate(pattern)
        self.bench.sent[ticket] = (before, self.bench.next(), pattern)
        return ticket

    def abort_stimulation(self) -> None:
        try:
            self.driver.abort_stimulation()
        finally:
            self.bench.aborts.append((self.bench.next(), len(self.bench.log)))


class Server:
    """The simulated device served on a pty from a thread, logging to a WireBench."""

    def __init__(self, scenario: Scenario, bench: WireBench) -> None:
        from hardware_sim.device import PtyLink, SimDevice

        self.link = PtyLink()
        self.stop = threading.Event()
        device = SimDevice(f"sim://?seed={scenario.seed}&truth=0&culture=poisson_burst"
                           f"&layout={scenario.layout}", host_timeout_ms=HOST_TIMEOUT_MS,
                           pulse_log=bench.on_entry, log=lambda message: None)
        self.thread = threading.Thread(target=device.serve, args=(self.link, self.stop),
                                       daemon=True, name="served-device")
        self.thread.start()
        self.closed = False

    def kill(self) -> None:
        """The device dies: its loop ends (nothing more runs) and the port goes."""
        if not self.closed:
            self.closed = True
            self.stop.set()
            self.thread.join(10)
            self.link.close()


HOST_TIMEOUT_MS = 300


def run_wire_scenario(scenario: Scenario, at_send_wait_s: float = AT_SEND_WAIT_S) -> Outcome:
    """Run one scenario (in real time) on serial:// against the served device; check its log."""
    scenario = dataclasses_replace(scenario, real_time=True)
    bench = WireBench()
    server = Server(scenario, bench)
    try:
        driver = open_driver(f"serial://{server.link.name}")
        driver.open()
        device = WireDevice(driver, bench, server, scenario.link_loss_block)
        try:
            engine, operator, summary = _drive(scenario, bench, device, at_send_wait_s)
        finally:
            driver.close()
        time.sleep(2 * HOST_TIMEOUT_MS / 1000)  # what the device still ran would show now
    finally:
        server.kill()
    window = bench.resolve_guards()
    violations = check(scenario, bench, engine, device)
    unseen = 0
    if any(f.kind == "link_loss" for f in bench.faults):
        # the host lists what it saw run up to its last block; what the device ran in the
        # interval it never received is not a violation but a loss, counted
        unseen = sum(v.rule == "record:misses_run" for v in violations)
        violations = [v for v in violations if v.rule != "record:misses_run"]
    violations += [Violation(f"{kind}_raised", -1, -1, -1, -1, text)
                   for kind, text in operator.errors]
    outcome = Outcome(scenario, violations, len(bench.log), scenario.n_actions, summary)
    outcome.stop_to_abort = window
    outcome.unseen_at_link_loss = unseen
    return outcome


def wire_form(actions: int, seed: int) -> int:
    """Random scenarios over the pty until ``actions`` actions were tried; the figures."""
    return long_form(actions, seed, 1.0, run=run_wire_scenario)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-time", type=float, default=0.05, metavar="SHARE",
                        help="share of the runs in real time (hangs; default 0.05)")
    parser.add_argument("--shrink", metavar="RULE", help="shrink a counterexample of RULE")
    parser.add_argument("--examples", type=int, default=300, help="--shrink: examples to try")
    parser.add_argument("--wire", action="store_true",
                        help="over a pty: serial:// against the served device (real time)")
    args = parser.parse_args()
    if args.wire:
        return wire_form(args.actions, args.seed)
    if args.shrink:
        shrink(args.shrink, args.seed, args.real_time >= 1.0, args.examples)
        return 0
    return long_form(args.actions, args.seed, args.real_time)


if __name__ == "__main__":
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.exit(main())
