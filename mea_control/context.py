"""What a protocol's hooks see (``ctx``), and the narrow port it needs from the loop.

The engine implements :class:`Loop` and hands each run's protocol a :class:`Context`
over it; this module, protocol.py and trials.py never import the engine.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from mea_control.sinks import StimRecord
from mea_control.trials import Trials
from mea_control.types import DeviceInfo, StimPattern


class Loop(Protocol):
    """What a protocol's context needs from the loop that runs it."""

    @property
    def now(self) -> int:
        """The device sample just after the latest processed block."""
        ...

    #: Samples of this run's ended pauses (the operator's Pause protocol), summed.
    paused_samples: int

    def stimulate(self, pattern: StimPattern, trigger_sample: int | None) -> int:
        """Send a pattern through the safety gate; the device's ticket, or SafetyRefusal."""
        ...

    def can_stimulate(self, channel: int) -> bool:
        """Whether the layout and the limits in force let this electrode stimulate."""
        ...

    def outcome(self, ticket: int) -> StimRecord | None:
        """The record of a ticket this run sent, None if unknown or forgotten."""
        ...

    def log(self, message: str) -> None:
        """Log a protocol's message and record it as a run event."""
        ...

    def notify_decision(self, decision: dict[str, Any]) -> None:
        """Record a model's stimulus choice, stamped with ``now``."""
        ...

    def stop(self) -> None:
        """End the run after the current block."""
        ...

    def set_trials(self, trials: Trials) -> None:
        """Run a trial design (one per run)."""
        ...


class Context:
    """What a protocol's hooks see: the clock, the device, the gate and helpers."""

    def __init__(self, loop: Loop, info: DeviceInfo, start_sample: int, seed: int) -> None:
        self._loop = loop
        self.info = info
        self.layout = info.layout
        self.sample_rate = info.sample_rate
        self.n_channels = info.n_channels
        self.rng = np.random.default_rng(seed)
        self._start_sample = start_sample

    @property
    def now(self) -> int:
        """The device sample just after the latest processed block."""
        return self._loop.now

    @property
    def start_sample(self) -> int:
        return self._start_sample

    @property
    def paused_samples(self) -> int:
        """Device samples the operator has held this protocol paused so far in the run
        (the pauses that ended). While paused, no hook runs; on resume this has grown by
        the pause's length, so a protocol that keeps time can skip or shift what fell in
        the pause."""
        return self._loop.paused_samples

    def can_stimulate(self, electrode: int | str) -> bool:
        """Whether the layout and the limits in force let this electrode (a channel index
        or a label) stimulate; ValueError for a label the layout lacks."""
        if isinstance(electrode, str):
            electrode = self.layout.channel(electrode)
        return self._loop.can_stimulate(electrode)

    def samples(self, seconds: float) -> int:
        """Seconds -> samples at the device's rate."""
        return int(round(seconds * self.sample_rate))

    def stimulate(self, pattern: StimPattern, trigger_sample: int | None = None) -> int:
        """Send a pattern through the safety gate; returns the device's ticket.

        ``trigger_sample`` is the sample of what caused the pattern (a spike, a
        scheduled trial); it defaults to now. Electrode labels in the pattern are
        resolved against ``ctx.layout`` (ValueError for a label it lacks). Raises
        SafetyRefusal if the gate refuses it, in which case nothing was sent.
        """
        return self._loop.stimulate(self.layout.resolve(pattern), trigger_sample)

    def outcome(self, ticket: int) -> StimRecord | None:
        """What became of the pattern ``stimulate`` returned ``ticket`` for: its record,
        status "sent" until the device reports it ("executed", with its
        ``execution_sample``, or "dropped"); a train cut short has ``pulses_run``.
        None for a ticket this run never sent, or one forgotten after
        mea_control.patterns.KEEP_RECENT later patterns. The record is the one the
        sinks get: read it, do not change it. ``Protocol.on_stim`` is told when the
        outcome is final."""
        return self._loop.outcome(ticket)

    def use_trials(self, trials: Trials) -> Trials:
        """Let the engine run a trial design (one per run)."""
        self._loop.set_trials(trials)
        return trials

    def log(self, message: str) -> None:
        self._loop.log(message)

    def decision(self, choice: Any, candidates: Any = None, scores: Any = None,
                 **details: Any) -> None:
        """Record a model's stimulus choice: what it chose, among what, with which scores.

        Values must be JSON-friendly (numbers, strings, lists, numpy arrays);
        recorders keep them in the recording's decisions table.
        """
        self._loop.notify_decision({"choice": choice, "candidates": candidates,
                                    "scores": scores, **details})

    def finish(self) -> None:
        """End the run after this block."""
        self._loop.stop()
