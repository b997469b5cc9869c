"""Named parameters with numpyro priors, shared by the user-function transform and error model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["check_function", "named_parameters", "named_log_prior"]


def check_function(fn: Callable[..., Array], signature: str) -> None:
    """Raise unless ``fn`` is callable, naming the expected ``signature``."""
    if not callable(fn):
        raise TypeError(f"`fn` must be callable {signature}, got {type(fn).__name__}.")


def named_parameters(
    params: Mapping[str, Any], priors: Mapping[str, Any] | tuple[tuple[str, Any], ...]
) -> tuple[dict[str, Array], tuple[tuple[str, Any], ...]]:
    """Parameters as float arrays, and priors as ``(name, distribution)`` pairs, validated.

    Raises
    ------
    ValueError
        If a prior names no parameter.
    TypeError
        If a prior has no ``log_prob`` (is not a numpyro distribution).
    """
    values = {str(k): jnp.asarray(v, dtype=float) for k, v in params.items()}
    items = tuple(priors.items()) if isinstance(priors, Mapping) else tuple(priors)
    unknown = sorted(name for name, _ in items if name not in values)
    if unknown:
        raise ValueError(
            f"`priors` names {unknown} that are not in `params` {sorted(values)};"
            " give each prior the name of a parameter."
        )
    for name, prior in items:
        if not hasattr(prior, "log_prob"):
            raise TypeError(
                f"prior for {name!r} must be a numpyro distribution (has .log_prob),"
                f" got {type(prior).__name__}."
            )
    return values, items


def named_log_prior(params: Mapping[str, Array], priors: tuple[tuple[str, Any], ...]) -> Float[Array, ""]:
    """Σ over named priors of ``prior.log_prob(param)`` (parameters without one are flat)."""
    total = jnp.zeros(())
    for name, prior in priors:
        total = total + jnp.sum(prior.log_prob(params[name]))
    return total
