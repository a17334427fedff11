"""The simulated culture: neurons on the array, their spikes, their answers to pulses.

A :class:`Culture` is advanced in sample time, interval by interval, with the
pulses that the device executed in each interval; it returns the spikes its
units fired there (sample of spike initiation, unit id). Units have positions
in um on the array, so :mod:`hardware_sim.electrodes` can turn their spikes
into voltage. Every culture keeps a ground-truth log of its spikes for tests.

:class:`PoissonBurstCulture` is the first implementation: Poisson units whose
rates are lifted by a network-burst process that runs on a depressing
resource, and pulses that evoke spikes 5-50 ms later near the electrode.
:class:`NetworkCulture` is a spiking network (LIF neurons, delays, short-term
depression, STDP with synaptic scaling, Hebbian afferents, rate homeostasis) whose
kernels are in :mod:`hardware_sim.network`; pulses reach it through the axons they
excite, its responses travel through the network, and it learns from structured
stimulation (Isomura et al.).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from hardware_sim import network
from mea_control.types import Layout, StimPulse

#: Nominal electrode impedance used to turn voltage-mode pulses into current:
#: I[uA] = V[mV] / Z[kOhm]. 50 kOhm is typical of a 30 um TiN electrode at 1 kHz.
NOMINAL_IMPEDANCE_KOHM = 50.0

#: One executed pulse: (sample, channel, pulse).
StimEvent = tuple[int, int, StimPulse]

_MAX_SPIKES_PER_TICK = 64
_UNIFORM_SUPPLY = 1 << 15


def pulse_phases_uA(pulse: StimPulse) -> tuple[tuple[float, float], ...]:
    """The phases as (duration_us, current_uA); voltage goes through the nominal impedance."""
    if pulse.mode == "current":
        return pulse.phases
    return tuple((d, a / NOMINAL_IMPEDANCE_KOHM) for d, a in pulse.phases)


def pulse_charge_nC(pulse: StimPulse) -> float:
    """Charge of the pulse's first non-zero phase, nC (the effective stimulus strength)."""
    for d, a in pulse_phases_uA(pulse):
        if a != 0.0:
            return abs(a) * d * 1e-3
    return 0.0


class Culture(ABC):
    """A population of units on the array, advanced interval by interval in sample time.

    Subclasses set ``unit_positions_um`` (n_units, 2) and implement :meth:`_advance`;
    those in :data:`CULTURES` are built as ``cls(layout, sample_rate, seed=SeedSequence,
    bursts=bool, keep_log=bool)`` by the sim driver. Their state advances on a tick of
    about 1 ms (``tick_samples``). ``keep_log`` keeps the ground truth (every spike, the
    burst onsets), which grows with time; the sim driver asks for it only with ``truth=1``.
    """

    def __init__(self, layout: Layout, sample_rate: float, keep_log: bool = True) -> None:
        self.layout = layout
        self.sample_rate = float(sample_rate)
        self.keep_log = keep_log
        self.tick_samples = max(1, int(round(self.sample_rate / 1000.0)))
        self.unit_positions_um = np.empty((0, 2), np.float64)
        self._next_sample = 0
        self._log_samples: list[np.ndarray] = []
        self._log_units: list[np.ndarray] = []

    @property
    def n_units(self) -> int:
        return int(self.unit_positions_um.shape[0])

    @property
    def next_sample(self) -> int:
        """The first sample the next :meth:`advance` must start at."""
        return self._next_sample

    def advance(
        self, start_sample: int, n_samples: int, stims: Sequence[StimEvent] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``[start_sample, start_sample + n_samples)`` with ``stims`` executed in it.

        Intervals must be consecutive. Returns (spike samples int64, unit ids int32),
        sorted by sample, all inside the interval.
        """
        if start_sample != self._next_sample:
            raise ValueError(
                f"culture advanced out of order: expected sample {self._next_sample}, "
                f"got {start_sample}"
            )
        stop = start_sample + n_samples
        for sample, _, _ in stims:
            if not start_sample <= sample < stop:
                raise ValueError(f"stimulus at sample {sample} outside [{start_sample}, {stop})")
        samples, units = self._advance(start_sample, stop, sorted(stims, key=_stim_key))
        self._next_sample = stop
        if self.keep_log and len(samples):
            self._log_samples.append(samples)
            self._log_units.append(units)
        return samples, units

    @abstractmethod
    def _advance(
        self, start: int, stop: int, stims: list[StimEvent]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Spikes in ``[start, stop)``; ``stims`` are sorted by sample."""

    def _check_log(self) -> None:
        if not self.keep_log:
            raise RuntimeError("this culture keeps no ground truth: make it with keep_log=True")

    def spike_log(self) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth: every spike so far as (samples int64, unit ids int32).

        Kept only with ``keep_log`` (it grows with time), as are the burst onsets;
        without it, asking for either is an error.
        """
        self._check_log()
        if not self._log_samples:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        return np.concatenate(self._log_samples), np.concatenate(self._log_units)


def _stim_key(stim: StimEvent) -> tuple[int, int]:
    return stim[0], stim[1]


@dataclass(frozen=True)
class PoissonBurstParams:
    """Knobs of :class:`PoissonBurstCulture`; defaults give a typical 3-4 week cortical culture."""

    units_per_electrode: float = 2.0  # mean (Poisson) on an active electrode
    active_fraction: float = 0.85  # electrodes with any units nearby
    unit_distance_um: tuple[float, float] = (10.0, 50.0)  # from the electrode centre
    base_rate_hz: float = 1.0  # median spontaneous rate of a unit (log-normal)
    base_rate_sigma: float = 0.6
    burst_rate_hz: float = 60.0  # peak rate of a fully participating unit in a burst
    burst_participation: tuple[float, float] = (0.2, 1.0)  # uniform per unit
    tau_recovery_s: float = 2.0  # resource recovery
    depletion: float = 0.15  # resource used per (Hz of burst activity x second)
    burst_end_resource: float = 0.35  # a burst ends when the resource falls below this
    ignition_hz: float = 1.5  # burst hazard at full resources ...
    ignition_power: float = 8.0  # ... scaled by resource ** power
    burst_strength: tuple[float, float] = (0.6, 1.8)  # peak rate factor, uniform per burst
    tau_rise_s: float = 0.015
    tau_decay_s: float = 0.03
    # evoked responses
    charge50_nC: float = 1.5  # charge at which a unit on the electrode responds half-maximally
    spread_um: float = 120.0  # threshold doubles at this distance (x (1 + (r/spread)^2))
    activation_slope: float = 2.0  # Hill exponent of the activation curve
    evoked_spikes_max: float = 2.0  # mean evoked spikes of a fully activated, rested unit
    latency_ms: tuple[float, float] = (5.0, 50.0)  # evoked spike latencies, clipped
    latency_shape: float = 2.0  # gamma shape; scale set by latency_scale_ms
    latency_scale_ms: float = 6.0
    evoked_burst_activation: float = 20.0  # summed activation that ignites a burst at R=1
    evoked_burst_delay_ms: float = 15.0


class PoissonBurstCulture(Culture):
    """Poisson units near the electrodes, lifted together by self-terminating network bursts.

    The network state is a resource ``R`` (0..1) and a burst activity ``A`` (Hz).
    Between bursts ``R`` recovers with ``tau_recovery_s`` and a burst ignites
    with hazard ``ignition_hz * R ** ignition_power``; in a burst ``A`` follows
    ``strength * burst_rate_hz * R`` (strength drawn per burst) and depletes
    ``R`` until it falls below ``burst_end_resource``. Unit ``j`` fires at
    ``base_j + participation_j * A``. A pulse activates unit ``j`` with a Hill
    function of charge over a threshold that grows with distance; activated
    units fire Poisson spike counts after gamma latencies clipped to 5-50 ms,
    scaled by ``R``, and a strong pulse on a rested network can ignite a burst.

    The state advances on a fixed 1 ms tick grid and is simulated ahead in
    frames (cheap per block); a pulse that ignites a burst rolls the frame back
    to the tick where it acts. Results do not depend on the block size.
    """

    frame_ticks = 100

    def __init__(
        self,
        layout: Layout,
        sample_rate: float,
        seed: int | np.random.SeedSequence = 0,
        params: PoissonBurstParams | None = None,
        bursts: bool = True,
        keep_log: bool = True,
    ) -> None:
        super().__init__(layout, sample_rate, keep_log)
        self.params = p = params or PoissonBurstParams()
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        s_struct, s_spont, s_evoked = seq.spawn(3)
        self._place_units(np.random.default_rng(s_struct))
        self._rng_spont = np.random.default_rng(s_spont)
        self._rng_evoked = np.random.default_rng(s_evoked)
        self._bursts = bursts

        dt = self.tick_samples / self.sample_rate
        self._dynamics = np.array(
            [
                dt,
                p.tau_recovery_s,
                p.depletion,
                p.burst_end_resource,
                p.ignition_hz if bursts else 0.0,
                p.ignition_power,
                p.tau_rise_s,
                p.tau_decay_s,
                p.burst_rate_hz,
                float(self.base_rate_hz.sum()),
                float(self.participation.sum()) if bursts else 0.0,
                p.burst_strength[0],
                p.burst_strength[1],
            ]
        )
        self._base_cdf = _cdf(self.base_rate_hz)
        self._burst_cdf = _cdf(self.participation)
        # The spontaneous stream: uniforms drawn ahead in bulk, addressed by absolute index.
        self._uniforms = np.empty(0)
        self._u_base = 0
        # Simulated ahead: state at the start of each tick in [hist_tick, sim_tick], as rows of
        # (resource, activity Hz, bursting 0/1, tick a burst is forced at or -1, uniform index,
        # peak rate of the current burst Hz).
        self._hist_tick = 0
        self._hist = np.array([[1.0, 0.0, 0.0, -1.0, 0.0, 0.0]])
        self._sim_tick = 0
        # spikes of simulated ticks not yet returned (sorted), and evoked spikes pending
        self._spk_samples, self._spk_units = np.empty(0, np.int64), np.empty(0, np.int32)
        self._pend_samples, self._pend_units = np.empty(0, np.int64), np.empty(0, np.int32)
        self._burst_ticks: list[int] = []

    # -- structure -------------------------------------------------------------------------

    def _place_units(self, rng: np.random.Generator) -> None:
        p, layout = self.params, self.layout
        blocked = set(layout.ground) | set(layout.reference)
        pos, home = [], []
        for ch in range(layout.n_electrodes):
            active = rng.random() < p.active_fraction
            n = rng.poisson(p.units_per_electrode) if active else 0
            if ch in blocked:
                continue
            r = rng.uniform(*p.unit_distance_um, size=n)
            phi = rng.uniform(0.0, 2 * np.pi, size=n)
            xy = layout.positions_um[ch] + np.column_stack([r * np.cos(phi), r * np.sin(phi)])
            pos.append(xy)
            home.extend([ch] * n)
        self.unit_positions_um = np.concatenate(pos) if pos else np.empty((0, 2))
        #: the electrode each unit was placed around
        self.unit_home = np.asarray(home, np.int32)
        n_units = self.n_units
        self.base_rate_hz = p.base_rate_hz * np.exp(
            p.base_rate_sigma * rng.standard_normal(n_units)
        )
        self.participation = rng.uniform(*p.burst_participation, size=n_units)
        diff = self.unit_positions_um[:, None, :] - layout.positions_um[None, :, :]
        self._dist_um = np.sqrt((diff**2).sum(-1))  # unit x electrode

    # -- ground truth ----------------------------------------------------------------------

    @property
    def resource(self) -> float:
        """The resource R (0..1) at the start of the next interval."""
        return float(self._state_at(self._next_sample // self.tick_samples)[0])

    def burst_onsets(self) -> np.ndarray:
        """Samples at which network bursts started, up to the current sample."""
        self._check_log()
        onsets = np.asarray(self._burst_ticks, np.int64) * self.tick_samples
        return onsets[onsets < self._next_sample]

    # -- simulation ------------------------------------------------------------------------

    def _advance(
        self, start: int, stop: int, stims: list[StimEvent]
    ) -> tuple[np.ndarray, np.ndarray]:
        tick = self.tick_samples
        i = 0
        while i < len(stims):
            # pulses act at the next tick boundary, which is never already returned
            k = stims[i][0] // tick + 1
            j = i
            while j < len(stims) and stims[j][0] // tick + 1 == k:
                j += 1
            self._evoke(k, stims[i:j])
            i = j
        self._simulate_to(-(-stop // tick))
        hi = int(self._spk_samples.searchsorted(stop))
        samples, units = self._spk_samples[:hi], self._spk_units[:hi]
        self._spk_samples, self._spk_units = self._spk_samples[hi:], self._spk_units[hi:]
        if len(self._pend_samples) and self._pend_samples[0] < stop:
            hi = int(np.searchsorted(self._pend_samples, stop))
            samples = np.concatenate([samples, self._pend_samples[:hi]])
            units = np.concatenate([units, self._pend_units[:hi]])
            order = np.argsort(samples, kind="stable")
            samples, units = samples[order], units[order]
            self._pend_samples, self._pend_units = self._pend_samples[hi:], self._pend_units[hi:]
        return samples, units

    def _state_at(self, k: int) -> np.ndarray:
        self._simulate_to(k)
        return self._hist[k - self._hist_tick]

    def _simulate_to(self, k_end: int) -> None:
        """Make sure ticks before ``k_end`` are simulated (a frame at a time)."""
        if self._sim_tick >= k_end:
            return
        k0 = self._sim_tick
        k1 = max(k_end, k0 + self.frame_ticks)
        # forget history no pulse can roll back to any more
        keep_from = max(self._hist_tick, self._next_sample // self.tick_samples)
        self._hist = self._hist[keep_from - self._hist_tick :]
        self._hist_tick = keep_from
        state = self._hist[-1].copy()
        need = (k1 - k0) * (2 + 2 * _MAX_SPIKES_PER_TICK)
        u_first = int(self._hist[0, 4]) - self._u_base
        if len(self._uniforms) - (int(state[4]) - self._u_base) < need:
            fresh = self._rng_spont.random(max(_UNIFORM_SUPPLY, need))
            self._uniforms = np.concatenate([self._uniforms[u_first:], fresh])
            self._u_base += u_first
        samples, units, hist, onsets = _run_ticks(
            k0,
            k1,
            self.tick_samples,
            state,
            self._dynamics,
            self._uniforms,
            self._u_base,
            self._base_cdf,
            self._burst_cdf,
        )
        self._hist = np.concatenate([self._hist[:-1], hist])
        self._spk_samples = np.concatenate([self._spk_samples, samples])
        self._spk_units = np.concatenate([self._spk_units, units])
        if self.keep_log:
            self._burst_ticks.extend(onsets.tolist())
        self._sim_tick = k1

    def _rollback(self, k: int, forced_tick: int) -> None:
        """Re-simulate from tick ``k`` with a burst forced at ``forced_tick``."""
        row = k - self._hist_tick
        self._hist = self._hist[: row + 1].copy()
        self._hist[row, 3] = float(forced_tick)
        self._sim_tick = k
        hi = int(np.searchsorted(self._spk_samples, k * self.tick_samples))
        self._spk_samples, self._spk_units = self._spk_samples[:hi], self._spk_units[:hi]
        self._burst_ticks = [t for t in self._burst_ticks if t < k]

    def _evoke(self, k: int, stims: Sequence[StimEvent]) -> None:
        """Spikes (and maybe a burst) evoked by pulses acting at tick ``k``."""
        p, rng = self.params, self._rng_evoked
        resource, _, bursting = self._state_at(k)[:3]
        by_sample: dict[int, list[StimEvent]] = {}
        for stim in stims:
            by_sample.setdefault(stim[0], []).append(stim)
        parts_s, parts_u = [self._pend_samples], [self._pend_units]
        for sample, group in by_sample.items():
            drive = np.zeros(self.n_units)
            for _, ch, pulse in group:
                threshold = p.charge50_nC * (1.0 + (self._dist_um[:, ch] / p.spread_um) ** 2)
                drive += pulse_charge_nC(pulse) / threshold
            activation = drive**p.activation_slope / (1.0 + drive**p.activation_slope)
            counts = rng.poisson(p.evoked_spikes_max * activation * (0.25 + 0.75 * resource))
            units = np.repeat(np.arange(self.n_units, dtype=np.int32), counts)
            lat_ms = p.latency_ms[0] + rng.gamma(p.latency_shape, p.latency_scale_ms, len(units))
            lat_ms = np.clip(lat_ms, *p.latency_ms)
            parts_s.append(sample + np.round(lat_ms * self.sample_rate / 1000.0).astype(np.int64))
            parts_u.append(units)
            ignite = min(1.0, activation.sum() / p.evoked_burst_activation) * resource**4
            if rng.random() < ignite and self._bursts and bursting == 0.0:
                delay = int(round(p.evoked_burst_delay_ms * self.sample_rate / 1000.0))
                self._rollback(k, (sample + delay) // self.tick_samples)
        samples, units = np.concatenate(parts_s), np.concatenate(parts_u)
        order = np.argsort(samples, kind="stable")
        self._pend_samples, self._pend_units = samples[order], units[order]


def _cdf(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    if total <= 0:
        return np.ones(max(1, len(weights)))
    cdf = np.cumsum(weights) / total
    cdf[-1] = 1.0
    return cdf


@numba.njit(cache=True)
def _run_ticks(k0, k1, tick, state, dyn, uniforms, u_base, base_cdf, burst_cdf):
    """Advance the burst process over ticks [k0, k1) and draw the units' spikes.

    ``state`` is the row (R, A, bursting, forced tick, uniform index, peak) at the start
    of ``k0``; returns spikes, the state at the start of every tick in [k0, k1]
    and the ticks at which bursts started.
    """
    dt, tau_rec, depletion, r_end, ign_hz, ign_pow, tau_rise, tau_decay, a_peak = dyn[:9]
    base_total, burst_total, strength_lo, strength_hi = dyn[9], dyn[10], dyn[11], dyn[12]
    n_ticks = k1 - k0
    out_s = np.empty(n_ticks * _MAX_SPIKES_PER_TICK, np.int64)
    out_u = np.empty(n_ticks * _MAX_SPIKES_PER_TICK, np.int32)
    hist = np.empty((n_ticks + 1, 6))
    onsets = np.empty(n_ticks, np.int64)
    n_out = 0
    n_on = 0
    r, a, bursting, forced, peak = state[0], state[1], state[2], state[3], state[5]
    u_pos = int(state[4]) - u_base
    for k in range(k0, k1):
        row = k - k0
        hist[row, 0], hist[row, 1], hist[row, 2], hist[row, 3] = r, a, bursting, forced
        hist[row, 4], hist[row, 5] = u_pos + u_base, peak
        u = uniforms[u_pos]
        u_pos += 1
        if bursting == 0.0:
            hazard = ign_hz * r**ign_pow * dt
            is_forced = forced >= 0.0 and k >= forced
            if is_forced or u < hazard:
                # the strength of the burst reuses the (conditionally uniform) draw
                v = u if is_forced else u / hazard
                peak = a_peak * (strength_lo + (strength_hi - strength_lo) * v)
                bursting = 1.0
                forced = -1.0
                onsets[n_on] = k
                n_on += 1
        if bursting != 0.0:
            a += (peak * r - a) * dt / tau_rise
            if r < r_end:
                bursting = 0.0
        else:
            a -= a * dt / tau_decay
        r += (1.0 - r) * dt / tau_rec - depletion * a * r * dt
        if r < 0.0:
            r = 0.0
        burst_rate = a * burst_total
        lam = (base_total + burst_rate) * dt
        # Poisson count by inversion
        u = uniforms[u_pos]
        u_pos += 1
        n = 0
        prob = np.exp(-lam)
        cum = prob
        while u > cum and n < _MAX_SPIKES_PER_TICK:
            n += 1
            prob *= lam / n
            cum += prob
        p_base = base_total / (base_total + burst_rate) if lam > 0.0 else 1.0
        first = n_out
        for _ in range(n):
            u = uniforms[u_pos]
            if u < p_base:
                unit = np.searchsorted(base_cdf, u / p_base, side="right")
            else:
                unit = np.searchsorted(burst_cdf, (u - p_base) / (1.0 - p_base), side="right")
            if unit >= len(base_cdf):
                unit = len(base_cdf) - 1
            s = k * tick + int(uniforms[u_pos + 1] * tick)
            u_pos += 2
            network.insert_spike(out_s, out_u, first, n_out, s, unit)
            n_out += 1
    hist[n_ticks, 0], hist[n_ticks, 1], hist[n_ticks, 2], hist[n_ticks, 3] = r, a, bursting, forced
    hist[n_ticks, 4], hist[n_ticks, 5] = u_pos + u_base, peak
    return out_s[:n_out], out_u[:n_out], hist, onsets[:n_on]


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
        self._start, self._post, self.weight, self._delay = network.wire(
            rng, self.unit_positions_um, self.excitatory, np.array(p.p_max), p.length_um,
            weight_mV, p.weight_sigma, p.synaptic_delay_ms, p.axon_speed_m_s * 1000.0, dt_ms,
        )
        self._in_start, self._in_syn, self._in_pre = network.incoming_plastic(
            self._start, self._post, self.excitatory
        )
        self._target_in = np.add.reduceat(
            np.append(self.weight[self._in_syn], 0.0), self._in_start[:-1]
        ) * (np.diff(self._in_start) > 0)
        self._bias = rng.uniform(*p.bias_mV, n)
        self._prm = self._loop_params(dt_ms)
        self._homeostasis = np.zeros(3)
        self._homeostasis[network.GAIN] = 1.0

        self._fs = np.zeros((network.N_FLOAT_STATE, n))
        self._fs[network.V] = rng.uniform(p.reset_mV, p.threshold_mV, n)
        self._fs[network.RESOURCE] = 1.0
        self._fs[network.NEXT_NOISE] = rng.exponential(1.0 / self._prm[network.P_NOISE_RATE], n)
        self._is = np.zeros((network.N_INT_STATE, n), np.int64)
        self._is[network.FORCED] = -1
        self._afferent_delay = max(1, round(p.afferent_delay_ms / dt_ms))
        depth = max(int(self._delay.max(initial=1)), self._afferent_delay) + 1
        self._ring_e = np.zeros((depth, n))
        self._ring_i = np.zeros((depth, n))
        self._rng_state = np.array([np.random.default_rng(s_loop).integers(1, 2**63)], np.uint64)
        self._rng_stim = np.random.default_rng(s_stim)
        self._burst = np.zeros(network.BURST_WINDOW + 2)
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
        prm = np.zeros(network.N_PARAMS)
        prm[network.P_DECAY_M] = np.exp(-dt_ms / p.tau_m_ms)
        prm[network.P_DECAY_E] = np.exp(-dt_ms / p.tau_e_ms)
        prm[network.P_DECAY_I] = np.exp(-dt_ms / p.tau_i_ms)
        prm[network.P_GAIN_E] = dt_ms / p.tau_e_ms
        prm[network.P_GAIN_I] = dt_ms / p.tau_i_ms
        prm[network.P_SLOW_FRACTION] = p.slow_fraction
        prm[network.P_DECAY_SLOW] = np.exp(-dt_ms / p.tau_slow_ms)
        prm[network.P_GAIN_SLOW] = dt_ms / p.tau_slow_ms
        prm[network.P_THRESHOLD] = p.threshold_mV
        prm[network.P_RESET] = p.reset_mV
        prm[network.P_REFRACTORY] = round(p.refractory_ms / dt_ms)
        prm[network.P_NOISE_RATE] = p.noise_rate_hz * dt_ms * 1e-3  # per tick
        prm[network.P_NOISE_MV] = p.noise_mV
        prm[network.P_U] = p.use
        prm[network.P_TAU_REC] = p.tau_recovery_s * 1000.0 / dt_ms
        prm[network.P_DECAY_ADAPT] = np.exp(-dt_ms / p.tau_adaptation_ms)
        prm[network.P_ADAPT_MV] = p.adaptation_mV
        prm[network.P_A_PLUS] = p.a_plus if p.plasticity else 0.0
        prm[network.P_A_MINUS] = p.a_minus if p.plasticity else 0.0
        prm[network.P_W_MAX] = p.w_max_mV / p.use
        prm[network.P_DECAY_TRACE] = np.exp(-dt_ms / p.tau_stdp_ms)
        prm[network.P_SAHP_GAIN] = p.sahp_gain * dt_ms
        prm[network.P_SAHP_THRESHOLD] = p.sahp_threshold_mV
        prm[network.P_DECAY_SAHP] = np.exp(-dt_ms / (p.tau_sahp_s * 1000.0))
        prm[network.P_SCALING_TICKS] = max(1, round(p.scaling_interval_s * 1000.0 / dt_ms))
        prm[network.P_AFFERENT_RATE] = p.afferent_rate if p.plasticity else 0.0
        interval_s = prm[network.P_SCALING_TICKS] * dt_ms / 1000.0
        prm[network.P_TARGET_SPIKES] = p.rate_target_hz * interval_s * self.excitatory.sum()
        if p.homeostasis:
            prm[network.P_HOMEOSTASIS_RATE] = interval_s / p.tau_homeostasis_s
            prm[network.P_BIAS_RATE] = p.homeostasis_bias_mV
        prm[network.P_BIAS_MAX] = p.homeostasis_bias_max_mV
        prm[network.P_DECAY_PULSE_TRACE] = np.exp(-dt_ms / p.afferent_tau_ms)
        prm[network.P_BURST_ON] = p.burst_on_fraction * p.n_neurons
        prm[network.P_BURST_OFF] = p.burst_off_fraction * p.n_neurons
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
        return float(self._homeostasis[network.GAIN]), float(self._homeostasis[network.BIAS_SHIFT])

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
        samples, units, onsets, ends = network.run_ticks(
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
        forced = self._is[network.FORCED]
        fire_at = k + lat
        take = hit & ((forced < k) | (fire_at < forced))
        forced[take] = fire_at[take]


#: Culture implementations by name, for the sim driver's ``culture=`` parameter.
CULTURES: dict[str, type[Culture]] = {
    "poisson_burst": PoissonBurstCulture,
    "network": NetworkCulture,
}
