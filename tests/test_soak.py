"""Long runs with defaults: the fast path is offered where nothing uses the voltage, and the
soak benchmark (benchmarks/soak.py) keeps working."""

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, cli_command

ON_BLOCK = '''
from mea_control.protocol import Protocol


class Watcher(Protocol):
    """Looks at the voltage of every block."""

    name = "watcher"

    def on_block(self, ctx, block, filtered):
        pass
'''

HINT = re.compile(r"^\[fast\] nothing in this run uses the voltage: --device '([^']+)' "
                  r"--block-ms 100 ", re.M)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.mark.parametrize(("protocol", "extra", "hinted"), [
    ("bss_isomura", ["--fast"], True),
    ("bss_isomura", ["--fast", "--record", "{tmp}/r.nwb", "--no-raw"], True),
    ("bss_isomura", ["--fast", "--record", "{tmp}/r.nwb"], False),  # the voltage is recorded
    ("bss_isomura", ["--fast", "--device", "sim://?seed=2&raw=1"], False),  # asked for
    ("{tmp}/watcher.py", ["--fast"], False),  # its on_block reads the voltage
    ("bss_isomura", [], False),  # real time: the voltage costs no time
])
def test_fast_run_says_how_to_skip_the_voltage_only_when_nothing_uses_it(tmp_path, protocol,
                                                                            extra, hinted):
    (tmp_path / "watcher.py").write_text(ON_BLOCK)
    args = [a.replace("{tmp}", str(tmp_path)) for a in [protocol, *extra]]
    proc = run_cli("run", *args, "--duration", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert bool(HINT.search(proc.stderr)) == hinted, proc.stderr


def test_the_offered_fast_path_runs_the_same_trials(tmp_path):
    """The hint's own command line runs, spikes only, and gives the same trials."""
    common = ["run", "bss_isomura", "--fast", "--sessions", "1", "--param",
              "trials_per_session=8"]
    default = run_cli(*common, "--device", "sim://?seed=5",
                      "--summary-json", str(tmp_path / "a.json"))
    assert default.returncode == 0, default.stderr
    found = HINT.search(default.stderr)
    assert found and found.group(1) == "sim://?seed=5&raw=0"
    fast = run_cli(*common, "--device", found.group(1), "--block-ms", "100",
                   "--summary-json", str(tmp_path / "b.json"))
    assert fast.returncode == 0, fast.stderr
    assert not HINT.search(fast.stderr)
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["trials"] == b["trials"] == 8
    assert a["stims_executed"] == b["stims_executed"] > 0


def test_soak_quick_reports_memory_threads_and_file_size():
    proc = subprocess.run([sys.executable, "benchmarks/soak.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "wall s   RSS MB  threads  procs   file MB" in out
    rows = re.findall(r"^ +\d+ +([\d.]+) +(\d+) +(\d+) +([\d.]+)$", out, re.M)
    assert len(rows) >= 3
    assert max(int(r[2]) for r in rows) == 2  # the CLI and its recording process were seen
    assert float(rows[-1][3]) > 100  # a minute of 64 channels at 25 kHz is ~190 MB
    assert "simulated 60 s" in out
    assert re.search(r"memory slope over the second half: [-+][\d.]+ MB per wall hour", out)
