"""The abstract model classes of ``starlabel.models.base``: who is what, and that a
user-written flux model plugs into the generic pieces (likelihood, Jacobian)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Bool, Float

from starlabel.data import simulate_cannon
from starlabel.models import (
    AbstractFittedFluxModel,
    AbstractFittedModel,
    AbstractFluxModel,
    AbstractGenerativeModel,
    AbstractLatentModel,
    AbstractLinearFluxModel,
)
from starlabel.models.cannon import Cannon, FittedCannon, PolynomialSpectrum
from starlabel.models.lux import FittedLux


class GaussianLines(AbstractFluxModel):
    """A flux model that is not linear in any feature vector: Gaussian absorption lines
    whose depths scale as exp(label 0) and whose widths grow with label 1."""

    label_names: tuple[str, ...] = eqx.field(static=True)
    centre: Float[Array, " lines"]
    depth: Float[Array, " lines"]
    position: Float[Array, " pixels"]
    s2: Float[Array, " pixels"]
    pixel_ok: Bool[Array, " pixels"]
    train_labels: Float[Array, "train labels"]
    box: Float[Array, "2 labels"]

    def __init__(self, n_pixels: int, train_labels: np.ndarray, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.label_names = ("a", "b")
        self.centre = jnp.asarray(rng.uniform(0, n_pixels, 40))
        self.depth = jnp.asarray(rng.uniform(0.05, 0.4, 40))
        self.position = jnp.arange(n_pixels, dtype=jnp.float64)
        self.s2 = jnp.zeros(n_pixels)
        self.pixel_ok = jnp.ones(n_pixels, dtype=bool)
        self.train_labels = jnp.asarray(train_labels)
        self.box = jnp.stack([self.train_labels.min(axis=0), self.train_labels.max(axis=0)])

    def flux(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        width = 2.0 * jnp.exp(0.3 * labels[1])
        profile = jnp.exp(-0.5 * ((self.position[:, None] - self.centre[None, :]) / width) ** 2)
        return 1.0 - profile @ (self.depth * jnp.exp(0.5 * labels[0]))


def test_abstract_classes_cannot_be_instantiated():
    for cls in (
        AbstractFluxModel,
        AbstractLinearFluxModel,
        AbstractFittedFluxModel,
        AbstractLatentModel,
        AbstractGenerativeModel,
        AbstractFittedModel,
    ):
        with pytest.raises(TypeError):
            cls()


def test_families_are_instances_of_their_abstract_classes():
    sim = simulate_cannon(n_stars=60, n_pixels=20, seed=1)
    fitted = Cannon(sim.dataset.label_names).fit(sim.dataset, calibrate=False)
    assert isinstance(fitted, FittedCannon) and isinstance(fitted, AbstractFittedFluxModel)
    assert not isinstance(fitted, AbstractLatentModel)
    spectrum = fitted.flux_model()
    assert isinstance(spectrum, PolynomialSpectrum) and isinstance(spectrum, AbstractLinearFluxModel)
    assert isinstance(fitted.configuration(), Cannon)
    assert issubclass(FittedLux, AbstractLatentModel) and not issubclass(FittedLux, AbstractFittedFluxModel)
    with jax.enable_x64(True):
        labels = jnp.asarray(sim.dataset.labels[:5])
        # The flux model is the fitted model's own prediction and likelihood.
        np.testing.assert_allclose(
            np.asarray(jax.vmap(spectrum)(labels)), fitted.predict_flux(sim.dataset.labels[:5]), rtol=1e-12
        )
        flux, ivar = jnp.asarray(sim.dataset.flux[0]), jnp.asarray(sim.dataset.ivar[0])
        np.testing.assert_allclose(
            float(spectrum.log_likelihood(labels[0], flux, ivar)),
            float(fitted.log_likelihood(labels[0], flux, ivar)),
            rtol=1e-12,
        )


def test_custom_flux_model_jacobian_and_likelihood():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        model = GaussianLines(200, rng.normal(size=(30, 2)) * 0.5)
        labels = jnp.array([0.2, -0.3])
        jac = np.asarray(model.jacobian(labels))
        step = 1e-6
        numeric = np.stack(
            [(np.asarray(model(labels + step * e)) - np.asarray(model(labels - step * e))) / (2 * step)
             for e in np.eye(2)],
            axis=1,
        )  # fmt: skip
        assert jac.shape == (200, 2)
        np.testing.assert_allclose(jac, numeric, atol=1e-7)
        # Log-likelihood: −½χ² + ½Σ ln(ω/2π) with ω = 1/σ².
        flux = model(labels) + 0.01
        ivar = jnp.full(200, 1e4)
        expected = -0.5 * 200 * 1e4 * 1e-4 + 0.5 * 200 * np.log(1e4 / (2 * np.pi))
        assert float(model.log_likelihood(labels, flux, ivar)) == pytest.approx(expected, rel=1e-12)
        low, high = model.safety_box()
        width = np.asarray(model.box[1] - model.box[0])
        np.testing.assert_allclose(high - low, 3 * width)


def _observed(model: GaussianLines, labels: np.ndarray, v: np.ndarray, step: float) -> np.ndarray:
    """Noise-free spectra of ``model`` seen at velocities ``v`` (km/s): lines move by ln D / step px."""
    shift = np.log(np.sqrt((1 + v / 299_792.458) / (1 - v / 299_792.458))) / step
    rows = []
    for one, s in zip(labels, shift, strict=True):
        moved = eqx.tree_at(lambda m: m.centre, model, model.centre + s)
        rows.append(np.asarray(moved(jnp.asarray(one))))
    return np.stack(rows)


def test_custom_flux_model_plugs_into_velocity_and_continuum_fits():
    from starlabel.data import SpectralDataset
    from starlabel.models import infer_labels

    rng = np.random.default_rng(7)
    n_pixels, step, n_stars = 400, 1.5e-5, 12
    wavelength = 15_100.0 * np.exp(step * np.arange(n_pixels))
    truth = rng.normal(size=(n_stars, 2)) * 0.4
    v = rng.uniform(-40, 40, n_stars)
    with jax.enable_x64(True):
        model = GaussianLines(n_pixels, rng.normal(size=(50, 2)) * 0.4)
        clean = _observed(model, truth, v, step)
    t = np.linspace(-1, 1, n_pixels)
    continuum = 1.0 + rng.normal(size=(n_stars, 1)) * 0.02 + rng.normal(size=(n_stars, 1)) * 0.02 * t
    sigma = 0.005
    flux = clean * continuum + sigma * rng.normal(size=clean.shape)
    data = SpectralDataset(flux=flux, ivar=np.full_like(flux, sigma**-2), wavelength=wavelength)
    result = infer_labels(model, data, fit_rv=True, continuum_order=1, v_max=60.0)
    err = np.sqrt(np.diagonal(result.cov, axis1=1, axis2=2))
    z = (result.labels - truth) / err
    # Labels and velocities recovered to within their (Fisher) errors; errors are small.
    assert np.all(np.abs(z) < 4.5), z
    assert np.all(err < 0.02)
    z_v = (result.extra["rv"] - v) / result.extra["rv_err"]
    assert np.all(np.abs(z_v) < 4.5), z_v
    assert 0.4 < np.std(z) < 1.8
    # The grid posterior mean needs a polynomial model, and says so.
    with pytest.raises(ValueError, match="estimator='map'"):
        infer_labels(model, data, fit_rv=True, estimator="mean")


def test_spline_prefilter_matches_the_numpy_prefilter():
    from starlabel.models._nuisance import DopplerResampler, SplinePrefilter

    wavelength = np.concatenate(
        [15_100 * np.exp(1e-5 * np.arange(120)), 16_000 * np.exp(1e-5 * np.arange(90))]
    )
    resampler = DopplerResampler.from_wavelength(wavelength, v_max=20.0)
    values = np.random.default_rng(2).normal(size=(210, 3))
    with jax.enable_x64(True):
        ours = np.asarray(SplinePrefilter(resampler)(jnp.asarray(values)))
    np.testing.assert_allclose(ours, resampler.prefilter(values), atol=1e-12)


def test_custom_flux_model_plugs_into_binary_fit():
    """A non-linear flux model through the two-star fit: B-spline prefilter in the fit,
    analytic Jacobian equal to autodiff, binaries found with their Δv and flux share."""
    from starlabel.data import SpectralDataset
    from starlabel.models import fit_binary
    from starlabel.models._binary import BinaryModel
    from starlabel.models._nuisance import build_nuisance_model

    rng = np.random.default_rng(11)
    n_pixels, step, n = 400, 1.5e-5, 6
    wavelength = 15_100.0 * np.exp(step * np.arange(n_pixels))
    with jax.enable_x64(True):
        model = GaussianLines(n_pixels, rng.normal(size=(50, 2)) * 0.4)
        binary = BinaryModel.like(build_nuisance_model(model, wavelength, fit_rv=True, v_max=100.0), (), True)
        assert binary.theta_spline is None and binary.prefilter is not None
        params = jnp.array([0.2, -0.1, -0.3, 0.3, 0.4, 35.0, 6.0])
        flux, jac = binary.flux_and_jacobian(params)
        np.testing.assert_allclose(np.asarray(flux), np.asarray(binary.flux(params)), atol=1e-12)
        np.testing.assert_allclose(np.asarray(jac), np.asarray(jax.jacfwd(binary.flux)(params)), atol=1e-9)
        primary, secondary = rng.normal(size=(n, 2)) * 0.3, rng.normal(size=(n, 2)) * 0.3
        w = rng.uniform(0.6, 0.75, n)
        dv = rng.choice([-1.0, 1.0], n) * rng.uniform(30.0, 60.0, n)
        v1 = rng.uniform(-20.0, 20.0, n)
        pair = w[:, None] * _observed(model, primary, v1, step)
        pair += (1.0 - w[:, None]) * _observed(model, secondary, v1 + dv, step)
        single = _observed(model, rng.normal(size=(n, 2)) * 0.3, rng.uniform(-20.0, 20.0, n), step)
    sigma = 0.005
    flux = np.concatenate([pair, single])
    flux = flux + sigma * rng.normal(size=flux.shape)
    data = SpectralDataset(flux=flux, ivar=np.full_like(flux, sigma**-2), wavelength=wavelength)
    result = fit_binary(model, data, v_max=60.0, dv_max=80.0, chunk_size=2 * n)
    assert result.extra["binary"].tolist() == [True] * n + [False] * n
    np.testing.assert_allclose(result.extra["binary_dv"][:n], dv, atol=1.5)
    # Label a only scales line depths, so w and a trade off: what the spectra fix is each
    # star's depth factor w e^(a/2) (and the widths, label b). Detected binaries report
    # the primary of the two-star fit, flagged BINARY.
    w_fit = result.extra["binary_w"][:n]
    np.testing.assert_allclose(
        w_fit * np.exp(0.5 * result.labels[:n, 0]), w * np.exp(0.5 * primary[:, 0]), rtol=0.03
    )
    depth2 = (1.0 - w_fit) * np.exp(0.5 * result.extra["a_2"][:n])
    np.testing.assert_allclose(depth2, (1.0 - w) * np.exp(0.5 * secondary[:, 0]), rtol=0.05)
    np.testing.assert_allclose(result.labels[:n, 1], primary[:, 1], atol=0.05)
    np.testing.assert_allclose(result.extra["b_2"][:n], secondary[:, 1], atol=0.1)
    assert np.all(result.flags[:n] & 256) and not np.any(result.flags[n:] & 256)
