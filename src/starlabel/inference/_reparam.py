r"""Fisher eigen-reparametrisation: optimise and sample in whitened coordinates.

With the precision :math:`P = V\Lambda V^\top` of a Gaussian approximation centred at
:math:`\hat\theta`, the map :math:`\theta = \hat\theta + V\Lambda^{-1/2} u` turns that
Gaussian into :math:`N(0, I)` in :math:`u`. Parameters that differ by orders of
magnitude in scale, or are strongly correlated, become unit-scale and uncorrelated,
so a black-box optimiser converges in a handful of steps and NUTS can use an identity
mass matrix with step size near 1.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float

from .._internal import x64
from ._custom_types import Args, LogDensityFn, Params
from ._gaussian import GaussianApproximation

__all__ = ["Whitening", "whiten", "WhitenedLogDensity"]


class Whitening(eqx.Module):
    r"""An affine map :math:`\theta = c + T u` between whitened ``u`` and parameters.

    Attributes
    ----------
    centre : pytree
        :math:`c`, in the parameters' structure (usually the MAP).
    transform : Float[Array, "n n"]
        :math:`T`; columns are the parameter-space directions of unit steps in ``u``.
    inverse_transform : Float[Array, "n n"]
        :math:`T^{-1}`.
    """

    centre: Params
    transform: Float[Array, "n n"]
    inverse_transform: Float[Array, "n n"]

    def __check_init__(self) -> None:
        n = ravel_pytree(self.centre)[0].shape[0]
        for name in ("transform", "inverse_transform"):
            shape = getattr(self, name).shape
            if shape[-2:] != (n, n):
                raise ValueError(
                    f"Whitening.{name} has shape {shape}; expected ({n}, {n}) for a centre"
                    f" with {n} scalar parameters."
                )

    @staticmethod
    @x64
    def identity(centre: Params) -> Whitening:
        r"""The trivial map :math:`\theta = c + u` (no rescaling)."""
        flat = ravel_pytree(centre)[0]
        eye = jnp.eye(flat.shape[0], dtype=flat.dtype)
        return Whitening(centre, eye, eye)

    @property
    def size(self) -> int:
        """Number of scalar parameters ``n``."""
        return int(self.transform.shape[-1])

    @x64
    def to_params(self, u: Float[ArrayLike, " n"]) -> Params:
        """Parameters :math:`c + T u` in the structure of ``centre``."""
        flat, unravel = ravel_pytree(self.centre)
        return unravel(flat + self.transform @ jnp.asarray(u, dtype=flat.dtype))

    @x64
    def from_params(self, params: Params) -> Float[Array, " n"]:
        r"""Whitened coordinates :math:`T^{-1}(\theta - c)`."""
        flat = ravel_pytree(self.centre)[0]
        return self.inverse_transform @ (ravel_pytree(params)[0] - flat)


@x64
def whiten(approx: GaussianApproximation, *, floor: float = 1e-10) -> Whitening:
    r"""The whitening map of a Gaussian approximation: :math:`T = V\Lambda^{-1/2}`.

    In ``u`` the approximation is :math:`N(0, I)`. Eigenvalues that are not positive
    (an indefinite Hessian away from the optimum, or an unconstrained direction) are
    replaced by ``floor`` times the largest, so the map stays finite and such
    directions get large steps; check ``approx.result`` for that case.

    Parameters
    ----------
    approx : GaussianApproximation
        From :func:`laplace_approximation`, :func:`fisher_approximation` or
        :func:`gaussian_from_precision`.
    floor : float
        Smallest eigenvalue used, relative to the largest.

    Returns
    -------
    Whitening

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from starlabel.inference import gaussian_from_precision
    >>> approx = gaussian_from_precision(jnp.zeros(2), jnp.diag(jnp.array([4.0, 0.25])))
    >>> w = whiten(approx)
    >>> [round(float(abs(x)), 6) for x in w.to_params(jnp.array([1.0, 1.0]))]
    [0.5, 2.0]
    """
    values = jnp.abs(approx.eigenvalues)
    values = jnp.maximum(values, floor * jnp.max(values))
    vectors = approx.eigenvectors
    transform = vectors / jnp.sqrt(values)[None, :]
    inverse = vectors.T * jnp.sqrt(values)[:, None]
    return Whitening(approx.mean, transform, inverse)


class WhitenedLogDensity(eqx.Module):
    """A log density re-expressed in whitened coordinates, for :func:`fit_map` or :func:`nuts`.

    Call it as ``WhitenedLogDensity(log_density)(u, (whitening, args))``: the whitening
    travels in ``args`` so that one compiled function serves every star. The Jacobian of
    the affine map is constant and omitted (it shifts the log density by a constant).

    Parameters
    ----------
    log_density : callable
        ``log_density(params, args) -> scalar`` in the original parameters.
    """

    log_density: LogDensityFn

    def __call__(self, u: Float[Array, " n"], args: tuple[Whitening, Args]) -> Float[Array, ""]:
        """Log density at ``whitening.to_params(u)``."""
        whitening, inner = args
        return self.log_density(whitening.to_params(u), inner)
