"""Value types shared by drivers, the engine, protocols and the simulator.

The device's sample index (int64) is the only time base: every block, spike,
pulse and decision carries it. Channel indices are the columns of
``Block.data``; a :class:`Layout` maps them to electrode labels and positions, and a
:class:`DeviceInfo` says what a device is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

StimMode = Literal["current", "voltage"]

# Units of a phase amplitude by stimulation mode.
AMPLITUDE_UNIT: dict[str, str] = {"current": "uA", "voltage": "mV"}

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """A yes/no word from a URL or a command line; ValueError for anything else."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


def parse_value(kind: type, text: str) -> Any:
    """Text -> a value of ``kind`` (yes/no words for bool); ValueError if it is not one."""
    return parse_bool(text) if kind is bool else kind(text)


@dataclass(frozen=True)
class Block:
    """A run of raw samples from the device.

    ``data`` is ``(n_samples, n_channels)`` int16; microvolts are
    ``data * uV_per_bit``. ``seq`` is the device's block counter: a jump in it
    (or in ``start_sample``) is a gap, reported and never filled.
    """

    start_sample: int
    data: np.ndarray
    uV_per_bit: float
    seq: int = 0

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.dtype != np.int16:
            raise ValueError("Block.data must be a 2-D int16 array (samples x channels)")

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[1])

    @property
    def stop_sample(self) -> int:
        """One past the last sample in the block."""
        return self.start_sample + self.n_samples

    def microvolts(self) -> np.ndarray:
        """The samples in microvolts, float32."""
        return self.data.astype(np.float32) * np.float32(self.uV_per_bit)


@dataclass(frozen=True)
class SpikeEvents:
    """Detected spikes as a struct of arrays, sorted by sample."""

    sample: np.ndarray  # int64
    channel: np.ndarray  # int16
    amplitude_uV: np.ndarray  # float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample", np.asarray(self.sample, dtype=np.int64))
        object.__setattr__(self, "channel", np.asarray(self.channel, dtype=np.int16))
        object.__setattr__(self, "amplitude_uV", np.asarray(self.amplitude_uV, dtype=np.float32))
        if not (len(self.sample) == len(self.channel) == len(self.amplitude_uV)):
            raise ValueError("SpikeEvents arrays must have the same length")

    def __len__(self) -> int:
        return len(self.sample)

    @classmethod
    def empty(cls) -> SpikeEvents:
        return cls(np.empty(0, np.int64), np.empty(0, np.int16), np.empty(0, np.float32))

    @classmethod
    def concat(cls, parts: Iterable[SpikeEvents]) -> SpikeEvents:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        sample = np.concatenate([p.sample for p in parts])
        order = np.argsort(sample, kind="stable")
        return cls(
            sample[order],
            np.concatenate([p.channel for p in parts])[order],
            np.concatenate([p.amplitude_uV for p in parts])[order],
        )

    def between(self, start: int, stop: int) -> SpikeEvents:
        """The spikes with ``start <= sample < stop``."""
        lo, hi = np.searchsorted(self.sample, [start, stop])
        return SpikeEvents(self.sample[lo:hi], self.channel[lo:hi], self.amplitude_uV[lo:hi])


@dataclass(frozen=True)
class Tick:
    """The device's clock: every spike before ``sample`` has been delivered.

    Devices that stream spikes only (no raw blocks) send one after each
    interval, so the engine's time moves on when nothing fired.
    """

    sample: int


@dataclass(frozen=True)
class StimPulse:
    """One stimulation pulse: phases of (duration_us, amplitude).

    Amplitude is in uA for ``mode="current"`` and in mV for ``mode="voltage"``.
    A zero-amplitude phase is an interphase gap. Use :meth:`biphasic` for a
    charge-balanced pulse; the safety gate checks balance for any other shape.
    """

    mode: StimMode
    phases: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if self.mode not in AMPLITUDE_UNIT:
            raise ValueError(f"stimulation mode must be 'current' or 'voltage', not {self.mode!r}")
        phases = tuple((float(d), float(a)) for d, a in self.phases)
        if not phases:
            raise ValueError("a pulse needs at least one phase")
        if not all(math.isfinite(x) for phase in phases for x in phase):
            raise ValueError("phase durations and amplitudes must be finite numbers")
        if any(d <= 0 for d, _ in phases):
            raise ValueError("phase durations must be positive (microseconds)")
        object.__setattr__(self, "phases", phases)

    @classmethod
    def biphasic(
        cls,
        amplitude: float,
        duration_us: float,
        mode: StimMode = "current",
        interphase_us: float = 0.0,
        negative_first: bool = True,
    ) -> StimPulse:
        """A symmetric, charge-balanced biphasic pulse (amplitude > 0 is its magnitude)."""
        first = -abs(amplitude) if negative_first else abs(amplitude)
        phases = [(duration_us, first)]
        if interphase_us > 0:
            phases.append((interphase_us, 0.0))
        phases.append((duration_us, -first))
        return cls(mode, tuple(phases))

    @property
    def unit(self) -> str:
        return AMPLITUDE_UNIT[self.mode]

    @property
    def duration_us(self) -> float:
        return sum(d for d, _ in self.phases)

    @property
    def peak_amplitude(self) -> float:
        """The largest phase magnitude (uA or mV)."""
        return max(abs(a) for _, a in self.phases)

    def phase_charges(self) -> list[float]:
        """Signed amplitude x duration per non-zero phase: nC in current mode, mV*us in voltage."""
        scale = 1e-3 if self.mode == "current" else 1.0
        return [a * d * scale for d, a in self.phases if a != 0.0]


#: An electrode as a protocol names it: a channel index (int) or a layout label (str).
#: A label is never turned into an int: "45" is the electrode labelled 45, 45 is channel 45.
Electrode = int | str


def _electrode(electrode: Any) -> int | str:
    """A channel index as int, a label as it is; ValueError for anything else."""
    if isinstance(electrode, str):
        return electrode
    if isinstance(electrode, (int, np.integer)) and not isinstance(electrode, bool):
        return int(electrode)
    raise ValueError(
        f"an electrode is a channel index (int) or a layout label (str), not {electrode!r}")


def _electrodes(electrodes: Electrode | Iterable[Electrode]) -> list[int | str]:
    """One electrode or several; a single label is one electrode, not its characters."""
    if isinstance(electrodes, (str, int, np.integer)):
        return [_electrode(electrodes)]
    return [_electrode(e) for e in electrodes]


def _positive_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _positive_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of Hz above 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class StimPattern:
    """Pulses on electrodes (electrode -> pulse), optionally as a train.

    An electrode is a channel index (int) or a layout label (str, e.g. ``"45"``); labels
    stay labels here and are resolved against the device's layout when the pattern is
    sent (:meth:`Layout.resolve`), so drivers, the gate and recordings only see channel
    indices. Build patterns with :meth:`single`, :meth:`train` and :meth:`bursts`.
    ``at_sample`` asks the device to run the pattern at that sample; ``None`` means as
    soon as possible. Immutable once built.
    """

    pulses: tuple[tuple[int | str, StimPulse], ...]
    train_count: int = 1
    train_rate_hz: float = 0.0
    at_sample: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        pulses = self.pulses
        if isinstance(pulses, Mapping):
            pulses = tuple(pulses.items())
        pulses = tuple(sorted(((_electrode(e), p) for e, p in pulses),
                              key=lambda item: (isinstance(item[0], str), item[0])))
        if not pulses:
            raise ValueError("a stimulation pattern needs at least one electrode")
        electrodes = [e for e, _ in pulses]
        if len(set(electrodes)) != len(electrodes):
            raise ValueError("an electrode appears twice in one pattern")
        if self.train_count < 1:
            raise ValueError("train_count must be at least 1")
        if not math.isfinite(self.train_rate_hz):
            raise ValueError("train_rate_hz must be a finite number")
        if self.train_count > 1 and self.train_rate_hz <= 0:
            raise ValueError("a train of several pulses needs train_rate_hz > 0")
        object.__setattr__(self, "pulses", pulses)

    @classmethod
    def single(
        cls,
        electrodes: Electrode | Iterable[Electrode],
        pulse: StimPulse,
        at_sample: int | None = None,
        label: str = "",
    ) -> StimPattern:
        """The same pulse once on each electrode (channel indices or labels)."""
        return cls(tuple((e, pulse) for e in _electrodes(electrodes)), at_sample=at_sample,
                   label=label)

    @classmethod
    def train(
        cls,
        electrodes: Electrode | Iterable[Electrode],
        pulse: StimPulse,
        pulses: int,
        rate_hz: float,
        at_sample: int | None = None,
        label: str = "",
    ) -> StimPattern:
        """The same pulse on each electrode, ``pulses`` times at ``rate_hz`` (one pattern:
        the device runs the whole train from ``at_sample``, or as soon as possible).

        ValueError for a count below 1, a rate that is not a positive number, or pulses
        longer than the train's period (they would overlap)."""
        pulses = _positive_count("pulses", pulses)
        rate_hz = _positive_rate("rate_hz", rate_hz)
        if pulses > 1 and pulse.duration_us * 1e-6 > 1.0 / rate_hz:
            raise ValueError(
                f"a train at {rate_hz:g} Hz has {1e6 / rate_hz:g} us between pulses; its "
                f"{pulse.duration_us:g} us pulses would overlap")
        return cls(tuple((e, pulse) for e in _electrodes(electrodes)), train_count=pulses,
                   train_rate_hz=rate_hz, at_sample=at_sample, label=label)

    @classmethod
    def bursts(
        cls,
        electrodes: Electrode | Iterable[Electrode],
        pulse: StimPulse,
        bursts: int,
        burst_rate_hz: float,
        pulses: int,
        rate_hz: float,
        at_sample: int,
        sample_rate: float,
        label: str = "",
    ) -> list[StimPattern]:
        """A train of trains (tetanic or patterned stimulation): ``bursts`` bursts at
        ``burst_rate_hz``, each ``pulses`` pulses at ``rate_hz``, the first at ``at_sample``
        (``sample_rate``: the device's, to place the bursts in samples).

        One pattern holds one train, so this returns one :meth:`train` per burst, each
        booked at its sample: send each with ``ctx.stimulate`` (the gate checks each). E.g.
        10 bursts at 1 Hz of 20 pulses at 100 Hz. ValueError for counts below 1, rates
        that are not positive numbers, or a burst that lasts longer than its period."""
        bursts = _positive_count("bursts", bursts)
        burst_rate_hz = _positive_rate("burst_rate_hz", burst_rate_hz)
        if not sample_rate > 0:
            raise ValueError(f"sample_rate must be above 0, not {sample_rate!r}")
        first = cls.train(electrodes, pulse, pulses, rate_hz, int(at_sample), label)
        period_s = 1.0 / burst_rate_hz
        burst_s = (first.train_count - 1) / first.train_rate_hz + pulse.duration_us * 1e-6
        if bursts > 1 and burst_s > period_s:
            raise ValueError(
                f"a burst of {first.train_count} pulses at {first.train_rate_hz:g} Hz lasts "
                f"{burst_s * 1e3:g} ms, longer than its period of {period_s * 1e3:g} ms "
                f"({burst_rate_hz:g} Hz bursts)")
        step = sample_rate * period_s
        return [replace(first, at_sample=int(at_sample) + int(round(k * step)))
                for k in range(bursts)]

    @property
    def channels(self) -> tuple[int | str, ...]:
        """The pattern's electrodes: channel indices once resolved (:meth:`Layout.resolve`)."""
        return tuple(e for e, _ in self.pulses)

    @property
    def has_labels(self) -> bool:
        """Whether an electrode is named by label (not yet resolved against a layout)."""
        return any(isinstance(e, str) for e, _ in self.pulses)

    def pulse_offsets(self, sample_rate: float) -> list[int]:
        """Sample offsets of each pulse of the train from the pattern's start."""
        if self.train_count == 1:
            return [0]
        step = sample_rate / self.train_rate_hz
        return [int(round(i * step)) for i in range(self.train_count)]


@dataclass(frozen=True)
class StimReport:
    """The device's word on a submitted pattern: executed at ``sample``, or dropped.

    A train that the device cut short after it began (an abort) gets a second report
    with the same ticket: ``executed`` True, ``pulses_run`` the number of train pulses
    that ran, ``sample`` the first sample at which no further pulse ran, and the reason.
    """

    ticket: int
    sample: int
    executed: bool = True
    reason: str = ""
    #: Set only in the report of a cut train: how many of its pulses ran.
    pulses_run: int | None = None


@dataclass(frozen=True)
class Layout:
    """Electrode geometry: labels, positions and diameters in um, roles.

    Index ``i`` of every array is channel ``i`` of the device.
    """

    name: str
    labels: tuple[str, ...]
    positions_um: np.ndarray  # (n, 2) float64
    diameters_um: np.ndarray  # (n,) float64
    can_stimulate: np.ndarray  # (n,) bool
    ground: tuple[int, ...] = ()
    reference: tuple[int, ...] = ()
    annotations: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        pos = np.asarray(self.positions_um, dtype=np.float64).reshape(n, 2)
        dia = np.asarray(self.diameters_um, dtype=np.float64).reshape(n)
        stim = np.asarray(self.can_stimulate, dtype=bool).reshape(n)
        object.__setattr__(self, "positions_um", pos)
        object.__setattr__(self, "diameters_um", dia)
        object.__setattr__(self, "can_stimulate", stim)
        if len(set(self.labels)) != n:
            raise ValueError(f"layout {self.name}: electrode labels must be unique")

    @property
    def n_electrodes(self) -> int:
        return len(self.labels)

    def channel(self, label: str | int) -> int:
        """The channel index of an electrode label (an int is checked and returned)."""
        if isinstance(label, (int, np.integer)):
            if not 0 <= int(label) < self.n_electrodes:
                raise ValueError(f"layout {self.name} has no channel {label}")
            return int(label)
        try:
            return self.labels.index(str(label))
        except ValueError:
            raise ValueError(f"layout {self.name} has no electrode {label!r}") from None

    def resolve(self, pattern: StimPattern) -> StimPattern:
        """``pattern`` with each electrode label replaced by its channel index (the same
        pattern if it has none); ValueError naming a label this layout lacks."""
        if not pattern.has_labels:
            return pattern
        return replace(pattern, pulses=tuple(
            (self.channel(e) if isinstance(e, str) else e, p) for e, p in pattern.pulses))

    def area_cm2(self, channel: int) -> float:
        """Geometric area of a disc electrode in cm^2."""
        r_cm = self.diameters_um[channel] / 2 * 1e-4
        return float(np.pi * r_cm**2)

    def distances_um(self, channel: int) -> np.ndarray:
        """Distance from one electrode to every electrode, um."""
        return np.linalg.norm(self.positions_um - self.positions_um[channel], axis=1)


@dataclass(frozen=True)
class Capabilities:
    """What a device can do beyond streaming."""

    raw_stream: bool = True
    onboard_detection: bool = False
    stim_modes: tuple[str, ...] = ("current",)
    #: True when the device executes a pattern at a requested ``at_sample``.
    scheduled_stim: bool = False


@dataclass(frozen=True)
class DeviceInfo:
    """What a device is: its channels, sample rate, scale, layout and capabilities."""

    name: str
    n_channels: int
    sample_rate: float
    uV_per_bit: float
    layout: Layout
    capabilities: Capabilities = Capabilities()
    #: The device's own stimulation limits, by SafetyLimits field name.
    limits: dict[str, Any] = field(default_factory=dict)
    simulated: bool = False

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "name": self.name,
            "n_channels": self.n_channels,
            "sample_rate": self.sample_rate,
            "uV_per_bit": self.uV_per_bit,
            "layout": self.layout.name,
            "capabilities": {
                "raw_stream": self.capabilities.raw_stream,
                "onboard_detection": self.capabilities.onboard_detection,
                "stim_modes": list(self.capabilities.stim_modes),
                "scheduled_stim": self.capabilities.scheduled_stim,
            },
            "limits": dict(self.limits),
            "simulated": self.simulated,
        }
