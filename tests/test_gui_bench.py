"""benchmarks/gui.py --quick runs both parts and prints their tables with finite figures."""

import re
import subprocess
import sys

from conftest import ROOT

HEADERS = ("(a) frame cost offscreen", "LiveBuffers.snapshot", "traces update + paint",
           "raster update + paint", "heatmap update + paint", "traces + raster + heatmap",
           "frame (snapshot + every view)", "(b) closed-loop reaction latency", "no GUI",
           "window, rig process", "vs no GUI")


def test_quick_run_prints_both_tables():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gui.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for header in HEADERS:
        assert header in out, header
    assert not re.search(r"\bnan\b|\binf\b", out, re.IGNORECASE)
    # every configuration of (a): window, traces, then the snapshot's median and p95
    for window, traces in (("10", "8"), ("10", "64"), ("60", "8"), ("60", "64")):
        assert re.search(rf"(?m)^ +{window} s +{traces}  LiveBuffers.snapshot +\d+\.\d +\d+\.\d$",
                         out), (window, traces)
    # (b): a run with reactions and latencies in ms, and the window's frame rate
    row = next(line for line in out.splitlines() if line.strip().startswith("window, rig"))
    assert re.search(r"window, rig process +[1-9]\d* +\d+ +\d+( +\d+\.\d\d){3} +\d+/\d+/\d+ "
                     r"+\d+ +\d+ % +\d+\.\d +\d+\.\d$", row), row
