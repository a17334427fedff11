"""What the engine hands its sinks: the Sink port and the records it passes through it.

A sink (the recorder, the LSL outlet, the GUI's live feed, the recording switch)
receives everything the loop sees, on the acquisition thread, and holds no
reference to the engine. This module imports neither the engine nor the DSP, so
the recording side stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mea_control.trials import Trial
    from mea_control.types import Block, DeviceInfo, SpikeEvents, StimPattern


#: Why stimulation is disarmed once a run is over: every way a run ends closes its gate.
RUN_ENDED = "the run has ended"


def ending_text(how: str, trials: int, trials_planned: int | None) -> str:
    """How a run (or its recording) ended, as the summary's "ended" says it: "completed",
    "stopped by the operator", ...; with the trials done of those planned, if any."""
    return how + (f", {trials} of {trials_planned} trials" if trials_planned else "")


class EventKind(StrEnum):
    """What a run event is about. Members are strings: recordings, logs, LSL markers and
    JSON hold the same text as ever. A kind a third-party driver reports that is not here
    stays a plain string (:meth:`of`)."""

    START = "start"  #: the run's first block or tick: protocol and device
    STOP = "stop"  #: the run's loop ended (end of run, or interrupted)
    LOG = "log"  #: a protocol's own line (ctx.log)
    LIMITS = "limits"  #: how the limits in force came about (device, pulse history)
    GAP = "gap"  #: samples missing in the device's stream (never filled in)
    PAUSE = "pause"  #: the operator paused the protocol
    RESUME = "resume"  #: the operator resumed it
    REFUSAL = "refusal"  #: the safety gate refused a pattern; nothing of it was sent
    #: a hook did not catch a refusal, so the rest of that call did not run (once per hook)
    REFUSAL_UNCAUGHT = "refusal_uncaught"
    STIM_DROPPED = "stim_dropped"  #: the device dropped a pattern (e.g. too late to run)
    TRAIN_CUT = "train_cut"  #: a train ran only in part (aborted or the run ended)
    DISARM = "disarm"  #: a person stopped stimulation (STOP)
    REARM = "rearm"  #: a person re-armed stimulation
    WATCHDOG = "watchdog"  #: the loop fell behind the device: stimulation stopped
    DEVICE_DISARMED = "device_disarmed"  #: the device stopped stimulation by itself
    PROTOCOL_ERROR = "protocol_error"  #: a protocol hook raised or hung: the run ends
    DEVICE_ERROR = "device_error"  #: the device or its driver failed or reported an error
    SINK_ERROR = "sink_error"  #: a sink (recorder, display) failed: the run ends
    LINK_ERROR = "link_error"  #: garbled, dropped or unanswered traffic on the device's link
    LINK_GAP = "link_gap"  #: frames lost on the device's link
    STIM_UPLOAD = "stim_upload"  #: a pattern needed a slow upload of stimulation settings
    STIM_UNEXPECTED = "stim_unexpected"  #: the device stimulated without being asked to
    LOST = "lost"  #: the recorder could not write samples to disk (recordings only)

    @classmethod
    def of(cls, kind: str) -> EventKind | str:
        """The member named ``kind``, or ``kind`` itself if it is none (a third-party
        driver's own kind is logged and recorded as the driver named it)."""
        try:
            return cls(kind)
        except ValueError:
            return kind

    @classmethod
    def error(cls, source: str) -> EventKind:
        """The kind of an error that ends a run: "protocol", "device" or "sink"."""
        return cls(f"{source}_error")


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
class RunDescription:
    """What a run is, as its sinks are told at its start (and a recording's provenance):
    plain values, no reference into the engine."""

    protocol: str
    parameters: dict[str, Any]
    device_url: str
    info: DeviceInfo
    #: The safety limits in force (the stricter of the rig's and the device's), as a dict.
    limits: dict[str, Any]
    #: Where the device's limits tightened the rig's, one line each.
    limit_notes: tuple[str, ...]
    block_samples: int
    fast: bool
    seed: int
    watchdog_ms: float
    #: The spike detector's settings, as a dict.
    detector: dict[str, Any]
    software_version: str
    #: The device sample where the run's time starts (0 until the run has started).
    start_sample: int = 0
    #: Whether the safety gate lets pulses through as the run starts, and if not, why;
    #: events that change it say so (RunEvent.armed).
    armed: bool = True
    disarm_reason: str = ""


@dataclass(frozen=True)
class RunEvent:
    sample: int
    #: An EventKind member, or a third-party driver's own kind as it named it.
    kind: EventKind | str
    message: str
    #: The safety gate's state after this event, for an event that armed or disarmed it
    #: (None: the event left the gate as it was); sinks follow the gate by these alone.
    armed: bool | None = None
    #: Why the gate refuses pulses, for an event that disarmed it.
    disarm_reason: str = ""


class Sink:
    """Receives everything the loop sees; recorders and the GUI plug in here.

    Methods run on the acquisition thread and must return quickly (queue the
    work, never write to disk or draw here).
    """

    def on_start(self, run: RunDescription) -> None: ...
    def on_clock(self, sample: int) -> None:
        """The device delivered everything before ``sample`` (after each block, and each
        tick of a device that sends spikes only)."""

    def on_block(self, block: Block, filtered: np.ndarray | None) -> None:
        """A raw block and its band-passed microvolts (None: not filtered); a device that
        sends spikes only sends none."""

    def on_spikes(self, spikes: SpikeEvents) -> None:
        """Spikes, detected in a block (just before its on_block) or detected by the
        device: every spike reaches the sinks here, once."""

    def on_stim(self, record: StimRecord) -> None: ...
    def on_trial(self, trial: Trial) -> None: ...
    def on_decision(self, sample: int, decision: dict[str, Any]) -> None: ...
    def on_event(self, event: RunEvent) -> None: ...
    def on_stop(self, summary: dict[str, Any]) -> None:
        """The run is over (its gate closed, disarmed with RUN_ENDED); ``summary`` holds
        its figures."""
