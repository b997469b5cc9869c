"""Calibrated label errors on held-out stars: before (``--no-calibrate``) vs after (default).

For every model family (Cannon, Lux, NN) with its default configuration, on data no
family can describe exactly:

* the 500 real APOGEE giants (100 pixels; labels teff, logg, m_h), 5-fold
  cross-validated: every star is predicted by models trained without it;
* the line-list simulator (``starlabel.data.simulate_lines``, dwarfs, 5 labels teff,
  logg, fe_h, alpha_fe, vmacro, 7,214 pixels, S/N 60–250): 2,000 training and 1,000
  held-out test stars.

Each training set is fitted twice, ``calibrate=False`` (the statistical errors, as
with ``starlabel train --no-calibrate``) and ``calibrate=True`` (the default: 5-fold
cross-validation inside the training set), both timed. The table gives, per label, the
spread std(z) and the share with |z| < 1 of z = (inferred − reference)/``<label>_err``
on the held-out stars, and the RMSE of both fits' labels. Training is timed in wall and
in this process's CPU seconds; on a busy machine (``machine.busy``: 1-minute load above
0.7 × CPUs) compare the CPU seconds. The JSON is rewritten after every model, so a run
cut short keeps the models it finished.

Run:  python benchmarks/calibration.py [--quick] [--out benchmarks/results/calibration.json]
      (``--cases giants`` and ``--cases lines`` may run as two processes writing two
      files; ``--merge A.json B.json`` then joins them into ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from _common import giants_cv_splits, git_commit, log

from starlabel.data import simulate_lines
from starlabel.models.cannon import Cannon
from starlabel.models.lux import Lux
from starlabel.models.nn import NNRegressor

MODELS = {
    "cannon": lambda names, quick: Cannon(names, order=2),
    "lux": lambda names, quick: Lux(names, latent_size=8),
    "nn": lambda names, quick: NNRegressor(names, epochs=60 if quick else NN_EPOCHS[0]),
}
"""The default configurations (``starlabel train cannon|lux|nn``); ``--quick`` shortens the NN."""
NN_EPOCHS = [300]
"""The NN's epochs (its default, 300); ``--nn-epochs`` changes it and the JSON records it."""


def _stats(residual: np.ndarray, errors: np.ndarray) -> dict[str, list[float]]:
    z = residual / errors
    return {
        "std_z": np.std(z, axis=0).round(4).tolist(),
        "coverage_1sigma": np.mean(np.abs(z) < 1, axis=0).round(4).tolist(),
        "rmse": np.sqrt(np.mean(residual**2, axis=0)).tolist(),
    }


def run_case(name: str, splits, reference: np.ndarray, names, quick: bool, data, models, save) -> dict:
    """Fit plain and calibrated models on each (train, test) split; held-out statistics."""
    out: dict = {}
    for model_name in models:
        factory = MODELS[model_name]
        load_before = os.getloadavg()
        pred = {False: np.full(reference.shape, np.nan), True: np.full(reference.shape, np.nan)}
        errs = {False: np.full(reference.shape, np.nan), True: np.full(reference.shape, np.nan)}
        seconds = {False: 0.0, True: 0.0}
        cpu = {False: 0.0, True: 0.0}  # this process's CPU seconds: fair side by side on a busy box
        calibrations = []
        for train, test in splits:
            for calibrate in (False, True):
                start, start_cpu = time.perf_counter(), time.process_time()
                fitted = factory(names, quick).fit(data[train], calibrate=calibrate)
                seconds[calibrate] += time.perf_counter() - start
                cpu[calibrate] += time.process_time() - start_cpu
                result = fitted.infer(data[test])
                pred[calibrate][test], errs[calibrate][test] = result.labels, result.label_err
                if calibrate:
                    calibrations.append(fitted.calibration.table())
        tested = np.unique(np.concatenate([t for _, t in splits]))
        before = _stats(pred[False][tested] - reference[tested], errs[False][tested])
        after = _stats(pred[True][tested] - reference[tested], errs[True][tested])
        out[model_name] = {
            "labels": list(names),
            "n_test": int(len(tested)),
            "before": before,
            "after": after,
            "max_label_change": float(np.nanmax(np.abs(pred[True] - pred[False])[tested])),
            "train_seconds_without": round(seconds[False], 2),
            "train_seconds_with": round(seconds[True], 2),
            "train_time_ratio": round(seconds[True] / seconds[False], 2),
            "train_cpu_seconds_without": round(cpu[False], 2),
            "train_cpu_seconds_with": round(cpu[True], 2),
            "train_cpu_ratio": round(cpu[True] / cpu[False], 2),
            "load_average_before": load_before,
            "nn_epochs": NN_EPOCHS[0] if model_name == "nn" and not quick else None,
            "load_average_after": os.getloadavg(),
            "calibrations": calibrations,
        }
        log(
            f"{name} {model_name}: before {before['std_z']} after {after['std_z']} {after['coverage_1sigma']}"
        )
        save(out)
    return out


def _name(model: str, row: dict) -> str:
    """The model's name in the table; rows kept from an earlier run (``"stale"``) say so."""
    return f"{model} (earlier run, stale)" if row.get("stale") else model


def table(results: dict) -> str:
    """The issue's table: std z, coverage and RMSE per label and model, before → after."""
    lines = [
        "| data | model | label | std z before → after | |z|<1 before → after | RMSE before → after |",
        "|---|---|---|---|---|---|",
    ]
    for case, models in results["cases"].items():
        for model, row in models.items():
            for k, label in enumerate(row["labels"]):
                b, a = row["before"], row["after"]
                lines.append(
                    f"| {case} | {_name(model, row)} | {label} | {b['std_z'][k]:.2f} → {a['std_z'][k]:.2f}"
                    f" | {b['coverage_1sigma'][k]:.1%} → {a['coverage_1sigma'][k]:.1%}"
                    f" | {b['rmse'][k]:.4g} → {a['rmse'][k]:.4g} |"
                )
    lines += [
        "",
        "| data | model | train s without | with | ratio | CPU s without | with | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, models in results["cases"].items():
        for model, row in models.items():
            lines.append(
                f"| {case} | {_name(model, row)} | {row['train_seconds_without']} | {row['train_seconds_with']}"
                f" | {row['train_time_ratio']} | {row.get('train_cpu_seconds_without', '—')}"
                f" | {row.get('train_cpu_seconds_with', '—')} | {row.get('train_cpu_ratio', '—')} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer stars/pixels and NN epochs")
    parser.add_argument("--cases", default="giants,lines", help="comma-separated: giants, lines")
    parser.add_argument("--models", default="cannon,lux,nn", help="comma-separated model families")
    parser.add_argument("--merge", nargs="+", type=Path, help="join earlier runs' JSON files into --out")
    parser.add_argument("--note", default="", help="with --merge: the merged file's note")
    parser.add_argument("--nn-epochs", type=int, default=300, help="NN training epochs (default 300)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration.json")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = {**parts[0], "cases": {}, "runs": []}
        for part in parts:
            # A merged file brings its runs along; a single run is its machine record.
            merged["runs"] += part.get("runs") or [part["machine"]]
            for case, rows in part["cases"].items():
                for row in rows.values():  # each row names the commit it was measured at
                    row.setdefault("commit", part["machine"].get("commit"))
                merged["cases"].setdefault(case, {}).update(rows)
            merged.update({k: v for k, v in part.items() if k.endswith("_setup")})
        if args.note:
            merged["note"] = args.note
        merged["table_markdown"] = table(merged)
        print(merged["table_markdown"])
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
        return
    models = args.models.split(",")
    NN_EPOCHS[0] = args.nn_epochs
    results: dict = {
        "nn_epochs": args.nn_epochs,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg(),
            # Busy as benchmarks/_common.py counts it: 1-minute load above 0.7 × CPUs. Wall
            # seconds then include waiting for other jobs; compare the CPU seconds.
            "busy": os.getloadavg()[0] > 0.7 * (os.cpu_count() or 1),
            **git_commit(),  # the commit the figures are from (and whether the tree was dirty)
        },
        "quick": args.quick,
        "cases": {},
    }
    cases = args.cases.split(",")

    def save(case: str):
        def write(partial: dict) -> None:
            results["cases"][case] = partial
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")

        return write

    if "giants" in cases:
        giants, splits = giants_cv_splits()
        log("real giants: 5-fold cross-validation over 500 stars")
        results["cases"]["giants"] = run_case(
            "giants", splits, giants.labels, giants.label_names, args.quick, giants, models, save("giants")
        )
    if "lines" in cases:
        n_train, n_test, n_pixels = (600, 300, 1500) if args.quick else (2000, 1000, None)
        sim = simulate_lines(n_train + n_test, population="dwarfs", n_pixels=n_pixels, seed=15)
        data = sim.dataset
        log(f"line-list simulator: {data}")
        splits = [(np.arange(n_train), np.arange(n_train, n_train + n_test))]
        results["lines_setup"] = {
            "population": "dwarfs",
            "n_train": n_train,
            "n_test": n_test,
            "n_pixels": int(data.n_pixels),
            "snr": [60.0, 250.0],
            "seed": 15,
        }
        results["cases"]["lines"] = run_case(
            "lines", splits, data.labels, data.label_names, args.quick, data, models, save("lines")
        )
    results["machine"]["load_average_end"] = os.getloadavg()
    results["machine"]["busy"] |= os.getloadavg()[0] > 0.7 * (os.cpu_count() or 1)
    text = table(results)
    print(text)
    results["table_markdown"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
