"""The recorder: an engine sink that writes a run to one crash-safe NWB file.

On the acquisition thread it only queues: raw blocks (bounded: past
``max_backlog_s`` of unwritten data a block is counted as lost, never
blocking the loop), spikes, pulses, trials, decisions and events, handed
every 50 ms of data to the recording process (``disk``), which appends raw
samples to the ElectricalSeries in chunks of 100 ms, flushing after each, and
everything else to the side journal. At a clean stop the journal becomes the
file's tables (see ``tables``).
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mea_control.recording import disk, nwbfile, tables
from mea_control.recording.errors import RecordingError, is_locked
from mea_control.recording.journal import Journal, journal_path
from mea_control.sinks import EventKind, RunDescription, RunEvent, Sink, StimRecord
from mea_control.trials import Trial
from mea_control.types import Block, DeviceInfo, SpikeEvents

#: Free space a recording of unknown length needs before it starts, in seconds of raw data.
MIN_FREE_S = 60.0
#: Margin for tables and HDF5 metadata, bytes.
MIN_FREE_BYTES = 20_000_000
#: How long the recording process may take to start and open the file, seconds.
STARTUP_S = 60.0
#: The acquisition thread hands data to the writer in batches of this many seconds.
BATCH_S = 0.05


def _child_env() -> dict[str, str]:
    """The environment of the recording process: ours, with this package importable."""
    here = str(Path(__file__).resolve().parents[2])
    paths = [here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


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
        if is_locked(exc):
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


def run_provenance(run: RunDescription, protocol_file: str | Path | None = None,
                   **extra: Any) -> dict[str, Any]:
    """What a recording keeps about how ``run`` was made (``Engine.describe()``): code,
    parameters, device, limits, seed."""
    source = None
    if protocol_file is not None:
        try:
            source = Path(protocol_file).read_text(encoding="utf-8")
        except OSError:
            source = None
    return {
        "software_version": run.software_version,
        "protocol": run.protocol,
        "protocol_file": str(protocol_file) if protocol_file else None,
        "protocol_source": source,
        "parameters": run.parameters,
        "device_url": run.device_url,
        "device_info": run.info.describe(),
        "limits": run.limits,
        "limit_notes": list(run.limit_notes),
        "seed": run.seed,
        "block_samples": run.block_samples,
        "fast": run.fast,
        "watchdog_ms": run.watchdog_ms,
        "detector": run.detector,
        **extra,
    }


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
        process: bool = True,
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
        self.journal_path.touch()
        self.t0: int | None = None
        self.max_backlog = int(max_backlog_s * info.sample_rate)
        self._queued = 0  # raw samples queued (acquisition thread adds)
        self.backlog_peak = 0
        self._lost_backlog = 0  # not queued: backlog full (acquisition thread adds)
        self._lost_from: int | None = None  # first sample of the current run not queued
        self._lost_to = 0
        #: How the disk side ended (write_error, journal_error, records_lost, ...).
        self.result: dict[str, Any] = {}
        self.finalize_error: str | None = None
        # acquisition thread: blocks and spikes gathered for the next queue put
        self._outbox: list[Block] = []
        self._outbox_spikes: list[SpikeEvents] = []
        self._outbox_samples = 0
        self._batch = max(1, int(info.sample_rate * BATCH_S))
        self._stopped = False
        self._start_disk_writer(process)

    def _start_disk_writer(self, process: bool) -> None:
        """The disk side runs in its own process (or, for fault-injection tests, a thread)."""
        self._taken = 0  # raw samples the disk side has taken (its progress reports)
        self._on_disk = 0  # raw samples on disk, flushed
        self._results: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        rows = nwbfile.chunk_rows(self.info.sample_rate)
        n_channels = self.info.n_channels if self.raw else 0
        if not process:
            writer = disk.DiskWriter(self.path, self.journal_path, n_channels or None, rows)
            self._workers = [threading.Thread(
                target=lambda: self._results.put(writer.run(self._queue, self._progress)),
                name="mea-recorder", daemon=True)]
        else:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mea_control.recording", str(self.path),
                 str(self.journal_path), str(n_channels), str(rows)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env())
            self._workers = [
                threading.Thread(target=self._feed, name="mea-recorder-feed", daemon=True),
                threading.Thread(target=self._listen, name="mea-recorder-status", daemon=True),
            ]
        self._ready = threading.Event()
        for worker in self._workers:
            worker.start()
        if process and not self._ready.wait(STARTUP_S):
            self._stop_disk_writer()
            raise RecordingError(f"cannot record to {self.path}: the recording process did "
                                 f"not start within {STARTUP_S:g} s")
        if not self._results.empty():  # it started and failed at once
            raise RecordingError(f"cannot record to {self.path}: "
                                 f"{self._results.get()['write_error']}")

    def _progress(self, taken: int, on_disk: int) -> None:
        self._taken, self._on_disk = taken, on_disk

    def _feed(self) -> None:
        """Pickle queued items into the recording process (a full pipe blocks only here)."""
        pipe = self._process.stdin
        try:
            while True:
                item = self._queue.get()
                pickle.dump(item, pipe, protocol=pickle.HIGHEST_PROTOCOL)
                pipe.flush()
                if item[0] == "stop":
                    break
        except OSError:  # the process died; _listen reports it
            pass
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def _listen(self) -> None:
        """Progress and the final result from the recording process."""
        result = disk.failure("the recording process ended without a word")
        for line in self._process.stdout:
            word, _, rest = line.decode().strip().partition(" ")
            if word == "progress":
                self._progress(*(int(x) for x in rest.split()))
            elif word == "ready":
                self._ready.set()
            elif word == "result":
                result = json.loads(rest)
        self._process.wait()
        self._results.put(result)
        self._ready.set()

    # -- sink methods, acquisition thread -----------------------------------------
    def on_block(self, block: Block, filtered: np.ndarray | None) -> None:
        if self.t0 is None:
            self.t0 = block.start_sample
            self._queue.put(("start", {"first_sample": self.t0, "wall_time": time.time()}))
        self._outbox_samples += block.n_samples
        if self.raw:
            self._take(block)
        if self._outbox_samples >= self._batch:
            self._send()

    def _take(self, block: Block) -> None:
        backlog = self._queued - self._taken
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
            self._event(self._lost_to, EventKind.LOST,
                        f"samples {self._lost_from}-{self._lost_to} not written to disk: the "
                        f"writer fell {self.max_backlog / fs:g} s behind (disk too slow)")
            self._lost_from = None

    @property
    def samples_written(self) -> int:
        """Raw samples on disk, flushed."""
        return self._on_disk

    @property
    def samples_lost(self) -> int:
        """Raw samples the run produced that are not on disk (backlog full or disk failed);
        exact once the run has stopped."""
        return self._lost_backlog + self._taken - self.samples_written

    @property
    def samples_dropped(self) -> int:
        """Raw samples lost so far while recording (backlog full, or after a disk error);
        unlike samples_lost, samples on their way to disk do not count."""
        if self.write_error is None:
            return self._lost_backlog
        return self.samples_lost

    @property
    def write_error(self) -> str | None:
        return self.result.get("write_error")

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
        # the kind as plain text: the recording process and the file hold strings
        self._queue.put(("event", {"sample": int(sample), "kind": str(kind),
                                   "message": message}))

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
        self.result = self._stop_disk_writer()
        journal = Journal(self.journal_path)
        try:
            if self.write_error is not None:
                lost = self._taken - self.samples_written
                sample = self.result["error_sample"]
                journal.write("event", {
                    "sample": sample, "kind": str(EventKind.LOST),
                    "message": f"{lost} samples from sample {sample} on not written to disk: "
                    f"{self.write_error}"})
            stats = self.stats()
            summary["recording"] = stats
            journal.write("summary", {"summary": summary})
            journal.close()
        except OSError as exc:
            self.result["journal_error"] = self.result.get("journal_error") or str(exc)
            stats = summary["recording"] = self.stats()
        if self.result.get("journal_error") is None:
            try:
                tables.finalize(self.path)
            except Exception as exc:  # disk full at the end: the journal stays for recover
                self.finalize_error = f"{type(exc).__name__}: {exc}"
        else:
            self.finalize_error = f"the side journal failed ({self.result['journal_error']})"
        stats["error"] = self.finalize_error
        stats["bytes"] = self.path.stat().st_size if self.path.exists() else 0

    def _stop_disk_writer(self) -> dict[str, Any]:
        self._queue.put(("stop", None))
        result = self._results.get()
        for worker in self._workers:
            worker.join()
        return result

    def close(self) -> None:
        """Stop without a summary (the run never got to its end): keep what was written."""
        if not self._stopped:
            self.on_stop({"interrupted": True, "note": "the run did not finish",
                          "ended": "the run did not finish (it ended without its summary)",
                          "ended_early": True})

    def discard(self) -> None:
        """The run never started: stop the disk side and delete the file and its journal."""
        if not self._stopped:
            self._stopped = True
            self._stop_disk_writer()
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
            "backlog_s": round((self._queued - self._taken) / fs, 3),
            "write_error": self.write_error,
            "records_lost": self.result.get("records_lost", 0),
        }
