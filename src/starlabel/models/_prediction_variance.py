"""The training uncertainty of a model linear in per-pixel coefficients (the Cannon).

A Cannon's coefficients are fitted pixel by pixel from a finite training set, so its
predicted flux has a variance of its own; :func:`training_prediction_variance`
computes it, and :func:`~starlabel.models.posterior_infer` propagates it into the label
covariances (``prediction_variance=``).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._internal import x64
from ..data import SpectralDataset
from .base import AbstractFittedModel, AbstractLinearFittedModel

__all__ = ["LinearPredictionVariance", "training_prediction_variance"]


class LinearPredictionVariance(eqx.Module):
    r"""Variance of a linear-in-coefficients model's mean flux from its training fit.

    For :math:`\mu_\lambda(\ell) = \theta_\lambda \cdot v(x(\ell))` with each pixel's
    coefficients fitted independently, :math:`q_\lambda(\ell) = v^\top C_\lambda v`
    where :math:`C_\lambda` is the covariance of :math:`\hat\theta_\lambda`. Build it with
    :func:`training_prediction_variance`.

    Attributes
    ----------
    coefficient_cov : Float[Array, "pixels terms terms"]
        :math:`C_\lambda` (flux² units); zero rows/columns for censored terms.
    vectorizer : PolynomialVectorizer-like
        ``vectorizer(x) -> (terms,)``.
    label_scaler : ShiftScale-like
        ``label_scaler.transform(labels) -> x``.
    """

    coefficient_cov: Float[Array, "pixels terms terms"]
    vectorizer: Any
    label_scaler: Any

    def __call__(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """Per-pixel variance of the predicted flux at ``labels`` (labels' own units)."""
        v = self.vectorizer(self.label_scaler.transform(labels))
        return jnp.einsum("ptu,t,u->p", self.coefficient_cov, v, v)


@x64
def training_prediction_variance(
    fitted: AbstractFittedModel, train: SpectralDataset
) -> LinearPredictionVariance:
    r"""Covariance of a Cannon-like model's coefficients from its training set, per pixel.

    :math:`C_\lambda = (\sum_n \omega_{n\lambda} v_n v_n^\top)^{-1}` with
    :math:`\omega = 1/(\sigma^2 + s_\lambda^2)` — the inverse Fisher matrix of pixel
    :math:`\lambda`'s weighted least-squares fit, treating the training labels as exact
    and s² as known. Pass the result as ``posterior_infer(..., prediction_variance=...)``
    to add this training uncertainty to the label covariances. Censored (inactive)
    coefficients are held at zero, as in training. L1-regularised fits are treated as
    unregularised (the covariance is then an upper bound).

    Parameters
    ----------
    fitted : AbstractLinearFittedModel
        ``theta`` (pixels, terms), ``s2`` (pixels,), ``vectorizer``, ``label_scaler``,
        ``label_names`` and ``active_terms`` (pixels, terms): a FittedCannon.
    train : SpectralDataset
        The training set the model was fitted on (labels ``fitted.label_names``).

    Returns
    -------
    LinearPredictionVariance

    Raises
    ------
    TypeError
        If ``fitted`` is not linear in per-pixel coefficients (not an AbstractLinearFittedModel).
    ValueError
        If ``train`` is on another pixel grid or lacks the model's labels.
    """
    if not isinstance(fitted, AbstractLinearFittedModel):
        raise TypeError(
            f"`fitted` ({type(fitted).__name__}) has no per-pixel coefficients theta:"
            " training_prediction_variance needs an AbstractLinearFittedModel, such as FittedCannon."
        )
    theta = jnp.asarray(fitted.theta)
    if train.n_pixels != theta.shape[0]:
        raise ValueError(f"`train` has {train.n_pixels} pixels but the model has {theta.shape[0]}.")
    labels = train.select_labels(fitted.label_names).labels
    if labels is None:  # select_labels refuses a dataset without labels; this tells the checker
        raise ValueError("`train` has no labels: training_prediction_variance needs the training set.")
    rows = np.all(np.isfinite(labels), axis=1)
    design = fitted.vectorizer.design(fitted.label_scaler.transform(jnp.asarray(labels[rows])))
    ivar = jnp.asarray(train.ivar[rows])
    omega = ivar / (1.0 + ivar * jnp.asarray(fitted.s2)[None, :])
    precision = jnp.einsum("np,nt,nu->ptu", omega, design, design)
    n_terms = theta.shape[1]
    active = jnp.asarray(fitted.active_terms, dtype=bool)
    both = active[:, :, None] & active[:, None, :]
    eye = jnp.eye(n_terms, dtype=precision.dtype)
    # Inactive terms are fixed at zero: invert on the active block only.
    cov = jnp.linalg.inv(jnp.where(both, precision, eye[None]))
    return LinearPredictionVariance(jnp.where(both, cov, 0.0), fitted.vectorizer, fitted.label_scaler)
