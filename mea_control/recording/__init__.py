"""Recording runs to NWB 2.x files that survive a crash and open in pynwb and SpikeInterface.

- :class:`Recorder` (an engine sink) writes a run; ``mea-control run --record``.
- :func:`open` reads one back; :func:`describe` summarises it (``mea-control info``).
- :func:`recover` writes a crashed run's tables (``mea-control recover``).
- :func:`export_compressed` writes a compressed copy (``mea-control export --compress``).

The file layout is described in the README ("Recordings").

Reading and the file tools import neither the engine nor the DSP: :class:`Recorder`,
which needs them, is imported on first use (and the recording process, ``python -m
mea_control.recording``, never uses it).
"""

from typing import Any

from mea_control.recording.errors import RecordingError
from mea_control.recording.nwbfile import RecordingMeta
from mea_control.recording.reader import Recording, describe, health, open
from mea_control.recording.tables import recover

__all__ = ["Recorder", "Recording", "RecordingError", "RecordingMeta", "describe", "health", "open",
           "recover"]


def __getattr__(name: str) -> Any:
    """``Recorder`` on first use: the writer imports the engine (PEP 562)."""
    if name == "Recorder":
        from mea_control.recording.writer import Recorder

        return Recorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
