"""NUTS draws of a polynomial-in-labels model's tempered label posterior (the Cannon).

The same posterior as :func:`~starlabel.models.infer_posterior_mean` (χ² statistics
``(c, g, H)`` per star, a label prior, a temperature), sampled per star with
:func:`starlabel.inference.nuts` in coordinates whitened by the MAP covariance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ..._internal import map_chunks, x64
from ...data import Flag, InferenceResult, SpectralDataset
from ...inference import AbstractLabelPrior, gaussian_from_precision, nuts, whiten
from .._error_calibration import model_labels
from .._estimators import check_temperature
from .._nuts_columns import nuts_columns
from ..base import AbstractFittedModel
from ._posterior_mean import LogLikelihood, check_data, chi2_at, posterior_prior, spectrum_statistics

if TYPE_CHECKING:  # the flux model calls this module: its method is this function
    from ._flux_model import PolynomialSpectrum

__all__ = ["nuts_posterior"]


class _LogPosterior(eqx.Module):
    model: PolynomialSpectrum
    prior: AbstractLabelPrior

    def __call__(self, labels: Array, args: tuple[Array, Array, Array, Array]) -> Array:
        c, g, H, temperature = args
        return LogLikelihood(self.model)(
            labels, (c, g, H, jnp.zeros_like(c))
        ) / temperature + self.prior.log_prob(labels)


@x64
def nuts_posterior(
    model: PolynomialSpectrum,
    data: SpectralDataset,
    key: PRNGKeyArray,
    *,
    fitted: AbstractFittedModel | None = None,
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
    model : PolynomialSpectrum
        A polynomial-in-labels flux model (``FittedCannon.flux_model()``).
    data : SpectralDataset
        Spectra on the model's grid.
    key : PRNGKeyArray
        Random key; the result is a deterministic function of it.
    fitted : AbstractFittedModel, optional
        The fitted model ``model`` comes from: its ``infer`` provides the MAP starting
        points unless ``start`` is given.
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
        Posterior means and covariances of the draws; extra columns and the
        NOT_CONVERGED rule shared with ``uncertainty="nuts"``
        (:func:`~starlabel.models._nuts_columns.nuts_columns`): ``rhat_<label>``,
        ``ess_<label>``, ``rhat_max`` (worst split-R̂ over labels), ``ess_min``,
        ``n_divergent``, ``nuts_divergent``, ``nuts_step_size``; NOT_CONVERGED where
        the worst R̂ > 1.05 or is not finite.
    """
    check_data(model, data)
    temperature = check_temperature(temperature)
    label_prior = posterior_prior(model, prior)
    if start is not None:
        first = start
    elif fitted is not None:
        first = fitted.infer(data)
    else:
        raise TypeError(
            f"a bare {type(model).__name__} has no MAP test step: pass `start` (MAP labels, cov)."
        )
    centre = np.asarray(model_labels(first), dtype=float)  # the optimum, not bias-corrected labels
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
            post.rhat,
            post.ess,
            jnp.mean(post.step_size),
            jnp.sum(post.num_divergent),
        )

    run = jax.jit(jax.vmap(one))

    def chunk(rows: tuple[Any, ...]) -> tuple[Array, ...]:
        *arrays, key_data = (jnp.asarray(a) for a in rows)
        return run(*arrays, jax.random.wrap_key_data(key_data))

    # Keys travel as raw data: the padding copies rows with numpy, which typed keys refuse.
    keys = jax.random.key_data(jax.random.split(key, data.n_stars))
    rows = (centre, cov, stats.c, stats.g, stats.H, np.asarray(keys))
    mean, post_cov, rhat, ess, step_size, divergent = map_chunks(
        chunk, rows, size=min(chunk_size, data.n_stars)
    )
    post_cov = post_cov.reshape(-1, model.n_labels, model.n_labels)
    chi2 = np.asarray(chi2_at(model, stats, jnp.asarray(mean)))
    n_good = np.asarray(stats.n_good)
    extra, not_converged = nuts_columns(model.label_names, rhat, ess, step_size, divergent)
    flags = np.where(not_converged, int(Flag.NOT_CONVERGED), 0).astype(np.int64)
    return InferenceResult(
        ids=data.ids,
        label_names=model.label_names,
        labels=mean,
        cov=post_cov,
        chi2=chi2,
        dof=(n_good - model.n_labels).astype(float),
        flags=flags,
        extra=extra,
        meta={"estimator": "nuts", "prior": label_prior.kind, "temperature": temperature},
    )
