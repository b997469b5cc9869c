"""Where and why starlabel computes in 64-bit floats.

JAX defaults to float32. Data-driven spectral models solve normal equations whose
design matrices (polynomials in scaled labels, latent products) have condition
numbers of 1e6-1e8: in float32 the Cholesky factors lose most significant digits,
training objectives stall, and Fisher covariances come out indefinite. So every
*numerical entry point* (``fit``, ``infer``, ``predict_flux``, Fisher/Hessian
evaluation) runs inside ``jax.enable_x64(True)`` via the :func:`x64` decorator.

We deliberately do not flip the process-wide ``jax_enable_x64`` flag at import:
that would silently change the numerics of the user's own JAX code. Neural-network
training, which does not need the precision, is free to stay in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax

_P = ParamSpec("_P")
_R = TypeVar("_R")


def x64(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with JAX 64-bit mode enabled (see the module docstring for why)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper
