"""MAP front-end: optimistix solvers, least squares, optax groups with delays, result codes."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest

from starlabel.inference import (
    RESULTS,
    NaturalGradient,
    WhitenedLogDensity,
    delay,
    fit_least_squares,
    fit_map,
    gaussian_from_precision,
    group_optimisers,
    scale_by_fisher,
    whiten,
)


def gaussian_log_density(params, args):
    """log N(params | mean, precision⁻¹) over a dict of two leaves."""
    mean, precision = args
    x = jnp.concatenate([params["a"], params["b"]])
    d = x - mean
    return -0.5 * d @ precision @ d


@pytest.fixture
def quadratic(rng):
    n = 4
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    precision = q @ np.diag([1e3, 10.0, 1.0, 0.1]) @ q.T
    mean = rng.normal(size=n)
    return mean, precision


@pytest.mark.parametrize(
    "solver",
    [optx.BFGS(rtol=1e-10, atol=1e-10), optx.LBFGS(rtol=1e-10, atol=1e-10)],
    ids=["bfgs", "lbfgs"],
)
def test_second_order_solvers_find_known_minimum(solver, quadratic):
    mean, precision = quadratic
    params0 = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    sol = fit_map(gaussian_log_density, solver, params0, (mean, precision), max_steps=200)
    assert sol.result == RESULTS.successful
    np.testing.assert_allclose(np.asarray(sol.value["a"]), mean[:2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(sol.value["b"]), mean[2:], atol=1e-6)
    assert float(sol.loss) == pytest.approx(0.0, abs=1e-10)
    steps = int(sol.num_steps)
    history = np.asarray(sol.loss_history)
    assert history.shape == (200,)
    assert np.all(np.isfinite(history[:steps])) and np.all(np.isnan(history[steps:]))
    assert history[steps - 1] == pytest.approx(float(sol.loss))


def test_levenberg_marquardt_matches_weighted_least_squares(rng):
    x = np.linspace(-1, 1, 50)
    design = np.stack([np.ones_like(x), x, x**2], axis=1)
    sigma = rng.uniform(0.05, 0.2, size=x.size)
    y = design @ np.array([0.5, -1.0, 2.0]) + sigma * rng.normal(size=x.size)

    def residuals(params, args):
        design, y, sigma = args
        return (y - design @ params["coef"]) / sigma

    sol = fit_least_squares(
        residuals,
        optx.LevenbergMarquardt(rtol=1e-10, atol=1e-10),
        {"coef": jnp.zeros(3)},
        (design, y, sigma),
    )
    expected = np.linalg.lstsq(design / sigma[:, None], y / sigma, rcond=None)[0]
    assert sol.result == RESULTS.successful
    np.testing.assert_allclose(np.asarray(sol.value["coef"]), expected, rtol=1e-7, atol=1e-9)
    chi2 = np.sum(((y - design @ expected) / sigma) ** 2)
    assert float(sol.loss) == pytest.approx(0.5 * chi2, rel=1e-8)


def test_delayed_group_holds_still_then_converges():
    params0 = {"fast": jnp.zeros(2), "late": jnp.zeros(1)}
    tx = group_optimisers({"fast": optax.sgd(0.2), "late": delay(optax.sgd(0.2, momentum=0.5), 30)}, params0)

    def log_density(params, args):
        return -0.5 * jnp.sum((params["fast"] - 1.0) ** 2) - 0.5 * jnp.sum((params["late"] + 2.0) ** 2)

    solver = optx.OptaxMinimiser(tx, rtol=0.0, atol=0.0)  # zero tolerances: run every step
    early = fit_map(log_density, solver, params0, max_steps=30)
    assert float(early.value["late"][0]) == 0.0  # not a single update during the delay
    assert np.all(np.asarray(early.value["fast"]) > 0.99)
    assert early.result == RESULTS.max_steps_reached

    late = fit_map(log_density, solver, params0, max_steps=150)
    np.testing.assert_allclose(np.asarray(late.value["late"]), [-2.0], atol=1e-6)
    history = np.asarray(late.loss_history)
    # Loss drops in two stages: the "late" group's 2.0 stays in the loss until step 30.
    assert history[28] == pytest.approx(2.0, abs=1e-4)
    assert history[60] < 1e-3


def test_group_optimisers_rejects_bad_groups():
    params = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    with pytest.raises(ValueError, match=r"unknown \['c'\].*without an optimiser \['b'\]"):
        group_optimisers({("a", "c"): optax.sgd(1.0)}, params)
    with pytest.raises(ValueError, match="twice"):
        group_optimisers({"a": optax.sgd(1.0), ("a", "b"): optax.sgd(1.0)}, params)
    with pytest.raises(TypeError, match="labels"):
        group_optimisers({"a": optax.sgd(1.0)}, (jnp.zeros(1),))
    with pytest.raises(ValueError, match="non-negative"):
        delay(optax.sgd(1.0), -1)


def test_bad_inputs_raise_clear_errors(quadratic):
    mean, precision = quadratic
    with pytest.raises(TypeError, match="floating point"):
        fit_map(
            gaussian_log_density,
            optx.BFGS(rtol=1e-6, atol=1e-6),
            {"a": jnp.zeros(2, int), "b": jnp.zeros(2)},
            (mean, precision),
        )
    with pytest.raises(TypeError, match="fit_least_squares"):
        fit_map(
            gaussian_log_density,
            optx.LevenbergMarquardt(rtol=1e-6, atol=1e-6),
            {"a": jnp.zeros(2), "b": jnp.zeros(2)},
        )
    with pytest.raises(TypeError, match="fit_map"):
        fit_least_squares(lambda p, a: p, optx.BFGS(rtol=1e-6, atol=1e-6), jnp.zeros(2))


def test_max_steps_code_and_throw(quadratic):
    mean, precision = quadratic
    params0 = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    solver = optx.GradientDescent(learning_rate=1e-4, rtol=1e-12, atol=1e-12)
    sol = fit_map(gaussian_log_density, solver, params0, (mean, precision), max_steps=5)
    assert sol.result == RESULTS.max_steps_reached
    assert int(sol.num_steps) == 5
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps"):
        fit_map(gaussian_log_density, solver, params0, (mean, precision), max_steps=5, throw=True)


def test_nonfinite_objective_is_flagged():
    sol = fit_map(lambda p, a: -jnp.log(p - 10.0).sum(), optx.BFGS(rtol=1e-8, atol=1e-8), jnp.zeros(1))
    assert sol.result == RESULTS.nonfinite


def ill_conditioned(args_scale):
    # Condition number 1e8 with strong correlation: hostile to unpreconditioned L-BFGS.
    theta = 0.3
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    precision = rotation @ np.diag([1e6, 1e-2]) @ rotation.T
    return np.array([3.0, -200.0]) * args_scale, precision


def test_whitened_and_natural_gradient_converge_in_far_fewer_steps():
    mean, precision = ill_conditioned(1.0)

    def log_density(x, args):
        mean, precision = args
        d = x - mean
        return -0.5 * d @ precision @ d

    x0 = jnp.zeros(2)
    plain = fit_map(
        log_density, optx.GradientDescent(1e-6, rtol=1e-8, atol=1e-8), x0, (mean, precision), max_steps=512
    )
    assert plain.result == RESULTS.max_steps_reached
    assert abs(float(plain.value[1]) - mean[1]) > 100  # still far away after 512 steps

    # The Fisher matrix of a Gaussian is its precision; use it at the start point.
    fisher = gaussian_from_precision(x0, precision)
    natural = fit_map(
        log_density, NaturalGradient(fisher, rtol=1e-8, atol=1e-8), x0, (mean, precision), max_steps=512
    )
    assert natural.result == RESULTS.successful
    assert int(natural.num_steps) <= 3
    np.testing.assert_allclose(np.asarray(natural.value), mean, rtol=1e-8)

    whitening = whiten(fisher)
    whitened = fit_map(
        WhitenedLogDensity(log_density),
        optx.LBFGS(rtol=1e-8, atol=1e-8),
        jnp.zeros(2),
        (whitening, (mean, precision)),
        max_steps=512,
    )
    assert whitened.result == RESULTS.successful
    assert int(whitened.num_steps) <= 10
    np.testing.assert_allclose(np.asarray(whitening.to_params(whitened.value)), mean, rtol=1e-6)

    # Optax route: natural gradients feed a plain SGD with learning rate ~1.
    tx = optax.chain(scale_by_fisher(fisher), optax.sgd(0.5))
    sgd = fit_map(
        log_density, optx.OptaxMinimiser(tx, rtol=1e-10, atol=1e-10), x0, (mean, precision), max_steps=100
    )
    np.testing.assert_allclose(np.asarray(sgd.value), mean, rtol=1e-6)


def test_vmapped_fit_matches_individual_fits(rng):
    precision = np.diag([4.0, 0.25])
    means = rng.normal(size=(3, 2))

    def log_density(x, mean):
        d = x - mean
        return -0.5 * d @ jnp.asarray(precision) @ d

    solver = optx.BFGS(rtol=1e-10, atol=1e-10)
    batched = jax.vmap(lambda m: fit_map(log_density, solver, jnp.zeros(2), m).value)(jnp.asarray(means))
    for i in range(3):
        single = fit_map(log_density, solver, jnp.zeros(2), means[i]).value
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), atol=1e-9)
        np.testing.assert_allclose(np.asarray(single), means[i], atol=1e-7)
