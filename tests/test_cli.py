"""End-to-end CLI checks (in-process through typer's runner)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import InferenceResult, read_dataset, simulate_cannon, write_dataset

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
