"""Hold a culture's firing rate at a target with a PI controller on the stimulation rate.

Newman et al. 2015 (eLife 4:e07192) clamped the firing rate of cultured networks with
closed-loop optogenetic feedback; Wallach et al. 2011 clamped the probability of an
evoked response by adjusting the stimulation. Here electrical pulses take the light's
place: single pulses go to the stimulation electrodes in turn (round robin), at a rate
that a proportional-integral controller sets every ``update_s`` from the error between
``target_hz`` and the measured rate.

Measured rate: spikes on the recording electrodes (``recording``: every electrode but
ground and reference, or the labels given) in the last update period, per electrode per
second. Controller: ``u = kp * e + ki * sum(e * update_s)``, ``e = target_hz - rate``,
``u`` the stimulation rate of all stimulation electrodes together, held within
``min_rate_hz`` and ``max_rate_hz``; the sum stops growing while ``u`` is held at a limit
(no wind-up). With ``max_amplitude`` above ``amplitude``, a ``u`` past ``max_rate_hz``
raises the amplitude instead, linearly to ``max_amplitude`` at twice ``max_rate_hz``.

Parameters: ``target_hz`` (Hz per electrode), ``kp`` (stimulation Hz per Hz of error),
``ki`` (stimulation Hz per Hz of error and second), ``update_s`` (s), ``min_rate_hz`` and
``max_rate_hz`` (Hz, all stimulation electrodes together), ``stim_electrodes`` (labels
or auto: ``n_stim`` spread over the array), the pulse (``pulse_mode``, ``amplitude`` and
``max_amplitude`` in uA or mV, ``phase_us``). The run lasts ``--duration``.

Records: every update is a decision (``ctx.decision``: the choice is the new stimulation
rate in Hz; ``measured_hz``, ``error_hz``, ``amplitude`` and ``integral`` are its details),
so the controller's trace is in the recording's decisions table. Every pulse goes through
the safety gate; a refused one is counted (``refused``) and the loop goes on. Summary:
``reached_s`` (time until the rate first came within 20 % of the target), ``mae_hz`` and
``mae_percent`` (mean absolute error from then on), ``held_within`` (the share of the
update periods from then on within 20 % of the target), the mean rate over that part
(``held_rate_hz``), the pulses sent. The controller steps and paces its pulses in
``on_clock``, on a raw stream as on a device that streams spikes only. On a raw stream
the engine blanks detection for a few ms after every pulse on every electrode, so the
rate measured under stimulation is lower than the culture's: at 200 Hz of pulses more
than half the time is blanked, and a target above what stays visible is not reached
(the controller then sits at ``max_rate_hz``; ``reached_s`` is None). The update periods
that overlap an operator's Pause are not measured: the controller resumes where it stood.

On the simulator (``sim://?raw=0``: the network culture, which bursts every 3-5 s, spikes
only) the default target (18 Hz, about twice the spontaneous rate) is reached in about
5 s and held within 10 % on average; the network bursts stop while it is held
(tests/test_closed_loop_protocols.py).
"""

import numpy as np

from mea_control.bursts import SpikeCounts
from mea_control.protocol import Parameter, Protocol, ProtocolError, electrodes
from mea_control.safety import SafetyRefusal
from mea_control.types import StimPattern, StimPulse

#: The rate counts as reached within this fraction of the target.
REACHED = 0.2


class PIController:
    """``u = kp e + ki sum(e dt)`` held within ``[lo, hi]``; the sum stops growing while
    ``u`` is held at a limit and the error pushes it further (no wind-up)."""

    def __init__(self, kp: float, ki: float, dt: float, lo: float, hi: float) -> None:
        self.kp, self.ki, self.dt, self.lo, self.hi = kp, ki, dt, lo, hi
        self.integral = 0.0

    def step(self, error: float) -> float:
        trial = self.integral + error * self.dt
        u = self.kp * error + self.ki * trial
        if self.lo <= u <= self.hi or (u > self.hi) == (error < 0):
            self.integral = trial
        return float(np.clip(self.kp * error + self.ki * self.integral, self.lo, self.hi))


def spread_electrodes(ctx, n: int) -> list[int]:
    """``n`` stimulation electrodes spread evenly over the array (in position order)."""
    layout = ctx.layout
    usable = [i for i in range(layout.n_electrodes) if ctx.can_stimulate(i)]
    if len(usable) < n:
        raise ProtocolError(f"n_stim={n}: layout {layout.name} has only {len(usable)} "
                            "electrodes that may stimulate here")
    usable.sort(key=lambda i: tuple(layout.positions_um[i]))
    return sorted(usable[k] for k in np.linspace(0, len(usable) - 1, n).round().astype(int))


class RateClamp(Protocol):
    """Hold the firing rate at target_hz, a PI controller on stimulation (Newman et al. 2015)."""

    name = "rate_clamp"
    parameters = {
        "target_hz": Parameter(float, 18.0, unit="Hz", range=(0.01, 1000.0),
                               help="rate to hold: mean spikes per second per recording "
                               "electrode"),
        "recording": Parameter(str, "all", help="'all' (every electrode but ground and "
                               "reference) or comma-separated labels whose rate is held"),
        "stim_electrodes": Parameter(str, "auto", help="'auto' (n_stim spread over the "
                                     "array) or comma-separated labels, stimulated in turn"),
        "n_stim": Parameter(int, 20, range=(1, 4096), help="stimulation electrodes for auto"),
        "kp": Parameter(float, 2.0, unit="Hz/Hz", range=(0.0, 1e4),
                        help="proportional gain: stimulation Hz per Hz of rate error"),
        "ki": Parameter(float, 4.0, unit="Hz/(Hz s)", range=(0.0, 1e4),
                        help="integral gain: stimulation Hz per Hz of error and second"),
        "update_s": Parameter(float, 0.5, unit="s", range=(0.01, 60.0),
                              help="controller period: the rate is measured over it"),
        "min_rate_hz": Parameter(float, 0.0, unit="Hz", range=(0.0, 10_000.0),
                                 help="lowest stimulation rate, all electrodes together"),
        "max_rate_hz": Parameter(float, 200.0, unit="Hz", range=(0.01, 10_000.0),
                                 help="highest stimulation rate, all electrodes together"),
        "pulse_mode": Parameter(str, "current", choices=("current", "voltage")),
        "amplitude": Parameter(float, 10.0, unit="uA or mV", range=(0.0, 10_000.0),
                               help="phase amplitude: uA in current mode, mV in voltage mode"),
        "max_amplitude": Parameter(float, 0.0, unit="uA or mV", range=(0.0, 10_000.0),
                                   help="above amplitude: past max_rate_hz the controller "
                                   "raises the amplitude up to this (0: fixed amplitude)"),
        "phase_us": Parameter(float, 200.0, unit="us", range=(1.0, 10_000.0)),
    }

    def validate(self):
        p = self.p
        if p.max_rate_hz < p.min_rate_hz:
            raise ProtocolError(f"max_rate_hz={p.max_rate_hz:g} is below "
                                f"min_rate_hz={p.min_rate_hz:g}")
        if p.max_amplitude and p.max_amplitude < p.amplitude:
            raise ProtocolError(f"max_amplitude={p.max_amplitude:g} is below "
                                f"amplitude={p.amplitude:g} (0 keeps the amplitude fixed)")

    def planned_patterns(self, ctx):
        """A pulse on each stimulation electrode, at amplitude and at max_amplitude."""
        amplitudes = [self.p.amplitude] + ([self.p.max_amplitude] if self.p.max_amplitude else [])
        return [self._pattern(ch, a) for a in amplitudes for ch in self._stim_channels(ctx)]

    def _pattern(self, channel, amplitude):
        """One pulse on one electrode (the pattern this protocol sends)."""
        pulse = StimPulse.biphasic(amplitude, self.p.phase_us, mode=self.p.pulse_mode)
        return StimPattern.single([channel], pulse, label=self.name)

    def _stim_channels(self, ctx):
        p = self.p
        if p.stim_electrodes == "auto":
            return spread_electrodes(ctx, p.n_stim)
        return electrodes(ctx, p.stim_electrodes, "stim_electrodes", stimulating=True)

    def _recording_channels(self, ctx):
        if self.p.recording == "all":
            skip = set(ctx.layout.ground) | set(ctx.layout.reference)
            return [ch for ch in range(ctx.n_channels) if ch not in skip]
        return electrodes(ctx, self.p.recording, "recording")

    def setup(self, ctx):
        p = self.p
        self.stim = self._stim_channels(ctx)
        self.recording = np.array(self._recording_channels(ctx))
        self.counts = SpikeCounts(ctx.sample_rate, ctx.now, bin_s=p.update_s)
        self.updated = 0  # update periods done
        self.rate_hz, self.amplitude = 0.0, p.amplitude
        self.sent = self.refused = 0
        self._next_pulse = None  # sample of the next pulse (None: not stimulating)
        self._turn = 0  # the next stimulation electrode, round robin
        self._paused = ctx.paused_samples
        self.start_clamp(ctx, p.target_hz)

    def start_clamp(self, ctx, target_hz):
        """Start holding ``target_hz`` from the next update period on."""
        p = self.p
        hi = p.max_rate_hz * (2.0 if p.max_amplitude > p.amplitude else 1.0)
        self.target_hz = target_hz
        self.controller = PIController(p.kp, p.ki, p.update_s, p.min_rate_hz, hi)
        self.clamp_from = self.updated
        self.trace = []  # (s since the clamp started, measured Hz) per update
        self.clamping = True

    def stop_clamp(self):
        self.clamping, self.rate_hz, self._next_pulse = False, 0.0, None

    def on_spikes(self, ctx, spikes):
        self.count(spikes.sample[np.isin(spikes.channel, self.recording)])

    def on_clock(self, ctx, sample):
        if ctx.paused_samples != self._paused:
            self.resume(ctx, ctx.paused_samples - self._paused)
        self.advance(ctx, sample)  # the spikes before sample are counted

    def resume(self, ctx, paused):
        """The operator held the protocol paused for the ``paused`` samples before now:
        the update periods that overlap the pause heard no spikes and are not measured
        (the controller goes on from where it stood)."""
        self._paused += paused
        self.updated = max(self.updated, self.counts.complete(ctx.now) + 1)

    def count(self, samples):
        """Count the spikes of the recording electrodes (their samples)."""
        self.counts.add(samples)

    def advance(self, ctx, counted):
        """Update for each period whose spikes are all in (``counted``); send due pulses."""
        while self.counts.complete(counted) > self.updated:
            self.updated += 1
            self.update(ctx, self.measured(self.updated - 1))
        self._pace(ctx)

    def measured(self, period):
        """Spikes per second per recording electrode in an update period."""
        n = int(self.counts.counts(period, period + 1)[0])
        return n / (self.p.update_s * len(self.recording))

    def update(self, ctx, measured):
        """The controller's step at the end of an update period."""
        if not self.clamping:
            return
        p = self.p
        error = self.target_hz - measured
        u = self.controller.step(error)
        self.rate_hz = min(u, p.max_rate_hz)
        if p.max_amplitude > p.amplitude:
            extra = max(u - p.max_rate_hz, 0.0) / p.max_rate_hz
            self.amplitude = round(p.amplitude + extra * (p.max_amplitude - p.amplitude), 3)
        self.trace.append(((self.updated - self.clamp_from) * p.update_s, measured))
        ctx.decision(round(self.rate_hz, 3), measured_hz=round(measured, 3),
                     error_hz=round(error, 3), amplitude=self.amplitude,
                     integral=round(self.controller.integral, 3))
        self._reschedule(ctx)

    def _reschedule(self, ctx):
        if self.rate_hz <= 0:
            self._next_pulse = None
        elif self._next_pulse is None:
            self._next_pulse = ctx.now
        else:
            self._next_pulse = min(self._next_pulse, ctx.now + ctx.sample_rate / self.rate_hz)

    def _pace(self, ctx):
        """Send the pulses that are due, one electrode after the other; a pulse more than
        a period late (the protocol was not called) is skipped, not sent late."""
        if self._next_pulse is None:
            return
        period = ctx.sample_rate / self.rate_hz
        self._next_pulse = max(self._next_pulse, ctx.now - period)
        while self._next_pulse <= ctx.now:
            channel = self.stim[self._turn % len(self.stim)]
            self._turn += 1
            self._next_pulse += period
            try:
                ctx.stimulate(self._pattern(channel, self.amplitude))
                self.sent += 1
            except SafetyRefusal as refusal:
                self.refused += 1
                if self.refused == 1:
                    ctx.log(f"{self.name}: pulse refused ({refusal}); later refusals are "
                            "counted in the summary")

    def clamp_figures(self):
        """reached_s, mae_hz, mae_percent and the mean rate over the held part."""
        if not self.trace:
            return {}
        t, rate = np.array(self.trace).T
        near = np.flatnonzero(np.abs(rate - self.target_hz) <= REACHED * self.target_hz)
        figures = {"target_hz": round(self.target_hz, 3), "reached_s": None}
        if len(near):
            held = rate[near[0]:]
            mae = float(np.mean(np.abs(held - self.target_hz)))
            figures.update(reached_s=round(float(t[near[0]]), 3),
                           mae_hz=round(mae, 3),
                           mae_percent=round(100 * mae / self.target_hz, 1),
                           held_within=round(float(np.mean(
                               np.abs(held - self.target_hz) <= REACHED * self.target_hz)), 3),
                           held_rate_hz=round(float(held.mean()), 3))
        return figures

    def summary(self):
        if not hasattr(self, "trace"):
            return {}
        return {**self.clamp_figures(), "pulses": self.sent, "refused": self.refused,
                "stim_channels": [int(c) for c in self.stim]}
