"""The pattern log: what becomes of each pattern sent, in device samples."""

from mea_control.patterns import PatternLog
from mea_control.types import StimPattern, StimPulse, StimReport

FS = 25_000.0
PULSE = StimPulse.biphasic(5.0, 200.0)


def train(count: int = 5, rate_hz: float = 100.0) -> StimPattern:
    """``count`` pulses, one every 250 samples at 25 kHz."""
    return StimPattern(((3, PULSE),), train_count=count, train_rate_hz=rate_hz)


def test_a_single_pulse_is_final_once_reported_and_a_drop_says_why():
    log = PatternLog(FS)
    log.sent(1, StimPattern.single([2], PULSE), trigger=90, now=100)
    log.sent(2, StimPattern.single([4], PULSE), trigger=95, now=100)
    assert log.outstanding and set(log.pending) == {1, 2}
    ran = log.reported(StimReport(1, 130))
    dropped = log.reported(StimReport(2, 140, executed=False, reason="late"))
    assert (ran.status, ran.execution_sample, ran.trigger_sample) == ("executed", 130, 90)
    assert (dropped.status, dropped.reason) == ("dropped", "late")
    assert not log.running(ran) and not log.outstanding
    assert log.reported(StimReport(7, 150)) is None  # not one of ours
    assert list(log.recent) == [ran, dropped]


def test_a_train_is_final_after_its_last_pulse_not_before():
    log = PatternLog(FS)
    log.sent(1, train(), trigger=0, now=0)
    record = log.reported(StimReport(1, 1000))
    assert log.running(record) and log.outstanding
    last = 1000 + 4 * 250
    assert log.trains_done(last) == []  # the last pulse is at that sample: not yet run
    assert log.trains_done(last + 1) == [record]
    assert record.pulses_run is None and not log.outstanding


def test_a_cut_train_lists_only_the_pulses_that_ran():
    log = PatternLog(FS)
    log.sent(1, train(), trigger=0, now=0)
    record = log.reported(StimReport(1, 1000))
    assert log.cut(StimReport(1, 1600, pulses_run=3, reason="aborted")) is record
    assert record.pulses_run == 3 and "train cut after 3 of 5 pulses" in record.reason
    assert log.cut(StimReport(1, 1600, pulses_run=3)) is None  # cut once
    assert log.trains_done(10_000) == []


def test_at_the_end_trains_count_the_pulses_seen_and_unreported_patterns_stay_sent():
    log = PatternLog(FS)
    log.sent(1, train(), trigger=0, now=0)
    log.sent(2, StimPattern.single([5], PULSE), trigger=0, now=0)
    record = log.reported(StimReport(1, 1000))
    # the device's last block ended at 1501: pulses at 1000, 1250 and 1500 were seen
    assert log.trains_unknown(1501) == [record]
    assert record.pulses_run == 3 and "did not report where it stopped" in record.reason
    unreported = log.unreported()
    assert [r.ticket for r in unreported] == [2] and unreported[0].status == "sent"
    assert unreported[0] in log.recent


def test_refusals_are_kept_with_their_reason():
    log = PatternLog(FS)
    record = log.refused(StimPattern.single([1], PULSE), trigger=5, now=10, reason="too much")
    assert (record.ticket, record.status, record.reason) == (None, "refused", "too much")
    assert list(log.recent) == [record] and not log.outstanding


def test_outcome_looks_a_ticket_up_and_forgets_the_oldest_beyond_keep_recent(monkeypatch):
    monkeypatch.setattr("mea_control.patterns.KEEP_RECENT", 3)
    log = PatternLog(FS)
    for ticket in range(1, 5):
        log.sent(ticket, StimPattern.single([2], PULSE), trigger=0, now=0)
    assert log.outcome(1) is None and log.outcome(9) is None  # forgotten, never sent
    assert log.outcome(2).status == "sent"
    log.reported(StimReport(2, 130))
    assert (log.outcome(2).status, log.outcome(2).execution_sample) == ("executed", 130)
