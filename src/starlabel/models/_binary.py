r"""Two-star (unresolved binary) fits and their comparison with the single-star fit.

An unresolved binary's continuum-normalised spectrum is the flux-weighted sum of its
components' normalised spectra, each at its own velocity (El-Badry et al. 2018a):

.. math:: f(\lambda) = w\, m(\lambda/D(v_1);\ \ell_1) + (1-w)\, m(\lambda/D(v_1+\Delta v);\ \ell_2),

with ``w`` the primary's share of the continuum flux. The components share their
metallicity (labels named in ``shared``, by default any of ``fe_h``/``m_h``/``feh``)
since binaries form from one cloud. ``w`` is either free in [½, 1) (the primary is the
brighter star, which removes the swap symmetry) or computed from the two label vectors
by a user-supplied flux-ratio function (e.g. a mass–luminosity relation).

Fitting: the single-star model (labels, optional velocity) is fitted first; then for a
few secondary templates (training labels spread along the label distribution) and a
grid of Δv the best ``w`` is a one-dimensional linear least-squares solution, the best
few (template, Δv) pairs seed a batched Levenberg–Marquardt over all binary parameters,
and the lowest χ² wins. The two models are compared by Δχ² and the Bayesian information
criterion ``ΔBIC = Δχ² − Δk ln n`` (``n`` usable pixels, ``Δk`` extra parameters).

The decision. A single star the model misfits also gains χ² from a second component
(it absorbs part of the misfit), and that gain grows with S/N like the misfit itself, so
no fixed ΔBIC threshold works: on line-list dwarfs a threshold of 0 flagged two thirds of
the single stars. The decision statistic is therefore ``binary_score``, a ΔBIC whose Δχ²
is measured in units of the binary fit's reduced χ² (when that exceeds 1), and its
threshold is learned on the training set (:func:`learn_binary_calibration`): K-fold
cross-validation fits each held-out training star as a single star and as a binary with a
model that never saw it, and the threshold is the ``1 − false_positive_rate`` quantile of
their scores. ``p_binary`` is the share of those held-out training stars whose score is
below the star's: 0.99 means the star's evidence for a companion beats 99 % of the
training stars' (which are taken to be single). The :class:`BinaryCalibration` travels in
the model file's header; without one the fixed rule ``ΔBIC > bic_threshold`` decides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._internal import map_chunks, usable_cpus, x64
from ..data import Flag, InferenceResult, SpectralDataset
from ._binary_calibration import BinaryCalibration, binary_score
from ._binary_model import DEFAULT_SHARED, BinaryModel, shared_indices
from ._doppler import _doppler, lag_transform, lag_velocity, lags_from_transform
from ._nuisance import (
    NuisanceModel,
    _best_of,
    _lm,
    _templates,
    build_nuisance_model,
    compiled_view,
    fit_nuisance,
    fit_quality,
)
from .base import AbstractFittedModel, AbstractFluxModel

__all__ = [
    "BinaryCalibration",
    "BinaryModel",
    "DEFAULT_SHARED",
    "binary_score",
    "fit_binary",
    "learn_binary_calibration",
]


class _BinaryFit(eqx.Module):
    params: Array
    cov: Array
    chi2: Array
    converged: Array


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # a trace counter for the no-retrace test
def _fit_binary_chunk(
    model: BinaryModel,
    flux: Array,
    ivar: Array,
    single: Array,
    templates: Array,
    lower: Array,
    upper: Array,
    max_lag: int,
    n_starts: int,
    n_iter: Array,
) -> _BinaryFit:
    k = model.n_labels
    own = model.free_secondary
    free = jnp.asarray(model.free(), dtype=flux.dtype)
    step = float(np.median([b[3] for b in model.resampler.blocks]))
    lags = jnp.arange(-max_lag, max_lag + 1)

    def seen(labels: Array, v: Array) -> Array:
        return model.resampler(model.rest_spline(labels), v)

    def one_star(f: Array, iv: Array, single_p: Array) -> tuple[Array, ...]:
        omega = jnp.where(model.resampler.usable, model.spectrum.weights(iv), 0.0)
        l1, v1 = single_p[:k], single_p[k]
        m1 = seen(l1, v1)
        g = f - m1
        # Secondary templates seen at v1: a twin of the primary first, then the spread.
        labels2 = jnp.concatenate([l1[None, :], templates])
        shifted = jax.vmap(lambda t: seen(t, v1))(labels2)
        c_gm, c_mm, c_gg = (jnp.sum(omega * a * b) for a, b in ((g, m1), (m1, m1), (g, g)))
        n = f.shape[0]
        # The star's transforms once, each candidate's two (T, T²): 15 FFTs, not 27.
        og, om, o = lag_transform(jnp.stack([omega * g, omega * m1, omega]), max_lag)

        def candidate(t2: Array) -> tuple[Array, Array, Array]:
            # f ≈ m1 + u (m2 − m1) with u = 1 − w the secondary's share: with d = m1 − m2,
            # χ²(u) = Σω g² + 2u Σω g d + u² Σω d², every lag at once by FFT.
            t, tt = jnp.conj(lag_transform(jnp.stack([t2, t2 * t2]), max_lag))
            gd = c_gm - lags_from_transform(og * t, n, max_lag)
            dd = c_mm + lags_from_transform(-2.0 * om * t + o * tt, n, max_lag)
            ok = dd > 1e-12 * c_mm
            u = jnp.clip(jnp.where(ok, -gd / jnp.where(ok, dd, 1.0), 0.05), 0.05, 0.5)
            chi2 = jnp.where(ok, c_gg + 2.0 * u * gd + u * u * dd, jnp.inf)
            best = jnp.argmin(chi2)
            return lags[best], u[best], chi2[best]

        lag, u, chi2 = jax.vmap(candidate)(shifted)
        w0 = 1.0 - u
        u0 = jnp.log((w0 - 0.5) / (1.0 - w0))  # inverse of w = ½ + ½σ(u)
        dv0 = lag_velocity(lag.astype(f.dtype), step)
        starts = jnp.concatenate(
            [
                jnp.broadcast_to(l1, (labels2.shape[0], k)),
                labels2[:, own],
                u0[:, None],
                dv0[:, None],
                jnp.broadcast_to(v1, (labels2.shape[0], 1)),
            ],
            axis=1,
        )
        params, cov, chi2_fit, _, done = _best_of(
            model, f, omega, starts, chi2, lower, upper, free, n_starts, n_iter
        )
        return params, cov, chi2_fit, done

    params, cov, chi2, done = jax.vmap(one_star)(flux, ivar, single)
    return _BinaryFit(params, cov, chi2, done)


@eqx.filter_jit
def _refine_binary_chunk(
    model: BinaryModel, flux: Array, ivar: Array, start: Array, lower: Array, upper: Array, n_iter: int
) -> _BinaryFit:
    """Levenberg–Marquardt on from the screening fit's parameters (one start per star)."""
    free = jnp.asarray(model.free(), dtype=flux.dtype)

    def one_star(f: Array, iv: Array, p0: Array) -> tuple[Array, ...]:
        omega = jnp.where(model.resampler.usable, model.spectrum.weights(iv), 0.0)
        params, cov, chi2, done = _lm(model, f, omega, p0, lower, upper, free, n_iter)
        return params, cov, chi2, done

    return _BinaryFit(*jax.vmap(one_star)(flux, ivar, start))


@x64
def fit_binary(
    fitted: AbstractFittedModel | AbstractFluxModel,
    data: SpectralDataset,
    *,
    fit_rv: bool = True,
    shared: Sequence[str] | None = None,
    flux_ratio: Callable[[Array, Array], Array] | None = None,
    v_max: float = 150.0,
    dv_max: float = 100.0,
    n_templates: int = 2,
    n_starts: int = 1,
    n_iter: int = 20,
    n_iter_screen: int = 2,
    screen: float = 0.25,
    bic_threshold: float = 0.0,
    calibration: BinaryCalibration | dict[str, Any] | None = None,
    chunk_size: int = 8,
    poor_fit: float = 3.0,
    workers: int | None = None,
) -> InferenceResult:
    r"""Fit every spectrum as a single star and as a binary, and compare the two.

    Parameters
    ----------
    fitted : AbstractFittedFluxModel or AbstractFluxModel
        FittedCannon, FittedPayne, or a flux model itself (a linear one takes the fast
        path: one θ product per star and LM step).
    data : SpectralDataset
        Spectra with ``wavelength`` (Å) on the model's log-λ grid.
    fit_rv : bool
        Fit the (primary's) velocity in both models; False for rest-framed spectra.
    shared : sequence of str, optional
        Labels both components share (default: any of :data:`DEFAULT_SHARED`).
    flux_ratio : callable, optional
        ``flux_ratio(ℓ1, ℓ2) -> w`` (pure JAX) tying the mixing weight to the labels.
    v_max : float
        Largest |v1| (km/s).
    dv_max : float
        Largest |Δv| (km/s) scanned and allowed.
    n_templates, n_starts : int
        Secondary templates scanned besides a twin of the primary, and (template, Δv)
        pairs refined by LM.
    n_iter : int
        Cap on Levenberg–Marquardt iterations per start (single and binary fits).
    n_iter_screen : int
        Iterations of the two-star fit for every star (the screen). With a
        ``calibration``, only stars whose screened ``binary_score`` exceeds ``screen``
        × its threshold are fitted on to ``n_iter``; the rest, which the learned rule
        cannot call binary, keep their screened fit (a lower bound of the converged
        score: the LM only lowers χ²). Without one, every star is fitted to ``n_iter``
        in one pass (the same compiled program: the iteration cap is traced).
    screen : float
        Share of the learned threshold above which a screened star is refined
        (default ¼). On 200 line-list dwarfs and 40 binaries (benchmarks/binary.py
        setting) the screen of 2 iterations sent 43 stars on (the 40 binaries), the
        whole fit ran at 63 instead of 31 spectra per CPU-second and decided the same.
    bic_threshold : float
        Without a ``calibration``: flag a binary when ``ΔBIC = Δχ² − Δk ln n >
        bic_threshold`` (a fixed rule that flags many misfit single stars; a note in
        ``meta["binary_decision"]`` says so).
    calibration : BinaryCalibration or its dict, optional
        The decision learned on the training set (:func:`learn_binary_calibration`;
        ``starlabel train cannon --binary-calibration`` stores it in the model file):
        ``binary`` is ``binary_score > calibration.threshold`` and ``p_binary`` is filled.
    chunk_size : int
        Spectra per compiled batch. Small batches are faster: a batched LM iterates
        until its slowest star converges (8 ran 1.3× faster than 16 on 2 cores).
    poor_fit : float
        Reduced χ² (single-star) above which POOR_FIT is set.
    workers : int, optional
        Chunks fitted at once in threads (default: the usable CPUs). One chunk's
        per-star programs are too small for XLA's intra-op threads: with one at a time
        the two XLA threads of a 2-core machine ran together a quarter of the time,
        with two at a time nine tenths.

    Returns
    -------
    InferenceResult
        Labels, covariances, χ² and ``rv``/``rv_err`` (when ``fit_rv``) of the single-star
        fit, except for stars decided binary: theirs are the primary's from the two-star
        fit, with the BINARY flag. Extra columns ``binary`` (bool), ``p_binary`` (NaN
        without a calibration), ``binary_score``, ``delta_chi2``, ``delta_bic``,
        ``chi2_binary``, ``binary_w``/``binary_w_err`` (the primary's share of the
        continuum flux), ``binary_dv``/``binary_dv_err`` (secondary − primary, km/s),
        ``binary_v1``, and ``<label>_1``, ``<label>_2`` with ``<label>_1_err``,
        ``<label>_2_err`` (the components' labels from the two-star fit; shared labels
        are equal).

    Raises
    ------
    ValueError
        On missing wavelengths, unknown shared labels, or a grid that is not log-uniform.

    References
    ----------
    El-Badry et al. (2018a), MNRAS 473, 5043 (binary spectral models with the Cannon);
    El-Badry et al. (2018b), MNRAS 476, 528 (unresolved binaries in APOGEE).
    """
    if dv_max <= 0:
        raise ValueError(f"`dv_max` must be > 0 km/s, got {dv_max}.")
    # One resampler reaching v_max + dv_max for both models, with or without a fitted
    # velocity: the secondary moves by Δv either way, and both χ² must count the same pixels.
    single_model: NuisanceModel = build_nuisance_model(
        fitted, data.wavelength, fit_rv=True, continuum_order=None, v_max=v_max + dv_max
    )
    if not fit_rv:
        single_model = dataclasses.replace(single_model, fit_rv=False)
    spectrum = single_model.spectrum
    binary = BinaryModel.like(
        single_model, shared_indices(spectrum.label_names, shared), bool(fit_rv), flux_ratio
    )
    workers = usable_cpus() if workers is None else max(1, int(workers))
    single = fit_nuisance(
        single_model, data, n_starts=1, n_iter=n_iter, chunk_size=chunk_size, scan="ccf", workers=workers
    )
    own = binary.free_secondary
    templates = jnp.asarray(_templates(spectrum, n_templates))
    safe_lo, safe_hi = spectrum.safety_box()
    lower = jnp.asarray(np.concatenate([safe_lo, safe_lo[own], [-30.0, -dv_max, -v_max]]))
    upper = jnp.asarray(np.concatenate([safe_hi, safe_hi[own], [30.0, dv_max, v_max]]))
    step = max(b[3] for b in binary.resampler.blocks)
    max_lag = int(math.floor(math.log(_doppler(float(dv_max))) / step))
    single_params = np.asarray(single.params)
    binary = compiled_view(binary)  # templates and bounds are taken: share programs across models
    decision = None if calibration is None else BinaryCalibration.from_dict(calibration)
    fit = map_chunks(
        lambda rows: _fit_binary_chunk(
            binary,
            jnp.asarray(rows[0]),
            jnp.asarray(rows[1]),
            jnp.asarray(rows[2]),
            templates,
            lower,
            upper,
            max_lag,
            int(n_starts),
            # Traced: the screen and a full fit (no calibration) share one program.
            jnp.asarray(n_iter if decision is None else min(n_iter_screen, n_iter)),
        ),
        (data.flux, data.ivar, single_params),
        size=min(chunk_size, data.n_stars),
        workers=workers,
    )
    if decision is not None and n_iter > n_iter_screen:
        fit = _refine(
            binary,
            single_model,
            single,
            fit,
            data,
            decision,
            screen,
            lower,
            upper,
            n_iter,
            chunk_size,
            workers,
        )
    return _assemble(binary, single_model, single, fit, data, bic_threshold, decision, poor_fit)


def _refine(
    binary: BinaryModel,
    single_model: NuisanceModel,
    single: Any,
    fit: _BinaryFit,
    data: SpectralDataset,
    decision: BinaryCalibration,
    screen: float,
    lower: Array,
    upper: Array,
    n_iter: int,
    chunk_size: int,
    workers: int,
) -> _BinaryFit:
    """Fit on the screened stars the learned rule could still call binary."""
    extra = int(binary.free().sum()) - int(single_model.free().sum())
    delta = np.asarray(single.chi2) - np.asarray(fit.chi2)
    score = binary_score(
        delta, np.asarray(fit.chi2), np.asarray(single.n_good), extra, int(binary.free().sum())
    )
    rows = np.flatnonzero(~(score <= screen * decision.threshold))  # NaN scores are refined too
    if len(rows) == 0:
        return fit
    refined = map_chunks(
        lambda r: _refine_binary_chunk(
            binary, jnp.asarray(r[0]), jnp.asarray(r[1]), jnp.asarray(r[2]), lower, upper, int(n_iter)
        ),
        (data.flux[rows], data.ivar[rows], np.asarray(fit.params)[rows]),
        size=min(chunk_size, data.n_stars),  # the screen's chunk shape: no new compilation
        workers=workers,
    )
    # The refined run starts at the screened optimum and never raises χ²: keep the lower.
    better = np.asarray(refined.chi2) <= np.asarray(fit.chi2)[rows]
    merged = [np.array(leaf) for leaf in (fit.params, fit.cov, fit.chi2, fit.converged)]
    for leaf, new in zip(merged, (refined.params, refined.cov, refined.chi2, refined.converged), strict=True):
        leaf[rows[better]] = np.asarray(new)[better]
    return _BinaryFit(*(jnp.asarray(leaf) for leaf in merged))


def _assemble(
    binary: BinaryModel,
    single_model: NuisanceModel,
    single: Any,
    fit: Any,
    data: SpectralDataset,
    bic_threshold: float,
    calibration: BinaryCalibration | None,
    poor_fit: float,
) -> InferenceResult:
    k, own = binary.n_labels, binary.free_secondary
    names = binary.spectrum.label_names
    chi2_s, chi2_b = np.asarray(single.chi2), np.asarray(fit.chi2)
    n_good = np.asarray(single.n_good)
    k_single = int(single_model.free().sum())
    k_binary = int(binary.free().sum())
    delta_chi2 = chi2_s - chi2_b
    with np.errstate(divide="ignore", invalid="ignore"):
        delta_bic = delta_chi2 - (k_binary - k_single) * np.log(np.maximum(n_good, 1.0))
    score = binary_score(delta_chi2, chi2_b, n_good, k_binary - k_single, k_binary)
    if calibration is None:
        is_binary = np.isfinite(delta_bic) & (delta_bic > bic_threshold)
        p_binary = np.full(len(score), np.nan)
        decision = (
            f"fixed rule delta_bic > {bic_threshold:g}: the model has no binary calibration, so"
            " misfit single stars are flagged too (retrain with --binary-calibration)"
        )
    else:
        is_binary = np.isfinite(score) & (score > calibration.threshold)
        p_binary = calibration.p_binary(score)
        decision = (
            f"binary_score > {calibration.threshold:.4g}, learned by {calibration.n_folds}-fold"
            f" cross-validation on {calibration.n_stars} training stars"
            f" ({calibration.false_positive_rate:.2%} of them above it)"
        )
    params, cov = np.asarray(fit.params), np.asarray(fit.cov)
    unpacked = jax.vmap(binary.unpack)(jnp.asarray(params))
    l1, l2, w, dv, v1 = (np.asarray(a) for a in unpacked)
    j = len(own)
    u_var = cov[:, k + j, k + j]
    # dw/du = ½ σ(u)(1 − σ(u)) = (w − ½)(1 − w)·2
    w_err = np.where(
        binary.flux_ratio is None, 2.0 * (w - 0.5) * (1.0 - w) * np.sqrt(np.maximum(u_var, 0.0)), np.nan
    )
    variance = np.diagonal(cov, axis1=1, axis2=2)
    err1 = np.sqrt(np.maximum(variance[:, :k], 0.0))
    err2 = err1.copy()  # shared labels: the primary's
    err2[:, own] = np.sqrt(np.maximum(variance[:, k : k + j], 0.0))
    extra: dict[str, np.ndarray] = {
        "binary": is_binary,
        "p_binary": p_binary,
        "binary_score": score,
        "delta_chi2": delta_chi2,
        "delta_bic": delta_bic,
        "chi2_binary": chi2_b,
        "binary_w": w,
        "binary_w_err": w_err,
        "binary_dv": dv,
        "binary_dv_err": np.sqrt(np.maximum(cov[:, k + j + 1, k + j + 1], 0.0)),
        "binary_v1": v1,
    }
    for i, name in enumerate(names):
        extra[f"{name}_1"] = l1[:, i]
        extra[f"{name}_1_err"] = err1[:, i]
        extra[f"{name}_2"] = l2[:, i]
        extra[f"{name}_2_err"] = err2[:, i]
    single_params, single_cov = np.asarray(single.params), np.asarray(single.cov)
    # A detected binary's answer is the primary of the two-star fit, not the single-star
    # fit (which averages both stars: 198 K Teff RMSE on binaries vs 46 K for singles).
    pick = is_binary[:, None]
    labels = np.where(pick, l1, single_params[:, :k])
    label_cov = np.where(pick[:, :, None], cov[:, :k, :k], single_cov[:, :k, :k])
    chi2 = np.where(is_binary, chi2_b, chi2_s)
    converged = np.where(is_binary, np.asarray(fit.converged), np.asarray(single.converged))
    if binary.fit_rv:
        extra["rv"] = np.where(is_binary, v1, single_params[:, k])
        extra["rv_err"] = np.sqrt(np.maximum(np.where(is_binary, cov[:, -1, -1], single_cov[:, k, k]), 0.0))
    label_cov, dof, flags = fit_quality(label_cov, chi2, n_good, k_single, converged, poor_fit)
    dof = np.where(is_binary, n_good - k_binary, dof).astype(float)
    flags |= np.where(is_binary, int(Flag.BINARY), 0)
    return InferenceResult(
        ids=data.ids,
        label_names=names,
        labels=labels,
        cov=label_cov,
        chi2=chi2,
        dof=dof,
        flags=flags,
        extra=extra,
        meta={
            "estimator": "map",
            "binary_model": True,
            "shared": ",".join(names[i] for i in binary.shared),
            "bic_threshold": float(bic_threshold),
            "binary_decision": decision,
        },
    )


def learn_binary_calibration(
    model: Any,
    train: SpectralDataset,
    *,
    n_folds: int = 5,
    false_positive_rate: float = 0.002,
    fit_rv: bool = True,
    seed: int = 0,
    **options: Any,
) -> BinaryCalibration:
    """Learn the binary decision by K-fold cross-validation on the training set.

    Each fold refits ``model`` on the other folds (without error calibration) and fits
    the held-out stars as single stars and as binaries (:func:`fit_binary`); the
    threshold is the ``1 − false_positive_rate`` quantile of their ``binary_score``.
    The training stars are taken to be single: binaries among them raise the threshold
    (fewer detections, never more false positives).

    Parameters
    ----------
    model : Cannon or Payne
        Unfitted configuration (``model.fit(train, calibrate=False)`` must return a
        model with a flux model; K refits, so a Payne costs K trainings).
    train : SpectralDataset
        The training set, with ``wavelength`` (Å, log-λ grid).
    n_folds : int
        K.
    false_positive_rate : float
        Share of training stars the threshold leaves above it (default 0.2 %, a fifth
        of the 1 % target: on 300 training dwarfs the 99.5th percentile left 2 of 200
        test singles above it, the sampling noise of an extreme quantile).
    fit_rv : bool
        Fit velocities, as ``infer --binary --fit-rv`` will.
    seed : int
        Fold assignment.
    **options
        Passed to :func:`fit_binary`.

    Returns
    -------
    BinaryCalibration

    Raises
    ------
    ValueError
        Without wavelengths, with fewer than 2 folds, or too few usable stars.
    """
    from .._internal import fold_indices

    if train.wavelength is None:
        raise ValueError("the binary calibration fits velocities and needs `train.wavelength` (Å).")
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"`n_folds` must be an integer ≥ 2, got {n_folds!r}.")
    scores = np.full(train.n_stars, np.nan)
    everyone = np.arange(train.n_stars)
    for held in fold_indices(train.n_stars, n_folds, seed):
        fitted = model.fit(train[np.setdiff1d(everyone, held)], calibrate=False)
        result = fit_binary(fitted, train[held], fit_rv=fit_rv, **options)
        scores[held] = result.extra["binary_score"]
    return BinaryCalibration.from_scores(
        scores, false_positive_rate=false_positive_rate, n_folds=n_folds, fit_rv=fit_rv
    )
