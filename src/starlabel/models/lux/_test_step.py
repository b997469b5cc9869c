"""The Lux test step: latents of new stars from whichever outputs they have, batched.

Output parameters are fixed. Each star's latent posterior is
p(z | y) ∝ N(z | 0, I) Π_o N(y_o | f_o(z), V_o), over the outputs given (normally flux
only). For affine transforms it is exactly Gaussian and computed in closed form for
all stars at once. Otherwise each star runs a fixed number of Levenberg–Marquardt
(damped Gauss–Newton) steps of :func:`starlabel.inference.damped_newton` under ``vmap``:
a fixed count, because a batch of iterative solvers under ``vmap`` waits for its
slowest member anyway, and each step is one small L × L solve. The Laplace approximation then gives the latent covariance
(JᵀWJ + I)⁻¹, exact for affine transforms.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ...inference import Marquardt, damped_newton
from ._objective import DataBlock, LuxOutput, affine_latent_posterior, masked_variance
from ._transforms import AbstractAffineTransform

__all__ = ["LatentPosterior", "latent_posterior"]


class LatentPosterior(eqx.Module):
    """Gaussian (Laplace) posterior of each star's latents, with fit statistics.

    Attributes
    ----------
    mean : Float[Array, "stars latents"]
        Posterior mode (= mean for affine transforms).
    cov : Float[Array, "stars latents latents"]
        Posterior covariance (inverse Gauss–Newton Hessian).
    chi2 : Float[Array, " stars"]
        Σ (y − f(z))² / V over the observed entries of the outputs used.
    n_used : Float[Array, " stars"]
        Number of observed entries used.
    converged : Bool[Array, " stars"]
        Whether the optimiser met its tolerance (always true in closed form).
    """

    mean: Float[Array, "stars latents"]
    cov: Float[Array, "stars latents latents"]
    chi2: Float[Array, " stars"]
    n_used: Float[Array, " stars"]
    converged: Bool[Array, " stars"]


def _chi2(outputs, blocks, latents) -> Float[Array, " stars"]:
    total = 0.0
    for output, block in zip(outputs, blocks, strict=True):
        prediction = jax.vmap(output.transform)(latents)
        var = masked_variance(output, block)
        total = total + jnp.sum(
            jnp.where(block.observed, (block.values - prediction) ** 2 / var, 0.0), axis=1
        )
    return jnp.asarray(total)  # an array once any block is added (there is always one)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # a trace counter for the no-retrace test
def latent_posterior(
    outputs: tuple[LuxOutput, ...],
    blocks: tuple[DataBlock, ...],
    latent_size: int,
    n_steps: int = 50,
    gtol: float = 1e-5,
) -> LatentPosterior:
    """Latent posterior of every star in ``blocks`` given fixed ``outputs`` (see module doc)."""
    # asarray: Python's sum starts from the int 0, so a checker sees `Array | int`.
    n_used = jnp.asarray(sum(jnp.sum(b.observed, axis=1) for b in blocks)).astype(float)
    if all(isinstance(o.transform, AbstractAffineTransform) for o in outputs):
        mean, cov = affine_latent_posterior(outputs, blocks)
        converged = jnp.ones(mean.shape[0], dtype=bool)
    else:

        def one(per_star_blocks):
            return _gauss_newton_one(outputs, per_star_blocks, latent_size, n_steps, gtol)

        mean, cov, converged = jax.vmap(one)(blocks)
    return LatentPosterior(
        mean=mean, cov=cov, chi2=_chi2(outputs, blocks, mean), n_used=n_used, converged=converged
    )


def _gauss_newton_one(outputs, blocks, latent_size: int, n_steps: int, gtol: float):
    def residuals(z):
        parts = []
        for output, block in zip(outputs, blocks, strict=True):
            var = jnp.where(block.observed, output.error_model.variance(block.reported_var), 1.0)
            prediction = output.transform(z)
            parts.append(jnp.where(block.observed, (block.values - prediction) / jnp.sqrt(var), 0.0))
        return jnp.concatenate(parts)

    def loss(z):
        # Twice the negative log posterior (χ² + |z|²): damped_newton's convention.
        return jnp.sum(residuals(z) ** 2) + jnp.sum(z**2)

    def gauss_newton(z):
        r = residuals(z)
        jac = -jax.jacfwd(residuals)(z)  # whitened d(prediction)/dz
        hessian = jac.T @ jac + jnp.eye(latent_size)
        return z - jac.T @ r, hessian

    # tol = 0: a fixed number of steps, unless a step lands exactly on the mode.
    z0 = jnp.zeros(latent_size)
    final = damped_newton(
        loss, gauss_newton, z0, damping=_DAMPING, max_steps=n_steps, tol=0.0, solve=jnp.linalg.solve
    )
    grad, hessian = gauss_newton(final.x)
    return final.x, jnp.linalg.inv(hessian), jnp.max(jnp.abs(grad)) < gtol


_DAMPING = Marquardt(initial=1e-3, shrink=0.3, grow=10.0, smallest=0.0, largest=float("inf"))
