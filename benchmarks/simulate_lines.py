"""Speed of ``simulate_lines`` and the quadratic Cannon's misfit to its spectra.

1. **Speed**: spectra per second at the 7,214-pixel APOGEE DR12 grid, for the default
   options (giants, no RV, no binaries) and with RVs (σ 30 km/s) and 30 % binaries.
   Each configuration is warmed up on exactly the timed shape (same ``n_stars``, same
   pixel layout), then timed ``--repeats`` times; wall and process CPU seconds are
   both recorded, with the 1-minute load average before and after (the machine is
   shared, so wall time depends on what else runs). BLAS and XLA are pinned to one
   thread each.
2. **Misfit**: a quadratic Cannon in (teff, logg, fe_h, alpha_fe, vmacro) trained on
   ``--n-train`` simulated giants; for ``--n-test`` held-out stars, its flux at the
   true labels is compared with the noise-free line spectrum. Where the RMS of that
   difference exceeds the flux errors, the model cannot represent the simulator.

Usage::

    python benchmarks/simulate_lines.py [--n-stars 2048] [--n-train 1000] [--out ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import log  # noqa: E402

from starlabel.data import LINE_LABELS, simulate_lines  # noqa: E402
from starlabel.models.cannon import Cannon  # noqa: E402


def time_config(n_stars: int, repeats: int, **options: object) -> dict[str, object]:
    """Warm up on the exact shape, then time ``repeats`` runs."""
    simulate_lines(n_stars, seed=999, **options)  # compiles this layout and chunk shape
    walls, cpus, loads = [], [], []
    for r in range(repeats):
        load_before = os.getloadavg()[0]
        start, cpu = time.perf_counter(), time.process_time()
        sim = simulate_lines(n_stars, seed=r, **options)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        loads.append((load_before, os.getloadavg()[0]))
        assert sim.dataset.n_pixels == 7214
    best = min(walls)
    return {
        "options": {k: v for k, v in options.items()},
        "n_stars": n_stars,
        "n_pixels": 7214,
        "wall_seconds": [round(w, 3) for w in walls],
        "cpu_seconds": [round(c, 3) for c in cpus],
        "load_average_1min_before_after": [[round(a, 2), round(b, 2)] for a, b in loads],
        "spectra_per_second_best_wall": round(n_stars / best, 1),
        "spectra_per_second_median_wall": round(n_stars / float(np.median(walls)), 1),
        "spectra_per_cpu_second_best": round(n_stars / min(cpus), 1),
    }


def misfit(n_train: int, n_test: int) -> dict[str, object]:
    """Quadratic Cannon trained on simulated giants, evaluated at the true labels."""
    train = simulate_lines(n_train, seed=1)
    test = simulate_lines(n_test, seed=2)
    start = time.perf_counter()
    fitted = Cannon(label_names=LINE_LABELS, order=2).fit(train.dataset)
    fit_s = time.perf_counter() - start
    predicted = fitted.predict_flux(test.dataset.labels)
    lines_only = test.true_flux / test.continuum  # the label-dependent part, without δ
    rms = np.sqrt(np.mean((predicted - lines_only) ** 2, axis=0))  # (pixels,)
    noise = np.nanmedian(np.where(test.dataset.mask, np.nan, test.flux_err), axis=0)
    depth = np.median(1.0 - lines_only, axis=0)
    ratio = rms / noise
    strong, moderate, clean = depth > 0.3, (depth > 0.1) & (depth <= 0.3), depth < 0.01
    worst = int(np.argmax(rms))
    return {
        "model": "quadratic Cannon in " + ",".join(LINE_LABELS) + " (21 terms), default fit",
        "population": "giants",
        "n_train": n_train,
        "n_test": n_test,
        "snr_range": [60, 250],
        "fit_seconds": round(fit_s, 1),
        "definition": "rms over test stars of (Cannon flux at true labels - noise-free line flux), per pixel,"
        " divided by the pixel's median flux_err",
        "pixels_strong_lines_depth_gt_0.3": int(strong.sum()),
        "median_misfit_over_noise_strong": round(float(np.median(ratio[strong])), 2),
        "median_misfit_over_noise_depth_0.1_to_0.3": round(float(np.median(ratio[moderate])), 2),
        "median_misfit_over_noise_continuum_depth_lt_0.01": round(float(np.median(ratio[clean])), 2),
        "fraction_pixels_misfit_gt_noise": round(float(np.mean(ratio > 1)), 3),
        "fraction_strong_pixels_misfit_gt_2x_noise": round(float(np.mean(ratio[strong] > 2)), 3),
        "max_misfit_rms": round(float(rms[worst]), 4),
        "max_misfit_wavelength": round(float(test.dataset.wavelength[worst]), 2),
        "median_noise_strong": round(float(np.median(noise[strong])), 4),
        "cannon_scatter_median_strong": round(float(np.median(fitted.scatter[strong])), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "simulate_lines.json")
    args = parser.parse_args()

    log("speed: defaults")
    speed = [time_config(args.n_stars, args.repeats)]
    log("speed: rv + binaries", speed[-1]["spectra_per_second_best_wall"])
    speed.append(time_config(args.n_stars, args.repeats, rv_scale=30.0, binary_fraction=0.3))
    log("misfit", speed[-1]["spectra_per_second_best_wall"])
    fit = misfit(args.n_train, args.n_test)
    log("done", fit)

    result = {
        "benchmark": "simulate_lines",
        "speed": speed,
        "target_spectra_per_second": 1000,
        "misfit": fit,
        "note": "wall-clock on a 2-core machine shared with other jobs (see the load averages);"
        " cpu_seconds = this process, all threads",
        "threads": {
            "XLA_FLAGS": os.environ["XLA_FLAGS"],
            "OPENBLAS_NUM_THREADS": os.environ["OPENBLAS_NUM_THREADS"],
        },
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
