"""The one loop that drives every MAP solver (optimistix minimisers and least squares).

We use optimistix's public solver interface (``init``/``step``/``terminate``/
``postprocess``) but our own ``while_loop``, because ``optimistix.minimise`` does not
expose the per-step loss, and a loss history is how a user sees whether a delayed
optimiser group or a reparametrisation actually helped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, PyTree

from ._custom_types import Args, Params
from ._solution import RESULTS, MAPSolution


def _with_aux(fn: Callable[[Params, Args], PyTree[Array]]) -> Callable[..., Any]:
    # optimistix solvers call fn(y, args) -> (out, aux); we never use aux.
    def wrapped(y: Params, args: Args) -> tuple[PyTree[Array], None]:
        return fn(y, args), None

    return wrapped


@eqx.filter_jit
def iterate(
    fn: Callable[[Params, Args], PyTree[Array]],
    solver: optx.AbstractMinimiser | optx.AbstractLeastSquaresSolver,
    params0: Params,
    args: Args,
    *,
    max_steps: int,
    loss_of: Callable[[PyTree[Array]], Float[Array, ""]],
    progress_every: int | None,
) -> MAPSolution:
    """Run ``solver`` on ``fn`` from ``params0``; record ``loss_of(fn(y))`` after each step."""
    params0 = jax.tree.map(jnp.asarray, params0)
    wrapped = _with_aux(fn)
    out_struct = jax.eval_shape(lambda: fn(params0, args))
    options: dict[str, Any] = {}
    tags: frozenset[object] = frozenset()
    state = solver.init(wrapped, params0, args, options, out_struct, None, tags)
    dynamic0, static = eqx.partition(state, eqx.is_array)
    loss0 = loss_of(fn(params0, args))
    history0 = jnp.full((max_steps,), jnp.nan, dtype=loss0.dtype)
    terminate0, result0 = solver.terminate(wrapped, params0, args, options, state, tags)

    def cond(carry: tuple) -> Array:
        _, step, _, terminate, result, _, loss = carry
        return (step < max_steps) & ~terminate & (result == optx.RESULTS.successful) & jnp.isfinite(loss)

    def body(carry: tuple) -> tuple:
        y, step, dynamic, _, _, history, _ = carry
        state = eqx.combine(dynamic, static)
        y, state, _ = solver.step(wrapped, y, args, options, state, tags)
        loss = loss_of(fn(y, args))
        if progress_every is not None:
            jax.lax.cond(
                (step + 1) % progress_every == 0,
                lambda: jax.debug.print("step {s:6d}  loss {l:.6e}", s=step + 1, l=loss),
                lambda: None,
            )
        terminate, result = solver.terminate(wrapped, y, args, options, state, tags)
        dynamic, _ = eqx.partition(state, eqx.is_array)
        return y, step + 1, dynamic, terminate, result, history.at[step].set(loss), loss

    carry = (params0, jnp.array(0), dynamic0, terminate0, result0, history0, loss0)
    y, steps, dynamic, terminate, optx_result, history, loss = jax.lax.while_loop(cond, body, carry)
    state = eqx.combine(dynamic, static)
    y, _, _ = solver.postprocess(wrapped, y, None, args, options, state, tags, optx_result)
    result = RESULTS.where(
        ~jnp.isfinite(loss),
        RESULTS.nonfinite,
        RESULTS.where(
            optx_result != optx.RESULTS.successful,
            RESULTS.solver_failed,
            RESULTS.where(terminate, RESULTS.successful, RESULTS.max_steps_reached),
        ),
    )
    return MAPSolution(value=y, result=result, loss=loss, num_steps=steps, loss_history=history)
