"""Gradient-based training for any Lux model: optimistix (L-)BFGS, optax Adam as fallback.

Used for transforms that are not affine (polynomial, MLP, user functions) and user
error models, and to cross-check the closed-form solver on affine models. The
parameters are every inexact array leaf of the outputs' transforms and error models,
plus the training latents for the joint MAP objective. Data enter through ``args``,
never through closures, so one compiled program serves any training set of the same
shape.

optimistix's own driver does not expose per-step losses, so :func:`_run_quasi_newton`
drives the solver's ``init``/``step``/``terminate`` interface in a ``lax.while_loop``
and records the objective and gradient norm at each accepted iterate.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._objective import DataBlock, LuxOutput, joint_objective, marginal_objective

__all__ = ["GradientResult", "fit_gradient"]


class GradientResult(eqx.Module):
    """Outcome of :func:`fit_gradient` (internal)."""

    outputs: tuple[LuxOutput, ...]
    latents: Float[Array, "stars latents"] | None
    history: Float[Array, " steps"]
    grad_norm_history: Float[Array, " steps"]
    n_steps: Int[Array, ""]
    converged: Bool[Array, ""]


def _objective(params: PyTree, args: tuple) -> tuple[Float[Array, ""], None]:
    static, blocks, marginal = args
    trainable, latents = params
    outputs = eqx.combine(trainable, static)
    if marginal:
        return marginal_objective(outputs, blocks), None
    return joint_objective(outputs, latents, blocks), None


def _tree_norm(tree: PyTree) -> Float[Array, ""]:
    leaves = [leaf for leaf in jax.tree.leaves(tree) if eqx.is_array(leaf)]
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in leaves))


@eqx.filter_jit
def _run_quasi_newton(solver, y0, args, max_steps: int):
    fn = _objective
    options: dict = {}
    tags: frozenset = frozenset()
    f_struct, aux_struct = jax.eval_shape(lambda y: fn(y, args), y0)
    state0 = solver.init(fn, y0, args, options, f_struct, aux_struct, tags)

    # Solver states hold non-array parts (jaxprs of closures); only arrays may be carried.
    dynamic0, static_state = eqx.partition(state0, eqx.is_array)

    def cond(carry):
        _, _, step, _, _, done = carry
        return (step < max_steps) & ~done

    def body(carry):
        y, dynamic, step, history, grad_history, _ = carry
        state = eqx.combine(dynamic, static_state)
        y, state, _ = solver.step(fn, y, args, options, state, tags)
        done, _ = solver.terminate(fn, y, args, options, state, tags)
        history = history.at[step].set(state.f_info.f)
        grad_history = grad_history.at[step].set(_tree_norm(state.f_info.grad))
        dynamic, _ = eqx.partition(state, eqx.is_array)
        return y, dynamic, step + 1, history, grad_history, done

    history = jnp.full(max_steps, jnp.nan)
    carry = (y0, dynamic0, jnp.asarray(0), history, history, jnp.asarray(False))
    y, dynamic, step, history, grad_history, done = jax.lax.while_loop(cond, body, carry)
    state = eqx.combine(dynamic, static_state)
    y_final, _, _ = solver.postprocess(fn, y, None, args, options, state, tags, optx.RESULTS.successful)
    return y_final, step, history, grad_history, done


@eqx.filter_jit
def _run_adam(y0, args, learning_rate: float, max_steps: int, rtol: float):
    optimiser = optax.adam(learning_rate)
    value_and_grad = jax.value_and_grad(lambda y: _objective(y, args)[0])
    window = 200

    def cond(carry):
        _, _, step, history, _ = carry
        # Stop when the loss changed by less than rtol (relative) over the last window.
        old = history[jnp.maximum(step - window, 0)]
        new = history[jnp.maximum(step - 1, 0)]
        settled = (step > window) & (jnp.abs(old - new) <= rtol * jnp.abs(new))
        return (step < max_steps) & ~settled

    def body(carry):
        y, opt_state, step, history, grad_history = carry
        value, grad = value_and_grad(y)
        updates, opt_state = optimiser.update(grad, opt_state, y)
        y = optax.apply_updates(y, updates)
        return (
            y,
            opt_state,
            step + 1,
            history.at[step].set(value),
            grad_history.at[step].set(_tree_norm(grad)),
        )

    history = jnp.full(max_steps, jnp.nan)
    carry = (y0, optimiser.init(y0), jnp.asarray(0), history, history)
    y, _, step, history, grad_history = jax.lax.while_loop(cond, body, carry)
    return y, step, history, grad_history, step < max_steps


def fit_gradient(
    outputs: tuple[LuxOutput, ...],
    blocks: tuple[DataBlock, ...],
    latents0: Float[Array, "stars latents"],
    *,
    objective: Literal["map", "marginal"],
    solver: Literal["lbfgs", "bfgs", "adam"],
    max_steps: int,
    rtol: float,
    atol: float,
    learning_rate: float,
) -> GradientResult:
    """Minimise the joint or marginal objective from the outputs' current parameters."""
    trainable, static = eqx.partition(outputs, eqx.is_inexact_array)
    marginal = objective == "marginal"
    latents = None if marginal else latents0
    args = (static, blocks, marginal)
    y0 = (trainable, latents)
    if solver == "adam":
        y, step, history, grad_history, converged = _run_adam(y0, args, learning_rate, max_steps, rtol)
    else:
        cls = optx.LBFGS if solver == "lbfgs" else optx.BFGS
        y, step, history, grad_history, converged = _run_quasi_newton(
            cls(rtol=rtol, atol=atol), y0, args, max_steps
        )
    trainable, latents = y
    return GradientResult(
        outputs=eqx.combine(trainable, static),
        latents=latents,
        history=history,
        grad_norm_history=grad_history,
        n_steps=step,
        converged=converged,
    )
