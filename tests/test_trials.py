"""The trial helper: scheduling, response windows, baselines, refusals, the table."""

import numpy as np
import pytest

from mea_control.layouts import load_layout
from mea_control.limits import SafetyLimits
from mea_control.safety import SafetyGate
from mea_control.trials import Trials, TrialSpec, TrialTable
from mea_control.types import SpikeEvents, StimPattern, StimPulse, StimReport

RATE = 1000.0  # 1 sample = 1 ms keeps the arithmetic readable
PULSE = StimPulse.biphasic(5.0, 200.0)


class FakeCtx:
    """Stands in for the engine: hands out tickets, or refuses through a real gate."""

    def __init__(self, refuse=False):
        self.sent = []
        self.refuse = refuse
        self.layout = load_layout()
        self.gate = SafetyGate(SafetyLimits(max_current_uA=1.0), self.layout, RATE)

    def stimulate(self, pattern, trigger_sample=None):
        if self.refuse:
            self.gate.admit(pattern, trigger_sample)
        self.sent.append((pattern, trigger_sample))
        return len(self.sent) - 1


def design(ctx, index):
    if index % 2:
        return TrialSpec(None, (0, 1))
    return TrialSpec(StimPattern.single([3], PULSE), (1, 0))


def spikes(samples, channels):
    return SpikeEvents(np.array(samples), np.array(channels), np.full(len(samples), -60.0))


def make_trials(**kw):
    args = dict(n_trials=4, stim_channels=[3, 4], isi_s=1.0, window_ms=(10.0, 300.0),
                n_sources=2, trials_per_session=2, first_trial_s=1.0)
    args.update(kw)
    trials = Trials(design, **args)
    trials.attach(RATE, start_sample=100, n_channels=8)
    return trials


def run_blocks(trials, ctx, stop, feed=(), report_delay=1):
    """Advance 1-sample blocks; reports arrive report_delay samples after sending."""
    finished, sent_seen = [], 0
    for now in range(101, stop):
        for s, c in feed:
            if s == now - 1:
                trials.on_spikes(spikes([s], [c]))
        while sent_seen < len(ctx.sent):
            _, trig = ctx.sent[sent_seen]
            trials.on_report(StimReport(sent_seen, trig + report_delay))
            sent_seen += 1
        finished += trials.on_block(ctx, now)
    return finished


def test_trials_are_scheduled_every_isi_and_counted_in_the_window():
    trials, ctx = make_trials(), FakeCtx()
    # trial 0 triggers at 1100 and executes at 1101: window [1111, 1401)
    feed = [(1105, 0), (1111, 0), (1111, 2), (1400, 2), (1401, 2), (1000, 5), (900, 5)]
    done = run_blocks(trials, ctx, 5000, feed)
    assert [t.index for t in done] == [0, 1, 2, 3] and trials.done
    first = done[0]
    assert (first.trigger_sample, first.stim_sample, first.status) == (1100, 1101, "executed")
    assert first.r.tolist() == [1, 0, 2, 0, 0, 0, 0, 0]
    # baseline: the 290 samples before the trigger, [810, 1100)
    assert first.r_pre.tolist() == [0, 0, 0, 0, 0, 2, 0, 0]
    assert first.o.tolist() == [1, 0] and first.s.tolist() == [1, 0]
    assert done[1].status == "none" and done[1].stim_sample == done[1].trigger_sample == 2100
    assert [t.session for t in done] == [0, 0, 1, 1]
    assert [trig for _, trig in ctx.sent] == [1100, 3100]


def test_table_has_the_published_layout_and_round_trips(tmp_path):
    trials, ctx = make_trials(), FakeCtx()
    run_blocks(trials, ctx, 5000)
    table = trials.table()
    assert table.o.shape == (4, 2) and table.s.shape == (4, 2) and table.r.shape == (4, 8)
    table.save_npz(tmp_path / "t.npz")
    back = TrialTable.load_npz(tmp_path / "t.npz")
    for name in TrialTable.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))
    assert back.evoked_summary()["stimulated_trials"] == 2


def test_refused_pattern_makes_an_unstimulated_trial():
    trials, ctx = make_trials(n_trials=1), FakeCtx(refuse=True)
    done = run_blocks(trials, ctx, 2000)
    assert done[0].status == "refused" and ctx.sent == []
    assert ctx.gate.refused == 1
    assert done[0].o.tolist() == [0, 0]  # nothing was delivered


def test_missing_report_falls_back_to_the_decision_sample():
    trials, ctx = make_trials(n_trials=1), FakeCtx()
    finished = []
    for now in range(101, 2000):
        finished += trials.on_block(ctx, now)
    assert finished[0].status == "unconfirmed" and finished[0].stim_sample == 1100


def test_dropped_report_is_recorded():
    trials, ctx = make_trials(n_trials=1), FakeCtx()
    finished = []
    for now in range(101, 2000):
        if ctx.sent and now == 1102:
            trials.on_report(StimReport(0, 1101, executed=False, reason="busy"))
        finished += trials.on_block(ctx, now)
    assert finished[0].status == "dropped" and finished[0].o.tolist() == [0, 0]


def test_pattern_on_an_electrode_outside_the_design_is_an_error():
    def bad(ctx, index):
        return TrialSpec(StimPattern.single([7], PULSE))

    trials = Trials(bad, n_trials=1, stim_channels=[3])
    trials.attach(RATE, 0, 8)
    with pytest.raises(ValueError, match="channel 7 is not one of the design's stim_channels"):
        trials.on_block(FakeCtx(), 5000)


def test_bad_design_arguments():
    with pytest.raises(ValueError, match="n_trials"):
        Trials(design, n_trials=0, stim_channels=[1])
    with pytest.raises(ValueError, match="window_ms"):
        Trials(design, n_trials=1, stim_channels=[1], window_ms=(20, 10))



def test_on_scheduling_devices_trials_are_sent_ahead_for_their_exact_sample():
    trials, ctx = make_trials(n_trials=2, lead_ms=20.0), FakeCtx()
    trials.attach(RATE, start_sample=100, n_channels=8, scheduled=True)
    for now in range(101, 1080):
        trials.on_block(ctx, now)
    assert ctx.sent == []
    trials.on_block(ctx, 1080)  # 20 samples (ms) before the trigger at 1100
    (pattern, trigger), = ctx.sent
    assert trigger == 1100 and pattern.at_sample == 1100


def test_a_trial_started_late_goes_as_soon_as_possible():
    trials, ctx = make_trials(n_trials=1), FakeCtx()
    trials.attach(RATE, start_sample=100, n_channels=8, scheduled=True)
    trials.on_block(ctx, 1150)  # the loop was stalled past the trigger
    (pattern, trigger), = ctx.sent
    assert trigger == 1100 and pattern.at_sample is None
