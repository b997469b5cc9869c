"""Uncertainty plots: files are written, and bad shapes are rejected by name."""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.evaluate._uncertainty_plots import (
    plot_posterior_corner,
    plot_uncertainty_vs_snr,
    plot_zscore_histograms,
)


def test_uncertainty_plots_write_files(tmp_path, rng):
    cov = np.array([[4.0, 1.0], [1.0, 1.0]])
    draws = rng.multivariate_normal([1.0, 2.0], cov, size=(2, 300))
    path = plot_posterior_corner(
        draws, ("a", "b"), tmp_path / "c.png", truths=[1.0, 2.0], gaussian=([1.0, 2.0], cov)
    )
    assert path.stat().st_size > 10_000

    truth = rng.normal(size=(200, 2))
    snr = rng.uniform(10, 100, size=200)
    errors = np.stack([1 / snr, 2 / snr], axis=1)
    labels = truth + errors * rng.normal(size=truth.shape)
    assert (
        plot_zscore_histograms(labels, errors, truth, ("a", "b"), tmp_path / "z.png").stat().st_size > 10_000
    )
    out = plot_uncertainty_vs_snr(errors, snr, ("a", "b"), tmp_path / "s.png", labels=labels, truth=truth)
    assert out.exists()


def test_uncertainty_plots_name_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="truths"):
        plot_posterior_corner(np.zeros((10, 2)), ("a", "b"), tmp_path / "c.png", truths=[1.0])
    with pytest.raises(ValueError, match="errors"):
        plot_zscore_histograms(
            np.zeros((5, 2)), np.ones((4, 2)), np.zeros((5, 2)), ("a", "b"), tmp_path / "z.png"
        )
    with pytest.raises(ValueError, match="snr"):
        plot_uncertainty_vs_snr(np.ones((5, 2)), np.ones(4), ("a", "b"), tmp_path / "s.png")
    with pytest.raises(ValueError, match="both"):
        plot_uncertainty_vs_snr(
            np.ones((5, 2)), np.ones(5), ("a", "b"), tmp_path / "s.png", labels=np.ones((5, 2))
        )
