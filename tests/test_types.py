"""Value types: validation, charge bookkeeping, spike batches, layouts."""

import numpy as np
import pytest

from mea_control.layouts import load_layout
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse


def test_block_is_int16_samples_by_channels():
    block = Block(100, np.zeros((25, 4), np.int16), 0.195, seq=3)
    assert (block.n_samples, block.n_channels, block.stop_sample) == (25, 4, 125)
    block.data[0, 1] = 10
    assert block.microvolts()[0, 1] == pytest.approx(1.95)
    with pytest.raises(ValueError, match="int16"):
        Block(0, np.zeros((25, 4), np.float32), 0.195)
    with pytest.raises(ValueError, match="2-D"):
        Block(0, np.zeros(25, np.int16), 0.195)


def test_spike_events_concat_sorts_and_between_selects():
    a = SpikeEvents([30, 10], [1, 2], [-50.0, -60.0])
    assert a.sample.dtype == np.int64 and a.channel.dtype == np.int16
    b = SpikeEvents([20], [3], [-70.0])
    both = SpikeEvents.concat([SpikeEvents([5], [0], [-1.0]), SpikeEvents.empty(), b])
    assert both.sample.tolist() == [5, 20] and both.channel.tolist() == [0, 3]
    joined = SpikeEvents.concat([SpikeEvents([10, 30], [2, 1], [-60.0, -50.0]), b])
    assert joined.sample.tolist() == [10, 20, 30]
    assert joined.between(10, 30).channel.tolist() == [2, 3]
    assert len(SpikeEvents.concat([])) == 0
    with pytest.raises(ValueError, match="same length"):
        SpikeEvents([1, 2], [0], [0.0])


def test_biphasic_pulse_is_charge_balanced():
    pulse = StimPulse.biphasic(5.0, 200.0, interphase_us=50.0)
    assert pulse.phases == ((200.0, -5.0), (50.0, 0.0), (200.0, 5.0))
    assert pulse.phase_charges() == [pytest.approx(-1.0), pytest.approx(1.0)]  # nC
    assert sum(pulse.phase_charges()) == pytest.approx(0.0)
    assert pulse.duration_us == 450.0 and pulse.peak_amplitude == 5.0 and pulse.unit == "uA"
    anodic = StimPulse.biphasic(800.0, 100.0, mode="voltage", negative_first=False)
    assert anodic.phases[0] == (100.0, 800.0) and anodic.unit == "mV"


@pytest.mark.parametrize(
    ("mode", "phases", "message"),
    [
        ("charge", ((100, 1),), "mode must be 'current' or 'voltage'"),
        ("current", (), "at least one phase"),
        ("current", ((0, 1), (100, -1)), "durations must be positive"),
    ],
)
def test_bad_pulses(mode, phases, message):
    with pytest.raises(ValueError, match=message):
        StimPulse(mode, phases)


def test_pattern_is_sorted_immutable_and_knows_its_train():
    pulse = StimPulse.biphasic(5.0, 200.0)
    pattern = StimPattern({7: pulse, 3: pulse}, train_count=3, train_rate_hz=100.0, at_sample=50)
    assert pattern.channels == (3, 7)
    assert pattern.pulse_offsets(25000.0) == [0, 250, 500]
    with pytest.raises(AttributeError):
        pattern.at_sample = 10
    assert StimPattern.single([1, 2], pulse).pulse_offsets(25000.0) == [0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pulses": ()}, "at least one electrode"),
        ({"pulses": ((1, "p"), (1, "p"))}, "appears twice"),
        ({"train_count": 0}, "train_count"),
        ({"train_count": 2}, "train_rate_hz"),
    ],
)
def test_bad_patterns(kwargs, message):
    pulse = StimPulse.biphasic(5.0, 200.0)
    args = {"pulses": ((1, pulse),)}
    args.update({k: (tuple((c, pulse) for c, _ in v) if k == "pulses" else v)
                 for k, v in kwargs.items()})
    with pytest.raises(ValueError, match=message):
        StimPattern(**args)


def test_layout_channels_areas_and_distances():
    layout = load_layout()
    assert layout.channel("11") == 0 and layout.channel(5) == 5
    with pytest.raises(ValueError, match="no electrode '99'"):
        layout.channel("99")
    with pytest.raises(ValueError, match="no channel 64"):
        layout.channel(64)
    assert layout.area_cm2(0) == pytest.approx(np.pi * (15e-4) ** 2)
    d = layout.distances_um(layout.channel("11"))
    assert d[layout.channel("12")] == pytest.approx(200.0)
    assert d[layout.channel("22")] == pytest.approx(200.0 * np.sqrt(2))
