"""Plots for mixture models: membership, parallax by component, line posterior band.

Membership in the proper-motion plane, parallax histograms split by component, and a
line fitted through outliers with its posterior band.

Figures are built with :class:`matplotlib.figure.Figure`, never ``pyplot``, so
plotting neither needs nor changes the user's interactive backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ._plots import _save

__all__ = ["plot_pm_membership", "plot_parallax_components", "plot_line_fit", "plot_membership"]


def _fitted_columns(result: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Astrometry (fitted rows) and p_member from a MembershipResult."""
    if not hasattr(result, "table") or not hasattr(result, "columns"):
        raise TypeError(
            "expected a MembershipResult from starlabel.mixtures.fit_membership_table, got"
            f" {type(result).__name__}."
        )
    table = result.table
    used = np.asarray(table["member_status"]) == "fit"
    names = list(result.columns["values"])
    values = np.stack([np.asarray(table[c], dtype=float)[used] for c in names], axis=1)
    return values, np.asarray(table["p_member"], dtype=float)[used], names


def plot_pm_membership(
    result: Any,
    path: str | os.PathLike[str],
    *,
    window: float | None = None,
    title: str = "",
) -> Path:
    """Proper-motion plane coloured by membership probability, with the cluster mean.

    Parameters
    ----------
    result : MembershipResult
        From :func:`starlabel.mixtures.fit_membership_table`.
    path : path-like
        Output image (format by suffix); parent folders are created.
    window : float, optional
        Half-width (mas/yr) of the zoomed panel around the cluster; default 8× the
        cluster's proper-motion dispersion plus 1 mas/yr.
    title : str
        Figure title.

    Returns
    -------
    Path
    """
    values, p, names = _fitted_columns(result)
    params = result.fit.parameters()
    centre = np.array([params["mean_pmra"]["median"], params["mean_pmdec"]["median"]])
    if window is None:
        window = 8.0 * params["pm_dispersion"]["median"] + 1.0
    fig = Figure(figsize=(11, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    order = np.argsort(p)  # members drawn last, on top
    low, high = np.percentile(values[:, :2], [1.0, 99.0], axis=0)
    for ax, (lo, hi) in zip(axes, [(low, high), (centre - window, centre + window)], strict=True):
        points = ax.scatter(
            values[order, 0],
            values[order, 1],
            c=p[order],
            s=4,
            cmap="magma_r",
            vmin=0,
            vmax=1,
            rasterized=True,
        )
        ax.plot(*centre, marker="+", color="tab:cyan", markersize=14, mew=2, label="cluster mean")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel(f"{names[0]} [mas/yr]")
        ax.set_ylabel(f"{names[1]} [mas/yr]")
    axes[0].set_title("field (1st–99th percentile)")
    axes[1].set_title(f"zoom ±{window:.2f} mas/yr")
    axes[1].legend(loc="upper right")
    fig.colorbar(points, ax=axes, label="membership probability")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_parallax_components(
    result: Any,
    path: str | os.PathLike[str],
    *,
    bins: int = 60,
    title: str = "",
) -> Path:
    """Parallax histograms of the cluster and the field, weighted by membership.

    Each star enters the cluster histogram with weight ``p_member`` and the field
    histogram with ``1 - p_member``; their sum is the plain histogram.

    Parameters
    ----------
    result : MembershipResult
        From a fit that used parallax.
    path : path-like
        Output image.
    bins : int
        Number of bins between the 1st and 99th percentile of parallax.
    title : str
        Figure title.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        When the fit did not use parallax.
    """
    values, p, names = _fitted_columns(result)
    if values.shape[1] < 3:
        raise ValueError("this membership fit has no parallax column; nothing to histogram.")
    plx = values[:, 2]
    low, high = np.percentile(plx, [1.0, 99.0])
    edges = np.linspace(low, high, bins + 1)
    params = result.fit.parameters()
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, log in zip(axes, (False, True), strict=True):
        ax.hist(plx, edges, histtype="step", color="0.4", label="all stars")
        ax.hist(
            plx,
            edges,
            weights=1.0 - p,
            histtype="stepfilled",
            alpha=0.4,
            color="tab:blue",
            label="field (1 − p)",
        )
        ax.hist(
            plx, edges, weights=p, histtype="stepfilled", alpha=0.6, color="tab:orange", label="cluster (p)"
        )
        ax.axvline(params["mean_parallax"]["median"], color="tab:red", lw=1, label="cluster mean ϖ")
        ax.set_xlabel(f"{names[2]} [mas]")
        ax.set_ylabel("stars per bin")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.3)  # below one star per bin the weighted tails are noise
    axes[0].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_line_fit(
    fit: Any,
    x: np.ndarray,
    y: np.ndarray,
    y_err: np.ndarray,
    path: str | os.PathLike[str],
    *,
    truth: tuple[float, float] | None = None,
    least_squares: bool = True,
    title: str = "",
) -> Path:
    """Points coloured by inlier probability, the posterior 68% band, and references.

    Parameters
    ----------
    fit : LineFit
        From :func:`starlabel.mixtures.fit_line_with_outliers`.
    x, y, y_err : array-like, shape (stars,)
        The fitted data.
    path : path-like
        Output image.
    truth : (slope, intercept), optional
        Draw the true line.
    least_squares : bool
        Also draw the ordinary weighted least-squares line (pulled by outliers).
    title : str
        Figure title.

    Returns
    -------
    Path
    """
    x, y, y_err = (np.asarray(a, dtype=float).ravel() for a in (x, y, y_err))
    grid = np.linspace(x.min(), x.max(), 128)
    median, low, high = fit.band(grid)
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(x, y, y_err, fmt="none", ecolor="0.7", zorder=1)
    points = ax.scatter(x, y, c=fit.p_inlier, cmap="magma_r", vmin=0, vmax=1, edgecolor="k", zorder=3)
    ax.fill_between(grid, low, high, color="tab:purple", alpha=0.4, lw=0, label="posterior 16–84%")
    ax.plot(grid, median, color="tab:purple", lw=1)
    if least_squares:
        design = np.stack([x, np.ones_like(x)], axis=1)
        w = 1.0 / y_err
        slope, intercept = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)[0]
        ax.plot(grid, slope * grid + intercept, "--", color="tab:red", label="least squares")
    if truth is not None:
        ax.plot(grid, truth[0] * grid + truth[1], color="tab:blue", label="true")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="upper left")
    fig.colorbar(points, ax=ax, label="inlier probability")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_membership(result: Any, out_dir: str | os.PathLike[str], *, prefix: str = "members") -> list[Path]:
    """Every membership plot for a table fit, written into ``out_dir``.

    Writes ``<prefix>_pm.png`` and, with parallax, ``<prefix>_parallax.png``.

    Parameters
    ----------
    result : MembershipResult
    out_dir : path-like
        Folder, created if needed.
    prefix : str
        File-name prefix.

    Returns
    -------
    list of Path
    """
    out = Path(out_dir)
    paths = [plot_pm_membership(result, out / f"{prefix}_pm.png", title=result.source)]
    if len(result.columns["values"]) > 2:
        paths.append(plot_parallax_components(result, out / f"{prefix}_parallax.png", title=result.source))
    return paths
