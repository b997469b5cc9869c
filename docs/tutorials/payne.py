"""Tutorial: The Payne from a synthetic grid to labels of observed spectra, with errors.

Run it (``--quick`` is what CI runs: a small network on 500 pixels, well under a
minute on an idle machine; without it, the 7,214-pixel grid and the default network,
tens of minutes on two cores)::

    .venv/bin/python docs/tutorials/payne.py --quick --out /tmp/payne

The path a user takes (``docs/payne.md``):

1. **A training grid.** Spectra with known labels; here ``simulate_lines`` stands in
   for a grid of model spectra (APOGEE-like giants with teff, logg, fe_h, alpha_fe,
   vmacro). Pass ``--abundances`` for the 18-label set (14 free [X/Fe] and vmicro).
2. **Train.** ``Payne(labels).fit(grid)``: the network, its per-pixel scatter and its
   5-fold error calibration (the network retrained on each fold).
3. **Infer** the labels of "observed" spectra (another simulation) with calibrated
   errors, and score them against the truth: RMSE per label and the spread of
   z = (inferred − true)/error, which honest errors put near 1.
4. **Save and load** the model (a versioned file, no pickle); the loaded model gives
   the same labels.

The same from the command line::

    starlabel simulate lines -o grid.h5 --n-stars 2000 --n-pixels 7214 --seed 1
    starlabel train payne grid.h5 --labels teff,logg,fe_h,alpha_fe,vmacro -o payne.starlabel
    starlabel infer payne.starlabel observed.h5 -o labels.csv

Outputs (``summary.json`` and ``payne.starlabel``) go to ``--out`` (default: a new
temporary folder).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from starlabel.data import LINE_ELEMENTS, LINE_LABELS, simulate_lines
from starlabel.models import load_model
from starlabel.models.payne import Payne


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (what CI runs)")
    parser.add_argument("--abundances", action="store_true", help="18 labels: 14 [X/Fe] and vmicro")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="payne-tutorial-"))
    out.mkdir(parents=True, exist_ok=True)

    n_grid, n_observed = (300, 64) if args.quick else (2000, 500)
    n_pixels = 500 if args.quick else None  # None: the 7,214-pixel APOGEE DR12 grid
    if args.abundances:
        labels = ("teff", "logg", "fe_h", "vmicro") + tuple(f"{e}_fe" for e in LINE_ELEMENTS)
        options = {"elements": LINE_ELEMENTS, "free_vmicro": True}
    else:
        labels, options = LINE_LABELS, {}
    # 1. A "grid" and "observed" stars: two simulations (different seeds), one pixel grid.
    grid = simulate_lines(n_grid, n_pixels=n_pixels, seed=1, **options).dataset.select_labels(labels)
    observed = simulate_lines(n_observed, n_pixels=n_pixels, seed=2, **options).dataset
    truth = observed.select_labels(labels).labels

    # 2. Train: the network, its scatter and its 5-fold error calibration.
    settings = {"hidden": (32, 32), "epochs": 40, "patience": 40} if args.quick else {}
    start = time.perf_counter()
    fitted = Payne(labels, **settings).fit(grid)
    train_s = time.perf_counter() - start
    print(f"trained {fitted.network.sizes} in {train_s:.0f} s; kept epoch {fitted.best_epoch}")

    # 3. Infer with calibrated errors; score against the truth.
    result = fitted.infer(observed)
    z = (result.labels - truth) / result.label_err
    rmse = np.sqrt(np.mean((result.labels - truth) ** 2, axis=0))
    scores = {
        name: {"rmse": float(rmse[k]), "std_z": float(np.std(z[:, k])), "within_1sigma": float(np.mean(np.abs(z[:, k]) < 1))}
        for k, name in enumerate(labels)
    }  # fmt: skip
    for name, row in scores.items():
        print(
            f"{name:>9}: RMSE {row['rmse']:.4g}, std z {row['std_z']:.2f}, |z| < 1: {100 * row['within_1sigma']:.0f} %"
        )

    # 4. Save, load, same labels.
    path = fitted.save(out / "payne.starlabel")
    again = load_model(path).infer(observed)
    assert np.array_equal(again.labels, result.labels) and np.array_equal(again.label_err, result.label_err)
    summary = {"labels": list(labels), "n_grid": n_grid, "n_observed": n_observed,
               "train_seconds": round(train_s, 1), "scores": scores, "model": str(path)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"model and summary.json in {out}")


if __name__ == "__main__":
    main()
