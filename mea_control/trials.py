"""Trial designs: a pattern every inter-stimulus interval, spike counts after each pulse.

A protocol builds a :class:`Trials` in ``setup`` and hands it to the engine
with ``ctx.use_trials(...)``. Shortly before each trial's scheduled sample
(``lead_ms``, or one block if blocks are longer, on devices that run patterns
at a requested sample; at the sample itself on others) the engine asks the
protocol's ``design(ctx, index)`` for a :class:`TrialSpec` (the pattern, and
the hidden-source labels if the protocol has them), sends the pattern through
the safety gate to run at the trial's sample, and counts spikes per electrode
in the response window after the device executed it. Finished trials are kept
as the o, s, r arrays of a :class:`TrialTable`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mea_control.safety import SafetyRefusal
from mea_control.types import Layout, SpikeEvents, StimPattern, StimReport

if TYPE_CHECKING:  # the context module imports this one; ctx is only passed through here
    from mea_control.context import Context

#: How long to wait for the device's execution report before using the decision sample.
REPORT_TIMEOUT_MS = 100.0
#: Extra wait after a response window so that spikes peaking at its edge are in.
SETTLE_MS = 2.0


@dataclass(frozen=True)
class TrialSpec:
    """What one trial delivers: a pattern (None for no stimulation) and source labels."""

    pattern: StimPattern | None
    s: Sequence[int] = ()


@dataclass(frozen=True)
class Trial:
    """One finished trial.

    ``o`` marks which of the design's stimulation channels got a pulse (all
    zero when the gate refused the pattern or the device dropped it), ``s``
    the hidden sources, ``r`` the spikes per channel in the response window
    after ``stim_sample``, and ``r_pre`` the spikes per channel in an equally
    long window just before ``trigger_sample`` (the spontaneous baseline).
    """

    index: int
    session: int
    trigger_sample: int
    decision_sample: int
    stim_sample: int
    o: np.ndarray
    s: np.ndarray
    r: np.ndarray
    r_pre: np.ndarray
    ticket: int | None
    status: str  # "executed", "none", "refused", "dropped" or "unconfirmed"
    #: The design's stimulation channels (the columns of ``o``).
    stim_channels: tuple[int, ...] = ()
    #: The response window in samples after ``stim_sample``: [start, stop).
    window: tuple[int, int] = (0, 0)


@dataclass
class _Pending:
    """A trial begun and not yet finished (its response window is still open)."""

    index: int
    trigger: int
    decision: int
    o: np.ndarray
    s: np.ndarray
    ticket: int | None
    #: "none" (no pattern), "refused", or "sent" until the device reports the pattern
    #: "executed" or "dropped" ("unconfirmed" if no report came in time); never "sent" by
    #: the time its Trial is made.
    status: str
    #: The sample its response window counts from; None while the pattern is "sent".
    stim: int | None


class Trials:
    """A trial every ``isi_s`` seconds with spike counts in ``window_ms`` after the pulse."""

    def __init__(
        self,
        design: Callable[[Context, int], TrialSpec],
        n_trials: int,
        stim_channels: Sequence[int | str],
        isi_s: float = 1.0,
        window_ms: tuple[float, float] = (10.0, 300.0),
        n_sources: int = 0,
        trials_per_session: int | None = None,
        first_trial_s: float = 1.0,
        lead_ms: float = 50.0,
    ) -> None:
        if n_trials < 1:
            raise ValueError("n_trials must be at least 1")
        if isi_s <= 0:
            raise ValueError("isi_s must be positive")
        if not 0 <= window_ms[0] < window_ms[1]:
            raise ValueError("window_ms must be (start, stop) with 0 <= start < stop")
        self.design = design
        self.n_trials = n_trials
        #: The electrodes a design may stimulate (the columns of ``o``): channel indices
        #: or labels as given, channel indices once attached to the device's layout.
        self.stim_channels: tuple[int | str, ...] = tuple(
            e if isinstance(e, str) else int(e) for e in stim_channels)
        self._stim_index: dict[int, int] = {}
        self.isi_s = isi_s
        self.window_ms = window_ms
        self.n_sources = n_sources
        self.trials_per_session = trials_per_session or n_trials
        self.first_trial_s = first_trial_s
        self.lead_ms = lead_ms
        # in samples, set by attach(): lead, response window, settle, report timeout
        self._lead = self._w0 = self._w1 = self._settle = self._report_timeout = 0
        self.finished: list[Trial] = []
        self._pending: deque[_Pending] = deque()
        self._by_ticket: dict[int, _Pending] = {}
        self._spikes: deque[SpikeEvents] = deque()
        self._next_index = 0
        self._rate = 0.0
        self._t0 = 0
        self._n_channels = 0
        #: The operator paused the run: no trial starts (trials begun finish).
        self.paused = False

    # Called by the engine.
    def attach(
        self,
        sample_rate: float,
        start_sample: int,
        n_channels: int,
        scheduled: bool = False,
        block_samples: int = 1,
        layout: Layout | None = None,
    ) -> None:
        """Start the clock; ``scheduled``: the device runs patterns at a requested sample;
        ``layout``: the device's, on which labels in ``stim_channels`` are resolved
        (ValueError for one it lacks, or for labels and no layout).

        The engine sees time move a block at a time, so the lead is at least a
        block: a pattern is then always sent before its trial's sample.
        """
        if layout is not None:
            self.stim_channels = tuple(layout.channel(e) if isinstance(e, str) else e
                                       for e in self.stim_channels)
        elif any(isinstance(e, str) for e in self.stim_channels):
            raise ValueError("stim_channels has electrode labels: attach needs the layout")
        self._stim_index = {ch: i for i, ch in enumerate(self.stim_channels)}
        self._rate = sample_rate
        self._t0 = start_sample
        self._n_channels = n_channels
        self._lead = max(self._samples(self.lead_ms), block_samples) if scheduled else 0
        self._w0, self._w1 = (self._samples(ms) for ms in self.window_ms)
        self._settle = self._samples(SETTLE_MS)
        self._report_timeout = self._samples(REPORT_TIMEOUT_MS)

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.n_trials

    def progress(self) -> tuple[float, str]:
        n = len(self.finished)
        sessions = -(-self.n_trials // self.trials_per_session)
        session = min(n // self.trials_per_session + 1, sessions)
        return n / self.n_trials, f"session {session}/{sessions} trial {n}/{self.n_trials}"

    def trigger_sample(self, index: int) -> int:
        return self._t0 + int(round((self.first_trial_s + index * self.isi_s) * self._rate))

    def delay(self, samples: int) -> None:
        """Move the trials not yet started ``samples`` later (after a pause)."""
        self._t0 += samples

    def _samples(self, ms: float) -> int:
        return int(round(ms * self._rate / 1000.0))

    def on_spikes(self, spikes: SpikeEvents) -> None:
        self._spikes.append(spikes)

    def on_report(self, report: StimReport) -> None:
        pending = self._by_ticket.pop(report.ticket, None)
        if pending is None:
            return
        pending.stim = report.sample if report.executed else pending.trigger
        pending.status = "executed" if report.executed else "dropped"

    def on_block(self, ctx: Context, now: int) -> list[Trial]:
        """Start trials that are due and return those whose window has closed."""
        while (
            not self.paused
            and self._next_index < self.n_trials
            and now >= self.trigger_sample(self._next_index) - self._lead
        ):
            self._start(ctx, self._next_index, now)
            self._next_index += 1
        done: list[Trial] = []
        while self._pending:
            head = self._pending[0]
            if head.stim is None:
                if now < max(head.decision, head.trigger) + self._report_timeout:
                    break
                head.stim, head.status = head.decision, "unconfirmed"
                if head.ticket is not None:
                    self._by_ticket.pop(head.ticket, None)
            if now < head.stim + self._w1 + self._settle:
                break
            self._pending.popleft()
            done.append(self._finish(head))
        self._prune(now, self._w1 + self._settle)
        return done

    def _start(self, ctx: Context, index: int, now: int) -> None:
        trigger = self.trigger_sample(index)
        spec = self.design(ctx, index)
        o = np.zeros(len(self.stim_channels), np.uint8)
        s = np.zeros(self.n_sources, np.uint8)
        if len(spec.s):
            s[:] = np.asarray(spec.s, dtype=np.uint8)
        pending = _Pending(index, trigger, now, o, s, None, "none", trigger)
        if spec.pattern is not None:
            pattern = ctx.layout.resolve(spec.pattern)
            for ch in pattern.channels:
                if ch not in self._stim_index:
                    raise ValueError(
                        f"trial {index}: channel {ch} is not one of the design's stim_channels"
                    )
                o[self._stim_index[ch]] = 1
            if pattern.at_sample is None and trigger >= now:
                pattern = replace(pattern, at_sample=trigger)  # on time, whatever the jitter
            try:
                pending.ticket = ctx.stimulate(pattern, trigger_sample=trigger)
                pending.status, pending.stim = "sent", None
                self._by_ticket[pending.ticket] = pending
            except SafetyRefusal:
                pending.status = "refused"
        self._pending.append(pending)

    def _finish(self, p: _Pending) -> Trial:
        assert p.stim is not None
        if p.status in ("refused", "dropped"):
            p.o[:] = 0  # nothing was delivered
        recent = SpikeEvents.concat(self._spikes)

        def counts(start: int, stop: int) -> np.ndarray:
            sel = recent.between(start, stop)
            return np.bincount(sel.channel, minlength=self._n_channels).astype(np.int32)

        w0, w1 = self._w0, self._w1
        trial = Trial(
            index=p.index,
            session=p.index // self.trials_per_session,
            trigger_sample=p.trigger,
            decision_sample=p.decision,
            stim_sample=p.stim,
            o=p.o,
            s=p.s,
            r=counts(p.stim + w0, p.stim + w1),
            r_pre=counts(p.trigger - (w1 - w0), p.trigger),
            ticket=p.ticket,
            status=p.status,
            stim_channels=self.stim_channels,
            window=(w0, w1),
        )
        self.finished.append(trial)
        return trial

    def _prune(self, now: int, keep: int) -> None:
        oldest = (self._pending[0].trigger if self._pending else now) - 2 * keep
        while self._spikes and (
            not len(self._spikes[0]) or self._spikes[0].sample[-1] < oldest
        ):
            self._spikes.popleft()

    def table(self) -> TrialTable:
        return TrialTable.from_trials(self.finished, self.stim_channels, self._n_channels)


@dataclass(frozen=True)
class TrialTable:
    """Trials as arrays: o (trials x stim electrodes), s (trials x sources), r (trials x channels).

    The layout matches the published BSS data (one row per trial), plus the
    session of each trial, its samples and a spontaneous baseline ``r_pre``.
    """

    o: np.ndarray
    s: np.ndarray
    r: np.ndarray
    r_pre: np.ndarray
    session: np.ndarray
    trigger_sample: np.ndarray
    stim_sample: np.ndarray
    status: np.ndarray
    stim_channels: np.ndarray

    @classmethod
    def from_trials(
        cls, trials: Sequence[Trial], stim_channels: Sequence[int], n_channels: int
    ) -> TrialTable:
        n_stim = len(stim_channels)
        n_src = len(trials[0].s) if trials else 0
        return cls(
            o=np.array([t.o for t in trials], np.uint8).reshape(len(trials), n_stim),
            s=np.array([t.s for t in trials], np.uint8).reshape(len(trials), n_src),
            r=np.array([t.r for t in trials], np.int32).reshape(len(trials), n_channels),
            r_pre=np.array([t.r_pre for t in trials], np.int32).reshape(len(trials), n_channels),
            session=np.array([t.session for t in trials], np.int32),
            trigger_sample=np.array([t.trigger_sample for t in trials], np.int64),
            stim_sample=np.array([t.stim_sample for t in trials], np.int64),
            status=np.array([t.status for t in trials], dtype="U11"),
            stim_channels=np.asarray(stim_channels, np.int16),
        )

    def __len__(self) -> int:
        return len(self.session)

    def save_npz(self, path: str | Path) -> None:
        np.savez_compressed(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def load_npz(cls, path: str | Path) -> TrialTable:
        with np.load(path) as f:
            return cls(**{k: f[k] for k in cls.__dataclass_fields__})

    def evoked_summary(self) -> dict[str, Any]:
        """Mean spikes per stimulated trial (all electrodes) after the pulse vs. before it."""
        stimulated = self.o.any(axis=1) & (self.status == "executed")
        quiet = self.status == "none"
        total = self.r.sum(axis=1)
        pre = self.r_pre.sum(axis=1)[stimulated]

        def mean(x: np.ndarray) -> float | None:
            return round(float(x.mean()), 3) if len(x) else None

        return {
            "stimulated_trials": int(stimulated.sum()),
            "response_spikes_stimulated": mean(total[stimulated]),
            "response_spikes_unstimulated": mean(total[quiet]),
            "baseline_spikes": mean(pre),
        }
