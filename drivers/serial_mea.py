"""``serial://`` and ``socket://``: rigs speaking the mea-control wire protocol (pyserial).

``serial:///dev/ttyACM0?baud=921600`` opens a serial port, ``socket://127.0.0.1:5555``
a TCP connection (pyserial's ``serial_for_url``); ``mea-control sim serve`` serves
the simulated device on either. ``open()`` sends a Ping and waits for the Ack and
the Hello that answer it, and builds the DeviceInfo from that Hello. A reader
thread decodes frames (:mod:`drivers.wire`) into the queue that ``read()`` serves.

Nothing lost is filled in: sequence-number gaps (with the samples they affect), bad
CRCs, garbage, duplicated and out-of-order frames are counted and reported by
:meth:`SerialDriver.drain_events` (and logged); duplicated and out-of-order frames
are dropped, so lost samples show as a Block that starts later than the previous
one ended, never as a block twice or out of order. A device that sends nothing for
``SILENCE_S`` is taken for lost. Stimulation does not
wait for the device: ``stimulate()`` sends and returns the ticket, and a refusal
(its Ack) comes out of ``read()`` as a StimReport(executed=False) with the reason.
No Ack within ``ACK_TIMEOUT_S`` is reported as a link event and the pattern
stays unreported (its fate is unknown) unless a StimExecuted comes later.

The device's dead-man switch: ``read()`` sends a HostHeartbeat at least every quarter
of the Hello's ``host_timeout_ms`` while it waits, so the beats stop when the process
dies or when the loop that calls ``read()`` hangs; the device then cancels its patterns
and says so (a ``device_disarmed`` event, reports for what it cancelled or cut) until
:meth:`SerialDriver.rearm_stimulation` (or the next start) re-arms it.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import serial

from drivers import wire
from drivers.inbox import Inbox
from mea_control.driver import Driver, DriverError, Event, Param
from mea_control.layouts import LayoutError, load_layout
from mea_control.types import (
    Block,
    Capabilities,
    DeviceInfo,
    SpikeEvents,
    StimPattern,
    StimReport,
    Tick,
)

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 1.0
#: How long abort_stimulation() waits for the device to confirm the Abort.
ABORT_WAIT_S = 0.5
#: The device sends a frame at least once a second: this long without one, the link is lost.
SILENCE_S = 3.0
#: An older frame within this many sequence numbers of the newest is out of order (dropped);
#: further back, the device's numbering began again (it restarted): the link is lost.
REORDER_WINDOW = 1024
#: Starting may take the device a while (a simulator builds its culture).
START_TIMEOUT_S = 10.0
_MASK = 0xFFFFFFFF
#: Stimulation modes a device offers, known from the limits its Hello lists.
_MODE_LIMITS = (("current", "max_current_uA"), ("voltage", "max_voltage_mV"))


@dataclass
class _Request:
    deadline: float
    on_answer: Callable[[wire.Ack | None], None]  # None: no Ack in time


class SerialDriver(Driver):
    """A device behind a serial port or a TCP socket, speaking wire protocol v2."""

    scheme: ClassVar[str] = "serial"
    params: ClassVar[dict[str, Param]] = {
        "baud": Param(int, 115200, "baud rate (USB CDC ports ignore it)"),
        "mode": Param(str, "auto", "raw, spikes or auto (spikes if the device streams only those)"),
        "timeout": Param(float, 3.0, "seconds to wait for the device's answer on open"),
        "margin_ms": Param(float, 1.0, "added to the device's clock for patterns sent 'now'"),
    }

    def __init__(self, url: str, options: dict[str, Any], location: str = "") -> None:
        super().__init__(url, options, location)
        self.scheme = url.split("://", 1)[0]  # serial or socket, for messages
        if not location:
            example = "serial:///dev/ttyACM0" if self.scheme == "serial" else "socket://HOST:PORT"
            raise DriverError(f"{self.scheme}:// needs a port, e.g. {example}")
        if options["mode"] not in ("auto", "raw", "spikes"):
            raise DriverError(f"{self.scheme}:// mode={options['mode']!r}: use raw, spikes or auto")
        if options["timeout"] <= 0:
            raise DriverError(f"{self.scheme}:// timeout must be above 0 seconds")
        self.where = location if self.scheme == "serial" else f"socket://{location}"
        self._info: DeviceInfo | None = None
        self._port: Any = None
        self._state = "closed"

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        if self._state != "closed":
            return
        self._reset()
        self._port = self._open_port()
        self._reader = threading.Thread(target=self._receive, name="mea-serial-reader",
                                        daemon=True)
        self._reader.start()
        self._state = "open"
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _reset(self) -> None:
        self._inbox = Inbox()
        self._events: deque[tuple[str, str]] = deque()
        self._requests: dict[int, _Request] = {}
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._greeted = threading.Event()
        self._decoder = wire.FrameDecoder()
        self._seen = (0, 0, 0)  # decoder counts already reported
        self._tx_seq = random.getrandbits(32)  # stale answers from an earlier host never match
        self._rx_seq: int | None = None
        self._frames_lost = 0
        self._pinged = False
        self._hello: wire.Hello | None = None
        self._refused = ""  # an Error frame during the handshake
        self._foreign = 0  # the version of a frame of another protocol version, if one came
        self._beat_s = 0.075  # host heartbeat interval: a quarter of the device's timeout
        self._last_beat = 0.0
        self._heard = time.monotonic()  # the device's latest frame
        self._gap: tuple[int, int, int | None] | None = None  # lost seqs a..b, after sample
        self._dropped = [0, 0]  # duplicate, out-of-order frames dropped
        self._dropped_seen = (0, 0)
        self._last_sample: int | None = None
        self._ticket = 0
        self._sent = 0  # commands sent, in order: an Abort cancels the patterns sent before it
        self._unreported: dict[int, tuple[int, int]] = {}  # ticket -> (at_sample, send index)
        self._spikes_mode = False

    def _open_port(self) -> Any:
        target = self.location if self.scheme == "serial" else f"socket://{self.location}"
        try:
            return serial.serial_for_url(target, baudrate=self.options["baud"], timeout=0,
                                         write_timeout=ACK_TIMEOUT_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            hint = ("is `mea-control sim serve --tcp` (or the device) listening there?"
                    if self.scheme == "socket" else
                    "check the port name (`mea-control devices` lists them) and its permissions")
            raise DriverError(f"cannot open {self.where}: {exc}; {hint}") from None

    def _handshake(self) -> None:
        timeout = self.options["timeout"]
        self._send(wire.Ping(random.getrandbits(64)), self._on_ping_ack, timeout)
        if not self._greeted.wait(timeout):
            raise DriverError(self._silence(timeout))
        if self._foreign:
            raise DriverError(self._other_version(self._foreign))
        if self._refused:
            raise DriverError(f"{self.where} refused the connection: {self._refused}")
        if self._inbox.lost:
            raise DriverError(self._inbox.lost)
        assert self._hello is not None
        self._info = self._device_info(self._hello)
        self._beat_s = max(0.005, self._hello.host_timeout_ms / 4000.0)
        # a host that died may have left the device streaming: end that stream
        ack = self._ask(wire.Stop(), ACK_TIMEOUT_S)
        if ack is None or ack.reason:
            raise DriverError(self._inbox.lost
                              or f"{self.where} did not accept Stop after its Hello")

    def _other_version(self, version: int) -> str:
        """A device of another protocol version: which side to update."""
        newer = version > wire.VERSION
        return (f"{self.where} speaks mea-control wire protocol version {version}, this "
                f"mea-control speaks version {wire.VERSION}: "
                + ("update mea-control (pip install -U mea-control)" if newer else
                   f"update the device's firmware to protocol version {wire.VERSION}"))

    def _silence(self, timeout: float) -> str:
        """Why no Hello came: nothing at all, or not our protocol."""
        d = self._decoder
        if d.garbage_bytes or d.crc_errors or d.bad_payloads:
            return (f"{self.where} answers, but not in the mea-control wire protocol "
                    f"({d.garbage_bytes} bytes that are not frames, {d.crc_errors} bad CRCs): "
                    "check the baud rate (?baud=) and that this port is a mea-control device")
        if self._rx_seq is not None:
            return f"{self.where} sends frames but did not answer Ping with a Hello"
        return (f"no answer from {self.where} within {timeout:g} s: check the cable, the port "
                "and that the device is powered (or that `mea-control sim serve` is running)")

    def _device_info(self, hello: wire.Hello) -> DeviceInfo:
        try:
            layout = load_layout(hello.layout)
        except LayoutError as exc:
            raise DriverError(f"{self.where} reports layout {hello.layout!r}: {exc}") from None
        if layout.n_electrodes != hello.n_channels:
            raise DriverError(
                f"{self.where} reports {hello.n_channels} channels, but its layout "
                f"{layout.name} has {layout.n_electrodes} electrodes")
        name, *flags = hello.firmware.split()
        spikes_only = "spikes-only" in flags
        mode = self.options["mode"]
        if mode == "raw" and spikes_only:
            raise DriverError(f"{self.where} streams spikes only; drop ?mode=raw")
        self._spikes_mode = mode == "spikes" or (mode == "auto" and spikes_only)
        modes = tuple(m for m, key in _MODE_LIMITS if key in hello.limits) or ("current",)
        return DeviceInfo(
            name=f"{name} on {self.where}",
            n_channels=hello.n_channels,
            sample_rate=hello.sample_rate,
            uV_per_bit=_decimal(hello.uV_per_bit),
            layout=layout,
            capabilities=Capabilities(raw_stream=not self._spikes_mode,
                                      onboard_detection=self._spikes_mode,
                                      stim_modes=modes, scheduled_stim=True),
            limits=dict(hello.limits),
            simulated="simulated" in flags,
        )

    def close(self) -> None:
        if self._state == "closed":
            return
        if self._state == "running":
            self.stop()
        self._closing.set()
        if self._reader.is_alive():
            self._reader.join()
        try:
            self._port.close()
        except (serial.SerialException, OSError):
            pass
        self._state = "closed"

    def start(self, block_samples: int | None = None) -> None:
        if self._state != "open":
            raise DriverError(f"{self.where}: start() needs an open, idle device")
        block = block_samples or max(1, int(round(self.info.sample_rate / 1000.0)))
        mode = wire.SPIKES if self._spikes_mode else wire.RAW
        self._state = "running"  # before Start: the reader keeps what follows its Ack
        ack = self._ask(wire.Start(mode, int(block)), START_TIMEOUT_S)
        if ack is None or ack.reason:
            self._state = "open"
        if ack is None:
            raise DriverError(self._inbox.lost or f"{self.where} did not answer Start within "
                              f"{START_TIMEOUT_S:g} s")
        if ack.reason:
            raise DriverError(f"{self.where} refused to start streaming: {ack.message}")

    def stop(self) -> None:
        if self._state != "running":
            return
        self._state = "stopped"
        if self._inbox.lost is None:
            try:
                self._ask(wire.Stop(), ACK_TIMEOUT_S)
            except DriverError:
                pass  # the link went: nothing streams any more either

    # -- streaming -------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Event | None:
        """The next event; while waiting, the host's heartbeat goes out (the caller's loop
        is alive as long as it calls read)."""
        if self._state == "stopped":
            return None
        if self._state != "running":
            raise DriverError(f"{self.where}: read() before start()")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._beat()
            wait = self._beat_s
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            item = self._inbox.get(wait)
            if item is not None or (deadline is not None and time.monotonic() >= deadline):
                return item

    def _beat(self) -> None:
        """Send the host heartbeat if it is due."""
        now = time.monotonic()
        if now - self._last_beat >= self._beat_s and self._inbox.lost is None:
            self._last_beat = now
            self._send(wire.HostHeartbeat(-1 if self._last_sample is None
                                          else self._last_sample))

    def drain_events(self) -> list[tuple[str, str]]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def link_stats(self) -> dict[str, int]:
        """Totals of what the link lost or spoiled so far."""
        d = self._decoder
        return {"frames_lost": self._frames_lost, "garbage_bytes": d.garbage_bytes,
                "crc_errors": d.crc_errors, "bad_payloads": d.bad_payloads,
                "duplicates": self._dropped[0], "out_of_order": self._dropped[1]}

    # -- stimulation -----------------------------------------------------------------------
    def stimulate(self, pattern: StimPattern) -> int:
        if self._state != "running":
            raise DriverError(f"{self.where} cannot stimulate: the device is {self._state}")
        self._ticket += 1
        ticket = self._ticket
        at = wire.NOW if pattern.at_sample is None else int(pattern.at_sample)
        pulses = tuple(wire.WirePulse(ch, p.mode, p.phases) for ch, p in pattern.pulses)
        self._unreported[ticket] = (at, self._sent)

        def answered(ack: wire.Ack | None) -> None:
            if ack is None:  # it may still run: a StimExecuted would say so
                self._event("link_error", f"no answer from {self.where} within "
                            f"{ACK_TIMEOUT_S:g} s to pattern {ticket}; its fate is unknown")
                return
            if not ack.reason or self._unreported.pop(ticket, None) is None:
                return
            reason = (f"refused by the device ({wire.REASONS.get(ack.reason, ack.reason)}):"
                      f" {ack.message}")
            self._inbox.put(StimReport(ticket, self._report_sample(at), False, reason))

        self._send(wire.Stimulate(ticket, at, pulses, pattern.train_count,
                                  pattern.train_rate_hz), answered)
        return ticket

    def earliest_stim_sample(self) -> int | None:
        """The device's latest known sample (block end or heartbeat) plus ``margin_ms``.

        The device runs a pattern whose sample it has not generated yet: with the
        clock the device last reported, a host that answers within an interval
        gets its pattern in the next one.
        """
        if self._last_sample is None:
            return None
        margin = int(round(self.options["margin_ms"] * self.info.sample_rate / 1000.0))
        return self._last_sample + margin

    def abort_stimulation(self) -> None:
        """Send Abort and wait (at most ABORT_WAIT_S) for its Ack, which means the patterns
        sent before it and not yet run never will: when this returns, the device has
        cancelled them, unless it did not answer in time (a device_error event says so)."""
        if self._state != "running" or self._inbox.lost:
            return
        before = self._sent
        confirmed = threading.Event()

        def answered(ack: wire.Ack | None) -> None:
            confirmed.set()
            if ack is None or ack.reason:  # only a done Abort says what will not run
                self._event("device_error", f"{self.where} did not confirm Abort: "
                            + ("no answer" if ack is None else ack.message))
                return
            for ticket, (at, index) in list(self._unreported.items()):
                if index < before and self._unreported.pop(ticket, None) is not None:
                    self._inbox.put(StimReport(ticket, self._report_sample(at), False, "aborted"))

        try:
            self._send(wire.Abort(), answered)
        except DriverError:
            return  # called while things go wrong already: the first error is the one reported
        confirmed.wait(ABORT_WAIT_S)

    def rearm_stimulation(self) -> None:
        """Send Arm: a device that disarmed itself (the host fell silent) runs patterns again."""
        if self._state not in ("open", "running") or self._inbox.lost:
            return

        def answered(ack: wire.Ack | None) -> None:
            if ack is None or ack.reason:
                self._event("device_error", f"{self.where} did not confirm Arm: "
                            + ("no answer" if ack is None else ack.message))

        try:
            self._send(wire.Arm(), answered)
        except DriverError:
            pass  # the link went: read() says so

    def _report_sample(self, at: int) -> int:
        return at if at != wire.NOW else (self._last_sample or 0)

    # -- the link --------------------------------------------------------------------------
    def _send(self, message: Any, on_answer: Callable[[wire.Ack | None], None] | None = None,
              timeout: float = ACK_TIMEOUT_S) -> int:
        """Send a command; ``on_answer`` gets its Ack (or None after ``timeout``)."""
        with self._write_lock:
            seq = self._tx_seq
            self._tx_seq = (seq + 1) & _MASK
            self._sent += 1
            if on_answer is not None:
                self._requests[seq] = _Request(time.monotonic() + timeout, on_answer)
            try:
                self._port.write(wire.encode(message, seq))
            except (serial.SerialException, OSError) as exc:
                self._requests.pop(seq, None)
                self._lose(exc)
                raise DriverError(self._inbox.lost) from None
        return seq

    def _ask(self, message: Any, timeout: float) -> wire.Ack | None:
        """Send a command and wait for its Ack (None: no Ack in time)."""
        answer: list[wire.Ack | None] = []
        done = threading.Event()

        def answered(ack: wire.Ack | None) -> None:
            answer.append(ack)
            done.set()

        self._send(message, answered, timeout)
        done.wait(timeout + 1.0)
        return answer[0] if answer else None

    def _receive(self) -> None:
        """Reader thread: bytes -> frames -> events, until close() or the link is lost."""
        fd = self._port.fileno()
        while not self._closing.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.1)
                data = self._port.read(1 << 16) if ready else b""
            except (serial.SerialException, OSError, ValueError) as exc:
                if not self._closing.is_set():
                    self._lose(exc)
                return
            if data:
                for frame in self._decoder.feed(data):
                    self._heard = time.monotonic()
                    if frame.version != wire.VERSION:
                        self._on_other_version(frame.version)
                    elif self._in_order(frame.seq):
                        self._on_message(frame.message)
                self._report_decoder()
            now = time.monotonic()
            self._expire(now)
            if self._silent(now):
                self._went_silent()
                return

    def _silent(self, now: float) -> bool:
        """No frame for SILENCE_S, and no command waiting for its Ack (Start may take the
        device a while, and a request's own timeout reports it)."""
        return (now - self._heard > SILENCE_S and self._greeted.is_set()
                and not self._requests and self._inbox.lost is None)

    def _went_silent(self) -> None:
        """Nothing from the device for SILENCE_S: try to cancel its patterns, then give up."""
        try:
            self._send(wire.Abort())
        except DriverError:
            pass
        self._flush_gap()
        self._inbox.lose(f"{self.where} sent nothing for {SILENCE_S:g} s (it sends a frame "
                         "at least every second): the device hung or the link broke; "
                         "stimulation is stopped")

    def _on_other_version(self, version: int) -> None:
        if not self._greeted.is_set():
            self._foreign = version
            self._greeted.set()
        else:
            self._event("link_error", f"{self.where}: ignored a frame of wire protocol "
                        f"version {version}")

    def _on_message(self, m: Any) -> None:
        if self._info is None and not isinstance(m, wire.Ack | wire.Hello | wire.Error):
            return  # data before the handshake ended: an earlier host's stream
        if isinstance(m, wire.SampleBlock):
            self._on_block(m)
        elif isinstance(m, wire.Spikes):
            self._inbox.put(SpikeEvents(m.sample, m.channel, m.amplitude_uV))
        elif isinstance(m, wire.Heartbeat):
            self._flush_gap(m.sample)
            self._last_sample = max(m.sample, self._last_sample or 0)
            if self._spikes_mode and self._state == "running":
                self._inbox.put(Tick(m.sample))
        elif isinstance(m, wire.StimExecuted):
            if self._unreported.pop(m.ticket, None) is not None:
                self._inbox.put(StimReport(m.ticket, m.sample))
        elif isinstance(m, wire.StimCut):
            self._unreported.pop(m.ticket, None)
            self._inbox.put(StimReport(m.ticket, m.sample, True,
                                       wire.CUT_REASONS.get(m.cause, "cut"), m.pulses_run))
        elif isinstance(m, wire.Disarmed):
            self._on_disarmed(m)
        elif isinstance(m, wire.Ack):
            self._on_ack(m)
        elif isinstance(m, wire.Hello):
            if self._pinged and self._hello is None:
                self._hello = m
                self._greeted.set()
        elif isinstance(m, wire.Error):
            if not self._greeted.is_set():
                self._refused = f"error {m.code}: {m.message}"
                self._greeted.set()
            else:
                self._event("device_error", f"{self.where} reports error {m.code}: {m.message}")

    def _on_block(self, m: wire.SampleBlock) -> None:
        """A block goes to read() unless it cannot be one of this stream's."""
        n_channels = m.data.shape[1]
        if self._spikes_mode or n_channels != self.info.n_channels:
            self._event("link_error", f"{self.where}: dropped a block of {n_channels} channels "
                        f"at sample {m.first_sample} (not this stream's)")
            return
        if self._last_sample is not None and m.first_sample < self._last_sample:
            self._event("link_error", f"{self.where}: dropped a block at sample "
                        f"{m.first_sample}, before the stream's sample {self._last_sample}")
            return
        block = Block(m.first_sample, m.data, self.info.uV_per_bit)
        self._flush_gap(block.start_sample)
        self._last_sample = block.stop_sample
        self._inbox.put(block)

    def _on_disarmed(self, m: wire.Disarmed) -> None:
        """The device's dead-man switch tripped: report what it cancelled."""
        not_started = 0
        for ticket in m.tickets:
            booked = self._unreported.pop(ticket, None)
            if booked is not None:
                not_started += 1
                self._inbox.put(StimReport(ticket, self._report_sample(booked[0]), False,
                                           "disarmed: host silent"))
        timeout = self._hello.host_timeout_ms if self._hello else "?"
        cut = len(m.tickets) - not_started
        self._event("device_disarmed",
                    f"{self.where} disarmed itself at sample {m.sample}: it heard nothing from "
                    f"this computer for {m.silent_ms} ms (its limit {timeout} ms), cancelled "
                    f"{not_started} pattern(s) not yet started and cut {cut} train(s) short, "
                    "and refuses patterns until stimulation is re-armed")

    def _on_ping_ack(self, ack: wire.Ack | None) -> None:
        self._pinged = ack is not None  # the Hello that follows is the device's answer

    def _on_ack(self, ack: wire.Ack) -> None:
        request = self._requests.pop(ack.seq, None)
        if request is not None:
            request.on_answer(ack)

    def _expire(self, now: float) -> None:
        for seq, request in list(self._requests.items()):
            if now > request.deadline and self._requests.pop(seq, None) is not None:
                request.on_answer(None)

    def _in_order(self, seq: int) -> bool:
        """Count ``seq``: False for a duplicate or an older frame (dropped), gaps noted."""
        last = self._rx_seq
        if last is None:
            self._rx_seq = seq
            return True
        ahead = (seq - last) & _MASK
        if ahead == 0 or ahead > _MASK // 2:
            if ahead and (last - seq) & _MASK > REORDER_WINDOW:
                self._inbox.lose(f"{self.where} numbers its frames from {seq} again, after "
                                 f"{last}: the device restarted; stimulation is stopped")
            self._dropped[0 if ahead == 0 else 1] += 1
            return False
        if ahead > 1:
            first, _, after = self._gap or ((last + 1) & _MASK, 0, self._last_sample)
            self._gap = (first, (seq - 1) & _MASK, after)
            self._frames_lost += ahead - 1
        self._rx_seq = seq
        return True

    def _flush_gap(self, sample: int | None = None) -> None:
        """Report the frames lost since the last clock, with the samples they may hold."""
        if self._gap is None:
            return
        first, last, after = self._gap
        self._gap = None
        n = ((last - first) & _MASK) + 1
        if after is None:
            where = "before sample " + str(sample) if sample is not None else "before any sample"
        elif sample is None:
            where = f"after sample {after}"
        else:
            where = f"samples {after} to {sample}"
        self._event("link_gap", f"{n} frame(s) from {self.where} lost (frames {first}..{last}): "
                    f"{where} affected ({self._frames_lost} lost so far)")

    def _report_decoder(self) -> None:
        d = self._decoder
        now = (d.garbage_bytes, d.crc_errors, d.bad_payloads)
        if now != self._seen:
            garbage, crc, bad = (a - b for a, b in zip(now, self._seen, strict=True))
            self._seen = now
            self._event("link_error", f"{self.where}: skipped {garbage} garbage bytes, {crc} "
                        f"frame(s) with a bad CRC, {bad} undecodable frame(s)")
        dropped = tuple(self._dropped)
        if dropped != self._dropped_seen:
            dup, old = (a - b for a, b in zip(dropped, self._dropped_seen, strict=True))
            self._dropped_seen = dropped
            self._event("link_error", f"{self.where}: dropped {dup} duplicated and {old} "
                        "out-of-order frame(s)")

    def _event(self, kind: str, message: str) -> None:
        log.warning("[%s] %s", kind, message)
        self._events.append((kind, message))

    def _lose(self, exc: BaseException) -> None:
        self._flush_gap()
        if self._greeted.is_set():
            self._inbox.lose(f"lost the link to {self.where} ({exc}): the device stopped "
                             "answering; check the cable and its power (or that `mea-control "
                             "sim serve` runs)")
        else:
            self._inbox.lose(f"{self.where} hung up before introducing itself ({exc}): is "
                             "another host connected to it?")
        self._greeted.set()



def _decimal(value: float) -> float:
    """A float32 from the wire as the decimal it stands for (0.195, not 0.19499999...)."""
    return float(str(np.float32(value)))
