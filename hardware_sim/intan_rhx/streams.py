"""The data ports: the waveform and spike servers and what they write.

A waveform block is the magic number 0x2ef07a08 and 128 frames of an int32 timestamp and
one uint16 per enabled output, per channel in RHX's order (WIDE, LOW, HIGH, DC, STIM); a
spike record is 14 bytes (magic 0x3ae2710f, 5-char native name, uint32 timestamp, uint8
id 1). Written from RHX's ``tcpdataoutputthread.cpp``, not imported from
drivers/intan_rhx/.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

import numpy as np

from hardware_sim.intan_rhx.items import BANDS, Channel
from mea_control.types import Block

WAVEFORM_MAGIC = 0x2EF07A08
SPIKE_MAGIC = 0x3AE2710F
FRAMES_PER_BLOCK = 128
SPIKE_RECORD = struct.Struct("<I5sIB")
UV_PER_BIT = 0.195


class DataPort:
    """A data output: listens after ``execute Connect...``, serves one client."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.host, self.port = name, host, port
        self.server: socket.socket | None = None
        self.client: socket.socket | None = None

    @property
    def status(self) -> str:
        if self.client is not None:
            return "Connected"
        return "Pending" if self.server is not None else "Disconnected"

    def listen(self) -> None:
        if self.server is None:
            self.server = listener(self.host, self.port)

    def accept(self) -> None:
        assert self.server is not None
        self.client, _ = self.server.accept()
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.settimeout(2.0)
        self.server.close()  # RHX closes its server once a client is connected
        self.server = None

    def disconnect(self) -> None:
        for sock in (self.client, self.server):
            if sock is not None:
                sock.close()
        self.client = self.server = None

    def send(self, data: bytes) -> None:
        if self.client is None or not data:
            return
        try:
            self.client.sendall(data)
        except OSError:
            self.disconnect()


def listener(host: str, port: int) -> socket.socket:
    """A server socket on ``host``:``port`` accepting one client."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(1)
    return server


def free_port(host: str) -> int:
    """A port free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def outputs(channels: Iterable[Channel]) -> list[tuple[int, Channel | None]]:
    """The words of a frame, in RHX's order (each channel's enabled bands): each word's
    electrode (-1 for DC) and, for a STIM band, its channel."""
    words: list[tuple[int, Channel | None]] = []
    for channel in channels:
        for band, key in BANDS:
            if channel.values[key.lower()]:
                words.append((channel.electrode if band != "DC" else -1,
                              channel if band == "STIM" else None))
    return words


def waveform_block(block: Block, words: list[tuple[int, Channel | None]]) -> bytes:
    """One waveform block of ``block``'s samples: the magic number, then a frame per sample.
    LOW and HIGH repeat WIDE, DC reads 0 V, STIM the channel's booked words."""
    start, n = block.start_sample, block.n_samples
    electrodes = [electrode for electrode, _ in words]
    values = block.data[:, electrodes].astype(np.int32) + 32768
    for i, (electrode, channel) in enumerate(words):
        if channel is not None:
            values[:, i] = stim_band(channel, start, n)
        elif electrode < 0:
            values[:, i] = 512  # DC: 0 V
    frames = np.zeros(n, np.dtype([("t", "<i4"), ("w", "<u2", (len(words),))]))
    frames["t"] = np.arange(start, start + n, dtype=np.int64).astype(np.int32)
    frames["w"] = values.astype(np.uint16)
    return struct.pack("<I", WAVEFORM_MAGIC) + frames.tobytes()


def stim_band(channel: Channel, start: int, n: int) -> np.ndarray | int:
    """A channel's STIM words for samples ``start`` to ``start + n`` (0 between pulses)."""
    if not channel.stim_words:
        return 0
    out = np.zeros(n, np.int32)
    for first, words in channel.stim_words:
        lo, hi = max(first, start), min(first + len(words), start + n)
        if lo < hi:
            out[lo - start:hi - start] = words[lo - first:hi - first]
    return out


def spike_records(channel: Channel, block: Block) -> bytes:
    """RHX's spike detector: a record per crossing of the channel's threshold (uV)."""
    start = block.start_sample
    threshold = channel.values["spikethresholdmicrovolts"]
    uv = block.data[:, channel.electrode].astype(np.float32) * UV_PER_BIT
    uv -= np.median(uv)
    below = uv < threshold if threshold < 0 else uv > threshold
    before = np.concatenate([[channel.was_below], below[:-1]])
    records = b"".join(
        SPIKE_RECORD.pack(SPIKE_MAGIC, channel.native.encode("latin-1")[:5],
                          (start + i) & 0xFFFFFFFF, 1)
        for i in np.flatnonzero(below & ~before))
    channel.was_below = bool(below[-1])
    return records
