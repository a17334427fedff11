"""The recorder: an engine sink that writes a run to one crash-safe NWB file.

On the acquisition thread it only queues: raw blocks (bounded: past
``max_backlog_s`` of unwritten data a block is counted as lost, never
blocking the loop), spikes, pulses, trials, decisions and events. A writer
thread appends raw samples to the ElectricalSeries with h5py in whole chunks
of 100 ms, flushing the file after each (and after 100 ms without new data),
and appends everything else to the side journal, flushed at the same time.
At a clean stop the journal becomes the file's tables (see ``tables``).
"""

from __future__ import annotations

import dataclasses
import queue
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from drivers.base import DeviceInfo
from mea_control import __version__
from mea_control.engine import RunEvent, Sink, StimRecord
from mea_control.recording import nwbfile, tables
from mea_control.recording.errors import RecordingError
from mea_control.recording.journal import Journal, journal_path
from mea_control.trials import Trial
from mea_control.types import Block, SpikeEvents

#: Free space a recording of unknown length needs before it starts, in seconds of raw data.
MIN_FREE_S = 60.0
#: Margin for tables and HDF5 metadata, bytes.
MIN_FREE_BYTES = 20_000_000
#: The acquisition thread hands data to the writer in batches of this many seconds.
BATCH_S = 0.01
#: Raw samples stop while this much disk is left, so that the file closes cleanly and the
#: side journal and the tables still fit (HDF5 cannot close a file on a full disk).
RESERVE_BYTES = 50_000_000


def _contiguous(blocks: list[Block]) -> list[Block]:
    """Join consecutive blocks into one block per run without gaps."""
    runs: list[list[Block]] = []
    for block in blocks:
        if runs and runs[-1][-1].stop_sample == block.start_sample:
            runs[-1].append(block)
        else:
            runs.append([block])
    return [r[0] if len(r) == 1 else
            Block(r[0].start_sample, np.concatenate([b.data for b in r]), r[0].uV_per_bit)
            for r in runs]


def check_target(path: str | Path, overwrite: bool = False) -> Path:
    """Fail early: a writable .nwb path in an existing folder, not in use, absent unless
    ``overwrite`` (also its side journal, which may hold a crashed run's tables)."""
    if not str(path).strip():
        raise RecordingError("--record needs a file name, e.g. --record run.nwb")
    target = Path(path)
    where = f"cannot record to {path}"
    if target.is_dir():
        raise RecordingError(f"{where}: it is a folder; give a file name")
    if target.suffix.lower() != ".nwb":
        raise RecordingError(f"{where}: a recording is an NWB file; end it in .nwb")
    parent = target.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise RecordingError(f"{where}: {target.parent} is a file, not a folder")
    if not parent.is_dir():
        raise RecordingError(f"{where}: folder {target.parent} does not exist")
    journal = journal_path(target)
    for existing in (target, journal):
        if existing.exists() and not overwrite:
            raise RecordingError(
                f"{where}: {existing.name} exists; choose another name or add --overwrite"
            )
    if target.exists():
        _refuse_if_in_use(target, where)
    probe = target if not target.exists() else parent / f".{target.name}.probe"
    try:
        with open(probe, "ab"):
            pass
        probe.unlink()
    except OSError as exc:
        raise RecordingError(f"{where}: {exc.strerror or exc}") from None
    return target


def _refuse_if_in_use(target: Path, where: str) -> None:
    try:
        h5py.File(target, "r").close()
    except OSError as exc:
        if "unable to lock file" in str(exc):
            raise RecordingError(f"{where}: another run is still writing it") from None


def check_space(path: Path, bytes_per_s: float, duration_s: float | None) -> None:
    """Refuse to start when the disk cannot hold the run (or a minute of it, length unknown)."""
    seconds = duration_s if duration_s is not None else MIN_FREE_S
    need = bytes_per_s * seconds + MIN_FREE_BYTES
    free = shutil.disk_usage(path.resolve().parent).free
    if free < need:
        what = f"{seconds:g} s" if duration_s is not None else f"even {seconds:g} s"
        raise RecordingError(
            f"cannot record to {path}: disk full ({free / 1e6:.0f} MB free; {what} of this "
            f"recording need {need / 1e6:.0f} MB); free space or record elsewhere"
        )


def engine_provenance(engine: Any, protocol_file: str | Path | None = None,
                      **extra: Any) -> dict[str, Any]:
    """What a recording keeps about how it was made: code, parameters, device, limits, seed."""
    source = None
    if protocol_file is not None:
        try:
            source = Path(protocol_file).read_text(encoding="utf-8")
        except OSError:
            source = None
    return {
        "software_version": __version__,
        "protocol": engine.protocol.name,
        "protocol_file": str(protocol_file) if protocol_file else None,
        "protocol_source": source,
        "parameters": engine.protocol.values,
        "device_url": engine.driver.url,
        "device_info": engine.info.describe(),
        "limits": engine.gate.limits.as_dict(),
        "limit_notes": list(engine.limit_notes),
        "seed": engine.config.seed,
        "block_samples": engine.block_samples,
        "fast": engine.config.fast,
        "watchdog_ms": engine.config.watchdog_ms,
        "detector": dataclasses.asdict(engine.config.detector),
        **extra,
    }


class _RawAppender:
    """Appends blocks to the resizable dataset in chunk-aligned writes, flushing after each."""

    def __init__(self, h5: h5py.File, rows: int, n_channels: int) -> None:
        self.h5 = h5
        self.data = h5[nwbfile.SERIES_PATH]["data"]
        self.rows = rows
        self.buf = np.empty((rows, n_channels), np.int16)
        self.start = 0  # data index of buf[0]
        self.fill = 0  # rows in buf
        self.on_disk = 0  # rows of buf already written and flushed
        self.capacity = rows
        #: Rows written and flushed so far (what a crash would leave).
        self.persisted = 0

    def add(self, index: int, data: np.ndarray) -> bool:
        """Buffer a block at data index ``index``; True if a chunk was written and flushed."""
        flushed = False
        if index < self.start + self.fill:
            raise ValueError(f"data index {index} goes back before {self.start + self.fill}")
        if index != self.start + self.fill:  # a gap (device or backlog): leave it unwritten
            flushed = self.write_partial()
            self._restart(index)
        while len(data):
            take = min(len(data), self.capacity - self.fill)
            self.buf[self.fill:self.fill + take] = data[:take]
            self.fill += take
            data = data[take:]
            if self.fill == self.capacity:
                self._write()
                flushed = True
                self._restart(self.start + self.fill)
        return flushed

    def _restart(self, index: int) -> None:
        self.start, self.fill, self.on_disk = index, 0, 0
        self.capacity = self.rows - index % self.rows  # end the buffer on a chunk boundary

    def write_partial(self) -> bool:
        """Write what the buffer holds (it is rewritten whole once the chunk fills)."""
        wrote = self.fill > self.on_disk
        if wrote:
            self._write()
        return wrote

    def _write(self) -> None:
        end = self.start + self.fill
        if self.data.shape[0] < end:
            self.data.resize(end, axis=0)
        self.data[self.start:end] = self.buf[:self.fill]
        self.h5.flush()
        self.persisted += self.fill - self.on_disk
        self.on_disk = self.fill

    @property
    def first_unwritten(self) -> int:
        """Data index of the first buffered row not yet on disk."""
        return self.start + self.on_disk


class Recorder(Sink):
    """Records one run to ``path`` (an engine sink). Create it before the run starts.

    The constructor checks the target and writes the file's structure, so bad
    paths and full disks fail before anything runs. ``raw=False`` keeps spikes,
    pulses, trials and events only. Failures while recording never stop the
    run: they are counted (``stats()``), logged as events and left in the summary.
    """

    def __init__(
        self,
        path: str | Path,
        info: DeviceInfo,
        provenance: dict[str, Any],
        meta: nwbfile.RecordingMeta | None = None,
        raw: bool = True,
        overwrite: bool = False,
        duration_s: float | None = None,
        max_backlog_s: float = 10.0,
    ) -> None:
        self.path = check_target(path, overwrite)
        self.info = info
        self.raw = raw
        bytes_per_s = info.sample_rate * info.n_channels * 2 if raw else 20_000.0
        check_space(self.path, bytes_per_s, duration_s)
        self.journal_path = journal_path(self.path)
        for stale in (self.path, self.journal_path):
            stale.unlink(missing_ok=True)
        try:
            nwbfile.create(self.path, info, meta or nwbfile.RecordingMeta(), provenance, raw,
                           datetime.now().astimezone())
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            raise RecordingError(f"cannot record to {path}: {exc}") from None
        self._journal = Journal(self.journal_path)
        self._h5: h5py.File | None = None
        self._raw: _RawAppender | None = None
        if raw:
            rows = nwbfile.chunk_rows(info.sample_rate)
            self._h5 = h5py.File(self.path, "r+", rdcc_nbytes=4 * rows * info.n_channels * 2)
            self._raw = _RawAppender(self._h5, rows, info.n_channels)
        self.t0: int | None = None
        self.max_backlog = int(max_backlog_s * info.sample_rate)
        self._queued = 0  # raw samples queued (acquisition thread adds)
        self._done = 0  # raw samples the writer thread has dealt with (writer thread adds)
        self.backlog_peak = 0
        self._lost_backlog = 0  # not queued: backlog full (acquisition thread adds)
        self._lost_from: int | None = None  # first sample of the current run not queued
        self._lost_to = 0
        self.write_error: str | None = None
        self._error_sample = 0
        self.journal_error: str | None = None
        self.records_lost = 0  # side records the journal could not take
        self.finalize_error: str | None = None
        #: A write failed inside HDF5: the library may crash when the process exits.
        self.hdf5_broken = False
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._spikes: list[SpikeEvents] = []  # writer thread: batches since the last flush
        # acquisition thread: blocks and spikes gathered for the next queue put
        self._outbox: list[Block] = []
        self._outbox_spikes: list[SpikeEvents] = []
        self._outbox_samples = 0
        self._batch = max(1, int(info.sample_rate * BATCH_S))
        self._stopped = False
        self._thread = threading.Thread(target=self._write_loop, name="mea-recorder",
                                        daemon=True)
        self._thread.start()

    # -- sink methods, acquisition thread -----------------------------------------
    def on_block(self, block: Block, filtered: np.ndarray | None, spikes: SpikeEvents) -> None:
        if self.t0 is None:
            self.t0 = block.start_sample
            self._queue.put(("start", {"first_sample": self.t0, "wall_time": time.time()}))
        self._outbox_samples += block.n_samples
        if self.raw:
            self._take(block)
        if self._outbox_samples >= self._batch:
            self._send()

    def _take(self, block: Block) -> None:
        backlog = self._queued - self._done
        self.backlog_peak = max(self.backlog_peak, backlog)
        if backlog + block.n_samples > self.max_backlog:
            self._lost_backlog += block.n_samples
            if self._lost_from is None:
                self._lost_from = block.start_sample
            self._lost_to = block.stop_sample
            return
        self._end_lost_run()
        self._queued += block.n_samples
        self._outbox.append(block)

    def _send(self) -> None:
        """Queue the blocks and spikes gathered so far (one writer wake-up per batch)."""
        if self._outbox:
            self._queue.put(("blocks", self._outbox))
            self._outbox = []
        if self._outbox_spikes:
            self._queue.put(("spikes", self._outbox_spikes))
            self._outbox_spikes = []
        self._outbox_samples = 0

    def _end_lost_run(self) -> None:
        if self._lost_from is not None:
            fs = self.info.sample_rate
            self._event(self._lost_to, "lost",
                        f"samples {self._lost_from}-{self._lost_to} not written to disk: the "
                        f"writer fell {self.max_backlog / fs:g} s behind (disk too slow)")
            self._lost_from = None

    @property
    def samples_written(self) -> int:
        """Raw samples on disk, flushed."""
        return self._raw.persisted if self._raw is not None else 0

    @property
    def samples_lost(self) -> int:
        """Raw samples the run produced that are not on disk (backlog full or disk failed)."""
        handed = self._done if self._raw is not None else 0
        return self._lost_backlog + handed - self.samples_written

    def on_spikes(self, spikes: SpikeEvents) -> None:
        self._outbox_spikes.append(spikes)

    def on_stim(self, record: StimRecord) -> None:
        self._queue.put(("stim", tables.stim_record(record, self.info)))

    def on_trial(self, trial: Trial) -> None:
        self._queue.put(("trial", tables.trial_record(trial)))

    def on_decision(self, sample: int, decision: dict[str, Any]) -> None:
        self._queue.put(("decision", tables.decision_record(sample, decision)))

    def on_event(self, event: RunEvent) -> None:
        self._event(event.sample, event.kind, event.message)

    def _event(self, sample: int, kind: str, message: str) -> None:
        self._queue.put(("event", {"sample": int(sample), "kind": kind, "message": message}))

    # -- the end -------------------------------------------------------------------
    def on_stop(self, summary: dict[str, Any]) -> None:
        """Drain the queue, close the raw file and write the tables (blocks until done).

        Never raises for a disk problem: if the tables cannot be written, the side
        journal stays for ``mea-control recover`` and ``stats()["error"]`` says why.
        """
        if self._stopped:
            return
        self._stopped = True
        self._end_lost_run()
        self._send()
        self._queue.put(("stop", None))
        self._thread.join()
        if self.write_error is not None:
            lost = self._done - self.samples_written
            self._journal_write("event", {
                "sample": self._error_sample, "kind": "lost",
                "message": f"{lost} samples from sample {self._error_sample} on not written "
                f"to disk: {self.write_error}"})
        stats = self.stats()
        summary["recording"] = stats
        self._journal_write("summary", {"summary": summary})
        try:
            self._journal.close()
        except OSError as exc:
            self.journal_error = self.journal_error or f"{type(exc).__name__}: {exc}"
        if self.journal_error is None:
            try:
                tables.finalize(self.path)
            except Exception as exc:  # disk full at the end: the journal stays for recover
                self.finalize_error = f"{type(exc).__name__}: {exc}"
        else:
            self.finalize_error = f"the side journal failed ({self.journal_error})"
        stats["error"] = self.finalize_error
        stats["bytes"] = self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        """Stop without a summary (the run never got to its end): keep what was written."""
        if not self._stopped:
            self.on_stop({"interrupted": True, "note": "the run did not finish"})

    def discard(self) -> None:
        """The run never started: stop the writer and delete the file and its side journal."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(("stop", None))
            self._thread.join()
            self._journal.close()
        for path in (self.path, self.journal_path):
            path.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        fs = self.info.sample_rate
        return {
            "file": str(self.path),
            "raw": self.raw,
            "samples_written": self.samples_written,
            "samples_lost": self.samples_lost,
            "backlog_peak_s": round(self.backlog_peak / fs, 3),
            "backlog_s": round((self._queued - self._done) / fs, 3),
            "write_error": self.write_error,
            "records_lost": self.records_lost,
        }

    # -- writer thread ---------------------------------------------------------------
    def _write_loop(self) -> None:
        """Write blocks as they come; spikes and the journal at each flush (100 ms of data,
        or 100 ms of wall time, whichever comes first). Nothing here may end the thread."""
        idle_s = nwbfile.CHUNK_S
        last_flush = time.monotonic()
        try:
            while True:
                try:
                    kind, item = self._queue.get(timeout=idle_s)
                except queue.Empty:
                    self._flush()
                    last_flush = time.monotonic()
                    continue
                if kind == "stop":
                    break
                flushed = False
                if kind == "blocks":
                    for run in _contiguous(item):
                        flushed |= self._write_block(run)
                elif kind == "spikes":
                    self._spikes.extend(item)
                else:
                    self._journal_write(kind, item)
                if flushed or time.monotonic() - last_flush > idle_s:
                    self._flush_journal()
                    last_flush = time.monotonic()
            self._flush()
        finally:
            if self._h5 is not None:
                try:
                    self._h5.close()
                except Exception:  # a broken disk must not hide what was already counted
                    pass

    def _journal_write(self, kind: str, record: dict[str, Any]) -> None:
        if self.journal_error is not None:
            self.records_lost += 1
            return
        try:
            self._journal.write(kind, record)
        except Exception as exc:  # disk full: count what the journal could not take
            self.journal_error = f"{type(exc).__name__}: {exc}"
            self.records_lost += 1

    def _flush_journal(self) -> None:
        if self._spikes:
            spikes = SpikeEvents.concat(self._spikes)
            self._spikes.clear()
            if self.journal_error is None:
                try:
                    self._journal.write_spikes(spikes)
                except Exception as exc:
                    self.journal_error = f"{type(exc).__name__}: {exc}"
            if self.journal_error is not None:
                self.records_lost += 1
        if self.journal_error is None:
            try:
                self._journal.flush()
            except Exception as exc:
                self.journal_error = f"{type(exc).__name__}: {exc}"

    def _write_block(self, block: Block) -> bool:
        """Hand a block to the appender; True if that flushed the file."""
        flushed = False
        if self.write_error is None:
            try:
                flushed = self._raw.add(block.start_sample - self.t0, block.data)
                if flushed:
                    self._check_room()
            except Exception as exc:  # h5py reports a full disk as OSError or RuntimeError
                self._failed(exc)
        self._done += block.n_samples
        return flushed

    def _check_room(self) -> None:
        """Stop raw samples, closing the file cleanly, before the disk is full."""
        free = shutil.disk_usage(self.path.parent).free
        if free < RESERVE_BYTES:
            self._h5.close()
            self.write_error = (f"the disk is nearly full ({free / 1e6:.0f} MB left): raw "
                                "samples stopped to keep room for spikes, pulses and trials")
            self._error_sample = self.t0 + self._raw.first_unwritten
            self._journal_write("event", {"sample": self._error_sample, "kind": "recorder_error",
                                          "message": self.write_error})

    def _failed(self, exc: Exception) -> None:
        """The disk refused a write: stop writing raw samples, count the rest as lost."""
        self.write_error = f"writing raw samples failed ({type(exc).__name__}: {exc})"
        self.hdf5_broken = True
        self._error_sample = self.t0 + self._raw.first_unwritten
        self._journal_write("event", {"sample": self._error_sample, "kind": "recorder_error",
                                      "message": f"{self.write_error}; the run goes on, "
                                      "spikes, pulses and trials are still recorded"})

    def _flush(self) -> None:
        if self._raw is not None and self.write_error is None:
            try:
                self._raw.write_partial()
            except Exception as exc:
                self._failed(exc)
        self._flush_journal()
