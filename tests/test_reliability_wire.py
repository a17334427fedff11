"""The property over a pty (issue 19): random scenarios drive an in-process Engine on
serial:// against the simulated device served on a pty; the device's own log (its
``pulse_log``) is checked by the rules of benchmarks/reliability.py. Short form; the long
form is ``benchmarks/reliability.py --wire``."""

import sys

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
    WireBench,
    run_wire_scenario,
    scenarios,
)
from mea_control.types import StimPattern, StimPulse  # noqa: E402

#: The short form over the wire: each example runs seconds in real time.
WIRE = settings(SHORT, max_examples=4)
PULSE = 5.0, 200.0
TRAIN = Shot((9,), *PULSE, train_count=40, train_rate_hz=20.0, ahead_ms=100.0)  # 2 s

#: STOP from another thread through a booked train, then a re-arm and a pulse after it;
#: a hook hanging through a train; the served device dying mid-train.
STOP_CASE = Scenario(steps=(Step(100, "stim", TRAIN), Step(700, "stim", Shot((27,), *PULSE))),
                     acts=(Act("stop_stimulation", block=400), Act("rearm", block=600)),
                     real_time=True, blocks=1200)
HANG_CASE = Scenario(steps=(Step(100, "stim", TRAIN), Step(200, "hang", hang_s=0.8)),
                     real_time=True, blocks=1500)
LOSS_CASE = Scenario(steps=(Step(100, "stim", TRAIN),), link_loss_block=400, real_time=True,
                     blocks=1200)


@WIRE
@example(STOP_CASE)
@example(HANG_CASE)
@example(LOSS_CASE)
@given(scenarios(real_time=True))
def test_over_the_wire_no_pulse_breaks_a_limit_or_runs_when_nothing_may_run(scenario):
    outcome = run_wire_scenario(scenario)
    assert not outcome.violations, outcome.report()


def test_the_stop_case_runs_pulses_before_the_stop_and_after_the_rearm():
    outcome = run_wire_scenario(STOP_CASE)
    assert not outcome.violations, outcome.report()
    assert outcome.pulses >= 3  # some of the train before the STOP, the single pulse after


def test_a_pulse_after_the_devices_abort_is_found():
    """The wire bench's guards: a pattern sent before a STOP must not run after the device's
    abort that follows it; one pulse of it that did is a violation."""
    bench = WireBench()
    pulse = StimPulse.biphasic(*PULSE)
    bench.sent[1] = (bench.next(), bench.next(), StimPattern.single([9], pulse))
    bench.on_entry({"kind": "pulse", "sample": 100, "ticket": 1, "channel": 9,
                    "mode": "current", "amplitude": 5.0, "duration_us": 400.0})
    bench.fault("stop", guard_now=True)
    bench.on_entry({"kind": "pulse", "sample": 200, "ticket": 1, "channel": 9,
                    "mode": "current", "amplitude": 5.0, "duration_us": 400.0})
    bench.on_entry({"kind": "abort", "sample": 225})
    bench.on_entry({"kind": "pulse", "sample": 300, "ticket": 1, "channel": 9,
                    "mode": "current", "amplitude": 5.0, "duration_us": 400.0})
    bench.end = (bench.next(), len(bench.log))
    assert bench.resolve_guards() == {"stop": 1}  # the pulse between STOP and the abort

    from types import SimpleNamespace

    from benchmarks.reliability import late_violations

    device = SimpleNamespace(info=SimpleNamespace(sample_rate=25_000.0), wall_t0=0.0)
    found = late_violations(bench, Scenario(), device)
    assert [(v.rule, v.sample) for v in found] == [("after_stop", 300)]


def test_a_fault_is_guarded_by_the_devices_next_abort_not_an_earlier_one_at_the_same_length():
    """Found by the long form: an abort logged long before a fault, with no pulse between,
    sits at the same log length; the guard is the abort logged after the fault."""
    bench = WireBench()
    bench.on_entry({"kind": "abort", "sample": 100})  # an earlier STOP's
    bench.sent[1] = (bench.next(), bench.next(), StimPattern.single([0], StimPulse.biphasic(
        *PULSE)))
    bench.fault("disarm: the run has ended")
    bench.on_entry({"kind": "pulse", "sample": 200, "ticket": 1, "channel": 0,
                    "mode": "current", "amplitude": 5.0, "duration_us": 400.0})
    bench.on_entry({"kind": "abort", "sample": 225})
    assert bench.resolve_guards() == {"disarm": 1}
    assert bench.faults[0].guard == 1  # after the pulse: it ran before the device's abort
