"""`mea-control`: run protocols on a device or the simulator.

Errors a user can cause print one line on stderr and exit with code 2; a
protocol that raises prints its traceback and exits with code 1.

One module per command group: run (run, demo), files (info, recover, export),
analysis (analyze, replay), gui, devices (devices, sim serve), protocols; console
holds what they share (exit codes, the terminal, signals), options the option types.
"""

from __future__ import annotations

import argparse
import sys

from mea_control import __version__
from mea_control.cli import analysis, devices, files, gui, protocols, run
from mea_control.cli.console import (
    EXIT_CLOSED_PIPE,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    Terminated,
    UserError,
    say,
    silence_closed_output,
)
from mea_control.driver import DriverError
from mea_control.protocol import ProtocolError
from mea_control.recording.errors import RecordingError
from mea_control.rig import RigFileError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"mea-control: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mea-control",
        description="Closed-loop acquisition and stimulation for MEA cultures.",
    )
    parser.add_argument("--version", action="version", version=f"mea-control {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (run, files, analysis, gui, devices, protocols):  # the order of --help
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            code = _parse_and_run(argv)
        except SystemExit:  # --help, --version or a usage error: printed, maybe not flushed
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed pipe shows here, not in Python's own flush at exit
        return code
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        silence_closed_output()
        return EXIT_CLOSED_PIPE


def _parse_and_run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ProtocolError, DriverError, RigFileError, RecordingError) as exc:
        print(f"mea-control: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        say(sys.stderr, f"mea-control: interrupted{f' ({exc})' if str(exc) else ''}")
        return 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED
