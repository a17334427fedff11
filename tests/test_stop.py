"""STOP means stop: every way a pulse could reach the culture after STOP, a hang, a fault
or the end of a run, checked against the simulator's own record of the pulses it ran
(``SimDriver.pulse_listener``), not against what the host believes it sent."""

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from conftest import ROOT, cli_command, ctrl_c_works, wait_until

from mea_control import recording
from mea_control.cli.console import EXIT_INTERRUPTED
from mea_control.driver import DriverError, open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.protocol import Protocol
from mea_control.recording.journal import journal_path
from mea_control.recording.writer import Recorder, run_provenance
from mea_control.safety import SafetyRefusal
from mea_control.sinks import Sink
from mea_control.types import StimPattern, StimPulse

PULSE = StimPulse.biphasic(5.0, 200.0)
FS = 25_000


class Wrapped:
    """A driver seen through a wrapper that changes one behaviour."""

    def __init__(self, driver):
        self._driver = driver

    def __getattr__(self, name):
        return getattr(self._driver, name)


def sim(url="sim://?seed=1"):
    """An opened sim:// driver and the list its culture fills with every pulse it gets:
    (sample, ticket, channel, pulse)."""
    driver = open_driver(url)
    driver.open()
    ran = []
    driver.pulse_listener = ran.extend
    return driver, ran


def tickets(ran):
    return {ticket for _, ticket, _, _ in ran}


class Once(Protocol):
    """Calls ``act(ctx)`` once, in the first block at or after ``at_s``."""

    def __init__(self, at_s, act):
        super().__init__()
        self.at_s, self.act, self.done = at_s, act, False

    def on_block(self, ctx, block, filtered):
        if not self.done and ctx.now >= ctx.samples(self.at_s):
            self.done = True
            self.act(ctx)


def ahead(ctx, seconds, **train):
    """A pulse (or train) on channel 10, booked ``seconds`` ahead."""
    return StimPattern(((10, PULSE),), at_sample=ctx.now + ctx.samples(seconds), **train)


# -- admission and sending are one step against STOP ---------------------------------------


class SlowSend(Wrapped):
    """The send waits until released, as a slow link would, after the gate admitted it."""

    def __init__(self, driver):
        super().__init__(driver)
        self.sending, self.release = threading.Event(), threading.Event()

    def stimulate(self, pattern):
        self.sending.set()
        self.release.wait(30)
        return self._driver.stimulate(pattern)


@pytest.mark.parametrize("stuck_s", [0.0, 2.0])
def test_a_stop_during_a_send_cancels_the_pattern_being_sent(stuck_s):
    """STOP comes while an admitted pattern is on its way; the send then takes ``stuck_s``
    more (2 s: longer than STOP waits for it, as on a stuck link)."""
    driver, ran = sim()
    slow = SlowSend(driver)
    engine = Engine(slow, Once(0.1, lambda ctx: ctx.stimulate(ahead(ctx, 0.1))),
                    EngineConfig(fast=True, duration_s=1.0))
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        assert slow.sending.wait(30), "the protocol never sent its pattern"
        stopper = threading.Thread(target=engine.stop_stimulation, args=("operator",))
        stopper.start()
        wait_until(lambda: not engine.gate.armed, what="the gate closing")
        time.sleep(stuck_s)
        slow.release.set()  # the send completes after the gate closed ...
        stopper.join(30)
        assert not stopper.is_alive()
    finally:
        slow.release.set()
        runner.join(60)
        driver.close()
    assert ran == []  # ... and STOP's abort came after it: the pattern never ran


# -- the watchdog runs beside the loop ------------------------------------------------------


def test_a_hook_that_hangs_is_caught_while_it_hangs():
    """A hook sleeps 1 s (5 watchdog periods) and then stimulates on what it saw before:
    the watchdog thread has stopped stimulation meanwhile, so nothing runs."""
    driver, ran = sim()

    def hang_then_stimulate(ctx):
        time.sleep(1.0)
        ctx.stimulate(ahead(ctx, 0.01))

    engine = Engine(driver, Once(0.2, hang_then_stimulate),
                    EngineConfig(fast=False, duration_s=1.5, watchdog_ms=200))
    try:
        s = engine.run()
    finally:
        driver.close()
    assert ran == []
    assert s["watchdog_trips"] == 1 and s["stims_refused"] == 1 and s["error"] is None
    assert s["max_lag_ms"] >= 500  # the summary says how far the loop fell behind
    refusal = next(e for e in engine.recent_events if e.kind == "refusal")
    assert "watchdog" in refusal.message


class NeverReturns(Protocol):
    """Books a pattern 50 ms ahead, then never returns from its hook (until released, when
    it stimulates again and raises)."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def on_block(self, ctx, block, filtered):
        if ctx.now >= ctx.samples(0.1):
            ctx.stimulate(ahead(ctx, 0.05))
            while not self.release.is_set():
                time.sleep(0.01)  # the line the error must point at
            try:  # released at last, it carries on
                ctx.stimulate(ahead(ctx, 0.05))
            except SafetyRefusal:
                pass
            raise RuntimeError("and fails")


class Calls(Wrapped):
    """Counts the calls that reach the driver."""

    def __init__(self, driver):
        super().__init__(driver)
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(self._driver, name)
        if callable(attr):
            def counted(*args, **kwargs):
                self.calls += 1
                return attr(*args, **kwargs)
            return counted
        return attr


def test_a_hook_that_never_returns_ends_the_run_pointing_at_its_line():
    driver, ran = sim()
    protocol = NeverReturns()
    device = Calls(driver)
    engine = Engine(device, protocol, EngineConfig(fast=True, hook_timeout_s=1.0))
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        runner.join(60)
        assert not runner.is_alive(), "the run never ended"
        assert engine.error_kind == "protocol"
        line = next(i for i, text in enumerate(open(__file__), 1) if "must point at" in text)
        assert f"test_stop.py:{line} in on_block" in engine.error
        assert ran == []  # the pattern booked before the hang was cancelled
        calls = device.calls
    finally:
        protocol.release.set()
        runner.join(10)
    # released later, the hook's loop ends without touching the driver (another run may
    # use it by then): no read, no stimulation, no abort
    wait_until(lambda: not engine._worker.is_alive(), what="the released loop ending")
    driver.close()
    assert ran == [] and device.calls == calls


# -- every way a run ends leaves nothing queued --------------------------------------------


class DeviceRunsOn(Wrapped):
    """A device that goes on after the host stops reading: on stop() it keeps its clock
    running for 2 s, so whatever is still queued on it runs (and shows in its log)."""

    def stop(self):
        deadline = self._driver.next_sample + 2 * FS
        while self._driver.next_sample < deadline:
            self._driver.read(timeout=0.1)
        self._driver.stop()


class LostAfter(DeviceRunsOn):
    """The link breaks once the device's clock passes ``sample``."""

    def __init__(self, driver, sample):
        super().__init__(driver)
        self.sample = sample

    def read(self, timeout=None):
        if self._driver.next_sample > self.sample:
            raise DriverError("link lost (injected)")
        return self._driver.read(timeout)


def _book_then(end):
    def act(ctx):
        ctx.stimulate(ahead(ctx, 0.5))
        if end == "finish":
            ctx.finish()
        elif end == "protocol error":
            raise RuntimeError("protocol bug (injected)")
    return act


@pytest.mark.parametrize("end", ["finish", "protocol error", "stop", "device error", "duration"])
def test_nothing_booked_runs_after_the_run_ends(end):
    driver, ran = sim()
    device = LostAfter(driver, 4000) if end == "device error" else DeviceRunsOn(driver)
    engine = Engine(device, Once(0.1, _book_then(end)),
                    EngineConfig(fast=True, duration_s=0.2 if end == "duration" else 5.0))
    if end == "stop":  # as Ctrl-C does: stop() from the caller's side
        engine.sinks.append(StopAt(engine, 4000))
    try:
        s = engine.run()
    finally:
        device.close()
    assert driver.next_sample > s["duration_s"] * FS + FS  # the device ran on for a second
    assert ran == [], f"a pattern booked before the end ({end}) ran after it"
    # its fate: cancelled, or unknown when the link was lost before the device could say
    assert s["stims_dropped"] + s["stims_unreported"] == 1 and s["stims_executed"] == 0


class StopAt(Sink):
    def __init__(self, engine, sample):
        self.engine, self.sample = engine, sample

    def on_block(self, block, filtered):
        if block.stop_sample >= self.sample:
            threading.Thread(target=self.engine.stop).start()


# -- the recording lists what the device ran ------------------------------------------------


def test_a_train_cut_by_a_protocol_error_is_recorded_as_far_as_it_ran(tmp_path):
    driver, ran = sim()

    def train_then_fail(ctx):
        ctx.stimulate(ahead(ctx, 0.01, train_count=20, train_rate_hz=50.0))

    class Fails(Once):
        def on_block(self, ctx, block, filtered):
            super().on_block(ctx, block, filtered)
            if ctx.now >= ctx.samples(0.2):
                raise RuntimeError("protocol bug (injected)")

    engine = Engine(driver, Fails(0.1, train_then_fail), EngineConfig(fast=True))
    rec = Recorder(tmp_path / "r.nwb", driver.info, run_provenance(engine.describe(), __file__))
    engine.sinks.append(rec)
    try:
        s = engine.run()
    finally:
        driver.close()
    assert s["error"] == "protocol"
    pulses_ran = sorted(sample for sample, *_ in ran)
    assert 3 <= len(pulses_ran) < 20  # 0.1 s of a 0.4 s train
    with recording.open(tmp_path / "r.nwb") as r:
        executed = r.pulses["status"] == "executed"
        assert sorted(r.pulses["execution_sample"][executed]) == pulses_ran
        assert list(r.pulses["train_pulse"][executed]) == list(range(len(pulses_ran)))
        assert "train cut after" in r.pulses["reason"][executed][0]


# -- the summary from another thread --------------------------------------------------------


class ManyTrains(Protocol):
    """A short train on every 5th block, and a summary that notes which thread made it
    while the loop was running."""

    def __init__(self):
        super().__init__()
        self.summary_threads = set()
        self.running = lambda: False

    def on_block(self, ctx, block, filtered):
        if ctx.now % (5 * 25) == 0:
            try:
                ctx.stimulate(StimPattern(((10, PULSE),), train_count=2, train_rate_hz=400.0))
            except SafetyRefusal:
                pass

    def summary(self):
        if self.running():
            self.summary_threads.add(threading.current_thread().name)
        return {}


def test_the_summary_asked_from_another_thread_is_made_between_two_items():
    driver, _ = sim()
    protocol = ManyTrains()
    engine = Engine(driver, protocol, EngineConfig(fast=True, duration_s=4.0))
    protocol.running = lambda: engine._started and not engine._finished.is_set()
    errors, summaries = [], []

    def ask():
        wait_until(lambda: engine._worker is not None, what="the run starting")
        while not engine._finished.is_set():
            try:
                summaries.append(engine.summary())
            except Exception as exc:  # noqa: BLE001 - any failure is the defect
                errors.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        engine.run()
    finally:
        asker.join(30)
        driver.close()
    assert errors == [] and len(summaries) > 10
    # the protocol's state was read on the loop's own thread while the loop ran
    assert protocol.summary_threads == {"mea-acquisition"}


# -- bad patterns are refusals, cheap ones --------------------------------------------------


def test_a_channel_out_of_range_and_a_huge_train_are_refused_not_errors():
    refusals = []

    def bad(ctx):
        for pattern in (StimPattern(((999, PULSE),)),
                        StimPattern(((10, PULSE),), train_count=1_000_000, train_rate_hz=1.0)):
            try:
                ctx.stimulate(pattern)
            except SafetyRefusal as refusal:
                refusals.append(refusal.limit)

    driver, ran = sim()
    engine = Engine(driver, Once(0.05, bad), EngineConfig(fast=True, duration_s=0.2))
    try:
        s = engine.run()
    finally:
        driver.close()
    assert s["error"] is None and refusals == ["electrode", "max_train_pulses"] and ran == []


# -- SIGTERM and SIGHUP end a run as Ctrl-C does --------------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGTERM to the process group"])
def test_a_killed_run_ends_cleanly_with_its_recording_and_summary(tmp_path, how):
    nwb, summary = tmp_path / "r.nwb", tmp_path / "s.json"
    proc = subprocess.Popen(
        cli_command("run", "spontaneous", "--duration", "60", "--record", str(nwb),
                    "--summary-json", str(summary), "--quiet"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_works, start_new_session=True)
    sig = signal.SIGHUP if how == "SIGHUP" else signal.SIGTERM
    journal = journal_path(nwb)
    try:  # once a few batches of spikes are in the side journal
        wait_until(lambda: journal.exists() and journal.stat().st_size > 2000)
        if "group" in how:  # what systemd and a closing terminal do: the recorder too
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    with recording.open(nwb) as rec:
        assert rec.complete and rec.summary["interrupted"] and rec.n_samples > 0
    assert json.loads(summary.read_text())["interrupted"] is True
    assert EXIT_INTERRUPTED == 128 + signal.SIGINT


def test_a_protocol_error_points_at_its_line_in_the_log():
    def fails(ctx):
        raise RuntimeError("protocol bug (injected)")  # the line the log must point at

    driver, _ = sim()
    engine = Engine(driver, Once(0.05, fails), EngineConfig(fast=True, duration_s=0.2))
    try:
        engine.run()
    finally:
        driver.close()
    line = next(i for i, text in enumerate(open(__file__), 1) if "log must point at" in text)
    event = next(e for e in engine.recent_events if e.kind == "protocol_error")
    assert event.message.startswith("RuntimeError: protocol bug (injected) (at ")
    assert event.message.endswith(f"test_stop.py:{line} in fails)")


# -- on_clock: paced pulses on any device, never while paused, refused after STOP ---------


class Pacer(Protocol):
    """A pulse on channel 10 every 50 ms, paced in on_clock; the samples it heard."""

    def __init__(self):
        super().__init__()
        self.clock, self.refused_at, self.next_at = [], [], 0

    def on_clock(self, ctx, sample):
        self.clock.append(sample)
        if sample >= self.next_at:
            self.next_at = sample + ctx.samples(0.05)
            try:
                ctx.stimulate(StimPattern.single([10], PULSE))
            except SafetyRefusal:
                self.refused_at.append(sample)


class AtClock(Sink):
    """Calls ``act()`` on the loop's thread once the clock reaches ``sample``."""

    def __init__(self, sample, act):
        self.sample, self.act = sample, act

    def on_clock(self, sample):
        if self.act is not None and sample >= self.sample:
            self.act, act = None, self.act
            act()


@pytest.mark.parametrize("url", ["sim://?seed=1", "sim://?seed=1&raw=0"])
def test_a_pulse_booked_from_on_clock_after_stop_is_refused(url):
    """The operator's STOP at 0.3 s: the device's own record has the pulses before it and
    none after, though the protocol went on booking one every 50 ms from on_clock."""
    driver, ran = sim(url)
    protocol = Pacer()
    engine = Engine(driver, protocol, EngineConfig(fast=True, duration_s=1.0))
    engine.sinks.append(AtClock(int(0.3 * FS), lambda: engine.stop_stimulation("operator")))
    try:
        s = engine.run()
    finally:
        driver.close()
    stop = next(e.sample for e in engine.recent_events if e.kind == "disarm")
    assert len(ran) >= 5 and max(sample for sample, *_ in ran) <= stop
    assert protocol.clock[-1] >= 0.99 * FS  # it heard the clock to the end ...
    assert len(protocol.refused_at) >= 13 and min(protocol.refused_at) >= stop  # ... refused
    assert s["stims_refused"] == len(protocol.refused_at) and s["error"] is None


@pytest.mark.parametrize("url", ["sim://?seed=1", "sim://?seed=1&raw=0"])
def test_on_clock_hears_every_block_or_tick_but_none_while_paused(url):
    driver, ran = sim(url)
    protocol = Pacer()
    engine = Engine(driver, protocol, EngineConfig(fast=True, duration_s=1.0))
    engine.sinks += [AtClock(int(0.2 * FS), engine.pause), AtClock(int(0.5 * FS), engine.resume)]
    try:
        engine.run()
    finally:
        driver.close()
    events = {e.kind: e.sample for e in engine.recent_events}
    paused, resumed = events["pause"], events["resume"]
    clock = np.array(protocol.clock)
    assert not ((clock > paused) & (clock <= resumed)).any()
    steps = np.diff(clock)
    step = engine.block_samples
    assert (steps == step).sum() == len(steps) - 1  # every block or tick, but the pause
    assert steps.max() == resumed - paused + step
    assert not [sample for sample, *_ in ran if paused + step < sample <= resumed]


class Chain(Protocol):
    """Each executed pulse on channel 10 sends the next from on_stim (first from on_clock)."""

    def __init__(self):
        super().__init__()
        self.told = []

    def on_clock(self, ctx, sample):
        if not self.told and ctx.outcome(0) is None:
            self._next(ctx)

    def on_stim(self, ctx, record):
        self.told.append(ctx.now)
        self._next(ctx)

    def _next(self, ctx):
        ctx.stimulate(StimPattern.single([10], PULSE, at_sample=ctx.now + ctx.samples(0.02)))


class StopAfter(Sink):
    """Asks the run to end when it hears of the ``n``-th executed pattern (the sinks hear
    of a fate before the protocol does)."""

    def __init__(self, engine, n):
        self.engine, self.n, self.executed = engine, n, 0

    def on_stim(self, record):
        self.executed += record.status == "executed"
        if self.executed == self.n:
            self.engine.stop("operator")


def test_on_stim_is_not_told_once_a_stop_is_asked_for():
    """A protocol that answers each executed pulse with the next: once the run is asked to
    end (as Ctrl-C or the GUI's Stop do), it hears no more fates and sends nothing more;
    the device's own record holds the 5 pulses before the stop."""
    driver, ran = sim("sim://?seed=1")
    protocol = Chain()
    engine = Engine(driver, protocol, EngineConfig(fast=True, duration_s=5.0))
    engine.sinks.append(StopAfter(engine, 5))
    try:
        s = engine.run()
    finally:
        driver.close()
    assert len(protocol.told) == 4 and len(ran) == 5 and s["error"] is None
