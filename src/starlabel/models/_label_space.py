"""What the calibration's label-space terms share: reference stars in standardised labels.

The label-space error term (:class:`~._local_errors.LocalErrors`) and the bias
correction (:class:`~._local_bias.LocalBias`) both keep held-out training stars at
their inferred labels, standardised by those labels' mean and spread, and average a
per-star value over a star's ``k`` nearest of them. :class:`AbstractLabelSpaceTerm`
is that reference set; the helpers below build it and its model-file skeleton.
"""

# No ``from __future__ import annotations``: equinox checks an ``eqx.AbstractVar`` only in
# an evaluated annotation.

from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from .._internal._nearest import neighbour_mean

__all__ = [
    "MAX_REFS",
    "AbstractLabelSpaceTerm",
    "default_neighbours",
    "placeholders",
    "reference_rows",
    "reference_set",
]

MAX_REFS = 20_000
"""At most this many held-out training stars are kept (a random subset beyond): bounds
the model file and the neighbour search."""


def default_neighbours(n_stars: int) -> int:
    """``k = √n`` clipped to [10, 50]: 20 for 400 training stars, 45 for 2,000."""
    return int(np.clip(round(np.sqrt(n_stars)), 10, 50))


class AbstractLabelSpaceTerm(eqx.Module):
    """Reference stars at standardised inferred labels, and how many of them make a neighbourhood.

    Attributes
    ----------
    center, spread : Float[Array, " labels"]
        Mean and standard deviation of the reference stars' inferred labels (label
        units): labels are compared as ``(ℓ − center) / spread``.
    points : Float[Array, "refs labels"]
        The reference (held-out training) stars' standardised inferred labels.
    neighbours : int
        ``k``, the reference stars averaged per star.
    """

    center: eqx.AbstractVar[Float[Array, " labels"]]
    spread: eqx.AbstractVar[Float[Array, " labels"]]
    points: eqx.AbstractVar[Float[Array, "refs labels"]]
    neighbours: eqx.AbstractVar[int]

    @property
    def n_refs(self) -> int:
        """Number of reference stars."""
        return int(self.points.shape[0])

    def standardise(self, labels: np.ndarray) -> np.ndarray:
        """``(labels − center) / spread``, labels (stars, labels) in label units."""
        return (np.asarray(labels, dtype=float) - np.asarray(self.center)) / np.asarray(self.spread)

    def neighbourhood_mean(
        self, values: Any, labels: np.ndarray, *, leave_one_out: bool = False
    ) -> np.ndarray:
        """Mean of ``values`` (refs, columns) over each star's ``k`` nearest reference stars.

        ``labels`` (stars, labels) in label units; ``leave_one_out`` (for the reference
        stars themselves) drops each star's nearest reference star, itself. Returns
        (stars, columns), NaN for a star whose labels are not all finite or whose
        neighbourhood has no value in a column.
        """
        labels = np.asarray(labels, dtype=float)
        out = np.full((labels.shape[0], np.shape(values)[1]), np.nan)
        finite = np.all(np.isfinite(labels), axis=1)
        if finite.any():
            out[finite] = neighbour_mean(
                np.asarray(self.points),
                np.asarray(values),
                self.standardise(labels[finite]),
                self.neighbours,
                leave_one_out=leave_one_out,
            )
        return out

    def config(self) -> dict[str, Any]:
        """JSON-able structure for the model-file header."""
        return {"neighbours": self.neighbours, "n_refs": self.n_refs}


def placeholders(config: dict[str, Any], n_labels: int) -> tuple[jax.Array, jax.Array]:
    """Ones of shape (labels,) and (refs, labels) for a label-space term's skeleton.

    ``device_put`` of numpy, not ``jnp.ones``: loading replaces them, and ``jnp.ones``
    would compile a small program per shape in every process that loads a model.
    """
    return jax.device_put(np.ones(n_labels)), jax.device_put(np.ones((int(config["n_refs"]), n_labels)))


def reference_rows(
    labels: np.ndarray, rows: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows a label-space term keeps (a random 20,000 beyond), their labels' mean and spread.

    ``labels`` (stars, labels), ``rows`` the candidate rows (int); the spread is 1 for a
    label without any (all equal).
    """
    if len(rows) > MAX_REFS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_REFS, replace=False))
    center = labels[rows].mean(axis=0)
    spread = labels[rows].std(axis=0)
    return rows, center, np.where(spread > 0, spread, 1.0)


def reference_set(
    labels: np.ndarray, neighbours: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Rows, label mean and spread, and ``k`` of a label-space term built from ``labels``.

    ``labels`` (stars, labels): the held-out stars' inferred labels; stars without all
    of them finite are not kept; ``k`` defaults to :func:`default_neighbours`. None when
    fewer than ``2 k`` stars remain (no neighbourhood to speak of).
    """
    rows = np.flatnonzero(np.all(np.isfinite(labels), axis=1))
    k = default_neighbours(len(rows)) if neighbours is None else int(neighbours)
    if k < 1 or len(rows) < 2 * k:
        return None
    rows, center, spread = reference_rows(labels, rows, seed)
    return rows, center, spread, k
