import itertools

import numpy as np
import pytest

from starlabel.data import simulate_cannon, simulate_linear_latent


def test_latent_simulator_reproduces_seed_statistics():
    sim = simulate_linear_latent(seed=42)
    ds = sim.dataset
    assert (ds.n_stars, ds.n_pixels, ds.n_labels) == (2048, 128, 2)
    # latents ~ N(0, I)
    np.testing.assert_allclose(sim.latents.mean(0), 0.0, atol=0.08)
    np.testing.assert_allclose(sim.latents.std(0), 1.0, atol=0.05)
    # labels = A z picks the first two latents exactly
    np.testing.assert_array_equal(sim.true_labels, sim.latents[:, :2])
    # reported errors are U(0.01, 0.1)
    err = ds.flux_err
    assert 0.01 <= err.min() and err.max() <= 0.1
    assert abs(err.mean() - 0.055) < 0.002
    # residual variance = reported error² + systematic² (the systematic is not reported)
    residual = ds.flux - sim.true_flux
    expected = np.mean(err**2, axis=0) + sim.systematic_err**2
    ratio = residual.var(axis=0) / expected
    assert abs(np.median(ratio) - 1.0) < 0.05
    np.testing.assert_allclose(sim.systematic_err.max(), 2.0)
    # periodic with period P/4
    np.testing.assert_allclose(sim.systematic_err[:32], sim.systematic_err[32:64], atol=1e-12)


def test_latent_simulator_is_deterministic_and_optional_systematic():
    a = simulate_linear_latent(64, seed=1)
    b = simulate_linear_latent(64, seed=1)
    np.testing.assert_array_equal(a.dataset.flux, b.dataset.flux)
    c = simulate_linear_latent(64, systematic=False, seed=1)
    assert np.all(c.systematic_err == 0)
    with pytest.raises(ValueError, match="n_labels"):
        simulate_linear_latent(10, n_latents=2, n_labels=3)


def test_cannon_simulator_truth_is_polynomial_and_noise_matches_snr():
    sim = simulate_cannon(3000, 60, 3, snr=50.0, scatter=0.004, seed=0)
    ds = sim.dataset
    x = (sim.true_labels - sim.pivot) / sim.scale
    columns = [np.ones(len(x))] + [x[:, i] for i in range(3)]
    columns += [x[:, i] * x[:, j] for i, j in itertools.combinations_with_replacement(range(3), 2)]
    np.testing.assert_allclose(np.stack(columns, 1) @ sim.theta.T, sim.true_flux, rtol=1e-12)
    residual = ds.flux - sim.true_flux
    expected_var = (1 / 50.0) ** 2 + sim.scatter**2
    np.testing.assert_allclose(residual.var(0) / expected_var, 1.0, atol=0.1)
    teff, logg, feh = sim.true_labels.T
    assert 4000 <= teff.min() and teff.max() <= 5300
    assert np.corrcoef(teff, logg)[0, 1] > 0.7  # giants: hotter means higher gravity
    assert -1.5 <= feh.min() and feh.max() <= 0.5
    assert ds.label_names == ("teff", "logg", "fe_h")


def test_cannon_simulator_bad_pixels_and_snr_range():
    sim = simulate_cannon(500, 200, 5, snr=(20.0, 200.0), bad_pixel_fraction=0.02, seed=5)
    ds = sim.dataset
    assert abs(ds.mask.mean() - 0.02) < 0.003
    assert np.all(ds.ivar[ds.mask] == 0)
    snr = 1 / ds.flux_err[:, 0][~ds.mask[:, 0]]
    assert 20 <= snr.min() and snr.max() <= 200
    assert ds.label_names == ("teff", "logg", "fe_h", "mg_fe", "si_fe")
    with pytest.raises(ValueError, match="n_labels"):
        simulate_cannon(10, 10, 9)
