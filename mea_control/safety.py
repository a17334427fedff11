"""The safety gate every stimulation pattern passes before it reaches a driver.

:class:`SafetyGate` checks each pattern against the limits in force
(:class:`mea_control.limits.SafetyLimits`) and the electrode layout and raises
:class:`SafetyRefusal` naming the limit, the electrode, the value and the allowed value;
nothing of a refused pattern is recorded. The charge physics it checks with:
:func:`shannon_k`, :func:`pulse_imbalance`. See docs/safety.md.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Mapping
from typing import Any

from mea_control.limits import EPS, LIMIT_UNITS, SafetyLimits
from mea_control.types import DeviceInfo, Layout, StimPattern, StimPulse

RECENT_REFUSALS = 100


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


def check_stim_mode(pattern: StimPattern, info: DeviceInfo) -> None:
    """SafetyRefusal (limit "mode") if the device cannot deliver a pulse of the pattern in its
    mode (current or voltage). Channels outside the layout are left to the gate."""
    modes = info.capabilities.stim_modes
    for channel, pulse in pattern.pulses:
        if isinstance(channel, str) or not 0 <= channel < info.layout.n_electrodes:
            continue  # the gate refuses it, naming the layout's channels
        if pulse.mode not in modes:
            label = info.layout.labels[channel]
            raise SafetyRefusal(
                "mode", label, pulse.mode, modes,
                f"refused: {pulse.mode} stimulation on electrode {label}: "
                f"{info.name} supports {', '.join(modes) or 'no stimulation'}",
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
        if pattern.has_labels:  # Context.stimulate resolves them: a caller that did not
            label = next(e for e in pattern.channels if isinstance(e, str))
            raise SafetyRefusal(
                "electrode", label, label, "a channel index",
                f"refused: electrode label {label!r} was not resolved to a channel of layout "
                f"{self.layout.name} (Layout.resolve)",
            )
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
        if pulse.peak_amplitude > allowed * (1 + EPS):
            raise _exceeds(what, pulse.peak_amplitude, label, name, allowed)
        for duration, amplitude in pulse.phases:
            if amplitude == 0.0:
                continue  # an interphase gap
            if duration > lim.max_phase_us * (1 + EPS):
                raise _exceeds("phase duration", duration, label, "max_phase_us", lim.max_phase_us)
            if duration < lim.min_phase_us * (1 - EPS):
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
            if charge > lim.max_charge_nC * (1 + EPS):
                raise _exceeds(
                    "charge per phase", charge, label, "max_charge_nC", lim.max_charge_nC
                )
            if charge > 0:
                k = shannon_k(charge * 1e-3, self.layout.area_cm2(channel))
                if k > lim.max_shannon_k + EPS:
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
        if imbalance > lim.max_imbalance + EPS:
            raise _exceeds("charge imbalance", imbalance, label, "max_imbalance", lim.max_imbalance)

    def _check_timing(
        self, channel: int, pulse: StimPulse, new_starts: list[int]
    ) -> tuple[list[int], list[int]]:
        """Overlap and rate checks for new pulses on one channel; returns its new history.

        Plain sorted lists and bisect: an electrode's history is short (what fits
        in the longest window) and this runs inside the closed loop.
        """
        label = self.layout.labels[channel]
        length = max(1, int(math.ceil(pulse.duration_us * 1e-6 * self.sample_rate - EPS)))
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
            lo = bisect_right(starts, s - span + EPS)
            hi = bisect_right(starts, s)
            for first in range(lo, hi):
                last = first + max_pulses
                if last < len(starts) and starts[last] - starts[first] < span - EPS:
                    # window [starts[first], starts[first] + span) holds `count` pulses
                    count = bisect_left(starts, starts[first] + span - EPS) - first
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
