"""Mixtures of components, membership probabilities, and their numpyro sites.

A mixture's likelihood for object ``i`` is ``Σ_k w_k p_k(y_i | θ_k)``. We never form
the sum of densities: each component returns ``log w_k + log p_k(y_i)`` and the
mixture takes a logsumexp over components, which stays finite when one component's
density underflows. Membership probabilities are the same numbers normalised,

    p(q_i = k | y_i, θ) = exp(log w_k + log p_k(y_i) - logsumexp_j(log w_j + log p_j(y_i))).

Marginalised over the posterior of θ this is a Monte-Carlo average over posterior
samples θ_s, ``p(q_i = k | y) ≈ (1/S) Σ_s p(q_i = k | y_i, θ_s)``, evaluated in log
space with a second logsumexp over samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, PyTree

from ._components import AbstractComponent

__all__ = [
    "Mixture",
    "Membership",
    "membership_probabilities",
    "posterior_membership",
    "sample_weights",
    "mixture_factor",
]


class Mixture(eqx.Module):
    """A finite mixture of error-deconvolved components with weights ``w``.

    Parameters
    ----------
    components : tuple of AbstractComponent
        One entry per mixture component (e.g. inliers first, then outliers).
    log_weights : Array, shape (components,)
        Log mixture weights; normalised internally, so unnormalised values are fine.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> line = Gaussian(jnp.zeros(1), jnp.zeros((1, 1)))
    >>> broad = Gaussian(jnp.zeros(1), jnp.full((1, 1), 100.0))
    >>> mix = Mixture((line, broad), jnp.log(jnp.array([0.8, 0.2])))
    >>> y, cov = jnp.array([[0.1], [30.0]]), jnp.ones((2, 1, 1))
    >>> mix.responsibilities(y, cov)[:, 0].round(3)  # inlier probability
    Array([0.97..., 0.   ], dtype=float32)
    """

    components: tuple[AbstractComponent, ...]
    log_weights: Float[Array, " components"]

    def __check_init__(self) -> None:
        if not self.components or not all(isinstance(c, AbstractComponent) for c in self.components):
            raise TypeError(
                "Mixture.components must be a non-empty tuple of AbstractComponent"
                " (Gaussian, GaussianMixture, Uniform, FromDistribution)."
            )
        if self.log_weights.shape != (len(self.components),):
            raise ValueError(
                f"Mixture.log_weights has shape {self.log_weights.shape}; expected"
                f" ({len(self.components)},), one per component."
            )

    @property
    def n_components(self) -> int:
        """Number of mixture components."""
        return len(self.components)

    def component_log_probs(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, "stars components"]:
        """``log w_k + log p_k(y_i)`` for every object and component.

        Parameters
        ----------
        y : Array, shape (stars, dims)
        y_cov : Array, shape (stars, dims, dims)

        Returns
        -------
        Array, shape (stars, components)
        """
        log_w = self.log_weights - jss.logsumexp(self.log_weights)
        per_component = jnp.stack([c.log_prob(y, y_cov) for c in self.components], axis=1)
        return per_component + log_w[None, :]

    def log_prob(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, " stars"]:
        """Mixture log-density per object (logsumexp over components)."""
        return jss.logsumexp(self.component_log_probs(y, y_cov), axis=1)

    def responsibilities(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, "stars components"]:
        """Membership probabilities at these parameters, rows summing to one."""
        return jax.nn.softmax(self.component_log_probs(y, y_cov), axis=1)


class Membership(eqx.Module):
    """Posterior membership probabilities of objects in mixture components.

    Attributes
    ----------
    probability : Array, shape (stars, components)
        ``p(q_i = k | data)`` averaged over the parameter samples; rows sum to one.
    std : Array, shape (stars, components)
        Standard deviation over the samples of the conditional probability
        ``p(q_i = k | y_i, θ_s)``: how much the membership depends on the
        population parameters' uncertainty (0 for a single point estimate).
    n_samples : int
        Number of parameter samples averaged.
    """

    probability: Float[Array, "stars components"]
    std: Float[Array, "stars components"]
    n_samples: int = eqx.field(static=True)


def membership_probabilities(
    weighted_log_probs: Float[Array, "samples stars components"],
) -> Membership:
    """Membership probabilities from component log-densities over posterior samples.

    ``p(q_i = k | y) = (1/S) Σ_s exp(ℓ_sik - logsumexp_j ℓ_sij)``, computed as
    ``exp(logsumexp_s(ℓ_sik - logsumexp_j ℓ_sij) - log S)``, where
    ``ℓ_sik = log w_k + log p_k(y_i | θ_s)``. With one sample (``S = 1``, a MAP
    point) this is the usual responsibility.

    Parameters
    ----------
    weighted_log_probs : Array, shape (samples, stars, components)
        Weighted component log-densities at each posterior sample, e.g. stacked
        :meth:`Mixture.component_log_probs`. Pass ``lp[None]`` for a single point.

    Returns
    -------
    Membership

    Raises
    ------
    ValueError
        When the input is not 3-D.
    """
    if weighted_log_probs.ndim != 3:
        raise ValueError(
            "`weighted_log_probs` must be (samples, stars, components), got shape"
            f" {weighted_log_probs.shape}; for one parameter point pass lp[None]."
        )
    n_samples = weighted_log_probs.shape[0]
    conditional = weighted_log_probs - jss.logsumexp(weighted_log_probs, axis=2, keepdims=True)
    log_mean = jss.logsumexp(conditional, axis=0) - math.log(n_samples)
    probability = jnp.exp(log_mean)
    second = jnp.mean(jnp.exp(2.0 * conditional), axis=0)
    std = jnp.sqrt(jnp.maximum(second - probability**2, 0.0))
    return Membership(probability, std, n_samples)


def posterior_membership(
    log_prob_fn: Callable[..., Float[Array, "stars components"]],
    samples: PyTree,
    *args: Any,
) -> Membership:
    """:func:`membership_probabilities` streamed over samples, in O(stars) memory.

    For large catalogues the (samples, stars, components) array of log-densities does
    not fit in memory; this scans over the samples and accumulates the same
    log-space average and second moment.

    Parameters
    ----------
    log_prob_fn : callable
        ``log_prob_fn(params, *args) -> (stars, components)`` weighted component
        log-densities for one parameter sample ``params``.
    samples : pytree of array-likes
        Parameter samples, each leaf with a leading (samples,) axis (NumPy is fine).
    *args
        Data passed on to ``log_prob_fn`` (arrays, not closed over, so they are not
        baked into the compiled program as constants).

    Returns
    -------
    Membership
    """
    leaves = jax.tree.leaves(samples)
    if not leaves:
        raise ValueError("`samples` is empty; pass a dict of arrays with a leading samples axis.")
    n_samples = np.shape(leaves[0])[0]
    return _stream_membership(log_prob_fn, jax.tree.map(jnp.asarray, samples), args, n_samples)


@eqx.filter_jit
def _stream_membership(
    log_prob_fn: Callable[..., Array], samples: PyTree[Array], args: tuple, n_samples: int
) -> Membership:
    first = jax.tree.map(lambda leaf: leaf[0], samples)
    shape = jax.eval_shape(lambda p: log_prob_fn(p, *args), first).shape

    def step(carry: tuple[Array, Array], params: PyTree[Array]) -> tuple[tuple[Array, Array], None]:
        log_sum, square_sum = carry
        lp = log_prob_fn(params, *args)
        conditional = lp - jss.logsumexp(lp, axis=1, keepdims=True)
        return (jnp.logaddexp(log_sum, conditional), square_sum + jnp.exp(2.0 * conditional)), None

    dtype = _leaves_dtype(samples)
    init = (jnp.full(shape, -jnp.inf, dtype), jnp.zeros(shape, dtype))
    (log_sum, square_sum), _ = jax.lax.scan(step, init, samples)
    probability = jnp.exp(log_sum - math.log(n_samples))
    std = jnp.sqrt(jnp.maximum(square_sum / n_samples - probability**2, 0.0))
    return Membership(probability, std, n_samples)


def _leaves_dtype(tree: PyTree[Array]) -> jnp.dtype:
    """Floating dtype of the first floating leaf (float32 when none)."""
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            return jnp.asarray(leaf).dtype
    return jnp.dtype(jnp.float32)


def sample_weights(
    name: str, n_components: int, concentration: float | Float[Array, " components"] = 1.0
) -> Float[Array, " components"]:
    """Mixture weights with a Dirichlet prior, as a numpyro sample site.

    Parameters
    ----------
    name : str
        Site name.
    n_components : int
        Number of weights.
    concentration : float or Array, shape (components,)
        Dirichlet concentration; 1 is uniform on the simplex.

    Returns
    -------
    Array, shape (components,)
        Weights, non-negative and summing to one.
    """
    alpha = jnp.broadcast_to(jnp.asarray(concentration, dtype=float), (n_components,))
    # numpyro types a sample as ArrayLike; inside a model it is a JAX array (asarray: no copy).
    return jnp.asarray(numpyro.sample(name, dist.Dirichlet(alpha)))


def mixture_factor(name: str, weighted_log_probs: Float[Array, "stars components"]) -> Float[Array, ""]:
    """Add a mixture log-likelihood to a numpyro model and return it.

    Adds ``Σ_i logsumexp_k ℓ_ik`` as a ``numpyro.factor`` site called ``name``:
    the discrete memberships are summed out analytically, so samplers see only the
    continuous population parameters.

    Parameters
    ----------
    name : str
        Site name.
    weighted_log_probs : Array, shape (stars, components)
        ``log w_k + log p_k(y_i)``, e.g. from :meth:`Mixture.component_log_probs`.

    Returns
    -------
    Array, shape ()
        The total log-likelihood added.
    """
    if weighted_log_probs.ndim != 2:
        raise ValueError(f"`weighted_log_probs` must be (stars, components), got {weighted_log_probs.shape}.")
    total = jnp.sum(jss.logsumexp(weighted_log_probs, axis=1))
    numpyro.factor(name, total)
    return total
