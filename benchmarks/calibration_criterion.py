"""The calibration's balancing rule, refitted on recorded held-out arrays: old vs new.

``fit_error_calibration`` scales each label's fitted widths by one factor ``c`` that
balances std(z) = 1 against 68.3 % within ±1σ on the cross-validation's held-out stars
(``_calibration_fit._balance``). This script compares, on stars none of the fits saw,

* ``minimax`` — the earlier rule: ``c`` minimises the larger of ``|std − 1|/0.1`` and
  ``|coverage − 0.683|/0.04`` on the fold stars;
* ``noise_aware`` — the library's rule now: the same, each miss counted only beyond
  its standard error on those stars, ties resolved toward ``c`` = 1.

Cases: the arrays recorded by ``benchmarks/calibration_size_factor.py --raw`` (real
giants, 5-fold outer CV; line-list dwarfs, 2,000 training / 1,000 held-out stars; Cannon,
Lux, NN with every default term) and the Payne on line-list giants (seed 0, 2,000 /
1,000 stars, 7,214 px, as ``benchmarks/payne.py --payne-calibration holdout``: the
calibration fitted on the final network's 200 validation stars), recorded by
``--record-payne``. Labels never move (the calibration only scales widths), so each
case's RMSE is recorded once.

Run:  python benchmarks/calibration_criterion.py --record-payne payne_holdout.npz   (~3 min)
      python benchmarks/calibration_criterion.py --raw giants.npz lines.npz \\
          --payne payne_holdout.npz --out benchmarks/results/calibration_criterion.json  (~2 min)
"""

from __future__ import annotations

import calibration_size_factor as size_factor  # isort: skip  (pins the threads before numpy)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import log  # noqa: E402

import starlabel.models._calibration_fit as calibration_fit  # noqa: E402

TOLERANCE = (0.1, 0.04)
COVERAGE = 0.6827
NEW_BALANCE = calibration_fit._balance


def minimax_balance(z: np.ndarray) -> float:
    """The earlier rule: minimax of the two misses in tolerance units, no noise allowance."""
    factors = np.linspace(0.8, 1.25, 91)
    spread = np.std(z) / factors
    coverage = np.mean(np.abs(z)[None, :] < factors[:, None], axis=1)
    badness = np.maximum(np.abs(spread - 1.0) / TOLERANCE[0], np.abs(coverage - COVERAGE) / TOLERANCE[1])
    return float(factors[np.argmin(badness)])


RULES = {"minimax": minimax_balance, "noise_aware": NEW_BALANCE}


def _stats(z: np.ndarray) -> dict:
    s, c = np.std(z, axis=0), np.mean(np.abs(z) < 1, axis=0)
    bad = np.maximum(np.abs(s - 1) / TOLERANCE[0], np.abs(c - COVERAGE) / TOLERANCE[1])
    return {
        "std_z": s.round(4).tolist(),
        "coverage_1sigma": c.round(4).tolist(),
        "worst_badness": round(float(bad.max()), 3),
        "misses": int(np.sum(bad > 1)),
    }


def record_payne(path: Path) -> None:
    """Train the default Payne on line-list giants; save its validation and test arrays."""
    from starlabel.data import LINE_LABELS, simulate_lines
    from starlabel.models.payne import Payne

    n_train, n_test = 2000, 1000
    sim = simulate_lines(n_train + n_test, seed=0)
    train, test = sim.dataset[:n_train], sim.dataset[n_train:]
    payne = Payne(LINE_LABELS)
    load0, cpu0 = os.getloadavg(), time.process_time()
    final = payne.fit(train, calibrate=False)
    log(f"Payne fit: {time.process_time() - cpu0:.0f} CPU s, load {load0} -> {os.getloadavg()}")
    # The validation stars Payne.fit held out (its seeded permutation), as benchmarks/payne.py.
    order = np.random.default_rng(payne.seed).permutation(n_train)
    val = np.sort(order[: max(2, round(payne.validation_fraction * n_train))])
    held = final.infer(train[val], calibrate=False)
    result = final.infer(test, calibrate=False)
    np.savez(
        path,
        fold_residuals=np.asarray(held.labels) - train[val].select_labels(LINE_LABELS).labels,
        fold_errors=np.asarray(held.label_err),
        fold_rchi2=np.asarray(held.reduced_chi2),
        fold_labels=np.asarray(held.labels),
        test_labels=np.asarray(result.labels),
        test_errors=np.asarray(result.label_err),
        test_rchi2=np.asarray(result.reduced_chi2),
        test_reference=test.select_labels(LINE_LABELS).labels,
    )
    log(f"wrote {path}")


def payne_case(path: Path) -> dict:
    """Held-out statistics of the Payne's holdout calibration under each rule."""
    with np.load(path) as archive:
        raw = {key: archive[key] for key in archive.files}
    names = tuple(f"label{k}" for k in range(raw["fold_residuals"].shape[1]))
    delta = raw["test_labels"] - raw["test_reference"]
    row: dict = {}
    for rule, balance in RULES.items():
        calibration_fit._balance = balance
        calibration = calibration_fit.fit_error_calibration(
            raw["fold_residuals"],
            raw["fold_errors"],
            names,
            rchi2=raw["fold_rchi2"],
            n_folds=1,
            labels=raw["fold_labels"],
        )
        errors = raw["test_errors"]
        k = np.arange(errors.shape[1])
        cov = np.zeros((*errors.shape, errors.shape[1]))
        cov[:, k, k] = errors**2
        total = calibration.total_cov(cov, raw["test_rchi2"], raw["test_labels"])
        row[rule] = _stats(delta / np.sqrt(np.diagonal(total, axis1=1, axis2=2)))
    calibration_fit._balance = NEW_BALANCE
    row["rmse"] = np.sqrt(np.mean(delta**2, axis=0)).tolist()
    row["n_test"], row["n_calibration"] = int(len(delta)), int(len(raw["fold_residuals"]))
    return row


def raw_cases(paths: list[Path]) -> dict:
    """Held-out statistics per case and family (every default term) under each rule."""
    out: dict = {}
    for rule, balance in RULES.items():
        calibration_fit._balance = balance
        size_factor.FIT = calibration_fit.fit_error_calibration
        for case, models in size_factor.from_raw(paths).items():
            for model, row in models.items():
                target = out.setdefault(case, {}).setdefault(model, {})
                stats = row["default"]
                z_bad = np.maximum(
                    np.abs(np.asarray(stats["std_z"]) - 1) / TOLERANCE[0],
                    np.abs(np.asarray(stats["coverage_1sigma"]) - COVERAGE) / TOLERANCE[1],
                )
                target[rule] = {
                    **stats,
                    "worst_badness": round(float(z_bad.max()), 3),
                    "misses": int(np.sum(z_bad > 1)),
                }
                target.update(rmse=row["rmse"], n_test=row["n_test"], source=row["source"])
    calibration_fit._balance = NEW_BALANCE
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record-payne", type=Path, help="train the Payne and save its arrays here")
    parser.add_argument("--raw", nargs="+", type=Path, default=[], help="calibration_size_factor --raw files")
    parser.add_argument("--payne", type=Path, help="a --record-payne file")
    parser.add_argument("--note", default="", help="recorded in the JSON")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "calibration_criterion.json"
    )
    args = parser.parse_args()
    if args.record_payne:
        record_payne(args.record_payne)
        return
    cases = raw_cases(args.raw) if args.raw else {}
    if args.payne:
        cases.setdefault("lines_giants", {})["payne"] = payne_case(args.payne)
    for case, models in cases.items():
        for model, row in models.items():
            log(f"{case} {model}: " + "; ".join(f"{r} {row[r]}" for r in RULES))
    result = {
        "note": args.note,
        "refit_from": [str(p) for p in args.raw] + ([str(args.payne)] if args.payne else []),
        "rules": {
            "minimax": minimax_balance.__doc__,
            "noise_aware": (NEW_BALANCE.__doc__ or "").split("\n")[0],
        },
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
