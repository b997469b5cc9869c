"""The NN label regressor: learns real structure, keeps its best epoch, saves and loads."""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.data import SpectralDataset, simulate_cannon
from starlabel.models import load_model
from starlabel.models.nn import FittedNNRegressor, NNRegressor

NAMES = ("teff", "logg", "fe_h")


@pytest.fixture(scope="module")
def sim():
    return simulate_cannon(n_stars=400, n_pixels=60, seed=3, snr=(40.0, 150.0))


@pytest.fixture(scope="module")
def fitted(sim):
    return NNRegressor(NAMES, hidden=(64, 32), epochs=120, seed=1).fit(sim.dataset[:300], calibrate=False)


def test_beats_the_mean_predictor_by_a_wide_margin(sim, fitted):
    test = sim.dataset[300:]
    truth = sim.true_labels[300:]
    result = fitted.infer(test)
    rmse = np.sqrt(np.mean((result.labels - truth) ** 2, axis=0))
    trivial = np.sqrt(np.mean((truth - sim.true_labels[:300].mean(axis=0)) ** 2, axis=0))
    assert np.all(rmse < 0.25 * trivial), (rmse, trivial)
    assert np.all(np.isnan(result.chi2)) and result.cov is not None


def test_keeps_the_best_validation_epoch(fitted):
    val = np.asarray(fitted.val_loss)
    assert int(fitted.best_epoch) == int(np.argmin(val))
    assert val.shape == (120,) and np.asarray(fitted.train_loss).shape == (120,)
    # Training made progress: the best validation MSE (standardised) is far below 1.
    assert val.min() < 0.1 * val[0]


def test_label_covariance_grows_with_flux_noise(sim, fitted):
    star = sim.dataset[350]
    noisy = star.replace(ivar=star.ivar / 16.0)
    clean_err = fitted.infer(star, n_mc=64).label_err[0]
    noisy_err = fitted.infer(noisy, n_mc=64).label_err[0]
    assert np.all(noisy_err > 2.0 * clean_err)
    assert np.all(np.isfinite(clean_err)) and np.all(clean_err > 0)


def test_save_load_round_trip(tmp_path, sim, fitted):
    loaded = load_model(fitted.save(tmp_path / "nn.starlabel"))
    assert isinstance(loaded, FittedNNRegressor)
    test = sim.dataset[300:]
    np.testing.assert_array_equal(fitted.infer(test).labels, loaded.infer(test).labels)
    assert int(loaded.best_epoch) == int(fitted.best_epoch)


def test_missing_labels_and_masked_pixels(sim, rng):
    train = sim.dataset[:300]
    labels = np.array(train.labels)
    labels[rng.uniform(size=labels.shape) < 0.3] = np.nan
    mask = rng.uniform(size=train.flux.shape) < 0.05
    holey = train.replace(labels=labels, mask=mask, ivar=np.where(mask, 0.0, train.ivar))
    # Same architecture and epochs as the fixture: the compiled training loop is reused.
    model = NNRegressor(NAMES, hidden=(64, 32), epochs=120, seed=1).fit(holey, calibrate=False)
    result = model.infer(sim.dataset[300:])
    assert np.all(np.isfinite(result.labels))
    truth = sim.true_labels[300:]
    trivial = np.std(truth, axis=0)
    assert np.all(np.sqrt(np.mean((result.labels - truth) ** 2, axis=0)) < 0.5 * trivial)


def test_bad_inputs(sim, fitted):
    with pytest.raises(ValueError, match="label_names"):
        NNRegressor("teff")
    with pytest.raises(ValueError, match="hidden"):
        NNRegressor(NAMES, hidden=(0,))
    with pytest.raises(ValueError, match="activation"):
        NNRegressor(NAMES, activation="sigmoidish")
    with pytest.raises(ValueError, match="labels"):
        NNRegressor(NAMES, epochs=2).fit(sim.dataset[:50].replace(labels=None))
    with pytest.raises(ValueError, match="pixels"):
        fitted.infer(SpectralDataset(np.ones((2, 7)), ivar=np.ones((2, 7))))
    with pytest.raises(TypeError, match="SpectralDataset"):
        fitted.infer(sim.dataset.flux)
