"""Whitened NUTS on Gaussians with known moments, and the R̂/ESS diagnostics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.inference import (
    Whitening,
    effective_sample_size,
    laplace_approximation,
    nuts,
    split_rhat,
    whiten,
)

MEAN = np.array([4800.0, 2.5, -0.2])
SD = np.array([60.0, 0.1, 0.03])  # Teff-, logg-, [Fe/H]-like scales: 2000x apart
CORR = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
COV = CORR * SD[:, None] * SD[None, :]


def log_density(params, args):
    mean, precision = args
    x = jnp.stack([params["teff"], params["logg"], params["fe_h"]])
    d = x - mean
    return -0.5 * d @ precision @ d


@pytest.fixture(scope="module")
def gaussian_posterior():
    args = (MEAN, np.linalg.inv(COV))
    centre = {"teff": MEAN[0] + 10.0, "logg": MEAN[1], "fe_h": MEAN[2]}
    return args, centre


def draws_matrix(samples):
    return np.stack([np.asarray(samples[k]) for k in ("teff", "logg", "fe_h")], axis=-1)


def test_whitened_nuts_recovers_gaussian_moments(gaussian_posterior):
    args, centre = gaussian_posterior
    whitening = whiten(laplace_approximation(log_density, centre, args))
    post = nuts(
        log_density, whitening, args, jax.random.key(1), num_warmup=300, num_samples=1500, num_chains=2
    )
    draws = draws_matrix(post.samples)
    assert draws.shape == (2, 1500, 3)
    flat = draws.reshape(-1, 3)
    ess = np.array([float(post.ess[k]) for k in ("teff", "logg", "fe_h")])
    # Means within 4 Monte-Carlo standard errors; sds within 6%, correlations within 0.05.
    assert np.all(np.abs(flat.mean(0) - MEAN) < 4 * SD / np.sqrt(ess))
    np.testing.assert_allclose(flat.std(0), SD, rtol=0.06)
    np.testing.assert_allclose(np.corrcoef(flat.T), CORR, atol=0.05)
    assert max(float(post.rhat[k]) for k in post.rhat) < 1.01
    assert np.all(ess > 1500)  # ≥ half the 3000 draws are effectively independent
    assert int(np.asarray(post.num_divergent).sum()) == 0
    # In whitened units the adapted step is of order 1 and trajectories are short.
    assert np.all((np.asarray(post.step_size) > 0.5) & (np.asarray(post.step_size) < 2.0))
    assert np.all(np.asarray(post.mean_integration_steps) < 8)
    assert np.all(np.abs(np.asarray(post.acceptance_rate) - 0.8) < 0.1)


def test_without_whitening_the_same_budget_mixes_far_worse(gaussian_posterior):
    args, centre = gaussian_posterior
    plain = nuts(
        log_density,
        Whitening.identity(centre),
        args,
        jax.random.key(1),
        num_warmup=300,
        num_samples=1500,
        num_chains=2,
    )
    # An identity mass matrix must resolve the 0.03 dex direction and travel 60 K:
    # tiny steps and long (expensive) trajectories.
    assert np.all(np.asarray(plain.step_size) < 0.05)
    assert np.all(np.asarray(plain.mean_integration_steps) > 50)


def test_rhat_and_ess_on_known_chains():
    rng = np.random.default_rng(3)
    iid = rng.normal(size=(4, 2000, 2))
    np.testing.assert_allclose(np.asarray(split_rhat(iid)), 1.0, atol=0.01)
    np.testing.assert_allclose(np.asarray(effective_sample_size(iid)), 8000, rtol=0.15)

    # AR(1) with coefficient ρ: integrated autocorrelation time (1+ρ)/(1-ρ).
    rho, n = 0.7, 2000
    noise = rng.normal(size=(4, n))
    chain = np.zeros((4, n))
    chain[:, 0] = noise[:, 0]  # start in the stationary distribution
    for t in range(1, n):
        chain[:, t] = rho * chain[:, t - 1] + np.sqrt(1 - rho**2) * noise[:, t]
    ess = float(effective_sample_size(chain))
    assert ess == pytest.approx(4 * n * (1 - rho) / (1 + rho), rel=0.2)

    # Chains stuck at different places are caught, also within one drifting chain.
    shifted = iid[..., 0] + np.array([0.0, 0.0, 0.0, 2.0])[:, None]
    assert float(split_rhat(shifted)) > 1.1
    drift = np.linspace(0, 3, 2000) + rng.normal(size=(4, 2000))
    assert float(split_rhat(drift)) > 1.1

    tree = {"a": iid[..., :1], "b": iid[..., 1]}
    shapes = jax.tree.map(np.shape, split_rhat(tree))
    assert shapes == {"a": (1,), "b": ()}


def test_diagnostics_and_nuts_reject_bad_arguments(gaussian_posterior):
    args, centre = gaussian_posterior
    with pytest.raises(ValueError, match="chains, samples"):
        split_rhat(np.zeros(10))
    with pytest.raises(ValueError, match="at least 4"):
        effective_sample_size(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_samples"):
        nuts(log_density, Whitening.identity(centre), args, jax.random.key(0), num_samples=2)
    with pytest.raises(ValueError, match="target_accept"):
        nuts(log_density, Whitening.identity(centre), args, jax.random.key(0), target_accept=1.5)
