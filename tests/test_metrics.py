import json

import numpy as np
import pytest

from starlabel.evaluate import compare_models, label_metrics


def test_hand_computed_case():
    predicted = np.array([[1.0, 10.0], [2.0, 12.0], [3.0, np.nan], [8.0, 9.0]])
    reference = np.array([[1.0, 11.0], [1.0, 11.0], [4.0, 11.0], [4.0, 11.0]])
    table = label_metrics(predicted, reference, ["a", "b"], model="m")
    a = table["a"]
    # residuals a: 0, 1, -1, 4
    assert a.n == 4
    assert a.rmse == pytest.approx(np.sqrt((0 + 1 + 1 + 16) / 4))
    assert a.bias == pytest.approx(1.0)
    assert a.mae == pytest.approx(1.5)
    # median of residuals = 0.5; |r - 0.5| = 0.5, 0.5, 1.5, 3.5 -> median 1.0
    assert a.robust_scatter == pytest.approx(1.4826)
    assert a.scaled_rmse == pytest.approx(a.rmse / np.std([1, 1, 4, 4]))
    b = table["b"]
    # NaN star dropped: residuals -1, 1, -2
    assert b.n == 3
    assert b.rmse == pytest.approx(np.sqrt(6 / 3))
    assert b.bias == pytest.approx(-2 / 3)
    assert np.isnan(b.scaled_rmse)  # reference has zero spread


def test_json_and_comparison_table(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(100, 2))
    good = label_metrics(truth + 0.1 * rng.normal(size=truth.shape), truth, ["x", "y"])
    bad = label_metrics(truth + 1.0 * rng.normal(size=truth.shape), truth, ["x", "y"])
    text = compare_models({"good": good, "bad": bad})
    assert text.splitlines()[0].split()[:3] == ["model", "label", "n"]
    assert len(text.splitlines()) == 2 + 4
    path = good.write_json(tmp_path / "m.json")
    data = json.loads(path.read_text())
    assert data["labels"]["x"]["rmse"] == pytest.approx(good["x"].rmse)
    assert good["x"].rmse < 0.2 < 0.5 < bad["x"].rmse


def test_shape_mismatch_error():
    with pytest.raises(ValueError, match="same label order"):
        label_metrics(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"])
