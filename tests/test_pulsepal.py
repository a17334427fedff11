"""pulsepal://: acquisition from sim://, stimulation through a fake Pulse Pal on a pty.

The fake (hardware_sim.pulsepal) reads the bytes as the firmware does and logs them, so
these tests check what a real Pulse Pal would receive, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import threading
from urllib.parse import quote

import pytest
from conftest import ROOT, cli_command, read_until, wait_until
from test_device import serving

from drivers import pulsepal
from hardware_sim.device import PtyLink
from hardware_sim.pulsepal import FakePulsePal
from mea_control import cli, recording
from mea_control import rig as rig_module
from mea_control.driver import DriverError, open_driver
from mea_control.limits import SafetyLimits, effective_limits
from mea_control.safety import SafetyGate, SafetyRefusal
from mea_control.types import Block, StimPattern, StimPulse, StimReport

RIG = """\
[rig]
name = "pulse pal rig"
[stimulator]
uA_per_V = 2.0
[stimulator.wiring]
1 = "23"
2 = "47"
"""
#: What every wired output is given at open: burst 0, delay 0, trigger links off,
#: no custom train, resting at 0 V (code 32768).
STATIC = [(8, "<I", 0), (11, "<I", 0), (12, "<B", 0), (13, "<B", 0), (14, "<B", 0),
          (17, "<H", 32768)]


def op74(code: int, output: int, fmt: str, value: int) -> bytes:
    return bytes([213, 74, code, output]) + struct.pack(fmt, value)


def dac(volts: float) -> int:
    return round((volts + 10) / 20 * 65535)


@contextlib.contextmanager
def fake_pulsepal(firmware: int = 21):
    """A fake Pulse Pal served from a thread on a new pty; yields (fake, link)."""
    link, stop = PtyLink(), threading.Event()
    fake = FakePulsePal(firmware)
    thread = threading.Thread(target=fake.serve, args=(link, stop), daemon=True)
    thread.start()
    try:
        yield fake, link
    finally:
        unplug(link, stop, thread)


def unplug(link, stop, thread) -> None:
    if not stop.is_set():
        stop.set()
        thread.join(5)
        link.close()


@pytest.fixture
def rig(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text(RIG)
    return path


@contextlib.contextmanager
def paired(link, rig, query: str = "acquire=" + quote("sim://?culture=poisson_burst", safe="")):
    driver = open_driver(f"pulsepal://{link.name}?{query}&rig={rig}")
    driver.open()
    try:
        driver.start(25)
        yield driver
    finally:
        driver.close()


def a_report(item) -> bool:
    return isinstance(item, StimReport)


def sent_since(fake, mark: int) -> list[bytes]:
    return [r.data for r in fake.commands()[mark:]]


def electrode(driver, label: str) -> int:
    return driver.info.layout.channel(label)


# -- connecting ----------------------------------------------------------------------------
def test_handshake_wiring_and_limits(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        info = driver.info
        assert info.name.endswith("+ Sanworks Pulse Pal (firmware v21)") and info.simulated
        assert info.n_channels == 64 and info.sample_rate == 25000.0
        # only the wired electrodes can stimulate; 10 V through 2 uA/V is 20 uA
        assert [info.layout.labels[c] for c in info.layout.can_stimulate.nonzero()[0]] == [
            "23", "47"]
        assert info.limits == {"max_current_uA": 20.0, "min_phase_us": 100.0}
        assert info.capabilities.stim_modes == ("current",)
        first = [r.data for r in fake.commands()]
        assert first[:2] == [bytes([213, 72]), bytes([213, 80])]
        assert first[2:] == [op74(c, out, f, v) for out in (1, 2) for c, f, v in STATIC]
        assert fake.program[1][12] == 0 and fake.program[3][12] == 1  # unwired: untouched
        second = open_driver(f"pulsepal://{link.name}?acquire=sim://&rig={rig}")
        with pytest.raises(DriverError, match="is another program using it"):
            second.open()
        driver.close()
        assert fake.wait_for(81)[-1] == fake.commands()[-1]  # close disconnects
    assert fake.garbage == 0 and fake.comm_failures == 0


def test_discover_finds_the_pulse_pal_among_other_ports(monkeypatch):
    from serial.tools import list_ports

    silent = PtyLink()  # a port where nothing answers
    try:
        with fake_pulsepal() as (fake, link), serving(PtyLink) as mea:
            ports = [type("Port", (), {"device": name}) for name in
                     (silent.name, link.name, mea.name)]
            monkeypatch.setattr(list_ports, "comports", lambda: ports)
            found = pulsepal.PulsePalDriver.discover(0.5)
        assert [url for url, _ in found] == [f"pulsepal://{link.name}"]
        assert "Pulse Pal, firmware v21" in found[0][1]
    finally:
        silent.close()


def test_unreachable_devices_fail_quickly_saying_what_to_check(rig):
    with pytest.raises(DriverError, match="cannot open the Pulse Pal port /dev/nonexistent.*"
                       "USB cable"):
        open_driver(f"pulsepal:///dev/nonexistent?acquire=sim://&rig={rig}").open()
    silent = PtyLink()
    try:
        driver = open_driver(f"pulsepal://{silent.name}?acquire=sim://&rig={rig}&timeout=1")
        with pytest.raises(DriverError, match="no answer from .* within 1 s: check the USB "
                           "cable.*this port is a Pulse Pal"):
            driver.open()
    finally:
        silent.close()
    with serving(PtyLink) as mea:  # a mea-control device: it greets with a Hello frame
        driver = open_driver(f"pulsepal://{mea.name}?acquire=sim://&rig={rig}")
        with pytest.raises(DriverError, match="not a Pulse Pal's 75"):
            driver.open()
    with fake_pulsepal(firmware=4) as (_, link):
        with pytest.raises(DriverError, match="Pulse Pal 1 .*model 2 or later"):
            open_driver(f"pulsepal://{link.name}?acquire=sim://&rig={rig}").open()


@pytest.mark.parametrize(("text", "message"), [
    ("[rig]\n", "has no \\[stimulator\\] table"),
    ("[stimulator]\nuA_per_V = 0\n[stimulator.wiring]\n1 = \"23\"\n", "uA_per_V must be"),
    ("[stimulator]\nuA_per_V = 1\n", "add \\[stimulator.wiring\\]"),
    ("[stimulator]\nuA_per_V = 1\n[stimulator.wiring]\n5 = \"23\"\n", "channels are 1 to 4"),
    ("[stimulator]\nuA_per_V = 1\n[stimulator.wiring]\n1 = \"23\"\n2 = \"23\"\n",
     "wires electrode\\(s\\) 23 to more than one"),
    ("[stimulator]\nuA_per_V = 1\ngain = 2\n[stimulator.wiring]\n1 = \"23\"\n",
     "unknown key\\(s\\) gain"),
])
def test_rig_file_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "rig.toml"
    path.write_text(text)
    with pytest.raises(DriverError, match=message):
        open_driver(f"pulsepal:///dev/ttyACM0?acquire=sim://&rig={path}")


def test_a_cli_run_reads_the_rig_file_once(tmp_path, rig, monkeypatch):
    """The CLI reads --rig; the Pulse Pal driver and its acquisition driver take that Rig."""
    reads = []
    read_toml = rig_module._read_toml
    monkeypatch.setattr(rig_module, "_read_toml", lambda path: reads.append(path) or
                        read_toml(path))
    with fake_pulsepal() as (_, link):
        device = f"pulsepal://{link.name}?acquire={quote('sim://?seed=1', safe='')}"
        code = cli.main(["run", "spontaneous", "--device", device, "--rig", str(rig),
                         "--duration", "0.1", "--quiet"])
    assert code == 0 and reads == [rig]


def test_wiring_to_an_electrode_the_layout_lacks_is_refused_at_open(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[stimulator]\nuA_per_V = 1\n[stimulator.wiring]\n1 = "99"\n')
    with fake_pulsepal() as (_, link):
        with pytest.raises(DriverError, match="layout grid8x8_200um has no electrode '99'"):
            open_driver(f"pulsepal://{link.name}?acquire=sim://&rig={path}").open()
    with pytest.raises(DriverError, match="needs a rig file"):
        open_driver("pulsepal:///dev/ttyACM0?acquire=sim://")


# -- stimulation parameters, byte for byte ----------------------------------------------------
# (pulse, train_count, train_rate_hz) -> op-74 (code, fmt, value) for output 1, in code order.
# Amplitudes go through the rig's 2 uA/V; times are 50 us cycles.
MAPPINGS = [
    (StimPulse.biphasic(5.0, 200.0), 1, 0.0, [
        (1, "<B", 1), (2, "<H", 24576), (3, "<H", 40959), (4, "<I", 4), (5, "<I", 0),
        (6, "<I", 4), (7, "<I", 2), (10, "<I", 8)]),  # cathodic first: -2.5 V, then +2.5 V
    (StimPulse.biphasic(3.0, 150.0, interphase_us=100.0, negative_first=False), 1, 0.0, [
        (2, "<H", dac(1.5)), (3, "<H", dac(-1.5)), (4, "<I", 3), (5, "<I", 2), (6, "<I", 3),
        ]),  # anodic first with a gap: only what changed is sent (the length is still 8)
    (StimPulse("current", ((300.0, -4.0),)), 1, 0.0, [
        (1, "<B", 0), (2, "<H", dac(-2.0)), (4, "<I", 6), (10, "<I", 6)]),  # monophasic
    (StimPulse.biphasic(20.0, 100.0), 5, 100.0, [
        (1, "<B", 1), (2, "<H", 0), (3, "<H", 65535), (4, "<I", 2), (5, "<I", 0),
        (6, "<I", 2), (7, "<I", 196), (10, "<I", 4 * 200 + 4)]),  # 5 at 100 Hz, +-10 V
]


def test_each_parameter_reaches_the_pulse_pal_byte_for_byte(rig):
    """(pulse, train) -> the op-74 commands (code, format, value) for output 1, in code order:
    amplitudes through the rig's 2 uA/V, times in 50 us cycles; then the trigger."""
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        read_until(driver, lambda e: isinstance(e, Block))
        for k, (pulse, count, rate, expected) in enumerate(MAPPINGS):
            mark = len(fake.commands())
            pattern = StimPattern(((electrode(driver, "23"), pulse),), train_count=count,
                                  train_rate_hz=rate)
            ticket = driver.stimulate(pattern)
            report = read_until(driver, a_report)[-1]
            assert report.ticket == ticket and report.executed, report.reason
            fake.wait_for(77, count=k + 1)  # a trigger is not answered: wait until it is read
            assert sent_since(fake, mark) == [op74(c, 1, f, v) for c, f, v in expected] + [
                bytes([213, 77, 0b0001])]
            out = fake.outputs[-1]
            assert out.channel == 1 and len(out.onsets) == count
            # the train is over (the longest here lasts 40.4 ms, plus a 5 ms margin)
            read_until(driver, lambda e, r=report: isinstance(e, Block)
                       and e.stop_sample > r.sample + 25 * 50)
        assert fake.outputs[-1].onsets == (0, 200, 400, 600, 800)  # 100 Hz: 200 cycles
        # the same pattern again: nothing to reprogram, only the trigger
        mark = len(fake.commands())
        driver.stimulate(pattern)
        assert read_until(driver, a_report)[-1].executed
        fake.wait_for(77, count=len(MAPPINGS) + 1)
        assert sent_since(fake, mark) == [bytes([213, 77, 0b0001])]


def test_two_electrodes_in_one_pattern_start_together(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        read_until(driver, lambda e: isinstance(e, Block))
        mark = len(fake.commands())
        pulse = StimPulse.biphasic(1.0, 100.0)
        driver.stimulate(StimPattern.single([electrode(driver, "47"), electrode(driver, "23")],
                                            pulse))
        assert read_until(driver, a_report)[-1].executed
        fake.wait_for(77)
        sent = sent_since(fake, mark)
        assert sent[-1] == bytes([213, 77, 0b0011])  # one trigger, one timer cycle
        assert {d[3] for d in sent[:-1]} == {1, 2} and len(sent) == 1 + 2 * 8
        assert fake.program[1][2] == fake.program[2][2] == dac(-0.5)
        assert {o.channel for o in fake.outputs} == {1, 2}


def test_a_pattern_fires_when_the_acquisition_clock_reaches_its_sample(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        now = read_until(driver, lambda e: isinstance(e, Block))[-1].stop_sample
        at = now + 2500  # 100 ms ahead
        ticket = driver.stimulate(StimPattern.single([electrode(driver, "23")],
                                                     StimPulse.biphasic(5.0, 200.0), at_sample=at))
        assert fake.commands(74)[-1].data[2] == 10  # programmed at once ...
        assert not fake.commands(77)  # ... triggered later
        events = read_until(driver, a_report)
        blocks = [e for e in events if isinstance(e, Block)]
        assert blocks[-1].stop_sample >= at > blocks[-2].stop_sample  # the first block past it
        assert events[-1] == StimReport(ticket, blocks[-1].stop_sample)
        assert len(fake.wait_for(77)) == 1


REFUSALS = [
    (StimPulse.biphasic(5.0, 200.0), 1, 0.0, "11", "electrode 11 has no Pulse Pal channel"),
    (StimPulse.biphasic(25.0, 200.0), 1, 0.0, "23", "25 uA needs 12.5 V at the isolator's 2 "
     "uA/V; the Pulse Pal's outputs reach 10 V"),
    (StimPulse.biphasic(5.0, 120.0), 1, 0.0, "23", "120 us is not a whole number"),
    (StimPulse.biphasic(5.0, 50.0), 1, 0.0, "23", "shorter than the Pulse Pal's minimum 100 us"),
    (StimPulse.biphasic(500.0, 200.0, mode="voltage"), 1, 0.0, "23", "voltage-mode pulses"),
    (StimPulse("current", ((100.0, -1.0), (100.0, 2.0), (100.0, -1.0))), 1, 0.0, "23",
     "a pulse of 3 phases"),
    (StimPulse.biphasic(5.0, 200.0), 3, 2500.0, "47", "a train at 2500 Hz leaves 0 us"),
]


def test_patterns_the_wiring_or_the_device_cannot_play_are_refused(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        read_until(driver, lambda e: isinstance(e, Block))
        mark = len(fake.commands())
        for pulse, count, rate, label, reason in REFUSALS:
            ticket = driver.stimulate(StimPattern(((electrode(driver, label), pulse),),
                                                  train_count=count, train_rate_hz=rate))
            report = read_until(driver, a_report)[-1]
            assert report.ticket == ticket and not report.executed
            assert reason in report.reason
        assert sent_since(fake, mark) == []  # nothing reached the Pulse Pal


def test_late_and_overlapping_patterns_are_refused(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        now = read_until(driver, lambda e: isinstance(e, Block) and e.stop_sample > 100)[-1]
        ch = electrode(driver, "23")
        late = driver.stimulate(StimPattern.single([ch], StimPulse.biphasic(5.0, 200.0),
                                                   at_sample=now.start_sample))
        report = read_until(driver, a_report)[-1]
        assert report.ticket == late and not report.executed and "late" in report.reason
        train = StimPattern(((ch, StimPulse.biphasic(5.0, 200.0)),), train_count=10,
                            train_rate_hz=20.0)  # 450 ms
        driver.stimulate(train)
        assert read_until(driver, a_report)[-1].executed
        second = driver.stimulate(StimPattern.single([ch], StimPulse.biphasic(2.0, 200.0)))
        report = read_until(driver, a_report)[-1]
        assert report.ticket == second and not report.executed
        assert "output 1 (electrode 23) plays another train from sample" in report.reason
        assert fake.program[1][2] == dac(-2.5)  # the playing train was not reprogrammed


def test_patterns_sent_out_of_order_each_play_their_own_program(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        now = read_until(driver, lambda e: isinstance(e, Block))[-1].stop_sample
        ch = electrode(driver, "23")
        later = driver.stimulate(StimPattern.single([ch], StimPulse.biphasic(2.0, 200.0),
                                                    at_sample=now + 2500))
        sooner = driver.stimulate(StimPattern.single([ch], StimPulse.biphasic(6.0, 100.0),
                                                     at_sample=now + 1000))
        reports = [e for e in read_until(driver, lambda e: a_report(e) and e.ticket == later)
                   if a_report(e)]
        assert [(r.ticket, r.executed) for r in reports] == [(sooner, True), (later, True)]
        fake.wait_for(77, count=2)
        played = [(o.program[2], o.program[4]) for o in fake.outputs]
        assert played == [(dac(-3.0), 2), (dac(-1.0), 4)]


def test_the_safety_gate_sees_the_wiring_and_the_isolator(rig):
    """The engine's gate refuses these before the driver: its info carries both."""
    with fake_pulsepal() as (_, link), paired(link, rig) as driver:
        info = driver.info
        limits, _ = effective_limits(SafetyLimits(max_current_uA=50.0, max_charge_nC=50.0),
                                     info.limits)
        gate = SafetyGate(limits, info.layout, info.sample_rate)
        with pytest.raises(SafetyRefusal, match="unable to stimulate"):
            gate.admit(StimPattern.single([electrode(driver, "11")],
                                          StimPulse.biphasic(5.0, 200.0)), 0)
        with pytest.raises(SafetyRefusal, match="max_current_uA = 20.00"):
            gate.admit(StimPattern.single([electrode(driver, "23")],
                                          StimPulse.biphasic(25.0, 200.0)), 0)
        with pytest.raises(SafetyRefusal, match="min_phase_us = 100.00"):
            gate.admit(StimPattern.single([electrode(driver, "23")],
                                          StimPulse.biphasic(5.0, 50.0)), 0)


def test_abort_stops_the_outputs_and_reports_what_will_not_run(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        read_until(driver, lambda e: isinstance(e, Block))
        ticket = driver.stimulate(StimPattern.single([electrode(driver, "47")],
                                                     StimPulse.biphasic(5.0, 200.0),
                                                     at_sample=10**6))
        driver.abort_stimulation()
        assert read_until(driver, a_report)[-1] == StimReport(ticket, 10**6, False, "aborted")
        fake.wait_for(80, count=2)  # one at open, one now
        assert not fake.commands(77)


# -- faults on the wire -----------------------------------------------------------------------
def test_a_garbled_answer_refuses_the_pattern_and_the_next_one_is_sent_whole(rig):
    with fake_pulsepal() as (fake, link), paired(link, rig) as driver:
        read_until(driver, lambda e: isinstance(e, Block))
        ch = electrode(driver, "23")
        fake.inject(b"\x37\xd5", before_reply=True)
        driver.stimulate(StimPattern.single([ch], StimPulse.biphasic(5.0, 200.0)))
        report = read_until(driver, a_report)[-1]
        assert not report.executed and "garbled answer" in report.reason
        assert any(kind == "link_error" and "garbled" in message
                   for kind, message in driver.drain_events())
        assert not fake.commands(77)
        mark = len(fake.commands())
        driver.stimulate(StimPattern.single([ch], StimPulse.biphasic(5.0, 200.0)))
        assert read_until(driver, a_report)[-1].executed
        fake.wait_for(77)
        assert len(sent_since(fake, mark)) == 8 + 1  # everything programmed again
        fake.inject(b"noise")  # bytes nobody asked for are reported; the run goes on
        first = read_until(driver, lambda e: isinstance(e, Block))[-1].start_sample
        one_s = int(driver.info.sample_rate)  # the noise comes within 0.2 s
        read_until(driver, lambda e: isinstance(e, Block) and e.start_sample >= first + one_s)
        assert [m for k, m in driver.drain_events() if k == "link_error"] == [
            f"5 unexpected byte(s) from the Pulse Pal on {link.name}: {b'noise'.hex()}"]


def test_the_fake_reads_bytes_as_the_firmware_does():
    """Garbage between commands is skipped, bad values answered 0, a stalled command dropped."""
    import serial

    with fake_pulsepal(firmware=21) as (fake, link):
        port = serial.serial_for_url(link.name, timeout=1)
        try:
            port.write(b"\x00\x17" + bytes([213, 72]))
            assert port.read(5) == bytes([75]) + struct.pack("<I", 21)
            port.write(op74(2, 5, "<H", 100))  # output 5 does not exist
            port.write(op74(1, 1, "<B", 2))  # biphasic must be 0 or 1
            port.write(op74(18, 1, "<B", 1))  # continuous mode: not in firmware v21
            assert port.read(3) == b"\x00\x00\x00"
            port.write(op74(4, 2, "<I", 7))
            assert port.read(1) == b"\x01" and fake.program[2][4] == 7
            port.write(bytes([213, 74, 4, 2, 9]))  # stops mid-value
            wait_until(lambda: fake.comm_failures == 1)
            assert fake.program[2][4] == 20  # defaults reloaded
            assert port.read(1) == b""  # and nothing answered
            assert fake.garbage == 2
        finally:
            port.close()


def test_unplugging_the_pulse_pal_ends_reading_with_a_clear_error(rig):
    link, stop = PtyLink(), threading.Event()
    fake = FakePulsePal()
    thread = threading.Thread(target=fake.serve, args=(link, stop), daemon=True)
    thread.start()
    with paired(link, rig) as driver:
        read_until(driver, lambda e: isinstance(e, Block))
        unplug(link, stop, thread)
        with pytest.raises(DriverError, match="lost the Pulse Pal on .*stimulation stopped: "
                           "check its USB cable"):
            read_until(driver, lambda e: False, timeout=3.0)
        with pytest.raises(DriverError, match="lost the Pulse Pal"):
            driver.stimulate(StimPattern.single([electrode(driver, "23")],
                                                StimPulse.biphasic(5.0, 200.0)))


# -- the CLI, end to end ---------------------------------------------------------------------
PROTOCOL = '''\
"""A biphasic pulse on each stimulating electrode in turn (the source: which one)."""
from mea_control.protocol import Parameter, Protocol, Trials, TrialSpec
from mea_control.types import StimPattern, StimPulse


class EachElectrode(Protocol):
    name = "each_electrode"
    parameters = {"n_trials": Parameter(int, 6, range=(1, 1000))}

    def setup(self, ctx):
        self.channels = [c for c in range(ctx.n_channels) if ctx.can_stimulate(c)]
        ctx.use_trials(Trials(self.design, n_trials=self.p.n_trials,
                              stim_channels=self.channels, isi_s=0.2, n_sources=1,
                              window_ms=(10.0, 150.0), first_trial_s=0.3))

    def design(self, ctx, index):
        k = index % len(self.channels)
        pattern = StimPattern.single([self.channels[k]], StimPulse.biphasic(4.0, 200.0))
        return TrialSpec(pattern, (k,))
'''


def run_args(tmp_path, link, rig):
    protocol = tmp_path / "each_electrode.py"
    protocol.write_text(PROTOCOL)
    device = f"pulsepal://{link.name}?acquire={quote('sim://?seed=1', safe='')}"
    return cli_command("run", str(protocol), "--device", device, "--rig", str(rig),
                       "--record", str(tmp_path / "x.nwb"), "--summary-json",
                       str(tmp_path / "s.json"))


def test_a_protocol_runs_through_the_cli_and_its_pulses_are_recorded(tmp_path, rig):
    with fake_pulsepal() as (fake, link):
        proc = subprocess.run(run_args(tmp_path, link, rig), capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert fake.wait_for(81)[-1] == fake.commands()[-1]  # it disconnected at the end
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["stims_executed"] == 6 and summary["stims_refused"] == 0
    assert summary["limits"]["max_current_uA"] == 10.0  # the rig's default is stricter than 20
    assert [o.channel for o in fake.outputs] == [1, 2] * 3
    assert all(o.program[2] == dac(-2.0) and o.program[3] == dac(2.0) for o in fake.outputs)
    with recording.open(tmp_path / "x.nwb") as rec:
        assert rec.complete
        pulses = rec.pulses
        assert [rec.labels[e] for e in pulses["electrode"]] == ["23", "47"] * 3
        assert all(pulses["execution_sample"] >= pulses["requested_sample"])
        assert all(list(a) == [-4.0, 4.0] for a in pulses["phase_amplitudes"])
        trials = rec.trials
        assert trials is not None and list(trials.status) == ["executed"] * 6
    assert fake.garbage == 0 and fake.comm_failures == 0


def test_unplugging_during_a_run_stops_it_and_closes_the_recording(tmp_path, rig):
    """The engine with a recorder, in process (the CLI's run path, without its start-up)."""
    from mea_control.engine import Engine, EngineConfig
    from mea_control.protocol import load_protocol
    from mea_control.recording import Recorder
    from mea_control.recording.writer import run_provenance

    protocol_file = tmp_path / "each_electrode.py"
    protocol_file.write_text(PROTOCOL)
    cls, path = load_protocol(str(protocol_file))
    link, stop = PtyLink(), threading.Event()
    fake = FakePulsePal()
    server = threading.Thread(target=fake.serve, args=(link, stop), daemon=True)
    server.start()
    query = "acquire=" + quote("sim://?culture=poisson_burst", safe="")
    driver = open_driver(f"pulsepal://{link.name}?{query}&rig={rig}")
    driver.open()
    try:
        engine = Engine(driver, cls(n_trials=100), EngineConfig(block_ms=1.0))
        engine.sinks.append(Recorder(tmp_path / "x.nwb", driver.info,
                                     run_provenance(engine.describe(), path), process=False))

        def unplug_after_two_pulses():
            fake.wait_for(77, count=2, timeout=30)
            unplug(link, stop, server)

        threading.Thread(target=unplug_after_two_pulses, daemon=True).start()
        summary = engine.run()
    finally:
        driver.close()
        unplug(link, stop, server)
    assert summary["error"] == "device" and not summary["stimulation_armed"]
    assert engine.error.startswith(f"lost the Pulse Pal on {link.name}")
    assert engine.error.endswith("stimulation stopped: check its USB cable and power")
    with recording.open(tmp_path / "x.nwb") as rec:
        assert rec.complete  # closed cleanly, not left for recovery
        errors = [e for e in rec.events if e["kind"] == "device_error"]
        assert len(errors) == 1 and errors[0]["message"] == engine.error
        assert 2 <= len(rec.pulses["electrode"]) < 100
        assert "stop" in [e["kind"] for e in rec.events]


def test_the_driver_runs_without_the_fast_mode_only(rig):
    with fake_pulsepal() as (_, link):
        driver = open_driver(f"pulsepal://{link.name}?acquire=sim://&rig={rig}")
        driver.open()
        try:
            with pytest.raises(DriverError, match="--fast cannot run with a Pulse Pal"):
                driver.set_fast(True)
        finally:
            driver.close()
