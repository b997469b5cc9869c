"""Generic readers: spectra from any FITS, HDF5 or NumPy file, given where things are.

An :class:`ArrayLayout` says where each quantity lives. A *location* is

* FITS: ``"2"`` (image data of HDU 2), ``"FLUX"`` (the HDU with ``EXTNAME = FLUX``), or
  ``"1:FLUX"`` (column ``FLUX`` of the table in HDU 1; for an image HDU, the header
  keyword ``FLUX``, which is how a per-file ID or S/N is usually stored);
* HDF5: a dataset path such as ``"spectra/flux"``;
* ``.npz``: a key.

Spectra may be 1-D (one star) or 2-D (stars, pixels); a table column of vectors is
2-D. ``wavelength="header"`` (FITS only) builds the log-linear grid from ``CRVAL1`` and
``CDELT1`` of the flux HDU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ._fitsio import HDU, column_names, hdu_at, header_value, open_fits, require_file
from ._spectra import SurveySpectra

__all__ = ["ArrayLayout", "read_fits_spectra", "read_hdf5_spectra", "read_npz_spectra"]

_WAVELENGTH_UNITS = {"angstrom": 1.0, "nm": 10.0, "um": 1e4, "micron": 1e4}


@dataclass(frozen=True)
class ArrayLayout:
    """Where a generic file keeps each quantity (see the module docstring for locations).

    Parameters
    ----------
    flux : str
        Location of the flux, shape (pixels,) or (stars, pixels).
    flux_err, ivar : str, optional
        Location of the 1-σ errors or inverse variances (give one; neither means unknown
        errors, which makes every pixel bad).
    bitmask : str, optional
        APOGEE_PIXMASK-style integer bitmask, same shape as the flux.
    wavelength : str, optional
        Location of the wavelengths, or ``"header"`` (FITS log-linear grid).
    wavelength_unit : {"angstrom", "nm", "um"}
        Unit of the stored wavelengths; converted to Å.
    ids, snr : str, optional
        Per-star identifiers and S/N (arrays, or a FITS header keyword).
    labels : mapping of str to str
        Label name → location of a per-star label array.
    row : int, optional
        Keep only this row of 2-D spectra (per-star values then refer to that one star).
    normalised : bool
        Whether the stored flux is already continuum-normalised.

    Examples
    --------
    The payne-zero APOGEE example (an ``.npz`` with wavelengths in nm):

    >>> layout = ArrayLayout(flux="normalized_flux", flux_err="normalized_error",
    ...                      bitmask="pixel_or_mask", wavelength="wavelength_nm",
    ...                      wavelength_unit="nm", normalised=True)
    """

    flux: str
    flux_err: str | None = None
    ivar: str | None = None
    bitmask: str | None = None
    wavelength: str | None = None
    wavelength_unit: str = "angstrom"
    ids: str | None = None
    snr: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    row: int | None = None
    normalised: bool = False

    def __post_init__(self) -> None:
        if self.flux_err is not None and self.ivar is not None:
            raise ValueError("give `flux_err` or `ivar` in an ArrayLayout, not both.")
        if self.wavelength_unit not in _WAVELENGTH_UNITS:
            raise ValueError(
                f"`wavelength_unit` must be one of {sorted(_WAVELENGTH_UNITS)}, got {self.wavelength_unit!r}."
            )


def _assemble(path: Path, layout: ArrayLayout, get: Any, notes: list[str]) -> SurveySpectra:
    """Build spectra from ``get(location)`` lookups, validating shapes against the flux."""
    flux = np.asarray(get(layout.flux), dtype=np.float64)
    if flux.ndim == 1:
        flux = flux[None, :]
    if flux.ndim != 2:
        raise ValueError(
            f"{path.name}: flux at {layout.flux!r} has shape {flux.shape}; expected (stars, pixels)."
        )
    stored_shape = flux.shape
    if layout.row is not None:
        if not 0 <= layout.row < flux.shape[0]:
            raise ValueError(
                f"{path.name}: row {layout.row} requested but the flux has {flux.shape[0]} rows."
            )
        flux = flux[[layout.row]]

    def per_pixel(location: str, what: str, dtype: Any) -> np.ndarray:
        values = np.asarray(get(location), dtype=dtype)
        values = values[None, :] if values.ndim == 1 else values
        if layout.row is not None and values.shape == stored_shape:
            values = values[[layout.row]]
        if values.shape != flux.shape:
            raise ValueError(
                f"{path.name}: {what} at {location!r} has shape {values.shape} but the flux at"
                f" {layout.flux!r} has {flux.shape}."
            )
        return values

    def per_star(location: str, what: str) -> np.ndarray:
        values = np.atleast_1d(np.asarray(get(location)))
        if layout.row is not None and values.shape == (stored_shape[0],):
            values = values[[layout.row]]
        if values.shape != (flux.shape[0],):
            raise ValueError(
                f"{path.name}: {what} at {location!r} has shape {values.shape}; expected one"
                f" value per star ({flux.shape[0]},)."
            )
        return values

    if layout.ivar is not None:
        ivar = per_pixel(layout.ivar, "ivar", np.float64)
        with np.errstate(divide="ignore"):
            err = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), np.inf)
    elif layout.flux_err is not None:
        err = per_pixel(layout.flux_err, "flux_err", np.float64)
    else:
        notes.append(f"{path.name}: no errors in the layout; every pixel has unknown error")
        err = np.full(flux.shape, np.inf)
    bitmask = per_pixel(layout.bitmask, "bitmask", np.int64) if layout.bitmask is not None else None

    wavelength = None
    if layout.wavelength is not None:
        wavelength = np.asarray(get(layout.wavelength), dtype=np.float64).ravel()
        wavelength = wavelength * _WAVELENGTH_UNITS[layout.wavelength_unit]
        if wavelength.shape != (flux.shape[1],):
            raise ValueError(
                f"{path.name}: wavelength at {layout.wavelength!r} has {wavelength.size} values"
                f" but the spectra have {flux.shape[1]} pixels."
            )
    ids = per_star(layout.ids, "ids") if layout.ids is not None else None
    ids = (
        np.array([str(i.decode() if isinstance(i, bytes) else i).strip() for i in ids])
        if ids is not None
        else np.array([path.stem if flux.shape[0] == 1 else f"{path.stem}/{k}" for k in range(flux.shape[0])])
    )
    snr = (
        per_star(layout.snr, "snr").astype(np.float64)
        if layout.snr is not None
        else np.full(flux.shape[0], np.nan)
    )
    names = tuple(layout.labels)
    labels = (
        np.stack(
            [per_star(loc, f"label {n!r}").astype(np.float64) for n, loc in layout.labels.items()], axis=1
        )
        if names
        else None
    )
    return SurveySpectra(
        flux=flux,
        flux_err=err,
        bitmask=bitmask,
        wavelength=wavelength,
        ids=ids,
        object_ids=ids,
        snr=snr,
        sources=np.array([path.name] * flux.shape[0]),
        normalised=layout.normalised,
        labels=labels,
        label_names=names,
        notes=tuple(notes),
    )


def read_fits_spectra(path: str | os.PathLike[str], layout: ArrayLayout) -> SurveySpectra:
    """Read spectra from any FITS file, following ``layout``.

    Parameters
    ----------
    path : path-like
        A FITS file.
    layout : ArrayLayout
        HDUs / columns / header keywords of each quantity; ``wavelength="header"`` builds
        a log-linear grid from ``CRVAL1``, ``CDELT1`` (and ``CRPIX1``) of the flux HDU.

    Returns
    -------
    SurveySpectra

    Raises
    ------
    OSError
        If the file is missing, truncated or not FITS.
    KeyError
        If an HDU, column or keyword is missing; the message lists what the file has.
    ValueError
        If shapes disagree.
    """
    path = require_file(path, "FITS")
    notes: list[str] = []
    with open_fits(path, notes) as hdul:

        def hdu_of(token: str) -> HDU:
            try:
                return hdu_at(hdul, int(token) if token.strip().lstrip("-").isdigit() else token)
            except (KeyError, IndexError):
                available = [f"{i}:{h.name}" for i, h in enumerate(hdul)]
                raise KeyError(f"{path.name} has no HDU {token!r}; HDUs: {available}.") from None

        def get(location: str) -> Any:
            if location == "header":
                data = np.asarray(hdu_of(layout.flux.split(":")[0]).data)
                header = hdu_of(layout.flux.split(":")[0]).header
                if "CRVAL1" not in header or "CDELT1" not in header:
                    raise KeyError(
                        f"{path.name}: wavelength='header' needs CRVAL1 and CDELT1 in the flux HDU."
                    )
                pixels = np.arange(data.shape[-1]) + 1.0 - float(header_value(header, "CRPIX1", default=1.0))
                start = float(header_value(header, "CRVAL1", default=np.nan))  # present: checked above
                step = float(header_value(header, "CDELT1", default=np.nan))
                return 10.0 ** (start + step * pixels)
            token, _, name = location.partition(":")
            hdu = hdu_of(token)
            if not name:
                if hdu.data is None:
                    raise KeyError(f"{path.name}: HDU {token!r} has no data.")
                return np.asarray(hdu.data)
            if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
                columns = column_names(hdu)
                if name not in columns:
                    raise KeyError(f"{path.name}: HDU {token!r} has no column {name!r}; columns: {columns}.")
                return np.asarray(hdu.data[name])
            if name not in hdu.header:
                raise KeyError(f"{path.name}: HDU {token!r} has no header keyword {name!r}.")
            return header_value(hdu.header, name)

        return _assemble(path, layout, get, notes)


def read_hdf5_spectra(path: str | os.PathLike[str], layout: ArrayLayout) -> SurveySpectra:
    """Read spectra from any HDF5 file, following ``layout`` (locations = dataset paths).

    Raises
    ------
    OSError
        If the file is missing or not HDF5.
    KeyError
        If a dataset is missing; the message lists the datasets in the file.
    """
    import h5py

    path = require_file(path, "HDF5")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise OSError(f"{path.name}: cannot read as HDF5 ({error}).") from error
    with handle:
        datasets: list[str] = []
        handle.visit(lambda name: datasets.append(name) if isinstance(handle[name], h5py.Dataset) else None)

        def get(location: str) -> Any:
            item = handle[location] if location in handle else None
            if not isinstance(item, h5py.Dataset):
                raise KeyError(f"{path.name} has no dataset {location!r}; datasets: {datasets}.")
            return item[()]

        return _assemble(path, layout, get, [])


def read_npz_spectra(path: str | os.PathLike[str], layout: ArrayLayout) -> SurveySpectra:
    """Read spectra from a NumPy ``.npz`` archive, following ``layout`` (locations = keys).

    Raises
    ------
    OSError
        If the file is missing or not a valid archive.
    KeyError
        If a key is missing; the message lists the keys in the file.
    """
    path = require_file(path, ".npz")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise OSError(f"{path.name}: cannot read as .npz ({error}).") from error
    with archive:
        keys = list(archive.files)

        def get(location: str) -> Any:
            if location not in keys:
                raise KeyError(f"{path.name} has no array {location!r}; keys: {keys}.")
            return archive[location]

        return _assemble(path, layout, get, [])
