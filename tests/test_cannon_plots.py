"""Cannon diagnostic plots are written and show what they claim."""

from __future__ import annotations

import matplotlib.image
import numpy as np

from starlabel.data import simulate_cannon
from starlabel.evaluate._cannon_plots import plot_cannon_derivatives, plot_cannon_scatter
from starlabel.models.cannon import Cannon


def test_derivative_and_scatter_plots(tmp_path):
    sim = simulate_cannon(400, 60, 3, snr=(40.0, 150.0), scatter=0.01, seed=3)
    data = sim.dataset
    # same shapes and options as the training tests, so the compiled program is shared
    plain = Cannon(label_names=data.label_names, tol=1e-12).fit(data, calibrate=False)
    windows = [(data.wavelength[10], data.wavelength[20])]
    censored = Cannon(label_names=data.label_names, censor={"fe_h": windows}, tol=1e-12).fit(
        data, calibrate=False
    )
    paths = [
        plot_cannon_derivatives(plain, tmp_path / "d.png"),
        plot_cannon_derivatives(
            censored, tmp_path / "sub" / "dc.png", compare=plain, compare_name="uncensored"
        ),
        plot_cannon_scatter(plain, tmp_path / "s.png"),
    ]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.01
    # the plotted quantity: flux change per training σ of each label
    scaled = plain.derivatives() * np.asarray(plain.label_scaler.scale)[:, None]
    assert scaled.shape == (3, 60) and np.all(np.isfinite(scaled))
    assert np.all(censored.derivatives()[2, 25:] == 0.0)
