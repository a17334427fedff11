"""Shared fixtures: tests run offscreen and write their artefacts under tests/output."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mea_control.fep import published
from mea_control.pulse_history import STATE_DIR_ENV
from mea_control.sinks import Sink

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(__file__).resolve().parent / "output"

#: Seconds a GUI step may take on a busy machine (the rig process starts, compiles, runs).
GUI_WAIT_S = 60.0


@pytest.fixture(scope="session", autouse=True)
def _session_state_dir(tmp_path_factory):
    """Session-wide fixtures keep mea-control's state (pulse histories) out of the user's."""
    before = os.environ.get(STATE_DIR_ENV)
    os.environ[STATE_DIR_ENV] = str(tmp_path_factory.mktemp("state"))
    yield
    if before is None:
        os.environ.pop(STATE_DIR_ENV, None)
    else:
        os.environ[STATE_DIR_ENV] = before


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch) -> Path:
    """Each test's own mea-control state folder (CLI subprocesses inherit it): tests
    neither share pulse histories nor write the user's."""
    folder = tmp_path / "state"
    monkeypatch.setenv(STATE_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def window(qtbot, tmp_path):
    """The main window (offscreen) with its rig in a process of its own, as `mea-control
    gui` runs it, and settings of its own; every question it asks is answered yes and kept
    in ``window.questions``."""
    from PySide6.QtCore import QSettings

    from mea_control.gui.window import MainWindow

    questions = []

    def confirm(question):
        questions.append(question)
        return True

    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat),
                   confirm=confirm)
    w.questions = questions
    qtbot.addWidget(w)
    w.show()
    yield w
    assert w.session.close(timeout=GUI_WAIT_S)


@pytest.fixture
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


#: The figures the authors' implementation gives on the published data (Isomura et al.
#: 2023), kept beside the tests; a data folder's own expected.json takes precedence.
EXPECTED = Path(__file__).resolve().parent / "data" / "isomura2023_expected.json"


def require_isomura_data() -> Path:
    """The folder of the published data. Without it the calling test is skipped, saying how
    to get it (when CI is set, it fails)."""
    folder = published.locate()
    if folder is None:
        tried = ", ".join(str(p) for p in published.candidates())
        skip_or_fail_on_ci(f"the published Isomura 2023 data are not in {tried}: "
                           f"{published.HOW_TO_GET}")
    return folder


def skip_or_fail_on_ci(message: str) -> None:
    """Skip the calling test, saying why; when CI is set, fail it, so that CI can never
    pass by skipping."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def isomura_data() -> Path:
    """The folder of the published data (see require_isomura_data)."""
    return require_isomura_data()


def isomura_expected_path(folder: Path) -> Path:
    """The expected figures for the data in ``folder``."""
    own = folder / "expected.json"
    return own if own.is_file() else EXPECTED


@pytest.fixture(scope="session")
def isomura_expected(isomura_data) -> dict:
    """{condition: {"baseline": ..., "cultures": [figures of each culture]}}."""
    return json.loads(isomura_expected_path(isomura_data).read_text())


@pytest.fixture
def plugin_driver(tmp_path, monkeypatch):
    """Installs a driver as another package ships one: ``install(scheme, source, cls)``
    writes the module ``<scheme>_driver`` and its distribution's metadata, with an entry
    point in the ``mea_control.drivers`` group, into a folder on sys.path."""
    site = tmp_path / "site-packages"
    modules = []

    def install(scheme: str, source: str, cls: str) -> None:
        module = f"{scheme}_driver"
        info = site / f"{module}-1.0.dist-info"
        info.mkdir(parents=True)
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[mea_control.drivers]\n{scheme} = {module}:{cls}\n")
        modules.append(module)
        monkeypatch.syspath_prepend(str(site))

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def cli_command(*args: str) -> list[str]:
    """The mea-control CLI as a subprocess command line."""
    return [sys.executable, "-m", "mea_control.cli", *args]


# Many cases in one interpreter (each subprocess spends seconds importing): each runs the
# CLI's main() as `mea-control` does and reports its exit code, its stderr (with a traceback
# if an exception escaped it) and its stdout.
CLI_BATCH = """
import contextlib, io, json, sys, traceback
from mea_control.cli import main
results = []
for argv in json.load(sys.stdin):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc()
            code = "traceback"
    results.append([code, err.getvalue(), out.getvalue()])
json.dump(results, sys.stdout)
"""


def cli_batch(argvs: list[list[str]], cwd: Path = ROOT, timeout: float = 120) -> list[tuple]:
    """(exit code, stderr, stdout) of each ``mea-control ARGV``, all run by one CLI_BATCH
    process."""
    done = subprocess.run([sys.executable, "-c", CLI_BATCH], input=json.dumps(argvs), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [tuple(result) for result in json.loads(done.stdout)]


def imported_modules(*argv: str) -> set[str]:
    """The modules a fresh ``python -X importtime ARGV`` imports (stdin empty, any exit code)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL)
    return {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:")}


def ctrl_c_works() -> None:
    """preexec_fn for a CLI that a test interrupts: a process started with SIGINT ignored
    (a background job of a script, as some CI runners start the suite) passes that on,
    and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(condition, timeout: float = 60.0, what: str = "the condition") -> None:
    """Poll ``condition()`` until it holds; AssertionError naming ``what`` after ``timeout``
    seconds (a margin a loaded machine keeps: it only costs time when the test fails)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.01)


def read_until(driver, done, timeout: float = 30.0) -> list:
    """A driver's events from read() up to and including the first for which ``done``
    holds; AssertionError if none does within ``timeout`` seconds."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = driver.read(timeout=0.2)
        if item is not None:
            events.append(item)
            if done(item):
                return events
    raise AssertionError(f"nothing matched within {timeout} s; last events: {events[-3:]}")


class _PauseAt(Sink):
    """A sink: the operator pauses the protocol at ``pause`` and resumes it at ``resume``
    (device samples); it keeps the protocol's decisions."""

    def __init__(self, engine, pause: int, resume: int) -> None:
        self.todo = [(pause, engine.pause), (resume, engine.resume)]
        self.decisions: list[tuple[int, dict]] = []

    def on_clock(self, sample: int) -> None:
        if self.todo and sample >= self.todo[0][0]:
            self.todo.pop(0)[1]()

    def on_decision(self, sample: int, decision: dict) -> None:
        self.decisions.append((sample, decision))


def run_paused(protocol, device: str, seconds: float, pause_s: float, resume_s: float):
    """Run ``protocol`` in fast mode on the simulated ``device`` while the operator pauses it
    from ``pause_s`` to ``resume_s`` of device time: (summary, pulses the device ran as
    (sample, ...) rows, decisions as (sample, details), the resume's sample)."""
    from mea_control.driver import open_driver
    from mea_control.engine import Engine, EngineConfig

    driver = open_driver(device)
    driver.open()
    ran: list = []
    driver.pulse_listener = ran.extend
    engine = Engine(driver, protocol, EngineConfig(fast=True, duration_s=seconds))
    fs = engine.info.sample_rate
    operator = _PauseAt(engine, int(pause_s * fs), int(resume_s * fs))
    engine.sinks.append(operator)
    try:
        summary = engine.run()
    finally:
        driver.close()
    resumed = next(e.sample for e in engine.recent_events if e.kind == "resume")
    return summary, ran, operator.decisions, resumed
