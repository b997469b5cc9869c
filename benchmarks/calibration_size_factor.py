"""Training-size factor ``f`` and the γ cap of the error calibration, on held-out stars.

The K-fold error calibration learns ``a``, ``σ_sys`` and ``γ`` from fold models that
train on (K−1)/K of the training set, so its widths fit errors larger than the final
model's. ``ErrorCalibration.irreducible_share`` (``r``) multiplies the calibrated total
by ``f = sqrt(1 − (1 − r)/K)``. This script measures, for r on a grid and γ capped at
3 and at 2, the held-out std(z) and 1σ coverage of ``<label>_err`` per label and model
(Cannon, Lux, NN with their default configurations), on

* the 500 real APOGEE giants (``giants_100px.npz``; teff, logg, m_h), 5-fold
  cross-validated: every star predicted by models trained without it;
* the line-list simulator (``simulate_lines``, dwarfs, 5 labels, 7,214 pixels, S/N
  60–250): 2,000 training and 1,000 held-out stars.

Each model is trained once with the default calibration (``fit(calibrate=True)``).
The fold residuals the calibration was fitted to are recorded, so every (cap, r)
variant is the same ``fit_error_calibration`` refitted on them: no retraining, and
exactly what ``fit`` with those settings stores. Training time without calibration
is the time until the full-data fit returns, inside the same ``fit`` call.

Run:  python benchmarks/calibration_size_factor.py --cases giants --out A.json
      python benchmarks/calibration_size_factor.py --cases lines --nn-epochs 100 --out B.json
      python benchmarks/calibration_size_factor.py --merge A.json B.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import add_arguments, finish, giants_cv_splits, log, pin_threads, start

THREADS = pin_threads()

import numpy as np  # noqa: E402

import starlabel.models._calibration as calibration_module  # noqa: E402
import starlabel.models._calibration_cv as calibration_cv  # noqa: E402
import starlabel.models._calibration_fit as calibration_fit  # noqa: E402
import starlabel.models.cannon._model as cannon_module  # noqa: E402
import starlabel.models.lux._model as lux_module  # noqa: E402
import starlabel.models.nn as nn_module  # noqa: E402
from starlabel._internal import fold_indices  # noqa: E402
from starlabel.data import simulate_lines  # noqa: E402
from starlabel.models._training_distance import TrainingDistance  # noqa: E402
from starlabel.models.cannon import Cannon  # noqa: E402
from starlabel.models.lux import Lux  # noqa: E402
from starlabel.models.nn import NNRegressor  # noqa: E402

SHARES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
CAPS = [3.0, 2.0]
TOLERANCE = (0.1, 0.04)
MODELS = {
    "cannon": lambda names, epochs: Cannon(names, order=2),
    "lux": lambda names, epochs: Lux(names, latent_size=8),
    "nn": lambda names, epochs: NNRegressor(names, epochs=epochs),
}
"""The default configurations of ``starlabel train cannon|lux|nn`` (NN epochs from --nn-epochs)."""

_RECORDED: list[dict] = []
_CAL_START: list[float] = []
RAW_PATH: list[Path] = []


def _recording_fit(original):
    def fit(residuals, errors, label_names, **kwargs):
        _RECORDED.append(
            {
                "residuals": np.asarray(residuals),
                "errors": np.asarray(errors),
                "rchi2": kwargs.get("rchi2"),
                "n_folds": kwargs.get("n_folds", 5),
                "labels": kwargs.get("labels"),
                "half_residuals": kwargs.get("half_residuals"),
            }
        )
        return original(residuals, errors, label_names, **kwargs)

    return fit


def _timed_calibrated_fit(original):
    def calibrated_fit(*args, **kwargs):
        _CAL_START.append(time.perf_counter())
        return original(*args, **kwargs)

    return calibrated_fit


FIT = calibration_module.fit_error_calibration
calibration_cv.fit_error_calibration = _recording_fit(FIT)
for module in (cannon_module, lux_module, nn_module):
    module.calibrated_fit = _timed_calibrated_fit(module.calibrated_fit)


def _snr(data) -> np.ndarray:
    """Median per-pixel S/N of each star (pixels with ivar > 0)."""
    flux, ivar = np.asarray(data.flux), np.asarray(data.ivar)
    snr = np.where(ivar > 0, np.abs(flux) * np.sqrt(np.clip(ivar, 0, None)), np.nan)
    return np.nanmedian(snr, axis=1)


def _stats(z: np.ndarray) -> dict[str, list[float]]:
    return {
        "std_z": np.std(z, axis=0).round(4).tolist(),
        "coverage_1sigma": np.mean(np.abs(z) < 1, axis=0).round(4).tolist(),
    }


def run_case(case: str, splits, data, names, models, epochs: int, raw: dict) -> dict:
    """Train each model once per split; held-out z for every (γ cap, r) variant."""
    reference = data.labels
    out = {}
    for model_name in models:
        stat_pred = np.full(reference.shape, np.nan)
        variants = {(c, r): np.full(reference.shape, np.nan) for c in CAPS for r in SHARES}
        learned = np.full(reference.shape, np.nan)
        plain = np.full(reference.shape, np.nan)
        seconds = {"with": 0.0, "without": 0.0}
        size_factors = []
        for train, test in splits:
            _RECORDED.clear()
            _CAL_START.clear()
            t0 = time.perf_counter()
            # The Cannon without its bias correction: this measures the error model's
            # terms on the model's own labels (the recorded residuals rebuild them).
            own = {"bias_correction": False} if model_name == "cannon" else {}
            fitted = MODELS[model_name](names, epochs).fit(data[train], calibrate=True, **own)
            seconds["with"] += time.perf_counter() - t0
            seconds["without"] += _CAL_START[0] - t0
            folds = _RECORDED[0]
            size_factors.append(np.round(fitted.calibration.size_factors, 4).tolist())
            stat = fitted.infer(data[test], calibrate=False)
            stat_pred[test] = stat.labels
            for cap in CAPS:
                base = FIT(
                    folds["residuals"],
                    folds["errors"],
                    names,
                    rchi2=folds["rchi2"],
                    n_folds=folds["n_folds"],
                    max_power=cap,
                    labels=folds["labels"],
                )
                for r in SHARES:
                    result = base.with_irreducible_share(r).apply(stat)
                    variants[(cap, r)][test] = result.label_err
            # What fit stored: the label-space term and, where learned, per-label f.
            learned[test] = fitted.calibration.apply(stat).label_err
            # The same without the label-space term (the calibration before it).
            plain[test] = (
                FIT(
                    folds["residuals"],
                    folds["errors"],
                    names,
                    rchi2=folds["rchi2"],
                    n_folds=folds["n_folds"],
                    half_residuals=folds["half_residuals"],
                )
                .apply(stat)
                .label_err
            )
            part = data[train]
            tested_part = data[test]
            raw_split = {
                "fold_residuals": folds["residuals"],
                "fold_errors": folds["errors"],
                "fold_rchi2": folds["rchi2"] if folds["rchi2"] is not None else np.full(len(train), np.nan),
                "fold_half_residuals": folds["half_residuals"]
                if folds["half_residuals"] is not None
                else np.full(folds["residuals"].shape, np.nan),
                "size_factors": fitted.calibration.size_factors,
                "fold_reference": reference[train],
                "fold_snr": _snr(part),
                "test_labels": stat.labels,
                "test_errors": stat.label_err,
                "test_rchi2": stat.reduced_chi2
                if stat.reduced_chi2 is not None
                else np.full(len(test), np.nan),
                "test_reference": reference[test],
                "test_snr": _snr(tested_part),
                "test_rows": np.asarray(test),
            }
            n_split = sum(
                1 for k in raw if k.startswith(f"{case}_{model_name}_s") and k.endswith("test_rows")
            )
            for name, value in raw_split.items():
                raw[f"{case}_{model_name}_s{n_split}_{name}"] = np.asarray(value, dtype=float)
        tested = np.unique(np.concatenate([t for _, t in splits]))
        delta = stat_pred[tested] - reference[tested]
        grid = {
            f"cap{c:g}": {f"r{r:g}": _stats(delta / variants[(c, r)][tested]) for r in SHARES} for c in CAPS
        }
        grid["fit_default"] = _stats(delta / learned[tested])
        grid["fit_default_without_label_term"] = _stats(delta / plain[tested])
        out[model_name] = {
            "labels": list(names),
            "n_test": int(len(tested)),
            "rmse": np.sqrt(np.mean(delta**2, axis=0)).tolist(),
            "train_seconds_without": round(seconds["without"], 2),
            "train_seconds_with": round(seconds["with"], 2),
            "train_time_ratio": round(seconds["with"] / seconds["without"], 2),
            "nn_epochs": epochs if model_name == "nn" else None,
            "size_factors": size_factors,
            "grid": grid,
        }
        if RAW_PATH:
            np.savez(RAW_PATH[0], **raw)  # after every model: partial results are kept
        row = grid["fit_default"]
        log(
            f"{case} {model_name}: default std z {row['std_z']} cov {row['coverage_1sigma']};"
            f" f {size_factors}; time {seconds}"
        )
    return out


def badness(std_z: list[float], coverage: list[float]) -> float:
    """Worst label's distance from the targets in units of their tolerance (≤ 1 meets both)."""
    s, c = np.asarray(std_z), np.asarray(coverage)
    return float(np.max(np.maximum(np.abs(s - 1) / TOLERANCE[0], np.abs(c - 0.6827) / TOLERANCE[1])))


def summary(cases: dict) -> dict:
    """Per (cap, r): the worst badness and the number of (case, model, label) misses."""
    rows = {}
    for c in CAPS:
        for r in SHARES:
            key = f"cap{c:g}_r{r:g}"
            worst, misses, per_model = 0.0, 0, {}
            for case, models in cases.items():
                for model, row in models.items():
                    stats = row["grid"][f"cap{c:g}"][f"r{r:g}"]
                    b = badness(stats["std_z"], stats["coverage_1sigma"])
                    per_model[f"{case}/{model}"] = round(b, 3)
                    worst = max(worst, b)
                    s, cov = np.asarray(stats["std_z"]), np.asarray(stats["coverage_1sigma"])
                    misses += int(np.sum((np.abs(s - 1) > 0.1) | (np.abs(cov - 0.6827) > 0.04)))
            rows[key] = {"worst_badness": round(worst, 3), "misses": misses, "badness": per_model}
    return rows


def defaults(cases: dict) -> dict:
    """The library's defaults (r per family, γ cap) and the held-out statistics they give."""
    shares, cap = calibration_module.IRREDUCIBLE_SHARE, calibration_fit._MAX_POWER
    rows = {}
    for case, models in cases.items():
        for model, row in models.items():
            stats = row["grid"]["fit_default"]
            s, c = np.asarray(stats["std_z"]), np.asarray(stats["coverage_1sigma"])
            missed = (np.abs(s - 1) > TOLERANCE[0]) | (np.abs(c - 0.6827) > TOLERANCE[1])
            rows[f"{case}/{model}"] = {
                **stats,
                "missed": [n for n, m in zip(row["labels"], missed, strict=True) if m],
            }
    return {
        "irreducible_share": shares,
        "learn_size_factor": sorted(calibration_module.LEARN_SIZE_FACTOR),
        "max_power": cap,
        "held_out": rows,
    }


PREVIOUS_SHARE = {"cannon": 0.7, "lux": 1.0, "nn": 1.0}
"""The irreducible shares before the distance term (variant ``"previous"``)."""
PREVIOUS_LABEL_TERM = frozenset({"cannon", "lux"})
"""The kinds with the label-space term before the distance term (variant ``"previous"``)."""


def _refit_split(raw, prefix: str, model: str, variant: str) -> np.ndarray:
    """Held-out calibrated errors of one split, the calibration refitted on its fold arrays.

    ``variant``: ``"learned_f"`` (the default plus the opt-in learned training-size factor,
    where half-size residuals were recorded), ``"default"`` (what ``fit`` stores now: the
    label-space term for the kinds in ``LABEL_TERM``, the distance term for those in
    ``DISTANCE_TERM``, learned f for those in ``LEARN_SIZE_FACTOR``, the family's r) or
    ``"previous"`` (the default before the distance term: the label-space term for the
    kinds in :data:`PREVIOUS_LABEL_TERM`, r from :data:`PREVIOUS_SHARE`). The distance term's folds
    are those of ``calibrated_fit`` (5 folds, seed 0), recomputed here.
    """
    residuals = raw[f"{prefix}fold_residuals"]
    rchi2 = raw[f"{prefix}fold_rchi2"]
    half = raw.get(f"{prefix}fold_half_residuals")
    names = tuple(f"label{k}" for k in range(residuals.shape[1]))
    default = variant in ("default", "learned_f")
    reference = raw[f"{prefix}fold_reference"]
    distance = None
    if default and model in calibration_cv.DISTANCE_TERM:
        folds = list(fold_indices(len(reference), calibration_module.CALIBRATION_FOLDS, 0))
        distance = TrainingDistance.from_folds(reference, reference + residuals, folds)
    calibration = FIT(
        residuals,
        raw[f"{prefix}fold_errors"],
        names,
        rchi2=None if np.all(np.isnan(rchi2)) else rchi2,
        irreducible_share=calibration_module.IRREDUCIBLE_SHARE.get(model, 1.0)
        if default
        else PREVIOUS_SHARE.get(model, 1.0),
        distance=distance,
        labels=reference + residuals
        if model in (calibration_module.LABEL_TERM if default else PREVIOUS_LABEL_TERM)
        else None,
        half_residuals=half
        if default
        and half is not None
        and (model in calibration_module.LEARN_SIZE_FACTOR or variant == "learned_f")
        and np.isfinite(half).any()
        else None,
    )
    errors = raw[f"{prefix}test_errors"]
    k = np.arange(errors.shape[1])
    cov = np.zeros((*errors.shape, errors.shape[1]))
    cov[:, k, k] = errors**2
    total = calibration.total_cov(cov, raw[f"{prefix}test_rchi2"], raw[f"{prefix}test_labels"])
    return np.sqrt(np.diagonal(total, axis1=1, axis2=2))


def recorded_runs(paths: list[Path]):
    """Yield ``(path, raw, run, case, model, splits)`` for each run in recorded ``--raw`` files."""
    for path in paths:
        with np.load(path) as archive:
            raw = {key: archive[key] for key in archive.files}
        runs = sorted({key.rsplit("_s", 1)[0] for key in raw if key.endswith("_test_rows")})
        for run in runs:
            case, model = run.split("_", 1)
            splits = sorted(
                {key[len(run) + 2 :].split("_", 1)[0] for key in raw if key.startswith(run + "_s")}
            )
            yield path, raw, run, case, model, splits


def from_raw(paths: list[Path]) -> dict:
    """Held-out std z and coverage per case and model from recorded fold arrays (``--raw``)."""
    out: dict = {}
    for path, raw, run, case, model, splits in recorded_runs(paths):
        row: dict = {}
        variants = ["default", "previous"]
        half = raw.get(f"{run}_s{splits[0]}_fold_half_residuals")
        if half is not None and np.isfinite(half).any():
            variants.append("learned_f")  # the opt-in learned training-size factor
        for variant in variants:
            z, delta = [], []
            for split in splits:
                prefix = f"{run}_s{split}_"
                d = raw[f"{prefix}test_labels"] - raw[f"{prefix}test_reference"]
                z.append(d / _refit_split(raw, prefix, model, variant))
                delta.append(d)
            row[variant] = _stats(np.concatenate(z))
        delta_all = np.concatenate(delta)
        row["rmse"] = np.sqrt(np.mean(delta_all**2, axis=0)).tolist()
        row["n_test"] = int(len(delta_all))
        row["source"] = str(path.name)
        out.setdefault(case, {})[model] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--cases", default="giants,lines")
    parser.add_argument("--models", default="cannon,lux,nn")
    parser.add_argument("--nn-epochs", type=int, default=300)
    parser.add_argument("--merge", nargs="+", type=Path)
    parser.add_argument(
        "--from-raw",
        nargs="+",
        type=Path,
        help="refit the calibration (current code) on recorded fold arrays (--raw files) and"
        " write the held-out statistics to --out",
    )
    parser.add_argument("--note", default="", help="with --merge: a note recorded in the JSON")
    parser.add_argument("--raw", type=Path, default=None, help="also save fold residuals (.npz)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "calibration_size_factor.json"
    )
    args = parser.parse_args()
    if args.from_raw:
        cases = from_raw(args.from_raw)
        result = {"note": args.note, "refit_from": [str(p) for p in args.from_raw], "cases": cases}
        for case, models in cases.items():
            for model, row in models.items():
                log(f"{case} {model}: {row['default']} (previous {row['previous']})")
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = {"runs": [p["run"] for p in parts], "cases": {}, "setup": {}}
        for part in parts:
            merged["cases"].update(part["cases"])
            merged["setup"].update(part["setup"])
        merged["summary"] = summary(merged["cases"])
        merged["defaults"] = defaults(merged["cases"])
        if args.note:
            merged["note"] = args.note
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
        return
    record = start(args, THREADS)
    if args.raw is not None:
        RAW_PATH.append(args.raw)
    models = args.models.split(",")
    results: dict = {"run": record, "cases": {}, "setup": {}}
    raw: dict = {}
    cases = args.cases.split(",")
    if "giants" in cases:
        giants, splits = giants_cv_splits()
        results["setup"]["giants"] = {"file": "apogee/giants_100px.npz", "outer_folds": 5, "seed": 2026}
        results["cases"]["giants"] = run_case(
            "giants", splits, giants, giants.label_names, models, args.nn_epochs, raw
        )
    if "lines" in cases:
        n_train, n_test = 2000, 1000
        data = simulate_lines(n_train + n_test, population="dwarfs", seed=15).dataset
        log(f"line-list simulator: {data}")
        splits = [(np.arange(n_train), np.arange(n_train, n_train + n_test))]
        results["setup"]["lines"] = {
            "population": "dwarfs",
            "n_train": n_train,
            "n_test": n_test,
            "n_pixels": int(data.n_pixels),
            "seed": 15,
            "nn_epochs": args.nn_epochs,
        }
        results["cases"]["lines"] = run_case(
            "lines", splits, data, data.label_names, models, args.nn_epochs, raw
        )
    results["run"] = finish(record)
    results["summary"] = summary(results["cases"])
    if args.raw is not None:
        np.savez(args.raw, **raw)
        log(f"wrote {args.raw}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
