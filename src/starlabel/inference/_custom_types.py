"""Type aliases shared by the inference toolkit (one place, as in optimistix)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, PyTree

Params: TypeAlias = PyTree[ArrayLike]
"""A parameter pytree: a dict, tuple, Module or single array of floating leaves."""

Args: TypeAlias = PyTree[Any]
"""Data and fixed quantities passed to an objective through ``args``, never a closure."""

LogDensityFn: TypeAlias = Callable[[Params, Args], Float[Array, ""]]
"""``log_density(params, args) -> scalar``: a log posterior (or likelihood) up to a constant."""

ResidualFn: TypeAlias = Callable[[Params, Args], PyTree[Array]]
"""``residuals(params, args) -> pytree``: whitened residuals, ``-log L = ½ Σ r²``."""
