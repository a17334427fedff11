"""What an RHS channel's uploaded stimulation parameters make: the pulse the culture
receives (:func:`uploaded_pulse`) and the STIM band's words (:func:`stim_words`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mea_control.types import StimPulse


def uploaded_pulse(p: dict[str, Any], step_uA: float) -> StimPulse | None:
    """The pulse an RHS channel's uploaded parameters make (amplitudes in whole steps)."""
    def amp(key: str) -> float:
        return min(round(p[key] / step_uA), 255) * step_uA

    a1, a2 = amp("firstphaseamplitudemicroamps"), amp("secondphaseamplitudemicroamps")
    d1, d2 = p["firstphasedurationmicroseconds"], p["secondphasedurationmicroseconds"]
    sign = -1.0 if p["polarity"] == "NegativeFirst" else 1.0
    phases = [(d1, sign * a1)]
    if p["shape"] == "BiphasicWithInterphaseDelay" and p["interphasedelaymicroseconds"] > 0:
        phases.append((p["interphasedelaymicroseconds"], 0.0))
    phases.append((d2, -sign * a2))
    if p["shape"] == "Triphasic":
        phases.append((d1, sign * a1))
    phases = [(d, a) for d, a in phases if d > 0]
    return StimPulse("current", tuple(phases)) if phases else None


def stim_words(p: dict[str, Any], step_uA: float, rate: float) -> np.ndarray:
    """The STIM band of one pulse: bit 0 on, bit 8 negative, amplitude in steps."""
    def samples(us: float) -> int:
        return int(round(us * rate / 1e6))

    def word(amplitude: float, negative: bool) -> int:
        steps = min(int(round(amplitude / step_uA)), 255)
        return (1 | (0x100 if negative else 0) | steps) if steps else 0

    first_negative = p["polarity"] == "NegativeFirst"
    w1 = word(p["firstphaseamplitudemicroamps"], first_negative)
    w2 = word(p["secondphaseamplitudemicroamps"], not first_negative)
    d1, d2 = samples(p["firstphasedurationmicroseconds"]), samples(
        p["secondphasedurationmicroseconds"])
    parts = [np.full(d1, w1)]
    if p["shape"] == "BiphasicWithInterphaseDelay":
        parts.append(np.zeros(samples(p["interphasedelaymicroseconds"])))
    parts.append(np.full(d2, w2))
    if p["shape"] == "Triphasic":
        parts.append(np.full(d1, w1))
    return np.concatenate(parts).astype(np.int32)
