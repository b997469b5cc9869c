r"""Posterior mean of a polynomial-in-labels model (the Cannon): grid or importance sampling.

This module connects a fitted polynomial-in-labels model to the generic tools of
:mod:`starlabel.inference` (priors, :func:`~starlabel.inference.grid_posterior`,
:func:`~starlabel.inference.importance_posterior`). For such models the χ² of a
spectrum is a polynomial in the label vector ``v(x)``,

.. math:: \chi^2(x) = c - 2\, g^\top v(x) + v(x)^\top H\, v(x),
          \quad H = \Theta^\top \Omega \Theta,\ g = \Theta^\top \Omega f,\ c = f^\top \Omega f,

with :math:`\Omega = \mathrm{diag}(1/(\sigma^2 + s^2))`. The statistics ``(c, g, H)``
are formed once per spectrum (one matrix product for a whole chunk); each grid node then
costs O(terms²) instead of O(pixels), which is what makes a few thousand nodes per star
affordable. The temperature is chosen in :mod:`starlabel.models._temperature`; NUTS
draws of the same posterior are in :mod:`starlabel.models.cannon._nuts`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..._internal import x64
from ...data import Flag, InferenceResult, SpectralDataset
from ...inference import (
    AbstractLabelPrior,
    GridPosterior,
    ImportancePosterior,
    grid_posterior,
    importance_posterior,
    resolve_prior,
)
from .._estimators import check_method, check_temperature, map_start
from .._sanity import unusable_widths
from ..base import AbstractFittedModel, AbstractFluxModel
from ._test_step import SpectrumStats, spectrum_stats, theta_pairs

if TYPE_CHECKING:  # the flux model calls this module: its methods are these functions
    from ._flux_model import PolynomialSpectrum

__all__ = [
    "spectrum_statistics",
    "posterior_prior",
    "posterior_mean",
]


@eqx.filter_jit
def _statistics(model: PolynomialSpectrum, flux: Array, ivar: Array, theta: Array | None) -> SpectrumStats:
    if theta is None:
        # Shared coefficients: the Cannon test step's statistics (one GEMM per batch).
        shared = spectrum_stats(flux, ivar, model.theta, theta_pairs(model.theta), model.s2, model.pixel_ok)
        return SpectrumStats(shared.c, shared.g, shared.H, shared.n_good.astype(flux.dtype))
    # Per-star coefficients (shifted/continuum-scaled models of the nuisance fits).
    omega = jax.vmap(model.weights)(ivar)
    H = jnp.einsum("np,npa,npb->nab", omega, theta, theta)
    g = jnp.einsum("np,npa->na", omega * flux, theta)
    return SpectrumStats(
        jnp.sum(omega * flux**2, axis=1), g, H, jnp.sum(omega > 0, axis=1).astype(flux.dtype)
    )


@x64
def spectrum_statistics(
    model: PolynomialSpectrum,
    flux: Any,
    ivar: Any,
    theta: Any = None,
) -> SpectrumStats:
    """χ² statistics of every spectrum (see the module docstring).

    Parameters
    ----------
    model : PolynomialSpectrum
    flux, ivar : array-like, shape (stars, pixels)
    theta : array-like, shape (stars, pixels, terms), optional
        Per-star coefficients replacing ``model.theta`` (e.g. Doppler-shifted and
        continuum-scaled by the nuisance fit).
    """
    flux = jnp.asarray(flux, dtype=jnp.float64)
    ivar = jnp.asarray(ivar, dtype=jnp.float64)
    return _statistics(model, flux, ivar, None if theta is None else jnp.asarray(theta, dtype=jnp.float64))


class LogLikelihood(eqx.Module):
    """Log-likelihood from the statistics (label-independent constants dropped).

    ``dof = None``: Gaussian, ``−χ²/2``. ``dof = ν``: every pixel variance of the star is
    scaled by one unknown factor with an inverse-gamma(ν/2, ν/2) prior, marginalised:
    ``−(ν + n)/2 · ln(1 + χ²/ν)`` with ``n`` usable pixels. Near its maximum this is a
    Gaussian tempered by ``(ν + χ²_min)/(ν + n)`` ≈ the star's own reduced χ², so stars
    the model fits badly get wider posteriors without tempering the rest.
    """

    model: PolynomialSpectrum
    dof: float | None = eqx.field(static=True, default=None)

    def __call__(self, labels: Float[Array, " labels"], stats: tuple[Array, ...]) -> Float[Array, ""]:
        c, g, H, n_good = stats
        v = self.model.label_vector(labels)
        chi2 = c - 2.0 * g @ v + v @ H @ v
        if self.dof is None:
            return -0.5 * chi2
        return -0.5 * (self.dof + n_good) * jnp.log1p(jnp.maximum(chi2, 0.0) / self.dof)


def posterior_prior(model: AbstractFluxModel, prior: Any) -> AbstractLabelPrior:
    """Resolve ``prior`` ("none", "gaussian", "kde", dict, object) against a flux model.

    ``"gaussian"`` and ``"kde"`` are fitted to the training labels the model keeps.
    """
    return resolve_prior(prior, model.label_names, np.asarray(model.train_labels))


def _box(
    model: PolynomialSpectrum, prior: AbstractLabelPrior, bounds: Mapping[str, Sequence[float | None]] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Integration box: prior support ∩ safety box, or the training range ± 25% when flat."""
    safe_lo, safe_hi = model.safety_box()
    support = prior.support()
    if support is None:
        box = np.asarray(model.box)
        width = box[1] - box[0]
        lower, upper = box[0] - 0.25 * width, box[1] + 0.25 * width
    else:
        lower, upper = np.maximum(support[0], safe_lo), np.minimum(support[1], safe_hi)
    lower, upper = lower.copy(), upper.copy()
    for name, pair in (bounds or {}).items():
        if name not in model.label_names:
            raise ValueError(f"`bounds` names unknown label {name!r}; labels are {list(model.label_names)}.")
        low, high = pair
        k = model.label_names.index(name)
        lower[k] = lower[k] if low is None else float(low)
        upper[k] = upper[k] if high is None else float(high)
    if np.any(upper <= lower):
        raise ValueError(f"empty integration box: lower={lower}, upper={upper}; check `bounds`.")
    return lower, upper


def check_data(model: PolynomialSpectrum, data: SpectralDataset) -> None:
    if not isinstance(data, SpectralDataset):
        raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
    if data.n_pixels != model.n_pixels:
        raise ValueError(
            f"`data` has {data.n_pixels} pixels but the model has {model.n_pixels}; resample the"
            " spectra onto the model's grid."
        )


@x64
def chi2_at(model: PolynomialSpectrum, stats: SpectrumStats, labels: Array) -> Array:
    v = jax.vmap(model.label_vector)(labels)
    return stats.c - 2.0 * jnp.sum(stats.g * v, axis=1) + jnp.einsum("na,nab,nb->n", v, stats.H, v)


@x64
def posterior_mean(
    model: PolynomialSpectrum,
    data: SpectralDataset,
    *,
    fitted: AbstractFittedModel | None = None,
    prior: Any = "none",
    temperature: float = 1.0,
    bounds: Mapping[str, Sequence[float | None]] | None = None,
    n_nodes: int = 2048,
    n_zoom_nodes: int = 256,
    n_refine: int = 3,
    min_mode_mass: float = 0.05,
    chunk_size: int = 256,
    poor_fit: float = 3.0,
    theta: Any = None,
    likelihood: str = "gaussian",
    dof: float = 5.0,
    method: str = "auto",
    start: Any = None,
    n_samples: int = 1024,
    min_ess: float = 50.0,
) -> InferenceResult:
    r"""Posterior mean and covariance of each star's labels (grid or importance sampling).

    Two integrators of :math:`p(d|\ell)^{1/T} p(\ell)`, chosen by ``method``:

    * ``"grid"``: nested quadrature over the prior's box, zoomed ``n_refine`` times
      onto the dominant mode, with separated secondary modes detected
      (:func:`starlabel.inference.grid_posterior`);
    * ``"importance"``: Newton steps to the mode, then importance sampling from a
      Student-t mixture built on the Laplace covariance
      (:func:`starlabel.inference.importance_posterior`); scales to any label count.

    ``"auto"`` takes the grid up to ``GRID_MAX_LABELS`` (3) labels and importance
    sampling above: with a few thousand nodes a grid has ≥ 12 nodes per axis in 3
    dimensions but only 4 in 5, where its finest stage collapses onto one node for
    narrow (many-pixel) posteriors and the widths come out near zero (see
    ``docs/test_step.md``).

    Parameters
    ----------
    model : PolynomialSpectrum
        A polynomial-in-labels flux model (``FittedCannon.flux_model()``).
    data : SpectralDataset
        Spectra on the model's pixel grid.
    fitted : AbstractFittedModel, optional
        The fitted model ``model`` comes from: its own MAP starts the importance sampler.
    prior : "none", "gaussian", "kde", dict or AbstractLabelPrior
        Label prior; "gaussian"/"kde" are fitted to the model's training labels.
    temperature : float
        Likelihood temperature T ≥ 1 (choose it with :func:`select_temperature`).
    bounds : mapping, optional
        ``{label: (low, high)}`` overriding the integration box (label units).
    n_nodes, n_zoom_nodes, n_refine, min_mode_mass, chunk_size
        Passed to :func:`~starlabel.inference.grid_posterior`.
    poor_fit : float
        Reduced χ² (untempered, at the mean) above which POOR_FIT is set.
    theta : array-like, shape (stars, pixels, terms), optional
        Per-star coefficients (Doppler-shifted/continuum-scaled model from the nuisance
        fit); default the model's own.
    likelihood : {"gaussian", "student"}
        ``"student"`` marginalises one unknown noise scale per star (inverse-gamma prior
        with ``dof`` degrees of freedom): a per-star tempering by its own reduced χ².
    dof : float
        ν of the ``"student"`` likelihood (→ ∞ recovers the Gaussian).
    method : {"auto", "grid", "importance"}
        The integrator (see above).
    start : array-like, shape (stars, labels), optional
        Extra per-star starting point for the importance sampler's mode search; default
        ``fitted``'s own MAP (``map_start``) when ``theta`` is not given. The
        training labels are always tried too.
    n_samples : int
        Importance draws per star.
    min_ess : float
        Effective sample size below which an importance-sampled star is flagged
        NOT_CONVERGED (the grid uses 5 effective nodes).

    Returns
    -------
    InferenceResult
        ``labels`` = posterior mean, ``cov`` = posterior covariance, ``chi2`` at the mean
        (untempered, with s²), ``dof`` = usable pixels − labels, flags (MULTIMODAL,
        NOT_CONVERGED when the finest grid holds < 5 effective nodes or the importance
        weights < ``min_ess`` effective draws, BAD_COVARIANCE for non-finite or
        non-positive widths, UNCONSTRAINED for a width beyond the training label range,
        POOR_FIT, FEW_PIXELS), and extra columns ``<label>_best`` (grid best node, or the
        mode), ``mode2_<label>``, ``mode2_mass`` (NaN/0 for importance sampling, which
        does not look for other modes), ``n_eff`` (effective nodes or draws),
        ``log_evidence``; ``meta["method"]`` names the integrator.

    Raises
    ------
    ValueError
        On data of the wrong shape, a bad temperature or prior name, or empty bounds.
    """
    check_data(model, data)
    temperature = check_temperature(temperature)
    if likelihood not in ("gaussian", "student"):
        raise ValueError(f"unknown likelihood {likelihood!r}; choose 'gaussian' or 'student'.")
    if likelihood == "student" and not dof > 0:
        raise ValueError(f"`dof` must be > 0 for the Student likelihood, got {dof}.")
    method = check_method(method, model.n_labels)
    if method == "importance" and start is None and theta is None:
        start = map_start(fitted, data)
    label_prior = posterior_prior(model, prior)
    lower, upper = _box(model, label_prior, bounds)
    stats = spectrum_statistics(model, data.flux, data.ivar, theta)
    log_likelihood = LogLikelihood(model, float(dof) if likelihood == "student" else None)
    args = (stats.c, stats.g, stats.H, stats.n_good)
    if method == "grid":
        post = grid_posterior(
            log_likelihood,
            label_prior,
            args,
            lower=lower,
            upper=upper,
            temperature=temperature,
            n_nodes=n_nodes,
            n_zoom_nodes=n_zoom_nodes,
            n_refine=n_refine,
            min_mode_mass=min_mode_mass,
            chunk_size=chunk_size,
        )
        min_eff = 5.0
    else:
        sampled = importance_posterior(
            log_likelihood,
            label_prior,
            args,
            lower=lower,
            upper=upper,
            candidates=_candidates(model),
            start=start,
            scale=np.asarray(model.scale),
            temperature=temperature,
            n_samples=n_samples,
            chunk_size=chunk_size,
        )
        post = _as_grid_posterior(sampled)
        min_eff = float(min_ess)
    name = likelihood if likelihood == "gaussian" else f"student(dof={float(dof):g})"
    result = _assemble(model, data, stats, post, label_prior, temperature, poor_fit, name, min_eff)
    return dataclasses.replace(result, meta={**result.meta, "method": method})


def _candidates(model: PolynomialSpectrum, count: int = 256) -> np.ndarray:
    """Starting points for the mode search: an even subset of the kept training labels."""
    train = np.asarray(model.train_labels)
    train = train[np.all(np.isfinite(train), axis=1)]
    if len(train) < 4:
        # Too few kept labels: corners and centre of the training box instead.
        box = np.asarray(model.box)
        mid = 0.5 * (box[0] + box[1])
        return np.concatenate([train, mid[None], box, 0.5 * (mid[None] + box)])
    return train[np.linspace(0, len(train) - 1, min(count, len(train))).astype(int)]


def _as_grid_posterior(post: ImportancePosterior) -> GridPosterior:
    """Importance-sampling summaries in the grid's layout (no secondary-mode search)."""
    n, k = post.mean.shape
    return GridPosterior(
        post.mean,
        post.cov,
        post.mode,
        post.log_evidence,
        post.ess,
        jnp.full((n, k), jnp.nan),
        jnp.zeros(n),
        jnp.zeros(n, dtype=bool),
    )


def _assemble(
    model: PolynomialSpectrum,
    data: SpectralDataset,
    stats: SpectrumStats,
    post: GridPosterior,
    prior: AbstractLabelPrior,
    temperature: float,
    poor_fit: float,
    likelihood: str,
    min_eff: float = 5.0,
) -> InferenceResult:
    mean = np.asarray(post.mean)
    cov = np.asarray(post.cov)
    chi2 = np.asarray(chi2_at(model, stats, jnp.asarray(mean)))
    n_good = np.asarray(stats.n_good)
    dof = n_good - model.n_labels
    n_eff = np.asarray(post.n_eff)
    unusable = unusable_widths(mean, cov, np.asarray(model.box))
    bad_cov = unusable.bad_covariance
    with np.errstate(divide="ignore", invalid="ignore"):
        rchi2 = np.where(dof > 0, chi2 / dof, np.nan)
    flags = np.zeros(len(mean), dtype=np.int64)
    flags |= np.where(np.asarray(post.multimodal), int(Flag.MULTIMODAL), 0)
    flags |= np.where(~(n_eff >= min_eff), int(Flag.NOT_CONVERGED), 0)
    flags |= np.where(bad_cov, int(Flag.BAD_COVARIANCE), 0)
    flags |= np.where(unusable.wide, int(Flag.UNCONSTRAINED), 0)
    flags |= np.where(rchi2 > poor_fit, int(Flag.POOR_FIT), 0)
    flags |= np.where(n_good <= model.n_terms, int(Flag.FEW_PIXELS), 0)
    box = np.asarray(model.box)
    flags |= np.where(np.any((mean < box[0]) | (mean > box[1]), axis=1), int(Flag.OUTSIDE_TRAINING), 0)
    extra: dict[str, np.ndarray] = {}
    best, mode2 = np.asarray(post.best), np.asarray(post.mode2)
    for k, name in enumerate(model.label_names):
        extra[f"{name}_best"] = best[:, k]
    for k, name in enumerate(model.label_names):
        extra[f"mode2_{name}"] = mode2[:, k]
    extra["mode2_mass"] = np.asarray(post.mode2_mass)
    extra["n_eff"] = n_eff
    extra["log_evidence"] = np.asarray(post.log_evidence)
    return InferenceResult(
        ids=data.ids,
        label_names=model.label_names,
        labels=mean,
        cov=np.where(bad_cov[:, None, None], np.nan, cov),
        chi2=chi2,
        dof=dof.astype(float),
        flags=flags,
        extra=extra,
        meta={
            "estimator": "mean",
            "prior": prior.kind,
            "temperature": float(temperature),
            "likelihood": likelihood,
        },
    )
