"""Writing ``.npz`` archives whose arrays start on aligned byte offsets.

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

import io
import struct
import zipfile
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

from .._internal import ALIGNMENT

__all__ = ["write_npz", "LOCAL_HEADER"]

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
