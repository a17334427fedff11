"""The simulated device over the wire: Hello, Acks and refusals, the sim's samples, sessions."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
import serial

from drivers import wire
from hardware_sim.device import ERROR_BUSY, PtyLink, SimDevice, TcpLink
from mea_control.driver import open_driver
from mea_control.types import SpikeEvents, Tick

PULSE = wire.WirePulse(10, "current", ((200.0, -5.0), (200.0, 5.0)))


@contextlib.contextmanager
def serving(link_cls=PtyLink, url: str = "sim://?seed=4", spikes_only: bool = False,
            **device):
    """A simulated device (``device``: more SimDevice arguments) serving on a new link from
    a thread; yields the link."""
    link = link_cls()
    stop = threading.Event()
    thread = threading.Thread(target=SimDevice(url, spikes_only, **device).serve,
                              args=(link, stop), daemon=True)
    thread.start()
    try:
        yield link
    finally:
        stop.set()
        thread.join(10)
        link.close()


class _Socket:
    """A TCP connection with pyserial's read/write/close (pyserial's socket:// drops what
    arrived before open() returned, such as the Hello on connect)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("socket://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.settimeout(0.05)

    def read(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except TimeoutError:
            return b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class _KeepingSerial(serial.Serial):
    """A serial port whose opening keeps what the device sent: pyserial empties the input
    at the end of open(), after the device has seen the port open and may already have
    sent its Hello on connect (the driver does not depend on that Hello: it pings)."""

    def _reset_input_buffer(self) -> None:
        pass


class Host:
    """A bare wire-protocol host: send commands, wait for given messages; while waiting it
    sends a HostHeartbeat every 50 ms (``beat``), as a live host does."""

    def __init__(self, link, beat: bool = True) -> None:
        is_tcp = link.name.startswith("socket://")
        self.port = _Socket(link.name) if is_tcp else _KeepingSerial(link.name, timeout=0.05)
        self.decoder = wire.FrameDecoder()
        self.frames: list[wire.Frame] = []
        self.seq = 0
        self.beat, self.last_beat = beat, 0.0

    def send(self, message) -> int:
        seq, self.seq = self.seq, self.seq + 1
        self.port.write(wire.encode(message, seq))
        return seq

    def next(self, kind, timeout: float = 5.0, where=lambda m: True):
        """The next message of type ``kind`` (frames before it are kept in self.frames)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.frames:
                frame = self.frames.pop(0)
                if isinstance(frame.message, kind) and where(frame.message):
                    return frame.message
            if self.beat and time.monotonic() - self.last_beat > 0.05:
                self.last_beat = time.monotonic()
                self.send(wire.HostHeartbeat())
            self.frames += self.decoder.feed(self.port.read(1 << 16))
        raise AssertionError(f"no {kind.__name__} within {timeout} s")

    def ask(self, message) -> wire.Ack:
        seq = self.send(message)
        return self.next(wire.Ack, where=lambda a: a.seq == seq)

    def close(self) -> None:
        self.port.close()


@contextlib.contextmanager
def host_on(link):
    host = Host(link)
    try:
        yield host
    finally:
        host.close()


def stimulate(at: int, pulses=(PULSE,), ticket: int = 1) -> wire.Stimulate:
    return wire.Stimulate(ticket, at, tuple(pulses))


@pytest.mark.parametrize("link_cls", [PtyLink, TcpLink])
def test_hello_on_connect_and_after_ping(link_cls):
    with serving(link_cls) as link, host_on(link) as host:
        hello = host.next(wire.Hello)
        assert hello.n_channels == 64 and hello.sample_rate == 25000.0
        assert hello.layout == "grid8x8_200um" and hello.firmware.endswith(" simulated")
        assert hello.limits == {"max_current_uA": 50.0, "max_voltage_mV": 1500.0}
        ack = host.ask(wire.Ping(77))
        assert (ack.reason, ack.message) == (wire.DONE, "77")
        assert host.next(wire.Hello) == hello


def test_samples_are_those_of_the_in_process_simulator():
    sim = open_driver("sim://?seed=4")
    sim.open()
    sim.set_fast(True)
    sim.start(25)
    with serving() as link, host_on(link) as host:
        assert host.ask(wire.Start(wire.RAW, 25)).reason == wire.DONE
        for _ in range(40):
            block = host.next(wire.SampleBlock)
            expected = sim.read()
            assert block.first_sample == expected.start_sample
            assert np.array_equal(block.data, expected.data)


def test_stimulation_runs_at_its_sample_and_refusals_have_reasons():
    with serving() as link, host_on(link) as host:
        assert host.ask(stimulate(100)).reason == wire.BUSY  # not streaming
        assert host.ask(wire.Start(wire.RAW | wire.SPIKES, 25)).reason == wire.MALFORMED  # not both
        assert host.ask(wire.Start(wire.RAW, 25)).reason == wire.DONE
        assert host.ask(wire.Start(wire.RAW, 25)).reason == wire.BUSY  # already streaming
        host.next(wire.SampleBlock, where=lambda b: b.first_sample >= 250)
        assert host.ask(stimulate(0)).reason == wire.LATE
        no_electrode = wire.WirePulse(200, "current", PULSE.phases)
        assert host.ask(stimulate(25_000, [no_electrode])).reason == wire.ELECTRODE
        too_strong = wire.WirePulse(10, "current", ((200.0, -500.0), (200.0, 500.0)))
        refused = host.ask(stimulate(25_000, [too_strong]))
        assert refused.reason == wire.LIMIT and "max_current_uA" in refused.message
        no_phases = wire.WirePulse(10, "current", ())
        assert host.ask(stimulate(25_000, [no_phases])).reason == wire.MALFORMED
        assert host.ask(stimulate(25_000, ticket=9)).reason == wire.DONE
        done = host.next(wire.StimExecuted)
        assert (done.ticket, done.sample, done.electrodes) == (9, 25_000, (10,))
        # reported just before the block that holds the pulse
        assert host.next(wire.SampleBlock).first_sample == 25_000
        assert host.ask(wire.Stop()).reason == wire.DONE


def test_abort_cancels_what_has_not_run():
    with serving() as link, host_on(link) as host:
        host.ask(wire.Start(wire.RAW, 25))
        assert host.ask(stimulate(10_000, ticket=3)).reason == wire.DONE
        assert host.ask(wire.Abort()).reason == wire.DONE
        while True:  # every frame up to past the pattern's sample: no StimExecuted among them
            message = host.next(wire.SampleBlock | wire.StimExecuted, timeout=5.0)
            assert not isinstance(message, wire.StimExecuted)
            if message.first_sample > 10_000:
                break


def test_garbage_and_bad_crcs_are_skipped():
    with serving() as link, host_on(link) as host:
        host.next(wire.Hello)
        spoiled = bytearray(wire.encode(wire.Ping(1), 0))
        spoiled[-1] ^= 0xFF
        host.port.write(b"\x00\xa5garbage\xa5\x5a" + bytes(spoiled))
        assert host.ask(wire.Ping(2)).message == "2"
        assert host.ask(wire.Heartbeat(0)).reason == wire.MALFORMED  # not a host command


def test_a_new_host_gets_a_new_session_from_sample_zero():
    with serving(TcpLink) as link:
        for _ in range(2):
            with host_on(link) as host:
                hello = host.next(wire.Hello)
                assert host.frames == [] and hello.n_channels == 64
                host.ask(wire.Start(wire.RAW, 50))
                assert host.next(wire.SampleBlock).first_sample == 0
                host.next(wire.SampleBlock, where=lambda b: b.first_sample >= 500)


def test_a_second_tcp_host_is_turned_away():
    with serving(TcpLink) as link, host_on(link) as first:
        first.next(wire.Hello)
        with host_on(link) as second:
            error = second.next(wire.Error)
            assert error.code == ERROR_BUSY and "another host" in error.message
        assert first.ask(wire.Ping(5)).reason == wire.DONE


def test_an_idle_device_sends_heartbeats():
    with serving() as link, host_on(link) as host:
        host.next(wire.Hello)
        assert host.next(wire.Heartbeat, timeout=10.0).sample == 0  # one every 0.5 s


def test_spikes_only_streams_the_simulators_spikes_and_clock():
    url = "sim://?seed=4&raw=0"
    sim = open_driver(url + "&threshold_sd=8")  # what SetThreshold(8 sigma) must give
    sim.open()
    sim.set_fast(True)
    sim.start(25)
    with serving(url=url, spikes_only=True) as link, host_on(link) as host:
        assert host.next(wire.Hello).firmware.endswith("simulated spikes-only")
        assert host.ask(wire.Start(wire.RAW, 25)).reason == wire.MALFORMED
        assert host.ask(wire.SetThreshold(-8.0)).reason == wire.DONE
        assert host.ask(wire.SetThreshold(0.0)).reason == wire.LIMIT
        assert host.ask(wire.Start(wire.SPIKES, 25)).reason == wire.DONE
        n_spikes = 0
        while (item := sim.read()) is not None:
            if isinstance(item, SpikeEvents):
                spikes = host.next(wire.Spikes)
                assert np.array_equal(spikes.sample, item.sample)
                assert np.array_equal(spikes.channel, item.channel)
                n_spikes += len(item)
            else:
                assert isinstance(item, Tick)
                assert host.next(wire.Heartbeat).sample == item.sample
                if item.sample >= 25 * 400:
                    break
        assert n_spikes > 0


def test_a_stimulate_with_non_finite_numbers_is_refused_and_the_device_goes_on():
    with serving() as link, host_on(link) as host:
        host.ask(wire.Start(wire.RAW, 25))
        nan_rate = wire.Stimulate(1, wire.NOW, (wire.WirePulse(10, "current", ((200.0, 5.0),
                                  (200.0, -5.0))),), 2, float("nan"))
        nan_amp = wire.Stimulate(2, wire.NOW, (wire.WirePulse(10, "current", ((200.0, float(
                                 "nan")),)),), 1, 0.0)
        assert host.ask(nan_rate).reason == wire.MALFORMED
        assert host.ask(nan_amp).reason == wire.MALFORMED
        assert host.ask(stimulate(50_000, ticket=3)).reason == wire.DONE  # still serving


def test_a_host_that_left_mid_stream_is_replaced_by_the_next():
    """A pty cannot tell a host that closes and reopens at once from one that stayed:
    the next host pings for the Hello and stops the old stream before its own Start."""
    with serving() as link:
        with host_on(link) as host:
            host.next(wire.Hello)
            assert host.ask(wire.Start(wire.RAW, 2500)).reason == wire.DONE
            host.next(wire.SampleBlock)
        with host_on(link) as host:  # the old host closed its port without Stop
            assert host.ask(wire.Ping(7)).reason == wire.DONE
            assert host.next(wire.Hello).n_channels == 64
            assert host.ask(wire.Stop()).reason == wire.DONE
            assert host.ask(wire.Start(wire.RAW, 25)).reason == wire.DONE
            assert host.next(wire.SampleBlock).first_sample == 0
