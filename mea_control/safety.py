"""The safety gate every stimulation pattern passes before it reaches a driver.

Limits are data (:class:`SafetyLimits`): defaults here, a rig file's ``[limits]`` may
change them (:func:`limits_from_table`, for :mod:`mea_control.rig`), and the device's own
limits always win where they are stricter (:func:`effective_limits`). :class:`SafetyGate`
checks each pattern against the limits and the electrode layout and raises
:class:`SafetyRefusal` naming the limit, the electrode, the value and the allowed value;
nothing of a refused pattern is recorded.
See docs/safety.md.
"""

from __future__ import annotations

import difflib
import math
import threading
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mea_control.types import Layout, StimPattern, StimPulse

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
_EPS = 1e-9
RECENT_REFUSALS = 100


@dataclass(frozen=True)
class SafetyLimits:
    """Stimulation limits; every field is checked per electrode by :class:`SafetyGate`.

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
            if per_window < 1 - _EPS:
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
        return int(math.floor(self.burst_rate_hz * self.burst_window_ms / 1000 + _EPS))

    @property
    def mean_max_pulses(self) -> int:
        """Pulses allowed per electrode in any ``mean_window_s`` window."""
        return int(math.floor(self.mean_rate_hz * self.mean_window_s + _EPS))


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


# ---------------------------------------------------------------------------- the gate


class SafetyRefusal(Exception):
    """A pattern the gate refused: which limit, on which electrode, the value and the allowed.

    ``limit`` is a :class:`SafetyLimits` field name, or one of "disarmed", "closed", "schedule",
    "overlap", "electrode", "ground", "reference", "can_stimulate".
    """

    def __init__(
        self,
        limit: str,
        electrode: str | None,
        value: Any,
        allowed: Any,
        message: str = "",
        sample: int | None = None,
    ) -> None:
        self.limit = limit
        self.electrode = electrode
        self.value = value
        self.allowed = allowed
        self.sample = sample
        if not message:
            message = (
                f"refused: {limit} {value!r} on electrode {electrode} exceeds allowed {allowed!r}"
            )
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.limit, self.electrode, self.value, self.allowed, self.message, self.sample)
        return (type(self), args)


def _exceeds(
    what: str, value: float, label: str, limit: str, allowed: float, detail: str = ""
) -> SafetyRefusal:
    unit = LIMIT_UNITS[limit]
    u = f" {unit}" if unit else ""
    return SafetyRefusal(
        limit,
        label,
        value,
        allowed,
        f"refused: {what} {value:.2f}{u} on electrode {label} exceeds {limit} = {allowed:.2f}{u}"
        + (f" ({detail})" if detail else ""),
    )


def shannon_k(charge_uC: float, area_cm2: float) -> float:
    """Shannon's k = log10(Q) + log10(Q / A), Q in uC per phase and A in cm^2."""
    return math.log10(charge_uC) + math.log10(charge_uC / area_cm2)


def pulse_imbalance(pulse: StimPulse) -> float:
    """|sum of signed phase charges| / (half the sum of their magnitudes); 0 is balanced."""
    charges = pulse.phase_charges()
    total = sum(abs(q) for q in charges)
    return abs(sum(charges)) / (total / 2) if total else 0.0


def _overlap(label: str, start: int, prev: int, prev_end: int) -> SafetyRefusal:
    return SafetyRefusal(
        "overlap",
        label,
        start,
        prev_end,
        f"refused: pulse at sample {start} on electrode {label} overlaps the pulse at sample "
        f"{prev} (it lasts until sample {prev_end})",
        sample=start,
    )


class SafetyGate:
    """Checks every pattern against the limits and the layout; remembers what it admitted.

    ``admit`` raises :class:`SafetyRefusal` on the first violation and records nothing of a
    refused pattern. Admitted pulses are kept per electrode (start sample and length) for
    the rate and overlap checks, and dropped once older than the longest rate window. The
    gate's clock is the largest ``now_sample`` seen: it never runs backwards. Thread-safe.
    """

    def __init__(self, limits: SafetyLimits, layout: Layout, sample_rate: float) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, not {sample_rate}")
        unknown = [label for label in limits.forbidden if label not in layout.labels]
        if unknown:
            raise ValueError(
                f"forbidden electrode(s) {', '.join(unknown)} are not in layout {layout.name}; "
                "fix the rig file's [limits] forbidden list"
            )
        self.limits = limits
        self.layout = layout
        self.sample_rate = float(sample_rate)
        self.admitted = 0
        self.refused = 0
        self.recent_refusals: deque[SafetyRefusal] = deque(maxlen=RECENT_REFUSALS)
        self._lock = threading.Lock()
        self._armed = True
        self._disarm_reason = ""
        self._closed = ""
        self._clock: int | None = None
        self._forbidden = frozenset(limits.forbidden)
        self._burst_span = limits.burst_window_ms * 1e-3 * self.sample_rate
        self._mean_span = limits.mean_window_s * self.sample_rate
        self._keep = int(math.ceil(max(self._burst_span, self._mean_span))) + 1
        # channel -> (start samples, lengths in samples), sorted by start
        self._history: dict[int, tuple[list[int], list[int]]] = {}

    # -- arming ------------------------------------------------------------------

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._armed

    @property
    def disarm_reason(self) -> str:
        with self._lock:
            return self._disarm_reason

    def disarm(self, reason: str) -> None:
        """Refuse every pattern (limit "disarmed") until :meth:`rearm`."""
        with self._lock:
            self._armed = False
            self._disarm_reason = reason or "no reason given"

    def rearm(self) -> None:
        """Admit patterns again after :meth:`disarm` (a person's decision)."""
        with self._lock:
            self._armed = True
            self._disarm_reason = ""

    def close(self, reason: str) -> None:
        """Refuse every pattern from now on (limit "closed"): the run has ended.
        Unlike :meth:`disarm`, no re-arm undoes it, and ``armed`` keeps the operator's state."""
        with self._lock:
            self._closed = reason

    # -- admission ---------------------------------------------------------------

    def admit(self, pattern: StimPattern, now_sample: int) -> None:
        """Admit ``pattern`` (recording its pulses) or raise :class:`SafetyRefusal`."""
        with self._lock:
            try:
                updates = self._check(pattern, int(now_sample))
            except SafetyRefusal as refusal:
                self.refused += 1
                self.recent_refusals.append(refusal)
                raise
            self._history.update(updates)
            self.admitted += 1

    def history(self) -> dict[int, tuple[int, ...]]:
        """Start samples of the admitted pulses that still count for a limit, by channel."""
        with self._lock:
            cutoff = (self._clock or 0) - self._keep
            recent = {
                ch: tuple(starts[bisect_right(starts, cutoff):])
                for ch, (starts, _) in self._history.items()
            }
            return {ch: st for ch, st in recent.items() if st}

    def export_history(self, now_sample: int) -> dict[int, list[tuple[int, int]]]:
        """(start, length) in samples of every remembered pulse that may still share a rate
        window with ``now_sample`` or later (scheduled pulses included), by channel."""
        with self._lock:  # slices only: STOP's disarm waits for this lock
            cutoff = max(self._clock or now_sample, now_sample) - self._keep
            kept = {}
            for channel, (starts, lengths) in self._history.items():
                k = bisect_right(starts, cutoff)
                if k < len(starts):
                    kept[channel] = (starts[k:], lengths[k:])
        return {ch: list(zip(st, ln, strict=True)) for ch, (st, ln) in kept.items()}

    def import_history(
        self, pulses: Mapping[int, list[tuple[int, int]]], now_sample: int
    ) -> None:
        """Remember pulses admitted elsewhere (a previous run, mapped onto this gate's
        clock) as if admitted here; those too old to share a window with ``now_sample``
        are dropped. Counters are unchanged."""
        with self._lock:
            cutoff = int(now_sample) - self._keep
            for channel, given in pulses.items():
                merged = sorted(
                    [p for p in given if p[0] > cutoff]
                    + list(zip(*self._history.get(channel, ([], [])), strict=True))
                )
                if merged:
                    starts, lengths = zip(*merged, strict=True)
                    self._history[int(channel)] = ([int(s) for s in starts],
                                                   [max(1, int(n)) for n in lengths])

    def _check(
        self, pattern: StimPattern, now_sample: int
    ) -> dict[int, tuple[list[int], list[int]]]:
        """Every check; returns the new history of the pattern's channels, changes nothing."""
        if self._clock is None or now_sample > self._clock:
            self._clock = now_sample
        self._prune(pattern.channels)
        now = self._clock
        first = self._label(pattern.channels[0])
        if self._closed:
            raise SafetyRefusal(
                "closed", first, self._closed, "a run in progress",
                f"refused: pattern on electrode {first} not sent: {self._closed}",
            )
        if not self._armed:
            raise SafetyRefusal(
                "disarmed",
                first,
                self._disarm_reason,
                "armed",
                f"refused: stimulation is disarmed ({self._disarm_reason}); pattern on "
                f"electrode {first} not sent; a person must re-arm",
            )
        if pattern.train_count > self.limits.max_train_pulses:
            raise SafetyRefusal(
                "max_train_pulses", first, pattern.train_count, self.limits.max_train_pulses,
                f"refused: a train of {pattern.train_count} pulses on electrode {first} exceeds "
                f"max_train_pulses = {self.limits.max_train_pulses:g}",
            )
        start = now if pattern.at_sample is None else int(pattern.at_sample)
        if start < now:
            raise SafetyRefusal(
                "schedule",
                first,
                start,
                now,
                f"refused: pattern on electrode {first} scheduled at sample {start}, "
                f"before now (sample {now})",
                sample=start,
            )
        for channel, pulse in pattern.pulses:
            self._check_electrode(channel)
            self._check_pulse(channel, pulse)
        starts = [start + offset for offset in pattern.pulse_offsets(self.sample_rate)]
        updates = {}
        for channel, pulse in pattern.pulses:
            updates[channel] = self._check_timing(channel, pulse, starts)
        return updates

    def _label(self, channel: int) -> str:
        if 0 <= channel < self.layout.n_electrodes:
            return self.layout.labels[channel]
        return f"#{channel}"

    def can_stimulate(self, channel: int) -> bool:
        """Whether any pattern on this electrode could pass (layout roles, forbidden list)."""
        try:
            self._check_electrode(channel)
        except SafetyRefusal:
            return False
        return True

    def _check_electrode(self, channel: int) -> None:
        layout = self.layout
        if not 0 <= channel < layout.n_electrodes:
            raise SafetyRefusal(
                "electrode",
                f"#{channel}",
                channel,
                f"0..{layout.n_electrodes - 1}",
                f"refused: channel {channel} is not in layout {layout.name} "
                f"(channels 0..{layout.n_electrodes - 1})",
            )
        label = layout.labels[channel]
        for role, channels in (("ground", layout.ground), ("reference", layout.reference)):
            if channel in channels:
                raise SafetyRefusal(
                    role,
                    label,
                    role,
                    "a stimulating electrode",
                    f"refused: electrode {label} is the layout's {role} electrode",
                )
        if not layout.can_stimulate[channel]:
            raise SafetyRefusal(
                "can_stimulate",
                label,
                False,
                True,
                f"refused: layout {layout.name} marks electrode {label} as unable to stimulate",
            )
        if label in self._forbidden:
            raise SafetyRefusal(
                "forbidden",
                label,
                label,
                "not forbidden",
                f"refused: electrode {label} is forbidden "
                f"(forbidden = {', '.join(self.limits.forbidden)})",
            )

    def _check_pulse(self, channel: int, pulse: StimPulse) -> None:
        lim = self.limits
        label = self.layout.labels[channel]
        if pulse.mode == "current":
            name, what, allowed = "max_current_uA", "current", lim.max_current_uA
        else:
            name, what, allowed = "max_voltage_mV", "voltage", lim.max_voltage_mV
        if pulse.peak_amplitude > allowed * (1 + _EPS):
            raise _exceeds(what, pulse.peak_amplitude, label, name, allowed)
        for duration, amplitude in pulse.phases:
            if amplitude == 0.0:
                continue  # an interphase gap
            if duration > lim.max_phase_us * (1 + _EPS):
                raise _exceeds("phase duration", duration, label, "max_phase_us", lim.max_phase_us)
            if duration < lim.min_phase_us * (1 - _EPS):
                raise SafetyRefusal(
                    "min_phase_us",
                    label,
                    duration,
                    lim.min_phase_us,
                    f"refused: phase duration {duration:.2f} us on electrode {label} is below "
                    f"min_phase_us = {lim.min_phase_us:.2f} us",
                )
        if pulse.mode == "current":
            charge = max(abs(q) for q in pulse.phase_charges()) if pulse.peak_amplitude else 0.0
            if charge > lim.max_charge_nC * (1 + _EPS):
                raise _exceeds(
                    "charge per phase", charge, label, "max_charge_nC", lim.max_charge_nC
                )
            if charge > 0:
                k = shannon_k(charge * 1e-3, self.layout.area_cm2(channel))
                if k > lim.max_shannon_k + _EPS:
                    raise _exceeds(
                        "Shannon k",
                        k,
                        label,
                        "max_shannon_k",
                        lim.max_shannon_k,
                        f"{charge:.2f} nC per phase on a "
                        f"{self.layout.diameters_um[channel]:g} um electrode",
                    )
        imbalance = pulse_imbalance(pulse)
        if imbalance > lim.max_imbalance + _EPS:
            raise _exceeds("charge imbalance", imbalance, label, "max_imbalance", lim.max_imbalance)

    def _check_timing(
        self, channel: int, pulse: StimPulse, new_starts: list[int]
    ) -> tuple[list[int], list[int]]:
        """Overlap and rate checks for new pulses on one channel; returns its new history.

        Plain sorted lists and bisect: an electrode's history is short (what fits
        in the longest window) and this runs inside the closed loop.
        """
        label = self.layout.labels[channel]
        length = max(1, int(math.ceil(pulse.duration_us * 1e-6 * self.sample_rate - _EPS)))
        old_starts, old_lengths = self._history.get(channel, ([], []))
        starts, lengths = list(old_starts), list(old_lengths)
        for s in new_starts:
            i = bisect_right(starts, s)
            if i > 0 and starts[i - 1] + lengths[i - 1] > s:
                prev, prev_end = starts[i - 1], starts[i - 1] + lengths[i - 1]
                raise _overlap(label, s, prev, prev_end)
            if i < len(starts) and s + length > starts[i]:
                raise _overlap(label, starts[i], s, s + length)
            starts.insert(i, s)
            lengths.insert(i, length)
        lim = self.limits
        burst_window, mean_window = f"{lim.burst_window_ms:g} ms", f"{lim.mean_window_s:g} s"
        for name, span, max_pulses, window in (
            ("burst_rate_hz", self._burst_span, lim.burst_max_pulses, burst_window),
            ("mean_rate_hz", self._mean_span, lim.mean_max_pulses, mean_window),
        ):
            refusal = self._window_refusal(
                starts, new_starts, span, max_pulses, name, window, label, getattr(lim, name)
            )
            if refusal is not None:
                raise refusal
        return starts, lengths

    def _window_refusal(
        self,
        starts: list[int],
        new_starts: list[int],
        span: float,
        max_pulses: int,
        name: str,
        window: str,
        label: str,
        rate: float,
    ) -> SafetyRefusal | None:
        """A refusal if a window of ``span`` samples around a new pulse holds too many starts.

        The admitted history already kept the limit, so only windows that
        contain a new pulse need checking: those starting at a pulse in
        ``(s - span, s]``.
        """
        if len(starts) <= max_pulses:
            return None
        for s in new_starts:
            lo = bisect_right(starts, s - span + _EPS)
            hi = bisect_right(starts, s)
            for first in range(lo, hi):
                last = first + max_pulses
                if last < len(starts) and starts[last] - starts[first] < span - _EPS:
                    # window [starts[first], starts[first] + span) holds `count` pulses
                    count = bisect_left(starts, starts[first] + span - _EPS) - first
                    value = count / (span / self.sample_rate)
                    return SafetyRefusal(
                        name,
                        label,
                        value,
                        rate,
                        f"refused: {count} pulses in {window} ({value:.2f} Hz) on electrode "
                        f"{label} exceeds {name} = {rate:.2f} Hz (at most {max_pulses} pulses "
                        f"in any {window})",
                        sample=int(starts[last]),
                    )
        return None

    def _prune(self, channels: tuple[int, ...]) -> None:
        """Forget the pulses of these electrodes that can no longer share a window with now.

        Only the electrodes of the pattern at hand are pruned, which keeps admit
        cheap; an electrode's history is bounded by what fits in the longest window.
        """
        assert self._clock is not None
        cutoff = self._clock - self._keep
        for channel in channels:
            if channel not in self._history:
                continue
            starts, lengths = self._history[channel]
            k = bisect_right(starts, cutoff)
            if k == len(starts):
                del self._history[channel]
            elif k:
                self._history[channel] = (starts[k:], lengths[k:])
