"""STOP means stop, from the device's own record: the property (short form) and the
defects it found, kept as regression tests (each failed on the engine before 548c09a).
The harness is benchmarks/reliability.py, whose long form runs 10,000 random actions."""

import sys

import pytest
from conftest import ROOT
from hypothesis import example, given, settings

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.reliability import (  # noqa: E402
    SHORT,
    Act,
    Scenario,
    Shot,
    Step,
    limit_violations,
    run_scenario,
    scenarios,
)
from mea_control.driver import open_driver  # noqa: E402
from mea_control.limits import SafetyLimits  # noqa: E402
from mea_control.types import StimPattern, StimPulse, StimReport  # noqa: E402

PULSE = 5.0, 200.0  # uA, us: within every default limit


def breaks(scenario, rule="", **kwargs):
    """The scenario's violations of ``rule`` (a prefix; every rule by default), as text."""
    outcome = run_scenario(scenario, **kwargs)
    hits = [v for v in outcome.violations if v.rule.startswith(rule)]
    return outcome.report() if hits else ""


#: Shortest counterexamples on the engine before 548c09a, tried first (Phase.explicit):
#: the check-then-send race, a train cut by STOP, a hook hanging through a booked train.
RACE_CASE = Scenario(steps=(Step(10, "stim", Shot((9,), *PULSE, ahead_ms=50.0)),),
                     acts=(Act("stop_stimulation", send=1),))
CUT_CASE = Scenario(steps=(Step(10, "stim", Shot((9,), *PULSE, train_count=20,
                                                 train_rate_hz=100.0, ahead_ms=5.0)),),
                    acts=(Act("stop_stimulation", block=50, sync=True),))
HANG_CASE = Scenario(steps=(Step(50, "stim", Shot((9,), *PULSE, train_count=40,
                                                  train_rate_hz=20.0, ahead_ms=100.0)),
                            Step(60, "hang", hang_s=0.8)), real_time=True, blocks=1500)


@SHORT
@example(RACE_CASE)
@example(CUT_CASE)
@given(scenarios())
def test_no_pulse_breaks_a_limit_or_runs_when_nothing_may_run(scenario):
    assert not breaks(scenario)


@settings(SHORT, max_examples=3)
@example(HANG_CASE)
@given(scenarios(real_time=True))
def test_in_real_time_with_hangs_too(scenario):
    assert not breaks(scenario)


# -- the defects found, each its shortest counterexample; all but the last fixed in 548c09a --
def test_a_stop_between_admission_and_send_cancels_the_pattern():
    # the gate admits a pulse booked 50 ms ahead; STOP lands before the device has it
    # (2 s for the STOP: a fixed engine makes it wait for the send, then it goes on)
    assert not breaks(RACE_CASE, "after_stop", at_send_wait_s=2.0)


def test_a_hung_hook_is_caught_by_the_watchdog_while_it_hangs():
    # a 2 s train at 20 Hz booked 100 ms ahead, then the hook hangs for 0.8 s (watchdog 100 ms)
    assert not breaks(HANG_CASE, "after_hang")


@pytest.mark.parametrize("end", ["duration", "operator", "protocol_error", "link_loss"])
def test_nothing_booked_runs_after_the_run_ended(end):
    # a pulse booked 200 ms ahead 20 ms before the end; the run ends four ways
    steps = [Step(280, "stim", Shot((9,), *PULSE, ahead_ms=200.0))]
    acts, loss = (), None
    if end == "operator":
        acts = (Act("stop", block=290, sync=True),)
    elif end == "protocol_error":
        steps.append(Step(285, "raise"))
    elif end == "link_loss":
        loss = 290
    scenario = Scenario(steps=tuple(steps), acts=acts, link_loss_block=loss)
    assert not breaks(scenario, "after_")


def test_a_train_cut_by_stop_is_recorded_as_far_as_it_ran():
    # 20 pulses at 100 Hz from block 15; STOP at block 50, four pulses in
    assert not breaks(CUT_CASE, "record:")


def test_a_pattern_reported_executed_runs_though_an_abort_follows_the_report():
    """sim:// reports a pattern executed with the block that holds its pulse (one step):
    an abort after the report cannot leave the report claiming a pulse that never ran
    (it raised KeyError here before the fix)."""
    driver = open_driver("sim://?seed=1&truth=0&culture=poisson_burst")
    driver.open()
    driver.set_fast(True)
    driver.start()
    log = []
    driver.pulse_listener = log.extend
    driver.read()
    driver.stimulate(StimPattern.single([9], StimPulse.biphasic(*PULSE)))
    report = driver.read()  # reported executed, before the block that holds the pulse
    assert report.executed
    driver.abort_stimulation()
    later = [driver.read() for _ in range(3)]
    assert [sample for sample, *_ in log] == [report.sample]
    assert not any(isinstance(r, StimReport) for r in later)


# -- the harness's own checks can fail ------------------------------------------------------
def test_a_legal_run_with_stop_and_rearm_passes():
    # pulses now and ahead, a STOP, a re-arm, then pulses again: nothing to report
    shot = Shot((9, 27), *PULSE, ahead_ms=10.0)
    scenario = Scenario(steps=(Step(10, "stim", shot), Step(100, "stim", shot),
                               Step(200, "stim", shot)),
                        acts=(Act("stop_stimulation", block=50, sync=True),
                              Act("rearm", block=150, sync=True)))
    outcome = run_scenario(scenario)
    assert outcome.violations == [] and outcome.pulses == 4


def test_the_checker_sees_every_limit_broken_in_a_log():
    """The log check is independent of the gate: hand it pulses the gate would refuse."""
    from mea_control.layouts import load_layout

    layout, fs = load_layout("mcs60mea200"), 25_000.0
    limits = SafetyLimits(forbidden=("12",))
    ok = StimPulse.biphasic(*PULSE)
    log = [
        (0, 1, 64, ok),  # no such electrode
        (0, 2, 3, ok),  # the reference electrode
        (0, 3, layout.labels.index("12"), ok),
        (0, 4, 5, StimPulse.biphasic(11.0, 200.0)),
        (0, 5, 6, StimPulse.biphasic(1000.0, 200.0, mode="voltage")),
        (0, 6, 7, StimPulse.biphasic(1.0, 10.0)),
        (0, 7, 8, StimPulse.biphasic(9.0, 480.0)),  # 4.3 nC
        (0, 8, 9, StimPulse("current", ((200.0, -5.0), (200.0, 4.0)))),
        (0, 9, 10, ok), (3, 9, 10, ok),  # overlap
    ] + [(i * 100, 10, 11, ok) for i in range(11)]  # 11 pulses in 40 ms
    rules = {v.rule for v in limit_violations(log, limits, layout, fs)}
    assert rules == {"limit:electrode", "limit:forbidden", "limit:max_current",
                     "limit:max_voltage", "limit:phase_us", "limit:max_charge_nC",
                     "limit:max_imbalance", "limit:overlap", "limit:burst_rate_hz"}
    low_k = SafetyLimits(max_shannon_k=0.0)
    strong = StimPulse.biphasic(9.0, 400.0)  # 3.6 nC per phase: k = 0.26 on 30 um
    assert {v.rule for v in limit_violations([(0, 1, 9, strong)], low_k, layout, fs)} == {
        "limit:max_shannon_k"}
