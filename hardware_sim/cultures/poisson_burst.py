"""``culture=poisson_burst``: Poisson units lifted by a network-burst process.

:class:`PoissonBurstCulture`, the first simulated culture: Poisson units whose
rates are lifted by a network-burst process that runs on a depressing
resource, and pulses that evoke spikes 5-50 ms later near the electrode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from hardware_sim.cultures import network_kernels
from hardware_sim.cultures.base import Culture, StimEvent, pulse_charge_nC
from mea_control.types import Layout

_MAX_SPIKES_PER_TICK = 64
_UNIFORM_SUPPLY = 1 << 15


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
            network_kernels.insert_spike(out_s, out_u, first, n_out, s, unit)
            n_out += 1
    hist[n_ticks, 0], hist[n_ticks, 1], hist[n_ticks, 2], hist[n_ticks, 3] = r, a, bursting, forced
    hist[n_ticks, 4], hist[n_ticks, 5] = u_pos + u_base, peak
    return out_s[:n_out], out_u[:n_out], hist, onsets[:n_on]
