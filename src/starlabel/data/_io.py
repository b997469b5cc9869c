"""Reading and writing :class:`SpectralDataset` as ``.npz`` or HDF5 (``.h5``).

File layout (same keys in both formats; HDF5 keeps them as root datasets):

==================  ====================  ==========================================
key                 shape                 meaning
==================  ====================  ==========================================
``flux``            (stars, pixels)       flux (required)
``flux_err``        (stars, pixels)       1-σ errors (this or ``ivar`` is required)
``ivar``            (stars, pixels)       inverse variances (wins if both present)
``mask``            (stars, pixels)       bool or int, non-zero = bad pixel
``wavelength``      (pixels,)             Å
``ids``             (stars,)              star identifiers (str)
``labels``          (stars, labels)       with ``label_names`` (labels,) …
``label_err``       (stars, labels)       … and optional errors, or else:
``<name>``          (stars,)              one 1-D array per label, and
``<name>_err``      (stars,)              its optional 1-σ errors
``label_names``     (labels,)             order of labels (written by starlabel)
==================  ====================  ==========================================

Other 0-d or string entries go to ``meta``. Readers select labels by name
(``labels=("teff", "logg")``) and fail with the list of keys the file has.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._internal import atomic_path, numeric_label
from ._dataset import SpectralDataset
from ._npz import NpzMember, write_npz

__all__ = ["read_dataset", "write_dataset", "DATASET_SUFFIXES"]

DATASET_SUFFIXES: dict[str, str] = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}
_RESERVED = {"flux", "flux_err", "ivar", "mask", "wavelength", "ids", "labels", "label_err", "label_names"}


def _format_of(path: Path) -> str:
    try:
        return DATASET_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its suffix {path.suffix!r};"
            f" known dataset suffixes: {sorted(DATASET_SUFFIXES)}."
        ) from None


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    fmt = _format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file {str(path)!r} does not exist.")
    try:
        if fmt == "npz":
            # Open the file ourselves: np.load leaks its handle when the zip is corrupt.
            with open(path, "rb") as raw, np.load(raw, allow_pickle=False) as archive:
                return {key: _read_member(path, archive, key) for key in archive.files}
        import h5py

        with h5py.File(path, "r") as handle:
            arrays: dict[str, np.ndarray] = {
                key: item[()] for key, item in handle.items() if isinstance(item, h5py.Dataset)
            }
            arrays.update({f"attr:{k}": np.asarray(v) for k, v in handle.attrs.items()})
            return arrays
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"could not read {str(path)!r} as {fmt}: {error}") from error


_DIRECT_MIN_BYTES = 1 << 20


def _read_member(path: Path, archive: Any, key: str) -> np.ndarray:
    """One ``.npz`` member; large uncompressed ones read straight into an aligned buffer.

    ``np.load`` reads a member into a fresh (16-byte aligned) array, which the dataset
    then copies to a 64-byte aligned one for JAX: two passes over the spectra. Reading
    the stored bytes into the aligned buffer directly is one pass, at the speed of
    ``cat``, and the dataset adopts the buffer.
    """
    info = archive.zip.getinfo(f"{key}.npy")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size >= _DIRECT_MIN_BYTES:
        member = NpzMember(path, archive.zip, f"{key}.npy", memmap=False)
        if member.shape:
            return member.read(0, member.shape[0])
    return archive[key]


def _as_str_array(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "S" or values.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()])
    return values.astype(str)


def read_dataset(
    path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
) -> SpectralDataset:
    """Read a dataset file written by starlabel or laid out as in the module docstring.

    Parameters
    ----------
    path : path-like
        ``.npz``, ``.h5`` or ``.hdf5`` file.
    labels : sequence of str, optional
        Label names to load, in this order (e.g. ``("teff", "logg", "m_h")``). Default:
        all labels the file declares via ``labels`` + ``label_names`` or ``label_names``
        alone; none if it declares none.

    Returns
    -------
    SpectralDataset

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    KeyError
        If a required key or a requested label is missing; the message lists the keys found.
    ValueError
        If the file is unreadable or its arrays are inconsistent.
    """
    path = Path(path)
    arrays = _load_arrays(path)
    keys = sorted(k for k in arrays if not k.startswith("attr:"))

    def need(key: str, why: str) -> np.ndarray:
        if key not in arrays:
            raise KeyError(f"{str(path)!r} has no {key!r} array ({why}); keys present: {keys}.")
        return arrays[key]

    flux = need("flux", "the spectra, shape (stars, pixels)")
    if "ivar" in arrays:
        err_kwargs: dict[str, Any] = {"ivar": arrays["ivar"]}
    elif "flux_err" in arrays:
        err_kwargs = {"flux_err": arrays["flux_err"]}
    else:
        raise KeyError(
            f"{str(path)!r} has neither 'flux_err' nor 'ivar' (flux uncertainties are"
            f" required); keys present: {keys}."
        )
    mask = arrays.get("mask")
    if mask is not None:
        mask = np.asarray(mask) != 0

    declared: tuple[str, ...] = ()
    if "label_names" in arrays:
        declared = tuple(str(n) for n in _as_str_array(arrays["label_names"]))
    elif "attr:label_names" in arrays:
        declared = tuple(str(n) for n in _as_str_array(arrays["attr:label_names"]))

    wanted = tuple(labels) if labels is not None else declared
    label_array = label_err = None
    if wanted:
        if "labels" in arrays and declared:
            table = np.atleast_2d(np.asarray(arrays["labels"]))
            errors = arrays.get("label_err")
            missing = [n for n in wanted if n not in declared]
            if missing:
                raise KeyError(f"{str(path)!r} has no label(s) {missing}; its labels are {list(declared)}.")
            columns = [declared.index(n) for n in wanted]
            label_array = np.stack(
                [numeric_label(table[:, c], n, path) for n, c in zip(wanted, columns, strict=True)], axis=1
            )
            if errors is not None:
                errors = np.atleast_2d(np.asarray(errors))
                label_err = np.stack(
                    [
                        numeric_label(errors[:, c], f"{n}_err", path)
                        for n, c in zip(wanted, columns, strict=True)
                    ],
                    axis=1,
                )
        else:
            missing = [n for n in wanted if n not in arrays]
            if missing:
                candidates = [
                    k
                    for k in keys
                    if k not in _RESERVED and np.ndim(arrays[k]) == 1 and len(arrays[k]) == len(flux)
                ]
                raise KeyError(
                    f"{str(path)!r} has no label array(s) {missing}; 1-D per-star arrays"
                    f" present: {candidates}."
                )
            label_array = np.stack([numeric_label(arrays[n], n, path) for n in wanted], axis=1)
            if all(f"{n}_err" in arrays for n in wanted):
                label_err = np.stack(
                    [numeric_label(arrays[f"{n}_err"], f"{n}_err", path) for n in wanted], axis=1
                )
            elif any(f"{n}_err" in arrays for n in wanted):
                # Partial errors: unknown ones become NaN rather than silently dropping all.
                label_err = np.stack(
                    [
                        numeric_label(arrays[f"{n}_err"], f"{n}_err", path)
                        if f"{n}_err" in arrays
                        else np.full(len(flux), np.nan)
                        for n in wanted
                    ],
                    axis=1,
                )

    meta: dict[str, Any] = {}
    for key, value in arrays.items():
        name = key.removeprefix("attr:")
        if name in _RESERVED or name in wanted or name.removesuffix("_err") in wanted:
            continue
        if name == "meta_json":
            meta.update(json.loads(str(np.asarray(value).item())))
            continue
        if np.ndim(value) == 0:
            item = value.item() if hasattr(value, "item") else value
            meta[name] = item.decode() if isinstance(item, bytes) else item

    meta["source"] = str(path)
    return SpectralDataset(
        flux,
        mask=mask,
        wavelength=arrays.get("wavelength"),
        labels=label_array,
        label_names=wanted if label_array is not None else None,
        label_err=label_err,
        ids=_as_str_array(arrays["ids"]) if "ids" in arrays else None,
        meta=meta,
        copy=False,  # every array here is freshly read and ours: adopt, don't copy again
        **err_kwargs,
    )


def _jsonable(meta: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in meta.items()}, default=str)


def write_dataset(dataset: SpectralDataset, path: str | os.PathLike[str]) -> Path:
    """Write ``dataset`` to ``.npz`` or HDF5 (by suffix), readable by :func:`read_dataset`.

    Labels are written one 1-D array per name (plus ``<name>_err``) together with
    ``label_names``, so other tools can read single columns. Written atomically: a
    crash mid-write never leaves a truncated file under the final name.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    fmt = _format_of(path)
    arrays: dict[str, np.ndarray] = {
        "flux": dataset.flux,
        "ivar": dataset.ivar,
        "mask": dataset.mask,
        "ids": dataset.ids.astype(str),
    }
    if dataset.wavelength is not None:
        arrays["wavelength"] = dataset.wavelength
    if dataset.labels is not None:
        arrays["label_names"] = np.array(dataset.label_names, dtype=str)
        for i, name in enumerate(dataset.label_names):
            arrays[name] = dataset.labels[:, i]
            if dataset.label_err is not None:
                arrays[f"{name}_err"] = dataset.label_err[:, i]
    meta_json = _jsonable(dataset.meta)

    with atomic_path(path) as tmp:
        if fmt == "npz":
            with open(tmp, "wb") as handle:
                # Aligned members: survey-scale readers map rows without copying them.
                write_npz(handle, {"meta_json": np.array(meta_json), **arrays})
        else:
            import h5py

            with h5py.File(tmp, "w") as handle:
                for key, value in arrays.items():
                    if value.dtype.kind == "U":
                        handle.create_dataset(key, data=value.astype(object), dtype=h5py.string_dtype())
                    else:
                        handle.create_dataset(
                            key, data=value, compression="gzip" if value.ndim == 2 else None
                        )
                handle.attrs["meta_json"] = meta_json
    return path
