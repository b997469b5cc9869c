import json

from starlabel.demo import run_demo


def test_quick_demo_runs_every_model_and_beats_trivial_predictor(tmp_path):
    summary = run_demo(tmp_path, quick=True, real=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["simulated"]
    assert set(metrics) == {"cannon", "lux", "nn"}
    for model, table in metrics.items():
        for label, values in table["labels"].items():
            # RMSE well below the spread of the labels (0 = perfect, 1 = predicting the mean)
            assert values["scaled_rmse"] < 0.3, (model, label, values)
    # The Cannon is the true model family of the simulation: it must be best on Teff.
    rmse = {m: t["labels"]["teff"]["rmse"] for m, t in metrics.items()}
    assert rmse["cannon"] == min(rmse.values())
    assert summary.path.read_text().startswith("# starlabel demo")
    assert (tmp_path / "simulated" / "cannon" / "one_to_one.png").exists()
    assert (tmp_path / "simulated" / "cannon" / "spectrum.png").exists()
