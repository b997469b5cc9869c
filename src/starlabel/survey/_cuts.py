"""Quality cuts on stars, applied as explicit steps that each report what they removed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data import SpectralDataset

__all__ = ["CutOutcome", "QualityCuts", "apply_quality_cuts", "ASPCAP_STAR_BAD"]

ASPCAP_STAR_BAD = 1 << 23
"""``ASPCAPFLAG`` bit 23 (STAR_BAD): ASPCAP judged the star's fit unreliable."""


@dataclass(frozen=True)
class QualityCuts:
    """Which stars to keep. Cuts run in the order of the fields; ``None`` disables one.

    Defaults: S/N > 50, every label valid, at most 3000 bad pixels on the gap-removed
    grid.

    Parameters
    ----------
    min_snr : float, optional
        Keep stars with survey S/N above this (stars with unknown S/N are removed).
    require_labels : bool or sequence of str
        ``True``: every label must be finite; a sequence: only those labels.
        Ignored for data without labels.
    max_bad_pixels : int, optional
        Keep stars with at most this many bad (masked) pixels.
    max_bad_fraction : float, optional
        Keep stars with at most this fraction of bad pixels.
    label_ranges : mapping of str to (float, float)
        Keep stars with ``lo <= label <= hi`` (e.g. ``{"fe_h": (-1.0, 1.0)}``); NaN labels
        fail a range cut.
    reject_flags : mapping of str to int
        Flag column → bits; stars with any of those bits set are removed (default:
        ``ASPCAPFLAG`` STAR_BAD). A flag the data lacks is reported as not applied.
    """

    min_snr: float | None = 50.0
    require_labels: bool | Sequence[str] = True
    max_bad_pixels: int | None = 3000
    max_bad_fraction: float | None = None
    label_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    reject_flags: Mapping[str, int] = field(default_factory=lambda: {"ASPCAPFLAG": ASPCAP_STAR_BAD})

    def __post_init__(self) -> None:
        if self.max_bad_fraction is not None and not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"`max_bad_fraction` must be in [0, 1], got {self.max_bad_fraction}.")
        for name, bounds in self.label_ranges.items():
            if len(bounds) != 2 or not bounds[0] <= bounds[1]:
                raise ValueError(f"`label_ranges[{name!r}]` must be (lo, hi) with lo <= hi, got {bounds}.")

    @classmethod
    def none(cls) -> QualityCuts:
        """No cuts at all."""
        return cls(min_snr=None, require_labels=False, max_bad_pixels=None, reject_flags={})


@dataclass(frozen=True)
class CutOutcome:
    """What one cut did.

    Attributes
    ----------
    name : str
        The cut, e.g. ``"snr > 50"``.
    n_before : int
        Stars entering the cut.
    removed_ids : tuple of str
        Stars it removed.
    applied : bool
        ``False`` when the data lacked what the cut needs (then it removed nothing).
    note : str
        Why a cut was not applied, or extra detail.
    """

    name: str
    n_before: int
    removed_ids: tuple[str, ...]
    applied: bool = True
    note: str = ""

    @property
    def n_removed(self) -> int:
        """Number of stars removed."""
        return len(self.removed_ids)

    def __str__(self) -> str:
        if not self.applied:
            return f"{self.name}: not applied ({self.note})"
        text = f"{self.name}: removed {self.n_removed} of {self.n_before}"
        return text + (f" ({self.note})" if self.note else "")


def apply_quality_cuts(
    dataset: SpectralDataset,
    cuts: QualityCuts,
    *,
    snr: np.ndarray | None = None,
    flags: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[CutOutcome, ...]]:
    """Apply ``cuts`` one after another and report what each removed.

    Each cut sees only the stars the previous cuts kept, so the counts add up to the
    total removed.

    Parameters
    ----------
    dataset : SpectralDataset
        Masked spectra (bad pixels in ``mask``) with optional labels.
    cuts : QualityCuts
    snr : ndarray, shape (stars,), optional
        Survey S/N (required for ``min_snr``; without it the cut is reported as not applied).
    flags : mapping of str to ndarray, shape (stars,), optional
        Integer flag columns for ``reject_flags``.

    Returns
    -------
    keep : bool ndarray, shape (stars,)
    outcomes : tuple of CutOutcome
        One per cut, in order.

    Raises
    ------
    KeyError
        If a ``require_labels`` or ``label_ranges`` name is not a label of the dataset.
    """
    n = dataset.n_stars
    keep = np.ones(n, dtype=bool)
    outcomes: list[CutOutcome] = []
    flags = flags or {}

    def step(name: str, passes: np.ndarray, note: str = "") -> None:
        removed = keep & ~passes
        outcomes.append(CutOutcome(name, int(keep.sum()), tuple(dataset.ids[removed]), True, note))
        keep[...] = keep & passes

    def skip(name: str, note: str) -> None:
        outcomes.append(CutOutcome(name, int(keep.sum()), (), False, note))

    if cuts.min_snr is not None:
        name = f"snr > {cuts.min_snr:g}"
        if snr is None:
            skip(name, "no S/N available")
        else:
            values = np.asarray(snr, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                step(name, np.isfinite(values) & (values > cuts.min_snr))
    if cuts.require_labels is not False:
        if dataset.labels is None:
            skip("labels valid", "no labels")
        else:
            names = dataset.label_names if cuts.require_labels is True else tuple(cuts.require_labels)
            columns = [dataset.label_index(name) for name in names]
            step(
                f"labels valid ({', '.join(names)})",
                np.all(np.isfinite(dataset.labels[:, columns]), axis=1),
            )
    for column, bits in cuts.reject_flags.items():
        name = f"{column} & {bits:#x} == 0"
        if column not in flags:
            skip(name, f"no {column} column")
        else:
            step(name, (np.asarray(flags[column]).astype(np.int64) & int(bits)) == 0)
    n_bad = dataset.mask.sum(axis=1)
    if cuts.max_bad_pixels is not None:
        step(f"bad pixels <= {cuts.max_bad_pixels}", n_bad <= cuts.max_bad_pixels, f"of {dataset.n_pixels}")
    if cuts.max_bad_fraction is not None:
        step(
            f"bad-pixel fraction <= {cuts.max_bad_fraction:g}",
            n_bad <= cuts.max_bad_fraction * dataset.n_pixels,
        )
    for label, (lo, hi) in cuts.label_ranges.items():
        name = f"{lo:g} <= {label} <= {hi:g}"
        if dataset.labels is None:
            skip(name, "no labels")
            continue
        values = dataset.label(label)
        with np.errstate(invalid="ignore"):
            step(name, (values >= lo) & (values <= hi))
    return keep, tuple(outcomes)
