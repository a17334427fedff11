"""Kernels of the spiking network culture: wiring and the 1 ms tick loop (numba).

The state of :class:`~hardware_sim.cultures.network.NetworkCulture` lives in a few
arrays that these functions update in place, so a run can be continued tick by
tick with pulses applied in between. Randomness inside the loop comes from a
xorshift64* generator whose state is part of the culture, so the same seed gives
the same spikes however the run is cut into calls.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

# rows of the float state (neuron x row would be slower: rows are contiguous per neuron array)
V, DRIVE_E, DRIVE_SLOW, DRIVE_I, RESOURCE, TRACE, NEXT_NOISE, ADAPT, SAHP = range(9)
N_FLOAT_STATE = 9
# rows of the int state: tick the refractory period ends, tick of a forced (stimulated) spike,
# tick the resource was last updated at
REFRACTORY_END, FORCED, RESOURCE_TICK = range(3)
N_INT_STATE = 3

# parameters of the tick loop, by index into one float array
(
    P_DECAY_M, P_DECAY_E, P_DECAY_I, P_GAIN_E, P_GAIN_I, P_THRESHOLD, P_RESET, P_REFRACTORY,
    P_NOISE_RATE, P_NOISE_MV, P_U, P_TAU_REC, P_DECAY_ADAPT, P_ADAPT_MV, P_A_PLUS, P_A_MINUS,
    P_W_MAX, P_SCALING_TICKS, P_BURST_ON, P_BURST_OFF, P_SLOW_FRACTION, P_DECAY_SLOW, P_GAIN_SLOW,
    P_DECAY_TRACE, P_SAHP_GAIN, P_SAHP_THRESHOLD, P_DECAY_SAHP, P_AFFERENT_RATE,
    P_DECAY_PULSE_TRACE, P_TARGET_SPIKES, P_HOMEOSTASIS_RATE, P_BIAS_RATE, P_BIAS_MAX,
) = range(33)
N_PARAMS = 33
# rows of the homeostasis state: E->E gain (1 at the start), bias shift of the excitatory
# neurons (mV, 0 at the start), excitatory spikes since the last scaling tick
GAIN, BIAS_SHIFT, E_SPIKES = range(3)
MIN_GAIN = 0.05
BURST_WINDOW = 10  # ticks over which population activity is summed to detect bursts


def wire(
    rng: np.random.Generator,
    positions: np.ndarray,
    excitatory: np.ndarray,
    p_max: np.ndarray,
    length_um: float,
    weight_mV: np.ndarray,
    weight_sigma: float,
    delay_base_ms: float,
    speed_um_per_ms: float,
    dt_ms: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random distance-dependent synapses, sorted by presynaptic neuron, E targets first.

    ``p_max`` and ``weight_mV`` are 2x2 by (pre is E, post is E) index 0 = I, 1 = E.
    Returns (CSR start per pre, post, weight mV, delay ticks).
    """
    n = len(positions)
    r = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    e = excitatory.astype(int)
    p = p_max[e[:, None], e[None, :]] * np.exp(-r / length_um)
    np.fill_diagonal(p, 0.0)
    pre, post = np.nonzero(rng.random((n, n)) < p)
    order = np.lexsort((post, ~excitatory[post], pre))
    pre, post = pre[order], post[order]
    mean = weight_mV[e[pre], e[post]]
    weight = mean * np.exp(weight_sigma * rng.standard_normal(len(pre)) - weight_sigma**2 / 2)
    delay = np.maximum(1, np.round((delay_base_ms + r[pre, post] / speed_um_per_ms) / dt_ms))
    start = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(pre, minlength=n), out=start[1:])
    return start, post.astype(np.int32), weight.astype(np.float64), delay.astype(np.int32)


def incoming_plastic(
    start: np.ndarray, post: np.ndarray, excitatory: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E->E synapses by postsynaptic neuron: (CSR start per post, synapse index, pre)."""
    n = len(start) - 1
    pre = np.repeat(np.arange(n), np.diff(start))
    (syn,) = np.nonzero(excitatory[pre] & excitatory[post])
    syn = syn[np.argsort(post[syn], kind="stable")]
    in_start = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(post[syn], minlength=n), out=in_start[1:])
    return in_start, syn.astype(np.int64), pre[syn].astype(np.int32)


@numba.njit(cache=True, inline="always")
def _uniform(rng_state):
    """xorshift64*: a uniform in (0, 1)."""
    x = rng_state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    rng_state[0] = x
    return (float((x * np.uint64(2685821657736338717)) >> np.uint64(11)) + 0.5) / 9007199254740992.0


@numba.njit(cache=True)
def insert_spike(out_s, out_u, first, n_out, sample, unit):
    """Put a spike at ``out[n_out]``, kept sorted by sample among ``out[first:]`` (the
    spikes of this tick; earlier ticks' spikes are earlier), stable for equal samples."""
    j = n_out
    while j > first and out_s[j - 1] > sample:
        out_s[j] = out_s[j - 1]
        out_u[j] = out_u[j - 1]
        j -= 1
    out_s[j] = sample
    out_u[j] = unit


#: state values below this count for nothing and are set to 0 (see _flush)
_FLOOR = 1e-20


@numba.njit(cache=True, inline="always")
def _flush(x):
    """``x``, or 0 once it is too small to matter: a decaying value is flushed before it
    becomes subnormal, which would cost a microcode assist per vector operation touching
    it (a neuron silent for minutes would slow the whole loop several times over)."""
    return x if x >= _FLOOR else 0.0


@numba.njit(cache=True)
def run_ticks(
    k0, k1, tick_samples, prm, fs, ist, bias, excitatory, ring_e, ring_i, rng_state,
    start, post, weight, delay, in_start, in_syn, in_pre, target_in, burst,
    afferent, pulse_trace, afferent_target, homeostasis,
):
    """Advance the network over ticks [k0, k1); return its spikes (sample, neuron).

    ``afferent`` (neuron x electrode) are the synapses of the axons each electrode
    excites; ``pulse_trace`` (per electrode) is set to 1 by a pulse and decays. An
    excitatory neuron's spike potentiates its afferents by ``rate x trace x weight``;
    at each scaling tick its afferent total goes back to ``afferent_target``, and
    :func:`_homeostasis` updates ``homeostasis`` (rows GAIN, BIAS_SHIFT, E_SPIKES).

    ``burst`` holds (bursting 0/1, population counts of the last BURST_WINDOW ticks, their
    sum); returns also the ticks at which network bursts started and ended.
    """
    n = fs.shape[1]
    depth = ring_e.shape[0]
    decay_m, decay_e, decay_i = prm[P_DECAY_M], prm[P_DECAY_E], prm[P_DECAY_I]
    gain_e, gain_i = prm[P_GAIN_E], prm[P_GAIN_I]
    slow_fraction, decay_slow, gain_slow = prm[P_SLOW_FRACTION], prm[P_DECAY_SLOW], prm[P_GAIN_SLOW]
    threshold, reset, refractory = prm[P_THRESHOLD], prm[P_RESET], int(prm[P_REFRACTORY])
    noise_rate, noise_mV = prm[P_NOISE_RATE], prm[P_NOISE_MV]
    use, tau_rec = prm[P_U], prm[P_TAU_REC]
    decay_adapt, adapt_mV = prm[P_DECAY_ADAPT], prm[P_ADAPT_MV]
    w_max = prm[P_W_MAX]
    a_plus, a_minus = prm[P_A_PLUS] * w_max, prm[P_A_MINUS] * w_max
    decay_trace = prm[P_DECAY_TRACE]
    sahp_gain, sahp_threshold = prm[P_SAHP_GAIN], prm[P_SAHP_THRESHOLD]
    decay_sahp = prm[P_DECAY_SAHP]
    slow_to_mV = gain_slow / (1.0 - decay_m)  # steady depolarisation per unit of slow drive
    scaling_ticks = int(prm[P_SCALING_TICKS])
    burst_on, burst_off = prm[P_BURST_ON], prm[P_BURST_OFF]
    plastic = a_plus > 0.0 or a_minus > 0.0
    afferent_rate, decay_pulse = prm[P_AFFERENT_RATE], prm[P_DECAY_PULSE_TRACE]
    n_el = pulse_trace.shape[0]
    pulses_recent = afferent_rate > 0.0 and pulse_trace.max() > 0.0

    cap = (k1 - k0) * 8 + 2 * n
    out_s = np.empty(cap, np.int64)
    out_u = np.empty(cap, np.int32)
    n_out = 0
    onsets = np.empty(0, np.int64)
    ends = np.empty(0, np.int64)
    spikers = np.empty(n, np.int64)
    offsets = np.empty(n, np.int64)
    v_old = np.empty(n)
    # the neurons that need the noise/fire step this tick (a kick due, at threshold or a pulse:
    # a few in a thousand), 0/1 bytes read 8 at a time; each tick sets all of them
    n_words = (n + 7) // 8
    todo = np.zeros(n_words * 8, np.uint8)
    todo_words = todo.view(np.uint64)
    leak = 1.0 - decay_m
    fast_fraction = 1.0 - slow_fraction
    v, d_e, d_slow, d_i = fs[V], fs[DRIVE_E], fs[DRIVE_SLOW], fs[DRIVE_I]
    resource, trace, next_noise, adapt = fs[RESOURCE], fs[TRACE], fs[NEXT_NOISE], fs[ADAPT]
    sahp = fs[SAHP]
    refr_end, forced = ist[REFRACTORY_END], ist[FORCED]
    resource_tick = ist[RESOURCE_TICK]

    for k in range(k0, k1):
        slot = k % depth
        n_spk = 0
        first = n_out
        next_tick = k + 1
        # the membranes, branch-free (v_old a masked store) so that it vectorises
        for i in range(n):
            # decaying values are flushed to 0 when negligible (STDP reads traces above 1e-3)
            d_e[i] = _flush(d_e[i] * decay_e + fast_fraction * ring_e[slot, i])
            d_slow[i] = _flush(d_slow[i] * decay_slow + slow_fraction * ring_e[slot, i])
            d_i[i] = _flush(d_i[i] * decay_i + ring_i[slot, i])
            ring_e[slot, i] = 0.0
            ring_i[slot, i] = 0.0
            adapt[i] = _flush(adapt[i] * decay_adapt)
            trace[i] = _flush(trace[i] * decay_trace)
            # slow AHP: calcium entering with strong NMDA-like drive (Mg2+ unblocked)
            sahp[i] = _flush(
                sahp[i] * decay_sahp
                + sahp_gain * max(slow_to_mV * d_slow[i] - sahp_threshold, 0.0)
            )
            v_i = v[i]
            dv = (bias[i] - v_i - adapt[i] - sahp[i]) * leak + gain_e * d_e[i] - gain_i * d_i[i]
            v_new = reset if k < refr_end[i] else v_i + dv + gain_slow * d_slow[i]
            v[i] = v_new
            flag = (next_noise[i] < next_tick) | (v_new >= threshold) | (forced[i] == k)
            todo[i] = flag
            if flag:  # v_old is read only for these
                v_old[i] = v_i
        if pulses_recent:
            pulses_recent = False
            for e in range(n_el):
                tr = pulse_trace[e] * decay_pulse
                pulse_trace[e] = tr if tr >= 1e-3 else 0.0
                pulses_recent |= tr >= 1e-3
        # noise kicks, pulses and spikes, neuron by neuron in order (the order of the draws)
        for w in range(n_words):
            word = todo_words[w]
            while word != 0:
                # the lowest set byte is the first neuron: numba's targets are little-endian
                i = 8 * w + (np.int64(trailing_zeros(word)) >> 3)
                word &= word - np.uint64(1)
                while next_noise[i] < k + 1:  # Poisson kicks, drawn also when refractory
                    if k >= refr_end[i]:
                        v[i] += noise_mV
                    next_noise[i] -= math.log(_uniform(rng_state)) / noise_rate
                fire = v[i] >= threshold
                frac = 0.0
                if forced[i] == k:
                    forced[i] = -1
                    if k >= refr_end[i]:
                        fire = True
                        frac = _uniform(rng_state)
                elif fire:
                    frac = (threshold - v_old[i]) / (v[i] - v_old[i]) if v[i] > v_old[i] else 0.0
                    frac = min(max(frac, 0.0), 0.999)
                if fire:
                    v[i] = reset
                    refr_end[i] = k + 1 + refractory
                    if excitatory[i]:
                        adapt[i] += adapt_mV
                    spikers[n_spk] = i
                    offsets[n_spk] = int(frac * tick_samples)
                    n_spk += 1

        if n_out + n_spk > len(out_s):
            out_s = np.concatenate((out_s, np.empty(len(out_s) + n, np.int64)))
            out_u = np.concatenate((out_u, np.empty(len(out_u) + n, np.int32)))
        for m in range(n_spk):
            insert_spike(out_s, out_u, first, n_out, k * tick_samples + offsets[m], spikers[m])
            n_out += 1

        for m in range(n_spk):
            j = spikers[m]
            if excitatory[j]:
                homeostasis[E_SPIKES] += 1.0
                # Tsodyks-Markram resource of the presynaptic neuron, recovered since its last use
                resource[j] = 1.0 - (1.0 - resource[j]) * math.exp(
                    -(k - resource_tick[j]) / tau_rec
                )
                resource_tick[j] = k
                efficacy = use * resource[j]
                resource[j] -= efficacy
                for syn in range(start[j], start[j + 1]):
                    row = slot + delay[syn]  # (k + delay) % depth without a division:
                    if row >= depth:  # 1 <= delay < depth
                        row -= depth
                    ring_e[row, post[syn]] += weight[syn] * efficacy
            else:
                for syn in range(start[j], start[j + 1]):
                    row = slot + delay[syn]
                    if row >= depth:
                        row -= depth
                    ring_i[row, post[syn]] += weight[syn]
        if plastic:
            for m in range(n_spk):
                j = spikers[m]
                if not excitatory[j]:
                    continue
                # depression: this spike as presynaptic, after its targets' earlier spikes
                # (its E targets come first in its synapses)
                for syn in range(start[j], start[j + 1]):
                    i = post[syn]
                    if not excitatory[i]:
                        break
                    if trace[i] > 1e-3:
                        weight[syn] = max(weight[syn] - a_minus * trace[i], 0.0)
                # potentiation: this spike as postsynaptic, after its inputs' earlier spikes
                for q in range(in_start[j], in_start[j + 1]):
                    pre = in_pre[q]
                    if trace[pre] > 1e-3:
                        syn = in_syn[q]
                        weight[syn] = min(weight[syn] + a_plus * trace[pre], w_max)
            for m in range(n_spk):
                trace[spikers[m]] += 1.0
        if pulses_recent:
            for m in range(n_spk):
                j = spikers[m]
                if excitatory[j]:
                    for e in range(n_el):
                        afferent[j, e] *= 1.0 + afferent_rate * pulse_trace[e]
        if (k + 1) % scaling_ticks == 0:
            _homeostasis(homeostasis, prm, weight, in_syn, target_in, bias, excitatory)
            if plastic:
                _scale_inputs(weight, in_start, in_syn, target_in)
            if afferent_rate > 0.0:
                _scale_afferents(afferent, afferent_target, excitatory)

        # network bursts: population count over the last BURST_WINDOW ticks
        w_slot = 1 + k % BURST_WINDOW
        burst[BURST_WINDOW + 1] += n_spk - burst[w_slot]
        burst[w_slot] = n_spk
        if burst[0] == 0.0 and burst[BURST_WINDOW + 1] >= burst_on:
            burst[0] = 1.0
            onsets = np.append(onsets, k)
        elif burst[0] != 0.0 and burst[BURST_WINDOW + 1] < burst_off:
            burst[0] = 0.0
            ends = np.append(ends, k)
    return out_s[:n_out], out_u[:n_out], onsets, ends


@numba.njit(cache=True)
def _scale_inputs(weight, in_start, in_syn, target_in):
    """Synaptic scaling: each neuron's total E->E input back to its target."""
    for i in range(len(in_start) - 1):
        total = 0.0
        for q in range(in_start[i], in_start[i + 1]):
            total += weight[in_syn[q]]
        if total > 0.0:
            f = target_in[i] / total
            for q in range(in_start[i], in_start[i + 1]):
                weight[in_syn[q]] *= f


@numba.njit(cache=True)
def _scale_afferents(afferent, target, excitatory):
    """Each excitatory neuron's afferent total back to its target (normalisation).

    Afferents from electrodes never pulsed shrink at every call; they are flushed to 0
    when negligible (see _flush).
    """
    for i in range(afferent.shape[0]):
        if excitatory[i]:
            total = afferent[i].sum()
            if total > 0.0:
                f = target[i] / total
                for e in range(afferent.shape[1]):
                    afferent[i, e] = _flush(afferent[i, e] * f)


@numba.njit(cache=True)
def _homeostasis(state, prm, weight, in_syn, target_in, bias, excitatory):
    """Homeostatic scaling, once per scaling interval, from the excitatory spike count.

    Above the target count by a fraction ``x``, every E->E weight is multiplied by
    ``exp(-rate x)`` and the excitatory neurons' bias lowered by ``bias_rate x`` mV;
    below it both move back, never past their start (gain 1, shift 0). The gain stays
    above MIN_GAIN and the shift below ``P_BIAS_MAX``.
    """
    target = prm[P_TARGET_SPIKES]
    excess = (state[E_SPIKES] - target) / target
    state[E_SPIKES] = 0.0
    if prm[P_HOMEOSTASIS_RATE] > 0.0:
        gain = state[GAIN] * math.exp(-prm[P_HOMEOSTASIS_RATE] * excess)
        f = min(max(gain, MIN_GAIN), 1.0) / state[GAIN]
        if f != 1.0:
            state[GAIN] *= f
            for q in range(len(in_syn)):
                weight[in_syn[q]] *= f
            for i in range(len(target_in)):
                target_in[i] *= f
    if prm[P_BIAS_RATE] > 0.0:
        shift = min(max(state[BIAS_SHIFT] + prm[P_BIAS_RATE] * excess, 0.0), prm[P_BIAS_MAX])
        for i in range(len(bias)):
            if excitatory[i]:
                bias[i] -= shift - state[BIAS_SHIFT]
        state[BIAS_SHIFT] = shift
