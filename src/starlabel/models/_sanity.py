"""Per-star checks that turn broken or meaningless label uncertainties into flags.

A covariance can be non-finite (a singular Fisher matrix, a failed integration), have
non-positive variances, or be finite but wider than everything the model was trained
on. None of these may reach a results table as if it were a measurement: the first two
set :attr:`~starlabel.data.Flag.BAD_COVARIANCE` (and the covariance is replaced by NaN),
the last sets :attr:`~starlabel.data.Flag.UNCONSTRAINED`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["WidthCheck", "unusable_widths"]


class WidthCheck(NamedTuple):
    """Outcome of :func:`unusable_widths`, each a bool array of shape (stars,)."""

    bad_covariance: np.ndarray
    """Non-finite labels or covariance, or a variance ≤ 0."""
    wide: np.ndarray
    """Finite, but some label's σ exceeds that label's training range."""


def unusable_widths(labels: np.ndarray, cov: np.ndarray, box: np.ndarray) -> WidthCheck:
    """Which stars' labels and covariances cannot be reported as measurements.

    Parameters
    ----------
    labels : ndarray, shape (stars, labels)
        Point estimates (own units).
    cov : ndarray, shape (stars, labels, labels)
        Their covariances (own units²).
    box : ndarray, shape (2, labels)
        Lowest and highest training label (own units); a σ above ``box[1] − box[0]``
        is wider than anything the model has seen.

    Returns
    -------
    WidthCheck
    """
    labels = np.asarray(labels, dtype=float)
    cov = np.asarray(cov, dtype=float)
    box = np.asarray(box, dtype=float)
    diag = np.diagonal(cov, axis1=1, axis2=2)
    finite = np.all(np.isfinite(cov), axis=(1, 2)) & np.all(np.isfinite(labels), axis=1)
    bad = ~finite | np.any(~(diag > 0), axis=1)
    span = box[1] - box[0]
    with np.errstate(invalid="ignore"):
        wide = ~bad & np.any(np.sqrt(np.where(diag > 0, diag, 0.0)) > span[None, :], axis=1)
    return WidthCheck(bad, wide)
