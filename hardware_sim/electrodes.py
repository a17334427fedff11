"""From units' spikes to the voltage on each electrode: waveforms, noise, artifacts, int16.

:class:`ElectrodeArray` renders consecutive intervals of raw samples. A unit's
spike appears on every electrode within reach as its waveform template scaled
by an amplitude that falls with the distance ``r`` from the unit to the
electrode, ``A0 / (1 + (r / 50 um)^2)`` with ``A0`` drawn per unit: 40-150 uV
within 10-50 um, below a 5-sigma threshold (35 uV at 7 uV rms) beyond about
90 um, so an electrode records the units within about 100 um of it. The
template's trough comes :attr:`ElectrodeArray.trough_offset` samples after the
culture's spike sample. Noise comes from its own random stream, so stimulating
never changes it. Pulses add artifacts: the pulse itself through the electrode
impedance on the stimulated electrode and through the medium on the others,
then a short exponential recovery. The amplifier saturates at the int16 range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from hardware_sim.cultures.base import NOMINAL_IMPEDANCE_KOHM, StimEvent, pulse_phases_uA
from mea_control.types import Layout, SpikeEvents, StimPulse

#: amplitude range (negative peak, uV) of a unit right at an electrode (log-uniform)
UNIT_PEAK_UV = (85.0, 150.0)
#: distance at which a unit's amplitude has halved, um
FOOTPRINT_UM = 50.0
#: smallest amplitude still rendered on an electrode, uV
FOOTPRINT_FLOOR_UV = 0.5
#: template window around the trough, ms
TEMPLATE_MS = (0.5, 1.5)
#: resistivity of the culture medium, ohm m (spreads the stimulus to other electrodes)
MEDIUM_OHM_M = 0.7
#: artifact recovery after the pulse: fraction of the pulse's last phase, time constant (ms)
RECOVERY_STIM = (0.05, 0.3)
RECOVERY_OTHER = (0.1, 0.3)
#: noise: bank of band-limited Gaussian noise per channel, cut-off (Hz)
NOISE_BANK_SAMPLES = 1 << 15
NOISE_CUTOFF_HZ = 5000.0


class ElectrodeArray:
    """Renders raw int16 blocks for a layout from unit spikes, noise and pulses."""

    def __init__(
        self,
        layout: Layout,
        unit_positions_um: np.ndarray,
        sample_rate: float,
        uV_per_bit: float = 0.195,
        noise_uV: float = 7.0,
        seed: int | np.random.SeedSequence = 0,
        max_block_samples: int = 2500,
    ) -> None:
        self.layout = layout
        self.sample_rate = float(sample_rate)
        self.uV_per_bit = float(uV_per_bit)
        self.noise_uV = float(noise_uV)
        self.n_channels = layout.n_electrodes
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        s_struct, s_bank, s_noise = seq.spawn(3)
        rng = np.random.default_rng(s_struct)
        self._make_units(np.asarray(unit_positions_um, np.float64).reshape(-1, 2), rng)
        self._bank = _noise_bank(np.random.default_rng(s_bank), self.n_channels, self.sample_rate)
        self._rng_noise = np.random.default_rng(s_noise)

        self._chunk = max(1, int(round(0.1 * self.sample_rate)))  # noise is added 100 ms at a time
        self._margin = self.templates.shape[1] + int(round(0.02 * self.sample_rate))
        self._cap = 2 * self._chunk + int(max_block_samples) + self._margin
        self._buf = np.zeros((self._cap, self.n_channels), np.float32)
        self._w0 = 0  # sample of buffer row 0
        self._noise_stop = 0  # noise is in the buffer up to here
        self._next_sample = 0
        self._artifacts: dict[tuple[int, StimPulse], np.ndarray] = {}
        self._seen_cache: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        r = np.linalg.norm(
            layout.positions_um[:, None, :] - layout.positions_um[None, :, :], axis=-1
        )
        self._stim_distance_um = np.maximum(r, layout.diameters_um[None, :] / 2)

    # -- structure -------------------------------------------------------------------------

    def _make_units(self, positions: np.ndarray, rng: np.random.Generator) -> None:
        n_units = len(positions)
        dist = np.linalg.norm(
            positions[:, None, :] - self.layout.positions_um[None, :, :], axis=-1
        )  # unit x electrode
        falloff = 1.0 / (1.0 + (dist / FOOTPRINT_UM) ** 2)
        #: nearest electrode of each unit, and its negative peak there (uV, positive number)
        self.unit_home = np.argmin(dist, axis=1).astype(np.int32) if n_units else np.empty(0, int)
        a0 = np.exp(rng.uniform(*np.log(UNIT_PEAK_UV), n_units))
        amp = falloff * a0[:, None]  # unit x electrode, uV
        self.unit_peak_uV = amp[np.arange(n_units), self.unit_home] if n_units else np.empty(0)
        #: per unit, the electrodes it reaches: CSR (start, channel, amplitude uV)
        self.footprint_start = np.zeros(n_units + 1, np.int64)
        chans, amps = [], []
        for j in range(n_units):
            (reach,) = np.nonzero(amp[j] >= FOOTPRINT_FLOOR_UV)
            chans.append(reach)
            amps.append(amp[j, reach])
            self.footprint_start[j + 1] = self.footprint_start[j] + len(reach)
        self.footprint_channel = np.concatenate(chans).astype(np.int32) if chans else np.empty(0)
        self.footprint_uV = np.concatenate(amps).astype(np.float32) if amps else np.empty(0)
        self.templates = _templates(rng, n_units, self.sample_rate)
        #: samples from a spike's sample (in the culture) to its trough on the traces
        self.trough_offset = int(round(TEMPLATE_MS[0] * 1e-3 * self.sample_rate))

    # -- events without traces -------------------------------------------------------------

    def events(
        self, spike_samples: np.ndarray, unit_ids: np.ndarray, threshold_uV: float
    ) -> SpikeEvents:
        """What an ideal on-board detector reports, without rendering voltage.

        Each spike becomes an event at its trough on every electrode where its
        amplitude reaches ``threshold_uV``; near-coincident spikes are not merged.
        Sorted by sample, then channel (events equal in both keep the spikes' order).
        """
        start, channel, amp = self._seen(threshold_uV)
        samples, channels, amps = _events(
            np.asarray(spike_samples, np.int64), np.asarray(unit_ids), start, channel, amp,
            self.trough_offset,
        )
        return SpikeEvents(samples, channels, amps)

    def _seen(self, threshold_uV: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per unit, the electrodes where it reaches ``threshold_uV``: CSR (start, channel
        int16, -amplitude uV float32); the last few thresholds are kept."""
        key = float(threshold_uV)
        found = self._seen_cache.get(key)
        if found is None:
            keep = self.footprint_uV >= threshold_uV  # the float32 comparison, as ever
            start = np.concatenate(([0], np.cumsum(keep)))[self.footprint_start]
            found = (
                start.astype(np.int64),
                self.footprint_channel[keep].astype(np.int16),
                np.negative(self.footprint_uV[keep], dtype=np.float32),
            )
            if len(self._seen_cache) >= 8:
                self._seen_cache.clear()
            self._seen_cache[key] = found
        return found

    # -- rendering -------------------------------------------------------------------------

    def render(
        self,
        start_sample: int,
        n_samples: int,
        spike_samples: np.ndarray,
        unit_ids: np.ndarray,
        stims: Sequence[StimEvent] = (),
    ) -> np.ndarray:
        """Raw samples ``(n_samples, n_channels)`` int16 for the next interval.

        Intervals must be consecutive; spikes and pulses must fall inside the
        interval (their waveforms may run into later intervals).
        """
        if start_sample != self._next_sample:
            raise ValueError(
                f"electrodes rendered out of order: expected sample {self._next_sample}, "
                f"got {start_sample}"
            )
        stop = start_sample + n_samples
        if stop + self._margin + self._chunk > self._w0 + self._cap:  # room for a noise chunk
            self._shift(start_sample, n_samples)
        while self._noise_stop < stop:
            self._add_noise()
        for sample, channel, pulse in stims:
            wave = self._artifact(channel, pulse)
            row = sample - self._w0
            length = min(len(wave), self._cap - row)
            self._buf[row : row + length] += wave[:length]
        if len(spike_samples):
            _add_spikes(
                self._buf,
                self._w0,
                spike_samples,
                unit_ids,
                self.footprint_start,
                self.footprint_channel,
                self.footprint_uV,
                self.templates,
            )
        self._next_sample = stop
        row = start_sample - self._w0
        return _quantize(self._buf[row : row + n_samples], 1.0 / self.uV_per_bit)

    def _shift(self, start: int, n_samples: int) -> None:
        if n_samples + self._margin + self._chunk > self._cap:
            raise ValueError(f"block of {n_samples} samples is larger than the renderer allows")
        row = start - self._w0
        keep = self._cap - row
        self._buf[:keep] = self._buf[row:]
        self._buf[keep:] = 0.0
        self._w0 = start

    def _add_noise(self) -> None:
        n = self._chunk
        offsets = self._rng_noise.integers(0, self._bank.shape[1] - n, size=(self.n_channels, 2))
        row = self._noise_stop - self._w0
        _add_noise(self._buf, row, n, self._bank, offsets, np.float32(self.noise_uV / np.sqrt(2)))
        self._noise_stop += n

    def _artifact(self, channel: int, pulse: StimPulse) -> np.ndarray:
        """The artifact of ``pulse`` on ``channel`` as (samples, channels) uV, cached."""
        key = (channel, pulse)
        wave = self._artifacts.get(key)
        if wave is not None:
            return wave
        rate = self.sample_rate
        phases = pulse_phases_uA(pulse)
        ends_us = np.cumsum([d for d, _ in phases])
        n_pulse = max(1, int(np.ceil(ends_us[-1] * 1e-6 * rate)))
        mid_us = (np.arange(n_pulse) + 0.5) / rate * 1e6
        idx = np.minimum(np.searchsorted(ends_us, mid_us, side="right"), len(phases) - 1)
        current = np.array([a for _, a in phases])[idx]  # uA, per sample
        last = next((a for _, a in reversed(phases) if a != 0.0), 0.0)
        n_tail = int(round(8 * max(RECOVERY_STIM[1], RECOVERY_OTHER[1]) * 1e-3 * rate))
        t_ms = np.arange(1, n_tail + 1) / rate * 1e3
        # uV per uA: electrode impedance on the stimulated electrode, medium elsewhere
        spread = MEDIUM_OHM_M / (4 * np.pi * self._stim_distance_um[channel] * 1e-6)
        gain = spread.copy()
        gain[channel] = NOMINAL_IMPEDANCE_KOHM * 1e3
        frac = np.full(self.n_channels, RECOVERY_OTHER[0])
        frac[channel] = RECOVERY_STIM[0]
        tau = np.full(self.n_channels, RECOVERY_OTHER[1])
        tau[channel] = RECOVERY_STIM[1]
        wave = np.empty((n_pulse + n_tail, self.n_channels), np.float32)
        wave[:n_pulse] = current[:, None] * gain[None, :]
        wave[n_pulse:] = last * (gain * frac)[None, :] * np.exp(-t_ms[:, None] / tau[None, :])
        if len(self._artifacts) > 1024:
            self._artifacts.clear()
        self._artifacts[key] = wave
        return wave


def _templates(rng: np.random.Generator, n_units: int, sample_rate: float) -> np.ndarray:
    """Extracellular spike shapes, trough at -1: a sharp trough and a slower repolarisation."""
    pre_ms, post_ms = TEMPLATE_MS
    n_pre = int(round(pre_ms * 1e-3 * sample_rate))
    n = n_pre + int(round(post_ms * 1e-3 * sample_rate)) + 1
    t = (np.arange(n) - n_pre) / sample_rate * 1e3  # ms, 0 at the trough
    width = rng.uniform(0.10, 0.16, n_units)[:, None]
    repol = rng.uniform(0.15, 0.4, n_units)[:, None]
    repol_at = rng.uniform(0.35, 0.6, n_units)[:, None]
    repol_width = rng.uniform(0.2, 0.35, n_units)[:, None]
    shape = -np.exp(-0.5 * (t / width) ** 2) + repol * np.exp(
        -0.5 * ((t - repol_at) / repol_width) ** 2
    )
    taper = np.ones(n)
    edge = max(1, n // 10)
    taper[:edge] = np.linspace(0.0, 1.0, edge)
    taper[-edge:] = np.linspace(1.0, 0.0, edge)
    shape *= taper
    shape /= -shape[:, n_pre : n_pre + 1]
    return np.ascontiguousarray(shape, np.float32)


def _noise_bank(rng: np.random.Generator, n_channels: int, sample_rate: float) -> np.ndarray:
    """Unit-variance band-limited Gaussian noise, one lane per channel (channels, samples)."""
    from scipy import signal  # here: it takes most of a second to import (`mea-control devices`)

    white = rng.standard_normal((n_channels, NOISE_BANK_SAMPLES))
    cutoff = min(NOISE_CUTOFF_HZ, 0.4 * sample_rate)
    sos = signal.butter(2, cutoff, btype="low", fs=sample_rate, output="sos")
    bank = signal.sosfilt(sos, white, axis=1)
    bank /= bank.std(axis=1, keepdims=True)
    return np.ascontiguousarray(bank, np.float32)


@numba.njit(cache=True)
def _add_noise(buf, row, n, bank, offsets, scale):
    """Add ``n`` rows of noise: per channel the sum of two windows of its bank lane."""
    for c in range(buf.shape[1]):
        o1, o2 = offsets[c, 0], offsets[c, 1]
        for t in range(n):
            buf[row + t, c] += (bank[c, o1 + t] + bank[c, o2 + t]) * scale


@numba.njit(cache=True)
def _events(spike_samples, unit_ids, seen_start, seen_channel, seen_amp, offset):
    """Electrode events of spikes: (trough sample, channel, amplitude), sorted by sample then
    channel, stably (so as ``np.lexsort((channel, sample))`` of the events in spike order)."""
    n = len(spike_samples)
    order = np.arange(n)
    for i in range(1, n):
        if spike_samples[i] < spike_samples[i - 1]:
            order = np.argsort(spike_samples, kind="mergesort")
            break
    total = 0
    for i in range(n):
        u = unit_ids[i]
        total += seen_start[u + 1] - seen_start[u]
    out_s = np.empty(total, np.int64)
    out_c = np.empty(total, np.int16)
    out_a = np.empty(total, np.float32)
    m = 0
    for i in order:
        u = unit_ids[i]
        sample = spike_samples[i] + offset
        for q in range(seen_start[u], seen_start[u + 1]):
            c = seen_channel[q]
            j = m  # insertion among the events of the same sample (spikes come sorted)
            while j > 0 and (
                out_s[j - 1] > sample or (out_s[j - 1] == sample and out_c[j - 1] > c)
            ):
                out_s[j] = out_s[j - 1]
                out_c[j] = out_c[j - 1]
                out_a[j] = out_a[j - 1]
                j -= 1
            out_s[j] = sample
            out_c[j] = c
            out_a[j] = seen_amp[q]
            m += 1
    return out_s, out_c, out_a


@numba.njit(cache=True)
def _add_spikes(buf, w0, samples, units, fp_start, fp_channel, fp_uV, templates):
    """Add each spike's template, scaled per electrode, starting at its sample."""
    n_t = templates.shape[1]
    for i in range(len(samples)):
        row = samples[i] - w0
        u = units[i]
        for k in range(fp_start[u], fp_start[u + 1]):
            c = fp_channel[k]
            a = fp_uV[k]
            for t in range(n_t):
                buf[row + t, c] += a * templates[u, t]


@numba.njit(cache=True)
def _quantize(src, scale):
    """uV -> int16 counts, rounded, saturating like the amplifier."""
    out = np.empty(src.shape, np.int16)
    for i in range(src.shape[0]):
        for c in range(src.shape[1]):
            v = np.rint(src[i, c] * scale)
            if v > 32767.0:
                v = 32767.0
            elif v < -32768.0:
                v = -32768.0
            out[i, c] = np.int16(v)
    return out
