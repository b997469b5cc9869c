"""Host arrays that JAX's CPU backend can use without copying them.

XLA's CPU runtime adopts a numpy buffer in place when its address is a multiple of
64 bytes; otherwise every call copies it first. numpy aligns to 16 bytes only, and
for a chunk of 1024 APOGEE spectra (2 × 59 MB of float64) that copy cost more than
the whole blocked test step. Spectral arrays are therefore allocated here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALIGNMENT", "empty_aligned", "aligned_copy", "as_aligned", "is_aligned"]

ALIGNMENT = 64
"""Bytes; the alignment XLA requires to alias a host buffer."""


def empty_aligned(shape: tuple[int, ...], dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Uninitialised C-ordered array whose data start on an :data:`ALIGNMENT` boundary."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n_bytes + ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + n_bytes].view(dtype).reshape(shape)


def aligned_copy(array: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
    """A C-ordered, aligned copy of ``array`` (same shape; its dtype unless ``dtype`` is given).

    A dtype change is done by the copy itself, without an intermediate array.
    """
    out = empty_aligned(array.shape, array.dtype if dtype is None else dtype)
    np.copyto(out, array)
    return out


def is_aligned(array: np.ndarray) -> bool:
    """Whether ``array`` is C-contiguous and starts on an :data:`ALIGNMENT` boundary."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % ALIGNMENT == 0


def as_aligned(array: np.ndarray, *, copy: bool, dtype: np.dtype | type | None = None) -> np.ndarray:
    """``array`` itself if it may be adopted, else an aligned copy converted to ``dtype``.

    Adopted means: ``copy`` is False and ``array`` is aligned, writeable and already of
    ``dtype`` (default: its own dtype).
    """
    same_dtype = dtype is None or array.dtype == np.dtype(dtype)
    if not copy and same_dtype and array.flags.writeable and is_aligned(array):
        return array
    return aligned_copy(array, dtype)
