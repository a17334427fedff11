"""The simulated device's firmware: the in-process simulator behind the wire protocol.

:class:`SimDevice` serves one host at a time on a :class:`PtyLink` (a
pseudo-terminal pair whose slave a host opens like a USB serial port) or a
:class:`TcpLink`, speaking ``docs/wire-protocol.md`` through :mod:`drivers.wire`.
Its core is :class:`hardware_sim.mea.SimulatedMEA` (what ``sim://`` runs), made with
the same URL options and run in fast mode; this module adds what firmware adds:

- the sample clock, paced by the wall clock: an interval is generated when the
  clock reaches its last sample and sent at once, so a pattern that reaches the
  device before then runs in it (as with ``sim://`` and a reader that keeps up);
- Hello when a host connects and after every Ping, an Ack for every command
  (refusals with a reason code), StimExecuted just before the interval that
  holds a pattern's first pulse, StimCut for a started train that an Abort, a
  Stop or the dead-man switch cut, a Heartbeat after each interval of a spikes
  stream and whenever nothing was sent for half a second;
- the dead-man switch: streaming, a device that hears no frame from its host for
  ``host_timeout_ms`` (in device samples: before generating an interval that ends
  later than that after the host's last frame) cancels every pattern, sends
  Disarmed, and refuses Stimulate until the host sends Arm (or Start);
- its own log of what it did (``pulse_log``): every pulse as the culture receives
  it, and aborts, trips, re-arms, starts, stops and hosts coming and going;
- a version-1 host is told, in a version-1 Error frame, that it must update;
- sessions: a host that disconnects ends its session (streaming stops); every
  Start begins a fresh culture at sample 0 from the seed, so a run over the
  link sees the very samples ``sim://`` gives with the same options;
- :class:`LinkFaults`, seeded, spoils the frames it sends while streaming
  (garbage, flipped bits, truncated, lost, duplicated and reordered frames, silence).
"""

from __future__ import annotations

import os
import random
import select
import socket
import threading
import time
import tty
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from drivers import wire
from drivers.wire import BUSY, DISARMED, DONE, ELECTRODE, LATE, LIMIT, MALFORMED
from hardware_sim import mea
from hardware_sim.mea import SimError, SimulatedMEA, check_threshold, options_from_url
from mea_control import __version__
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse, StimReport, Tick

#: Firmware string of the Hello; the words after the name are flags (see the protocol doc).
FIRMWARE = f"mea-control-sim/{__version__}"
HEARTBEAT_S = 0.5
#: The dead-man switch's default: no frame from the host for this long disarms the device.
HOST_TIMEOUT_MS = 300
#: Intervals generated back to back, when the device fell behind, before commands are read again.
MAX_CATCH_UP = 50
#: Error codes of this device's Error frames.
ERROR_BUSY, ERROR_VERSION = 1, 2
#: Ack reason by the simulator's kind of refusal (others: LIMIT)
_ACK_REASON = {"electrode": ELECTRODE, "late": LATE}


@dataclass
class LinkFaults:
    """Seeded faults on the frames the device sends while streaming.

    Each frame independently: ``garbage`` random bytes before it, ``drop`` lost,
    else ``flip`` one bit flipped or ``truncate`` cut short, ``dup`` sent twice,
    ``reorder`` kept back and sent after the next one. From device sample
    ``silent_at`` on, nothing more is sent (the device keeps running and listening).
    ``counts`` says how often each fault struck.
    """

    garbage: float = 0.0
    drop: float = 0.0
    flip: float = 0.0
    truncate: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    silent_at: int | None = None
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        #: The frame the reorder fault keeps back, sent after the next one.
        self.kept_back = b""

    @classmethod
    def parse(cls, text: str) -> LinkFaults:
        """``garbage=0.01,flip=0.01,...,silent_at=50000,seed=3``; ValueError if it is not."""
        kinds = {f.name: f for f in fields(cls) if f.init}
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name not in kinds:
                raise ValueError(f"unknown fault {name!r}; accepted: {', '.join(kinds)}")
            values[name] = int(value) if name in ("silent_at", "seed") else float(value)
            if name not in ("silent_at", "seed") and not 0.0 <= values[name] <= 1.0:
                raise ValueError(f"fault {name}={value}: a probability is 0 to 1")
        return cls(**values)

    def spoil(self, frame: bytes, sample: int) -> bytes:
        """What goes on the wire instead of ``frame`` (sent at device clock ``sample``)."""
        if self.silent_at is not None and sample >= self.silent_at:
            self.counts["silent"] += 1
            return b""
        r, out = self.rng, b""
        if r.random() < self.garbage:
            out += r.randbytes(r.randint(1, 32))
            self.counts["garbage"] += 1
        if r.random() < self.drop:
            frame = b""
            self.counts["drop"] += 1
        elif r.random() < self.flip:
            bit = r.randrange(len(frame) * 8)
            frame = bytearray(frame)
            frame[bit // 8] ^= 1 << bit % 8
            frame = bytes(frame)
            self.counts["flip"] += 1
        elif r.random() < self.truncate:
            frame = frame[:r.randrange(1, len(frame))]
            self.counts["truncate"] += 1
        if frame and r.random() < self.dup:
            frame += frame
            self.counts["dup"] += 1
        if frame and not self.kept_back and r.random() < self.reorder:
            self.kept_back = frame
            self.counts["reorder"] += 1
            return out
        out += frame + self.kept_back
        self.kept_back = b""
        return out


class SimDevice:
    """The simulated MEA as a wire-protocol device; ``serve()`` runs it on a link.

    ``pulse_log`` is called with each entry of the device's own log (see
    docs/wire-protocol.md, "The simulated device's log"): the ground truth of what ran.
    """

    def __init__(self, sim_url: str = "sim://", spikes_only: bool = False,
                 log: Callable[[str], None] | None = None,
                 host_timeout_ms: int = HOST_TIMEOUT_MS,
                 pulse_log: Callable[[dict], None] | None = None,
                 faults: LinkFaults | None = None) -> None:
        options = options_from_url(sim_url)
        if not 1 <= host_timeout_ms <= 60_000:
            raise SimError(f"host_timeout_ms={host_timeout_ms}: use 1 to 60000 ms")
        self.sim_url = sim_url
        self.options = options
        self.spikes_only = spikes_only
        self.log = log or (lambda message: None)
        self.host_timeout_ms = int(host_timeout_ms)
        self.pulse_log = pulse_log
        self.faults = faults
        device = SimulatedMEA(dict(options, raw=not spikes_only))  # checks the options
        flags = " simulated" + (" spikes-only" if spikes_only else "")
        self.hello = wire.Hello(device.layout.n_electrodes, device.sample_rate, mea.UV_PER_BIT,
                                options["layout"], FIRMWARE + flags, dict(mea.DEVICE_LIMITS),
                                self.host_timeout_ms)

    def new_sim(self, raw: bool, threshold_sd: float | None = None) -> SimulatedMEA:
        """A fresh, opened simulator: the culture from its seed, the clock at sample 0."""
        options = dict(self.options, raw=raw)
        if threshold_sd is not None:
            options["threshold_sd"] = threshold_sd
        sim = SimulatedMEA(options)
        sim.open()
        sim.set_fast(True)  # the device paces it
        return sim

    def record(self, kind: str, sample: int, **details: Any) -> None:
        """One entry of the device's own log."""
        if self.pulse_log is not None:
            self.pulse_log({"kind": kind, "wall": time.time(), "sample": int(sample), **details})

    def serve(self, link: Link, stop: threading.Event) -> None:
        """Serve hosts one after the other until ``stop`` is set."""
        while not stop.is_set():
            if link.wait_host(0.2):
                self.log(f"host connected on {link.name}")
                try:
                    _Session(self, link, stop).run()
                finally:
                    link.end_session()


@dataclass
class _Booked:
    """A pattern the device accepted: whose it is and how far its train got."""

    ticket: int  # the host's
    channels: tuple[int, ...]
    starts: list[int]  # sample of each train pulse
    run: int = 0  # train pulses the culture received
    reported: bool = False  # StimExecuted sent


class _Session:
    """One host's connection: its commands in, frames out, a simulator while streaming."""

    def __init__(self, device: SimDevice, link: Link, stop: threading.Event) -> None:
        self.device, self.link, self.stop = device, link, stop
        self.decoder = wire.FrameDecoder()
        self.seq = 0
        self.last_sent = 0.0
        self.sim: SimulatedMEA | None = None
        self.t0 = 0.0
        self.sample = 0  # the device's clock: the end of the latest interval
        self.threshold_sd: float | None = None
        self.booked: dict[int, _Booked] = {}  # by the sim's ticket
        self.armed = True
        self.heard = time.monotonic()  # the host's latest frame
        self.heard_sample = 0  # ... on the device's clock

    def run(self) -> None:
        self.device.record("host_connected", self.sample)
        try:
            self.send(self.device.hello)
            while not self.stop.is_set():
                if not self.listen(self._wait()):
                    self.device.log("host gone")
                    return
                self.stream()
                if time.monotonic() - self.last_sent >= HEARTBEAT_S:
                    self.send(wire.Heartbeat(self.sample))
        except HostGone:
            self.device.log("host gone")
        finally:
            self._end_streaming(tell=False)
            self.device.record("host_gone", self.sample)
            d = self.decoder
            if d.garbage_bytes or d.crc_errors or d.bad_payloads:
                self.device.log(f"from the host: {d.garbage_bytes} garbage bytes, "
                                f"{d.crc_errors} bad CRCs, {d.bad_payloads} undecodable frames")

    def listen(self, timeout: float) -> bool:
        """Carry out what the host sent within ``timeout`` s; False once the host has gone."""
        data = self.link.recv(timeout)
        if data == b"":
            return False
        for frame in self.decoder.feed(data or b""):
            if frame.version != wire.VERSION:
                self.refuse_version(frame)
                continue
            self.heard = time.monotonic()
            self.heard_sample = self._clock()
            self.command(frame)
        return True

    def send(self, message: Any, spoil: bool = True) -> None:
        frame = wire.encode(message, self.seq)
        faults = self.device.faults
        if spoil and faults is not None and self.sim is not None:
            frame = faults.spoil(frame, self.sample)
        self.link.send(frame, self.stop)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.last_sent = time.monotonic()

    def refuse_version(self, frame: wire.Frame) -> None:
        """A host of another protocol version: tell it, in its own version if it is 1."""
        message = (f"this device speaks mea-control wire protocol version {wire.VERSION}, the "
                   f"host version {frame.version}: update mea-control on the host")
        self.device.log(message)
        version = 1 if frame.version == 1 else wire.VERSION
        self.link.send(wire.encode(wire.Error(ERROR_VERSION, message), self.seq, version),
                       self.stop)
        self.seq = (self.seq + 1) & 0xFFFFFFFF

    def _wait(self) -> float:
        due = self.last_sent + HEARTBEAT_S
        if self.sim is not None:
            due = min(due, self._due())
        return max(0.0, due - time.monotonic())

    def _due(self) -> float:
        sim = self.sim
        assert sim is not None
        return self.t0 + (sim.next_sample + sim.block_samples) / sim.sample_rate

    def _clock(self) -> int:
        """The sample the device acquires now, by the wall clock (its latest while idle)."""
        if self.sim is None:
            return self.sample
        return int((time.monotonic() - self.t0) * self.sim.sample_rate)

    # -- commands ------------------------------------------------------------------------
    def command(self, frame: wire.Frame) -> None:
        message = frame.message
        if isinstance(message, wire.HostHeartbeat):
            return  # hearing it was the point; not acknowledged
        handler = getattr(self, f"on_{type(message).__name__.lower()}", None)
        if handler is None:
            reason, text = MALFORMED, f"{type(message).__name__} is not a host command"
        else:
            reason, text = handler(message)
        self.send(wire.Ack(frame.seq, reason, text), spoil=not isinstance(message, wire.Start))
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
        except SimError as exc:
            return MALFORMED, str(exc)
        sim.pulse_listener = self._pulses_ran
        self.sim, self.t0, self.sample = sim, time.monotonic(), 0
        self.armed, self.heard, self.heard_sample = True, self.t0, 0  # Start also arms
        self.device.record("start", 0)
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
        if not self.armed:
            return DISARMED, (f"disarmed: the host was silent for more than "
                              f"{self.device.host_timeout_ms} ms; send Arm to re-arm")
        try:
            pattern = StimPattern(
                tuple((p.electrode, StimPulse(p.mode, p.phases)) for p in m.pulses),
                m.train_count, m.train_rate_hz,
                at_sample=None if m.at_sample == wire.NOW else m.at_sample)
            ticket, at, kind, problem = sim.admit(pattern)
        except ValueError as exc:
            return MALFORMED, str(exc)
        if kind:
            return _ACK_REASON.get(kind, LIMIT), problem
        starts = [at + offset for offset in pattern.pulse_offsets(sim.sample_rate)]
        self.booked[ticket] = _Booked(m.ticket, pattern.channels, starts)
        return DONE, ""

    def on_abort(self, m: wire.Abort) -> tuple[int, str]:
        """Patterns not yet started will not run (no more is said of them); started trains
        are cut, each reported by a StimCut before the Ack."""
        self.device.record("abort", self.sample)
        self._cancel(wire.CUT_ABORT)
        return DONE, ""

    def on_arm(self, m: wire.Arm) -> tuple[int, str]:
        self.armed = True
        self.device.record("arm", self.sample)
        return DONE, ""

    def on_setthreshold(self, m: wire.SetThreshold) -> tuple[int, str]:
        threshold = abs(m.threshold_sd)  # the simulator's events are troughs: any sign will do
        try:
            check_threshold(threshold)  # used from the next Start when not streaming
            if self.sim is not None:
                self.sim.set_threshold(threshold)
        except SimError as exc:
            return LIMIT, str(exc)
        self.threshold_sd = threshold
        return DONE, ""

    def _cancel(self, cause: int, tell: bool = True) -> list[int]:
        """Drop every booked pattern, a StimCut for each started train (``tell``); their
        host tickets."""
        cancelled = []
        for booked in self.booked.values():
            cancelled.append(booked.ticket)
            if booked.run and tell:  # finished ones are no longer booked
                self.send(wire.StimCut(booked.ticket, booked.starts[booked.run], booked.run,
                                       cause))
        self.booked.clear()
        if self.sim is not None:
            self.sim.abort_stimulation()  # its reports of these are not passed on
        return cancelled

    def _end_streaming(self, tell: bool = True) -> None:
        """Streaming ends (Stop, or the host went: ``tell`` False): nothing more runs."""
        if self.sim is not None:
            self._cancel(wire.CUT_ABORT, tell)
            self.sim.stop()
            self.sim.close()
            self.sim = None
            self.device.record("stop", self.sample)

    # -- the dead-man switch -------------------------------------------------------------
    def _host_silent(self, stop: int) -> bool:
        """Would the interval ending at ``stop`` reach past the host's timeout?"""
        assert self.sim is not None
        limit = self.device.host_timeout_ms * self.sim.sample_rate / 1000.0
        return self.armed and stop > self.heard_sample + limit

    def _trip(self) -> None:
        """The host went silent: cancel everything, refuse patterns until Arm, say so."""
        assert self.sim is not None
        sample = self.sim.next_sample
        silent_ms = int(round((time.monotonic() - self.heard) * 1000.0))
        self.armed = False
        cancelled = self._cancel(wire.CUT_HOST_SILENT)
        self.device.record("host_timeout", sample, silent_ms=silent_ms, cancelled=cancelled)
        self.device.log(f"disarmed at sample {sample}: no frame from the host for {silent_ms} ms; "
                        f"{len(cancelled)} pattern(s) cancelled")
        self.send(wire.Disarmed(sample, silent_ms, tuple(cancelled)))

    # -- streaming -----------------------------------------------------------------------
    def stream(self) -> None:
        """Send every interval whose last sample the wall clock has reached."""
        for _ in range(MAX_CATCH_UP):
            if self.sim is None or time.monotonic() < self._due():
                return
            stop = self.sim.next_sample + self.sim.block_samples
            if self._host_silent(stop):
                if not self.listen(0.0):  # what the host sent meanwhile counts first
                    raise HostGone("the host hung up")
                if self.sim is None:
                    return
                if self._host_silent(stop):
                    self._trip()
            self._interval()

    def _interval(self) -> None:
        """One interval: reports due before it, then its Block, or its Spikes and a Heartbeat."""
        sim = self.sim
        assert sim is not None
        while (item := sim.read()) is not None:
            if isinstance(item, StimReport):
                booked = self.booked.get(item.ticket)
                if item.executed and item.pulses_run is None and booked is not None:
                    self.send(wire.StimExecuted(booked.ticket, item.sample, booked.channels))
                    booked.reported = True
                    if booked.run >= len(booked.starts):
                        del self.booked[item.ticket]
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

    def _pulses_ran(self, pulses: list[tuple[int, int, int, StimPulse]]) -> None:
        """The sim's pulse listener: log each pulse the culture received, count train pulses."""
        trains: dict[int, set[int]] = {}
        for sample, sim_ticket, channel, pulse in pulses:
            booked = self.booked.get(sim_ticket)
            trains.setdefault(sim_ticket, set()).add(sample)
            self.device.record("pulse", sample, ticket=booked.ticket if booked else -1,
                               channel=channel, mode=pulse.mode, amplitude=pulse.peak_amplitude,
                               duration_us=pulse.duration_us)
        for sim_ticket, samples in trains.items():
            booked = self.booked.get(sim_ticket)
            if booked is not None:  # the sim reports it with the block that holds its pulse
                booked.run += len(samples)
                if booked.reported and booked.run >= len(booked.starts):
                    del self.booked[sim_ticket]


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
        if self.server in ready and not self._host_left():
            self._turn_away()
        return data

    def _host_left(self) -> bool:
        """Whether the connected host has closed its end (its last frames already read):
        then a host waiting to connect is the next one, not one to turn away."""
        assert self.conn is not None
        try:
            return self.conn.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

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
