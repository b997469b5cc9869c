"""APOGEE wavelength grids: the full apStar log-λ grid and its gap-removed versions.

Every APOGEE combined spectrum (apStar, aspcapStar) is sampled on one grid,
λ_i = 10^(4.179 + 6×10⁻⁶ i) Å for i = 0…8574 (15100.8–16999.8 Å). The three
detector chips leave two gaps with no data, and the data releases cut the grid to the
pixels the chips cover:

======  ==========================================  ======
grid    apStar pixel ranges kept (half-open)        pixels
======  ==========================================  ======
dr12    [322, 3242) + [3648, 6048) + [6412, 8306)    7214
dr17    [246, 3274) + [3585, 6080) + [6344, 8335)    7514
======  ==========================================  ======

The DR17 grid is the one used from DR13 to DR17 (the names ``dr13`` … ``dr16`` are
accepted as aliases). Each kept range is one chip (blue, green, red), which is why
continuum fits run chip by chip: the chips have separate detector responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

__all__ = [
    "APSTAR_LOG10_START",
    "APSTAR_LOG10_STEP",
    "APSTAR_N_PIXELS",
    "ApogeeGrid",
    "GRIDS",
    "apstar_wavelength",
    "chip_regions",
    "grid_of_size",
    "resolve_grid",
    "convert_pixel_mask",
]

APSTAR_LOG10_START = 4.179
"""log10 of the first apStar wavelength (Å), the FITS ``CRVAL1``."""
APSTAR_LOG10_STEP = 6e-6
"""log10 wavelength step per apStar pixel, the FITS ``CDELT1``."""
APSTAR_N_PIXELS = 8575
"""Number of pixels of the full apStar grid (``NWAVE``)."""

# Chip boundaries on the full grid sit in the middle of the two gaps, so every pixel of
# either gap-removed grid falls in the same chip under both grids.
_CHIP_EDGES = (0, 3430, 6212, APSTAR_N_PIXELS)


def apstar_wavelength(
    n_pixels: int = APSTAR_N_PIXELS,
    log10_start: float = APSTAR_LOG10_START,
    log10_step: float = APSTAR_LOG10_STEP,
) -> np.ndarray:
    """Vacuum wavelengths (Å) of a log-linear grid, ``10**(log10_start + log10_step*i)``.

    Parameters
    ----------
    n_pixels : int
        Number of pixels (default: the 8575 apStar pixels).
    log10_start, log10_step : float
        ``CRVAL1`` and ``CDELT1`` of the FITS header (defaults: the apStar grid).

    Returns
    -------
    ndarray, shape (pixels,)
        Wavelengths in Å.

    Examples
    --------
    >>> round(float(apstar_wavelength()[0]), 1), round(float(apstar_wavelength()[-1]), 1)
    (15100.8, 16999.8)
    """
    return 10.0 ** (log10_start + log10_step * np.arange(n_pixels, dtype=np.float64))


@dataclass(frozen=True)
class ApogeeGrid:
    """One APOGEE pixel grid: which apStar pixels it keeps, chip by chip.

    Parameters
    ----------
    name : str
        Short name (``"apstar"``, ``"dr12"``, ``"dr17"``).
    segments : tuple of (int, int)
        Half-open apStar pixel ranges kept, one per chip, blue to red.
    """

    name: str
    segments: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        previous = 0
        for start, stop in self.segments:
            if not previous <= start < stop <= APSTAR_N_PIXELS:
                raise ValueError(
                    f"grid {self.name!r}: segments must be increasing, non-overlapping ranges"
                    f" inside [0, {APSTAR_N_PIXELS}); got {self.segments}."
                )
            previous = stop

    @property
    def n_pixels(self) -> int:
        """Number of pixels kept."""
        return sum(stop - start for start, stop in self.segments)

    @property
    def apstar_pixels(self) -> np.ndarray:
        """Index of each kept pixel on the full apStar grid, shape (pixels,)."""
        return np.concatenate([np.arange(start, stop) for start, stop in self.segments])

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelength of each kept pixel in Å, shape (pixels,)."""
        return apstar_wavelength()[self.apstar_pixels]

    @property
    def chip(self) -> np.ndarray:
        """Chip of each kept pixel (0 blue, 1 green, 2 red), shape (pixels,)."""
        return np.searchsorted(_CHIP_EDGES, self.apstar_pixels, side="right") - 1

    def take(self, array: np.ndarray) -> np.ndarray:
        """Cut the last axis of ``array`` from the full apStar grid to this grid.

        Parameters
        ----------
        array : ndarray, shape (..., 8575)
            Anything sampled on the full apStar grid (flux, errors, bitmasks).

        Returns
        -------
        ndarray, shape (..., pixels)

        Raises
        ------
        ValueError
            If the last axis is not 8575 pixels long (already cut, or another instrument).
        """
        array = np.asarray(array)
        if array.shape[-1] == self.n_pixels and self.name != "apstar":
            raise ValueError(
                f"array already has the {self.n_pixels} pixels of the {self.name} grid;"
                " take() cuts spectra on the full 8575-pixel apStar grid."
            )
        if array.shape[-1] != APSTAR_N_PIXELS:
            raise ValueError(
                f"expected spectra on the full apStar grid ({APSTAR_N_PIXELS} pixels) but the"
                f" last axis has {array.shape[-1]}; known grids: {_grid_sizes()}."
            )
        return array[..., self.apstar_pixels]


def chip_regions() -> tuple[tuple[float, float], ...]:
    """Wavelength bounds (Å) of the three APOGEE chips, as half-open ``[lo, hi)`` ranges.

    These are the ``regions`` to fit a continuum chip by chip on any APOGEE grid. The
    bounds lie in the middle of the inter-chip gaps.

    Returns
    -------
    tuple of (float, float)
        ``((blue_lo, blue_hi), (green_lo, green_hi), (red_lo, red_hi))`` in Å.
    """
    edges = apstar_wavelength(APSTAR_N_PIXELS + 1)[list(_CHIP_EDGES)]
    return tuple((float(edges[i]), float(edges[i + 1])) for i in range(3))


GRIDS: MappingProxyType[str, ApogeeGrid] = MappingProxyType(
    {
        "apstar": ApogeeGrid("apstar", tuple(zip(_CHIP_EDGES[:-1], _CHIP_EDGES[1:], strict=True))),
        "dr12": ApogeeGrid("dr12", ((322, 3242), (3648, 6048), (6412, 8306))),
        "dr17": ApogeeGrid("dr17", ((246, 3274), (3585, 6080), (6344, 8335))),
    }
)
"""The known grids by name; see the module docstring for their pixel ranges."""

_ALIASES = {"dr13": "dr17", "dr14": "dr17", "dr15": "dr17", "dr16": "dr17", "full": "apstar"}


def _grid_sizes() -> str:
    return ", ".join(f"{name} ({grid.n_pixels} px)" for name, grid in GRIDS.items())


def resolve_grid(grid: str | ApogeeGrid) -> ApogeeGrid:
    """Return the :class:`ApogeeGrid` called ``grid`` (``"dr12"``, ``"dr17"``, ``"apstar"``).

    ``"dr13"`` … ``"dr16"`` are aliases of ``"dr17"`` (same 7514-pixel grid).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known grids.
    """
    if isinstance(grid, ApogeeGrid):
        return grid
    key = str(grid).lower()
    key = _ALIASES.get(key, key)
    if key not in GRIDS:
        raise ValueError(
            f"unknown APOGEE grid {grid!r}; known grids: {_grid_sizes()}"
            f" (aliases: {', '.join(sorted(_ALIASES))})."
        )
    return GRIDS[key]


def grid_of_size(n_pixels: int) -> ApogeeGrid | None:
    """The known grid with ``n_pixels`` pixels, or ``None``."""
    for grid in GRIDS.values():
        if grid.n_pixels == n_pixels:
            return grid
    return None


def convert_pixel_mask(
    mask: Sequence[bool] | np.ndarray, source: str | ApogeeGrid, target: str | ApogeeGrid
) -> np.ndarray:
    """Move a per-pixel boolean mask from one APOGEE grid to another.

    Pixels of ``target`` that ``source`` lacks become ``False``; pixels of ``source``
    outside ``target`` are dropped (their count is not an error: the grids differ at the
    chip edges).

    Parameters
    ----------
    mask : array-like of bool, shape (source pixels,)
        E.g. a continuum-pixel mask on the DR12 grid.
    source, target : str or ApogeeGrid
        Grid names (see :data:`GRIDS`).

    Returns
    -------
    ndarray of bool, shape (target pixels,)

    Raises
    ------
    ValueError
        If ``mask`` does not have the source grid's length.

    Examples
    --------
    >>> m = np.zeros(7214, dtype=bool); m[0] = True   # apStar pixel 322
    >>> int(np.flatnonzero(convert_pixel_mask(m, "dr12", "dr17"))[0])
    76
    """
    source_grid, target_grid = resolve_grid(source), resolve_grid(target)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (source_grid.n_pixels,):
        raise ValueError(
            f"`mask` must be a boolean array of shape ({source_grid.n_pixels},) on the"
            f" {source_grid.name} grid; got dtype {mask.dtype}, shape {mask.shape}."
        )
    full = np.zeros(APSTAR_N_PIXELS, dtype=bool)
    full[source_grid.apstar_pixels] = mask
    return full[target_grid.apstar_pixels]
