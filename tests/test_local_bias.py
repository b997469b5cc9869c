"""The label-space bias correction: learned by cross-validation, applied by ``infer``, run from the CLI.

The end-to-end checks use real APOGEE giants (spectra the Cannon cannot represent
exactly), held out: a model trained on one half is tested on the other.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import read_result, write_dataset
from starlabel.models._local_bias import LocalBias, cross_fold_shift


def _smooth_bias(labels: np.ndarray) -> np.ndarray:
    """A bias that grows toward the edges of label space, as a model pulled to the middle."""
    return np.stack([-0.3 * labels[:, 0] ** 3, 0.2 * labels[:, 0] * labels[:, 1]], axis=1)


def test_shift_recovers_a_smooth_bias_under_noise():
    rng = np.random.default_rng(0)
    labels = rng.uniform(-1.5, 1.5, size=(3000, 2))
    residuals = _smooth_bias(labels) + rng.normal(0.0, 0.1, size=labels.shape)
    bias = LocalBias.from_residuals(residuals, labels)
    assert bias is not None and bias.neighbours == 50 and bias.n_refs == 3000
    query = rng.uniform(-1.2, 1.2, size=(500, 2))
    shift = bias.shift(query)
    # k = 50 neighbours average the noise (0.1 / √50 = 0.014) and smooth the bias a little.
    assert np.sqrt(np.mean((shift - _smooth_bias(query)) ** 2)) < 0.03
    # Subtracting it leaves about the noise (0.1; the neighbourhoods at the edges of the
    # cubic are lopsided: 0.115 there) of a spread of 0.42 and 0.13 before.
    corrected = residuals - bias.shift(labels, leave_one_out=True)
    assert np.all(np.std(corrected, axis=0) < 0.12), np.std(corrected, axis=0)
    assert np.all(np.std(residuals, axis=0) > 0.125), np.std(residuals, axis=0)
    # A star whose labels are unknown keeps its labels (shift 0), not NaN.
    assert np.array_equal(bias.shift(np.array([[np.nan, 0.0]])), [[0.0, 0.0]])


def test_leave_one_out_drops_the_star_itself():
    labels = np.arange(200.0)[:, None] * np.ones((1, 2))
    residuals = np.zeros((200, 2))
    residuals[150:155] = 100.0  # far away; enough large residuals that the 1 % clip keeps 100
    residuals[20] = 100.0  # one star's own residual must not correct it
    bias = LocalBias.from_residuals(residuals, labels, neighbours=3)
    assert bias is not None
    assert bias.shift(labels[20:21])[0, 0] == pytest.approx(100.0 / 3)
    assert bias.shift(labels[20:21], leave_one_out=True)[0, 0] == 0.0


def test_cross_fold_shift_uses_only_the_other_folds():
    rng = np.random.default_rng(1)
    labels = rng.normal(size=(400, 3))
    fold = np.arange(400) % 4
    residuals = np.where(fold[:, None] == 0, 5.0, 1.0) * np.ones((1, 3))
    residuals[7, 1] = np.nan  # a missing residual is left out of its neighbours' means
    bias = LocalBias.from_residuals(residuals, labels)
    assert bias is not None
    shift = cross_fold_shift(bias, residuals, labels, fold)
    # Fold 0's own residuals (5) never reach fold 0's stars; the other folds' stars have
    # a third of their neighbours there: 1 + 4/3 on average.
    assert np.allclose(shift[fold == 0], 1.0)
    assert np.mean(shift[fold != 0]) == pytest.approx(1.0 + 4.0 / 3.0, abs=0.1)


def test_too_few_stars_for_a_neighbourhood_gives_no_correction():
    assert LocalBias.from_residuals(np.zeros((15, 2)), np.zeros((15, 2))) is None


def test_cli_corrects_the_bias_by_default_and_no_bias_correction_opts_out(apogee_giants, tmp_path):
    order = np.random.default_rng(7).permutation(apogee_giants.n_stars)
    train, test = np.sort(order[:250]), np.sort(order[250:])
    write_dataset(apogee_giants[train], tmp_path / "train.npz")
    write_dataset(apogee_giants[test], tmp_path / "test.npz")
    runner = CliRunner()
    tables, texts = {}, {}
    for flag in ([], ["--no-bias-correction"]):
        model = tmp_path / f"m{len(flag)}.starlabel"
        trained = runner.invoke(
            app,
            [
                "train",
                "cannon",
                str(tmp_path / "train.npz"),
                "--labels",
                "teff,logg,m_h",
                "-o",
                str(model),
                *flag,
            ],
        )
        assert trained.exit_code == 0, trained.output
        out = tmp_path / f"m{len(flag)}.csv"
        ran = runner.invoke(
            app, ["infer", str(model), str(tmp_path / "test.npz"), "-o", str(out), "--no-progress"]
        )
        assert ran.exit_code == 0, ran.output
        tables[bool(flag)], texts[bool(flag)] = read_result(out), trained.output
    corrected, own = tables[False], tables[True]
    assert "labels corrected by the mean held-out error of the 16 training stars" in texts[False]
    assert "labels corrected" not in texts[True]
    names = ("teff", "logg", "m_h")
    assert {f"{n}_bias" for n in names} <= set(corrected.extra) and not {f"{n}_bias" for n in names} & set(
        own.extra
    )
    bias = np.stack([corrected.extra[f"{n}_bias"] for n in names], axis=1)
    # Same final model on both sides: the model's own label is <label> + <label>_bias.
    np.testing.assert_allclose(corrected.labels + bias, own.labels, rtol=1e-9, atol=1e-9)
    reference = apogee_giants.labels[test]
    rmse = {k: np.sqrt(np.mean((t.labels - reference) ** 2, axis=0)) for k, t in tables.items()}
    # Measured: 0.83 / 0.82 / 0.87 of the model's own labels' RMSE on these 250 stars.
    assert np.all(rmse[False] < 0.92 * rmse[True]), rmse[False] / rmse[True]
    # And the corrected labels' errors are calibrated (targets std z 1 ± 0.1, 68 ± 4 %,
    # with the sampling noise of 250 stars: measured 1.02/1.12/1.03 and 72/70/74 %).
    z = (corrected.labels - reference) / corrected.label_err
    assert np.all(np.abs(np.std(z, axis=0) - 1) < 0.15), np.std(z, axis=0)
    assert np.all(np.abs(np.mean(np.abs(z) < 1, axis=0) - 0.683) < 0.08), np.mean(np.abs(z) < 1, axis=0)


def test_frozen_labels_are_not_moved_and_laplace_labels_are_corrected_alike(apogee_giants):
    from starlabel.models.cannon import Cannon

    order = np.random.default_rng(7).permutation(apogee_giants.n_stars)
    train, test = apogee_giants[np.sort(order[:250])], apogee_giants[np.sort(order[250:300])]
    fitted = Cannon(("teff", "logg", "m_h")).fit(train)
    fisher = fitted.infer(test)
    assert np.any(fisher.extra["m_h_bias"] != 0)
    # A frozen label (held at a given value) keeps that value: its bias is 0.
    held = fitted.infer(test, frozen={"m_h": 0.0})
    assert np.all(held.labels[:, 2] == 0.0) and np.all(held.extra["m_h_bias"] == 0.0)
    # The Laplace approximation shares the optimum, so its labels are corrected alike
    # (its errors are the statistical ones: the calibration was learned on Fisher's).
    laplace = fitted.infer(test, uncertainty="laplace")
    assert laplace.meta["errors"] == "statistical"
    assert np.all(
        np.abs(laplace.labels - fisher.labels) < 0.01 * fisher.label_err
    )  # the optimiser's tolerance


def test_bounds_hold_nan_covariances_are_corrected_and_the_model_labels_come_back(apogee_giants):
    import dataclasses

    from starlabel.models import model_labels
    from starlabel.models.cannon import Cannon

    order = np.random.default_rng(7).permutation(apogee_giants.n_stars)
    train, test = apogee_giants[np.sort(order[:250])], apogee_giants[np.sort(order[250:300])]
    fitted = Cannon(("teff", "logg", "m_h")).fit(train)
    own = fitted.infer(test, calibrate=False)
    corrected = fitted.infer(test)
    np.testing.assert_allclose(model_labels(corrected), own.labels, rtol=1e-12)
    assert np.array_equal(model_labels(own), own.labels)  # nothing to undo
    # A corrected label stays within the test step's bounds.
    top = float(np.median(own.labels[:, 0]))
    bounded = fitted.infer(test, bounds={"teff": (None, top)})
    assert np.all(bounded.labels[:, 0] <= top)
    np.testing.assert_allclose(model_labels(bounded)[:, 0] - bounded.extra["teff_bias"], bounded.labels[:, 0])
    # A star whose covariance is NaN (flagged BAD_COVARIANCE) is corrected like any other.
    broken = np.array(own.cov)
    broken[0] = np.nan
    fixed = fitted.calibration.correct_labels(dataclasses.replace(own, cov=broken))
    np.testing.assert_allclose(fixed.labels[0], corrected.labels[0], rtol=1e-12)
    assert np.all(fixed.extra["teff_bias"] != 0)


def test_leave_one_out_shift_uses_every_star_not_only_the_kept_references():
    from starlabel.models._local_bias import leave_one_out_shift

    rng = np.random.default_rng(2)
    labels = rng.normal(size=(600, 2))
    residuals = _smooth_bias(labels) + rng.normal(0.0, 0.05, size=labels.shape)
    bias = LocalBias.from_residuals(residuals, labels)
    assert bias is not None
    np.testing.assert_allclose(
        leave_one_out_shift(bias, residuals, labels),
        bias.shift(labels, leave_one_out=True),
        atol=1e-6,  # stored as float32 outside x64
    )
