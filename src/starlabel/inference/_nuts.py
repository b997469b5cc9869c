r"""No-U-Turn sampling in whitened coordinates around the MAP (blackjax kernel).

Why whitened: after :func:`whiten`, a posterior close to its Laplace approximation is
close to :math:`N(0, I)`, so the sampler needs no mass-matrix adaptation (identity
metric), a step size near 1 and short trajectories (3–7 leapfrog steps). Warm-up
therefore only tunes the step size by dual averaging, which converges in a few hundred
iterations. Why blackjax: its NUTS kernel is a pure function we can ``jit`` and ``vmap``
over chains and stars; numpyro's ``MCMC.run`` retraces on every call
(``benchmarks/posteriors.py`` compares the two kernels' sampling cost).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._internal import x64
from ._custom_types import Args, LogDensityFn, Params
from ._diagnostics import effective_sample_size, split_rhat
from ._reparam import Whitening
from ._util import as_float64

__all__ = ["PosteriorSamples", "nuts"]


class PosteriorSamples(eqx.Module):
    """Draws from :func:`nuts` with their diagnostics.

    Attributes
    ----------
    samples : pytree
        Parameters in their own structure, leaves of shape ``(chains, samples, ...)``.
    rhat : pytree
        Rank-normalised split-R̂ per parameter (leaf shape without the two leading axes).
    ess : pytree
        Effective sample size per parameter, pooled over chains.
    step_size : Float[Array, " chains"]
        Adapted leapfrog step size (whitened units; near 1 means the whitening fits).
    acceptance_rate : Float[Array, " chains"]
        Mean acceptance statistic over the kept draws.
    num_divergent : Int[Array, " chains"]
        Divergent transitions among the kept draws.
    mean_integration_steps : Float[Array, " chains"]
        Mean leapfrog steps per draw (the cost unit: one gradient each).
    """

    samples: Params
    rhat: Params
    ess: Params
    step_size: Float[Array, " chains"]
    acceptance_rate: Float[Array, " chains"]
    num_divergent: Int[Array, " chains"]
    mean_integration_steps: Float[Array, " chains"]


def _check_counts(num_warmup: int, num_samples: int, num_chains: int, target_accept: float) -> None:
    if num_warmup < 0:
        raise ValueError(f"`num_warmup` must be >= 0, got {num_warmup}.")
    if num_samples < 4:
        raise ValueError(f"`num_samples` must be >= 4 for diagnostics, got {num_samples}.")
    if num_chains < 1:
        raise ValueError(f"`num_chains` must be >= 1, got {num_chains}.")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"`target_accept` must be in (0, 1), got {target_accept}.")


class _InWhitened(eqx.Module):
    log_density: LogDensityFn
    whitening: Whitening
    args: Args

    def __call__(self, u: Float[Array, " n"]) -> Float[Array, ""]:
        return self.log_density(self.whitening.to_params(u), self.args)


def _chain(
    target: _InWhitened,
    key: PRNGKeyArray,
    u0: Float[Array, " n"],
    num_warmup: int,
    num_samples: int,
    target_accept: float,
    max_doublings: int,
) -> tuple[Float[Array, "samples n"], Array, Array, Array, Array]:
    # blackjax costs ~0.4 s to import: loaded when a chain runs, not with the package
    from blackjax.adaptation.step_size import dual_averaging_adaptation
    from blackjax.mcmc import nuts as _bj_nuts

    kernel = _bj_nuts.build_kernel()
    inverse_mass = jnp.ones_like(u0)
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)
    state = _bj_nuts.init(u0, target)

    def step(carry: tuple, inputs: tuple) -> tuple[tuple, tuple]:
        # Warm-up and sampling share one scan so the NUTS kernel is compiled once.
        state, da = carry
        index, step_key = inputs
        warming = index < num_warmup
        step_size = jnp.where(warming, jnp.exp(da.log_step_size), da_final(da))
        # blackjax annotates step_size as float; under jit it is a traced scalar, which it supports.
        state, info = kernel(step_key, state, target, step_size, inverse_mass, max_doublings)  # pyright: ignore[reportArgumentType]
        # A divergent trajectory can report NaN acceptance; count it as a rejection.
        accept = jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0)
        updated = da_update(da, accept)
        da = jax.tree.map(lambda new, old: jnp.where(warming, new, old), updated, da)
        return (state, da), (state.position, info.is_divergent, accept, info.num_integration_steps, step_size)

    # Step size 1 is the natural start in whitened units.
    da0 = da_init(jnp.asarray(1.0, dtype=u0.dtype))
    total = num_warmup + num_samples
    inputs = (jnp.arange(total), jax.random.split(key, total))
    _, (u, divergent, accept, steps, sizes) = jax.lax.scan(step, (state, da0), inputs)
    kept = slice(num_warmup, total)
    return (
        u[kept],
        sizes[-1],
        jnp.mean(accept[kept]),
        jnp.sum(divergent[kept]),
        jnp.mean(steps[kept].astype(u.dtype)),
    )


@eqx.filter_jit
def _nuts(
    log_density: LogDensityFn,
    whitening: Whitening,
    args: Args,
    key: PRNGKeyArray,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    target_accept: float,
    max_doublings: int,
    init_scale: float,
    vectorize_chains: bool,
    diagnose: bool,
) -> PosteriorSamples:
    target = _InWhitened(log_density, whitening, args)
    n = whitening.transform.shape[-1]
    key_init, key_run = jax.random.split(key)
    dtype = whitening.transform.dtype
    u0 = init_scale * jax.random.normal(key_init, (num_chains, n), dtype=dtype)

    def one_chain(chain_key: PRNGKeyArray, start: Float[Array, " n"]) -> tuple:
        return _chain(target, chain_key, start, num_warmup, num_samples, target_accept, max_doublings)

    chain_keys = jax.random.split(key_run, num_chains)
    if vectorize_chains:
        u, step_size, accept, divergent, steps = jax.vmap(one_chain)(chain_keys, u0)
    else:
        # Sequential by default: under vmap every NUTS trajectory runs as long as the
        # longest in the batch and both sides of each branch execute, which measured
        # ~5x slower per chain than a loop on CPU (benchmarks/posteriors.py).
        u, step_size, accept, divergent, steps = jax.lax.map(lambda z: one_chain(*z), (chain_keys, u0))
    samples = jax.vmap(jax.vmap(whitening.to_params))(u)
    if diagnose:
        rhat, ess = split_rhat(samples), effective_sample_size(samples)
    else:
        rhat = ess = jax.tree.map(lambda leaf: jnp.full(leaf.shape[2:], jnp.nan, leaf.dtype), samples)
    return PosteriorSamples(
        samples=samples,
        rhat=rhat,
        ess=ess,
        step_size=step_size,
        acceptance_rate=accept,
        num_divergent=divergent,
        mean_integration_steps=steps,
    )


@x64
def nuts(
    log_density: LogDensityFn,
    whitening: Whitening,
    args: Args,
    key: PRNGKeyArray,
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 2,
    target_accept: float = 0.8,
    max_doublings: int = 10,
    init_scale: float = 1.0,
    vectorize_chains: bool = False,
    diagnose: bool = True,
) -> PosteriorSamples:
    r"""Sample ``log_density`` with NUTS in the coordinates of ``whitening``.

    Chains start at ``whitening.to_params(u0)`` with ``u0 ~ N(0, init_scale² I)`` (over-
    dispersed relative to the posterior when ``init_scale > 1``, which makes R̂
    meaningful), adapt the step size by dual averaging for ``num_warmup`` iterations
    with an identity mass matrix, then keep ``num_samples`` draws. Pure and jitted:
    ``jax.vmap`` it over stars (``whitening``, ``args``, ``key`` batched).

    Parameters
    ----------
    log_density : callable
        ``log_density(params, args) -> scalar``, the log posterior up to a constant.
    whitening : Whitening
        From :func:`whiten` (of a Laplace or Fisher approximation at the MAP), or
        ``Whitening.identity(params)`` to sample in the original coordinates.
    args : pytree
        Passed to ``log_density``.
    key : PRNGKeyArray
        Random key (``jax.random.key(seed)``).
    num_warmup, num_samples : int
        Step-size adaptation iterations and kept draws, per chain.
    num_chains : int
        Independent chains (vmapped).
    target_accept : float
        Dual-averaging target for the mean acceptance statistic.
    max_doublings : int
        Cap on trajectory doublings (at most ``2**max_doublings`` leapfrog steps).
    init_scale : float
        Spread of the starting points in whitened units.
    vectorize_chains : bool
        Run chains with ``vmap`` (pays on accelerators) instead of one after another
        inside the compiled program (faster on CPU, see the module docstring).
    diagnose : bool
        Compute R̂ and ESS of the parameters (NaN otherwise; skip when you diagnose
        derived quantities instead, as ``posterior_infer`` does for labels).

    Returns
    -------
    PosteriorSamples
        Draws in the parameters' own structure with R̂, ESS and sampler statistics.

    Raises
    ------
    ValueError
        If a count is out of range.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from starlabel.inference import Whitening
    >>> log_p = lambda x, a: -0.5 * jnp.sum(((x - a) / 2.0) ** 2)
    >>> post = nuts(log_p, Whitening.identity(jnp.zeros(2)), jnp.ones(2), jax.random.key(0),
    ...             num_warmup=200, num_samples=500)
    >>> post.samples.shape
    (2, 500, 2)

    References
    ----------
    Hoffman & Gelman (2014), JMLR 15, 1593 (NUTS and dual averaging);
    Betancourt (2017), arXiv:1701.02434 (multinomial trajectories, as in blackjax);
    Cabezas et al. (2024), arXiv:2402.10797 (blackjax).
    """
    _check_counts(num_warmup, num_samples, num_chains, target_accept)
    whitening, args = as_float64((whitening, args))
    return _nuts(
        log_density,
        whitening,
        args,
        key,
        int(num_warmup),
        int(num_samples),
        int(num_chains),
        float(target_accept),
        int(max_doublings),
        float(init_scale),
        bool(vectorize_chains),
        bool(diagnose),
    )
