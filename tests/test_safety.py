"""The safety gate: every limit checked per electrode, rates, arming."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mea_control.layouts import load_layout
from mea_control.limits import SafetyLimits
from mea_control.safety import SafetyGate, SafetyRefusal, pulse_imbalance, shannon_k
from mea_control.types import Layout, StimPattern, StimPulse

FS = 20_000.0
GRID = load_layout("grid8x8_200um")
CH34 = GRID.channel("34")


def bip(amplitude: float, duration_us: float = 200.0, mode: str = "current") -> StimPulse:
    return StimPulse.biphasic(amplitude, duration_us, mode=mode)


def single(pulse: StimPulse, channel: int = CH34, at: int | None = None) -> StimPattern:
    return StimPattern.single([channel], pulse, at_sample=at)


def train(pulse: StimPulse, count: int, rate: float, at: int, channel: int = CH34) -> StimPattern:
    return StimPattern(((channel, pulse),), train_count=count, train_rate_hz=rate, at_sample=at)


def make_gate(limits: SafetyLimits | None = None, layout: Layout = GRID) -> SafetyGate:
    return SafetyGate(limits or SafetyLimits(), layout, FS)


def tiny_layout(diameter_um: float) -> Layout:
    return Layout(
        name="tiny",
        labels=("big", "tiny"),
        positions_um=np.array([[0.0, 0.0], [100.0, 0.0]]),
        diameters_um=np.array([30.0, diameter_um]),
        can_stimulate=np.array([True, True]),
    )


def refused(gate: SafetyGate, pattern: StimPattern, now: int = 0) -> SafetyRefusal:
    """Admit must refuse; the gate's history and admitted count must not change."""
    before, admitted, n_refused = gate.history(), gate.admitted, gate.refused
    with pytest.raises(SafetyRefusal) as info:
        gate.admit(pattern, now)
    assert gate.history() == before and gate.admitted == admitted
    assert gate.refused == n_refused + 1 and gate.recent_refusals[-1] is info.value
    return info.value


# ---------------------------------------------------------------------------- pulse limits

IMBALANCED_IN = StimPulse("current", ((200.0, -5.0), (200.0, 5.05)))
IMBALANCED_OUT = StimPulse("current", ((200.0, -5.0), (200.0, 5.06)))


@pytest.mark.parametrize(
    "limit, inside, outside, value",
    [
        ("max_current_uA", bip(10.0), bip(10.01), 10.01),
        ("max_voltage_mV", bip(900.0, mode="voltage"), bip(901.0, mode="voltage"), 901.0),
        ("max_phase_us", bip(5.0, 500.0), bip(5.0, 501.0), 501.0),
        ("max_phase_us", bip(900.0, 500.0, "voltage"), bip(900.0, 510.0, "voltage"), 510.0),
        ("min_phase_us", bip(5.0, 20.0), bip(5.0, 19.9), 19.9),
        ("max_charge_nC", bip(10.0, 400.0), bip(10.0, 401.0), 4.01),
        ("max_charge_nC", bip(8.0, 500.0), bip(8.02, 500.0), 4.01),
        ("max_imbalance", IMBALANCED_IN, IMBALANCED_OUT, pulse_imbalance(IMBALANCED_OUT)),
        (
            "max_imbalance",
            StimPulse("voltage", ((100.0, -500.0), (100.0, 504.0))),
            StimPulse("voltage", ((100.0, -500.0), (100.0, 506.0))),
            2 * 6 / 1006,
        ),
        ("max_imbalance", bip(10.0), StimPulse("current", ((200.0, -10.0),)), 2.0),
    ],
)
def test_pulse_limit(limit: str, inside: StimPulse, outside: StimPulse, value: float) -> None:
    gate = make_gate()
    gate.admit(single(inside, channel=CH34 + 1), 0)
    refusal = refused(gate, single(outside))
    assert refusal.limit == limit and refusal.electrode == "34"
    assert refusal.value == pytest.approx(value)
    assert refusal.allowed == getattr(SafetyLimits(), limit)
    assert limit in str(refusal) and "34" in str(refusal)
    assert gate.admitted == 1 and gate.refused == 1


def test_refusal_message_names_everything() -> None:
    refusal = refused(make_gate(), single(bip(10.0, 500.0)))
    assert str(refusal) == (
        "refused: charge per phase 5.00 nC on electrode 34 exceeds max_charge_nC = 4.00 nC"
    )
    assert (refusal.limit, refusal.electrode) == ("max_charge_nC", "34")
    assert refusal.value == pytest.approx(5.0) and refusal.allowed == 4.0


def test_interphase_gap_is_not_a_phase() -> None:
    gate = make_gate()
    gate.admit(single(StimPulse.biphasic(5.0, 100.0, interphase_us=5.0)), 0)
    gate.admit(single(StimPulse.biphasic(5.0, 100.0, interphase_us=900.0), at=1000), 0)
    assert gate.admitted == 2


def test_every_electrode_of_a_pattern_is_checked() -> None:
    pattern = StimPattern(((GRID.channel("11"), bip(5.0)), (GRID.channel("88"), bip(12.0))))
    refusal = refused(make_gate(), pattern)
    assert refusal.limit == "max_current_uA" and refusal.electrode == "88"


# ---------------------------------------------------------------------------- Shannon k


def test_shannon_k_formula() -> None:
    area = math.pi * (15e-4) ** 2
    assert shannon_k(0.004, area) == pytest.approx(math.log10(0.004) + math.log10(0.004 / area))
    assert shannon_k(0.004, area) < 1.85  # 4 nC on a 30 um disc is far below k = 1.85


def test_shannon_k_default_electrode_vs_tiny_electrode() -> None:
    gate = make_gate(layout=tiny_layout(2.0))
    gate.admit(single(bip(10.0, 400.0), channel=0), 0)  # 4 nC on 30 um: k = 0.36
    refusal = refused(gate, single(bip(10.0, 400.0), channel=1))
    assert refusal.limit == "max_shannon_k" and refusal.electrode == "tiny"
    assert refusal.value == pytest.approx(shannon_k(0.004, math.pi * 1e-8))
    assert refusal.allowed == 1.85


def test_shannon_k_just_inside_and_outside() -> None:
    layout = tiny_layout(5.0)
    q_limit_nC = math.sqrt(layout.area_cm2(1) * 10**1.85) * 1e3  # k(Q) = 1.85
    gate = make_gate(layout=layout)
    gate.admit(single(bip(q_limit_nC * 0.99 / 0.4, 400.0), channel=1), 0)
    refusal = refused(gate, single(bip(q_limit_nC * 1.01 / 0.4, 400.0), channel=1, at=10_000))
    assert refusal.limit == "max_shannon_k" and refusal.value > 1.85


# ---------------------------------------------------------------------------- electrodes


def test_reference_electrode_is_refused() -> None:
    mcs = load_layout("mcs60mea200")
    refusal = refused(make_gate(layout=mcs), single(bip(5.0), channel=mcs.channel("15")))
    assert refusal.limit == "reference" and refusal.electrode == "15"


def test_ground_and_non_stimulating_electrodes_are_refused() -> None:
    layout = Layout(
        name="roles",
        labels=("a", "b", "c"),
        positions_um=np.zeros((3, 2)),
        diameters_um=np.full(3, 30.0),
        can_stimulate=np.array([True, False, True]),
        ground=(2,),
    )
    gate = make_gate(layout=layout)
    gate.admit(single(bip(5.0), channel=0), 0)
    assert refused(gate, single(bip(5.0), channel=2)).limit == "ground"
    refusal = refused(gate, single(bip(5.0), channel=1))
    assert refusal.limit == "can_stimulate" and refusal.electrode == "b"


def test_forbidden_electrodes_are_refused() -> None:
    gate = make_gate(SafetyLimits(forbidden=("27", "15")))
    gate.admit(single(bip(5.0), channel=GRID.channel("26")), 0)
    refusal = refused(gate, single(bip(5.0), channel=GRID.channel("27")))
    assert refusal.limit == "forbidden" and refusal.electrode == "27" and "15, 27" in str(refusal)


def test_channel_outside_the_layout_is_refused() -> None:
    refusal = refused(make_gate(), single(bip(5.0), channel=64))
    assert refusal.limit == "electrode" and "64" in str(refusal)


def test_forbidden_label_not_in_layout_is_an_error() -> None:
    with pytest.raises(ValueError, match="99.*grid8x8_200um"):
        make_gate(SafetyLimits(forbidden=("99",)))


# ---------------------------------------------------------------------------- rates


def test_burst_window_single_pulses() -> None:
    gate = make_gate()
    for i in range(10):  # 10 pulses in 45 ms
        gate.admit(single(bip(5.0), at=i * 100), 0)
    refusal = refused(gate, single(bip(5.0), at=999))  # 11 in [0, 50 ms)
    assert refusal.limit == "burst_rate_hz" and refusal.electrode == "34"
    assert refusal.value == pytest.approx(220.0) and refusal.allowed == 200.0
    assert refusal.sample == 999
    gate.admit(single(bip(5.0), at=1000), 0)  # the window [0, 1000) holds 10
    gate.admit(single(bip(5.0), channel=CH34 + 1, at=999), 0)  # other electrodes are separate


def test_burst_window_trains() -> None:
    gate = make_gate()
    gate.admit(train(bip(5.0), 11, 200.0, at=0), 0)  # exactly 200 Hz: 10 per 50 ms
    assert refused(gate, train(bip(5.0), 11, 201.0, at=0, channel=CH34 + 1)).limit == (
        "burst_rate_hz"
    )
    gate.admit(train(bip(5.0), 10, 1000.0, at=0, channel=CH34 + 2), 0)  # 10 in 9 ms
    assert refused(gate, single(bip(5.0), channel=CH34 + 2, at=999)).limit == "burst_rate_hz"
    gate.admit(single(bip(5.0), channel=CH34 + 2, at=1000), 0)
    # a train that would only break the limit together with the history is refused
    refusal = refused(gate, train(bip(5.0), 3, 200.0, at=1010, channel=CH34 + 2))
    assert refusal.limit == "burst_rate_hz"


def test_mean_window() -> None:
    gate = make_gate()
    gate.admit(train(bip(5.0), 400, 40.0, at=0), 0)  # 400 pulses over 9.975 s
    refusal = refused(gate, single(bip(5.0), at=199_999))
    assert refusal.limit == "mean_rate_hz" and refusal.allowed == 40.0
    assert refusal.value == pytest.approx(40.1)
    gate.admit(single(bip(5.0), at=200_000), 0)


def test_mean_window_with_bursts_at_the_burst_limit() -> None:
    gate = make_gate()
    for burst in range(40):  # 10 pulses every 1 s: 40 Hz in bursts of 200 Hz
        gate.admit(train(bip(5.0), 10, 200.0, at=burst * 5000), 0)
    refusal = refused(gate, single(bip(5.0), at=40 * 5000 - 1))
    assert refusal.limit == "mean_rate_hz"


def test_overlapping_pulses_are_refused() -> None:
    gate = make_gate()
    gate.admit(single(bip(5.0, 500.0), at=100), 0)  # 1 ms = 20 samples
    refusal = refused(gate, single(bip(5.0, 500.0), at=119))
    assert refusal.limit == "overlap" and refusal.electrode == "34"
    gate.admit(single(bip(5.0, 500.0), at=120), 0)
    gate.admit(single(bip(5.0, 500.0), channel=CH34 + 1, at=100), 0)
    assert refused(gate, train(bip(5.0, 500.0), 2, 2000.0, at=5000)).limit == "overlap"


def test_history_is_bounded() -> None:
    gate = make_gate()
    for i in range(2000):  # 20 Hz for 100 s, the clock following along
        gate.admit(single(bip(5.0), at=i * 1000), i * 1000)
    assert 200 <= len(gate.history()[CH34]) <= 201
    gate.admit(single(bip(5.0), channel=0), 10_000_000)
    assert set(gate.history()) == {0}


# ---------------------------------------------------------------------------- schedule, arming


def test_pattern_in_the_past_is_refused() -> None:
    gate = make_gate()
    refusal = refused(gate, single(bip(5.0), at=99), now=100)
    assert refusal.limit == "schedule" and refusal.value == 99 and refusal.allowed == 100
    gate.admit(single(bip(5.0), at=100), 100)
    gate.admit(single(bip(5.0)), 200)  # None means now
    assert gate.history()[CH34] == (100, 200)


def test_gate_clock_never_runs_backwards() -> None:
    gate = make_gate()
    gate.admit(single(bip(5.0)), 5000)
    assert refused(gate, single(bip(5.0), at=4000), now=3000).limit == "schedule"


def test_disarm_and_rearm() -> None:
    gate = make_gate()
    assert gate.armed
    gate.disarm("watchdog: loop 120 ms behind")
    assert not gate.armed and gate.disarm_reason == "watchdog: loop 120 ms behind"
    refusal = refused(gate, single(bip(5.0)))
    assert refusal.limit == "disarmed" and refusal.value == "watchdog: loop 120 ms behind"
    assert "watchdog" in str(refusal) and "34" in str(refusal)
    gate.rearm()
    assert gate.armed
    gate.admit(single(bip(5.0)), 0)
    assert (gate.admitted, gate.refused) == (1, 1)


def test_concurrent_admits_are_all_counted() -> None:
    gate = make_gate()
    start = threading.Barrier(4)
    errors: list[str] = []

    def work(channel: int) -> None:
        start.wait(timeout=5)
        for i in range(200):
            try:
                gate.admit(single(bip(5.0), channel=channel, at=i * 1000), 0)
            except SafetyRefusal as refusal:
                errors.append(refusal.limit)
            if channel == 0 and i % 50 == 0:
                gate.disarm("test")
                gate.rearm()

    threads = [threading.Thread(target=work, args=(ch,)) for ch in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert gate.admitted + gate.refused == 800 and gate.refused == len(errors)
    assert set(errors) <= {"disarmed"}
    admitted = sum(len(v) for v in gate.history().values())
    assert admitted == gate.admitted


# ---------------------------------------------------------------------------- longest windows


def test_longest_windows_and_one_pulse_per_window_make_a_working_gate() -> None:
    lim = SafetyLimits(burst_window_ms=10_000.0, burst_rate_hz=0.1, mean_window_s=3600.0)
    assert (lim.burst_max_pulses, lim.mean_max_pulses) == (1, 144_000)
    gate = make_gate(lim)
    gate.admit(single(bip(5.0)), 0)
    assert refused(gate, single(bip(5.0), at=int(10 * FS) - 1)).limit == "burst_rate_hz"
    gate.admit(single(bip(5.0), at=int(10 * FS)), 0)


# ---------------------------------------------------------------------------- property


SCALE = {"current": 12.0, "voltage": 1000.0}


def _satisfies_pulse_limits(pulse: StimPulse, channel: int, lim: SafetyLimits) -> bool:
    cap = lim.max_current_uA if pulse.mode == "current" else lim.max_voltage_mV
    if any(abs(a) > cap * (1 + 1e-9) for _, a in pulse.phases):
        return False
    active = [(d, a) for d, a in pulse.phases if a != 0]
    if any(
        not (lim.min_phase_us * (1 - 1e-9) <= d <= lim.max_phase_us * (1 + 1e-9)) for d, _ in active
    ):
        return False
    signed = [d * a for d, a in active]
    if signed and abs(sum(signed)) > lim.max_imbalance * sum(map(abs, signed)) / 2 + 1e-6:
        return False
    if pulse.mode == "current" and signed:
        q_nC = max(map(abs, signed)) / 1000
        if q_nC > lim.max_charge_nC * (1 + 1e-9):
            return False
        area = math.pi * (GRID.diameters_um[channel] / 2 * 1e-4) ** 2
        k = math.log10(q_nC / 1000) + math.log10(q_nC / 1000 / area)
        if k > lim.max_shannon_k + 1e-9:
            return False
    return True


pulses = st.builds(
    lambda mode, fraction, dur, ratio, gap: StimPulse(
        mode,
        ((dur, -fraction * SCALE[mode]), (gap, 0.0), (dur, fraction * SCALE[mode] * ratio))
        if gap
        else ((dur, -fraction * SCALE[mode]), (dur, fraction * SCALE[mode] * ratio)),
    ),
    st.sampled_from(["current", "voltage"]),
    st.floats(0.01, 1.1),
    st.floats(10.0, 600.0),
    st.sampled_from([1.0, 1.0, 1.0, 1.005, 1.02, 0.0]),
    st.sampled_from([0.0, 10.0]),
)
patterns = st.builds(
    lambda chans, pulse, count, rate, delay: (
        StimPattern(
            tuple((c, pulse) for c in chans),
            train_count=count,
            train_rate_hz=rate if count > 1 else 0.0,
        ),
        delay,
    ),
    st.sets(st.integers(0, 65), min_size=1, max_size=3),
    pulses,
    st.integers(1, 12),
    st.sampled_from([50.0, 200.0, 250.0, 1000.0]),
    st.integers(0, 1500),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(patterns, min_size=1, max_size=25))
def test_admitted_patterns_satisfy_every_limit(sequence) -> None:
    lim = SafetyLimits(forbidden=("27",), mean_rate_hz=20.0, mean_window_s=1.0)
    gate = make_gate(lim)
    now = 0
    sent: dict[int, list[int]] = {}
    for pattern, delay in sequence:
        now += delay
        try:
            gate.admit(pattern, now)
        except SafetyRefusal:
            continue
        for channel, pulse in pattern.pulses:
            assert 0 <= channel < GRID.n_electrodes
            assert GRID.labels[channel] not in lim.forbidden
            assert _satisfies_pulse_limits(pulse, channel, lim)
            sent.setdefault(channel, []).extend(now + o for o in pattern.pulse_offsets(FS))
    for starts in sent.values():
        s = np.sort(np.array(starts))
        for begin in s:
            assert np.count_nonzero((s >= begin) & (s < begin + 0.05 * FS)) <= 10
            assert np.count_nonzero((s >= begin) & (s < begin + 1.0 * FS)) <= 20


def test_can_stimulate_agrees_with_the_electrode_checks() -> None:
    mcs = load_layout("mcs60mea200")
    gate = make_gate(SafetyLimits(forbidden=("27",)), layout=mcs)
    allowed = [ch for ch in range(mcs.n_electrodes) if gate.can_stimulate(ch)]
    assert mcs.channel("15") not in allowed and mcs.channel("27") not in allowed
    assert len(allowed) == 58
    for ch in range(mcs.n_electrodes):
        pattern = StimPattern.single([ch], StimPulse.biphasic(5.0, 200.0))
        if ch in allowed:
            gate.admit(pattern, 0)
        else:
            with pytest.raises(SafetyRefusal):
                gate.admit(pattern, 0)


def test_a_label_that_was_not_resolved_never_passes_the_gate():
    gate = make_gate()
    with pytest.raises(SafetyRefusal, match="electrode label '34' was not resolved to a channel "
                                            "of layout grid8x8_200um") as caught:
        gate.admit(single(bip(5.0), channel="34"), 0)
    assert caught.value.limit == "electrode" and gate.refused == 1 and gate.history() == {}
    gate.admit(GRID.resolve(single(bip(5.0), channel="34")), 0)
    assert gate.history() == {CH34: (0,)}
