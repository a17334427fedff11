"""The response helper: windows after execution samples, in either order of spikes and
reports, refusals and drops, bounded memory, and evoked responses on the simulated culture."""

import numpy as np
import pytest

from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.layouts import load_layout
from mea_control.limits import SafetyLimits
from mea_control.protocol import Protocol
from mea_control.responses import Responses
from mea_control.safety import SafetyGate, SafetyRefusal
from mea_control.sinks import StimRecord
from mea_control.types import SpikeEvents, StimPattern, StimPulse

RATE = 1000.0  # 1 sample = 1 ms keeps the arithmetic readable
PULSE = StimPulse.biphasic(5.0, 200.0)
PROBE = StimPattern.single([3], PULSE)


class FakeCtx:
    """Stands in for the engine: a clock, tickets, and a real gate for refusals."""

    sample_rate = RATE
    n_channels = 8

    def __init__(self):
        self.now = 100
        self.records = []
        self.gate = SafetyGate(SafetyLimits(max_current_uA=10.0), load_layout(), RATE)

    def stimulate(self, pattern, trigger_sample=None):
        self.gate.admit(pattern, self.now)
        self.records.append(StimRecord(len(self.records), pattern, self.now, self.now))
        return len(self.records) - 1

    def outcome(self, ticket, status="executed", at=None):
        record = self.records[ticket]
        record.status = status
        record.execution_sample = self.now if at is None else at
        return record


def spikes(samples, channels):
    return SpikeEvents(np.array(samples), np.array(channels), np.full(len(samples), -60.0))


def batch(pairs):
    """(sample, channel) pairs as one spike batch."""
    return spikes([s for s, _ in pairs], [c for _, c in pairs])


def advance(responses, ctx, to, feed=()):
    """1-sample blocks up to ``to``: each block's spikes after its ready(), as the engine
    calls on_block before on_spikes."""
    out = []
    while ctx.now < to:
        ctx.now += 1
        out += responses.ready(ctx)
        block = [(s, c) for s, c in feed if ctx.now - 1 <= s < ctx.now]
        if block:
            responses.on_spikes(ctx, batch(block))
    return out


# spikes at 103 (before the window), 105 and 110 on channel 2, 120 on channel 5, 152 (after)
FEED = [(103, 2), (105, 2), (110, 2), (120, 5), (152, 2)]


def check(response, ticket):
    """Executed at 102; window (2, 50) ms: samples 104 to 151."""
    assert (response.ticket, response.label, response.execution_sample) == (ticket, "a", 102)
    assert response.window == (2, 50)
    assert response.counts.tolist() == [0, 0, 2, 0, 0, 1, 0, 0]
    assert response.latency.tolist() == [-1, -1, 3, -1, -1, 18, -1, -1]
    assert list(zip(response.spikes.sample, response.spikes.channel, strict=True)) == [
        (105, 2), (110, 2), (120, 5)]


def test_spikes_before_the_report_are_kept_for_its_window():
    ctx, responses = FakeCtx(), Responses(window_ms=(2, 50))
    ticket = responses.send(ctx, PROBE, label="a")
    assert advance(responses, ctx, 130, FEED) == []
    responses.on_stim(ctx, ctx.outcome(ticket, at=102))  # reported late, at 130
    assert advance(responses, ctx, 154, FEED) == []  # window end + settle not yet passed
    [response] = advance(responses, ctx, 200, FEED)
    check(response, ticket)
    assert responses.waiting == 0


def test_a_report_before_the_spikes_opens_the_window():
    ctx, responses = FakeCtx(), Responses(window_ms=(2, 50))
    ticket = responses.send(ctx, PROBE, label="a")
    advance(responses, ctx, 102)
    responses.on_stim(ctx, ctx.outcome(ticket, at=102))
    [response] = advance(responses, ctx, 200, FEED)
    check(response, ticket)


def test_a_block_is_counted_only_after_its_spikes_came():
    """ready() in on_block comes before that block's spikes: with 10-sample blocks, a
    window ending inside a block waits for the block after it."""
    ctx, responses = FakeCtx(), Responses(window_ms=(2, 50))
    ticket = responses.send(ctx, PROBE, label="a")
    ctx.now = 102
    responses.on_stim(ctx, ctx.outcome(ticket))
    got = []
    for stop in range(110, 200, 10):
        ctx.now = stop
        got += responses.ready(ctx)
        block = [(s, c) for s, c in FEED + [(149, 2), (151, 5)] if stop - 10 <= s < stop]
        if block:
            responses.on_spikes(ctx, batch(block))
    [response] = got
    assert response.counts.tolist() == [0, 0, 3, 0, 0, 2, 0, 0]


def test_refused_dropped_and_unreported_patterns_give_no_response():
    ctx, responses = FakeCtx(), Responses(window_ms=(2, 50), report_timeout_ms=100)
    with pytest.raises(SafetyRefusal):
        responses.send(ctx, StimPattern.single([3], StimPulse.biphasic(50.0, 200.0)))
    dropped = responses.send(ctx, PROBE)
    responses.send(ctx, StimPattern.single([4], PULSE))  # never reported
    assert responses.waiting == 2
    responses.on_stim(ctx, ctx.outcome(dropped, status="dropped"))
    assert advance(responses, ctx, 300, FEED) == []
    assert responses.waiting == 0  # forgotten 100 ms after it was due


def test_an_outcome_told_after_its_deadline_gives_no_response():
    """E.g. held back by a pause, during which the protocol heard no spikes."""
    ctx, responses = FakeCtx(), Responses(window_ms=(2, 50), report_timeout_ms=100)
    ticket = responses.send(ctx, PROBE)
    record = ctx.outcome(ticket, at=102)
    ctx.now = 203  # more than 100 ms after its (only) pulse
    responses.on_stim(ctx, record)
    assert advance(responses, ctx, 400, FEED) == [] and responses.waiting == 0


def test_memory_stays_bounded_on_a_long_run():
    ctx, responses = FakeCtx(), Responses(window_ms=(2, 50))
    rng = np.random.default_rng(0)
    got = 0
    for second in range(100):
        ticket = responses.send(ctx, PROBE, label=second)
        for _ in range(1000):
            ctx.now += 1
            if ctx.now == ctx.records[ticket].decision_sample + 5:
                responses.on_stim(ctx, ctx.outcome(ticket, at=ctx.now - 2))
            got += len(responses.ready(ctx))
            responses.on_spikes(ctx, spikes([ctx.now - 1] * 3, rng.integers(0, 8, 3)))
            assert len(responses._spikes) <= 70  # the open window and a few blocks
    assert got == 100


class ProbesOne(Protocol):
    """A 10 uA pulse on one electrode every 200 ms and its responses 1-10 ms after (the
    simulated network answers within 10 ms); every spike seen is kept, for the check."""

    def __init__(self, channel, probes=20):
        super().__init__()
        self.channel, self.probes = channel, probes

    def setup(self, ctx):
        self.responses = Responses(window_ms=(1.0, 10.0))
        self.got, self.seen, self.next_at = [], [], ctx.now + ctx.samples(0.2)
        self.pattern = StimPattern.single([self.channel], StimPulse.biphasic(10.0, 200.0))

    def on_block(self, ctx, block, filtered):
        if self.probes and ctx.now >= self.next_at:
            self.responses.send(ctx, self.pattern, label=self.channel)
            self.probes -= 1
            self.next_at += ctx.samples(0.2)
        self.got += self.responses.ready(ctx)
        if not self.probes and not self.responses.waiting:
            ctx.finish()

    def on_spikes(self, ctx, spikes):
        self.seen.append(spikes)
        self.responses.on_spikes(ctx, spikes)

    def on_stim(self, ctx, record):
        self.responses.on_stim(ctx, record)


def test_a_probe_evokes_more_spikes_on_its_neighbours_than_before_the_pulse():
    layout = load_layout()
    channel = layout.channel("45")
    near = np.flatnonzero((layout.distances_um(channel) > 0)
                          & (layout.distances_um(channel) < 300))
    protocol = ProbesOne(channel)
    driver = open_driver("sim://?seed=1&bursts=0")  # no network bursts in the baseline
    driver.open()
    try:
        summary = Engine(driver, protocol, EngineConfig(fast=True)).run()
    finally:
        driver.close()
    assert summary["error"] is None and summary["stims_executed"] == 20
    assert [r.label for r in protocol.got] == [channel] * 20
    seen = SpikeEvents.concat(protocol.seen)
    after = sum(int(r.counts[near].sum()) for r in protocol.got)
    before = 0
    for r in protocol.got:
        w0, w1 = r.window
        pre = seen.between(r.execution_sample - w1, r.execution_sample - w0)
        before += int(np.isin(pre.channel, near).sum())
    assert after >= 2 * before and after >= 10, (after, before)  # 24 and 6
    # the counts are the spikes the protocol saw in each window; latencies fall in it
    for r in protocol.got:
        inside = seen.between(r.execution_sample + r.window[0], r.execution_sample + r.window[1])
        assert r.counts.sum() == len(inside)
        hit = r.latency >= 0
        assert (r.counts[hit] > 0).all() and (r.counts[~hit] == 0).all()
        assert ((r.latency[hit] >= r.window[0]) & (r.latency[hit] < r.window[1])).all()
