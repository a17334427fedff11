"""The side file: everything but raw samples, appended as it happens, readable after a crash.

A recording ``run.nwb`` keeps ``run.nwb.journal`` beside it while it is being
written. Each line is one JSON object whose ``record`` key says what it is: ``start`` (first
sample), ``spikes`` (a batch, arrays as base64 of little-endian numpy
bytes), ``stim``, ``trial``, ``decision``, ``event`` and ``summary`` (written
at a clean stop). The writer flushes it with the raw samples, so a killed
process loses at most the records of the last flush interval. Reading keeps every
well-formed record; a line that cannot be read (torn by a crash, or damaged: not
JSON, a field missing or of the wrong type, an electrode the array lacks) is counted
in ``torn_lines`` and skipped. At a clean stop (or ``mea-control recover``)
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


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(_int(v) for v in value)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(_number(v) for v in value)


def _anything(value: Any) -> bool:
    return True


_SAMPLES = ("trigger_sample", "decision_sample")
#: The fields the readers use in each kind of record, and what each must be. A record
#: may hold more (a newer writer's); one that lacks a field or holds the wrong type was
#: corrupted and is skipped.
FIELDS: dict[str, dict[str, Any]] = {
    "start": {"first_sample": _int},
    "stim": {"ticket": _int, "label": _text, "status": _text, "reason": _text,
             **{k: _int for k in (*_SAMPLES, "requested_sample", "execution_sample")},
             "offsets": _ints, "pulses": lambda v: isinstance(v, list) and len(v) > 0},
    "pulse": {"channel": _int, "mode": _text, "unit": _text, "durations_us": _numbers,
              "amplitudes": _numbers, "charges": _numbers},
    "trial": {**{k: _int for k in ("index", "session", *_SAMPLES, "stim_sample", "ticket")},
              "status": _text, "o": _ints, "s": _ints, "r": _ints, "r_pre": _ints,
              "stim_channels": _ints, "window": lambda v: _ints(v) and len(v) == 2},
    "decision": {"sample": _int, "choice": _anything, "candidates": _anything,
                 "scores": _anything, "details": _anything},
    "event": {"sample": _int, "kind": _text, "message": _text},
    "summary": {"summary": lambda v: isinstance(v, dict)},
    "spikes": {"sample": _text, "channel": _text, "amplitude_uV": _text},
}


def _valid(kind: Any, record: Any) -> bool:
    fields = FIELDS.get(kind) if isinstance(kind, str) else None
    return (fields is not None and isinstance(record, dict)
            and all(name in record and check(record[name]) for name, check in fields.items()))


@dataclass
class JournalContents:
    """What a side file held: records by kind, spikes concatenated, and how many lines
    could not be read (``torn_lines``: cut short by a crash, or corrupted)."""

    start: dict[str, Any] | None = None
    spikes: SpikeEvents = field(default_factory=SpikeEvents.empty)
    stims: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    torn_lines: int = 0


class _Reader:
    """Checks each line's record against :data:`FIELDS` and the recording's channels."""

    def __init__(self, n_channels: int | None) -> None:
        self.n_channels = n_channels
        self.out = JournalContents()
        self.batches: list[SpikeEvents] = []

    def line(self, line: str) -> None:
        try:
            record = json.loads(line)
            kind = record.pop("record")
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError, RecursionError):
            self.out.torn_lines += 1
            return
        if not _valid(kind, record) or not self._take(kind, record):
            self.out.torn_lines += 1

    def _channel(self, channel: int) -> bool:
        return channel >= 0 and (self.n_channels is None or channel < self.n_channels)

    def _take(self, kind: str, record: dict[str, Any]) -> bool:
        """Keep a well-formed record; False if its values cannot be right."""
        out = self.out
        if kind == "spikes":
            return self._spikes(record)
        if kind == "stim":
            if not all(_valid("pulse", p) and self._channel(p["channel"])
                       and len(p["durations_us"]) == len(p["amplitudes"])
                       for p in record["pulses"]):
                return False
        elif kind == "trial" and not self._trial_fits(record):
            return False
        if kind in ("start", "summary"):
            setattr(out, kind, record)
        else:
            getattr(out, f"{kind}s").append(record)
        return True

    def _trial_fits(self, trial: dict[str, Any]) -> bool:
        """Responses for every channel, and the widths of the run's first trial."""
        n = self.n_channels if self.n_channels is not None else len(trial["r"])
        if len(trial["r"]) != n or len(trial["r_pre"]) != n:
            return False
        first = self.out.trials[0] if self.out.trials else trial
        return all(len(trial[k]) == len(first[k]) for k in ("o", "s", "stim_channels"))

    def _spikes(self, record: dict[str, Any]) -> bool:
        try:
            spikes = SpikeEvents(_unpack(record["sample"], "i8"), _unpack(record["channel"], "i2"),
                                 _unpack(record["amplitude_uV"], "f4"))
        except (ValueError, TypeError):  # bad base64, a cut array, lengths that differ
            return False
        if len(spikes) and not (self._channel(int(spikes.channel.min()))
                                and self._channel(int(spikes.channel.max()))):
            return False
        self.batches.append(spikes)
        return True


def read_journal(path: str | Path, n_channels: int | None = None) -> JournalContents:
    """Read a side file. A line that cannot be read (cut short by a crash, corrupted: not
    JSON, an unknown kind, a field missing or of the wrong type, an electrode beyond
    ``n_channels``) is counted in ``torn_lines`` and skipped; the rest is kept."""
    reader = _Reader(n_channels)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            reader.line(line)
    reader.out.spikes = SpikeEvents.concat(reader.batches)
    return reader.out
