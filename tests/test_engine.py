"""The closed loop on the simulator: timing, stimulation, errors, watchdog, gaps."""

import time

import numpy as np
import pytest

from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.limits import SafetyLimits
from mea_control.protocol import Protocol
from mea_control.safety import SafetyRefusal
from mea_control.sinks import Sink
from mea_control.trials import Trials, TrialSpec
from mea_control.types import StimPattern, StimPulse

PULSE = StimPulse.biphasic(5.0, 200.0)


class Spy:
    """Wraps a driver and remembers what reached it."""

    def __init__(self, driver):
        self._driver = driver
        self.sent = []
        self.aborts = 0

    def __getattr__(self, name):
        return getattr(self._driver, name)

    def stimulate(self, pattern):
        self.sent.append(pattern)
        return self._driver.stimulate(pattern)

    def abort_stimulation(self):
        self.aborts += 1
        self._driver.abort_stimulation()


def run(protocol, url="sim://?seed=1", sinks=(), **config):
    driver = Spy(open_driver(url))
    driver.open()
    config.setdefault("fast", True)
    engine = Engine(driver, protocol, EngineConfig(**config), sinks=sinks)
    try:
        summary = engine.run()
    finally:
        driver.close()
    return engine, driver, summary


class Quiet(Protocol):
    pass


class EveryTenthSecond(Protocol):
    """A pulse on channel 10 every 100 ms, counted in trials, each sent ``lead_ms`` ahead."""

    def __init__(self, lead_ms=50.0):
        super().__init__()
        self.lead_ms = lead_ms

    def setup(self, ctx):
        ctx.use_trials(Trials(self.design, n_trials=12, stim_channels=[10], isi_s=0.1,
                              window_ms=(5, 50), first_trial_s=0.2, lead_ms=self.lead_ms))

    def design(self, ctx, index):
        return TrialSpec(StimPattern.single([10], PULSE) if index % 3 else None)


def test_spontaneous_run_counts_blocks_and_spikes():
    engine, driver, s = run(Quiet(), duration_s=2.0)
    assert s["blocks"] == 2000 and s["block_samples"] == 25 and s["sample_rate"] == 25000
    assert s["duration_s"] == pytest.approx(2.0)
    assert s["spikes"] > 0 and s["stims_executed"] == 0 and s["error"] is None
    assert driver.sent == []


def test_trials_stimulate_with_all_three_samples_recorded():
    engine, driver, s = run(EveryTenthSecond())
    assert s["trials"] == 12 and s["stims_executed"] == 8 and len(driver.sent) == 8
    assert s["ended"] == "completed, 12 of 12 trials" and not s["ended_early"]
    lead = engine.trials._lead
    assert lead == 1250  # 50 ms ahead: the simulator runs patterns at a requested sample
    for record in engine.patterns.recent:
        # decided ahead, booked by the gate and run exactly at the trial's sample
        assert record.decision_sample == record.trigger_sample - lead
        assert record.pattern.at_sample == record.execution_sample == record.trigger_sample
    table = engine.trials.table()
    executed = table.status == "executed"
    assert executed.sum() == 8 and (table.status[~executed] == "none").all()
    assert s["latency_samples"]["max"] <= 2 * engine.block_samples


def test_fast_and_real_time_give_identical_results():
    # identical while the loop keeps up: trials sent 1 s ahead and a watchdog of 5 s give
    # a busy machine's stalls a margin (a pulse that reaches a paced device after its
    # sample is dropped, and a stall past the watchdog stops stimulation)
    fast_engine, _, fast = run(EveryTenthSecond(lead_ms=1000), fast=True)
    slow_engine, _, slow = run(EveryTenthSecond(lead_ms=1000), fast=False, watchdog_ms=5000)
    assert fast["stims_executed"] == slow["stims_executed"] == 8
    assert fast["spikes"] == slow["spikes"] and fast["blocks"] == slow["blocks"]
    a, b = fast_engine.trials.table(), slow_engine.trials.table()
    np.testing.assert_array_equal(a.r, b.r)
    np.testing.assert_array_equal(a.stim_sample, b.stim_sample)


class Refused(Protocol):
    def on_block(self, ctx, block, filtered):
        if ctx.now in (ctx.start_sample + 250, ctx.start_sample + 500):
            self.caught = None
            try:
                ctx.stimulate(StimPattern.single([10], StimPulse.biphasic(50.0, 200.0)))
            except SafetyRefusal as refusal:
                self.caught = refusal
            ctx.stimulate(StimPattern.single([10], StimPulse.biphasic(50.0, 200.0)))
            self.after = True  # never reached: the uncaught refusal ends this hook

    def on_spikes(self, ctx, spikes):
        ctx.stimulate(StimPattern.single([10], StimPulse.biphasic(50.0, 200.0)))


def test_refused_pattern_sends_nothing_is_counted_and_the_run_goes_on():
    proto = Refused()
    engine, driver, s = run(proto, duration_s=0.5)
    assert driver.sent == [] and s["error"] is None
    assert proto.caught.limit == "max_current_uA" and not hasattr(proto, "after")
    assert s["blocks"] == 500
    refusals = [e for e in engine.recent_events if e.kind == "refusal"]
    assert s["stims_refused"] == len(refusals) > 5  # on_spikes: on every spiking block
    # said once per hook, the first time: where it escaped, what did not run, what to do
    escaped = [e for e in engine.recent_events if e.kind == "refusal_uncaught"]
    assert len(escaped) == 2 and escaped[0].sample == 250
    line = next(i for i, text in enumerate(open(__file__), 1) if "self.after = True" in text)
    assert escaped[0].message == (
        f"Refused.on_block did not catch a SafetyRefusal (at {__file__}:{line - 1} in "
        "on_block): the rest of that call did not run; catch SafetyRefusal around "
        "ctx.stimulate, or check ctx.can_stimulate first (said once per hook per run)")
    assert escaped[1].message.startswith("Refused.on_spikes did not catch a SafetyRefusal")


def test_rig_limits_apply_and_device_limits_win():
    class Five(Protocol):
        def on_block(self, ctx, block, filtered):
            if ctx.now == ctx.start_sample + 250:
                ctx.stimulate(StimPattern.single([10], PULSE))

    _, driver, s = run(Five(), duration_s=0.3, limits=SafetyLimits(max_current_uA=4.0))
    assert s["stims_refused"] == 1 and driver.sent == []
    assert s["limits"]["max_current_uA"] == 4.0


class Explodes(Protocol):
    def on_block(self, ctx, block, filtered):
        if ctx.now >= ctx.start_sample + 100:
            ctx.stimulate(StimPattern.single([10], PULSE, at_sample=ctx.now + 2500))
            raise RuntimeError("analysis bug")

    def teardown(self, ctx):
        self.torn_down = True


def test_protocol_error_stops_stimulation_and_the_run():
    proto = Explodes()
    engine, driver, s = run(proto, duration_s=5.0)
    assert s["error"] == "protocol" and "RuntimeError: analysis bug" in engine.error
    assert s["ended"] == "ended by a protocol error" and s["ended_early"]
    assert not engine.gate.armed and driver.aborts >= 1
    assert s["blocks"] < 200 and proto.torn_down
    assert s["stims_executed"] == 0  # the queued pulse was aborted before it ran


class StopsAt(Sink):
    """Asks the engine to stop, giving ``reason``, at the ``trial``-th trial (or block)."""

    def __init__(self, reason, trial=None, block=None):
        self.reason, self.trial, self.block = reason, trial, block
        self.engine, self.trials, self.blocks = None, 0, 0

    def on_trial(self, trial):
        self.trials += 1
        if self.trials == self.trial:
            self.engine.stop(self.reason)

    def on_block(self, block, filtered):
        self.blocks += 1
        if self.blocks == self.block:
            self.engine.stop(self.reason)


@pytest.mark.parametrize("protocol, stop, ended, early", [
    (EveryTenthSecond, StopsAt("stopped by the operator", trial=3),
     "stopped by the operator, 3 of 12 trials", True),
    (EveryTenthSecond, StopsAt("", trial=5), "ended early, 5 of 12 trials", True),
    # a run with no planned end ends when it is stopped: not early
    (Quiet, StopsAt("stopped: the window was closed", block=300),
     "stopped: the window was closed", False),
], ids=["operator", "no-reason", "open-ended"])
def test_the_summary_says_how_a_stopped_run_ended(protocol, stop, ended, early):
    driver = open_driver("sim://?seed=1")
    driver.open()
    engine = Engine(driver, protocol(), EngineConfig(fast=True), sinks=[stop])
    stop.engine = engine
    try:
        s = engine.run()
    finally:
        driver.close()
    assert s["ended"] == ended and s["ended_early"] is early
    assert s["trials_planned"] == (12 if protocol is EveryTenthSecond else None)


class Reacts(Protocol):
    """Stimulates channel 10 on the first spike seen on channel 20, every 50 ms at most."""

    def setup(self, ctx):
        self.next_ok = 0

    def on_spikes(self, ctx, spikes):
        hits = spikes.sample[spikes.channel == 20]
        if len(hits) and ctx.now >= self.next_ok:
            ctx.stimulate(StimPattern.single([10], PULSE), trigger_sample=int(hits[0]))
            self.next_ok = ctx.now + ctx.samples(0.05)


def test_reaction_latency_is_within_two_blocks():
    engine, _, s = run(Reacts(), duration_s=10.0)
    lat = engine.stats.latency_samples()
    assert len(lat) >= 5
    assert lat.max() <= 2 * engine.block_samples and lat.min() > 0


class Stalls(Protocol):
    def on_block(self, ctx, block, filtered):
        if ctx.now == ctx.start_sample + 50:
            time.sleep(0.3)  # a stalled analysis step
        if ctx.now == ctx.start_sample + 400:
            try:
                ctx.stimulate(StimPattern.single([10], PULSE))
            except SafetyRefusal as refusal:
                self.refusal = refusal


def test_watchdog_stops_stimulation_until_rearmed():
    proto = Stalls()
    engine, driver, s = run(proto, fast=False, duration_s=0.5, watchdog_ms=100.0)
    assert s["watchdog_trips"] == 1 and driver.aborts >= 1
    assert proto.refusal.limit == "disarmed" and driver.sent == []
    assert any(e.kind == "watchdog" for e in engine.recent_events)
    # the sinks hear of it with the gate's reason (they follow the gate by events alone)
    trip = next(e for e in engine.recent_events if e.kind == "watchdog")
    assert trip.armed is False and trip.disarm_reason.startswith("watchdog: the loop fell")
    engine.rearm()
    assert engine.gate.armed


def test_gaps_are_reported_not_filled():
    engine, _, s = run(Quiet(), url="sim://?seed=2&drop=0.01", duration_s=2.0)
    assert s["gaps"] > 0 and s["blocks_dropped"] >= s["gaps"]
    assert s["samples_lost"] == s["blocks_dropped"] * engine.block_samples
    assert s["blocks"] + s["blocks_dropped"] == pytest.approx(2000, abs=2)


class Recorder(Sink):
    def __init__(self):
        self.calls = {"start": 0, "block": 0, "stim": 0, "trial": 0, "stop": 0}

    def on_start(self, run):
        self.calls["start"] += 1

    def on_block(self, block, filtered):
        self.calls["block"] += 1

    def on_stim(self, record):
        self.calls["stim"] += 1

    def on_trial(self, trial):
        self.calls["trial"] += 1

    def on_stop(self, summary):
        self.calls["stop"] += 1


def test_sinks_see_every_block_stim_and_trial():
    sink = Recorder()
    _, _, s = run(EveryTenthSecond(), sinks=[sink])
    assert sink.calls == {"start": 1, "block": s["blocks"], "stim": 8, "trial": 12, "stop": 1}


class Strong(Protocol):
    """10 uA pulses on eight electrodes every 200 ms."""

    def setup(self, ctx):
        self.channels = [3, 12, 21, 30, 35, 44, 53, 60]
        pulse = StimPulse.biphasic(10.0, 200.0)
        ctx.use_trials(Trials(lambda ctx, i: TrialSpec(StimPattern.single(self.channels, pulse)),
                              n_trials=40, stim_channels=self.channels, isi_s=0.2,
                              window_ms=(5, 100), first_trial_s=0.2))


class KeepSpikes(Sink):
    def __init__(self):
        self.batches = []

    def on_spikes(self, spikes):
        self.batches.append(spikes)


def test_stimulus_artifacts_are_not_detected_as_spikes():
    from mea_control.types import SpikeEvents

    sink = KeepSpikes()
    # a culture that answers 5 ms or later (the network's neurons fire 1-2 ms after a pulse)
    engine, _, s = run(Strong(), url="sim://?seed=1&culture=poisson_burst", sinks=[sink])
    spikes = SpikeEvents.concat(sink.batches)
    on_stim = np.isin(spikes.channel, [3, 12, 21, 30, 35, 44, 53, 60])
    early = before = 0
    for record in engine.patterns.recent:
        t = record.execution_sample
        four_ms = 4 * engine.block_samples
        early += int(on_stim[(spikes.sample >= t) & (spikes.sample < t + four_ms)].sum())
        before += int(on_stim[(spikes.sample >= t - four_ms) & (spikes.sample < t)].sum())
    # Before the culture's answer only spontaneous spikes belong.
    assert s["stims_executed"] == 40
    assert early <= 2 * before + 5


class SlowSetup(Protocol):
    def setup(self, ctx):
        time.sleep(1.5)  # e.g. loading a model before the first block: 1.5x the watchdog

    def on_block(self, ctx, block, filtered):
        if ctx.now == ctx.start_sample + 50_000:  # 2 s, after the backlog of setup
            ctx.stimulate(StimPattern.single([10], PULSE))


def test_slow_setup_is_not_taken_for_a_stalled_loop():
    # a watchdog a busy machine's stalls do not reach, and a setup longer than it
    engine, driver, s = run(SlowSetup(), fast=False, duration_s=2.2, watchdog_ms=1000.0)
    assert s["watchdog_trips"] == 0 and s["stimulation_armed"]
    assert s["stims_executed"] == 1


class Failing:
    """A sim driver whose device fails after a while."""

    def __init__(self, driver, after):
        self._driver, self.after = driver, after

    def __getattr__(self, name):
        return getattr(self._driver, name)

    def read(self, timeout=None):
        from mea_control.driver import DriverError

        item = self._driver.read(timeout)
        if getattr(item, "start_sample", 0) >= self.after:
            raise DriverError("USB cable unplugged")
        return item


class Watches(Protocol):
    def setup(self, ctx):
        self.events = []

    def on_block(self, ctx, block, filtered):
        if ctx.now >= ctx.start_sample + 2500:
            raise RuntimeError("bug")

    def on_spikes(self, ctx, spikes):
        self.events.append(ctx.now)

    def teardown(self, ctx):
        self.torn_down = True


class TearsDown(Protocol):
    def teardown(self, ctx):
        self.torn_down = True


def test_device_error_ends_the_run_and_still_tears_down():
    driver = open_driver("sim://?seed=1")
    driver.open()
    proto = TearsDown()
    engine = Engine(Failing(driver, after=5000), proto, EngineConfig(fast=True, duration_s=5))
    s = engine.run()
    assert s["error"] == "device" and engine.error == "USB cable unplugged"
    assert proto.torn_down and not engine.gate.armed


def test_after_a_hook_raises_the_rest_of_the_block_is_not_dispatched():
    proto = Watches()
    engine, _, s = run(proto, duration_s=5)
    assert s["error"] == "protocol"
    failed_at = engine.now
    assert proto.events and max(proto.events) < failed_at


class BrokenSink(Sink):
    def on_trial(self, trial):
        raise OSError("disk full")


def test_a_failing_sink_stops_the_run():
    engine, _, s = run(EveryTenthSecond(), sinks=[BrokenSink()])
    assert s["error"] == "sink" and "disk full" in engine.error
    assert s["trials"] == 1 and not engine.gate.armed


def test_device_error_while_stimulating_is_a_device_error():
    class Refuses(Spy):
        def stimulate(self, pattern):
            from mea_control.driver import DriverError

            raise DriverError("stimulator not answering")

    class Once(Protocol):
        def on_block(self, ctx, block, filtered):
            if ctx.now == ctx.start_sample + 100:
                ctx.stimulate(StimPattern.single([10], PULSE))

    driver = Refuses(open_driver("sim://?seed=1"))
    driver.open()
    engine = Engine(driver, Once(), EngineConfig(fast=True, duration_s=1))
    s = engine.run()
    assert s["error"] == "device" and engine.error == "stimulator not answering"


class SlowReaction(Protocol):
    """Spends 8 ms deciding before it stimulates (a slow model step)."""

    def on_block(self, ctx, block, filtered):
        if ctx.now == ctx.start_sample + 250:
            time.sleep(0.008)
            ctx.stimulate(StimPattern.single([10], PULSE))


def test_in_real_time_a_slow_decision_shows_in_the_latency():
    engine, _, s = run(SlowReaction(), fast=False, duration_s=0.3)
    fast_engine, _, _ = run(SlowReaction(), fast=True, duration_s=0.3)
    assert fast_engine.stats.latency_samples().tolist() == [0]  # lockstep: the next block
    # real time: the device has moved on by at least the 8 ms spent deciding
    assert engine.stats.latency_samples()[0] >= 8 * engine.block_samples


class StallThenPulse(Protocol):
    """A train booked ahead, a stalled hook, then a pulse 'as soon as possible'.

    The train starts 200 ms ahead and lasts 1 s, and the hook stalls 300 ms: on a busy
    machine the device is still inside the train when the hook goes on, unless the loop
    lagged 200 ms before the stall or 900 ms in all."""

    def on_block(self, ctx, block, filtered):
        if ctx.now == ctx.start_sample + 100:
            train = StimPattern(((10, PULSE),), train_count=200, train_rate_hz=200.0,
                                at_sample=ctx.now + ctx.samples(0.2))
            ctx.stimulate(train)
            time.sleep(0.3)  # the loop stalls; the device runs on into the train
            try:
                ctx.stimulate(StimPattern.single([10], PULSE))
            except SafetyRefusal as refusal:
                self.refusal = refusal


def test_gate_books_a_late_pulse_where_the_device_will_run_it():
    proto = StallThenPulse()
    engine, _, s = run(proto, fast=False, duration_s=1.5, watchdog_ms=5000.0)
    # booked at the device's sample, inside the train: 11 pulses in 50 ms are refused
    assert proto.refusal.limit in ("burst_rate_hz", "overlap")
    assert s["stims_executed"] == 1 and s["stims_refused"] == 1


class StopFails(Spy):
    def stop(self):
        raise OSError("device gone")


class EventSinkFails(Sink):
    def on_event(self, event):
        if event.kind == "device_error":
            raise OSError("log disk full")


def test_run_returns_even_when_stopping_and_a_sink_both_fail():
    driver = StopFails(open_driver("sim://?seed=1"))
    driver.open()
    engine = Engine(driver, Quiet(), EngineConfig(fast=True, duration_s=0.1),
                    sinks=[EventSinkFails()])
    s = engine.run()
    assert s["blocks"] == 100


class Lossy(Spy):
    """A spikes-only device whose link reports a lost frame once."""

    def __init__(self, driver):
        super().__init__(driver)
        self.problems = [("link_gap", "1 frame lost before frame 7")]

    def drain_events(self):
        out, self.problems = self.problems, []
        return out


def test_spikes_only_device_drives_trials_and_link_problems_are_logged():
    driver = Lossy(open_driver("sim://?seed=1&raw=0"))
    driver.open()
    engine = Engine(driver, EveryTenthSecond(), EngineConfig(fast=True))
    s = engine.run()
    assert s["error"] is None and s["trials"] == 12 and s["stims_executed"] == 8
    assert s["spikes"] > 0 and s["blocks"] == round(s["duration_s"] * 1000)
    assert engine.t0 == 0
    table = engine.trials.table()
    assert table.r.sum() > 0 and (table.stim_sample[table.o[:, 0] == 1] % 2500 == 0).all()
    logged = [(e.kind, e.message) for e in engine.recent_events]
    assert ("link_gap", "1 frame lost before frame 7") in logged


class Pauser(Sink):
    """Pauses the engine after the third trial and resumes it 0.5 s of device time later."""

    def __init__(self):
        self.engine = None
        self.resume_at = None
        self.hooks_while_paused = 0

    def on_trial(self, trial):
        if trial.index == 2:
            self.engine.pause()

    def on_block(self, block, filtered):
        if self.engine.paused and self.resume_at is None:
            self.resume_at = block.stop_sample + 12_500
        if self.resume_at is not None and block.stop_sample >= self.resume_at:
            self.engine.resume()
            self.resume_at = -1


class CountsBlocks(EveryTenthSecond):
    def setup(self, ctx):
        super().setup(ctx)
        self.blocks_seen = []

    def on_block(self, ctx, block, filtered):
        self.blocks_seen.append(block.stop_sample)


def test_pause_holds_the_protocol_and_moves_later_trials():
    protocol, pauser = CountsBlocks(), Pauser()
    driver = open_driver("sim://?seed=1")
    driver.open()
    engine = Engine(driver, protocol, EngineConfig(fast=True), sinks=[pauser])
    pauser.engine = engine
    try:
        s = engine.run()
    finally:
        driver.close()
    events = {e.kind: e for e in engine.recent_events}
    assert "pause" in events and "resume" in events
    paused_at, resumed_at = events["pause"].sample, events["resume"].sample
    held = resumed_at - paused_at
    assert 12_500 <= held <= 12_600 and s["paused_s"] == pytest.approx(held / 25_000)
    # no protocol hook while paused; acquisition went on
    assert not [b for b in protocol.blocks_seen if paused_at < b <= resumed_at]
    assert s["trials"] == 12 and s["duration_s"] == pytest.approx(0.2 + 1.1 + 0.05 + held
                                                                  / 25_000, abs=0.01)
    # the trials after the pause moved later by its length, none started meanwhile
    stims = sorted(r.trigger_sample for r in engine.patterns.recent)
    t0 = engine.t0
    expected = [t0 + int(round((0.2 + i * 0.1) * 25_000)) + (held if i > 3 else 0)
                for i in range(12) if i % 3]
    late = [t for t in expected if t > paused_at]
    assert stims == expected and all(t > resumed_at for t in late)


def test_an_operator_stop_is_an_event_and_refuses_later_pulses():
    class StopAfterTwo(Sink):
        def on_trial(self, trial):
            if trial.index == 1:
                engine.stop_stimulation("stopped by the operator")

    driver = Spy(open_driver("sim://?seed=1"))
    driver.open()
    engine = Engine(driver, EveryTenthSecond(), EngineConfig(fast=True), sinks=[StopAfterTwo()])
    try:
        s = engine.run()
    finally:
        driver.close()
    disarm = [e for e in engine.recent_events if e.kind == "disarm"]
    # one abort for the STOP, one at the end of the run
    assert [e.message for e in disarm] == ["stopped by the operator"] and driver.aborts == 2
    # trial 2's pattern was already queued on the device: the abort cancelled it
    assert (s["stims_executed"], s["stims_dropped"], s["stims_refused"]) == (1, 1, 6)
    assert not s["stimulation_armed"]
    assert all(r.trigger_sample > disarm[0].sample for r in engine.patterns.recent
               if r.status == "refused")


class GateWatcher(Sink):
    """Follows the gate by what sinks are handed: the run description, then events."""

    def __init__(self, actions=None):
        self.run = None
        self.states = []
        self.actions = actions or {}

    def on_start(self, run):
        self.run = run
        self.states.append((run.armed, run.disarm_reason))

    def on_trial(self, trial):
        self.actions.get(trial.index, lambda: None)()

    def on_event(self, event):
        if event.armed is not None:
            self.states.append((event.armed, event.disarm_reason))


def test_sinks_are_told_the_run_and_every_change_of_the_gate():
    driver = open_driver("sim://?seed=1")
    driver.open()
    watcher = GateWatcher()
    engine = Engine(driver, EveryTenthSecond(), EngineConfig(fast=True, seed=3),
                    sinks=[watcher])
    engine.gate.disarm("held over from the last run")  # as the GUI session does
    watcher.actions = {1: engine.rearm, 4: lambda: engine.stop_stimulation("operator stop"),
                       6: engine.rearm}
    try:
        engine.run()
    finally:
        driver.close()
    run = watcher.run
    assert (run.protocol, run.device_url, run.seed, run.start_sample) == (
        engine.protocol.name, driver.url, 3, engine.t0)
    assert run.info is engine.info and run.block_samples == engine.block_samples
    assert run.limits == engine.gate.limits.as_dict()
    assert watcher.states == [(False, "held over from the last run"), (True, ""),
                              (False, "operator stop"), (True, "")]


def test_a_protocol_error_disarms_the_gate_for_the_sinks_too():
    watcher = GateWatcher()
    _, _, s = run(Explodes(), duration_s=5.0, sinks=[watcher])
    assert s["error"] == "protocol"
    assert watcher.states[-1] == (False, "protocol error")


def test_event_kinds_are_members_and_a_drivers_own_kind_stays_its_string():
    import re
    from pathlib import Path

    from mea_control.sinks import EventKind

    # every kind the shipped drivers report maps onto a member
    emitted = set()
    for path in (Path(__file__).resolve().parent.parent / "drivers").rglob("*.py"):
        emitted |= set(re.findall(r'(?:_event\(|append\(\()\s*"([a-z_]+)"', path.read_text()))
    assert {"device_disarmed", "link_error", "link_gap", "stim_upload"} <= emitted
    assert all(isinstance(EventKind.of(kind), EventKind) for kind in emitted), emitted

    class Vendor(Spy):
        reported = False

        def drain_events(self):
            if self.reported:
                return self._driver.drain_events()
            self.reported = True
            return [("link_gap", "3 frames lost"), ("vendor_thermal", "probe warm")]

    driver = Vendor(open_driver("sim://?seed=1"))
    driver.open()
    engine = Engine(driver, Quiet(), EngineConfig(fast=True, duration_s=0.05))
    try:
        engine.run()
    finally:
        driver.close()
    events = {e.message: e.kind for e in engine.recent_events}
    assert events["3 frames lost"] is EventKind.LINK_GAP
    unknown = events["probe warm"]
    assert unknown == "vendor_thermal" and not isinstance(unknown, EventKind)
    assert all(isinstance(e.kind, EventKind) for e in engine.recent_events
               if e.message != "probe warm")


class ByLabel(Protocol):
    """Names electrodes by label: a train on "45" and a pulse on channel 45 at 0.1 s, a
    burst sequence on "45" from 0.3 s, and trials on "12" through the trial helper."""

    def setup(self, ctx):
        self.can = (ctx.can_stimulate("45"), ctx.can_stimulate(45))
        self.sent = False
        ctx.use_trials(Trials(self.design, n_trials=2, stim_channels=["12"], isi_s=0.1,
                              window_ms=(5, 50), first_trial_s=0.6))

    def design(self, ctx, index):
        return TrialSpec(StimPattern.single("12", PULSE))

    def on_block(self, ctx, block, filtered):
        if not self.sent and ctx.now >= ctx.samples(0.1):
            self.sent = True
            ctx.stimulate(StimPattern.train("45", PULSE, pulses=3, rate_hz=100.0))
            ctx.stimulate(StimPattern.single(45, PULSE))
            for burst in StimPattern.bursts("45", PULSE, 2, 10.0, 2, 100.0,
                                            ctx.samples(0.3), ctx.sample_rate):
                ctx.stimulate(burst)


def test_electrodes_named_by_label_reach_the_device_on_their_channels():
    driver = open_driver("sim://?seed=1")
    driver.open()
    ran = []
    driver.pulse_listener = ran.extend  # the simulated device's own record of what ran
    proto = ByLabel()
    engine = Engine(driver, proto, EngineConfig(fast=True, duration_s=1.0))
    try:
        s = engine.run()
    finally:
        driver.close()
    layout = engine.info.layout
    label_45, label_12 = layout.channel("45"), layout.channel("12")
    assert (label_45, label_12) == (28, 1) and layout.labels[45] == "66"  # "45" is not 45
    assert s["error"] is None and s["stims_refused"] == 0 and proto.can == (True, True)
    by_channel = {}
    for sample, _, channel, _ in ran:
        by_channel.setdefault(channel, []).append(sample)
    assert sorted(by_channel) == [label_12, label_45, 45]
    train, bursts = by_channel[label_45][:3], by_channel[label_45][3:]
    assert np.diff(train).tolist() == [250, 250]  # 3 pulses at 100 Hz
    start = int(0.3 * 25_000)  # 2 bursts at 10 Hz, each 2 pulses at 100 Hz
    assert bursts == [start, start + 250, start + 2500, start + 2750]
    assert len(by_channel[45]) == 1 and len(by_channel[label_12]) == 2
    assert engine.trials.stim_channels == (label_12,)
    assert engine.trials.table().o.tolist() == [[1], [1]]
    # drivers, the gate and recordings see channel indices only
    assert all(not r.pattern.has_labels for r in engine.patterns.recent)


def test_an_unknown_label_is_a_protocol_error_naming_it_and_the_layout():
    class Unknown(Protocol):
        def on_block(self, ctx, block, filtered):
            ctx.stimulate(StimPattern.single("99", PULSE))

    engine, driver, s = run(Unknown(), duration_s=0.2)
    assert driver.sent == [] and s["error"] == "protocol"
    assert "ValueError: layout grid8x8_200um has no electrode '99'" in engine.error


class Outcomes(Protocol):
    """At 0.1 s: a pulse, a train of 3 at 100 Hz, a pulse for 0.3 s and one the gate
    refuses; it writes down what ctx.outcome says just after each send and what on_stim
    tells it."""

    def setup(self, ctx):
        self.tickets, self.at_send, self.told = {}, [], []
        self.in_stimulate = False

    def on_block(self, ctx, block, filtered):
        if ctx.now == ctx.start_sample + 2500:
            self.send(ctx, "pulse", StimPattern.single([10], PULSE))
            self.send(ctx, "train", StimPattern(((20, PULSE),), train_count=3,
                                                train_rate_hz=100.0, at_sample=ctx.now + 250))
            self.send(ctx, "cancelled", StimPattern.single([10], PULSE, at_sample=ctx.now + 5000))
            self.send(ctx, "refused", StimPattern.single([10], StimPulse.biphasic(50.0, 200.0)))

    def send(self, ctx, name, pattern):
        self.in_stimulate = True
        try:
            ticket = ctx.stimulate(pattern)
        finally:
            self.in_stimulate = False
        self.tickets[name] = ticket
        self.at_send.append(ctx.outcome(ticket).status)

    def on_stim(self, ctx, record):
        assert not self.in_stimulate
        self.told.append((record.ticket, record.status, record.execution_sample, ctx.now,
                          ctx.outcome(record.ticket) is record))


class StopsStimulationAt(Sink):
    """The operator's STOP at a device sample (after the run's start)."""

    def __init__(self, after):
        self.after, self.engine = after, None

    def on_clock(self, sample):
        if sample == self.engine.t0 + self.after:
            self.engine.stop_stimulation("stopped by the operator")


def run_with(protocol, sink, **config):
    driver = open_driver("sim://?seed=1")
    driver.open()
    engine = Engine(driver, protocol, EngineConfig(fast=True, **config), sinks=[sink])
    sink.engine = engine
    try:
        return engine, engine.run()
    finally:
        driver.close()


def test_on_stim_tells_each_final_fate_once_and_outcome_looks_tickets_up():
    protocol = Outcomes()
    engine, s = run_with(protocol, StopsStimulationAt(4000), duration_s=0.4)
    assert s["error"] is None and s["stims_refused"] == 1
    assert s["stims_executed"] == 2 and s["stims_dropped"] == 1
    assert protocol.at_send == ["sent", "sent", "sent"] and "refused" not in protocol.tickets
    sent_at = engine.t0 + 2500
    told = {ticket: rest for ticket, *rest in protocol.told}
    assert len(told) == len(protocol.told) == 3  # each ticket once, the refusal never
    status, executed, now, same = told[protocol.tickets["pulse"]]
    assert status == "executed" and executed >= sent_at and now >= executed and same
    # a train is told once its last pulse has run, 2 x 250 samples after its first
    status, executed, now, same = told[protocol.tickets["train"]]
    assert (status, executed) == ("executed", sent_at + 250) and now > executed + 500 and same
    status, executed, now, same = told[protocol.tickets["cancelled"]]
    assert status == "dropped" and engine.t0 + 4000 <= now < sent_at + 5000 and same
    assert engine.ctx.outcome(protocol.tickets["train"]).status == "executed"
    assert engine.ctx.outcome(12345) is None


class RaisesOnStim(Outcomes):
    def on_stim(self, ctx, record):
        raise RuntimeError("bad outcome handler")


def test_an_exception_in_on_stim_ends_the_run_as_a_protocol_error():
    engine, driver, s = run(RaisesOnStim(), duration_s=1.0)
    assert s["error"] == "protocol" and not s["stimulation_armed"]
    assert "bad outcome handler" in engine.error and s["duration_s"] < 0.2


class PausesAround(Sink):
    """Pauses the engine at 0.11 s and resumes it at 0.3 s (device time)."""

    engine = None

    def on_clock(self, sample):
        if sample == self.engine.t0 + 2750:
            self.engine.pause()
        elif sample == self.engine.t0 + 7500:
            self.engine.resume()


def test_a_fate_settled_while_paused_is_told_on_resume():
    class Later(Outcomes):
        def on_block(self, ctx, block, filtered):
            if ctx.now == ctx.start_sample + 2500:  # to run at 0.2 s, in the pause
                self.send(ctx, "pulse", StimPattern.single([10], PULSE, at_sample=ctx.now + 2500))

    protocol = Later()
    engine, _ = run_with(protocol, PausesAround(), duration_s=0.5)
    resumed = next(e.sample for e in engine.recent_events if e.kind == "resume")
    [(ticket, status, executed, now, _)] = protocol.told
    assert status == "executed" and executed == engine.t0 + 5000 and now == resumed
