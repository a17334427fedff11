"""Paired-pulse ratio: the response to a second pulse over the response to the first, at
several intervals (short-term depression or facilitation of the network's response).

The paired-pulse paradigm of slice physiology applied to MEA cultures (e.g. Eytan, Brenner
& Marom 2003, J Neurosci 23:9349, on the depression of evoked network responses). Rounds
follow each other every ``pair_interval_s``; in each round every interval of
``intervals_ms`` (comma-separated, e.g. "20,50,100,200,500") gets one pair, in a random
order, until each interval has ``pairs`` pairs. A pair is two biphasic pulses
(``amplitude_uA`` per phase, ``phase_us`` long) on the ``electrodes`` (comma-separated
labels; "auto": the stimulation electrode nearest the array's centre), booked at their
samples ``interval`` apart. A pulse's response is the spikes on every recording electrode
but the stimulated ones ``window_start_ms``-``window_stop_ms`` after its execution sample
(the window must close before the shortest interval).

The summary, per interval: pairs answered (both pulses executed and their windows
counted), the mean first and second responses (spikes per pulse) and the ratio of the
means (``ppr``, < 1: depression, > 1: facilitation). Every pulse goes through
``ctx.stimulate``; a refused one is counted and its pair dropped. The pulses are labelled
"pp1" and "pp2" in the recording's pulses table.
"""

import numpy as np

from mea_control.protocol import Parameter, Protocol, ProtocolError, electrodes, next_due
from mea_control.responses import Responses
from mea_control.safety import SafetyRefusal
from mea_control.types import StimPattern, StimPulse

#: Samples between deciding a pair and its first pulse (so that both can be booked).
LEAD_MS = 5.0


class PairedPulse(Protocol):
    """Paired-pulse ratio (second response / first) at several inter-pulse intervals."""

    name = "paired_pulse"
    parameters = {
        "intervals_ms": Parameter(str, "20,50,100,200,500", unit="ms",
                                  help="inter-pulse intervals, comma-separated"),
        "pairs": Parameter(int, 10, range=(1, 10_000), help="pairs per interval"),
        "pair_interval_s": Parameter(float, 3.0, unit="s", range=(0.1, 600.0),
                                     help="from one pair to the next"),
        "electrodes": Parameter(str, "auto", help="'auto' (the most central) or labels"),
        "amplitude_uA": Parameter(float, 5.0, unit="uA", range=(0.0, 1000.0),
                                  help="phase amplitude (current)"),
        "phase_us": Parameter(float, 200.0, unit="us", range=(1.0, 10_000.0)),
        "window_start_ms": Parameter(float, 2.0, unit="ms", range=(0.0, 1000.0)),
        "window_stop_ms": Parameter(float, 20.0, unit="ms", range=(1.0, 1000.0)),
    }

    def validate(self):
        p = self.p
        self.intervals = _intervals(p.intervals_ms)
        if p.window_stop_ms <= p.window_start_ms:
            raise ProtocolError("window_stop_ms must be larger than window_start_ms")
        if p.window_stop_ms > min(self.intervals):
            raise ProtocolError("the response window must close before the second pulse "
                                "(window_stop_ms <= the shortest of intervals_ms)")
        if LEAD_MS + max(self.intervals) + p.window_stop_ms > p.pair_interval_s * 1000:
            raise ProtocolError("pair_interval_s must leave room for the longest pair "
                                "and its response window")

    def planned_patterns(self, ctx):
        """The shortest pair, booked as it will be."""
        return [self._pair(ctx, self._electrodes(ctx), min(self.intervals), 0)]

    def _pair(self, ctx, channels, interval_ms, at):
        pulse = StimPulse.biphasic(self.p.amplitude_uA, self.p.phase_us)
        second = at + ctx.samples(interval_ms / 1000)
        return [StimPattern.single(channels, pulse, at_sample=at, label="pp1"),
                StimPattern.single(channels, pulse, at_sample=second, label="pp2")]

    def _electrodes(self, ctx):
        if self.p.electrodes != "auto":
            return electrodes(ctx, self.p.electrodes, "electrodes", stimulating=True)
        layout = ctx.layout
        usable = [ch for ch in range(layout.n_electrodes) if ctx.can_stimulate(ch)]
        if not usable:
            raise ProtocolError(f"layout {layout.name} has no stimulation electrode")
        centre = layout.positions_um.mean(axis=0)
        return [min(usable, key=lambda ch: float(
            np.hypot(*(layout.positions_um[ch] - centre))))]

    def setup(self, ctx):
        p = self.p
        self.channels = self._electrodes(ctx)
        self.labels = [ctx.layout.labels[ch] for ch in self.channels]
        self.recording = np.ones(ctx.n_channels, bool)
        self.recording[self.channels] = False
        self.responses = Responses(window_ms=(p.window_start_ms, p.window_stop_ms))
        self.queue = []  # intervals still to pair, this round's in random order
        self.next_at = ctx.now
        self.remaining = {ms: p.pairs for ms in self.intervals}
        #: pair number -> {"interval": ms, 1: response, 2: response}
        self.open = {}
        self.done = {ms: [] for ms in self.intervals}  # (first, second) responses
        self.pair_no = self.refused = 0

    def on_clock(self, ctx, sample):
        if ctx.now >= self.next_at and any(self.remaining.values()):
            self.next_at = next_due(self.next_at, ctx.samples(self.p.pair_interval_s), ctx.now)
            self._send_pair(ctx)
        for response in self.responses.ready(ctx):
            self._add(response)
        if not any(self.remaining.values()) and not self.responses.waiting:
            ctx.finish()

    def _send_pair(self, ctx):
        if not self.queue:
            self.queue = [ms for ms in self.intervals if self.remaining[ms]]
            ctx.rng.shuffle(self.queue)
        interval = self.queue.pop()
        self.remaining[interval] -= 1
        self.pair_no += 1
        at = ctx.now + ctx.samples(LEAD_MS / 1000)
        self.open[self.pair_no] = {"interval": interval}
        try:
            for which, pattern in enumerate(self._pair(ctx, self.channels, interval, at), 1):
                self.responses.send(ctx, pattern, label=(self.pair_no, which),
                                    trigger_sample=pattern.at_sample)
        except SafetyRefusal:
            self.refused += 1  # the first pulse may have gone: its pair is incomplete

    def _add(self, response):
        pair, which = response.label
        entry = self.open.get(pair)
        if entry is None:
            return
        entry[which] = int(response.counts[self.recording].sum())
        if 1 in entry and 2 in entry:
            self.done[entry["interval"]].append((entry[1], entry[2]))
            del self.open[pair]

    def on_spikes(self, ctx, spikes):
        self.responses.on_spikes(ctx, spikes)

    def on_stim(self, ctx, record):
        self.responses.on_stim(ctx, record)

    def summary(self):
        if not hasattr(self, "done"):
            return {}
        table = {}
        for ms, pairs in self.done.items():
            r = np.array(pairs, float).reshape(-1, 2)
            first, second = (r.mean(axis=0) if len(r) else (np.nan, np.nan))
            table[f"{ms:g}"] = {
                "pairs": len(r), "first": _num(first), "second": _num(second),
                "ppr": _num(second / first) if first > 0 else None}
        return {"electrodes": self.labels, "pairs_refused": self.refused,
                "by_interval_ms": table}


def _intervals(text):
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ProtocolError(f"intervals_ms={text!r}: give numbers in ms, comma-separated") \
            from None
    if not values or values[0] <= 0:
        raise ProtocolError("intervals_ms: give at least one interval above 0 ms")
    return values


def _num(x):
    return None if not np.isfinite(x) else round(float(x), 3)
