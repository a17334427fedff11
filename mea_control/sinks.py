"""What the engine hands its sinks: the Sink port and the records it passes through it.

A sink (the recorder, the LSL outlet, the GUI's live feed, the recording switch)
receives everything the loop sees, on the acquisition thread, and holds no
reference to the engine. This module imports neither the engine nor the DSP, so
the recording side stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mea_control.trials import Trial
    from mea_control.types import Block, DeviceInfo, SpikeEvents, StimPattern


class SinkError(Exception):
    """A sink (recorder, display) failed; the run stops."""


@dataclass
class StimRecord:
    """One pattern's life: trigger, decision and execution samples, and its fate."""

    ticket: int | None
    pattern: StimPattern
    trigger_sample: int
    decision_sample: int
    execution_sample: int | None = None
    status: str = "sent"  # sent (no report by the end of the run), executed, dropped, refused
    reason: str = ""
    #: A train the device cut short: how many of its pulses ran (None: all of them).
    pulses_run: int | None = None


@dataclass(frozen=True)
class RunEvent:
    sample: int
    kind: str  # start, stop, gap, watchdog, rearm, refusal, protocol_error, device_error
    message: str


class Sink:
    """Receives everything the loop sees; recorders and the GUI plug in here.

    Methods run on the acquisition thread and must return quickly (queue the
    work, never write to disk or draw here).
    """

    def on_start(self, info: DeviceInfo, protocol: Any) -> None: ...
    def on_block(self, block: Block, filtered: np.ndarray | None, spikes: SpikeEvents) -> None: ...
    def on_spikes(self, spikes: SpikeEvents) -> None: ...
    def on_stim(self, record: StimRecord) -> None: ...
    def on_trial(self, trial: Trial) -> None: ...
    def on_decision(self, sample: int, decision: dict[str, Any]) -> None: ...
    def on_event(self, event: RunEvent) -> None: ...
    def on_stop(self, summary: dict[str, Any]) -> None: ...
