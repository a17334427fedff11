"""Write a compressed copy of an NWB recording.

Approach: an h5py-level walk, not a pynwb/hdmf export. Groups are recreated, small datasets are
copied verbatim with ``H5Ocopy`` (same type, shape, layout and filters), soft and external links
are recreated, hard links to an object already copied stay hard links, and every attribute is
copied with its own type and shape. Numeric datasets larger than ``LARGE_BYTES`` are recreated
chunked (~1 MiB chunks, full trailing dimensions) with shuffle plus gzip or lzf, and filled in
slices of ~64 MB so memory stays flat whatever the file size.

Object references (the ``table`` attribute of a DynamicTableRegion, the electrodes ``group``
column, TimeSeriesReference compounds) cannot be copied as bytes across files (``H5Ocopy`` sets
them to null), so they are written in a second pass, re-pointed to the object with the same path
in the new file. The copy is bit-for-bit equal in content to the source, including objects that
pynwb does not know about.

The copy is written to a hidden temporary file next to ``dst`` and renamed at the end, so an
interrupted export never leaves a partial file under ``dst``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mea_control.recording.errors import RecordingError
from mea_control.recording.reader import open_hdf5

LARGE_BYTES = 1 << 20  # datasets above this size are compressed
CHUNK_BYTES = 1 << 20  # target chunk size of compressed datasets
SLICE_BYTES = 64 << 20  # bytes read and written per step


class ExportError(RecordingError):
    """A problem the user can fix: bad path, bad option, unreadable source."""


@dataclass(frozen=True)
class ExportResult:
    src_bytes: int
    dst_bytes: int
    ratio: float  # src_bytes / dst_bytes
    seconds: float


def export_compressed(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    compression: str = "gzip",
    level: int | None = 4,
    overwrite: bool = False,
    progress: Callable[[float], None] | None = None,
) -> ExportResult:
    """Copy the NWB file ``src`` to ``dst`` with its large datasets compressed.

    ``compression`` is "gzip" (``level`` 1-9) or "lzf" (``level`` None); shuffle is always on.
    ``progress(fraction)`` is called as the large datasets are copied. Raises ExportError.
    """
    src, dst = Path(src), Path(dst)
    filters = _filters(compression, level)
    _check_paths(src, dst, overwrite)
    start = time.perf_counter()
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
    with open_hdf5(src) as sf:
        try:
            df = h5py.File(tmp, "w-")
        except OSError as e:
            raise ExportError(
                f"{dst.parent}: cannot create a file there; choose another folder"
            ) from e
        try:
            with df:
                _Copier(sf, df, filters, progress).run()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if dst.exists() and not overwrite:
                raise ExportError(
                    f"{dst}: appeared during the export; remove it or overwrite it (--overwrite)"
                )
            os.replace(tmp, dst)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"{src} -> {dst}: export failed ({e}); check free space") from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    src_bytes, dst_bytes = src.stat().st_size, dst.stat().st_size
    return ExportResult(
        src_bytes, dst_bytes, src_bytes / max(dst_bytes, 1), time.perf_counter() - start
    )


def _filters(compression: str, level: int | None) -> dict:
    """h5py create_dataset keywords for the requested compression."""
    if compression == "gzip":
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise ExportError(f"gzip level must be an integer from 1 to 9, not {level!r}")
    elif compression == "lzf":
        if level is not None:
            raise ExportError(f"lzf has no levels: pass level=None, not {level!r}")
    else:
        raise ExportError(f"unknown compression {compression!r}: use 'gzip' or 'lzf'")
    return {"compression": compression, "compression_opts": level, "shuffle": True}


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    """The destination's checks; the source's are open_hdf5's."""
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists()
                                          and os.path.samefile(src, dst)):
        raise ExportError(f"{dst}: is the source file itself; choose another destination")
    if dst.is_dir():
        raise ExportError(f"{dst}: is a folder; give a file name such as {dst / src.name}")
    if dst.exists() and not overwrite:
        raise ExportError(f"{dst}: already exists; remove it or overwrite it (--overwrite)")
    if not dst.parent.is_dir():
        raise ExportError(f"{dst.parent}: no such folder; create it or choose another")


def _has_refs(dtype: np.dtype) -> bool:
    if h5py.check_ref_dtype(dtype) is not None:
        return True
    return any(_has_refs(dtype.fields[n][0]) for n in dtype.names or ())


def _is_large(ds: h5py.Dataset) -> bool:
    return ds.dtype.kind in "biufc" and ds.size * ds.dtype.itemsize > LARGE_BYTES


def _chunks(ds: h5py.Dataset) -> tuple[int, ...] | bool:
    """About CHUNK_BYTES of whole rows (all channels of consecutive samples)."""
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
    if row_bytes > CHUNK_BYTES:
        return True  # let h5py split the trailing dimensions too
    return (max(1, min(ds.shape[0], CHUNK_BYTES // row_bytes)), *ds.shape[1:])


class _Copier:
    """Copies one open HDF5 file into another; see the module docstring."""

    def __init__(
        self, sf: h5py.File, df: h5py.File, filters: dict, progress: Callable[[float], None] | None
    ) -> None:
        self.sf, self.df, self.filters, self.progress = sf, df, filters, progress
        self.seen: dict[h5py.h5o.ObjectID, str] = {}
        self.pairs: list[tuple[h5py.HLObject, h5py.HLObject]] = [(sf, df)]
        self.large: list[tuple[h5py.Dataset, h5py.Dataset]] = []

    def run(self) -> None:
        self._walk(self.sf, self.df)
        for s, d in self.pairs:
            for key in s.attrs:
                aid = s.attrs.get_id(key)
                value = s.attrs[key]
                if _has_refs(aid.dtype):
                    value = self._remap(value, aid.dtype)
                d.attrs.create(key, value, shape=aid.shape, dtype=aid.dtype)
            if isinstance(s, h5py.Dataset) and _has_refs(s.dtype) and s.size:
                d[()] = self._remap(s[()], s.dtype)
        self._copy_large()

    def _walk(self, sg: h5py.Group, dg: h5py.Group) -> None:
        for name in sg:
            link = sg.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                dg[name] = h5py.SoftLink(link.path)
                continue
            if isinstance(link, h5py.ExternalLink):
                dg[name] = h5py.ExternalLink(link.filename, link.path)
                continue
            obj = sg[name]
            if obj.id in self.seen:  # a second hard link to an object already copied
                dg[name] = self.df[self.seen[obj.id]]
                continue
            if isinstance(obj, h5py.Group):
                new = dg.create_group(name)
                self._walk(obj, new)
            elif isinstance(obj, h5py.Dataset) and _is_large(obj):
                new = dg.create_dataset(
                    name,
                    shape=obj.shape,
                    maxshape=obj.maxshape,
                    dtype=obj.dtype,
                    chunks=_chunks(obj),
                    fillvalue=obj.fillvalue,
                    **self.filters,
                )
                self.large.append((obj, new))
            else:
                sg.copy(obj, dg, name=name, without_attrs=True)
                new = dg[name]
            self.seen[obj.id] = new.name
            self.pairs.append((obj, new))

    def _remap(self, value, dtype: np.dtype):
        """Object references of the source, re-pointed to the same paths in the copy."""
        if dtype.names:
            value = value.copy()
            for n in dtype.names:
                if _has_refs(dtype.fields[n][0]):
                    value[n] = self._remap(value[n], dtype.fields[n][0])
            return value
        if isinstance(value, np.ndarray):
            out = np.empty(value.shape, dtype=dtype)
            out.flat[:] = [self._remap(v, dtype) for v in value.flat]
            return out
        if isinstance(value, h5py.RegionReference):
            raise ExportError(f"{self.sf.filename}: region references are not supported")
        if not value:  # null reference
            return value
        return self.df[self.sf[value].name].ref

    def _copy_large(self) -> None:
        total = sum(s.size * s.dtype.itemsize for s, _ in self.large)
        done = 0
        for s, d in self.large:
            row_bytes = s.dtype.itemsize * int(np.prod(s.shape[1:], dtype=np.int64))
            rows = d.chunks[0]
            step = max(1, SLICE_BYTES // (row_bytes * rows)) * rows
            for i in range(0, s.shape[0], step):
                block = s[i : i + step]
                d[i : i + step] = block
                done += block.nbytes
                if self.progress:
                    self.progress(done / total)
        if self.progress and not total:
            self.progress(1.0)
