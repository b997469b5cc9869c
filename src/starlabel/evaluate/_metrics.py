"""Accuracy metrics for inferred labels against reference labels."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._internal import as_float_array, check_label_names

__all__ = ["LabelMetrics", "MetricsTable", "compare_models", "format_metrics", "label_metrics"]

_MAD_TO_SIGMA = 1.4826
"""1 / Φ⁻¹(3/4): makes the median absolute deviation a consistent σ estimate for Gaussians."""


@dataclass(frozen=True)
class LabelMetrics:
    """Summary statistics of residuals ``predicted - reference`` for one label.

    Attributes
    ----------
    name : str
    n : int
        Number of stars with finite predicted and reference values.
    rmse : float
        Root-mean-square residual, in the label's units.
    bias : float
        Mean residual.
    mae : float
        Mean absolute residual.
    robust_scatter : float
        1.4826 × median absolute deviation of the residuals about their median.
    scaled_rmse : float
        RMSE divided by the standard deviation of the reference labels (dimensionless;
        0 is perfect, 1 is no better than predicting the mean).
    z_std : float
        Standard deviation of z = residual / reported 1-σ error (1 when the errors are
        honest); NaN when no errors were given.
    coverage : float
        Share of stars with |z| < 1 (0.683 when the errors are honest Gaussian ones).
    """

    name: str
    n: int
    rmse: float
    bias: float
    mae: float
    robust_scatter: float
    scaled_rmse: float
    z_std: float = np.nan
    coverage: float = np.nan


@dataclass(frozen=True)
class MetricsTable:
    """Per-label metrics of one model; printable and JSON-serialisable."""

    labels: tuple[LabelMetrics, ...]
    model: str = ""

    def __getitem__(self, name: str) -> LabelMetrics:
        for metrics in self.labels:
            if metrics.name == name:
                return metrics
        raise KeyError(f"no metrics for label {name!r}; have {[m.name for m in self.labels]}.")

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict: ``{"model": ..., "labels": {name: {rmse: ..., ...}}}``."""
        return {
            "model": self.model,
            "labels": {
                m.name: {
                    k: getattr(m, k)
                    for k in (
                        "n",
                        "rmse",
                        "bias",
                        "mae",
                        "robust_scatter",
                        "scaled_rmse",
                        "z_std",
                        "coverage",
                    )
                }
                for m in self.labels
            },
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as indented JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def __str__(self) -> str:
        return format_metrics([self])


def label_metrics(
    predicted: np.ndarray,
    reference: np.ndarray,
    label_names: Sequence[str],
    *,
    model: str = "",
    errors: np.ndarray | None = None,
) -> MetricsTable:
    """Compute RMSE, bias, MAE, robust scatter and scaled RMSE per label.

    Stars where either value is NaN are left out of that label's statistics only.
    With ``errors``, also the calibration of the errors: std(z) and the share with
    |z| < 1 of z = (predicted − reference)/error, over stars with a positive error.

    Parameters
    ----------
    predicted, reference : array-like, shape (stars, labels)
        Inferred and reference labels, in the same units.
    label_names : sequence of str
        One name per column.
    model : str
        Name shown in tables.
    errors : array-like, shape (stars, labels), optional
        Reported 1-σ errors of ``predicted`` (e.g. ``result.label_err``).

    Returns
    -------
    MetricsTable

    Examples
    --------
    >>> import numpy as np
    >>> table = label_metrics(np.array([[1.0], [3.0]]), np.array([[0.0], [3.0]]), ["x"])
    >>> round(table["x"].rmse, 4), table["x"].bias
    (0.7071, 0.5)
    """
    predicted = np.atleast_2d(as_float_array(predicted, "predicted"))
    reference = np.atleast_2d(as_float_array(reference, "reference"))
    if predicted.shape != reference.shape:
        raise ValueError(
            f"`predicted` has shape {predicted.shape} but `reference` has {reference.shape};"
            " both must be (stars, labels) with the same label order."
        )
    names = check_label_names(label_names, predicted.shape[1])
    if errors is not None:
        errors = np.atleast_2d(as_float_array(errors, "errors"))
        if errors.shape != predicted.shape:
            raise ValueError(
                f"`errors` has shape {errors.shape}; expected {predicted.shape} like `predicted`."
            )
    rows = []
    for k, name in enumerate(names):
        good = np.isfinite(predicted[:, k]) & np.isfinite(reference[:, k])
        residual = predicted[good, k] - reference[good, k]
        if residual.size == 0:
            rows.append(LabelMetrics(name, 0, *(np.nan,) * 5))
            continue
        spread = np.std(reference[good, k])
        rmse = float(np.sqrt(np.mean(residual**2)))
        z_std = coverage = np.nan
        if errors is not None:
            sigma = errors[good, k]
            usable = np.isfinite(sigma) & (sigma > 0)
            if usable.any():
                z = residual[usable] / sigma[usable]
                z_std, coverage = float(np.std(z)), float(np.mean(np.abs(z) < 1))
        rows.append(
            LabelMetrics(
                name=name,
                n=int(residual.size),
                rmse=rmse,
                bias=float(np.mean(residual)),
                mae=float(np.mean(np.abs(residual))),
                robust_scatter=float(_MAD_TO_SIGMA * np.median(np.abs(residual - np.median(residual)))),
                scaled_rmse=float(rmse / spread) if spread > 0 else np.nan,
                z_std=z_std,
                coverage=coverage,
            )
        )
    return MetricsTable(tuple(rows), model=model)


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "nan"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.3f}"
    return f"{value:.4f}"


def format_metrics(tables: Sequence[MetricsTable]) -> str:
    """Render one or more models' metrics as an aligned plain-text table.

    Columns ``std z`` and ``|z|<1`` (the calibration of the reported errors) appear
    when any table has them.
    """
    with_z = any(np.isfinite(m.z_std) for table in tables for m in table.labels)
    header: tuple[str, ...] = ("model", "label", "n", "RMSE", "bias", "MAE", "robust σ", "RMSE/σ_ref")
    header += ("std z", "|z|<1") if with_z else ()
    rows: list[tuple[str, ...]] = [header]
    for table in tables:
        for m in table.labels:
            row = (
                table.model or "-",
                m.name,
                str(m.n),
                _fmt(m.rmse),
                _fmt(m.bias),
                _fmt(m.mae),
                _fmt(m.robust_scatter),
                _fmt(m.scaled_rmse),
            )
            coverage = f"{m.coverage:.1%}" if np.isfinite(m.coverage) else "nan"
            rows.append(row + ((_fmt(m.z_std), coverage) if with_z else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i > 1 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare_models(tables: Mapping[str, MetricsTable] | Sequence[MetricsTable]) -> str:
    """A comparison table across models (same labels), as text; see :func:`format_metrics`."""
    if isinstance(tables, Mapping):
        tables = [MetricsTable(t.labels, model=name) for name, t in tables.items()]
    return format_metrics(list(tables))
