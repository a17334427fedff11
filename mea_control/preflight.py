"""The check before a run starts: what the protocol will send, against the limits in force.

Both faces call :func:`check_start` once the device is open and before the run starts
(`mea-control run`, the GUI's Start), so that a value every trial would have had refused
stops the start instead. The protocol's :meth:`~mea_control.protocol.Protocol.planned_patterns`
gives the patterns it will send with its values on this device; each one passes the safety
gate's own admission rules on a fresh gate (and the device's stimulation modes). A refusal
becomes a :class:`~mea_control.protocol.ProtocolError` naming the value, the limit, whose
limit it is and the parameter that set it. A protocol that cannot tell (None) has its
declared amplitudes checked instead: a parameter in uA against max_current_uA, in mV
against max_voltage_mV. The plan may itself raise ProtocolError for a set-up that cannot
work on this device (electrodes the layout lacks, a calibration that cannot succeed).

Electrode labels in a plan are resolved on the device's layout (one it lacks stops the
start). Each planned pattern is checked on its own fresh gate: the pulses of one train are
checked together (its rate within ``burst_window_ms``, ``max_train_pulses``). A burst
sequence (the list :meth:`~mea_control.types.StimPattern.bursts` returns, given as one item
of the plan) is checked together on one gate at its samples, so the rates across its bursts
(``burst_rate_hz``, ``mean_rate_hz``) are checked before the run too. Rates from one planned
item to the next (one trial to the next, one burst sequence to the next, the pulse history
of earlier runs) are the gate's to refuse during the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mea_control.context import Context
from mea_control.limits import EPS, LIMIT_UNITS, SafetyLimits, effective_limits
from mea_control.protocol import Protocol, ProtocolError
from mea_control.safety import SafetyGate, SafetyRefusal, check_stim_mode
from mea_control.trials import Trials
from mea_control.types import DeviceInfo, StimPattern

__all__ = ["check_start"]

#: Declared units whose parameters are checked against a limit when a protocol has no plan.
_AMPLITUDE_LIMITS = {"uA": "max_current_uA", "mV": "max_voltage_mV"}


class _Planning:
    """The loop behind a plan's ``ctx``: the layout and the gate's electrode rules, a clock
    at 0, and no way to stimulate."""

    def __init__(self, gate: SafetyGate) -> None:
        self._gate = gate
        self.paused_samples = 0

    @property
    def now(self) -> int:
        return 0

    def stimulate(self, pattern: StimPattern, trigger_sample: int | None) -> int:
        raise RuntimeError("planned_patterns must not stimulate: it runs before the run")

    def can_stimulate(self, channel: int) -> bool:
        return self._gate.can_stimulate(channel)

    def log(self, message: str) -> None:
        pass

    def notify_decision(self, decision: dict[str, Any]) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_trials(self, trials: Trials) -> None:
        pass


def check_start(protocol: Protocol, info: DeviceInfo, limits: SafetyLimits,
                seed: int = 0) -> None:
    """Raise ProtocolError (one line) if ``protocol`` would send what the limits in force
    refuse on this device, or if its plan says it cannot work here.

    ``limits`` are the rig's (the defaults without a rig file); the device's own apply on
    top, as in the run. ``seed`` is the run's: the plan's ``ctx.rng`` draws as the run's
    will."""
    in_force, _ = effective_limits(limits, info.limits)
    gate = SafetyGate(in_force, info.layout, info.sample_rate)
    ctx = Context(_Planning(gate), info, 0, seed)
    try:
        patterns = protocol.planned_patterns(ctx)
    except ProtocolError as exc:
        raise ProtocolError(f"{protocol.name} cannot start: {exc}") from None
    if patterns is None:
        _check_declared(protocol, limits, in_force)
        return
    for planned in patterns:
        try:
            sequence = _resolved(planned, info)
        except ValueError as exc:  # a label the layout lacks, an unbooked sequence
            raise ProtocolError(f"{protocol.name} cannot start: {exc}") from None
        try:
            _admit_together(sequence, info, in_force)
        except SafetyRefusal as refusal:
            raise ProtocolError(_refused(protocol, refusal, limits, in_force)) from None


def _resolved(planned: StimPattern | Sequence[StimPattern],
              info: DeviceInfo) -> list[StimPattern]:
    """A planned pattern, or a burst sequence, with its labels resolved on this layout and
    its samples made relative to its first pattern (ValueError for a label the layout lacks
    or a sequence with a pattern that is not booked at a sample)."""
    if isinstance(planned, StimPattern):
        return [info.layout.resolve(replace(planned, at_sample=None))]
    group = list(planned)
    if any(p.at_sample is None for p in group):
        raise ValueError("a planned burst sequence books each of its patterns at a sample "
                         "(StimPattern.bursts)")
    first = min(p.at_sample for p in group)
    return [info.layout.resolve(replace(p, at_sample=p.at_sample - first)) for p in group]


def _admit_together(sequence: list[StimPattern], info: DeviceInfo,
                    in_force: SafetyLimits) -> None:
    """The patterns through the device's modes and one fresh gate, its clock at 0
    (SafetyRefusal)."""
    gate = SafetyGate(in_force, info.layout, info.sample_rate)
    for pattern in sequence:
        check_stim_mode(pattern, info)
        gate.admit(pattern, 0)


def _refused(protocol: Protocol, refusal: SafetyRefusal, limits: SafetyLimits,
             in_force: SafetyLimits) -> str:
    """'bss_isomura cannot start: current 500.00 uA on electrode 12 exceeds max_current_uA
    = 10.00 uA (the default limit); set by amplitude = 500'."""
    text = refusal.message.removeprefix("refused: ")
    source = _source(refusal.limit, limits, in_force)
    if source:
        text += f" ({source})"
    setters = _set_by(protocol, refusal.value, LIMIT_UNITS.get(refusal.limit, ""))
    if len(setters) == 1:
        text += f"; set by {setters[0]} = {protocol.values[setters[0]]:g}"
    return f"{protocol.name} cannot start: {text}"


def _source(limit: str, limits: SafetyLimits, in_force: SafetyLimits) -> str:
    """Whose limit this is: the device's (stricter than the rig's), the rig's (not the
    default) or the default; "" for rules that are not limits (layout roles, modes)."""
    if limit not in LIMIT_UNITS and limit != "forbidden":
        return ""
    if getattr(in_force, limit) != getattr(limits, limit):
        return "the device's limit"
    if getattr(limits, limit) != getattr(SafetyLimits(), limit):
        return "the rig's limit"
    return "the default limit"


def _set_by(protocol: Protocol, value: Any, unit: str) -> list[str]:
    """The numeric parameters whose value is the refused value; of several, those declared
    in the limit's ``unit`` (an amplitude of 20 uA, not a count of 20 pulses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    found = [name for name, v in protocol.values.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)
             and abs(v - value) <= EPS * max(1.0, abs(value))]
    in_unit = [name for name in found if unit and protocol.parameters[name].unit == unit]
    return in_unit if len(found) > 1 and in_unit else found


def _check_declared(protocol: Protocol, limits: SafetyLimits, in_force: SafetyLimits) -> None:
    """A protocol without a plan: its parameters declared in uA or mV against the limits."""
    for name, param in protocol.parameters.items():
        limit = _AMPLITUDE_LIMITS.get(param.unit)
        value = protocol.values[name]
        if limit is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        allowed = getattr(in_force, limit)
        if abs(value) > allowed * (1 + EPS):
            raise ProtocolError(
                f"{protocol.name} cannot start: {name} = {value:g} {param.unit} exceeds "
                f"{limit} = {allowed:g} {param.unit} ({_source(limit, limits, in_force)})")
