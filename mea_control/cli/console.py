"""What every command shares: exit codes, one-line errors, the terminal, result files and
the signals that end a command."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

EXIT_PROTOCOL_ERROR = 1
EXIT_USER_ERROR = 2
#: The run ended with stimulation stopped by the watchdog (no one re-armed it).
EXIT_WATCHDOG = 3
#: The run finished but its recording lost raw samples or could not be finished.
EXIT_RECORDING = 4
EXIT_INTERRUPTED = 130
#: A command whose output went to a pipe that closed (`mea-control protocols | head -1`)
#: exits as a Unix tool killed by SIGPIPE does, 128 + 13, but quietly and after its own
#: clean-up (a run still stops, tears down and finishes its recording first).
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE
#: A run ended by `kill` (SIGTERM) or a closed terminal (SIGHUP) exits with 128 + the
#: signal's number, as the shell reports a killed program, after ending as Ctrl-C does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class UserError(Exception):
    """Reported as one line and exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the run ends as on Ctrl-C (the engine stops it cleanly)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While a run is prepared and runs, SIGTERM and SIGHUP end it as Ctrl-C does.

    The first such signal raises :class:`Terminated` in the main thread; later ones are
    ignored, so that a second `kill` cannot cut the recording's last writes short.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        #: False once the run has ended: a signal then only ends what is left of the command.
        self.raising = True

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None and self.raising:
            self.signum = signum
            raise Terminated(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signum is None else 128 + self.signum


def say(stream: Any, text: str, end: str = "\n") -> None:
    """Write to the terminal, which may be gone (SIGHUP): the run goes on without it."""
    try:
        stream.write(text + end)
        stream.flush()
    except (OSError, ValueError):
        pass


def silence_closed_output() -> None:
    """After a write to a closed pipe: send what stdout or stderr still holds nowhere, so
    that Python's flush at exit neither fails nor prints a second traceback."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass


class Progress:
    """A progress bar on stderr; plain lines every 10 % when stderr is not a terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_decile = -1
        self.started = time.monotonic()

    def __call__(self, fraction: float, text: str) -> None:
        if not self.enabled:
            return
        if 0.01 <= fraction < 1.0:
            left = (time.monotonic() - self.started) * (1.0 - fraction) / fraction
            text += f", about {left:.0f} s left"
        if self.tty:
            bar = "#" * int(fraction * 30)
            say(sys.stderr, f"\r[{bar:<30}] {fraction * 100:5.1f}% {text}   ", end="")
        elif int(fraction * 10) > self.last_decile:
            self.last_decile = int(fraction * 10)
            say(sys.stderr, f"{fraction * 100:5.1f}% {text}")

    def close(self) -> None:
        if self.enabled and self.tty:
            say(sys.stderr, "")


def check_writable(path: str | None, what: str) -> None:
    """Fail before the run, not after it, if a result file cannot be written."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"cannot write {what} to {path}: it is a folder; give a file name")
    if not target.resolve().parent.is_dir():
        raise UserError(f"cannot write {what} to {path}: folder {target.parent} does not exist")
    existed = target.exists()
    try:
        with open(target, "ab"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what} to {path}: {exc.strerror}") from None
    if not existed:
        os.unlink(target)
