"""The ``PosteriorMean`` and ``NUTS`` estimators for any :class:`~starlabel.models.AbstractPosteriorFluxModel`.

:func:`infer_posterior_mean` and :func:`infer_nuts` find the posterior flux model of
a fitted model (or take the flux model itself) and call its method, so :func:`infer`,
the tempering cross-validation and the nuisance fit reach the Cannon's integrators
without importing the Cannon (whose ``FittedCannon.infer`` delegates to :func:`infer`).
The option checks shared by the integrators and their callers live here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import PRNGKeyArray

from ..data import InferenceResult, SpectralDataset
from .base import (
    AbstractFittedFluxModel,
    AbstractFittedModel,
    AbstractFluxModel,
    AbstractMapStepModel,
    AbstractPosteriorFluxModel,
)

__all__ = [
    "GRID_MAX_LABELS",
    "INTEGRATORS",
    "check_method",
    "check_temperature",
    "infer_nuts",
    "infer_posterior_mean",
    "map_start",
    "posterior_flux_model",
]

GRID_MAX_LABELS: int = 3
"""Largest label count for which ``method="auto"`` integrates on the grid.

With a few thousand nodes a grid has ≥ 12 nodes per axis in 3 dimensions but only 4 in
5, where its finest stage collapses onto one node for narrow posteriors."""

INTEGRATORS: tuple[str, ...] = ("auto", "grid", "importance")
"""Integrators (``method=``) :func:`infer_posterior_mean` accepts."""


def check_method(method: str, n_labels: int) -> str:
    """``"grid"`` or ``"importance"``: ``method``, with ``"auto"`` resolved by the label count."""
    if method not in INTEGRATORS:
        raise ValueError(f"unknown posterior method {method!r}; choose one of {list(INTEGRATORS)}.")
    if method == "auto":
        return "grid" if n_labels <= GRID_MAX_LABELS else "importance"
    return method


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a positive float (``"auto"`` is chosen before, by cross-validation)."""
    if isinstance(temperature, str):
        raise ValueError(
            f"`temperature`={temperature!r}: pass a number here; 'auto' means choosing T by"
            " cross-validation on the training set with select_temperature(model, train)."
        )
    value = float(temperature)
    if not value > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    return value


def map_start(fitted: AbstractFittedModel | None, data: SpectralDataset) -> np.ndarray | None:
    """The model's own (multi-start) MAP labels, shape (stars, labels); None without a fitted model.

    The importance sampler's Newton steps start from the better of these and the
    training labels: on few pixels the χ² surface has local minima that a start at the
    nearest training label can fall into, which the MAP's multi-start avoids. Only the
    labels are used, so the error calibration is left off.
    """
    if fitted is None:
        return None
    if isinstance(fitted, AbstractMapStepModel):
        return np.asarray(fitted.infer_map(data, calibrate=False).labels)
    return np.asarray(fitted.infer(data).labels)


def posterior_flux_model(fitted: AbstractFittedModel | AbstractFluxModel) -> AbstractPosteriorFluxModel:
    """The :class:`AbstractPosteriorFluxModel` of a fitted model (or the flux model itself).

    Raises
    ------
    TypeError
        If ``fitted`` has none: the posterior-mean and NUTS estimators need a model
        linear in its coefficients (a FittedCannon or its PolynomialSpectrum).
    """
    model = fitted.flux_model() if isinstance(fitted, AbstractFittedFluxModel) else fitted
    if isinstance(model, AbstractPosteriorFluxModel):
        return model
    raise TypeError(
        f"{type(fitted).__name__} is not a polynomial-in-labels model: the posterior-mean,"
        " grid test steps need one such as a FittedCannon (or a PolynomialSpectrum)."
    )


def _own(fitted: AbstractFittedModel | AbstractFluxModel) -> AbstractFittedModel | None:
    return fitted if isinstance(fitted, AbstractFittedModel) else None


def infer_posterior_mean(
    fitted: AbstractFittedModel | AbstractFluxModel, data: SpectralDataset, **options: Any
) -> InferenceResult:
    """Posterior mean and covariance of each star's labels (grid or importance sampling).

    ``fitted`` is a FittedCannon or a PolynomialSpectrum; ``options`` (``prior``,
    ``temperature``, ``method``, ``n_nodes``, ``likelihood``, ``theta``, ``start``, …)
    are those of the Cannon's integrator,
    :func:`starlabel.models.cannon.PolynomialSpectrum.infer_posterior_mean`, documented
    with their shapes and units in ``docs/test_step.md``. A fitted model's own MAP
    starts the importance sampler.

    Raises
    ------
    TypeError
        If ``fitted`` is not a polynomial-in-labels model.
    """
    return posterior_flux_model(fitted).infer_posterior_mean(data, fitted=_own(fitted), **options)


def infer_nuts(
    fitted: AbstractFittedModel | AbstractFluxModel, data: SpectralDataset, key: PRNGKeyArray, **options: Any
) -> InferenceResult:
    """Posterior mean and covariance by NUTS draws of the same posterior, for any label count.

    ``options`` (``prior``, ``temperature``, ``num_warmup``, ``num_samples``,
    ``num_chains``, ``start``, ``chunk_size``) are those of
    :func:`starlabel.models.cannon.PolynomialSpectrum.infer_nuts`; a fitted model's own
    ``infer`` provides the MAP that whitens the sampler unless ``start`` is given.

    Raises
    ------
    TypeError
        If ``fitted`` is not a polynomial-in-labels model, or is a bare flux model
        without ``start``.
    """
    return posterior_flux_model(fitted).infer_nuts(data, key, fitted=_own(fitted), **options)
