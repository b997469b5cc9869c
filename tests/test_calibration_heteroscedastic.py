"""Per-star calibrated errors: the label-space term and the learned training-size factor.

Synthetic held-out residuals with a known error model (no training): the calibration
is fitted on one draw and checked on a fresh draw of the same population, as the
K-fold calibration is checked on held-out stars.
"""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.data import InferenceResult
from starlabel.models import fit_error_calibration
from starlabel.models._calibration import cross_validated_calibration

N = 3000


def _draw(seed, n=N):
    """Residuals whose error grows tenfold across label 0 and that σ_stat knows nothing of."""
    rng = np.random.default_rng(seed)
    labels = rng.uniform(-1.0, 1.0, (n, 2))
    stat = np.full((n, 2), 0.05)
    error = 0.1 * np.exp(1.15 * labels[:, :1]) * np.ones((1, 2))  # 0.03 … 0.3
    residual = rng.normal(size=(n, 2)) * error
    return labels, stat, residual


def _z(calibration, labels, stat, residual):
    cov = np.zeros((len(stat), 2, 2))
    cov[:, [0, 1], [0, 1]] = stat**2
    total = calibration.total_cov(cov, None, labels)
    return residual / np.sqrt(np.diagonal(total, axis1=1, axis2=2))


def test_label_space_term_makes_heteroscedastic_errors_gaussian():
    labels, stat, residual = _draw(0)
    with_term = fit_error_calibration(residual, stat, ("x", "y"), labels=labels)
    without = fit_error_calibration(residual, stat, ("x", "y"))
    fresh = _draw(1)
    z_with, z_without = _z(with_term, *fresh), _z(without, *fresh)
    # A constant floor gets the variance right but not the shape: mixing errors from
    # 0.03 to 0.3 makes z heavy-tailed (too many stars within ±1σ) and no width can
    # meet both targets.
    assert np.all(np.mean(np.abs(z_without) < 1, axis=0) > 0.683 + 0.04), np.mean(
        np.abs(z_without) < 1, axis=0
    )
    # The label-space term follows the error across label space: both targets held out.
    spread, coverage = np.std(z_with, axis=0), np.mean(np.abs(z_with) < 1, axis=0)
    assert np.all((spread > 0.95) & (spread < 1.05)), spread
    assert np.all(np.abs(coverage - 0.683) < 0.025), coverage
    power = np.asarray(with_term.local.power)
    assert np.all((power > 0.7) & (power <= 1.5)), power
    assert "local=" in with_term.describe()


def test_label_space_term_stays_off_where_errors_do_not_depend_on_labels():
    rng = np.random.default_rng(2)
    labels = rng.uniform(-1.0, 1.0, (N, 2))
    stat = rng.uniform(0.5, 2.0, (N, 2))
    residual = rng.normal(size=(N, 2)) * np.sqrt((1.5 * stat) ** 2 + 0.7**2)
    calibration = fit_error_calibration(residual, stat, ("x", "y"), labels=labels)
    plain = fit_error_calibration(residual, stat, ("x", "y"))
    # The true model has no label dependence; leave-one-out keeps the fit from
    # chasing the neighbourhoods' noise: the totals barely move (δ is poorly
    # determined here, as the floor is a small part of the error, and harmless).
    cov = np.zeros((N, 2, 2))
    cov[:, [0, 1], [0, 1]] = stat**2
    ratio = np.sqrt(
        np.diagonal(calibration.total_cov(cov, None, labels), axis1=1, axis2=2)
        / np.diagonal(plain.total_cov(cov), axis1=1, axis2=2)
    )
    assert np.quantile(np.abs(ratio - 1), 0.95) < 0.03, np.quantile(np.abs(ratio - 1), 0.95)
    np.testing.assert_allclose(calibration.scale, 1.5, rtol=0.1)


def test_unknown_labels_get_the_plain_floor():
    labels, stat, residual = _draw(0, 500)
    calibration = fit_error_calibration(residual, stat, ("x", "y"), labels=labels)
    queried = labels[:3].copy()
    queried[1, 0] = np.nan
    factor = calibration.local.factor(queried)
    assert np.all(factor[1] == 1.0) and np.all(np.isfinite(factor))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_training_size_factor_is_learned_from_a_half_size_cv(alpha):
    """Errors of a 'model' whose MSE falls as N^-α: f = ((K−1)/K)^(α/2) per label."""
    rng = np.random.default_rng(5)
    n, names = 4000, ("x", "y")
    truth = rng.normal(size=(n, 2))

    def refit(rows):
        return len(rows)  # the fitted "model" is its training-set size

    def infer(size, rows):
        sd = np.sqrt(1000.0 / size) ** alpha * np.array([1.0, 2.0])
        labels = truth[rows] + rng.normal(size=(len(rows), 2)) * sd
        return InferenceResult(
            ids=rows.astype(str),
            label_names=names,
            labels=labels,
            cov=np.broadcast_to(np.diag(sd**2), (len(rows), 2, 2)).copy(),
            chi2=np.full(len(rows), np.nan),
            dof=np.full(len(rows), np.nan),
            flags=np.zeros(len(rows), dtype=int),
        )

    calibration = cross_validated_calibration(refit, infer, truth, names, learn_size_factor=True)
    np.testing.assert_allclose(calibration.size_power, alpha, atol=0.15)
    np.testing.assert_allclose(calibration.size_factors, 0.8 ** (alpha / 2), atol=0.02)
    assert "alpha=" in calibration.describe()


def _distance_case(seed, n=4000, df=4.0):
    """A 'model' whose error grows as √(distance to its training labels).

    The distance is to the nearest 1/150 of the training set (10 of 1,500 stars), so
    the error does not depend on the training set's size, only on where the star is.
    """
    from scipy.spatial import KDTree

    rng = np.random.default_rng(seed)
    truth = rng.standard_t(df, size=(n, 2))  # a dense core and sparse wings

    def infer(train_labels, rows):
        distance, _ = KDTree(train_labels).query(truth[rows], k=max(2, round(len(train_labels) / 150)))
        sd = 0.05 * np.sqrt(distance.mean(axis=1) / 0.1)[:, None] * np.ones((1, 2))
        labels = truth[rows] + rng.normal(size=(len(rows), 2)) * sd
        cov = np.zeros((len(rows), 2, 2))
        cov[:, [0, 1], [0, 1]] = 0.01**2
        return InferenceResult(
            ids=rows.astype(str),
            label_names=("x", "y"),
            labels=labels,
            cov=cov,
            chi2=np.full(len(rows), np.nan),
            dof=np.full(len(rows), np.nan),
            flags=np.zeros(len(rows), dtype=int),
        )

    return truth, infer


def test_distance_term_follows_errors_that_grow_away_from_the_training_set():
    truth, infer = _distance_case(3)
    train = np.arange(1500)
    kwargs = dict(label_term=False)
    with_term = cross_validated_calibration(
        lambda rows: truth[train][rows],
        lambda m, rows: infer(m, train[rows]),
        truth[train],
        ("x", "y"),
        distance_term=True,
        **kwargs,
    )
    without = cross_validated_calibration(
        lambda rows: truth[train][rows],
        lambda m, rows: infer(m, train[rows]),
        truth[train],
        ("x", "y"),
        **kwargs,
    )
    # Held out: 2,500 new stars against the model trained on all 1,500.
    test = np.arange(1500, 4000)
    result = infer(truth[train], test)
    z_with = (result.labels - truth[test]) / with_term.apply(result).label_err
    z_without = (result.labels - truth[test]) / without.apply(result).label_err
    coverage = np.mean(np.abs(z_with) < 1, axis=0)
    assert np.all(np.abs(np.std(z_with, axis=0) - 1) < 0.05), np.std(z_with, axis=0)
    assert np.all(np.abs(coverage - 0.683) < 0.03), coverage
    # A constant floor mixes small and large errors and lets the far stars' z run wide.
    assert np.all(np.std(z_without, axis=0) > 1.05), np.std(z_without, axis=0)
    power = np.asarray(with_term.distance.power)
    assert np.all((power > 0.8) & (power < 2.0)), power  # variance ∝ D: η ≈ 1
    assert "distance=" in with_term.describe()
