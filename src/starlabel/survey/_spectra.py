"""Spectra as a survey file delivers them, before masking, cuts and normalisation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import SpectralDataset

__all__ = ["SurveySpectra"]


@dataclass(frozen=True)
class SurveySpectra:
    """Spectra read from survey files: flux, errors and bitmasks as the survey wrote them.

    Readers (:func:`read_apstar`, :func:`read_aspcapstar`, the generic readers) return
    this; :func:`prepare` turns it into a :class:`~starlabel.data.SpectralDataset` after
    grid cuts, masks, quality cuts and continuum normalisation. Unlike a dataset it keeps
    the raw bitmask, the survey S/N, per-star flags and the file each spectrum came from.

    Attributes
    ----------
    flux : ndarray, shape (stars, pixels)
        Flux as stored (raw apStar: 10⁻¹⁷ erg s⁻¹ cm⁻² Å⁻¹; aspcapStar: normalised).
    flux_err : ndarray, shape (stars, pixels)
        1-σ errors, same units; ``inf`` or ≥ 1e9 where the survey has no data.
    bitmask : integer ndarray, shape (stars, pixels), or None
        APOGEE_PIXMASK values (``None`` when the format has none).
    wavelength : ndarray, shape (pixels,), or None
        Vacuum wavelength in Å.
    ids : ndarray of str, shape (stars,)
        Spectrum identifiers (APOGEE_ID; ``APOGEE_ID/visitN`` for single visits).
    object_ids : ndarray of str, shape (stars,)
        The star each spectrum belongs to (APOGEE_ID), used to join catalogue labels.
    snr : ndarray, shape (stars,)
        Survey signal-to-noise per pixel (NaN when unknown).
    sources : ndarray of str, shape (stars,)
        File each spectrum was read from.
    normalised : bool
        Whether ``flux`` is already continuum-normalised by the survey (aspcapStar).
    labels : ndarray, shape (stars, labels), or None
        Labels stored in the spectrum files (aspcapStar PARAM); NaN = missing.
    label_names : tuple of str
    label_err : ndarray, shape (stars, labels), or None
    flags : mapping of str to ndarray, shape (stars,)
        Per-star integer flags (e.g. ``ASPCAPFLAG``, ``STARFLAG``).
    notes : tuple of str
        What the reader had to repair (e.g. non-standard FITS header cards).
    """

    flux: np.ndarray
    flux_err: np.ndarray
    bitmask: np.ndarray | None
    wavelength: np.ndarray | None
    ids: np.ndarray
    object_ids: np.ndarray
    snr: np.ndarray
    sources: np.ndarray
    normalised: bool = False
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] = ()
    label_err: np.ndarray | None = None
    flags: Mapping[str, np.ndarray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        flux = self.flux
        if flux.ndim != 2:
            raise ValueError(f"`flux` must be 2-D (stars, pixels), got shape {flux.shape}.")
        n_stars, n_pixels = flux.shape
        checks: list[tuple[str, Any, tuple[int, ...]]] = [
            ("flux_err", self.flux_err, flux.shape),
            ("bitmask", self.bitmask, flux.shape),
            ("wavelength", self.wavelength, (n_pixels,)),
            ("ids", self.ids, (n_stars,)),
            ("object_ids", self.object_ids, (n_stars,)),
            ("snr", self.snr, (n_stars,)),
            ("sources", self.sources, (n_stars,)),
            ("labels", self.labels, (n_stars, len(self.label_names))),
            ("label_err", self.label_err, (n_stars, len(self.label_names))),
            *((f"flags[{k!r}]", v, (n_stars,)) for k, v in self.flags.items()),
        ]
        for name, value, shape in checks:
            if value is not None and np.shape(value) != shape:
                raise ValueError(
                    f"`{name}` has shape {np.shape(value)} but must be {shape} to match"
                    f" `flux` {flux.shape} (stars, pixels)."
                )

    @property
    def n_stars(self) -> int:
        """Number of spectra."""
        return self.flux.shape[0]

    @property
    def n_pixels(self) -> int:
        """Number of pixels per spectrum."""
        return self.flux.shape[1]

    def replace(self, **changes: Any) -> SurveySpectra:
        """Copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def take(self, rows: Sequence[int] | np.ndarray) -> SurveySpectra:
        """The spectra at ``rows`` (integer indices or a boolean mask over stars)."""
        rows = np.arange(self.n_stars)[np.asarray(rows)]

        def pick(value: np.ndarray | None) -> np.ndarray | None:
            return None if value is None else value[rows]

        return self.replace(
            flux=self.flux[rows],
            flux_err=self.flux_err[rows],
            bitmask=pick(self.bitmask),
            ids=self.ids[rows],
            object_ids=self.object_ids[rows],
            snr=self.snr[rows],
            sources=self.sources[rows],
            labels=pick(self.labels),
            label_err=pick(self.label_err),
            flags={k: v[rows] for k, v in self.flags.items()},
        )

    def map_pixels(self, fn: Any) -> SurveySpectra:
        """Apply ``fn`` (e.g. a grid cut) to the pixel axis of every per-pixel array."""
        return self.replace(
            flux=fn(self.flux),
            flux_err=fn(self.flux_err),
            bitmask=None if self.bitmask is None else fn(self.bitmask),
            wavelength=None if self.wavelength is None else fn(self.wavelength),
        )

    @staticmethod
    def concatenate(parts: Sequence[SurveySpectra]) -> SurveySpectra:
        """Stack spectra from several files along stars.

        Label columns are the union of the parts' labels (missing ones are NaN), flags the
        union of their flags (missing ones are 0), bitmasks zero where a part has none.

        Raises
        ------
        ValueError
            If the parts have different numbers of pixels or wavelength grids.
        """
        if not parts:
            raise ValueError("concatenate needs at least one SurveySpectra.")
        first = parts[0]
        for part in parts[1:]:
            if part.n_pixels != first.n_pixels:
                raise ValueError(
                    f"spectra from {part.sources[0]!r} have {part.n_pixels} pixels but those from"
                    f" {first.sources[0]!r} have {first.n_pixels}; read files of one grid together."
                )
        if len(parts) == 1:
            return first
        names: list[str] = []
        for part in parts:
            names += [n for n in part.label_names if n not in names]

        def label_block(part: SurveySpectra, values: np.ndarray | None) -> np.ndarray:
            block = np.full((part.n_stars, len(names)), np.nan)
            if values is not None:
                for j, name in enumerate(part.label_names):
                    block[:, names.index(name)] = values[:, j]
            return block

        has_err = any(p.label_err is not None for p in parts)
        flag_names = sorted({k for p in parts for k in p.flags})
        has_bitmask = any(p.bitmask is not None for p in parts)
        wavelength = first.wavelength
        if wavelength is not None and any(
            p.wavelength is None or not np.allclose(p.wavelength, wavelength, rtol=1e-9) for p in parts
        ):
            raise ValueError("the files have different wavelength grids; read files of one grid together.")
        notes: list[str] = []
        for part in parts:
            notes += [n for n in part.notes if n not in notes]
        return SurveySpectra(
            flux=np.concatenate([p.flux for p in parts]),
            flux_err=np.concatenate([p.flux_err for p in parts]),
            bitmask=(
                np.concatenate(
                    [p.bitmask if p.bitmask is not None else np.zeros(p.flux.shape, np.int64) for p in parts]
                )
                if has_bitmask
                else None
            ),
            wavelength=wavelength,
            ids=np.concatenate([p.ids for p in parts]),
            object_ids=np.concatenate([p.object_ids for p in parts]),
            snr=np.concatenate([p.snr for p in parts]),
            sources=np.concatenate([p.sources for p in parts]),
            normalised=all(p.normalised for p in parts),
            labels=np.concatenate([label_block(p, p.labels) for p in parts]) if names else None,
            label_names=tuple(names),
            label_err=(
                np.concatenate([label_block(p, p.label_err) for p in parts]) if names and has_err else None
            ),
            flags={
                k: np.concatenate([p.flags.get(k, np.zeros(p.n_stars, dtype=np.int64)) for p in parts])
                for k in flag_names
            },
            notes=tuple(notes),
        )

    def to_dataset(
        self, bad: np.ndarray | None = None, meta: Mapping[str, Any] | None = None
    ) -> SpectralDataset:
        """A :class:`SpectralDataset` with the flux as stored and ``bad`` pixels masked.

        Parameters
        ----------
        bad : ndarray of bool, shape (stars, pixels), optional
            Bad pixels (from :func:`mask_pixels`); they get ``ivar = 0``.
        meta : mapping, optional
            Metadata for the dataset.
        """
        with np.errstate(divide="ignore", over="ignore"):
            ivar = 1.0 / np.asarray(self.flux_err, dtype=np.float64) ** 2
        ivar[~np.isfinite(ivar)] = 0.0
        if bad is not None:
            ivar = np.where(bad, 0.0, ivar)
        flux = np.where(np.isfinite(self.flux), self.flux, 0.0)
        return SpectralDataset(
            flux,
            ivar=ivar,
            mask=bad if bad is not None else ivar == 0,
            wavelength=self.wavelength,
            labels=self.labels if self.label_names else None,
            label_names=self.label_names if self.label_names else None,
            label_err=self.label_err if self.label_names else None,
            ids=self.ids,
            meta=meta,
        )
