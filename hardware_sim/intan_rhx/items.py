"""RHX's settable items: the state items (Item), a channel's items and stimulation
parameters, the native channel names of an RHS system (wiring), each channel's state.

Written from RHX's ``stateitem.cpp`` and ``rhxglobals.h``, not imported from
drivers/intan_rhx/: the tests check the driver against the document, not against itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

STIM_CONTROLLER = "ControllerStimRecord"
CONTROLLERS = ("ControllerRecordUSB2", "ControllerRecordUSB3", STIM_CONTROLLER)
KEYS = tuple(f"KeyPressF{i}" for i in range(1, 9))

# -- RHX's parameter error messages (rhxglobals.h) ---------------------------------------------
READ_ONLY = "cannot be changed once software has started."
RUNNING = "cannot be set while controller is running."
NON_STIM = "cannot be set with a non-stim controller"


@dataclass(frozen=True)
class Item:
    """A state item: its canonical name, kind and what it accepts (RHX's StateSingleItem)."""

    name: str
    kind: str  # bool, int, double, list, string
    default: Any
    low: float = 0.0
    high: float = 0.0
    values: tuple[str, ...] = ()
    restrict: str = ""  # "", "always", "running", "nonstim"

    def valid_values(self) -> str:
        if self.kind == "bool":
            return "True;False"
        if self.kind == "list":
            return "".join(v + ";" for v in self.values)
        if self.kind in ("int", "double"):
            return f"[ {_number(self.low)} , {_number(self.high)} ]"
        return "Any String"

    def parse(self, text: str) -> Any:
        """The value for ``text`` (already lower-cased, as RHX does), or None if invalid."""
        if self.kind == "bool":
            return {"true": True, "false": False}.get(text.lower())
        if self.kind == "list":
            for value in self.values:
                if value.lower() == text.lower():
                    return value
            return None
        if self.kind == "string":
            return text
        pattern = r"[+-]?\d+" if self.kind == "int" else r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
        if not re.fullmatch(pattern, text.strip()):
            return None
        value = int(text) if self.kind == "int" else float(text)
        return value if self.low <= value <= self.high else None

    def show(self, value: Any) -> str:
        if self.kind == "bool":
            return "True" if value else "False"
        if self.kind in ("int", "double"):
            return _number(value)
        return str(value)


def _number(value: float) -> str:
    """A number as QString::number writes it (6 significant digits, %g)."""
    return f"{value:g}"


def _stim_items() -> list[Item]:
    sources = ([f"DigitalIn{i:02d}" for i in range(1, 17)]
               + [f"AnalogIn{i:02d}" for i in range(1, 9)] + list(KEYS))
    lst = [
        Item("Shape", "list", "Biphasic",
             values=("Biphasic", "BiphasicWithInterphaseDelay", "Triphasic")),
        Item("Polarity", "list", "NegativeFirst", values=("NegativeFirst", "PositiveFirst")),
        Item("Source", "list", "DigitalIn01", values=tuple(sources)),
        Item("TriggerEdgeOrLevel", "list", "Edge", values=("Edge", "Level")),
        Item("TriggerHighOrLow", "list", "High", values=("High", "Low")),
        Item("PulseOrTrain", "list", "SinglePulse", values=("SinglePulse", "PulseTrain")),
        Item("StimEnabled", "bool", False),
        Item("MaintainAmpSettle", "bool", False),
        Item("EnableAmpSettle", "bool", True),
        Item("EnableChargeRecovery", "bool", False),
    ]
    doubles = [
        ("FirstPhaseDurationMicroseconds", 5000.0, 100.0),
        ("SecondPhaseDurationMicroseconds", 5000.0, 100.0),
        ("InterphaseDelayMicroseconds", 5000.0, 100.0),
        ("FirstPhaseAmplitudeMicroAmps", 2550.0, 0.0),
        ("SecondPhaseAmplitudeMicroAmps", 2550.0, 0.0),
        ("PostTriggerDelayMicroseconds", 500000.0, 0.0),
        ("PulseTrainPeriodMicroseconds", 1000000.0, 10000.0),
        ("RefractoryPeriodMicroseconds", 1000000.0, 1000.0),
        ("PreStimAmpSettleMicroseconds", 500000.0, 0.0),
        ("PostStimAmpSettleMicroseconds", 500000.0, 1000.0),
        ("PostStimChargeRecovOnMicroseconds", 1000000.0, 0.0),
        ("PostStimChargeRecovOffMicroseconds", 1000000.0, 0.0),
    ]
    lst += [Item(name, "double", default, 0.0, high) for name, high, default in doubles]
    lst.append(Item("NumberOfStimPulses", "int", 2, 0, 256))
    return [Item(i.name, i.kind, i.default, i.low, i.high, i.values, "nonstim") for i in lst]


CHANNEL_ITEMS: dict[str, Item] = {i.name.lower(): i for i in [
    Item("NativeChannelName", "string", "", restrict="always"),
    Item("CustomChannelName", "string", ""),
    Item("Enabled", "bool", True),
    Item("TCPDataOutputEnabled", "bool", False),
    Item("TCPDataOutputEnabledLow", "bool", False),
    Item("TCPDataOutputEnabledHigh", "bool", False),
    Item("TCPDataOutputEnabledSpike", "bool", False),
    Item("TCPDataOutputEnabledDC", "bool", False, restrict="nonstim"),
    Item("TCPDataOutputEnabledStim", "bool", False, restrict="nonstim"),
    Item("SpikeThresholdMicroVolts", "int", -70, -5000, 5000),
    *_stim_items(),
]}
STIM_ITEM_NAMES = tuple(i.name for i in _stim_items())
#: bands in the order RHX writes them for a channel, with the item that enables each
BANDS = (("WIDE", "TCPDataOutputEnabled"), ("LOW", "TCPDataOutputEnabledLow"),
         ("HIGH", "TCPDataOutputEnabledHigh"), ("DC", "TCPDataOutputEnabledDC"),
         ("STIM", "TCPDataOutputEnabledStim"))


def default_wiring(n: int = 64) -> dict[str, int]:
    """Native channel names of ``n`` RHS channels, 32 per port (A-000 ... B-031), in order."""
    return {f"{'ABCDEFGH'[i // 32]}-{i % 32:03d}": i for i in range(n)}


def channel_order(native: str) -> tuple[str, int]:
    """Sort key of a native channel name: port, then number (RHX's order)."""
    port, number = native.split("-")
    return port, int(number)


class Channel:
    """One RHS channel: its items, the stimulation parameters last uploaded, and what the
    fake keeps for it during a run (refractory, STIM words booked, spike detector)."""

    def __init__(self, native: str, electrode: int) -> None:
        self.native = native
        self.electrode = electrode
        self.values = {key: item.default for key, item in CHANNEL_ITEMS.items()}
        self.values["nativechannelname"] = native
        self.uploaded = {name.lower(): self.values[name.lower()] for name in STIM_ITEM_NAMES}
        self.busy_until = -1  # refractory: the sample before which a trigger is ignored
        self.stim_words: list[tuple[int, np.ndarray]] = []  # (start sample, stim words)
        self.was_below = False  # spike detector: the last sample was past the threshold
