"""The 18-label Payne beside the 18-label Cannon (``benchmarks/abundances.py --payne``).

Issue 19, deliverable 5 for the Payne. On one set of line-list spectra (``simulate_lines``
with the 14 free elements and a free vmicro: Teff, logg, [Fe/H], vmicro + 14 [X/Fe];
7,214 pixels) three models are trained and scored per label, side by side:

* the quadratic Cannon (190 terms, the moment trainer) without censoring;
* the same Cannon censored to the simulator's element windows
  (``LineSimulation.element_windows``: the analogue of ASPCAP's windows for these
  lines, whose wavelengths are drawn, not real — ASPCAP's own windows from
  ``../shared/data/apogee/`` match no line of this simulator);
* the Payne with its defaults (optionally ``--payne-components``), uncensored.

**Windows and the network.** A Cannon is censored by pinning an element's coefficients
to zero outside its windows: the flux depends on the label only there, by
construction. A dense network has no per-label coefficient to pin; the equivalent would
be a constrained architecture (an element's label entering only a window-restricted
sub-network) or a training penalty on ∂flux/∂label outside the windows, neither of
which the Payne has. So the Payne is trained and fitted uncensored, and the benchmark
measures what censoring would act on: per element label, the share of its Fisher
information ``Σ_p ω_p (∂f_p/∂ℓ_k)²`` (at the test stars' true labels) that the trained
network draws from pixels *outside* the element's windows, beside the same share for
the uncensored Cannon. A share near the simulator's own (the truth's lines lie only in
the windows, so any outside information is borrowed through correlations or learned
noise) would mean censoring has nothing to remove.

Per model and label: RMSE against the truth, std of z with the statistical errors
(``calibrate=False`` for all three: the same footing; the calibrated errors are
``docs/uncertainties.md``'s subject), and RMSE over the Cramér–Rao bound on spectra
drawn from the model's own family (its flux at the test labels + noise of variance
σ² + s²; the bound is the inverse Fisher matrix at the truth). Per model: training
wall and CPU seconds (including compilation), the test step's spectra/s in wall and
CPU seconds (second call, compiled).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _common import log

from starlabel.data import LINE_ELEMENTS, SpectralDataset, simulate_lines
from starlabel.models.cannon import Cannon, FittedCannon
from starlabel.models.payne import FittedPayne, Payne

LABELS = ("teff", "logg", "fe_h", "vmicro") + tuple(f"{e}_fe" for e in LINE_ELEMENTS)
ELEMENT_LABELS = LABELS[4:]


def _round(values: np.ndarray, digits: int = 4) -> dict[str, float]:
    return {n: round(float(v), digits) for n, v in zip(LABELS, values, strict=True)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall seconds and its process CPU seconds (all threads)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - start_cpu


def jacobian_blocks(flux: Callable, truth: np.ndarray, block: int = 64):
    """``∂flux/∂labels`` (stars, pixels, labels) at ``truth``, in blocks of ``block`` stars (float64)."""
    jac = jax.jit(jax.vmap(jax.jacfwd(flux)))
    for start in range(0, len(truth), block):
        rows = slice(start, start + block)
        with jax.enable_x64(True):
            yield rows, np.asarray(jac(jnp.asarray(truth[rows], dtype=jnp.float64)))


def fisher_summary(
    flux: Callable, truth: np.ndarray, total: np.ndarray, pixel_ok: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-star CRB variances (stars, labels) and, per label, the median share of its Fisher
    information from pixels outside ``allowed`` (labels, pixels).

    ``total`` (stars, pixels) is the noise σ ⊕ s the spectra have.
    """
    variances, outside = [], []
    for rows, jac in jacobian_blocks(flux, truth):
        omega = np.where(pixel_ok, 1.0 / total[rows] ** 2, 0.0)
        fisher = np.einsum("npk,np,npj->nkj", jac, omega, jac)
        # A censored label without window pixels has no information: an infinite bound.
        blind = np.diagonal(fisher, axis1=1, axis2=2) <= 0
        inverse = np.diagonal(np.linalg.pinv(fisher, hermitian=True), axis1=1, axis2=2)
        variances.append(np.where(blind, np.inf, inverse))
        info = omega[:, :, None] * jac**2  # (stars, pixels, labels)
        out_info = np.einsum("npk,kp->nk", info, ~allowed)
        outside.append(out_info / np.maximum(info.sum(axis=1), 1e-300))
    return np.concatenate(variances), np.median(np.concatenate(outside), axis=0)


def noise_total(test: SpectralDataset, s2: np.ndarray) -> np.ndarray:
    """σ ⊕ s per star and pixel (masked pixels: the median σ)."""
    good = test.ivar > 0
    sigma = np.where(good, 1.0 / np.sqrt(np.where(good, test.ivar, 1.0)), 0.0)
    sigma = np.where(good, sigma, np.median(sigma[good]))
    return np.sqrt(sigma**2 + s2[None, :])


def score(model, test: SpectralDataset, truth: np.ndarray, chunk: dict) -> dict:
    """RMSE and std z per label; the test step's compiled (second) call in wall and CPU seconds."""
    model.infer(test, calibrate=False, **chunk)  # compile
    result, wall, cpu = _timed(lambda: model.infer(test, calibrate=False, **chunk))
    err = np.sqrt(np.diagonal(result.cov, axis1=1, axis2=2))
    z = (result.labels - truth) / err
    return {
        "test_step_seconds": round(wall, 2),
        "test_step_cpu_seconds": round(cpu, 2),
        "test_step_spectra_per_s": round(len(truth) / wall, 1),
        "test_step_spectra_per_cpu_s": round(len(truth) / cpu, 1),
        "rmse": _round(np.sqrt(np.nanmean((result.labels - truth) ** 2, axis=0))),
        "std_z_statistical": _round(np.nanstd(z, axis=0), 3),
        "flagged_fraction": round(float(np.mean(result.flags != 0)), 3),
    }


def own_family(model, flux: Callable, test: SpectralDataset, truth: np.ndarray, allowed: np.ndarray,
               chunk: dict, seed: int = 5) -> dict:  # fmt: skip
    """RMSE / CRB per label on spectra from the model's own family; Fisher share outside windows."""
    s2 = np.asarray(model.s2, dtype=np.float64)
    total = noise_total(test, s2)
    rng = np.random.default_rng(seed)
    noisy = model.predict_flux(truth) + rng.normal(size=total.shape) * total
    sigma2 = total**2 - s2[None, :]
    data = SpectralDataset(noisy, ivar=1.0 / sigma2, wavelength=test.wavelength)
    result = model.infer(data, calibrate=False, **chunk)
    variance, outside = fisher_summary(flux, truth, total, np.asarray(model.pixel_ok), allowed)
    crb = np.sqrt(np.mean(variance, axis=0))
    rmse = np.sqrt(np.mean((result.labels - truth) ** 2, axis=0))
    ratio = rmse / crb
    return {
        "crb": _round(crb),
        "rmse_over_crb": _round(ratio, 3),
        "max_abs_ratio_minus_1": round(float(np.max(np.abs(ratio - 1))), 3),
        "ratio_standard_error": round(float(1.0 / np.sqrt(2.0 * len(truth))), 3),
        "met_10_percent": bool(np.all(np.abs(ratio - 1) <= 0.10)),
        "fisher_share_outside_windows_median": {
            n: round(float(v), 3) for n, v in zip(LABELS, outside, strict=True) if n in ELEMENT_LABELS
        },
    }


def cannon_flux(fitted: FittedCannon) -> Callable:
    """Labels (own units) → flux of a fitted Cannon, in JAX (for the Jacobian)."""
    shift = jnp.asarray(fitted.label_scaler.shift)
    scale = jnp.asarray(fitted.label_scaler.scale)
    theta = jnp.asarray(fitted.theta)
    return lambda labels: theta @ fitted.vectorizer((labels - shift) / scale)


def pca_residual(clean: np.ndarray) -> dict[str, float]:
    """RMS residual of the noise-free training spectra after K principal components."""
    centred = clean - clean.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = {}
    for k in (16, 32, 64, 128):
        resid = centred - (centred @ vt[:k].T) @ vt[:k]
        out[str(k)] = round(float(np.sqrt(np.mean(resid**2))), 6)
    return out


def payne_case(args: argparse.Namespace) -> dict:
    n = args.n_train + args.n_test
    log(f"simulating {n} line-list spectra (18 labels, {args.pixels} px)")
    sim = simulate_lines(n, elements=LINE_ELEMENTS, free_vmicro=True, n_pixels=args.pixels,
                         first_pixel=args.first_pixel, seed=19)  # fmt: skip
    index = [sim.dataset.label_names.index(name) for name in LABELS]
    data = sim.dataset.replace(labels=sim.dataset.labels[:, index], label_names=LABELS)
    train, test = data[np.arange(args.n_train)], data[np.arange(args.n_train, n)]
    truth = np.asarray(test.labels)
    clean = sim.true_flux[: min(args.n_train, 2000)] / sim.continuum[: min(args.n_train, 2000)]
    out: dict = {
        "n_train": args.n_train,
        "n_test": args.n_test,
        "n_pixels": args.pixels,
        "labels": list(LABELS),
        "simulator": "simulate_lines(elements=LINE_ELEMENTS, free_vmicro=True, seed=19): giants",
        "censor_windows": "the simulator's element windows (+-3 px around each line of the element)",
        "pca_rms_residual_by_components": pca_residual(clean),
        "median_flux_noise": round(float(np.median(1 / np.sqrt(train.ivar[train.ivar > 0]))), 5),
        "errors": "statistical (calibrate=False) for every model",
        "models": {},
    }
    log("PCA residual by K", out["pca_rms_residual_by_components"])
    windows = sim.element_windows()
    allowed = None
    settings: dict[str, Any] = {}
    if args.payne_components is not None:
        settings["n_components"] = args.payne_components
    if args.payne_epochs is not None:
        settings["epochs"] = args.payne_epochs
    configs = {
        "cannon": Cannon(label_names=LABELS),
        "cannon_censored": Cannon(label_names=LABELS, censor=windows),
        "payne": Payne(LABELS, **settings),
    }
    for name, config in configs.items():
        log(f"{name}: training on {args.n_train} x {args.pixels}")
        fitted, wall, cpu = _timed(lambda config=config: config.fit(train, calibrate=False))
        block: dict = {"train_seconds_including_compile": round(wall, 1), "train_cpu_seconds": round(cpu, 1)}
        if isinstance(fitted, FittedCannon):
            chunk = {"chunk_size": args.chunk}
            block["trainer_passes"] = dict(fitted.training_info).get("em_iterations")
            if name == "cannon_censored":
                allowed = np.asarray(fitted.allowed)
            flux = cannon_flux(fitted)
        else:
            assert isinstance(fitted, FittedPayne)
            chunk = {}
            block["settings"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in config.hyperparameters().items()
            }  # type: ignore[union-attr]
            block["epochs_run"] = int(fitted.train_loss.shape[0])
            block["best_epoch"] = int(fitted.best_epoch)
            block["best_val_mse"] = float(np.min(np.asarray(fitted.val_loss)))
            flux = fitted.flux_model().flux
        block.update(score(fitted, test, truth, chunk))
        log(f"  {name}: {block}")
        out["models"][name] = {"fitted": fitted, "flux": flux, "block": block, "chunk": chunk}
    assert allowed is not None
    for name, entry in out["models"].items():
        log(f"{name}: model's own family")
        entry["block"]["own_family"] = own_family(
            entry["fitted"], entry["flux"], test, truth, allowed, entry["chunk"]
        )
        log(f"  {entry['block']['own_family']}")
        out["models"][name] = entry["block"]
    out["window_pixels"] = {n: int(allowed[k].sum()) for k, n in enumerate(LABELS) if n in ELEMENT_LABELS}
    out["side_by_side"] = side_by_side(out["models"])
    return out


def side_by_side(models: dict) -> dict:
    """Per label: RMSE of each model, the Payne's over the Cannon's, RMSE/CRB of each."""
    table = {}
    for n in LABELS:
        row = {f"rmse_{m}": models[m]["rmse"][n] for m in models}
        row["payne_over_cannon_rmse"] = round(models["payne"]["rmse"][n] / models["cannon"]["rmse"][n], 3)
        row.update({f"rmse_over_crb_{m}": models[m]["own_family"]["rmse_over_crb"][n] for m in models})
        row.update({f"std_z_{m}": models[m]["std_z_statistical"][n] for m in models})
        table[n] = row
    return table
