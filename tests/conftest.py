"""Shared fixtures: tests run offscreen and write their artefacts under tests/output."""

import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(__file__).resolve().parent / "output"


@pytest.fixture
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


#: The published BSS data (Isomura et al. 2023) beside the repository; CI has it.
ISOMURA_DATA = Path(os.environ.get("MEA_CONTROL_ISOMURA_DATA",
                                   ROOT.parent / "shared" / "data" / "isomura2023"))


@pytest.fixture(scope="session")
def isomura_data() -> Path:
    """The folder of the published data; a test that needs it fails loudly without it."""
    if not (ISOMURA_DATA / "expected.json").exists():
        pytest.fail(f"the published data are not at {ISOMURA_DATA}; put the shared data "
                    "beside the repository or set MEA_CONTROL_ISOMURA_DATA")
    return ISOMURA_DATA


def cli_command(*args: str) -> list[str]:
    """The mea-control CLI as a subprocess command line."""
    return [sys.executable, "-m", "mea_control.cli", *args]


def ctrl_c_works() -> None:
    """preexec_fn for a CLI that a test interrupts: a process started with SIGINT ignored
    (a background job of a script, as some CI runners start the suite) passes that on,
    and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(driver, done, timeout: float = 10.0) -> list:
    """A driver's events from read() up to and including the first for which ``done``
    holds; AssertionError if none does within ``timeout`` seconds."""
    import time

    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = driver.read(timeout=0.2)
        if item is not None:
            events.append(item)
            if done(item):
                return events
    raise AssertionError(f"nothing matched within {timeout} s; last events: {events[-3:]}")
