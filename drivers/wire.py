"""The mea-control wire protocol: frames and messages between a host and a serial MEA bridge.

Specified in ``docs/wire-protocol.md``; used by the serial driver and by the
simulated device. A version 2 frame is, little-endian::

    A5 5A | version u8 | type u8 | seq u32 | length u32 | header crc32 u32 | payload | crc32 u32

The header CRC-32 (zlib's) covers version through length, so that a spoiled
length is noticed at once; the frame's CRC-32 covers everything after the marker.
:class:`FrameDecoder` finds frames in any byte stream, skipping garbage and
frames whose CRC or header is wrong, and counts what it skipped; a well-formed
frame of another version (version 1's layout, or this one's for later versions)
comes out as a :class:`Frame` whose message is :class:`OtherVersion`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MARKER = b"\xa5\x5a"
VERSION = 2
#: Version 1's header (no header CRC): recognised, to refuse a version-1 peer clearly.
HEADER_V1 = struct.Struct("<2sBBII")
HEADER = struct.Struct("<2sBBIII")  # ... length u32, header crc32 u32
CRC = struct.Struct("<I")
#: Larger payloads are taken for garbage (a 1 s block of 1024 channels at 30 kHz fits).
MAX_PAYLOAD = 64 * 1024 * 1024
#: A frame of another version is recognised up to this payload size (a Hello or a Ping
#: fits); version 1 has no header CRC, so a larger length is more likely noise.
MAX_OTHER_PAYLOAD = 4096
NOW = -1  # Stimulate.at_sample: as soon as possible
#: Ack.reason codes
DONE, MALFORMED, LIMIT, ELECTRODE, LATE, BUSY, DISARMED = range(7)
REASONS = {DONE: "done", MALFORMED: "malformed or unknown command", LIMIT: "a limit of the device",
           ELECTRODE: "the electrode cannot stimulate", LATE: "too late: at_sample has passed",
           BUSY: "busy", DISARMED: "disarmed: host silent"}
#: StimCut.cause codes, and the reason a host's report gives
CUT_ABORT, CUT_HOST_SILENT = 0, 1
CUT_REASONS = {CUT_ABORT: "aborted", CUT_HOST_SILENT: "disarmed: host silent"}


class WireError(ValueError):
    """A payload that does not decode as its message type says."""


def _text(s: str) -> bytes:
    raw = s.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw


class _Reader:
    def __init__(self, payload: bytes) -> None:
        self.buf, self.pos = payload, 0

    def take(self, fmt: str) -> tuple:
        st = struct.Struct("<" + fmt)
        if self.pos + st.size > len(self.buf):
            raise WireError("payload too short")
        values = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return values

    def text(self) -> str:
        (n,) = self.take("B")
        raw = self.buf[self.pos:self.pos + n]
        if len(raw) != n:
            raise WireError("payload too short")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        end = self.pos + dt.itemsize * count
        if end > len(self.buf):
            raise WireError("payload too short")
        out = np.frombuffer(self.buf, dt, count, self.pos).astype(dt.newbyteorder("="))
        self.pos = end
        return out

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise WireError(f"{len(self.buf) - self.pos} bytes left over")


# -- device to host --------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    n_channels: int
    sample_rate: float
    uV_per_bit: float
    layout: str
    firmware: str
    limits: dict[str, float] = field(default_factory=dict)
    #: The device disarms itself when it hears no frame from the host for this long.
    host_timeout_ms: int = 300
    TYPE = 0x01

    def payload(self) -> bytes:
        out = struct.pack("<HdfI", self.n_channels, self.sample_rate, self.uV_per_bit,
                          self.host_timeout_ms)
        out += _text(self.layout) + _text(self.firmware) + bytes([len(self.limits)])
        for name, value in self.limits.items():
            out += _text(name) + struct.pack("<d", value)
        return out

    @classmethod
    def parse(cls, r: _Reader) -> Hello:
        n, rate, uv, host_timeout_ms = r.take("HdfI")
        layout, firmware = r.text(), r.text()
        (count,) = r.take("B")
        limits = {r.text(): r.take("d")[0] for _ in range(count)}
        return cls(n, rate, uv, layout, firmware, limits, host_timeout_ms)


@dataclass(frozen=True, eq=False)
class SampleBlock:
    first_sample: int
    data: np.ndarray  # (samples, channels) int16
    TYPE = 0x02

    def payload(self) -> bytes:
        n, ch = self.data.shape
        return struct.pack("<qHH", self.first_sample, n, ch) + \
            np.ascontiguousarray(self.data, "<i2").tobytes()

    @classmethod
    def parse(cls, r: _Reader) -> SampleBlock:
        first, n, ch = r.take("qHH")
        return cls(first, r.array("i2", n * ch).reshape(n, ch))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SampleBlock) and other.first_sample == self.first_sample
                and np.array_equal(other.data, self.data))


@dataclass(frozen=True, eq=False)
class Spikes:
    sample: np.ndarray  # int64
    channel: np.ndarray  # uint16
    amplitude_uV: np.ndarray  # float32
    TYPE = 0x03
    RECORD = np.dtype([("sample", "<i8"), ("channel", "<u2"), ("amplitude", "<f4")])

    def payload(self) -> bytes:
        rec = np.empty(len(self.sample), self.RECORD)
        rec["sample"], rec["channel"], rec["amplitude"] = (
            self.sample, self.channel, self.amplitude_uV)
        return struct.pack("<I", len(rec)) + rec.tobytes()

    @classmethod
    def parse(cls, r: _Reader) -> Spikes:
        (n,) = r.take("I")
        end = r.pos + n * cls.RECORD.itemsize
        if end > len(r.buf):
            raise WireError("payload too short")
        rec = np.frombuffer(r.buf, cls.RECORD, n, r.pos)
        r.pos = end
        return cls(rec["sample"].astype(np.int64), rec["channel"].astype(np.uint16),
                   rec["amplitude"].astype(np.float32))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spikes) and all(
            np.array_equal(getattr(self, k), getattr(other, k))
            for k in ("sample", "channel", "amplitude_uV"))


@dataclass(frozen=True)
class StimExecuted:
    ticket: int
    sample: int
    electrodes: tuple[int, ...]
    TYPE = 0x04

    def payload(self) -> bytes:
        return struct.pack(f"<IqH{len(self.electrodes)}H", self.ticket, self.sample,
                           len(self.electrodes), *self.electrodes)

    @classmethod
    def parse(cls, r: _Reader) -> StimExecuted:
        ticket, sample, n = r.take("IqH")
        return cls(ticket, sample, r.take(f"{n}H"))


@dataclass(frozen=True)
class Ack:
    """The answer to a host command (its ``seq``): reason 0 = done, else refused."""

    seq: int
    reason: int = 0
    message: str = ""
    TYPE = 0x05

    def payload(self) -> bytes:
        return struct.pack("<IB", self.seq, self.reason) + _text(self.message)

    @classmethod
    def parse(cls, r: _Reader) -> Ack:
        seq, reason = r.take("IB")
        return cls(seq, reason, r.text())


@dataclass(frozen=True)
class Heartbeat:
    sample: int
    TYPE = 0x06

    def payload(self) -> bytes:
        return struct.pack("<q", self.sample)

    @classmethod
    def parse(cls, r: _Reader) -> Heartbeat:
        return cls(*r.take("q"))


@dataclass(frozen=True)
class Error:
    code: int
    message: str
    TYPE = 0x07

    def payload(self) -> bytes:
        return struct.pack("<H", self.code) + _text(self.message)

    @classmethod
    def parse(cls, r: _Reader) -> Error:
        (code,) = r.take("H")
        return cls(code, r.text())


@dataclass(frozen=True)
class StimCut:
    """A started train cut short: ``pulses_run`` of its pulses ran, none from ``sample`` on."""

    ticket: int
    sample: int
    pulses_run: int
    cause: int = CUT_ABORT  # CUT_ABORT or CUT_HOST_SILENT
    TYPE = 0x08

    def payload(self) -> bytes:
        return struct.pack("<IqHB", self.ticket, self.sample, self.pulses_run, self.cause)

    @classmethod
    def parse(cls, r: _Reader) -> StimCut:
        return cls(*r.take("IqHB"))


@dataclass(frozen=True)
class Disarmed:
    """The dead-man switch tripped at ``sample``: the host was silent for ``silent_ms``;
    ``tickets`` are the patterns cancelled (cut trains among them, each also in a StimCut)."""

    sample: int
    silent_ms: int
    tickets: tuple[int, ...] = ()
    TYPE = 0x09

    def payload(self) -> bytes:
        return struct.pack(f"<qIH{len(self.tickets)}I", self.sample, self.silent_ms,
                           len(self.tickets), *self.tickets)

    @classmethod
    def parse(cls, r: _Reader) -> Disarmed:
        sample, silent_ms, n = r.take("qIH")
        return cls(sample, silent_ms, r.take(f"{n}I"))


# -- host to device --------------------------------------------------------------------
#: Start.mode bits
RAW, SPIKES = 1, 2


@dataclass(frozen=True)
class Start:
    mode: int = RAW | SPIKES
    block_samples: int = 25
    TYPE = 0x10

    def payload(self) -> bytes:
        return struct.pack("<BH", self.mode, self.block_samples)

    @classmethod
    def parse(cls, r: _Reader) -> Start:
        return cls(*r.take("BH"))


@dataclass(frozen=True)
class Stop:
    TYPE = 0x11

    def payload(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, r: _Reader) -> Stop:
        return cls()


#: Pulse modes on the wire
MODES = ("current", "voltage")


@dataclass(frozen=True)
class WirePulse:
    """One electrode's pulse: phases of (duration_us, amplitude uA or mV)."""

    electrode: int
    mode: str
    phases: tuple[tuple[float, float], ...]

    def encode(self) -> bytes:
        out = struct.pack("<HBB", self.electrode, MODES.index(self.mode), len(self.phases))
        return out + b"".join(struct.pack("<ff", d, a) for d, a in self.phases)

    @classmethod
    def parse(cls, r: _Reader) -> WirePulse:
        electrode, mode, n = r.take("HBB")
        if mode >= len(MODES):
            raise WireError(f"unknown pulse mode {mode}")
        return cls(electrode, MODES[mode], tuple(r.take("ff") for _ in range(n)))


@dataclass(frozen=True)
class Stimulate:
    ticket: int
    at_sample: int  # NOW (-1): as soon as possible
    pulses: tuple[WirePulse, ...]
    train_count: int = 1
    train_rate_hz: float = 0.0
    TYPE = 0x12

    def payload(self) -> bytes:
        return struct.pack("<IqHfH", self.ticket, self.at_sample, self.train_count,
                           self.train_rate_hz, len(self.pulses)) + \
            b"".join(p.encode() for p in self.pulses)

    @classmethod
    def parse(cls, r: _Reader) -> Stimulate:
        ticket, at, count, rate, n = r.take("IqHfH")
        return cls(ticket, at, tuple(WirePulse.parse(r) for _ in range(n)), count, rate)


@dataclass(frozen=True)
class Abort:
    TYPE = 0x13

    def payload(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, r: _Reader) -> Abort:
        return cls()


@dataclass(frozen=True)
class SetThreshold:
    """On-board detection threshold in noise standard deviations (negative: downward)."""

    threshold_sd: float
    TYPE = 0x14

    def payload(self) -> bytes:
        return struct.pack("<f", self.threshold_sd)

    @classmethod
    def parse(cls, r: _Reader) -> SetThreshold:
        return cls(*r.take("f"))


@dataclass(frozen=True)
class Ping:
    token: int = 0
    TYPE = 0x15

    def payload(self) -> bytes:
        return struct.pack("<Q", self.token)

    @classmethod
    def parse(cls, r: _Reader) -> Ping:
        return cls(*r.take("Q"))


@dataclass(frozen=True)
class HostHeartbeat:
    """The host is alive and its loop reads: ``sample`` is the latest device sample it read
    (-1: none yet). Not acknowledged."""

    sample: int = -1
    TYPE = 0x16

    def payload(self) -> bytes:
        return struct.pack("<q", self.sample)

    @classmethod
    def parse(cls, r: _Reader) -> HostHeartbeat:
        return cls(*r.take("q"))


@dataclass(frozen=True)
class Arm:
    """A person re-armed stimulation: a device that disarmed itself runs patterns again."""

    TYPE = 0x17

    def payload(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, r: _Reader) -> Arm:
        return cls()


@dataclass(frozen=True)
class OtherVersion:
    """The message of a well-formed frame of another protocol version (not decoded)."""

    version: int
    kind: int


MESSAGES = {cls.TYPE: cls for cls in (Hello, SampleBlock, Spikes, StimExecuted, Ack, Heartbeat,
                                      Error, StimCut, Disarmed, Start, Stop, Stimulate, Abort,
                                      SetThreshold, Ping, HostHeartbeat, Arm)}


def encode(message: object, seq: int, version: int = VERSION) -> bytes:
    """One frame carrying ``message`` with sequence number ``seq``.

    ``version=1`` gives version 1's frame (to tell a version-1 peer it must update).
    """
    payload = message.payload()
    head = HEADER_V1.pack(MARKER, version, message.TYPE, seq & 0xFFFFFFFF, len(payload))[2:]
    if version != 1:
        head += CRC.pack(zlib.crc32(head))
    body = head + payload
    return MARKER + body + CRC.pack(zlib.crc32(body))


def decode_payload(kind: int, payload: bytes) -> object:
    cls = MESSAGES.get(kind)
    if cls is None:
        raise WireError(f"unknown message type {kind:#04x}")
    r = _Reader(payload)
    message = cls.parse(r)
    r.done()
    return message


@dataclass
class Frame:
    version: int
    seq: int
    message: object  # OtherVersion when version != VERSION


class FrameDecoder:
    """Finds frames in a byte stream fed in pieces; skips and counts what is not a frame.

    ``feed`` never raises: whatever the bytes, it returns the frames whose CRCs are right.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.garbage_bytes = 0  # bytes skipped while looking for a frame
        self.crc_errors = 0  # a header that checks out, a frame that does not
        self.bad_payloads = 0  # CRC right, content wrong (unknown type, short payload)
        self.other_versions: set[int] = set()  # versions of well-formed frames we do not speak

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames: list[Frame] = []
        while self._find_marker():
            if len(self.buf) < 3:
                return frames
            version = self.buf[2]
            header = HEADER_V1 if version == 1 else HEADER
            if len(self.buf) < header.size:
                return frames
            _, _, kind, seq, length = HEADER_V1.unpack_from(self.buf)
            limit = MAX_PAYLOAD if version == VERSION else MAX_OTHER_PAYLOAD
            if version == 0 or length > limit or not self._header_ok(header):
                self._skip()
                continue
            end = header.size + length + CRC.size
            if len(self.buf) < end:
                return frames
            body = bytes(self.buf[2:header.size + length])
            if zlib.crc32(body) != CRC.unpack_from(self.buf, end - CRC.size)[0]:
                self.crc_errors += 1
                self._skip()
                continue
            del self.buf[:end]
            if version != VERSION:
                self.other_versions.add(version)
                frames.append(Frame(version, seq, OtherVersion(version, kind)))
                continue
            try:
                frames.append(Frame(version, seq, decode_payload(kind, body[header.size - 2:])))
            except WireError:
                self.bad_payloads += 1
        return frames

    def _find_marker(self) -> bool:
        """Drop what precedes the next marker (or all but a trailing first byte of one)."""
        start = self.buf.find(MARKER)
        if start < 0:
            keep = 1 if self.buf.endswith(MARKER[:1]) else 0
            self.garbage_bytes += len(self.buf) - keep
            del self.buf[:len(self.buf) - keep]
            return False
        self.garbage_bytes += start
        del self.buf[:start]
        return True

    def _header_ok(self, header: struct.Struct) -> bool:
        if header is HEADER_V1:
            return True  # version 1 has no header CRC: its frame CRC decides
        (crc,) = CRC.unpack_from(self.buf, HEADER_V1.size)
        return zlib.crc32(bytes(self.buf[2:HEADER_V1.size])) == crc

    def _skip(self) -> None:
        """Not a frame after all: look for the next marker past this one."""
        self.garbage_bytes += 1
        del self.buf[:1]
