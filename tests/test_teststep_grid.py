"""Nested grid / QMC posterior moments against analytic posteriors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.inference._grid import grid_posterior, quadrature_nodes
from starlabel.inference._priors import FlatPrior, GaussianPrior


def gaussian_log_likelihood(x, y):
    """y = [mean (K), sigma (K)]: independent Gaussian likelihood."""
    k = x.shape[0]
    return -0.5 * jnp.sum(((x - y[:k]) / y[k:]) ** 2)


def test_gaussian_moments_from_coarse_to_very_narrow(rng):
    names = ("a", "b", "c")
    sigma = np.geomspace(1e-3, 0.6, 12)
    mean = rng.uniform(-1.0, 1.0, (12, 3))  # ≥ 3σ inside the box, so truncation is negligible
    args = np.hstack([mean, np.repeat(sigma[:, None], 3, axis=1)])
    post = grid_posterior(
        gaussian_log_likelihood, FlatPrior(names), jnp.asarray(args), lower=[-3] * 3, upper=[3] * 3
    )
    got_mean, got_cov = np.asarray(post.mean), np.asarray(post.cov)
    np.testing.assert_allclose((got_mean - mean) / sigma[:, None], 0.0, atol=2e-3)
    std = np.sqrt(np.diagonal(got_cov, axis1=1, axis2=2))
    np.testing.assert_allclose(std / sigma[:, None], 1.0, atol=5e-3)
    assert np.all(np.asarray(post.n_eff) > 10)  # ≈ 19 for a resolved Gaussian on 6³ zoom nodes
    assert not np.any(np.asarray(post.multimodal))


def test_conjugate_gaussian_with_correlated_prior_and_temperature(rng):
    names = ("a", "b")
    prior_mean = np.array([0.2, -0.1])
    prior_cov = np.array([[0.5, 0.3], [0.3, 0.4]])
    with jax.enable_x64(True):
        prior = GaussianPrior(names, jnp.asarray(prior_mean), jnp.asarray(prior_cov))
    y = np.array([[0.6, 0.1, 0.3, 0.2], [-0.4, 0.5, 0.1, 0.5]])
    for temperature in (1.0, 4.0):
        post = grid_posterior(
            gaussian_log_likelihood,
            prior,
            jnp.asarray(y),
            lower=[-4, -4],
            upper=[4, 4],
            temperature=temperature,
        )
        for row, star in enumerate(y):
            like_prec = np.diag(1.0 / (temperature * star[2:] ** 2))
            cov = np.linalg.inv(np.linalg.inv(prior_cov) + like_prec)
            mean = cov @ (np.linalg.inv(prior_cov) @ prior_mean + like_prec @ star[:2])
            np.testing.assert_allclose(np.asarray(post.mean)[row], mean, atol=1e-4)
            np.testing.assert_allclose(np.asarray(post.cov)[row], cov, rtol=3e-3, atol=1e-6)


def bimodal_log_likelihood(x, y):
    """Two equal-width (0.15) peaks at y[:3] and y[3:6], the second with weight y[6]."""
    a = -0.5 * jnp.sum(((x - y[:3]) / 0.15) ** 2)
    b = -0.5 * jnp.sum(((x - y[3:6]) / 0.15) ** 2) + jnp.log(y[6])
    return jnp.logaddexp(a, b)


def test_separated_modes_are_flagged_with_the_secondary_labels():
    names = ("a", "b", "c")
    args = jnp.asarray(
        [
            [0.0, 0.0, 0.0, 1.5, 1.0, -1.0, 0.4],  # 29% in a clearly separated mode
            [0.0, 0.0, 0.0, 1.5, 1.0, -1.0, 0.01],  # 1%: below min_mode_mass
            [0.0, 0.0, 0.0, 0.15, 0.0, 0.0, 1.0],  # overlapping peaks: one mode
        ]
    )
    post = grid_posterior(bimodal_log_likelihood, FlatPrior(names), args, lower=[-3] * 3, upper=[3] * 3)
    assert np.asarray(post.multimodal).tolist() == [True, False, False]
    np.testing.assert_allclose(np.asarray(post.mode2)[0], [1.5, 1.0, -1.0], atol=0.3)
    assert 0.15 < float(post.mode2_mass[0]) < 0.45
    assert np.all(np.isnan(np.asarray(post.mode2)[1:]))
    # Overlapping peaks: the mean is the exact mixture mean.
    assert float(post.mean[2, 0]) == pytest.approx(0.075, abs=2e-3)


def test_qmc_nodes_for_five_labels(rng):
    names = tuple("abcde")
    assert quadrature_nodes(5).shape == (2048, 5)
    mean = rng.uniform(-1, 1, (3, 5))
    sigma = np.array([[0.3], [0.05], [0.01]]) * np.ones((1, 5))
    post = grid_posterior(
        gaussian_log_likelihood,
        FlatPrior(names),
        jnp.asarray(np.hstack([mean, sigma])),
        lower=[-3] * 5,
        upper=[3] * 5,
    )
    np.testing.assert_allclose((np.asarray(post.mean) - mean) / sigma, 0.0, atol=0.05)
    std = np.sqrt(np.diagonal(np.asarray(post.cov), axis1=1, axis2=2))
    np.testing.assert_allclose(std / sigma, 1.0, atol=0.06)


def test_chunking_does_not_change_results(rng):
    names = ("a", "b")
    args = jnp.asarray(np.hstack([rng.uniform(-1, 1, (7, 2)), rng.uniform(0.01, 0.3, (7, 2))]))
    whole = grid_posterior(gaussian_log_likelihood, FlatPrior(names), args, lower=[-2, -2], upper=[2, 2])
    parts = grid_posterior(
        gaussian_log_likelihood, FlatPrior(names), args, lower=[-2, -2], upper=[2, 2], chunk_size=3
    )
    np.testing.assert_allclose(np.asarray(parts.mean), np.asarray(whole.mean), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(parts.cov), np.asarray(whole.cov), rtol=1e-10, atol=1e-15)


def test_bad_inputs_raise_clear_errors():
    prior = FlatPrior(("a", "b"))
    args = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="upper > lower"):
        grid_posterior(gaussian_log_likelihood, prior, args, lower=[0, 0], upper=[0, 1])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        grid_posterior(gaussian_log_likelihood, prior, args, lower=[0, 0, 0], upper=[1, 1, 1])
    with pytest.raises(ValueError, match="temperature"):
        grid_posterior(gaussian_log_likelihood, prior, args, lower=[0, 0], upper=[1, 1], temperature=0.0)
    with pytest.raises(ValueError, match="same leading"):
        grid_posterior(
            gaussian_log_likelihood, prior, (jnp.zeros((2, 2)), jnp.zeros((3, 2))), lower=[0, 0], upper=[1, 1]
        )
    with pytest.raises(ValueError, match="kind"):
        quadrature_nodes(2, kind="sobol")
