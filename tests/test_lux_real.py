"""Lux on the 500 real APOGEE giants: flux-only labels with honest uncertainties."""

from __future__ import annotations

import numpy as np

from starlabel.models.lux import Lux


def test_real_giants_flux_only_labels(apogee_giants):
    train, test = apogee_giants.split(0.2, seed=0)
    fitted = Lux(apogee_giants.label_names, latent_size=8).fit(train, calibrate=False)
    # The shared set has no label_err: Lux learns one extra scatter per label.
    assert fitted.scatter("labels").shape == (3,)
    result = fitted.infer(test.replace(labels=None))
    residual = result.labels - test.labels
    rmse = np.sqrt(np.mean(residual**2, axis=0))
    spread = np.std(test.labels, axis=0)
    # Teff (K), logg, [M/H]: far better than predicting the mean, near the Cannon's level.
    assert np.all(rmse < 0.7 * spread), (rmse, spread)
    assert rmse[0] < 250.0 and rmse[1] < 0.45 and rmse[2] < 0.21, rmse
    pulls = np.std(residual / result.label_err, axis=0)
    assert np.all((pulls > 0.8) & (pulls < 2.0)), pulls
