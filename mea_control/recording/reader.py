"""Reading a recording back: ``open(path)`` gives arrays and tables, ``describe`` a summary.

Reads with h5py (no pynwb needed): raw samples stay on disk until sliced.
A file whose run did not stop cleanly is read too: its tables come from the
side journal until ``mea-control recover`` writes them into the file.

Whatever is wrong with a file (not there, not NWB, cut short, bytes changed) is a
:class:`RecordingError` naming the file and what failed, raised by ``open`` or by the
first property that reads the damaged part; the parts read before stay usable. A
damaged side journal loses only its damaged lines (counted in the health line).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from mea_control.recording import nwbfile
from mea_control.recording.errors import RecordingError, is_locked
from mea_control.recording.journal import FIELDS, JournalContents, journal_path, read_journal
from mea_control.recording.tables import DECISION_FIELDS, stim_rows
from mea_control.trials import TrialTable
from mea_control.types import SpikeEvents

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: What h5py, json and numpy raise on a damaged file (a byte changed, the file cut short).
DAMAGE = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError)
_T = TypeVar("_T")


def damaged(path: Path, exc: BaseException) -> RecordingError:
    """The error for a file whose contents are damaged, naming what failed."""
    return RecordingError(f"{path}: damaged recording ({type(exc).__name__}: {exc}); the "
                          "parts read before this are all that can be read")


def _reads_file(method: Callable[..., _T]) -> Callable[..., _T]:
    """Turn what a damaged file raises while ``method`` reads it into :func:`damaged`."""
    @functools.wraps(method)
    def read(rec: Any, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(rec, *args, **kwargs)
        except RecordingError:
            raise
        except DAMAGE as exc:
            raise damaged(rec.path, exc) from None
    return read


def open_hdf5(path: Path) -> h5py.File:
    """Open an NWB file for reading, or raise RecordingError saying why it cannot be."""
    if not path.exists():
        raise RecordingError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise RecordingError(f"{path}: is a folder, not a recording")
    with path.open("rb") as f:
        head = f.read(8)
    if head != HDF5_SIGNATURE:
        raise RecordingError(f"{path}: not an NWB recording (not an HDF5 file)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        if is_locked(exc):
            raise RecordingError(
                f"{path}: another program has it open for writing (a run still recording?); "
                "try again when it has finished"
            ) from None
        raise RecordingError(
            f"{path}: damaged or truncated HDF5 file ({exc}); it cannot be read"
        ) from None
    except DAMAGE as exc:
        raise damaged(path, exc) from None
    try:
        nwb = "nwb_version" in f.attrs
    except DAMAGE as exc:
        f.close()
        raise damaged(path, exc) from None
    if not nwb:
        f.close()
        raise RecordingError(f"{path}: an HDF5 file but not an NWB file")
    return f


class Recording:
    """A mea-control recording: samples (lazy), spikes, pulses, trials, events, provenance."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._h5 = open_hdf5(self.path)
        try:
            self._load()
        except RecordingError:
            self._h5.close()
            raise
        except DAMAGE as exc:
            self._h5.close()
            raise damaged(self.path, exc) from None

    def _load(self) -> None:
        h5, path = self._h5, self.path
        prov = h5.get(f"scratch/{nwbfile.PROVENANCE}")
        if prov is None:
            raise RecordingError(f"{path}: an NWB file, but not a mea-control recording")
        self.provenance: dict[str, Any] = json.loads(prov.asstr()[()])
        info = self.provenance["device_info"]
        self.sample_rate = float(info["sample_rate"])
        self.uV_per_bit = float(info["uV_per_bit"])
        el = h5["general/extracellular_ephys/electrodes"]
        self.labels: list[str] = list(el["channel_name"].asstr()[:])
        self.n_channels = len(self.labels)
        self.positions_um = np.column_stack([el["rel_x"][:], el["rel_y"][:]])
        raw = h5.get(f"{nwbfile.SERIES_PATH}/data")
        #: Raw int16 samples (samples x channels) on disk, or None for --no-raw.
        self.samples: h5py.Dataset | None = raw
        summary = h5.get(f"scratch/{nwbfile.SUMMARY}")
        #: The end-of-run summary; None while the file is incomplete.
        self.summary: dict[str, Any] | None = (
            json.loads(summary.asstr()[()]) if summary is not None else None
        )
        self.journal: JournalContents | None = None
        jpath = journal_path(path)
        if self.summary is None and jpath.exists():
            self.journal = read_journal(jpath, self.n_channels)
        if self.summary is not None:
            self.first_sample = int(self.summary.get("first_sample", 0))
        elif self.journal is not None and self.journal.start:
            self.first_sample = int(self.journal.start["first_sample"])
        else:
            self.first_sample = 0

    # -- state ---------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """True once the run stopped cleanly or was recovered."""
        return self.summary is not None

    @property
    def n_samples(self) -> int:
        return 0 if self.samples is None else int(self.samples.shape[0])

    @property
    @_reads_file
    def duration_s(self) -> float:
        if self.summary is not None and "duration_s" in self.summary:
            return float(self.summary["duration_s"])
        last = [self.n_samples]
        if len(self.spikes):
            last.append(int(self.spikes.sample[-1]) - self.first_sample + 1)
        return max(last) / self.sample_rate

    @_reads_file
    def microvolts(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Raw samples [start, stop) (indices from the first sample) in uV, float32."""
        if self.samples is None:
            raise RecordingError(f"{self.path}: recorded without raw samples (--no-raw)")
        return self.samples[start:stop].astype(np.float32) * np.float32(self.uV_per_bit)

    # -- tables --------------------------------------------------------------------
    def _group(self, path: str) -> h5py.Group | None:
        return self._h5.get(path) if self.complete else None

    @property
    @_reads_file
    def spikes(self) -> SpikeEvents:
        """Detected spikes: device sample, electrode index, amplitude in uV."""
        if self.journal is not None:
            return self.journal.spikes
        g = self._group("processing/ecephys/detected_spikes")
        if g is None:
            return SpikeEvents.empty()
        return SpikeEvents(g["sample"][:], g["electrode"][:], g["amplitude_uV"][:])

    @property
    @_reads_file
    def pulses(self) -> dict[str, Any]:
        """The stimulation table as columns; phase columns are lists of arrays (one per pulse)."""
        if self.journal is not None:
            rows = stim_rows(self.journal.stims, self.first_sample, self.sample_rate)
            return {k: [r[k] for r in rows] for k in (rows[0] if rows else ())}
        g = self._group("intervals/stimulation")
        if g is None:
            return {}
        out: dict[str, Any] = {}
        for name, ds in g.items():
            if name == "id" or name.endswith("_index"):
                continue
            values = ds.asstr()[:] if ds.dtype.kind == "O" else ds[:]
            if f"{name}_index" in g:
                values = np.split(values, g[f"{name}_index"][:-1])
            out[name] = values
        return out

    @property
    @_reads_file
    def trials(self) -> TrialTable | None:
        """The trial table (o, s, r, ...), or None when the protocol ran no trials."""
        if self.journal is not None:
            recs = self.journal.trials
            if not recs:
                return None
            cols = {k: [t[k] for t in recs] for k in FIELDS["trial"]}
            stim_channels = recs[0]["stim_channels"]
        else:
            g = self._group("intervals/trials")
            if g is None:
                return None
            cols = {k: (g[k].asstr()[:] if g[k].dtype.kind == "O" else g[k][:]) for k in g}
            stim_channels = self.summary.get("trial_stim_channels", [])
        n = len(cols["session"])
        return TrialTable(
            o=np.asarray(cols["o"], np.uint8).reshape(n, -1),
            s=np.asarray(cols["s"], np.uint8).reshape(n, -1),
            r=np.asarray(cols["r"], np.int32).reshape(n, self.n_channels),
            r_pre=np.asarray(cols["r_pre"], np.int32).reshape(n, self.n_channels),
            session=np.asarray(cols["session"], np.int32),
            trigger_sample=np.asarray(cols["trigger_sample"], np.int64),
            stim_sample=np.asarray(cols["stim_sample"], np.int64),
            status=np.asarray(cols["status"], dtype="U11"),
            stim_channels=np.asarray(stim_channels, np.int16),
        )

    def _log(self, name: str) -> list[dict[str, Any]]:
        if self.journal is not None:
            return list(getattr(self.journal, name))
        g = self._group(f"processing/mea_control/{name}")
        if g is None:
            return []
        cols = {k: (g[k].asstr()[:] if g[k].dtype.kind == "O" else g[k][:])
                for k in g if k != "id"}
        return [{k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in cols.items()}
                for i in range(len(g["id"]))]

    @property
    @_reads_file
    def events(self) -> list[dict[str, Any]]:
        """Run events (start, stop, gap, watchdog, refusal, lost, errors) with sample and kind."""
        return self._log("events")

    @property
    @_reads_file
    def decisions(self) -> list[dict[str, Any]]:
        """Model decisions: sample, time, choice, candidates, scores, details."""
        rows = self._log("decisions")
        if self.journal is None:
            for row in rows:
                for key in DECISION_FIELDS:
                    row[key] = json.loads(row[key])
        return rows

    # -- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: str | Path) -> Recording:  # noqa: A001 - the package's reader, by design
    """Open a recording for reading; raises RecordingError with a clear message if it is not one."""
    return Recording(path)


def health(rec: Recording) -> tuple[str, list[str]]:
    """'complete', 'recovered' or 'incomplete', and the problems worth a look."""
    problems = []
    s = rec.summary or {}
    rs = s.get("recording", {})
    if rs.get("samples_lost"):
        why = rs.get("write_error") or "the writer fell behind"
        problems.append(f"{rs['samples_lost']} samples not written to disk ({why})")
    if s.get("gaps"):
        problems.append(f"{s['gaps']} gap(s) in the device's stream "
                        f"({s.get('samples_lost', 0)} samples missing)")
    if s.get("error"):
        problems.append(f"the run ended with a {s['error']} error")
    elif s.get("ended_early"):
        problems.append(f"ended early: {s['ended']}")
    torn = (s["recovered"].get("torn_journal_lines", 0) if "recovered" in s
            else rec.journal.torn_lines if rec.journal is not None else 0)
    if torn:
        problems.append(f"{torn} line(s) of the side journal could not be read (cut short "
                        "or damaged); their records are missing")
    if "recovered" in s:
        problems.insert(0, "recovered after the run stopped without finishing the file: it "
                        "holds the raw samples up to the last flush and the tables up to the "
                        "side journal's last line")
        return "recovered", problems
    if rec.summary is not None:
        return "complete", problems
    if rec.journal is not None:
        problems.insert(0, "the run did not stop cleanly; run `mea-control recover "
                        f"{rec.path}` to write its spikes, pulses and trials into the file")
    else:
        problems.insert(0, "the run did not stop cleanly and its side journal is gone: raw "
                        "samples up to the last flush are readable, the tables are lost")
    return "incomplete", problems


@_reads_file
def describe(rec: Recording) -> str:
    """A readable summary of a recording (``mea-control info``)."""
    prov, s = rec.provenance, rec.summary or {}
    info = prov["device_info"]
    state, problems = health(rec)
    size = rec.path.stat().st_size
    spikes = rec.spikes
    active = len(np.unique(spikes.channel))
    duration = rec.duration_s
    pulses = rec.pulses
    status = np.asarray(pulses.get("status", []))
    ticket = np.asarray(pulses.get("ticket", []))
    counts = [f"{int(np.sum(status == k))} {k}" for k in ("executed", "refused", "dropped", "sent")
              if k == "executed" or np.any(status == k)]
    lines = [
        f"file            {rec.path} ({size / 1e6:.1f} MB), {state}",
        f"written by      mea-control {prov.get('software_version', '?')}",
        f"device          {prov.get('device_url')} ({info['name']}, {rec.n_channels} channels "
        f"at {rec.sample_rate:g} Hz, {rec.uV_per_bit:g} uV/bit, layout {info['layout']})",
        f"duration        {duration:.1f} s"
        + (f" ({rec.n_samples} raw samples from device sample {rec.first_sample})"
           if rec.samples is not None else " (no raw samples: recorded with --no-raw)"),
        f"spikes          {len(spikes)} on {active} electrode(s)"
        + (f", {len(spikes) / duration / active:.1f} Hz per active electrode"
           if active and duration > 0 else ""),
        "pulses          " + ", ".join(counts) + " (one per electrode and train pulse; "
        f"{len(np.unique(ticket[status == 'executed']))} patterns executed)",
    ]
    trials = rec.trials
    if trials is not None:
        lines.append(f"trials          {len(trials)} in {len(np.unique(trials.session))} "
                     f"session(s)")
    events = rec.events
    gaps = sum(e["kind"] == "gap" for e in events)
    lost = s.get("recording", {}).get("samples_lost", 0)
    lines.append(f"gaps            {gaps} in the device's stream, {lost} samples lost by the "
                 "recorder")
    params = ", ".join(f"{k}={v}" for k, v in (prov.get("parameters") or {}).items())
    lines.append(f"protocol        {prov.get('protocol')} ({prov.get('protocol_file')})"
                 + (f": {params}" if params else ""))
    if "ended" in s:  # older files do not say
        lines.append(f"ended           {s['ended']}")
    pace = "fast" if prov.get("fast") else "real time"
    lines.append(f"seed            {prov.get('seed')}, {pace}")
    lines.append("health          " + ("; ".join(problems) if problems else "ok"))
    return "\n".join(lines)
