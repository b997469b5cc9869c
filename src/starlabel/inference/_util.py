"""Small helpers shared by the inference entry points."""

from __future__ import annotations

from typing import overload

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree


@overload
def as_float64(tree: Array) -> Array: ...
@overload
def as_float64(tree: PyTree) -> PyTree: ...
def as_float64(tree: PyTree) -> PyTree:
    """Cast floating array leaves (and Python floats) to float64; leave the rest alone.

    Entry points run under ``jax.enable_x64`` but callers often build inputs outside it
    (float32); mixing the two makes ``lax.cond`` branches disagree on dtypes and loses
    the precision the x64 mode is for.
    """

    def cast(leaf: object) -> object:
        if isinstance(leaf, float):
            return jnp.asarray(leaf, dtype=jnp.float64)
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf, dtype=jnp.float64)
        return leaf

    return jax.tree.map(cast, tree)
