"""Convergence diagnostics for MCMC draws: rank-normalised split-R̂ and ESS.

Thin wrappers over ``blackjax.diagnostics`` that accept parameter pytrees and keep the
trailing (event) shape of every leaf, including size-1 dimensions that blackjax
squeezes away.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.core import Tracer
from jaxtyping import Array

from .._internal import x64
from ._custom_types import Params
from ._util import as_float64

__all__ = ["split_rhat", "effective_sample_size"]


def _per_component(statistic: Callable[..., Array], x: Array) -> Array:
    # One (chains, samples) column at a time: blackjax's broadcasting over trailing
    # axes trips strict rank promotion and its squeeze drops size-1 event axes, and one
    # compiled 2-D statistic then serves every parameter of the same chain length.
    columns = jnp.reshape(x, (x.shape[0], x.shape[1], -1))
    if isinstance(columns, Tracer):
        # Inside a compiled program: one vmapped copy of the statistic, not one per column.
        values = jax.vmap(_jitted(statistic), in_axes=2)(columns)
    else:
        values = jnp.stack([_jitted(statistic)(columns[:, :, i]) for i in range(columns.shape[2])])
    return jnp.reshape(values, x.shape[2:])


@functools.cache
def _jitted(statistic: Callable[..., Array]) -> Callable[[Array], Array]:
    return jax.jit(lambda column: statistic(column, chain_axis=0, sample_axis=1))


def _over_leaves(statistic: Callable[..., Array], draws: Params) -> Params:
    def one(x: Array) -> Array:
        _check(x, "draws")
        return _per_component(statistic, x)

    return jax.tree.map(one, as_float64(draws))


def _check(draws: Array, name: str) -> None:
    if draws.ndim < 2:
        raise ValueError(
            f"`{name}` leaves must have shape (chains, samples, ...), got {draws.shape};"
            " add a chain axis with draws[None] for a single chain."
        )
    if draws.shape[1] < 4:
        raise ValueError(f"`{name}` needs at least 4 draws per chain, got {draws.shape[1]}.")


@x64
def split_rhat(draws: Params) -> Params:
    r"""Rank-normalised split-:math:`\hat R` (Vehtari et al. 2021) of every parameter.

    Each chain is split in half, draws are rank-normalised, and the larger of the bulk
    and folded (tail) :math:`\hat R` is returned, so a single chain is enough to detect
    drift. Values above 1.01 indicate the chains have not mixed.

    Parameters
    ----------
    draws : pytree
        Leaves of shape ``(chains, samples, *event)``.

    Returns
    -------
    pytree
        Leaves of shape ``event``.

    Raises
    ------
    ValueError
        If a leaf lacks the chain and sample axes or has fewer than 4 draws per chain.

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), Bayesian Analysis 16, 667.
    """
    from blackjax import diagnostics  # ~0.4 s to import: only when diagnosing draws

    return _over_leaves(diagnostics.rhat, draws)


@x64
def effective_sample_size(draws: Params) -> Params:
    r"""Effective sample size :math:`MN/\hat\tau` of every parameter.

    :math:`\hat\tau` is the integrated autocorrelation time from FFT autocovariances
    with Geyer's initial monotone sequence truncation, pooled over chains (as in Stan).

    Parameters
    ----------
    draws : pytree
        Leaves of shape ``(chains, samples, *event)``.

    Returns
    -------
    pytree
        Leaves of shape ``event``.

    Raises
    ------
    ValueError
        If a leaf lacks the chain and sample axes or has fewer than 4 draws per chain.

    References
    ----------
    Geyer (1992), Statistical Science 7, 473; Gelman et al., Bayesian Data Analysis (3rd ed.).
    """
    from blackjax import diagnostics

    return _over_leaves(diagnostics.effective_sample_size, draws)
