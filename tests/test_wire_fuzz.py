"""The frame decoder under hostile bytes (hypothesis): it never raises, never yields a frame
whose CRC was wrong, and finds every frame that the spoiling left intact."""

from __future__ import annotations

import zlib

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_wire import messages

from drivers import wire


def valid_frames(stream: bytes) -> set[tuple[int, int]]:
    """Every (seq, type) whose v2 frame has a right header CRC and frame CRC, at any offset
    of ``stream``: checked here independently of the decoder."""
    found = set()
    start = stream.find(wire.MARKER)
    while start >= 0:
        head = stream[start + 2:start + 12]
        if len(head) == 10 and head[0] == wire.VERSION:
            seq = int.from_bytes(head[2:6], "little")
            end = start + 16 + int.from_bytes(head[6:10], "little")
            if (stream[start + 12:start + 16] == zlib.crc32(head).to_bytes(4, "little")
                    and stream[end:end + 4] == zlib.crc32(stream[start + 2:end]).to_bytes(
                        4, "little")):
                found.add((seq, head[1]))
        start = stream.find(wire.MARKER, start + 1)
    return found


def decode_in_pieces(stream: bytes, piece: int) -> tuple[list[wire.Frame], wire.FrameDecoder]:
    decoder = wire.FrameDecoder()
    frames = []
    for k in range(0, len(stream), piece):
        frames += decoder.feed(stream[k:k + piece])
    return frames, decoder


def check_every_frame_had_a_good_crc(stream: bytes, frames: list[wire.Frame]) -> None:
    valid = valid_frames(stream)
    for frame in frames:
        if frame.version == wire.VERSION:
            assert (frame.seq, frame.message.TYPE) in valid


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 97))
def test_arbitrary_bytes_never_raise_nor_yield_a_bad_frame(stream, piece):
    frames, decoder = decode_in_pieces(stream, piece)
    check_every_frame_had_a_good_crc(stream, frames)
    assert decoder.garbage_bytes <= len(stream)


def _mutate(frame: bytes, how: str, where: int, junk: bytes) -> bytes:
    at = where % len(frame)
    if how == "flip":
        out = bytearray(frame)
        out[at] ^= 1 << (where % 8)
        return bytes(out)
    if how == "truncate":
        return frame[:at]
    if how == "garbage":
        return junk + frame  # the frame itself stays whole
    if how == "dup":
        return frame + frame
    return frame


_BLOCK = wire.SampleBlock(first_sample=0, data=np.zeros((4, 32), np.int16))
MUTATIONS = st.sampled_from(["none", "flip", "truncate", "garbage", "dup", "none"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(messages, MUTATIONS, st.integers(0, 10**6), st.binary(max_size=40)),
                min_size=1, max_size=8),
       st.integers(1, 200))
@example(  # found by CI: duplicates made the stream long enough that no tail was added
    items=[(_BLOCK, "dup", 0, b""), (_BLOCK, "dup", 0, b""),
           (wire.Hello(0, 0.0, 0.0, "", "f" * 80, {}, 0), "truncate", 30, b""),
           (wire.Ack(0, 0, ""), "none", 0, b"")],
    piece=1)
def test_spoiled_streams_resynchronise_to_every_intact_frame(items, piece):
    stream, intact = b"", []
    for seq, (message, how, where, junk) in enumerate(items):
        frame = wire.encode(message, seq)
        stream += _mutate(frame, how, where, junk)
        if how in ("none", "garbage", "dup"):
            intact.append(seq)
    # a live link goes on: frames after a spoiled one let the decoder past the length its
    # header states: at most the longest frame here, or MAX_OTHER_PAYLOAD for a header of
    # another version that the spoiling made up
    longest = max(max(len(wire.encode(m, 0)) for m, *_ in items),
                  wire.HEADER.size + wire.MAX_OTHER_PAYLOAD + wire.CRC.size)
    tail_seq, tail_end = len(items), len(stream) + longest + 64
    while len(stream) < tail_end:
        stream += wire.encode(wire.Heartbeat(tail_seq), tail_seq)
        tail_seq += 1
    frames, _ = decode_in_pieces(stream, piece)
    check_every_frame_had_a_good_crc(stream, frames)
    got = [f.seq for f in frames if f.seq < len(items)]
    for seq in intact:
        assert seq in got, f"intact frame {seq} was not found"
    by_seq = {f.seq: f.message for f in frames}
    for seq in intact:
        assert by_seq[seq] == items[seq][0]


# -- what the fuzzing found, kept as explicit cases --------------------------------------------
def test_a_flipped_length_bit_does_not_swallow_the_frames_after_it():
    """Version 1 had no header CRC: a length spoiled upwards made the receiver wait for
    megabytes, and every frame meanwhile was lost."""
    spoiled = bytearray(wire.encode(wire.Heartbeat(1), 1))
    spoiled[10] ^= 0x10  # length 8 -> 1 MiB + 8
    decoder = wire.FrameDecoder()
    frames = decoder.feed(bytes(spoiled) + wire.encode(wire.Heartbeat(2), 2))
    assert [f.message for f in frames] == [wire.Heartbeat(2)]


def test_a_truncated_frame_then_a_short_one_resolves_when_more_comes():
    first = wire.encode(wire.Hello(64, 25000.0, 0.195, "grid8x8_200um", "fw"), 1)[:20]
    decoder = wire.FrameDecoder()
    frames = decoder.feed(first + wire.encode(wire.Heartbeat(2), 2))
    frames += decoder.feed(b"".join(wire.encode(wire.Heartbeat(s), s) for s in range(3, 12)))
    assert [f.seq for f in frames] == list(range(2, 12))


def test_a_marker_split_across_pieces_is_found():
    frame = wire.encode(wire.Ping(5), 7)
    decoder = wire.FrameDecoder()
    assert decoder.feed(b"junk" + frame[:1]) == []
    assert decoder.feed(frame[1:])[0].message == wire.Ping(5)
    assert decoder.garbage_bytes == 4


def test_a_version_1_header_with_a_huge_length_is_noise():
    """Other versions are recognised only up to MAX_OTHER_PAYLOAD: a v1 look-alike header in
    noise must not make the receiver wait for its length."""
    length = (10**6).to_bytes(4, "little")
    noise = wire.MARKER + bytes([1, 0x06]) + (0).to_bytes(4, "little") + length
    decoder = wire.FrameDecoder()
    assert [f.seq for f in decoder.feed(noise + wire.encode(wire.Heartbeat(3), 3))] == [3]
