r"""The label-space term of the error calibration: how large the errors are *here*.

A model's real errors differ across label space (hot dwarfs have weak lines, metal-poor
stars fewer of them, the edges of the training set are extrapolated), and the
statistical error and the fit's χ² catch only part of that. :class:`LocalErrors`
keeps the held-out cross-validation residuals of the training stars together with
their inferred labels, and for any star returns

.. math:: L(\ell)/\bar L ,

the mean squared held-out residual of its ``k`` nearest training stars (in inferred
labels standardised by the training labels' mean and spread) over the mean of all of
them. :class:`~starlabel.models.ErrorCalibration` multiplies its floor by
:math:`(L/\bar L)^{\delta}` per label, with ``δ`` fitted by maximum likelihood on the
held-out residuals together with ``a``, ``σ_sys`` and ``γ``. While fitting, each
training star's own residual is left out of its neighbourhood (leave-one-out), so ``δ``
is learned from residuals the term did not see.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from ._label_space import AbstractLabelSpaceTerm, placeholders, reference_set

__all__ = ["LocalErrors", "MAX_LOCAL_POWER"]

MAX_LOCAL_POWER = 1.5
"""Upper bound of ``δ``: at 1 the floor follows the neighbourhood's mean squared error
exactly; a little above lets the fit undo the smoothing of ``k`` neighbours."""
_RANGE = (0.01, 100.0)
"""``L/L̄`` is clipped to this range: one neighbourhood of catastrophic stars or of
perfect ones must not give an absurd error."""
_WINSOR = 0.99
"""Squared residuals above this quantile are clipped to it before averaging: a few
catastrophic stars must not set their whole neighbourhood's error."""


class LocalErrors(AbstractLabelSpaceTerm):
    """Held-out residuals in label space and the power ``δ`` of their local mean square.

    Attributes
    ----------
    center, spread, points, neighbours
        The reference stars (:class:`~._label_space.AbstractLabelSpaceTerm`).
    sq : Float[Array, "refs labels"]
        Their squared held-out residuals over the mean of those (dimensionless; NaN
        where a residual is missing), the largest 1 % clipped.
    power : Float[Array, " labels"]
        ``δ`` per label, in [0, 1.5]; 0 turns the term off for that label.
    """

    center: Float[Array, " labels"]
    spread: Float[Array, " labels"]
    points: Float[Array, "refs labels"]
    sq: Float[Array, "refs labels"]
    power: Float[Array, " labels"]
    neighbours: int = eqx.field(static=True, default=20)

    @classmethod
    def from_residuals(
        cls, residuals: np.ndarray, labels: np.ndarray, *, neighbours: int | None = None, seed: int = 0
    ) -> LocalErrors | None:
        """Reference set from held-out residuals and inferred labels, both (stars, labels).

        Stars whose inferred labels are not all finite are not kept. Returns None when
        fewer than ``2 k`` stars remain (no neighbourhood to speak of). ``power`` is 0:
        the calibration fit sets it.
        """
        residuals = np.asarray(residuals, dtype=float)
        labels = np.asarray(labels, dtype=float)
        found = reference_set(labels, neighbours, seed)
        if found is None:
            return None
        rows, center, spread, k = found
        squared = residuals[rows] ** 2
        with np.errstate(invalid="ignore"):
            top = np.nanquantile(squared, _WINSOR, axis=0)
            squared = np.minimum(squared, top[None, :])
            mean = np.nanmean(squared, axis=0)
        mean = np.where(np.isfinite(mean) & (mean > 0), mean, 1.0)
        return cls(
            center=jax.device_put(np.asarray(center, dtype=float)),  # no conversion programs
            spread=jax.device_put(np.asarray(spread, dtype=float)),
            points=jax.device_put(np.asarray((labels[rows] - center) / spread, dtype=float)),
            sq=jax.device_put(np.asarray(squared / mean[None, :], dtype=float)),
            power=jax.device_put(np.zeros(labels.shape[1])),
            neighbours=k,
        )

    def with_power(self, power: np.ndarray) -> LocalErrors:
        """A copy with another ``δ`` per label."""
        return dataclasses.replace(self, power=jax.device_put(np.asarray(power, dtype=float)))

    def log_ratio(self, labels: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
        """``ln(L(ℓ)/L̄)`` per star and label, shape (stars, labels); 0 where unknown.

        ``leave_one_out`` (for the reference stars themselves) drops each star's nearest
        reference star, itself, from its neighbourhood.
        """
        # a star without finite labels, or a neighbourhood without any residual: factor 1
        local = self.neighbourhood_mean(self.sq, labels, leave_one_out=leave_one_out)
        return np.log(np.clip(np.where(np.isfinite(local), local, 1.0), *_RANGE))

    def factor(self, labels: np.ndarray) -> np.ndarray:
        """``(L(ℓ)/L̄)^δ`` per star and label, shape (stars, labels); 1 where unknown."""
        return np.exp(self.log_ratio(labels) * np.asarray(self.power, dtype=float)[None, :])

    @classmethod
    def skeleton(cls, config: dict[str, Any], n_labels: int) -> LocalErrors:
        """Placeholder with the structure ``config`` describes (arrays replaced on load)."""
        vector, table = placeholders(config, n_labels)
        return cls(
            center=vector,
            spread=vector,
            points=table,
            sq=table,
            power=vector,
            neighbours=int(config["neighbours"]),
        )
