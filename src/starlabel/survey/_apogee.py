"""Readers for APOGEE files: apStar spectra, aspcapStar spectra and the allStar catalogue.

File layouts (SDSS data model, DR12–DR17):

* **apStar** – HDU 0 header (``OBJID``, ``SNR``, ``NVISITS``, ``SNRVIS<k>``), HDU 1 flux,
  HDU 2 error, HDU 3 APOGEE_PIXMASK bitmask, each (rows, 8575) on the log-λ grid of
  ``CRVAL1``/``CDELT1``. With several visits, rows 0 and 1 are the combined spectrum
  weighted pixel by pixel and globally, rows 2… the resampled visits. With one visit
  there is one spectrum (a 1-D HDU, or a first row followed by an empty one).
* **aspcapStar** – HDU 1 normalised flux, HDU 2 error, HDU 3 best-fitting ASPCAP model
  (8575,), HDU 4 a one-row table with ``APOGEE_ID``, ``SNR``, ``PARAM`` (9 values, see
  :data:`ASPCAP_PARAM_NAMES`), ``PARAM_COV``, ``ASPCAPFLAG``.
* **allStar** – one table row per star and telescope: ``APOGEE_ID``, ``SNR``, label
  columns (``TEFF``, ``LOGG``, ``FE_H``…), their ``*_ERR`` columns and flag columns.
  Missing values are −9999, which become NaN here.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._fitsio import column_names, hdu_at, header_value, open_fits, require_file
from ._spectra import SurveySpectra

__all__ = [
    "ASPCAP_PARAM_NAMES",
    "AllStarTable",
    "JoinSummary",
    "apogee_id_from_name",
    "join_allstar",
    "read_allstar",
    "read_apstar",
    "read_aspcapstar",
]

ASPCAP_PARAM_NAMES: tuple[str, ...] = (
    "teff",
    "logg",
    "vmicro",
    "m_h",
    "c_m",
    "n_m",
    "alpha_m",
    "vbroad",
    "o_m",
)
"""Names given to the 9 entries of the ASPCAP ``PARAM`` array (K, dex, km/s, dex…).

DR13 stores log10 of the microturbulence and broadening in entries 2 and 7; later
releases store km/s. The names do not change with the release: check before using them.
"""

_MISSING = -9998.0  # ASPCAP writes -9999 (sometimes -9999.99) for "no value"
_APOGEE_ID = re.compile(r"(2M\d{8}[+-]\d{7}|AP\d{8}[+-]\d{7})")


def apogee_id_from_name(path: str | os.PathLike[str]) -> str:
    """The APOGEE_ID in a file name, e.g. ``apStar-dr17-2M19485057+5005279.fits``.

    Falls back to the file name without its suffix when no 2MASS-style ID is found.
    """
    name = Path(path).name
    match = _APOGEE_ID.search(name)
    return match.group(1) if match else name.split(".")[0]


def _missing_to_nan(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).copy()
    values[~np.isfinite(values) | (values <= _MISSING)] = np.nan
    return values


def _as_rows(data: np.ndarray | None, hdu: int, path: Path) -> np.ndarray:
    if data is None:
        raise ValueError(f"{path.name}: HDU {hdu} has no data (expected the apStar spectra).")
    data = np.asarray(data)
    if data.ndim == 1:
        return data[None, :]
    if data.ndim != 2:
        raise ValueError(f"{path.name}: HDU {hdu} has shape {data.shape}; expected (rows, pixels).")
    return data


def _has_hdu(hdul: fits.HDUList, index: int) -> bool:
    # Not len(hdul): with lazy loading that parses every header in the file (apStar files
    # carry large table HDUs we never read), tripling the time per file.
    try:
        hdul[index]
    except IndexError:
        return False
    return True


def _log_wavelength(header: fits.Header, n_pixels: int) -> np.ndarray | None:
    start = header_value(header, "CRVAL1")
    step = header_value(header, "CDELT1")
    if start is None or step is None:
        return None
    reference = float(header_value(header, "CRPIX1", default=1.0))
    return 10.0 ** (float(start) + float(step) * (np.arange(n_pixels) + 1.0 - reference))


def read_apstar(path: str | os.PathLike[str], *, combination: str | int = "global") -> SurveySpectra:
    """Read an APOGEE apStar file: raw flux, error and bitmask of one star.

    Parameters
    ----------
    path : path-like
        An ``apStar-*.fits`` file.
    combination : {"global", "pixel", "visits"} or int
        Which spectrum to read: the visits combined with global weights (row 1, what
        ASPCAP uses), with pixel-by-pixel weights (row 0), every
        single visit (rows 2…, one spectrum each), or a row number. A star observed once
        has a single spectrum, which is returned for any combination.

    Returns
    -------
    SurveySpectra
        One spectrum (``combination="visits"``: one per visit) on the file's grid
        (normally the 8575-pixel apStar grid), flux in 10⁻¹⁷ erg s⁻¹ cm⁻² Å⁻¹, with the
        header SNR (``SNRVIS<k>`` for visits).

    Raises
    ------
    OSError
        If the file is missing, truncated or not FITS (message names the file).
    ValueError
        If the HDUs do not have the apStar layout, or the chosen row is empty.

    Examples
    --------
    >>> spectra = read_apstar("apStar-dr17-2M19485057+5005279.fits")  # doctest: +SKIP
    >>> spectra.flux.shape                                            # doctest: +SKIP
    (1, 8575)
    """
    path = require_file(path, "apStar")
    notes: list[str] = []
    with open_fits(path, notes) as hdul:
        if not _has_hdu(hdul, 3):
            raise ValueError(
                f"{path.name}: has fewer than 4 HDUs; an apStar file has flux, error and"
                " bitmask in HDUs 1–3. For other layouts use read_fits_spectra with an ArrayLayout."
            )
        header = hdu_at(hdul, 0).header
        flux = _as_rows(hdu_at(hdul, 1).data, 1, path)
        err = _as_rows(hdu_at(hdul, 2).data, 2, path)
        bits = _as_rows(hdu_at(hdul, 3).data, 3, path)
        wavelength = _log_wavelength(hdu_at(hdul, 1).header, flux.shape[1])
        if wavelength is None:
            wavelength = _log_wavelength(header, flux.shape[1])
        apogee_id = str(header_value(header, "OBJID", "APOGEE_ID", "OBJ", default="")).strip()
        n_visits = int(header_value(header, "NVISITS", default=max(flux.shape[0] - 2, 1)) or 1)
        snr_combined = float(header_value(header, "SNR", default=np.nan))
        visit_snr = [
            float(header_value(header, f"SNRVIS{k}", default=np.nan)) for k in range(1, n_visits + 1)
        ]
    if not (flux.shape == err.shape == bits.shape):
        raise ValueError(
            f"{path.name}: flux {flux.shape}, error {err.shape} and bitmask {bits.shape}"
            " (HDUs 1–3) must have the same shape."
        )
    apogee_id = apogee_id or apogee_id_from_name(path)

    single = flux.shape[0] == 1 or n_visits == 1
    if combination == "visits":
        rows = [0] if single else list(range(2, flux.shape[0]))
        ids = [apogee_id] if single else [f"{apogee_id}/visit{k + 1}" for k in range(len(rows))]
        snr = [snr_combined] if single else visit_snr[: len(rows)] + [np.nan] * (len(rows) - len(visit_snr))
    else:
        if isinstance(combination, str):
            choices = {"pixel": 0, "global": 1}
            if combination not in choices:
                raise ValueError(
                    f"`combination` must be 'global', 'pixel', 'visits' or a row number, got {combination!r}."
                )
            row = 0 if single else choices[combination]
        else:
            row = int(combination)
        if not 0 <= row < flux.shape[0]:
            raise ValueError(f"{path.name}: row {row} requested but HDU 1 has {flux.shape[0]} rows.")
        rows, ids, snr = [row], [apogee_id], [snr_combined]
    flux, err, bits = flux[rows].astype(np.float64), err[rows].astype(np.float64), bits[rows]
    empty = ~np.any(np.isfinite(flux) & (flux != 0), axis=1)
    if np.any(empty):
        raise ValueError(f"{path.name}: row(s) {np.asarray(rows)[empty].tolist()} of HDU 1 are empty.")
    n = len(rows)
    return SurveySpectra(
        flux=flux,
        flux_err=err,
        bitmask=bits.astype(np.int64),
        wavelength=wavelength,
        ids=np.array(ids),
        object_ids=np.array([apogee_id] * n),
        snr=np.asarray(snr, dtype=np.float64),
        sources=np.array([path.name] * n),
        notes=tuple(notes),
    )


def read_aspcapstar(path: str | os.PathLike[str]) -> SurveySpectra:
    """Read an APOGEE aspcapStar file: the survey-normalised spectrum and ASPCAP labels.

    Parameters
    ----------
    path : path-like
        An ``aspcapStar-*.fits`` file.

    Returns
    -------
    SurveySpectra
        One spectrum, ``normalised=True``, with labels :data:`ASPCAP_PARAM_NAMES` from
        ``PARAM`` (−9999 → NaN), errors from the diagonal of ``PARAM_COV``, the table's
        ``SNR`` and the ``ASPCAPFLAG`` flag. No bitmask (the format has none): bad pixels
        are those with zero flux or error, which :func:`mask_pixels` catches.

    Raises
    ------
    OSError
        If the file is missing, truncated or not FITS.
    ValueError
        If HDUs 1–4 do not have the aspcapStar layout.
    """
    path = require_file(path, "aspcapStar")
    notes: list[str] = []
    with open_fits(path, notes) as hdul:
        table_hdu = hdu_at(hdul, 4) if _has_hdu(hdul, 4) else None
        if not isinstance(table_hdu, fits.BinTableHDU):
            raise ValueError(
                f"{path.name}: an aspcapStar file has flux, error and model in HDUs 1–3 and the"
                " ASPCAP table in HDU 4; this file has no table there."
            )
        flux = _as_rows(hdu_at(hdul, 1).data, 1, path).astype(np.float64)
        err = _as_rows(hdu_at(hdul, 2).data, 2, path).astype(np.float64)
        wavelength = _log_wavelength(hdu_at(hdul, 1).header, flux.shape[1])
        table = table_hdu.data
        columns = [c.upper() for c in column_names(table_hdu)]

        def column(name: str) -> np.ndarray | None:
            return np.asarray(table[name]) if name in columns else None

        apogee_id = column("APOGEE_ID")
        apogee_id = str(apogee_id[0]).strip() if apogee_id is not None else apogee_id_from_name(path)
        snr = column("SNR")
        param = column("PARAM")
        param_cov = column("PARAM_COV")
        aspcapflag = column("ASPCAPFLAG")
    if flux.shape != err.shape:
        raise ValueError(f"{path.name}: flux {flux.shape} and error {err.shape} differ in shape.")
    labels = label_err = None
    names: tuple[str, ...] = ()
    if param is not None:
        values = np.asarray(param, dtype=np.float64).reshape(1, -1)
        names = ASPCAP_PARAM_NAMES[: values.shape[1]]
        labels = _missing_to_nan(values[:, : len(names)])
        if param_cov is not None:
            cov = np.asarray(param_cov, dtype=np.float64).reshape(1, values.shape[1], values.shape[1])
            variance = _missing_to_nan(np.diagonal(cov, axis1=1, axis2=2))[:, : len(names)]
            variance[variance <= 0] = np.nan
            label_err = np.sqrt(variance)
    flags = (
        {"ASPCAPFLAG": np.asarray(aspcapflag, dtype=np.int64).reshape(1)} if aspcapflag is not None else {}
    )
    return SurveySpectra(
        flux=flux,
        flux_err=err,
        bitmask=None,
        wavelength=wavelength,
        ids=np.array([apogee_id]),
        object_ids=np.array([apogee_id]),
        snr=np.array([float(snr[0]) if snr is not None else np.nan]),
        sources=np.array([path.name]),
        normalised=True,
        labels=labels,
        label_names=names,
        label_err=label_err,
        flags=flags,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- allStar
@dataclass(frozen=True)
class AllStarTable:
    """Labels, errors, S/N and flags from an allStar catalogue, one row per APOGEE_ID.

    Attributes
    ----------
    ids : ndarray of str, shape (stars,)
        Unique APOGEE_IDs.
    labels : ndarray, shape (stars, labels)
        Label values, −9999 → NaN.
    label_names : tuple of str
        Lower-case column names (``TEFF`` → ``teff``).
    label_err : ndarray, shape (stars, labels)
        From the ``<column>_ERR`` columns (NaN where a column has none).
    snr : ndarray, shape (stars,)
    flags : mapping of str to ndarray, shape (stars,)
        Flag columns (e.g. ``ASPCAPFLAG``, ``STARFLAG``).
    n_rows : int
        Rows in the file.
    n_duplicated_ids : int
        APOGEE_IDs that appeared more than once (stars observed from both telescopes or
        in several fields); for each, the row with the highest SNR was kept.
    n_rows_dropped : int
        Rows dropped as duplicates.
    source : str
    """

    ids: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    label_err: np.ndarray
    snr: np.ndarray
    flags: Mapping[str, np.ndarray]
    n_rows: int
    n_duplicated_ids: int
    n_rows_dropped: int
    source: str


def _find_column(names: Sequence[str], wanted: str, path: Path, what: str) -> str:
    lookup = {n.upper(): n for n in names}
    if wanted.upper() in lookup:
        return lookup[wanted.upper()]
    close = difflib.get_close_matches(wanted.upper(), list(lookup), n=5)
    raise KeyError(
        f"{path.name} has no {what} column {wanted!r}; similar columns: {close or 'none'}"
        f" ({len(names)} columns in all)."
    )


def read_allstar(
    path: str | os.PathLike[str],
    labels: Sequence[str] = ("TEFF", "LOGG", "FE_H"),
    *,
    hdu: int | str | None = None,
    id_column: str = "APOGEE_ID",
    snr_column: str = "SNR",
    error_suffix: str = "_ERR",
    flag_columns: Sequence[str] = ("ASPCAPFLAG", "STARFLAG"),
) -> AllStarTable:
    """Read labels from an APOGEE allStar catalogue, one row per star.

    Parameters
    ----------
    path : path-like
        An ``allStar-*.fits`` file.
    labels : sequence of str
        Label columns (case-insensitive), e.g. ``("TEFF", "LOGG", "FE_H", "MG_FE")``.
    hdu : int or str, optional
        Table HDU; default the first table HDU that has ``id_column``.
    id_column, snr_column : str
        Star identifier and S/N columns.
    error_suffix : str
        Suffix of each label's error column; labels without one get NaN errors.
    flag_columns : sequence of str
        Integer flag columns to carry (those absent from the file are skipped).

    Returns
    -------
    AllStarTable
        Duplicated APOGEE_IDs are resolved by keeping the highest-SNR row; the table
        reports how many there were.

    Raises
    ------
    OSError
        If the file is missing or unreadable.
    KeyError
        If a requested column is missing; the message lists similar column names.
    """
    path = require_file(path, "allStar")
    if isinstance(labels, str):
        raise TypeError(
            f"`labels` must be a sequence of column names such as ('TEFF', 'LOGG'), not the"
            f" string {labels!r}."
        )
    notes: list[str] = []
    with open_fits(path, notes) as hdul:
        if hdu is None:
            candidates = [
                i
                for i, h in enumerate(hdul)
                if isinstance(h, fits.BinTableHDU)
                and id_column.upper() in (c.upper() for c in column_names(h))
            ]
            if not candidates:
                raise KeyError(f"{path.name} has no table HDU with a {id_column!r} column.")
            hdu = candidates[0]
        table_hdu = hdu_at(hdul, hdu)
        if not isinstance(table_hdu, fits.BinTableHDU | fits.TableHDU):
            raise ValueError(f"{path.name}: HDU {hdu} is not a table (it is a {type(table_hdu).__name__}).")
        table = table_hdu.data
        names = column_names(table_hdu)

        def column(name: str) -> np.ndarray:
            return np.asarray(table[name])

        ids = np.char.strip(column(_find_column(names, id_column, path, "id")).astype(str))
        snr = _missing_to_nan(column(_find_column(names, snr_column, path, "S/N")))
        label_columns = [_find_column(names, label, path, "label") for label in labels]
        values = np.stack([_missing_to_nan(column(c)) for c in label_columns], axis=1)
        upper = {n.upper(): n for n in names}
        errors = np.stack(
            [
                _missing_to_nan(column(upper[(c + error_suffix).upper()]))
                if (c + error_suffix).upper() in upper
                else np.full(len(ids), np.nan)
                for c in label_columns
            ],
            axis=1,
        )
        errors[errors < 0] = np.nan
        flags = {
            upper[f.upper()]: column(upper[f.upper()]).astype(np.int64)
            for f in flag_columns
            if f.upper() in upper
        }
    # Highest SNR first within each ID (NaN SNR last), then keep each ID's first row.
    order = np.lexsort((-np.nan_to_num(snr, nan=-np.inf), ids))
    sorted_ids = ids[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    keep = order[first]
    n_dup = int(np.count_nonzero(np.unique(sorted_ids, return_counts=True)[1] > 1))
    return AllStarTable(
        ids=ids[keep],
        labels=values[keep],
        label_names=tuple(label.lower() for label in labels),
        label_err=errors[keep],
        snr=snr[keep],
        flags={k: v[keep] for k, v in flags.items()},
        n_rows=len(ids),
        n_duplicated_ids=n_dup,
        n_rows_dropped=len(ids) - len(keep),
        source=path.name,
    )


@dataclass(frozen=True)
class JoinSummary:
    """Outcome of :func:`join_allstar`: how many spectra found catalogue rows."""

    n_spectra: int
    n_matched: int
    unmatched_ids: tuple[str, ...]
    n_duplicated_ids: int
    n_rows_dropped: int

    def __str__(self) -> str:
        shown = ", ".join(self.unmatched_ids[:5]) + (" …" if len(self.unmatched_ids) > 5 else "")
        text = f"{self.n_matched}/{self.n_spectra} spectra matched by APOGEE_ID"
        if self.unmatched_ids:
            text += f" (unmatched, labels NaN: {shown})"
        if self.n_duplicated_ids:
            text += (
                f"; {self.n_duplicated_ids} APOGEE_IDs were duplicated in the catalogue,"
                f" kept the highest-SNR row ({self.n_rows_dropped} rows dropped)"
            )
        return text


def join_allstar(spectra: SurveySpectra, table: AllStarTable) -> tuple[SurveySpectra, JoinSummary]:
    """Attach allStar labels, errors, S/N and flags to spectra by APOGEE_ID.

    Catalogue values replace any labels, S/N and flags the spectrum files carried.
    Spectra without a catalogue row get NaN labels and S/N (flags 0); quality cuts
    then decide what to do with them.

    Returns
    -------
    (SurveySpectra, JoinSummary)
    """
    # read_allstar leaves the IDs sorted and unique, so a binary search matches them.
    wanted = spectra.object_ids.astype(str)
    safe = np.clip(np.searchsorted(table.ids, wanted), 0, max(len(table.ids) - 1, 0))
    found = (table.ids[safe] == wanted) if len(table.ids) else np.zeros(len(wanted), dtype=bool)

    def gather(values: np.ndarray, fill: float | int) -> np.ndarray:
        out = values[safe].copy()
        out[~found] = fill
        return out

    joined = spectra.replace(
        labels=gather(table.labels, np.nan),
        label_names=table.label_names,
        label_err=gather(table.label_err, np.nan),
        snr=gather(table.snr, np.nan),
        flags={k: gather(v, 0) for k, v in table.flags.items()},
    )
    summary = JoinSummary(
        n_spectra=spectra.n_stars,
        n_matched=int(found.sum()),
        unmatched_ids=tuple(str(s) for s in spectra.ids[~found]),
        n_duplicated_ids=table.n_duplicated_ids,
        n_rows_dropped=table.n_rows_dropped,
    )
    return joined, summary
