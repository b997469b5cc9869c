"""APOGEE grids, gap removal, pixel bitmasks and pixel-masking rules."""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.survey import (
    APOGEE_PIXMASK,
    APSTAR_N_PIXELS,
    DEFAULT_BAD_BITS,
    GRIDS,
    apstar_wavelength,
    bad_from_bitmask,
    bitmask_value,
    chip_regions,
    convert_pixel_mask,
    count_bits,
    load_continuum_pixels,
    mask_pixels,
    resolve_grid,
)

pytestmark = pytest.mark.filterwarnings("error")


# --------------------------------------------------------------------------- grids
@pytest.mark.parametrize(
    ("name", "n_pixels"), [("dr12", 7214), ("dr17", 7514), ("dr14", 7514), ("apstar", 8575)]
)
def test_grid_sizes(name, n_pixels):
    grid = resolve_grid(name)
    assert grid.n_pixels == n_pixels
    assert grid.apstar_pixels.shape == (n_pixels,)
    assert np.all(np.diff(grid.wavelength) > 0)
    assert set(np.unique(grid.chip)) == {0, 1, 2}


def test_apstar_wavelength_matches_header_definition():
    wavelength = apstar_wavelength()
    assert wavelength.shape == (APSTAR_N_PIXELS,)
    assert wavelength[0] == pytest.approx(10**4.179)
    assert wavelength[-1] == pytest.approx(10 ** (4.179 + 6e-6 * 8574))
    assert 15100 < wavelength[0] < 15101 and 16999 < wavelength[-1] < 17000


def test_unknown_grid_lists_choices():
    with pytest.raises(ValueError, match="dr12 \\(7214 px\\).*dr17 \\(7514 px\\)"):
        resolve_grid("dr9")


def test_take_rejects_wrong_length():
    grid = GRIDS["dr17"]
    assert grid.take(np.arange(APSTAR_N_PIXELS)).tolist() == grid.apstar_pixels.tolist()
    with pytest.raises(ValueError, match="already has the 7514 pixels"):
        grid.take(np.zeros(7514))
    with pytest.raises(ValueError, match="full apStar grid"):
        grid.take(np.zeros(7214))


def test_chip_regions_cover_every_grid_pixel_in_its_chip():
    regions = chip_regions()
    assert len(regions) == 3
    for grid in GRIDS.values():
        wavelength = grid.wavelength
        for chip, (lo, hi) in enumerate(regions):
            inside = (wavelength >= lo) & (wavelength < hi)
            assert np.array_equal(inside, grid.chip == chip)


def test_dr12_grid_matches_the_payne_wavelengths(shared_data):
    payne = np.load(shared_data / "apogee" / "thepayne_apogee_wavelength.npz")["wavelength"]
    assert payne.shape == (7214,)
    np.testing.assert_allclose(GRIDS["dr12"].wavelength, payne, rtol=1e-9)


def test_dr17_grid_matches_the_payne_zero_dr14_example(shared_data):
    example = np.load(shared_data / "apogee" / "paynezero_apogee_dr14_example_2M08002084+4044415.npz")
    np.testing.assert_array_equal(GRIDS["dr17"].apstar_pixels, example["apstar_pixel"])
    np.testing.assert_allclose(GRIDS["dr17"].wavelength, 10 * example["wavelength_nm"], rtol=1e-9)


def test_cannon_pixels_move_from_dr12_to_the_astronn_dr14_mask(shared_data):
    """The 529 Cannon pixels on the DR12 grid are exactly astroNN's DR14 mask on the DR17 grid."""
    cannon = load_continuum_pixels(shared_data / "apogee" / "thepayne_cannon_cont_pixels_apogee.npz", "dr12")
    astronn = load_continuum_pixels(shared_data / "apogee" / "astronn_dr14_contmask.npy", "dr17")
    assert cannon.sum() == 529
    converted = convert_pixel_mask(cannon, "dr12", "dr17")
    np.testing.assert_array_equal(converted, astronn)
    np.testing.assert_array_equal(convert_pixel_mask(converted, "dr17", "dr12"), cannon)


# --------------------------------------------------------------------------- bitmask
def test_bitmask_value_names_numbers_and_presets():
    assert bitmask_value(["BADPIX", "satpix", 12]) == 1 | 4 | 4096
    assert bitmask_value("all") == 2**15 - 1
    assert bitmask_value("none") == 0
    assert bitmask_value("default") == bitmask_value(DEFAULT_BAD_BITS)
    with pytest.raises(ValueError, match="unknown APOGEE_PIXMASK bit 'BADPIXX'.*BADPIX"):
        bitmask_value(["BADPIXX"])
    with pytest.raises(ValueError, match="not an APOGEE_PIXMASK bit"):
        bitmask_value([20])


def test_count_bits_counts_each_bit():
    counts = count_bits(np.array([0, 1, 3, 4096 + 1]))
    assert counts["BADPIX"] == 3 and counts["CRPIX"] == 1 and counts["SIG_SKYLINE"] == 1
    assert list(counts) == list(APOGEE_PIXMASK)


def test_payne_zero_masks(shared_data):
    """Default bits never reject a pixel the survey kept; 'all' bits give its strict mask."""
    example = np.load(shared_data / "apogee" / "paynezero_apogee_dr14_example_2M08002084+4044415.npz")
    bits = example["pixel_or_mask"]
    default_bad = bad_from_bitmask(bits)
    assert not np.any(default_bad & example["good_pixel_mask"])
    assert default_bad.sum() == 326  # pixels with a detector/persistence/sky problem
    np.testing.assert_array_equal(~bad_from_bitmask(bits, "all"), example["strict_good_pixel_mask"])


def test_mask_pixels_rules_in_order():
    flux = np.array([[1.0, np.nan, -1.0, 2.0, 3.0, 4.0, 0.01]])
    err = np.array([[0.1, 0.1, 0.1, 1e10, 0.1, 0.0, 0.1]])
    bits = np.array([[0, 0, 1, 0, 1, 0, 0]])
    result = mask_pixels(flux, err, bits, low_flux_fraction=0.05)
    assert result.bad.tolist() == [[False, True, True, True, True, True, True]]
    assert result.counts == {
        "non-finite": 1,
        "flux<=0": 1,
        "err<=0": 1,
        "err>=1e+09": 1,
        "bitmask": 1,  # the BADPIX pixel with negative flux was already counted
        "flux<0.05*median": 1,
    }
    assert "bitmask 1" in result.summary()
    with pytest.raises(ValueError, match="low_flux_fraction"):
        mask_pixels(flux, err, low_flux_fraction=5.0)
