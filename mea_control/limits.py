"""The stimulation limits in force: what they are and how they are read.

Limits are data (:class:`SafetyLimits`): defaults here, a rig file's ``[limits]`` may
change them (:func:`limits_from_table`, for :mod:`mea_control.rig`), and the device's own
limits always win where they are stricter (:func:`effective_limits`). Limits no pulse
could pass raise ValueError. :class:`mea_control.safety.SafetyGate` checks patterns
against them. See docs/safety.md.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: Unit of each numeric limit, for messages.
LIMIT_UNITS: dict[str, str] = {
    "max_voltage_mV": "mV",
    "max_current_uA": "uA",
    "min_phase_us": "us",
    "max_phase_us": "us",
    "max_charge_nC": "nC",
    "max_imbalance": "",
    "burst_rate_hz": "Hz",
    "burst_window_ms": "ms",
    "mean_rate_hz": "Hz",
    "mean_window_s": "s",
    "max_shannon_k": "",
    "max_train_pulses": "pulses",
}
#: Limits where a larger value is stricter; every other numeric limit is stricter when smaller.
_LARGER_IS_STRICTER = frozenset({"min_phase_us"})
_POSITIVE = frozenset({"burst_window_ms", "mean_window_s", "max_train_pulses"})
#: Longest allowed windows: the gate remembers every pulse of the longest window. Longest
#: train: the gate checks every pulse of a train while STOP waits for it.
_MAXIMUM = {"burst_window_ms": 10_000.0, "mean_window_s": 3600.0, "max_train_pulses": 65535.0}
#: Each rate limit with its window, and the window's length in seconds per unit.
_RATE_WINDOWS = (("burst_rate_hz", "burst_window_ms", 1e-3), ("mean_rate_hz", "mean_window_s", 1.0))
#: Float slack for comparisons against limits (values are user-facing, not bit-exact).
EPS = 1e-9


@dataclass(frozen=True)
class SafetyLimits:
    """Stimulation limits; every field is checked per electrode by the safety gate
    (:class:`mea_control.safety.SafetyGate`).

    Rates: at most ``burst_rate_hz * burst_window_ms / 1000`` pulses (10) in any
    ``burst_window_ms`` window and ``mean_rate_hz * mean_window_s`` pulses (400) in any
    ``mean_window_s`` window, per electrode. ``forbidden`` holds electrode labels.

    Every number must be finite and >= 0; the windows > 0, ``burst_window_ms`` at most
    10000 and ``mean_window_s`` at most 3600. Each rate limit must allow at least one
    pulse per window, and ``min_phase_us`` must not exceed ``max_phase_us``: limits no
    pulse could pass are a mistake, so they raise ValueError rather than refuse silently.
    """

    max_voltage_mV: float = 900.0
    max_current_uA: float = 10.0
    min_phase_us: float = 20.0
    max_phase_us: float = 500.0
    max_charge_nC: float = 4.0
    max_imbalance: float = 0.01
    burst_rate_hz: float = 200.0
    burst_window_ms: float = 50.0
    mean_rate_hz: float = 40.0
    mean_window_s: float = 10.0
    max_shannon_k: float = 1.85
    #: Pulses in one train (a pattern's ``train_count``).
    max_train_pulses: float = 1000.0
    forbidden: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in LIMIT_UNITS:
            object.__setattr__(self, name, _checked_number(name, getattr(self, name)))
        if self.min_phase_us > self.max_phase_us:
            raise ValueError(
                f"min_phase_us ({self.min_phase_us:g}) exceeds max_phase_us "
                f"({self.max_phase_us:g}); no pulse could pass"
            )
        for rate, window, seconds in _RATE_WINDOWS:
            per_window = getattr(self, rate) * getattr(self, window) * seconds
            if not math.isfinite(per_window):
                raise ValueError(f"{rate} ({getattr(self, rate):g} Hz) is too large")
            if per_window < 1 - EPS:
                raise ValueError(
                    f"{rate} x {window} allows {per_window:.3g} pulses per window "
                    f"({_fmt(rate, getattr(self, rate))} x {_fmt(window, getattr(self, window))})"
                    f"; no pulse could pass: raise {rate} or {window} to allow at least 1"
                )
        forbidden = self.forbidden
        if isinstance(forbidden, str) or not all(isinstance(x, str) for x in forbidden):
            raise ValueError(
                f"forbidden must be a list of electrode labels as strings, not {forbidden!r}"
            )
        object.__setattr__(self, "forbidden", tuple(sorted(set(forbidden), key=_label_key)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: SafetyLimits | None = None) -> SafetyLimits:
        """``base`` (default: the defaults) with ``values`` replaced; unknown keys -> ValueError."""
        _check_keys(values)
        values = dict(values)
        if "forbidden" in values and not isinstance(values["forbidden"], str):
            values["forbidden"] = tuple(values["forbidden"])
        return replace(base or cls(), **values)

    def as_dict(self) -> dict[str, Any]:
        """JSON/TOML-friendly values (``forbidden`` as a list)."""
        out = asdict(self)
        out["forbidden"] = list(self.forbidden)
        return out

    @property
    def burst_max_pulses(self) -> int:
        """Pulses allowed per electrode in any ``burst_window_ms`` window."""
        return int(math.floor(self.burst_rate_hz * self.burst_window_ms / 1000 + EPS))

    @property
    def mean_max_pulses(self) -> int:
        """Pulses allowed per electrode in any ``mean_window_s`` window."""
        return int(math.floor(self.mean_rate_hz * self.mean_window_s + EPS))


LIMIT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SafetyLimits))


def _checked_number(name: str, value: Any) -> float:
    """A numeric limit as float; ValueError unless a finite number in :func:`_allowed_range`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"safety limit {name} must be a number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"safety limit {name} must be a finite number >= 0, not {value}")
    if name in _POSITIVE and value == 0:
        raise ValueError(f"safety limit {name} must be > 0")
    if name in _MAXIMUM and value > _MAXIMUM[name]:
        raise ValueError(
            f"safety limit {name} must be <= {_fmt(name, _MAXIMUM[name])}, not {value:g}"
        )
    return value


def _allowed_range(name: str) -> str:
    """The values a numeric limit accepts, for messages: '>= 0', '> 0 and <= 3600'."""
    text = "> 0" if name in _POSITIVE else ">= 0"
    if name in _MAXIMUM:
        text += f" and <= {_MAXIMUM[name]:g}"
    return text


def _label_key(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isdigit() else (1, label)


def _check_keys(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(LIMIT_NAMES))
    if unknown:
        raise ValueError(
            f"unknown safety limit(s) {', '.join(unknown)}; accepted: {', '.join(LIMIT_NAMES)}"
        )


def _fmt(name: str, value: float) -> str:
    unit = LIMIT_UNITS.get(name, "")
    return f"{value:g} {unit}".rstrip()


def effective_limits(
    base: SafetyLimits, device_limits: Mapping[str, Any]
) -> tuple[SafetyLimits, list[str]]:
    """The limits in force: ``base`` (the rig's) with each device limit applied where it
    is stricter. Returns the limits and one human-readable note per value the device
    clamped."""
    _check_keys(device_limits)
    changes: dict[str, Any] = {}
    notes: list[str] = []
    for name, theirs in device_limits.items():
        ours = getattr(base, name)
        if name == "forbidden":
            if not isinstance(theirs, (list, tuple)) or not all(isinstance(x, str) for x in theirs):
                raise ValueError(f"device limit forbidden must be labels, not {theirs!r}")
            extra = sorted(set(theirs) - set(ours), key=_label_key)
            if extra:
                changes[name] = ours + tuple(extra)
                notes.append(f"the device also forbids electrode(s) {', '.join(extra)}")
            continue
        theirs = _checked_number(name, theirs)
        stricter = max(ours, theirs) if name in _LARGER_IS_STRICTER else min(ours, theirs)
        if stricter != ours:
            changes[name] = stricter
            notes.append(
                f"the device limits {name} to {_fmt(name, theirs)} "
                f"(the rig asks for {_fmt(name, ours)})"
            )
    if not changes:
        return base, notes
    try:
        return replace(base, **changes), notes
    except ValueError as exc:
        raise ValueError(f"the device's limits conflict with the rig's: {exc}") from None


# ---------------------------------------------------------------------------- a rig's limits


def limits_from_table(table: Mapping[str, Any]) -> tuple[SafetyLimits, list[str]]:
    """The limits a rig file's ``[limits]`` table sets (the defaults for the rest), and a note
    per limit it loosens ("loosens max_current_uA to 20 uA (default 10 uA)"). ValueError
    ("[limits] ...") naming the key and the fix."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in LIMIT_NAMES:
            close = difflib.get_close_matches(key, LIMIT_NAMES, n=1)
            hint = f"did you mean {close[0]}?" if close else f"accepted: {', '.join(LIMIT_NAMES)}"
            raise ValueError(f"unknown key [limits] {key}; {hint}")
        values[key] = _table_value(key, value)
    try:
        limits = SafetyLimits.from_dict(values)
    except ValueError as exc:
        raise ValueError(f"[limits] {exc}") from None
    return limits, _loosened(limits, values)


def _loosened(limits: SafetyLimits, keys: Iterable[str]) -> list[str]:
    """A note for each of ``keys`` whose limit is looser than its default."""
    defaults = SafetyLimits()
    notes = []
    for key in keys:
        if key == "forbidden":
            continue
        ours, default = getattr(limits, key), getattr(defaults, key)
        looser = ours < default if key in _LARGER_IS_STRICTER else ours > default
        if looser:
            notes.append(f"loosens {key} to {_fmt(key, ours)} (default {_fmt(key, default)})")
    return notes


def _table_value(key: str, value: Any) -> Any:
    """Check one [limits] value's type and sign; return it as SafetyLimits wants it."""
    if key == "forbidden":
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError(
                "[limits] forbidden must be a list of electrode labels "
                f'in quotes, e.g. forbidden = ["15", "27"], not {value!r}'
            )
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"[limits] {key} must be a number"
            + (f" in {LIMIT_UNITS[key]}" if LIMIT_UNITS[key] else "")
            + f", e.g. {key} = {getattr(SafetyLimits(), key):g}, not {value!r}"
        )
    try:
        return _checked_number(key, value)
    except ValueError:
        finite = "" if math.isfinite(value) else ", a finite number"
        raise ValueError(
            f"[limits] {key} = {value:g} is not allowed; give a value "
            f"{_allowed_range(key)}{finite} (default {getattr(SafetyLimits(), key):g})"
        ) from None
