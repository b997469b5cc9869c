"""Diagnostic plots saved straight to files (no display or pyplot state needed).

Figures are built with :class:`matplotlib.figure.Figure` rather than ``pyplot`` so
that plotting never depends on, or changes, the user's interactive backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .._internal import as_float_array, check_label_names
from ._metrics import label_metrics

__all__ = ["plot_kiel", "plot_one_to_one", "plot_residuals", "plot_spectrum", "find_kiel_labels"]

_TEFF_NAMES = ("teff", "t_eff")
_LOGG_NAMES = ("logg", "log_g")
_METAL_NAMES = ("fe_h", "m_h", "feh", "mh")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _pair(
    predicted: np.ndarray, reference: np.ndarray, label_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    predicted = np.atleast_2d(as_float_array(predicted, "predicted"))
    reference = np.atleast_2d(as_float_array(reference, "reference"))
    if predicted.shape != reference.shape:
        raise ValueError(f"`predicted` {predicted.shape} and `reference` {reference.shape} must match.")
    return predicted, reference, check_label_names(label_names, predicted.shape[1])


def plot_one_to_one(
    predicted: np.ndarray,
    reference: np.ndarray,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    errors: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Predicted vs reference, one panel per label, with RMSE/bias/robust σ in each title.

    Parameters
    ----------
    predicted, reference : array-like, shape (stars, labels)
    label_names : sequence of str
    path : path-like
        Output image (PNG/PDF/SVG by suffix); parent folders are created.
    errors : array-like, shape (stars, labels), optional
        1-σ errors on ``predicted``, drawn as error bars.
    title : str
        Figure title (e.g. the model name).

    Returns
    -------
    pathlib.Path
    """
    predicted, reference, names = _pair(predicted, reference, label_names)
    metrics = label_metrics(predicted, reference, names)
    fig = Figure(figsize=(4.0 * len(names), 4.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for k, (ax, name) in enumerate(zip(axes, names, strict=True)):
        x, y = reference[:, k], predicted[:, k]
        if errors is not None:
            ax.errorbar(x, y, yerr=np.asarray(errors)[:, k], fmt="none", ecolor="0.7", lw=0.5, zorder=1)
        ax.scatter(x, y, s=4, c="k", alpha=0.6, zorder=2)
        finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
        if finite.size:
            lo, hi = np.percentile(finite, [0.5, 99.5])
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="tab:green", lw=1, zorder=0)
            ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad))
        m = metrics[name]
        ax.set_title(
            f"{name}: RMSE {m.rmse:.3g}, bias {m.bias:.2g}\nrobust σ {m.robust_scatter:.3g} (n={m.n})",
            fontsize=9,
        )
        ax.set(xlabel=f"reference {name}", ylabel=f"inferred {name}")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_residuals(
    predicted: np.ndarray,
    reference: np.ndarray,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Residual (inferred − reference) against reference, one panel per label."""
    predicted, reference, names = _pair(predicted, reference, label_names)
    fig = Figure(figsize=(4.0 * len(names), 3.4), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for k, (ax, name) in enumerate(zip(axes, names, strict=True)):
        residual = predicted[:, k] - reference[:, k]
        ax.scatter(reference[:, k], residual, s=4, c="k", alpha=0.6)
        ax.axhline(0.0, color="tab:green", lw=1)
        ax.set(xlabel=f"reference {name}", ylabel=f"Δ{name}")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def find_kiel_labels(label_names: Sequence[str]) -> tuple[str, str, str | None] | None:
    """Names of (Teff, logg, metallicity-or-None) among ``label_names``, or None."""
    lowered = {n.lower(): n for n in label_names}
    teff = next((lowered[n] for n in _TEFF_NAMES if n in lowered), None)
    logg = next((lowered[n] for n in _LOGG_NAMES if n in lowered), None)
    metal = next((lowered[n] for n in _METAL_NAMES if n in lowered), None)
    if teff is None or logg is None:
        return None
    return teff, logg, metal


def plot_kiel(
    teff: np.ndarray,
    logg: np.ndarray,
    path: str | os.PathLike[str],
    *,
    metallicity: np.ndarray | None = None,
    metallicity_name: str = "[Fe/H]",
    title: str = "",
) -> Path:
    """Kiel diagram: logg against Teff (both axes reversed), coloured by metallicity."""
    teff = as_float_array(teff, "teff")
    logg = as_float_array(logg, "logg")
    fig = Figure(figsize=(5.0, 4.2), layout="constrained")
    ax = fig.subplots()
    if metallicity is not None:
        points = ax.scatter(teff, logg, c=as_float_array(metallicity, "metallicity"), s=5, cmap="viridis")
        fig.colorbar(points, ax=ax, label=metallicity_name)
    else:
        ax.scatter(teff, logg, s=5, c="k")
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set(xlabel="Teff [K]", ylabel="log g [dex]", title=title)
    return _save(fig, path)


def plot_spectrum(
    wavelength: np.ndarray | None,
    flux: np.ndarray,
    path: str | os.PathLike[str],
    *,
    model_flux: np.ndarray | None = None,
    ivar: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """One spectrum with its model and residuals; masked pixels are shaded.

    Parameters
    ----------
    wavelength : array-like, shape (pixels,), optional
        Å; pixel index is used when None.
    flux : array-like, shape (pixels,)
    model_flux : array-like, shape (pixels,), optional
    ivar : array-like, shape (pixels,), optional
        Inverse variances, drawn as a ±1σ band around the data.
    mask : array-like of bool, shape (pixels,), optional
        True = bad pixel (shown as grey bands and left out of the residual panel).
    """
    flux = as_float_array(flux, "flux")
    x = np.arange(flux.size) if wavelength is None else as_float_array(wavelength, "wavelength")
    bad = np.zeros(flux.size, bool) if mask is None else np.asarray(mask, bool)
    fig = Figure(figsize=(9.0, 4.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    shown = np.where(bad, np.nan, flux)
    top.plot(x, shown, color="k", lw=0.7, label="data")
    if ivar is not None:
        with np.errstate(divide="ignore"):
            sigma = np.where(np.asarray(ivar) > 0, 1 / np.sqrt(np.asarray(ivar)), np.nan)
        top.fill_between(x, shown - sigma, shown + sigma, color="0.8", lw=0)
    if model_flux is not None:
        model_flux = as_float_array(model_flux, "model_flux")
        top.plot(x, model_flux, color="tab:red", lw=0.8, label="model")
        bottom.plot(x, np.where(bad, np.nan, flux - model_flux), color="k", lw=0.6)
        bottom.axhline(0.0, color="tab:red", lw=0.8)
    for ax in (top, bottom):
        ax.fill_between(
            x, 0, 1, where=bad, color="tab:orange", alpha=0.25, lw=0, transform=ax.get_xaxis_transform()
        )
    top.set(ylabel="flux", title=title)
    top.legend(loc="lower left", fontsize=8)
    bottom.set(xlabel="wavelength [Å]" if wavelength is not None else "pixel", ylabel="residual")
    return _save(fig, path)
