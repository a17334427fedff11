"""Recording when things go wrong: a killed process, a stalled or full disk, bad paths and files."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from datetime import UTC

import h5py
import numpy as np
import pytest
from conftest import ROOT, cli_batch, cli_command, ctrl_c_works, wait_until

from mea_control import cli, recording
from mea_control.cli.console import EXIT_INTERRUPTED
from mea_control.cli.run import _report_recording
from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.protocol import load_protocol
from mea_control.recording import disk, writer
from mea_control.recording.journal import journal_path
from mea_control.recording.writer import Recorder, run_provenance
from mea_control.sinks import Sink

SERIES = "acquisition/ElectricalSeries"


def run_cli(*args, timeout=300):
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _openable(path) -> bool:
    try:
        recording.open(path).close()
        return True
    except recording.RecordingError:
        return False


def simulated_samples(url: str, n: int) -> np.ndarray:
    """The first n raw samples the simulator produces for ``url`` (deterministic)."""
    driver = open_driver(url)
    driver.open()
    driver.set_fast(True)
    driver.start(25)
    parts, got = [], 0
    while got < n:
        item = driver.read(timeout=1.0)
        if hasattr(item, "data"):
            parts.append(item.data)
            got += len(item.data)
    driver.stop()
    driver.close()
    return np.concatenate(parts)[:n]


def test_killed_run_leaves_a_readable_file_and_recover_restores_tables(tmp_path):
    nwb = tmp_path / "killed.nwb"
    url = "sim://?seed=4"
    proc = subprocess.Popen(
        cli_command("run", "bss_isomura", "--device", url, "--fast", "--sessions", "3",
                    "--record", str(nwb), "--quiet"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = journal_path(nwb)
    try:  # kill it once a few trials are in the side journal
        wait_until(lambda: journal.exists() and journal.read_text().count('"record": "trial"') >= 5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    wait_until(lambda: _openable(nwb))  # the recording process flushes and lets go

    with recording.open(nwb) as rec:  # opens as it is, tables from the side journal
        assert not rec.complete
        state, problems = recording.health(rec)
        assert state == "incomplete" and "mea-control recover" in problems[0]
        n = rec.n_samples
        assert n > 25_000
        raw = rec.samples[:]
        spikes_before = len(rec.spikes)
        last_spike = int(rec.spikes.sample[-1])
        trials_before = len(rec.trials)
        first_pulse = int(np.min(rec.pulses["execution_sample"]))
    # every sample up to the last flush is there: exactly what the simulator sent until the
    # first pulse (the simulator's own stream has none), and real data in every chunk after
    assert np.array_equal(raw[:first_pulse], simulated_samples(url, first_pulse))
    chunks = raw[: n // 2500 * 2500].reshape(-1, 2500, 64)
    assert (chunks.std(axis=(1, 2)) > 1.0).all()
    # what was flushed last: raw samples and side records within one flush interval
    assert last_spike - n < 3 * 2500 + 25_000 * 0.5

    info = run_cli("info", str(nwb))
    assert info.returncode == 0 and "incomplete" in info.stdout and "recover" in info.stdout

    fixed = run_cli("recover", str(nwb))
    assert fixed.returncode == 0, fixed.stderr
    assert "recovered" in fixed.stdout and not journal.exists()
    with recording.open(nwb) as rec:
        assert rec.complete and recording.health(rec)[0] == "recovered"
        assert len(rec.spikes) == spikes_before and len(rec.trials) == trials_before >= 5
        executed = np.asarray(rec.pulses["status"]) == "executed"
        assert executed.sum() > 0
    se = pytest.importorskip("spikeinterface.extractors")
    sorting = se.read_nwb_sorting(nwb, electrical_series_path=SERIES)
    assert sum(len(sorting.get_unit_spike_train(u)) for u in sorting.unit_ids) == spikes_before
    assert se.read_nwb_recording(nwb, electrical_series_path=SERIES).get_num_samples() == n

    again = run_cli("recover", str(nwb))
    assert again.returncode == 2 and "nothing to recover" in again.stderr


class _Release(Sink):
    """Lets a stalled writer go on once the loop reaches ``at_sample``."""

    def __init__(self, gate: threading.Event, at_sample: int) -> None:
        self.gate, self.at_sample = gate, at_sample

    def on_block(self, block, filtered):
        if block.start_sample >= self.at_sample:
            self.gate.set()


def _run_bss(tmp_path, record=True, sinks_before=(), **recorder_options):
    """Two BSS sessions of 3 trials; the recorder's disk side runs as a thread (so that
    tests can patch it) unless ``process=True``."""
    recorder_options.setdefault("process", False)
    cls, path = load_protocol("bss_isomura")
    driver = open_driver("sim://?seed=1")
    driver.open()
    engine = Engine(driver, cls(sessions=1, trials_per_session=6),
                    EngineConfig(fast=True, block_ms=1.0))
    if record:
        rec = Recorder(tmp_path / "r.nwb", driver.info, run_provenance(engine.describe(), path),
                       **recorder_options)
        engine.sinks += [*sinks_before, rec]
    summary = engine.run()
    driver.close()
    return engine, summary


def test_stalled_disk_loses_raw_blocks_but_not_the_loop(tmp_path, monkeypatch):
    gate = threading.Event()
    real_write = disk._RawAppender._write
    calls = []

    def stalled(self):
        calls.append(1)
        if len(calls) == 3:  # the disk stops answering on the third chunk
            gate.wait(60)
        real_write(self)

    monkeypatch.setattr(disk._RawAppender, "_write", stalled)
    engine, s = _run_bss(tmp_path, sinks_before=[_Release(gate, 100_000)], max_backlog_s=0.5)
    assert s["error"] is None and s["trials"] == 6
    r = s["recording"]
    total = round(s["duration_s"] * 25000)
    assert r["samples_lost"] > 0 and r["samples_written"] + r["samples_lost"] == total
    assert r["backlog_peak_s"] <= 0.5
    with recording.open(tmp_path / "r.nwb") as rec:
        lost = [e for e in rec.events if e["kind"] == "lost"]
        assert lost and "not written to disk" in lost[0]["message"]
        assert rec.summary["recording"]["samples_lost"] == r["samples_lost"]
        assert len(rec.spikes) == s["spikes"] and len(rec.trials) == 6
        assert "samples not written to disk" in recording.health(rec)[1][0]
        # blocks after the stall landed at their own place; the lost ones read as zeros
        assert rec.n_samples == total
        ranges = [[int(x) for x in e["message"].split()[1].split("-")] for e in lost]
        assert sum(b - a for a, b in ranges) == r["samples_lost"]
        # the stall, until the disk came back (a busy machine's writer may lose more)
        assert any(a < 100_000 <= b for a, b in ranges), ranges
        raw = rec.samples[:]
        kept = np.ones(total, bool)
        for a, b in ranges:
            kept[a:b] = False
        assert not raw[~kept].any()
        chunks = raw[kept][: kept.sum() // 2500 * 2500].reshape(-1, 2500, 64)
        assert (chunks.std(axis=(1, 2)) > 1).all()
    # the closed loop did not notice: same trials as a run without a recorder
    monkeypatch.undo()
    plain, _ = _run_bss(tmp_path, record=False)
    assert np.array_equal(plain.trials.table().r, engine.trials.table().r)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("Unable to synchronously flush file (errno = 28, No space left on device)"),
])
def test_full_disk_mid_run_is_counted_and_reported(tmp_path, monkeypatch, error):
    real_write = disk._RawAppender._write
    calls = []

    def full(self):
        calls.append(1)
        if len(calls) > 10:
            raise error
        real_write(self)

    monkeypatch.setattr(disk._RawAppender, "_write", full)
    _, s = _run_bss(tmp_path)
    r = s["recording"]
    total = round(s["duration_s"] * 25000)
    assert "No space left" in r["write_error"] and r["error"] is None
    with recording.open(tmp_path / "r.nwb") as rec:
        assert r["samples_written"] == rec.n_samples == 10 * 2500  # what reached the disk
        assert r["samples_lost"] == total - rec.n_samples
        events = {e["kind"]: e for e in rec.events}
        assert events["lost"]["sample"] == rec.n_samples  # first sample not on disk (t0 = 0)
        assert f"{r['samples_lost']} samples from sample {rec.n_samples}" in \
            events["lost"]["message"]
        assert "recorder_error" in events and "stop" in events  # the journal went on
        assert len(rec.trials) == 6 and len(rec.spikes) == s["spikes"]


def test_cli_warns_when_the_recording_lost_data(tmp_path, monkeypatch, capsys):
    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk._RawAppender, "_write", full)
    _, s = _run_bss(tmp_path)
    assert _report_recording(s["recording"], quiet=False)  # -> exit code 4
    out = capsys.readouterr()
    total = round(s["duration_s"] * 25000)
    assert f"0 raw samples, {total} lost" in out.out
    assert "warning: recording" in out.err and "No space left on device" in out.err


class _Freeze(Sink):
    """Stops the recording process (as a hung disk would) between two samples."""

    def __init__(self, recorder, start: int, stop: int) -> None:
        self.pid, self.start, self.stop = recorder._process.pid, start, stop

    def on_block(self, block, filtered):
        if block.start_sample == self.start:
            os.kill(self.pid, signal.SIGSTOP)
        elif block.start_sample == self.stop:
            os.kill(self.pid, signal.SIGCONT)


def test_a_hung_recording_process_does_not_stall_the_loop(tmp_path):
    cls, path = load_protocol("bss_isomura")
    driver = open_driver("sim://?seed=1")
    driver.open()
    engine = Engine(driver, cls(sessions=1, trials_per_session=6),
                    EngineConfig(fast=True, block_ms=1.0))
    rec = Recorder(tmp_path / "r.nwb", driver.info, run_provenance(engine.describe(), path),
                   max_backlog_s=0.5)
    engine.sinks += [_Freeze(rec, 25_000, 100_000), rec]
    s = engine.run()
    driver.close()
    r = s["recording"]
    assert s["error"] is None and s["trials"] == 6
    assert r["samples_lost"] > 0 and r["error"] is None
    total = round(s["duration_s"] * 25000)
    with recording.open(tmp_path / "r.nwb") as rec_file:
        assert rec_file.complete and rec_file.n_samples == total
        assert r["samples_written"] + r["samples_lost"] == total
        assert any(e["kind"] == "lost" for e in rec_file.events)
    plain, _ = _run_bss(tmp_path, record=False)
    assert np.array_equal(plain.trials.table().r, engine.trials.table().r)


def test_a_pattern_still_queued_at_the_end_is_cancelled_and_recorded_so(tmp_path):
    protocol = tmp_path / "last.py"
    protocol.write_text(
        "from mea_control.protocol import Protocol\n"
        "from mea_control.types import StimPattern, StimPulse\n\n\n"
        "class Last(Protocol):\n"
        '    """One pulse in the very last block."""\n\n'
        "    def on_block(self, ctx, block, filtered):\n"
        "        if ctx.now >= 12_500:\n"
        "            ctx.stimulate(StimPattern.single([10], StimPulse.biphasic(5, 200)))\n"
        "            ctx.finish()\n"
    )
    nwb = tmp_path / "last.nwb"
    proc = run_cli("run", str(protocol), "--fast", "--record", str(nwb))
    assert proc.returncode == 0, proc.stderr
    with recording.open(nwb) as rec:  # the end of the run aborted it before it ran
        assert list(rec.pulses["status"]) == ["dropped"]
        assert list(rec.pulses["reason"]) == ["aborted"]
        assert list(rec.pulses["execution_sample"]) == [-1]
        assert rec.summary["stims_unreported"] == 0 and rec.summary["stims_dropped"] == 1


def test_a_failed_lsl_outlet_leaves_no_recording(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pylsl", None)
    target = tmp_path / "r.nwb"
    code = cli.main(["run", "spontaneous", "--fast", "--duration", "1", "--record", str(target),
                     "--lsl"])
    assert code == 2 and "pylsl" in capsys.readouterr().err
    assert not target.exists() and not journal_path(target).exists()


def test_overwrite_refuses_a_file_another_run_is_writing(tmp_path):
    target = tmp_path / "busy.nwb"
    with h5py.File(target, "w"):
        proc = run_cli("run", "spontaneous", "--duration", "30", "--record", str(target),
                       "--overwrite")
    assert proc.returncode == 2 and "another run is still writing it" in proc.stderr
    assert target.exists()


def test_cli_refuses_bad_targets_before_the_run(tmp_path):
    existing = tmp_path / "old.nwb"
    existing.write_bytes(b"precious")
    journal_path(tmp_path / "crashed.nwb").write_text("{}")  # a crashed run's tables
    targets = [
        (existing, "exists; choose another name or add --overwrite"),
        (tmp_path / "nope" / "r.nwb", "does not exist"),
        (tmp_path, "it is a folder"),
        (tmp_path / "r.h5", "end it in .nwb"),
        (existing / "r.nwb", "is a file, not a folder"),
        ("", "--record needs a file name"),
        ("/proc/r.nwb", "cannot record to /proc/r.nwb"),
    ]
    run = ["run", "spontaneous", "--duration", "30"]
    *refused, crashed, no_raw = cli_batch(  # one process: each case spends its time importing
        [[*run, "--record", str(target)] for target, _ in targets]
        + [[*run, "--record", str(tmp_path / "crashed.nwb")], [*run, "--no-raw"]])
    for (target, words), (code, stderr, stdout) in zip(targets, refused, strict=True):
        assert code == 2, (target, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], stderr
        assert "[start]" not in stderr and not stdout
    assert existing.read_bytes() == b"precious"
    assert crashed[0] == 2 and "crashed.nwb.journal exists" in crashed[1]
    assert no_raw[0] == 2 and "--record" in no_raw[1]


def test_full_disk_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 5_000_000))
    code = cli.main(["run", "spontaneous", "--fast", "--duration", "2", "--record",
                     str(tmp_path / "r.nwb"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "disk full (5 MB free" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.nwb").exists()


def test_overwrite_replaces_a_recording(tmp_path):
    target = tmp_path / "r.nwb"
    target.write_bytes(b"old")
    proc = run_cli("run", "spontaneous", "--fast", "--duration", "0.5", "--record", str(target),
                   "--overwrite", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with recording.open(target) as rec:
        assert rec.complete and rec.n_samples == 12_500


@pytest.fixture
def not_recordings(tmp_path):
    text = tmp_path / "notes.nwb"
    text.write_text("not hdf5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    from datetime import datetime

    from pynwb import NWBHDF5IO, NWBFile

    other = tmp_path / "other.nwb"
    with NWBHDF5IO(str(other), "w") as io:
        io.write(NWBFile(session_description="x", identifier="x",
                         session_start_time=datetime.now(UTC)))
    return {text: "not an HDF5 file", plain: "not an NWB file",
            other: "not a mea-control recording", tmp_path / "gone.nwb": "no such file"}


def test_open_info_and_recover_explain_files_that_are_not_recordings(not_recordings):
    for path, words in not_recordings.items():
        with pytest.raises(recording.RecordingError, match=words):
            recording.open(path)
        for command in ("info", "recover"):
            proc = run_cli(command, str(path))
            assert proc.returncode == 2 and words in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1


def test_truncated_file_gives_a_clear_message(tmp_path):
    good = tmp_path / "good.nwb"
    proc = run_cli("run", "spontaneous", "--fast", "--duration", "1", "--record", str(good),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    cut = tmp_path / "cut.nwb"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(recording.RecordingError, match="damaged|truncated"):
        with recording.open(cut) as rec:
            rec.spikes  # noqa: B018 - reading is what fails
    proc = run_cli("info", str(cut))
    assert proc.returncode == 2 and "cut.nwb: damaged or truncated" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_file_being_recorded_is_named_as_such(tmp_path):
    target = tmp_path / "live.nwb"
    with h5py.File(target, "w") as f:  # held open for writing, as the recorder does
        f.attrs["nwb_version"] = "2.9.0"
        proc = run_cli("info", str(target))
    assert proc.returncode == 2 and "open for writing" in proc.stderr, proc.stderr


def test_ctrl_c_twice_still_finishes_the_file(tmp_path):
    nwb = tmp_path / "int.nwb"
    proc = subprocess.Popen(
        cli_command("run", "spontaneous", "--duration", "60", "--record", str(nwb), "--quiet"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_works)
    journal = journal_path(nwb)
    try:  # once a few batches of spikes are in the side journal
        wait_until(lambda: journal.exists() and journal.stat().st_size > 2000)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)  # the second press lands while the run winds down
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr.read()
    with recording.open(nwb) as rec:
        assert rec.complete and rec.summary["interrupted"] and rec.n_samples > 0


def test_raw_samples_stop_cleanly_before_the_disk_is_full(tmp_path, monkeypatch):
    real = disk.shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    checks = []

    def filling(path):
        checks.append(1)
        if len(checks) > 4:  # the start-up check, three chunks; the fourth leaves 10 MB
            return usage(10**10, 10**10 - 10**7, 10**7)
        return real(path)

    monkeypatch.setattr(disk.shutil, "disk_usage", filling)
    _, s = _run_bss(tmp_path)
    r = s["recording"]
    assert "nearly full (10 MB left)" in r["write_error"] and r["error"] is None
    with recording.open(tmp_path / "r.nwb") as rec:
        assert rec.complete and rec.n_samples == r["samples_written"] == 4 * 2500
        assert r["samples_lost"] == round(s["duration_s"] * 25000) - 4 * 2500
        assert len(rec.trials) == 6 and "lost" in [e["kind"] for e in rec.events]
