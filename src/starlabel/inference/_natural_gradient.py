r"""Natural-gradient descent: gradients preconditioned by the inverse Fisher matrix.

The step :math:`\Delta\theta = -\eta F^{-1}\nabla(-\log p)` is invariant to how the
parameters are scaled, so one learning rate near 1 serves parameters whose natural
units differ by orders of magnitude; on a quadratic objective with the exact ``F`` it
is Newton's method and converges in one step. Here ``F`` is fixed (computed once, at
the starting point or any reference point), the classic preconditioned form.

Two front-ends share the preconditioner: :class:`NaturalGradient`, an optimistix
minimiser built as descent + search, and :func:`scale_by_fisher`, an optax transform
to chain with per-group optax optimisers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import optax
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree, Scalar

from .._internal import x64
from ._custom_types import Params
from ._gaussian import GaussianApproximation
from ._reparam import whiten

__all__ = ["NaturalGradientDescent", "NaturalGradient", "scale_by_fisher"]


@x64
def _metric(fisher: GaussianApproximation, floor: float) -> Float[Array, "n n"]:
    # F⁻¹ = T Tᵀ with T the whitening transform, which already regularises
    # non-positive eigenvalues (see `whiten`).
    transform = whiten(fisher, floor=floor).transform
    return transform @ transform.T


def _precondition(metric: Float[Array, "n n"], grad: Params) -> Params:
    flat, unravel = ravel_pytree(grad)
    return unravel(metric @ flat)


class _NaturalDescentState(eqx.Module):
    direction: Params


class NaturalGradientDescent(optx.AbstractDescent):
    """Descent direction :math:`-F^{-1} g` for a fixed metric :math:`F^{-1}`.

    Parameters
    ----------
    metric : Float[Array, "n n"]
        The inverse Fisher matrix (flattened parameter order).
    """

    metric: Float[Array, "n n"]

    def init(self, y: Params, f_info_struct: object) -> _NaturalDescentState:
        """Initial (unused) state with the structure of ``y``."""
        del f_info_struct
        return _NaturalDescentState(y)

    def query(self, y: Params, f_info: object, state: _NaturalDescentState) -> _NaturalDescentState:
        """Precondition the gradient at ``y``."""
        del y, state
        grad = f_info.compute_grad() if isinstance(f_info, optx.FunctionInfo.ResidualJac) else f_info.grad  # type: ignore[attr-defined]
        return _NaturalDescentState(_precondition(self.metric, grad))

    def step(self, step_size: Scalar, state: _NaturalDescentState) -> tuple[Params, optx.RESULTS]:
        """The update ``-step_size · F⁻¹ g``."""
        return jax.tree.map(lambda d: -step_size * d, state.direction), optx.RESULTS.successful


class NaturalGradient(optx.AbstractGradientDescent):
    """Natural-gradient minimiser for :func:`fit_map` (optimistix descent + search).

    Parameters
    ----------
    fisher : GaussianApproximation
        Supplies :math:`F` (e.g. :func:`fisher_approximation` at the starting point).
    learning_rate : float
        Constant step multiplier when ``search`` is not given; 1 is the Newton step.
    rtol, atol : float
        Cauchy termination tolerances on parameter and loss changes.
    norm : callable
        Norm for the termination test (default ``optimistix.max_norm``).
    search : optimistix.AbstractSearch, optional
        A line search (e.g. ``optx.BacktrackingArmijo()``) to use instead of a constant
        learning rate, for objectives far from quadratic.
    floor : float
        Relative eigenvalue floor used when inverting ``F``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from starlabel.inference import fit_map, gaussian_from_precision
    >>> prec = jnp.diag(jnp.array([1e4, 1e-2]))
    >>> log_p = lambda x, a: -0.5 * x @ a @ x
    >>> solver = NaturalGradient(gaussian_from_precision(jnp.ones(2), prec), rtol=1e-9, atol=1e-9)
    >>> int(fit_map(log_p, solver, jnp.ones(2), prec).num_steps) <= 3
    True
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar]
    descent: NaturalGradientDescent
    search: optx.AbstractSearch

    def __init__(
        self,
        fisher: GaussianApproximation,
        learning_rate: float = 1.0,
        *,
        rtol: float = 1e-8,
        atol: float = 1e-8,
        norm: Callable[[PyTree], Scalar] = optx.max_norm,
        search: optx.AbstractSearch | None = None,
        floor: float = 1e-10,
    ) -> None:
        self.rtol = rtol
        self.atol = atol
        self.norm = norm
        self.descent = NaturalGradientDescent(_metric(fisher, floor))
        self.search = optx.LearningRate(learning_rate) if search is None else search


class _EmptyState(NamedTuple):
    pass


def scale_by_fisher(fisher: GaussianApproximation, *, floor: float = 1e-10) -> optax.GradientTransformation:
    """Optax transform mapping gradients ``g`` to natural gradients ``F⁻¹ g``.

    Chain it before per-group optimisers, e.g.
    ``optax.chain(scale_by_fisher(F), group_optimisers({...}, params))``: the groups then
    all run well with learning rates near 1.

    Parameters
    ----------
    fisher : GaussianApproximation
        Supplies :math:`F`.
    floor : float
        Relative eigenvalue floor used when inverting ``F``.

    Returns
    -------
    optax.GradientTransformation
    """
    metric = _metric(fisher, floor)

    def init(params: Params) -> _EmptyState:
        del params
        return _EmptyState()

    # Typed as optax's TransformUpdateFn asks: any state (it is this transform's own).
    def update(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        del params
        return _precondition(metric, updates), state

    return optax.GradientTransformation(init, update)
