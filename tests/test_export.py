"""Compressed export of NWB recordings: smaller, identical content, readable, clear errors."""

import errno
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import h5py
import numpy as np
import pytest
from hdmf.backends.hdf5 import H5DataIO
from hdmf.common import DynamicTable
from pynwb import NWBHDF5IO, NWBFile
from pynwb.ecephys import ElectricalSeries
from pynwb.epoch import TimeIntervals
from pynwb.file import Subject
from pynwb.misc import Units

from mea_control.recording import export
from mea_control.recording.errors import RecordingError
from mea_control.recording.export import ExportError, ExportResult, export_compressed

NCH, RATE, ROWS, SECONDS = 64, 25000.0, 2500, 2.0
PROVENANCE = json.dumps({"protocol": "tetanus.py", "seed": 7, "gains": [0.195e-6] * 4})


def write_recording(path):
    """A recording as the recorder writes it: pynwb structure, h5py appends, pynwb tables."""
    nwb = NWBFile(
        session_description="export test culture",
        identifier="export-test",
        session_start_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    nwb.subject = Subject(subject_id="culture-1", species="Rattus norvegicus", age="P21D")
    device = nwb.create_device(name="MEA", description="60MEA200/30")
    group = nwb.create_electrode_group("mea", "all electrodes", "culture", device)
    nwb.add_electrode_column("rel_x", "x position in um")
    nwb.add_electrode_column("rel_y", "y position in um")
    nwb.add_electrode_column("channel_name", "label on the MEA")
    for i in range(NCH):
        col, row = i % 8, i // 8
        nwb.add_electrode(
            group=group,
            location="culture",
            rel_x=200.0 * col,
            rel_y=200.0 * row,
            channel_name=f"{col + 1}{row + 1}",
        )
    data = H5DataIO(np.empty((0, NCH), "int16"), maxshape=(None, NCH), chunks=(ROWS, NCH))
    series = ElectricalSeries(
        name="ElectricalSeries",
        data=data,
        electrodes=nwb.create_electrode_table_region(list(range(NCH)), "all electrodes"),
        rate=RATE,
        conversion=0.195e-6,
        starting_time=0.0,
    )
    nwb.add_acquisition(series)
    with NWBHDF5IO(path, "w") as io:
        io.write(nwb)

    rng = np.random.default_rng(0)
    n = int(SECONDS * RATE)
    with h5py.File(path, "a") as f:
        d = f["acquisition/ElectricalSeries/data"]
        for start in range(0, n, ROWS):
            t = np.arange(start, start + ROWS)[:, None] / RATE
            block = rng.normal(0, 12, (ROWS, NCH)) + 40 * np.sin(2 * np.pi * 5 * t)
            d.resize(start + ROWS, axis=0)
            d[start:] = block.astype("int16")
            f.flush()

    with NWBHDF5IO(path, "a") as io:
        nwb = io.read()
        units = Units(name="units", description="online detections", resolution=1 / RATE)
        for _ in range(5):
            units.add_unit(spike_times=np.sort(rng.uniform(0, SECONDS, 20)))
        nwb.units = units
        nwb.add_trial_column("window", "response window (s)")
        for k in range(4):
            nwb.add_trial(start_time=0.5 * k, stop_time=0.5 * k + 0.4, window=[0.5 * k, 0.1])
        stim = TimeIntervals(name="stimulation", description="stimulation pulses")
        stim.add_column("channels", "stimulated channels", index=True)
        for k in range(3):
            stim.add_interval(
                start_time=0.5 * k,
                stop_time=0.5 * k + 0.001,
                timeseries=nwb.acquisition["ElectricalSeries"],
                channels=list(range(k + 1)),
            )
        nwb.add_time_intervals(stim)
        module = nwb.create_processing_module("detection", "online spike detection")
        table = DynamicTable(name="thresholds", description="per-channel thresholds")
        table.add_column("threshold_uV", "threshold")
        for i in range(NCH):
            table.add_row(threshold_uV=-5.0 - i)
        module.add(table)
        nwb.add_scratch(PROVENANCE, name="mea_control_provenance", description="run provenance")
        io.write(nwb)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec.nwb"
    write_recording(path)
    return path


@pytest.fixture(scope="module")
def gzip_copy(recording):
    fractions = []
    dst = recording.with_name("rec-gzip.nwb")
    result = export_compressed(recording, dst, progress=fractions.append)
    return dst, result, fractions


# --- comparing two files with h5py -------------------------------------------------------------


def plain(value, f):
    """A value with object references replaced by the path they point to."""
    if isinstance(value, h5py.Reference):
        return f[value].name if value else None
    if isinstance(value, np.ndarray) and value.dtype.names:
        return [tuple(plain(v, f) for v in row) for row in value.ravel()]
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return [plain(v, f) for v in value.ravel()]
    return value


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def links(f):
    """Path -> (link class, target) for every link in the file."""
    out = {}

    def walk(group):
        for name in group:
            link = group.get(name, getlink=True)
            path = f"{group.name.rstrip('/')}/{name}"
            out[path] = (type(link).__name__, getattr(link, "path", None))
            if isinstance(link, h5py.HardLink) and isinstance(group[name], h5py.Group):
                walk(group[name])

    walk(f)
    return out


def assert_same_content(src, dst):
    with h5py.File(src, "r") as a, h5py.File(dst, "r") as b:
        assert links(a) == links(b)
        paths = ["/"] + [p for p, (kind, _) in links(a).items() if kind == "HardLink"]
        for path in paths:
            x, y = a[path], b[path]
            assert type(x) is type(y), path
            assert sorted(x.attrs) == sorted(y.attrs), path
            for key in x.attrs:
                ax, ay = x.attrs.get_id(key), y.attrs.get_id(key)
                assert (ax.dtype, ax.shape) == (ay.dtype, ay.shape), f"{path}@{key}"
                assert h5py.check_string_dtype(ax.dtype) == h5py.check_string_dtype(ay.dtype)
                assert same(plain(x.attrs[key], a), plain(y.attrs[key], b)), f"{path}@{key}"
            if isinstance(x, h5py.Dataset):
                assert (x.dtype, x.shape, x.maxshape) == (y.dtype, y.shape, y.maxshape), path
                assert h5py.check_string_dtype(x.dtype) == h5py.check_string_dtype(y.dtype)
                assert same(plain(x[()], a), plain(y[()], b)), path


# --- the export ----------------------------------------------------------------------------------


def test_gzip_copy_is_smaller_and_identical(recording, gzip_copy):
    dst, result, fractions = gzip_copy
    assert isinstance(result, ExportResult)
    assert result.src_bytes == recording.stat().st_size
    assert result.dst_bytes == dst.stat().st_size < result.src_bytes / 1.5
    assert result.ratio == pytest.approx(result.src_bytes / result.dst_bytes)
    assert result.seconds > 0
    assert fractions and fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions)
    assert_same_content(recording, dst)
    with h5py.File(dst, "r") as f:
        data = f["acquisition/ElectricalSeries/data"]
        assert (data.compression, data.compression_opts, data.shuffle) == ("gzip", 4, True)
        assert data.maxshape == (None, NCH)
        assert f["units/spike_times"].compression is None  # small datasets copied verbatim
    assert not list(dst.parent.glob(".*.part"))


def test_lzf_copy_in_many_slices(recording, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "SLICE_BYTES", 1 << 20)
    fractions = []
    dst = tmp_path / "rec-lzf.nwb"
    result = export_compressed(recording, dst, "lzf", None, progress=fractions.append)
    assert result.dst_bytes < result.src_bytes
    assert len(fractions) > 4 and fractions[-1] == pytest.approx(1.0)
    assert_same_content(recording, dst)
    with h5py.File(dst, "r") as f:
        assert f["acquisition/ElectricalSeries/data"].compression == "lzf"


def test_pynwb_reads_the_copy(recording, gzip_copy):
    dst = gzip_copy[0]
    with NWBHDF5IO(recording, "r") as io_a, NWBHDF5IO(dst, "r") as io_b:
        a, b = io_a.read(), io_b.read()
        assert (
            a.electrodes.to_dataframe()
            .drop(columns="group")
            .equals(b.electrodes.to_dataframe().drop(columns="group"))
        )
        assert b.electrodes["group"][0].name == "mea"
        series = b.acquisition["ElectricalSeries"]
        assert series.electrodes.table is b.electrodes
        assert np.array_equal(series.data[:100], a.acquisition["ElectricalSeries"].data[:100])
        assert series.conversion == pytest.approx(0.195e-6)
        for i in range(len(a.units)):
            assert np.array_equal(a.units["spike_times"][i], b.units["spike_times"][i])
        assert b.units.resolution == pytest.approx(1 / RATE)
        assert np.array_equal(a.trials["window"][:], b.trials["window"][:])
        stim = b.intervals["stimulation"]
        assert [list(c) for c in stim["channels"][:]] == [[0], [0, 1], [0, 1, 2]]
        assert stim["timeseries"][1][0].timeseries is series
        assert b.scratch["mea_control_provenance"].data == PROVENANCE
        assert b.subject.subject_id == "culture-1"


def test_spikeinterface_reads_the_copy(recording, gzip_copy):
    se = pytest.importorskip("spikeinterface.extractors")
    path = "acquisition/ElectricalSeries"
    a = se.read_nwb_recording(recording, electrical_series_path=path)
    b = se.read_nwb_recording(gzip_copy[0], electrical_series_path=path)
    assert b.get_num_samples() == a.get_num_samples() == int(SECONDS * RATE)
    assert np.array_equal(a.get_traces(), b.get_traces())
    assert np.array_equal(a.get_channel_gains(), b.get_channel_gains())
    assert np.array_equal(a.get_channel_locations(), b.get_channel_locations())


def test_generic_hdf5_features(tmp_path, monkeypatch):
    """Hard, soft and external links, null and compound references, empty datasets."""
    monkeypatch.setattr(export, "LARGE_BYTES", 1000)
    src = tmp_path / "odd.nwb"
    with h5py.File(src, "w") as f:
        f.attrs["nwb_version"] = "2.9.0"
        big = f.create_dataset("g/big", data=np.arange(5000, dtype="<f4").reshape(1000, 5))
        f["h/big_again"] = big  # second hard link to a large dataset
        f["h/soft"] = h5py.SoftLink("/g/big")
        f["h/ext"] = h5py.ExternalLink("other.h5", "/x")
        f["h/dangling"] = h5py.SoftLink("/nowhere")
        f.create_dataset("empty", shape=(0, 3), maxshape=(None, 3), dtype="int16")
        f.attrs.create("null", h5py.Empty("f8"))
        f.attrs.create("ascii", "vlen ascii", dtype=h5py.string_dtype("ascii"))
        f.attrs["fixed"] = np.bytes_("fixed")
        refs = f.create_dataset("refs", (3,), dtype=h5py.ref_dtype)
        refs[0], refs[1] = f["g"].ref, big.ref
        kind = np.dtype([("i", "<i4"), ("ref", h5py.ref_dtype)])
        f.create_dataset("compound", data=np.array([(1, f["h"].ref)], dtype=kind))
        f["g"].attrs["target"] = big.ref
    dst = tmp_path / "odd-copy.nwb"
    export_compressed(src, dst, level=9)
    assert_same_content(src, dst)
    with h5py.File(dst, "r") as f:
        assert f["h/big_again"].id == f["g/big"].id
        assert f["g/big"].compression == "gzip"
        assert f[f["compound"][0]["ref"]].name == "/h"
        assert not f["refs"][2]


# --- errors --------------------------------------------------------------------------------------


def test_overwrite(recording, tmp_path):
    dst = tmp_path / "out.nwb"
    dst.write_text("old")
    with pytest.raises(ExportError, match="already exists.*--overwrite"):
        export_compressed(recording, dst)
    assert dst.read_text() == "old"
    export_compressed(recording, dst, compression="lzf", level=None, overwrite=True)
    assert h5py.is_hdf5(dst)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compression": "zstd"}, "unknown compression 'zstd'"),
        ({"level": 0}, "gzip level must be an integer from 1 to 9, not 0"),
        ({"level": 10}, "from 1 to 9"),
        ({"level": None}, "from 1 to 9"),
        ({"compression": "lzf"}, "lzf has no levels: pass level=None"),
    ],
)
def test_bad_options(recording, tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export_compressed(recording, tmp_path / "out.nwb", **kwargs)
    assert not list(tmp_path.iterdir())


def test_bad_paths(recording, tmp_path):
    def fails(src, dst, message, **kw):
        with pytest.raises(RecordingError, match=message) as info:
            export_compressed(src, dst, **kw)
        assert "\n" not in str(info.value)
        return str(info.value)

    out = tmp_path / "out.nwb"
    assert str(tmp_path / "missing.nwb") in fails(tmp_path / "missing.nwb", out, "no such file")
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    fails(text, out, "not an HDF5 file")
    plain_h5 = tmp_path / "plain.h5"
    h5py.File(plain_h5, "w").close()
    fails(plain_h5, out, "not an NWB file")
    fails(recording, recording, "source file itself", overwrite=True)
    fails(recording, tmp_path / "nowhere" / "out.nwb", "no such folder")
    fails(recording, text / "out.nwb", "no such folder")
    fails(recording, tmp_path, "is a folder", overwrite=True)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_failure_leaves_no_file(recording, tmp_path):
    dst = tmp_path / "out.nwb"

    def cancel(fraction):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_compressed(recording, dst, progress=cancel)
    assert not list(tmp_path.iterdir())


def test_write_error_is_reported_and_cleaned_up(recording, tmp_path):
    def disk_full(fraction):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ExportError, match="No space left.*check free space"):
        export_compressed(recording, tmp_path / "out.nwb", progress=disk_full)
    assert not list(tmp_path.iterdir())


def test_source_still_being_written(recording, tmp_path):
    """Another process holding the file open for writing (the recorder) locks it."""
    busy = tmp_path / "busy.nwb"
    shutil.copy(recording, busy)
    code = "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); input()"
    with subprocess.Popen(
        [sys.executable, "-c", code, str(busy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as writer:
        assert writer.stdout.readline().strip() == b"open"
        with pytest.raises(RecordingError, match="open for writing"):
            export_compressed(busy, tmp_path / "out.nwb")
        writer.communicate(b"\n", timeout=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.nwb"]
