"""MAP, Laplace and NUTS for the mixture models' numpyro models (private).

The numpyro models here are small and fixed (a line, a cluster), so we drive them
ourselves: numpyro's ``potential_energy`` gives the negative log-posterior in
unconstrained space, a damped Newton method
(:func:`starlabel.inference.damped_newton`) finds the MAP (and the Laplace
Hessian), and blackjax's NUTS kernel (with Stan-style step-size and
diagonal-metric warmup, all inside one ``jit``) samples. ``numpyro.infer.MCMC``
would recompile on every ``run`` call; here the compiled program is
cached on the model function and the data shapes, so a second fit of the
same-sized problem starts at once. Data always travel as arguments, never in
closures, so they are not baked into the compiled program as constants.
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
from jaxtyping import Array, PRNGKeyArray, PyTree
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from ..inference import Marquardt, damped_newton

__all__: list[str] = []


class _Potential(eqx.Module):
    """Negative log-posterior of ``model`` over unconstrained parameters."""

    model: Callable[..., None] = eqx.field(static=True)

    def __call__(self, z: PyTree[Array], model_args: tuple) -> Array:
        # numpyro types the energy as a float or array; it is a traced scalar here.
        return jnp.asarray(potential_energy(self.model, model_args, {}, z))


class _Chain(eqx.Module):
    """Constrained posterior samples plus the sampler's own diagnostics."""

    samples: dict[str, np.ndarray]
    divergences: int
    acceptance: float
    min_ess: float


# Jitted so that the likelihood, which numpyro's transforms run the model through,
# is dead code XLA removes: run eagerly it costs seconds on a large catalogue.
@eqx.filter_jit
def _unconstrain(potential: _Potential, model_args: tuple, values: dict) -> dict:
    return unconstrain_fn(potential.model, model_args, {}, values)


@eqx.filter_jit
def _constrain(potential: _Potential, model_args: tuple, z: dict, batched: bool) -> dict:
    return constrain_fn(potential.model, model_args, {}, z, batch_ndims=1 if batched else 0)


def to_unconstrained(model: Callable[..., None], model_args: tuple, values: dict[str, Any]) -> dict:
    """Map constrained site values to the sampler's unconstrained space."""
    return _unconstrain(_Potential(model), model_args, jax.tree.map(jnp.asarray, values))


def to_constrained(model: Callable[..., None], model_args: tuple, z: dict, *, batched: bool = False) -> dict:
    """Map unconstrained values (optionally with a leading samples axis) back."""
    return _constrain(_Potential(model), model_args, z, batched)


class _Mode(eqx.Module):
    """A posterior mode: constrained values, unconstrained point, Hessian there."""

    values: dict
    z: dict
    hessian: np.ndarray
    converged: bool


_DAMPING = Marquardt(
    initial=1e-2 / 3.0, shrink=1.0 / 3.0, grow=4.0, smallest=0.0, largest=float("inf"), offset=1.0
)


@eqx.filter_jit
def _newton(potential: _Potential, model_args: tuple, z0: dict, max_steps: int) -> tuple[dict, Array, Array]:
    # Damped Newton (Levenberg–Marquardt on the exact Hessian, damping scaled by
    # |diag H| + 1, which stays positive where H is indefinite). The mixture posteriors
    # have a handful of parameters, so the exact Hessian is cheap, and this loop
    # compiles several times faster than a quasi-Newton solver; the Hessian at the
    # returned point is the Laplace approximation's precision matrix.
    flat0, unravel = ravel_pytree(z0)

    def f(flat: Array) -> Array:
        return potential(unravel(flat), model_args)

    def linearise(flat: Array) -> tuple[Array, Array]:
        return jax.grad(f)(flat), jax.jacfwd(jax.grad(f))(flat)

    # damped_newton's loss is 2 f; converged when a Newton step would gain < 1e-14 in
    # it or an accepted step gained < 1e-11 (1 + |f|) in f.
    final = damped_newton(
        lambda flat: 2.0 * f(flat),
        linearise,
        flat0,
        damping=_DAMPING,
        max_steps=max_steps,
        tol=1e-14,
        atol=2e-11,
        rtol=1e-11,
        solve=jnp.linalg.solve,
    )
    _, h = linearise(final.x)
    return unravel(final.x), 0.5 * (h + h.T), final.converged


def find_map(
    model: Callable[..., None], model_args: tuple, init_values: dict[str, Any], *, max_steps: int = 200
) -> _Mode:
    """MAP by damped Newton in unconstrained space, with the Hessian there."""
    z0 = to_unconstrained(model, model_args, init_values)
    z, hessian, ok = _newton(_Potential(model), model_args, z0, max_steps)
    return _Mode(to_constrained(model, model_args, z), z, np.asarray(hessian), bool(ok))


def laplace_samples(
    model: Callable[..., None], model_args: tuple, mode: _Mode, seed: int, n: int
) -> tuple[dict, bool]:
    """Samples from the Gaussian (Laplace) approximation at the mode, constrained.

    Drawn as z = z_map + L⁻ᵀe with H = LLᵀ, so cov(z) = H⁻¹ without an inverse.
    """
    flat, unravel = ravel_pytree(mode.z)
    try:
        chol = np.linalg.cholesky(mode.hessian)
    except np.linalg.LinAlgError:
        return {}, False
    e = np.random.default_rng(seed).normal(size=(n, flat.shape[0]))
    offsets = np.linalg.solve(chol.T, e.T).T
    draws = jax.vmap(unravel)(jnp.asarray(np.asarray(flat)[None, :] + offsets))
    return to_constrained(model, model_args, draws, batched=True), True


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
