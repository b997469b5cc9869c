"""Two-star fits: synthetic binaries with known truth, and a real double-lined APOGEE star."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.data import SpectralDataset
from starlabel.models._binary import BinaryModel, fit_binary
from starlabel.models._nuisance import build_nuisance_model
from test_teststep_sim import (
    PIVOT,
    SCALE,
    LineList,
    apogee_wavelength,
    draw_labels,
    line_list_theta,
    template_model,
    truth_spectrum,
)

N_PIXELS = 2920  # APOGEE's blue chip: enough lines, a quarter of the cost of all three


@pytest.fixture(scope="module")
def chip():
    wavelength = apogee_wavelength(N_PIXELS)
    lines = LineList(wavelength)
    train = draw_labels(np.random.default_rng(1), 300)
    model = truth_spectrum(line_list_theta(lines, wavelength), PIVOT, SCALE, np.full(N_PIXELS, 0.002), train)
    return model, lines, wavelength


def _binaries(lines, wavelength, rng, n):
    primary, secondary = draw_labels(rng, n), draw_labels(rng, n)
    secondary[:, 2] = primary[:, 2]  # one cloud: shared [Fe/H]
    w = rng.uniform(0.3, 0.7, n)
    dv = rng.choice([-1.0, 1.0], n) * rng.uniform(10.0, 50.0, n)
    v1 = rng.uniform(-20.0, 20.0, n)
    flux = w[:, None] * lines.flux(primary, wavelength, v1) + (1 - w[:, None]) * lines.flux(
        secondary, wavelength, v1 + dv
    )
    err = np.full_like(flux, 0.01)  # S/N 100
    data = SpectralDataset(flux + rng.normal(size=flux.shape) * err, flux_err=err, wavelength=wavelength)
    return data, w, dv


def test_synthetic_binaries_flagged_and_singles_not(chip, rng):
    model, lines, wavelength = chip
    binaries, w, dv = _binaries(lines, wavelength, rng, 12)
    labels = draw_labels(rng, 12)
    flux = lines.flux(labels, wavelength, rng.uniform(-20.0, 20.0, 12))
    err = np.full_like(flux, 0.01)
    singles = SpectralDataset(flux + rng.normal(size=flux.shape) * err, flux_err=err, wavelength=wavelength)
    both = SpectralDataset.concatenate([binaries, singles.replace(ids=[f"s{i}" for i in range(12)])])
    result = fit_binary(model, both, dv_max=80.0, chunk_size=24)
    flagged = result.extra["binary"]
    assert flagged[:12].mean() >= 0.9 and flagged[12:].mean() <= 0.05, flagged
    # The brighter component is the primary (w ≥ ½); Δv then has the sign of that choice.
    w_primary = np.where(w >= 0.5, w, 1 - w)
    dv_primary = np.where(w >= 0.5, dv, -dv)
    np.testing.assert_allclose(result.extra["binary_w"][:12], w_primary, atol=0.03)
    clear = np.abs(w - 0.5) > 0.05  # near w = ½ the labelling of the components is arbitrary
    np.testing.assert_allclose(result.extra["binary_dv"][:12][clear], dv_primary[clear], atol=1.0)
    assert np.all(result.extra["delta_bic"][:12] > 100.0)
    assert np.all(np.abs(result.extra["fe_h_1"] - result.extra["fe_h_2"]) < 1e-12)  # shared


def test_binary_jacobian_matches_autodiff():
    wavelength = apogee_wavelength(400)
    model = truth_spectrum(
        line_list_theta(LineList(wavelength), wavelength),
        PIVOT,
        SCALE,
        np.zeros(400),
        draw_labels(np.random.default_rng(1), 50),
    )
    single = build_nuisance_model(model, wavelength, fit_rv=True, v_max=100.0)
    binary = BinaryModel(model, single.resampler, single.theta_spline, (2,), True)
    with jax.enable_x64(True):
        params = jnp.array([4600.0, 2.3, -0.3, 4950.0, 3.0, 0.4, 25.0, 4.0])
        np.testing.assert_allclose(
            np.asarray(binary.jacobian(params)), np.asarray(jax.jacfwd(binary.flux)(params)), atol=1e-10
        )


@pytest.mark.shared_data
def test_real_double_lined_visits(shared_data):
    """2M06133561+2433362: the autocorrelation of visit 0 has side peaks at ±28 pixels and
    of visit 1 at ±13 pixels (two sets of lines, Δv ≈ 116 and 54 km/s); visit 2 has none
    (lines blended). With visit 2 as the component template, the binary fit must find
    those separations in visits 0 and 1 and flag them, and must not flag visit 2."""
    visits = np.load(shared_data / "apogee" / "thepayne_visits_2M06133561+2433362.npz")
    wavelength = np.load(shared_data / "apogee" / "thepayne_apogee_wavelength.npz")["wavelength"]
    flux, err = visits["spectra"], visits["spec_errs"]
    template, good = flux[2], (err[2] < 0.05) & (flux[2] > 0.2)
    model = template_model(template, good)
    data = SpectralDataset(flux, flux_err=err, wavelength=wavelength, ids=["visit0", "visit1", "visit2"])
    result = fit_binary(model, data, shared=("depth",), v_max=100.0, dv_max=200.0)
    assert result.extra["binary"].tolist() == [True, True, False]
    pixel_kms = 6e-6 * np.log(10) * 299_792.458
    np.testing.assert_allclose(
        np.abs(result.extra["binary_dv"][:2]), [28 * pixel_kms, 13 * pixel_kms], atol=6.0
    )
    assert np.all((result.extra["binary_w"][:2] > 0.5) & (result.extra["binary_w"][:2] < 0.8))
    # A detected binary's chi2 is the two-star fit's; the single-star one is chi2_binary + delta_chi2.
    chi2_single = result.extra["chi2_binary"] + result.extra["delta_chi2"]
    np.testing.assert_allclose(result.chi2[:2], result.extra["chi2_binary"][:2])
    assert np.all(result.extra["chi2_binary"][:2] < 0.75 * chi2_single[:2])


def test_binary_errors_are_clear(chip):
    model, lines, wavelength = chip
    data = SpectralDataset(
        lines.flux(draw_labels(np.random.default_rng(0), 2), wavelength),
        flux_err=np.full((2, N_PIXELS), 0.01),
    )
    with pytest.raises(ValueError, match="wavelength"):
        fit_binary(model, data)
    with pytest.raises(ValueError, match="unknown labels"):
        fit_binary(model, data.replace(wavelength=wavelength), shared=("m_h",))
