"""``culture=network`` (the default): a spiking network that learns.

:class:`NetworkCulture` is a spiking network (LIF neurons, delays, short-term
depression, STDP with synaptic scaling, Hebbian afferents, rate homeostasis) whose
kernels are in :mod:`hardware_sim.cultures.network_kernels`; pulses reach it through the
axons they excite, its responses travel through the network, and it learns from
structured stimulation (Isomura et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware_sim.cultures import network_kernels as kernels
from hardware_sim.cultures.base import Culture, StimEvent, pulse_charge_nC
from mea_control.types import Layout


@dataclass(frozen=True)
class NetworkParams:
    """Knobs of :class:`NetworkCulture`.

    Defaults: about 1 Hz per neuron, 5-7 Hz per electrode (3-3.5 Hz between bursts),
    network bursts of 170-190 ms every 4-5 s. Bursts space themselves through strong
    short-term depression (``use``) and a slow AHP (``sahp_*``) charged only by strong
    NMDA-like drive, i.e. by bursts, not by the sparse background. The evoked response
    comes mostly from the axons a pulse excites (``afferent_*``): their synapses give
    the excitatory neurons within a few hundred um a slow drive. Under the BSS protocol
    (1 Hz) the culture fires above its spontaneous rate, and homeostasis
    (``homeostasis``, ``rate_target_hz``) turns its recurrent excitation down (to about
    half within a few minutes) and its background with it: then each pulse answers
    near its electrodes instead of setting off the whole array, no network bursts, and
    about 1.5 Hz per electrode between pulses. Spontaneous activity is at the target,
    so a resting culture keeps its weights.

    Pharmacology: ``inhibition`` scales every inhibitory synapse. 0.2 is
    bicuculline-like (GABA-A block): bursts come more often and are larger; 2.0 is
    diazepam-like (GABA-A potentiation): weaker bursts. Homeostasis works against a
    drug that raises the rate, but slowly (``tau_homeostasis_s``).
    ``plasticity=False`` stops learning (no STDP, no afferent learning, no scaling);
    homeostasis goes on unless ``homeostasis=False``.
    """

    n_neurons: int = 1000
    excitatory_fraction: float = 0.8
    margin_um: float = 100.0  # the culture extends this far beyond the outer electrodes
    # wiring: p = p_max * exp(-r / length), by (pre I/E, post I/E); weights: PSP in mV of a
    # spike (an excitatory one at full resources)
    p_max: tuple[tuple[float, float], tuple[float, float]] = ((0.7, 0.7), (0.5, 0.5))
    length_um: float = 250.0
    weight_mV: tuple[tuple[float, float], tuple[float, float]] = ((5.0, 7.5), (3.0, 7.0))
    weight_sigma: float = 0.5  # log-normal spread of the initial weights
    synaptic_delay_ms: float = 1.0
    axon_speed_m_s: float = 0.3
    # neurons: leaky integrate-and-fire, potentials in mV above rest
    tau_m_ms: float = 20.0
    tau_e_ms: float = 5.0
    slow_fraction: float = 0.5  # of each excitatory input, carried by a slow (NMDA-like) drive
    tau_slow_ms: float = 100.0
    tau_i_ms: float = 10.0
    threshold_mV: float = 20.0
    reset_mV: float = 10.0
    refractory_ms: float = 2.0
    bias_mV: tuple[float, float] = (4.0, 15.0)  # steady depolarisation, uniform per neuron
    noise_rate_hz: float = 20.0  # Poisson kicks per neuron (spontaneous activity)
    noise_mV: float = 4.0
    adaptation_mV: float = 2.0  # spike-frequency adaptation of excitatory neurons
    tau_adaptation_ms: float = 1000.0
    # slow AHP (mV) of every neuron, charged while its slow drive depolarises it by more
    # than sahp_threshold_mV (per ms: sahp_gain x the excess), decaying with tau_sahp_s
    sahp_gain: float = 0.0005
    sahp_threshold_mV: float = 10.0
    tau_sahp_s: float = 5.0
    # short-term depression of excitatory synapses (Tsodyks-Markram, per neuron)
    use: float = 0.55
    tau_recovery_s: float = 3.0
    no_burst_excitation: float = 0.5  # E->E scale when the culture is built with bursts=False
    # pharmacology
    inhibition: float = 1.0
    # long-term plasticity: pair STDP on E->E synapses, fractions of w_max per pair
    plasticity: bool = True
    a_plus: float = 0.004
    a_minus: float = 0.0042
    tau_stdp_ms: float = 20.0
    w_max_mV: float = 8.0  # in the units of weight_mV
    scaling_interval_s: float = 1.0  # each neuron's total E->E input is reset to its start
    # homeostasis: when the excitatory neurons fire above rate_target_hz, E->E weights scale
    # down (by e per tau_homeostasis_s at twice the target) and their bias drops (by
    # homeostasis_bias_mV per scaling interval at twice the target, at most
    # homeostasis_bias_max_mV); below the target both recover, never past their start
    homeostasis: bool = True
    rate_target_hz: float = 1.0
    tau_homeostasis_s: float = 300.0
    homeostasis_bias_mV: float = 0.01
    homeostasis_bias_max_mV: float = 15.0
    # stimulation: activation probability d^n / (1 + d^n), d = charge / charge50(r)
    charge50_nC: float = 0.6  # at the electrode
    spread_um: float = 50.0  # charge50 * (1 + (r / spread)^2)
    inhibitory_charge50: float = 1.0  # charge50 of inhibitory neurons, relative to E
    activation_slope: float = 3.0
    latency_ticks: tuple[int, int] = (1, 2)  # ticks after the pulse's tick boundary
    # the axons a pulse excites: their synapses on each excitatory neuron, PSP in mV at full
    # recruitment (the activation curve above at r = 0), mean afferent_mV exp(-r / length)
    afferent_mV: float = 25.0
    afferent_length_um: float = 150.0
    afferent_delay_ms: float = 2.0
    # their plasticity: an excitatory neuron's spike multiplies its afferents from electrodes
    # pulsed within the last ~afferent_tau_ms by 1 + afferent_rate x exp(-t / afferent_tau_ms)
    afferent_rate: float = 0.005
    afferent_tau_ms: float = 50.0
    # burst detection (ground truth): spikes per 10 ms as a fraction of the neurons
    burst_on_fraction: float = 0.1
    burst_off_fraction: float = 0.03


class NetworkCulture(Culture):
    """A spiking network of excitatory and inhibitory neurons spread over the array.

    ``n_neurons`` leaky integrate-and-fire neurons (80 % excitatory) are placed
    uniformly over the array; neuron ``i`` follows, on a fixed step ``dt`` of
    about 1 ms, ``v += (b_i - v) dt/tau_m + g_e d_e - g_i d_i - a_i dt/tau_m``
    plus Poisson kicks, fires at ``threshold_mV``, resets and is refractory.
    ``d_e``, ``d_i`` are synaptic drives that decay with ``tau_e``, ``tau_i``
    (``g = dt/tau``, so a weight is about its PSP in mV). Synapses connect
    neurons with probability ``p_max exp(-r/length_um)`` and deliver after
    ``synaptic_delay_ms + r / axon_speed`` through a delay ring buffer.
    Excitatory neurons share a Tsodyks-Markram resource over their synapses
    (efficacy ``use * x``, ``x`` recovers with ``tau_recovery_s``) and adapt:
    so network bursts ignite from noise, deplete the resource and stop. A slow
    AHP (``tau_sahp_s``), charged while the slow drive depolarises a neuron by
    more than ``sahp_threshold_mV`` (in bursts), spaces the bursts.

    E->E synapses learn by pair STDP (traces with ``tau_stdp_ms``, additive,
    bounded by ``w_max_mV``) and every ``scaling_interval_s`` each neuron's total
    E->E input is scaled back to its initial value (homeostasis), so learning
    redistributes input toward correlated presynaptic neurons.

    A pulse excites the axons passing its electrode: each excitatory neuron gets
    from electrode ``e`` an afferent synapse of ``afferent_mV exp(-r / afferent_length_um)``
    (log-normal spread), delivered ``afferent_delay_ms`` after the pulse and scaled by
    the recruitment ``q^n / (1 + q^n)``, ``q = charge / charge50_nC``. The afferents
    learn: an excitatory neuron's spike multiplies its afferents from electrodes
    pulsed within about ``afferent_tau_ms`` by ``1 + afferent_rate exp(-t / tau)``,
    and every ``scaling_interval_s`` their total goes back to its start (Hebbian
    learning with normalisation): a neuron's input concentrates on the
    electrodes pulsed together, i.e. on those that follow the same hidden source.

    Homeostasis: every ``scaling_interval_s`` the excitatory neurons' spike count is
    compared with ``rate_target_hz``; above it, all E->E weights scale down (by a factor
    e per ``tau_homeostasis_s`` at twice the target) and the excitatory neurons' bias
    drops (``homeostasis_bias_mV`` per interval at twice the target); below it both
    recover, never past where they started. :meth:`homeostatic_state` reports both.

    A pulse also fires each neuron directly with probability ``d^n / (1 + d^n)``, ``d``
    the pulse's charge over ``charge50_nC (1 + (r / spread_um)^2)`` (times
    ``inhibitory_charge50`` for inhibitory neurons); activated
    neurons fire 1-3 ms later unless refractory, and the network carries the
    response on. Pulses act at the tick boundary after their sample; results do
    not depend on how the run is cut into intervals. ``bursts=False`` scales E->E
    weights by ``no_burst_excitation`` (spontaneous and evoked activity, no bursts).
    """

    def __init__(
        self,
        layout: Layout,
        sample_rate: float,
        seed: int | np.random.SeedSequence = 0,
        params: NetworkParams | None = None,
        bursts: bool = True,
        keep_log: bool = True,
    ) -> None:
        super().__init__(layout, sample_rate, keep_log)
        self.params = p = params or NetworkParams()
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        s_struct, s_loop, s_stim = seq.spawn(3)
        rng = np.random.default_rng(s_struct)
        dt_ms = 1000.0 * self.tick_samples / self.sample_rate
        n = p.n_neurons
        lo = layout.positions_um.min(axis=0) - p.margin_um
        hi = layout.positions_um.max(axis=0) + p.margin_um
        self.unit_positions_um = lo + (hi - lo) * rng.random((n, 2))
        #: True for excitatory neurons
        self.excitatory = np.zeros(n, bool)
        self.excitatory[rng.permutation(n)[: int(round(p.excitatory_fraction * n))]] = True
        weight_mV = np.array(p.weight_mV, np.float64)
        weight_mV[1] /= p.use  # excitatory: absolute efficacy, the PSP at full resources / use
        weight_mV[0] *= p.inhibition
        if not bursts:
            weight_mV[1, 1] *= p.no_burst_excitation
        self._start, self._post, self.weight, self._delay = kernels.wire(
            rng, self.unit_positions_um, self.excitatory, np.array(p.p_max), p.length_um,
            weight_mV, p.weight_sigma, p.synaptic_delay_ms, p.axon_speed_m_s * 1000.0, dt_ms,
        )
        self._in_start, self._in_syn, self._in_pre = kernels.incoming_plastic(
            self._start, self._post, self.excitatory
        )
        self._target_in = np.add.reduceat(
            np.append(self.weight[self._in_syn], 0.0), self._in_start[:-1]
        ) * (np.diff(self._in_start) > 0)
        self._bias = rng.uniform(*p.bias_mV, n)
        self._prm = self._loop_params(dt_ms)
        self._homeostasis = np.zeros(3)
        self._homeostasis[kernels.GAIN] = 1.0

        self._fs = np.zeros((kernels.N_FLOAT_STATE, n))
        self._fs[kernels.V] = rng.uniform(p.reset_mV, p.threshold_mV, n)
        self._fs[kernels.RESOURCE] = 1.0
        self._fs[kernels.NEXT_NOISE] = rng.exponential(1.0 / self._prm[kernels.P_NOISE_RATE], n)
        self._is = np.zeros((kernels.N_INT_STATE, n), np.int64)
        self._is[kernels.FORCED] = -1
        self._afferent_delay = max(1, round(p.afferent_delay_ms / dt_ms))
        depth = max(int(self._delay.max(initial=1)), self._afferent_delay) + 1
        self._ring_e = np.zeros((depth, n))
        self._ring_i = np.zeros((depth, n))
        self._rng_state = np.array([np.random.default_rng(s_loop).integers(1, 2**63)], np.uint64)
        self._rng_stim = np.random.default_rng(s_stim)
        self._burst = np.zeros(kernels.BURST_WINDOW + 2)
        self._burst_ticks: list[np.ndarray] = []  # onsets
        self._burst_end_ticks: list[np.ndarray] = []
        self._tick = 0  # ticks before this one are simulated
        self._pend_samples, self._pend_units = np.empty(0, np.int64), np.empty(0, np.int32)
        diff = self.unit_positions_um[:, None, :] - layout.positions_um[None, :, :]
        self._dist_um = np.sqrt((diff**2).sum(-1))  # neuron x electrode
        #: synapses of the axons each electrode excites, neuron x electrode, PSP mV
        self.afferent = (
            p.afferent_mV * np.exp(-self._dist_um / p.afferent_length_um)
            * rng.lognormal(-p.weight_sigma**2 / 2, p.weight_sigma, self._dist_um.shape)
            * self.excitatory[:, None]
        )
        self._afferent_target = self.afferent.sum(1)
        self._pulse_trace = np.zeros(layout.n_electrodes)

    def _loop_params(self, dt_ms: float) -> np.ndarray:
        p = self.params
        prm = np.zeros(kernels.N_PARAMS)
        prm[kernels.P_DECAY_M] = np.exp(-dt_ms / p.tau_m_ms)
        prm[kernels.P_DECAY_E] = np.exp(-dt_ms / p.tau_e_ms)
        prm[kernels.P_DECAY_I] = np.exp(-dt_ms / p.tau_i_ms)
        prm[kernels.P_GAIN_E] = dt_ms / p.tau_e_ms
        prm[kernels.P_GAIN_I] = dt_ms / p.tau_i_ms
        prm[kernels.P_SLOW_FRACTION] = p.slow_fraction
        prm[kernels.P_DECAY_SLOW] = np.exp(-dt_ms / p.tau_slow_ms)
        prm[kernels.P_GAIN_SLOW] = dt_ms / p.tau_slow_ms
        prm[kernels.P_THRESHOLD] = p.threshold_mV
        prm[kernels.P_RESET] = p.reset_mV
        prm[kernels.P_REFRACTORY] = round(p.refractory_ms / dt_ms)
        prm[kernels.P_NOISE_RATE] = p.noise_rate_hz * dt_ms * 1e-3  # per tick
        prm[kernels.P_NOISE_MV] = p.noise_mV
        prm[kernels.P_U] = p.use
        prm[kernels.P_TAU_REC] = p.tau_recovery_s * 1000.0 / dt_ms
        prm[kernels.P_DECAY_ADAPT] = np.exp(-dt_ms / p.tau_adaptation_ms)
        prm[kernels.P_ADAPT_MV] = p.adaptation_mV
        prm[kernels.P_A_PLUS] = p.a_plus if p.plasticity else 0.0
        prm[kernels.P_A_MINUS] = p.a_minus if p.plasticity else 0.0
        prm[kernels.P_W_MAX] = p.w_max_mV / p.use
        prm[kernels.P_DECAY_TRACE] = np.exp(-dt_ms / p.tau_stdp_ms)
        prm[kernels.P_SAHP_GAIN] = p.sahp_gain * dt_ms
        prm[kernels.P_SAHP_THRESHOLD] = p.sahp_threshold_mV
        prm[kernels.P_DECAY_SAHP] = np.exp(-dt_ms / (p.tau_sahp_s * 1000.0))
        prm[kernels.P_SCALING_TICKS] = max(1, round(p.scaling_interval_s * 1000.0 / dt_ms))
        prm[kernels.P_AFFERENT_RATE] = p.afferent_rate if p.plasticity else 0.0
        interval_s = prm[kernels.P_SCALING_TICKS] * dt_ms / 1000.0
        prm[kernels.P_TARGET_SPIKES] = p.rate_target_hz * interval_s * self.excitatory.sum()
        if p.homeostasis:
            prm[kernels.P_HOMEOSTASIS_RATE] = interval_s / p.tau_homeostasis_s
            prm[kernels.P_BIAS_RATE] = p.homeostasis_bias_mV
        prm[kernels.P_BIAS_MAX] = p.homeostasis_bias_max_mV
        prm[kernels.P_DECAY_PULSE_TRACE] = np.exp(-dt_ms / p.afferent_tau_ms)
        prm[kernels.P_BURST_ON] = p.burst_on_fraction * p.n_neurons
        prm[kernels.P_BURST_OFF] = p.burst_off_fraction * p.n_neurons
        return prm

    # -- ground truth ----------------------------------------------------------------------

    def synapses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every synapse as (pre, post, weight mV, delay ms), weights as they are now."""
        pre = np.repeat(np.arange(self.n_units, dtype=np.int32), np.diff(self._start))
        delay_ms = self._delay * 1000.0 * self.tick_samples / self.sample_rate
        return pre, self._post.copy(), self.weight.copy(), delay_ms

    def homeostatic_state(self) -> tuple[float, float]:
        """What homeostasis has done so far: (E->E gain, 1 at the start; how far the
        excitatory neurons' bias has been lowered, mV)."""
        return float(self._homeostasis[kernels.GAIN]), float(self._homeostasis[kernels.BIAS_SHIFT])

    def burst_onsets(self) -> np.ndarray:
        """Samples at which network bursts started, up to the current sample."""
        return self.bursts()[0]

    def bursts(self) -> tuple[np.ndarray, np.ndarray]:
        """Network bursts so far as (onset samples, end samples); a burst still on has no end.

        A burst starts when the neurons fire more than ``burst_on_fraction`` spikes per
        neuron in 10 ms and ends when they fire fewer than ``burst_off_fraction``.
        Kept, as the spike log, only with ``keep_log``.
        """
        self._check_log()
        ticks = [np.concatenate(t) if t else np.empty(0, np.int64)
                 for t in (self._burst_ticks, self._burst_end_ticks)]
        onsets, ends = (t * self.tick_samples for t in ticks)
        onsets = onsets[onsets < self._next_sample]
        return onsets, ends[ends < self._next_sample][: len(onsets)]

    # -- simulation ------------------------------------------------------------------------

    def _advance(
        self, start: int, stop: int, stims: list[StimEvent]
    ) -> tuple[np.ndarray, np.ndarray]:
        tick = self.tick_samples
        parts_s, parts_u = [self._pend_samples], [self._pend_units]
        i = 0
        while i < len(stims):
            k = stims[i][0] // tick + 1  # pulses act at the next tick boundary
            j = i
            while j < len(stims) and stims[j][0] // tick + 1 == k:
                j += 1
            self._run_to(k, parts_s, parts_u)
            self._stimulate(k, stims[i:j])
            i = j
        self._run_to(-(-stop // tick), parts_s, parts_u)
        samples = np.concatenate(parts_s) if len(parts_s) > 1 else parts_s[0]
        units = np.concatenate(parts_u) if len(parts_u) > 1 else parts_u[0]
        hi = int(samples.searchsorted(stop))
        self._pend_samples, self._pend_units = samples[hi:], units[hi:]
        return samples[:hi], units[:hi]

    def _run_to(self, k_end: int, parts_s: list, parts_u: list) -> None:
        if k_end <= self._tick:
            return
        samples, units, onsets, ends = kernels.run_ticks(
            self._tick, k_end, self.tick_samples, self._prm, self._fs, self._is, self._bias,
            self.excitatory, self._ring_e, self._ring_i, self._rng_state, self._start,
            self._post, self.weight, self._delay, self._in_start, self._in_syn, self._in_pre,
            self._target_in, self._burst, self.afferent, self._pulse_trace,
            self._afferent_target, self._homeostasis,
        )
        self._tick = k_end
        parts_s.append(samples)
        parts_u.append(units)
        if self.keep_log and len(onsets):
            self._burst_ticks.append(onsets)
        if self.keep_log and len(ends):
            self._burst_end_ticks.append(ends)

    def _stimulate(self, k: int, stims: list[StimEvent]) -> None:
        """Neurons activated by pulses acting at tick ``k`` fire 1-3 ms later."""
        p = self.params
        drive = np.zeros(self.n_units)
        axons = np.zeros(self.n_units)
        for _, ch, pulse in stims:
            charge = pulse_charge_nC(pulse)
            drive += charge / (1.0 + (self._dist_um[:, ch] / p.spread_um) ** 2)
            recruited = (charge / p.charge50_nC) ** p.activation_slope
            axons += self.afferent[:, ch] * (recruited / (1.0 + recruited))
            self._pulse_trace[ch] = 1.0
        self._ring_e[(k + self._afferent_delay) % len(self._ring_e)] += axons
        drive /= np.where(self.excitatory, p.charge50_nC, p.charge50_nC * p.inhibitory_charge50)
        hill = drive**p.activation_slope
        hit = self._rng_stim.random(self.n_units) < hill / (1.0 + hill)
        lat = self._rng_stim.integers(p.latency_ticks[0], p.latency_ticks[1] + 1, self.n_units)
        forced = self._is[kernels.FORCED]
        fire_at = k + lat
        take = hit & ((forced < k) | (fire_at < forced))
        forced[take] = fire_at[take]
