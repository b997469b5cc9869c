r"""Posterior-mean test step: label priors, grid integration, tempering chosen by cross-validation.

This module connects a fitted polynomial-in-labels model (the Cannon) to the generic
tools of :mod:`starlabel.inference` (priors, :func:`~starlabel.inference.grid_posterior`,
NUTS). For such models the χ² of a spectrum is a polynomial in the label vector
``v(x)``,

.. math:: \chi^2(x) = c - 2\, g^\top v(x) + v(x)^\top H\, v(x),
          \quad H = \Theta^\top \Omega \Theta,\ g = \Theta^\top \Omega f,\ c = f^\top \Omega f,

with :math:`\Omega = \mathrm{diag}(1/(\sigma^2 + s^2))`. The statistics ``(c, g, H)``
are formed once per spectrum (one matrix product for a whole chunk); each grid node then
costs O(terms²) instead of O(pixels), which is what makes a few thousand nodes per star
affordable.

Temperature: the tempered posterior :math:`p(d|\ell)^{1/T} p(\ell)` widens the
likelihood to absorb model misspecification. :func:`select_temperature` picks T by
k-fold cross-validation *inside the training set*: refit on k−1 folds, score the held-out
fold's known labels under each T's Gaussian posterior summary, keep the best mean log
predictive density. Test data are never used.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._internal import fold_indices, x64
from ..data import Flag, InferenceResult, SpectralDataset
from ..inference._grid import GridPosterior, grid_posterior
from ..inference._importance import ImportancePosterior, importance_posterior
from ..inference._priors import AbstractLabelPrior, resolve_prior
from ._accuracy_guard import guard_temperature
from ._calibration import ErrorCalibration, fit_error_calibration
from ._sanity import unusable_widths
from .base import AbstractFittedFluxModel
from .cannon._flux_model import PolynomialSpectrum
from .cannon._test_step import spectrum_stats, theta_pairs

__all__ = [
    "PolynomialSpectrum",
    "polynomial_spectrum",
    "spectrum_statistics",
    "posterior_prior",
    "infer_posterior_mean",
    "infer_nuts",
    "TemperatureSelection",
    "select_temperature",
    "rescale_uncertainty",
    "calibration_options",
    "calibration_from_options",
    "map_start",
    "ESTIMATORS",
    "GRID_MAX_LABELS",
    "POSTERIOR_METHODS",
    "infer_labels",
]


# --------------------------------------------------------------------------- model view
def polynomial_spectrum(fitted: Any) -> PolynomialSpectrum:
    """The :class:`PolynomialSpectrum` of a fitted Cannon (or the spectrum itself).

    Raises
    ------
    TypeError
        If ``fitted`` has no polynomial flux model: the grid test steps need a model
        linear in its coefficients.
    """
    if isinstance(fitted, PolynomialSpectrum):
        return fitted
    if isinstance(fitted, AbstractFittedFluxModel):
        model = fitted.flux_model()
        if isinstance(model, PolynomialSpectrum):
            return model
    raise TypeError(
        f"{type(fitted).__name__} is not a polynomial-in-labels model: the posterior-mean,"
        " grid test steps need one such as a FittedCannon (or a PolynomialSpectrum)."
    )


class SpectrumStatistics(eqx.Module):
    """Per-star χ² statistics ``(c, g, H)`` and the number of usable pixels."""

    c: Float[Array, " stars"]
    g: Float[Array, "stars terms"]
    H: Float[Array, "stars terms terms"]
    n_good: Float[Array, " stars"]


@eqx.filter_jit
def _statistics(
    model: PolynomialSpectrum, flux: Array, ivar: Array, theta: Array | None
) -> SpectrumStatistics:
    if theta is None:
        # Shared coefficients: the Cannon test step's statistics (one GEMM per batch).
        shared = spectrum_stats(flux, ivar, model.theta, theta_pairs(model.theta), model.s2, model.pixel_ok)
        return SpectrumStatistics(shared.c, shared.g, shared.H, shared.n_good.astype(flux.dtype))
    # Per-star coefficients (shifted/continuum-scaled models of the nuisance fits).
    omega = jax.vmap(model.weights)(ivar)
    H = jnp.einsum("np,npa,npb->nab", omega, theta, theta)
    g = jnp.einsum("np,npa->na", omega * flux, theta)
    return SpectrumStatistics(
        jnp.sum(omega * flux**2, axis=1), g, H, jnp.sum(omega > 0, axis=1).astype(flux.dtype)
    )


@x64
def spectrum_statistics(
    model: PolynomialSpectrum,
    flux: Any,
    ivar: Any,
    theta: Any = None,
) -> SpectrumStatistics:
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


class _LogLikelihood(eqx.Module):
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


def posterior_prior(fitted: Any, prior: Any) -> AbstractLabelPrior:
    """Resolve ``prior`` ("none", "gaussian", "kde", dict, object) against a fitted model.

    ``"gaussian"`` and ``"kde"`` are fitted to the training labels the model keeps.
    """
    model = polynomial_spectrum(fitted)
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


def _check_data(model: PolynomialSpectrum, data: SpectralDataset) -> None:
    if not isinstance(data, SpectralDataset):
        raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
    if data.n_pixels != model.n_pixels:
        raise ValueError(
            f"`data` has {data.n_pixels} pixels but the model has {model.n_pixels}; resample the"
            " spectra onto the model's grid."
        )


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, str):
        raise ValueError(
            f"`temperature`={temperature!r}: pass a number here; 'auto' means choosing T by"
            " cross-validation on the training set with select_temperature(model, train)."
        )
    value = float(temperature)
    if not value > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    return value


@x64
def _chi2_at(model: PolynomialSpectrum, stats: SpectrumStatistics, labels: Array) -> Array:
    v = jax.vmap(model.label_vector)(labels)
    return stats.c - 2.0 * jnp.sum(stats.g * v, axis=1) + jnp.einsum("na,nab,nb->n", v, stats.H, v)


@x64
def infer_posterior_mean(
    fitted: Any,
    data: SpectralDataset,
    *,
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

    ``"auto"`` takes the grid up to :data:`GRID_MAX_LABELS` labels and importance
    sampling above: with a few thousand nodes a grid has ≥ 12 nodes per axis in 3
    dimensions but only 4 in 5, where its finest stage collapses onto one node for
    narrow (many-pixel) posteriors and the widths come out near zero (see
    ``docs/test_step.md``).

    Parameters
    ----------
    fitted : FittedCannon or PolynomialSpectrum
        A trained polynomial-in-labels model.
    data : SpectralDataset
        Spectra on the model's pixel grid.
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
        the model's own MAP (:func:`map_start`) when ``theta`` is not given. The
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
    model = polynomial_spectrum(fitted)
    _check_data(model, data)
    temperature = _check_temperature(temperature)
    if likelihood not in ("gaussian", "student"):
        raise ValueError(f"unknown likelihood {likelihood!r}; choose 'gaussian' or 'student'.")
    if likelihood == "student" and not dof > 0:
        raise ValueError(f"`dof` must be > 0 for the Student likelihood, got {dof}.")
    method = _check_method(method, model.n_labels)
    if method == "importance" and start is None and theta is None:
        start = map_start(fitted, data)
    label_prior = posterior_prior(model, prior)
    lower, upper = _box(model, label_prior, bounds)
    stats = spectrum_statistics(model, data.flux, data.ivar, theta)
    log_likelihood = _LogLikelihood(model, float(dof) if likelihood == "student" else None)
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


GRID_MAX_LABELS: int = 3
"""Largest label count for which ``method="auto"`` integrates on the grid."""

POSTERIOR_METHODS: tuple[str, ...] = ("auto", "grid", "importance")
"""Integrators :func:`infer_posterior_mean` accepts."""


def _check_method(method: str, n_labels: int) -> str:
    if method not in POSTERIOR_METHODS:
        raise ValueError(f"unknown posterior method {method!r}; choose one of {list(POSTERIOR_METHODS)}.")
    if method == "auto":
        return "grid" if n_labels <= GRID_MAX_LABELS else "importance"
    return method


def map_start(fitted: Any, data: SpectralDataset) -> np.ndarray | None:
    """The model's own (multi-start) MAP labels, where it has an ``infer``; else None.

    The importance sampler's Newton steps start from the better of these and the
    training labels: on few pixels the χ² surface has local minima that a start at the
    nearest training label can fall into, which the MAP's multi-start avoids.
    """
    infer = getattr(fitted, "infer", None)
    if infer is None:
        return None
    if "calibrate" in inspect.signature(infer).parameters:
        return np.asarray(infer(data, calibrate=False).labels)  # only the labels are used
    return np.asarray(infer(data).labels)


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
    stats: SpectrumStatistics,
    post: GridPosterior,
    prior: AbstractLabelPrior,
    temperature: float,
    poor_fit: float,
    likelihood: str,
    min_eff: float = 5.0,
) -> InferenceResult:
    mean = np.asarray(post.mean)
    cov = np.asarray(post.cov)
    chi2 = np.asarray(_chi2_at(model, stats, jnp.asarray(mean)))
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


# --------------------------------------------------------------------------- temperature
@dataclass(frozen=True)
class TemperatureSelection:
    """Outcome of :func:`select_temperature`.

    Attributes
    ----------
    temperature : float
        The chosen T (best held-out ``score``).
    temperatures : tuple of float
        Candidates tried.
    score : str
        The criterion that chose: ``"calibrated"``, ``"crps"`` or ``"log"``.
    crps : ndarray, shape (temperatures,)
        Mean over held-out training stars and labels of the continuous ranked
        probability score of ``N(mean, σ²)`` at the known label, in units of that
        label's training spread (lower is better).
    log_score : ndarray, shape (temperatures,)
        Mean over held-out training stars of ``log N(ℓ_true | mean, cov)`` (higher is better).
    rmse : ndarray, shape (temperatures, labels)
        Held-out RMSE of the posterior mean per label.
    z_std : ndarray, shape (temperatures, labels)
        Standard deviation of ``(mean − ℓ_true)/σ`` per label.
    label_names : tuple of str
    width_scale : ndarray, shape (labels,)
        ``z_std`` at the chosen temperature: the factor by which the posterior widths
        must grow for the held-out training stars' z to spread as N(0, 1). Apply it
        with :func:`rescale_uncertainty` (``infer_labels(temperature="auto")`` does).
    usable : ndarray, shape (temperatures,)
        Share of held-out training stars whose posterior entered the scores (finite
        label and width, not flagged BAD_COVARIANCE, nor NOT_CONVERGED when importance
        sampled).
    calibration : ErrorCalibration
        ``σ_total² = (a σ)² + σ_sys² (χ²_ν/χ̃²_ν)^γ`` fitted to the held-out
        residuals and posterior widths at the chosen T
        (:func:`~starlabel.models.fit_error_calibration`); what
        ``infer_labels(temperature="auto")`` applies. Unlike ``width_scale`` it also
        covers the model's misfit, which does not shrink with S/N.
    calibrated_crps : ndarray, shape (temperatures,)
        ``crps`` with each star's σ replaced by its calibrated total under the
        calibration fitted at that T (the default criterion).
    accuracy_refused : tuple of float
        Candidates the accuracy guard refused: held-out RMSE more than 1 % above the
        best candidate's for some label (:mod:`starlabel.models._accuracy_guard`).

    All per-temperature arrays follow ``temperatures``, which includes any candidates
    added while widening the range (see :func:`select_temperature`).
    """

    temperature: float
    temperatures: tuple[float, ...]
    score: str
    crps: np.ndarray
    log_score: np.ndarray
    rmse: np.ndarray
    z_std: np.ndarray
    label_names: tuple[str, ...] = field(default=())
    width_scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    usable: np.ndarray = field(default_factory=lambda: np.ones(0))
    calibration: ErrorCalibration | None = None
    calibrated_crps: np.ndarray = field(default_factory=lambda: np.ones(0))
    accuracy_refused: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (store it with the model)."""
        return {
            "temperature": self.temperature,
            "temperatures": list(self.temperatures),
            "score": self.score,
            "crps": self.crps.tolist(),
            "log_score": self.log_score.tolist(),
            "rmse": self.rmse.tolist(),
            "z_std": self.z_std.tolist(),
            "label_names": list(self.label_names),
            "width_scale": self.width_scale.tolist(),
            "usable": self.usable.tolist(),
            "calibrated_crps": self.calibrated_crps.tolist(),
            "accuracy_refused": list(self.accuracy_refused),
            "calibration": None if self.calibration is None else calibration_options(self.calibration),
        }


def _gaussian_log_score(mean: np.ndarray, cov: np.ndarray | None, truth: np.ndarray) -> np.ndarray:
    if cov is None:  # no covariance: no score, as for one that is not positive definite
        return np.full(len(mean), np.nan)
    diff = truth - mean
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return np.full(len(mean), np.nan)
    z = np.linalg.solve(chol, diff[..., None])[..., 0]
    log_det = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
    return -0.5 * (np.sum(z**2, axis=1) + log_det + mean.shape[1] * np.log(2 * np.pi))


def _gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of N(mean, std²) at ``truth`` (Gneiting & Raftery 2007, eq. 21), elementwise."""
    from scipy.stats import norm

    z = (truth - mean) / std
    return std * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / np.sqrt(np.pi))


def _check_width_scale(width_scale: Any, label_names: Sequence[str]) -> np.ndarray:
    scale = np.asarray(width_scale, dtype=float)
    if scale.ndim == 0:
        scale = np.full(len(label_names), float(scale))
    if scale.shape != (len(label_names),) or not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(
            f"`width_scale` must be a positive number or one per label {list(label_names)},"
            f" got {width_scale!r}."
        )
    return scale


def rescale_uncertainty(result: InferenceResult, width_scale: Any) -> InferenceResult:
    """Multiply every star's label uncertainties by a per-label factor.

    The covariance becomes ``cov · (k kᵀ)``, so ``<label>_err`` grows by ``k`` and the
    correlations are kept; labels, χ² and flags are unchanged. Use the factor that
    cross-validation on the training set found (:attr:`TemperatureSelection.width_scale`).

    Parameters
    ----------
    result : InferenceResult
    width_scale : float or array, shape (labels,)
        Positive factors in ``result.label_names`` order.

    Returns
    -------
    InferenceResult
        With ``meta["width_scale"]`` recording the factors.
    """
    scale = _check_width_scale(width_scale, result.label_names)
    return dataclasses.replace(
        result,
        cov=result.cov * (scale[:, None] * scale[None, :]),
        meta={**result.meta, "width_scale": scale.tolist()},
    )


def select_temperature(
    model: Any,
    train: SpectralDataset,
    *,
    prior: Any = "kde",
    temperatures: Sequence[float] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
    n_folds: int = 5,
    seed: int = 0,
    score: str = "calibrated",
    max_temperature: float = 1024.0,
    min_usable: float = 0.5,
    **grid_options: Any,
) -> TemperatureSelection:
    """Choose the likelihood temperature by k-fold cross-validation on the training set.

    For each fold, ``model`` is refitted on the other folds, the prior is rebuilt from
    their labels, and the held-out spectra are inferred with :func:`infer_posterior_mean`
    at every candidate T. The criteria are proper scoring rules of the held-out stars'
    known labels under the Gaussian summary (mean, σ) of their posterior, so they
    reward accurate means *and* honest widths. The raw ones differ in the tails: the
    log score charges a star z²/2, so a few confidently wrong stars (labels outside the
    training bulk) push T up until every width covers them; the CRPS charges ≈ σ|z|,
    so it is decided by the bulk. On the 500 shared giants the CRPS picks T ≈ 4
    (lowest RMSE), the log score T ≥ 8 (z spread closest to 1, RMSE 3–5 points
    worse); see ``docs/test_step.md``.

    Width and location are separated. At every T the held-out residuals and widths
    are fitted by the error calibration ``σ_total² = (a σ)² + σ_sys² (χ²_ν/χ̃²_ν)^γ``
    (:func:`~starlabel.models.fit_error_calibration`), and the default criterion,
    ``"calibrated"``, is the CRPS under those calibrated widths: T then only has to
    place the posterior mean well (how much the prior counts), not also make its raw
    width right. With thousands of pixels and a model that misfits, the raw CRPS
    chooses T ≈ z² ≈ 100 for width alone, which lets the prior pull the labels; the
    calibrated one stays near 1. The chosen T's calibration is returned as
    ``calibration`` and its plain z spread as ``width_scale``.

    Nothing untrustworthy is returned silently: held-out stars without a usable
    posterior are left out of the scores (and counted in ``usable``); when the best T
    is at the upper end of the candidates the range is widened (doubling, up to
    ``max_temperature``), at the lower end and above 1 halved down to 1; and the
    failures listed under Raises are errors.

    Parameters
    ----------
    model : AbstractSpectralModel
        Unfitted configuration (e.g. ``Cannon(label_names, order=2)``); refitted per fold.
    train : SpectralDataset
        Training spectra with labels ``model.label_names`` (the only data used).
    prior : str or dict
        Prior choice, rebuilt per fold from that fold's training labels.
    temperatures : sequence of float
        Candidates (> 0).
    n_folds : int
        Folds (≥ 2).
    seed : int
        Seed of the fold assignment.
    score : {"calibrated", "crps", "log"}
        The criterion (see above); ``"calibrated"`` (default) is the CRPS after the
        error calibration fitted at each T.
    max_temperature : float
        When the best candidate is the largest, the range is widened by doubling up to
        this; when it is the smallest and above 1, by halving down to 1.
    min_usable : float
        Share of held-out stars that must get a usable posterior (finite, converged)
        for a temperature to be scored; stars that do not are left out of the scores.
    **grid_options
        Passed to :func:`infer_posterior_mean` (e.g. ``n_nodes``, ``likelihood``,
        ``method``).

    Returns
    -------
    TemperatureSelection

    References
    ----------
    Gneiting & Raftery (2007), JASA 102, 359 (proper scoring rules, CRPS).

    Raises
    ------
    ValueError
        On fewer than two folds, a non-positive candidate, or a training set without the
        model's labels; and instead of returning nonsense: when no temperature gives
        enough usable held-out posteriors, when the best temperature is still the
        largest at ``max_temperature``, or when the width factor of a label is not
        finite or outside [1/:data:`MAX_WIDTH_SCALE`, :data:`MAX_WIDTH_SCALE`]. Each
        message names the cause and what to do.
    """
    if score not in ("calibrated", "crps", "log"):
        raise ValueError(f"unknown score {score!r}; choose 'calibrated', 'crps' or 'log'.")
    temps = tuple(float(t) for t in temperatures)
    if not temps or any(not t > 0 for t in temps):
        raise ValueError(f"`temperatures` must be positive numbers, got {temperatures!r}.")
    if not (isinstance(n_folds, int) and 2 <= n_folds <= train.n_stars):
        raise ValueError(f"`n_folds` must be an integer in [2, {train.n_stars}], got {n_folds!r}.")
    names = tuple(model.label_names)
    if train.labels is None or any(n not in train.label_names for n in names):
        raise ValueError(f"`train` must carry the labels {list(names)} for cross-validation.")
    truth_all = train.select_labels(names).labels
    if truth_all is None:  # checked above; this tells the type checker
        raise ValueError(f"`train` must carry the labels {list(names)} for cross-validation.")
    folds = fold_indices(train.n_stars, n_folds, seed)
    sampled = _check_method(grid_options.get("method", "auto"), len(names)) == "importance"
    fits = []
    for held in folds:
        rest = np.setdiff1d(np.arange(train.n_stars), held)
        fold_prior = resolve_prior(prior, names, truth_all[rest]) if isinstance(prior, str) else prior
        fitted = _fit_uncalibrated(model, train[rest])
        # The MAP start does not depend on T: find it once per fold.
        start = map_start(fitted, train[held]) if sampled else None
        fits.append((held, fitted, fold_prior, start))
    finite = np.all(np.isfinite(truth_all), axis=1)
    spread = np.std(truth_all[finite], axis=0) if np.any(finite) else np.full(len(names), np.nan)
    scored: dict[float, _HeldOutScores] = {}

    def evaluate(temperature: float) -> _HeldOutScores:
        if temperature not in scored:
            results = [
                (
                    held,
                    infer_posterior_mean(
                        fitted, train[held], prior=p, temperature=temperature, start=start, **grid_options
                    ),
                )
                for held, fitted, p, start in fits
            ]
            scored[temperature] = _held_out_scores(
                results, truth_all, finite, spread, min_usable, names, n_folds
            )
        return scored[temperature]

    def criterion(temperature: float) -> float:
        out = evaluate(temperature)
        return {"calibrated": out.calibrated_crps, "crps": out.crps, "log": -out.log_score}[score]

    temps = sorted(set(temps))
    best = _best_temperature(temps, criterion, max_temperature)
    temps = sorted(scored)
    table = [scored[t] for t in temps]
    # The score may prefer a T whose means are less accurate (the prior pulls harder):
    # refuse candidates more than 1 % worse in held-out RMSE than the best candidate.
    if np.isfinite(criterion(best)):
        guard = guard_temperature(temps, [criterion(t) for t in temps], np.array([t.rmse for t in table]))
        best, refused = guard.temperature, guard.refused
    else:
        refused = ()
    chosen = scored[best]
    _check_width_scale_cv(chosen, best, names, temps, table, train.n_stars)
    calibration = _posterior_calibration(chosen, best)
    return TemperatureSelection(
        best,
        tuple(temps),
        score,
        np.array([t.crps for t in table]),
        np.array([t.log_score for t in table]),
        np.array([t.rmse for t in table]),
        np.array([t.z_std for t in table]),
        names,
        width_scale=chosen.z_std,
        usable=np.array([t.usable for t in table]),
        calibration=calibration,
        calibrated_crps=np.array([t.calibrated_crps for t in table]),
        accuracy_refused=refused,
    )


def _fit_uncalibrated(model: Any, data: SpectralDataset) -> Any:
    """``model.fit(data)`` without the default-test-step error calibration (not used here)."""
    if "calibrate" in inspect.signature(model.fit).parameters:
        return model.fit(data, calibrate=False)
    return model.fit(data)


class _HeldOutScores(NamedTuple):
    """Cross-validation scores of one temperature over the held-out training stars."""

    crps: float
    log_score: float
    rmse: np.ndarray
    z_std: np.ndarray
    usable: float
    """Share of held-out stars with a finite label, a usable posterior and a score."""
    residuals: np.ndarray
    """(stars, labels) posterior mean − training label; NaN where not usable."""
    errors: np.ndarray
    """(stars, labels) posterior σ."""
    rchi2: np.ndarray
    """(stars,) reduced χ² at the posterior mean."""
    calibrated_crps: float
    """``crps`` with the widths replaced by their calibrated totals (``calibration``)."""
    calibration: ErrorCalibration | None
    """(a, σ_sys, γ) fitted to these held-out residuals; None when the fit failed."""
    calibration_error: str
    """Why the calibration fit failed (empty when it did not)."""


_UNUSABLE = int(Flag.NOT_CONVERGED | Flag.BAD_COVARIANCE)


def _held_out_scores(
    results: list[tuple[np.ndarray, InferenceResult]],
    truth: np.ndarray,
    finite: np.ndarray,
    spread: np.ndarray,
    min_usable: float,
    names: tuple[str, ...],
    n_folds: int,
) -> _HeldOutScores:
    """Scores over stars whose posterior is usable; NaN scores when too few are."""
    n, k = truth.shape
    means, stds = np.full((n, k), np.nan), np.full((n, k), np.nan)
    log_scores, ok, rchi2 = np.full(n, np.nan), np.zeros(n, dtype=bool), np.full(n, np.nan)
    for held, result in results:
        means[held], stds[held], rchi2[held] = result.labels, result.label_err, result.reduced_chi2
        log_scores[held] = _gaussian_log_score(result.labels, result.cov, truth[held])
        # A grid quadrature is exact with few effective nodes (its n_eff flag is a hint,
        # not a failure); importance weights with few effective draws are a failure.
        unusable = _UNUSABLE if result.meta.get("method") == "importance" else int(Flag.BAD_COVARIANCE)
        ok[held] = (result.flags & unusable) == 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = (means - truth) / stds
        ok &= finite & np.all(np.isfinite(z), axis=1) & np.isfinite(log_scores)
        crps = _gaussian_crps(means, stds, truth) / spread[None, :]
    usable = float(np.mean(ok))
    residuals = np.where(ok[:, None], means - truth, np.nan)
    if usable < min_usable or not np.any(ok):
        nan_k = np.full(k, np.nan)
        why = f"only {usable:.0%} of the held-out stars have a usable posterior"
        return _HeldOutScores(np.nan, np.nan, nan_k, nan_k, usable, residuals, stds, rchi2, np.nan, None, why)
    rmse = np.sqrt(np.mean((means[ok] - truth[ok]) ** 2, axis=0))
    calibration, why, calibrated = None, "", np.nan
    try:
        calibration = fit_error_calibration(residuals, stds, names, rchi2=rchi2, n_folds=n_folds)
    except ValueError as error:
        why = str(error)
    if calibration is not None:
        total = np.sqrt(
            (np.asarray(calibration.scale)[None, :] * stds) ** 2 + calibration.floor_variance(rchi2)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            calibrated_crps = _gaussian_crps(means, total, truth) / spread[None, :]
        calibrated = float(np.mean(calibrated_crps[ok]))
    return _HeldOutScores(
        float(np.mean(crps[ok])),
        float(np.mean(log_scores[ok])),
        rmse,
        np.std(z[ok], axis=0),
        usable,
        residuals,
        stds,
        rchi2,
        calibrated,
        calibration,
        why,
    )


def _best_temperature(temps: list[float], criterion: Any, max_temperature: float) -> float:
    """Minimise ``criterion`` over ``temps``, widening the range while the best is at its edge.

    Above: double the largest candidate up to ``max_temperature``. Below: halve the
    smallest down to T = 1 (the untempered likelihood, the natural lower end).
    """
    values = {t: criterion(t) for t in temps}
    while True:
        usable = {t: v for t, v in values.items() if np.isfinite(v)}
        if not usable:
            return min(values)  # the caller reports the failure with the table
        best = min(usable, key=lambda t: usable[t])
        if len(values) == 1:
            return best
        if best == max(values) and best < max_temperature:
            nxt = min(2.0 * best, max_temperature)
        elif best == min(values) and best > 1.0:
            nxt = max(0.5 * best, 1.0)
        else:
            return best
        values[nxt] = criterion(nxt)


MAX_WIDTH_SCALE: float = 20.0
"""Largest width factor :func:`select_temperature` accepts (and 1/that the smallest)."""


def _check_width_scale_cv(
    chosen: _HeldOutScores,
    temperature: float,
    names: tuple[str, ...],
    temps: list[float],
    table: list[_HeldOutScores],
    n_stars: int,
) -> None:
    """Raise instead of returning a temperature or width factor that cannot be trusted."""
    usable = ", ".join(f"T={t:g}: {s.usable:.0%}" for t, s in zip(temps, table, strict=True))
    if not np.isfinite(chosen.crps):
        raise ValueError(
            "temperature cross-validation failed: at no temperature did enough held-out training"
            f" stars get a usable posterior (finite label and width, converged; {usable} of"
            f" {n_stars}). Check the training set's labels and spectra (flux, ivar), or pass a"
            " number to --temperature (temperature=) instead of 'auto'."
        )
    at_edge = len(temps) > 1 and temperature == max(temps)
    if at_edge:
        raise ValueError(
            f"temperature cross-validation picked T={temperature:g}, the largest allowed: the"
            " model misfits the held-out training spectra so much that no tempering calibrates"
            " it. Use a more flexible model (or more training stars), or pass a number to"
            " --temperature (temperature=) and check the errors yourself."
        )
    scale = chosen.z_std
    bad = [
        f"{n}={v:.3g}"
        for n, v in zip(names, scale, strict=True)
        if not (np.isfinite(v) and 1.0 / MAX_WIDTH_SCALE <= v <= MAX_WIDTH_SCALE)
    ]
    if bad:
        raise ValueError(
            f"width calibration failed at T={temperature:g}: the held-out training stars' z"
            f" spread ({', '.join(bad)}) is outside [{1 / MAX_WIDTH_SCALE:g}, {MAX_WIDTH_SCALE:g}],"
            " so the posterior widths cannot be trusted even after rescaling. Check the"
            " training labels for outliers, or use --estimator map."
        )


def _posterior_calibration(chosen: _HeldOutScores, temperature: float) -> ErrorCalibration:
    """The error calibration of the held-out posteriors at the chosen T, checked."""
    calibration = chosen.calibration
    if calibration is None:
        raise ValueError(
            f"error calibration of the posterior mean failed at T={temperature:g}: {chosen.calibration_error}"
        )
    after = np.asarray(calibration.z_std_after)
    values = np.concatenate([np.asarray(calibration.scale), np.asarray(calibration.floor), after])
    if not np.all(np.isfinite(values)) or np.any(after > MAX_WIDTH_SCALE):
        raise ValueError(
            f"error calibration of the posterior mean failed at T={temperature:g}"
            f" ({calibration.describe()}; held-out z spread after it"
            f" {np.round(after, 3).tolist()}): the errors cannot be trusted. Check the training"
            " labels for outliers, or use --estimator map."
        )
    return calibration


def calibration_options(calibration: ErrorCalibration) -> dict[str, Any]:
    """A JSON-able form of an :class:`ErrorCalibration` (for run options and manifests)."""
    return {
        "label_names": list(calibration.label_names),
        "scale": np.asarray(calibration.scale).tolist(),
        "floor": np.asarray(calibration.floor).tolist(),
        "misfit_power": np.asarray(calibration.misfit_power).tolist(),
        "rchi2_ref": float(calibration.rchi2_ref),
        "n_folds": calibration.n_folds,
        "n_stars": calibration.n_stars,
    }


def calibration_from_options(options: Mapping[str, Any], label_names: tuple[str, ...]) -> ErrorCalibration:
    """Rebuild :func:`calibration_options` output, checking it against ``label_names``.

    Raises
    ------
    ValueError
        If the labels differ or a value is missing, not finite or negative.
    """
    try:
        names = tuple(options["label_names"])
        arrays = {f: np.asarray(options[f], dtype=float) for f in ("scale", "floor", "misfit_power")}
        reference = float(options["rchi2_ref"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"`error_calibration` is not a calibration_options() mapping: {error!r}.") from None
    k = len(names)
    if names != tuple(label_names) or any(a.shape != (k,) for a in arrays.values()):
        raise ValueError(
            f"`error_calibration` is for labels {list(names)}, the model infers {list(label_names)}."
        )
    if not all(np.all(np.isfinite(a) & (a >= 0)) for a in arrays.values()) or not reference > 0:
        raise ValueError(f"`error_calibration` holds non-finite or negative values: {dict(options)!r}.")
    nan = jnp.full(k, jnp.nan)
    return ErrorCalibration(
        names,
        jnp.asarray(arrays["scale"]),
        jnp.asarray(arrays["floor"]),
        jnp.asarray(arrays["misfit_power"]),
        jnp.asarray(reference),
        nan,
        nan,
        nan,
        nan,
        n_folds=int(options.get("n_folds", 5)),
        n_stars=int(options.get("n_stars", 0)),
    )


# --------------------------------------------------------------------------- NUTS
class _LogPosterior(eqx.Module):
    model: PolynomialSpectrum
    prior: AbstractLabelPrior

    def __call__(self, labels: Array, args: tuple[Array, Array, Array, Array]) -> Array:
        c, g, H, temperature = args
        return _LogLikelihood(self.model)(
            labels, (c, g, H, jnp.zeros_like(c))
        ) / temperature + self.prior.log_prob(labels)


@x64
def infer_nuts(
    fitted: Any,
    data: SpectralDataset,
    key: PRNGKeyArray,
    *,
    prior: Any = "none",
    temperature: float = 1.0,
    num_warmup: int = 300,
    num_samples: int = 500,
    num_chains: int = 2,
    start: InferenceResult | None = None,
    chunk_size: int = 64,
) -> InferenceResult:
    """Posterior mean and covariance by NUTS, for any number of labels.

    Each star is sampled with :func:`starlabel.inference.nuts` in coordinates whitened
    by the MAP covariance (``start``, default ``fitted.infer(data)``), so the sampler
    needs no mass-matrix adaptation. Stars are vmapped in chunks.

    Parameters
    ----------
    fitted : FittedCannon
        The trained model (its ``infer`` provides the MAP starting points).
    data : SpectralDataset
        Spectra on the model's grid.
    key : PRNGKeyArray
        Random key; the result is a deterministic function of it.
    prior, temperature
        As in :func:`infer_posterior_mean`.
    num_warmup, num_samples, num_chains : int
        Sampler settings per star.
    start : InferenceResult, optional
        MAP labels and covariances to whiten with.
    chunk_size : int
        Stars per vmapped batch.

    Returns
    -------
    InferenceResult
        Posterior means and covariances of the draws; extra ``rhat_max`` (worst split-R̂
        over labels), ``ess_min``, ``n_divergent``; NOT_CONVERGED where R̂ > 1.05.
    """
    from ..inference._gaussian import gaussian_from_precision
    from ..inference._nuts import nuts
    from ..inference._reparam import whiten

    model = polynomial_spectrum(fitted)
    _check_data(model, data)
    temperature = _check_temperature(temperature)
    label_prior = posterior_prior(model, prior)
    first: InferenceResult = fitted.infer(data) if start is None else start
    centre = np.asarray(first.labels, dtype=float)
    cov = np.asarray(first.cov, dtype=float)
    # Fall back to the model's label scale where the MAP covariance is unusable; the
    # sampler then starts from a wider whitening but still converges.
    scale2 = np.asarray(model.scale) ** 2 * 1e-2
    ok = np.all(np.isfinite(cov), axis=(1, 2)) & np.all(np.isfinite(centre), axis=1)
    cov = np.where(ok[:, None, None], cov, np.diag(scale2)[None])
    centre = np.where(ok[:, None], centre, np.asarray(model.shift)[None])
    # Sample the tempered posterior: widen the whitening accordingly.
    cov = cov * temperature
    stats = spectrum_statistics(model, data.flux, data.ivar)
    log_post = _LogPosterior(model, label_prior)

    def one(centre_n: Array, cov_n: Array, c: Array, g: Array, H: Array, k: Array) -> tuple[Array, ...]:
        approx = gaussian_from_precision(centre_n, jnp.linalg.inv(cov_n))
        whitening = whiten(approx)
        post = nuts(
            log_post,
            whitening,
            (c, g, H, jnp.asarray(temperature)),
            k,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
        )
        draws = post.samples.reshape(-1, centre_n.shape[0])
        return (
            jnp.mean(draws, axis=0),
            jnp.cov(draws.T),
            jnp.max(post.rhat),
            jnp.min(post.ess),
            jnp.sum(post.num_divergent),
        )

    run = jax.jit(jax.vmap(one))
    keys = jax.random.split(key, data.n_stars)
    outs = []
    for begin in range(0, data.n_stars, chunk_size):
        end = min(begin + chunk_size, data.n_stars)
        sl = slice(begin, end)
        outs.append(
            [
                np.asarray(o)
                for o in run(
                    jnp.asarray(centre[sl]),
                    jnp.asarray(cov[sl]),
                    stats.c[sl],
                    stats.g[sl],
                    stats.H[sl],
                    keys[sl],
                )
            ]
        )
    mean, post_cov, rhat, ess, divergent = (np.concatenate([o[i] for o in outs]) for i in range(5))
    post_cov = post_cov.reshape(-1, model.n_labels, model.n_labels)
    chi2 = np.asarray(_chi2_at(model, stats, jnp.asarray(mean)))
    n_good = np.asarray(stats.n_good)
    flags = np.where(rhat > 1.05, int(Flag.NOT_CONVERGED), 0).astype(np.int64)
    return InferenceResult(
        ids=data.ids,
        label_names=model.label_names,
        labels=mean,
        cov=post_cov,
        chi2=chi2,
        dof=(n_good - model.n_labels).astype(float),
        flags=flags,
        extra={"rhat_max": rhat, "ess_min": ess, "n_divergent": divergent.astype(np.int64)},
        meta={"estimator": "nuts", "prior": label_prior.kind, "temperature": temperature},
    )


# --------------------------------------------------------------------------- entry point
ESTIMATORS: tuple[str, ...] = ("map", "mean", "nuts")
"""Estimators :func:`infer_labels` accepts (also the CLI's ``--estimator`` choices)."""


def _unfitted(fitted: Any, model: Any) -> Any:
    """The configuration to refit in temperature cross-validation."""
    if model is not None:
        return model
    if isinstance(fitted, AbstractFittedFluxModel):
        # Same label vector; censoring and L1 settings are not stored in the fitted
        # model, so pass `model=` to cross-validate a censored or regularised Cannon.
        return fitted.configuration()
    raise ValueError(
        "temperature='auto' refits the model on training folds; pass `model=` (the unfitted"
        f" configuration) for a {type(fitted).__name__}."
    )


def infer_labels(
    fitted: Any,
    data: SpectralDataset,
    *,
    estimator: str = "map",
    prior: Any = "none",
    temperature: float | str = 1.0,
    train: SpectralDataset | None = None,
    model: Any = None,
    fit_rv: bool = False,
    continuum_order: int | None = None,
    binary: bool = False,
    key: PRNGKeyArray | None = None,
    width_scale: Any = None,
    error_calibration: Any = None,
    **options: Any,
) -> InferenceResult:
    """One entry point for every test step: estimator, prior, tempering, nuisance, binary.

    The place where the CLI's ``--estimator``, ``--prior``, ``--temperature``,
    ``--fit-rv``, ``--fit-continuum`` and ``--binary`` choices are resolved.

    Parameters
    ----------
    fitted : FittedCannon
        The trained model.
    data : SpectralDataset
        Spectra on the model's grid (with ``wavelength`` for velocity/continuum/binary).
    estimator : {"map", "mean", "nuts"}
        ``"map"``: the model's multi-start MAP (``fitted.infer``), or the joint MAP with
        velocity/continuum; ``"mean"``: posterior mean and covariance by grid quadrature
        (≤ 5 labels); ``"nuts"``: posterior mean and covariance from NUTS draws.
    prior : "none", "gaussian", "kde", dict or AbstractLabelPrior
        Label prior for ``"mean"``/``"nuts"`` (fitted to the model's training labels).
    temperature : float or "auto"
        Likelihood temperature; ``"auto"`` chooses it by 5-fold cross-validation on
        ``train`` (:func:`select_temperature`), also calibrates the errors with the
        selection's ``calibration`` (unless ``width_scale`` or ``error_calibration``
        is given), and records both in ``meta``.
    train : SpectralDataset, optional
        Training set, needed only for ``temperature="auto"``.
    model : AbstractSpectralModel, optional
        Unfitted configuration to refit for ``"auto"`` (default: rebuilt from ``fitted``).
    fit_rv : bool
        Fit a radial velocity jointly (extra columns ``rv``, ``rv_err``).
    continuum_order : int, optional
        Fit a multiplicative continuum polynomial of this order per region
        (extra ``cont_r{region}_c{power}``).
    binary : bool
        Also fit a two-star model and compare (:func:`starlabel.models.fit_binary`);
        extra columns ``binary``, ``p_binary``, ``delta_chi2``, ``delta_bic`` and the
        components. ``binary_calibration=`` (a :class:`~starlabel.models.BinaryCalibration`
        or the model-file header's dict) gives the decision learned on the training set.
    key : PRNGKeyArray, optional
        For ``"nuts"`` (default ``jax.random.key(0)``).
    width_scale : float or sequence of float, optional
        Per-label factors for the uncertainties of ``"mean"``/``"nuts"``
        (:func:`rescale_uncertainty`), e.g. from an earlier :func:`select_temperature`.
    error_calibration : ErrorCalibration or mapping, optional
        ``σ_total² = (a σ)² + σ_sys² (χ²_ν/χ̃²_ν)^γ`` for the errors of ``"mean"``/
        ``"nuts"`` (:attr:`TemperatureSelection.calibration`, or its
        :func:`calibration_options` form); the posterior σ is kept as
        ``<label>_err_stat``.
    **options
        Passed to the chosen routine (e.g. ``n_nodes``, ``num_samples``, ``v_max``).

    Returns
    -------
    InferenceResult

    Raises
    ------
    ValueError
        On an unknown estimator (listing the valid ones), an unsupported combination
        (NUTS or binary with velocity/continuum options), or ``"auto"`` without ``train``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}.")
    meta_extra: dict[str, Any] = {}
    if isinstance(temperature, str):
        if temperature.strip().lower() != "auto":
            raise ValueError(f"`temperature` must be a number or 'auto', got {temperature!r}.")
        if train is None:
            raise ValueError(
                "temperature='auto' is chosen by cross-validation on the training set; pass"
                " `train` (the SpectralDataset the model was trained on). Test data are never used."
            )
        if estimator == "map":
            raise ValueError("temperature only affects 'mean' and 'nuts'; drop it or change the estimator.")
        # The cross-validation runs the same posterior as the final inference.
        likelihood_options = {
            k: options[k] for k in ("likelihood", "dof", "method", "n_samples", "min_ess") if k in options
        }
        selection = select_temperature(_unfitted(fitted, model), train, prior=prior, **likelihood_options)
        temperature = selection.temperature
        if width_scale is None and error_calibration is None:
            error_calibration = selection.calibration
        # JSON, not a Python repr: it goes into every result table's provenance.
        meta_extra["temperature_cv"] = json.dumps(selection.to_dict(), default=float)
    if width_scale is not None or error_calibration is not None:
        if estimator == "map":
            raise ValueError(
                "`width_scale` and `error_calibration` calibrate posterior widths; use"
                " estimator='mean' or 'nuts' (the MAP errors carry the model's own calibration)."
            )
        if width_scale is not None and error_calibration is not None:
            raise ValueError("pass `width_scale` or `error_calibration`, not both.")
    if width_scale is not None:
        width_scale = _check_width_scale(width_scale, tuple(fitted.label_names))
    if error_calibration is not None and not isinstance(error_calibration, ErrorCalibration):
        error_calibration = calibration_from_options(error_calibration, tuple(fitted.label_names))
    temperature = _check_temperature(temperature)
    nuisance = fit_rv or continuum_order is not None
    if binary:
        if estimator != "map" or continuum_order is not None:
            raise ValueError("--binary runs its own MAP fits; use estimator='map' and no continuum.")
        from ._binary import fit_binary

        binary_options = dict(options)
        learned = binary_options.pop("binary_calibration", None)  # from the model file's header
        result = fit_binary(fitted, data, fit_rv=fit_rv, calibration=learned, **binary_options)
    elif nuisance:
        if estimator == "nuts":
            raise ValueError(
                "NUTS with a velocity/continuum is not supported; use estimator='map' or 'mean'."
            )
        from ._nuisance import infer_with_nuisance

        result = infer_with_nuisance(
            fitted,
            data,
            fit_rv=fit_rv,
            continuum_order=continuum_order,
            estimator=estimator,
            prior=prior,
            temperature=temperature,
            **options,
        )
    elif estimator == "map":
        if not (prior is None or (isinstance(prior, str) and prior.lower() == "none")):
            raise ValueError(
                "a prior changes the posterior, not the maximum-likelihood test step; use"
                " estimator='mean' (or 'nuts') with a prior."
            )
        result = fitted.infer(data, **options)
    elif estimator == "mean":
        result = infer_posterior_mean(fitted, data, prior=prior, temperature=temperature, **options)
    else:
        result = infer_nuts(
            fitted,
            data,
            jax.random.key(0) if key is None else key,
            prior=prior,
            temperature=temperature,
            **options,
        )
    if width_scale is not None:
        result = rescale_uncertainty(result, width_scale)
    if error_calibration is not None:
        result = error_calibration.apply(result)
    if meta_extra:
        result = dataclasses.replace(result, meta={**result.meta, **meta_extra})
    return result
