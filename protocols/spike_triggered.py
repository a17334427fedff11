"""Spike-triggered stimulation: electrode B is stimulated whenever electrode A spikes.

Source: the paradigm of Jackson, Mavoori & Fetz 2006 (Nature 444:56), where the
spikes recorded on one cortical site triggered stimulation of another for days and
changed the connection between them.

Conditions (``condition``):

- ``triggered``: each trigger spike books one pulse on the target electrodes
  ``delay_ms`` after it, or at the first sample the loop can still reach (``ctx.now``,
  the end of the block in which the spike was detected) if that is later: with the
  default 0, as soon as possible; a delay above the reaction time gives every pulse
  the same latency, and leaves the loop (or a device that needs notice) that much time;
- ``random_delay``, its control: triggers taken by the same rule book the same pulse,
  each ``random_delay_min_ms`` to ``random_delay_max_ms`` (uniform, drawn from the run's
  seeded ``ctx.rng``) after its trigger spike: as many pulses as the culture's spikes
  give, and no fixed timing relative to them.

Dead time: a trigger spike less than ``dead_time_ms`` after the previous trigger taken
is ignored, and no pulse is booked less than ``dead_time_ms`` after the previous one.

Every pulse is booked at its sample (``at_sample``), so the device runs it there or,
if the loop fell behind and the sample has passed, drops it (the run counts it as
dropped): a pulse never runs late. Reaction latency, from the trigger spike's sample
to the sample the pulse runs at, is therefore (``delay_ms`` 0) at most the block in which
the spike was detected plus the detector's peak search (0.5 ms): the budget,
``LATENCY_BUDGET_SAMPLES`` = 50 device samples (2 ms at 25 kHz, two 1 ms blocks), holds
for every pulse that runs with the default 1 ms blocks. A loop that stalls longer than
its block (or ``delay_ms``) leaves its pulses dropped: a loaded computer shows as drops
in the run's summary (``stims_dropped``), never as late pulses. A pulse the
safety gate refuses is counted and logged; the next trigger is taken no sooner than
``REFUSAL_PAUSE_S`` later, so a closed gate is not asked again on every spike.

Parameters: ``trigger_electrode`` (label of A), ``target_electrodes`` (labels of B,
comma-separated), ``dead_time_ms`` (ms), ``delay_ms`` (ms, triggered condition),
``pulse_mode`` (current or voltage), ``amplitude`` (uA in current mode, mV in voltage
mode; biphasic, cathodic first), ``phase_us`` (us per phase), ``condition``,
``random_delay_min_ms`` and ``random_delay_max_ms`` (ms).

Records: every pulse with its trigger sample (the recording's stimulation table has
trigger, decision, requested and execution samples); the summary gives the spikes
seen on the trigger electrode, pulses sent and refused (with the last refusal), and the
reaction latency (trigger -> booked sample) p50/p99/max in samples and ms next to the
budget.
"""

import numpy as np

from mea_control.protocol import Parameter, Protocol, ProtocolError, electrodes
from mea_control.safety import SafetyRefusal
from mea_control.types import StimPattern, StimPulse

#: Trigger spike -> pulse, in device samples, for every pulse that runs (1 ms blocks, 25 kHz).
LATENCY_BUDGET_SAMPLES = 50
#: After a refusal, the next trigger is taken no sooner than this (s).
REFUSAL_PAUSE_S = 1.0


class SpikeTriggered(Protocol):
    """Pulse electrode B whenever electrode A spikes (dead time; random-delay control)."""

    name = "spike_triggered"
    parameters = {
        "trigger_electrode": Parameter(str, "82", help="label of the electrode whose spikes "
                                                       "trigger the pulses"),
        "target_electrodes": Parameter(str, "28", help="labels of the stimulated electrodes, "
                                                       "comma-separated"),
        "dead_time_ms": Parameter(float, 50.0, unit="ms", range=(1.0, 60_000.0),
                                  help="least time between two triggers taken and between "
                                       "two pulses"),
        "delay_ms": Parameter(float, 0.0, unit="ms", range=(0.0, 10_000.0),
                              help="trigger spike -> pulse in the triggered condition "
                                   "(0: as soon as possible)"),
        "pulse_mode": Parameter(str, "current", choices=("current", "voltage")),
        "amplitude": Parameter(float, 5.0, unit="uA or mV", range=(0.0, 10_000.0),
                               help="phase amplitude: uA in current mode, mV in voltage mode"),
        "phase_us": Parameter(float, 200.0, unit="us", range=(1.0, 10_000.0)),
        "condition": Parameter(str, "triggered", choices=("triggered", "random_delay"),
                               help="random_delay: the control, each pulse at a random delay"),
        "random_delay_min_ms": Parameter(float, 100.0, unit="ms", range=(0.0, 60_000.0)),
        "random_delay_max_ms": Parameter(float, 500.0, unit="ms", range=(0.0, 60_000.0)),
    }

    def validate(self):
        if self.p.random_delay_max_ms < self.p.random_delay_min_ms:
            raise ProtocolError("random_delay_max_ms must not be below random_delay_min_ms")

    def planned_patterns(self, ctx):
        self._trigger_channel(ctx)
        return [self._pattern(self._target_channels(ctx))]

    def _pattern(self, channels, at_sample=None):
        """The pulse on every target electrode, booked at ``at_sample``."""
        p = self.p
        pulse = StimPulse.biphasic(p.amplitude, p.phase_us, mode=p.pulse_mode)
        return StimPattern.single(channels, pulse, at_sample=at_sample, label="spike_triggered")

    def _trigger_channel(self, ctx):
        try:
            return ctx.layout.channel(self.p.trigger_electrode.strip())
        except ValueError as exc:
            raise ProtocolError(f"trigger_electrode: {exc}") from None

    def _target_channels(self, ctx):
        channels = electrodes(ctx, self.p.target_electrodes, "target_electrodes",
                              stimulating=True)
        if self._trigger_channel(ctx) in channels:
            raise ProtocolError("target_electrodes: the trigger electrode cannot be a target "
                                "(its own pulses would trigger it)")
        return channels

    def setup(self, ctx):
        self.trigger = self._trigger_channel(ctx)
        self.targets = self._target_channels(ctx)
        self.dead = ctx.samples(self.p.dead_time_ms / 1000.0)
        self.sample_rate = ctx.sample_rate
        self.next_trigger = ctx.now  # the first trigger sample that will be taken
        self.last_pulse = None  # sample of the latest pulse booked
        self.seen = self.refused = 0
        self.latencies = []  # trigger -> booked sample of each pulse sent
        self.refusal = ""

    def on_spikes(self, ctx, spikes):
        for sample in spikes.sample[spikes.channel == self.trigger]:
            self.seen += 1
            if sample >= self.next_trigger:
                self._react(ctx, int(sample))

    def _delay(self, ctx):
        """Samples from the trigger spike to its pulse (before the dead time and the clock)."""
        if self.p.condition == "triggered":
            return ctx.samples(self.p.delay_ms / 1000.0)
        ms = ctx.rng.uniform(self.p.random_delay_min_ms, self.p.random_delay_max_ms)
        return ctx.samples(ms / 1000.0)

    def _react(self, ctx, trigger):
        at = max(ctx.now, trigger + self._delay(ctx))
        if self.last_pulse is not None:
            at = max(at, self.last_pulse + self.dead)
        try:
            ctx.stimulate(self._pattern(self.targets, at), trigger_sample=trigger)
        except SafetyRefusal as refusal:
            self.refused += 1
            self.refusal = str(refusal)
            self.next_trigger = trigger + max(self.dead, ctx.samples(REFUSAL_PAUSE_S))
            return
        self.next_trigger = trigger + self.dead
        self.last_pulse = at
        self.latencies.append(at - trigger)

    def summary(self):
        if not hasattr(self, "latencies"):
            return {}
        lat = np.asarray(self.latencies, np.int64)
        quantiles = {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                     "max": int(lat.max())} if len(lat) else {"p50": None, "p99": None,
                                                              "max": None}
        ms = 1000.0 / self.sample_rate
        return {
            "condition": self.p.condition,
            "trigger_spikes": self.seen,
            "pulses_sent": len(lat),
            "pulses_refused": self.refused,
            "last_refusal": self.refusal,
            "reaction_latency_samples": quantiles,
            "reaction_latency_ms": {k: None if v is None else round(v * ms, 3)
                                    for k, v in quantiles.items()},
            "latency_budget_samples": LATENCY_BUDGET_SAMPLES,
        }
