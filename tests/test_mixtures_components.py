"""Mixture building blocks against plain NumPy/SciPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jaxtyping import TypeCheckError
from scipy import integrate, stats

from starlabel.mixtures import (
    FromDistribution,
    Gaussian,
    GaussianMixture,
    Mixture,
    Uniform,
    gaussian_log_prob,
    membership_probabilities,
    mixture_factor,
    posterior_membership,
    sample_weights,
)
from starlabel.mixtures._components import symmetric_inverse


def _x64_jit(fn, *args):
    """Evaluate ``fn(*args)`` jitted in 64-bit: one compile instead of one per eager op."""
    with jax.enable_x64(True):
        out = jax.jit(fn)(*jax.tree.map(jnp.asarray, args))
        return jax.tree.map(np.asarray, out)


def _random_spd(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    a = rng.normal(size=(n, d, d))
    return a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)[None]


@pytest.mark.parametrize("dims", [1, 2, 3, 5])
def test_gaussian_log_prob_matches_scipy(rng, dims):
    cov = _random_spd(rng, 7, dims)
    resid = rng.normal(size=(7, dims))
    got = _x64_jit(gaussian_log_prob, resid, cov)
    want = [stats.multivariate_normal(np.zeros(dims), c).logpdf(r) for r, c in zip(resid, cov, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("dims", [1, 2, 3, 4])
def test_symmetric_inverse_matches_numpy(rng, dims):
    cov = _random_spd(rng, 5, dims)
    got = _x64_jit(symmetric_inverse, cov)
    np.testing.assert_allclose(got, np.linalg.inv(cov), rtol=1e-9, atol=1e-12)


def test_gaussian_component_deconvolves_errors(rng):
    """Observed density of N(μ, V) seen through N(0, C_i) is N(μ, V + C_i)."""
    mean, v = np.array([1.0, -2.0]), np.array([[0.5, 0.1], [0.1, 0.3]])
    y = rng.normal(size=(6, 2))
    c = _random_spd(rng, 6, 2) * 0.1
    got, per_object = _x64_jit(
        lambda m, v, y, c: (Gaussian(m, v).log_prob(y, c), Gaussian(y + 0.5, v).log_prob(y, c)), mean, v, y, c
    )
    want = [stats.multivariate_normal(mean, v + ci).logpdf(yi) for yi, ci in zip(y, c, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    want_shifted = [
        stats.multivariate_normal(yi + 0.5, v + ci).logpdf(yi) for yi, ci in zip(y, c, strict=True)
    ]
    np.testing.assert_allclose(np.asarray(per_object), want_shifted, rtol=1e-10)


def test_gaussian_mixture_is_weighted_sum(rng):
    means = rng.normal(size=(3, 2))
    covs = _random_spd(rng, 3, 2)
    w = np.array([0.2, 0.5, 0.3])
    y = rng.normal(size=(4, 2))
    c = _random_spd(rng, 4, 2) * 0.05
    got = _x64_jit(
        lambda lw, m, v, y, c: GaussianMixture(lw, m, v).log_prob(y, c), np.log(w * 7.0), means, covs, y, c
    )
    want = [
        np.log(
            sum(
                wk * stats.multivariate_normal(mk, vk + ci).pdf(yi)
                for wk, mk, vk in zip(w, means, covs, strict=True)
            )
        )
        for yi, ci in zip(y, c, strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_uniform_convolution_matches_quadrature():
    low, high, sigma = -1.0, 2.0, 0.4
    ys = np.array([-2.0, -1.0, 0.3, 2.1, 4.0])

    def log_prob(y, var):
        return Uniform(jnp.asarray([low], y.dtype), jnp.asarray([high], y.dtype)).log_prob(y, var)

    got = _x64_jit(log_prob, ys[:, None], np.full((5, 1, 1), sigma**2))
    want = [
        np.log(integrate.quad(lambda v, y=y: stats.norm.pdf(y, v, sigma) / (high - low), low, high)[0])
        for y in ys
    ]
    np.testing.assert_allclose(got, want, rtol=1e-8)
    exact = _x64_jit(log_prob, np.zeros((5, 1)), np.zeros((5, 1, 1)))  # exact data: the plain box
    np.testing.assert_allclose(exact, np.full(5, -np.log(3.0)), rtol=1e-12)


def test_from_distribution_ignores_errors_and_checks_event_shape():
    d = dist.Normal(0.0, 2.0).expand([1]).to_event(1)
    y = jnp.array([[0.5], [3.0]])
    got = jax.jit(lambda y, c: FromDistribution(d).log_prob(y, c))(y, jnp.ones((2, 1, 1)))
    np.testing.assert_allclose(np.asarray(got), stats.norm(0, 2).logpdf([0.5, 3.0]), rtol=1e-6)
    with pytest.raises(ValueError, match="event shape"):
        FromDistribution(dist.Normal(0.0, 2.0)).log_prob(jnp.zeros((2, 3)), jnp.zeros((2, 3, 3)))


def test_mixture_responsibilities_and_logsumexp(rng):
    def evaluate(y, cov):
        inlier = Gaussian(jnp.zeros(1, y.dtype), jnp.zeros((1, 1), y.dtype))
        outlier = Gaussian(jnp.zeros(1, y.dtype), jnp.full((1, 1), 100.0, y.dtype))
        mix = Mixture((inlier, outlier), jnp.log(jnp.array([0.8, 0.2], y.dtype)))
        return mix.responsibilities(y, cov), mix.log_prob(y, cov)

    y = rng.normal(scale=5.0, size=(50, 1))
    y[0, 0] = 1e4  # far from the line: the densities underflow, their log-sum does not
    resp, total = _x64_jit(evaluate, y, np.ones((50, 1, 1)))
    assert np.isfinite(total[0]) and resp[0, 0] == 0.0
    y, resp, total = y[1:], resp[1:], total[1:]
    yv = y[:, 0]
    p_in = 0.8 * stats.norm.pdf(yv, 0, 1)
    p_out = 0.2 * stats.norm.pdf(yv, 0, np.sqrt(101.0))
    np.testing.assert_allclose(resp[:, 0], p_in / (p_in + p_out), rtol=1e-9)
    np.testing.assert_allclose(total, np.log(p_in + p_out), rtol=1e-10)


def test_membership_over_samples_matches_numpy_average(rng):
    lp = rng.normal(scale=3.0, size=(40, 6, 3))
    member = _x64_jit(membership_probabilities, lp)
    with jax.enable_x64(True):
        streamed = posterior_membership(
            lambda params, extra: params["lp"] + extra, {"lp": jnp.asarray(lp)}, jnp.zeros((6, 3))
        )
    cond = np.exp(lp) / np.exp(lp).sum(axis=2, keepdims=True)
    np.testing.assert_allclose(np.asarray(member.probability), cond.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(member.std), cond.std(axis=0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(streamed.probability), cond.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(streamed.std), cond.std(axis=0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(member.probability).sum(axis=1), 1.0, rtol=1e-12)
    # One sample = the responsibilities at that point, with zero spread.
    single = _x64_jit(membership_probabilities, lp[:1])
    np.testing.assert_allclose(single.probability, cond[0], rtol=1e-10)
    assert float(np.max(single.std)) < 1e-6


def test_numpyro_sites_give_the_mixture_log_density():
    y = jnp.array([[0.1], [5.0], [-0.3]])
    cov = jnp.full((3, 1, 1), 0.25)

    def model():
        w = sample_weights("w", 2, concentration=2.0)
        comps = (Gaussian(jnp.zeros(1), jnp.zeros((1, 1))), Gaussian(jnp.zeros(1), jnp.full((1, 1), 9.0)))
        mixture_factor("y", Mixture(comps, jnp.log(w)).component_log_probs(y, cov))

    w = jnp.array([0.7, 0.3])

    def log_terms(w):
        trace = numpyro.handlers.trace(numpyro.handlers.substitute(model, {"w": w})).get_trace()
        return trace["y"]["fn"].log_prob(trace["y"]["value"]), trace["w"]["fn"].log_prob(w)

    factor, prior = _x64_jit(log_terms, w)
    yv = np.asarray(y)[:, 0]
    want = np.sum(np.log(0.7 * stats.norm.pdf(yv, 0, 0.5) + 0.3 * stats.norm.pdf(yv, 0, np.sqrt(9.25))))
    np.testing.assert_allclose(float(factor), want, rtol=1e-6)
    np.testing.assert_allclose(float(prior), stats.dirichlet([2.0, 2.0]).logpdf([0.7, 0.3]), rtol=1e-6)


def test_bad_shapes_raise_with_names():
    g = Gaussian(jnp.zeros(2), jnp.eye(2))
    # Under pytest the jaxtyping hook rejects the shape first; without it, our message does.
    with pytest.raises((ValueError, TypeCheckError), match="y_cov"):
        g.log_prob(jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="per object with 4 rows"):
        Gaussian(jnp.zeros((4, 2)), jnp.eye(2)).log_prob(jnp.zeros((3, 2)), jnp.zeros((3, 2, 2)))
    with pytest.raises((ValueError, TypeCheckError), match="cov"):
        Gaussian(jnp.zeros(2), jnp.eye(3))
    with pytest.raises(ValueError, match="log_weights"):
        Mixture((g,), jnp.zeros(2))
    with pytest.raises(TypeError, match="AbstractComponent"):
        Mixture(("not a component",), jnp.zeros(1))  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeCheckError), match="weighted_log_probs"):
        membership_probabilities(jnp.zeros((4, 3)))
