"""The typed test step: strategies round-trip through JSON, combinations are refused in one
place, and a pipeline run hands the same object to its workers and records it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from starlabel.data import read_result, read_run, simulate_cannon, write_dataset
from starlabel.models import (
    MAP,
    NUTS,
    Binary,
    Fisher,
    Laplace,
    Nuisance,
    PosteriorMean,
    TestStep,
    calibration_from_options,
    infer,
    infer_labels,
    save_model,
)
from starlabel.models.cannon import Cannon
from starlabel.pipeline import run_dir_for, run_inference

CALIBRATION = {
    "label_names": ["teff", "logg", "fe_h"],
    "scale": [1.2, 0.9, 1.0],
    "floor": [30.0, 0.05, 0.02],
    "misfit_power": [0.5, 0.0, 1.0],
    "rchi2_ref": 1.3,
    "n_folds": 5,
    "n_stars": 400,
}

STEPS = [
    TestStep(),
    TestStep(MAP(), Laplace(), options={"n_starts": 4}),
    TestStep(MAP(), NUTS(num_warmup=50, num_samples=80)),
    TestStep(PosteriorMean("kde", 2.5, "student"), options={"n_nodes": 512, "method": "grid"}),
    TestStep(
        PosteriorMean(
            "gaussian", 4.0, error_calibration=calibration_from_options(CALIBRATION, ("teff", "logg", "fe_h"))
        )
    ),
    TestStep(NUTS("gaussian", 1.5, width_scale=(2.0, 1.0, 0.5), num_chains=2)),
    TestStep(PosteriorMean("none", "auto")),
    TestStep(MAP(), Fisher(), Nuisance(rv=True, continuum_order=2), options={"v_max": 60.0}),
    TestStep(MAP(), Fisher(), Nuisance(rv=True), Binary({"threshold": 3.0, "quantiles": [0.0, 1.0]})),
]


@pytest.mark.parametrize("step", STEPS, ids=range(len(STEPS)))
def test_every_strategy_round_trips_through_json_and_the_flat_form(step):
    record = json.loads(json.dumps(step.to_json(), allow_nan=False))  # really JSON
    again = TestStep.from_json(record)
    assert again.to_json() == step.to_json()
    assert type(again.estimator) is type(step.estimator) and type(again.uncertainty) is type(step.uncertainty)
    flat = step.to_options()
    assert TestStep.from_options(json.loads(json.dumps(flat))).to_json() == step.to_json()


def test_the_flat_form_is_the_cli_words():
    step = TestStep.from_options(
        {"estimator": "mean", "prior": "kde", "temperature": 2.0, "fit_rv": True, "n_nodes": 512}
    )
    assert step.estimator == PosteriorMean("kde", 2.0)
    assert step.nuisance == Nuisance(rv=True, continuum_order=None)
    assert dict(step.options) == {"n_nodes": 512} and step.binary is None
    assert step.to_options() == {
        "estimator": "mean",
        "prior": "kde",
        "temperature": 2.0,
        "fit_rv": True,
        "n_nodes": 512,
    }
    assert TestStep.from_options({}).to_options() == {}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TestStep(PosteriorMean(), Laplace()), "--uncertainty applies to the plain MAP"),
        (lambda: TestStep(MAP(), NUTS(), Nuisance()), "--uncertainty applies to the plain MAP"),
        (lambda: TestStep(MAP(), NUTS(prior="kde")), "belong to estimator=NUTS"),
        (lambda: TestStep(PosteriorMean(), binary=Binary()), "--binary runs its own MAP fits"),
        (lambda: TestStep(MAP(), nuisance=Nuisance(continuum_order=1), binary=Binary()), "no continuum"),
        (lambda: TestStep(NUTS(), nuisance=Nuisance()), "NUTS with a velocity/continuum"),
        (lambda: TestStep(PosteriorMean(temperature="hot")), "a number or 'auto'"),
        (lambda: TestStep(PosteriorMean(likelihood="cauchy")), "unknown likelihood 'cauchy'"),
        (lambda: Nuisance(rv=False), "nothing to fit"),
        (
            lambda: TestStep.from_options({"estimator": "median"}),
            r"unknown estimator 'median'.*'map', 'mean', 'nuts'",
        ),
        (lambda: TestStep.from_options({"uncertainty": "bootstrap"}), "unknown uncertainty 'bootstrap'"),
        (
            lambda: TestStep.from_options({"likelihood": "student"}),
            "--likelihood student works with --estimator mean",
        ),
        (lambda: TestStep.from_options({"temperature": "auto"}), "--temperature tempers the posterior"),
        (lambda: TestStep.from_options({"prior": "kde"}), "estimator='mean'"),
        (lambda: TestStep.from_options({"estimator": "mean", "temperature": -1.0}), "must be > 0"),
        (
            lambda: TestStep.from_json({"estimator": {"type": "Median"}}),
            "unknown test-step strategy 'Median'",
        ),
        (
            lambda: TestStep.from_json({"estimator": {"type": "MAP", "prior": "kde"}}),
            r"MAP has no field\(s\) \['prior'\]",
        ),
        (lambda: TestStep(PosteriorMean(object())).to_json(), "has no JSON form"),
    ],
)
def test_combinations_are_refused_in_one_place_with_one_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.fixture(scope="module")
def small():
    every = simulate_cannon(160 + 24, 40, 3, seed=3).dataset
    fitted = Cannon(label_names=every.label_names, order=2).fit(every[:160], calibrate=False)
    return fitted, every[160:]


def test_infer_with_objects_runs_the_models_own_map(small):
    fitted, test = small
    plain = infer(fitted, test, n_starts=2, chunk_size=16)
    want = fitted.infer(test, n_starts=2, chunk_size=16)
    np.testing.assert_array_equal(plain.labels, want.labels)
    np.testing.assert_array_equal(plain.cov, want.cov)
    words = infer_labels(fitted, test, n_starts=2, chunk_size=16)
    np.testing.assert_array_equal(words.labels, want.labels)


def test_pipeline_hands_the_step_to_workers_and_records_it(small, tmp_path: Path):
    fitted, test = small
    model = save_model(fitted, tmp_path / "cannon.starlabel")
    data = test.replace(ids=[f"s{i}" for i in range(test.n_stars)])
    files = [write_dataset(data, tmp_path / "obs.npz")]
    step = TestStep(MAP(), Fisher(), options={"chunk_size": 16, "n_starts": 2})
    output = tmp_path / "labels.csv"
    summary = run_inference(model, files, output, chunk_size=16, infer_options=step, progress=False)
    assert summary.complete
    manifest = read_run(run_dir_for(output))
    assert manifest.options["infer_options"] == {"chunk_size": 16, "n_starts": 2}
    assert TestStep.from_json(manifest.options["test_step"]).to_json() == step.to_json()
    got = read_result(output)
    want = fitted.infer(data, n_starts=2, chunk_size=16)
    np.testing.assert_allclose(got.labels, want.labels, rtol=1e-10)
    np.testing.assert_allclose(got.label_err, want.label_err, rtol=1e-8)
    provenance = got.meta["provenance"]["test_step"]
    assert provenance["chunk_size"] == 16 and provenance["n_starts"] == 2
    with pytest.raises(FileNotFoundError, match="without manifest.json"):
        read_run(tmp_path)
