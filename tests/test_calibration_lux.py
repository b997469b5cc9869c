"""Lux calibration on simulated data with known truth: z = (inferred − true)/σ ~ N(0, 1).

Fisher errors are checked per label on 1024 test stars. NUTS (1 chain, 150 warm-up +
500 draws per star) runs on the first 256 of them to keep the suite fast, so its
z-statistics pool both labels (512 values) under the same bounds; NUTS must also agree
star by star with Fisher, since this posterior is Gaussian. The ±3% coverage bound is
about 2σ of the binomial noise at 1024 values.
"""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.data import InferenceResult, simulate_linear_latent
from starlabel.evaluate._uncertainty_plots import zscore_summary
from starlabel.models._posterior import posterior_infer

N_TEST = 1024
N_NUTS = 256


def assert_calibrated(result: InferenceResult, truth: np.ndarray, *, pooled: bool = False) -> None:
    """std(z) in [0.9, 1.1] and 68% ± 3% within |z| < 1, per label (or pooled)."""
    labels, errors = result.labels, result.label_err
    if pooled:
        labels, errors, truth = labels.reshape(-1, 1), errors.reshape(-1, 1), truth.reshape(-1, 1)
    stats = zscore_summary(labels, errors, truth)
    assert np.all((stats["std"] > 0.9) & (stats["std"] < 1.1)), stats
    assert np.all(np.abs(stats["within_1"] - 0.6827) < 0.03), stats


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
    assert_calibrated(lux_fisher, truth)


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
    assert_calibrated(lux_nuts, truth[:N_NUTS], pooled=True)
    assert_converged(lux_nuts)
    assert_nuts_agrees_with_fisher(lux_nuts, lux_fisher)


def assert_nuts_agrees_with_fisher(nuts: InferenceResult, fisher: InferenceResult) -> None:
    n = nuts.n_stars
    shift = (nuts.labels - fisher.labels[:n]) / fisher.label_err[:n]
    ratio = nuts.label_err / fisher.label_err[:n]
    assert np.quantile(np.abs(shift), 0.99) < 0.15, np.quantile(np.abs(shift), 0.99)
    assert np.all(np.abs(np.median(ratio, axis=0) - 1.0) < 0.03), np.median(ratio, axis=0)
    assert np.all((ratio > 0.85) & (ratio < 1.15)), (ratio.min(), ratio.max())


def assert_converged(nuts: InferenceResult) -> None:
    rhat = np.max([nuts.extra[f"rhat_{name}"] for name in nuts.label_names], axis=0)
    # R̂ of 500 draws is itself noisy (±0.005): most stars are below 1.01, none is far off.
    assert np.median(rhat) < 1.01 and np.quantile(rhat, 0.99) < 1.03 and rhat.max() < 1.05, rhat.max()
    assert np.all(nuts.extra["nuts_divergent"] == 0)
