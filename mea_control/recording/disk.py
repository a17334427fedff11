"""The disk side of a recording: a process that appends raw samples and the side journal.

The recorder (``writer.Recorder``, on the acquisition thread) queues batches of
blocks and records; :func:`main` takes them in another process (pickled over
its stdin), so that HDF5, which holds Python's global lock while it flushes,
can never stall the closed loop, even on a hung disk. Raw samples go to the ElectricalSeries in
whole chunks of 100 ms of data, flushed after each (and after 100 ms without
new data); spikes and records go to the side journal, flushed at the same
time. If the run is killed, the pipe ends: the process flushes what it has
and exits.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mea_control.recording import nwbfile
from mea_control.recording.journal import Journal
from mea_control.types import Block, SpikeEvents

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


class DiskWriter:
    """Takes queued items until "stop"; owns the HDF5 file and the journal while it runs."""

    def __init__(self, path: Path, journal: Path, n_channels: int | None, rows: int) -> None:
        self.path = path
        self.journal = Journal(journal)
        self.h5: h5py.File | None = None
        self.raw: _RawAppender | None = None
        if n_channels is not None:
            # no chunk cache: whole chunks go to the OS inside H5Dwrite, which releases the
            # interpreter lock; the flush then only writes metadata
            self.h5 = h5py.File(path, "r+", rdcc_nbytes=0)
            self.raw = _RawAppender(self.h5, rows, n_channels)
        self.t0 = 0
        self.spikes: list[SpikeEvents] = []
        self.write_error: str | None = None
        self.error_sample = 0
        self.journal_error: str | None = None
        self.records_lost = 0

    def run(self, items: Any, progress: Callable[[int, int], None]) -> dict[str, Any]:
        """Take items until "stop"; ``progress(taken, on_disk)`` counts raw samples."""
        idle_s = nwbfile.CHUNK_S
        last_flush = time.monotonic()
        taken = 0
        try:
            while True:
                try:
                    kind, item = items.get(timeout=idle_s)
                except queue.Empty:
                    self.flush()
                    progress(taken, self.persisted)
                    last_flush = time.monotonic()
                    continue
                if kind == "stop":
                    break
                flushed = False
                if kind == "blocks":
                    for run in _contiguous(item):
                        flushed |= self.write_block(run)
                        taken += run.n_samples
                    progress(taken, self.persisted)
                elif kind == "spikes":
                    self.spikes.extend(item)
                else:
                    if kind == "start":
                        self.t0 = int(item["first_sample"])
                    self.journal_write(kind, item)
                if flushed or time.monotonic() - last_flush > idle_s:
                    self.flush_journal()
                    last_flush = time.monotonic()
            self.flush()
            progress(taken, self.persisted)
        finally:
            self.close()
        return {
            "write_error": self.write_error, "error_sample": self.error_sample,
            "journal_error": self.journal_error, "records_lost": self.records_lost,
        }

    def close(self) -> None:
        if self.h5 is not None:
            try:
                self.h5.close()
            except Exception:  # a broken disk must not hide what was already counted
                pass
        try:
            self.journal.close()
        except OSError as exc:
            self.journal_error = self.journal_error or f"{type(exc).__name__}: {exc}"

    def journal_write(self, kind: str, record: dict[str, Any]) -> None:
        if self.journal_error is not None:
            self.records_lost += 1
            return
        try:
            self.journal.write(kind, record)
        except Exception as exc:  # disk full: count what the journal could not take
            self.journal_error = f"{type(exc).__name__}: {exc}"
            self.records_lost += 1

    def flush_journal(self) -> None:
        if self.spikes:
            spikes = SpikeEvents.concat(self.spikes)
            self.spikes.clear()
            if self.journal_error is None:
                try:
                    self.journal.write_spikes(spikes)
                except Exception as exc:
                    self.journal_error = f"{type(exc).__name__}: {exc}"
            if self.journal_error is not None:
                self.records_lost += 1
        if self.journal_error is None:
            try:
                self.journal.flush()
            except Exception as exc:
                self.journal_error = f"{type(exc).__name__}: {exc}"

    def write_block(self, block: Block) -> bool:
        """Hand a block to the appender; True if that flushed the file."""
        if self.raw is None or self.write_error is not None:
            return False
        try:
            flushed = self.raw.add(block.start_sample - self.t0, block.data)
            if flushed:
                self.check_room()
            return flushed
        except Exception as exc:  # h5py reports a full disk as OSError or RuntimeError
            self.failed(exc)
            return False

    def check_room(self) -> None:
        """Stop raw samples, closing the file cleanly, before the disk is full."""
        free = shutil.disk_usage(self.path.parent).free
        if free < RESERVE_BYTES:
            self.h5.close()
            self.stop_raw(f"the disk is nearly full ({free / 1e6:.0f} MB left): raw samples "
                          "stopped to keep room for spikes, pulses and trials")

    def failed(self, exc: Exception) -> None:
        """The disk refused a write: stop writing raw samples, count the rest as lost."""
        self.stop_raw(f"writing raw samples failed ({type(exc).__name__}: {exc}); the run "
                      "goes on, spikes, pulses and trials are still recorded")

    def stop_raw(self, why: str) -> None:
        self.write_error = why
        self.error_sample = self.t0 + self.raw.first_unwritten
        self.journal_write("event", {"sample": self.error_sample, "kind": "recorder_error",
                                     "message": why})

    @property
    def persisted(self) -> int:
        return self.raw.persisted if self.raw is not None else 0

    def flush(self) -> None:
        if self.raw is not None and self.write_error is None:
            try:
                self.raw.write_partial()
            except Exception as exc:
                self.failed(exc)
        self.flush_journal()


def failure(why: str) -> dict[str, Any]:
    """How the disk side ended when it could not even report."""
    return {"write_error": why, "error_sample": 0, "journal_error": why, "records_lost": 0}


def main(argv: list[str] | None = None) -> None:
    """``python -m mea_control.recording NWB JOURNAL N_CHANNELS ROWS``.

    Reads pickled ``(kind, item)`` pairs from stdin until ("stop", None) or the end
    of the pipe (its run was killed); writes ``ready`` once the files are open,
    ``progress TAKEN ON_DISK`` lines and, at the end, ``result JSON`` to stdout.
    N_CHANNELS 0 means no raw samples.
    """
    path, journal, n_channels, rows = argv or sys.argv[1:]
    # Ctrl-C, `kill` and a closed terminal reach the whole process group: the host ends
    # its run and closes the pipe, and this process finishes the file then, not before.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                items.put(pickle.load(sys.stdin.buffer))
        except (EOFError, OSError, pickle.UnpicklingError):
            items.put(("stop", None))

    threading.Thread(target=read, daemon=True).start()

    def say(line: str) -> None:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:  # the host is gone (killed): the files are finished all the same
            pass

    def progress(taken: int, on_disk: int) -> None:
        say(f"progress {taken} {on_disk}")

    try:
        writer = DiskWriter(Path(path), Path(journal), int(n_channels) or None, int(rows))
        say("ready")
        result = writer.run(items, progress)
    except Exception as exc:  # the recorder must hear of it, whatever it was
        result = failure(f"the recording process failed ({type(exc).__name__}: {exc})")
    say(f"result {json.dumps(result)}")
    os._exit(0)  # HDF5 may crash in its exit handler after a failed write; all is closed

