"""Radial velocity and continuum fitted jointly with the labels, on spectra with known truth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.data import SpectralDataset
from starlabel.models._nuisance import (
    DopplerResampler,
    build_nuisance_model,
    find_regions,
    infer_with_nuisance,
)
from test_teststep_sim import (
    PIVOT,
    SCALE,
    LineList,
    apogee_wavelength,
    draw_labels,
    line_list_theta,
    simulate_smooth,
    truth_spectrum,
)


@pytest.fixture(scope="module")
def full_model():
    """Exact quadratic model of the smooth spectra on the 7214-pixel APOGEE grid."""
    wavelength = apogee_wavelength()
    lines = LineList(wavelength)
    train = draw_labels(np.random.default_rng(1), 300)
    return truth_spectrum(
        line_list_theta(lines, wavelength), PIVOT, SCALE, np.full(len(wavelength), 0.002), train
    )


@pytest.fixture(scope="module")
def two_chip_model():
    """The same on the first 3600 pixels (chips 1 and 2) for the cheaper checks."""
    wavelength = apogee_wavelength(3600)
    lines = LineList(wavelength)
    train = draw_labels(np.random.default_rng(1), 300)
    return truth_spectrum(
        line_list_theta(lines, wavelength), PIVOT, SCALE, np.full(len(wavelength), 0.002), train
    )


def test_regions_follow_the_apogee_chip_gaps():
    regions = find_regions(apogee_wavelength())
    assert np.bincount(regions).tolist() == [2920, 2400, 1894]


def test_resampler_reproduces_and_shifts_smooth_spectra():
    wavelength = apogee_wavelength(1500)
    lines = LineList(wavelength)
    labels = np.array([[4650.0, 2.4, -0.2]])
    rest = lines.flux(labels, wavelength)[0]
    resampler = DopplerResampler.from_wavelength(wavelength, v_max=60.0)
    coefficients = resampler.prefilter(rest)
    usable = np.asarray(resampler.usable)
    with jax.enable_x64(True):
        same = np.asarray(resampler(jnp.asarray(coefficients), jnp.asarray(0.0)))
        moved = np.asarray(resampler(jnp.asarray(coefficients), jnp.asarray(23.7)))
        # Derivative in v against a central finite difference.
        h = 1e-3
        d = np.asarray(resampler.derivative(jnp.asarray(coefficients), jnp.asarray(23.7)))
        fd = (
            np.asarray(resampler(jnp.asarray(coefficients), jnp.asarray(23.7 + h)))
            - np.asarray(resampler(jnp.asarray(coefficients), jnp.asarray(23.7 - h)))
        ) / (2 * h)
    np.testing.assert_allclose(same, rest, atol=1e-12)
    truth = lines.flux(labels, wavelength, 23.7)[0]
    # Lines are ~1.4 px wide; cubic B-splines keep the interpolation error ≪ 1/S/N.
    assert np.max(np.abs(moved - truth)[usable]) < 3e-3
    np.testing.assert_allclose(d[usable], fd[usable], rtol=1e-5, atol=1e-7)


def test_nuisance_jacobian_matches_autodiff():
    wavelength = apogee_wavelength(3000)  # chips 1 and 2: two continuum regions
    lines = LineList(wavelength)
    train = draw_labels(np.random.default_rng(1), 50)
    small = truth_spectrum(line_list_theta(lines, wavelength), PIVOT, SCALE, np.zeros(3000), train)
    model = build_nuisance_model(small, wavelength, fit_rv=True, continuum_order=2)
    with jax.enable_x64(True):
        params = jnp.concatenate(
            [jnp.array([4600.0, 2.3, -0.3, 17.0]), jnp.tile(jnp.array([1.02, 0.01, -0.02]), 2)]
        )
        analytic = model.jacobian(params)
        auto = jax.jacfwd(model.flux)(params)
    np.testing.assert_allclose(np.asarray(analytic), np.asarray(auto), atol=1e-10)


def test_rv_recovered_to_better_than_half_a_km_s_at_snr_100(full_model):
    v = np.linspace(-30.0, 30.0, 8)
    data, truth, _ = simulate_smooth(8, v=v, snr=100.0, seed=2)
    result = infer_with_nuisance(full_model, data, fit_rv=True)
    assert np.max(np.abs(result.extra["rv"] - v)) < 0.5
    # B-spline resampling: errors are statistical, so rv_err describes them.
    pulls = (result.extra["rv"] - v) / result.extra["rv_err"]
    assert np.all(np.abs(pulls) < 4.0) and 0.3 < np.std(pulls) < 2.0, pulls
    z = (result.labels - truth) / result.label_err
    assert np.all(np.abs(z) < 4.0), z
    assert result.flags.tolist() == [0] * 8
    assert result.meta["fit_rv"] is True


def test_continuum_recovered_and_marginalised_into_label_errors(two_chip_model, rng):
    wavelength = apogee_wavelength(3600)
    data, truth, _ = simulate_smooth(6, n_pixels=3600, v=rng.uniform(-20, 20, 6), snr=100.0, seed=4)
    regions = find_regions(wavelength)
    # A different smooth continuum (quadratic in each chip) for every star.
    coefficients = rng.normal(0.0, 0.03, (6, 2, 3))
    coefficients[:, :, 0] += 1.0
    continuum = np.zeros((6, len(wavelength)))
    for r in range(2):
        idx = regions == r
        wl = wavelength[idx]
        t = 2.0 * (wl - wl[0]) / (wl[-1] - wl[0]) - 1.0
        continuum[:, idx] = np.polynomial.chebyshev.chebval(t, coefficients[:, r, :].T)
    scaled = data.replace(flux=data.flux * continuum, ivar=data.ivar / continuum**2)
    fit = infer_with_nuisance(two_chip_model, scaled, fit_rv=True, continuum_order=2)
    recovered = np.stack(
        [np.stack([fit.extra[f"cont_r{r}_c{k}"] for k in range(3)], axis=-1) for r in range(2)], axis=1
    )
    np.testing.assert_allclose(recovered, coefficients, atol=5e-3)
    z = (fit.labels - truth) / fit.label_err
    assert np.all(np.abs(z) < 4.0), z
    no_continuum = infer_with_nuisance(two_chip_model, data, fit_rv=True)
    # Marginalising 6 continuum coefficients can only widen the label errors.
    assert np.all(fit.label_err >= no_continuum.label_err * 0.999)


def test_posterior_mean_with_rv(two_chip_model):
    v = np.array([-25.0, 12.0, 28.0])
    data, truth, _ = simulate_smooth(3, n_pixels=3600, v=v, snr=50.0, seed=6)
    result = infer_with_nuisance(two_chip_model, data, fit_rv=True, estimator="mean", prior="kde")
    assert np.max(np.abs(result.extra["rv"] - v)) < 0.5
    z = (result.labels - truth) / result.label_err
    assert np.all(np.abs(z) < 4.0), z
    assert result.meta["estimator"] == "mean"


def test_nuisance_errors_are_clear(full_model):
    data, _, _ = simulate_smooth(2, n_pixels=7214, seed=1)
    with pytest.raises(ValueError, match="nothing to fit"):
        infer_with_nuisance(full_model, data, fit_rv=False)
    with pytest.raises(ValueError, match="wavelength"):
        infer_with_nuisance(full_model, data.replace(wavelength=None), fit_rv=True)
    with pytest.raises(ValueError, match="continuum_order"):
        infer_with_nuisance(full_model, data, continuum_order=-1)
    with pytest.raises(ValueError, match="evenly spaced in ln"):
        DopplerResampler.from_wavelength(np.linspace(15000.0, 15100.0, 100) ** 1.5)
    odd = SpectralDataset(data.flux, ivar=data.ivar, wavelength=np.linspace(15100.0, 17000.0, 7214))
    with pytest.raises(ValueError, match="log-λ grid"):
        infer_with_nuisance(full_model, odd, fit_rv=True)
