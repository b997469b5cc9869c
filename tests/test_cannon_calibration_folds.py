"""The error calibration's fold fits against training on the fold's rows alone (``train[rows]``).

The iterated refit (L1, or terms not closed under label scaling) trains on the full
arrays with held-out stars at weight 0: the same fit as the sliced one (same label
scaling, θ, s² and pixel_ok). Its EM starts from the full fit's scatter and stops at a
looser tolerance (``_folds.FOLD_TOL``) than the final fit: at a tight tolerance it
reaches the sliced fit's fixed point to rounding; at the default one it stays within
its tolerance of it in fewer iterations. The default, summed refit (``_fold_stats``)
keeps the full fit's label scaling (the same functions of the labels) and reaches the
sliced fit's θ and s² to well inside ``FOLD_TOL``. Either way the calibration is the
sliced folds' to ~1e-3.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from starlabel.data import SpectralDataset, simulate_cannon
from starlabel.models import _calibration, _calibration_cv
from starlabel.models.cannon import Cannon
from starlabel.models.cannon import _folds as cannon_folds
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


def _assert_same_fit(a, b, theta_atol: float = 1e-12, s2_rtol: float = 1e-10) -> None:
    np.testing.assert_array_equal(np.asarray(a.pixel_ok), np.asarray(b.pixel_ok))
    np.testing.assert_allclose(np.asarray(a.label_scaler.shift), np.asarray(b.label_scaler.shift), rtol=0)
    np.testing.assert_allclose(np.asarray(a.label_scaler.scale), np.asarray(b.label_scaler.scale), rtol=0)
    np.testing.assert_allclose(np.asarray(a.theta), np.asarray(b.theta), rtol=theta_atol, atol=theta_atol)
    np.testing.assert_allclose(np.asarray(a.s2), np.asarray(b.s2), rtol=s2_rtol, atol=1e-16)
    np.testing.assert_allclose(np.asarray(a.label_space.train), np.asarray(b.label_space.train), rtol=0)
    info_a, info_b = dict(a.training_info), dict(b.training_info)
    for info in (info_a, info_b):
        info.pop("em_iterations")
    assert info_a == info_b


def _fold_and_sliced(model, train, monkeypatch, rng):
    weights = rng.uniform(0.3, 2.0, train.n_stars)
    refit, fitted = _fold_refit(model, train, monkeypatch, star_weights=weights)
    everyone = np.arange(train.n_stars)
    held = np.sort(rng.choice(train.n_stars, 52, replace=False))
    rows = np.setdiff1d(everyone, held)
    with jax.enable_x64(True):  # as inside Cannon.fit, where the calibration calls it
        folded = refit(rows)
    monkeypatch.undo()
    sliced = model.fit(train[rows], star_weights=weights[rows], calibrate=False)
    assert dict(folded.training_info)["n_train"] == 208 - np.isin([3, 77, 150], rows).sum()
    # ...and the fold is not the full fit: the held-out stars really are left out.
    assert np.max(np.abs(np.asarray(folded.theta) - np.asarray(fitted.theta))) > 1e-4
    return folded, sliced


@pytest.fixture
def iterated(monkeypatch):
    """The iterated refit, which the Cannon uses with L1 or terms not closed under scaling."""
    monkeypatch.setattr(cannon_folds, "SUMMED_FOLDS", False)


def test_warm_started_fold_reaches_the_sliced_fit(train, monkeypatch, rng, iterated):
    # At a tight tolerance for both (fold tolerance no looser than the model's), the
    # start from the full fit's scatter leads to the sliced fit's fixed point.
    monkeypatch.setattr(cannon_folds, "FOLD_TOL", 0.0)
    folded, sliced = _fold_and_sliced(
        Cannon(label_names=train.label_names, tol=1e-12), train, monkeypatch, rng
    )
    _assert_same_fit(folded, sliced, theta_atol=1e-10, s2_rtol=1e-8)


def test_default_fold_is_within_its_tolerance_of_the_sliced_fit(train, monkeypatch, rng, iterated):
    folded, sliced = _fold_and_sliced(Cannon(label_names=train.label_names), train, monkeypatch, rng)
    # The EM stops when no pixel's s² moves by more than FOLD_TOL of s² plus its noise
    # variance; θ (fluxes ~1, standard errors ~1e-3 here) moves far less than its error.
    noise = np.median(1.0 / train.ivar[train.ivar > 0])
    s2_fold, s2_sliced = np.asarray(folded.s2), np.asarray(sliced.s2)
    assert np.max(np.abs(s2_fold - s2_sliced) / (s2_sliced + noise)) < cannon_folds.FOLD_TOL
    _assert_same_fit(folded, sliced, theta_atol=1e-5, s2_rtol=1e300)  # s² checked above
    assert dict(folded.training_info)["em_iterations"] < dict(sliced.training_info)["em_iterations"]


def test_calibration_equals_the_one_from_sliced_folds(train, monkeypatch):
    model = Cannon(label_names=train.label_names)
    seen = []  # the held-out residuals and errors each calibration is fitted to
    original = _calibration.fit_error_calibration

    def recording(residuals, errors, *args, **kwargs):
        seen.append((np.asarray(residuals), np.asarray(errors)))
        return original(residuals, errors, *args, **kwargs)

    monkeypatch.setattr(_calibration_cv, "fit_error_calibration", recording)  # where the CV calls it
    fitted = model.fit(train)  # the summed folds
    with jax.enable_x64(True):  # as inside Cannon.fit
        sliced = _calibration.calibrated_fit(
            model.fit(train, calibrate=False),
            train,
            lambda rows: model.fit(train[rows], calibrate=False),
            bias_correction=True,  # as Cannon.fit by default
        )
    a, b = fitted.calibration, sliced.calibration
    assert (a.n_folds, a.n_stars) == (b.n_folds, b.n_stars) == (5, 257)
    # The folds' θ and s² are within FOLD_TOL (1e-3) of the sliced folds' (see below)
    # in the full fit's label scaling: the held-out labels move by < 2e-3 of their
    # errors (1.4e-3 here; the test step's own convergence in other scaled units) and
    # the errors by ~1e-4 of themselves, far inside the ±4 % sampling noise of std z here.
    (res_a, err_a), (res_b, err_b) = seen
    good = np.isfinite(res_b)
    assert np.array_equal(good, np.isfinite(res_a))
    assert np.max(np.abs(res_a - res_b)[good] / err_b[good]) < 2e-3
    np.testing.assert_allclose(err_a[good], err_b[good], rtol=1e-3)
    np.testing.assert_allclose(np.asarray(a.z_std_before), np.asarray(b.z_std_before), rtol=2e-4)
    np.testing.assert_allclose(np.asarray(a.rchi2_ref), np.asarray(b.rchi2_ref), rtol=2e-4)
    # The fit's final widths come from a factor on the widths (picked on a grid of 0.005
    # from the held-out z), which a change that small can move by ~1 %.
    for field in ("scale", "z_std_after"):
        np.testing.assert_allclose(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), rtol=1.2e-2)
    # A floor far below the scaled statistical errors (log g's here: ~3e-4 dex) is barely
    # constrained by the likelihood, and its misfit power and label-space exponent trade
    # against it (a 1e-4 change of the inputs moved log g's floor by 10 % and its power
    # by 3 %), so compare what users get: the calibrated errors.
    cov = np.zeros((err_b.shape[0], err_b.shape[1], err_b.shape[1]))
    k = np.arange(err_b.shape[1])
    cov[:, k, k] = np.where(good, err_b, 1.0) ** 2
    total_a = np.sqrt(np.diagonal(a.total_cov(cov), axis1=1, axis2=2))
    total_b = np.sqrt(np.diagonal(b.total_cov(cov), axis1=1, axis2=2))
    np.testing.assert_allclose(total_a, total_b, rtol=1.2e-2)


def test_summed_fold_is_the_sliced_fit_in_the_full_fits_scaling(train, monkeypatch, rng):
    # Against the converged sliced fit: same pixels, the same flux model (θ in another
    # scaling of the labels) and s², all well inside the iterated refit's FOLD_TOL.
    model = Cannon(label_names=train.label_names, tol=1e-12)
    folded, sliced = _fold_and_sliced(model, train, monkeypatch, rng)
    assert dict(folded.training_info)["em_iterations"] == 0  # no EM loop: the summed refit
    np.testing.assert_array_equal(np.asarray(folded.pixel_ok), np.asarray(sliced.pixel_ok))
    noise = np.median(1.0 / train.ivar[train.ivar > 0])
    s2_fold, s2_sliced = np.asarray(folded.s2), np.asarray(sliced.s2)
    assert np.max(np.abs(s2_fold - s2_sliced) / (s2_sliced + noise)) < 0.5 * cannon_folds.FOLD_TOL
    labels = train.labels[np.all(np.isfinite(train.labels), axis=1)]
    flux_fold, flux_sliced = folded.predict_flux(labels), sliced.predict_flux(labels)
    assert np.max(np.abs(flux_fold - flux_sliced)) < 1e-3 * np.sqrt(noise)
    # The fold's training labels are the sliced fit's, in the full fit's units.
    folded_train, sliced_train = (
        np.asarray(m.label_space.train) * np.asarray(m.label_scaler.scale) + np.asarray(m.label_scaler.shift)
        for m in (folded, sliced)
    )
    np.testing.assert_allclose(folded_train, sliced_train, rtol=1e-12)
    assert np.max(np.abs(np.asarray(folded.theta) - np.asarray(sliced.theta))) > 1e-3  # other units


@pytest.mark.parametrize("options", [{"l1": 1e-4}, {"terms": "logg + teff^2"}], ids=["l1", "open-terms"])
def test_summed_folds_only_where_scaling_leaves_the_fit_unchanged(train, monkeypatch, options):
    # L1 penalises θ in scaled units, and a basis without some lower power (teff^2
    # without teff) spans other functions in another scaling: both take the iterated refit.
    model = Cannon(label_names=train.label_names, **options)
    refit, _ = _fold_refit(model, train, monkeypatch)
    with jax.enable_x64(True):
        folded = refit(np.arange(0, train.n_stars, 2))
    assert dict(folded.training_info)["em_iterations"] > 0


def test_closed_under_scaling():
    from starlabel.models.cannon._fold_stats import closed_under_scaling

    assert closed_under_scaling(np.array([[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]))
    assert closed_under_scaling(np.array([[0, 0], [1, 0], [2, 0]]))
    assert not closed_under_scaling(np.array([[0, 0], [2, 0]]))
    assert not closed_under_scaling(np.array([[0, 0], [1, 0], [1, 1]]))  # teff*logg without logg


def test_a_fold_with_too_few_stars_names_the_calibration(monkeypatch):
    data = simulate_cannon(16, 30, 2, seed=2).dataset  # 6 terms
    labels = data.labels.copy()
    labels[:9, 0] = np.nan  # 7 complete stars > 6 terms: the full fit trains, a fold cannot
    data = SpectralDataset(data.flux, ivar=data.ivar, labels=labels, label_names=data.label_names)
    with pytest.raises(ValueError, match="error calibration refits the model on 4/5") as error:
        Cannon(label_names=data.label_names).fit(data)
    assert "--no-calibrate" in str(error.value)
