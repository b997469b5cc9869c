"""Lux outputs, their data blocks, and the two training objectives.

The model, for star n and output block o (labels, flux, …) with reported variances σ²:

    z_n ~ N(0, I_L),    y_{n,o} ~ N(f_o(z_n; θ_o), g_o(σ²_{n,o}; φ_o)),

with priors p(θ_o), p(φ_o). Unobserved entries (NaN labels, masked pixels) are simply
absent from the product. Two objectives are offered:

* **joint MAP** (Lux / pollux): minimise −log p(Y, Z, θ, φ) over the training latents
  ``Z`` and the parameters together (:func:`joint_objective`);
* **marginal MAP**: integrate the latents out and minimise −log p(Y, θ, φ)
  (:func:`marginal_objective`). Exact for affine transforms: y_n is then Gaussian with
  covariance W Wᵀ + diag(V_n), and the Woodbury identity keeps the cost at
  O(pixels · latents²) per star. It does not shrink the learned scatter the way joint
  MAP does (joint MAP lets each star's latents absorb part of its noise).

Both include every normalising constant, so values are true negative log densities.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._error_models import AbstractErrorModel
from ._transforms import AbstractAffineTransform, AbstractTransform

__all__ = [
    "LuxOutput",
    "joint_objective",
    "marginal_objective",
    "affine_latent_posterior",
]

LOG_2PI = float(np.log(2.0 * np.pi))


class LuxOutput(eqx.Module):
    """One observed block of a Lux model: its name, transform and error model.

    Parameters
    ----------
    name : str
        ``"labels"`` and ``"flux"`` are filled from the dataset; other names take their
        data from ``Lux.fit(..., extra={name: OutputData(...)})``.
    transform : AbstractTransform
        How the block depends on the latents (e.g. :class:`AffineTransform`).
    error_model : AbstractErrorModel
        How reported uncertainties become the noise variance (e.g. :class:`PixelScatter`).
    """

    name: str = eqx.field(static=True)
    transform: AbstractTransform
    error_model: AbstractErrorModel

    def __check_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"output `name` must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.transform, AbstractTransform):
            raise TypeError(
                f"output {self.name!r}: `transform` must be a Lux transform such as"
                f" AffineTransform(), got {type(self.transform).__name__}."
            )
        if not isinstance(self.error_model, AbstractErrorModel):
            raise TypeError(
                f"output {self.name!r}: `error_model` must be a Lux error model such as"
                f" PixelScatter() or NoScatter(), got {type(self.error_model).__name__}."
            )

    def log_prior(self) -> Float[Array, ""]:
        """Log prior of the transform's and error model's parameters."""
        return self.transform.log_prior() + self.error_model.log_prior()


class DataBlock(eqx.Module):
    """One output's values for a set of stars, in scaled units (internal).

    Unobserved entries have ``observed == False``; their ``values`` are 0 and their
    ``reported_var`` is 1 so that no arithmetic on them produces NaN (which would leak
    into gradients even through a ``where``).
    """

    values: Float[Array, "stars outputs"]
    reported_var: Float[Array, "stars outputs"]
    observed: Bool[Array, "stars outputs"]


def masked_variance(output: LuxOutput, block: DataBlock) -> Float[Array, "stars outputs"]:
    var = jax.vmap(output.error_model.variance)(block.reported_var)
    return jnp.where(block.observed, var, 1.0)


def block_neg_log_likelihood(
    output: LuxOutput, latents: Float[Array, "stars latents"], block: DataBlock
) -> Float[Array, ""]:
    """−log p(block | latents) summed over observed entries."""
    prediction = jax.vmap(output.transform)(latents)
    var = masked_variance(output, block)
    resid = jnp.where(block.observed, block.values - prediction, 0.0)
    terms = resid**2 / var + jnp.log(var) + LOG_2PI
    return 0.5 * jnp.sum(jnp.where(block.observed, terms, 0.0))


def joint_objective(
    outputs: tuple[LuxOutput, ...],
    latents: Float[Array, "stars latents"],
    blocks: tuple[DataBlock, ...],
) -> Float[Array, ""]:
    """−log p(Y, Z, θ, φ): the joint MAP objective over latents and parameters."""
    total = 0.5 * jnp.sum(latents**2) + 0.5 * latents.size * LOG_2PI
    for output, block in zip(outputs, blocks, strict=True):
        total = total + block_neg_log_likelihood(output, latents, block) - output.log_prior()
    return total


def affine_transform(output: LuxOutput) -> AbstractAffineTransform:
    """The transform of ``output``, which the marginal objective and EM need affine."""
    transform = output.transform
    if not isinstance(transform, AbstractAffineTransform):
        raise TypeError(
            f"output {output.name!r} has a {type(transform).__name__}; the marginal"
            " objective and closed-form latents need affine transforms (Linear/Affine)."
            " Use objective='map' for nonlinear transforms."
        )
    return transform


def _affine_statistics(
    outputs: tuple[LuxOutput, ...], blocks: tuple[DataBlock, ...]
) -> tuple[Float[Array, "stars latents latents"], Float[Array, "stars latents"], Float[Array, ""]]:
    """Latent precision Λ_n, information vector h_n and ½Σ(log 2πV + w r²) per dataset."""
    latent_size = affine_transform(outputs[0]).initialised_weight().shape[1]
    n_stars = blocks[0].values.shape[0]
    precision = jnp.broadcast_to(jnp.eye(latent_size), (n_stars, latent_size, latent_size))
    info = jnp.zeros((n_stars, latent_size))
    constant = jnp.zeros(())
    for output, block in zip(outputs, blocks, strict=True):
        transform = affine_transform(output)
        var = masked_variance(output, block)
        weight_ivar = jnp.where(block.observed, 1.0 / var, 0.0)
        resid = jnp.where(block.observed, block.values - transform.offset()[None, :], 0.0)
        precision = precision + jnp.einsum("np,pi,pj->nij", weight_ivar, transform.weight, transform.weight)
        info = info + jnp.einsum("np,pi->ni", weight_ivar * resid, transform.weight)
        terms = jnp.log(var) + LOG_2PI + weight_ivar * resid**2
        constant = constant + 0.5 * jnp.sum(jnp.where(block.observed, terms, 0.0))
    return precision, info, constant


def marginal_objective(outputs: tuple[LuxOutput, ...], blocks: tuple[DataBlock, ...]) -> Float[Array, ""]:
    """−log p(Y, θ, φ) with the latents integrated out (affine transforms only).

    Per star, with Λ = I + Σ Wᵀ diag(w) W and h = Σ Wᵀ (w ∘ (y − b)), w = 1/V:
    ``½ Σ (log 2πV + w (y − b)²) − ½ hᵀ Λ⁻¹ h + ½ log det Λ``.
    """
    precision, info, constant = _affine_statistics(outputs, blocks)
    chol = jnp.linalg.cholesky(precision)
    alpha = jax.scipy.linalg.cho_solve((chol, True), info[..., None])[..., 0]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)))
    total = constant - 0.5 * jnp.sum(info * alpha) + 0.5 * log_det
    for output in outputs:
        total = total - output.log_prior()
    return total


def affine_latent_posterior(
    outputs: tuple[LuxOutput, ...], blocks: tuple[DataBlock, ...]
) -> tuple[Float[Array, "stars latents"], Float[Array, "stars latents latents"]]:
    """Exact Gaussian posterior of each star's latents given the blocks (affine transforms).

    Returns
    -------
    mean : (stars, latents)
    cov : (stars, latents, latents)
        Λ⁻¹; the mean is also the MAP latent vector given the parameters.
    """
    precision, info, _ = _affine_statistics(outputs, blocks)
    chol = jnp.linalg.cholesky(precision)
    mean = jax.scipy.linalg.cho_solve((chol, True), info[..., None])[..., 0]
    eye = jnp.broadcast_to(jnp.eye(precision.shape[-1]), precision.shape)
    cov = jax.scipy.linalg.cho_solve((chol, True), eye)
    return mean, cov
