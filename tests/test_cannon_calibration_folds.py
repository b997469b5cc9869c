"""The error calibration's folds train on the full arrays with held-out stars at weight 0.

That is the same fit as training on the fold's rows alone (``train[rows]``): same label
scaling, same θ, s² and pixel_ok to rounding, and therefore the same calibration.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from starlabel.data import SpectralDataset, simulate_cannon
from starlabel.models import _calibration
from starlabel.models.cannon import Cannon
from starlabel.models.cannon import _model as cannon_model


@pytest.fixture(scope="module")
def train() -> SpectralDataset:
    data = simulate_cannon(260, 60, 3, snr=(30.0, 150.0), scatter=0.01, seed=11).dataset
    labels = data.labels.copy()
    labels[[3, 77, 150], [0, 2, 1]] = np.nan  # stars every path must leave out
    return SpectralDataset(
        data.flux, ivar=data.ivar, labels=labels, label_names=data.label_names, wavelength=data.wavelength
    )


def _fold_refit(model: Cannon, train: SpectralDataset, monkeypatch, **fit_options):
    """The ``refit`` closure ``Cannon.fit`` hands to the calibration, and the fitted model."""
    captured = []

    def capture(fitted, data, refit, **_):
        captured.append(refit)
        return fitted

    monkeypatch.setattr(cannon_model, "calibrated_fit", capture)
    fitted = model.fit(train, calibrate=True, **fit_options)
    return captured[0], fitted


def _assert_same_fit(a, b) -> None:
    np.testing.assert_array_equal(np.asarray(a.pixel_ok), np.asarray(b.pixel_ok))
    np.testing.assert_allclose(np.asarray(a.label_scaler.shift), np.asarray(b.label_scaler.shift), rtol=0)
    np.testing.assert_allclose(np.asarray(a.label_scaler.scale), np.asarray(b.label_scaler.scale), rtol=0)
    np.testing.assert_allclose(np.asarray(a.theta), np.asarray(b.theta), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(a.s2), np.asarray(b.s2), rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(np.asarray(a.label_space.train), np.asarray(b.label_space.train), rtol=0)
    assert dict(a.training_info) == dict(b.training_info)


def test_fold_fit_equals_the_fit_on_the_sliced_rows(train, monkeypatch, rng):
    weights = rng.uniform(0.3, 2.0, train.n_stars)
    model = Cannon(label_names=train.label_names)
    refit, fitted = _fold_refit(model, train, monkeypatch, star_weights=weights)
    monkeypatch.undo()
    everyone = np.arange(train.n_stars)
    held = np.sort(rng.choice(train.n_stars, 52, replace=False))
    rows = np.setdiff1d(everyone, held)
    with jax.enable_x64(True):  # as inside Cannon.fit, where the calibration calls it
        folded = refit(rows)
    sliced = model.fit(train[rows], star_weights=weights[rows], calibrate=False)
    _assert_same_fit(folded, sliced)
    assert dict(folded.training_info)["n_train"] == 208 - np.isin([3, 77, 150], rows).sum()
    # ...and the fold is not the full fit: the held-out stars really are left out.
    assert np.max(np.abs(np.asarray(folded.theta) - np.asarray(fitted.theta))) > 1e-4


def test_calibration_equals_the_one_from_sliced_folds(train, monkeypatch):
    model = Cannon(label_names=train.label_names)
    fitted = model.fit(train)  # the weight-0 folds
    with jax.enable_x64(True):  # as inside Cannon.fit
        sliced = _calibration.calibrated_fit(
            model.fit(train, calibrate=False), train, lambda rows: model.fit(train[rows], calibrate=False)
        )
    a, b = fitted.calibration, sliced.calibration
    assert (a.n_folds, a.n_stars) == (b.n_folds, b.n_stars) == (5, 257)
    # Models equal to ~1e-12 give held-out labels equal to the test step's tolerance
    # (~1e-8) and calibration parameters equal to that of the optimiser that fits them.
    for field, rtol in (("z_std_before", 1e-6), ("rchi2_ref", 1e-6), ("z_std_after", 1e-5)):
        np.testing.assert_allclose(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), rtol=rtol)
    for field in ("scale", "floor", "misfit_power"):
        np.testing.assert_allclose(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), rtol=1e-5)


def test_a_fold_with_too_few_stars_names_the_calibration(monkeypatch):
    data = simulate_cannon(16, 30, 2, seed=2).dataset  # 6 terms
    labels = data.labels.copy()
    labels[:9, 0] = np.nan  # 7 complete stars > 6 terms: the full fit trains, a fold cannot
    data = SpectralDataset(data.flux, ivar=data.ivar, labels=labels, label_names=data.label_names)
    with pytest.raises(ValueError, match="error calibration refits the model on 4/5") as error:
        Cannon(label_names=data.label_names).fit(data)
    assert "--no-calibrate" in str(error.value)
