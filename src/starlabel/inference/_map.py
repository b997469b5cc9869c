"""Maximum-a-posteriori fitting: one entry point per problem type, solver as argument."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, PyTree

from .._internal import x64
from ._custom_types import Args, LogDensityFn, Params, ResidualFn
from ._iterate import iterate
from ._solution import RESULTS, MAPSolution
from ._util import as_float64

__all__ = ["fit_map", "fit_least_squares"]


class _Negated(eqx.Module):
    # A Module rather than a closure so that equal inputs hit the jit cache.
    log_density: LogDensityFn

    def __call__(self, params: Params, args: Args) -> Float[Array, ""]:
        return -self.log_density(params, args)


def _half_sum_of_squares(residuals: PyTree[Array]) -> Float[Array, ""]:
    # asarray: Python's sum starts from the int 0, so a checker sees `Array | int`.
    return jnp.asarray(0.5 * sum(jnp.sum(r**2) for r in jax.tree.leaves(residuals)))


def _check_params(params0: Params) -> None:
    leaves = jax.tree.leaves(params0)
    if not leaves:
        raise ValueError("`params0` has no array leaves; pass the starting parameters.")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"`params0` has a leaf of dtype {jnp.result_type(leaf)}; every parameter must"
                " be floating point (write 1.0, not 1)."
            )


def _finish(solution: MAPSolution, throw: bool) -> MAPSolution:
    if throw:
        value = solution.result.error_if(solution.value, solution.result != RESULTS.successful)
        solution = eqx.tree_at(lambda s: s.value, solution, value)
    return solution


@x64
def fit_map(
    log_density: LogDensityFn,
    solver: optx.AbstractIterativeSolver,
    params0: Params,
    args: Args = None,
    *,
    max_steps: int = 256,
    throw: bool = False,
    progress_every: int | None = None,
) -> MAPSolution:
    r"""Maximise ``log_density(params, args)`` over a parameter pytree.

    Minimises :math:`-\log p(\theta \mid \mathrm{data})` with any optimistix minimiser:
    ``optimistix.BFGS``/``LBFGS`` (second order), :class:`NaturalGradient` (Fisher
    preconditioned), or an optax optimiser mapped onto parameter groups with
    :func:`optax_minimiser`. Runs in float64, jitted; ``vmap`` it over stars.

    Parameters
    ----------
    log_density : callable
        ``log_density(params, args) -> scalar``: the log posterior (or likelihood) up to a
        constant. Pass data through ``args``, not a closure, so it is not baked into the
        compiled program.
    solver : optimistix.AbstractMinimiser
        The algorithm, e.g. ``optx.BFGS(rtol=1e-8, atol=1e-8)``.
    params0 : pytree
        Starting parameters (floating leaves, any structure).
    args : pytree, optional
        Passed unchanged as ``log_density``'s second argument.
    max_steps : int
        Step cap; also the length of ``loss_history``.
    throw : bool
        Raise (through ``equinox.error_if``) when the result is not successful. The default
        ``False`` suits batches: inspect ``solution.result`` per star instead.
    progress_every : int, optional
        Print the step and loss every this many steps (``jax.debug.print``).

    Returns
    -------
    MAPSolution
        ``value`` (pytree like ``params0``), ``result``, ``loss`` (the negative log
        density at ``value``), ``num_steps`` and ``loss_history`` (shape ``(max_steps,)``).

    Raises
    ------
    TypeError
        If a leaf of ``params0`` is not floating point or ``solver`` is a least-squares
        solver (use :func:`fit_least_squares`).

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np, optimistix as optx
    >>> log_p = lambda p, a: -0.5 * jnp.sum((p["x"] - a) ** 2)
    >>> sol = fit_map(log_p, optx.BFGS(rtol=1e-8, atol=1e-8), {"x": jnp.zeros(2)}, jnp.ones(2))
    >>> np.allclose(sol.value["x"], 1.0)  # float64 results: inspect them with numpy
    True
    """
    if not isinstance(solver, optx.AbstractMinimiser):
        raise TypeError(
            f"`solver` must be an optimistix minimiser such as optx.BFGS, got"
            f" {type(solver).__name__}; for Levenberg–Marquardt or Gauss–Newton write the"
            " model as residuals and call fit_least_squares."
        )
    _check_params(params0)
    params0, args = as_float64((params0, args))
    return _finish(
        iterate(
            _Negated(log_density),
            solver,
            params0,
            args,
            max_steps=max_steps,
            loss_of=_scalar,
            progress_every=progress_every,
        ),
        throw,
    )


def _scalar(out: Float[Array, ""]) -> Float[Array, ""]:
    return out


@x64
def fit_least_squares(
    residuals: ResidualFn,
    solver: optx.AbstractIterativeSolver,
    params0: Params,
    args: Args = None,
    *,
    max_steps: int = 256,
    throw: bool = False,
    progress_every: int | None = None,
) -> MAPSolution:
    r"""Minimise ``½ Σ r²`` for whitened residuals ``r = residuals(params, args)``.

    For Gaussian noise, ``r = (data - model(params)) / σ`` makes this the maximum
    likelihood fit, so Gauss–Newton and Levenberg–Marquardt apply.

    Parameters
    ----------
    residuals : callable
        ``residuals(params, args) -> pytree of arrays`` (e.g. shape ``(pixels,)``).
    solver : optimistix.AbstractLeastSquaresSolver
        E.g. ``optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)``.
    params0, args, max_steps, throw, progress_every
        As for :func:`fit_map`.

    Returns
    -------
    MAPSolution
        ``loss`` and ``loss_history`` are ``½ Σ r²`` (that is ``χ²/2``).

    Raises
    ------
    TypeError
        If ``solver`` is not a least-squares solver or a leaf of ``params0`` is not floating.
    """
    if not isinstance(solver, optx.AbstractLeastSquaresSolver):
        raise TypeError(
            f"`solver` must be an optimistix least-squares solver such as"
            f" optx.LevenbergMarquardt, got {type(solver).__name__}; for BFGS and friends"
            " call fit_map with a log density."
        )
    _check_params(params0)
    params0, args = as_float64((params0, args))
    return _finish(
        iterate(
            residuals,
            solver,
            params0,
            args,
            max_steps=max_steps,
            loss_of=_half_sum_of_squares,
            progress_every=progress_every,
        ),
        throw,
    )
