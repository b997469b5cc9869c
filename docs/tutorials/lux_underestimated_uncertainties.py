"""Lux with underestimated flux uncertainties: learning a per-pixel extra scatter.

The experiment of the pollux tutorial "Lux: Simulated Data and Underestimated
Uncertainties", run with starlabel and taken further:

1. Simulate 2048 stars with 8 latents, 2 labels and 128 pixels. The flux gets extra
   Gaussian noise with a periodic standard deviation ``2 cos²(2π i / 32)`` that the
   reported ``flux_err`` does NOT include — the uncertainties are underestimated.
2. Train two models on the first 1024 stars:
   * model 1 trusts ``flux_err`` (``scatter="none"``);
   * model 2 learns one extra scatter per pixel, added in quadrature
     (``scatter="pixel"``), with a half-normal prior.
   Training is closed form (EM with the latents integrated out) and converges in a
   few dozen iterations, well under a second after compilation.
3. Infer labels of the other 1024 stars from their flux ALONE. The test labels are
   removed from the dataset first, so they cannot leak into the test step (the
   original tutorial inferred test latents with the test labels included).
4. Compare both models with the noise-free true labels, and the learned scatter with
   the true systematic error.

Run::

    python docs/tutorials/lux_underestimated_uncertainties.py [--quick] [--out DIR]

``--quick`` skips the joint-MAP comparison fit (used in CI; well under a minute).
Outputs: ``loss_history.png``, ``one_to_one.png``, ``scatter.png`` and ``summary.json``
in ``--out`` (default: a new temporary folder, printed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402

from starlabel.data import simulate_linear_latent  # noqa: E402
from starlabel.models.lux import Lux  # noqa: E402


def rmse(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Root-mean-square error per label column."""
    return np.sqrt(np.mean((predicted - truth) ** 2, axis=0))


def main() -> dict:
    parser = argparse.ArgumentParser(description="Lux with underestimated uncertainties.")
    parser.add_argument("--quick", action="store_true", help="skip the joint-MAP comparison (CI)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: temp dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lux_tutorial_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. Data: 2048 stars (generator seed 42), systematic error left out of flux_err.
    sim = simulate_linear_latent(n_stars=2048, n_latents=8, n_labels=2, n_pixels=128, seed=42)
    train = sim.dataset[:1024]
    test = sim.dataset[1024:].replace(labels=None)  # flux only: no label can leak
    truth = sim.true_labels[1024:]
    names = sim.dataset.label_names

    # 2. Two models: trust the errors, or learn an extra scatter per pixel.
    models = {
        "model 1 (no scatter)": Lux(names, latent_size=8, scatter="none"),
        "model 2 (per-pixel scatter)": Lux(names, latent_size=8, scatter="pixel"),
    }
    if not args.quick:
        # The Lux/pollux objective: joint MAP over latents and parameters.
        models["model 2, joint MAP"] = Lux(names, latent_size=8, scatter="pixel", objective="map")

    fitted, results, summary = {}, {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        # calibrate=False: this tutorial compares the two error models' own errors.
        fitted[name] = model.fit(train, calibrate=False)
        seconds = time.perf_counter() - start
        results[name] = fitted[name].infer(test)
        info = fitted[name].fit_info
        errors = rmse(results[name].labels, truth)
        summary[name] = {
            "train_seconds_including_compilation": round(seconds, 3),
            "iterations": int(info.n_steps),
            "converged": bool(info.converged),
            "final_loss": float(info.final_loss),
            "test_rmse_vs_truth": errors.round(4).tolist(),
            "median_label_err": np.median(results[name].label_err, axis=0).round(4).tolist(),
        }
        print(
            f"{name:30s} {info.n_steps:4d} iterations, {seconds:5.2f} s;"
            f" flux-only RMSE vs truth: {errors.round(4)}"
        )

    # 3. The learned scatter against the true systematic error.
    scatter = fitted["model 2 (per-pixel scatter)"].scatter("flux")
    correlation = float(np.corrcoef(scatter, sim.systematic_err)[0, 1])
    summary["scatter_correlation_with_truth"] = correlation
    print(f"learned scatter vs true systematic error: correlation {correlation:.4f}")

    # Plot 1: loss history (objective per iteration, minus its final value; EM is monotone).
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    for ax, name in zip(axes, list(models)[:2], strict=True):
        history = np.asarray(fitted[name].fit_info.loss_history)
        excess = history - float(fitted[name].fit_info.final_loss)
        ax.semilogy(np.arange(1, len(history) + 1), np.maximum(excess, 1e-3), "k.-")
        ax.set(xlabel="iteration", ylabel="loss − final loss (nats)", title=name)
    fig.savefig(out / "loss_history.png", dpi=120)
    plt.close(fig)

    # Plot 2: one-to-one per label for both models.
    fig, axes = plt.subplots(2, 2, figsize=(8, 8), layout="constrained")
    for row, name in enumerate(list(models)[:2]):
        for col in range(2):
            ax = axes[row, col]
            ax.errorbar(
                truth[:, col],
                results[name].labels[:, col],
                yerr=results[name].label_err[:, col],
                fmt="o",
                ms=2,
                alpha=0.4,
                color="k",
                elinewidth=0.5,
            )
            lims = [truth[:, col].min(), truth[:, col].max()]
            ax.plot(lims, lims, color="tab:green")
            ax.set(
                xlabel=f"true {names[col]}",
                ylabel=f"predicted {names[col]} (flux only)",
                title=f"{name}: RMSE {rmse(results[name].labels, truth)[col]:.3f}",
            )
    fig.savefig(out / "one_to_one.png", dpi=120)
    plt.close(fig)

    # Plot 3: inferred vs true scatter per pixel.
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    ax.plot(sim.systematic_err, label="true systematic error", lw=2, color="tab:orange")
    ax.plot(scatter, label="learned scatter s (model 2)", color="k", ls="--")
    ax.set(xlabel="pixel", ylabel="flux units", title=f"correlation {correlation:.4f}")
    ax.legend()
    fig.savefig(out / "scatter.png", dpi=120)
    plt.close(fig)

    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote loss_history.png, one_to_one.png, scatter.png, summary.json to {out}")
    return summary


if __name__ == "__main__":
    main()
