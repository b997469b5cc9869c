"""The robust Cannon: outlier components for bad training labels and bad pixels.

Both steps wrap a plain :class:`~starlabel.models.cannon.Cannon` (never subclass it)
and run EM, using only its public API.

**Training.** Each training star is either an inlier, whose spectrum follows the
model at its listed labels ℓ_n,

    p_in(f_n) = p(f_n | ℓ_n, θ, s²)                      (the Cannon likelihood),

or an outlier whose labels are wrong: its spectrum still follows the model, but at
unknown labels drawn from the training-label distribution N(μ, C),

    p_out(f_n) = ∫ p(f_n | ℓ, θ, s²) N(ℓ | μ, C) dℓ
               ≈ p(f_n | ℓ̂_n) (2π)^{K/2} |Σ_n|^{1/2} N(ℓ̂_n | μ, C)      (Laplace),

with ℓ̂_n, Σ_n the Cannon's own test-step labels and Fisher covariance for star n.
Both densities are *cross-fitted*: star n is scored by a Cannon trained (with the
current weights) on the other folds. Scored by a model that saw it, a star with
extreme wrong labels looks fine, because a polynomial bends to pass through a
high-leverage point; and a legitimate star in a sparse corner of label space looks
worse at its own labels than the in-sample optimum elsewhere. The E-step gives each
star's outlier probability r_n (logsumexp of the two log-densities with the outlier
fraction π); the M-step retrains the Cannon with ``star_weights = 1 − r_n`` (its
likelihood weights enter both θ and s²) and sets π = mean r_n.

**Test step.** Each pixel is either good, N(f_λ | θ_λ·v(ℓ), σ_λ² + s_λ²), or bad,
uniform over the observed flux range (cosmic rays, sky lines, unflagged detector
faults), with a per-star bad fraction ε_n. With a bad-pixel density that does not
depend on the labels, the M-step is exactly the Cannon test step with every
pixel's weight 1/(σ² + s²) multiplied by its good-pixel responsibility, which we
pass as a rescaled ``ivar``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._internal import fold_of, x64
from ..data import InferenceResult, SpectralDataset
from ..models import model_labels
from ..models.cannon import Cannon, FittedCannon

__all__ = ["RobustCannonFit", "RobustInference", "fit_robust_cannon", "infer_robust"]


@eqx.filter_jit
def _log_likelihoods(
    fitted: FittedCannon,
    labels: Float[Array, "stars labels"],
    flux: Float[Array, "stars pixels"],
    ivar: Float[Array, "stars pixels"],
) -> Float[Array, " stars"]:
    return jax.vmap(fitted.log_likelihood)(labels, flux, ivar)


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, (x - mean[None, :]).T).T
    return (
        -0.5 * np.sum(white**2, axis=1)
        - np.sum(np.log(np.diag(chol)))
        - 0.5 * x.shape[1] * math.log(2 * math.pi)
    )


def _log_volume(cov: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """½ log|Σ_n| per star; stars without a usable Fisher covariance get ``fallback``'s."""
    sign, logdet = np.linalg.slogdet(np.where(np.isfinite(cov), cov, 0.0))
    ok = (sign > 0) & np.isfinite(logdet) & np.all(np.isfinite(cov), axis=(1, 2))
    return 0.5 * np.where(ok, logdet, np.linalg.slogdet(fallback)[1])


class RobustCannonFit(eqx.Module):
    """Result of :func:`fit_robust_cannon`.

    Attributes
    ----------
    fitted : FittedCannon
        The Cannon trained with star weights ``1 − outlier_prob``.
    outlier_prob : ndarray, shape (stars,)
        Posterior probability that each training star's labels do not describe its
        spectrum (NaN for stars the Cannon could not use, e.g. missing labels).
    outlier_fraction : float
        Fitted fraction π of outlier stars.
    n_iter : int
        EM iterations run.
    converged : bool
        Whether the largest change of any ``outlier_prob`` fell below ``tol``.
    """

    fitted: FittedCannon
    outlier_prob: np.ndarray
    outlier_fraction: float
    n_iter: int
    converged: bool


def _training_arrays(model: Cannon, train: SpectralDataset) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(model, Cannon):
        raise TypeError(f"`model` must be a starlabel Cannon, got {type(model).__name__}.")
    if not isinstance(train, SpectralDataset):
        raise TypeError(f"`train` must be a SpectralDataset, got {type(train).__name__}.")
    missing = [name for name in model.label_names if name not in train.label_names]
    if missing:
        raise KeyError(f"training set lacks labels {missing}; it has {list(train.label_names)}.")
    labels = np.stack([train.label(name) for name in model.label_names], axis=1)
    usable = np.all(np.isfinite(labels), axis=1)
    return labels, usable


@x64
def fit_robust_cannon(
    model: Cannon,
    train: SpectralDataset,
    *,
    max_iter: int = 10,
    tol: float = 1e-3,
    initial_fraction: float = 0.05,
    n_folds: int = 5,
    seed: int = 0,
    **infer_options: Any,
) -> RobustCannonFit:
    """Train a Cannon with a per-star outlier component for wrong labels (EM).

    See the module docstring for the mixture. Each iteration trains ``n_folds``
    Cannons (each without one fold), runs their test step on the held-out stars (for
    ℓ̂_n and Σ_n), and updates the star weights; a final fit uses every star.

    Parameters
    ----------
    model : Cannon
        The Cannon configuration to train (label names, order, censoring, …).
    train : SpectralDataset
        Training spectra with the labels ``model.label_names``.
    max_iter : int
        Maximum EM iterations.
    tol : float
        Stop when no star's outlier probability changes by more than ``tol``.
    initial_fraction : float
        Starting outlier fraction π, in (0, 0.5).
    n_folds : int
        Cross-fitting folds (≥ 2): each star is scored by a model trained without it.
    seed : int
        Seed of the fold assignment.
    **infer_options
        Passed to :meth:`FittedCannon.infer` (e.g. ``n_starts``).

    Returns
    -------
    RobustCannonFit

    Raises
    ------
    TypeError, KeyError, ValueError
        On a non-Cannon model, a missing label, or options out of range.

    Examples
    --------
    >>> from starlabel.data import simulate_cannon
    >>> sim = simulate_cannon(n_stars=400, n_pixels=100, seed=2)
    >>> robust = fit_robust_cannon(Cannon(sim.dataset.label_names), sim.dataset)  # doctest: +SKIP
    >>> robust.outlier_prob.shape  # doctest: +SKIP
    (400,)
    """
    if not 0.0 < initial_fraction < 0.5:
        raise ValueError(f"`initial_fraction` must be in (0, 0.5), got {initial_fraction}.")
    if not (isinstance(n_folds, int) and n_folds >= 2):
        raise ValueError(f"`n_folds` must be an integer ≥ 2, got {n_folds!r}.")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"`max_iter` must be a positive integer, got {max_iter!r}.")
    labels, usable = _training_arrays(model, train)
    if usable.sum() < 2 * len(model.label_names) + 2:
        raise ValueError(f"only {int(usable.sum())} training stars have all labels {model.label_names}.")
    data = train[np.flatnonzero(usable)]
    listed = labels[usable]
    n_stars, n_labels = listed.shape
    flux, ivar = jnp.asarray(data.flux), jnp.asarray(data.ivar)
    # Fixed, seeded fold assignment: the same star is always held out by the same model.
    folds = fold_of(n_stars, n_folds, seed)

    weights = np.ones(n_stars)
    fraction = float(initial_fraction)
    outlier = np.zeros(n_stars)
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - EM iterations, each n_folds refits
        log_in = np.empty(n_stars)
        log_best = np.empty(n_stars)
        inferred = np.empty_like(listed)
        cov = np.full((n_stars, n_labels, n_labels), np.nan)
        for k in range(n_folds):
            held = folds == k
            # Zero weight rather than a subset keeps every fold's training arrays the
            # same shape, so the Cannon's compiled training step is reused.
            fold_model = model.fit(data, star_weights=np.where(held, 0.0, weights), calibrate=False)
            idx = np.flatnonzero(held)
            log_in[idx] = np.asarray(
                _log_likelihoods(fold_model, jnp.asarray(listed[idx]), flux[idx], ivar[idx])
            )
            result = fold_model.infer(data[idx], **infer_options)
            inferred[idx] = result.labels
            if result.cov is not None:
                cov[idx] = result.cov
            log_best[idx] = np.asarray(
                _log_likelihoods(fold_model, jnp.asarray(result.labels), flux[idx], ivar[idx])
            )
        # Label distribution of the (weighted) inliers: where an outlier's true labels come from.
        w = weights / weights.sum()
        mean = w @ listed
        centred = listed - mean[None, :]
        prior_cov = (centred * w[:, None]).T @ centred + 1e-12 * np.eye(n_labels)
        fallback = np.nanmedian(cov, axis=0)
        fallback = fallback if np.all(np.isfinite(fallback)) else prior_cov
        log_out = (
            log_best
            + 0.5 * n_labels * math.log(2.0 * math.pi)
            + _log_volume(cov, fallback)
            + _gaussian_logpdf(inferred, mean, prior_cov)
        )
        lp = np.stack([math.log1p(-fraction) + log_in, math.log(fraction) + log_out], axis=1)
        lp = np.where(np.isfinite(lp), lp, -np.inf)
        top = np.max(lp, axis=1, keepdims=True)
        new_outlier = np.exp(lp[:, 1] - (top[:, 0] + np.log(np.sum(np.exp(lp - top), axis=1))))
        change = float(np.max(np.abs(new_outlier - outlier)))
        outlier = new_outlier
        fraction = float(np.clip(outlier.mean(), 1e-4, 0.5))
        weights = np.clip(1.0 - outlier, 1e-6, 1.0)
        if change < tol:
            converged = True
            break
    fitted = model.fit(data, star_weights=weights)

    full = np.full(train.n_stars, np.nan)
    full[usable] = outlier
    return RobustCannonFit(fitted, full, fraction, n_iter, converged)


class RobustInference(eqx.Module):
    """Result of :func:`infer_robust`.

    Attributes
    ----------
    result : InferenceResult
        Labels and Fisher covariances from the final (responsibility-weighted) test
        step; ``extra`` adds ``bad_pixel_fraction`` (ε_n) and ``n_bad_pixels`` (pixels
        with bad probability > 0.5) per star.
    pixel_good_prob : ndarray, shape (stars, pixels)
        Probability that each pixel is good (1 where ``ivar == 0``: no information).
    n_iter : int
        EM iterations run.
    converged : bool
        Whether the largest responsibility change fell below ``tol``.
    """

    result: InferenceResult
    pixel_good_prob: np.ndarray
    n_iter: int
    converged: bool


@x64
def infer_robust(
    fitted: FittedCannon,
    data: SpectralDataset,
    *,
    max_iter: int = 10,
    tol: float = 1e-3,
    initial_fraction: float = 0.01,
    flux_range: tuple[float, float] | None = None,
    **infer_options: Any,
) -> RobustInference:
    """Cannon test step with a per-pixel bad-pixel component (EM).

    See the module docstring. Pixels already masked (``ivar == 0``) stay masked.

    Parameters
    ----------
    fitted : FittedCannon
        A trained Cannon (plain or from :func:`fit_robust_cannon`).
    data : SpectralDataset
        Spectra on the model's pixel grid.
    max_iter : int
        Maximum EM iterations.
    tol : float
        Stop when no pixel's good probability changes by more than ``tol``.
    initial_fraction : float
        Starting bad-pixel fraction ε per star, in (0, 0.5).
    flux_range : (float, float), optional
        Support of the uniform bad-pixel density (flux units). Default: the range of
        the unmasked flux in ``data``, so that every observed value lies inside it.
    **infer_options
        Passed to :meth:`FittedCannon.infer`.

    Returns
    -------
    RobustInference

    Raises
    ------
    TypeError, ValueError
        On wrong types, an empty or inverted ``flux_range``, or options out of range.
    """
    if not isinstance(fitted, FittedCannon):
        raise TypeError(f"`fitted` must be a FittedCannon, got {type(fitted).__name__}.")
    if not isinstance(data, SpectralDataset):
        raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
    if not 0.0 < initial_fraction < 0.5:
        raise ValueError(f"`initial_fraction` must be in (0, 0.5), got {initial_fraction}.")
    observed = data.ivar > 0
    if flux_range is None:
        values = data.flux[observed]
        if values.size == 0:
            raise ValueError("`data` has no unmasked pixels.")
        low, high = float(values.min()), float(values.max())
        pad = 0.01 * max(high - low, 1e-6)
        flux_range = (low - pad, high + pad)
    low, high = (float(v) for v in flux_range)
    if not high > low:
        raise ValueError(f"`flux_range` must be (low, high) with high > low, got {flux_range}.")
    log_uniform = -math.log(high - low)
    s2 = np.asarray(fitted.s2)[None, :]
    usable = observed & np.asarray(fitted.pixel_ok)[None, :]
    var = np.where(usable, 1.0 / np.where(usable, data.ivar, 1.0) + s2, 1.0)
    log_norm = -0.5 * np.log(2.0 * math.pi * var)

    fraction = np.full(data.n_stars, float(initial_fraction))
    good = np.ones(data.flux.shape)
    current = data
    converged = False
    result = fitted.infer(current, **infer_options)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - EM iterations, each a full test step
        model_flux = fitted.predict_flux(model_labels(result))  # where χ² is least, not the corrected labels
        log_good = np.log1p(-fraction)[:, None] + log_norm - 0.5 * (data.flux - model_flux) ** 2 / var
        log_bad = np.log(fraction)[:, None] + log_uniform
        new_good = np.where(usable, 1.0 / (1.0 + np.exp(np.clip(log_bad - log_good, -700.0, 700.0))), 1.0)
        change = float(np.max(np.abs(new_good - good)))
        good = new_good
        n_usable = np.maximum(usable.sum(axis=1), 1)
        fraction = np.clip(np.sum(np.where(usable, 1.0 - good, 0.0), axis=1) / n_usable, 1e-5, 0.5)
        # Weight 1/(σ² + s²) times the good responsibility r, expressed as an ivar the
        # Cannon understands: 1/ivar' + s² = (σ² + s²)/r.
        with np.errstate(divide="ignore"):
            sigma2 = np.where(observed, 1.0 / np.where(observed, data.ivar, 1.0), np.inf)
        ivar = np.where(
            usable & (good > 0), good / (sigma2 + (1.0 - good) * s2), np.where(usable, 0.0, data.ivar)
        )
        current = data.replace(ivar=ivar)
        result = fitted.infer(current, **infer_options)
        if change < tol:
            converged = True
            break

    bad = np.where(usable, 1.0 - good, 0.0)
    extra = dict(result.extra)
    extra["bad_pixel_fraction"] = fraction
    extra["n_bad_pixels"] = np.sum(bad > 0.5, axis=1)
    meta = {**dict(result.meta), "robust": "per-pixel outlier mixture", "robust_iterations": n_iter}
    result = dataclasses.replace(result, extra=extra, meta=meta)
    return RobustInference(result, good, n_iter, converged)
