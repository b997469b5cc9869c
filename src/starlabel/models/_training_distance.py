r"""The distance term of the error calibration: larger errors away from the training set.

A model's errors grow where it extrapolates: a star whose inferred labels lie where
the training set is sparse (the edges of the label distribution, or a gap inside it)
is predicted from fewer, farther examples. Neither the statistical error nor the
fit's χ² sees that for a regressor such as the NN, and the label-space term
(:class:`~starlabel.models._local_errors.LocalErrors`, the held-out residuals of the
nearest training stars) averages those neighbours' errors, not the star's own
distance from them. :class:`TrainingDistance` keeps the training labels and returns,
for any star,

.. math:: D(\ell)/\tilde D ,

``D`` the mean distance of the star's inferred labels to its ``k`` nearest training
labels (standardised by the training labels' mean and spread) and :math:`\tilde D` the
median of ``D`` over the cross-validation's held-out stars.
:class:`~starlabel.models.ErrorCalibration` multiplies its floor by
:math:`(D/\tilde D)^{\eta}` per label, ``η ≥ 0`` fitted by maximum likelihood with the
other parameters.

The held-out stars of fold ``j`` are measured against the training labels of fold
``j``'s model only (the other folds), with ``k (K−1)/K`` neighbours, so that their
``D`` has the meaning it has for a new star against the full training set with ``k``:
the same share of the training set. Measured on held-out stars
(``benchmarks/results/calibration_distance_term.json`` and the fold arrays behind it):
on the real giants the NN's held-out absolute residuals correlate with ``D`` (Spearman
0.08–0.26, the strongest of the cheap per-star features tried: the statistical error,
the S/N, linear and quadratic functions of the inferred labels), and the term alone
brings the NN's held-out 1σ coverage from 76 % to 74–75 % (with the NN's r = 0:
67.6–70.2 % at std z 1.04–1.10). Linear and quadratic label terms instead blew up on the
edges (Lux log g std z 2.7). The fold models' disagreement was not used: for a held-out
training star all but one fold model saw it, so it does not measure what it would for
a new star, and keeping K networks would multiply the model file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from .._internal._nearest import k_nearest
from ._label_space import placeholders, reference_rows

__all__ = ["MAX_DISTANCE_POWER", "TrainingDistance"]

MAX_DISTANCE_POWER = 2.0
"""Upper bound of ``η``: at 2 the floor's standard deviation grows as the distance."""
_RANGE = (0.1, 10.0)
"""``D/D̃`` is clipped to this range: a star ten times farther from the training set
than the typical one gets no more than that (its labels are flagged OUTSIDE_TRAINING)."""
_NEIGHBOURS = 10
"""``k``: enough neighbours to average one near twin away, few enough to stay local."""


class TrainingDistance(eqx.Module):
    """Training labels and the power ``η`` of the floor's growth with distance from them.

    Attributes
    ----------
    center, spread : Float[Array, " labels"]
        Mean and standard deviation of the training labels (label units).
    points : Float[Array, "refs labels"]
        The training stars' standardised labels (rows with a missing label left out).
    log_reference : Float[Array, ""]
        ``ln D̃``: median log distance of the held-out stars (dimensionless).
    power : Float[Array, " labels"]
        ``η`` per label, in [0, :data:`MAX_DISTANCE_POWER`]; 0 turns the term off.
    neighbours : int
        ``k``.
    """

    center: Float[Array, " labels"]
    spread: Float[Array, " labels"]
    points: Float[Array, "refs labels"]
    log_reference: Float[Array, ""]
    power: Float[Array, " labels"]
    neighbours: int = eqx.field(static=True, default=_NEIGHBOURS)

    @property
    def n_refs(self) -> int:
        """Number of training stars kept."""
        return int(self.points.shape[0])

    @classmethod
    def from_folds(
        cls,
        reference: np.ndarray,
        predicted: np.ndarray,
        folds: list[np.ndarray],
        *,
        neighbours: int = _NEIGHBOURS,
        seed: int = 0,
    ) -> tuple[TrainingDistance, np.ndarray] | None:
        """The term for a cross-validation, and its held-out stars' ``ln D/D̃``.

        Parameters
        ----------
        reference : ndarray, shape (stars, labels)
            Training labels (NaN = unknown).
        predicted : ndarray, shape (stars, labels)
            Each star's labels inferred by the fold model that did not see it.
        folds : list of int ndarray
            The held-out rows of each fold.
        neighbours, seed : int
            ``k``, and the seed of the subset kept beyond 20,000 stars (as for the
            label-space term).

        Returns
        -------
        (TrainingDistance, ndarray of shape (stars,)) or None
            None when fewer than ``2 k`` training stars have all labels. The log ratio
            is 0 for stars whose inferred labels are not all finite. ``power`` is 0:
            the calibration fit sets it.
        """
        reference = np.asarray(reference, dtype=float)
        predicted = np.asarray(predicted, dtype=float)
        rows = np.flatnonzero(np.all(np.isfinite(reference), axis=1))
        if len(rows) < 2 * neighbours:
            return None
        rows, center, spread = reference_rows(reference, rows, seed)
        points = (reference[rows] - center) / spread
        log_d = np.full(len(reference), np.nan)
        for held in folds:
            others = ~np.isin(rows, held)
            k = max(1, round(neighbours * others.sum() / len(rows)))
            log_d[held] = _log_distance(points[others], (predicted[held] - center) / spread, k)
        reference_log = float(np.nanmedian(log_d)) if np.isfinite(log_d).any() else 0.0
        term = cls(
            # device_put, not jnp: no small conversion programs to compile (latency).
            center=jax.device_put(np.asarray(center, dtype=float)),
            spread=jax.device_put(np.asarray(spread, dtype=float)),
            points=jax.device_put(np.asarray(points, dtype=float)),
            log_reference=jax.device_put(np.float64(reference_log)),
            power=jax.device_put(np.zeros(reference.shape[1])),
            neighbours=int(neighbours),
        )
        return term, term._clip(log_d - reference_log)

    def with_power(self, power: np.ndarray) -> TrainingDistance:
        """A copy with another ``η`` per label."""
        return dataclasses.replace(self, power=jax.device_put(np.asarray(power, dtype=float)))

    def log_ratio(self, labels: np.ndarray) -> np.ndarray:
        """``ln(D/D̃)`` per star, shape (stars,), clipped; 0 where a label is not finite."""
        labels = np.asarray(labels, dtype=float)
        query = (labels - np.asarray(self.center)) / np.asarray(self.spread)
        log_d = _log_distance(np.asarray(self.points), query, min(self.neighbours, self.n_refs))
        return self._clip(log_d - float(self.log_reference))

    def factor(self, labels: np.ndarray) -> np.ndarray:
        """``(D/D̃)^η`` per star and label, shape (stars, labels); 1 where unknown."""
        return np.exp(self.log_ratio(labels)[:, None] * np.asarray(self.power, dtype=float)[None, :])

    @staticmethod
    def _clip(log_ratio: np.ndarray) -> np.ndarray:
        return np.clip(np.where(np.isfinite(log_ratio), log_ratio, 0.0), *np.log(_RANGE))

    def config(self) -> dict[str, Any]:
        """JSON-able structure for the model-file header (``k`` and the number of training stars)."""
        return {"n_refs": self.n_refs, "neighbours": self.neighbours}

    @classmethod
    def skeleton(cls, config: dict[str, Any], n_labels: int) -> TrainingDistance:
        """Placeholder with the structure ``config`` describes (arrays replaced on load)."""
        vector, table = placeholders(config, n_labels)
        scalar = jax.device_put(np.ones(()))
        return cls(vector, vector, table, scalar, vector, neighbours=int(config["neighbours"]))


def _log_distance(points: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """``ln`` of the mean distance of each query row to its ``k`` nearest ``points``; NaN if not finite."""
    out = np.full(len(query), np.nan)
    finite = np.all(np.isfinite(query), axis=1)
    if finite.any() and len(points):
        mean = k_nearest(points, query[finite], k)[0].mean(axis=1)
        out[finite] = np.log(np.maximum(mean, 1e-12))  # an exact twin of k training stars
    return out
