"""The protocol API: parameters, loading protocol files, the shipped BSS design."""

import textwrap

import numpy as np
import pytest

from mea_control.layouts import load_layout
from mea_control.protocol import (
    Parameter,
    Protocol,
    ProtocolError,
    electrodes,
    load_protocol,
    shipped_protocols,
)


class Toy(Protocol):
    parameters = {
        "rate": Parameter(float, 1.0, unit="Hz", range=(0.0, 10.0)),
        "count": Parameter(int, 3, range=(1, 5)),
        "flag": Parameter(bool, False),
        "mode": Parameter(str, "a", choices=("a", "b")),
    }


def test_defaults_and_text_values_are_converted():
    p = Toy(rate="2.5", count="4", flag="yes", mode="b")
    assert (p.p.rate, p.p.count, p.p.flag, p.p.mode) == (2.5, 4, True, "b")
    assert Toy().values == {"rate": 1.0, "count": 3, "flag": False, "mode": "a"}
    assert Toy(rate=2).p.rate == 2.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate": "11"}, "rate=11.0 is out of range: allowed 0.0 to 10.0 Hz"),
        ({"count": "2.5"}, "count='2.5' is not a valid int"),
        ({"flag": "maybe"}, "flag='maybe' is not a valid bool"),
        ({"mode": "c"}, "mode='c' is not one of: a, b"),
        ({"count": True}, "count must be int"),
        ({"speed": 1}, "Toy has no parameter 'speed'; accepted: count, flag, mode, rate"),
    ],
)
def test_bad_values_name_the_parameter(values, message):
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Toy(**values)


def test_shipped_protocols_load_by_name():
    shipped = shipped_protocols()
    assert {"spontaneous", "bss_isomura"} <= set(shipped)
    cls, path = load_protocol("bss_isomura")
    assert cls.name == "bss_isomura" and path == shipped["bss_isomura"].resolve()
    assert cls.describe()


def test_missing_file_lists_the_shipped_protocols(tmp_path):
    with pytest.raises(ProtocolError, match="no protocol file .*bss_isomura"):
        load_protocol(str(tmp_path / "nope.py"))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "defines no Protocol subclass"),
        (
            "from mea_control.protocol import Protocol\n"
            "class A(Protocol): pass\nclass B(Protocol): pass\n",
            "more than one Protocol subclass",
        ),
        ("def broken(:\n", r"bad\.py:1: syntax error"),
        ("import numpy\nraise RuntimeError('boom')\n", "error while loading: RuntimeError: boom"),
        (
            "from mea_control.protocol import Parameter, Protocol\n"
            "class A(Protocol):\n"
            "    parameters = {'x': Parameter(float, 50.0, range=(0.0, 10.0))}\n",
            "protocol A: the default of parameter x is invalid",
        ),
    ],
)
def test_bad_protocol_files(tmp_path, source, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(ProtocolError, match=message):
        load_protocol(str(path))


def test_user_protocol_file_loads(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""
        from mea_control.protocol import Parameter, Protocol

        class Mine(Protocol):
            '''Does nothing, politely.'''
            parameters = {"x": Parameter(int, 1)}
    """))
    cls, _ = load_protocol(str(path))
    assert cls.name == "Mine" and cls(x="7").p.x == 7
    assert cls.describe() == "Does nothing, politely."


def test_describe_is_the_docstrings_whole_first_paragraph():
    class Wrapped(Protocol):
        """A summary sentence long enough that its author
        wrapped it over two lines.

        The body, not part of it."""

    assert Wrapped.describe() == ("A summary sentence long enough that its author wrapped it "
                                  "over two lines.")


class FakeCtx:
    def __init__(self, seed=0, forbidden=()):
        self.layout = load_layout()
        self.forbidden = {self.layout.channel(label) for label in forbidden}
        self.rng = np.random.default_rng(seed)
        self.trials = None

    def can_stimulate(self, channel):
        return channel not in self.forbidden

    def use_trials(self, trials):
        self.trials = trials
        return trials


def bss(**values):
    cls, _ = load_protocol("bss_isomura")
    proto = cls(**values)
    ctx = FakeCtx()
    proto.setup(ctx)
    return proto, ctx


def test_bss_electrodes_are_two_groups_of_16_on_each_half():
    proto, ctx = bss()
    assert len(proto.channels) == 32 and len(set(proto.channels)) == 32
    x = ctx.layout.positions_um[proto.channels, 0]
    assert x[:16].max() < x[16:].min()
    assert ctx.trials.n_trials == 100 * 256 and ctx.trials.n_sources == 2


@pytest.mark.parametrize(("mixing", "expected"), [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5)])
def test_bss_mixing_sets_how_often_electrodes_follow_their_own_source(mixing, expected):
    proto, _ = bss(mixing=mixing, trials_per_session=4096)
    s, o = proto.sequence
    own = np.concatenate([o[:, :16] == s[:, [0]], o[:, 16:] == s[:, [1]]], axis=1)
    other = np.concatenate([o[:, :16] == s[:, [1]], o[:, 16:] == s[:, [0]]], axis=1)
    # Where the two sources differ, agreement with the own source is the follow probability.
    differ = s[:, 0] != s[:, 1]
    follow_own = own[differ].mean()
    assert follow_own == pytest.approx(expected, abs=0.02)
    assert other[differ].mean() == pytest.approx(1 - expected, abs=0.02)
    assert s.mean() == pytest.approx(0.5, abs=0.03)


def test_bss_repeats_the_session_sequence_unless_asked_not_to():
    proto, ctx = bss(trials_per_session=8)
    first = [proto.design(ctx, k) for k in range(8)]
    second = [proto.design(ctx, 8 + k) for k in range(8)]
    assert [t.s.tolist() for t in first] == [t.s.tolist() for t in second]
    proto, ctx = bss(trials_per_session=64, repeat_sequence=False)
    first = [proto.design(ctx, k).s.tolist() for k in range(64)]
    second = [proto.design(ctx, 64 + k).s.tolist() for k in range(64)]
    assert first != second


def test_bss_pattern_stimulates_exactly_the_electrodes_whose_source_is_on():
    proto, ctx = bss()
    for k in range(20):
        spec = proto.design(ctx, k)
        s, o = proto.sequence[0][k], proto.sequence[1][k]
        on = [ch for ch, bit in zip(proto.channels, o, strict=True) if bit]
        assert list(spec.s) == list(s)
        if on:
            assert list(spec.pattern.channels) == sorted(on)
            assert all(p.peak_amplitude == 5.0 for _, p in spec.pattern.pulses)
        else:
            assert spec.pattern is None


def test_bss_rejects_bad_parameter_combinations():
    cls, _ = load_protocol("bss_isomura")
    with pytest.raises(ProtocolError, match="window_stop_ms must be larger"):
        cls(window_start_ms=50, window_stop_ms=20)
    with pytest.raises(ProtocolError, match="must end before the next trial"):
        cls(isi_s=0.2, window_stop_ms=300)
    proto = cls(electrodes="11,12")
    with pytest.raises(ProtocolError, match="give 32 different labels, not 2"):
        proto.setup(FakeCtx())
    labels = ",".join(["11"] * 32)
    with pytest.raises(ProtocolError, match="with repeats"):
        cls(electrodes=labels).setup(FakeCtx())
    labels = ",".join(f"{c}{r}" for c in range(1, 5) for r in range(1, 9))
    with pytest.raises(ProtocolError, match="electrodes: 23 cannot stimulate here"):
        cls(electrodes=labels).setup(FakeCtx(forbidden=["23"]))
    cls(electrodes=labels).setup(FakeCtx())


def test_bss_auto_electrodes_leave_out_those_that_cannot_stimulate():
    proto, ctx = bss()
    forbidden = [ctx.layout.labels[ch] for ch in proto.channels[:3]]
    cls, _ = load_protocol("bss_isomura")
    other = cls()
    other.setup(FakeCtx(forbidden=forbidden))
    assert len(other.channels) == 32
    assert not {ctx.layout.channel(label) for label in forbidden} & set(other.channels)


def test_an_electrode_list_parameter_becomes_channels_or_an_error_naming_it():
    ctx = FakeCtx(forbidden=["23", "24"])
    ch = ctx.layout.channel
    assert electrodes(ctx, " 45, 12 ,", "stim") == [ch("45"), ch("12")]  # the order given
    assert electrodes(ctx, ["45", 12], "stim") == [ch("45"), ch("12")]  # a list of labels
    with pytest.raises(ProtocolError, match="^stim: layout grid8x8_200um has no electrode '99'"):
        electrodes(ctx, "45,99", "stim")
    with pytest.raises(ProtocolError, match="^stim: 45 listed twice"):
        electrodes(ctx, "45,12,45", "stim")
    with pytest.raises(ProtocolError, match="^stim: give at least one electrode label"):
        electrodes(ctx, " , ", "stim")
    with pytest.raises(ProtocolError, match="^stim: 23, 24 cannot stimulate here"):
        electrodes(ctx, "12,23,24", "stim", stimulating=True)
    assert electrodes(ctx, "23", "recording") == [ch("23")]  # recording only: allowed
