"""Process faults over the real wire (issue 19): a recorded ``mea-control run`` over
serial:// is killed (SIGKILL, SIGKILL with the port held open, SIGTERM); the file opens (and
recovers after SIGKILL) and the served device's own log shows no pulse later than its
host_timeout_ms after the kill. The harness is benchmarks/kill.py (50 random kills)."""

import signal
import sys

import pytest
from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kill import HOST_TIMEOUT_MS, Kill, check_device, kill_run  # noqa: E402

FS = 25_000.0
#: A busy 2-core machine: the device's reaction may take this much beyond host_timeout_ms.
MARGIN_MS = 1000.0


@pytest.mark.parametrize(("sig", "delay_s", "hold"), [
    (signal.SIGKILL, 0.2, False),
    (signal.SIGKILL, 1.0, True),  # the port stays open: only the missing heartbeat tells
    (signal.SIGTERM, 0.2, False),
    (signal.SIGTERM, 1.0, False),
], ids=["sigkill", "sigkill-port-held", "sigterm-early", "sigterm"])
def test_a_killed_run_leaves_a_readable_file_and_no_pulse_after_the_hosts_timeout(
        tmp_path, sig, delay_s, hold):
    kill = kill_run(tmp_path, sig, delay_s, hold=hold, margin_ms=MARGIN_MS)
    assert kill.problems == []
    assert kill.pulses > 0 and kill.late == []
    if sig == signal.SIGKILL:
        assert kill.state == "incomplete" and kill.recovered
        # the dead-man switch when the port stays open, else the port's hang-up (the device
        # ends the session: "stop", then "host_gone")
        assert kill.end_kind == ("host_timeout" if hold else "stop")
    else:
        assert kill.exit_code == 143 and kill.state == "complete"
        assert kill.end_kind == "abort"  # the CLI aborted before it finished the file


# -- the log check can fail ----------------------------------------------------------------
def _log(*entries):
    return [{"kind": "start", "wall": 100.0, "sample": 0}, *entries]


def _pulse(sample):
    return {"kind": "pulse", "wall": 100.0 + sample / FS, "sample": sample, "ticket": 1,
            "channel": 9}


def _checked(log, died=101.0):
    kill = Kill("SIGKILL", 1.0)
    check_device(log, died, FS, HOST_TIMEOUT_MS, 250.0, kill)
    return kill


def test_the_check_passes_pulses_before_the_device_ended_stimulation():
    kill = _checked(_log(_pulse(20_000), _pulse(30_000),
                         {"kind": "host_timeout", "wall": 101.3, "sample": 32_500}))
    assert kill.problems == [] and kill.pulses == 2
    assert kill.death_to_last_pulse_ms == pytest.approx(200.0)
    assert kill.death_to_end_ms == pytest.approx(300.0)


def test_the_check_finds_a_pulse_after_the_devices_end_and_one_past_the_timeout():
    after_end = _checked(_log(_pulse(26_000), {"kind": "host_gone", "wall": 101.0,
                                               "sample": 25_100}))
    assert len(after_end.late) == 1 and after_end.problems
    no_end = _checked(_log(_pulse(25_000 + 14_000)))  # 560 ms after the kill, no end entry
    assert len(no_end.late) == 1
    assert "never stopped" in no_end.problems[0]
