"""serial:// on a spoiled link: garbage, flipped bits, truncated, lost, duplicated and reordered
frames, a silent device, a port that vanishes mid-run (the simulated device's LinkFaults)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import ROOT, cli_command, read_until, wait_until
from test_device import serving
from test_serial import PULSE, blocks_to, connected, device_url

from hardware_sim.device import LinkFaults
from mea_control import recording
from mea_control.driver import DriverError, open_driver
from mea_control.types import Block, StimPattern


def reference_blocks(stop: int) -> dict[int, np.ndarray]:
    """The in-process simulator's blocks (same seed and block size), by start sample."""
    sim = open_driver("sim://?seed=4")
    sim.open()
    sim.set_fast(True)
    sim.start(25)
    out = {}
    while (block := sim.read()).start_sample < stop:
        out[block.start_sample] = block.data
    return out


def reported_ranges(events: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """The sample ranges the link_gap events name."""
    out = []
    for kind, message in events:
        if kind == "link_gap":
            if m := re.search(r"samples (\d+) to (\d+) affected", message):
                out.append((int(m[1]), int(m[2])))
            elif m := re.search(r"before sample (\d+) affected", message):
                out.append((0, int(m[1])))
    return out


def test_a_spoiled_link_delivers_only_intact_blocks_in_order_and_reports_every_loss():
    faults = LinkFaults(garbage=0.02, drop=0.02, flip=0.02, truncate=0.02, dup=0.03,
                        reorder=0.03, seed=7)
    with serving(faults=faults) as link, connected(device_url(link)) as driver:
        blocks = [e for e in read_until(driver, blocks_to(25_000)) if isinstance(e, Block)]
        time.sleep(0.2)  # the reader's last counts
        events, stats = driver.drain_events(), driver.link_stats()
    assert all(faults.counts[k] > 0 for k in ("garbage", "drop", "flip", "truncate", "dup",
                                              "reorder"))
    starts = [b.start_sample for b in blocks]
    assert starts == sorted(set(starts)), "a block twice or out of order"
    expected = reference_blocks(30_000)
    for block in blocks:  # never a spoiled block
        assert np.array_equal(block.data, expected[block.start_sample]), block.start_sample
    missing, end = [], 0
    for block in blocks:
        if block.start_sample > end:
            missing.append((end, block.start_sample))
        end = block.stop_sample
    assert missing, "the faults lost blocks"
    assert [r for r in reported_ranges(events) if r[1] <= starts[-1]] == missing
    assert stats["duplicates"] > 0 and stats["out_of_order"] > 0
    assert stats["crc_errors"] > 0 and stats["garbage_bytes"] > 0
    assert stats["frames_lost"] >= sum(b - a for a, b in missing) // 25
    assert any("duplicated" in m and "out-of-order" in m for _, m in events)


def test_a_silent_device_is_a_lost_link_and_its_patterns_are_cancelled():
    log: list[dict] = []
    with serving(faults=LinkFaults(silent_at=2500), pulse_log=log.append) as link, \
            connected(device_url(link)) as driver:
        read_until(driver, blocks_to(1000))
        driver.stimulate(StimPattern.single([10], PULSE, at_sample=200_000))  # in 8 s
        tick = time.monotonic()
        with pytest.raises(DriverError, match="sent nothing for 3 s .*the device hung or the "
                           "link broke; stimulation is stopped"):
            read_until(driver, lambda e: False, timeout=30)
        assert time.monotonic() - tick < 10
        wait_until(lambda: any(e["kind"] in ("abort", "host_timeout") for e in log),
                   what="the device's cancelling")
    assert not any(e["kind"] == "pulse" for e in log)


def test_faults_parse_from_the_command_line_form():
    faults = LinkFaults.parse("garbage=0.01,flip=0.02, dup=0.5,silent_at=100,seed=3")
    assert (faults.garbage, faults.flip, faults.dup, faults.silent_at, faults.seed) == (
        0.01, 0.02, 0.5, 100, 3)
    with pytest.raises(ValueError, match="unknown fault 'bits'; accepted: garbage, drop"):
        LinkFaults.parse("bits=0.1")
    with pytest.raises(ValueError, match="a probability is 0 to 1"):
        LinkFaults.parse("flip=2")


def test_the_port_vanishing_mid_run_ends_the_run_and_the_recording_opens(tmp_path):
    """`sim serve` is killed (the USB cable pulled) during a recorded `run` over its pty."""
    pulse_log = tmp_path / "device.jsonl"
    server = subprocess.Popen(
        cli_command("sim", "serve", "--pty", "--seed", "5", "--pulse-log", str(pulse_log),
                    "--host-timeout-ms", "400", "--faults", "dup=0.01,reorder=0.01,seed=2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    run = None
    try:
        line = server.stdout.readline()
        assert line.startswith("serving on /dev/pts/"), server.stderr.read()
        run = subprocess.Popen(
            cli_command("run", "protocols/bss_isomura.py", "--quiet", "--param", "sessions=1",
                        "--param", "trials_per_session=100", "--param", "isi_s=0.3",
                        "--device", f"serial://{line.split()[-1]}",
                        "--record", str(tmp_path / "run.nwb")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        wait_until(lambda: any('"start"' in x for x in _lines(pulse_log)), what="streaming")
        time.sleep(2.0)  # into the trials
        server.send_signal(signal.SIGKILL)
        _, err = run.communicate(timeout=60)
    finally:
        server.kill()
        server.communicate(timeout=10)
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode != 0
    assert "lost the link to /dev/pts/" in err, err
    entries = [json.loads(x) for x in _lines(pulse_log)]  # flushed line by line
    assert {"host_connected", "start"} <= {e["kind"] for e in entries}
    with recording.open(tmp_path / "run.nwb") as rec:
        assert rec.complete and rec.n_samples > 0
        kinds = [e["kind"] for e in rec.events]
        assert "device_error" in kinds


def _lines(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
