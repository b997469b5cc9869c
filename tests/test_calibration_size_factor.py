"""The calibration's training-size factor f = sqrt(1 − (1 − r)/K) and model formats 3 and 4."""

from __future__ import annotations

import dataclasses
import json
import logging

import equinox as eqx
import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import simulate_cannon, write_dataset
from starlabel.models import load_model, read_model_header
from starlabel.models._calibration import IRREDUCIBLE_SHARE, fit_error_calibration
from starlabel.models.cannon import Cannon


def _residuals(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.5, 2.0, (n, 2))
    residual = rng.normal(size=sigma.shape) * np.sqrt((1.5 * sigma) ** 2 + 0.7**2)
    return residual, sigma


@pytest.mark.parametrize(
    ("share", "folds", "expected"), [(1.0, 5, 1.0), (0.0, 5, 0.8**0.5), (0.4, 3, 0.8**0.5)]
)
def test_size_factor_shrinks_the_calibrated_total_by_the_folds_training_share(share, folds, expected):
    residual, sigma = _residuals()
    calibration = fit_error_calibration(residual, sigma, ("x", "y"), n_folds=folds, irreducible_share=share)
    assert calibration.size_factor == pytest.approx(expected, rel=1e-12)
    # f multiplies the whole calibrated total: both the scaled statistical part and
    # the floor, per star, so z = Δ/σ_total grows by exactly 1/f.
    cov = np.zeros((len(sigma), 2, 2))
    cov[:, [0, 1], [0, 1]] = sigma**2
    off = calibration.with_irreducible_share(1.0)
    ratio = np.diagonal(calibration.total_cov(cov), axis1=1, axis2=2) / np.diagonal(
        off.total_cov(cov), axis1=1, axis2=2
    )
    np.testing.assert_allclose(ratio, expected**2, rtol=1e-12)
    # What is learned (a, σ_sys) does not depend on r: only how it is applied.
    np.testing.assert_array_equal(calibration.scale, off.scale)
    assert f"f={expected:.3f}" in calibration.describe()


def test_irreducible_share_outside_zero_one_is_refused():
    residual, sigma = _residuals(200)
    with pytest.raises(ValueError, match=r"`irreducible_share` must be a number in \[0, 1\]"):
        fit_error_calibration(residual, sigma, ("x", "y"), irreducible_share=1.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    sim = simulate_cannon(n_stars=260, n_pixels=40, n_labels=3, snr=50.0, seed=4)
    folder = tmp_path_factory.mktemp("size_factor")
    fitted = Cannon(sim.dataset.label_names).fit(sim.dataset[:200])
    fitted = eqx.tree_at(lambda m: m.calibration, fitted, fitted.calibration.with_irreducible_share(0.3))
    return sim.dataset, folder, fitted


def test_format_6_keeps_the_size_factor_the_label_space_and_distance_terms_and_the_bias(trained):
    dataset, folder, fitted = trained
    path = fitted.save(folder / "f.starlabel")
    header = read_model_header(path)
    assert header["format_version"] == 6
    assert header["calibration"]["local"] == {"neighbours": 14, "n_refs": 200}
    assert header["calibration"]["bias"] == {"neighbours": 14, "n_refs": 200}
    assert header["calibration"]["distance"] == {"neighbours": 10, "n_refs": 200}
    assert header["calibration"]["irreducible_share"] == 0.3
    assert header["calibration"]["size_factor"] == pytest.approx((1 - 0.7 / 5) ** 0.5)
    loaded = load_model(path)
    assert loaded.calibration.irreducible_share == 0.3
    np.testing.assert_array_equal(loaded.calibration.local.sq, fitted.calibration.local.sq)
    np.testing.assert_array_equal(loaded.calibration.distance.points, fitted.calibration.distance.points)
    np.testing.assert_array_equal(loaded.calibration.distance.power, fitted.calibration.distance.power)
    np.testing.assert_allclose(loaded.infer(dataset[200:]).cov, fitted.infer(dataset[200:]).cov, rtol=1e-10)


def _as_format_two(path, out):
    """Rewrite a model file as model format 2 wrote it (a calibration without f)."""
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    header["format_version"] = 2
    for key in ("irreducible_share", "size_factor", "local", "bias"):
        del header["calibration"][key]
    arrays = {
        k: v for k, v in arrays.items() if ".calibration.local." not in k and ".calibration.bias." not in k
    }
    with open(out, "wb") as handle:
        np.savez(handle, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return out


def test_format_2_file_loads_without_the_factor_and_says_so(trained, caplog):
    dataset, folder, fitted = trained
    old = _as_format_two(fitted.save(folder / "new.starlabel"), folder / "old.starlabel")
    with caplog.at_level(logging.WARNING, logger="starlabel.models._io"):
        loaded = load_model(old)
    assert "model format 2" in caplog.text and "no training-size factor (f = 1)" in caplog.text
    assert loaded.calibration.size_factor == 1.0
    assert loaded.calibration.local is None and loaded.calibration.bias is None
    # Same calibration as learned (without the label-space term format 4 added),
    # applied without f: errors larger by 1/f.
    f = fitted.calibration.size_factor
    plain = eqx.tree_at(lambda m: m.calibration, fitted, dataclasses.replace(fitted.calibration, local=None))
    ratio = loaded.infer(dataset[200:]).label_err / plain.infer(dataset[200:]).label_err
    np.testing.assert_allclose(ratio, 1.0 / f, rtol=1e-9)


def test_train_prints_the_size_factor(trained):
    dataset, folder, _ = trained
    write_dataset(dataset[:200], folder / "train.npz")
    ran = CliRunner().invoke(
        app,
        ["train", "cannon", str(folder / "train.npz"), "--labels", ",".join(dataset.label_names)]
        + ["-o", str(folder / "cli.starlabel")],
    )
    assert ran.exit_code == 0, ran.output
    calibration = load_model(folder / "cli.starlabel").calibration
    assert calibration.irreducible_share == IRREDUCIBLE_SHARE["cannon"] == 0.7  # the measured default
    # The Cannon learns f per label by default (a half-size fit beside the folds).
    assert calibration.size_power is not None
    assert (
        "training-size factor f per label, from how the held-out errors shrink between 1/2 and 4/5"
        in ran.output
    )
