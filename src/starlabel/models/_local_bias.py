r"""The label-space bias correction: the model's mean error *here*, subtracted from the labels.

A data-driven model's errors are not only noise: where it cannot represent the spectra
exactly (a quadratic Cannon on real or line-list spectra) it is wrong in the same
direction for stars with similar labels, most at the edges of the training set, where
its labels are pulled toward the middle. Held-out cross-validation residuals show that
bias. :class:`LocalBias` keeps them together with the held-out stars' inferred labels,
and for any star returns

.. math:: b(\ell) = \operatorname{mean}_{j \in N_k(\ell)} (\hat\ell_j - \ell_j),

the mean signed held-out residual of its ``k`` nearest training stars (in inferred
labels standardised by their mean and spread); the corrected labels are
:math:`\hat\ell - b(\hat\ell)`.

The error calibration is then learned on corrected held-out residuals, each star
corrected with the residuals of the *other* folds' stars only
(:func:`cross_fold_shift`): a test star's label comes from the final model and its
correction from the fold models, so a fold star's correction must not come from the
model that made its own label either. Measured on ten line-list training sets (2,000
dwarfs, 1,000 fresh test stars each; ``benchmarks/results/calibration_seeds.json``):
the Cannon's test RMSE falls to 0.74–0.89 of the uncorrected labels' (mean per label;
0.71–0.94 in every set), with mean held-out std z 0.97–0.99; on the real giants to
0.77–0.83 (``benchmarks/results/calibration.json``).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from .._internal._nearest import neighbour_mean
from ._label_space import AbstractLabelSpaceTerm, placeholders, reference_set

__all__ = ["BIAS_SUFFIX", "LocalBias", "cross_fold_shift", "leave_one_out_shift"]

BIAS_SUFFIX = "_bias"
"""Suffix of the result columns holding the correction subtracted from each label."""

_TRIM = (0.01, 0.99)
"""Signed residuals are clipped to these quantiles per label before averaging: a few
catastrophic stars must not move their whole neighbourhood's labels."""


def _trimmed(residuals: np.ndarray) -> np.ndarray:
    """``residuals`` (stars, labels) clipped per label to their 1st and 99th percentiles."""
    residuals = np.asarray(residuals, dtype=float)
    out = residuals.copy()
    for k in range(residuals.shape[1]):
        finite = np.isfinite(residuals[:, k])
        if finite.any():
            low, high = np.quantile(residuals[finite, k], _TRIM)
            out[finite, k] = np.clip(residuals[finite, k], low, high)
    return out


class LocalBias(AbstractLabelSpaceTerm):
    """Held-out residuals in label space, averaged over a star's neighbours as its bias.

    Attributes
    ----------
    center, spread, points, neighbours
        The reference stars (:class:`~._label_space.AbstractLabelSpaceTerm`).
    residuals : Float[Array, "refs labels"]
        Their held-out ``inferred − reference`` in label units (NaN where unknown),
        clipped per label to the 1st–99th percentile.
    """

    center: Float[Array, " labels"]
    spread: Float[Array, " labels"]
    points: Float[Array, "refs labels"]
    residuals: Float[Array, "refs labels"]
    neighbours: int = eqx.field(static=True, default=20)

    @classmethod
    def from_residuals(
        cls, residuals: np.ndarray, labels: np.ndarray, *, neighbours: int | None = None, seed: int = 0
    ) -> LocalBias | None:
        """Reference set from held-out residuals and inferred labels, both (stars, labels).

        Stars whose inferred labels are not all finite are not kept; ``neighbours``
        defaults to √stars within [10, 50] (as the label-space error term). Returns None
        when fewer than ``2 k`` stars remain (no neighbourhood to speak of).
        """
        labels = np.asarray(labels, dtype=float)
        found = reference_set(labels, neighbours, seed)
        if found is None:
            return None
        rows, center, spread, k = found
        return cls(
            center=jax.device_put(np.asarray(center, dtype=float)),  # no conversion programs
            spread=jax.device_put(np.asarray(spread, dtype=float)),
            points=jax.device_put(np.asarray((labels[rows] - center) / spread, dtype=float)),
            residuals=jax.device_put(_trimmed(np.asarray(residuals, dtype=float)[rows])),
            neighbours=k,
        )

    def shift(self, labels: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
        """The bias ``b(ℓ)`` per star and label, shape (stars, labels), in label units.

        0 for a star whose inferred labels are not all finite (its labels stay as they
        are) or whose neighbourhood has no residual for that label. ``leave_one_out``
        (for the reference stars themselves) drops each star's nearest reference star,
        itself, from its neighbourhood.
        """
        mean = self.neighbourhood_mean(self.residuals, labels, leave_one_out=leave_one_out)
        return np.where(np.isfinite(mean), mean, 0.0)

    @classmethod
    def skeleton(cls, config: dict[str, Any], n_labels: int) -> LocalBias:
        """Placeholder with the structure ``config`` describes (arrays replaced on load)."""
        vector, table = placeholders(config, n_labels)
        return cls(
            center=vector, spread=vector, points=table, residuals=table, neighbours=int(config["neighbours"])
        )


def _every_star(bias: LocalBias, residuals: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows with all labels finite, their standardised labels and trimmed residuals.

    Every such star, not only ``bias``'s reference subset (at most 20,000): the
    held-out corrections below must find each star's own fold and itself among them.
    """
    finite = np.flatnonzero(np.all(np.isfinite(labels), axis=1))
    return finite, bias.standardise(labels[finite]), _trimmed(np.asarray(residuals, dtype=float)[finite])


def cross_fold_shift(
    bias: LocalBias, residuals: np.ndarray, labels: np.ndarray, fold: np.ndarray
) -> np.ndarray:
    """Each held-out star's bias from the residuals of the stars in the *other* folds.

    Parameters
    ----------
    bias : LocalBias
        Built from these stars (:meth:`LocalBias.from_residuals`): its standardisation
        and ``k`` are used; the neighbours are all these stars (not only its reference
        subset, which holds at most 20,000).
    residuals, labels : ndarray, shape (stars, labels)
        The held-out residuals and inferred labels.
    fold : ndarray of int, shape (stars,)
        Each star's fold (:func:`~starlabel._internal.fold_of`).

    Returns
    -------
    ndarray, shape (stars, labels)
        0 where the labels are not all finite or no neighbour has a residual.
    """
    labels = np.asarray(labels, dtype=float)
    finite, points, trimmed = _every_star(bias, residuals, labels)
    ref_fold = np.asarray(fold)[finite]
    out = np.zeros(labels.shape)
    for f in np.unique(ref_fold):
        held, other = ref_fold == f, ref_fold != f
        mean = neighbour_mean(points[other], trimmed[other], points[held], bias.neighbours)
        out[finite[held]] = np.where(np.isfinite(mean), mean, 0.0)
    return out


def leave_one_out_shift(bias: LocalBias, residuals: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each star's bias from every other star's residual (not its own), shape (stars, labels).

    As :meth:`LocalBias.shift` with ``leave_one_out`` at the stars' own labels, but over
    all of them (``bias`` keeps at most 20,000, and a star outside that subset would
    lose its nearest *other* star instead of itself). 0 where the labels are not all
    finite or no neighbour has a residual.
    """
    labels = np.asarray(labels, dtype=float)
    finite, points, trimmed = _every_star(bias, residuals, labels)
    mean = neighbour_mean(points, trimmed, points, bias.neighbours, leave_one_out=True)
    out = np.zeros(labels.shape)
    out[finite] = np.where(np.isfinite(mean), mean, 0.0)
    return out
