"""The mixtures' former NUTS warm-up (Stan-style step size + diagonal metric), kept as a baseline.

``mixtures/_sampling.py`` sampled with this hand-written blackjax loop until it moved onto
the library's one sampler path (:func:`starlabel.inference.nuts`, whitened by the Laplace
Hessian at the MAP). ``benchmarks/posteriors.py --mixtures`` runs both side by side; this
copy (verbatim from commit 46a5a92's ``_sampling.py``) is the "before".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.step_size import dual_averaging_adaptation
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray
from numpyro.diagnostics import effective_sample_size

from starlabel.mixtures._sampling import _Chain, _Potential, to_constrained, to_unconstrained


class _Warmup(eqx.Module):
    """Adaptation state carried through the scan: step size, metric, running moments."""

    step: Any
    inverse_mass: Array
    count: Array
    mean: Array
    m2: Array


def _schedule(num_warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step flags: inside a slow (metric) window, and last step of such a window.

    Stan's layout, simplified to two slow windows: 15% step-size only, slow windows
    over 15-40% and 40-90% (the metric is re-estimated at the end of each), then 10%
    step-size only with the final metric.
    """
    edges = [int(round(f * num_warmup)) for f in (0.15, 0.4, 0.9)]
    steps = np.arange(num_warmup)
    slow = (steps >= edges[0]) & (steps < edges[2])
    window_end = np.isin(steps, [edges[1] - 1, edges[2] - 1]) & slow
    return slow, window_end


@eqx.filter_jit
def _nuts(
    potential: _Potential, model_args: tuple, z0: dict, key: PRNGKeyArray, num_warmup: int, num_samples: int
) -> tuple[dict, Array, Array]:
    # One NUTS kernel serves warmup and sampling: its step size and metric are scan
    # carries, so the (large) trajectory builder is compiled once, not twice as with
    # blackjax.window_adaptation followed by blackjax.nuts: half the compile time.
    def logdensity(z: dict) -> Array:
        return -potential(z, model_args)

    flat0, unravel = ravel_pytree(z0)
    n_dim = flat0.shape[0]
    kernel = blackjax.nuts.build_kernel()
    da_init, da_update, _ = dual_averaging_adaptation(0.85)
    slow, window_end = _schedule(num_warmup)
    total = num_warmup + num_samples
    in_warmup = np.arange(total) < num_warmup
    slow = np.concatenate([slow, np.zeros(num_samples, bool)])
    window_end = np.concatenate([window_end, np.zeros(num_samples, bool)])

    def one(carry: tuple[Any, _Warmup], xs: tuple) -> tuple[tuple[Any, _Warmup], tuple]:
        state, warm = carry
        k, warming, is_slow, is_end = xs
        step_size = jnp.where(warming, jnp.exp(warm.step.log_step_size), jnp.exp(warm.step.log_step_size_avg))
        state, info = kernel(k, state, logdensity, step_size, warm.inverse_mass)
        flat, _ = ravel_pytree(state.position)
        # Welford running variance of the positions inside slow windows.
        count = warm.count + is_slow
        delta = flat - warm.mean
        mean = jnp.where(is_slow, warm.mean + delta / jnp.maximum(count, 1), warm.mean)
        m2 = jnp.where(is_slow, warm.m2 + delta * (flat - mean), warm.m2)
        step = jax.tree.map(
            lambda new, old: jnp.where(warming, new, old),
            da_update(warm.step, info.acceptance_rate),
            warm.step,
        )
        # Stan's regularised variance: shrink towards 1e-3 for short windows.
        variance = m2 / jnp.maximum(count - 1, 1)
        regular = (count / (count + 5.0)) * variance + 1e-3 * (5.0 / (count + 5.0))
        restarted = da_init(jnp.exp(step.log_step_size))
        warm = _Warmup(
            step=jax.tree.map(lambda new, old: jnp.where(is_end, new, old), restarted, step),
            inverse_mass=jnp.where(is_end, regular, warm.inverse_mass),
            count=jnp.where(is_end, 0, count),
            mean=jnp.where(is_end, 0.0, mean),
            m2=jnp.where(is_end, 0.0, m2),
        )
        return (state, warm), (state.position, info.is_divergent, info.acceptance_rate)

    dtype = flat0.dtype
    warm = _Warmup(
        step=da_init(jnp.asarray(0.1, dtype)),
        inverse_mass=jnp.ones(n_dim, dtype),
        count=jnp.asarray(0),
        mean=jnp.zeros(n_dim, dtype),
        m2=jnp.zeros(n_dim, dtype),
    )
    state = blackjax.nuts.init(unravel(flat0), logdensity)
    xs = (jax.random.split(key, total), jnp.asarray(in_warmup), jnp.asarray(slow), jnp.asarray(window_end))
    _, (positions, divergent, acceptance) = jax.lax.scan(one, (state, warm), xs)
    positions = jax.tree.map(lambda leaf: leaf[num_warmup:], positions)
    return positions, jnp.sum(divergent[num_warmup:]), jnp.mean(acceptance[num_warmup:])


def run_nuts(
    model: Callable[..., None],
    model_args: tuple,
    init_values: dict[str, Any],
    key: PRNGKeyArray,
    *,
    num_warmup: int,
    num_samples: int,
) -> _Chain:
    """One NUTS chain started at ``init_values`` (constrained), constrained samples out."""
    z0 = to_unconstrained(model, model_args, init_values)
    positions, divergent, acceptance = _nuts(_Potential(model), model_args, z0, key, num_warmup, num_samples)
    samples = to_constrained(model, model_args, positions, batched=True)
    samples = {k: np.asarray(v) for k, v in samples.items()}
    ess = [
        float(np.min(effective_sample_size(np.asarray(leaf).reshape(1, num_samples, -1))))
        for leaf in jax.tree.leaves(positions)
    ]
    return _Chain(samples, int(divergent), float(acceptance), float(min(ess)))
