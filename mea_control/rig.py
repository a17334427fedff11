"""Rig files: one TOML file per rig, read once into a :class:`Rig` and handed on.

The CLI reads ``--rig FILE`` with :func:`load_rig` and passes the :class:`Rig` to whoever
needs a table of it: the safety gate its ``[limits]`` (checked by
:func:`mea_control.limits.limits_from_table`), the pulse history ``[rig] pulse_history``,
the recording ``[recording]`` (:meth:`Rig.recording_defaults`), and the driver, as its
``rig`` option, ``[channels]`` and ``[stimulator]`` (each driver of a real rig reads its
own kind of those; see its docs). A driver opened without the CLI may name a rig file in
its URL (``?rig=FILE``); :func:`rig_option` reads it then. See docs/safety.md.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mea_control.limits import LIMIT_NAMES, SafetyLimits, limits_from_table

#: The tables a rig file may have.
TABLES = ("rig", "limits", "recording", "channels", "stimulator")
#: The keys of ``[recording]``: NWB session fields a run's options leave unset.
RECORDING_KEYS = ("experimenter", "lab", "institution", "species")


class RigFileError(ValueError):
    """A rig file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class RecordingDefaults:
    """``[recording]``: the NWB session fields a run takes when its options do not set them."""

    experimenter: tuple[str, ...] = ()
    lab: str | None = None
    institution: str | None = None
    species: str | None = None


@dataclass(frozen=True)
class Rig:
    """A rig file, a field per table: ``[rig]`` (``name``, ``pulse_history``), ``[limits]``,
    ``[recording]``, and the drivers' ``[channels]`` and ``[stimulator]`` (None: no table)."""

    name: str
    limits: SafetyLimits
    path: Path | None = None
    #: Where the rig file loosens a default limit (worth a line in the log).
    notes: tuple[str, ...] = ()
    #: ``[rig] pulse_history`` as written (None: not set); checked by pulse_history.history_path.
    pulse_history: Any = None
    #: ``[recording]`` as written; checked by :meth:`recording_defaults` when a run records.
    recording: Mapping[str, Any] = field(default_factory=dict)
    channels: Mapping[str, Any] | None = None
    stimulator: Mapping[str, Any] | None = None

    @property
    def where(self) -> str:
        """The file, for messages: "rig file rig2.toml"."""
        return f"rig file {self.path}"

    def recording_defaults(self) -> RecordingDefaults:
        """``[recording]``, checked: RigFileError naming an unknown key or a value not text."""
        for key, value in self.recording.items():
            if key not in RECORDING_KEYS:
                raise RigFileError(f"{self.where}: unknown key [recording] {key}; "
                                   f"accepted: {', '.join(RECORDING_KEYS)}")
            if not (isinstance(value, str) or (key == "experimenter" and isinstance(value, list)
                                               and all(isinstance(v, str) for v in value))):
                raise RigFileError(f"{self.where}: [recording] {key} must be text")
        experimenter = self.recording.get("experimenter") or []
        if isinstance(experimenter, str):
            experimenter = [experimenter]
        return RecordingDefaults(tuple(experimenter), self.recording.get("lab"),
                                 self.recording.get("institution"), self.recording.get("species"))


def load_rig(path: str | Path) -> Rig:
    """Read a rig TOML file: ``[rig] name`` and ``[limits]`` overriding the defaults, and the
    other tables as they are (each checked where it is used)."""
    path = Path(path)
    where = str(path)
    doc = _read_toml(path)
    _check_tables(where, doc)

    rig_table = doc.get("rig", {})
    name = rig_table.get("name", path.stem)
    if not isinstance(name, str):
        raise RigFileError(f'rig file {where}: [rig] name must be a string, e.g. name = "rig 2"')
    try:
        limits, loosened = limits_from_table(doc.get("limits", {}))
    except ValueError as exc:
        raise RigFileError(f"rig file {where}: {exc}") from None
    return Rig(
        name=name,
        limits=limits,
        path=path,
        notes=tuple(f"rig {name!r} {note}" for note in loosened),
        pulse_history=rig_table.get("pulse_history"),
        recording=doc.get("recording", {}),
        channels=doc.get("channels"),
        stimulator=doc.get("stimulator"),
    )


def rig_option(value: Rig | str) -> Rig | None:
    """A driver's ``rig`` option as a Rig: the one the CLI read and passed on, or the file a
    device URL names (``?rig=FILE``, read here); None for neither. RigFileError as load_rig."""
    if isinstance(value, Rig):
        return value
    return load_rig(value) if value else None


def _read_toml(path: Path) -> dict[str, Any]:
    where = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RigFileError(f"rig file {where}: no such file; check the path") from None
    except IsADirectoryError:
        raise RigFileError(
            f"rig file {where}: is a directory, not a rig file; give the path of a .toml file"
        ) from None
    except OSError as exc:
        raise RigFileError(f"rig file {where}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise RigFileError(
            f"rig file {where}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8 TOML"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RigFileError(f"rig file {where}: not valid TOML ({exc}); fix the syntax") from None


def _check_tables(where: str, doc: dict[str, Any]) -> None:
    """Every top-level key a table; a misspelled table name (``[limit]``) named."""
    for key, value in doc.items():
        if not isinstance(value, dict):
            if key in TABLES:
                raise RigFileError(
                    f"rig file {where}: {key!r} must be a table: write [{key}] on its own "
                    f"line, then its keys below it, one per line"
                )
            hint = " under [limits]" if key in LIMIT_NAMES else " under [rig]"
            raise RigFileError(f"rig file {where}: key {key!r} is outside any table; put it{hint}")
        if key not in TABLES:
            close = difflib.get_close_matches(key, TABLES, n=1, cutoff=0.6)
            if close:
                raise RigFileError(
                    f"rig file {where}: unknown table [{key}]; did you mean [{close[0]}]?"
                )
