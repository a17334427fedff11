"""Blind-source-separation training: a culture stimulated with mixtures of two hidden
sources comes to respond to the sources themselves.

After Isomura, Kotani & Jimbo 2015 (PLoS Comput Biol 11:e1004643) and Isomura, Kotani,
Jimbo & Friston 2023 (Nat Commun 14:4547: the culture separates the sources as the
free-energy principle predicts). Two hidden binary sources s1, s2, each 1 with p = 1/2
in every trial. The 32 stimulated electrodes form two groups of 16: in each trial a
group-1 electrode follows source 1 with p = 1 - ``mixing`` and source 2 with p =
``mixing``, and group 2 the reverse; an electrode whose source is 1 gets a pulse. One
pattern every ``isi_s``, ``trials_per_session`` trials a session; by default the same
sequence repeats in every session (``repeat_sequence``), as in the published experiment.

Parameters: ``mixing`` (a probability, 0 to 0.5: 0.25 is the published control
condition, 0 and 0.5 the mix0 and mix50 conditions), ``sessions``,
``trials_per_session`` (256 published), ``isi_s`` (s, 1 published), the response window
``window_start_ms``-``window_stop_ms`` (ms after each pulse, 10-300 published), the
pulse (``pulse_mode``, ``amplitude`` per phase in uA or mV, ``phase_us`` in us), and
``electrodes``: 32 comma-separated labels, group 1 first, or "auto" (16 spread over each
half of the array, the left half group 1).

Records: the trial helper's table (``o``: which of the 32 electrodes were pulsed, ``s``:
the sources, ``r``: each electrode's spike count in the window), the pulses labelled
"bss"; the summary names the stimulated electrodes (``stim_channels``, channel indices).
Every pattern goes through the safety gate.
"""

import numpy as np

from mea_control.protocol import Parameter, Protocol, ProtocolError, Trials, TrialSpec, electrodes
from mea_control.types import StimPattern, StimPulse

N_PER_GROUP = 16
#: The group of each stimulated electrode: 0 for the first 16, 1 for the rest.
GROUP = np.repeat([0, 1], N_PER_GROUP)


class BSSIsomura(Protocol):
    """Isomura et al. blind-source-separation training with two hidden sources."""

    name = "bss_isomura"
    parameters = {
        "mixing": Parameter(float, 0.25, range=(0.0, 0.5),
                            help="probability that an electrode follows the other group's source"),
        "sessions": Parameter(int, 100, range=(1, 10_000), help="number of sessions"),
        "trials_per_session": Parameter(int, 256, range=(1, 100_000)),
        "isi_s": Parameter(float, 1.0, unit="s", range=(0.05, 600.0),
                           help="inter-stimulus interval"),
        "window_start_ms": Parameter(float, 10.0, unit="ms", range=(0.0, 10_000.0)),
        "window_stop_ms": Parameter(float, 300.0, unit="ms", range=(1.0, 10_000.0)),
        "pulse_mode": Parameter(str, "current", choices=("current", "voltage")),
        "amplitude": Parameter(float, 5.0, unit="uA or mV", range=(0.0, 10_000.0),
                               help="phase amplitude: uA in current mode, mV in voltage mode"),
        "phase_us": Parameter(float, 200.0, unit="us", range=(1.0, 10_000.0)),
        "repeat_sequence": Parameter(bool, True,
                                     help="the same 256-trial sequence in every session"),
        "electrodes": Parameter(str, "auto",
                                help="'auto' or 32 comma-separated labels, group 1 first"),
    }

    def validate(self):
        p = self.p
        if p.window_stop_ms <= p.window_start_ms:
            raise ProtocolError("window_stop_ms must be larger than window_start_ms")
        if p.window_stop_ms > p.isi_s * 1000:
            raise ProtocolError("the response window must end before the next trial (isi_s)")

    def planned_patterns(self, ctx):
        """The largest trial: every chosen electrode with the pulse."""
        return [StimPattern.single(self._electrodes(ctx), self._pulse())]

    def _pulse(self):
        p = self.p
        return StimPulse.biphasic(p.amplitude, p.phase_us, mode=p.pulse_mode)

    def setup(self, ctx):
        p = self.p
        self.channels = self._electrodes(ctx)
        self.pulse = self._pulse()
        self.sequence = self._sequence(ctx.rng)
        ctx.use_trials(Trials(
            self.design,
            n_trials=p.sessions * p.trials_per_session,
            stim_channels=self.channels,
            isi_s=p.isi_s,
            window_ms=(p.window_start_ms, p.window_stop_ms),
            n_sources=2,
            trials_per_session=p.trials_per_session,
        ))

    def _electrodes(self, ctx):
        layout = ctx.layout
        if self.p.electrodes != "auto":
            labels = [x.strip() for x in self.p.electrodes.split(",") if x.strip()]
            if len(labels) != 2 * N_PER_GROUP or len(set(labels)) != len(labels):
                raise ProtocolError(
                    f"electrodes: give {2 * N_PER_GROUP} different labels, not {len(labels)}"
                    + (" with repeats" if len(set(labels)) != len(labels) else ""))
            return electrodes(ctx, labels, "electrodes", stimulating=True)
        # Left half of the array is group 1, right half group 2, 16 spread over each.
        usable = [i for i in range(layout.n_electrodes) if ctx.can_stimulate(i)]
        usable.sort(key=lambda i: tuple(layout.positions_um[i]))
        half = len(usable) // 2
        chosen = []
        for part in (usable[:half], usable[half:]):
            if len(part) < N_PER_GROUP:
                raise ProtocolError(f"layout {layout.name} has too few stimulation electrodes")
            picks = np.linspace(0, len(part) - 1, N_PER_GROUP).round().astype(int)
            chosen += [part[k] for k in picks]
        return chosen

    def _sequence(self, rng):
        """s (trials x 2) and o (trials x 32) for one session."""
        n = self.p.trials_per_session
        s = (rng.random((n, 2)) < 0.5).astype(np.uint8)
        other = rng.random((n, 2 * N_PER_GROUP)) < self.p.mixing
        source = np.where(other, 1 - GROUP, GROUP)  # which source each electrode follows
        o = np.take_along_axis(s, source, axis=1)
        return s, o.astype(np.uint8)

    def design(self, ctx, index):
        k = index % self.p.trials_per_session
        if k == 0 and index > 0 and not self.p.repeat_sequence:
            self.sequence = self._sequence(ctx.rng)
        s, o = self.sequence[0][k], self.sequence[1][k]
        stimulated = [ch for ch, on in zip(self.channels, o, strict=True) if on]
        pattern = StimPattern.single(stimulated, self.pulse, label="bss") if stimulated else None
        return TrialSpec(pattern, s)

    def summary(self):
        return {"stim_channels": [int(c) for c in getattr(self, "channels", [])]}
