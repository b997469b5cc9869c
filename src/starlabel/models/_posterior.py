"""Label uncertainties for any fitted model with a JAX log-likelihood: Fisher, Laplace, NUTS.

This is the glue between ``models/`` and the model-agnostic ``inference/`` toolkit
(models may import inference, never the reverse). It is written against the abstract
classes of :mod:`starlabel.models.base`, needing only what they declare:

* :meth:`AbstractGenerativeModel.log_likelihood` ``(params, flux, ivar) -> scalar`` (pure JAX), Gaussian in the
  flux with a variance that does not depend on ``params`` — the Cannon (``params`` =
  labels in their own units, variance σ² + s²) and Lux (``params`` = latents,
  variance σ² + learned scatter);
* for an :class:`AbstractLatentModel`, ``latents_to_labels`` and ``latent_log_prior``
  (Lux);
* a starting point: ``fitted.infer_latents(data)`` or ``fitted.infer(data).labels``.

What each method includes is documented in ``docs/uncertainties.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeGuard, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Key, PRNGKeyArray

from .._internal import as_float_array, check_shape, map_chunks, x64
from ..data import Flag, InferenceResult, SpectralDataset
from ..inference import (
    RESULTS,
    PosteriorSamples,
    effective_sample_size,
    eigh_solve,
    gaussian_fisher_information,
    gaussian_from_precision,
    hessian,
    nuts,
    split_rhat,
    whiten,
)
from ._error_calibration import model_labels
from ._nuts_columns import RHAT_MAX, nuts_columns
from ._prediction_variance import LinearPredictionVariance
from ._strategies import NUTS, AbstractUncertainty
from .base import AbstractGenerativeModel, AbstractLatentModel

__all__ = [
    "POSTERIOR_METHODS",
    "PosteriorMethod",
    "check_uncertainty",
    "resolve_uncertainty",
    "posterior_infer",
    "refine_uncertainty",
]

PosteriorMethod = Literal["fisher", "laplace", "nuts"]
"""``"fisher"``: expected information at the MAP; ``"laplace"``: observed curvature
at the MAP; ``"nuts"``: posterior draws (whitened NUTS) summarised by mean and covariance."""

POSTERIOR_METHODS: tuple[str, ...] = get_args(PosteriorMethod)
_NEWTON_TOL = 1e-6


class _Adaptor(eqx.Module):
    """A fitted model seen as a log density over one star's parameters (pure JAX)."""

    fitted: AbstractGenerativeModel
    latent: bool = eqx.field(static=True)
    prediction_variance: LinearPredictionVariance | None = None

    def log_likelihood(self, params: Float[Array, " n"], flux: Array, ivar: Array) -> Float[Array, ""]:
        return self.fitted.log_likelihood(params, flux, ivar)

    def log_prior(self, params: Float[Array, " n"]) -> Float[Array, ""]:
        # Labels get a flat prior; Lux latents their N(0, I).
        if isinstance(self.fitted, AbstractLatentModel):
            return self.fitted.latent_log_prior(params)
        return jnp.zeros((), params.dtype)

    def labels(self, params: Float[Array, " n"]) -> Float[Array, " labels"]:
        if isinstance(self.fitted, AbstractLatentModel):
            return self.fitted.latents_to_labels(params)
        return params


def _log_posterior(params: Float[Array, " n"], args: tuple[_Adaptor, Array, Array]) -> Float[Array, ""]:
    adaptor, flux, ivar = args
    return adaptor.log_likelihood(params, flux, ivar) + adaptor.log_prior(params)


def _negative_log_posterior(
    params: Float[Array, " n"], args: tuple[_Adaptor, Array, Array]
) -> Float[Array, ""]:
    return -_log_posterior(params, args)


def _newton(
    args: tuple[_Adaptor, Array, Array], start: Float[Array, " n"], steps: int
) -> tuple[Array, Array]:
    """``steps`` Newton iterations (uphill steps refused), and the Newton decrement at the end.

    A ``lax.scan``, not :func:`starlabel.inference.damped_newton`'s ``while_loop``:
    that loop with the same :func:`~starlabel.inference.eigh_solve` gave bit-identical
    results on 1,024 stars but compiled longer and, at 4,096 stars in one vmapped chunk,
    hung XLA-CPU (batched eigh in a while_loop: threads idle, CPU time frozen)
    (``benchmarks/results/posteriors_laplace_newton.json``); its unrolled Cholesky would
    need damping here (indefinite Hessians far from the mode), which changes the numbers.
    """

    def step(params: Array, _: None) -> tuple[Array, None]:
        grad = jax.grad(_log_posterior)(params, args)
        candidate = params + eigh_solve(hessian(_negative_log_posterior, params, args), grad)
        better = _log_posterior(candidate, args) >= _log_posterior(params, args)
        return jnp.where(better & jnp.all(jnp.isfinite(candidate)), candidate, params), None

    params, _ = jax.lax.scan(step, start, None, length=steps)
    grad = jax.grad(_log_posterior)(params, args)
    return params, grad @ eigh_solve(hessian(_negative_log_posterior, params, args), grad)


def _log_likelihood_of_flux(
    params: Float[Array, " n"], flux: Array, args: tuple[_Adaptor, Array]
) -> Float[Array, ""]:
    adaptor, ivar = args
    return adaptor.log_likelihood(params, flux, ivar)


def _fisher(args: tuple[_Adaptor, Array, Array], params: Float[Array, " n"]) -> tuple[Array, Array, Array]:
    """Expected information (likelihood + prior), χ² and number of used pixels at ``params``.

    The likelihood part is :func:`starlabel.inference.gaussian_fisher_information`,
    which needs only the log-likelihood. χ² follows from the same identity:
    with ``g = ∂ log L/∂flux = −w (f − μ)`` and ``w`` its drop per unit flux,
    ``χ² = Σ g² / w``.
    """
    adaptor, flux, ivar = args
    information = gaussian_fisher_information(_log_likelihood_of_flux, params, flux, (adaptor, ivar))
    prior = hessian(lambda p, a: -adaptor.log_prior(p), params)
    grad_flux = jax.grad(_log_likelihood_of_flux, argnums=1)
    at_data = grad_flux(params, flux, (adaptor, ivar))
    weight = at_data - grad_flux(params, flux + 1.0, (adaptor, ivar))
    used = weight > 0
    chi2 = jnp.sum(jnp.where(used, at_data**2 / jnp.where(used, weight, 1.0), 0.0))
    return information + prior, chi2, jnp.sum(used)


def _training_term(args: tuple[_Adaptor, Array, Array], params: Array, covariance: Array) -> Array:
    r"""First-order label covariance from the model's training uncertainty.

    A prediction error :math:`\delta\mu` moves the MAP by
    :math:`\delta\theta = \Sigma (WJ)^\top \delta\mu` (one Gauss–Newton step), so
    independent per-pixel errors of variance :math:`q` add
    :math:`\Sigma (WJ)^\top \mathrm{diag}(q) (WJ) \Sigma`.
    """
    adaptor, flux, ivar = args
    grad_flux = jax.grad(_log_likelihood_of_flux, argnums=1)
    weighted_jac = jax.jacfwd(lambda p: grad_flux(p, flux, (adaptor, ivar)))(params)  # (pixels, n) = W J
    labels = adaptor.labels(params)
    q = adaptor.prediction_variance(labels)  # type: ignore[misc]
    middle = weighted_jac.T @ (q[:, None] * weighted_jac)
    return covariance @ middle @ covariance


class _StarOutput(eqx.Module):
    labels: Array
    cov: Array
    chi2: Array
    n_used: Array
    decrement: Array
    positive_definite: Array
    rhat: Array
    ess: Array
    step_size: Array
    divergent: Array
    samples: Array
    training_var: Array


def _summarise_samples(adaptor: _Adaptor, post: PosteriorSamples) -> tuple[Array, Array, Array, Array, Array]:
    chains, draws = post.samples.shape[:2]
    label_draws = jax.vmap(jax.vmap(adaptor.labels))(post.samples)  # (chains, samples, labels)
    flat = jnp.reshape(label_draws, (chains * draws, -1))
    mean = jnp.mean(flat, axis=0)
    centred = flat - mean[None, :]
    cov = centred.T @ centred / (flat.shape[0] - 1)
    return mean, cov, split_rhat(label_draws), effective_sample_size(label_draws), label_draws


class _Settings(eqx.Module):
    """Static run configuration of the compiled per-chunk program."""

    sample: bool = eqx.field(static=True)
    newton_steps: int = eqx.field(static=True)
    num_warmup: int = eqx.field(static=True)
    num_samples: int = eqx.field(static=True)
    num_chains: int = eqx.field(static=True)
    vectorize: bool = eqx.field(static=True)


def _analyse_star(
    adaptor: _Adaptor,
    flux: Array,
    ivar: Array,
    start: Array,
    key: PRNGKeyArray,
    use_fisher: Array,
    settings: _Settings,
) -> _StarOutput:
    args = (adaptor, flux, ivar)
    params, decrement = _newton(args, start, settings.newton_steps)
    information, chi2, n_used = _fisher(args, params)
    observed = hessian(_negative_log_posterior, params, args)
    # A traced choice, so "fisher" and "laplace" share one compiled program.
    approx = gaussian_from_precision(params, jnp.where(use_fisher, information, observed))
    positive = approx.result == RESULTS.successful
    jac = jax.jacfwd(adaptor.labels)(params)
    labels = adaptor.labels(params)
    cov = jac @ approx.covariance @ jac.T
    inflation = jnp.zeros_like(cov)
    if adaptor.prediction_variance is not None:
        inflation = jac @ _training_term(args, params, approx.covariance) @ jac.T
        cov = cov + inflation
    n_labels = labels.shape[0]
    nan_labels = jnp.full((n_labels,), jnp.nan, dtype=labels.dtype)
    rhat, ess, step_size, divergent = nan_labels, nan_labels, jnp.nan * jnp.ones(()), jnp.zeros((), jnp.int32)
    samples = jnp.zeros((0, 0, n_labels), dtype=labels.dtype)
    if settings.sample:
        # Whiten with the observed curvature: it is the local shape of this posterior.
        whitening = whiten(gaussian_from_precision(params, observed))
        post = nuts(
            _log_posterior,
            whitening,
            args,
            key,
            num_warmup=settings.num_warmup,
            num_samples=settings.num_samples,
            num_chains=settings.num_chains,
            diagnose=False,  # diagnosed on the labels below
        )
        labels, cov, rhat, ess, samples = _summarise_samples(adaptor, post)
        cov = cov + inflation  # first order, at the MAP: draws hold the model fixed
        step_size = jnp.mean(post.step_size)
        divergent = jnp.sum(post.num_divergent).astype(jnp.int32)
        positive = jnp.all(jnp.isfinite(cov)) & jnp.all(jnp.linalg.eigvalsh(cov) > 0)
    return _StarOutput(
        labels,
        cov,
        chi2,
        n_used,
        decrement,
        positive,
        rhat,
        ess,
        step_size,
        divergent,
        samples,
        jnp.diagonal(inflation),
    )


@eqx.filter_jit
def _analyse_chunk(
    adaptor: _Adaptor,
    flux: Array,
    ivar: Array,
    start: Array,
    keys: Key[Array, " stars"],
    use_fisher: Array,
    settings: _Settings,
) -> _StarOutput:
    def one(row: tuple[Array, Array, Array, PRNGKeyArray]) -> _StarOutput:
        return _analyse_star(adaptor, *row, use_fisher, settings)

    rows = (flux, ivar, start, keys)
    if settings.sample and not settings.vectorize:
        # One star after another inside the compiled program: on CPU a vmapped NUTS batch
        # runs every trajectory as long as its longest member (benchmarks/posteriors.py).
        return jax.lax.map(one, rows)
    return jax.vmap(one)(rows)


def _adaptor_and_start(
    fitted: AbstractGenerativeModel, data: SpectralDataset, start: ArrayLike | None
) -> tuple[_Adaptor, np.ndarray]:
    if not isinstance(fitted, AbstractGenerativeModel):
        raise TypeError(
            f"`fitted` ({type(fitted).__name__}) is not an AbstractGenerativeModel with a"
            " log_likelihood(params, flux, ivar); posterior_infer needs a fitted generative model"
            " such as FittedCannon, FittedPayne or FittedLux."
        )
    adaptor = _Adaptor(fitted, isinstance(fitted, AbstractLatentModel))
    if start is not None:
        given = as_float_array(start, "start")
        size = fitted.latent_size if isinstance(fitted, AbstractLatentModel) else len(fitted.label_names)
        what = "latents" if adaptor.latent else "labels"
        check_shape(given, (data.n_stars, size), "start", f"(stars, {what}) for {data.n_stars} stars")
        return adaptor, given
    if isinstance(fitted, AbstractLatentModel):
        return adaptor, np.asarray(fitted.infer_latents(data)[0], dtype=np.float64)
    # The optimum itself: a bias-corrected label is not where the likelihood peaks.
    return adaptor, np.asarray(model_labels(fitted.infer(data)), dtype=np.float64)


def _check_options(method: str, num_warmup: int, num_samples: int, num_chains: int, chunk_size: int) -> None:
    if method not in POSTERIOR_METHODS:
        raise ValueError(f"unknown `method` {method!r}; choose one of {list(POSTERIOR_METHODS)}.")
    for name, value, low in (
        ("num_warmup", num_warmup, 0),
        ("num_samples", num_samples, 4),
        ("num_chains", num_chains, 1),
        ("chunk_size", chunk_size, 1),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")


@x64
def posterior_infer(
    fitted: AbstractGenerativeModel,
    data: SpectralDataset,
    *,
    method: PosteriorMethod = "fisher",
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 1,
    seed: int = 0,
    newton_steps: int = 6,
    chunk_size: int = 64,
    rhat_max: float = RHAT_MAX,
    vectorize: bool = False,
    return_samples: bool = False,
    prediction_variance: LinearPredictionVariance | None = None,
    start: ArrayLike | None = None,
) -> InferenceResult | tuple[InferenceResult, np.ndarray]:
    r"""Labels with honest uncertainties for every star, from a fitted model's likelihood.

    Each star's parameters (Cannon: labels; Lux: latents) start from the model's own
    test step and are refined by ``newton_steps`` Newton iterations on
    :math:`\log p = \log L(\mathrm{flux}\mid\theta) + \log\pi(\theta)`. Then:

    * ``"fisher"``: covariance :math:`(J^\top W J + P_\pi)^{-1}`, the expected
      information with :math:`W = 1/(\sigma^2 + s^2)` (reported noise plus the model's
      intrinsic scatter) and the prior precision :math:`P_\pi` (Lux: I);
    * ``"laplace"``: covariance :math:`(-\nabla^2\log p)^{-1}`, the observed curvature
      (adds the residual-weighted second derivatives of the model);
    * ``"nuts"``: draws from :math:`p` by NUTS in the Laplace-whitened coordinates
      (:func:`starlabel.inference.nuts`); labels and covariance are the posterior mean
      and covariance of the draws, and ``extra`` gets ``rhat_<label>``,
      ``ess_<label>``, ``nuts_step_size`` and ``nuts_divergent``.

    Label covariances of latent models are propagated through the latents→labels map
    (its Jacobian for ``fisher``/``laplace``; exactly, draw by draw, for ``nuts``).

    Parameters
    ----------
    fitted : AbstractGenerativeModel
        Its ``log_likelihood(params, flux, ivar)`` (pure JAX, Gaussian in the flux with a
        parameter-independent variance) and ``infer`` (for an :class:`AbstractLatentModel`:
        ``infer_latents``, ``latents_to_labels`` and ``latent_log_prior``).
    data : SpectralDataset
        Spectra on the model's pixel grid; their labels, if any, are not used.
    method : {"fisher", "laplace", "nuts"}
        See above. Default ``"fisher"``.
    num_warmup, num_samples, num_chains : int
        NUTS step-size adaptation iterations, kept draws and chains per star.
    seed : int
        Seed of the NUTS keys (one per star, so results do not depend on chunking).
    newton_steps : int
        Newton iterations refining the starting point (0 keeps it).
    chunk_size : int
        Stars per compiled call; the last chunk is padded (:func:`starlabel._internal.map_chunks`),
        so one compilation serves all.
    rhat_max : float
        NUTS stars whose largest label R̂ exceeds this get ``Flag.NOT_CONVERGED``.
    vectorize : bool
        ``vmap`` NUTS over the stars of a chunk (for accelerators) instead of looping
        inside the compiled program (faster on CPU).
    return_samples : bool
        Also return the label draws, shape ``(stars, chains, samples, labels)``
        (``method="nuts"`` only).
    prediction_variance : LinearPredictionVariance, optional
        The model's training uncertainty (:func:`training_prediction_variance`). When
        given, every covariance gains its first-order propagation into the labels
        (``extra["training_var_<label>"]`` holds that part of the variance). Only for
        models whose parameters are the labels (the Cannon).
    start : array-like, shape (stars, parameters), optional
        Starting parameters (Cannon: labels in their units; Lux: latents), e.g. from an
        earlier run; default: the model's own test step.

    Returns
    -------
    InferenceResult or (InferenceResult, ndarray)
        ``labels``/``cov`` in the labels' units; ``chi2`` at the MAP with the model's
        scatter in the variance; ``dof`` = used pixels − parameters; ``flags``:
        ``BAD_COVARIANCE`` (precision not positive definite), ``NOT_CONVERGED`` (Newton
        decrement above 1e-6 nats, or R̂ > ``rhat_max``); ``extra["newton_decrement"]``.

    Raises
    ------
    TypeError
        If ``fitted`` lacks the methods above or ``data`` is not a SpectralDataset.
    ValueError
        For an unknown ``method``, out-of-range counts, ``return_samples`` without NUTS,
        or a ``start`` of the wrong shape.

    Examples
    --------
    >>> from starlabel.data import simulate_linear_latent
    >>> from starlabel.models.lux import Lux
    >>> sim = simulate_linear_latent(n_stars=256, n_latents=4, n_pixels=32, seed=1)
    >>> fitted = Lux(("label_0", "label_1"), latent_size=4).fit(sim.dataset[:128])
    >>> posterior_infer(fitted, sim.dataset[128:], method="laplace").cov.shape
    (128, 2, 2)
    """
    _check_options(method, num_warmup, num_samples, num_chains, chunk_size)
    if not isinstance(data, SpectralDataset):
        raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
    if return_samples and method != "nuts":
        raise ValueError("`return_samples=True` needs method='nuts'.")
    adaptor, start = _adaptor_and_start(fitted, data, start)
    if prediction_variance is not None:
        if adaptor.latent:
            raise ValueError(
                "`prediction_variance` applies to models whose parameters are the labels (the Cannon)."
            )
        adaptor = eqx.tree_at(
            lambda a: a.prediction_variance, adaptor, prediction_variance, is_leaf=lambda x: x is None
        )
    n_stars = data.n_stars
    size = int(min(chunk_size, 1 << max(0, (n_stars - 1).bit_length())))
    keys = jax.random.split(jax.random.key(seed), n_stars)
    settings = _Settings(
        method == "nuts",
        int(newton_steps),
        int(num_warmup),
        int(num_samples),
        int(num_chains),
        bool(vectorize),
    )
    use_fisher = jnp.asarray(method == "fisher")

    def chunk(rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> _StarOutput:
        flux, ivar, params0, key_data = rows
        keys = jax.random.wrap_key_data(jnp.asarray(key_data))
        return _analyse_chunk(
            adaptor, jnp.asarray(flux), jnp.asarray(ivar), jnp.asarray(params0), keys, use_fisher, settings
        )

    # Keys travel as raw data: the padding copies rows with numpy, which typed keys refuse.
    rows = (data.flux, data.ivar, start, np.asarray(jax.random.key_data(keys)))
    star: _StarOutput = map_chunks(chunk, rows, size=size)
    return _result(
        fitted,
        data,
        adaptor,
        star,
        method,
        start.shape[1],
        rhat_max,
        num_warmup,
        num_samples,
        num_chains,
        return_samples,
    )


def _result(
    fitted: AbstractGenerativeModel,
    data: SpectralDataset,
    adaptor: _Adaptor,
    star: _StarOutput,
    method: str,
    n_params: int,
    rhat_max: float,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    return_samples: bool,
) -> InferenceResult | tuple[InferenceResult, np.ndarray]:
    names = tuple(fitted.label_names)
    flags = np.zeros(data.n_stars, dtype=np.int64)
    flags |= np.where(~star.positive_definite, int(Flag.BAD_COVARIANCE), 0)
    not_converged = ~(star.decrement < _NEWTON_TOL)
    extra: dict[str, ArrayLike] = {"newton_decrement": star.decrement}
    if method == "nuts":
        columns, unconverged = nuts_columns(
            names, star.rhat, star.ess, star.step_size, star.divergent, rhat_max
        )
        not_converged |= unconverged
        extra.update(columns)
    if adaptor.prediction_variance is not None:
        for i, name in enumerate(names):
            extra[f"training_var_{name}"] = star.training_var[:, i]
    flags |= np.where(not_converged, int(Flag.NOT_CONVERGED), 0)
    cov = np.where(star.positive_definite[:, None, None], star.cov, np.nan)
    meta: dict[str, Any] = {
        "model": str(fitted.kind),
        "uncertainty": method,
        "parameters": "latents" if adaptor.latent else "labels",
        "training_uncertainty": adaptor.prediction_variance is not None,
    }
    if method == "nuts":
        meta.update(
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            sampler="blackjax-nuts-whitened",
        )
    result = InferenceResult(
        ids=data.ids,
        label_names=names,
        labels=star.labels,
        cov=cov,
        chi2=star.chi2,
        dof=star.n_used - n_params,
        flags=flags,
        extra=extra,
        meta=meta,
    )
    if return_samples:
        return result, np.asarray(star.samples)  # numpy already (the chunks were converted)
    return result


def refine_uncertainty(
    fitted: AbstractGenerativeModel,
    data: SpectralDataset,
    first: InferenceResult,
    start: ArrayLike,
    method: str,
    options: Mapping[str, Any] | None = None,
) -> InferenceResult:
    """Replace a test step's Fisher covariance by ``method``'s, keeping its other findings.

    The models' ``infer(..., uncertainty=...)`` calls this after their own test step:
    ``start`` (that step's optimum, in the model's parameters) seeds
    :func:`posterior_infer`, and the test step's flags (bounds, training range, poor
    fit) and ``extra`` columns are kept alongside the posterior's.

    Parameters
    ----------
    fitted : AbstractGenerativeModel
        As for :func:`posterior_infer`.
    data : SpectralDataset
        The spectra ``first`` was inferred from.
    first : InferenceResult
        The model's own test-step result for ``data``.
    start : array-like, shape (stars, parameters)
        Its optimum (Cannon: labels; Lux: latents).
    method : {"fisher", "laplace", "nuts"}
        Uncertainty mode (see :func:`posterior_infer`).
    options : mapping, optional
        Further :func:`posterior_infer` keywords (``num_warmup``, ``seed``, …).
    """
    posterior_method = check_uncertainty(method)
    options = dict(options or {})
    for reserved in ("method", "start", "return_samples"):
        if reserved in options:
            raise ValueError(f"`posterior_options` may not set {reserved!r}; it is fixed by infer().")
    refined = posterior_infer(fitted, data, method=posterior_method, start=start, **options)
    assert isinstance(refined, InferenceResult)
    return dataclasses.replace(
        refined,
        flags=refined.flags | first.flags,
        extra={**first.extra, **refined.extra},
        meta={**first.meta, **refined.meta},
    )


def _is_posterior_method(name: str) -> TypeGuard[PosteriorMethod]:
    return name in POSTERIOR_METHODS


def check_uncertainty(uncertainty: str) -> PosteriorMethod:
    """``uncertainty`` as a posterior method; a ValueError naming the choices if it is none."""
    if not _is_posterior_method(uncertainty):
        raise ValueError(f"unknown uncertainty {uncertainty!r}; choose one of {list(POSTERIOR_METHODS)}.")
    return uncertainty


def resolve_uncertainty(
    uncertainty: str | AbstractUncertainty, posterior_options: Mapping[str, Any] | None
) -> tuple[PosteriorMethod, Mapping[str, Any] | None]:
    """The models' ``infer(uncertainty=…)``: a name, or a typed :class:`AbstractUncertainty`.

    ``Fisher()``, ``Laplace()``, ``NUTS(num_samples=…)`` (whose sampler settings join
    ``posterior_options``) or the words ``"fisher"``, ``"laplace"``, ``"nuts"``.
    """
    if isinstance(uncertainty, AbstractUncertainty):
        if isinstance(uncertainty, NUTS) and uncertainty.sampler_options():
            posterior_options = {**uncertainty.sampler_options(), **dict(posterior_options or {})}
        uncertainty = uncertainty.name
    return check_uncertainty(uncertainty), posterior_options
