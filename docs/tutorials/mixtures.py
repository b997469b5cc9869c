"""Tutorial: mixture models for outliers and for cluster membership.

1. A straight line through data with outliers (N = 32, 8 outliers, m = 3.17,
   b = −11.9): least squares is pulled off; a line + broad-outlier mixture, sampled
   with NUTS, recovers m and b and gives every point an inlier probability.
2. Cluster membership on the real Gaia DR3 field around NGC 103: a cluster Gaussian
   in proper motion and parallax against a field that is a Gaussian mixture whose
   size K is chosen by BIC (one Gaussian is not enough), every star's errors
   deconvolved. Writes members.csv, members.json and the membership plots.
3. The robust Cannon: 10% of the training stars get labels shifted by 3σ; plain
   training is dragged, the per-star outlier mixture is not. Then unflagged bad
   pixels in the test spectra, with and without the per-pixel outlier component.

Run::

    python docs/tutorials/mixtures.py [--quick] [--out FOLDER]

Figures and tables go to ``--out`` (default: a new temporary folder). ``--quick``
(CI) uses fewer posterior samples, a Laplace posterior for the cluster and a smaller
Cannon problem, and takes < 60 s; the full run samples the cluster with NUTS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open windows
import numpy as np  # noqa: E402

from starlabel.data import shared_data_dir, simulate_cannon  # noqa: E402
from starlabel.evaluate._mixture_plots import plot_line_fit, plot_membership  # noqa: E402
from starlabel.mixtures import (  # noqa: E402
    fit_line_with_outliers,
    fit_membership_table,
    fit_robust_cannon,
    infer_robust,
    simulate_line_with_outliers,
)
from starlabel.models.cannon import Cannon  # noqa: E402


def straight_line(out: Path, quick: bool) -> None:
    print("\n== 1. A straight line with outliers ==")
    sim = simulate_line_with_outliers()  # N=32, 8 outliers, seed 42
    design = np.stack([sim.x, np.ones_like(sim.x)], axis=1) / sim.y_err[:, None]
    m_ls, b_ls = np.linalg.lstsq(design, sim.y / sim.y_err, rcond=None)[0]
    print(f"weighted least squares: m = {m_ls:.3f}, b = {b_ls:.3f}   (truth 3.17, -11.9)")

    n = 400 if quick else 1000
    fit = fit_line_with_outliers(sim.x, sim.y, sim.y_err, num_warmup=n, num_samples=n)
    print(fit.summary())
    for name, truth in (("m", 3.17), ("b", -11.9)):
        low, high = fit.interval(name)
        print(f"  68% interval of {name}: [{low:.3f}, {high:.3f}] contains {truth}: {low < truth < high}")
    out_hits = int(np.sum(fit.p_inlier[sim.is_outlier] < 0.5))
    in_hits = int(np.sum(fit.p_inlier[~sim.is_outlier] > 0.5))
    print(f"  injected outliers with p_inlier < 0.5: {out_hits} of {sim.is_outlier.sum()}")
    print(f"  inliers with p_inlier > 0.5:           {in_hits} of {(~sim.is_outlier).sum()}")
    map_out = int(np.sum(fit.p_inlier_map[sim.is_outlier] < 0.5))
    print(f"  (at the MAP point alone: {map_out} outliers below 0.5)")
    path = plot_line_fit(fit, sim.x, sim.y, sim.y_err, out / "line_outliers.png", truth=(3.17, -11.9))
    print(f"  figure: {path}")


def cluster(out: Path, quick: bool) -> None:
    print("\n== 2. Cluster membership: NGC 103 in Gaia DR3 ==")
    shared = shared_data_dir()
    if shared is None:
        print("shared data folder not found; skipping (set STARLABEL_SHARED_DATA).")
        return
    path = shared / "gaia" / "asteca_field_ngc103_gaiadr3.csv"
    start = time.perf_counter()
    result = fit_membership_table(
        path,
        pm_columns=("pmRA", "pmDE"),
        parallax_column="Plx",
        nuts=not quick,
        num_warmup=400,
        num_samples=400,
    )
    print(result.summary())
    print(f"  (whole fit: {time.perf_counter() - start:.1f} s)")
    bic = result.fit.bic
    print(
        f"  A single-Gaussian field is worse by ΔBIC = {bic[1] - min(bic.values()):.0f}:"
        " the field needs several components."
    )
    if not quick:
        single = fit_membership_table(
            path, pm_columns=("pmRA", "pmDE"), parallax_column="Plx", n_field=1, nuts=False
        )
        p1 = single.fit.parameters()
        n1, e1 = single.fit.n_members()
        print(
            f"  with K = 1: pm = ({p1['mean_pmra']['median']:.3f}, {p1['mean_pmdec']['median']:.3f}),"
            f" parallax {p1['mean_parallax']['median']:.3f}, members {n1:.0f} ± {e1:.0f}"
        )
    table_path = result.write(out / "members.csv")
    json_path = result.to_json(out / "members.json")
    plots = plot_membership(result, out)
    print(f"  wrote {table_path}, {json_path}, " + ", ".join(str(p) for p in plots))


def robust_cannon(quick: bool) -> None:
    print("\n== 3. The robust Cannon ==")
    n_train, n_pixels = (500, 120) if quick else (1000, 300)
    sim = simulate_cannon(n_stars=n_train + 300, n_pixels=n_pixels, n_labels=3, snr=50.0, seed=4)
    train, test = sim.dataset[:n_train], sim.dataset[n_train:]
    truth = sim.true_labels[n_train:]
    names = sim.dataset.label_names
    model = Cannon(label_names=names)

    def rmse(labels: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean((labels - truth) ** 2, axis=0))

    rng = np.random.default_rng(0)
    bad = rng.choice(n_train, n_train // 10, replace=False)
    labels = np.array(train.labels)
    labels[bad] += 3.0 * labels.std(axis=0) * rng.choice([-1.0, 1.0], size=(len(bad), 3))
    dirty = train.replace(labels=labels)

    clean_fit = model.fit(train)
    reference = rmse(clean_fit.infer(test).labels)
    plain = rmse(model.fit(dirty).infer(test).labels)
    robust = fit_robust_cannon(model, dirty)
    robust_rmse = rmse(robust.fitted.infer(test).labels)
    print("training with 10% of labels shifted by 3σ; test RMSE per label")
    print(f"  {'':24}" + "".join(f"{n:>12}" for n in names))
    for title, values in (
        ("clean training", reference),
        ("plain, bad labels", plain),
        ("robust, bad labels", robust_rmse),
    ):
        print(f"  {title:<24}" + "".join(f"{v:12.4g}" for v in values))
    print(
        f"  degradation vs clean: plain {np.round(plain / reference - 1, 3)}, robust {np.round(robust_rmse / reference - 1, 3)}"
    )
    found = np.sum(robust.outlier_prob[bad] > 0.5)
    false = np.sum(robust.outlier_prob > 0.5) - found
    print(f"  shifted stars with outlier_prob > 0.5: {found} of {len(bad)}; clean stars flagged: {false}")

    flux = np.array(test.flux)
    hit = rng.uniform(size=flux.shape) < 0.05
    flux[hit] += rng.uniform(0.2, 1.0, size=int(hit.sum()))
    spiked = test.replace(flux=flux)
    plain_px = rmse(clean_fit.infer(spiked).labels)
    robust_px = infer_robust(clean_fit, spiked)
    print("test spectra with 5% unflagged spikes; test RMSE per label")
    for title, values in (
        ("clean spectra", reference),
        ("plain test step", plain_px),
        ("robust test step", rmse(robust_px.result.labels)),
    ):
        print(f"  {title:<24}" + "".join(f"{v:12.4g}" for v in values))
    print(f"  spikes with p(good) < 0.5: {np.mean(robust_px.pixel_good_prob[hit] < 0.5):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description="mixture-model tutorial")
    parser.add_argument("--quick", action="store_true", help="fewer samples, Laplace cluster posterior (CI)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temp dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="starlabel-mixtures-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    straight_line(out, args.quick)
    cluster(out, args.quick)
    robust_cannon(args.quick)
    print(f"\ndone in {time.perf_counter() - start:.1f} s; outputs in {out}")


if __name__ == "__main__":
    sys.exit(main())
