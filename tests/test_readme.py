"""The README's protocol example runs as written."""

import re

import numpy as np
from conftest import ROOT, cli_batch

from mea_control import recording
from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.layouts import load_layout
from mea_control.protocol import load_protocol


def readme_protocol(folder):
    """The README's protocol example, copied into a file as a user would."""
    text = (ROOT / "README.md").read_text()
    example = re.search(r"### Write your own protocol.*?```python\n(.*?)```", text, re.S).group(1)
    path = folder / "echo_burst.py"
    path.write_text(example)
    return path


def test_readme_protocol_example_echoes_and_a_refusal_waits_for_the_hold_off(tmp_path):
    """Through `mea-control run` on the simulator: it stimulates electrode 44 with its train;
    under a rig whose rate limit refuses all but the first train, each refused echo still
    waits for the hold-off (no retry on every block) and no refusal escapes its hook."""
    path = readme_protocol(tmp_path)
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
    text = (ROOT / "README.md").read_text()
    example = re.search(r"### The free-energy model in scripts.*?```python\n(.*?)```", text,
                        re.S).group(1)
    monkeypatch.chdir(isomura_data)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("(15, 17) 0.79")


def test_readme_responses_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    example = re.search(r"the `Responses`\nhelper.*?```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "probe.py"
    path.write_text(example)
    cls, _ = load_protocol(str(path))
    protocol = cls()
    driver = open_driver("sim://?seed=1")
    driver.open()
    summary = Engine(driver, protocol, EngineConfig(fast=True, duration_s=2.0)).run()
    driver.close()
    assert summary["error"] is None and summary["stims_executed"] == 10
    assert protocol.evoked > 0 and protocol.responses.waiting <= 1
