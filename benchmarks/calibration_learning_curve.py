"""How the Cannon's held-out errors shrink with the training set: the learning curve behind f.

The error calibration learns its widths from fold models trained on (K−1)/K of the
training stars and extrapolates to the final model, trained on all N, with the
training-size factor f. This script measures the curve that extrapolation must follow:
the Cannon (default configuration, ``calibrate=False``) is trained on random subsets of
n stars of one training pool, for n from N/4 to 2N, and every model is tested on the
same 1,000 held-out stars. Per label it records the mean squared error (each model's
squared residuals above their 99th percentile clipped to it, as the calibration does)
and its ratio to the mean over the models of the largest n ≤ N that the calibration
sees, so the shape of MSE(n) can be compared with the forms f may assume
(``MSE = V + c/n``; ``MSE = V + c n^−β``).

Data: the line-list simulator (``simulate_lines``, dwarfs, 5 labels, 7,214 pixels, S/N
60–250), seed 15 as ``benchmarks/calibration.py``: its first 2,000 stars are the
training pool used there and the next 1,000 the test stars; a second draw (seed 16)
extends the pool to 4,000 stars for n > 2,000. The subsets of n = 1,600 are the 5
fold training sets and those of n = 1,000 the 2 half-size sets of the calibration
(``fold_indices``, seeds 0 and 1), so its own two points are on the curve.

Run:  python benchmarks/calibration_learning_curve.py [--sizes 500,1000,1600,2000,2500,3200,4000]
      (about 4 min on a quiet 2-core box; writes benchmarks/results/calibration_learning_curve.json)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import add_arguments, finish, log, pin_threads, start

THREADS = pin_threads()

import numpy as np  # noqa: E402

from starlabel._internal import fold_indices  # noqa: E402
from starlabel.data import SpectralDataset, simulate_lines  # noqa: E402
from starlabel.models.cannon import Cannon  # noqa: E402

N_POOL, N_TEST = 2000, 1000


def clipped_mse(delta: np.ndarray) -> np.ndarray:
    """Per-label mean squared residual, each label's squares clipped at their 99th percentile."""
    d2 = delta**2
    return np.mean(np.minimum(d2, np.quantile(d2, 0.99, axis=0)), axis=0)


def subsets(n: int, pool: int, repeats: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Training rows of size ``n``: the calibration's own sets where it has them, else random."""
    everyone = np.arange(N_POOL)
    if n == N_POOL * 4 // 5:
        return [np.setdiff1d(everyone, held) for held in fold_indices(N_POOL, 5, 0)]
    if n == N_POOL // 2:
        return [np.setdiff1d(everyone, held) for held in fold_indices(N_POOL, 2, 1)]
    if n >= pool:  # the whole pool: one set
        return [np.arange(pool)]
    return [np.sort(rng.choice(pool, n, replace=False)) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--sizes", default="500,1000,1600,2000,2500,3200,4000")
    parser.add_argument("--repeats", type=int, default=2, help="random subsets per other size")
    parser.add_argument("--note", default="", help="recorded in the JSON")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "calibration_learning_curve.json"
    )
    args = parser.parse_args()
    record = start(args, THREADS)
    sizes = [int(s) for s in args.sizes.split(",")]
    first = simulate_lines(N_POOL + N_TEST, population="dwarfs", seed=15).dataset
    names = first.label_names
    test = first[np.arange(N_POOL, N_POOL + N_TEST)]
    pool = first[np.arange(N_POOL)]
    if max(sizes) > N_POOL:
        extra = simulate_lines(max(sizes) - N_POOL, population="dwarfs", seed=16).dataset
        pool = SpectralDataset.concatenate([pool, extra], ids=np.arange(pool.n_stars + extra.n_stars))
    rng = np.random.default_rng(2026)
    rows = []
    for n in sizes:
        for rows_n in subsets(n, pool.n_stars if n > N_POOL else N_POOL, args.repeats, rng):
            fitted = Cannon(names, order=2).fit(pool[rows_n], calibrate=False)
            delta = fitted.infer(test, calibrate=False).labels - test.labels
            mse = clipped_mse(delta)
            rows.append({"n": n, "mse": mse.tolist()})
            log(f"n={n}: rms {np.sqrt(mse).round(4).tolist()}")
    curve = {}
    for n in sizes:
        curve[str(n)] = np.mean([r["mse"] for r in rows if r["n"] == n], axis=0).tolist()
    base = np.asarray(curve[str(N_POOL * 4 // 5)]) if str(N_POOL * 4 // 5) in curve else None
    result = {
        "run": finish(record),
        "note": args.note,
        "setup": {
            "population": "dwarfs",
            "pool": "seed 15 stars 0-1999, then seed 16",
            "test": f"seed 15 stars {N_POOL}-{N_POOL + N_TEST - 1}",
            "labels": list(names),
            "n_pixels": int(test.n_pixels),
            "model": "Cannon(order=2), calibrate=False",
            "mse": "per label, squared residuals clipped at each model's 99th percentile",
        },
        "fits": rows,
        "mean_mse": curve,
        "mse_over_fold_size": None
        if base is None
        else {n: (np.asarray(m) / base).round(4).tolist() for n, m in curve.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
