"""Quiet spontaneous network bursts with distributed closed-loop stimulation.

Wagenaar, Madhavan, Pine & Potter 2005 (J Neurosci 25:680) suppressed the network bursts
of dense cortical cultures by stimulating many electrodes in turn at a rate that a
feedback loop adapted to hold the array-wide firing rate at a target: the culture's
activity, spread out in time, no longer gathered into bursts, and the bursts came back
when stimulation stopped. This protocol runs three phases:

1. ``baseline`` (``baseline_s``): no stimulation; the mean rate per recording electrode
   is measured.
2. ``quieting`` (``quieting_s``): single pulses on the stimulation electrodes in turn
   (round robin over ``stim_electrodes``: ``n_stim`` spread over the array, or labels),
   their rate set every ``update_s`` by the PI controller of ``rate_clamp`` to hold
   ``target_hz`` (0: ``target_factor`` x the baseline's rate). ``stimulate=false`` runs
   the same phases without a pulse: the unstimulated control.
3. ``after`` (``after_s``): no stimulation.

The run ends after the third phase; an operator's Pause lengthens the phase it falls in
by its length, and the phase's figures leave the paused time out. Network bursts
(:mod:`mea_control.bursts`): the spikes of the recording electrodes in 10 ms bins; a bin
above ``burst_threshold`` x the baseline's rate is high, a burst is a run of high bins
(gaps up to 40 ms bridged, at least 40 ms) whose highest bin reaches ``burst_peak`` x
the baseline's rate: a network burst recruits the whole array at once, while the
responses to single pulses, which also cross the first threshold, stay far below that
peak. Burstiness index (Wagenaar et al. 2005): the spikes in 1-s bins, ``(f15 - 0.15) /
0.85``, 0 flat, 1 all in bursts.

Parameters: phase durations (s), ``target_hz`` (Hz per recording electrode),
``target_factor``, ``burst_threshold`` and ``burst_peak`` (multiples of the baseline's
rate), ``stimulate``, and those of ``rate_clamp`` (gains, ``update_s``, stimulation rate
limits in Hz, the pulse in uA or mV and us, the electrodes). Records: the controller's
every update as a decision (as ``rate_clamp``), a log line at each phase's end, and per
phase in the summary: the burst count and rate (per minute), the burstiness index, the
mean rate (Hz per electrode) and the pulses sent; ``refused`` counts the pulses the
safety gate refused; ``clamp_*`` are rate_clamp's figures for the quieting phase.

On the simulator: ``sim://?raw=0`` (the default network culture, spikes only; it bursts
every 3-5 s), 20-30 s phases: 1 burst during quieting (at its start) against 4-5 in the
same phase unstimulated, burstiness 0.02-0.06 against 0.3, for seeds 0, 1 and 3
(tests/test_closed_loop_protocols.py; the README's table).
"""

from mea_control.bursts import BIN_S, BurstDetector, SpikeCounts, burstiness_index, per_minute
from mea_control.protocol import Parameter
from protocols.rate_clamp import RateClamp

PHASES = ("baseline", "quieting", "after")


class BurstQuieting(RateClamp):
    """Quiet network bursts by distributed closed-loop stimulation (Wagenaar et al. 2005)."""

    name = "burst_quieting"
    parameters = {
        "baseline_s": Parameter(float, 120.0, unit="s", range=(1.0, 86_400.0),
                                help="first phase: no stimulation"),
        "quieting_s": Parameter(float, 300.0, unit="s", range=(1.0, 86_400.0),
                                help="second phase: closed-loop distributed stimulation"),
        "after_s": Parameter(float, 120.0, unit="s", range=(1.0, 86_400.0),
                             help="third phase: no stimulation"),
        **RateClamp.parameters,
        "target_hz": Parameter(float, 0.0, unit="Hz", range=(0.0, 1000.0),
                               help="rate to hold while quieting, per recording electrode "
                               "(0: target_factor x the baseline's rate)"),
        "target_factor": Parameter(float, 2.0, range=(0.1, 100.0),
                                   help="target_hz = this x the baseline's rate when "
                                   "target_hz is 0"),
        "burst_threshold": Parameter(float, 5.0, range=(1.0, 10_000.0),
                                     help="a 10 ms bin whose rate is above this x the "
                                     "baseline's rate is in a burst"),
        "burst_peak": Parameter(float, 50.0, range=(1.0, 100_000.0),
                                help="a burst's highest 10 ms bin reaches this x the "
                                "baseline's rate"),
        "stimulate": Parameter(bool, True, help="false: the same phases without a pulse "
                               "(the unstimulated control)"),
    }

    def planned_patterns(self, ctx):
        return super().planned_patterns(ctx) if self.p.stimulate else []

    def setup(self, ctx):
        super().setup(ctx)
        self.stop_clamp()  # from the quieting phase on
        p = self.p
        self.bins = SpikeCounts(ctx.sample_rate, ctx.now)  # 10 ms, for bursts
        self.seconds = SpikeCounts(ctx.sample_rate, ctx.now, bin_s=1.0)  # for burstiness
        ends, t = [], 0.0
        for seconds in (p.baseline_s, p.quieting_s, p.after_s):
            t += seconds
            ends.append(ctx.now + ctx.samples(t))
        self.ends = ends
        self.start = ctx.now
        self.phase = 0
        self.detector = None  # once the baseline's rate is known
        self.phases = {}
        self._sent_before = 0
        self.paused_spans = []  # (first, stop) samples of the operator's pauses

    def resume(self, ctx, paused):
        """A pause lengthens the phase it fell in by as much, and is left out of its figures."""
        super().resume(ctx, paused)
        self.paused_spans.append((ctx.now - paused, ctx.now))
        self.ends[self.phase:] = [end + paused for end in self.ends[self.phase:]]

    def _paused_in(self, start, stop):
        """Samples of [start, stop) that fell in a pause."""
        return sum(max(min(b, stop) - max(a, start), 0) for a, b in self.paused_spans)

    def count(self, samples):
        super().count(samples)
        self.bins.add(samples)
        self.seconds.add(samples)

    def advance(self, ctx, counted):
        while self.phase < len(PHASES) and counted >= self.ends[self.phase]:
            self._end_phase(ctx)
        if self.phase < len(PHASES):
            super().advance(ctx, counted)

    def _end_phase(self, ctx):
        """Close the phase: its bursts, burstiness and rate; start the next."""
        name = PHASES[self.phase]
        start = self.start if self.phase == 0 else self.ends[self.phase - 1]
        stop = self.ends[self.phase]
        seconds = (stop - start - self._paused_in(start, stop)) / ctx.sample_rate  # heard
        rate = self.bins.counts(self.bins.complete(start), self.bins.complete(stop)).sum()
        rate = float(rate) / seconds / len(self.recording)
        if self.detector is None:
            self.detector = self._detector(rate)
        self.detector.update(stop)
        self.detector.finish()
        bursts = [b for b in self.detector.bursts if start <= b.start < stop]
        first_s = self.seconds.complete(start)
        per_second = self.seconds.counts(first_s, self.seconds.complete(stop))
        heard = [not self._paused_in(self.seconds.bin_start(i), self.seconds.bin_start(i + 1))
                 for i in range(first_s, first_s + len(per_second))]
        per_second = per_second[heard]
        figures = {
            "bursts": len(bursts),
            "bursts_per_min": round(per_minute(bursts, seconds), 2),
            "burstiness": round(burstiness_index(per_second), 3),
            "rate_hz": round(rate, 3),
            "pulses": self.sent - self._sent_before,
        }
        self.phases[name] = figures
        self._sent_before = self.sent
        ctx.log(f"{self.name}: {name} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        self.phase += 1
        if name == "baseline" and self.p.stimulate:
            target = self.p.target_hz or self.p.target_factor * figures["rate_hz"]
            self.start_clamp(ctx, target)
        elif name == "quieting":
            self.stop_clamp()
        elif name == "after":
            ctx.finish()

    def _detector(self, baseline_hz):
        """The burst detector, its thresholds set from the baseline's rate (Hz)."""
        per_bin = max(baseline_hz, 0.1) * len(self.recording) * BIN_S
        self.thresholds = (self.p.burst_threshold * per_bin, self.p.burst_peak * per_bin)
        return BurstDetector(self.bins, *self.thresholds)

    def summary(self):
        if not hasattr(self, "phases"):
            return {}
        out = {f"{phase}_{key}": value for phase, figures in self.phases.items()
               for key, value in figures.items()}
        if self.p.stimulate and "quieting" in self.phases:
            out.update({f"clamp_{k}": v for k, v in self.clamp_figures().items()})
        out["refused"] = self.refused
        return out
