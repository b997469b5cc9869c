"""The Cannon on real APOGEE red giants: train, test, cross-validate, censor, regularise.

Run ``python docs/tutorials/cannon_apogee.py [--quick] [--out DIR]``. The data are the
500 APOGEE DR12-era giants (100 pixels near 15170 Å, ASPCAP Teff/logg/[M/H]) in
``../shared/data/apogee/giants_100px.npz`` (SDSS/APOGEE; via andycasey/AnniesLasso,
MIT). ``--quick`` (used in CI) runs 5-fold cross-validation only; the full run adds
leave-one-out, the validation of Ness et al. (2015).

Outputs in ``--out`` (default: a new temporary folder): ``metrics.json``,
``metrics.txt``, ``one_to_one.png``, ``derivatives.png``, ``derivatives_l1.png``,
``scatter.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from starlabel.data import Flag, read_dataset, shared_data_dir
from starlabel.evaluate import (
    format_metrics,
    label_metrics,
    plot_cannon_derivatives,
    plot_cannon_scatter,
    plot_one_to_one,
)
from starlabel.models.cannon import Cannon, cross_validate

LABELS = ("teff", "logg", "m_h")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: skip leave-one-out (< 60 s).")
    parser.add_argument("--out", type=Path, default=None, help="Output folder (default: a temp dir).")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cannon_apogee_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    folder = shared_data_dir()
    if folder is None:
        print("shared data not found (set STARLABEL_SHARED_DATA); nothing to do.")
        return {}
    data = read_dataset(folder / "apogee" / "giants_100px.npz", labels=LABELS)
    print(data)

    # 1. Train on 80 % of the stars, infer the other 20 %.
    train, test = data.split(0.2, seed=0)
    model = Cannon(label_names=LABELS, order=2)
    fitted = model.fit(train)
    result = fitted.infer(test)
    tables = [label_metrics(result.labels, test.labels, LABELS, model="quadratic, 80/20 split")]
    print(f"trained on {train.n_stars} stars: {dict(fitted.training_info)}")
    values, counts = np.unique(result.flags, return_counts=True)
    print(
        "flags on the test stars:",
        {Flag.describe(int(v)): int(n) for v, n in zip(values, counts, strict=True)},
    )
    plot_one_to_one(result.labels, test.labels, LABELS, out / "one_to_one.png", errors=result.label_err,
                    title="The Cannon, held-out APOGEE giants")  # fmt: skip
    plot_cannon_derivatives(fitted, out / "derivatives.png")
    plot_cannon_scatter(fitted, out / "scatter.png")

    # 2. Cross-validation: every star predicted by a model that never saw it.
    cv = cross_validate(model, data, folds=5, seed=0)
    tables.append(label_metrics(cv.predicted, cv.reference, LABELS, model="quadratic, 5-fold CV"))
    if not args.quick:
        loo = cross_validate(model, data, folds="loo")
        tables.append(label_metrics(loo.predicted, loo.reference, LABELS, model="quadratic, leave-one-out"))

    # 3. Censoring: let [M/H] act only on the bluest half of this short window (as one
    #    would restrict an element to its own lines), and see what the other pixels lose.
    wave = data.wavelength
    windows = [(float(wave[0]), float(wave[len(wave) // 2]))]
    censored = Cannon(label_names=LABELS, censor={"m_h": windows}).fit(train)
    censored_result = censored.infer(test)
    tables.append(label_metrics(censored_result.labels, test.labels, LABELS, model="[M/H] censored to half"))

    # 4. L1 regularisation: sparsity of the non-constant coefficients vs strength.
    sparsity = {}
    for strength in (1e2, 1e3, 1e4):
        regularised = Cannon(label_names=LABELS, l1=strength).fit(train)
        theta = np.asarray(regularised.theta)
        sparsity[f"{strength:g}"] = float(np.mean(theta[:, 1:] == 0.0))
        reg_result = regularised.infer(test)
        tables.append(label_metrics(reg_result.labels, test.labels, LABELS, model=f"L1 λ={strength:g}"))
        if strength == 1e3:
            plot_cannon_derivatives(
                fitted, out / "derivatives_l1.png", compare=regularised, compare_name="L1 λ=1e3"
            )

    text = format_metrics(tables)
    print(text)
    print("fraction of exactly-zero non-constant θ by L1 strength:", sparsity)
    summary = {
        "metrics": [t.to_dict() for t in tables],
        "l1_zero_fraction": sparsity,
        "seconds": time.perf_counter() - started,
        "quick": args.quick,
    }
    (out / "metrics.txt").write_text(text + "\n")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"outputs in {out} ({summary['seconds']:.1f} s)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
