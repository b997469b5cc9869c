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
    """

    name: str
    n: int
    rmse: float
    bias: float
    mae: float
    robust_scatter: float
    scaled_rmse: float


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
                    k: getattr(m, k) for k in ("n", "rmse", "bias", "mae", "robust_scatter", "scaled_rmse")
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
) -> MetricsTable:
    """Compute RMSE, bias, MAE, robust scatter and scaled RMSE per label.

    Stars where either value is NaN are left out of that label's statistics only.

    Parameters
    ----------
    predicted, reference : array-like, shape (stars, labels)
        Inferred and reference labels, in the same units.
    label_names : sequence of str
        One name per column.
    model : str
        Name shown in tables.

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
    rows = []
    for k, name in enumerate(names):
        good = np.isfinite(predicted[:, k]) & np.isfinite(reference[:, k])
        residual = predicted[good, k] - reference[good, k]
        if residual.size == 0:
            rows.append(LabelMetrics(name, 0, *(np.nan,) * 5))
            continue
        spread = np.std(reference[good, k])
        rmse = float(np.sqrt(np.mean(residual**2)))
        rows.append(
            LabelMetrics(
                name=name,
                n=int(residual.size),
                rmse=rmse,
                bias=float(np.mean(residual)),
                mae=float(np.mean(np.abs(residual))),
                robust_scatter=float(_MAD_TO_SIGMA * np.median(np.abs(residual - np.median(residual)))),
                scaled_rmse=float(rmse / spread) if spread > 0 else np.nan,
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
    """Render one or more models' metrics as an aligned plain-text table."""
    header = ("model", "label", "n", "RMSE", "bias", "MAE", "robust σ", "RMSE/σ_ref")
    rows = [header]
    for table in tables:
        for m in table.labels:
            rows.append(
                (
                    table.model or "-",
                    m.name,
                    str(m.n),
                    _fmt(m.rmse),
                    _fmt(m.bias),
                    _fmt(m.mae),
                    _fmt(m.robust_scatter),
                    _fmt(m.scaled_rmse),
                )
            )
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
