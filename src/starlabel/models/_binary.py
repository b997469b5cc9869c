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
criterion ``ΔBIC = Δχ² − Δk ln n`` (``n`` usable pixels, ``Δk`` extra parameters); a
star is flagged a binary when ``ΔBIC`` exceeds ``bic_threshold``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._internal import x64
from ..data import InferenceResult, SpectralDataset
from ._nuisance import (
    SCAN_STRIDE,
    AbstractPackedModel,
    DopplerResampler,
    NuisanceModel,
    _lm,
    _templates,
    build_nuisance_model,
    fit_nuisance,
    fit_quality,
)
from ._posterior_mean import PolynomialSpectrum

__all__ = ["BinaryModel", "DEFAULT_SHARED", "fit_binary"]

DEFAULT_SHARED: tuple[str, ...] = ("fe_h", "m_h", "feh", "mh", "metallicity")
"""Label names treated as shared by both components when ``shared`` is not given."""


class BinaryModel(AbstractPackedModel):
    """Flux of two stars: ``w S_{v1} m(ℓ1) + (1 − w) S_{v1+Δv} m(ℓ2)``.

    Parameters are packed as ``[ℓ1 (labels), ℓ2 (free labels), u, Δv, v1]`` with
    ``w = ½ + ½ σ(u)`` (σ the logistic function), Δv and v1 in km/s.

    Attributes
    ----------
    spectrum : PolynomialSpectrum
    resampler : DopplerResampler
    theta_spline : Float[Array, "pixels terms"]
        Prefiltered coefficients for velocity shifts.
    shared : tuple of int
        Indices of labels the components share.
    fit_rv : bool
        Whether the primary's velocity v1 is free (else 0).
    flux_ratio : callable, optional
        ``flux_ratio(ℓ1, ℓ2) -> w`` (pure JAX); replaces the free ``w``.
    """

    spectrum: PolynomialSpectrum
    resampler: DopplerResampler
    theta_spline: Float[Array, "pixels terms"]
    shared: tuple[int, ...] = eqx.field(static=True)
    fit_rv: bool = eqx.field(static=True)
    flux_ratio: Callable[[Array, Array], Array] | None = eqx.field(static=True, default=None)

    @property
    def n_labels(self) -> int:
        """Labels per star."""
        return self.spectrum.n_labels

    @property
    def free_secondary(self) -> np.ndarray:
        """Indices of the secondary's own (not shared) labels."""
        return np.array([k for k in range(self.n_labels) if k not in self.shared], dtype=np.int64)

    @property
    def n_params(self) -> int:
        """Length of the packed parameter vector."""
        return self.n_labels + len(self.free_secondary) + 3

    def unpack(self, params: Float[Array, " params"]) -> tuple[Array, Array, Array, Array, Array]:
        """``(ℓ1, ℓ2, w, Δv, v1)``."""
        k, j = self.n_labels, len(self.free_secondary)
        l1 = params[:k]
        l2 = l1.at[self.free_secondary].set(params[k : k + j]) if j else l1
        u, dv, v1 = params[k + j], params[k + j + 1], params[k + j + 2]
        w = self.flux_ratio(l1, l2) if self.flux_ratio is not None else 0.5 + 0.5 * jax.nn.sigmoid(u)
        return l1, l2, w, dv, v1

    def components(self, params: Float[Array, " params"]) -> tuple[Array, Array]:
        """The two weighted component spectra (pixels,) as observed."""
        l1, l2, w, dv, v1 = self.unpack(params)
        m1 = self.resampler(self.theta_spline @ self.spectrum.label_vector(l1), v1)
        m2 = self.resampler(self.theta_spline @ self.spectrum.label_vector(l2), v1 + dv)
        return w * m1, (1.0 - w) * m2

    def flux(self, params: Float[Array, " params"]) -> Float[Array, " pixels"]:
        """Model flux of one star."""
        a, b = self.components(params)
        return a + b

    def jacobian(self, params: Float[Array, " params"]) -> Float[Array, "pixels params"]:
        """∂flux/∂params (analytic; autodiff when ``flux_ratio`` ties w to the labels)."""
        if self.flux_ratio is not None:
            return jax.jacfwd(self.flux)(params)
        k, own = self.n_labels, self.free_secondary
        l1, l2, w, dv, v1 = self.unpack(params)
        vector = self.spectrum.label_vector
        rest1 = self.theta_spline @ vector(l1)
        rest2 = self.theta_spline @ vector(l2)
        d1 = self.resampler(self.theta_spline @ jax.jacfwd(vector)(l1), v1)  # (pixels, labels)
        d2 = self.resampler(self.theta_spline @ jax.jacfwd(vector)(l2), v1 + dv)
        m1, m2 = self.resampler(rest1, v1), self.resampler(rest2, v1 + dv)
        dm1, dm2 = self.resampler.derivative(rest1, v1), self.resampler.derivative(rest2, v1 + dv)
        shared = np.isin(np.arange(k), own, invert=True)
        d_l1 = w * d1 + (1.0 - w) * d2 * jnp.asarray(shared, dtype=d2.dtype)[None, :]
        sig = 2.0 * (w - 0.5)
        dw_du = 0.5 * sig * (1.0 - sig)
        columns = [
            d_l1,
            (1.0 - w) * d2[:, own],
            (dw_du * (m1 - m2))[:, None],
            ((1.0 - w) * dm2)[:, None],
            (w * dm1 + (1.0 - w) * dm2)[:, None],
        ]
        return jnp.concatenate(columns, axis=1)

    def free(self) -> np.ndarray:
        """Bool (params,): which parameters are fitted."""
        free = np.ones(self.n_params, dtype=bool)
        free[-3] = self.flux_ratio is None
        free[-1] = self.fit_rv
        return free


def _shared_indices(label_names: tuple[str, ...], shared: Sequence[str] | None) -> tuple[int, ...]:
    if shared is None:
        return tuple(i for i, n in enumerate(label_names) if n.lower() in DEFAULT_SHARED)
    unknown = [n for n in shared if n not in label_names]
    if unknown:
        raise ValueError(
            f"`shared` names unknown labels {unknown}; the model's labels are {list(label_names)}."
        )
    return tuple(label_names.index(n) for n in shared)


class _BinaryFit(eqx.Module):
    params: Array
    cov: Array
    chi2: Array
    converged: Array


@eqx.filter_jit
def _fit_binary_chunk(
    model: BinaryModel,
    flux: Array,
    ivar: Array,
    single: Array,
    templates: Array,
    dv_grid: Array,
    lower: Array,
    upper: Array,
    n_starts: int,
    n_iter: int,
) -> _BinaryFit:
    k = model.n_labels
    own = model.free_secondary
    free = jnp.asarray(model.free(), dtype=flux.dtype)
    spline = jax.vmap(lambda t: model.theta_spline @ model.spectrum.label_vector(t))(templates)

    pick = slice(None, None, SCAN_STRIDE)
    scan_resampler = model.resampler.every(SCAN_STRIDE)

    def one_star(f: Array, iv: Array, single_p: Array) -> tuple[Array, ...]:
        omega = jnp.where(model.resampler.usable, model.spectrum.weights(iv), 0.0)
        l1, v1 = single_p[:k], single_p[k]
        m1 = scan_resampler(model.theta_spline @ model.spectrum.label_vector(l1), v1)
        f_scan, omega_scan = f[pick], omega[pick]

        def candidate(template: Array, dv: Array) -> tuple[Array, Array]:
            m2 = scan_resampler(template, v1 + dv)
            d = m1 - m2
            num = jnp.sum(omega_scan * (f_scan - m2) * d)
            w = jnp.clip(num / jnp.maximum(jnp.sum(omega_scan * d * d), 1e-300), 0.5, 0.95)
            return jnp.sum(omega_scan * (f_scan - m2 - w * d) ** 2), w

        chi2, w = jax.vmap(lambda t: jax.vmap(lambda dv: candidate(t, dv))(dv_grid))(spline)
        order = jnp.argsort(chi2.ravel())[:n_starts]
        t_idx, dv_idx = jnp.unravel_index(order, chi2.shape)
        w0 = w.ravel()[order]
        u0 = jnp.log((w0 - 0.5) / (1.0 - w0 + 1e-9) + 1e-9)  # inverse of w = ½ + ½σ(u)

        def start(t: Array, dv: Array, u: Array) -> tuple[Array, ...]:
            label2 = templates[t]
            p0 = jnp.concatenate([l1, label2[own], u[None], dv_grid[dv][None], v1[None]])
            return _lm(model, f, omega, p0, lower, upper, free, n_iter)

        params, cov, chi2_fit, done = jax.vmap(start)(t_idx, dv_idx, u0)
        best = jnp.argmin(jnp.where(jnp.isfinite(chi2_fit), chi2_fit, jnp.inf))
        return params[best], cov[best], chi2_fit[best], done[best]

    params, cov, chi2, done = jax.vmap(one_star)(flux, ivar, single)
    return _BinaryFit(params, cov, chi2, done)


@x64
def fit_binary(
    fitted: Any,
    data: SpectralDataset,
    *,
    fit_rv: bool = True,
    shared: Sequence[str] | None = None,
    flux_ratio: Callable[[Array, Array], Array] | None = None,
    v_max: float = 150.0,
    dv_max: float = 100.0,
    dv_step: float = 4.0,
    n_templates: int = 6,
    n_starts: int = 2,
    n_iter: int = 50,
    bic_threshold: float = 0.0,
    chunk_size: int = 32,
    poor_fit: float = 3.0,
) -> InferenceResult:
    r"""Fit every spectrum as a single star and as a binary, and compare the two.

    Parameters
    ----------
    fitted : FittedCannon or PolynomialSpectrum
        Trained polynomial-in-labels model.
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
    dv_max, dv_step : float
        Range and step of the Δv scan (km/s).
    n_templates, n_starts : int
        Secondary templates scanned, and (template, Δv) pairs refined by LM.
    n_iter : int
        Cap on Levenberg–Marquardt iterations per start.
    bic_threshold : float
        Flag a binary when ``ΔBIC = Δχ² − Δk ln n > bic_threshold``.
    chunk_size : int
        Spectra per compiled batch.
    poor_fit : float
        Reduced χ² (single-star) above which POOR_FIT is set.

    Returns
    -------
    InferenceResult
        The single-star labels and covariances (the standard answer), with extra
        columns ``binary`` (bool flag), ``delta_chi2``, ``delta_bic``, ``binary_w`` and
        ``binary_w_err``, ``binary_dv`` and ``binary_dv_err`` (km/s), ``binary_v1``,
        ``<label>_1``/``<label>_2`` (component labels), ``chi2_binary``, and ``rv``/``rv_err``
        from the single-star fit when ``fit_rv``.

    Raises
    ------
    ValueError
        On missing wavelengths, unknown shared labels, or a grid that is not log-uniform.

    References
    ----------
    El-Badry et al. (2018a), MNRAS 473, 5043 (binary spectral models with the Cannon);
    El-Badry et al. (2018b), MNRAS 476, 528 (unresolved binaries in APOGEE).
    """
    if dv_step <= 0 or dv_max <= 0:
        raise ValueError(f"`dv_max` and `dv_step` must be > 0, got {dv_max}, {dv_step}.")
    single_model: NuisanceModel = build_nuisance_model(
        fitted, data.wavelength, fit_rv=fit_rv, continuum_order=None, v_max=v_max + dv_max
    )
    spectrum, theta_spline = single_model.spectrum, single_model.theta_spline
    if not isinstance(spectrum, PolynomialSpectrum) or theta_spline is None:
        raise ValueError(
            f"binary fits need the Cannon's polynomial spectrum, not a {type(spectrum).__name__}."
        )
    binary = BinaryModel(
        spectrum,
        single_model.resampler,
        theta_spline,
        _shared_indices(spectrum.label_names, shared),
        bool(fit_rv),
        flux_ratio,
    )
    single = fit_nuisance(single_model, data)
    own = binary.free_secondary
    templates = jnp.asarray(_templates(spectrum, n_templates))
    safe_lo, safe_hi = spectrum.safety_box()
    lower = jnp.asarray(np.concatenate([safe_lo, safe_lo[own], [-30.0, -dv_max, -v_max]]))
    upper = jnp.asarray(np.concatenate([safe_hi, safe_hi[own], [30.0, dv_max, v_max]]))
    dv_grid = jnp.arange(-dv_max, dv_max + 0.5 * dv_step, dv_step)
    single_params = np.asarray(single.params)
    outs = []
    chunk = min(chunk_size, data.n_stars)
    for begin in range(0, data.n_stars, chunk):
        end = min(begin + chunk, data.n_stars)
        sl = slice(begin, end)
        arrays = [data.flux[sl], data.ivar[sl], single_params[sl]]
        pad = chunk - (end - begin)
        if pad:
            arrays = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in arrays]
        out = _fit_binary_chunk(
            binary,
            *(jnp.asarray(a) for a in arrays),
            templates,
            dv_grid,
            lower,
            upper,
            int(n_starts),
            int(n_iter),
        )
        outs.append(jax.tree.map(lambda a, n=end - begin: np.asarray(a)[:n], out))
    fit = jax.tree.map(lambda *parts: np.concatenate(parts), *outs)
    return _assemble(binary, single_model, single, fit, data, bic_threshold, poor_fit)


def _assemble(
    binary: BinaryModel,
    single_model: NuisanceModel,
    single: Any,
    fit: Any,
    data: SpectralDataset,
    bic_threshold: float,
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
    is_binary = np.isfinite(delta_bic) & (delta_bic > bic_threshold)
    params, cov = fit.params, fit.cov
    unpacked = jax.vmap(binary.unpack)(jnp.asarray(params))
    l1, l2, w, dv, v1 = (np.asarray(a) for a in unpacked)
    j = len(own)
    u_var = cov[:, k + j, k + j]
    # dw/du = ½ σ(u)(1 − σ(u)) = (w − ½)(1 − w)·2
    w_err = np.where(
        binary.flux_ratio is None, 2.0 * (w - 0.5) * (1.0 - w) * np.sqrt(np.maximum(u_var, 0.0)), np.nan
    )
    extra: dict[str, np.ndarray] = {
        "binary": is_binary,
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
        extra[f"{name}_2"] = l2[:, i]
    single_params, single_cov = np.asarray(single.params), np.asarray(single.cov)
    if binary.fit_rv:
        extra["rv"] = single_params[:, k]
        extra["rv_err"] = np.sqrt(np.maximum(single_cov[:, k, k], 0.0))
    label_cov, dof, flags = fit_quality(
        single_cov[:, :k, :k], chi2_s, n_good, k_single, np.asarray(single.converged), poor_fit
    )
    return InferenceResult(
        ids=data.ids,
        label_names=names,
        labels=single_params[:, :k],
        cov=label_cov,
        chi2=chi2_s,
        dof=dof,
        flags=flags,
        extra=extra,
        meta={
            "estimator": "map",
            "binary_model": True,
            "shared": ",".join(names[i] for i in binary.shared),
            "bic_threshold": float(bic_threshold),
        },
    )
