"""MAP, Laplace and NUTS for the mixture models' numpyro models (private).

The numpyro models here are small and fixed (a line, a cluster), so we drive them
ourselves: numpyro's ``potential_energy`` gives the negative log-posterior in
unconstrained space, a damped Newton method
(:func:`starlabel.inference.damped_newton`) finds the MAP (and the Laplace
Hessian), and the library's whitened NUTS (:func:`starlabel.inference.nuts`, blackjax's
kernel, whitened by that Hessian) samples. ``numpyro.infer.MCMC`` would recompile on
every ``run`` call; here the compiled program is cached on the model function and the
data shapes, so a second fit of the same-sized problem starts at once. Data always travel as arguments, never in
closures, so they are not baked into the compiled program as constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray, PyTree
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from ..inference import Marquardt, damped_newton, gaussian_from_precision, nuts, whiten

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


class _LogPosterior(eqx.Module):
    """Log-posterior of ``model`` over unconstrained parameters (what NUTS samples)."""

    potential: _Potential

    def __call__(self, z: PyTree[Array], model_args: tuple) -> Array:
        return -self.potential(z, model_args)


def run_nuts(
    model: Callable[..., None],
    model_args: tuple,
    mode: _Mode,
    key: PRNGKeyArray,
    *,
    num_warmup: int,
    num_samples: int,
) -> _Chain:
    """One NUTS chain whitened by the Laplace approximation at ``mode``, constrained samples out.

    The library's one sampler path, :func:`starlabel.inference.nuts`: in coordinates
    whitened by the Hessian at the MAP (non-positive curvatures floored, see
    :func:`~starlabel.inference.whiten`) the sampler needs no metric adaptation, only
    the step size (dual averaging, target acceptance 0.85 as before). It replaced a
    Stan-style diagonal-metric warm-up written here; ``benchmarks/posteriors.py
    --mixtures`` compares the two side by side (results/posteriors_mixtures.json).
    """
    whitening = whiten(gaussian_from_precision(mode.z, jnp.asarray(mode.hessian)))
    post = nuts(
        _LogPosterior(_Potential(model)),
        whitening,
        model_args,
        key,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=1,
        target_accept=0.85,
        # Diagnosed below with numpy: compiling R̂ and ESS into the sampler's program
        # would add to the compile time, which dominates a single fit.
        diagnose=False,
    )
    positions = jax.tree.map(lambda leaf: leaf[0], post.samples)
    samples = to_constrained(model, model_args, positions, batched=True)
    min_ess = min(
        float(np.min(effective_sample_size(np.asarray(leaf).reshape(1, num_samples, -1))))
        for leaf in jax.tree.leaves(positions)
    )
    return _Chain(
        {k: np.asarray(v) for k, v in samples.items()},
        int(np.sum(np.asarray(post.num_divergent))),
        float(np.mean(np.asarray(post.acceptance_rate))),
        min_ess,
    )
