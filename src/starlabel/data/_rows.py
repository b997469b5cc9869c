"""Read a range of rows (stars) from a dataset file without loading the whole file.

:func:`starlabel.data.read_dataset` loads every array of a file, which is right for
training sets and wrong for a survey file of 10⁵ spectra × 7214 pixels (≈ 12 GB of
float64 flux + ivar). Here a file is opened once per chunk and only rows
``[start, stop)`` of its per-star arrays are read, so memory follows the chunk size.

* Uncompressed ``.npz`` members (:func:`numpy.savez`, :func:`write_dataset`): rows
  are read at their byte offset inside the zip straight into 64-byte aligned
  buffers. Where the rows start on a 64-byte boundary in the file (every member
  :func:`~starlabel.data.write_dataset` writes; see ``_npz.py``) they are
  memory-mapped instead, copy-on-write: the page cache is used in place, and the
  compiled test step reads it without a copy either. Compressed members
  (``savez_compressed``) are decompressed up to the rows needed, which is correct
  but slow for large files; the docs recommend uncompressed ``.npz`` or HDF5.
* HDF5 datasets are sliced by h5py (chunked/compressed datasets decompress only the
  HDF5 chunks that overlap the rows).

The file layout is the one documented in :mod:`starlabel.data._io`.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .._internal import empty_aligned, numeric_label
from ._dataset import SpectralDataset
from ._io import DATASET_SUFFIXES
from ._npz import NpzMember

__all__ = ["RowSource", "open_rows"]


def _as_mask(stored: np.ndarray) -> np.ndarray:
    """A stored per-pixel mask as bool: bool members as read, integer flags ``!= 0``.

    (``bool_array != 0`` goes through a slow generic comparison in numpy.)
    """
    return stored if stored.dtype == bool else stored != 0


class RowSource:
    """An open dataset file from which row ranges are read as :class:`SpectralDataset`.

    Use :func:`open_rows` to create one; use it as a context manager so the file
    handle is closed.
    """

    def __init__(self, path: Path, *, memmap: bool = True) -> None:
        self.path = path
        suffix = path.suffix.lower()
        if suffix not in DATASET_SUFFIXES:
            raise ValueError(
                f"cannot read {str(path)!r}: suffix {path.suffix!r} is not one of {sorted(DATASET_SUFFIXES)}."
            )
        self._format = DATASET_SUFFIXES[suffix]
        self._handle: Any
        self._members: dict[str, Any]
        if self._format == "npz":
            self._handle = zipfile.ZipFile(path)
            self._members = {
                name.removesuffix(".npy"): NpzMember(path, self._handle, name, memmap)
                for name in self._handle.namelist()
                if name.endswith(".npy")
            }
            shapes = {key: member.shape for key, member in self._members.items()}
        else:
            import h5py

            self._handle = h5py.File(path, "r")
            self._members = {
                key: value for key, value in self._handle.items() if isinstance(value, h5py.Dataset)
            }
            shapes = {key: tuple(value.shape) for key, value in self._members.items()}
        if "flux" not in shapes:
            raise KeyError(f"{str(path)!r} has no 'flux' array; keys present: {sorted(shapes)}.")
        if len(shapes["flux"]) != 2:
            raise ValueError(f"{str(path)!r}: 'flux' has shape {shapes['flux']}; expected (stars, pixels).")
        if "ivar" not in shapes and "flux_err" not in shapes:
            raise KeyError(
                f"{str(path)!r} has neither 'ivar' nor 'flux_err' (flux uncertainties are required);"
                f" keys present: {sorted(shapes)}."
            )
        self.n_stars, self.n_pixels = (int(n) for n in shapes["flux"])
        self._shapes = shapes

    def __enter__(self) -> RowSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying file."""
        self._handle.close()

    def _rows(self, key: str, start: int, stop: int) -> np.ndarray:
        if self._format == "npz":
            return self._members[key].read(start, stop)
        dataset = self._members[key]
        if dataset.dtype.kind not in "biuf":  # strings: h5py converts them itself
            return np.asarray(dataset[start:stop])
        out = empty_aligned((max(stop - start, 0), *dataset.shape[1:]), dataset.dtype)
        if out.size:
            dataset.read_direct(out, np.s_[start:stop])
        return out

    def _whole(self, key: str) -> np.ndarray:
        if self._format == "npz":
            shape = self._shapes[key]
            return self._members[key].read(0, shape[0] if shape else 0)
        return np.asarray(self._members[key][()])

    def _per_star(self, key: str) -> bool:
        shape = self._shapes.get(key)
        return shape is not None and len(shape) >= 1 and shape[0] == self.n_stars

    def label_names(self) -> tuple[str, ...]:
        """Label names the file declares (``label_names`` array or attribute), else ``()``."""
        if "label_names" in self._shapes:
            return tuple(str(n) for n in _strings(self._whole("label_names")))
        if self._format == "hdf5" and "label_names" in self._handle.attrs:
            return tuple(str(n) for n in _strings(np.asarray(self._handle.attrs["label_names"])))
        return ()

    def read(self, start: int, stop: int, labels: Sequence[str] = ()) -> SpectralDataset:
        """Rows ``[start, stop)`` as a dataset.

        Parameters
        ----------
        start, stop : int
            Row range (stars), clipped to the file.
        labels : sequence of str
            Label columns to attach when the file has them (as 1-D ``<name>`` arrays or
            as columns of a ``labels`` table named by ``label_names``). Names the file
            lacks are left out rather than raising: reference labels are optional.

        Returns
        -------
        SpectralDataset
        """
        if not 0 <= start <= stop:
            raise ValueError(f"bad row range [{start}, {stop}) for {str(self.path)!r}.")
        stop = min(stop, self.n_stars)
        flux = self._rows("flux", start, stop)
        errors: dict[str, Any] = (
            {"ivar": self._rows("ivar", start, stop)}
            if "ivar" in self._shapes
            else {"flux_err": self._rows("flux_err", start, stop)}
        )
        mask = _as_mask(self._rows("mask", start, stop)) if self._per_star("mask") else None
        ids = (
            _strings(self._rows("ids", start, stop))
            if self._per_star("ids")
            else np.array([str(i) for i in range(start, stop)])
        )
        wavelength = self._whole("wavelength") if "wavelength" in self._shapes else None
        names, columns = self.label_columns(labels, start, stop)
        meta: dict[str, Any] = {"source": str(self.path), "rows": [start, stop]}
        if "meta_json" in self._shapes and self._format == "npz":
            meta.update(json.loads(str(self._whole("meta_json").item())))
            meta.update({"source": str(self.path), "rows": [start, stop]})
        return SpectralDataset(
            flux,
            mask=mask,
            wavelength=wavelength,
            labels=np.stack(columns, axis=1) if columns else None,
            label_names=names if columns else None,
            ids=ids,
            meta=meta,
            copy=False,  # the arrays were just read into aligned buffers of their own
            **errors,
        )

    def label_columns(
        self, labels: Sequence[str], start: int = 0, stop: int | None = None
    ) -> tuple[tuple[str, ...], list[np.ndarray]]:
        """The label columns of rows ``[start, stop)`` that the file has, without spectra.

        Labels are 1-D ``<name>`` arrays or columns of a ``labels`` table named by
        ``label_names``. Returns the names found (in the order asked, missing ones left
        out) and one float array (rows,) per name.
        """
        stop = self.n_stars if stop is None else min(stop, self.n_stars)
        if not labels:
            return (), []
        declared = self.label_names()
        table = None
        if "labels" in self._shapes and declared and len(self._shapes["labels"]) == 2:
            table = np.asarray(self._rows("labels", start, stop))
        names, columns = [], []
        for name in labels:
            if name not in {"flux", "ivar", "flux_err", "mask", "ids"} and self._per_star(name):
                columns.append(numeric_label(self._rows(name, start, stop), name, self.path).reshape(-1))
            elif table is not None and name in declared:
                columns.append(numeric_label(table[:, declared.index(name)], name, self.path))
            else:
                continue
            names.append(name)
        return tuple(names), columns


def _strings(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values).ravel()
    if values.dtype.kind == "S" or values.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values.astype(str)


def open_rows(path: str | Path, *, memmap: bool = True) -> RowSource:
    """Open a dataset file for row-range reading; see :class:`RowSource`.

    Parameters
    ----------
    path : str or Path
        A ``.npz`` or HDF5 dataset file.
    memmap : bool
        Memory-map rows of uncompressed ``.npz`` members whose data are 64-byte
        aligned in the file (as :func:`~starlabel.data.write_dataset` writes them)
        instead of copying them (like ``astropy.io.fits.open(memmap=True)``). A file
        truncated while its rows are in use then ends the process with SIGBUS
        rather than an error; pass False to always copy.

    Raises
    ------
    ValueError, KeyError, OSError
        If the file is not a readable dataset (unknown suffix, no ``flux``, no
        uncertainties, corrupt archive); the message names the file.
    """
    path = Path(path)
    try:
        return RowSource(path, memmap=memmap)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"could not open {str(path)!r} as a dataset file: {error}") from error
