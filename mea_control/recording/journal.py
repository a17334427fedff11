"""The side file: everything but raw samples, appended as it happens, readable after a crash.

A recording ``run.nwb`` keeps ``run.nwb.journal`` beside it while it is being
written. Each line is one JSON object whose ``record`` key says what it is: ``start`` (first
sample), ``spikes`` (a batch, arrays as base64 of little-endian numpy
bytes), ``stim``, ``trial``, ``decision``, ``event`` and ``summary`` (written
at a clean stop). The writer flushes it with the raw samples, so a killed
process loses at most the records of the last flush interval; a torn last
line is ignored when reading. At a clean stop (or ``mea-control recover``)
the records become the NWB file's tables and the side file is deleted.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mea_control.types import SpikeEvents

SUFFIX = ".journal"


def journal_path(nwb_path: str | Path) -> Path:
    return Path(f"{nwb_path}{SUFFIX}")


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                            .tobytes()).decode("ascii")


def _unpack(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


class Journal:
    """Appends records to the side file (one writer at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, kind: str, record: dict[str, Any]) -> None:
        """Append one record of ``kind`` (start, stim, trial, decision, event, summary)."""
        self._file.write(json.dumps({"record": kind, **record}, default=_jsonable) + "\n")

    def write_spikes(self, spikes: SpikeEvents) -> None:
        self.write("spikes", {
            "sample": _pack(spikes.sample),
            "channel": _pack(spikes.channel),
            "amplitude_uV": _pack(spikes.amplitude_uV),
        })

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


@dataclass
class JournalContents:
    """What a side file held: records by kind, spikes concatenated, and whether it was torn."""

    start: dict[str, Any] | None = None
    spikes: SpikeEvents = field(default_factory=SpikeEvents.empty)
    stims: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    torn_lines: int = 0


def read_journal(path: str | Path) -> JournalContents:
    """Read a side file; a line cut short by a crash is counted in ``torn_lines`` and skipped."""
    out = JournalContents()
    batches: list[SpikeEvents] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
                kind = record.pop("record")
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                out.torn_lines += 1
                continue
            if kind == "spikes":
                try:
                    batches.append(SpikeEvents(
                        _unpack(record["sample"], "i8"),
                        _unpack(record["channel"], "i2"),
                        _unpack(record["amplitude_uV"], "f4"),
                    ))
                except (KeyError, ValueError, TypeError):
                    out.torn_lines += 1
            elif kind == "start":
                out.start = record
            elif kind == "summary":
                out.summary = record
            elif kind in ("stim", "trial", "decision", "event"):
                getattr(out, f"{kind}s").append(record)
    out.spikes = SpikeEvents.concat(batches)
    return out
