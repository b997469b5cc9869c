"""The line-list simulator: determinism, file layout, and physics with known truth."""

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import LINE_LABELS, LINE_TRUTH, read_dataset, simulate_lines
from starlabel.data._linelist import VELOCITY_PER_PIXEL

WINDOW = 600  # pixels of the DR12 grid in the fast tests


def test_same_seed_same_spectra_and_documented_shapes():
    a = simulate_lines(40, n_pixels=WINDOW, elements=("mg", "c"), seed=3)
    b = simulate_lines(40, n_pixels=WINDOW, elements=("mg", "c"), seed=3)
    c = simulate_lines(40, n_pixels=WINDOW, elements=("mg", "c"), seed=4)
    np.testing.assert_array_equal(a.dataset.flux, b.dataset.flux)
    np.testing.assert_array_equal(a.dataset.labels, b.dataset.labels)
    assert not np.array_equal(a.dataset.flux, c.dataset.flux)
    ds = a.dataset
    assert (ds.n_stars, ds.n_pixels) == (40, WINDOW)
    assert ds.label_names == LINE_LABELS + ("mg_fe", "c_fe")
    # the DR12 grid: λ = 10^(4.179 + 6e-6 i), first apStar pixel 322
    np.testing.assert_allclose(ds.wavelength[0], 10 ** (4.179 + 6e-6 * 322))
    np.testing.assert_allclose(np.diff(np.log10(ds.wavelength)), 6e-6, rtol=1e-6)
    assert a.true_flux.shape == a.flux_err.shape == (40, WINDOW)
    assert set(a.truth) == set(LINE_TRUTH)
    full = simulate_lines(2, seed=0)
    assert full.dataset.n_pixels == 7214
    apstar = np.r_[322:3242, 3648:6048, 6412:8306]
    np.testing.assert_allclose(full.dataset.wavelength, 10 ** (4.179 + 6e-6 * apstar), rtol=1e-12)


def test_labels_look_like_an_hr_diagram():
    giants = simulate_lines(400, n_pixels=WINDOW, seed=0).dataset
    dwarfs = simulate_lines(400, n_pixels=WINDOW, population="dwarfs", seed=0).dataset
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
    args = ["simulate", "lines", "-o", str(out), "--n-stars", "30", "--n-pixels", str(WINDOW), "--seed", "2"]
    args += ["--elements", "mg,si", "--rv-scale", "20", "--binary-fraction", "0.5", "--population", "dwarfs"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = read_dataset(out, labels=("teff", "logg", "fe_h", "alpha_fe", "vmacro"))
    sim = simulate_lines(
        30,
        n_pixels=WINDOW,
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


# ----------------------------------------------------------------------------- physics
GIANT = {"teff": 4700.0, "logg": 2.5, "fe_h": 0.0, "alpha_fe": 0.0, "vmacro": 5.0}
HALF = 8  # pixels either side of a line centre used for equivalent widths
ALPHA_SPECIES = ["OH", "CO", "Mg I", "Si I", "S I", "Ca I", "Ti I", "Ti II", "Al I"]


def _noiseless(n, **labels):
    """Noise-free, exactly normalised spectra on the full grid with fixed labels."""
    fixed = {**GIANT, **labels}
    return simulate_lines(n, labels=fixed, continuum_error=0.0, bad_pixel_fraction=0.0, seed=0)


def _centres(sim, species, *, clear=14.0, of=None):
    """Output pixels at the centres of `species` lines with no line of `of` (default:
    any other line) within `clear` pixels, away from detector edges."""
    lines = sim.lines
    apstar = np.rint((np.log10(sim.dataset.wavelength) - 4.179) / 6e-6).astype(int)
    others = lines.pixel[np.isin(lines.species, of)] if of is not None else lines.pixel
    picked = []
    for j in lines.of_species(species):
        distance = np.abs(others - lines.pixel[j])
        n_near = np.sum(distance < clear) - (of is None or species in of)
        position = int(np.searchsorted(apstar, np.rint(lines.pixel[j])))
        if n_near == 0 and HALF + 2 < position < len(apstar) - HALF - 2:
            if apstar[position + HALF] - apstar[position - HALF] == 2 * HALF:  # no detector gap
                picked.append(position)
    return np.array(picked)


def _window(flux, centres):
    """1 − F over ±HALF pixels of each centre: shape (stars, lines, 2 HALF + 1)."""
    return 1.0 - flux[:, centres[:, None] + np.arange(-HALF, HALF + 1)[None, :]]


def test_lines_deepen_with_metallicity_along_a_curve_of_growth():
    sim = _noiseless(2, fe_h=[-0.5, 0.2])
    fe = _centres(sim, "Fe I")
    assert len(fe) >= 10
    ew = _window(sim.true_flux.astype(float), fe).sum(axis=2)
    ratio = ew[1] / ew[0]
    assert np.all(ratio > 1.3)
    # weak neutral-iron lines grow ∝ abundance (Fe I/κ_H⁻ cancels P_e): 10^0.7 ≈ 5;
    # saturated ones grow far less: depth is non-linear in abundance.
    growth = ratio[np.argsort(ew[0])]
    assert abs(growth[0] - 10**0.7) < 0.25
    assert np.all(np.diff(growth) < 0.05)  # the stronger the line, the less it grows
    assert growth[-1] < 0.7 * growth[0]


def test_alpha_deepens_alpha_element_lines_and_leaves_iron_alone():
    sim = _noiseless(2, alpha_fe=[0.0, 0.3])
    flux = sim.true_flux.astype(float)
    mg = _centres(sim, "Mg I", clear=6.0)
    fe = _centres(sim, "Fe I", clear=2 * HALF + 6.0, of=ALPHA_SPECIES)
    assert len(mg) >= 5 and len(fe) >= 20
    mg_depth = 1.0 - flux[:, mg]
    assert np.all(mg_depth[1] > 1.03 * mg_depth[0])
    fe_window = _window(flux, fe)
    np.testing.assert_allclose(fe_window[1], fe_window[0], atol=1e-6)


def test_macroturbulence_widens_lines_at_fixed_equivalent_width():
    sim = _noiseless(2, vmacro=[2.0, 12.0])
    fe = _centres(sim, "Fe I")
    depth = _window(sim.true_flux.astype(float), fe)
    ew = depth.sum(axis=2)
    np.testing.assert_allclose(ew[1], ew[0], rtol=0.01, atol=0.005)  # wings of neighbours leak in
    x = np.arange(-HALF, HALF + 1)
    mean = (depth * x).sum(axis=2) / ew
    variance = (depth * (x - mean[..., None]) ** 2).sum(axis=2) / ew
    assert np.all(variance[1] > variance[0] + 1.0)
    assert np.all(depth[1, :, HALF] < depth[0, :, HALF])  # shallower


def _ccf_peak(flux, template, max_shift=24):
    """Sub-pixel shift (pixels) maximising the cross-correlation of line depths."""
    a, b = 1.0 - flux, 1.0 - template
    shifts = np.arange(-max_shift, max_shift + 1)
    ccf = np.array([np.sum(a[max_shift:-max_shift] * np.roll(b, s)[max_shift:-max_shift]) for s in shifts])
    return shifts, ccf


def _subpixel(shifts, ccf, k):
    y0, y1, y2 = ccf[k - 1], ccf[k], ccf[k + 1]
    return shifts[k] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)


def test_radial_velocity_shifts_lines_by_lambda_v_over_c():
    v = 37.0
    sim = _noiseless(2, rv=[0.0, v])
    flux = sim.true_flux.astype(float)
    chip = slice(0, 2920)  # the blue detector: a contiguous log-λ grid
    shifts, ccf = _ccf_peak(flux[1, chip], flux[0, chip])
    measured = _subpixel(shifts, ccf, int(np.argmax(ccf))) * VELOCITY_PER_PIXEL
    assert abs(measured - v) < 0.3
    # an isolated line's centroid moves by λ v / c
    fe = _centres(sim, "Fe I")
    fe = fe[fe < 2900 - HALF - 10][:5]
    centroids = []
    for star, offset in ((0, 0), (1, int(round(measured / VELOCITY_PER_PIXEL)))):
        window = fe[:, None] + offset + np.arange(-HALF, HALF + 1)[None, :]
        depth = 1.0 - flux[star, window]
        centroids.append((depth * sim.dataset.wavelength[window]).sum(axis=1) / depth.sum(axis=1))
    np.testing.assert_allclose(centroids[1] - centroids[0], centroids[0] * v / 299_792.458, atol=0.01)


def test_a_binary_shows_its_companion_at_the_velocity_offset():
    dwarf = {"teff": 5500.0, "logg": 4.4, "vmacro": 3.0}
    sim = _noiseless(2, q=[np.nan, 0.9], delta_v=[np.nan, 60.0], **dwarf)
    truth = sim.truth
    np.testing.assert_array_equal(truth["is_binary"], [0.0, 1.0])
    assert np.isnan(truth["teff_2"][0]) and 4900 < truth["teff_2"][1] < 5500
    assert 0.5 < truth["flux_ratio"][1] < 1.0
    flux = sim.true_flux.astype(float)
    shifts, ccf = _ccf_peak(flux[1, :2920], flux[0, :2920])
    expected = np.log10(1 + 60.0 / 299_792.458) / 6e-6  # 14.5 pixels
    near = np.abs(shifts - expected) <= 2
    k = np.flatnonzero(near)[np.argmax(ccf[near])]
    assert ccf[k] > ccf[k - 1] and ccf[k] > ccf[k + 1]  # a peak, not a slope
    assert abs(_subpixel(shifts, ccf, k) - expected) < 0.7
    assert ccf[k] > 0.2 * ccf.max()
    # the single star has no such peak
    shifts, auto = _ccf_peak(flux[0, :2920], flux[0, :2920])
    assert auto[k] < 0.5 * ccf[k]


def test_the_quadratic_cannon_cannot_represent_the_spectra():
    from starlabel.models.cannon import Cannon

    train = simulate_lines(600, n_pixels=WINDOW, seed=11)
    test = simulate_lines(200, n_pixels=WINDOW, seed=12)
    fitted = Cannon(label_names=LINE_LABELS, order=2).fit(train.dataset)
    lines_only = test.true_flux / test.continuum
    misfit = np.sqrt(np.mean((fitted.predict_flux(test.dataset.labels) - lines_only) ** 2, axis=0))
    noise = np.median(test.flux_err, axis=0)
    depth = np.median(1.0 - lines_only, axis=0)
    strong, clean = depth > 0.3, depth < 0.01
    assert strong.sum() >= 10 and clean.sum() >= 50
    # strong lines: the model is off by more than the noise; line-free pixels: it is not
    assert np.median(misfit[strong] / noise[strong]) > 1.5
    assert np.median(misfit[clean] / noise[clean]) < 0.5
