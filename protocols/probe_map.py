"""Stimulus-response mapping: which electrodes respond, how strongly and how fast, to a
pulse on each stimulation electrode.

The classic probe of an MEA culture (e.g. Jimbo, Tateno & Robinson 1999, Biophys J
76:670; Wagenaar, Pine & Potter 2004, J Neurosci Methods 138:27). After ``baseline_s`` of
spontaneous activity (the baseline rate of each electrode), each stimulation electrode in
turn (``electrodes``: "auto" for all, or comma-separated labels) gets ``repetitions``
biphasic pulses (``amplitude_uA`` per phase, ``phase_us`` long), one every
``interval_ms``. For each pulse the spikes ``window_start_ms``-``window_stop_ms`` after its
execution sample count as its response. Per (stimulated, recording) electrode pair:

- PSTH: spikes per pulse in ``bin_ms`` bins from 0 to ``window_stop_ms``;
- strength: spikes per pulse in the window minus the baseline's expectation in as long;
- latency: the median first-spike latency (ms) over the pulses that had a spike there.

At the end it writes ``out`` (default ``probe_map.json`` in the working directory), a
JSON object with the electrode sets other protocols use, as pong's ``electrodes_file``
reads them: ``sensory`` (the ``n_sensory`` stimulated electrodes that evoke the largest
summed response, bottom first), ``motor_up`` and ``motor_down`` (the ``n_motor``
recording electrodes, not sensory, that respond most over all stimulated electrodes,
split in two halves by height: upper half up), and the map itself (``stimulated``,
``recording`` labels, ``strength``, ``latency_ms``, ``psth``, ``bin_ms``, ``pulses``).

Every pulse goes through ``ctx.stimulate``; a refused one is counted and skipped. The
summary: pulses sent, refused and answered, the strongest pair, each stimulated
electrode's strongest responder and its distance (um), and the sets written.
"""

import json
from pathlib import Path

import numpy as np

from mea_control.protocol import Parameter, Protocol, ProtocolError, electrodes, next_due
from mea_control.responses import Responses
from mea_control.safety import SafetyRefusal
from mea_control.types import StimPattern, StimPulse


class ProbeMap(Protocol):
    """Stimulus-response map: each electrode pulsed in turn; strength, latency, PSTH."""

    name = "probe_map"
    parameters = {
        "electrodes": Parameter(str, "auto",
                                help="'auto' (every stimulation electrode) or labels"),
        "repetitions": Parameter(int, 20, range=(1, 10_000), help="pulses per electrode"),
        "interval_ms": Parameter(float, 250.0, unit="ms", range=(25.0, 60_000.0),
                                 help="between one pulse and the next"),
        "amplitude_uA": Parameter(float, 5.0, unit="uA", range=(0.0, 1000.0),
                                  help="phase amplitude (current)"),
        "phase_us": Parameter(float, 200.0, unit="us", range=(1.0, 10_000.0)),
        "window_start_ms": Parameter(float, 2.0, unit="ms", range=(0.0, 1000.0)),
        "window_stop_ms": Parameter(float, 50.0, unit="ms", range=(1.0, 1000.0)),
        "bin_ms": Parameter(float, 2.0, unit="ms", range=(0.1, 100.0), help="PSTH bin"),
        "baseline_s": Parameter(float, 2.0, unit="s", range=(0.1, 600.0),
                                help="spontaneous activity before the first pulse"),
        "n_sensory": Parameter(int, 8, range=(1, 1000)),
        "n_motor": Parameter(int, 8, range=(2, 1000), help="split in halves: up, down"),
        "out": Parameter(str, "probe_map.json", help="the JSON file written at the end"),
    }

    def validate(self):
        p = self.p
        if p.window_stop_ms <= p.window_start_ms:
            raise ProtocolError("window_stop_ms must be larger than window_start_ms")
        if p.window_stop_ms > p.interval_ms:
            raise ProtocolError("the response window must end before the next pulse "
                                "(window_stop_ms <= interval_ms)")

    def planned_patterns(self, ctx):
        pulse = self._pulse()
        return [StimPattern.single([ch], pulse) for ch in self._electrodes(ctx)]

    def _pulse(self):
        return StimPulse.biphasic(self.p.amplitude_uA, self.p.phase_us)

    def _electrodes(self, ctx):
        """The stimulated channels, in the order they are probed."""
        if self.p.electrodes != "auto":
            return electrodes(ctx, self.p.electrodes, "electrodes", stimulating=True)
        chosen = [ch for ch in range(ctx.layout.n_electrodes) if ctx.can_stimulate(ch)]
        if not chosen:
            raise ProtocolError(f"layout {ctx.layout.name} has no stimulation electrode")
        return chosen

    def setup(self, ctx):
        p = self.p
        self.stimulated = self._electrodes(ctx)
        self.pulse = self._pulse()
        self.responses = Responses(window_ms=(p.window_start_ms, p.window_stop_ms))
        n_stim, n_ch = len(self.stimulated), ctx.n_channels
        self.n_bins = int(np.ceil(p.window_stop_ms / p.bin_ms))
        self.psth = np.zeros((n_stim, n_ch, self.n_bins), np.int64)
        self.counts = np.zeros((n_stim, n_ch), np.int64)
        self.latencies = [[[] for _ in range(n_ch)] for _ in range(n_stim)]
        self.answered = np.zeros(n_stim, np.int64)
        self.baseline = np.zeros(n_ch, np.int64)
        self.start = ctx.now
        self.first_pulse_at = ctx.now + ctx.samples(p.baseline_s)
        self.next_at, self.index = self.first_pulse_at, 0
        self.sent = self.refused = 0
        self.result = {}

    def on_clock(self, ctx, sample):
        total = len(self.stimulated) * self.p.repetitions
        if self.index < total and ctx.now >= self.next_at:
            self._pulse_next(ctx)
        for response in self.responses.ready(ctx):
            self._add(ctx, response)
        if self.index >= total and not self.responses.waiting:
            ctx.finish()

    def _pulse_next(self, ctx):
        k = self.index // self.p.repetitions
        self.index += 1
        self.next_at = next_due(self.next_at, ctx.samples(self.p.interval_ms / 1000), ctx.now)
        try:
            self.responses.send(ctx, StimPattern.single([self.stimulated[k]], self.pulse,
                                                        label="probe"), label=k)
            self.sent += 1
        except SafetyRefusal:
            self.refused += 1

    def _add(self, ctx, response):
        k = response.label
        self.answered[k] += 1
        self.counts[k] += response.counts
        spikes = response.spikes
        bins = ((spikes.sample - response.execution_sample) * 1000.0
                / ctx.sample_rate / self.p.bin_ms).astype(np.int64)
        np.add.at(self.psth[k], (spikes.channel, np.minimum(bins, self.n_bins - 1)), 1)
        for ch in np.flatnonzero(response.latency >= 0):
            self.latencies[k][ch].append(response.latency[ch] * 1000.0 / ctx.sample_rate)

    def on_spikes(self, ctx, spikes):
        self.responses.on_spikes(ctx, spikes)
        before = spikes.sample < self.first_pulse_at
        if before.any():
            self.baseline += np.bincount(spikes.channel[before], minlength=ctx.n_channels)

    def on_stim(self, ctx, record):
        self.responses.on_stim(ctx, record)

    def teardown(self, ctx):
        self.result = self._map(ctx)
        self.figures = {"pulses_sent": self.sent, "pulses_refused": self.refused,
                        "pulses_answered": int(self.answered.sum())}
        if self.answered.any():
            self._write(ctx, self.result)
            self.figures.update(self._strongest(ctx.layout), out=self.p.out, **self.sets)

    def _map(self, ctx):
        """Strength (spikes per pulse above baseline) and median latency (ms) per pair."""
        p = self.p
        baseline_s = max(min(ctx.now, self.first_pulse_at) - self.start, 1) / ctx.sample_rate
        expected = self.baseline / baseline_s * (p.window_stop_ms - p.window_start_ms) / 1000
        per_pulse = self.counts / np.maximum(self.answered, 1)[:, None]
        strength = np.where(self.answered[:, None] > 0, per_pulse - expected[None, :], np.nan)
        latency = np.array([[np.median(x) if x else np.nan for x in row]
                            for row in self.latencies])
        return {"strength": strength, "latency_ms": latency}

    def _sets(self, ctx, strength):
        """sensory, motor_up, motor_down (channels) from the map."""
        layout = ctx.layout
        p = self.p
        s = np.nan_to_num(strength)
        drive = np.clip(s, 0, None).sum(axis=1)
        order = np.argsort(-drive, kind="stable")[:p.n_sensory]
        sensory = sorted((self.stimulated[i] for i in order),
                         key=lambda ch: tuple(layout.positions_um[ch][::-1]))
        excluded = set(sensory) | set(layout.ground) | set(layout.reference)
        response = np.clip(s, 0, None).sum(axis=0)
        candidates = [ch for ch in np.argsort(-response, kind="stable")
                      if int(ch) not in excluded and response[ch] > 0][:p.n_motor]
        by_height = sorted((int(ch) for ch in candidates),
                           key=lambda ch: tuple(layout.positions_um[ch][::-1]))
        half = len(by_height) // 2
        return sensory, by_height[half:], by_height[:half]

    def _write(self, ctx, result):
        labels = ctx.layout.labels
        sensory, up, down = self._sets(ctx, result["strength"])
        self.sets = {"sensory": [labels[c] for c in sensory],
                     "motor_up": [labels[c] for c in up],
                     "motor_down": [labels[c] for c in down]}
        psth = self.psth / np.maximum(self.answered, 1)[:, None, None]
        data = dict(self.sets,
                    stimulated=[labels[c] for c in self.stimulated],
                    recording=list(labels), pulses=self.answered.tolist(),
                    bin_ms=self.p.bin_ms,
                    window_ms=[self.p.window_start_ms, self.p.window_stop_ms],
                    strength=_rounded(result["strength"]),
                    latency_ms=_rounded(result["latency_ms"]),
                    psth=_rounded(psth))
        Path(self.p.out).write_text(json.dumps(data))
        ctx.log(f"probe_map: wrote {self.p.out}")

    def summary(self):
        return getattr(self, "figures", {})

    def _strongest(self, layout):
        """Each stimulated electrode's strongest responder but itself, and how far."""
        strength = np.nan_to_num(self.result["strength"], nan=-np.inf)
        best = {}
        for k, ch in enumerate(self.stimulated):
            row = strength[k].copy()
            row[ch] = -np.inf  # its own trace carries the artifact
            top = int(np.argmax(row))
            if np.isfinite(row[top]):
                best[layout.labels[ch]] = {
                    "electrode": layout.labels[top], "strength": round(float(row[top]), 3),
                    "distance_um": round(float(layout.distances_um(ch)[top]), 1)}
        return {"strongest_response": best}


def _rounded(a):
    """A float array as nested lists, NaN as None, 4 decimals."""
    return [_rounded(x) for x in a] if np.ndim(a) else (
        None if not np.isfinite(a) else round(float(a), 4))
