"""Calibration on simulated data with known truth: z = (inferred − true)/σ ~ N(0, 1).

Fisher errors are checked on 1024 test stars per model. NUTS (1 chain, 150 warm-up +
500 draws per star) runs on the first 256 of them to keep the suite fast, so its
z-statistics pool both labels (512 values) and its bounds are the same; NUTS must also
agree star by star with Fisher where the posterior is close to Gaussian.
"""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.data import InferenceResult, simulate_linear_latent
from starlabel.models._posterior import posterior_infer

N_TEST = 1024
N_NUTS = 256


def z_scores(result: InferenceResult, truth: np.ndarray) -> np.ndarray:
    return (result.labels - truth) / result.label_err


def assert_calibrated(z: np.ndarray) -> None:
    """std(z) in [0.9, 1.1] and 68% ± 3% within |z| < 1, per label column."""
    z = z.reshape(-1, z.shape[-1]) if z.ndim > 1 else z[:, None]
    std = z.std(axis=0)
    inside = np.mean(np.abs(z) < 1.0, axis=0)
    assert np.all((std > 0.9) & (std < 1.1)), std
    assert np.all(np.abs(inside - 0.6827) < 0.03), inside


@pytest.fixture(scope="module")
def lux_case():
    from starlabel.models.lux import Lux

    sim = simulate_linear_latent(n_stars=1024 + N_TEST, n_latents=4, n_pixels=64, seed=7)
    fitted = Lux(("label_0", "label_1"), latent_size=4, scatter="pixel").fit(sim.dataset[:1024])
    test = sim.dataset[1024:].replace(labels=None)  # the test step never sees labels
    return fitted, test, sim.true_labels[1024:]


@pytest.fixture(scope="module")
def lux_fisher(lux_case):
    fitted, test, _ = lux_case
    return posterior_infer(fitted, test, method="fisher", chunk_size=N_TEST)


@pytest.fixture(scope="module")
def lux_nuts(lux_case):
    fitted, test, _ = lux_case
    return posterior_infer(
        fitted, test[:N_NUTS], method="nuts", num_warmup=150, num_samples=500, chunk_size=N_NUTS, seed=1
    )


def test_lux_fisher_errors_are_calibrated(lux_case, lux_fisher):
    _, _, truth = lux_case
    assert lux_fisher.n_stars >= 1000
    assert np.all(lux_fisher.flags == 0)
    assert_calibrated(z_scores(lux_fisher, truth))


def test_lux_laplace_equals_fisher_for_an_affine_model(lux_case, lux_fisher):
    fitted, test, _ = lux_case
    laplace = posterior_infer(fitted, test[:64], method="laplace")
    np.testing.assert_allclose(laplace.cov, lux_fisher.cov[:64], rtol=1e-8)
    # And both equal Lux's own closed-form test step, including the learned scatter.
    own = fitted.infer(test[:64])
    np.testing.assert_allclose(lux_fisher.labels[:64], own.labels, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lux_fisher.cov[:64], own.cov, rtol=1e-8)


def test_lux_nuts_is_calibrated_converged_and_agrees_with_fisher(lux_case, lux_fisher, lux_nuts):
    _, _, truth = lux_case
    assert_calibrated(z_scores(lux_nuts, truth[:N_NUTS]).ravel())
    rhat = np.maximum(lux_nuts.extra["rhat_label_0"], lux_nuts.extra["rhat_label_1"])
    # R̂ of 500 draws is itself noisy (±0.005): most stars are below 1.01, none is far off.
    assert np.median(rhat) < 1.01 and np.quantile(rhat, 0.99) < 1.03 and rhat.max() < 1.05
    assert np.all(lux_nuts.extra["nuts_divergent"] == 0)
    fisher = lux_fisher
    shift = (lux_nuts.labels - fisher.labels[:N_NUTS]) / fisher.label_err[:N_NUTS]
    ratio = lux_nuts.label_err / fisher.label_err[:N_NUTS]
    assert np.quantile(np.abs(shift), 0.99) < 0.15  # Monte-Carlo error of a mean with ESS ≈ 700
    assert abs(np.median(ratio) - 1.0) < 0.02
    assert np.all((ratio > 0.85) & (ratio < 1.15))
