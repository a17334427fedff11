"""serial:// and socket://: the driver against the simulated device, faults on the link, the CLI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import tty

import numpy as np
import pytest
from conftest import ROOT, cli_command, read_until
from test_device import serving

from drivers import wire
from hardware_sim.device import TcpLink
from mea_control import cli, recording
from mea_control.driver import DriverError, open_driver
from mea_control.trials import TrialTable
from mea_control.types import Block, SpikeEvents, StimPattern, StimPulse, StimReport, Tick

PULSE = StimPulse.biphasic(5.0, 200.0)


def device_url(link, query: str = "") -> str:
    url = link.name if link.name.startswith("socket://") else f"serial://{link.name}"
    return url + (f"?{query}" if query else "")


@contextlib.contextmanager
def connected(url: str, block: int = 25):
    driver = open_driver(url)
    driver.open()
    try:
        driver.start(block)
        yield driver
    finally:
        driver.close()


def blocks_to(sample: int):
    return lambda item: isinstance(item, Block) and item.stop_sample >= sample


@pytest.mark.parametrize("link_cls", ["pty", "tcp"])
def test_driver_streams_the_simulators_blocks(link_cls):
    from hardware_sim.device import PtyLink

    sim = open_driver("sim://?seed=4")
    sim.open()
    sim.set_fast(True)
    sim.start(25)
    with serving(PtyLink if link_cls == "pty" else TcpLink) as link, \
            connected(device_url(link)) as driver:
        info = driver.info
        assert info.n_channels == 64 and info.layout.name == "grid8x8_200um"
        assert info.uV_per_bit == 0.195 and info.simulated
        assert info.capabilities.scheduled_stim and info.capabilities.raw_stream
        assert info.capabilities.stim_modes == ("current", "voltage")
        got = [e for e in read_until(driver, blocks_to(2500)) if isinstance(e, Block)]
        for block in got:
            expected = sim.read()
            assert block.start_sample == expected.start_sample
            assert np.array_equal(block.data, expected.data)
        assert driver.drain_events() == []


def test_stimulation_reports_and_refusals():
    with serving() as link, connected(device_url(link)) as driver:
        read_until(driver, blocks_to(500))
        ok = driver.stimulate(StimPattern.single([10], PULSE, at_sample=5000))
        late = driver.stimulate(StimPattern.single([10], PULSE, at_sample=0))
        strong = driver.stimulate(
            StimPattern.single([10], StimPulse.biphasic(500.0, 200.0), at_sample=5000))
        nowhere = driver.stimulate(StimPattern.single([300], PULSE, at_sample=5000))
        events = read_until(driver, blocks_to(5100))
        reports = {e.ticket: e for e in events if isinstance(e, StimReport)}
        assert reports[ok] == StimReport(ok, 5000)
        assert not reports[late].executed and "too late" in reports[late].reason
        assert not reports[strong].executed and "max_current_uA" in reports[strong].reason
        assert not reports[nowhere].executed and "cannot stimulate" in reports[nowhere].reason
        # the report comes just before the block that holds the pulse
        i = events.index(reports[ok])
        assert isinstance(events[i + 1], Block) and events[i + 1].start_sample == 5000


def test_a_pattern_sent_now_runs_at_the_device_clock():
    with serving() as link, connected(device_url(link)) as driver:
        last = read_until(driver, blocks_to(1000))[-1]
        earliest = driver.earliest_stim_sample()
        assert earliest is not None and earliest >= last.stop_sample
        ticket = driver.stimulate(StimPattern.single([10], PULSE))  # at_sample None: "now"
        report = read_until(driver, lambda e: isinstance(e, StimReport))[-1]
        assert report.ticket == ticket and report.executed and report.sample >= last.stop_sample


def test_abort_reports_what_will_not_run():
    with serving() as link, connected(device_url(link)) as driver:
        read_until(driver, blocks_to(250))
        ticket = driver.stimulate(StimPattern.single([10], PULSE, at_sample=50_000))
        driver.abort_stimulation()
        report = read_until(driver, lambda e: isinstance(e, StimReport))[-1]
        assert report == StimReport(ticket, 50_000, executed=False, reason="aborted")


def test_spikes_only_device():
    with serving(url="sim://?seed=4&raw=0", spikes_only=True) as link, \
            connected(device_url(link)) as driver:
        caps = driver.info.capabilities
        assert caps.onboard_detection and not caps.raw_stream
        events = read_until(driver, lambda e: isinstance(e, Tick) and e.sample >= 5000)
        ticks = [e.sample for e in events if isinstance(e, Tick)]
        assert ticks == list(range(25, 5001, 25))
        assert any(isinstance(e, SpikeEvents) for e in events)


# -- the handshake ---------------------------------------------------------------------------
def test_nothing_answering_on_a_pty():
    master, slave = os.openpty()
    tty.setraw(master)
    try:
        with pytest.raises(DriverError, match=r"no answer from /dev/pts/\d+ within 0.3 s: check"):
            open_driver(f"serial://{os.ttyname(slave)}?timeout=0.3").open()
    finally:
        os.close(slave)
        os.close(master)


@contextlib.contextmanager
def tcp_server(serve):
    """A local TCP port; ``serve(conn, stop)`` handles the first connection on a thread.
    Yields the port's socket:// URL."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run():
        conn, _ = server.accept()
        with conn:
            serve(conn, stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"socket://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        server.close()


@contextlib.contextmanager
def fake_device(answer: bytes):
    """A TCP port that sends ``answer`` again and again to whoever connects."""

    def serve(conn, stop):
        with contextlib.suppress(OSError):  # the driver hangs up when it has seen enough
            while not stop.wait(0.05):
                conn.sendall(answer)

    with tcp_server(serve) as url:
        yield url + "?timeout=2"  # the driver waits it out, seeing no frame of its own


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (wire.encode(wire.Heartbeat(0), 0, version=1) * 50,
         "^socket://127.0.0.1:[0-9]+ speaks mea-control wire protocol version 1, this "
         "mea-control speaks version 2: update the device's firmware to protocol version 2$"),
        (bytes(range(256)) * 8, "not in the mea-control wire protocol"),
        (wire.encode(wire.Error(1, "busy: another host is connected"), 0),
         "refused the connection: error 1: busy"),
    ],
    ids=["other-version", "garbage", "error-frame"],
)
def test_handshake_errors_say_what_answered(answer, message):
    with fake_device(answer) as url, pytest.raises(DriverError, match=message):
        open_driver(url).open()


def test_nothing_listening_on_a_socket():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(DriverError, match="cannot open socket://127.0.0.1.*listening there"):
        open_driver(f"socket://127.0.0.1:{port}").open()


# -- faults on the link -----------------------------------------------------------------------
@contextlib.contextmanager
def spoiling_proxy(target: str, drop: set[int], corrupt: set[int]):
    """A TCP proxy that loses or spoils the device's frames with the given sequence numbers."""
    host, port = target.removeprefix("socket://").rsplit(":", 1)

    def pump(src, dst, frames: bool, stop: threading.Event):
        decoder = wire.FrameDecoder()
        src.settimeout(0.1)
        while not stop.is_set():
            try:
                data = src.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if frames:
                out = b""
                for frame in decoder.feed(data):
                    raw = bytearray(wire.encode(frame.message, frame.seq))
                    if frame.seq in corrupt:
                        raw[-6] ^= 0x55
                    if frame.seq not in drop:
                        out += raw
                data = out
            try:
                dst.sendall(data)
            except OSError:
                break

    def serve(client, stop):
        with socket.create_connection((host, int(port))) as device:
            threads = [threading.Thread(target=pump, args=(device, client, True, stop)),
                       threading.Thread(target=pump, args=(client, device, False, stop))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    with tcp_server(serve) as url:
        yield url


def test_lost_and_spoiled_frames_are_counted_and_reported():
    with serving(TcpLink) as link, \
            spoiling_proxy(link.name, drop={40, 41}, corrupt={60}) as url, \
            connected(url) as driver:
        blocks = [e for e in read_until(driver, blocks_to(2500)) if isinstance(e, Block)]
        starts = [b.start_sample for b in blocks]
        assert len(starts) == 100 - 3 and starts == sorted(starts)
        gaps = [b.start_sample - a.stop_sample for a, b in zip(blocks, blocks[1:], strict=False)]
        assert sorted(g for g in gaps if g) == [25, 50]  # nothing filled in
        events = driver.drain_events()
        kinds = [kind for kind, _ in events]
        assert kinds.count("link_gap") == 2 and "link_error" in kinds
        assert any("2 frame(s)" in m for _, m in events) and any("bad CRC" in m for _, m in events)
        stats = driver.link_stats()
        assert stats["frames_lost"] == 3 and stats["crc_errors"] == 1


def test_losing_the_link_mid_run_is_a_clear_error():
    with serving(TcpLink) as link:
        driver = open_driver(device_url(link))
        driver.open()
        driver.start(25)
        read_until(driver, blocks_to(250))
    # the device has gone
    with pytest.raises(DriverError, match="lost the link to socket://.*stopped answering"):
        read_until(driver, lambda e: False, timeout=5.0)
    driver.close()


def test_a_busy_device_says_so():
    with serving(TcpLink) as link, connected(link.name), \
            pytest.raises(DriverError, match="another host"):
        open_driver(link.name).open()


# -- the CLI ---------------------------------------------------------------------------------
def test_devices_lists_the_simulator_and_answers(capsys):
    with serving(TcpLink) as link:
        # the served device gets a margin a busy machine keeps; the machine's own ports
        # (whatever they are) the default's fraction of it
        ours = f"{link.name}?timeout=10"
        assert cli.main(["devices", "--timeout", "0.5", ours, "socket://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sim://")
    assert f"{ours}  mea-control-sim/" in out and "64 channels at 25 kHz" in out
    assert "socket://127.0.0.1:9  no mea-control device: cannot open" in out
    for scheme in ("rhx://", "pulsepal://", "cl://"):  # each vendor driver's own search
        assert f"\n{scheme}" in out


@pytest.mark.parametrize(("serve_args", "sim_query"), [([], ""), (["--spikes-only"], "&raw=0")])
def test_served_device_gives_the_in_process_trial_table(tmp_path, serve_args, sim_query):
    """`sim serve --pty` in one process, `run --device serial://` in another, in real time.

    The watchdog and the device's dead-man switch get seconds, not their defaults: this
    compares results on a machine that may be busy (both are tested on their own)."""
    bss = ["run", "protocols/bss_isomura.py", "--param", "sessions=1", "--quiet",
           "--param", "trials_per_session=6", "--param", "isi_s=0.4"]
    # the in-process run meanwhile, on the other core: the served one mostly waits
    in_process = subprocess.Popen(
        cli_command(*bss, "--device", f"sim://?seed=5{sim_query}", "--fast", "--trials",
                    str(tmp_path / "sim.npz")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    server = subprocess.Popen(cli_command("sim", "serve", "--pty", "--seed", "5",
                                          "--host-timeout-ms", "3000", *serve_args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving on /dev/pts/"), server.stderr.read()
        pty = line.split()[-1]
        over_link = subprocess.run(
            cli_command(*bss, "--device", f"serial://{pty}", "--watchdog-ms", "3000", "--trials",
                        str(tmp_path / "serial.npz"), "--record", str(tmp_path / "serial.nwb")),
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert over_link.returncode == 0, over_link.stderr
    finally:
        server.terminate()
        _, err = server.communicate(timeout=10)
    assert server.returncode == 0, err
    assert "host connected" in err and "host gone" in err
    _, err = in_process.communicate(timeout=60)
    assert in_process.returncode == 0, err
    a, b = TrialTable.load_npz(tmp_path / "serial.npz"), TrialTable.load_npz(tmp_path / "sim.npz")
    assert len(a) == 6 and (a.status == "executed").any()
    for name in ("o", "s", "r", "r_pre", "trigger_sample", "stim_sample", "status"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # the device's name ("mea-control-sim/<version> on /dev/pts/N") is no NWB name as it is
    with recording.open(tmp_path / "serial.nwb") as rec:
        assert rec.complete and np.array_equal(rec.trials.r, a.r)
