"""Tutorial: honest label uncertainties — optimisers, Hessians, natural gradients, whitening, NUTS.

The optimisation overview that inspired this walks through first- and second-order
optimisers, Hessian errors, natural gradients, Fisher reparametrisation and NUTS on an
optical model. Here the same steps run on a Cannon fitted to simulated spectra whose
true labels are known, so every uncertainty can be checked:

1. one star's labels as a dict ``{"teff", "logg", "fe_h"}``: plain gradient descent,
   optax Adam with one learning rate per label group and a delayed start, and BFGS;
2. Hessian (Laplace) errors, returned in the same dict structure;
3. natural gradient descent, preconditioned by the Fisher matrix at the start;
4. Fisher eigen-reparametrisation: the same optimisers in whitened coordinates;
5. NUTS in whitened coordinates for a handful of stars, against the Fisher ellipse,
   and a single-spectrum emcee ensemble run (16 walkers × 15,000 steps) side by
   side with NUTS: wall time, effective samples per second, agreement;
6. calibration over the whole test set: z-score histograms and error vs S/N.

Run::

    python docs/tutorials/uncertainties.py [--quick] [--out DIR]

``--quick`` (CI, < 60 s) uses fewer stars and draws and a 16 × 2,000-step emcee run. Figures and
``summary.json`` go to ``--out`` (default: a new temporary folder, printed at the end).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import optimistix as optx  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from starlabel.data import simulate_cannon  # noqa: E402
from starlabel.evaluate._uncertainty_plots import (  # noqa: E402
    plot_posterior_corner,
    plot_uncertainty_vs_snr,
    plot_zscore_histograms,
)
from starlabel.inference import (  # noqa: E402
    NaturalGradient,
    WhitenedLogDensity,
    delay,
    fit_map,
    gaussian_fisher_information,
    gaussian_from_precision,
    group_optimisers,
    laplace_approximation,
    whiten,
)
from starlabel.models import posterior_infer  # noqa: E402
from starlabel.models.cannon import Cannon  # noqa: E402

NAMES = ("teff", "logg", "fe_h")


def log_likelihood(params, args):
    """One star's log-likelihood over a dict of labels; the data travel in ``args``."""
    fitted, flux, ivar = args
    return fitted.log_likelihood(jnp.stack([params[n] for n in NAMES]), flux, ivar)


def flux_log_likelihood(params, flux, args):
    """The same, as a function of the flux (for the Fisher matrix of a Gaussian likelihood)."""
    fitted, ivar = args
    return fitted.log_likelihood(jnp.stack([params[n] for n in NAMES]), flux, ivar)


def optimiser_race(args, start, truth, out: Path) -> dict:
    """Sections 1–4: who reaches the MAP, and in how many steps."""
    runs = {
        "gradient descent (lr 1e-3)": (
            log_likelihood,
            optx.GradientDescent(1e-3, rtol=1e-8, atol=1e-8),
            start,
            args,
        ),
        "Adam per group, logg/fe_h delayed 30 steps": (
            log_likelihood,
            optx.OptaxMinimiser(
                group_optimisers(
                    {"teff": optax.adam(20.0), ("logg", "fe_h"): delay(optax.adam(0.02), 30)}, start
                ),
                rtol=1e-9,
                atol=1e-9,
            ),
            start,
            args,
        ),
        "BFGS": (log_likelihood, optx.BFGS(rtol=1e-8, atol=1e-8), start, args),
    }
    # The Fisher matrix at the *starting point* is the fixed metric. It needs only the
    # log-likelihood, and unlike the Hessian it is positive definite far from the mode.
    fisher = gaussian_fisher_information(flux_log_likelihood, start, args[1], (args[0], args[2]))
    at_start = gaussian_from_precision(start, fisher)
    runs["natural gradient (Armijo line search)"] = (
        log_likelihood,
        NaturalGradient(at_start, rtol=1e-8, atol=1e-8, search=optx.BacktrackingArmijo()),
        start,
        args,
    )
    whitening = whiten(at_start)
    u0 = jnp.zeros(len(NAMES))
    runs["gradient descent, whitened (lr 0.5)"] = (
        WhitenedLogDensity(log_likelihood),
        optx.GradientDescent(0.5, rtol=1e-8, atol=1e-8),
        u0,
        (whitening, args),
    )
    runs["L-BFGS, whitened"] = (
        WhitenedLogDensity(log_likelihood),
        optx.LBFGS(rtol=1e-8, atol=1e-8),
        u0,
        (whitening, args),
    )

    report, histories = {}, {}
    for name, (fn, solver, y0, fn_args) in runs.items():
        solution = fit_map(fn, solver, y0, fn_args, max_steps=1000)
        value = solution.value if fn is log_likelihood else whitening.to_params(solution.value)
        steps = int(solution.num_steps)
        histories[name] = np.asarray(solution.loss_history)[:steps]
        report[name] = {
            "steps": steps,
            "result": str(solution.result).split("<")[-1].rstrip(">") or "successful",
            "labels": {k: float(value[k]) for k in NAMES},
        }
        print(f"  {name:45s} {steps:5d} steps  {report[name]['result']}")
    best = min(np.nanmin(np.where(np.isfinite(h), h, np.nan)) for h in histories.values())
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for name, history in histories.items():
        ax.plot(np.arange(1, len(history) + 1), history - best + 1e-9, label=f"{name} ({len(history)} steps)")
    ax.set(xscale="log", yscale="log", ylim=(1e-9, 1e7), xlabel="step", ylabel="−log L above the best MAP")
    ax.set_title("Reaching one star's MAP (Cannon, 3 labels)")
    ax.legend(fontsize=7)
    fig.savefig(out / "optimisers.png", dpi=110)

    bfgs = report["BFGS"]["labels"]
    laplace = laplace_approximation(log_likelihood, {k: jnp.asarray(v) for k, v in bfgs.items()}, args)
    std = {k: float(v) for k, v in laplace.std.items()}  # same dict structure as the labels
    print("  Laplace 1-σ:", {k: round(v, 4) for k, v in std.items()})
    print("  truth − MAP in σ:", {k: round((truth[k] - bfgs[k]) / std[k], 2) for k in NAMES})
    return {"optimisers": report, "laplace_std": std, "truth": truth}


def emcee_comparison(fitted, test, nuts_draws, walkers: int, steps: int, burn: int) -> dict:
    """Section 5b: an emcee ensemble sampler on star 0, next to whitened NUTS."""
    try:
        import emcee
    except ImportError:
        print("  emcee is not installed (pip install emcee): skipping the comparison")
        return {"skipped": "emcee not installed"}
    with jax.enable_x64(True):
        args = (fitted, jnp.asarray(test.flux[0]), jnp.asarray(test.ivar[0]))
        vec = jax.jit(jax.vmap(lambda x: fitted.log_likelihood(x, args[1], args[2])))
        centre = nuts_draws.mean(axis=0)
        scale = nuts_draws.std(axis=0)
        start = centre + scale * np.random.default_rng(1).normal(size=(walkers, centre.size))
        vec(jnp.asarray(start)).block_until_ready()
        sampler = emcee.EnsembleSampler(
            walkers, centre.size, lambda x: np.asarray(vec(jnp.asarray(x))), vectorize=True
        )
        t0 = time.perf_counter()
        sampler.run_mcmc(start, steps, progress=False)
        wall = time.perf_counter() - t0
    chain = sampler.get_chain(discard=burn)
    tau = emcee.autocorr.integrated_time(chain, quiet=True)
    flat = chain.reshape(-1, centre.size)
    return {
        "walkers": walkers,
        "steps": steps,
        "wall_s": wall,
        "min_ess": float((chain.shape[0] * walkers / tau).min()),
        "mean_difference_in_sd": ((nuts_draws.mean(0) - flat.mean(0)) / flat.std(0)).tolist(),
        "sd_ratio_nuts_over_emcee": (nuts_draws.std(0) / flat.std(0)).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small settings for CI (< 60 s)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    options = parser.parse_args()
    out = options.out or Path(tempfile.mkdtemp(prefix="starlabel-uncertainties-"))
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_test = (1000, 400) if options.quick else (3000, 2000)
    n_nuts = 4 if options.quick else 64
    warmup, draws_per_star = (300, 600) if options.quick else (1000, 1000)
    walkers, steps, burn = (16, 2000, 500) if options.quick else (16, 15000, 5000)
    clock = time.perf_counter()

    sim = simulate_cannon(n_stars=n_train + n_test, n_pixels=300, n_labels=3, snr=(15.0, 100.0), seed=0)
    # calibrate=False: this tutorial studies the statistical errors (Fisher vs NUTS vs emcee).
    fitted = Cannon(NAMES, order=2).fit(sim.dataset[:n_train], calibrate=False)
    test = sim.dataset[n_train:].replace(labels=None)
    truth = sim.true_labels[n_train:]
    print(f"Cannon trained on {n_train} simulated spectra (3 labels, 300 px); testing on {n_test}.")

    print("1–4. one star, from a poor start (Teff 4600 K, logg 2.2, [Fe/H] 0):")
    start = {"teff": 4600.0, "logg": 2.2, "fe_h": 0.0}
    with jax.enable_x64(True):
        args = (fitted, jnp.asarray(test.flux[0]), jnp.asarray(test.ivar[0]))
    summary = optimiser_race(args, start, dict(zip(NAMES, truth[0].tolist(), strict=True)), out)

    print(f"5. whitened NUTS on {n_nuts} stars (1 chain, {warmup} warm-up + {draws_per_star} draws):")
    t0 = time.perf_counter()
    nuts, draws = posterior_infer(
        fitted,
        test[:n_nuts],
        method="nuts",
        num_warmup=warmup,
        num_samples=draws_per_star,
        chunk_size=n_nuts,
        return_samples=True,
    )
    nuts_s = time.perf_counter() - t0
    fisher = posterior_infer(fitted, test, method="fisher", chunk_size=1024)
    star0 = draws[0].reshape(-1, 3)
    plot_posterior_corner(
        star0, NAMES, out / "corner_star0.png", truths=truth[0], gaussian=(fisher.labels[0], fisher.cov[0]),
        title="star 0: NUTS draws vs Fisher",
    )  # fmt: skip
    ess0 = min(float(nuts.extra[f"ess_{n}"][0]) for n in NAMES)
    print(f"  {nuts_s:.1f} s for {n_nuts} stars including compilation; star 0 min ESS {ess0:.0f}")
    emcee_result = emcee_comparison(fitted, test, star0, walkers, steps, burn)
    if "wall_s" in emcee_result:
        print(
            f"  emcee {walkers}×{steps}: {emcee_result['wall_s']:.1f} s, min ESS {emcee_result['min_ess']:.0f};"
            f" NUTS − emcee means (in σ): {np.round(emcee_result['mean_difference_in_sd'], 2).tolist()}"
        )

    print("6. calibration over the test set:")
    z = (fisher.labels - truth) / fisher.label_err
    zn = (nuts.labels - truth[:n_nuts]) / nuts.label_err
    for i, name in enumerate(NAMES):
        print(f"  {name:5s} Fisher std(z) {z[:, i].std():.3f}  |z|<1 {np.mean(np.abs(z[:, i]) < 1):.3f}")
    plot_zscore_histograms(
        fisher.labels, fisher.label_err, truth, NAMES, out / "zscores.png", title="Fisher, σ² + s²"
    )
    snr = np.median(sim.dataset.flux[n_train:] * np.sqrt(sim.dataset.ivar[n_train:]), axis=1)
    plot_uncertainty_vs_snr(
        fisher.label_err, snr, NAMES, out / "uncertainty_vs_snr.png", labels=fisher.labels, truth=truth
    )
    summary.update(
        nuts={
            "stars": n_nuts,
            "seconds_including_compile": nuts_s,
            "z_std_pooled": float(zn.std()),
            "rhat_max": float(max(nuts.extra[f"rhat_{n}"].max() for n in NAMES)),
            "sd_ratio_nuts_over_fisher_median": np.median(
                nuts.label_err / fisher.label_err[:n_nuts], axis=0
            ).tolist(),
        },
        emcee=emcee_result,
        fisher_calibration={
            name: {"z_std": float(z[:, i].std()), "frac_within_1": float(np.mean(np.abs(z[:, i]) < 1))}
            for i, name in enumerate(NAMES)
        },
        total_seconds=time.perf_counter() - clock,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['total_seconds']:.0f} s; figures and summary.json in {out}")


if __name__ == "__main__":
    main()
