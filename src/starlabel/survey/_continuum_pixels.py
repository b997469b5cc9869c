"""Which pixels are continuum: loaded from a file, or found from a trained Cannon.

A continuum-pixel set is chosen once for a survey and then used for every spectrum,
training and test alike, which is what keeps the normalisation label- and
S/N-independent. starlabel does not ship a set. Two ways to get one:

1. **From a file** (:func:`load_continuum_pixels`): a boolean mask or an index array on
   the chosen APOGEE grid, as ``.npy``, ``.npz`` with one array, or text.
2. **From a trained Cannon** (:func:`find_continuum_pixels`), as Ness et al. (2015) did:
   pixels whose model flux barely depends on any label (small first-order
   coefficients) and whose mean flux is close to 1. The usual loop is: normalise with
   a rough set (or ``"all"`` pixels), train, find continuum pixels, renormalise,
   retrain.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Bool, Float

from ._grids import ApogeeGrid, grid_of_size, resolve_grid

__all__ = ["CONTINUUM_PIXELS_HELP", "find_continuum_pixels", "load_continuum_pixels"]

CONTINUUM_PIXELS_HELP = (
    "Continuum normalisation needs a set of continuum pixels on the chosen grid:"
    " (1) give a file with a boolean mask or an index array (.npy, .npz with one array,"
    " or text; e.g. the 529 Cannon pixels of Ness et al. 2015 on the DR12 grid);"
    " (2) derive one from a trained Cannon with starlabel.survey.find_continuum_pixels(model)"
    " and save it with numpy.save; or (3) fit every good pixel with cont_pixels='all'"
    " (puts the continuum through the mean flux like ASPCAP does, not the line-free level;"
    " a usable first pass before (2))."
)
"""What to tell a user who has no continuum pixels."""


def _from_array(values: np.ndarray, grid: ApogeeGrid, source: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    n = grid.n_pixels
    other = grid_of_size(values.size) if values.size != n else None
    if values.dtype == bool:
        if values.size != n:
            hint = (
                f" It looks like a mask on the {other.name} grid: use grid={other.name!r}, or"
                f" convert it with convert_pixel_mask(mask, {other.name!r}, {grid.name!r})."
                if other is not None
                else ""
            )
            raise ValueError(
                f"{source}: boolean mask has {values.size} entries but the {grid.name} grid has"
                f" {n} pixels.{hint}"
            )
        return values
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise ValueError(
                f"{source}: holds non-integer numbers; expected a boolean mask or pixel indices."
            )
        values = values.astype(np.int64)
    if values.dtype.kind not in "iu":
        raise ValueError(
            f"{source}: has dtype {values.dtype}; expected a boolean mask or integer pixel indices."
        )
    if values.size == n and np.all((values == 0) | (values == 1)):
        return values.astype(bool)  # a 0/1 mask written as numbers (typical of text files)
    if values.size == n and np.unique(values).size != n:
        raise ValueError(
            f"{source}: one integer per pixel with values {values.min()}…{values.max()}, not"
            " 0/1: a per-pixel code array (e.g. ASPCAP element windows), not a continuum mask."
            f" Give a boolean mask of {n} pixels or unique pixel indices."
        )
    if values.size and (values.min() < 0 or values.max() >= n):
        raise ValueError(
            f"{source}: pixel indices span [{values.min()}, {values.max()}] but the {grid.name}"
            f" grid has pixels 0…{n - 1}; indices must refer to the chosen grid."
        )
    if np.unique(values).size != values.size:
        raise ValueError(
            f"{source}: {values.size} integers with repeated values, so not a list of pixel"
            f" indices (a per-pixel code array such as an element-window mask?). Give a"
            f" boolean mask of {n} pixels or unique indices."
        )
    mask = np.zeros(n, dtype=bool)
    mask[values] = True
    return mask


def load_continuum_pixels(
    path: str | os.PathLike[str], grid: str | ApogeeGrid = "dr17", *, key: str | None = None
) -> Bool[np.ndarray, " pixels"]:
    """Load a continuum-pixel set as a boolean mask on an APOGEE grid.

    Parameters
    ----------
    path : path-like
        ``.npy`` (one array), ``.npz`` (exactly one array, or name it with ``key``), or a
        text file of numbers (anything else; whitespace/comma separated). The array is a
        boolean mask (or 0/1 numbers) with one entry per grid pixel, or unique integer
        pixel indices on the grid.
    grid : str or ApogeeGrid
        The grid the pixels refer to (``"dr12"``: 7214 pixels, ``"dr17"``: 7514).
    key : str, optional
        Array name inside an ``.npz``.

    Returns
    -------
    bool ndarray, shape (pixels,)

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (the message says how to provide or derive a set).
    ValueError
        If the content is not a mask or index array on ``grid`` (the message says which
        grid a mask of that length belongs to, and how to convert it).

    Examples
    --------
    >>> mask = load_continuum_pixels("thepayne_cannon_cont_pixels_apogee.npz", "dr12")  # doctest: +SKIP
    >>> int(mask.sum())                                                                  # doctest: +SKIP
    529
    """
    path = Path(path)
    target = resolve_grid(grid)
    if not path.is_file():
        raise FileNotFoundError(f"continuum-pixel file {str(path)!r} does not exist. {CONTINUUM_PIXELS_HELP}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if key is None:
                    if len(names) != 1:
                        raise ValueError(
                            f"{path.name}: holds {len(names)} arrays {names}; pass key=... to choose one."
                        )
                    key = names[0]
                if key not in names:
                    raise ValueError(f"{path.name}: has no array {key!r}; arrays: {names}.")
                values = archive[key]
        else:
            text = path.read_text().replace(",", " ").split()
            lowered = [t.lower() for t in text]
            if lowered and set(lowered) <= {"true", "false"}:
                values = np.array([t == "true" for t in lowered])
            else:
                values = np.array([float(t) for t in text])
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path.name}: cannot read continuum pixels ({error}).") from error
    except ValueError as error:
        if path.name in str(error):
            raise
        raise ValueError(
            f"{path.name}: not a .npy/.npz array or a text file of numbers ({error})."
        ) from error
    return _from_array(values, target, path.name)


def _attribute(model: Any, *names: str) -> Any:
    for name in names:
        if hasattr(model, name):
            return getattr(model, name)
    return None


def find_continuum_pixels(
    model: Any = None,
    *,
    theta: Float[np.ndarray, "pixels terms"] | None = None,
    label_names: Sequence[str] | None = None,
    term_names: Sequence[str] | None = None,
    mean_flux: Float[np.ndarray, " pixels"] | None = None,
    flux_tolerance: float = 0.015,
    derivative_tolerance: float = 0.006,
    max_pixels: int | None = None,
) -> Bool[np.ndarray, " pixels"]:
    """Continuum pixels of a trained Cannon: flux ≈ 1 and no sensitivity to any label.

    A pixel qualifies when ``|mean_flux − 1| < flux_tolerance`` and every first-order
    coefficient ``|θ_k| < derivative_tolerance``. The first-order coefficients are the
    derivatives of the model flux with respect to the *scaled* labels at the scaling
    pivot, so the tolerance is a flux change per unit of scaled label (per ~1σ of the
    training labels with a standard scaling). With ``max_pixels``, the qualifying pixels
    are ranked by ``max(|mean − 1| / flux_tolerance, max_k |θ_k| / derivative_tolerance)``
    and the best ``max_pixels`` kept.

    Parameters
    ----------
    model : fitted Cannon, optional
        Anything with ``theta`` (pixels, terms) and ``label_names``; ``term_names`` (as
        in ``('1', 'teff', 'logg', 'teff^2', …)``) locates the linear terms when present,
        and pixels with ``pixel_ok == False`` are never chosen. Give this or ``theta`` +
        ``label_names``.
    theta : ndarray, shape (pixels, terms), optional
        Coefficients; column 0 is the constant term.
    label_names : sequence of str, optional
        Label names; without ``term_names`` the linear terms are columns 1…K.
    term_names : sequence of str, optional
    mean_flux : ndarray, shape (pixels,), optional
        Mean normalised flux of the training set; default θ₀ (the model flux at the pivot).
    flux_tolerance, derivative_tolerance : float
        See above.
    max_pixels : int, optional
        Keep at most this many of the best pixels.

    Returns
    -------
    bool ndarray, shape (pixels,)

    Raises
    ------
    ValueError
        If neither a model nor ``theta`` + ``label_names`` is given, or shapes disagree.

    References
    ----------
    Ness, M., Hogg, D. W., Rix, H.-W., Ho, A. Y. Q., & Zasowski, G. 2015, ApJ, 808, 16.
    """
    usable = None
    if model is not None:
        if theta is not None:
            raise ValueError("give a fitted `model` or `theta`, not both.")
        theta = _attribute(model, "theta")
        usable = _attribute(model, "pixel_ok")
        label_names = label_names or _attribute(model, "label_names")
        term_names = term_names or _attribute(model, "term_names")
        if term_names is None:
            vectorizer = _attribute(model, "vectorizer")
            term_names = getattr(vectorizer, "term_names", None)
        if theta is None or label_names is None:
            raise ValueError(
                f"`model` ({type(model).__name__}) has no `theta` and `label_names`; pass a"
                " fitted Cannon or theta=..., label_names=... directly."
            )
    if theta is None or label_names is None:
        raise ValueError("give a fitted Cannon `model`, or `theta` (pixels, terms) and `label_names`.")
    theta = np.asarray(theta, dtype=np.float64)
    names = tuple(label_names)
    if theta.ndim != 2 or theta.shape[1] < len(names) + 1:
        raise ValueError(
            f"`theta` must be (pixels, terms) with at least 1 + {len(names)} terms; got {theta.shape}."
        )
    if term_names is not None:
        terms = list(term_names)
        if len(terms) != theta.shape[1]:
            raise ValueError(f"`term_names` has {len(terms)} names but `theta` has {theta.shape[1]} terms.")
        missing = [n for n in names if n not in terms]
        if missing:
            raise ValueError(f"`term_names` {terms} has no linear term for label(s) {missing}.")
        linear = [terms.index(n) for n in names]
    else:
        linear = list(range(1, len(names) + 1))
    mean = theta[:, 0] if mean_flux is None else np.asarray(mean_flux, dtype=np.float64)
    if mean.shape != (theta.shape[0],):
        raise ValueError(f"`mean_flux` has shape {mean.shape}; expected ({theta.shape[0]},).")
    score = np.maximum(
        np.abs(mean - 1.0) / flux_tolerance,
        np.max(np.abs(theta[:, linear]), axis=1) / derivative_tolerance,
    )
    score[~np.isfinite(score)] = np.inf
    if usable is not None:
        score[~np.asarray(usable, dtype=bool)] = np.inf  # pixels the model could not train
    chosen = score < 1.0
    if max_pixels is not None and np.count_nonzero(chosen) > max_pixels:
        best = np.argsort(score, kind="stable")[:max_pixels]
        chosen = np.zeros_like(chosen)
        chosen[best] = True
    return chosen
