"""benchmarks/protocols.py --quick runs each closed-loop protocol it knows and prints its
latency, loop cost and outcome with finite figures."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT

NUMBER = r"-?\d+(?:\.\d+)?"
#: (protocol, its real-time runs, what its outcome line must say)
ENTRIES = {
    "spike_triggered": (("triggered", "random_delay"), (
        r"\(real-time runs above\): ",
        rf"reaction p99 {NUMBER} samples \(budget 50\), [1-9]\d* pulses ran",
        rf"random-delay control: [1-9]\d* ran of \d+ sent, delay p50 {NUMBER} ms")),
    "burst_quieting": (("stimulated",), (
        r"\(fast runs, 30 s each, seeds 0, sim://\?raw=0&seed=S, 10 ms blocks\): ",
        rf"bursts per minute {NUMBER} stimulated \({NUMBER}\) against {NUMBER} unstimulated "
        rf"\({NUMBER}\): reduction {NUMBER} %; burstiness {NUMBER} against {NUMBER}$")),
    "rate_clamp": (("clamped",), (
        r"\(fast runs, 8 s each, seeds 0, sim://\?raw=0&seed=S, 10 ms blocks\): ",
        rf"target 18 Hz per electrode, reached within 20 % in {NUMBER} s; clamp error "
        rf"\|rate - target\| / target over the held part {NUMBER} % \({NUMBER}\), "
        r"1 of 1 seeds reached$")),
    "pong": (("stimulus",), (
        r"\(fast runs, 10 s each, seeds 0, sim://\?seed=S, 1 ms blocks\): ",
        rf"hit rate {NUMBER} in the stimulus condition \([1-9]\d* balls; per seed {NUMBER}\) "
        rf"against {NUMBER} with no feedback \([1-9]\d* balls; {NUMBER}\)$")),
}


@pytest.fixture(scope="module")
def quick_output():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocols.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quick_run_prints_the_table_with_finite_figures(quick_output):
    assert "latency samples p50/p99/max" in quick_output and "loop us p50/p99" in quick_output
    assert not re.search(r"\bnan\b|\binf\b", quick_output, re.IGNORECASE)


@pytest.mark.parametrize("protocol", ENTRIES)
def test_quick_run_prints_latency_cost_and_outcome_of_each_protocol(quick_output, protocol):
    lines = quick_output.splitlines()
    runs, outcome_parts = ENTRIES[protocol]
    for run in runs:  # pulses ran, latency, loop cost, CPU
        row = next(line for line in lines if line.split()[:2] == [protocol, run])
        assert re.search(rf" [1-9]\d*/\d+/\d+ +{NUMBER}/{NUMBER}/{NUMBER} +{NUMBER}/{NUMBER} "
                         rf"+{NUMBER}/{NUMBER} +{NUMBER}$", row), row
    outcome = next(line for line in lines if f"{protocol} outcome " in line)
    for part in outcome_parts:
        assert re.search(part, outcome), (part, outcome)
