"""Calibration on simulated data with known truth: z = (inferred − true)/σ ~ N(0, 1).

For Lux (``simulate_linear_latent``) and the Cannon (``simulate_cannon``), Fisher errors
are checked per label on 1024 and 2048 test stars. NUTS (1 chain, 150 warm-up + 500
draws per star) runs on the first 256 of them to keep the suite fast, so its
z-statistics pool the labels (512 and 768 values) under the same bounds; NUTS must
also agree star by star with Fisher where the posterior is close to Gaussian. The ±3%
coverage bound is about 2σ of the binomial noise at 1024 values.
"""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.data import InferenceResult, simulate_cannon, simulate_linear_latent
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
    fitted = Lux(("label_0", "label_1"), latent_size=4, scatter="pixel").fit(
        sim.dataset[:1024], calibrate=False
    )
    test = sim.dataset[1024:].replace(labels=None)  # the test step never sees labels
    return fitted, test, sim.true_labels[1024:]


@pytest.fixture(scope="module")
def lux_fisher(lux_case):
    fitted, test, _ = lux_case
    return posterior_infer(fitted, test, method="fisher", chunk_size=N_TEST)


@pytest.fixture(scope="module")
def lux_nuts(lux_case, lux_fisher):
    fitted, test, _ = lux_case
    # Start from the latents of the whole test set: the model's test step is then not
    # recompiled for a second batch size.
    latents = fitted.infer_latents(test)[0][:N_NUTS]
    return posterior_infer(
        fitted,
        test[:N_NUTS],
        method="nuts",
        num_warmup=150,
        num_samples=500,
        chunk_size=N_NUTS,
        seed=1,
        start=latents,
    )


def test_start_must_match_the_parameters(lux_case):
    fitted, test, _ = lux_case
    with pytest.raises(ValueError, match=r"`start`.*\(stars, latents\)"):
        posterior_infer(fitted, test[:4], start=np.zeros((4, 2)))


def test_lux_fisher_errors_are_calibrated(lux_case, lux_fisher):
    _, _, truth = lux_case
    assert lux_fisher.n_stars >= 1000
    assert np.all(lux_fisher.flags == 0)
    assert_calibrated(lux_fisher, truth)


def test_lux_laplace_equals_fisher_for_an_affine_model(lux_case, lux_fisher):
    fitted, test, _ = lux_case
    laplace = posterior_infer(fitted, test, method="laplace", chunk_size=N_TEST)
    np.testing.assert_allclose(laplace.cov, lux_fisher.cov, rtol=1e-8)
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
    # Monte-Carlo error of a σ from ESS ≈ 500 is ~3%; the tails also hold the few
    # low-S/N Cannon posteriors that are mildly non-Gaussian.
    assert np.all((ratio > 0.8) & (ratio < 1.2)), (ratio.min(), ratio.max())


def assert_converged(nuts: InferenceResult) -> None:
    rhat = np.max([nuts.extra[f"rhat_{name}"] for name in nuts.label_names], axis=0)
    # R̂ (max of bulk and tail, max over labels) of 500 draws is itself noisy by about
    # ±0.005–0.01: the typical star is below 1.01 and none is far off.
    assert np.median(rhat) < 1.01, np.median(rhat)
    assert np.quantile(rhat, 0.95) < 1.03 and rhat.max() < 1.06, (np.quantile(rhat, 0.95), rhat.max())
    assert np.all(nuts.extra["nuts_divergent"] == 0)


@pytest.fixture(scope="module")
def cannon_case():
    from starlabel.models.cannon import Cannon

    n_train, n_test = 4000, 2048
    sim = simulate_cannon(n_stars=n_train + n_test, n_pixels=200, n_labels=3, snr=(20.0, 80.0), seed=5)
    fitted = Cannon(sim.dataset.label_names, order=2).fit(sim.dataset[:n_train], calibrate=False)
    test = sim.dataset[n_train:].replace(labels=None)
    return fitted, test, sim.true_labels[n_train:]


@pytest.fixture(scope="module")
def cannon_fisher(cannon_case):
    fitted, test, _ = cannon_case
    return posterior_infer(fitted, test, method="fisher", chunk_size=1024)


def test_cannon_fisher_errors_are_calibrated_and_match_its_own(cannon_case, cannon_fisher):
    fitted, test, truth = cannon_case
    assert cannon_fisher.n_stars >= 1000 and np.all(cannon_fisher.flags == 0)
    assert_calibrated(cannon_fisher, truth)
    # Independent Fisher matrix from the Cannon's own derivatives, with s² in the weights.
    s2, ok = np.asarray(fitted.s2), np.asarray(fitted.pixel_ok)
    for i in range(8):
        d = fitted.derivatives(cannon_fisher.labels[i])  # (labels, pixels)
        ivar = test.ivar[i]
        weight = np.where(ok & (ivar > 0), ivar / (1.0 + ivar * s2), 0.0)
        np.testing.assert_allclose(cannon_fisher.cov[i], np.linalg.inv((d * weight) @ d.T), rtol=1e-7)


def test_cannon_nuts_is_calibrated_converged_and_agrees_with_fisher(cannon_case, cannon_fisher):
    fitted, test, truth = cannon_case
    start = cannon_fisher.labels[:N_NUTS]  # the Fisher run's MAP: no second compile of the test step
    nuts = posterior_infer(
        fitted, test[:N_NUTS], method="nuts", num_warmup=150, num_samples=500, chunk_size=N_NUTS, start=start
    )
    assert_calibrated(nuts, truth[:N_NUTS], pooled=True)
    assert_converged(nuts)
    assert_nuts_agrees_with_fisher(nuts, cannon_fisher)
