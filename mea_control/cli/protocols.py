"""`mea-control protocols`: the shipped protocols and their parameters."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from mea_control.protocol import Parameter, load_protocol, shipped_protocols

#: Columns of the listing: a protocol's line fits, its parameters' lines wrap to fit.
WIDTH = 100


def cmd_protocols(args: argparse.Namespace) -> int:
    for name, path in shipped_protocols().items():
        cls, _ = load_protocol(str(path))
        print(f"{name}: {cls.describe()}")
        for pname, p in cls.parameters.items():
            print(_parameter_lines(pname, p))
    return 0


def _parameter_lines(name: str, p: Parameter) -> str:
    """``name type = default unit [range] -- help``, indented, wrapped under its text."""
    text = f"{name:<20} {p.describe()}" + (f"  -- {p.help}" if p.help else "")
    return textwrap.fill(text, WIDTH, initial_indent="    ", subsequent_indent=" " * 25,
                         break_long_words=False, break_on_hyphens=False)


def add_commands(sub: Any) -> None:
    """Add this module's commands to the subparsers ``sub``."""
    protocols = sub.add_parser("protocols", help="list shipped protocols and their parameters")
    protocols.set_defaults(func=cmd_protocols)
