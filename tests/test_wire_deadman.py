"""The device's dead-man switch, cut trains and the version check, proven from the simulated
device's own log (its record of every pulse the culture received), over a pty."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tty

import pytest
import serial
from conftest import ROOT, read_until, wait_until
from test_device import host_on, serving
from test_serial import PULSE, blocks_to, connected, device_url

from drivers import wire
from mea_control.driver import DriverError, open_driver
from mea_control.types import StimPattern, StimReport

RATE = 25_000
TIMEOUT_MS = 300
#: What a loaded machine may add to the device's reaction, for the wall-clock checks only
#: (the sample checks are exact); without the switch, pulses go on for seconds.
MARGIN_S = 0.7


def train(at: int, count: int, rate_hz: float) -> StimPattern:
    return StimPattern(((10, PULSE),), count, rate_hz, at_sample=at)


def pulses(log: list[dict], ticket: int) -> list[dict]:
    return [e for e in log if e["kind"] == "pulse" and e["ticket"] == ticket]


def only(log: list[dict], kind: str) -> dict:
    found = [e for e in log if e["kind"] == kind]
    assert len(found) == 1, f"{kind}: {found}"
    return found[0]


def device_sample_at(log: list[dict], wall: float) -> float:
    """The device's sample at wall-clock time ``wall``, from its log's start entry."""
    return (wall - only(log, "start")["wall"]) * RATE


def check_nothing_ran_after_the_host_fell_silent(log, ticket, silent_from: float) -> dict:
    """The dead-man switch tripped once, ``host_timeout_ms`` after ``silent_from`` (wall),
    and no pulse of ``ticket`` ran after it; returns the trip's log entry."""
    trip = only(log, "host_timeout")
    assert trip["cancelled"] == [ticket]
    assert TIMEOUT_MS <= trip["silent_ms"] <= TIMEOUT_MS + MARGIN_S * 1000
    ran = pulses(log, ticket)
    assert ran, "the train had begun"
    assert all(p["sample"] < trip["sample"] for p in ran)  # in device samples, exact
    latest = device_sample_at(log, silent_from) + (TIMEOUT_MS / 1000 + MARGIN_S) * RATE
    assert trip["sample"] <= latest
    assert max(p["wall"] for p in ran) <= silent_from + TIMEOUT_MS / 1000 + MARGIN_S
    return trip


def test_a_hung_loop_disarms_the_device_and_cuts_its_train():
    log: list[dict] = []
    with serving(pulse_log=log.append) as link, connected(device_url(link)) as driver:
        read_until(driver, blocks_to(2500))
        at = driver.earliest_stim_sample() + 2500
        ticket = driver.stimulate(train(at, 60, 20.0))  # 3 s of pulses, 1250 samples apart
        read_until(driver, blocks_to(at + 2 * 1250 + 25))
        hung_at = time.time()
        time.sleep(1.5)  # the loop hangs: read() is not called, the reader thread lives on
        events = read_until(driver, lambda e: isinstance(e, StimReport) and e.pulses_run)
        link_events = driver.drain_events()
        # disarmed: a new pattern is refused until a person re-arms
        start = driver.earliest_stim_sample() + 250
        refused = driver.stimulate(StimPattern.single([10], PULSE, at_sample=start))
        report = read_until(driver, lambda e: isinstance(e, StimReport) and e.ticket == refused)
        assert not report[-1].executed and "disarmed: host silent" in report[-1].reason
        driver.rearm_stimulation()
        start = driver.earliest_stim_sample() + 2500
        again = driver.stimulate(StimPattern.single([10], PULSE, at_sample=start))
        report = read_until(driver, lambda e: isinstance(e, StimReport) and e.ticket == again)
        assert report[-1] == StimReport(again, start)
    ran = pulses(log, ticket)
    trip = check_nothing_ran_after_the_host_fell_silent(log, ticket, hung_at)
    assert 2 < len(ran) < 60
    assert events[-1] == StimReport(ticket, at + len(ran) * 1250, True, "disarmed: host silent",
                                    len(ran))
    disarmed = [m for kind, m in link_events if kind == "device_disarmed"]
    assert len(disarmed) == 1 and f"at sample {trip['sample']}" in disarmed[0]
    assert "cut 1 train(s)" in disarmed[0] and "re-armed" in disarmed[0]
    assert [e["kind"] for e in log if e["kind"] in ("arm", "host_timeout")] == [
        "host_timeout", "arm"]
    assert pulses(log, again)[0]["sample"] == start


HOST = """
import sys
from mea_control.driver import open_driver
from mea_control.types import Block, StimPattern, StimPulse
driver = open_driver(sys.argv[1])
driver.open()
driver.start(25)
while not isinstance(block := driver.read(1.0), Block) or block.stop_sample < 2500:
    pass
at = driver.earliest_stim_sample() + 2500
pulse = StimPulse.biphasic(5.0, 200.0)
print(driver.stimulate(StimPattern(((10, pulse),), 100, 20.0, at_sample=at)), flush=True)
while True:
    driver.read(1.0)
"""


def test_a_killed_host_leaves_no_pulse_after_its_timeout():
    """The host process is killed (SIGKILL) while a 5 s train runs. The port stays open (a
    USB adapter that stays plugged in: this test holds the pty), so only the missing
    heartbeat tells the device."""
    log: list[dict] = []
    with serving(pulse_log=log.append) as link:
        holder = os.open(link.name, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(holder)
        drain = threading.Event()

        def read_on():  # once the host is dead, take what the device sends, as an adapter does
            drain.wait()
            while drain.is_set():
                try:
                    os.read(holder, 1 << 16)
                except OSError:
                    return

        threading.Thread(target=read_on, daemon=True).start()
        host = subprocess.Popen([sys.executable, "-c", HOST, device_url(link)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ticket = int(host.stdout.readline() or -1)
            assert ticket > 0, host.stderr.read()
            wait_until(lambda: len(pulses(log, ticket)) >= 3, what="the train's third pulse")
            killed_at = time.time()
            host.send_signal(signal.SIGKILL)
            drain.set()
            host.wait(10)
            wait_until(lambda: any(e["kind"] == "host_timeout" for e in log), timeout=20,
                       what="the dead-man switch")
            time.sleep(1.0)  # a switch that failed would show pulses here
        finally:
            host.kill()
            host.wait(10)
            host.stdout.close()
            host.stderr.close()
            drain.clear()
            os.close(holder)
    check_nothing_ran_after_the_host_fell_silent(log, ticket, killed_at)
    assert len(pulses(log, ticket)) < 100


def test_an_abort_cuts_a_started_train_and_says_how_far_it_got():
    log: list[dict] = []
    with serving(pulse_log=log.append) as link, connected(device_url(link)) as driver:
        read_until(driver, blocks_to(2500))
        at = driver.earliest_stim_sample() + 1250
        ticket = driver.stimulate(train(at, 40, 50.0))  # 500 samples apart
        read_until(driver, blocks_to(at + 3 * 500 + 25))
        driver.abort_stimulation()
        cut = read_until(driver, lambda e: isinstance(e, StimReport) and e.pulses_run)[-1]
        read_until(driver, blocks_to(at + 40 * 500 + 500))  # past the train's planned end
    ran = pulses(log, ticket)
    assert 4 <= len(ran) < 40
    assert cut == StimReport(ticket, at + len(ran) * 500, True, "aborted", len(ran))
    abort = only(log, "abort")
    assert all(p["sample"] < abort["sample"] for p in ran)
    assert [p["sample"] for p in ran] == [at + i * 500 for i in range(len(ran))]


def test_the_log_says_what_ran_where_and_when_hosts_came_and_went():
    log: list[dict] = []
    with serving(pulse_log=log.append) as link:
        with connected(device_url(link)) as driver:
            read_until(driver, blocks_to(250))
            at = driver.earliest_stim_sample() + 2500
            pulse = StimPattern(((3, PULSE), (10, PULSE)), at_sample=at)
            ticket = driver.stimulate(pulse)
            read_until(driver, blocks_to(at + 25))
        wait_until(lambda: log[-1]["kind"] == "host_gone", what="the host's leaving")
    entry = {k: v for k, v in pulses(log, ticket)[0].items() if k != "wall"}
    assert entry == {"kind": "pulse", "sample": at, "ticket": ticket, "channel": 3,
                     "mode": "current", "amplitude": 5.0, "duration_us": 400.0}
    assert [p["channel"] for p in pulses(log, ticket)] == [3, 10]
    kinds = [e["kind"] for e in log if e["kind"] != "pulse"]
    assert kinds == ["host_connected", "start", "stop", "host_gone"]
    assert all(isinstance(e["wall"], float) and isinstance(e["sample"], int) for e in log)


# -- protocol versions --------------------------------------------------------------------------
def test_a_version_1_host_is_told_in_version_1_to_update():
    with serving() as link:
        port = serial.Serial(link.name, timeout=0.05)
        try:
            port.write(wire.encode(wire.Ping(1), 0, version=1))
            buf, deadline = b"", time.monotonic() + 10
            v1_error = wire.MARKER + bytes([1, wire.Error.TYPE])
            while v1_error not in buf and time.monotonic() < deadline:
                buf += port.read(1 << 16)
        finally:
            port.close()
    start = buf.index(v1_error)
    frame = buf[start:]
    length = int.from_bytes(frame[8:12], "little")
    error = wire.decode_payload(wire.Error.TYPE, frame[12:12 + length])
    assert error.code == 2 and error.message == (
        "this device speaks mea-control wire protocol version 2, the host version 1: "
        "update mea-control on the host")


def test_the_hello_gives_the_devices_host_timeout_and_the_driver_beats_in_time():
    log: list[dict] = []
    with serving(host_timeout_ms=200, pulse_log=log.append) as link:
        with host_on(link) as host:
            assert host.next(wire.Hello).host_timeout_ms == 200
        with connected(device_url(link)) as driver:  # beats every 50 ms while it reads
            read_until(driver, blocks_to(25_000))
            assert driver.drain_events() == []
    assert not any(e["kind"] == "host_timeout" for e in log)


def test_a_host_timeout_out_of_range_is_refused():
    from hardware_sim.device import SimDevice
    from hardware_sim.mea import SimError

    with pytest.raises(SimError, match="host_timeout_ms=0: use 1 to 60000 ms"):
        SimDevice(host_timeout_ms=0)


def test_open_driver_refuses_a_version_1_device_at_once():
    """A version-1 device sends Hello and Heartbeats that a version-2 host recognises."""
    link_name, master = _v1_device()
    try:
        tick = time.monotonic()
        with pytest.raises(DriverError, match="version 1, this mea-control speaks version 2"):
            open_driver(f"serial://{link_name}?timeout=10").open()
        assert time.monotonic() - tick < 5  # well before the 10 s handshake timeout
    finally:
        os.close(master)


def _v1_device() -> tuple[str, int]:
    """A pty whose far end repeats a version-1 heartbeat every 50 ms."""
    master, slave = os.openpty()
    tty.setraw(master)
    name = os.ttyname(slave)
    os.close(slave)

    def beat():
        for _ in range(200):
            try:
                os.write(master, wire.encode(wire.Heartbeat(0), 0, version=1))
            except OSError:
                return
            time.sleep(0.05)

    threading.Thread(target=beat, daemon=True).start()
    return name, master
