"""Training time with the error calibration over training time without it (issue 15: ≤ 6×).

``Cannon.fit(calibrate=True)`` trains the model on the whole training set and then
five cross-validation fold models, each followed by the test step on its held-out
stars. The folds start their EM from the full fit's scatter and stop at
``_FOLD_TOL`` (the *warm* folds, the default); the *cold* folds (start at s² = 0,
the model's own tolerance) are what ``fit`` did before. This script times, in one
process and on the same data, alternately and after a warm-up on the same shapes (so
no compilation is timed):

* ``fit(calibrate=False)``;
* ``fit(calibrate=True)`` with warm folds (the default);
* ``fit(calibrate=True)`` with cold folds;

and reports the ratios (wall and CPU seconds; both sides share the machine's load, so
the ratios are fair even on a busy machine), the EM iterations per fit, and how far the
two calibrations and the calibrated errors of held-out test stars differ.

Cases: the line-list simulator (dwarfs, 5 labels, 7,214 px, 2,000 training and 500
test stars) and the 500 real APOGEE giants (100 px; 400 training, 100 test). With
``--models cannon,nn`` the NN (default configuration) is timed the same way, without
and with calibration (under ``nn`` in the JSON).

Run:  python benchmarks/calibration_train_time.py [--repeats 2] [--models cannon,nn] [--allow-busy]
"""

from __future__ import annotations

from _common import add_arguments, finish, log, pin_threads, start  # isort: skip

THREADS = pin_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import starlabel.models.cannon._model as cannon_module  # noqa: E402
from starlabel.data import simulate_lines  # noqa: E402
from starlabel.models.cannon import Cannon  # noqa: E402
from starlabel.models.nn import NNRegressor  # noqa: E402

_ITERATIONS: list[int] = []
_ORIGINAL = cannon_module.Cannon._fit_arrays


def _recording(self, *args, **kwargs):
    fitted = _ORIGINAL(self, *args, **kwargs)
    _ITERATIONS.append(int(dict(fitted.training_info)["em_iterations"]))
    return fitted


def _cold(self, *args, **kwargs):
    """The folds as before: EM from s² = 0 to the model's own tolerance."""
    kwargs.pop("init", None)
    kwargs.pop("tol", None)
    return _recording(self, *args, **kwargs)


def _timed(model: Cannon, train, calibrate: bool, folds: str):
    cannon_module.Cannon._fit_arrays = _cold if folds == "cold" else _recording
    _ITERATIONS.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    fitted = model.fit(train, calibrate=calibrate)
    return fitted, time.perf_counter() - wall, time.process_time() - cpu, list(_ITERATIONS)


def run_case(name: str, train, test, repeats: int) -> dict:
    model = Cannon(train.label_names, order=2)
    variants = {
        "without": (False, "warm"),
        "with_warm_folds": (True, "warm"),
        "with_cold_folds": (True, "cold"),
    }
    for calibrate, folds in variants.values():  # warm-up: every program compiled once
        _timed(model, train, calibrate, folds)
    seconds = {k: {"wall": [], "cpu": []} for k in variants}
    iterations, fitted = {}, {}
    for _ in range(repeats):
        for key, (calibrate, folds) in variants.items():
            fitted[key], wall, cpu, iterations[key] = _timed(model, train, calibrate, folds)
            seconds[key]["wall"].append(round(wall, 3))
            seconds[key]["cpu"].append(round(cpu, 3))
    cannon_module.Cannon._fit_arrays = _ORIGINAL
    best = {k: {t: min(v[t]) for t in ("wall", "cpu")} for k, v in seconds.items()}
    ratio = {
        f"{k}_over_without_{t}": round(best[k][t] / best["without"][t], 2)
        for k in ("with_warm_folds", "with_cold_folds")
        for t in ("wall", "cpu")
    }
    warm, cold = fitted["with_warm_folds"], fitted["with_cold_folds"]
    result_warm, result_cold = warm.infer(test), cold.infer(test)
    rel = np.abs(result_warm.label_err / result_cold.label_err - 1.0)
    reference = test.labels[:, [test.label_index(n) for n in train.label_names]]
    rmse = {
        k: np.sqrt(np.nanmean((r.labels - reference) ** 2, axis=0)).tolist()
        for k, r in (("warm", result_warm), ("cold", result_cold))
    }
    row = {
        "labels": list(train.label_names),
        "n_train": int(train.n_stars),
        "n_test": int(test.n_stars),
        "n_pixels": int(train.n_pixels),
        "seconds": seconds,
        "best_seconds": best,
        **ratio,
        "em_iterations": iterations,
        "calibration_warm_folds": warm.calibration.table(),
        "calibration_cold_folds": cold.calibration.table(),
        "test_err_max_relative_difference": float(np.max(rel)),
        "test_rmse": rmse,
    }
    log(
        f"{name}: {json.dumps(ratio)}; iterations {iterations}; err diff {row['test_err_max_relative_difference']:.2g}"
    )
    return row


def run_case_nn(name: str, train, test, repeats: int, epochs: int) -> dict:
    """The NN (``NNRegressor``, default configuration): ``fit`` without and with calibration.

    Same protocol as the Cannon's (warm-up on the same shapes, then alternating timed
    fits, wall and CPU seconds); the NN has no warm/cold fold variants.
    """
    model = NNRegressor(train.label_names, epochs=epochs)

    def timed(calibrate: bool):
        wall, cpu = time.perf_counter(), time.process_time()
        fitted = model.fit(train, calibrate=calibrate)
        return fitted, time.perf_counter() - wall, time.process_time() - cpu

    for calibrate in (False, True):  # warm-up: every program compiled once
        timed(calibrate)
    seconds = {k: {"wall": [], "cpu": []} for k in ("without", "with")}
    fitted = {}
    for _ in range(repeats):
        for key, calibrate in (("without", False), ("with", True)):
            fitted[key], wall, cpu = timed(calibrate)
            seconds[key]["wall"].append(round(wall, 3))
            seconds[key]["cpu"].append(round(cpu, 3))
    best = {k: {t: min(v[t]) for t in ("wall", "cpu")} for k, v in seconds.items()}
    ratio = {
        f"with_over_without_{t}": round(best["with"][t] / best["without"][t], 2) for t in ("wall", "cpu")
    }
    log(f"{name} nn: {json.dumps(ratio)}")
    return {
        "labels": list(train.label_names),
        "n_train": int(train.n_stars),
        "n_pixels": int(train.n_pixels),
        "epochs": epochs,
        "seconds": seconds,
        "best_seconds": best,
        **ratio,
        "calibration": fitted["with"].calibration.table(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", default="lines,giants")
    parser.add_argument("--models", default="cannon", help="comma-separated: cannon, nn")
    parser.add_argument("--nn-epochs", type=int, default=300, help="NN training epochs (default 300)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "calibration_train_time.json"
    )
    args = parser.parse_args()
    record = start(args, THREADS)
    results: dict = {"run": record, "repeats": args.repeats, "cases": {}}
    cases, models = args.cases.split(","), args.models.split(",")
    data = {}
    if "lines" in cases:
        lines = simulate_lines(2500, population="dwarfs", seed=15).dataset
        data["lines"] = (lines[np.arange(2000)], lines[np.arange(2000, 2500)])
    if "giants" in cases:
        from _common import giants_cv_splits

        giants, splits = giants_cv_splits()
        data["giants"] = (giants[splits[0][0]], giants[splits[0][1]])
    for case, (train, test) in data.items():
        if "cannon" in models:
            results["cases"][case] = run_case(case, train, test, args.repeats)
        if "nn" in models:
            results.setdefault("nn", {})[case] = run_case_nn(case, train, test, args.repeats, args.nn_epochs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # a cut-short run keeps its cases
    results["run"] = finish(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
