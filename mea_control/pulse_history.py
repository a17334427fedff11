"""The pulses a culture received lately, kept across runs so the rate limits do not forget.

The safety gate's rate limits (``burst_rate_hz``, ``mean_rate_hz``) count the pulses of
the last window on each electrode. Those pulses belong to the culture on the device, not
to one run: :class:`PulseHistory` holds them between runs (in a GUI session) and in a
small state file per device (between processes). Device clocks restart at each run, so
pulses are kept on the wall clock (``time.time()``) and mapped into each run's samples at
its start. See docs/safety.md ("Pulse history across runs").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mea_control.rig import Rig, RigFileError
from mea_control.safety import SafetyGate

#: Environment variable naming the folder where mea-control keeps its state.
STATE_DIR_ENV = "MEA_CONTROL_STATE_DIR"
FORMAT = "mea-control pulse history"
VERSION = 1
#: The file is rewritten at most this often during a run (and at every run's end).
SAVE_INTERVAL_S = 1.0
#: Slack when mapping a time onto samples, in samples: the file keeps microseconds.
_SLACK = 0.1

#: Pulses by electrode label: (wall-clock start in s, length in s), oldest first.
Pulses = dict[str, list[tuple[float, float]]]


def state_dir() -> Path:
    """``$MEA_CONTROL_STATE_DIR``, else ``$XDG_STATE_HOME/mea-control``, else
    ``~/.local/state/mea-control``."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base).expanduser() / "mea-control"


def default_path(device_url: str) -> Path:
    """The state file of a device, keyed by its URL as written (``sim://?seed=1``)."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", device_url).strip("_")[:60]
    digest = hashlib.sha1(device_url.encode()).hexdigest()[:8]
    return state_dir() / "pulse-history" / f"{slug}-{digest}.json"


def names_history_file(rig: Rig | None) -> bool:
    """Whether the rig file names the pulse history file (``[rig] pulse_history``)."""
    return rig is not None and rig.pulse_history is not None


def history_path(device_url: str, rig: Rig | None = None) -> Path:
    """The rig file's ``[rig] pulse_history`` (relative to the rig file), else the default."""
    named = rig.pulse_history if rig is not None else None
    if named is None:
        return default_path(device_url)
    if not isinstance(named, str) or not named.strip():
        raise RigFileError(f'rig file {rig.path}: [rig] pulse_history must be a file path in '
                           f'quotes, e.g. pulse_history = "rig2-pulses.json", not {named!r}')
    path = Path(named).expanduser()
    if not path.is_absolute() and rig.path is not None:
        path = rig.path.parent / path
    return path


class HistoryFileError(ValueError):
    """A state file that cannot be used (the message says why)."""


def _read(path: Path) -> Pulses:
    """The pulses in a state file; HistoryFileError if it is not one."""
    try:
        doc = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HistoryFileError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HistoryFileError("not a mea-control pulse history")
    if doc.get("version") != VERSION:
        raise HistoryFileError(f"version {doc.get('version')!r}, this mea-control reads "
                               f"version {VERSION}")
    saved_at, electrodes = doc.get("saved_at"), doc.get("electrodes")
    if not _finite(saved_at) or not isinstance(electrodes, dict):
        raise HistoryFileError("saved_at or electrodes missing or invalid")
    out: Pulses = {}
    for label, entry in electrodes.items():
        starts = entry.get("start_s") if isinstance(entry, dict) else None
        lengths = entry.get("length_us") if isinstance(entry, dict) else None
        if (not isinstance(starts, list) or not isinstance(lengths, list)
                or len(starts) != len(lengths)
                or not all(_finite(x) for x in starts)
                or not all(_finite(x) and x >= 0 for x in lengths)):
            raise HistoryFileError(f"electrode {label!r}: start_s and length_us must be lists "
                                   "of numbers of the same length")
        out[label] = sorted((saved_at + s, n * 1e-6) for s, n in zip(starts, lengths,
                                                                       strict=True))
    return out


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _write(path: Path, device: str, pulses: Pulses) -> None:
    """Write atomically: a temporary file beside ``path``, flushed, renamed over it."""
    saved_at = round(time.time(), 6)
    electrodes = {
        label: {"start_s": [round(w - saved_at, 6) for w, _ in kept],
                "length_us": [round(n * 1e6) for _, n in kept]}
        for label, kept in pulses.items() if kept
    }
    head = json.dumps({"format": FORMAT, "version": VERSION, "device": device,
                       "saved_at": saved_at}, separators=(",", ":"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(head[:-1] + ',"electrodes":{')
            for i, (label, entry) in enumerate(electrodes.items()):
                # one electrode a call: the loop's thread gets the interpreter in between
                f.write(("," if i else "") + json.dumps(label) + ":"
                        + json.dumps(entry, separators=(",", ":")))
            f.write("}}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class PulseHistory:
    """The recent pulses of one device's culture, across the runs of a session or process.

    An engine calls :meth:`restore` once its run's first sample is known and :meth:`keep`
    when the run ends (however it ends). In between, a thread of the store rewrites the
    file at most every :data:`SAVE_INTERVAL_S` when the gate admitted something. ``path``
    None keeps the history in memory only. ``log`` receives warnings about the file.
    """

    def __init__(self, path: Path | None, device: str,
                 log: Callable[[str], None] = lambda message: None) -> None:
        self.path = path
        self.device = device
        self._log = log
        self._lock = threading.Lock()
        self._pulses: Pulses | None = None  # None until first read
        self._gate: SafetyGate | None = None  # the gate of the run in progress
        self._clock: Callable[[], int] = lambda: 0
        self._saved_admitted = 0
        self._stop = threading.Event()
        self._saver: threading.Thread | None = None
        self._warned = False

    @classmethod
    def for_device(cls, device_url: str, rig: Rig | None = None,
                   log: Callable[[str], None] = lambda message: None) -> PulseHistory:
        """The store of a device, in its state file (:func:`history_path`)."""
        return cls(history_path(device_url, rig), device_url, log)

    # -- the run ------------------------------------------------------------------------------
    def restore(self, gate: SafetyGate, start_sample: int, start_wall: float,
                clock: Callable[[], int]) -> list[str]:
        """Give ``gate`` the pulses of earlier runs, mapped onto its run's samples, and
        start saving what it admits. ``start_wall`` is a wall-clock time at or before the
        device's ``start_sample``; ``clock`` returns a sample the device has reached.
        Returns notes worth the run's log (a missing or unreadable file)."""
        self._end_saver()
        with self._lock:
            notes = self._load(gate) if self._pulses is None else []
            fs, labels = gate.sample_rate, gate.layout.labels
            mapped = {}
            for label, kept in self._pulses.items():
                if label not in labels:
                    notes.append(f"pulse history: electrode {label} is not in layout "
                                 f"{gate.layout.name}; its pulses are ignored")
                    continue
                mapped[labels.index(label)] = [
                    (start_sample + math.ceil((w - start_wall) * fs - _SLACK),
                     max(1, math.ceil(n * fs - _SLACK))) for w, n in kept]
            gate.import_history(mapped, start_sample)
            kept = gate.export_history(start_sample)
            if kept:
                notes.append(f"pulse history: {sum(map(len, kept.values()))} pulse(s) of earlier "
                             f"runs on {len(kept)} electrode(s) count toward the rate limits")
            self._gate, self._clock = gate, clock
            self._saved_admitted = gate.admitted
        if self.path is not None:
            self._stop.clear()
            self._saver = threading.Thread(target=self._save_while_running,
                                           name="mea-pulse-history", daemon=True)
            self._saver.start()
        return notes

    def keep(self, gate: SafetyGate, now_sample: int) -> None:
        """The run of ``gate`` ended at ``now_sample``: keep its pulses and write the file.
        Does nothing for a gate that :meth:`restore` did not start (a run that never began)."""
        if self._gate is not gate:
            return
        self._end_saver()
        with self._lock:
            self._take(gate, now_sample)
            self._gate = None
        self._save()

    def pulses(self) -> Pulses:
        """What the store holds: (wall-clock start, length) in s by electrode label."""
        with self._lock:
            return {label: list(kept) for label, kept in (self._pulses or {}).items()}

    # -- inside -------------------------------------------------------------------------------
    def _take(self, gate: SafetyGate, now_sample: int) -> None:
        """Replace the held pulses by the gate's, mapped onto the wall clock at now."""
        wall, fs, labels = time.time(), gate.sample_rate, gate.layout.labels
        self._pulses = {
            labels[ch]: [(wall + (s - now_sample) / fs, n / fs) for s, n in kept]
            for ch, kept in gate.export_history(now_sample).items()
        }

    def _load(self, gate: SafetyGate) -> list[str]:
        """Read the file once; a missing or bad one leaves the history empty, with a note."""
        self._pulses = {}
        if self.path is None:
            return []
        try:
            self._pulses = _read(self.path)
            return []
        except FileNotFoundError:
            return [f"pulse history: none kept yet for {self.device} ({self.path}); the rate "
                    "limits count from this run"]
        except (OSError, HistoryFileError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        aside = self.path.with_name(self.path.name + ".unreadable")
        try:
            os.replace(self.path, aside)
            kept = f"; it was moved to {aside}"
        except OSError:
            kept = ""
        window = gate.limits.mean_window_s
        return [f"warning: pulse history {self.path} is unreadable ({why}){kept}. The "
                "rate limits start without the previous runs' pulses: for the next "
                f"{window:g} s this run may exceed mean_rate_hz and burst_rate_hz counted "
                "across runs"]

    def _save_while_running(self) -> None:
        while not self._stop.wait(SAVE_INTERVAL_S):
            with self._lock:
                gate = self._gate
                if gate is None or gate.admitted == self._saved_admitted:
                    continue
                self._saved_admitted = gate.admitted
                self._take(gate, self._clock())
            self._save()

    def _end_saver(self) -> None:
        self._stop.set()
        if self._saver is not None and self._saver is not threading.current_thread():
            self._saver.join()
        self._saver = None

    def _save(self) -> None:
        """Write the file; a failure is logged once per store (the run goes on)."""
        if self.path is None:
            return
        try:
            _write(self.path, self.device, self.pulses())
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self._log(f"warning: cannot write pulse history {self.path} "
                          f"({exc.strerror or exc}); the next run will not know this run's "
                          "pulses and may exceed the rate limits counted across runs")
