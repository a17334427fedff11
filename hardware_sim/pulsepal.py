"""A fake Sanworks Pulse Pal 2 that speaks the published USB serial protocol, on a pty.

Nobody here has the hardware, so the ``pulsepal://`` driver is tested against
this: it reads the host's bytes as the firmware does (Firmware/PROTOCOL.md of
sanworks/PulsePal, firmware v21/v22), answers the same bytes, and keeps

- :attr:`FakePulsePal.received`: every command with the time it arrived
  (``time.monotonic()``) and its exact bytes;
- :attr:`FakePulsePal.program`: each output channel's parameters in device
  units (DAC codes, 50 us cycles, bytes), by parameter code;
- :attr:`FakePulsePal.outputs`: every soft trigger that started a channel,
  with the program it played, the pulse onsets that program gives and when a
  stop (op 79, 80, 81) cut it;
- :meth:`FakePulsePal.pulses`: from those, every pulse that began: the device's
  own record of what ran.

Ops handled: 72 handshake, 74 program one parameter (acknowledged 1, or 0 for
a channel, code or value out of range), 77 soft trigger, 79 fixed voltage,
80 stop all, 81 disconnect, 82 continuous mode, 89 client name. Other ops are
logged as unsupported and their data, if any, read as stray bytes. Bytes that
do not start a command (anything but 213) are counted in :attr:`garbage`. A
command whose bytes stop for 100 ms is a comm failure, as on the device: the
defaults are reloaded and nothing is answered.

``python -m hardware_sim.pulsepal`` serves one on a new pty and prints its path.
"""

from __future__ import annotations

import argparse
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hardware_sim.device import HostGone, Link, PtyLink

OP_MENU = 213
HANDSHAKE_REPLY = 75
CYCLE_US = 50.0
#: A command's next byte must come within this long (the firmware's read timeout).
BYTE_TIMEOUT_S = 0.1
#: The longest time a parameter may hold: 9999.9999 s in 50 us cycles.
MAX_CYCLES = 199_999_998
N_OUTPUTS = 4
N_CUSTOM_TRAINS = 2  # Pulse Pal 2

#: Output parameter codes by the width of their value, as the firmware reads them.
BYTE_PARAMS = {1, 12, 13, 14, 15, 16, 18}
VOLT_PARAMS = {2, 3, 17}
TIME_PARAMS = {4, 5, 6, 7, 8, 9, 10, 11}
TRIGGER_MODE = 128

#: The default program of every output channel, in device units: monophasic +5 V pulses
#: of 1 ms, 10 ms apart, for 1 s, resting at 0 V, linked to trigger channel 1.
DEFAULT_PROGRAM: dict[int, int] = {
    1: 0, 2: 49151, 3: 16384, 4: 20, 5: 20, 6: 20, 7: 200, 8: 0, 9: 0, 10: 20000, 11: 0,
    12: 1, 13: 0, 14: 0, 15: 0, 16: 0, 17: 32768, 18: 0,
}


@dataclass(frozen=True)
class Received:
    """One command as it arrived: when (monotonic s), its op code and all its bytes."""

    time: float
    op: int
    data: bytes


@dataclass(frozen=True)
class Output:
    """A channel started by a soft trigger: the program it plays and its pulse onsets (cycles
    after the trigger; None when the program uses bursts or a custom train, not modelled)."""

    time: float
    channel: int
    program: dict[int, int]
    onsets: tuple[int, ...] | None
    ends: float = field(default=0.0)  # monotonic s when the train is over
    stopped: float | None = None  # monotonic s when a stop cut it

    def pulses(self) -> list[float]:
        """The onsets (monotonic s) of the pulses that began before the train's end or stop."""
        end = self.ends if self.stopped is None else min(self.ends, self.stopped)
        return [t for t in (self.time + onset * CYCLE_US * 1e-6 for onset in self.onsets or ())
                if t < end]


class _CommFailure(Exception):
    """A command's bytes stopped coming (the device shows COMM. FAILURE!)."""


class FakePulsePal:
    """A Pulse Pal 2 (firmware ``firmware``) behind a :class:`Link`; ``serve()`` runs it."""

    def __init__(self, firmware: int = 21,
                 log: Callable[[str], None] | None = None) -> None:
        self.firmware = firmware
        self.log = log or (lambda message: None)
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.outputs: list[Output] = []
        self.program: dict[int, dict[int, int]] = {}
        self.trigger_modes = [0, 0]
        self.client = ""
        self.garbage = 0
        self.comm_failures = 0
        self.unsupported: list[int] = []
        self._before_reply: list[bytes] = []
        self._noise: list[bytes] = []
        self._load_defaults()

    def _load_defaults(self) -> None:
        self.program = {ch: dict(DEFAULT_PROGRAM) for ch in range(1, N_OUTPUTS + 1)}
        self.trigger_modes = [0, 0]
        self._playing_until = dict.fromkeys(range(1, N_OUTPUTS + 1), 0.0)

    # -- what tests look at --------------------------------------------------------------
    def commands(self, op: int | None = None) -> list[Received]:
        """The commands received so far (of one op code if given)."""
        with self.lock:
            return [r for r in self.received if op is None or r.op == op]

    def wait_for(self, op: int, count: int = 1, timeout: float = 5.0) -> list[Received]:
        """Wait until ``count`` commands with this op code have arrived; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.commands(op)
            if len(found) >= count:
                return found
            time.sleep(0.005)
        raise TimeoutError(f"the fake Pulse Pal got {len(self.commands(op))} op-{op} commands, "
                           f"not {count}, within {timeout} s")

    def pulses(self) -> list[tuple[float, int, dict[int, int]]]:
        """Every pulse that began, as (monotonic s, output channel, program), by time."""
        with self.lock:
            return sorted((t, out.channel, out.program) for out in self.outputs
                          for t in out.pulses())

    def inject(self, data: bytes, before_reply: bool = False) -> None:
        """Send these bytes to the host (a noisy line): within 0.2 s, or just before the
        next reply if ``before_reply``."""
        with self.lock:
            (self._before_reply if before_reply else self._noise).append(bytes(data))

    # -- serving -------------------------------------------------------------------------
    def serve(self, link: Link, stop: threading.Event) -> None:
        """Serve hosts one after the other until ``stop`` is set."""
        while not stop.is_set():
            if link.wait_host(0.2):
                self.log(f"host connected on {link.name}")
                try:
                    _Session(self, link, stop).run()
                except HostGone:
                    pass
                finally:
                    link.end_session()
                self.log("host gone")

    def _trigger(self, mask: int, now: float) -> None:
        for channel in range(1, N_OUTPUTS + 1):
            if not mask & (1 << (channel - 1)):
                continue
            if now < self._playing_until[channel]:
                self.log(f"output {channel} is playing: trigger ignored")
                continue
            program = dict(self.program[channel])
            onsets = pulse_onsets(program)
            ends = now + (program[11] + program[10]) * CYCLE_US * 1e-6
            self._playing_until[channel] = ends
            self.outputs.append(Output(now, channel, program, onsets, ends))

    def _stop_all(self, now: float) -> None:
        for channel in self._playing_until:
            self._playing_until[channel] = 0.0
        self.outputs = [replace(out, stopped=now) if out.stopped is None and now < out.ends
                        else out for out in self.outputs]


def pulse_onsets(program: dict[int, int]) -> tuple[int, ...] | None:
    """Pulse onsets (cycles after the trigger) of a parametric train without bursts.

    A biphasic pulse starts only if it ends by the end of the train; a monophasic one
    starts before the end and is cut short by it.
    """
    if program[8] or program[14]:
        return None
    biphasic = bool(program[1])
    length = program[4] + (program[5] + program[6] if biphasic else 0)
    delay, train = program[11], program[10]
    onsets, t = [], 0
    while (t + length <= train) if biphasic else (t < train):
        onsets.append(delay + t)
        t += length + program[7]
    return tuple(onsets)


class _Session:
    """One host: bytes in, commands parsed as the firmware parses them, replies out."""

    def __init__(self, device: FakePulsePal, link: Link, stop: threading.Event) -> None:
        self.device, self.link, self.stop = device, link, stop
        self.buffer = bytearray()
        self.start = 0.0  # when the current command's first byte arrived

    def run(self) -> None:
        while not self.stop.is_set():
            first = self._byte(0.2, idle=True)
            if first is None:
                with self.device.lock:
                    noise, self.device._noise = b"".join(self.device._noise), []
                if noise:
                    self.link.send(noise, self.stop)
                continue
            self.start = time.monotonic()
            if first != OP_MENU:
                with self.device.lock:
                    self.device.garbage += 1
                continue
            try:
                self._command()
            except _CommFailure:
                self.buffer.clear()  # what came of the command was read and is dropped
                with self.device.lock:
                    self.device.comm_failures += 1
                    self.device._load_defaults()
                self.device.log("COMM. FAILURE! (a command's bytes stopped coming)")

    # -- bytes ---------------------------------------------------------------------------
    def _fill(self, timeout: float) -> bool:
        data = self.link.recv(timeout)
        if data == b"":
            raise HostGone("the host closed the port")
        if data:
            self.buffer += data
            return True
        return False

    def _byte(self, timeout: float, idle: bool = False) -> int | None:
        if not self.buffer and not self._fill(timeout):
            if idle:
                return None
            raise _CommFailure()
        value = self.buffer[0]
        del self.buffer[0]
        return value

    def _read(self, n: int) -> bytes:
        """n more bytes of the command, each within BYTE_TIMEOUT_S of the one before."""
        while len(self.buffer) < n:
            if not self._fill(BYTE_TIMEOUT_S):
                raise _CommFailure()
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def _discard_until_quiet(self) -> bytes:
        """Everything until the port has been quiet for 100 ms (after an unknown code)."""
        while self._fill(BYTE_TIMEOUT_S):
            pass
        out = bytes(self.buffer)
        self.buffer.clear()
        return out

    def _reply(self, data: bytes) -> None:
        with self.device.lock:
            noise, self.device._before_reply = b"".join(self.device._before_reply), []
        self.link.send(noise + data, self.stop)

    def _log(self, op: int, data: bytes) -> None:
        with self.device.lock:
            self.device.received.append(Received(self.start, op, bytes([OP_MENU, op]) + data))

    # -- commands ------------------------------------------------------------------------
    def _command(self) -> None:
        op = self._read(1)[0]
        handler = getattr(self, f"_op{op}", None)
        if handler is None:
            self._log(op, b"")
            with self.device.lock:
                self.device.unsupported.append(op)
            self.device.log(f"op {op} is not supported by this fake: ignored")
            return
        handler(op)

    def _op72(self, op: int) -> None:  # handshake
        self._log(op, b"")
        self._reply(struct.pack("<BI", HANDSHAKE_REPLY, self.device.firmware))

    def _op74(self, op: int) -> None:  # program one parameter
        code, channel = self._read(2)
        width = _width(code, self.device.firmware)
        if width is None:
            rest = self._discard_until_quiet()
            self._log(op, bytes([code, channel]) + rest)
            self._reply(b"\x00")
            return
        raw = self._read(width)
        self._log(op, bytes([code, channel]) + raw)
        value = int.from_bytes(raw, "little")
        ok = _valid(code, channel, value)
        if ok:
            with self.device.lock:
                if code == TRIGGER_MODE:
                    self.device.trigger_modes[channel - 1] = value
                else:
                    self.device.program[channel][code] = value
        self._reply(b"\x01" if ok else b"\x00")

    def _op77(self, op: int) -> None:  # soft trigger
        mask = self._read(1)
        self._log(op, mask)
        with self.device.lock:
            self.device._trigger(mask[0], self.start)

    def _op79(self, op: int) -> None:  # fixed voltage
        data = self._read(3)
        self._log(op, data)
        with self.device.lock:
            self.device._stop_all(self.start)
        self._reply(b"\x01" if 1 <= data[0] <= N_OUTPUTS else b"\x00")

    def _op80(self, op: int) -> None:  # stop all outputs
        self._log(op, b"")
        with self.device.lock:
            self.device._stop_all(self.start)

    def _op81(self, op: int) -> None:  # the client disconnects: outputs stop
        self._op80(op)

    def _op82(self, op: int) -> None:  # continuous loop mode
        data = self._read(2)
        self._log(op, data)
        self._reply(b"\x01" if 1 <= data[0] <= N_OUTPUTS and data[1] <= 1 else b"\x00")

    def _op89(self, op: int) -> None:  # client name, shown on the screen
        data = self._read(6)
        self._log(op, data)
        with self.device.lock:
            self.device.client = data.decode("ascii", "replace")


def _width(code: int, firmware: int) -> int | None:
    """Bytes of a parameter's value; None for a code this firmware does not know."""
    if code in VOLT_PARAMS:
        return 2
    if code in TIME_PARAMS:
        return 4
    if code == 18 and firmware < 22:
        return None
    if code in BYTE_PARAMS or code == TRIGGER_MODE:
        return 1
    return None


def _valid(code: int, channel: int, value: int) -> bool:
    if code == TRIGGER_MODE:
        return channel in (1, 2) and value <= 2  # param sync (3) is Pulse Pal 3 only
    if not 1 <= channel <= N_OUTPUTS:
        return False
    if code in TIME_PARAMS:
        return value <= MAX_CYCLES
    if code == 14:
        return value <= N_CUSTOM_TRAINS
    if code in BYTE_PARAMS:
        return value <= 1
    return True  # a DAC code: any uint16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardware_sim.pulsepal",
                                     description="serve a fake Pulse Pal 2 on a new pty")
    parser.add_argument("--firmware", type=int, default=21, help="firmware version (default 21)")
    args = parser.parse_args(argv)
    link = PtyLink()
    device = FakePulsePal(args.firmware, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"serving on {link.name}", flush=True)
    stop = threading.Event()
    try:
        device.serve(link, stop)
    except KeyboardInterrupt:
        pass
    finally:
        link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
