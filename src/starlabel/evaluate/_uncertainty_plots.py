"""Plots that judge uncertainties: posterior corners, z-score histograms, error vs S/N.

Like the other plots here they are built on :class:`matplotlib.figure.Figure` (no
``pyplot`` state) and saved straight to ``path``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from numpy.typing import ArrayLike

from .._internal import as_float_array, check_label_names, check_shape

__all__ = [
    "plot_posterior_corner",
    "plot_zscore_comparison",
    "plot_zscore_histograms",
    "plot_uncertainty_vs_snr",
    "zscore_summary",
]


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_posterior_corner(
    samples: ArrayLike,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    truths: ArrayLike | None = None,
    gaussian: tuple[ArrayLike, ArrayLike] | None = None,
    title: str = "",
) -> Path:
    """Corner plot of one star's label posterior, optionally over its Gaussian approximation.

    Parameters
    ----------
    samples : array-like, shape (samples, labels) or (chains, samples, labels)
        Posterior draws in the labels' units (e.g. from
        ``posterior_infer(..., method="nuts", return_samples=True)[1][star]``).
    label_names : sequence of str
        Axis labels, one per column.
    path : path-like
        Output image; parent folders are created.
    truths : array-like, shape (labels,), optional
        True labels, drawn as lines.
    gaussian : (mean, cov), optional
        A Gaussian approximation (e.g. Fisher: ``result.labels[i]``, ``result.cov[i]``)
        shown as contours of 20,000 draws from it, in a second colour.
    title : str
        Figure title.

    Returns
    -------
    pathlib.Path
        Where the figure was written.

    Raises
    ------
    ValueError
        If the shapes of ``samples``, ``truths`` and ``gaussian`` disagree.
    """
    import corner

    draws = as_float_array(samples, "samples")
    if draws.ndim == 3:
        draws = draws.reshape(-1, draws.shape[-1])
    if draws.ndim != 2 or draws.shape[0] < 2:
        raise ValueError(
            f"`samples` has shape {np.shape(samples)}; expected (samples, labels) or"
            " (chains, samples, labels) with at least 2 draws."
        )
    k = draws.shape[1]
    names = check_label_names(label_names, k)
    fig = Figure(figsize=(2.2 * k + 1, 2.2 * k + 1))
    fig.subplots(k, k)
    kwargs = {}
    if truths is not None:
        truth = as_float_array(truths, "truths")
        check_shape(truth, (k,), "truths", f"one value per label column of `samples` ({k})")
        kwargs["truths"] = truth
    corner.corner(draws, labels=list(names), fig=fig, color="C0", **kwargs)
    if gaussian is not None:
        mean = as_float_array(gaussian[0], "gaussian mean")
        cov = as_float_array(gaussian[1], "gaussian cov")
        check_shape(mean, (k,), "gaussian mean", f"one value per label ({k})")
        check_shape(cov, (k, k), "gaussian cov", f"labels × labels ({k})")
        reference = np.random.default_rng(0).multivariate_normal(mean, cov, size=20000)
        # Weighted to the number of draws so both 1-D histograms share one scale.
        corner.corner(
            reference,
            weights=np.full(len(reference), len(draws) / len(reference)),
            fig=fig,
            color="C1",
            plot_datapoints=False,
            plot_density=False,
            hist_kwargs={"ls": "--"},
        )
        fig.text(0.6, 0.9, "posterior draws", color="C0")
        fig.text(0.6, 0.86, "Gaussian approximation", color="C1")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _zscores(
    labels: ArrayLike, errors: ArrayLike, truth: ArrayLike, names: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    labels = np.atleast_2d(as_float_array(labels, "labels"))
    errors = as_float_array(errors, "errors")
    truth = as_float_array(truth, "truth")
    check_shape(errors, labels.shape, "errors", f"matching `labels` {labels.shape}")
    check_shape(truth, labels.shape, "truth", f"matching `labels` {labels.shape}")
    return (labels - truth) / errors, check_label_names(names, labels.shape[1])


def zscore_summary(labels: ArrayLike, errors: ArrayLike, truth: ArrayLike) -> dict[str, np.ndarray]:
    """Calibration statistics of z = (inferred − true)/σ, per label column.

    Calibrated Gaussian errors give ``std`` ≈ 1, ``mean`` ≈ 0 and ``within_1`` ≈ 0.683.

    Parameters
    ----------
    labels, errors, truth : array-like, shape (stars, labels)
        Inferred labels, their 1-σ errors and the true labels.

    Returns
    -------
    dict
        ``"std"``, ``"mean"``, ``"within_1"`` (fraction with |z| < 1) and ``"within_2"``,
        each an array of shape (labels,), over the finite z values.

    Raises
    ------
    ValueError
        If the three arrays do not share one shape.
    """
    labels = np.atleast_2d(as_float_array(labels, "labels"))
    z, _ = _zscores(labels, errors, truth, [f"label_{i}" for i in range(labels.shape[1])])
    masked = np.ma.masked_invalid(z)
    absolute = np.abs(masked)
    return {
        "std": np.asarray(masked.std(axis=0)),
        "mean": np.asarray(masked.mean(axis=0)),
        "within_1": np.asarray((absolute < 1).mean(axis=0)),
        "within_2": np.asarray((absolute < 2).mean(axis=0)),
    }


def plot_zscore_histograms(
    labels: ArrayLike,
    errors: ArrayLike,
    truth: ArrayLike,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Histograms of z = (inferred − true)/σ per label, against the N(0, 1) density.

    Each panel reports std(z) and the fraction with |z| < 1 (0.683 when calibrated).

    Parameters
    ----------
    labels, errors, truth : array-like, shape (stars, labels)
        Inferred labels, their 1-σ errors (e.g. ``result.label_err``) and true labels.
    label_names : sequence of str
    path : path-like
        Output image.
    title : str
        Figure title.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If the three arrays do not share one shape.
    """
    z, names = _zscores(labels, errors, truth, label_names)
    k = z.shape[1]
    fig = Figure(figsize=(3.2 * k, 3.0), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    grid = np.linspace(-5, 5, 401)
    density = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    for ax, column, name in zip(axes, z.T, names, strict=True):
        finite = column[np.isfinite(column)]
        ax.hist(np.clip(finite, -5, 5), bins=50, range=(-5, 5), density=True, color="C0", alpha=0.6)
        ax.plot(grid, density, color="k", lw=1.2, label="N(0, 1)")
        inside = np.mean(np.abs(finite) < 1) if finite.size else np.nan
        ax.set_title(f"{name}: std {np.std(finite):.3f}, |z|<1 {inside:.3f}", fontsize=9)
        ax.set_xlabel("(inferred − true) / σ")
    axes[0].set_ylabel("density")
    axes[0].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_zscore_comparison(
    zscores: Mapping[str, ArrayLike],
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Distributions of z = (inferred − reference)/σ of several models against N(0, 1).

    One panel per label; each model's z are drawn as a step histogram whose legend
    gives its std(z) and share with |z| < 1 (1 and 68.3 % for honest errors).

    Parameters
    ----------
    zscores : mapping of str to array-like, shape (stars, labels)
        Model name → its z values (NaN are skipped).
    label_names : sequence of str
        One name per column.
    path : path-like
        Output image.
    title : str
        Figure title.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If ``zscores`` is empty or a model's array is not (stars, labels).
    """
    if not zscores:
        raise ValueError("`zscores` is empty; give at least one model's z values.")
    names = check_label_names(label_names, len(label_names))
    arrays = {}
    for model, values in zscores.items():
        z = np.atleast_2d(as_float_array(values, f"zscores[{model!r}]"))
        check_shape(z, (z.shape[0], len(names)), f"zscores[{model!r}]", f"(stars, {len(names)})")
        arrays[model] = z
    fig = Figure(figsize=(3.4 * len(names), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    grid = np.linspace(-5, 5, 401)
    for k, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="k", lw=1.5, label="N(0, 1)")
        for i, (model, z) in enumerate(arrays.items()):
            column = z[:, k][np.isfinite(z[:, k])]
            if column.size == 0:
                continue
            inside = np.mean(np.abs(column) < 1)
            ax.hist(
                np.clip(column, -5, 5),
                bins=40,
                range=(-5, 5),
                density=True,
                histtype="step",
                lw=1.3,
                color=f"C{i}",
                label=f"{model}: std {np.std(column):.2f}, |z|<1 {inside:.0%}",
            )
        ax.set_xlabel(f"z = ({name} − reference) / σ")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("density")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_uncertainty_vs_snr(
    errors: ArrayLike,
    snr: ArrayLike,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    labels: ArrayLike | None = None,
    truth: ArrayLike | None = None,
    title: str = "",
) -> Path:
    """Reported 1-σ error against signal-to-noise, per label, on log–log axes.

    A noise-dominated estimator follows σ ∝ 1/(S/N) (dashed line, fitted through the
    median); a floor at high S/N shows the model's intrinsic scatter at work. With
    ``labels`` and ``truth``, the binned RMS of the actual errors is overplotted, so
    reported and achieved precision can be compared at every S/N.

    Parameters
    ----------
    errors : array-like, shape (stars, labels)
        Reported 1-σ uncertainties.
    snr : array-like, shape (stars,)
        Signal-to-noise of each spectrum (e.g. median of flux × sqrt(ivar)).
    label_names : sequence of str
    path : path-like
        Output image.
    labels, truth : array-like, shape (stars, labels), optional
        Inferred and true labels for the binned RMS curve.
    title : str
        Figure title.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        On shape mismatches.
    """
    errors = np.atleast_2d(as_float_array(errors, "errors"))
    snr = as_float_array(snr, "snr")
    check_shape(snr, (errors.shape[0],), "snr", f"one value per star of `errors` {errors.shape}")
    names = check_label_names(label_names, errors.shape[1])
    actual = None
    if labels is not None or truth is not None:
        if labels is None or truth is None:
            raise ValueError("give both `labels` and `truth` for the achieved-error curve, or neither.")
        actual, _ = _zscores(labels, np.ones_like(errors), truth, names)
    k = errors.shape[1]
    fig = Figure(figsize=(3.2 * k, 3.0), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    order = np.argsort(snr)
    edges = np.quantile(snr, np.linspace(0, 1, 9))
    centres = 0.5 * (edges[1:] + edges[:-1])
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.scatter(snr, errors[:, i], s=4, alpha=0.5, color="C0", label="reported σ")
        scale = np.nanmedian(errors[:, i] * snr)
        ax.plot(snr[order], scale / snr[order], "k--", lw=1, label="∝ 1/(S/N)")
        if actual is not None:
            which = np.clip(np.digitize(snr, edges[1:-1]), 0, len(centres) - 1)
            rms = [np.sqrt(np.nanmean(actual[which == b, i] ** 2)) for b in range(len(centres))]
            ax.plot(centres, rms, "o-", color="C3", ms=4, label="achieved RMS")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        ax.set_xlabel("S/N")
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("1-σ uncertainty")
    axes[0].legend(loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
