r"""Radial velocity and multiplicative continuum fitted jointly with the labels.

The observed flux of a star moving with line-of-sight velocity ``v`` is

.. math:: f(\lambda_i) = c_r(\lambda_i)\; m\!\left(\lambda_i / D(v);\ \ell\right),
          \qquad D(v) = \sqrt{(1+\beta)/(1-\beta)},\ \beta = v/c,

where ``m`` is the model's rest-frame spectrum and ``c_r`` a low-order polynomial
(Chebyshev in the region's own wavelength range) for each region ``r`` (chip). On a
grid uniform in ln λ a velocity is a constant shift ``ln D / Δ`` in pixels, so
:class:`DopplerResampler` evaluates ``m`` there by cubic B-spline interpolation of the
model's pixel values within each region (Unser 1999): the model coefficients are
prefiltered once, then every shift costs four taps per pixel, is twice continuously
differentiable in ``v`` and enters the same Gauss–Newton fit as the labels. (Cubic
convolution without the prefilter left velocity errors of ±0.05 km/s that depend on the
sub-pixel phase, five times the statistical error at S/N 100 on 7214 pixels.) Pixels within the reach of the largest allowed shift of a region's edge are left
out of the fit for every ``v``, so the likelihood compares the same pixels at all
velocities.

Velocity χ² surfaces have a minimum per line-width, so the fit first scans ``v`` on a
grid for a few template spectra (training labels spread along the label distribution,
continuum a free scale per region), then runs a batched Levenberg–Marquardt from the
best velocity of each template and keeps the lowest χ². Uncertainties come from the
inverse Fisher matrix of all parameters; its label block is the label covariance
*marginalised* over velocity and continuum.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._internal import map_chunks, x64
from ..data import Flag, InferenceResult, SpectralDataset
from ..inference import Marquardt, damped_newton, pin_inactive
from ._doppler import (
    C_KMS,
    DopplerResampler,
    SplinePrefilter,
    _doppler,
    _parabola,
    find_regions,
    lag_transform,
    lag_velocity,
    lags_from_transform,
    rest_columns,
    rest_spline,
)
from ._estimators import infer_posterior_mean
from ._nuisance_model import AbstractPackedModel, NuisanceModel, build_nuisance_model, compiled_view
from .base import AbstractFittedModel, AbstractFluxModel, AbstractLinearFluxModel

__all__ = [
    "C_KMS",
    "AbstractPackedModel",
    "DopplerResampler",
    "SplinePrefilter",
    "rest_columns",
    "rest_spline",
    "find_regions",
    "NuisanceModel",
    "NuisanceFit",
    "build_nuisance_model",
    "compiled_view",
    "fit_nuisance",
    "infer_with_nuisance",
]


class NuisanceFit(eqx.Module):
    """Raw per-star output of the joint fit (batched leading axis)."""

    params: Float[Array, "stars params"]
    cov: Float[Array, "stars params params"]
    chi2: Float[Array, " stars"]
    n_good: Float[Array, " stars"]
    converged: Bool[Array, " stars"]


_DAMPING = Marquardt(initial=1e-2, shrink=1.0 / 3.0, grow=4.0, smallest=1e-9, largest=1e8)


def _lm(
    model: AbstractPackedModel,
    flux: Array,
    omega: Array,
    p0: Array,
    lower: Array,
    upper: Array,
    free: Array,
    n_iter: int | Array,
) -> tuple[Array, Array, Array, Array]:
    """:func:`starlabel.inference.damped_newton` on χ² for one star from one start.

    Done when a full Gauss–Newton step would gain less than Δχ² = 10⁻³ (well below the
    1 that defines a 1σ change), when an accepted step gained less than that, or when
    no damping finds a better point: under vmap every star waits for the slowest.
    One evaluation (flux and Jacobian) per step, of its trial point: the accepted
    point's ``JᵀΩJ`` is carried, and at the end it gives the covariance without a
    further evaluation (separate χ² and linearisation calls cost 1.4× per step).
    """
    sqrt_w = jnp.sqrt(omega)

    def evaluate(p: Array) -> tuple[Array, Array, Array]:
        model_flux, jac = model.flux_and_jacobian(p)
        weighted = jac * sqrt_w[:, None]
        residual = sqrt_w * (model_flux - flux)
        return residual @ residual, weighted.T @ residual, weighted.T @ weighted

    final = damped_newton(
        None,
        None,
        p0,
        damping=_DAMPING,
        max_steps=n_iter,
        tol=1e-3,
        atol=1e-3,
        solve=jnp.linalg.solve,
        free=free > 0,
        lower=lower,
        upper=upper,
        evaluate=evaluate,
    )
    assert final.curvature is not None
    F, _ = pin_inactive(final.curvature, jnp.zeros_like(final.x), free > 0)
    cov = jnp.linalg.inv(F) * free[:, None] * free[None, :]
    return final.x, cov, final.loss, final.converged | final.stalled


class _ScanOut(eqx.Module):
    v: Array
    scale: Array
    chi2: Array


SCAN_STRIDE = 2
"""Velocity scans use every second pixel: they only need to find the right χ² valley,
which is several pixels wide, and the scan is the gather-bound part of the fit."""


def _scan(model: NuisanceModel, flux: Array, omega: Array, template: Array, v_grid: Array) -> _ScanOut:
    """χ² of one template (spline coefficients) over a velocity grid, a free scale per region."""
    pick = slice(None, None, SCAN_STRIDE)
    resampler = model.resampler.every(SCAN_STRIDE)
    flux, omega = flux[pick], omega[pick]
    region_basis = (
        model.basis[pick, :: model.order + 1] if model.n_continuum else jnp.ones((flux.shape[0], 1))
    )

    def one(v: Array) -> tuple[Array, Array]:
        m = resampler(template, v)
        fm = region_basis.T @ (omega * flux * m)
        mm = region_basis.T @ (omega * m * m)
        scale = jnp.where(mm > 0, fm / jnp.where(mm > 0, mm, 1.0), 1.0)
        if not model.n_continuum:
            scale = jnp.ones_like(scale)
        resid = flux - (region_basis @ scale) * m
        return jnp.sum(omega * resid**2), scale

    chi2, scale = jax.vmap(one)(v_grid)
    best = jnp.argmin(chi2)
    return _ScanOut(v_grid[best], scale[best], chi2[best])


def _ccf_scan(
    model: NuisanceModel, flux: Array, omega: Array, transforms: Array, max_lag: int
) -> tuple[Array, Array]:
    """Best velocity and χ² of each template (rest-frame values) by FFT cross-correlation.

    ``χ²(s) = Σ ω f² − 2 Σ ω f T(· − s) + Σ ω T(· − s)²`` at every integer lag, then a
    parabola through the minimum for the sub-pixel part. ``transforms`` (templates, 2,
    frequencies) holds the conjugate transforms of each template ``T`` and of ``T²``
    (shared by every star): per star, two forward transforms and one inverse per
    template. Pixels outside ``usable`` have ω = 0 and every lag within the edge margins
    stays inside its own region, so the regions need no separate treatment.
    """
    step = float(np.median([b[3] for b in model.resampler.blocks]))
    n = flux.shape[0]
    weighted = lag_transform(jnp.stack([omega * flux, omega]), max_lag)

    def one(template: Array) -> tuple[Array, Array]:
        product = -2.0 * weighted[0] * template[0] + weighted[1] * template[1]
        chi2 = jnp.sum(omega * flux * flux) + lags_from_transform(product, n, max_lag)
        best = jnp.argmin(chi2)
        lag = best - max_lag + _parabola(chi2, best)
        return lag_velocity(lag, step), chi2[best]

    return jax.vmap(one)(transforms)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # a trace counter for the no-retrace test
def _fit_chunk(
    model: NuisanceModel,
    flux: Array,
    ivar: Array,
    templates: Array,
    v_grid: Array,
    lower: Array,
    upper: Array,
    n_starts: int,
    n_iter: int,
    max_lag: int = 0,
) -> NuisanceFit:
    free = jnp.asarray(model.free(), dtype=flux.dtype)
    rest = jax.vmap(model.rest_spline)(templates)
    if max_lag:  # the rest-frame templates' transforms (of T and T²), once per chunk
        values = jax.vmap(model.spectrum.flux)(templates)
        transforms = jnp.conj(lag_transform(jnp.stack([values, values * values], axis=1), max_lag))

    def one_star(f: Array, iv: Array) -> tuple[Array, ...]:
        omega = model.weights(iv)
        if max_lag:  # velocity starts by cross-correlation (no continuum)
            v0, scan_chi2 = _ccf_scan(model, f, omega, transforms, max_lag)
            starts = jnp.concatenate([templates, v0[:, None]], axis=1)
            return _best_of(model, f, omega, starts, scan_chi2, lower, upper, free, n_starts, n_iter)

        def start_of(label: Array, template_flux: Array) -> tuple[Array, Array]:
            grid = v_grid if model.fit_rv else jnp.zeros((1,), dtype=f.dtype)
            scan = _scan(model, f, omega, template_flux, grid)
            a0 = jnp.zeros(model.n_continuum, dtype=f.dtype)
            if model.n_continuum:
                a0 = a0.at[:: model.order + 1].set(scan.scale)
            return jnp.concatenate([label, scan.v[None], a0]), scan.chi2

        starts, scan_chi2 = jax.vmap(start_of)(templates, rest)
        return _best_of(model, f, omega, starts, scan_chi2, lower, upper, free, n_starts, n_iter)

    params, cov, chi2, n_good, done = jax.vmap(one_star)(flux, ivar)
    return NuisanceFit(params, cov, chi2, n_good, done)


def _best_of(
    model: AbstractPackedModel,
    f: Array,
    omega: Array,
    starts: Array,
    scan_chi2: Array,
    lower: Array,
    upper: Array,
    free: Array,
    n_starts: int,
    n_iter: int | Array,
) -> tuple[Array, ...]:
    """LM from the ``n_starts`` starts with the lowest scan χ²; the lowest final χ² wins."""
    order = jnp.argsort(jnp.where(jnp.isfinite(scan_chi2), scan_chi2, jnp.inf))[:n_starts]
    params, cov, chi2, done = jax.vmap(lambda p0: _lm(model, f, omega, p0, lower, upper, free, n_iter))(
        starts[order]
    )
    best = jnp.argmin(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))
    return params[best], cov[best], chi2[best], jnp.sum(omega > 0).astype(f.dtype), done[best]


def _templates(spectrum: AbstractFluxModel, n: int) -> np.ndarray:
    """``n`` training label vectors spread along the main axis of the training labels."""
    train = np.asarray(spectrum.train_labels)
    if n <= 1 or len(train) < n:
        return np.median(train, axis=0)[None, :]
    if isinstance(spectrum, AbstractLinearFluxModel):
        shift, scale = np.asarray(spectrum.shift), np.asarray(spectrum.scale)
    else:
        shift, scale = train.mean(axis=0), np.maximum(train.std(axis=0), 1e-12)
    scaled = (train - shift) / scale
    centred = scaled - np.median(scaled, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = centred @ vt[0]
    targets = np.quantile(projection, (np.arange(n) + 0.5) / n)
    return train[np.argmin(np.abs(projection[None, :] - targets[:, None]), axis=1)]


@x64
def fit_nuisance(
    model: NuisanceModel,
    data: SpectralDataset,
    *,
    n_templates: int = 3,
    n_starts: int = 2,
    v_step: float = 2.0,
    n_iter: int = 50,
    chunk_size: int = 64,
    scan: str = "grid",
    workers: int = 1,
) -> NuisanceFit:
    """Joint MAP of labels, velocity and continuum for every spectrum (flat priors).

    Parameters
    ----------
    model : NuisanceModel
        From :func:`build_nuisance_model`.
    data : SpectralDataset
        Spectra on the model's grid.
    n_templates : int
        Template label vectors scanned in velocity.
    n_starts : int
        Levenberg–Marquardt runs, from the templates (and their best velocities) with
        the lowest scan χ².
    v_step : float
        Velocity scan step, km/s (≈ ½ pixel for APOGEE is 2 km/s).
    n_iter : int
        Cap on Levenberg–Marquardt iterations.
    chunk_size : int
        Spectra per compiled batch.
    scan : {"grid", "ccf"}
        Velocity starts from χ² on a grid of ``v_step`` (B-spline shifts, every second
        pixel), or from an FFT cross-correlation at whole-pixel lags refined by a
        parabola (``"ccf"``; about ten times cheaper, for fits without continuum).
    workers : int
        Chunks fitted at once in threads (:func:`starlabel._internal.map_chunks`).

    Returns
    -------
    NuisanceFit
        Packed parameters ``[labels, v, continuum]``, their covariance (inverse Fisher),
        χ² (with s²), usable pixels and a convergence flag per star.
    """
    spectrum = model.spectrum
    if data.n_pixels != spectrum.n_pixels:
        raise ValueError(f"`data` has {data.n_pixels} pixels; the model has {spectrum.n_pixels}.")
    if scan not in ("grid", "ccf"):
        raise ValueError(f"`scan` must be 'grid' or 'ccf', got {scan!r}.")
    if scan == "ccf" and (model.n_continuum or not model.resampler.blocks):
        raise ValueError("scan='ccf' needs a fit without continuum on a log-λ grid; use scan='grid'.")
    templates = jnp.asarray(_templates(spectrum, n_templates))
    n_starts = max(1, min(int(n_starts), templates.shape[0]))
    v_max = model.resampler.v_max
    max_lag = 0
    if scan == "ccf" and model.fit_rv:
        step = min(b[3] for b in model.resampler.blocks)
        max_lag = int(math.floor(math.log(_doppler(v_max)) / step))
    v_grid = jnp.arange(-v_max, v_max + 0.5 * v_step, v_step)
    safe_lo, safe_hi = spectrum.safety_box()
    big = np.full(model.n_continuum, np.inf)
    lower = jnp.asarray(np.concatenate([safe_lo, [-v_max], -big]))
    upper = jnp.asarray(np.concatenate([safe_hi, [v_max], big]))
    compiled = compiled_view(model)
    fit = map_chunks(
        lambda rows: _fit_chunk(
            compiled,
            jnp.asarray(rows[0]),
            jnp.asarray(rows[1]),
            templates,
            v_grid,
            lower,
            upper,
            int(n_starts),
            int(n_iter),
            max_lag,
        ),
        (data.flux, data.ivar),
        size=min(chunk_size, data.n_stars),
        workers=workers,
    )
    return jax.tree.map(jnp.asarray, fit)


def fit_quality(
    label_cov: np.ndarray,
    chi2: np.ndarray,
    n_good: np.ndarray,
    n_free: int,
    converged: np.ndarray,
    poor_fit: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label covariances (NaN where unusable), degrees of freedom and quality flags of MAP fits."""
    bad_cov = ~np.all(np.isfinite(label_cov), axis=(1, 2)) | np.any(
        np.diagonal(label_cov, axis1=1, axis2=2) <= 0, axis=1
    )
    dof = n_good - n_free
    with np.errstate(divide="ignore", invalid="ignore"):
        rchi2 = np.where(dof > 0, chi2 / dof, np.nan)
    flags = np.zeros(len(chi2), dtype=np.int64)
    flags |= np.where(~np.asarray(converged), int(Flag.NOT_CONVERGED), 0)
    flags |= np.where(bad_cov, int(Flag.BAD_COVARIANCE), 0)
    flags |= np.where(rchi2 > poor_fit, int(Flag.POOR_FIT), 0)
    return np.where(bad_cov[:, None, None], np.nan, label_cov), dof.astype(float), flags


def _nuisance_columns(model: NuisanceModel, fit: NuisanceFit) -> dict[str, np.ndarray]:
    k = model.n_labels
    params, cov = np.asarray(fit.params), np.asarray(fit.cov)
    extra: dict[str, np.ndarray] = {}
    if model.fit_rv:
        extra["rv"] = params[:, k]
        extra["rv_err"] = np.sqrt(np.maximum(cov[:, k, k], 0.0))
    for j in range(model.n_continuum):
        region, power = divmod(j, model.order + 1)
        extra[f"cont_r{region}_c{power}"] = params[:, k + 1 + j]
    return extra


@x64
def infer_with_nuisance(
    fitted: AbstractFittedModel | AbstractFluxModel,
    data: SpectralDataset,
    *,
    fit_rv: bool = True,
    continuum_order: int | None = None,
    estimator: str = "map",
    prior: Any = "none",
    temperature: float = 1.0,
    v_max: float = 150.0,
    regions: Any = None,
    n_templates: int = 3,
    poor_fit: float = 3.0,
    **grid_options: Any,
) -> InferenceResult:
    """Labels with a radial velocity and/or continuum fitted jointly.

    With ``estimator="map"`` the result is the joint maximum likelihood, and the label
    covariance is the label block of the inverse Fisher matrix of all parameters (so it
    is marginalised over velocity and continuum). With ``estimator="mean"`` the velocity
    and continuum are fixed at their joint fit, the label posterior is integrated on the
    grid (:func:`~starlabel.models.infer_posterior_mean` with the shifted, scaled
    coefficients), and the covariance gains the Laplace estimate of what marginalising
    the nuisance adds, ``T·([F⁻¹]_ℓℓ − [F_ℓℓ]⁻¹)``.

    Parameters
    ----------
    fitted : AbstractFittedFluxModel or AbstractFluxModel
        FittedCannon, FittedPayne or a flux model (``estimator="mean"``: linear ones only).
    data : SpectralDataset
        Spectra with ``wavelength`` (Å), on the model's grid.
    fit_rv : bool
        Fit a velocity (km/s, positive = receding).
    continuum_order : int, optional
        Order of the multiplicative continuum polynomial per region (None: none).
    estimator : {"map", "mean"}
        Joint MAP, or posterior mean over labels at the fitted nuisance.
    prior, temperature
        For ``estimator="mean"``, as in :func:`infer_posterior_mean`.
    v_max : float
        Largest |v| searched (km/s).
    regions : array-like of int, optional
        Continuum/edge regions per pixel (default: split at wavelength gaps).
    n_templates : int
        Templates in the velocity scan (starts of the joint fit).
    poor_fit : float
        Reduced χ² above which POOR_FIT is set.
    **grid_options
        Passed to :func:`infer_posterior_mean` for ``estimator="mean"``.

    Returns
    -------
    InferenceResult
        Labels and marginal covariances; extra ``rv``, ``rv_err`` (km/s) when fitting a
        velocity, and ``cont_r{region}_c{power}`` continuum coefficients.

    Raises
    ------
    ValueError
        On an unknown estimator, missing wavelengths, a non-log-uniform grid, or an
        empty request.
    """
    if estimator not in ("map", "mean"):
        raise ValueError(f"unknown estimator {estimator!r} with nuisance parameters; choose 'map' or 'mean'.")
    if not fit_rv and continuum_order is None:
        raise ValueError("nothing to fit: pass fit_rv=True and/or continuum_order=0, 1, 2, ….")
    model = build_nuisance_model(
        fitted, data.wavelength, fit_rv=fit_rv, continuum_order=continuum_order, v_max=v_max, regions=regions
    )
    if estimator == "mean" and model.theta_spline is None:
        raise ValueError(
            f"estimator='mean' integrates a polynomial-in-labels model on a grid; the"
            f" {type(model.spectrum).__name__} is not one: use estimator='map'."
        )
    fit = fit_nuisance(model, data, n_templates=n_templates)
    k = model.n_labels
    params, cov = np.asarray(fit.params), np.asarray(fit.cov)
    chi2, n_good = np.asarray(fit.chi2), np.asarray(fit.n_good)
    n_free = int(model.free().sum())
    extra = _nuisance_columns(model, fit)
    meta = {
        "fit_rv": bool(fit_rv),
        "continuum_order": -1 if continuum_order is None else int(continuum_order),
    }
    if estimator == "map":
        label_cov, dof, flags = fit_quality(
            cov[:, :k, :k], chi2, n_good, n_free, np.asarray(fit.converged), poor_fit
        )
        if fit_rv:
            flags |= np.where(np.abs(params[:, k]) >= v_max - 1e-6, int(Flag.HIT_BOUND), 0)
        return InferenceResult(
            ids=data.ids,
            label_names=model.spectrum.label_names,
            labels=params[:, :k],
            cov=label_cov,
            chi2=chi2,
            dof=dof,
            flags=flags,
            extra=extra,
            meta={"estimator": "map", **meta},
        )
    theta = jax.vmap(lambda p: model.coefficients(p[k], p[k + 1 :]))(jnp.asarray(params))
    usable = np.asarray(model.resampler.usable)
    masked = data.replace(ivar=np.where(usable[None, :], data.ivar, 0.0))
    result = infer_posterior_mean(
        model.spectrum,
        masked,
        prior=prior,
        temperature=temperature,
        theta=theta,
        poor_fit=poor_fit,
        start=params[:, :k],
        **grid_options,
    )
    # Conditional (fixed-nuisance) vs marginal Laplace covariance of the labels: the
    # difference is what the unknown velocity and continuum add to the label errors.
    precision = np.linalg.pinv(cov)
    conditional = np.linalg.inv(precision[:, :k, :k])
    extra_cov = np.clip(temperature, 1.0, None) * (cov[:, :k, :k] - conditional)
    total = result.cov + np.where(np.isfinite(extra_cov), extra_cov, 0.0)
    return dataclasses.replace(
        result,
        cov=total,
        dof=result.dof - (n_free - k),
        extra={**result.extra, **extra},
        meta={**result.meta, **meta},
    )
