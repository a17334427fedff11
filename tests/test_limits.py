"""The limits in force: defaults, bad values, the device's limits where stricter."""

from __future__ import annotations

import math

import pytest

from mea_control.limits import LIMIT_NAMES, SafetyLimits, effective_limits


def test_defaults_and_as_dict() -> None:
    limits = SafetyLimits()
    d = limits.as_dict()
    assert tuple(d) == LIMIT_NAMES
    assert d["max_current_uA"] == 10.0 and d["forbidden"] == []
    assert (limits.burst_max_pulses, limits.mean_max_pulses) == (10, 400)
    assert SafetyLimits.from_dict(d) == limits


@pytest.mark.parametrize(
    "values, match",
    [
        ({"max_current_uA": -1.0}, "max_current_uA"),
        ({"burst_window_ms": 0.0}, "burst_window_ms"),
        ({"min_phase_us": 600.0}, "min_phase_us"),
        ({"max_charge_nC": "4"}, "max_charge_nC"),
        ({"forbidden": "15"}, "forbidden"),
        ({"max_amps": 1.0}, "max_amps"),
        ({"max_current_uA": math.nan}, "max_current_uA must be a finite number"),
        ({"max_voltage_mV": math.inf}, "max_voltage_mV must be a finite number"),
        ({"mean_window_s": 1e308}, r"mean_window_s must be <= 3600 s"),
        ({"burst_window_ms": 10_001.0}, r"burst_window_ms must be <= 10000 ms"),
        ({"mean_rate_hz": 1e308}, "mean_rate_hz"),
        ({"burst_window_ms": 1.0}, r"burst_rate_hz x burst_window_ms allows 0.2 pulses"),
        ({"burst_rate_hz": 0.0}, r"burst_rate_hz x burst_window_ms allows 0 pulses"),
        ({"mean_rate_hz": 0.05}, r"mean_rate_hz x mean_window_s allows 0.5 pulses"),
    ],
)
def test_bad_limits(values: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SafetyLimits.from_dict(values)


def test_device_limits_cannot_leave_less_than_one_pulse_per_window() -> None:
    with pytest.raises(
        ValueError, match="device's limits conflict.*burst_rate_hz x burst_window_ms"
    ):
        effective_limits(SafetyLimits(), {"burst_window_ms": 1.0})
    with pytest.raises(ValueError, match="device's limits conflict.*mean_rate_hz x mean_window_s"):
        effective_limits(SafetyLimits(), {"mean_rate_hz": 0.01})


def test_device_limits_stricter_wins() -> None:
    limits = SafetyLimits(max_current_uA=20.0, forbidden=("15",))
    tight, _ = effective_limits(
        limits,
        {
            "max_current_uA": 5.0,
            "max_voltage_mV": 2000.0,
            "min_phase_us": 50.0,
            "max_phase_us": 1000.0,
            "burst_rate_hz": 100.0,
            "forbidden": ["27", "15"],
        },
    )
    assert tight.max_current_uA == 5.0 and tight.max_voltage_mV == 900.0
    assert tight.min_phase_us == 50.0 and tight.max_phase_us == 500.0
    assert tight.burst_rate_hz == 100.0 and tight.forbidden == ("15", "27")
    assert effective_limits(limits, {}) == (limits, [])


def test_device_limits_unknown_keys_are_named() -> None:
    with pytest.raises(ValueError, match="max_amps, volts"):
        effective_limits(SafetyLimits(), {"volts": 1, "max_amps": 2, "max_current_uA": 3})


def test_effective_limits_notes() -> None:
    rig = SafetyLimits(max_current_uA=20.0, max_charge_nC=3.0)
    limits, notes = effective_limits(rig, {"max_current_uA": 15.0, "max_charge_nC": 5.0})
    assert limits.max_current_uA == 15.0 and limits.max_charge_nC == 3.0
    assert len(notes) == 1 and "max_current_uA" in notes[0] and "15 uA" in notes[0]
    assert "20 uA" in notes[0]
    _, notes = effective_limits(rig, {"forbidden": ["15"]})
    assert notes == ["the device also forbids electrode(s) 15"]
