"""benchmarks/protocols.py --quick runs each closed-loop protocol it knows and prints its
latency, loop cost and outcome with finite figures."""

import re
import subprocess
import sys

from conftest import ROOT

NUMBER = r"\d+(?:\.\d+)?"


def test_quick_run_prints_latency_cost_and_outcome_of_each_protocol():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocols.py"), "--quick"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "latency samples p50/p99/max" in out and "loop us p50/p99" in out
    assert not re.search(r"\bnan\b|\binf\b", out, re.IGNORECASE)
    for run in ("triggered", "random_delay"):  # pulses ran, latency, loop cost, CPU
        row = next(line for line in out.splitlines()
                   if line.split()[:2] == ["spike_triggered", run])
        assert re.search(rf" [1-9]\d*/\d+/\d+ +{NUMBER}/{NUMBER}/{NUMBER} +{NUMBER}/{NUMBER} "
                         rf"+{NUMBER}/{NUMBER} +{NUMBER}$", row), row
    outcome = next(line for line in out.splitlines() if "spike_triggered outcome:" in line)
    assert re.search(rf"reaction p99 {NUMBER} samples \(budget 50\), [1-9]\d* pulses ran",
                     outcome), outcome
    assert re.search(rf"random-delay control: [1-9]\d* ran of \d+ sent, delay p50 {NUMBER} ms",
                     outcome), outcome
