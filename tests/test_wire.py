"""The wire codec: every message round-trips, and the decoder survives garbage and bad CRCs."""

import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import wire

i16 = st.integers(-32768, 32767)
u16 = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
f32 = st.floats(width=32, allow_nan=False)
text = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)


@st.composite
def blocks(draw):
    n, ch = draw(st.integers(0, 30)), draw(st.integers(1, 70))
    data = np.array(draw(st.lists(i16, min_size=n * ch, max_size=n * ch)), np.int16)
    return wire.SampleBlock(draw(i64), data.reshape(n, ch))


@st.composite
def spikes(draw):
    n = draw(st.integers(0, 20))
    return wire.Spikes(np.array(draw(st.lists(i64, min_size=n, max_size=n)), np.int64),
                       np.array(draw(st.lists(u16, min_size=n, max_size=n)), np.uint16),
                       np.array(draw(st.lists(f32, min_size=n, max_size=n)), np.float32))


pulses = st.builds(wire.WirePulse, u16, st.sampled_from(wire.MODES),
                   st.lists(st.tuples(f32, f32), max_size=4).map(tuple))
messages = st.one_of(
    st.builds(wire.Hello, u16, st.floats(allow_nan=False), f32, text, text,
              st.dictionaries(text, st.floats(allow_nan=False), max_size=5), u32),
    blocks(), spikes(),
    st.builds(wire.StimExecuted, u32, i64, st.lists(u16, max_size=8).map(tuple)),
    st.builds(wire.Ack, u32, st.integers(0, 255), text),
    st.builds(wire.Heartbeat, i64), st.builds(wire.Error, u16, text),
    st.builds(wire.Start, st.integers(0, 3), u16), st.builds(wire.Stop),
    st.builds(wire.Stimulate, u32, i64, st.lists(pulses, max_size=5).map(tuple), u16, f32),
    st.builds(wire.Abort), st.builds(wire.SetThreshold, f32), st.builds(wire.Ping,
                                                                        st.integers(0, 2**64 - 1)),
    st.builds(wire.StimCut, u32, i64, u16, st.integers(0, 255)),
    st.builds(wire.Disarmed, i64, u32, st.lists(u32, max_size=8).map(tuple)),
    st.builds(wire.HostHeartbeat, i64), st.builds(wire.Arm),
)


@settings(max_examples=300, deadline=None)
@given(messages, u32)
def test_every_message_round_trips(message, seq):
    frames = wire.FrameDecoder().feed(wire.encode(message, seq))
    assert len(frames) == 1
    assert frames[0].seq == seq and frames[0].version == wire.VERSION
    assert frames[0].message == message


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.lists(st.binary(max_size=40), min_size=6,
                                                           max_size=6), st.integers(1, 64))
def test_decoder_resynchronises_after_garbage_in_any_pieces(msgs, junk, piece):
    stream = junk[0] + b"".join(wire.encode(m, i) + junk[i + 1] for i, m in enumerate(msgs))
    decoder = wire.FrameDecoder()
    got = []
    for k in range(0, len(stream), piece):
        got += decoder.feed(stream[k:k + piece])
    # garbage can, rarely, hold a valid frame of its own; ours all come through in order
    ours = [f for f in got if f.seq < len(msgs) and f.message == msgs[f.seq]]
    assert [f.seq for f in ours] == list(range(len(msgs)))


def test_a_corrupted_frame_is_dropped_and_counted_and_the_next_one_decoded():
    first = bytearray(wire.encode(wire.Heartbeat(100), 1))
    first[18] ^= 0xFF  # a payload byte
    second = wire.encode(wire.Heartbeat(200), 2)
    decoder = wire.FrameDecoder()
    frames = decoder.feed(bytes(first) + second)
    assert [f.message for f in frames] == [wire.Heartbeat(200)]
    assert decoder.crc_errors == 1


def test_another_version_is_recognised_not_decoded():
    decoder = wire.FrameDecoder()
    frames = decoder.feed(wire.encode(wire.Ping(7), 0, version=9) + wire.encode(wire.Ping(8), 1))
    assert [(f.version, f.message) for f in frames] == [
        (9, wire.OtherVersion(9, wire.Ping.TYPE)), (2, wire.Ping(8))]
    assert decoder.other_versions == {9}


def test_a_valid_frame_with_a_bad_payload_is_counted():
    head = bytes([wire.VERSION, 0x06]) + (3).to_bytes(4, "little") + (2).to_bytes(4, "little")
    body = head + zlib.crc32(head).to_bytes(4, "little") + b"\x01\x02"  # a heartbeat needs 8
    frame = wire.MARKER + body + zlib.crc32(body).to_bytes(4, "little")
    decoder = wire.FrameDecoder()
    assert decoder.feed(frame) == [] and decoder.bad_payloads == 1


def test_frame_layout_is_as_documented():
    frame = wire.encode(wire.Heartbeat(5), 0x01020304)
    assert frame[:2] == b"\xa5\x5a" and frame[2] == 2 and frame[3] == 0x06
    assert frame[4:8] == bytes([4, 3, 2, 1]) and frame[8:12] == (8).to_bytes(4, "little")
    assert frame[12:16] == zlib.crc32(frame[2:12]).to_bytes(4, "little")
    assert frame[16:24] == (5).to_bytes(8, "little")
    assert frame[24:] == zlib.crc32(frame[2:24]).to_bytes(4, "little")


def test_version_1_frames_have_no_header_crc():
    frame = wire.encode(wire.Ping(7), 3, version=1)
    assert frame[2] == 1 and frame[12:20] == (7).to_bytes(8, "little")
    assert frame[20:] == zlib.crc32(frame[2:20]).to_bytes(4, "little")
    assert wire.FrameDecoder().feed(frame)[0].message == wire.OtherVersion(1, wire.Ping.TYPE)
