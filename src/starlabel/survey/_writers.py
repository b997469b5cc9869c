"""Writing files in APOGEE layouts, for simulations, tests and benchmarks.

Simulated spectra written as apStar files and labels written as an allStar table go
through exactly the reading code real survey files go through, which is the point:
a pipeline tested on them is tested end to end.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._grids import APSTAR_LOG10_START, APSTAR_LOG10_STEP

__all__ = ["write_allstar", "write_apstar"]


def write_apstar(
    path: str | os.PathLike[str],
    flux: np.ndarray,
    flux_err: np.ndarray,
    bitmask: np.ndarray | None = None,
    *,
    apogee_id: str,
    snr: float | None = None,
    visit_snr: np.ndarray | None = None,
    extra_header: Mapping[str, object] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write spectra in the apStar layout (HDU 1 flux, 2 error, 3 bitmask).

    Parameters
    ----------
    path : path-like
        Output file.
    flux, flux_err : ndarray, shape (rows, pixels) or (pixels,)
        Rows as in a real apStar file: with more than one visit, two combined spectra
        (pixel- and globally weighted) followed by the visits; one row for one visit.
    bitmask : integer ndarray, same shape, optional
        APOGEE_PIXMASK values (default all zero).
    apogee_id : str
        Written as ``OBJID``.
    snr : float, optional
        Combined S/N, written as ``SNR``.
    visit_snr : ndarray, shape (visits,), optional
        Written as ``SNRVIS1``…; also sets ``NVISITS``.
    extra_header : mapping, optional
        More primary-header keywords.
    overwrite : bool

    Returns
    -------
    pathlib.Path
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    flux_err = np.atleast_2d(np.asarray(flux_err, dtype=np.float64))
    bits = (
        np.zeros(flux.shape, dtype=np.int64)
        if bitmask is None
        else np.atleast_2d(np.asarray(bitmask, dtype=np.int64))
    )
    if not flux.shape == flux_err.shape == bits.shape:
        raise ValueError(
            f"`flux` {flux.shape}, `flux_err` {flux_err.shape} and `bitmask` {bits.shape} must"
            " have the same shape (rows, pixels)."
        )
    n_visits = len(visit_snr) if visit_snr is not None else max(flux.shape[0] - 2, 1)
    primary = fits.Header()
    primary["CRVAL1"] = (APSTAR_LOG10_START, "Start log10(wavelength) in subsequent HDUs")
    primary["CDELT1"] = (APSTAR_LOG10_STEP, "Dispersion in log10(wave) in subsequent HDUs")
    primary["CRPIX1"] = 1
    primary["CTYPE1"] = "LOG-LINEAR"
    primary["NWAVE"] = flux.shape[1]
    primary["OBJID"] = apogee_id
    primary["NVISITS"] = n_visits
    if snr is not None:
        primary["SNR"] = float(snr)
    for k, value in enumerate(visit_snr if visit_snr is not None else [], start=1):
        primary[f"SNRVIS{k}"] = float(value)
    for key, value in (extra_header or {}).items():
        primary[key] = value

    def image(data: np.ndarray, unit: str) -> fits.ImageHDU:
        hdu = fits.ImageHDU(data[0] if data.shape[0] == 1 else data)
        hdu.header["CRVAL1"] = APSTAR_LOG10_START
        hdu.header["CDELT1"] = APSTAR_LOG10_STEP
        hdu.header["CRPIX1"] = 1
        hdu.header["CTYPE1"] = "LOG-LINEAR"
        hdu.header["BUNIT"] = unit
        return hdu

    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            image(flux, "Flux (10^-17 erg/s/cm^2/Ang)"),
            image(flux_err, "Err (10^-17 erg/s/cm^2/Ang)"),
            image(bits, "Pixel bitmask"),
        ]
    )
    path = Path(path)
    hdul.writeto(path, overwrite=overwrite)
    return path


def write_allstar(
    path: str | os.PathLike[str],
    columns: Mapping[str, np.ndarray],
    *,
    overwrite: bool = False,
) -> Path:
    """Write an allStar-like catalogue: one binary table in HDU 1.

    Parameters
    ----------
    path : path-like
    columns : mapping of str to ndarray, each shape (rows,)
        E.g. ``APOGEE_ID``, ``SNR``, ``TEFF``, ``TEFF_ERR``, ``ASPCAPFLAG``; use −9999
        for missing values, as the survey does.
    overwrite : bool

    Returns
    -------
    pathlib.Path
    """
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"all columns must have the same length; got {lengths}.")
    table_columns = []
    for name, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind in "US":
            width = max(1, max((len(str(v)) for v in values), default=1))
            table_columns.append(fits.Column(name=name, format=f"{width}A", array=values.astype(str)))
        elif values.dtype.kind in "iub":
            table_columns.append(fits.Column(name=name, format="K", array=values.astype(np.int64)))
        else:
            table_columns.append(fits.Column(name=name, format="D", array=values.astype(np.float64)))
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(table_columns)])
    path = Path(path)
    hdul.writeto(path, overwrite=overwrite)
    return path
