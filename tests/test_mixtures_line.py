"""The seed's straight line with outliers: recovery of m, b and of the outliers."""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.evaluate._mixture_plots import plot_line_fit
from starlabel.mixtures import fit_line_with_outliers, simulate_line_with_outliers


@pytest.fixture(scope="module")
def line():
    sim = simulate_line_with_outliers()  # N = 32, 8 outliers, m = 3.17, b = -11.9, seed 42
    return sim, fit_line_with_outliers(sim.x, sim.y, sim.y_err, num_warmup=600, num_samples=1000, seed=0)


def test_simulation_follows_the_seed_recipe():
    sim = simulate_line_with_outliers()
    assert sim.x.shape == sim.y.shape == sim.y_err.shape == (32,)
    assert sim.is_outlier.sum() == 8
    assert np.all(np.diff(sim.x) >= 0) and 0 <= sim.x.min() and sim.x.max() <= 10
    assert np.all((sim.y_err >= 0.5) & (sim.y_err <= 3.0))
    inlier_z = (sim.y - (3.17 * sim.x - 11.9)) / sim.y_err
    assert np.all(np.abs(inlier_z[~sim.is_outlier]) < 4.0)


def test_posterior_intervals_cover_the_truth(line):
    sim, fit = line
    for name, truth in (("m", 3.17), ("b", -11.9)):
        low, high = fit.interval(name, 0.68)
        assert low < truth < high, (name, low, high)
    # The mixture is tighter than, and not pulled like, ordinary least squares.
    design = np.stack([sim.x, np.ones_like(sim.x)], axis=1) / sim.y_err[:, None]
    m_ls, b_ls = np.linalg.lstsq(design, sim.y / sim.y_err, rcond=None)[0]
    assert abs(np.median(fit.samples["m"]) - 3.17) < 0.5 * abs(m_ls - 3.17)
    assert abs(np.median(fit.samples["b"]) + 11.9) < 0.5 * abs(b_ls + 11.9)
    assert fit.divergences == 0 and fit.min_ess > 100


def test_membership_separates_outliers(line):
    sim, fit = line
    for p in (fit.p_inlier, fit.p_inlier_map):
        assert np.sum(p[sim.is_outlier] < 0.5) >= 7
        assert np.sum(p[~sim.is_outlier] > 0.5) >= 22
    assert np.all((fit.p_inlier >= 0) & (fit.p_inlier <= 1))
    assert np.all(fit.p_inlier_std >= 0) and fit.p_inlier_std.max() < 0.5
    # The inlier weight is near the injected 24/32.
    assert 0.6 < np.median(fit.samples["weights"][:, 0]) < 0.9


def test_band_summary_and_plot(line, tmp_path):
    sim, fit = line
    path = plot_line_fit(fit, sim.x, sim.y, sim.y_err, tmp_path / "line.png", truth=(3.17, -11.9))
    assert path.stat().st_size > 10_000
    median, low, high = fit.band(np.array([0.0, 10.0]))
    assert np.all(low < median) and np.all(median < high)
    np.testing.assert_allclose(
        median, [np.median(fit.samples["b"]), np.median(fit.samples["m"] * 10 + fit.samples["b"])]
    )
    assert "outlier_scale" in fit.summary()
    with pytest.raises(KeyError, match="choose one of"):
        fit.interval("weights")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="y_err"):
        fit_line_with_outliers([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="`y` has 2 values"):
        fit_line_with_outliers([0.0, 1.0, 2.0], [1.0, 2.0], [1.0, 1.0, 1.0])
