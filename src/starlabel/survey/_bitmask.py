"""APOGEE pixel bitmasks (``APOGEE_PIXMASK``) and the rules that turn pixels bad.

apStar HDU 3 holds one integer per pixel whose bits say what may be wrong with it.
A pixel is *bad* (``mask = True``, ``ivar = 0``) when any of a configurable set of bits
is set, when its flux is not positive, when its error is huge (the pipeline writes
errors of ~1e10 into pixels without data), or, optionally, when its flux is below a
fraction of the star's median flux (for the chip edges).

Which bits to treat as bad is a choice. :data:`DEFAULT_BAD_BITS` drops every pixel with
a detector, cosmic-ray, sky-subtraction or persistence problem, and keeps pixels merely
*near* a sky line or telluric line (``SIG_SKYLINE``, ``SIG_TELLURIC``) or in a
low-persistence region (``PERSIST_LOW``): APOGEE inflates the errors of those pixels
instead of discarding them. Pass ``bad_bits="all"`` for the strict choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from jaxtyping import Bool, Float, Integer

__all__ = [
    "APOGEE_PIXMASK",
    "DEFAULT_BAD_BITS",
    "PixelMask",
    "bitmask_value",
    "bad_from_bitmask",
    "count_bits",
    "mask_pixels",
]

APOGEE_PIXMASK: MappingProxyType[str, tuple[int, str]] = MappingProxyType(
    {
        "BADPIX": (0, "bad in the detector's bad-pixel mask or hit by a strong persistence jump"),
        "CRPIX": (1, "cosmic ray"),
        "SATPIX": (2, "saturated"),
        "UNFIXABLE": (3, "could not be fixed by interpolation"),
        "BADDARK": (4, "bad according to the dark frame"),
        "BADFLAT": (5, "bad according to the flat field"),
        "BADERR": (6, "error set very high by the pipeline"),
        "NOSKY": (7, "no sky spectrum available for this pixel"),
        "LITTROW_GHOST": (8, "in the Littrow ghost, may be affected"),
        "PERSIST_HIGH": (9, "in a high-persistence region of the detector"),
        "PERSIST_MED": (10, "in a medium-persistence region of the detector"),
        "PERSIST_LOW": (11, "in a low-persistence region of the detector"),
        "SIG_SKYLINE": (12, "near a sky line that is bright compared with the star"),
        "SIG_TELLURIC": (13, "near a strong telluric absorption line"),
        "NOT_ENOUGH_PSF": (14, "less than half of the PSF fell on good pixels"),
    }
)
"""Bit name → (bit number, meaning) of the APOGEE ``APOGEE_PIXMASK`` (DR12–DR17)."""

DEFAULT_BAD_BITS: tuple[str, ...] = (
    "BADPIX",
    "CRPIX",
    "SATPIX",
    "UNFIXABLE",
    "BADDARK",
    "BADFLAT",
    "BADERR",
    "NOSKY",
    "LITTROW_GHOST",
    "PERSIST_HIGH",
    "PERSIST_MED",
    "NOT_ENOUGH_PSF",
)
"""Bits that make a pixel bad by default (see the module docstring for the choice)."""


def bitmask_value(bad_bits: str | Sequence[str | int]) -> int:
    """The integer with the bits named in ``bad_bits`` set.

    Parameters
    ----------
    bad_bits : sequence of str or int, or ``"all"`` / ``"default"`` / ``"none"``
        Bit names from :data:`APOGEE_PIXMASK` (case-insensitive) or bit numbers.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        For an unknown bit name or number; the message lists the known names.

    Examples
    --------
    >>> bitmask_value(["BADPIX", "SATPIX"])
    5
    """
    if isinstance(bad_bits, str):
        preset = bad_bits.lower()
        if preset == "all":
            return bitmask_value(tuple(APOGEE_PIXMASK))
        if preset == "default":
            return bitmask_value(DEFAULT_BAD_BITS)
        if preset == "none":
            return 0
        raise ValueError(
            f"`bad_bits` {bad_bits!r} is not a preset ('all', 'default', 'none'); give a"
            f" list of bit names such as ['BADPIX', 'CRPIX'] from {list(APOGEE_PIXMASK)}."
        )
    value = 0
    known_numbers = {bit for bit, _ in APOGEE_PIXMASK.values()}
    for entry in bad_bits:
        if isinstance(entry, int | np.integer) and not isinstance(entry, bool):
            if int(entry) not in known_numbers:
                raise ValueError(
                    f"bit number {entry} is not an APOGEE_PIXMASK bit; known bits are 0–{max(known_numbers)}."
                )
            value |= 1 << int(entry)
            continue
        name = str(entry).upper()
        if name not in APOGEE_PIXMASK:
            raise ValueError(f"unknown APOGEE_PIXMASK bit {entry!r}; known bits: {list(APOGEE_PIXMASK)}.")
        value |= 1 << APOGEE_PIXMASK[name][0]
    return value


def bad_from_bitmask(
    bitmask: Integer[np.ndarray, "*shape"],
    bad_bits: str | Sequence[str | int] = DEFAULT_BAD_BITS,
) -> Bool[np.ndarray, "*shape"]:
    """``True`` where any of ``bad_bits`` is set in ``bitmask``.

    Parameters
    ----------
    bitmask : integer ndarray, any shape
        APOGEE_PIXMASK values (e.g. apStar HDU 3, or aspcapStar ``pixel_or_mask``).
    bad_bits : sequence of str or int, or preset
        See :func:`bitmask_value`.

    Returns
    -------
    bool ndarray, same shape
    """
    return (np.asarray(bitmask).astype(np.int64) & bitmask_value(bad_bits)) != 0


def count_bits(bitmask: Integer[np.ndarray, "*shape"]) -> dict[str, int]:
    """How many pixels have each APOGEE_PIXMASK bit set (one pixel may count for several).

    Returns
    -------
    dict
        Bit name → number of pixels, in bit order; for a bit histogram.
    """
    values = np.asarray(bitmask).astype(np.int64).ravel()
    return {name: int(np.count_nonzero(values & (1 << bit))) for name, (bit, _) in APOGEE_PIXMASK.items()}


@dataclass(frozen=True)
class PixelMask:
    """Bad pixels and how many each rule flagged.

    Attributes
    ----------
    bad : ndarray of bool, shape (stars, pixels)
        ``True`` = bad pixel.
    counts : dict
        Rule → number of pixels it flagged, counted in the order the rules are applied
        (a pixel is credited to the first rule that flags it).
    """

    bad: np.ndarray
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Fraction of all pixels that are bad."""
        return float(self.bad.mean()) if self.bad.size else 0.0

    def summary(self) -> str:
        """One line: percentage bad and the per-rule counts."""
        parts = ", ".join(f"{rule} {n}" for rule, n in self.counts.items())
        return f"{self.fraction:.1%} of pixels bad ({parts})"


def mask_pixels(
    flux: Float[np.ndarray, "stars pixels"],
    flux_err: Float[np.ndarray, "stars pixels"],
    bitmask: Integer[np.ndarray, "stars pixels"] | None = None,
    *,
    bad_bits: str | Sequence[str | int] = DEFAULT_BAD_BITS,
    max_error: float = 1e9,
    low_flux_fraction: float | None = None,
) -> PixelMask:
    """Decide which pixels are bad, rule by rule.

    Rules, in order: non-finite flux or error; flux ≤ 0; error ≤ 0; error ≥ ``max_error``; any of
    ``bad_bits`` set in ``bitmask``; and, when ``low_flux_fraction`` is given, flux below
    that fraction of the star's median flux over the pixels still good.

    The comparison is with the same star's median (not the median over stars at that
    pixel), so a faint star is not judged against bright ones.

    Parameters
    ----------
    flux : ndarray, shape (stars, pixels)
        Raw or normalised flux (any units).
    flux_err : ndarray, shape (stars, pixels)
        1-σ errors in the units of ``flux``.
    bitmask : integer ndarray, shape (stars, pixels), optional
        APOGEE_PIXMASK values; ``None`` skips the bit rule.
    bad_bits : sequence of str or int, or preset
        See :func:`bitmask_value`. Default :data:`DEFAULT_BAD_BITS`.
    max_error : float
        Errors at or above this are "no data" (APOGEE writes 1e10).
    low_flux_fraction : float, optional
        E.g. ``0.05`` for the lab's rule.

    Returns
    -------
    PixelMask

    Raises
    ------
    ValueError
        If ``low_flux_fraction`` is outside (0, 1).
    """
    flux = np.asarray(flux, dtype=np.float64)
    flux_err = np.asarray(flux_err, dtype=np.float64)
    bad = np.zeros(flux.shape, dtype=bool)
    counts: dict[str, int] = {}

    def apply(rule: str, flagged: np.ndarray) -> None:
        counts[rule] = int(np.count_nonzero(flagged & ~bad))
        bad[...] |= flagged

    with np.errstate(invalid="ignore"):
        apply("non-finite", ~np.isfinite(flux) | ~np.isfinite(flux_err))
        apply("flux<=0", flux <= 0)
        apply("err<=0", flux_err <= 0)
        apply(f"err>={max_error:g}", flux_err >= max_error)
    if bitmask is not None:
        apply("bitmask", bad_from_bitmask(bitmask, bad_bits))
    if low_flux_fraction is not None:
        if not 0.0 < low_flux_fraction < 1.0:
            raise ValueError(f"`low_flux_fraction` must be in (0, 1) (e.g. 0.05), got {low_flux_fraction}.")
        good_flux = np.where(bad, np.nan, flux)
        all_bad = bad.all(axis=1)
        good_flux[all_bad] = 0.0  # keeps nanmedian quiet; such stars are bad anyway
        median = np.nanmedian(good_flux, axis=1)
        apply(f"flux<{low_flux_fraction:g}*median", flux < low_flux_fraction * median[:, None])
    return PixelMask(bad, counts)
