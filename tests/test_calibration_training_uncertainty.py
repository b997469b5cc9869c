"""The training-uncertainty term of posterior_infer against a Monte Carlo over training sets.

A small model linear in per-pixel coefficients (flux = θ_λ · [1, x, x²], x = scaled
label) is refitted by weighted least squares on many noise realisations of one
training set; the spread of a noise-free test star's MAP label across refits must
match the first-order ``training_var`` that ``training_prediction_variance`` predicts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.data import InferenceResult, SpectralDataset
from starlabel.models import (
    AbstractFittedModel,
    AbstractLinearFittedModel,
    posterior_infer,
    training_prediction_variance,
)

N_PIXELS, N_TRAIN, N_TEST, N_REFITS, SIGMA = 40, 60, 24, 300, 0.05


class Scaler(eqx.Module):
    shift: jnp.ndarray
    scale: jnp.ndarray

    def transform(self, labels):
        shape = (1,) * (labels.ndim - 1) + (-1,)  # (labels,) or (stars, labels)
        return (labels - self.shift.reshape(shape)) / self.scale.reshape(shape)


class Quadratic(eqx.Module):
    def __call__(self, x):
        return jnp.stack([jnp.ones_like(x[0]), x[0], x[0] ** 2])

    def design(self, x):
        return jnp.stack([jnp.ones_like(x[:, 0]), x[:, 0], x[:, 0] ** 2], axis=1)


class LinearModel(AbstractLinearFittedModel):
    """A one-label polynomial spectral model; its test step returns a given start."""

    kind: ClassVar[str] = "test-linear"
    label_names: tuple[str, ...] = eqx.field(static=True)
    theta: jnp.ndarray
    s2: jnp.ndarray
    start: np.ndarray = eqx.field(static=False)
    vectorizer: Quadratic = Quadratic()
    label_scaler: Scaler = Scaler(jnp.array([4800.0]), jnp.array([300.0]))

    @property
    def active_terms(self):
        return np.ones(self.theta.shape, bool)

    def log_likelihood(self, labels, flux, ivar):
        model = self.theta @ self.vectorizer(self.label_scaler.transform(labels))
        omega = ivar / (1.0 + ivar * self.s2)
        return -0.5 * jnp.sum(omega * (flux - model) ** 2)

    def predict_flux(self, labels):
        rows = jnp.atleast_2d(jnp.asarray(labels, float))
        return np.asarray(
            jax.vmap(lambda row: self.theta @ self.vectorizer(self.label_scaler.transform(row)))(rows)
        )

    def config(self):
        return {"label_names": list(self.label_names)}

    @classmethod
    def skeleton(cls, config):
        raise NotImplementedError("this test model is never saved")

    def infer(self, data):
        n = data.n_stars
        return InferenceResult(
            data.ids, self.label_names, self.start, None, np.zeros(n), np.zeros(n), np.zeros(n, int)
        )


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(4)
    theta_true = np.stack(
        [1.0 - rng.uniform(0, 0.5, N_PIXELS), rng.normal(0, 0.1, N_PIXELS), rng.normal(0, 0.03, N_PIXELS)],
        axis=1,
    )
    train_labels = rng.uniform(4300.0, 5300.0, (N_TRAIN, 1))
    test_labels = rng.uniform(4400.0, 5200.0, (N_TEST, 1))

    def design_of(labels):
        x = (labels[:, 0] - 4800.0) / 300.0
        return np.stack([np.ones_like(x), x, x**2], axis=1)

    design = design_of(train_labels)
    test_flux = design_of(test_labels) @ theta_true.T
    return rng, theta_true, train_labels, design, test_labels, test_flux


def map_labels(theta, test_flux, start):
    """Exact MAP of every test star for coefficients ``theta`` (Gauss–Newton in x)."""
    x = (start[:, 0] - 4800.0) / 300.0
    for _ in range(20):
        v = np.stack([np.ones_like(x), x, x**2], axis=1)
        dv = np.stack([np.zeros_like(x), np.ones_like(x), 2 * x], axis=1)
        residual = test_flux - v @ theta.T
        jac = dv @ theta.T
        x = x + np.sum(jac * residual, axis=1) / np.sum(jac * jac, axis=1)
    return 4800.0 + 300.0 * x


def refit(rng, theta_true, design, test_labels):
    flux = design @ theta_true.T + SIGMA * rng.normal(size=(N_TRAIN, N_PIXELS))
    theta = np.linalg.lstsq(design, flux, rcond=None)[0].T  # equal weights: plain least squares
    return LinearModel(("teff",), jnp.asarray(theta), jnp.zeros(N_PIXELS), test_labels), flux


def test_training_variance_matches_refits(setup):
    rng, theta_true, train_labels, design, test_labels, test_flux = setup
    # The test spectra are noise-free: only the refitted coefficients move the labels.
    test = SpectralDataset(test_flux, flux_err=np.full(test_flux.shape, SIGMA))
    estimates, predicted = [], None
    for _ in range(N_REFITS):
        model, flux = refit(rng, theta_true, design, test_labels)
        if predicted is None:
            train = SpectralDataset(
                flux, flux_err=np.full(flux.shape, SIGMA), labels=train_labels, label_names=("teff",)
            )
            variance = training_prediction_variance(model, train)
            result = posterior_infer(model, test, prediction_variance=variance, chunk_size=N_TEST)
            predicted = result.extra["training_var_teff"]
            # The total variance is the noise part plus exactly this training part (a zero
            # coefficient covariance keeps the compiled program the same).
            zero = eqx.tree_at(
                lambda v: v.coefficient_cov, variance, jnp.zeros_like(variance.coefficient_cov)
            )
            noise_only = posterior_infer(model, test, prediction_variance=zero, chunk_size=N_TEST)
            np.testing.assert_allclose(
                result.label_err[:, 0] ** 2 - noise_only.label_err[:, 0] ** 2, predicted, rtol=1e-8
            )
            assert result.meta["training_uncertainty"] is True
            np.testing.assert_allclose(
                map_labels(np.asarray(model.theta), test_flux, test_labels), result.labels[:, 0], rtol=1e-9
            )
        estimates.append(map_labels(np.asarray(model.theta), test_flux, test_labels))
    empirical = np.var(np.array(estimates), axis=0, ddof=1)
    ratio = empirical / predicted
    # Each ratio is a χ²₂₉₉/299 draw (±8%), correlated across stars through the refits.
    assert 0.85 < np.mean(ratio) < 1.15, ratio
    assert np.all((ratio > 0.7) & (ratio < 1.35)), ratio


class NoCoefficients(AbstractFittedModel):
    """A fitted model that is not linear in per-pixel coefficients (like the NN)."""

    kind: ClassVar[str] = "test-no-coefficients"
    label_names: tuple[str, ...] = ("a",)

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> NoCoefficients:
        return cls()

    def infer(self, data: SpectralDataset, **options: Any) -> InferenceResult:
        raise NotImplementedError


def test_training_variance_rejects_models_without_coefficients(setup):
    test = SpectralDataset(np.ones((2, N_PIXELS)), flux_err=np.ones((2, N_PIXELS)))
    # A fitted model of the right base type, so the function's own check (not the
    # annotation check of the test run's type checker) is what refuses it.
    with pytest.raises(TypeError, match="no per-pixel coefficients theta"):
        training_prediction_variance(NoCoefficients(), test)
