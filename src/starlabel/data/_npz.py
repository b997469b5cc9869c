"""``.npz`` archives whose arrays start on aligned byte offsets, written and read by rows.

:func:`write_npz` writes them; :class:`NpzMember` reads row ranges of one member
(mapped from the page cache where aligned).

An uncompressed ``.npz`` member can be memory-mapped and handed to the model without a
copy (see :mod:`starlabel.data._rows`), but only where its array data start on a
64-byte boundary: XLA's CPU runtime copies any input that does not. ``numpy.savez``
places members wherever the previous one ended. Here each member's local zip header
carries a padding extra field (the one Android's ``zipalign`` uses) sized so that
the ``.npy`` data, which numpy already pads its own header to 64 bytes for, start on
a multiple of :data:`ALIGNMENT` in the file. The result is an ordinary zip that
``numpy.load`` and any zip tool read as before.
"""

from __future__ import annotations

import errno
import io
import mmap
import struct
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._internal import ALIGNMENT, empty_aligned

__all__ = ["write_npz", "LOCAL_HEADER", "NpzMember"]

_PADDING_ID = 0xD935  # zipalign's extra-field id: "alignment padding"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
"""A zip local file header up to its file name (the name and extra field follow)."""
_ZIP64_EXTRA_SIZE = 20  # written into every local header below (force_zip64=True)


def _npy_header(array: np.ndarray) -> bytes:
    """The ``.npy`` header numpy writes before ``array``'s data (a multiple of 64 bytes)."""
    fields = np.lib.format.header_data_from_array_1_0(array)
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(header, fields)
    except ValueError:  # a header dictionary too long for format 1.0
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, fields)
    return header.getvalue()


def write_npz(handle: BinaryIO, arrays: Mapping[str, np.ndarray], *, alignment: int = ALIGNMENT) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` with every array's data aligned.

    Parameters
    ----------
    handle : binary file object
        Open for writing and seekable, positioned at 0.
    arrays : mapping of str to array
        Member name (without ``.npy``) → array; object arrays are refused.
    alignment : int
        Byte boundary for the start of each array's data (a divisor of 64, numpy's
        own header padding).
    """
    if 64 % alignment:
        raise ValueError(f"`alignment` must divide 64, got {alignment}.")
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            array = np.asarray(value)
            if not array.flags.c_contiguous:  # (np.ascontiguousarray would make 0-d arrays 1-d)
                array = array.copy(order="C")
            if array.dtype.hasobject:
                raise ValueError(f"array {key!r} holds Python objects; it cannot be stored without pickling.")
            name = f"{key}.npy"
            header = _npy_header(array)
            start = handle.tell()
            fixed = LOCAL_HEADER.size + len(name.encode()) + _ZIP64_EXTRA_SIZE
            pad = -(start + fixed) % alignment
            if 0 < pad < 4:  # an extra field needs its own 4-byte id and length
                pad += alignment
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = len(header) + array.nbytes
            info.extra = struct.pack("<HH", _PADDING_ID, pad - 4) + bytes(pad - 4) if pad else b""
            with archive.open(info, mode="w", force_zip64=True) as member:
                member.write(header)
                member.write(array.reshape(-1).view(np.uint8).data)


_MAP_MIN_BYTES = 1 << 20
"""Smaller reads are copied: a mapping's system calls cost more than copying a few
spectra (a survey of one-star files reads a few kB per member)."""


class NpzMember:
    """One ``.npy`` member of a zip archive, readable by row ranges."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, name: str, memmap: bool) -> None:
        info = archive.getinfo(name)
        self._memmap = memmap
        self.stored = info.compress_type == zipfile.ZIP_STORED
        self._archive = archive
        self._name = name
        self._path = path
        with archive.open(name) as member:
            version = np.lib.format.read_magic(member)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = reader(member)
            header_size = member.tell()
        if fortran and len(shape) > 1:
            raise ValueError(f"{str(path)!r}: member {name!r} is Fortran-ordered; rows cannot be streamed.")
        if dtype.hasobject:
            raise ValueError(f"{str(path)!r}: member {name!r} holds Python objects; refusing to unpickle.")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._header_size = header_size
        self._offset = -1
        if self.stored:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                fields = LOCAL_HEADER.unpack(raw.read(LOCAL_HEADER.size))
                name_len, extra_len = fields[-2], fields[-1]
            self._offset = info.header_offset + LOCAL_HEADER.size + name_len + extra_len + header_size

    def _mapped(self, offset: int, count: int) -> np.ndarray | None:
        """Rows mapped straight from the page cache: no copy, and aligned as stored.

        Copy-on-write, so that repairs in place (``SpectralDataset(copy=False)``) touch
        private pages and never the file. None when the system refuses another mapping
        (before Python 3.13 each one keeps a file descriptor open while its rows are
        alive): the caller then copies.
        """
        nbytes = count * self._row_bytes
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        options = {"trackfd": False} if sys.version_info >= (3, 13) else {}
        try:
            with open(self._path, "rb") as raw:
                mapped = mmap.mmap(
                    raw.fileno(), offset - base + nbytes, access=mmap.ACCESS_COPY, offset=base, **options
                )
        except ValueError as error:  # the file is shorter than its zip directory says
            raise ValueError(
                f"{str(self._path)!r}: member {self._name!r} ends early ({error}); the file is truncated."
            ) from None
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                return None
            raise
        rows = np.frombuffer(
            mapped, dtype=self.dtype, count=nbytes // self.dtype.itemsize, offset=offset - base
        )
        return rows.reshape((count, *self.shape[1:]))

    def read(self, start: int, stop: int) -> np.ndarray:
        if not self.shape:
            with self._archive.open(self._name) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
        stop = min(stop, self.shape[0])
        count = max(stop - start, 0)
        offset = self._offset + start * self._row_bytes
        mappable = count * self._row_bytes >= _MAP_MIN_BYTES and offset % ALIGNMENT == 0
        if self.stored and self._memmap and mappable:
            mapped = self._mapped(offset, count)
            if mapped is not None:
                return mapped
        if self.stored:
            out = empty_aligned((count, *self.shape[1:]), self.dtype)
            with open(self._path, "rb", buffering=0) as raw:
                raw.seek(offset)
                n_read = raw.readinto(out.data.cast("B"))
            if n_read != out.nbytes:
                raise ValueError(
                    f"{str(self._path)!r}: member {self._name!r} ends early (rows {start}-{stop}); the file is truncated."
                )
            return out
        with self._archive.open(self._name) as member:
            # Seeking a compressed member decompresses up to the target (see module docstring).
            member.seek(self._header_size + start * self._row_bytes)
            buffer = member.read(count * self._row_bytes)
        return np.frombuffer(buffer, dtype=self.dtype).reshape((count, *self.shape[1:])).copy()
