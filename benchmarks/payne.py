"""The Payne against the quadratic Cannon on line-list spectra (issue 19, item 1).

Run from the repository root on a quiet machine::

    .venv/bin/python benchmarks/payne.py            # writes benchmarks/results/payne.json

Quick check that it runs (a few minutes; the JSON is marked busy and must not be quoted)::

    .venv/bin/python benchmarks/payne.py --quick --allow-busy --out /tmp/payne.json

Setting: :func:`starlabel.data.simulate_lines` (giants, S/N 60–250, 1 % bad pixels,
continuum-normalisation residuals) with its 5 labels (teff, logg, fe_h, alpha_fe,
vmacro) on the 7,214-pixel APOGEE DR12 grid; 2,000 training and 1,000 test stars from
one simulation (seed 0), which no model represents exactly. The Cannon trains with its
default 5-fold error calibration. The Payne's calibration is ``--payne-calibration``:
``kfold`` (the library default, ``Payne.fit(calibrate=True)``: the network is retrained
on 5 folds), ``holdout`` (the same calibration fitted on the final network's own
validation stars, which it never trained on: no retraining, for a busy machine) or
``none``; its statistical (uncalibrated) scores are recorded too. Both infer with their
default test step.

Per label and model: RMSE against the truth, std of z = (inferred − true)/σ and the
share of |z| < 1 (1σ coverage; 68.3 % for honest errors). Per model: training wall
time (with calibration, and the final fit alone) and test-step spectra/s (second call,
compiled). Targets (issue 19): Payne RMSE ≥ 25 % below the Cannon's on teff, logg,
fe_h; std z in [0.9, 1.1]; test step ≥ 1,000 spectra/s.
"""

from __future__ import annotations

from _common import pin_threads  # isort: skip  (before numpy: it pins the threads)

THREADS = pin_threads()

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "payne.json"


def scores(result, truth: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    err = np.sqrt(np.diagonal(result.cov, axis1=1, axis2=2))
    z = (result.labels - truth) / err
    out = {}
    for j, name in enumerate(names):
        ok = np.isfinite(z[:, j])
        out[name] = {
            "rmse": float(np.sqrt(np.mean((result.labels[:, j] - truth[:, j]) ** 2))),
            "std_z": float(np.std(z[ok, j])),
            "coverage_1sigma": float(np.mean(np.abs(z[ok, j]) < 1)),
            "n_finite_err": int(ok.sum()),
        }
    return out


CPU_SECONDS: dict[str, float] = {}
"""Process CPU seconds (all threads) of each model's compiled test step: on a busy machine
the side-by-side comparison, since wall time there measures the other jobs too."""


def timed_infer(fitted, test, name: str) -> tuple[object, float, float]:
    t0 = time.perf_counter()
    fitted.infer(test)
    first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    result = fitted.infer(test)
    CPU_SECONDS[name] = time.process_time() - c0
    return result, first, time.perf_counter() - t0


def cannon_block(model, train, test, truth: np.ndarray, names: tuple[str, ...], calibrate: bool) -> dict:
    """Train the Cannon (timed), run its test step twice, score it."""
    _common.log("Cannon: training")
    t0 = time.perf_counter()
    cannon = model.fit(train, calibrate=calibrate)
    cannon_train = time.perf_counter() - t0
    result, first, warm = timed_infer(cannon, test, "cannon")
    n_test = len(truth)
    return {
        "settings": {"order": 2},
        "train_seconds": cannon_train,
        "infer_first_seconds": first,
        "infer_seconds": warm,
        "spectra_per_second": n_test / warm,
        "infer_cpu_seconds": CPU_SECONDS["cannon"],
        "spectra_per_cpu_second": n_test / CPU_SECONDS["cannon"],
        "labels": scores(result, truth, names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--epochs", type=int, default=None, help="Payne epoch budget (default: the model's)")
    parser.add_argument("--hidden", default=None, help="Payne hidden widths (default: the model's)")
    parser.add_argument(
        "--components", type=int, default=None, help="Payne bottleneck (default: the model's)"
    )
    parser.add_argument(
        "--payne-calibration",
        choices=("kfold", "holdout", "none"),
        default="kfold",
        help="kfold: the library's 5-fold calibration (retrains 5 times); holdout: fitted on the"
        " final network's own validation stars (no retraining; for a busy machine); none",
    )
    parser.add_argument(
        "--calibration-terms",
        action="store_true",
        help="kfold with the corrections the other families' fit uses: a training-size factor"
        " learned per label (two half-size fits), the distance and label-space terms",
    )
    parser.add_argument(
        "--reuse-cannon",
        type=Path,
        default=None,
        help="take the Cannon's block from this payne.json (same settings) instead of training it",
    )
    _common.add_arguments(parser)
    args = parser.parse_args()
    record = _common.start(args, THREADS)

    from starlabel.data import LINE_LABELS, simulate_lines
    from starlabel.models.cannon import Cannon
    from starlabel.models.payne import Payne

    n_train, n_test = (300, 100) if args.quick else (2000, 1000)
    n_pixels = 1000 if args.quick else None
    _common.log(f"simulating {n_train + n_test} line-list spectra")
    sim = simulate_lines(n_train + n_test, n_pixels=n_pixels, seed=0)
    names = LINE_LABELS
    train, test = sim.dataset[:n_train], sim.dataset[n_train:]
    truth = test.select_labels(names).labels
    calibrate = True  # the Cannon always trains with its default 5-fold calibration
    models = {}

    # How many components the bottleneck needs: PCA of the noise-free training spectra.
    clean = sim.true_flux[:n_train] / sim.continuum[:n_train]
    centred = clean - clean.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    pca = {}
    for k in (16, 32, 64, 128):
        resid = centred - (centred @ vt[:k].T) @ vt[:k]
        pca[str(k)] = float(np.sqrt(np.mean(resid**2)))
    good = train.ivar > 0
    median_noise = float(np.median(1 / np.sqrt(train.ivar[good])))
    _common.log("PCA RMS residual by K:", pca, "median noise", median_noise)

    if args.reuse_cannon is not None:
        import json

        models["cannon"] = json.loads(args.reuse_cannon.read_text())["models"]["cannon"]
        models["cannon"]["reused_from"] = str(args.reuse_cannon)
    else:
        models["cannon"] = cannon_block(Cannon(names), train, test, truth, names, calibrate)
    _common.log(
        "Cannon:", models["cannon"]["labels"], f"{models['cannon']['spectra_per_second']:.0f} spectra/s"
    )

    settings = {}
    if args.hidden is not None:
        settings["hidden"] = tuple(int(w) for w in args.hidden.split(","))
    if args.components is not None:
        settings["n_components"] = args.components
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.quick:
        settings.update(hidden=(64, 64), n_components=32, epochs=50)
    payne = Payne(names, **settings)
    _common.log("Payne: training", payne.hyperparameters())
    t0 = time.perf_counter()
    final = payne.fit(train, calibrate=False)
    final_seconds = time.perf_counter() - t0
    _common.log(
        f"Payne: final fit {final_seconds:.0f} s, best epoch {final.best_epoch} of {final.train_loss.shape[0]}"
    )
    statistical = final.infer(test, calibrate=False)
    if args.payne_calibration == "kfold":
        from starlabel.models._calibration import calibrated_fit

        t0 = time.perf_counter()
        terms = dict.fromkeys(("learn_size_factor", "label_term", "distance_term"), True)
        fitted = calibrated_fit(
            final,
            train,
            lambda rows: payne.fit(train[rows], calibrate=False),
            **(terms if args.calibration_terms else {}),
        )
        calibration_seconds = time.perf_counter() - t0
    elif args.payne_calibration == "holdout":
        import equinox as eqx

        from starlabel.models import fit_error_calibration

        # The validation stars Payne.fit held out (same seeded permutation): never trained on,
        # used only to pick the epoch and fit s².
        t0 = time.perf_counter()
        order = np.random.default_rng(payne.seed).permutation(n_train)
        val = np.sort(order[: max(2, round(payne.validation_fraction * n_train))])
        held = final.infer(train[val], calibrate=False)
        reference = train[val].select_labels(names).labels
        # labels=: the local (label-space) floor term, as Payne.fit's 5-fold calibration uses.
        calibration = fit_error_calibration(
            held.labels - reference,
            held.label_err,
            names,
            rchi2=held.reduced_chi2,
            n_folds=1,
            labels=held.labels,
        )
        fitted = eqx.tree_at(lambda m: m.calibration, final, calibration, is_leaf=lambda x: x is None)
        calibration_seconds = time.perf_counter() - t0
    else:
        fitted, calibration_seconds = final, 0.0
    result, first, warm = timed_infer(fitted, test, "payne")
    models["payne"] = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in payne.hyperparameters().items()},
        "train_seconds": final_seconds + calibration_seconds,
        "final_fit_seconds": final_seconds,
        "calibration_seconds": calibration_seconds,
        "epochs_run": int(final.train_loss.shape[0]),
        "best_epoch": int(final.best_epoch),
        "best_val_mse": float(np.min(np.asarray(final.val_loss))),
        "median_scatter": float(np.median(np.sqrt(np.asarray(final.s2)))),
        "infer_first_seconds": first,
        "infer_seconds": warm,
        "spectra_per_second": n_test / warm,
        "infer_cpu_seconds": CPU_SECONDS["payne"],
        "spectra_per_cpu_second": n_test / CPU_SECONDS["payne"],
        "calibration": args.payne_calibration,
        "labels": scores(result, truth, names),
        "labels_statistical_errors": scores(statistical, truth, names),
    }
    _common.log("Payne:", models["payne"]["labels"], f"{n_test / warm:.0f} spectra/s")

    ratio = {n: models["payne"]["labels"][n]["rmse"] / models["cannon"]["labels"][n]["rmse"] for n in names}
    targets = {
        "rmse_25pct_below_cannon": {n: ratio[n] <= 0.75 for n in ("teff", "logg", "fe_h")},
        "std_z_in_0.9_1.1": {n: 0.9 <= models["payne"]["labels"][n]["std_z"] <= 1.1 for n in names},
        "test_step_1000_per_s": models["payne"]["spectra_per_second"] >= 1000,
        "test_step_1000_per_cpu_s": models["payne"]["spectra_per_cpu_second"] >= 1000,
    }
    output = {
        "benchmark": "payne",
        "setting": {
            "simulator": "simulate_lines (giants, seed 0)",
            "labels": list(names),
            "n_pixels": int(train.n_pixels),
            "n_train": n_train,
            "n_test": n_test,
            "cannon_calibration": "kfold",
            "payne_calibration": args.payne_calibration,
            "payne_calibration_terms": "size factor learned per label, distance and label terms"
            if args.calibration_terms
            else "the library default for the Payne",
            "quick": bool(args.quick),
        },
        "pca_rms_residual_by_components": pca,
        "median_flux_noise": median_noise,
        "models": models,
        "payne_over_cannon_rmse": ratio,
        "targets_met": targets,
        "note": "2-core machine shared with other jobs (see run.load_average_*): test-step speeds"
        " are compared side by side in CPU seconds (spectra_per_cpu_second, all threads of this"
        " process); wall-clock spectra_per_second includes waiting for the other jobs.",
        "run": _common.finish(record),
    }
    _common.write_result(output, args.out)


if __name__ == "__main__":
    main()
