"""The simulated device's firmware: the in-process simulator behind the wire protocol.

:class:`SimDevice` serves one host at a time on a :class:`PtyLink` (a
pseudo-terminal pair whose slave a host opens like a USB serial port) or a
:class:`TcpLink`, speaking ``docs/wire-protocol.md`` through :mod:`drivers.wire`.
Its core is :class:`drivers.sim.SimDriver`, opened in-process with the same
URL options and run in fast mode; this module adds what firmware adds:

- the sample clock, paced by the wall clock: an interval is generated when the
  clock reaches its last sample and sent at once, so a pattern that reaches the
  device before then runs in it (as with ``sim://`` and a reader that keeps up);
- Hello when a host connects and after every Ping, an Ack for every command
  (refusals with a reason code), StimExecuted just before the interval that
  holds a pattern's first pulse, a Heartbeat after each interval of a spikes
  stream and whenever nothing was sent for half a second;
- sessions: a host that disconnects ends its session (streaming stops); every
  Start begins a fresh culture at sample 0 from the seed, so a run over the
  link sees the very samples ``sim://`` gives with the same options.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from drivers import wire
from drivers.base import DriverError, parse_url
from drivers.sim import SimDriver, check_threshold
from drivers.wire import BUSY, DONE, ELECTRODE, LATE, LIMIT, MALFORMED
from mea_control import __version__
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse, StimReport, Tick

#: Firmware string of the Hello; the words after the name are flags (see the protocol doc).
FIRMWARE = f"mea-control-sim/{__version__}"
HEARTBEAT_S = 0.5
#: Intervals generated back to back, when the device fell behind, before commands are read again.
MAX_CATCH_UP = 50
#: Error codes of this device's Error frames.
ERROR_BUSY = 1
#: Ack reason by the simulator's kind of refusal (others: LIMIT)
_ACK_REASON = {"electrode": ELECTRODE, "late": LATE}


class SimDevice:
    """The simulated MEA as a wire-protocol device; ``serve()`` runs it on a link."""

    def __init__(self, sim_url: str = "sim://", spikes_only: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        cls, _, options = parse_url(sim_url)
        if cls is not SimDriver:
            raise DriverError(f"the simulated device runs sim:// URLs, not {sim_url!r}")
        self.sim_url = sim_url
        self.options = options
        self.spikes_only = spikes_only
        self.log = log or (lambda message: None)
        info = SimDriver(sim_url, dict(options, raw=not spikes_only)).described  # checks options
        flags = " simulated" + (" spikes-only" if spikes_only else "")
        self.hello = wire.Hello(info.n_channels, info.sample_rate, info.uV_per_bit,
                                options["layout"], FIRMWARE + flags, dict(info.limits))

    def new_sim(self, raw: bool, threshold_sd: float | None = None) -> SimDriver:
        """A fresh, opened simulator: the culture from its seed, the clock at sample 0."""
        options = dict(self.options, raw=raw)
        if threshold_sd is not None:
            options["threshold_sd"] = threshold_sd
        sim = SimDriver(self.sim_url, options)
        sim.open()
        sim.set_fast(True)  # the device paces it
        return sim

    def serve(self, link: Link, stop: threading.Event) -> None:
        """Serve hosts one after the other until ``stop`` is set."""
        while not stop.is_set():
            if link.wait_host(0.2):
                self.log(f"host connected on {link.name}")
                try:
                    _Session(self, link, stop).run()
                finally:
                    link.end_session()


class _Session:
    """One host's connection: its commands in, frames out, a simulator while streaming."""

    def __init__(self, device: SimDevice, link: Link, stop: threading.Event) -> None:
        self.device, self.link, self.stop = device, link, stop
        self.decoder = wire.FrameDecoder()
        self.seq = 0
        self.last_sent = 0.0
        self.sim: SimDriver | None = None
        self.t0 = 0.0
        self.sample = 0  # the device's clock: the end of the latest interval
        self.threshold_sd: float | None = None
        self.tickets: dict[int, tuple[int, tuple[int, ...]]] = {}  # sim's -> host's, channels

    def run(self) -> None:
        try:
            self.send(self.device.hello)
            while not self.stop.is_set():
                data = self.link.recv(self._wait())
                if data == b"":
                    self.device.log("host gone")
                    return
                for frame in self.decoder.feed(data or b""):
                    self.command(frame)
                self.stream()
                if time.monotonic() - self.last_sent >= HEARTBEAT_S:
                    self.send(wire.Heartbeat(self.sample))
        except HostGone:
            self.device.log("host gone")
        finally:
            self._end_streaming()
            d = self.decoder
            if d.garbage_bytes or d.crc_errors or d.bad_payloads:
                self.device.log(f"from the host: {d.garbage_bytes} garbage bytes, "
                                f"{d.crc_errors} bad CRCs, {d.bad_payloads} undecodable frames")

    def send(self, message: Any) -> None:
        self.link.send(wire.encode(message, self.seq), self.stop)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.last_sent = time.monotonic()

    def _wait(self) -> float:
        due = self.last_sent + HEARTBEAT_S
        if self.sim is not None:
            due = min(due, self._due())
        return max(0.0, due - time.monotonic())

    def _due(self) -> float:
        sim = self.sim
        assert sim is not None
        return self.t0 + (sim.next_sample + sim.block_samples) / sim.info.sample_rate

    # -- commands ------------------------------------------------------------------------
    def command(self, frame: wire.Frame) -> None:
        message = frame.message
        handler = getattr(self, f"on_{type(message).__name__.lower()}", None)
        if handler is None:
            reason, text = MALFORMED, f"{type(message).__name__} is not a host command"
        else:
            reason, text = handler(message)
        self.send(wire.Ack(frame.seq, reason, text))
        if isinstance(message, wire.Ping):
            self.send(self.device.hello)

    def on_ping(self, m: wire.Ping) -> tuple[int, str]:
        return DONE, str(m.token)

    def on_start(self, m: wire.Start) -> tuple[int, str]:
        if self.sim is not None:
            return BUSY, "already streaming: send Stop first"
        if m.mode not in (wire.RAW, wire.SPIKES):
            return MALFORMED, f"mode {m.mode}: ask for raw samples (1) or spikes (2), not both"
        raw = m.mode == wire.RAW
        if raw and self.device.spikes_only:
            return MALFORMED, "this device streams spikes only (mode 2)"
        try:
            sim = self.device.new_sim(raw, self.threshold_sd)
            sim.start(m.block_samples or None)
        except DriverError as exc:
            return MALFORMED, str(exc)
        self.sim, self.t0, self.sample = sim, time.monotonic(), 0
        self.device.log(f"streaming {'raw samples' if raw else 'spikes'} in blocks of "
                        f"{sim.block_samples} samples")
        return DONE, ""

    def on_stop(self, m: wire.Stop) -> tuple[int, str]:
        self._end_streaming()
        return DONE, ""

    def on_stimulate(self, m: wire.Stimulate) -> tuple[int, str]:
        sim = self.sim
        if sim is None:
            return BUSY, "not streaming: send Start first"
        try:
            pattern = StimPattern(
                tuple((p.electrode, StimPulse(p.mode, p.phases)) for p in m.pulses),
                m.train_count, m.train_rate_hz,
                at_sample=None if m.at_sample == wire.NOW else m.at_sample)
            ticket, _, kind, problem = sim.admit(pattern)
        except ValueError as exc:
            return MALFORMED, str(exc)
        if kind:
            return _ACK_REASON.get(kind, LIMIT), problem
        self.tickets[ticket] = (m.ticket, pattern.channels)
        return DONE, ""

    def on_abort(self, m: wire.Abort) -> tuple[int, str]:
        """Patterns not yet reported by StimExecuted will not run (their reports are dropped)."""
        if self.sim is not None:
            self.sim.abort_stimulation()
        self.tickets.clear()
        return DONE, ""

    def on_setthreshold(self, m: wire.SetThreshold) -> tuple[int, str]:
        threshold = abs(m.threshold_sd)  # the simulator's events are troughs: any sign will do
        try:
            check_threshold(threshold)  # used from the next Start when not streaming
            if self.sim is not None:
                self.sim.set_threshold(threshold)
        except DriverError as exc:
            return LIMIT, str(exc)
        self.threshold_sd = threshold
        return DONE, ""

    def _end_streaming(self) -> None:
        if self.sim is not None:
            self.sim.stop()
            self.sim.close()
            self.sim = None
            self.tickets.clear()

    # -- streaming -----------------------------------------------------------------------
    def stream(self) -> None:
        """Send every interval whose last sample the wall clock has reached."""
        for _ in range(MAX_CATCH_UP):
            if self.sim is None or time.monotonic() < self._due():
                return
            self._interval()

    def _interval(self) -> None:
        """One interval: reports due before it, then its Block, or its Spikes and a Heartbeat."""
        sim = self.sim
        assert sim is not None
        while (item := sim.read()) is not None:
            if isinstance(item, StimReport):
                known = self.tickets.pop(item.ticket, None)
                if item.executed and known is not None:  # aborted ones were acknowledged
                    self.send(wire.StimExecuted(known[0], item.sample, known[1]))
            elif isinstance(item, SpikeEvents):
                self.send(wire.Spikes(item.sample, item.channel.astype("u2"),
                                      item.amplitude_uV))
            elif isinstance(item, Block):
                self.sample = item.stop_sample
                self.send(wire.SampleBlock(item.start_sample, item.data))
                return
            elif isinstance(item, Tick):
                self.sample = item.sample
                self.send(wire.Heartbeat(item.sample))
                return


# -- links -------------------------------------------------------------------------------
class HostGone(Exception):
    """The host closed the port or the connection."""


class Link:
    """Where hosts connect: ``wait_host``, then ``recv``/``send`` until ``end_session``."""

    name = ""

    def wait_host(self, timeout: float) -> bool:
        """True once a host is connected (within ``timeout`` seconds)."""
        raise NotImplementedError

    def recv(self, timeout: float) -> bytes | None:
        """Bytes from the host; None after ``timeout`` with none; b"" when the host has gone."""
        raise NotImplementedError

    def send(self, data: bytes, stop: threading.Event) -> None:
        """All of ``data``, waiting while the host does not read (raises HostGone)."""
        raise NotImplementedError

    def end_session(self) -> None: ...

    def close(self) -> None: ...


def _read(fd: int, timeout: float) -> bytes | None:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    except OSError:  # a pty master whose slave was closed: EIO
        return b""


def _write(fd: int, data: bytes, stop: threading.Event) -> None:
    view = memoryview(data)
    while view:
        if stop.is_set():
            raise HostGone("the device is stopping")
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        events = poll.poll(100)
        if any(e & (select.POLLHUP | select.POLLERR) for _, e in events):
            raise HostGone("the host hung up")
        if not events:
            continue
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue
        except OSError as exc:
            raise HostGone(str(exc)) from None


class PtyLink(Link):
    """A pseudo-terminal pair: the host opens ``name`` (the slave) as its serial port.

    Bytes written while no host has it open are discarded by the kernel, and the
    master sees a hang-up, which is how the device tells that a host came or went.
    """

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        self.name = os.ttyname(slave)
        os.close(slave)  # only hosts hold it open
        os.set_blocking(self.master, False)

    def _hung_up(self) -> bool:
        poll = select.poll()
        poll.register(self.master, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in poll.poll(0))

    def wait_host(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._hung_up():  # no host: the master reports a hang-up at once, so look again
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def recv(self, timeout: float) -> bytes | None:
        return _read(self.master, timeout)

    def send(self, data: bytes, stop: threading.Event) -> None:
        _write(self.master, data, stop)

    def close(self) -> None:
        os.close(self.master)


class TcpLink(Link):
    """A TCP port: one host at a time; others get an Error frame (busy) and are closed."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = socket.create_server((host, port))
        address, port = self.server.getsockname()[:2]
        self.name = f"socket://{address}:{port}"
        self.conn: socket.socket | None = None

    def wait_host(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.server], [], [], timeout)
        if not ready:
            return False
        conn, _ = self.server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        self.conn = conn
        return True

    def recv(self, timeout: float) -> bytes | None:
        assert self.conn is not None
        ready, _, _ = select.select([self.conn, self.server], [], [], timeout)
        data = None
        if self.conn in ready:
            try:
                data = self.conn.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                data = b""
            if data == b"":
                return data  # gone: a host waiting to connect is the next one, not turned away
        if self.server in ready:
            self._turn_away()
        return data

    def _turn_away(self) -> None:
        extra, _ = self.server.accept()
        try:
            extra.sendall(wire.encode(wire.Error(ERROR_BUSY, "busy: another host is connected"),
                                      0))
        except OSError:
            pass
        extra.close()

    def send(self, data: bytes, stop: threading.Event) -> None:
        assert self.conn is not None
        _write(self.conn.fileno(), data, stop)

    def end_session(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.end_session()
        self.server.close()
