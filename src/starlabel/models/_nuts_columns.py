"""The one set of NUTS diagnostics columns and R̂ rule, shared by every NUTS test step.

``--estimator nuts`` (:func:`~starlabel.models.infer_nuts`) and ``--uncertainty nuts``
(:func:`~starlabel.models.posterior_infer`) sample differently (a label prior and a
temperature vs the model's own posterior at the MAP) but report their draws alike.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike

__all__ = ["RHAT_MAX", "nuts_columns"]

RHAT_MAX = 1.05
"""Stars whose worst label split-R̂ exceeds this (or is not finite) are NOT_CONVERGED."""


def nuts_columns(
    label_names: tuple[str, ...],
    rhat: ArrayLike,
    ess: ArrayLike,
    step_size: ArrayLike,
    divergent: ArrayLike,
    rhat_max: float = RHAT_MAX,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The one set of NUTS diagnostics columns and the one R̂ rule of every NUTS test step.

    Parameters
    ----------
    label_names : tuple of str
    rhat, ess : ndarray, shape (stars, labels)
        Split-R̂ and effective sample size of each label's draws.
    step_size : ndarray, shape (stars,)
        Mean adapted step size (whitened units).
    divergent : ndarray, shape (stars,)
        Divergent transitions among the kept draws.
    rhat_max : float
        Largest acceptable R̂.

    Returns
    -------
    extra : dict
        ``rhat_<label>``, ``ess_<label>``, ``rhat_max`` (worst label), ``ess_min``,
        ``n_divergent`` (= ``nuts_divergent``), ``nuts_step_size``.
    not_converged : ndarray of bool, shape (stars,)
        Worst R̂ above ``rhat_max`` or not finite.
    """
    rhat, ess = np.asarray(rhat, dtype=float), np.asarray(ess, dtype=float)
    divergent = np.asarray(divergent).astype(np.int64)
    extra: dict[str, np.ndarray] = {}
    for i, name in enumerate(label_names):
        extra[f"rhat_{name}"] = rhat[:, i]
        extra[f"ess_{name}"] = ess[:, i]
    worst = np.max(rhat, axis=1)
    extra["rhat_max"] = worst
    extra["ess_min"] = np.min(ess, axis=1)
    extra["n_divergent"] = divergent
    extra["nuts_step_size"] = np.asarray(step_size, dtype=float)
    extra["nuts_divergent"] = divergent
    return extra, ~(worst <= rhat_max)


"""Newton decrement gᵀH⁻¹g (in nats) below which the MAP counts as converged."""
