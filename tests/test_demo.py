"""`starlabel demo`, as README.md shows it, in its quick mode on simulated data."""

import json

from typer.testing import CliRunner

from starlabel.cli import app
from test_docs_contract import fenced_commands


def test_quick_demo_runs_every_model_and_beats_trivial_predictor(tmp_path):
    documented = [line for line in fenced_commands() if line.runs_elsewhere == "tests/test_demo.py"]
    assert [line.words for line in documented] == [("demo",)], "README.md's demo command changed"
    argv = [*documented[0].words, "--quick", "--no-real", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"(summary: {tmp_path / 'summary.md'})" in result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())["simulated"]
    assert set(metrics) == {"cannon", "lux", "nn"}
    for model, table in metrics.items():
        for label, values in table["labels"].items():
            # RMSE well below the spread of the labels (0 = perfect, 1 = predicting the mean)
            assert values["scaled_rmse"] < 0.3, (model, label, values)
    # The Cannon is the true model family of the simulation: it must be best on Teff.
    rmse = {m: t["labels"]["teff"]["rmse"] for m, t in metrics.items()}
    assert rmse["cannon"] == min(rmse.values())
    assert (tmp_path / "summary.md").read_text().startswith("# starlabel demo")
    assert (tmp_path / "simulated" / "cannon" / "one_to_one.png").exists()
    assert (tmp_path / "simulated" / "cannon" / "spectrum.png").exists()
