"""The calibration's balancing rule, refitted on recorded held-out arrays: old vs new.

``fit_error_calibration`` scales each label's fitted widths by one factor ``c`` that
balances std(z) = 1 against 68.3 % within ±1σ on the cross-validation's held-out stars
(``_calibration_fit.balance_noise_aware``). This script compares, on stars none of the fits saw,

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

import argparse
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import log  # noqa: E402

import starlabel.models._calibration_fit as calibration_fit  # noqa: E402

TOLERANCE = (0.1, 0.04)
COVERAGE = 0.6827
NEW_BALANCE = calibration_fit.balance_noise_aware
FIT_ERROR_CALIBRATION = calibration_fit.fit_error_calibration
"""The library's fit; each rule is passed to it as ``balance``."""


def minimax_balance(z: np.ndarray) -> float:
    """The earlier rule: minimax of the two misses in tolerance units, no noise allowance."""
    factors = np.linspace(0.8, 1.25, 91)
    spread = np.std(z) / factors
    coverage = np.mean(np.abs(z)[None, :] < factors[:, None], axis=1)
    badness = np.maximum(np.abs(spread - 1.0) / TOLERANCE[0], np.abs(coverage - COVERAGE) / TOLERANCE[1])
    return float(factors[np.argmin(badness)])


def _grid(z: np.ndarray, low: float = 0.8, high: float = 1.25):
    factors = np.linspace(low, high, int(round((high - low) / 0.005)) + 1)
    return factors, np.std(z) / factors, np.mean(np.abs(z)[None, :] < factors[:, None], axis=1)


def coverage_match(z: np.ndarray) -> float:
    """c that puts exactly 68.3 % inside ±1σ (std z ignored)."""
    return float(np.quantile(np.abs(z), COVERAGE))


def tight_coverage(z: np.ndarray) -> float:
    """Minimax with the coverage tolerance 0.03 instead of 0.04."""
    f, s, c = _grid(z)
    return float(f[np.argmin(np.maximum(np.abs(s - 1) / 0.1, np.abs(c - COVERAGE) / 0.03))])


def sum_squares(z: np.ndarray) -> float:
    """The sum of both squared misses (tolerance units) instead of the larger."""
    f, s, c = _grid(z)
    return float(f[np.argmin((np.abs(s - 1) / 0.1) ** 2 + (np.abs(c - COVERAGE) / 0.04) ** 2)])


def wide_range(z: np.ndarray) -> float:
    """Minimax over c in 0.6–1.6 instead of 0.8–1.25."""
    f, s, c = _grid(z, 0.6, 1.6)
    return float(f[np.argmin(np.maximum(np.abs(s - 1) / 0.1, np.abs(c - COVERAGE) / 0.04))])


def coverage_first(z: np.ndarray) -> float:
    """Closest coverage to 68.3 % among the c with std(z/c) within 1 ± 0.05."""
    f, s, c = _grid(z, 0.6, 1.6)
    return float(
        f[np.argmin(np.abs(c - COVERAGE) + np.where(np.abs(s - 1) <= 0.05, 0.0, 10 + np.abs(s - 1)))]
    )


def no_balance(z: np.ndarray) -> float:
    """c = 1: the likelihood widths alone."""
    return 1.0


RULES = {"minimax": minimax_balance, "noise_aware": NEW_BALANCE}
"""The earlier rule and the one the library uses now."""
TRIED = {
    "coverage_match": coverage_match,
    "tight_coverage": tight_coverage,
    "sum_squares": sum_squares,
    "wide_range": wide_range,
    "coverage_first": coverage_first,
    "no_balance": no_balance,
}
"""Other rules measured while choosing (recorded under ``tried``)."""


def _clipped_rms(x: np.ndarray) -> np.ndarray:
    """RMS per column, finite rows only, squares clipped at their 99th percentile."""
    x = x[np.isfinite(x).all(axis=1)]
    x2 = x**2
    return np.sqrt(np.mean(np.minimum(x2, np.quantile(x2, 0.99, axis=0)), axis=0))


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
    row: dict = {"tried": {}}
    for rule, balance in {**RULES, **TRIED}.items():
        calibration_fit.fit_error_calibration = functools.partial(FIT_ERROR_CALIBRATION, balance=balance)
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
        stats = _stats(delta / np.sqrt(np.diagonal(total, axis1=1, axis2=2)))
        # What the rule saw: the calibration stars' z after c.
        stats["calibration_stars_after"] = {
            "std_z": np.asarray(calibration.z_std_after).round(4).tolist(),
            "coverage_1sigma": np.asarray(calibration.coverage_after).round(4).tolist(),
        }
        (row if rule in RULES else row["tried"])[rule] = stats
    calibration_fit.fit_error_calibration = FIT_ERROR_CALIBRATION
    row["held_out_over_calibration_rms"] = (
        (_clipped_rms(delta) / _clipped_rms(raw["fold_residuals"])).round(3).tolist()
    )
    row["rmse"] = np.sqrt(np.mean(delta**2, axis=0)).tolist()
    row["n_test"], row["n_calibration"] = int(len(delta)), int(len(raw["fold_residuals"]))
    return row


def _capturing(into: list):
    def fit(*args, **kwargs):
        calibration = calibration_fit.fit_error_calibration(*args, **kwargs)
        into.append(calibration)
        return calibration

    return fit


def raw_cases(paths: list[Path]) -> dict:
    """Held-out statistics per case and family (every default term) under each rule.

    Also ``held_out_over_fold_rms``: the held-out residuals' RMS over the fold
    residuals' (each squared residual clipped at its 99th percentile), the shift from
    the fold models to the final one that the training-size factor must carry, and
    ``half_over_fold_rms`` where half-size residuals were recorded.
    """
    out: dict = {}
    for path, raw, run, case, model, splits in size_factor.recorded_runs(paths):
        prefixes = [f"{run}_s{split}_" for split in splits]
        delta = np.concatenate([raw[p + "test_labels"] - raw[p + "test_reference"] for p in prefixes])
        fold = np.concatenate([raw[p + "fold_residuals"] for p in prefixes])
        row: dict = {"tried": {}}
        for rule, balance in {**RULES, **TRIED}.items():
            calibration_fit.fit_error_calibration = functools.partial(FIT_ERROR_CALIBRATION, balance=balance)
            fitted = []
            size_factor.FIT = _capturing(fitted)
            z = np.concatenate(
                [
                    (raw[p + "test_labels"] - raw[p + "test_reference"])
                    / size_factor._refit_split(raw, p, model, "default")
                    for p in prefixes
                ]
            )
            stats = _stats(z)
            # The fold stars' z after c (all of them, as the held-out statistics), mean
            # over the splits: what the rule saw.
            stats["fold_stars_after"] = {
                "std_z": np.mean([c.z_std_after for c in fitted], axis=0).round(4).tolist(),
                "coverage_1sigma": np.mean([c.coverage_after for c in fitted], axis=0).round(4).tolist(),
            }
            (row if rule in RULES else row["tried"])[rule] = stats
        half = [raw.get(p + "fold_half_residuals") for p in prefixes]
        row["held_out_over_fold_rms"] = (_clipped_rms(delta) / _clipped_rms(fold)).round(3).tolist()
        if all(h is not None and np.isfinite(h).any() for h in half):
            ratio = _clipped_rms(np.concatenate(half)) / _clipped_rms(fold)
            row["half_over_fold_rms"] = ratio.round(3).tolist()
        row.update(rmse=np.sqrt(np.mean(delta**2, axis=0)).tolist(), n_test=int(len(delta)), source=path.name)
        out.setdefault(case, {})[model] = row
    calibration_fit.fit_error_calibration = FIT_ERROR_CALIBRATION
    size_factor.FIT = calibration_fit.fit_error_calibration
    return out


def synthetic() -> dict:
    """The rules on residuals of known distribution (the cases of tests/test_calibration_balance.py).

    ``gaussian``: the factor ``c`` on 200 draws of Gaussian z (n = 200 and 2,000 stars):
    the share of draws with ``c`` = 1 and the spread of ``c`` over draws (noise the rule
    adds to every width). ``student_t8``: residuals 1.5 σ t₈/√(8/6) (unit variance,
    heavy tails), calibrated on 3,000 stars and scored on 20,000 fresh ones.
    """
    out: dict = {"gaussian": {}, "student_t8": {}}
    for n in (200, 2000):
        rng = np.random.default_rng(11)
        draws = [rng.normal(size=n) for _ in range(200)]
        for rule, balance in {**RULES, "no_balance": no_balance}.items():
            factors = np.array([balance(z) for z in draws])
            out["gaussian"].setdefault(f"n{n}", {})[rule] = {
                "share_c_equal_1": float(np.mean(factors == 1.0)),
                "std_c": round(float(np.std(factors)), 4),
            }
    rng = np.random.default_rng(7)
    n_fit = 3000
    sigma = rng.uniform(0.5, 2.0, (n_fit + 20000, 1))
    residual = 1.5 * sigma * rng.standard_t(8, size=sigma.shape) / np.sqrt(8 / 6)
    for rule, balance in {**RULES, "no_balance": no_balance}.items():
        calibration_fit.fit_error_calibration = functools.partial(FIT_ERROR_CALIBRATION, balance=balance)
        cal = calibration_fit.fit_error_calibration(residual[:n_fit], sigma[:n_fit], ("x",))
        width = np.sqrt((np.asarray(cal.scale) * sigma[n_fit:]) ** 2 + np.asarray(cal.floor) ** 2)
        out["student_t8"][rule] = _stats(residual[n_fit:] / width)
    calibration_fit.fit_error_calibration = FIT_ERROR_CALIBRATION
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
    synthetic_cases = synthetic()
    log(f"synthetic: {synthetic_cases}")
    result = {
        "note": args.note,
        "refit_from": [str(p) for p in args.raw] + ([str(args.payne)] if args.payne else []),
        "rules": {
            "minimax": minimax_balance.__doc__,
            "noise_aware": (NEW_BALANCE.__doc__ or "").split("\n")[0],
        },
        "cases": cases,
        "synthetic": synthetic_cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
