"""Test step 2.0 against its targets (issue 9): priors + posterior means, RV, binaries, speed.

* Real giants (500 shared APOGEE stars, 100 pixels), 5-fold cross-validation: the
  quadratic Cannon's MAP test step against the posterior mean with a kernel-density
  prior of the training labels, the temperature chosen per outer fold by 5-fold
  cross-validation *inside* that fold's training set (nested; test stars never seen).
  Target: RMSE ≥ 20% lower on every label, std of z in [0.85, 1.15].
* Radial velocity: smooth synthetic spectra on the 7214-pixel APOGEE grid, S/N 100,
  v ~ U(−30, 30) km/s, a Cannon trained on rest-frame spectra. Target: |error| < 0.5 km/s.
* Binaries: the same grid, mixing ratio 0.3–0.7 and Δv 10–50 km/s (target ≥ 90%
  flagged) and single stars (≤ 5% flagged); plus a sweep over w 0.2–0.8, Δv 0–50.
* Speed: grid posterior-mean test step for 3 labels, spectra/s after compilation
  (target ≥ 200/s on 2 cores), at 100 and 7214 pixels.
* The real double-lined visits of 2M06133561+2433362.

The smooth simulator is the one the tests use (``tests/test_teststep_sim.py``). Load
average is recorded: this machine is shared and timings move with it.

Run on a quiet machine (about 25 min on 2 cores; ``--skip-giants`` about 5 min)::

    .venv/bin/python benchmarks/test_step.py        # writes benchmarks/results/test_step.json

Check that it runs (any machine, not for quoting)::

    .venv/bin/python benchmarks/test_step.py --quick --allow-busy --out /tmp/test_step.json

Speed is timed after a warm-up call on exactly the timed spectra (same batch shapes),
so no variant pays a compilation the next one reuses. Threads, load average and
commit are recorded (``_common.py``).
"""

from __future__ import annotations

from _common import pin_threads  # isort: skip  (before numpy: it pins the threads)

THREADS = pin_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from starlabel.data import SpectralDataset, read_dataset, shared_data_dir  # noqa: E402
from starlabel.models import (  # noqa: E402
    infer_posterior_mean,
    rescale_uncertainty,
    select_temperature,
)
from starlabel.models._binary import fit_binary  # noqa: E402
from starlabel.models._nuisance import infer_with_nuisance  # noqa: E402
from starlabel.models.cannon import Cannon  # noqa: E402
from test_teststep_sim import apogee_wavelength, draw_labels, simulate_smooth, template_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "test_step.json"


def _rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((a - b) ** 2, axis=0))


def giants_cv(quick: bool) -> dict:
    """Nested cross-validation: Gaussian and per-star Student likelihoods, CRPS and log score."""
    configs = (("student", "crps"), ("gaussian", "crps"), ("student", "log"))
    return {f"{likelihood}_{score}": _giants_cv(quick, likelihood, score) for likelihood, score in configs}


def _giants_cv(quick: bool, likelihood: str, score: str) -> dict:
    folder = shared_data_dir()
    if folder is None:
        return {"skipped": "shared data not found"}
    data = read_dataset(folder / "apogee" / "giants_100px.npz", labels=("teff", "logg", "m_h"))
    names, truth = data.label_names, data.labels
    folds = np.array_split(np.random.default_rng(0).permutation(data.n_stars), 5)
    temps = (2.0, 4.0, 8.0) if quick else (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
    inner = 3 if quick else 5
    best, best_err = np.zeros_like(truth), np.zeros_like(truth)
    mean, mean_err = np.zeros_like(truth), np.zeros_like(truth)
    calibrated_err = np.zeros_like(truth)
    chosen, scales, start = [], [], time.perf_counter()
    for held in folds:
        rest = np.setdiff1d(np.arange(data.n_stars), held)
        selection = select_temperature(
            Cannon(names),
            data[rest],
            prior="kde",
            temperatures=temps,
            n_folds=inner,
            score=score,
            likelihood=likelihood,
        )
        chosen.append(selection.temperature)
        # The model's own MAP labels, like for like with its posterior means below.
        fitted = Cannon(names).fit(data[rest], bias_correction=False)
        result = fitted.infer(data[held])
        best[held], best_err[held] = result.labels, result.label_err
        result = infer_posterior_mean(
            fitted, data[held], prior="kde", temperature=selection.temperature, likelihood=likelihood
        )
        mean[held], mean_err[held] = result.labels, result.label_err
        # the widths, calibrated by the factor the same inner cross-validation measured
        calibrated_err[held] = rescale_uncertainty(result, selection.width_scale).label_err
        scales.append(selection.width_scale.tolist())
    rmse_map, rmse_mean = _rmse(best, truth), _rmse(mean, truth)
    z_map, z_mean = (best - truth) / best_err, (mean - truth) / mean_err
    z_calibrated = (mean - truth) / calibrated_err
    return {
        "likelihood": likelihood,
        "score": score,
        "labels": list(names),
        "temperatures_tried": list(temps),
        "inner_folds": inner,
        "temperature_per_fold": chosen,
        "rmse_map": rmse_map.tolist(),
        "rmse_mean": rmse_mean.tolist(),
        "rmse_reduction": (1.0 - rmse_mean / rmse_map).tolist(),
        "z_std_map": z_map.std(axis=0).tolist(),
        "z_std_mean": z_mean.std(axis=0).tolist(),
        "z_robust_std_mean": (1.4826 * np.median(np.abs(z_mean), axis=0)).tolist(),
        "width_scale_per_fold": scales,
        "z_std_mean_calibrated": z_calibrated.std(axis=0).tolist(),
        "z_robust_std_mean_calibrated": (1.4826 * np.median(np.abs(z_calibrated), axis=0)).tolist(),
        "target": "reduction >= 0.20 every label; z_std in [0.85, 1.15]",
        "seconds": time.perf_counter() - start,
    }


def rv(quick: bool, fitted) -> dict:
    n = 16 if quick else 60
    rng = np.random.default_rng(7)
    v = rng.uniform(-30.0, 30.0, n)
    data, truth, _ = simulate_smooth(n, v=v, snr=100.0, seed=8)
    start = time.perf_counter()
    result = infer_with_nuisance(fitted, data, fit_rv=True)
    seconds = time.perf_counter() - start
    error = result.extra["rv"] - v
    z = (result.labels - truth) / result.label_err
    return {
        "n": n,
        "snr": 100.0,
        "pixels": data.n_pixels,
        "max_abs_error_kms": float(np.max(np.abs(error))),
        "rms_error_kms": float(np.sqrt(np.mean(error**2))),
        "median_rv_err_kms": float(np.median(result.extra["rv_err"])),
        "pull_std": float(np.std(error / result.extra["rv_err"])),
        "label_z_std": z.std(axis=0).tolist(),
        "target": "max |error| < 0.5 km/s",
        "seconds_incl_compile": seconds,
    }


def _mix(lines, wavelength, rng, n, w, dv):
    primary, secondary = draw_labels(rng, n), draw_labels(rng, n)
    secondary[:, 2] = primary[:, 2]
    v1 = rng.uniform(-20.0, 20.0, n)
    flux = w[:, None] * lines.flux(primary, wavelength, v1) + (1 - w[:, None]) * lines.flux(
        secondary, wavelength, v1 + dv
    )
    err = np.full_like(flux, 0.01)
    return SpectralDataset(flux + rng.normal(size=flux.shape) * err, flux_err=err, wavelength=wavelength)


def binaries(quick: bool, fitted, lines) -> dict:
    n = 20 if quick else 60
    rng = np.random.default_rng(9)
    wavelength = apogee_wavelength()
    w = rng.uniform(0.3, 0.7, n)
    dv = rng.choice([-1.0, 1.0], n) * rng.uniform(10.0, 50.0, n)
    target = _mix(lines, wavelength, rng, n, w, dv)
    singles, _, _ = simulate_smooth(n, v=rng.uniform(-20, 20, n), snr=100.0, seed=10)
    start = time.perf_counter()
    flagged = fit_binary(fitted, target).extra["binary"]
    single_flags = fit_binary(fitted, singles).extra["binary"]
    seconds = time.perf_counter() - start
    out = {
        "n": n,
        "flagged_binaries_w0.3-0.7_dv10-50": float(flagged.mean()),
        "flagged_singles": float(single_flags.mean()),
        "target": ">= 0.90 binaries, <= 0.05 singles",
        "seconds_incl_compile": seconds,
    }
    if not quick:
        sweep = []
        for w_lo, w_hi in ((0.2, 0.3), (0.7, 0.8)):
            for dv_lo, dv_hi in ((0.0, 5.0), (5.0, 10.0), (10.0, 50.0)):
                ws = rng.uniform(w_lo, w_hi, 20)
                dvs = rng.choice([-1.0, 1.0], 20) * rng.uniform(dv_lo, dv_hi, 20)
                got = fit_binary(fitted, _mix(lines, wavelength, rng, 20, ws, dvs)).extra["binary"]
                sweep.append({"w": [w_lo, w_hi], "dv": [dv_lo, dv_hi], "flagged": float(got.mean())})
        out["sweep"] = sweep
    return out


def speed(fitted_giants, giants, fitted_smooth) -> dict:
    out = {}
    cases = [("100px_giants", fitted_giants, giants)] if giants is not None else []
    smooth, _, _ = simulate_smooth(1024, snr=100.0, seed=12)
    cases.append(("7214px", fitted_smooth, smooth))
    for name, fitted, data in cases:
        reps = int(np.ceil(1024 / data.n_stars))
        data = SpectralDataset(
            np.tile(data.flux, (reps, 1))[:1024],
            ivar=np.tile(data.ivar, (reps, 1))[:1024],
            wavelength=data.wavelength,
        )
        for likelihood in ("gaussian", "student"):
            # Warm up on exactly the timed spectra: every batch shape the timed call
            # uses is compiled here, whatever the chunking inside.
            start = time.perf_counter()
            infer_posterior_mean(fitted, data, prior="kde", temperature=4.0, likelihood=likelihood)
            first_s = time.perf_counter() - start
            times = []
            for _ in range(3):
                start = time.perf_counter()
                infer_posterior_mean(fitted, data, prior="kde", temperature=4.0, likelihood=likelihood)
                times.append(time.perf_counter() - start)
            seconds = float(np.median(times))
            out[f"{name}_{likelihood}"] = {
                "spectra_per_s": 1024 / seconds,
                "seconds_median_of_3": seconds,
                "first_call_s_incl_compile": first_s,
                "target": ">= 200/s",
            }
    return out


def real_visits() -> dict:
    folder = shared_data_dir()
    if folder is None:
        return {"skipped": "shared data not found"}
    visits = np.load(folder / "apogee" / "thepayne_visits_2M06133561+2433362.npz")
    wavelength = np.load(folder / "apogee" / "thepayne_apogee_wavelength.npz")["wavelength"]
    flux, err = visits["spectra"], visits["spec_errs"]
    model = template_model(flux[2], (err[2] < 0.05) & (flux[2] > 0.2))
    data = SpectralDataset(flux, flux_err=err, wavelength=wavelength, ids=["visit0", "visit1", "visit2"])
    result = fit_binary(model, data, shared=("depth",), v_max=100.0, dv_max=200.0, dv_step=3.0)
    return {
        "template": "visit 2 (lines blended), one line-depth label",
        "binary": result.extra["binary"].tolist(),
        "dv_kms": result.extra["binary_dv"].tolist(),
        "w": result.extra["binary_w"].tolist(),
        "delta_bic": result.extra["delta_bic"].tolist(),
        "autocorrelation_side_peaks_kms": [28 * 4.1418, 13 * 4.1418, None],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples and fewer temperatures")
    parser.add_argument("--skip-giants", action="store_true", help="skip the (slow) nested cross-validation")
    parser.add_argument("--out", type=Path, default=RESULTS)
    _common.add_arguments(parser)
    args = parser.parse_args()
    run_record = _common.start(args, THREADS)
    report: dict = {
        "run": run_record,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "jax": jax.__version__,
        "quick": args.quick,
    }
    report["giants_cv"] = giants_cv(args.quick) if not args.skip_giants else {"skipped": "--skip-giants"}
    print(json.dumps(report["giants_cv"], indent=1))
    train, _, lines = simulate_smooth(400, snr=100.0, seed=1)
    smooth_model = Cannon(train.label_names).fit(train)
    report["rv"] = rv(args.quick, smooth_model)
    print(json.dumps(report["rv"], indent=1))
    report["binaries"] = binaries(args.quick, smooth_model, lines)
    print(json.dumps(report["binaries"], indent=1))
    folder = shared_data_dir()
    giants = fitted_giants = None
    if folder is not None:
        giants = read_dataset(folder / "apogee" / "giants_100px.npz", labels=("teff", "logg", "m_h"))
        fitted_giants = Cannon(giants.label_names).fit(giants[:400])
        giants = giants[400:]
    report["speed"] = speed(fitted_giants, giants, smooth_model)
    print(json.dumps(report["speed"], indent=1))
    report["real_visits"] = real_visits()
    print(json.dumps(report["real_visits"], indent=1))
    report["machine"]["load_avg_end"] = os.getloadavg()
    report["run"] = _common.finish(run_record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
