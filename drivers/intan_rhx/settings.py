"""Our parameters <-> RHX's: pulses as RHS channel items, the rig file's tables.

Pure functions, no socket: ``rhs_settings`` maps a StimPulse (and its train) onto the items
RHX sets on a channel, refusing (Unmappable) what RHS hardware cannot play exactly;
``channel_map`` and ``presets`` read the rig file's ``[channels]`` and ``[stimulator]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mea_control.driver import DriverError
from mea_control.types import Layout, StimPattern, StimPulse

KEYS = tuple(f"F{i}" for i in range(1, 9))
_NATIVE = re.compile(r"^[A-Ha-h]-\d{3}$")


class Unmappable(ValueError):
    """A pulse RHS hardware cannot play as asked."""


# -- StimPattern -> RHS channel parameters --------------------------------------------------------
def rhs_settings(pulse: StimPulse, train_count: int, train_rate_hz: float, step_uA: float,
                 sample_rate: float) -> dict[str, str]:
    """The RHX channel items (name -> value text, in sending order) that play ``pulse``.

    Raises Unmappable when the hardware cannot play it exactly.
    """
    if pulse.mode != "current":
        raise Unmappable("RHS stimulates with current only, not voltage")
    phases = list(pulse.phases)
    gap = 0.0
    if len(phases) == 3 and phases[1][1] == 0.0:
        gap = phases[1][0]
        phases = [phases[0], phases[2]]
    if any(a == 0.0 for _, a in phases):
        raise Unmappable("a zero-amplitude phase is only possible between two phases")
    if len(phases) == 2:
        shape = "BiphasicWithInterphaseDelay" if gap else "Biphasic"
    elif len(phases) == 3:
        shape = "Triphasic"
        if phases[2] != phases[0]:
            raise Unmappable("a triphasic RHS pulse repeats its first phase as its third")
    else:
        raise Unmappable(f"RHS plays biphasic and triphasic pulses, not {len(phases)}-phase "
                         "ones")
    (d1, a1), (d2, a2) = phases[0], phases[1]
    if (a1 > 0) == (a2 > 0):
        raise Unmappable("the phases of an RHS pulse alternate in sign")
    items = {"Shape": shape, "Polarity": "NegativeFirst" if a1 < 0 else "PositiveFirst",
             "FirstPhaseDurationMicroseconds": _us(d1, sample_rate),
             "FirstPhaseAmplitudeMicroAmps": _uA(a1, step_uA),
             "SecondPhaseDurationMicroseconds": _us(d2, sample_rate),
             "SecondPhaseAmplitudeMicroAmps": _uA(a2, step_uA)}
    if gap:
        items["InterphaseDelayMicroseconds"] = _us(gap, sample_rate)
    if train_count > 1:
        items["PulseOrTrain"] = "PulseTrain"
        items["NumberOfStimPulses"] = str(int(train_count))
        items["PulseTrainPeriodMicroseconds"] = _us(1e6 / train_rate_hz, sample_rate)
    else:
        items["PulseOrTrain"] = "SinglePulse"
    return items


def _us(duration: float, rate: float) -> str:
    """A duration as RHS runs it: a whole number of samples, else Unmappable."""
    samples = duration * rate / 1e6
    if abs(samples - round(samples)) > 1e-6 * max(1.0, samples) or round(samples) < 1:
        raise Unmappable(f"{duration:g} us is not a whole number of samples at {rate / 1000:g}"
                         f" kHz ({1e6 / rate:.4g} us each)")
    return _text(duration)


def _uA(amplitude: float, step: float) -> str:
    """A phase amplitude as a whole number of the controller's steps (at most 255)."""
    steps = abs(amplitude) / step
    if abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
        raise Unmappable(f"{abs(amplitude):g} uA is not a whole number of the controller's "
                         f"{step:g} uA steps (RHX's stimulation step size)")
    if round(steps) > 255:
        raise Unmappable(f"{abs(amplitude):g} uA is beyond the controller's range of 255 steps "
                         f"of {step:g} uA")
    return _text(abs(amplitude))


def _text(value: float) -> str:
    """A number as the shortest text that reads back as it (200, 33.5)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# -- the rig file ---------------------------------------------------------------------------------
def channel_map(table: Mapping[str, Any] | None, layout: Layout, where: str) -> dict[str, int]:
    """``[channels]``: native name -> layout channel index, checked."""
    if not table:
        raise DriverError(
            f"rhx:// needs the rig file's [channels] table, which says which electrode each RHX "
            f"channel records from, e.g. \"A-010\" = \"{layout.labels[0]}\"{where}; pass "
            "--rig FILE (see docs/intan-rhx.md)")
    out: dict[str, int] = {}
    seen: dict[int, str] = {}
    for native, label in table.items():
        if not _NATIVE.match(native):
            raise DriverError(f"rig file [channels]: {native!r} is not an RHX channel name; "
                              "write them as RHX does, e.g. \"A-010\"")
        try:
            channel = layout.channel(str(label))
        except ValueError:
            raise DriverError(f"rig file [channels]: {native} = {label!r}: layout {layout.name} "
                              f"has no electrode {label!r}") from None
        if channel in seen:
            raise DriverError(f"rig file [channels]: {seen[channel]} and {native} both say "
                              f"electrode {label}")
        seen[channel] = native.upper()
        out[native.upper()] = channel
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], int(kv[0][2:]))))


@dataclass
class Preset:
    """A ``[stimulator]`` entry: a pattern uploaded onto a key before the run."""

    key: str
    pattern: StimPattern


def presets(table: Mapping[str, Any] | None, layout: Layout) -> list[Preset]:
    """``[stimulator]``: F1-F8 = { electrodes = [...], amplitude_uA, phase_us, ... }."""
    out = []
    for key, spec in (table or {}).items():
        if key.upper() not in KEYS or not isinstance(spec, dict):
            raise DriverError(f"rig file [stimulator]: {key!r}: keys are F1 to F8, each a table "
                              "such as F1 = { electrodes = [\"34\"], amplitude_uA = 10, "
                              "phase_us = 200 }")
        try:
            pulse = StimPulse.biphasic(float(spec["amplitude_uA"]), float(spec["phase_us"]),
                                       interphase_us=float(spec.get("interphase_us", 0.0)),
                                       negative_first=not spec.get("positive_first", False))
            channels = [layout.channel(str(label)) for label in spec["electrodes"]]
            pattern = StimPattern(tuple((ch, pulse) for ch in channels),
                                  int(spec.get("pulses", 1)), float(spec.get("rate_hz", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DriverError(f"rig file [stimulator] {key}: {exc}; give electrodes, "
                              "amplitude_uA and phase_us (optional: interphase_us, "
                              "positive_first, pulses, rate_hz)") from None
        out.append(Preset(key.upper(), pattern))
    return out


def _applies(item: str, model: dict[str, str | None]) -> bool:
    """Whether an item shapes the pulse under the channel's Shape and PulseOrTrain."""
    if item == "InterphaseDelayMicroseconds":
        return model.get("Shape") == "BiphasicWithInterphaseDelay"
    if item in ("NumberOfStimPulses", "PulseTrainPeriodMicroseconds"):
        return model.get("PulseOrTrain") == "PulseTrain"
    return True
