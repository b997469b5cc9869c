"""Censoring: which labels may influence which pixels.

A censoring mask for a label is a boolean array over pixels that is ``True`` where the
label is *allowed* to change the flux (inside its windows) and ``False`` where it is
censored. A term of the label vector is active at a pixel only when every label in
that term is allowed there, so a censored label contributes neither linear nor cross
terms outside its windows and its flux derivative there is exactly zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..._internal import as_float_array

__all__ = ["censor_from_windows", "resolve_censor", "active_terms"]


def censor_from_windows(wavelength: Any, windows: Any) -> np.ndarray:
    """Boolean pixel mask that is ``True`` inside any of the wavelength ``windows``.

    Parameters
    ----------
    wavelength : array-like, shape (pixels,)
        Pixel wavelengths in Å.
    windows : sequence of (start, end)
        Closed intervals ``[start, end]`` in Å, with ``start < end``. An empty list
        censors the label at every pixel.

    Returns
    -------
    numpy.ndarray of bool, shape (pixels,)
        ``True`` where the label may affect the flux.

    Raises
    ------
    ValueError
        If ``wavelength`` is not 1-D, or a window is not a finite pair with start < end.

    Examples
    --------
    >>> censor_from_windows([15000.0, 15001.0, 15002.0, 15003.0], [(15000.5, 15002.0)])
    array([False,  True,  True, False])
    """
    wave = as_float_array(wavelength, "wavelength")
    if wave.ndim != 1:
        raise ValueError(f"`wavelength` must be 1-D (pixels,), got shape {wave.shape}.")
    bounds = np.asarray(windows, dtype=np.float64) if len(windows) else np.zeros((0, 2))
    if bounds.ndim != 2 or bounds.shape[1] != 2:
        raise ValueError(
            f"`windows` must be a list of [start_Å, end_Å] pairs, got {windows!r};"
            " e.g. [[15200.0, 15210.0], [16700.0, 16720.0]]."
        )
    if not np.all(np.isfinite(bounds)) or np.any(bounds[:, 0] >= bounds[:, 1]):
        raise ValueError(f"every window needs finite start < end (Å); got {bounds.tolist()}.")
    inside = (wave[:, None] >= bounds[None, :, 0]) & (wave[:, None] <= bounds[None, :, 1])
    return np.any(inside, axis=1)


def resolve_censor(
    censor: Mapping[str, Any] | None,
    label_names: tuple[str, ...],
    n_pixels: int,
    wavelength: np.ndarray | None,
) -> np.ndarray:
    """Turn the user's ``censor`` mapping into an allowed-mask of shape (labels, pixels).

    Values may be boolean arrays (pixels,) or window lists (needing ``wavelength``).
    """
    allowed = np.ones((len(label_names), n_pixels), dtype=bool)
    if not censor:
        return allowed
    if not isinstance(censor, Mapping):
        raise TypeError(
            f"`censor` must map label names to pixel masks or windows, got {type(censor).__name__};"
            ' e.g. {"m_h": [[15200.0, 15210.0]]}.'
        )
    for name, value in censor.items():
        if name not in label_names:
            raise ValueError(
                f"`censor` names label {name!r}, which is not a model label; model labels are"
                f" {list(label_names)}."
            )
        array = np.asarray(value)
        if array.dtype == bool:
            if array.shape != (n_pixels,):
                raise ValueError(
                    f"`censor[{name!r}]` is a boolean mask of shape {array.shape}; it must have"
                    f" one entry per pixel, ({n_pixels},)."
                )
            mask = array
        else:
            if wavelength is None:
                raise ValueError(
                    f"`censor[{name!r}]` gives wavelength windows but the training data has no"
                    " `wavelength`; pass a boolean pixel mask instead or add wavelengths."
                )
            mask = censor_from_windows(wavelength, value)
        allowed[label_names.index(name)] = mask
    return allowed


def active_terms(exponents: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Which terms act at each pixel, shape (pixels, terms), from allowed (labels, pixels).

    A term is active where every label it contains (exponent > 0) is allowed; the
    constant term is active everywhere.
    """
    uses = exponents > 0  # (terms, labels)
    blocked = uses[None, :, :] & ~allowed.T[:, None, :]  # (pixels, terms, labels)
    return ~np.any(blocked, axis=2)
