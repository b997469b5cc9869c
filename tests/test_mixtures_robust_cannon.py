"""Robust Cannon: wrong training labels and unmasked bad pixels, on simulated truth."""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.data import simulate_cannon
from starlabel.mixtures import fit_robust_cannon, infer_robust
from starlabel.models.cannon import Cannon

N_TRAIN = 600


@pytest.fixture(scope="module")
def setup():
    sim = simulate_cannon(n_stars=N_TRAIN + 300, n_pixels=150, n_labels=3, snr=50.0, seed=11)
    train, test = sim.dataset[:N_TRAIN], sim.dataset[N_TRAIN:]
    truth = sim.true_labels[N_TRAIN:]
    model = Cannon(label_names=sim.dataset.label_names)
    clean = model.fit(train, calibrate=False)
    return sim, train, test, truth, model, clean


def _rmse(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((labels - truth) ** 2, axis=0))


def test_bad_training_labels_are_down_weighted(setup):
    sim, train, test, truth, model, clean = setup
    rng = np.random.default_rng(3)
    bad = rng.choice(N_TRAIN, N_TRAIN // 10, replace=False)  # 10% of the training stars
    labels = np.array(train.labels)
    labels[bad] += 3.0 * labels.std(axis=0) * rng.choice([-1.0, 1.0], size=(len(bad), labels.shape[1]))
    dirty = train.replace(labels=labels)

    reference = _rmse(clean.infer(test).labels, truth)
    plain = _rmse(model.fit(dirty, calibrate=False).infer(test).labels, truth)
    robust = fit_robust_cannon(model, dirty)
    robust_rmse = _rmse(robust.fitted.infer(test).labels, truth)

    assert np.all(robust_rmse / reference < 1.10), robust_rmse / reference
    assert np.all(plain / reference > 2.0), plain / reference
    is_bad = np.zeros(N_TRAIN, dtype=bool)
    is_bad[bad] = True
    assert np.mean(robust.outlier_prob[is_bad] > 0.5) >= 0.95
    assert np.mean(robust.outlier_prob[~is_bad] > 0.5) <= 0.01
    assert 0.07 < robust.outlier_fraction < 0.13
    assert robust.converged


def test_clean_training_set_has_no_outliers(setup):
    _, train, test, truth, model, clean = setup
    robust = fit_robust_cannon(model, train, max_iter=4)
    assert np.sum(robust.outlier_prob > 0.5) <= 2
    ratio = _rmse(robust.fitted.infer(test).labels, truth) / _rmse(clean.infer(test).labels, truth)
    assert np.all(np.abs(ratio - 1.0) < 0.03)


def test_bad_pixels_do_not_drag_the_labels(setup):
    _, _, test, truth, _, clean = setup
    rng = np.random.default_rng(8)
    flux = np.array(test.flux)
    hit = rng.uniform(size=flux.shape) < 0.05  # unflagged cosmic-ray-like spikes
    flux[hit] += rng.uniform(0.2, 1.0, size=int(hit.sum()))
    spiked = test.replace(flux=flux)

    reference = _rmse(clean.infer(test).labels, truth)
    plain = _rmse(clean.infer(spiked).labels, truth)
    robust = infer_robust(clean, spiked)
    got = _rmse(robust.result.labels, truth)
    assert np.all(got / reference < 1.10), got / reference
    assert np.all(plain / reference > 2.0), plain / reference
    bias = np.abs(np.mean(robust.result.labels - truth, axis=0))
    assert np.all(bias < 0.2 * reference)
    assert np.mean(robust.pixel_good_prob[hit] < 0.5) > 0.9
    assert np.mean(robust.pixel_good_prob[~hit] < 0.5) < 0.005
    np.testing.assert_allclose(np.median(robust.result.extra["bad_pixel_fraction"]), 0.05, atol=0.02)


def test_bad_arguments_are_named(setup):
    _, train, test, _, model, clean = setup
    with pytest.raises(TypeError, match="Cannon"):
        fit_robust_cannon("cannon", train)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_folds"):
        fit_robust_cannon(model, train, n_folds=1)
    with pytest.raises(ValueError, match="flux_range"):
        infer_robust(clean, test, flux_range=(1.0, 0.0))
