"""Fuzzing the recording readers: damaged side journals and damaged NWB files.

One small real recording is made per session (the engine on sim://, complete, and one
whose tables were never written so that its side journal stays); the tests damage copies
(cut short, bytes changed, garbage lines) and check that the readers, ``mea-control info``
and ``mea-control recover`` read what is readable or raise RecordingError, never another
exception, never a hang. The explicit tests below the fuzzers are the cases the fuzzers
found. Set MEA_CONTROL_FUZZ=N to try N times as many random examples.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mea_control import cli, recording
from mea_control.cli.console import EXIT_USER_ERROR
from mea_control.driver import open_driver
from mea_control.engine import Engine, EngineConfig
from mea_control.protocol import load_protocol
from mea_control.recording import tables
from mea_control.recording.journal import FIELDS, Journal, journal_path, read_journal
from mea_control.recording.tables import decision_record, stim_rows
from mea_control.recording.writer import Recorder, run_provenance

FUZZ = int(os.environ.get("MEA_CONTROL_FUZZ", "1"))
#: A reader that takes longer than this on a small file hangs: the test run ends there.
HANG_S = 120


def fuzz(examples: int):
    return settings(max_examples=examples * FUZZ, derandomize=FUZZ == 1, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@dataclass(frozen=True)
class Made:
    complete: Path
    incomplete: Path  # its side journal beside it

    @property
    def journal(self) -> Path:
        return journal_path(self.incomplete)


def _record(path: Path) -> None:
    cls, protocol_file = load_protocol("bss_isomura")
    driver = open_driver("sim://?seed=3")
    driver.open()
    try:
        engine = Engine(driver, cls(sessions=1, trials_per_session=3, isi_s=0.4),
                        EngineConfig(fast=True))
        provenance = run_provenance(engine.describe(), protocol_file)
        engine.sinks.append(Recorder(path, engine.info, provenance))
        engine.run()
    finally:
        driver.close()


def _never_finalized(path):
    raise OSError(28, "No space left on device")


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> Made:
    """A complete recording, and one whose tables stayed in the side journal (as after a
    disk filled up at the end), with a model decision added to that journal."""
    folder = tmp_path_factory.mktemp("fuzz")
    complete, incomplete = folder / "complete.nwb", folder / "incomplete.nwb"
    _record(complete)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tables, "finalize", _never_finalized)
        _record(incomplete)
    journal = Journal(journal_path(incomplete))
    journal.write("decision", decision_record(100, {"choice": [1, 0], "scores": [0.5, 0.1]}))
    journal.close()
    with recording.open(incomplete) as rec:
        assert not rec.complete and len(rec.pulses["status"]) and rec.trials is not None
    return Made(complete, incomplete)


@contextlib.contextmanager
def no_hang():
    """End the test run with every thread's traceback if the block takes HANG_S."""
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def read_everything(path: Path) -> recording.Recording:
    """Open a recording and read every part of it, as ``mea-control info`` and users do."""
    with no_hang(), recording.open(path) as rec:
        recording.describe(rec)
        for part in ("spikes", "pulses", "trials", "events", "decisions", "duration_s"):
            getattr(rec, part)
        if rec.samples is not None and rec.n_samples:
            rec.microvolts(0, min(rec.n_samples, 500))
        return rec


def readable_or_clear_error(path: Path) -> bool:
    """True if it reads; False after a RecordingError (anything else fails the test)."""
    try:
        read_everything(path)
        return True
    except recording.RecordingError as exc:
        assert str(exc).startswith(str(path)), exc
        return False


def cli_main(*args: str) -> tuple[int, str]:
    """``mea-control ARGS`` in this process: exit code and stderr; any exception escapes."""
    err = io.StringIO()
    with no_hang(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, err.getvalue()


def assert_clear_cli(code: int, err: str) -> None:
    assert code in (0, EXIT_USER_ERROR), (code, err)
    if code:
        assert err.startswith("mea-control: error: ") and err.count("\n") == 1, err


# -- damage --------------------------------------------------------------------------------------

#: (what, where as a fraction of the length, bytes)
damage = st.lists(st.one_of(
    st.tuples(st.just("cut"), st.floats(0, 1), st.just(b"")),
    st.tuples(st.just("set"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(max_size=60)),
    st.tuples(st.just("line"), st.floats(0, 1), st.binary(max_size=60)),
), min_size=1, max_size=6)


def damaged_bytes(data: bytes, changes) -> bytes:
    out = bytearray(data)
    for what, where, payload in changes:
        at = min(int(where * len(out)), max(len(out) - 1, 0))
        if what == "cut":
            del out[at:]
        elif what == "set" and out:
            out[at:at + len(payload)] = payload
        elif what == "insert":
            out[at:at] = payload
        elif what == "line":  # a whole line of garbage between two records
            start = out.rfind(b"\n", 0, at) + 1
            out[start:start] = payload.replace(b"\n", b" ") + b"\n"
    return bytes(out)


#: Where bytes of an HDF5 file matter most: its head (superblock, root group, most
#: metadata), its tail (what was written last: the tables) and anywhere.
def hdf5_damage(size: int):
    position = st.one_of(st.integers(0, min(size, 200_000) - 1),
                         st.integers(max(size - 400_000, 0), size - 1),
                         st.integers(0, size - 1))
    change = st.one_of(
        st.tuples(st.just("cut"), position, st.just(b"")),
        st.tuples(st.just("set"), position, st.binary(min_size=1, max_size=8)),
    )
    return st.lists(change, min_size=1, max_size=8)


def damage_file(src: Path, dst: Path, changes) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for what, at, payload in changes:
            if what == "cut":
                f.truncate(min(at, os.fstat(f.fileno()).st_size))
            else:
                f.seek(at)
                f.write(payload)


# -- the side journal -----------------------------------------------------------------------------


def check_contents(c, n_channels: int) -> None:
    """What read_journal keeps is what the readers can use."""
    for kind in ("stims", "trials", "events", "decisions"):
        for record in getattr(c, kind):
            assert all(name in record for name in FIELDS[kind[:-1]])
    stim_rows(c.stims, 0, 25_000.0)
    assert len(c.spikes) == 0 or 0 <= c.spikes.channel.min() <= c.spikes.channel.max() < 64
    assert all(len(t["r"]) == n_channels for t in c.trials)


@fuzz(200)
@given(changes=damage)
def test_a_damaged_journal_is_read_as_far_as_it_goes(made, tmp_path, changes):
    path = tmp_path / "x.nwb.journal"
    path.write_bytes(damaged_bytes(made.journal.read_bytes(), changes))
    with no_hang():
        c = read_journal(path, 64)
    check_contents(c, 64)


@fuzz(60)
@given(changes=damage)
def test_a_recording_with_a_damaged_journal_reads(made, tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("j")
    nwb = folder / "x.nwb"
    os.symlink(made.incomplete, nwb)  # reading never writes: the file can be shared
    journal_path(nwb).write_bytes(damaged_bytes(made.journal.read_bytes(), changes))
    read_everything(nwb)  # an intact file reads whatever its journal holds
    assert_clear_cli(*cli_main("info", str(nwb)))


@fuzz(10)
@given(changes=damage)
def test_recover_writes_what_a_damaged_journal_holds(made, tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("r")
    nwb = folder / "x.nwb"
    shutil.copyfile(made.incomplete, nwb)
    journal_path(nwb).write_bytes(damaged_bytes(made.journal.read_bytes(), changes))
    code, err = cli_main("recover", str(nwb))
    assert code == 0, err
    rec = read_everything(nwb)
    assert rec.complete


# -- the NWB file ---------------------------------------------------------------------------------


@fuzz(120)
@given(data=st.data())
def test_a_damaged_file_reads_or_says_it_is_damaged(made, tmp_path_factory, data):
    which = data.draw(st.sampled_from(["complete", "incomplete"]))
    src = getattr(made, which)
    folder = tmp_path_factory.mktemp("f")
    nwb = folder / "x.nwb"
    damage_file(src, nwb, data.draw(hdf5_damage(src.stat().st_size)))
    if which == "incomplete":
        shutil.copyfile(made.journal, journal_path(nwb))
    readable_or_clear_error(nwb)
    assert_clear_cli(*cli_main("info", str(nwb)))


@fuzz(25)
@given(data=st.data())
def test_recover_of_a_damaged_file_recovers_or_says_it_is_damaged(made, tmp_path_factory,
                                                                  data):
    folder = tmp_path_factory.mktemp("rf")
    nwb = folder / "x.nwb"
    damage_file(made.incomplete, nwb, data.draw(hdf5_damage(made.incomplete.stat().st_size)))
    shutil.copyfile(made.journal, journal_path(nwb))
    code, err = cli_main("recover", str(nwb))
    assert_clear_cli(code, err)
    if code:
        assert journal_path(nwb).exists()  # nothing lost: the tables are still in the journal


# -- what the fuzzers found -----------------------------------------------------------------------


def journal_with(made: Made, folder: Path, change) -> Path:
    """A copy of the incomplete recording whose journal's first record of a kind is
    changed by ``change(record)``; returns the copy's path."""
    nwb = folder / "x.nwb"
    shutil.copyfile(made.incomplete, nwb)
    lines = made.journal.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        record = json.loads(line)
        if change(record):
            lines[i] = json.dumps(record) + "\n"
            break
    journal_path(nwb).write_text("".join(lines))
    return nwb


def _lose_a_pulse_field(record) -> bool:
    if record["record"] != "stim":
        return False
    record["pulses"][0]["durationz_us"] = record["pulses"][0].pop("durations_us")
    return True


def _lose_a_trial_field(record) -> bool:
    if record["record"] != "trial":
        return False
    record["decision_sampld"] = record.pop("decision_sample")
    return True


def _spike_on_electrode_5149(record) -> bool:
    if record["record"] != "spikes":
        return False
    from mea_control.recording.journal import _pack, _unpack
    channel = _unpack(record["channel"], "i2").copy()
    channel[0] = 5149
    record["channel"] = _pack(channel)
    return True


@pytest.mark.parametrize("change", [_lose_a_pulse_field, _lose_a_trial_field,
                                    _spike_on_electrode_5149])
def test_a_journal_record_with_a_damaged_field_is_skipped(made, tmp_path, change):
    """Found: a record whose key a changed byte renamed (KeyError in the stimulation
    table, the trial table and recover), a spike batch naming an electrode the array
    does not have (IndexError in recover)."""
    nwb = journal_with(made, tmp_path, change)
    assert read_journal(journal_path(nwb), 64).torn_lines == 1
    read_everything(nwb)
    assert cli_main("recover", str(nwb)) == (0, "")
    with recording.open(nwb) as rec:
        assert rec.summary["recovered"]["torn_journal_lines"] == 1
        assert "1 line(s) of the side journal could not be read" in recording.describe(rec)


def _renamed_column(f: h5py.File) -> None:
    f["intervals/trials"].move("trigger_sample", "trigger_samplf")


def _column_name_not_utf8(f: h5py.File) -> None:
    f["intervals/stimulation"].create_dataset(b"\xcb\xffx", data=[1])


def _string_references_overwritten(f: h5py.File) -> int:
    """Where the first string's heap address is (after its 4-byte length): 0xff there is
    HDF5's undefined address. (A length of 0xffffffff gives the same OSError only after
    HDF5 has filled a 4 GB buffer: seconds, and the memory.)"""
    ds = f["intervals/stimulation/status"]
    return ds.id.get_chunk_info(0).byte_offset + 4


@pytest.mark.parametrize("change", [_renamed_column, _column_name_not_utf8,
                                    _string_references_overwritten])
def test_a_damaged_table_is_a_clear_error(made, tmp_path, change):
    """Found: a column whose name a changed byte renamed (KeyError), or made invalid
    UTF-8 (TypeError: h5py gives such names as bytes), and strings whose heap references
    are damaged (OSError from h5py when the table is read)."""
    nwb = tmp_path / "x.nwb"
    shutil.copyfile(made.complete, nwb)
    with h5py.File(nwb, "r+") as f:
        offset = change(f)
    if offset is not None:
        with open(nwb, "r+b") as f:
            f.seek(offset)
            f.write(b"\xff" * 8)
    assert not readable_or_clear_error(nwb)
    code, err = cli_main("info", str(nwb))
    assert code == EXIT_USER_ERROR and f"{nwb}: damaged recording" in err


def test_damaged_root_attributes_are_a_clear_error(made, tmp_path):
    """Found: a changed byte in the root group's attributes makes h5py raise RuntimeError
    ("simple dataspace dimensionality is too large") when asked for nwb_version."""
    nwb = tmp_path / "x.nwb"
    shutil.copyfile(made.complete, nwb)
    data = nwb.read_bytes()
    name = data.find(b"nwb_version")
    errors = set()
    with open(nwb, "r+b") as f:
        for offset in range(name - 8, name + 48):
            f.seek(offset)
            f.write(b"\xff")
            f.flush()
            try:
                read_everything(nwb)
            except recording.RecordingError as exc:
                errors.add(str(exc))
            f.seek(offset)
            f.write(data[offset:offset + 1])
    assert any("(RuntimeError: " in error for error in errors), errors


def test_recover_of_a_file_with_damaged_text_keeps_the_journal(made, tmp_path):
    """Found: text only pynwb reads (here the species) made invalid UTF-8: recover raised
    UnicodeDecodeError from inside pynwb."""
    nwb = tmp_path / "x.nwb"
    data = bytearray(made.incomplete.read_bytes())
    data[data.find(b"Rattus norvegicus")] = 0xCB
    nwb.write_bytes(data)
    shutil.copyfile(made.journal, journal_path(nwb))
    read_everything(nwb)  # mea-control's reader does not need that text
    code, err = cli_main("recover", str(nwb))
    assert code == EXIT_USER_ERROR and "its tables could not be written" in err
    assert "UnicodeDecodeError" in err and journal_path(nwb).exists()
