"""Cannon.fit_file: training streamed from a file in star blocks equals the in-memory fit."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import simulate_cannon, write_dataset
from starlabel.models import load_model
from starlabel.models.cannon import Cannon

N_STARS, N_PIXELS = 400, 60
BLOCK = 96  # does not divide N_STARS: the last block is padded
TOL = 1e-12  # both trainings converged far below the agreement asked of them
NAN_LABEL_STARS = [3, 50, 77, 398]


@pytest.fixture(scope="module")
def sim():
    return simulate_cannon(
        N_STARS, N_PIXELS, 3, snr=(40.0, 150.0), scatter=0.01, seed=5, bad_pixel_fraction=0.02
    )


@pytest.fixture(scope="module")
def data(sim):
    """The simulated training set with some labels missing (those stars are left out)."""
    labels = sim.dataset.labels.copy()
    labels[NAN_LABEL_STARS, 1] = np.nan
    return sim.dataset.replace(labels=labels)


@pytest.fixture(scope="module")
def files(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    return {suffix: write_dataset(data, folder / f"train{suffix}") for suffix in (".npz", ".h5")}


@pytest.fixture(scope="module")
def censored(data):
    wave = data.wavelength
    return Cannon(
        label_names=data.label_names,
        censor={"fe_h": [(wave[10], wave[30])], "logg": [(wave[20], wave[50])]},
        tol=TOL,
    )


@pytest.fixture(scope="module")
def in_memory(censored, data):
    return censored.fit(data, calibrate=False)


def _assert_same_training(streamed, reference):
    np.testing.assert_allclose(streamed.theta, reference.theta, rtol=1e-6, atol=1e-12)
    s2, s2_ref = np.asarray(streamed.s2), np.asarray(reference.s2)
    scattered = s2_ref > 1e-7  # a few pixels have s² ≈ 0 (the boundary maximum)
    assert scattered.sum() > N_PIXELS // 2
    np.testing.assert_allclose(s2[scattered], s2_ref[scattered], rtol=1e-4)
    np.testing.assert_allclose(s2[~scattered], s2_ref[~scattered], atol=1e-9)
    np.testing.assert_array_equal(streamed.pixel_ok, reference.pixel_ok)
    np.testing.assert_allclose(streamed.label_scaler.shift, reference.label_scaler.shift, rtol=1e-12)
    np.testing.assert_allclose(streamed.label_scaler.scale, reference.label_scaler.scale, rtol=1e-12)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_fit_file_equals_fit_with_censoring_and_missing_labels(suffix, files, censored, in_memory, data):
    streamed = censored.fit_file(files[suffix], rows_per_block=BLOCK)
    _assert_same_training(streamed, in_memory)
    info = dict(streamed.training_info)
    assert info["converged"] and info["em_iterations"] <= 8
    assert info["n_train"] == N_STARS - len(NAN_LABEL_STARS) == dict(in_memory.training_info)["n_train"]
    # censored terms are exactly zero, as in fit
    theta = np.asarray(streamed.theta)
    assert np.all(theta[~streamed.active_terms] == 0.0) and (~streamed.active_terms).sum() > 100
    np.testing.assert_array_equal(streamed.allowed, in_memory.allowed)
    np.testing.assert_allclose(streamed.wavelength, data.wavelength)


def test_inferred_labels_agree(files, censored, in_memory, data):
    streamed = censored.fit_file(files[".h5"], rows_per_block=BLOCK)
    test = data[:40]
    ours, theirs = streamed.infer(test, n_starts=1), in_memory.infer(test, n_starts=1)
    np.testing.assert_allclose(ours.labels, theirs.labels, rtol=1e-7)
    np.testing.assert_allclose(ours.chi2, theirs.chi2, rtol=1e-6)
    # and they are real labels: Teff recovered to well under 100 K
    good = np.isfinite(test.labels[:, 0])
    assert np.median(np.abs(ours.labels[good, 0] - test.labels[good, 0])) < 100.0


def test_star_weights_as_in_fit(files, data):
    weights = np.random.default_rng(2).uniform(0.2, 2.0, N_STARS)
    weights[:30] = 0.0
    model = Cannon(label_names=data.label_names, tol=TOL)
    streamed = model.fit_file(files[".npz"], star_weights=weights, rows_per_block=BLOCK)
    _assert_same_training(streamed, model.fit(data, star_weights=weights, calibrate=False))
    assert dict(streamed.training_info)["n_train"] == N_STARS - 30 - 3  # star 3 is among the first 30


def test_default_tolerance_is_as_accurate_as_fit(files, data):
    """At the default tol both trainings sit within ~tol of the exact marginal-likelihood
    maximum, so they agree to about that level."""
    model = Cannon(label_names=data.label_names)
    streamed = model.fit_file(files[".npz"], rows_per_block=BLOCK)
    exact = Cannon(label_names=data.label_names, tol=TOL).fit(data, calibrate=False)
    var_typ = np.median(1.0 / data.ivar[data.ivar > 0])
    assert np.max(np.abs(np.asarray(streamed.s2) - np.asarray(exact.s2))) < 1e-4 * var_typ
    np.testing.assert_allclose(streamed.theta, exact.theta, rtol=1e-5, atol=1e-9)


def test_empty_and_sparse_pixels_fall_back_like_fit(data, tmp_path):
    ivar = data.ivar.copy()
    ivar[:, 5] = 0.0  # no star
    ivar[8:, 9] = 0.0  # 8 stars for 10 terms
    sparse = data.replace(ivar=ivar)
    path = write_dataset(sparse, tmp_path / "sparse.npz")
    model = Cannon(label_names=data.label_names, tol=TOL)
    streamed, reference = model.fit_file(path, rows_per_block=BLOCK), model.fit(sparse, calibrate=False)
    ok = np.asarray(streamed.pixel_ok)
    assert not ok[5] and not ok[9] and ok.sum() == N_PIXELS - 2
    # fit once stopped after one EM iteration (s² = 0 everywhere) when a pixel was empty
    assert dict(reference.training_info)["converged"] and np.sum(np.asarray(reference.s2) > 1e-7) > 40
    _assert_same_training(streamed, reference)
    assert np.all(np.isfinite(np.asarray(streamed.theta))) and np.asarray(streamed.s2)[9] == 0.0
    assert dict(streamed.training_info)["bad_pixels"] == 2


def test_errors_name_the_field_and_the_fix(files, data, tmp_path):
    model = Cannon(label_names=data.label_names)
    with pytest.raises(ValueError, match=r"no training label\(s\) \['vmic'\].*declares labels"):
        Cannon(label_names=("teff", "vmic")).fit_file(files[".npz"])
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, flux=data.flux, ivar=data.ivar, teff=data.labels[:, 0])
    with pytest.raises(ValueError, match=r"compressed.*numpy\.savez \(uncompressed\) or HDF5"):
        model.fit_file(packed)
    with pytest.raises(NotImplementedError, match=r"l1 > 0.*Cannon\.fit"):
        Cannon(label_names=data.label_names, l1=1.0).fit_file(files[".npz"])
    with pytest.raises(ValueError, match=r"`star_weights` has shape \(3,\).*\(400,\)"):
        model.fit_file(files[".npz"], star_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="rows_per_block"):
        model.fit_file(files[".npz"], rows_per_block=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.fit_file(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match=r"suffix '\.fits'"):
        model.fit_file(tmp_path / "train.fits")
    few = write_dataset(data[:8], tmp_path / "few.npz")
    with pytest.raises(ValueError, match="more stars than terms"):
        model.fit_file(few)
    bad = tmp_path / "bad.npz"
    np.savez(bad, flux=data.flux, ivar=data.ivar[:, :10], teff=data.labels[:, 0])
    with pytest.raises(ValueError, match="ivar"):
        Cannon(label_names=("teff",)).fit_file(bad)


def test_cli_stream_writes_the_streamed_model(files, data, tmp_path):
    output = tmp_path / "streamed.starlabel"
    result = CliRunner().invoke(
        app,
        ["train", "cannon", str(files[".h5"]), "--labels", "teff,logg,fe_h", "-o", str(output), "--stream"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    saved = load_model(output)
    direct = Cannon(label_names=("teff", "logg", "fe_h")).fit_file(files[".h5"])
    np.testing.assert_allclose(saved.theta, direct.theta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(saved.s2, direct.s2, rtol=1e-12, atol=1e-18)
    assert dict(saved.training_info)["n_train"] == N_STARS - len(NAN_LABEL_STARS)
