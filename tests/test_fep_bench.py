"""benchmarks/fep.py --quick runs every part and prints its tables with finite figures."""

import os
import re
import subprocess
import sys

from conftest import ROOT

HEADERS = ("fep.analyze, real culture", "closed-loop step", "CPU p50 us", "simulated: ",
           "n_g1/n_g2 corr_post mse_post", "real cultures", "per condition, mean",
           "training: ", "share (separation / mean response) after n",
           "trials to the published sequence's end share", "replay of the real cultures",
           "identify, mix50, shuffled: trials to the criterion", "control, mix0, shuffled")


def test_quick_run_prints_every_table(isomura_data):
    env = {**os.environ, "MEA_CONTROL_ISOMURA_DATA": str(isomura_data)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fep.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for header in HEADERS:
        assert header in out, header
    assert not re.search(r"\bnan\b|\binf\b", out, re.IGNORECASE)
    # the timing rows and a simulated culture's row carry numbers
    for job, method in (("control", "efe"), ("identify", "targeted"), ("identify", "infomax")):
        row = next(line for line in out.splitlines() if line.split()[:2] == [job, method])
        assert len(re.findall(r"\d+", row)) >= 5
    assert re.search(r"control seed 0 +\d+/\d+ +-?\d\.\d{3}", out)
