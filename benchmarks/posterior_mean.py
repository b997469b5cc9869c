"""Posterior-mean test step at 5 labels × 7,214 px: speed, accuracy and calibration.

Run ``python benchmarks/posterior_mean.py [--quick]``; writes
``benchmarks/results/posterior_mean.json``.

Two parts:

* **lines**: a quadratic Cannon trained on ``simulate_lines`` dwarfs (5 labels: teff,
  logg, fe_h, alpha_fe, vmacro; 7,214 px; S/N 60–250; 2,000 training / 1,000 held-out
  stars). The line-list physics is not polynomial, so the model misfits as it would
  on real spectra. Measured: the MAP step; the posterior mean (KDE prior) by the grid
  and by Laplace importance sampling at the same temperature (spectra/s after
  compilation, accuracy, effective sample sizes); and the default
  ``infer_labels(estimator="mean", prior="kde", temperature="auto", train=...)``
  (what ``starlabel infer --estimator mean --prior kde --temperature auto`` runs):
  the temperature chosen, the time of its cross-validation, RMSE per label against
  the MAP, std of z and the share with |z| < 1 on the held-out stars.
* **giants**: the 500 shared APOGEE giants (3 labels, 100 px, the grid), 5-fold
  cross-validation of the same default command: std of z and coverage per label.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402

from starlabel.data import read_dataset, shared_data_dir, simulate_lines  # noqa: E402
from starlabel.models import (  # noqa: E402
    infer_labels,
    infer_posterior_mean,
    select_temperature,
    unfitted_configuration,
)
from starlabel.models.cannon import Cannon  # noqa: E402


def _summary(result, truth) -> dict:
    z = (result.labels - truth) / result.label_err
    return {
        "rmse": np.sqrt(np.nanmean((result.labels - truth) ** 2, axis=0)).round(5).tolist(),
        "z_std": np.nanstd(z, axis=0).round(3).tolist(),
        "coverage_1sigma": np.nanmean(np.abs(z) < 1, axis=0).round(3).tolist(),
        "flagged": int(np.sum(result.flags != 0)),
        "err_median": np.nanmedian(result.label_err, axis=0).round(5).tolist(),
    }


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def lines(n_train: int, n_test: int, n_pixels: int | None) -> dict:
    sim = simulate_lines(n_train + n_test, population="dwarfs", n_pixels=n_pixels, seed=1)
    data = sim.dataset
    train, test = data[:n_train], data[n_train:]
    truth = test.labels
    fitted = Cannon(data.label_names).fit(train, calibrate=False)
    log("lines: trained", data.flux.shape)
    out: dict = {
        "n_train": n_train,
        "n_test": n_test,
        "n_pixels": int(data.n_pixels),
        "labels": list(data.label_names),
    }
    best = fitted.infer(test, calibrate=False)
    best, seconds = _timed(fitted.infer, test, calibrate=False)
    out["map"] = {**_summary(best, truth), "spectra_per_s": round(n_test / seconds, 1)}
    log("map", out["map"])

    # What `starlabel infer --estimator mean --prior kde --temperature auto` runs.
    selection, cv_seconds = _timed(
        select_temperature, unfitted_configuration(fitted, None), train, prior="kde"
    )
    auto, seconds = _timed(
        infer_labels,
        fitted,
        test,
        estimator="mean",
        prior="kde",
        temperature=selection.temperature,
        error_calibration=selection.calibration,
    )
    summary = _summary(auto, truth)
    out["auto"] = {
        **summary,
        "cv_seconds": round(cv_seconds, 1),
        "infer_seconds": round(seconds, 1),
        "temperature": selection.temperature,
        "temperatures": list(selection.temperatures),
        "calibrated_crps": selection.calibrated_crps.round(5).tolist(),
        "cv_rmse": selection.rmse.round(5).tolist(),
        "calibration": selection.calibration.describe(),
        "rmse_vs_map": (np.asarray(summary["rmse"]) / np.asarray(out["map"]["rmse"])).round(4).tolist(),
        "load_avg": os.getloadavg()[0],
    }
    log("auto", out["auto"])
    temperature = selection.temperature
    for method in ("importance", "grid"):
        kwargs = {"prior": "kde", "temperature": temperature, "method": method}
        infer_posterior_mean(fitted, test[:256], **kwargs)  # compile for chunks of 256
        result, seconds = _timed(infer_posterior_mean, fitted, test, **kwargs)
        out[method] = {
            **_summary(result, truth),
            "spectra_per_s": round(n_test / seconds, 1),
            "n_eff_percentiles_0_10_50": np.percentile(result.extra["n_eff"], [0, 10, 50]).round(1).tolist(),
            "load_avg": os.getloadavg()[0],
        }
        log(method, out[method])
    return out


def giants() -> dict:
    path = shared_data_dir() / "apogee" / "giants_100px.npz"
    data = read_dataset(path, labels=("teff", "logg", "m_h"))
    truth = data.labels
    folds = np.array_split(np.random.default_rng(0).permutation(data.n_stars), 5)
    labels, errors, best = np.zeros_like(truth), np.zeros_like(truth), np.zeros_like(truth)
    temperatures = []
    for held in folds:
        train = data[np.setdiff1d(np.arange(data.n_stars), held)]
        fitted = Cannon(data.label_names).fit(train, calibrate=False)
        best[held] = fitted.infer(data[held], calibrate=False).labels
        result = infer_labels(
            fitted, data[held], estimator="mean", prior="kde", temperature="auto", train=train
        )
        labels[held], errors[held] = result.labels, result.label_err
        temperatures.append(result.meta["temperature"])
        log("giants fold", result.meta["temperature"])
    z = (labels - truth) / errors
    return {
        "temperatures": temperatures,
        "rmse": np.sqrt(np.mean((labels - truth) ** 2, axis=0)).round(4).tolist(),
        "rmse_map": np.sqrt(np.mean((best - truth) ** 2, axis=0)).round(4).tolist(),
        "z_std": z.std(axis=0).round(3).tolist(),
        "coverage_1sigma": np.mean(np.abs(z) < 1, axis=0).round(3).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="600 + 300 stars (a smoke run).")
    parser.add_argument("--part", choices=("all", "lines", "giants"), default="all")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "posterior_mean.json"))
    args = parser.parse_args()
    results: dict = {
        "load_avg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.part in ("all", "lines"):
        results["lines"] = lines(600, 300, None) if args.quick else lines(2000, 1000, None)
    if args.part in ("all", "giants"):
        results["giants"] = giants()
    results["load_avg_end"] = os.getloadavg()
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(results)
    path.write_text(json.dumps(previous, indent=1) + "\n")
    log("wrote", path)


if __name__ == "__main__":
    main()
