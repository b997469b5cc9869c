"""From survey files to a training- or test-ready dataset, with a report of every step."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import SpectralDataset
from ._apogee import join_allstar, read_allstar
from ._bitmask import DEFAULT_BAD_BITS, count_bits, mask_pixels
from ._continuum import AbstractContinuum, continuum_normalise, describe_continuum, resolve_continuum
from ._continuum_pixels import CONTINUUM_PIXELS_HELP, _from_array, load_continuum_pixels
from ._cuts import CutOutcome, QualityCuts, apply_quality_cuts
from ._generic import ArrayLayout
from ._grids import APSTAR_N_PIXELS, ApogeeGrid, chip_regions, resolve_grid
from ._registry import ReadOptions, SkippedFile, expand_inputs, read_many
from ._spectra import SurveySpectra

__all__ = ["PreparationReport", "PreparationStep", "prepare", "resolve_continuum_pixels"]

_DEFAULT_FILE_LABELS = ("teff", "logg", "m_h")
_DEFAULT_ALLSTAR_LABELS = ("TEFF", "LOGG", "FE_H")


@dataclass(frozen=True)
class PreparationStep:
    """One step of :func:`prepare` and what it did, in words."""

    name: str
    detail: str


@dataclass(frozen=True)
class PreparationReport:
    """What :func:`prepare` did: every step, every cut, every skipped file.

    ``str(report)`` is a printable summary; :meth:`to_dict` a JSON-able record (also
    stored in the dataset's ``meta["preparation"]``).

    Attributes
    ----------
    steps : tuple of PreparationStep
    cuts : tuple of CutOutcome
    skipped : tuple of SkippedFile
    n_files : int
        Files found in the inputs.
    n_spectra : int
        Spectra read from them.
    n_stars : int
        Stars in the final dataset.
    """

    steps: tuple[PreparationStep, ...]
    cuts: tuple[CutOutcome, ...]
    skipped: tuple[SkippedFile, ...]
    n_files: int
    n_spectra: int
    n_stars: int

    def __str__(self) -> str:
        width = max((len(s.name) for s in self.steps), default=0)
        lines = [f"prepare: {self.n_files} file(s) → {self.n_spectra} spectra → {self.n_stars} stars kept"]
        for step in self.steps:
            detail = step.detail.splitlines() or [""]
            lines.append(f"  {step.name:<{width}}  {detail[0]}")
            lines += [f"  {'':<{width}}  {more}" for more in detail[1:]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (ids of removed stars included)."""
        return {
            "n_files": self.n_files,
            "n_spectra": self.n_spectra,
            "n_stars": self.n_stars,
            "steps": [{"name": s.name, "detail": s.detail} for s in self.steps],
            "cuts": [
                {
                    "name": c.name,
                    "applied": c.applied,
                    "n_before": c.n_before,
                    "n_removed": c.n_removed,
                    "removed_ids": list(c.removed_ids),
                    "note": c.note,
                }
                for c in self.cuts
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def resolve_continuum_pixels(
    cont_pixels: str | os.PathLike[str] | np.ndarray | None, grid: str | ApogeeGrid
) -> np.ndarray | None:
    """Turn ``cont_pixels`` (a path, an array, or ``"all"``) into a mask on ``grid``.

    Returns ``None`` for ``"all"`` (fit every good pixel).

    Raises
    ------
    ValueError
        If ``cont_pixels`` is ``None``: the message says how to provide or derive a set.
    """
    target = resolve_grid(grid)
    if cont_pixels is None:
        raise ValueError(CONTINUUM_PIXELS_HELP)
    if isinstance(cont_pixels, str) and cont_pixels.lower() == "all":
        return None
    if isinstance(cont_pixels, str | os.PathLike):
        return load_continuum_pixels(cont_pixels, target)
    return _from_array(np.asarray(cont_pixels), target, "`cont_pixels`")


def _keep_best_duplicates(spectra: SurveySpectra) -> tuple[SurveySpectra, int]:
    """Keep the highest-S/N spectrum of each id (the same star in several files)."""
    snr = np.nan_to_num(spectra.snr, nan=-np.inf)
    order = np.lexsort((-snr, spectra.ids))
    first = np.ones(order.size, dtype=bool)
    first[1:] = spectra.ids[order][1:] != spectra.ids[order][:-1]
    keep = np.sort(order[first])
    return (spectra.take(keep), spectra.n_stars - keep.size) if keep.size < spectra.n_stars else (spectra, 0)


def _to_grid(spectra: SurveySpectra, grid: ApogeeGrid) -> tuple[SurveySpectra, str]:
    if spectra.n_pixels == APSTAR_N_PIXELS and grid.n_pixels != APSTAR_N_PIXELS:
        cut = spectra.map_pixels(grid.take)
        return cut.replace(
            wavelength=grid.wavelength
        ), f"{grid.name}: {APSTAR_N_PIXELS} → {grid.n_pixels} pixels (chip gaps removed)"
    if spectra.n_pixels == grid.n_pixels:
        if spectra.wavelength is not None and not np.allclose(spectra.wavelength, grid.wavelength, rtol=1e-6):
            raise ValueError(
                f"the spectra have {grid.n_pixels} pixels like the {grid.name} grid but different"
                " wavelengths; check the grid choice (dr12: 7214 px, dr17: 7514 px)."
            )
        return spectra.replace(
            wavelength=grid.wavelength
        ), f"{grid.name}: already on this grid ({grid.n_pixels} pixels)"
    raise ValueError(
        f"the spectra have {spectra.n_pixels} pixels; expected the full apStar grid"
        f" ({APSTAR_N_PIXELS}) or the {grid.name} grid ({grid.n_pixels}). Choose the grid the"
        " files are on with grid=..."
    )


def _select_file_labels(spectra: SurveySpectra, labels: Sequence[str] | None) -> SurveySpectra:
    if not spectra.label_names:
        if labels:
            raise ValueError(
                f"labels {list(labels)} requested but the spectrum files carry none; pass"
                " allstar=... to take labels from an allStar catalogue."
            )
        return spectra
    wanted = tuple(labels) if labels else tuple(n for n in _DEFAULT_FILE_LABELS if n in spectra.label_names)
    missing = [n for n in wanted if n not in spectra.label_names]
    if missing:
        raise ValueError(
            f"label(s) {missing} are not in the spectrum files; they carry {list(spectra.label_names)}."
        )
    columns = [spectra.label_names.index(n) for n in wanted]
    return spectra.replace(
        labels=spectra.labels[:, columns] if spectra.labels is not None else None,
        label_names=wanted,
        label_err=spectra.label_err[:, columns] if spectra.label_err is not None else None,
    )


def prepare(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    allstar: str | os.PathLike[str] | None = None,
    labels: Sequence[str] | None = None,
    grid: str | ApogeeGrid = "dr17",
    continuum: str | AbstractContinuum = "sincos",
    cont_pixels: str | os.PathLike[str] | np.ndarray | None = None,
    cuts: QualityCuts | None = None,
    bad_bits: str | Sequence[str | int] = DEFAULT_BAD_BITS,
    low_flux_fraction: float | None = None,
    combination: str | int = "global",
    format: str | None = None,
    layout: ArrayLayout | None = None,
    progress: bool = True,
) -> tuple[SpectralDataset, PreparationReport]:
    """Read survey spectra and make them model-ready: grid, masks, cuts, continuum.

    Steps, each recorded in the report: read every file (unreadable ones are skipped and
    named); keep the highest-S/N spectrum of a star found in several files; join allStar
    labels by APOGEE_ID; cut to the gap-removed grid; mask bad pixels (bitmask bits,
    flux ≤ 0, error ≥ 1e9, optional low-flux rule); apply the quality cuts; divide by a
    continuum fitted chip by chip on the continuum pixels.

    Parameters
    ----------
    inputs : path-like or sequence of path-like
        apStar / aspcapStar files and/or folders of them.
    allstar : path-like, optional
        allStar catalogue to take labels, label errors, S/N and flags from.
    labels : sequence of str, optional
        With ``allstar``: its label columns (default ``TEFF, LOGG, FE_H``, named
        ``teff, logg, fe_h`` in the dataset). Without: labels to keep from the files
        (aspcapStar; default ``teff, logg, m_h``).
    grid : {"dr17", "dr12"} or ApogeeGrid
        Output grid: 7514 pixels (DR13–17) or 7214 (DR12).
    continuum : {"sincos", "poly", "quantile", "none"} or AbstractContinuum
        Normalisation method; ``"none"`` keeps the flux as read (for survey-normalised
        aspcapStar input).
    cont_pixels : path-like, bool/int array, or "all"
        Continuum pixels on ``grid`` (see :func:`load_continuum_pixels`), or ``"all"``
        to fit every good pixel. Required unless ``continuum="none"``.
    cuts : QualityCuts, optional
        Default ``QualityCuts()`` (S/N > 50, valid labels, ≤ 3000 bad pixels, not STAR_BAD).
    bad_bits : sequence of str or int, or preset
        APOGEE_PIXMASK bits that make a pixel bad (default :data:`DEFAULT_BAD_BITS`).
    low_flux_fraction : float, optional
        Also mask flux below this fraction of the star's median (e.g. 0.05).
    combination : {"global", "pixel", "visits"} or int
        Which apStar spectrum to read.
    format : str, optional
        Force a format from :data:`SPECTRUM_FORMATS`; default: detect per file.
    layout : ArrayLayout, optional
        For the generic formats.
    progress : bool
        Show a progress bar while reading.

    Returns
    -------
    dataset : SpectralDataset
        Normalised flux with propagated ivar, masks, wavelength (Å), labels, ids, and
        ``meta`` recording the grid, continuum method and the report.
    report : PreparationReport

    Raises
    ------
    ValueError
        If ``cont_pixels`` is missing (with how to provide or derive it), if no file
        could be read, if the grid does not fit the files, or if the cuts remove every
        star (the message includes the report).
    FileNotFoundError
        If an input, the allStar file or the continuum-pixel file does not exist.

    Examples
    --------
    >>> dataset, report = prepare(["spectra/"], allstar="allStar-dr17.fits",
    ...                           cont_pixels="cont_pixels_dr17.npy")  # doctest: +SKIP
    >>> print(report)                                                   # doctest: +SKIP
    """
    target = resolve_grid(grid)
    cuts = QualityCuts() if cuts is None else cuts
    normalise = not (isinstance(continuum, str) and continuum.lower() == "none")
    # Fail before the (slow) read on configuration errors.
    method = resolve_continuum(continuum) if normalise else None
    cont_mask = resolve_continuum_pixels(cont_pixels, target) if normalise else None
    steps: list[PreparationStep] = []

    n_files = len(expand_inputs(inputs))
    spectra, skipped = read_many(
        inputs, format=format, options=ReadOptions(combination=combination, layout=layout), progress=progress
    )
    n_spectra = spectra.n_stars
    detail = f"{n_files} file(s), {n_spectra} spectra"
    detail += f", {len(skipped)} file(s) skipped:" if skipped else ", none skipped"
    lines = [detail, *(f"skipped {s}" for s in skipped), *spectra.notes]
    steps.append(PreparationStep("read", "\n".join(lines)))

    spectra, n_dup = _keep_best_duplicates(spectra)
    steps.append(
        PreparationStep(
            "duplicates",
            f"{n_dup} spectra of stars read twice dropped (kept the highest S/N)" if n_dup else "none",
        )
    )

    if allstar is not None:
        table = read_allstar(allstar, tuple(labels) if labels else _DEFAULT_ALLSTAR_LABELS)
        spectra, summary = join_allstar(spectra, table)
        steps.append(PreparationStep("labels", f"from {table.source}: {summary}"))
    else:
        spectra = _select_file_labels(spectra, labels)
        source = (
            f"from the spectrum files: {', '.join(spectra.label_names)}" if spectra.label_names else "none"
        )
        steps.append(PreparationStep("labels", source))

    spectra, detail = _to_grid(spectra, target)
    steps.append(PreparationStep("grid", detail))

    masked = mask_pixels(
        spectra.flux,
        spectra.flux_err,
        spectra.bitmask,
        bad_bits=bad_bits,
        low_flux_fraction=low_flux_fraction,
    )
    detail = masked.summary()
    if spectra.bitmask is not None:
        frequent = sorted(count_bits(spectra.bitmask).items(), key=lambda kv: -kv[1])[:4]
        detail += "\nmost frequent bits: " + ", ".join(f"{k} {v}" for k, v in frequent if v)
    steps.append(PreparationStep("masks", detail))

    raw = spectra.to_dataset(masked.bad)
    keep, outcomes = apply_quality_cuts(raw, cuts, snr=spectra.snr, flags=spectra.flags)
    steps.append(PreparationStep("cuts", "\n".join(str(o) for o in outcomes) or "none"))
    n_kept = int(keep.sum())

    def report(n_stars: int) -> PreparationReport:
        return PreparationReport(tuple(steps), outcomes, skipped, n_files, n_spectra, n_stars)

    if n_kept == 0:
        raise ValueError(f"the quality cuts removed every star; relax them.\n{report(0)}")
    raw = raw[np.flatnonzero(keep)]

    if method is not None:  # i.e. normalise
        regions = chip_regions()
        dataset, fit = continuum_normalise(raw, method, continuum_pixels=cont_mask, regions=regions)
        n_cont = "every good pixel" if cont_mask is None else f"{int(cont_mask.sum())} continuum pixels"
        failed = int(np.count_nonzero(~fit.ok.all(axis=1)))
        detail = (
            f"{describe_continuum(fit.method)} on {n_cont}, {len(regions)} chips;"
            f" {fit.n_failed} chip fit(s) failed"
        )
        detail += f" in {failed} star(s) (their pixels masked)" if failed else ""
        if spectra.normalised:
            detail += "\ninput was already survey-normalised: this renormalises it on the chosen pixels"
    else:
        dataset = raw
        detail = "none (flux kept as read)"
        if not spectra.normalised:
            detail += "; WARNING: the input is raw flux, not normalised"
    steps.append(PreparationStep("continuum", detail))
    label_text = ", ".join(dataset.label_names) or "none"
    steps.append(
        PreparationStep(
            "result",
            f"{dataset.n_stars} stars × {dataset.n_pixels} pixels, labels [{label_text}],"
            f" {dataset.mask.mean():.1%} pixels masked",
        )
    )
    final = report(dataset.n_stars)
    meta = dict(dataset.meta)
    meta.update(
        {
            "survey": "APOGEE",
            "grid": target.name,
            "normalised": bool(normalise or spectra.normalised),
            "sources": sorted({*spectra.sources[keep]}),
            "preparation": final.to_dict(),
        }
    )
    return dataset.replace(meta=meta), final
