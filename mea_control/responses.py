"""Responses to patterns, for any design (probe maps, paired pulses, tetanus probes,
games): the spikes per electrode in a window after each pattern's execution sample, and
each electrode's first-spike latency.

An ordinary client of the protocol API: the protocol sends through
:meth:`Responses.send` and feeds the helper from its own hooks::

    from mea_control.responses import Responses

    class Probe(Protocol):
        def setup(self, ctx):
            self.responses = Responses(window_ms=(2.0, 50.0))

        def on_clock(self, ctx, sample):
            if ...:  # time for a probe
                self.responses.send(ctx, StimPattern.single([ch], pulse), label=ch)
            for response in self.responses.ready(ctx):
                ...  # response.label, response.counts, response.latency

        def on_spikes(self, ctx, spikes):
            self.responses.on_spikes(ctx, spikes)

        def on_stim(self, ctx, record):
            self.responses.on_stim(ctx, record)

Only executed patterns give a response: a refused one raised SafetyRefusal from
``send`` (nothing was sent), a dropped one is forgotten, and so is one whose outcome
came more than ``report_timeout_ms`` after its last pulse (the device never reported
it, or the operator paused the protocol meanwhile). A train's window counts from its
first pulse. While the protocol is paused no hook hears spikes: a window that a pause
overlaps misses the spikes of the pause. Memory stays bounded: spikes are kept back
to the oldest window still open (or the oldest pattern not yet reported), no further.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mea_control.sinks import StimRecord
from mea_control.trials import REPORT_TIMEOUT_MS, SETTLE_MS
from mea_control.types import SpikeEvents, StimPattern

if TYPE_CHECKING:  # the context module imports the protocol side; ctx is passed through
    from mea_control.context import Context


@dataclass(frozen=True)
class Response:
    """The spikes after one executed pattern, per electrode (channel index)."""

    ticket: int
    #: What the protocol passed to :meth:`Responses.send` (None if nothing).
    label: Any
    #: The pattern's record (pattern, trigger, decision and execution samples).
    record: StimRecord
    #: The window, in samples after the execution sample: [start, stop).
    window: tuple[int, int]
    #: Spikes per electrode in the window (int32, one per channel).
    counts: np.ndarray
    #: Samples from the execution sample to each electrode's first spike in the window;
    #: -1 where it had none (int64, one per channel).
    latency: np.ndarray
    #: The window's spikes themselves (device samples), e.g. for a PSTH.
    spikes: SpikeEvents

    @property
    def execution_sample(self) -> int:
        assert self.record.execution_sample is not None
        return self.record.execution_sample


@dataclass
class _Sent:
    label: Any
    #: The sample the pattern cannot run before (the clock when it was sent).
    earliest: int
    #: Past this sample with no outcome, the pattern is forgotten.
    deadline: int


class Responses:
    """Collects each executed pattern's response in ``window_ms`` (start, stop) after
    its execution sample; see the module's docstring for how to feed it."""

    def __init__(self, window_ms: tuple[float, float] = (2.0, 50.0),
                 report_timeout_ms: float = REPORT_TIMEOUT_MS) -> None:
        if not 0 <= window_ms[0] < window_ms[1]:
            raise ValueError("window_ms must be (start, stop) with 0 <= start < stop")
        self.window_ms = (float(window_ms[0]), float(window_ms[1]))
        self.report_timeout_ms = float(report_timeout_ms)
        self._sent: dict[int, _Sent] = {}
        #: Executed patterns by when their window is complete: (sample, ticket, label, record).
        self._open: list[tuple[int, int, Any, StimRecord]] = []
        self._spikes: deque[SpikeEvents] = deque()
        #: The latest clock seen, and the one before it: spikes up to the latter are in
        #: (a block's spikes reach on_spikes after its on_block).
        self._clock: int | None = None
        self._delivered: int | None = None

    def send(self, ctx: Context, pattern: StimPattern, label: Any = None,
             trigger_sample: int | None = None) -> int:
        """``ctx.stimulate(pattern, trigger_sample)``, remembering ``label`` for its
        response; the ticket. Raises SafetyRefusal like ``ctx.stimulate`` (no response)."""
        ticket = ctx.stimulate(pattern, trigger_sample)
        start = ctx.now if pattern.at_sample is None else max(ctx.now, pattern.at_sample)
        self._sent[ticket] = _Sent(label, ctx.now, start + self._after_last(ctx, pattern))
        return ticket

    def on_stim(self, ctx: Context, record: StimRecord) -> None:
        """Call from the protocol's ``on_stim``: an executed pattern's window opens."""
        sent = self._sent.pop(record.ticket, None) if record.ticket is not None else None
        if sent is None or record.status != "executed" or record.execution_sample is None:
            return
        if ctx.now > record.execution_sample + self._after_last(ctx, record.pattern):
            return  # told too late (a pause): its window's spikes were not all seen
        complete = record.execution_sample + self._samples(ctx, self.window_ms[1]) \
            + self._samples(ctx, SETTLE_MS)
        heapq.heappush(self._open, (complete, record.ticket, sent.label, record))

    def on_spikes(self, ctx: Context, spikes: SpikeEvents) -> None:
        """Call from the protocol's ``on_spikes``."""
        if len(spikes):
            self._spikes.append(spikes)

    def ready(self, ctx: Context) -> list[Response]:
        """The responses whose window has passed since the last call, oldest window end
        first. Call it from ``on_clock`` (any device) or ``on_block``: a window is
        complete once the clock has passed its end (plus SETTLE_MS) at an earlier call,
        so that the block's own spikes are in."""
        if ctx.now != self._clock:
            self._delivered, self._clock = self._clock, ctx.now
        done: list[Response] = []
        while self._open and self._delivered is not None \
                and self._open[0][0] <= self._delivered:
            _, ticket, label, record = heapq.heappop(self._open)
            done.append(self._response(ctx, ticket, label, record))
        self._forget(ctx.now)
        self._prune(ctx)
        return done

    @property
    def waiting(self) -> int:
        """Patterns sent whose response is still to come."""
        return len(self._sent) + len(self._open)

    def _response(self, ctx: Context, ticket: int, label: Any, record: StimRecord) -> Response:
        assert record.execution_sample is not None
        w0, w1 = (self._samples(ctx, ms) for ms in self.window_ms)
        start = record.execution_sample
        spikes = SpikeEvents.concat(self._spikes).between(start + w0, start + w1)
        counts = np.bincount(spikes.channel, minlength=ctx.n_channels).astype(np.int32)
        latency = np.full(ctx.n_channels, -1, np.int64)
        channels, first = np.unique(spikes.channel, return_index=True)
        latency[channels] = spikes.sample[first] - start
        return Response(ticket, label, record, (w0, w1), counts, latency, spikes)

    def _forget(self, now: int) -> None:
        """Patterns with no outcome by their deadline (never reported, or held back)."""
        for ticket in [t for t, sent in self._sent.items() if now > sent.deadline]:
            del self._sent[ticket]

    def _prune(self, ctx: Context) -> None:
        """Drop the spike batches before every window still to be counted."""
        w0 = self._samples(ctx, self.window_ms[0])
        keep = min([ctx.now] + [s.earliest for s in self._sent.values()]
                   + [r.execution_sample for *_, r in self._open]) + w0
        while self._spikes and self._spikes[0].sample[-1] < keep:
            self._spikes.popleft()

    def _after_last(self, ctx: Context, pattern: StimPattern) -> int:
        """From a pattern's start to when its outcome is overdue: its last pulse, plus
        the report timeout."""
        return pattern.pulse_offsets(ctx.sample_rate)[-1] \
            + self._samples(ctx, self.report_timeout_ms)

    @staticmethod
    def _samples(ctx: Context, ms: float) -> int:
        return int(round(ms * ctx.sample_rate / 1000.0))
