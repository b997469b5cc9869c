"""End-to-end CLI checks (in-process through typer's runner)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import InferenceResult, read_dataset, read_result, simulate_cannon, write_dataset

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_for_every_command():
    for command in (
        ["--help"],
        ["simulate", "--help"],
        ["train", "--help"],
        ["infer", "--help"],
        ["evaluate", "--help"],
        ["demo", "--help"],
        ["train", "cannon", "--help"],
    ):
        result = run(*command)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_simulate_writes_a_readable_dataset(tmp_path):
    result = run(
        "simulate", "cannon", "-o", tmp_path / "sim.h5", "--n-stars", 50, "--n-pixels", 20, "--seed", 4
    )
    assert result.exit_code == 0, result.output
    data = read_dataset(tmp_path / "sim.h5")
    assert (data.n_stars, data.n_pixels, data.label_names) == (50, 20, ("teff", "logg", "fe_h"))
    np.testing.assert_array_equal(data.flux, simulate_cannon(50, 20, 3, seed=4).dataset.flux)


def test_evaluate_prints_metrics_and_writes_json_and_plots(tmp_path):
    sim = simulate_cannon(80, 10, 3, seed=0)
    write_dataset(sim.dataset, tmp_path / "truth.npz")
    predicted = sim.true_labels + np.array([30.0, 0.05, 0.02])  # a pure bias
    cov = np.broadcast_to(np.diag([30.0, 0.05, 0.02]) ** 2, (80, 3, 3))
    InferenceResult(
        sim.dataset.ids, sim.dataset.label_names, predicted, cov, np.ones(80), np.ones(80), np.zeros(80, int)
    ).write(tmp_path / "res.csv")
    result = run(
        "evaluate",
        tmp_path / "res.csv",
        tmp_path / "truth.npz",
        "--labels",
        "teff,logg",
        "--json",
        tmp_path / "m.json",
        "--plots",
        tmp_path / "plots",
    )
    assert result.exit_code == 0, result.output
    assert "teff" in result.output and "30.0" in result.output  # RMSE = bias = 30 K
    assert (tmp_path / "m.json").exists()
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"one_to_one.png", "residuals.png", "kiel.png"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "cannon", "missing.npz", "--labels", "teff", "-o", "m.starlabel"], "does not exist"),
        (["evaluate", "missing.csv", "missing.npz", "--labels", "teff"], "does not exist"),
        (["infer", "missing.starlabel", "x.npz", "-o", "r.csv"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_code_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_unknown_label_and_wrong_keys(tmp_path, monkeypatch, apogee_giants, shared_data):
    monkeypatch.chdir(tmp_path)
    giants = shared_data / "apogee" / "giants_100px.npz"
    result = runner.invoke(
        app, ["train", "cannon", str(giants), "--labels", "teff,vsini", "-o", "m.starlabel"]
    )
    assert result.exit_code == 2
    assert "error: " in result.output and "vsini" in result.output and "teff" in result.output
    np.savez(tmp_path / "bad.npz", spectra=np.ones((2, 2)))
    result = runner.invoke(app, ["train", "cannon", "bad.npz", "--labels", "teff", "-o", "m.starlabel"])
    assert result.exit_code == 2 and "no 'flux' array" in result.output


def test_train_infer_evaluate_on_real_giants(tmp_path, shared_data):
    giants = shared_data / "apogee" / "giants_100px.npz"
    model = tmp_path / "giants.starlabel"
    result = run("train", "cannon", giants, "--labels", "teff,logg,m_h", "-o", model)
    assert result.exit_code == 0, result.output
    for suffix in (".csv", ".fits", ".h5"):
        out = tmp_path / f"labels{suffix}"
        result = run("infer", model, giants, "-o", out)
        assert result.exit_code == 0, result.output
        table = read_result(out)
        assert table.n_stars == 500
        assert {"teff_err", "logg_err", "m_h_err"} <= {f"{n}_err" for n in table.label_names}
        assert (table.label_err > 0).all()
    result = run(
        "evaluate",
        tmp_path / "labels.csv",
        giants,
        "--labels",
        "teff,logg,m_h",
        "--json",
        tmp_path / "m.json",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())["labels"]
    # Training-set (self) residuals of a quadratic Cannon on 100 pixels of real giants
    # (NOTES.md: the plain maximum-likelihood step sits near 225 K / 0.44 / 0.19 here).
    assert metrics["teff"]["rmse"] < 240 and metrics["logg"]["rmse"] < 0.5 and metrics["m_h"]["rmse"] < 0.21


def test_infer_uncertainty_and_likelihood_options(tmp_path, shared_data):
    giants = shared_data / "apogee" / "giants_100px.npz"
    model = tmp_path / "giants.starlabel"
    # --no-calibrate: this test compares the statistical Fisher and Laplace errors.
    trained = run("train", "cannon", giants, "--labels", "teff,logg,m_h", "-o", model, "--no-calibrate")
    assert trained.exit_code == 0
    fisher = tmp_path / "fisher.csv"
    assert run("infer", model, giants, "-o", fisher, "--no-progress", "--no-memmap").exit_code == 0
    # An incomplete run (one input is not a dataset) writes what it can and exits 1.
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "giants.npz").write_bytes(giants.read_bytes())
    (tmp_path / "mixed" / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    result = run("infer", model, tmp_path / "mixed", "-o", tmp_path / "mixed.csv", "--no-progress")
    assert result.exit_code == 1, result.output
    assert (
        "wrote 500 rows" in result.output
        and "first error" in result.output
        and "not a zip file" in result.output
    )
    assert "Exit" not in result.output
    laplace = tmp_path / "laplace.csv"
    result = run("infer", model, giants, "-o", laplace, "--uncertainty", "laplace", "--no-progress")
    assert result.exit_code == 0, result.output
    a, b = read_result(fisher), read_result(laplace)
    # Same optimum; the observed curvature of real spectra with a misfit model differs
    # from the expected one, but not by orders of magnitude.
    assert np.all(np.abs(a.labels - b.labels) < 0.01 * a.label_err)
    ratio = np.median(b.label_err / a.label_err, axis=0)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    student = tmp_path / "student.csv"
    result = run(
        "infer", model, giants, "-o", student, "--estimator", "mean", "--prior", "kde",
        "--likelihood", "student", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = read_result(student)
    truth = np.stack([np.load(giants)[n] for n in ("teff", "logg", "m_h")], axis=1)
    rmse_mean = np.sqrt(np.mean((table.labels - truth) ** 2, axis=0))
    rmse_map = np.sqrt(np.mean((a.labels - truth) ** 2, axis=0))
    assert np.all(rmse_mean < rmse_map), (rmse_mean, rmse_map)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--likelihood", "student"], "--likelihood student works with --estimator mean"),
        (["--estimator", "mean", "--uncertainty", "nuts"], "--uncertainty applies to the plain MAP"),
        (["--temperature", "auto", "--train", "t.npz"], "--temperature tempers the posterior"),
    ],
)
def test_infer_option_combinations_are_refused(tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["infer", "m.starlabel", "x.npz", "-o", "r.csv", *extra])
    assert result.exit_code == 2 and message in result.output, result.output
