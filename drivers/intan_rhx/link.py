"""The link to RHX: the command port (text, batches ended by a barrier) and the data
ports (waveform blocks, spike records) with their reader threads.

A mixin of RHXDriver: it shares the driver's state (sockets, locks, inbox) set up in
``RHXDriver._reset`` and ``_configure``; a block's STIM band goes to the stimulation
mixin (``_stim_reports``) before the block is queued.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from typing import Any

import numpy as np

from mea_control.driver import DriverError
from mea_control.types import Block, SpikeEvents, Tick

WAVEFORM_MAGIC = 0x2EF07A08
SPIKE_MAGIC = 0x3AE2710F
FRAMES_PER_BLOCK = 128
SPIKE_RECORD = struct.Struct("<I5sIB")
UV_PER_BIT = 0.195
#: The answer that ends every batch whose errors we want (its values are no prefix of another).
BARRIER = "get runmode"
_BARRIER_ANSWER = re.compile(r"Return: RunMode (Run|Record|Trigger|Stop)")
_UNKNOWN = "Unrecognized parameter"
_MAGIC_W = struct.pack("<I", WAVEFORM_MAGIC)
_MAGIC_S = struct.pack("<I", SPIKE_MAGIC)


class Link:
    """The sockets to RHX and the threads that read them (RHXDriver's link)."""

    def _connect(self, port: int, what: str) -> socket.socket:
        timeout = self.options["timeout"]
        try:
            sock = socket.create_connection((self.host, port), timeout=timeout)
        except TimeoutError:
            raise DriverError(f"no answer from {self.host}:{port} ({what} port) within "
                              f"{timeout:g} s: check the address and that the network reaches "
                              "the RHX computer") from None
        except OSError as exc:
            raise DriverError(self._refused(port, what, exc)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return sock

    def _refused(self, port: int, what: str, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        if what == "command":
            return (f"cannot reach RHX's command server at {self.host}:{port} ({reason}): "
                    "check the address and port, that RHX runs, and that its TCP "
                    "server is started (Network > Remote TCP Control: Connect; RHX takes one "
                    "client and must be told to Connect again after each disconnect)")
        return (f"RHX's {what} output at {self.host}:{port} does not accept a connection "
                f"({reason}): check that the {what} port in RHX's Remote TCP "
                f"Control dialog matches ?{'waveform' if what == 'waveform' else 'spikes'}="
                f"{port} and the host there is {self.host}")

    def _connect_data(self, port: int, what: str) -> socket.socket:
        """RHX listens on a data port shortly after ``execute Connect...``: try until timeout."""
        deadline = time.monotonic() + self.options["timeout"]
        while True:
            try:
                return self._connect(port, what)
            except DriverError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _receive_waveform(self) -> None:
        sock = self._data["waveform"]
        buf = bytearray()
        while not self._closing.is_set():
            data = self._recv(sock, "waveform")
            if data is None:
                return
            buf += data
            while True:
                if len(buf) < 4:
                    break
                if buf[:4] != _MAGIC_W:
                    self._skip(buf, _MAGIC_W, "waveform")
                    continue
                if len(buf) < self._block_bytes:
                    break
                frames = np.frombuffer(bytes(buf[4:self._block_bytes]), self._frame)
                if np.any(np.diff(frames["t"]) != 1):  # uint32: wraps as RHX's clock does
                    self._skip(buf, _MAGIC_W, "waveform", 4)  # not a block after all
                    continue
                del buf[:self._block_bytes]
                self._on_block(frames)

    def _skip(self, buf: bytearray, magic: bytes, stream: str, start: int = 1) -> None:
        """Drop bytes up to the next magic number; count them."""
        at = buf.find(magic, start)
        n = len(buf) - 3 if at < 0 else at  # keep a possible magic's beginning
        n = max(n, start if at >= 0 else 0)
        del buf[:n]
        with self._lock:
            self._garbage[stream] += n
            self._event("link_error", f"{self.where}: skipped {n} bytes on the {stream} stream "
                        f"that are not RHX data ({self._garbage[stream]} so far)")

    def _unwrap(self, t0: int) -> int:
        """RHX's 32-bit timestamp as a sample index that keeps growing."""
        sample = t0 + self._wrap
        if self._last_sample is not None and sample < self._last_sample - (1 << 31):
            self._wrap += 1 << 32
            sample += 1 << 32
        return sample

    def _on_block(self, frames: np.ndarray) -> None:
        start = self._unwrap(int(frames["t"][0]))
        stop = start + FRAMES_PER_BLOCK
        words = frames["w"]
        items: list[Any] = []
        with self._lock:
            items += self._stim_reports(words, start)
            self._last_sample = stop
            self._seq += 1
        if not self.spike_mode:
            data = np.zeros((FRAMES_PER_BLOCK, self.layout.n_electrodes), np.int16)
            raw = words[:, self._wide_words].astype(np.int32) - 32768
            data[:, self._wide_channels] = raw.astype(np.int16)
            items.append(Block(start, data, UV_PER_BIT, self._seq - 1))
        else:
            with self._lock:
                spikes, self._spikes = self._spikes, []
            if spikes:
                spikes.sort()
                s = np.array(spikes, np.int64)
                items.append(SpikeEvents(s[:, 0], s[:, 1],
                                         np.full(len(s), np.nan, np.float32)))
            if self._pending_tick is not None:  # the previous block's spikes are in by now
                items.append(Tick(self._pending_tick))
            self._pending_tick = stop
        for item in items:
            self._inbox.put(item)
        self._first_block.set()

    def _receive_spikes(self) -> None:
        sock = self._data["spike"]
        buf = bytearray()
        while not self._closing.is_set():
            data = self._recv(sock, "spike")
            if data is None:
                return
            buf += data
            while len(buf) >= SPIKE_RECORD.size:
                if buf[:4] != _MAGIC_S:
                    self._skip(buf, _MAGIC_S, "spike")
                    continue
                _, name, stamp, _ = SPIKE_RECORD.unpack_from(buf)
                del buf[:SPIKE_RECORD.size]
                channel = self.natives.get(name.decode("latin-1").upper())
                if channel is None:
                    continue  # a channel we do not map
                with self._lock:
                    sample = stamp + self._wrap
                    self._spikes.append((sample, channel))

    def _recv(self, sock: socket.socket, what: str) -> bytes | None:
        try:
            data = sock.recv(1 << 18)
        except OSError as exc:
            data, reason = b"", str(exc)
        else:
            reason = "RHX closed the connection"
        if data:
            return data
        if not self._closing.is_set():
            port = {"command": self.port, "waveform": self.options["waveform"],
                    "spike": self.options["spikes"]}[what]
            self._lose(f"lost the connection to RHX's {what} port at {self.host}:{port} "
                       f"({reason}): RHX stopped, quit or was told to disconnect; check RHX, "
                       "then start its TCP server (Connect) again before the next run")
        return None

    def _lose(self, message: str) -> None:
        if self._inbox.lose(message):
            self._first_block.set()
            with self._text_ready:
                self._text_ready.notify_all()

    # -- the command port -----------------------------------------------------------------------
    def _receive_commands(self) -> None:
        while not self._closing.is_set():
            data = self._recv(self._command, "command")
            if data is None:
                return
            with self._text_ready:
                self._text += data.decode("latin-1")
                if not self._asking and self._state == "running" and self._text:
                    text, self._text = self._text, ""  # an answer nobody waits for: an error
                    with self._lock:
                        self._event("device_error", f"{self.where} reports: {text}")
                self._text_ready.notify_all()

    def _send(self, text: str) -> None:
        try:
            self._command.sendall(text.encode("latin-1"))
        except OSError as exc:
            self._lose(f"lost the connection to {self.where} ({exc}): check that RHX still "
                       "runs and start its TCP server (Connect) again")
            raise DriverError(self._inbox.lost) from None

    def _take_text(self) -> str:
        with self._text_ready:
            text, self._text = self._text, ""
        return text

    def _ask(self, commands: list[str], timeout: float | None = None) -> tuple[_Answers, str]:
        """Send ``commands`` and the barrier; (the gets' answers, the errors before it)."""
        timeout = self.options["timeout"] if timeout is None else timeout
        with self._ask_lock:
            with self._text_ready:
                self._asking = True
            try:
                self._send(";".join([*commands, BARRIER]) + ";")
                deadline = time.monotonic() + timeout
                with self._text_ready:
                    while (match := _BARRIER_ANSWER.search(self._text)) is None:
                        left = deadline - time.monotonic()
                        if self._inbox.lost:
                            raise DriverError(self._inbox.lost)
                        if left <= 0:
                            raise DriverError(
                                f"{self.where} did not answer within {timeout:g} s (sent "
                                f"{len(commands) + 1} commands); is this RHX's command port, "
                                "and is RHX's window responsive?")
                        self._text_ready.wait(left)
                    text, self._text = self._text[:match.start()], self._text[match.end():]
                    self._run_mode = match.group(1)
            finally:
                with self._text_ready:
                    self._asking = False
        return _Answers.parse(text)

    def _check(self, commands: list[str], what: str) -> None:
        errors = self._ask(commands)[1]
        if errors:
            raise DriverError(f"{self.where} refused to {what}: {errors}")


class _Answers(dict):
    """``get`` answers by parameter name (the last one of a name); all of them in ``every``."""

    every: list[tuple[str, str]]

    @classmethod
    def parse(cls, text: str) -> tuple[_Answers, str]:
        """Split RHX's unterminated answers: ``Return: Name value`` and error strings."""
        out = cls()
        out.every = []
        errors = []
        parts = text.split("Return: ")
        if parts[0]:
            errors.append(parts[0])
        for part in parts[1:]:
            name, _, value = part.partition(" ")
            if value.endswith(_UNKNOWN):  # an error glued to the answer before it
                value = value[:-len(_UNKNOWN)]
                errors.append(_UNKNOWN)
            out[name] = value
            out.every.append((name, value))
        return out, "; ".join(errors)

    def get_all(self, name: str) -> list[str]:
        return [value for n, value in self.every if n == name]

