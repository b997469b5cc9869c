"""Lux's pure-JAX pieces agree with its test step; models save and load exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.data import simulate_linear_latent
from starlabel.models import load_model, read_model_header
from starlabel.models.lux import (
    AffineTransform,
    FittedLux,
    Lux,
    OutputData,
    PixelScatter,
    ScalarScatter,
)

NAMES = ("label_0", "label_1")


# The same shapes as test_lux_model.py, so one pytest process compiles each program once.
@pytest.fixture(scope="module")
def sim():
    return simulate_linear_latent(n_stars=768, n_latents=4, n_pixels=64, seed=7)


@pytest.fixture(scope="module")
def fitted(sim):
    return Lux(NAMES, latent_size=4).fit(sim.dataset[:384], calibrate=False)


def test_save_load_round_trip(tmp_path, sim, fitted):
    path = fitted.save(tmp_path / "lux.starlabel")
    loaded = load_model(path)
    assert isinstance(loaded, FittedLux)
    assert read_model_header(path)["kind"] == "lux"
    test = sim.dataset[384:]
    before, after = fitted.infer(test), loaded.infer(test)
    np.testing.assert_array_equal(before.labels, after.labels)
    np.testing.assert_array_equal(before.cov, after.cov)
    np.testing.assert_array_equal(fitted.scatter(), loaded.scatter())
    assert loaded.fit_info.solver == fitted.fit_info.solver
    assert int(loaded.fit_info.n_steps) == int(fitted.fit_info.n_steps)


def test_log_likelihood_is_the_test_step_objective(sim, fitted):
    """The test step's latents maximise log_likelihood + latent_log_prior, and its
    covariance is the inverse negative Hessian there (the Laplace approximation)."""
    star = sim.dataset[500]
    mean, cov = fitted.infer_latents(star)
    with jax.enable_x64(True):
        flux, ivar = jnp.asarray(star.flux[0]), jnp.asarray(star.ivar[0])

        def log_post(z):
            return fitted.log_likelihood(z, flux, ivar) + fitted.latent_log_prior(z)

        z = jnp.asarray(mean[0])
        gradient = jax.grad(log_post)(z)
        hessian = jax.hessian(log_post)(z)
        # Direct evaluation of the Gaussian log density in flux units.
        model_flux = fitted.predict(mean)["flux"][0]
        var = 1.0 / star.ivar[0] + fitted.scatter() ** 2
        expected = -0.5 * np.sum((star.flux[0] - model_flux) ** 2 / var + np.log(2 * np.pi * var))
        np.testing.assert_allclose(float(fitted.log_likelihood(z, flux, ivar)), expected, rtol=1e-10)
        labels = np.asarray(fitted.latents_to_labels(z))
    assert np.max(np.abs(np.asarray(gradient))) < 1e-6
    np.testing.assert_allclose(np.linalg.inv(-np.asarray(hessian)), cov[0], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(labels, fitted.infer(star).labels[0], rtol=1e-10)


def test_masked_pixels_do_not_enter_the_likelihood(sim, fitted):
    star = sim.dataset[501]
    ivar = np.array(star.ivar[0])
    ivar[:5] = 0.0
    flux = np.array(star.flux[0])
    with jax.enable_x64(True):
        z = jnp.zeros(4)
        base = fitted.log_likelihood(z, jnp.asarray(flux), jnp.asarray(ivar))
        flux[:5] = 1e9
        moved = fitted.log_likelihood(z, jnp.asarray(flux), jnp.asarray(ivar))
    assert float(base) == float(moved)


def test_predict_flux_is_the_conditional_mean_flux(sim, fitted):
    # In the simulation, labels are latents 0 and 1, so E[flux | labels] = B[:, :2] labels.
    labels = sim.true_labels[400:420]
    expected = labels @ sim.B[:, :2].T
    predicted = fitted.predict_flux(labels)
    assert predicted.shape == (20, 64)
    signal = np.sqrt(np.mean(expected**2))
    # Where the unreported scatter is small the weights are well determined (~2 %); the
    # noisiest pixels (s up to 2) carry the statistical error of 384 training stars.
    quiet = sim.systematic_err < 0.5
    assert np.sqrt(np.mean((predicted - expected)[:, quiet] ** 2)) < 0.05 * signal
    assert np.sqrt(np.mean((predicted - expected) ** 2)) < 0.15 * signal
    with pytest.raises(ValueError, match="labels"):
        fitted.predict_flux(np.ones((3, 5)))


def test_registered_output_with_missing_entries_round_trips(tmp_path, sim):
    """An extra output (here a noisy copy of latent 2, like a photometric colour) is
    learned with its own transform and scatter; stars missing it simply lack the term."""
    rng = np.random.default_rng(0)
    colour = sim.latents[:, 2:3] + 0.05 * rng.normal(size=(768, 1))
    colour[rng.uniform(size=768) < 0.2] = np.nan
    model = Lux(NAMES, latent_size=4).register_output("colour", AffineTransform(), ScalarScatter())
    train_extra = {"colour": OutputData(colour[:384])}
    fitted = model.fit(sim.dataset[:384], extra=train_extra, calibrate=False)
    assert fitted.output_names == ("labels", "flux", "colour")
    # Its 0.05 noise is split between the scatter and latent 2, which little else constrains.
    assert 0.01 < fitted.scatter("colour")[0] < 0.08
    test = sim.dataset[384:]
    extra = {"colour": OutputData(colour[384:])}
    with_colour = fitted.infer_latents(test, inputs=("flux", "colour"), extra=extra)[0]
    flux_only = fitted.infer_latents(test)[0]
    assert with_colour.shape == flux_only.shape == (384, 4)
    predicted = fitted.predict(with_colour)["colour"][:, 0]
    known = np.isfinite(colour[384:, 0])
    # Conditioning on the colour pins the predicted colour to the observed one.
    assert np.sqrt(np.mean((predicted[known] - colour[384:, 0][known]) ** 2)) < 0.06
    loaded = load_model(fitted.save(tmp_path / "lux_colour.starlabel"))
    np.testing.assert_array_equal(
        loaded.infer(test, inputs=("flux", "colour"), extra=extra).labels,
        fitted.infer(test, inputs=("flux", "colour"), extra=extra).labels,
    )
    with pytest.raises(ValueError, match="colour"):
        model.fit(sim.dataset[:384])
    with pytest.raises(ValueError, match="register"):
        Lux(NAMES, latent_size=4).fit(sim.dataset[:384], extra=train_extra)
    with pytest.raises(ValueError, match="taken"):
        Lux(NAMES).register_output("flux", AffineTransform(), PixelScatter())
