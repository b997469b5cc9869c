"""Closed-form and gradient training reach the same optimum; nonlinear transforms train."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from starlabel.data import SpectralDataset, simulate_linear_latent
from starlabel.models import load_model
from starlabel.models.lux import FunctionErrorModel, Lux, MLPTransform, PolynomialTransform

NAMES = ("label_0", "label_1")


@pytest.fixture(scope="module")
def small():
    sim = simulate_linear_latent(n_stars=200, n_latents=2, n_pixels=12, seed=11)
    return sim, sim.dataset[:128], sim.dataset[128:]


@pytest.mark.parametrize("objective", ["marginal", "map"])
def test_alternating_and_lbfgs_agree_on_the_optimum(small, objective):
    _, train, test = small
    closed = Lux(NAMES, latent_size=2, objective=objective, tol=1e-10, max_steps=5000).fit(
        train, calibrate=False
    )
    grad = Lux(NAMES, latent_size=2, objective=objective, solver="lbfgs", tol=1e-12, max_steps=20000).fit(
        train, calibrate=False
    )
    assert closed.fit_info.solver == "alternating" and grad.fit_info.solver == "lbfgs"
    assert bool(closed.fit_info.converged) and bool(grad.fit_info.converged)
    # Same objective value (nats), same learned scatter, same flux-only predictions.
    loss_closed, loss_grad = float(closed.fit_info.final_loss), float(grad.fit_info.final_loss)
    assert abs(loss_closed - loss_grad) < 1e-4, (loss_closed, loss_grad)
    np.testing.assert_allclose(closed.scatter(), grad.scatter(), atol=1e-5)
    np.testing.assert_allclose(closed.infer(test).labels, grad.infer(test).labels, atol=1e-5)
    # The closed-form path never increases its objective and stops on its tolerance.
    info = closed.fit_info
    history = np.asarray(info.loss_history)
    assert 2 < int(info.n_steps) < 5000 and history.shape == (int(info.n_steps),)
    assert np.all(np.diff(history) <= 1e-7 * np.abs(history[1:]))
    assert history[-1] < history[0] - 10.0
    assert float(info.final_loss) <= history[-1] + 1e-6 * abs(history[-1])


def test_adam_fallback_approaches_the_same_optimum(small):
    _, train, test = small
    exact = Lux(NAMES, latent_size=2, objective="map").fit(train, calibrate=False)
    adam = Lux(NAMES, latent_size=2, objective="map", solver="adam", learning_rate=3e-3, max_steps=4000).fit(
        train, calibrate=False
    )
    assert float(adam.fit_info.final_loss) < float(exact.fit_info.final_loss) + 0.01 * abs(
        float(exact.fit_info.final_loss)
    )
    np.testing.assert_allclose(adam.infer(test).labels, exact.infer(test).labels, atol=0.05)


def _quadratic_data(n_stars: int, seed: int) -> tuple[SpectralDataset, np.ndarray]:
    """Flux depends on latent 0 quadratically; labels are latents 0 and 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_stars, 2))
    pixels = np.arange(12)
    shape_a = np.exp(-0.5 * (pixels - 3) ** 2 / 2.0)
    shape_b = np.exp(-0.5 * (pixels - 8) ** 2 / 2.0)
    flux = np.outer(z[:, 0], shape_a) + np.outer(z[:, 0] ** 2, shape_b) + np.outer(z[:, 1], shape_b)
    flux += 0.02 * rng.normal(size=flux.shape)
    data = SpectralDataset(
        flux,
        flux_err=np.full(flux.shape, 0.02),
        labels=z + 0.01 * rng.normal(size=z.shape),
        label_err=np.full(z.shape, 0.01),
        label_names=NAMES,
    )
    return data, z


def test_polynomial_transform_captures_what_affine_cannot():
    data, z = _quadratic_data(200, seed=5)
    train, test, truth = data[:120], data[120:], z[120:]
    affine = Lux(NAMES, latent_size=2, objective="map", scatter="none").fit(train, calibrate=False)
    poly = Lux(
        NAMES,
        latent_size=2,
        objective="map",
        scatter="none",
        flux_transform=PolynomialTransform(degree=2),
        max_steps=1500,
    ).fit(train, calibrate=False)
    assert poly.fit_info.solver == "lbfgs"
    rmse_affine = np.sqrt(np.mean((affine.infer(test).labels - truth) ** 2))
    rmse_poly = np.sqrt(np.mean((poly.infer(test).labels - truth) ** 2))
    assert rmse_poly < 0.5 * rmse_affine, (rmse_poly, rmse_affine)
    assert float(poly.fit_info.final_loss) < float(affine.fit_info.final_loss)


def test_mlp_transform_trains_predicts_and_saves(tmp_path):
    data, z = _quadratic_data(200, seed=6)
    train, test, truth = data[:120], data[120:], z[120:]
    fitted = Lux(
        NAMES,
        latent_size=2,
        objective="map",
        scatter="none",
        flux_transform=MLPTransform(width_size=16, depth=1),
        max_steps=1000,
    ).fit(train, calibrate=False)
    history = np.asarray(fitted.fit_info.loss_history)
    assert history[-1] < 0.2 * history[0]
    result = fitted.infer(test)
    trivial = np.sqrt(np.mean((truth - truth.mean(axis=0)) ** 2))
    assert np.sqrt(np.mean((result.labels - truth) ** 2)) < 0.25 * trivial
    assert np.all(np.isfinite(result.cov))
    loaded = load_model(fitted.save(tmp_path / "mlp.starlabel"))
    np.testing.assert_array_equal(loaded.infer(test).labels, result.labels)


def test_function_error_model_learns_an_error_inflation():
    sim = simulate_linear_latent(n_stars=200, n_latents=2, n_pixels=12, systematic=False, seed=2)
    data = sim.dataset
    # Reported errors are 3× too small everywhere.
    shrunk = data.replace(flux=sim.true_flux + 3.0 * (data.flux - sim.true_flux), ivar=data.ivar)
    inflation = FunctionErrorModel(
        lambda err, k: jnp.abs(k) * err, {"k": jnp.ones(1)}, priors={"k": dist.HalfNormal(10.0)}
    )
    fitted = Lux(NAMES, latent_size=2, scatter=inflation).fit(shrunk, calibrate=False)
    assert fitted.fit_info.solver == "lbfgs"
    k = abs(float(fitted.outputs[1].error_model.params["k"][0]))
    assert abs(k - 3.0) < 0.15, k
    with pytest.raises(ValueError, match="cannot be saved"):
        fitted.config()


def test_contradictory_solver_options_are_rejected(small):
    _, train, _ = small
    with pytest.raises(ValueError, match="objective='map'"):
        Lux(NAMES, flux_transform=MLPTransform()).fit(train)
    with pytest.raises(ValueError, match="solver='lbfgs'"):
        Lux(NAMES, objective="map", solver="alternating", flux_transform=MLPTransform()).fit(train)
    with pytest.raises(ValueError, match="solver"):
        Lux(NAMES, solver="newton")
