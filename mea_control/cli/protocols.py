"""`mea-control protocols`: the shipped protocols and their parameters."""

from __future__ import annotations

import argparse
from typing import Any

from mea_control.protocol import load_protocol, shipped_protocols


def cmd_protocols(args: argparse.Namespace) -> int:
    for name, path in shipped_protocols().items():
        cls, _ = load_protocol(str(path))
        print(f"{name}: {cls.describe()}")
        for pname, p in cls.parameters.items():
            line = f"    {pname:<20} {p.describe()}"
            if p.help:
                line += f"  -- {p.help}"
            print(line)
    return 0


def add_commands(sub: Any) -> None:
    """Add this module's commands to the subparsers ``sub``."""
    protocols = sub.add_parser("protocols", help="list shipped protocols and their parameters")
    protocols.set_defaults(func=cmd_protocols)
