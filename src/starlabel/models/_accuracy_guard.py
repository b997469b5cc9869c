r"""Accuracy guard for ``--temperature auto``: never trade label accuracy for width.

:func:`~starlabel.models.select_temperature` scores likelihood temperatures by a proper
scoring rule of the held-out training stars (by default the CRPS under calibrated
widths). A scoring rule rewards honest widths as well as accurate means, so it can
prefer a temperature whose posterior means are less accurate: a higher T lets the
prior pull the labels. Issue 15 asks for accuracy no worse than without calibration
within 2 %, so before the score chooses, every candidate whose held-out RMSE is more
than ``tolerance`` (1 %) above the best candidate's, for any label, is refused:

.. math:: e(T) = \max_k \frac{\mathrm{RMSE}_k(T)}{\min_{T'} \mathrm{RMSE}_k(T')} - 1 ,
          \qquad T \text{ admissible} \iff e(T) \le \mathrm{tolerance}.

When no candidate is within the tolerance on every label (each label's best is at a
different T), the candidates with the smallest worst-label excess are admissible, so
the guard always leaves a choice. The functions are pure and know nothing about
models; ``_posterior_mean.select_temperature`` calls :func:`guard_temperature`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["ACCURACY_TOLERANCE", "GuardedChoice", "accuracy_excess", "guard_temperature"]

ACCURACY_TOLERANCE = 0.01
"""Largest accepted worst-label RMSE excess over the best candidate (1 %): half the
2 % accuracy target of issue 15, so cross-validation noise leaves a margin."""


def accuracy_excess(rmse: np.ndarray) -> np.ndarray:
    """Worst-label relative RMSE excess of each candidate over the best one per label.

    Parameters
    ----------
    rmse : ndarray, shape (candidates, labels)
        Held-out RMSE per candidate and label (label units); NaN = not scored.

    Returns
    -------
    ndarray, shape (candidates,)
        ``max_k RMSE_k / min RMSE_k − 1`` (0 for a candidate best on every label);
        ``inf`` for candidates without a finite RMSE on every label.
    """
    rmse = np.asarray(rmse, dtype=float)
    if rmse.ndim != 2:
        raise ValueError(f"`rmse` must have shape (candidates, labels), got {rmse.shape}.")
    scored = np.all(np.isfinite(rmse), axis=1)
    if not np.any(scored):
        return np.full(len(rmse), np.inf)
    best = np.min(rmse[scored], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # A label predicted exactly (best RMSE 0) makes any error infinitely worse.
        ratio = np.where(best > 0, rmse / np.where(best > 0, best, 1.0), np.where(rmse > 0, np.inf, 1.0))
    return np.where(scored, np.max(ratio, axis=1) - 1.0, np.inf)


class GuardedChoice(NamedTuple):
    """Outcome of :func:`guard_temperature`."""

    temperature: float
    """The chosen candidate: the best score among the admissible ones."""
    refused: tuple[float, ...]
    """Scored candidates refused for accuracy (worst-label RMSE excess above tolerance)."""
    excess: np.ndarray
    """(candidates,) worst-label RMSE excess of each candidate (see :func:`accuracy_excess`)."""


def guard_temperature(
    temperatures: Sequence[float],
    scores: Sequence[float],
    rmse: np.ndarray,
    *,
    tolerance: float = ACCURACY_TOLERANCE,
) -> GuardedChoice:
    """The best-scoring temperature among those whose RMSE is within ``tolerance`` of the best.

    Parameters
    ----------
    temperatures : sequence of float, length T
        Candidates.
    scores : sequence of float, length T
        Their criterion (lower is better; NaN = not scored).
    rmse : ndarray, shape (T, labels)
        Their held-out RMSE per label.
    tolerance : float
        Largest accepted worst-label excess (≥ 0; default 1 %).

    Returns
    -------
    GuardedChoice

    Raises
    ------
    ValueError
        On mismatched lengths, a negative tolerance, or when no candidate has both a
        finite score and a finite RMSE (the caller reports the cross-validation failure).
    """
    temps = np.asarray(temperatures, dtype=float)
    values = np.asarray(scores, dtype=float)
    rmse = np.asarray(rmse, dtype=float)
    if not (temps.shape == values.shape == rmse.shape[:1]):
        raise ValueError(
            f"{len(temps)} temperatures, {len(values)} scores and {len(rmse)} RMSE rows must match."
        )
    if not tolerance >= 0:
        raise ValueError(f"`tolerance` must be ≥ 0 (a share, 0.01 = 1 %), got {tolerance!r}.")
    excess = accuracy_excess(rmse)
    usable = np.isfinite(values) & np.isfinite(excess)
    if not np.any(usable):
        raise ValueError("no temperature has a finite score and held-out RMSE to guard.")
    # Within the tolerance on every label; else the least-bad compromise (never empty).
    limit = max(tolerance, float(np.min(excess[usable])))
    admissible = usable & (excess <= limit + 1e-12)
    pick = int(np.argmin(np.where(admissible, values, np.inf)))
    refused = tuple(float(t) for t in temps[usable & ~admissible])
    return GuardedChoice(float(temps[pick]), refused, excess)
