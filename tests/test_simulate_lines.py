"""The line-list simulator: determinism, file layout, and physics with known truth."""

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import LINE_LABELS, LINE_TRUTH, read_dataset, simulate_lines

WINDOW = 600  # pixels of the DR12 grid in the fast tests


def test_same_seed_same_spectra_and_documented_shapes():
    a = simulate_lines(40, n_pixels=WINDOW, first_pixel=100, elements=("mg", "c"), seed=3)
    b = simulate_lines(40, n_pixels=WINDOW, first_pixel=100, elements=("mg", "c"), seed=3)
    c = simulate_lines(40, n_pixels=WINDOW, first_pixel=100, elements=("mg", "c"), seed=4)
    np.testing.assert_array_equal(a.dataset.flux, b.dataset.flux)
    np.testing.assert_array_equal(a.dataset.labels, b.dataset.labels)
    assert not np.array_equal(a.dataset.flux, c.dataset.flux)
    ds = a.dataset
    assert (ds.n_stars, ds.n_pixels) == (40, WINDOW)
    assert ds.label_names == LINE_LABELS + ("mg_fe", "c_fe")
    # the DR12 grid: λ = 10^(4.179 + 6e-6 i), first apStar pixel 322
    np.testing.assert_allclose(ds.wavelength[0], 10 ** (4.179 + 6e-6 * (322 + 100)))
    np.testing.assert_allclose(np.diff(np.log10(ds.wavelength)), 6e-6, rtol=1e-6)
    assert a.true_flux.shape == a.flux_err.shape == (40, WINDOW)
    assert set(a.truth) == set(LINE_TRUTH)
    full = simulate_lines(2, seed=0)
    assert full.dataset.n_pixels == 7214
    apstar = np.r_[322:3242, 3648:6048, 6412:8306]
    np.testing.assert_allclose(full.dataset.wavelength, 10 ** (4.179 + 6e-6 * apstar), rtol=1e-12)


def test_labels_look_like_an_hr_diagram():
    giants = simulate_lines(400, n_pixels=50, seed=0).dataset
    dwarfs = simulate_lines(400, n_pixels=50, population="dwarfs", seed=0).dataset
    assert np.median(giants.label("logg")) < 3.0 < 4.0 < np.median(dwarfs.label("logg"))
    # on the giant branch cooler stars have lower gravity
    assert np.corrcoef(giants.label("teff"), giants.label("logg"))[0, 1] > 0.5
    fe_h, alpha = giants.label("fe_h"), giants.label("alpha_fe")
    assert abs(np.median(fe_h) + 0.1) < 0.06 and fe_h.min() >= -1.5 and fe_h.max() <= 0.5
    assert np.corrcoef(fe_h, alpha)[0, 1] < -0.4
    assert 0.5 <= giants.label("vmacro").min() and giants.label("vmacro").max() <= 15


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="population"):
        simulate_lines(2, population="subgiants")
    with pytest.raises(ValueError, match="unknown element.*xx"):
        simulate_lines(2, elements=("xx",))
    with pytest.raises(ValueError, match="n_pixels"):
        simulate_lines(2, n_pixels=8000)


def test_noise_matches_the_reported_errors_and_bad_pixels_are_masked():
    sim = simulate_lines(200, n_pixels=WINDOW, snr=(60.0, 250.0), bad_pixel_fraction=0.02, seed=1)
    ds = sim.dataset
    good = ~ds.mask
    z = (ds.flux - sim.true_flux) / sim.flux_err
    assert abs(z[good].std() - 1.0) < 0.01
    assert abs(ds.mask.mean() - 0.02) < 0.003
    assert np.all(ds.ivar[ds.mask] == 0)
    # S/N at the continuum is the drawn one (the continuum residual is ~1)
    snr = sim.truth["snr"]
    assert 60 <= snr.min() and snr.max() <= 250
    continuum = sim.true_flux / sim.continuum > 0.995  # line-free pixels
    ratio = np.nanmedian(np.where(good & continuum, sim.true_flux / sim.flux_err, np.nan), axis=1)
    np.testing.assert_allclose(ratio, snr, rtol=0.05)


def test_cli_writes_a_file_that_reads_with_the_labels(tmp_path):
    out = tmp_path / "lines.npz"
    args = ["simulate", "lines", "-o", str(out), "--n-stars", "30", "--n-pixels", "300", "--seed", "2"]
    args += ["--elements", "mg,si", "--rv-scale", "20", "--binary-fraction", "0.5", "--population", "dwarfs"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = read_dataset(out, labels=("teff", "logg", "fe_h", "alpha_fe", "vmacro"))
    sim = simulate_lines(
        30,
        n_pixels=300,
        elements=("mg", "si"),
        rv_scale=20.0,
        binary_fraction=0.5,
        population="dwarfs",
        seed=2,
    )
    np.testing.assert_array_equal(data.flux[~data.mask], sim.dataset.flux[~sim.dataset.mask])
    np.testing.assert_array_equal(data.labels, sim.dataset.labels[:, :5])
    truth = read_dataset(out, labels=("mg_fe", "rv", "is_binary", "delta_v", "teff_2"))
    np.testing.assert_array_equal(truth.label("rv"), sim.truth["rv"])
    binary = truth.label("is_binary") == 1
    assert 0 < binary.sum() < 30 and np.all(np.isnan(truth.label("teff_2")[~binary]))
    bad = CliRunner().invoke(app, ["simulate", "lines", "-o", str(out), "--n-labels", "3"])
    assert bad.exit_code == 2 and "--elements" in bad.output
