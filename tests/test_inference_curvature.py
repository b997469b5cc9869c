"""Hessian / Fisher / Gaussian approximations / whitening on problems with analytic answers."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.inference import (
    RESULTS,
    NotPositiveDefiniteWarning,
    Whitening,
    fisher_approximation,
    fisher_information,
    gaussian_fisher_information,
    gaussian_from_precision,
    hessian,
    laplace_approximation,
    whiten,
)


@pytest.fixture
def linear_problem(rng):
    """y = X β + noise with per-point σ: Fisher = Xᵀ diag(σ⁻²) X exactly."""
    x = np.linspace(0.0, 1.0, 40)
    design = np.stack([np.ones_like(x), x, np.sin(3 * x)], axis=1)
    sigma = rng.uniform(0.05, 0.3, size=x.size)
    y = design @ np.array([1.0, -2.0, 0.5]) + sigma * rng.normal(size=x.size)
    return design, sigma, y


def residuals(params, args):
    design, sigma, y = args
    beta = jnp.concatenate([params["offset"][None], params["slopes"]])
    return (y - design @ beta) / sigma


def log_likelihood(params, args):
    return -0.5 * jnp.sum(residuals(params, args) ** 2)


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_linear_model_fisher_and_hessian_are_analytic(linear_problem, chunk_size):
    design, sigma, y = linear_problem
    params = {"offset": jnp.array(0.3), "slopes": jnp.array([0.1, -0.4])}
    expected = design.T @ (design / sigma[:, None] ** 2)
    fisher = fisher_information(residuals, params, (design, sigma, y), chunk_size=chunk_size)
    np.testing.assert_allclose(np.asarray(fisher), expected, rtol=1e-12)
    # For a model linear in its parameters the Hessian is the Fisher matrix everywhere.
    neg = hessian(lambda p, a: -log_likelihood(p, a), params, (design, sigma, y), chunk_size=chunk_size)
    np.testing.assert_allclose(np.asarray(neg), expected, rtol=1e-10)


def test_fisher_from_a_gaussian_log_likelihood_alone(linear_problem):
    design, sigma, y = linear_problem
    masked = np.zeros(y.size, bool)
    masked[::7] = True  # masked data carry zero weight and must drop out

    def log_likelihood(params, data, args):
        design, sigma, masked = args
        beta = jnp.concatenate([params["offset"][None], params["slopes"]])
        terms = ((data - design @ beta) / sigma) ** 2
        return -0.5 * jnp.sum(jnp.where(masked, 0.0, terms))

    params = {"offset": jnp.array(2.0), "slopes": jnp.array([0.1, -0.4])}
    keep = ~masked
    expected = design[keep].T @ (design[keep] / sigma[keep, None] ** 2)
    fisher = gaussian_fisher_information(log_likelihood, params, y, (design, sigma, masked), chunk_size=2)
    np.testing.assert_allclose(np.asarray(fisher), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="one-dimensional"):
        gaussian_fisher_information(log_likelihood, params, y[None], (design, sigma, masked))


def test_errors_come_back_in_the_parameter_structure(linear_problem):
    design, sigma, y = linear_problem
    params = {"offset": jnp.array(0.3), "slopes": jnp.array([0.1, -0.4])}
    covariance = np.linalg.inv(design.T @ (design / sigma[:, None] ** 2))
    for approx in (
        fisher_approximation(residuals, params, (design, sigma, y)),
        laplace_approximation(log_likelihood, params, (design, sigma, y)),
    ):
        assert approx.result == RESULTS.successful
        std = approx.std
        assert set(std) == {"offset", "slopes"} and std["slopes"].shape == (2,)
        np.testing.assert_allclose(float(std["offset"]), np.sqrt(covariance[0, 0]), rtol=1e-9)
        np.testing.assert_allclose(np.asarray(std["slopes"]), np.sqrt(np.diag(covariance)[1:]), rtol=1e-9)
        np.testing.assert_allclose(np.asarray(approx.covariance), covariance, rtol=1e-8)
        np.testing.assert_allclose(np.diag(np.asarray(approx.correlation)), 1.0, rtol=1e-12)


def test_prior_precision_adds_to_fisher(linear_problem):
    design, sigma, y = linear_problem
    params = {"offset": jnp.array(0.0), "slopes": jnp.zeros(2)}
    prior = np.diag([1.0, 2.0, 3.0])
    approx = fisher_approximation(residuals, params, (design, sigma, y), prior_precision=prior)
    expected = design.T @ (design / sigma[:, None] ** 2) + prior
    np.testing.assert_allclose(np.asarray(approx.precision), expected, rtol=1e-12)


def test_hessian_matches_finite_differences():
    def f(p, a):
        return jnp.sin(p["u"][0] * p["u"][1]) + jnp.exp(0.3 * p["v"]) * p["u"][0] ** 2 + a * p["v"] ** 3

    params = {"u": jnp.array([0.4, -1.3]), "v": jnp.array(0.7)}
    h = np.asarray(hessian(f, params, 2.0, chunk_size=2))

    def f_flat(x):
        with jax.enable_x64(True):
            return float(f({"u": jnp.array(x[:2]), "v": jnp.array(x[2])}, 2.0))

    x0 = np.array([0.4, -1.3, 0.7])
    eps = 1e-4
    numeric = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            ei, ej = np.eye(3)[i] * eps, np.eye(3)[j] * eps
            numeric[i, j] = (
                f_flat(x0 + ei + ej) - f_flat(x0 + ei - ej) - f_flat(x0 - ei + ej) + f_flat(x0 - ei - ej)
            ) / (4 * eps**2)
    np.testing.assert_allclose(h, numeric, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, h.T)


def test_saddle_is_flagged_with_warning_and_nan_covariance():
    saddle = lambda p, a: -0.5 * (p[0] ** 2 - p[1] ** 2)  # noqa: E731  (log density of a saddle)
    with pytest.warns(NotPositiveDefiniteWarning, match="not positive definite"):
        approx = laplace_approximation(saddle, jnp.zeros(2))
    assert approx.result == RESULTS.not_positive_definite
    assert np.all(np.isnan(np.asarray(approx.covariance)))
    # Inside jit/vmap there is no warning: each problem carries its own code instead.
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        def per_problem(sign):
            return laplace_approximation(
                lambda p, a: -0.5 * (p[0] ** 2 + a * p[1] ** 2), jnp.zeros(2), sign
            ).result

        codes = jax.vmap(per_problem)(jnp.array([1.0, -1.0]))
    np.testing.assert_array_equal(np.asarray(codes == RESULTS.successful), [True, False])


def test_bad_shapes_and_chunks_raise():
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        gaussian_from_precision(jnp.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="chunk_size"):
        hessian(lambda p, a: jnp.sum(p**2), jnp.zeros(2), chunk_size=0)


def test_whitening_maps_gaussian_to_unit_normal(rng):
    a = rng.normal(size=(3, 3))
    precision = a @ a.T + np.diag([1e4, 1.0, 1e-3])
    centre = {"x": jnp.array([1.0, 2.0]), "y": jnp.array(-3.0)}
    approx = gaussian_from_precision(centre, precision)
    w = whiten(approx)
    t = np.asarray(w.transform)
    np.testing.assert_allclose(t.T @ precision @ t, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(t @ np.asarray(w.inverse_transform), np.eye(3), atol=1e-9)
    u = np.array([0.5, -1.0, 2.0])
    back = w.from_params(w.to_params(u))
    np.testing.assert_allclose(np.asarray(back), u, atol=1e-9)
    np.testing.assert_allclose(np.asarray(w.to_params(np.zeros(3))["x"]), [1.0, 2.0])
    ident = Whitening.identity(centre)
    assert float(ident.to_params(np.ones(3))["y"]) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="transform"):
        Whitening(centre, jnp.eye(2), jnp.eye(2))
