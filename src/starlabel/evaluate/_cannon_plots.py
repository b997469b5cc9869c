"""Diagnostic plots of a trained Cannon: derivative spectra and intrinsic scatter.

Like the other plots here, figures are built on :class:`matplotlib.figure.Figure` and
written straight to a file. The model is used through its public attributes only
(``derivatives``, ``label_scaler``, ``scatter``, ``wavelength``, ``pixel_ok``,
``allowed``, ``label_names``) and imports ``models`` for annotations only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from ._plots import _save

if TYPE_CHECKING:  # annotations only: plotting needs no JAX model code at import
    from ..models.cannon import FittedCannon

__all__ = ["plot_cannon_derivatives", "plot_cannon_scatter"]


def _axis(fitted: FittedCannon) -> tuple[np.ndarray, str]:
    if fitted.wavelength is None:
        return np.arange(fitted.n_pixels), "pixel"
    return np.asarray(fitted.wavelength), "wavelength [Å]"


def plot_cannon_derivatives(
    fitted: FittedCannon,
    path: str | os.PathLike[str],
    *,
    labels: Sequence[float] | None = None,
    compare: FittedCannon | None = None,
    compare_name: str = "other",
) -> Path:
    """θ derivative spectra: flux change per training-set 1σ of each label, vs wavelength.

    Panel k shows ``∂f_λ/∂label_k × σ_k`` (σ_k = the label scale, the training
    standard deviation) at ``labels``, so panels are comparable across labels. Pixels a
    label is censored at are shaded; pixels training could not fit are omitted.

    Parameters
    ----------
    fitted : FittedCannon
    path : path-like
        Output image (PNG/PDF/SVG by suffix); parent folders are created.
    labels : sequence of float, shape (labels,), optional
        Where to evaluate the derivatives (default: the training mean).
    compare : FittedCannon, optional
        A second model drawn on top (e.g. one trained with L1 or censoring).
    compare_name : str
        Legend name of ``compare``.

    Returns
    -------
    pathlib.Path
    """
    x, xlabel = _axis(fitted)
    names = tuple(fitted.label_names)
    scale = np.asarray(fitted.label_scaler.scale)
    ok = np.asarray(fitted.pixel_ok)
    allowed = np.asarray(fitted.allowed)
    curves = [("model", fitted.derivatives(labels) * scale[:, None])]
    if compare is not None:
        curves.append((compare_name, compare.derivatives(labels) * scale[:, None]))
    fig = Figure(figsize=(10, 1.9 * len(names) + 0.6), constrained_layout=True)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for k, (ax, name) in enumerate(zip(axes, names, strict=True)):
        for (curve_name, values), width in zip(curves, (0.8, 0.6), strict=False):
            ax.plot(x, np.where(ok, values[k], np.nan), lw=width, label=curve_name)
        if not allowed[k].all():
            low, high = ax.get_ylim()
            ax.fill_between(x, low, high, where=~allowed[k], color="0.85", step="mid", label="censored")
            ax.set_ylim(low, high)
        ax.axhline(0.0, color="0.5", lw=0.5)
        ax.set_ylabel(f"∂f/∂{name} × σ")
        if k == 0 and (compare is not None or not allowed.all()):
            ax.legend(loc="lower right", fontsize="small")
    axes[-1].set_xlabel(xlabel)
    return _save(fig, path)


def plot_cannon_scatter(fitted: FittedCannon, path: str | os.PathLike[str]) -> Path:
    """Intrinsic scatter ``s_λ`` (flux units) vs wavelength; untrained pixels marked.

    Parameters
    ----------
    fitted : FittedCannon
    path : path-like

    Returns
    -------
    pathlib.Path
    """
    x, xlabel = _axis(fitted)
    ok = np.asarray(fitted.pixel_ok)
    fig = Figure(figsize=(10, 2.6), constrained_layout=True)
    ax = fig.subplots()
    ax.plot(x, np.where(ok, fitted.scatter, np.nan), lw=0.7, color="k")
    if not ok.all():
        ax.plot(x[~ok], np.zeros(int((~ok).sum())), "rx", ms=3, label="not trained")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("intrinsic scatter s")
    return _save(fig, path)
