"""Plasticity induction by a tetanus: probe responses before and after a tetanic train.

After Jimbo, Tateno & Robinson 1999 (Biophys J 76:670: a tetanus on one electrode
potentiates or depresses the responses of whole pathways) and Bakkum, Chao & Potter 2008
(PLoS One 3:e2088: patterned bursts, with probe phases before and after). Three phases:

1. probe: each of the ``probe`` electrodes (comma-separated labels; "auto": ``n_probe``
   stimulation electrodes spread over the array) in turn, ``probe_repetitions`` times,
   one biphasic pulse (``amplitude_uA`` per phase, ``phase_us`` long) every
   ``probe_interval_ms``; the response of each recording electrode is its spikes
   ``window_start_ms``-``window_stop_ms`` after the pulse's execution sample;
2. tetanus on the ``tetanus`` electrodes ("auto": the first probe electrode; "none": a
   sham, the same time without pulses, the control for drift and noise):
   ``bursts`` bursts at ``burst_rate_hz``, each ``burst_pulses`` pulses at
   ``pulse_rate_hz`` (``StimPattern.bursts``; the default, 10 bursts at 1 Hz of 20
   pulses at 100 Hz), then ``rest_s`` of quiet;
3. the same probe phase again.

The summary: per (probe, recording) pair that responded before (mean at least
``min_response`` spikes per probe), its mean response before and after and the change
(after - before) / before; the fraction of those pairs that changed by more than
``change_threshold`` (up and down); tetanus pulses sent and refused. Every pulse goes
through ``ctx.stimulate``; a refused one is counted and skipped. Probe pulses are
labelled "probe", tetanus bursts "tetanus".
"""

import numpy as np

from mea_control.protocol import Parameter, Protocol, ProtocolError, electrodes, next_due
from mea_control.responses import Responses
from mea_control.safety import SafetyRefusal
from mea_control.types import StimPattern, StimPulse

#: From the decision to the tetanus's first burst.
LEAD_MS = 10.0


class Tetanus(Protocol):
    """Tetanic bursts with probe responses before and after (plasticity induction)."""

    name = "tetanus"
    parameters = {
        "probe": Parameter(str, "auto", help="'auto' or labels of the probe electrodes"),
        "n_probe": Parameter(int, 4, range=(1, 1000), help="probe electrodes when auto"),
        "probe_repetitions": Parameter(int, 20, range=(1, 10_000),
                                       help="probes per electrode per phase"),
        "probe_interval_ms": Parameter(float, 250.0, unit="ms", range=(25.0, 60_000.0)),
        "tetanus": Parameter(str, "auto", help="'auto' (the first probe electrode), labels, "
                             "or 'none' (sham: the same time without pulses)"),
        "bursts": Parameter(int, 10, range=(1, 10_000)),
        "burst_rate_hz": Parameter(float, 1.0, unit="Hz", range=(0.001, 100.0)),
        "burst_pulses": Parameter(int, 20, range=(1, 1000)),
        "pulse_rate_hz": Parameter(float, 100.0, unit="Hz", range=(0.1, 1000.0)),
        "rest_s": Parameter(float, 2.0, unit="s", range=(0.0, 3600.0),
                            help="quiet after the tetanus, before probing again"),
        "amplitude_uA": Parameter(float, 5.0, unit="uA", range=(0.0, 1000.0),
                                  help="phase amplitude (current), probes and tetanus"),
        "phase_us": Parameter(float, 200.0, unit="us", range=(1.0, 10_000.0)),
        "window_start_ms": Parameter(float, 2.0, unit="ms", range=(0.0, 1000.0)),
        "window_stop_ms": Parameter(float, 50.0, unit="ms", range=(1.0, 1000.0)),
        "min_response": Parameter(float, 0.2, range=(0.0, 1000.0),
                                  help="spikes per probe before, for a pair to count"),
        "change_threshold": Parameter(float, 0.2, range=(0.0, 100.0),
                                      help="relative change that counts as changed"),
    }

    def validate(self):
        p = self.p
        if p.window_stop_ms <= p.window_start_ms:
            raise ProtocolError("window_stop_ms must be larger than window_start_ms")
        if p.window_stop_ms > p.probe_interval_ms:
            raise ProtocolError("the response window must end before the next probe "
                                "(window_stop_ms <= probe_interval_ms)")

    def _pulse(self):
        return StimPulse.biphasic(self.p.amplitude_uA, self.p.phase_us)

    def planned_patterns(self, ctx):
        probes, tetanus = self._electrodes(ctx)
        return [StimPattern.single([ch], self._pulse()) for ch in probes] \
            + ([self._bursts(ctx, tetanus, 0)] if tetanus else [])

    def _bursts(self, ctx, channels, at):
        p = self.p
        try:
            return StimPattern.bursts(channels, self._pulse(), p.bursts, p.burst_rate_hz,
                                      p.burst_pulses, p.pulse_rate_hz, at, ctx.sample_rate,
                                      label="tetanus")
        except ValueError as exc:
            raise ProtocolError(f"tetanus: {exc}") from None

    def _electrodes(self, ctx):
        """(probe channels, tetanus channels)."""
        layout = ctx.layout
        usable = [ch for ch in range(layout.n_electrodes) if ctx.can_stimulate(ch)]
        if self.p.probe == "auto":
            if not usable:
                raise ProtocolError(f"layout {layout.name} has no stimulation electrode")
            picks = np.linspace(0, len(usable) - 1, min(self.p.n_probe, len(usable)) + 2)
            probes = [usable[int(round(k))] for k in picks[1:-1]]
        else:
            probes = electrodes(ctx, self.p.probe, "probe", stimulating=True)
        if self.p.tetanus in ("auto", "none"):
            tetanus = probes[:1] if self.p.tetanus == "auto" else []
        else:
            tetanus = electrodes(ctx, self.p.tetanus, "tetanus", stimulating=True)
        return probes, tetanus

    def setup(self, ctx):
        p = self.p
        self.probes, self.tetanus_channels = self._electrodes(ctx)
        self.labels = ctx.layout.labels
        self.responses = Responses(window_ms=(p.window_start_ms, p.window_stop_ms))
        shape = (len(self.probes), ctx.n_channels)
        #: phase -> spike counts summed per (probe, recording) pair, and probes answered
        self.counts = {"before": np.zeros(shape), "after": np.zeros(shape)}
        self.answered = {"before": np.zeros(len(self.probes)),
                         "after": np.zeros(len(self.probes))}
        self.phase, self.index, self.next_at = "before", 0, ctx.now
        self.tetanus_sent = self.tetanus_refused = self.probes_refused = 0
        self.figures = {}

    def on_clock(self, ctx, sample):
        for response in self.responses.ready(ctx):
            phase, k = response.label
            self.counts[phase][k] += response.counts
            self.answered[phase][k] += 1
        if ctx.now < self.next_at:
            return
        if self.phase in ("before", "after"):
            self._probe_or_next(ctx)
        elif self.phase == "tetanus" and not self.responses.waiting:
            self._send_tetanus(ctx)
        elif self.phase == "done" and not self.responses.waiting:
            ctx.finish()

    def _probe_or_next(self, ctx):
        total = len(self.probes) * self.p.probe_repetitions
        if self.index >= total:
            self.phase = "tetanus" if self.phase == "before" else "done"
            self.index = 0
            return
        k = self.index % len(self.probes)  # interleaved: every electrode in turn
        self.index += 1
        self.next_at = next_due(self.next_at, ctx.samples(self.p.probe_interval_ms / 1000),
                                ctx.now)
        pattern = StimPattern.single([self.probes[k]], self._pulse(), label="probe")
        try:
            self.responses.send(ctx, pattern, label=(self.phase, k))
        except SafetyRefusal:
            self.probes_refused += 1

    def _send_tetanus(self, ctx):
        start = ctx.now + ctx.samples(LEAD_MS / 1000)
        bursts = self._bursts(ctx, self.tetanus_channels or self.probes[:1], start)
        for burst in bursts if self.tetanus_channels else ():  # a sham waits as long
            try:
                ctx.stimulate(burst, burst.at_sample)  # latency: from its booked sample
                self.tetanus_sent += 1
            except SafetyRefusal:
                self.tetanus_refused += 1
        last = bursts[-1].at_sample + bursts[-1].pulse_offsets(ctx.sample_rate)[-1]
        self.next_at = last + ctx.samples(self.p.rest_s)
        self.phase = "after"

    def on_spikes(self, ctx, spikes):
        self.responses.on_spikes(ctx, spikes)

    def on_stim(self, ctx, record):
        self.responses.on_stim(ctx, record)

    def teardown(self, ctx):
        self.figures = self._changes()

    def _changes(self):
        """Per pair: before, after, relative change; fractions beyond the threshold."""
        p = self.p
        if not (self.answered["before"].all() and self.answered["after"].all()):
            return {"complete": False, "tetanus_bursts_sent": self.tetanus_sent}
        before = self.counts["before"] / self.answered["before"][:, None]
        after = self.counts["after"] / self.answered["after"][:, None]
        k, ch = np.nonzero(before >= max(p.min_response, 1e-9))
        change = (after[k, ch] - before[k, ch]) / before[k, ch]
        pairs = {f"{self.labels[self.probes[a]]}->{self.labels[b]}":
                 [round(float(before[a, b]), 3), round(float(after[a, b]), 3),
                  round(float(c), 3)] for a, b, c in zip(k, ch, change, strict=True)}
        n = max(len(change), 1)
        return {
            "complete": True, "probe": [self.labels[c] for c in self.probes],
            "tetanus": [self.labels[c] for c in self.tetanus_channels],
            "tetanus_bursts_sent": self.tetanus_sent,
            "tetanus_bursts_refused": self.tetanus_refused,
            "probes_refused": self.probes_refused, "pairs": len(change),
            "fraction_up": round(float((change > p.change_threshold).sum() / n), 3),
            "fraction_down": round(float((change < -p.change_threshold).sum() / n), 3),
            "median_change": round(float(np.median(change)), 3) if len(change) else None,
            "before_after_change": pairs,
        }

    def summary(self):
        return self.figures

