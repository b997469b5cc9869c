"""The scatter's fixed point, shared by the Cannon's trainers (EM, moments, summed folds).

Each trainer updates the per-pixel scatter s² by a fixed-point step and speeds it up
with Aitken's extrapolation; the noise variances and the unit that makes the
convergence test unit-free are computed alike in each.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["aitken", "noise_variance", "typical_variance"]


def noise_variance(ivar: Float[Array, "stars pixels"]) -> Float[Array, "stars pixels"]:
    """σ² = 1/ivar, and 0 (not inf) where ``ivar == 0``: a pixel without data adds nothing."""
    return jnp.where(ivar > 0, 1.0 / jnp.where(ivar > 0, ivar, 1.0), 0.0)


def typical_variance(ivar: Float[Array, "stars pixels"], star_weights: Float[Array, " stars"]) -> Array:
    """A typical noise variance per pixel (pixels,): the weighted harmonic mean of σ².

    Only to make the scatter's convergence test unit-free; 0 for a pixel without data.
    """
    weight_sum = jnp.sum(jnp.where(ivar > 0, star_weights[:, None], 0.0), axis=0)
    return weight_sum / jnp.maximum(star_weights @ ivar, 1e-300)


def aitken(s2: Array, step: Array, last_step: Array, iteration: Array) -> Array:
    """The scatter fixed-point iterate ``s2`` extrapolated to its limit, clipped at 0.

    EM converges linearly: successive steps shrink by a nearly constant ratio ρ per
    pixel. Aitken's extrapolation jumps to the limit, s² + step·ρ/(1 − ρ), where the
    ratio is a clean contraction (0 < ρ < 0.9); it leaves the fixed point unchanged.
    """
    ratio = step / jnp.where(last_step != 0, last_step, jnp.inf)
    smooth = (ratio > 0) & (ratio < 0.9) & (iteration > 0)
    jump = jnp.where(smooth, step * ratio / (1.0 - jnp.where(smooth, ratio, 0.0)), 0.0)
    return jnp.maximum(s2 + jump, 0.0)
