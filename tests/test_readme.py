"""The README's protocol example runs as written."""

import re
import shlex

import numpy as np
from conftest import ROOT, cli_batch

from mea_control import recording
from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.layouts import load_layout
from mea_control.protocol import load_protocol


def readme_block(after, kind="python"):
    """The README's first ```kind block after the text ``after`` (a regex)."""
    text = (ROOT / "README.md").read_text()
    return re.search(after + rf".*?```{kind}\n(.*?)```", text, re.S).group(1)


def readme_protocol(path, after=r"### Write your own protocol"):
    """The README's protocol example after ``after``, copied into ``path`` as a user would."""
    path.write_text(readme_block(after))
    return path


def test_readme_protocol_example_echoes_and_a_refusal_waits_for_the_hold_off(tmp_path):
    """Through `mea-control run` on the simulator: it stimulates electrode 44 with its train;
    under a rig whose rate limit refuses all but the first train, each refused echo still
    waits for the hold-off (no retry on every block) and no refusal escapes its hook."""
    path = readme_protocol(tmp_path / "echo_burst.py")
    (tmp_path / "rig.toml").write_text(  # 3 pulses in any 30 s: one train of 3
        '[rig]\nname = "strict"\n[limits]\nmean_rate_hz = 0.1\nmean_window_s = 30\n')
    runs = {"default": [], "strict": ["--rig", str(tmp_path / "rig.toml")]}
    results = cli_batch([["run", str(path), "--fast", "--duration", "20", "--quiet",
                          "--record", str(tmp_path / f"{name}.nwb"), "--no-raw", *extra]
                         for name, extra in runs.items()])
    assert [code for code, *_ in results] == [0, 0], results
    label_44 = load_layout().channel("44")
    with recording.open(tmp_path / "default.nwb") as r:
        ran = np.asarray(r.pulses["execution_sample"])[np.asarray(r.pulses["status"]) ==
                                                       "executed"]
        assert set(np.asarray(r.pulses["electrode"]).tolist()) == {label_44}
        assert not any(e["kind"].startswith("refusal") for e in r.events)
    trains = ran.reshape(-1, 3)  # 3 pulses at 100 Hz per echo, at least 200 ms apart
    assert len(trains) >= 5 and (np.diff(trains, axis=1) == 250).all()
    assert (np.diff(trains[:, 0]) >= 5000).all()
    with recording.open(tmp_path / "strict.nwb") as r:
        executed = np.asarray(r.pulses["status"]) == "executed"
        refused = [e["sample"] for e in r.events if e["kind"] == "refusal"]
        uncaught = [e for e in r.events if e["kind"] == "refusal_uncaught"]
    assert executed.sum() == 3 and len(refused) >= 3 and not uncaught
    assert min(np.diff(refused)) >= 5000  # 200 ms at 25 kHz: the hold-off, not a block


def test_readme_fep_example_runs(isomura_data, monkeypatch, capsys):
    example = readme_block(r"### The free-energy model in scripts")
    monkeypatch.chdir(isomura_data)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("(15, 17) 0.79")


def test_readme_responses_example_runs(tmp_path):
    path = readme_protocol(tmp_path / "probe.py", after=r"the `Responses`\nhelper")
    cls, _ = load_protocol(str(path))
    protocol = cls()
    driver = open_driver("sim://?seed=1")
    driver.open()
    summary = Engine(driver, protocol, EngineConfig(fast=True, duration_s=2.0)).run()
    driver.close()
    assert summary["error"] is None and summary["stims_executed"] == 10
    assert protocol.evoked > 0 and protocol.responses.waiting <= 1


def test_readme_protocol_started_from_a_shipped_one_shows_what_it_says(tmp_path):
    """io_curve.py, run by the README's command line through `mea-control run` on the
    simulator, prints the lines the README shows (it ends by itself after its 50 pulses, the
    curve rising from nothing at 1 uA); under a rig whose max_current_uA is below max_uA
    it does not start and names max_uA, as the README quotes."""
    after = r"#### Start from a shipped protocol"
    readme_protocol(tmp_path / "io_curve.py", after)
    [command] = [line for line in readme_block(after + r".*?```python.*?```", "").splitlines()
                 if line.startswith(".venv/bin/mea-control run io_curve.py")]
    argv = shlex.split(command)[1:]
    shown = readme_block(after + r".*?```python.*?```.*?```.*?```", "").splitlines()
    (tmp_path / "rig.toml").write_text('[rig]\nname = "r"\n[limits]\nmax_current_uA = 4\n')
    (code, _, stdout), (refused, stderr, _) = cli_batch(
        [argv, [*argv, "--rig", "rig.toml"]], cwd=tmp_path)
    assert code == 0 and [line for line in stdout.splitlines() if line in shown] == shown, stdout
    assert "1 uA 0.0, " in shown[-1]
    assert refused == 2 and "InputOutput cannot start: max_uA = 5 uA exceeds max_current_uA = " \
        "4 uA (the rig's limit)" in stderr
