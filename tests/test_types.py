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


PULSE = StimPulse.biphasic(5.0, 200.0)


def test_a_train_is_one_pattern_of_the_same_pulse_repeated_at_its_rate():
    train = StimPattern.train([3, 7], PULSE, pulses=5, rate_hz=100.0, at_sample=50, label="t")
    assert (train.channels, train.train_count, train.train_rate_hz) == ((3, 7), 5, 100.0)
    assert (train.at_sample, train.label) == (50, "t")
    assert train.pulse_offsets(25000.0) == [0, 250, 500, 750, 1000]
    assert StimPattern.train(3, PULSE, 1, 10.0).pulse_offsets(25000.0) == [0]


@pytest.mark.parametrize(("pulses", "rate_hz", "message"), [
    (0, 100.0, "pulses must be a whole number of at least 1, not 0"),
    (2.5, 100.0, "pulses must be a whole number"),
    (True, 100.0, "pulses must be a whole number"),
    (5, 0.0, "rate_hz must be a finite number of Hz above 0, not 0.0"),
    (5, -10.0, "rate_hz must be a finite number of Hz above 0"),
    (5, float("inf"), "rate_hz must be a finite number of Hz above 0"),
    (5, 5000.0, "200 us between pulses; its 400 us pulses would overlap"),
])
def test_a_bad_train_is_a_clear_error(pulses, rate_hz, message):
    with pytest.raises(ValueError, match=message):
        StimPattern.train([3], PULSE, pulses, rate_hz)


def test_bursts_are_trains_booked_one_burst_period_apart():
    bursts = StimPattern.bursts(["45"], PULSE, bursts=10, burst_rate_hz=1.0, pulses=20,
                                rate_hz=100.0, at_sample=1000, sample_rate=25000.0,
                                label="tetanus")
    assert len(bursts) == 10
    assert [b.at_sample for b in bursts] == [1000 + k * 25000 for k in range(10)]
    assert all(b.train_count == 20 and b.train_rate_hz == 100.0 for b in bursts)
    assert all(b.channels == ("45",) and b.label == "tetanus" for b in bursts)
    thirds = StimPattern.bursts(3, PULSE, 3, 3.0, 2, 100.0, at_sample=0, sample_rate=1000.0)
    assert [b.at_sample for b in thirds] == [0, 333, 667]  # rounded, not drifting
    # one burst has no period to outlast
    assert len(StimPattern.bursts(3, PULSE, 1, 10.0, 20, 100.0, 0, 25000.0)) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bursts": 0}, "bursts must be a whole number of at least 1"),
    ({"burst_rate_hz": 0.0}, "burst_rate_hz must be a finite number of Hz above 0"),
    ({"pulses": 0}, "pulses must be a whole number"),
    ({"rate_hz": float("nan")}, "rate_hz must be a finite number"),
    ({"sample_rate": 0.0}, "sample_rate must be above 0"),
    # 20 pulses at 100 Hz last 190.4 ms: longer than the 100 ms period of 10 Hz bursts
    ({"burst_rate_hz": 10.0}, "lasts 190.4 ms, longer than its period of 100 ms"),
])
def test_a_bad_burst_sequence_is_a_clear_error(kwargs, message):
    args = {"bursts": 10, "burst_rate_hz": 1.0, "pulses": 20, "rate_hz": 100.0,
            "at_sample": 0, "sample_rate": 25000.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        StimPattern.bursts([3], PULSE, **args)


def test_labels_stay_labels_until_a_layout_resolves_them():
    layout = load_layout()
    # "45" is the electrode labelled 45; 45 is channel 45 (labelled 66 on this layout)
    assert layout.channel("45") == 28 and layout.labels[45] == "66"
    by_label = StimPattern.single(["45", "12"], PULSE)
    assert by_label.channels == ("12", "45") and by_label.has_labels
    assert StimPattern.single("45", PULSE).channels == ("45",)  # one label, not "4" and "5"
    assert StimPattern.single(np.int64(45), PULSE).channels == (45,)
    resolved = layout.resolve(by_label)
    assert resolved.channels == (1, 28) and not resolved.has_labels
    assert layout.resolve(StimPattern.single([45], PULSE)).channels == (45,)
    mixed = layout.resolve(StimPattern.train(["45", 45], PULSE, 3, 10.0, at_sample=7))
    assert (mixed.channels, mixed.train_count, mixed.at_sample) == ((28, 45), 3, 7)
    plain = StimPattern.single([3], PULSE)
    assert layout.resolve(plain) is plain
    with pytest.raises(ValueError, match="layout grid8x8_200um has no electrode '99'"):
        layout.resolve(StimPattern.single(["99"], PULSE))
    with pytest.raises(ValueError, match="appears twice"):
        layout.resolve(StimPattern.single(["45", 28], PULSE))
    with pytest.raises(ValueError, match="channel index .int. or a layout label .str., not 4.0"):
        StimPattern.single([4.0], PULSE)
