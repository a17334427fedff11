"""Finding RHX on this computer without connecting (RHX takes one client per Connect)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def rhx_servers() -> list[tuple[str, str]]:
    """RHX command servers listening on this computer, found without connecting.

    Connecting would use up the server: RHX takes one client per Connect click. So this
    looks for a listening TCP port 5000 in the kernel's socket table (Linux only).
    """
    found = []
    try:
        for port in _listening_ports():
            if port == 5000:
                found.append(("rhx://127.0.0.1:5000?waveform=5001&spikes=5002",
                              "a server listens on port 5000, RHX's command port (not "
                              "probed: RHX takes one client per Connect; run with --rig)"))
    except OSError:
        return []
    return found


def _listening_ports(tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6"),
                     opener: Callable[[str], Any] = open) -> set[int]:
    ports = set()
    for path in tables:
        if not os.path.exists(path):
            continue
        with opener(path) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
