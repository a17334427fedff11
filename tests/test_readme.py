"""The README's protocol example runs as written."""

import re

from conftest import ROOT

from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.protocol import load_protocol


def test_readme_protocol_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    example = re.search(r"### Write your own protocol.*?```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "echo_burst.py"
    path.write_text(example)
    cls, _ = load_protocol(str(path))
    driver = open_driver("sim://?seed=1")
    driver.open()
    engine = Engine(driver, cls(), EngineConfig(fast=True, duration_s=20.0))
    summary = engine.run()
    driver.close()
    assert summary["error"] is None and summary["stims_refused"] == 0
    assert summary["stims_executed"] > 0
    label_44 = engine.info.layout.channel("44")
    assert all(r.pattern.channels == (label_44,) for r in engine.patterns.recent)


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
