"""Cannon test step: accuracy against the Cramér–Rao floor, starts, bounds, frozen
labels, flags, the log-likelihood, save/load and bad input.

All inference calls use 512 spectra, 100 pixels and the default options, so they share
one compilation.
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.data import Flag, SpectralDataset, simulate_cannon
from starlabel.models import load_model
from starlabel.models.cannon import Cannon, FittedCannon
from starlabel.models.cannon import _infer as cannon_infer
from starlabel.models.cannon._infer import fit_chunk
from starlabel.models.cannon._test_step import (
    LabelStepOptions,
    _levenberg_marquardt,
    spectrum_stats,
    theta_pairs,
)

N_TRAIN, N_TEST, N_PIXELS, TEST_SNR = 1000, 1024, 100, 30.0


@pytest.fixture(scope="module")
def setup():
    """High-S/N training set; low-S/N test spectra re-noised from the true flux."""
    sim = simulate_cannon(N_TRAIN + N_TEST, N_PIXELS, 3, snr=200.0, scatter=0.005, seed=11)
    test_index = np.arange(N_TRAIN, N_TRAIN + N_TEST)
    rng = np.random.default_rng(5)
    truth_flux = sim.true_flux[test_index]
    noisy = (
        truth_flux
        + rng.normal(size=truth_flux.shape) * sim.scatter
        + rng.normal(size=truth_flux.shape) / TEST_SNR
    )
    test = sim.dataset[test_index].replace(flux=noisy, flux_err=np.full(noisy.shape, 1 / TEST_SNR))
    fitted = Cannon(label_names=sim.dataset.label_names).fit(sim.dataset[:N_TRAIN], calibrate=False)
    return sim, fitted, test, sim.true_labels[test_index]


def _true_fisher(sim, labels):
    """Fisher matrices of the *true* model (numpy, finite differences of the simulator's
    quadratic), with noise σ = 1/S/N plus the true intrinsic scatter."""

    def model(points):
        x = (points - sim.pivot) / sim.scale
        columns = [np.ones(len(x))] + [x[:, k] for k in range(3)]
        columns += [x[:, i] * x[:, j] for i, j in itertools.combinations_with_replacement(range(3), 2)]
        return np.stack(columns, axis=1) @ sim.theta.T

    step = sim.scale * 1e-4
    jac = np.stack(
        [
            (model(labels + step * e) - model(labels - step * e)) / (2 * step[k])
            for k, e in enumerate(np.eye(3))
        ],
        axis=2,
    )
    weight = 1.0 / (1.0 / TEST_SNR**2 + sim.scatter**2)
    return np.einsum("npk,p,npl->nkl", jac, weight, jac)


def test_labels_reach_the_cramer_rao_floor(setup):
    sim, fitted, test, truth = setup
    result = fitted.infer(test)
    floor = np.sqrt(np.mean(np.diagonal(np.linalg.inv(_true_fisher(sim, truth)), axis1=1, axis2=2), axis=0))
    rmse = np.sqrt(np.mean((result.labels - truth) ** 2, axis=0))
    assert np.all(rmse / floor < 1.05), rmse / floor
    # the reported (Fisher, σ² + s²) uncertainties are the floor and are calibrated
    np.testing.assert_allclose(np.sqrt(np.mean(result.label_err**2, axis=0)) / floor, 1.0, atol=0.03)
    z = (result.labels - truth) / result.label_err
    assert np.all(np.abs(z.std(axis=0) - 1) < 0.07)
    assert np.mean(result.flags == 0) > 0.9
    assert np.all(result.extra["n_iter"] <= 100)
    np.testing.assert_allclose(np.median(result.reduced_chi2), 1.0, atol=0.03)
    np.testing.assert_array_equal(result.ids, test.ids)


def test_bad_starting_points_still_converge(setup):
    """Levenberg–Marquardt from the corners of a box three training widths wide ends at
    the same labels as the multi-start test step."""
    _, fitted, test, _ = setup
    subset = test[:64]
    full = fitted.infer(test[:512])
    reference, sigma = full.labels[:64], full.label_err[:64]
    shift, scale = np.asarray(fitted.label_scaler.shift), np.asarray(fitted.label_scaler.scale)
    corners = np.array(list(itertools.product([-3.0, 3.0], repeat=3)))
    free, lower, upper = jnp.ones(3, bool), jnp.full(3, -10.0), jnp.full(3, 10.0)

    with jax.enable_x64(True):
        pairs = theta_pairs(fitted.theta)

        def solve(flux, ivar, start, max_iter):
            stats = spectrum_stats(flux[None], ivar[None], fitted.theta, pairs, fitted.s2, fitted.pixel_ok)
            stats = jax.tree.map(lambda a: a[0], stats)
            return _levenberg_marquardt(fitted.vectorizer, stats, start, free, lower, upper, max_iter, 1e-6)

        per_corner = jax.jit(
            jax.vmap(jax.vmap(solve, in_axes=(None, None, 0, None)), in_axes=(0, 0, None, None))
        )
        out = per_corner(
            jnp.asarray(subset.flux), jnp.asarray(subset.ivar), jnp.asarray(corners), jnp.array(100)
        )
        assert np.all(np.asarray(out.converged))
        labels = np.asarray(out.x) * scale + shift  # (stars, corners, labels)
        # converged means a further Gauss–Newton step would gain < 1e-6 in χ², i.e.
        # the labels agree to ~1e-3 of their own uncertainty
        assert np.max(np.abs(labels - reference[:, None, :]) / sigma[:, None, :]) < 1e-2
        # and two iterations are not enough: the solver reports it
        short = per_corner(
            jnp.asarray(subset.flux), jnp.asarray(subset.ivar), jnp.asarray(corners), jnp.array(2)
        )
        assert not np.any(np.asarray(short.converged))


def test_frozen_labels_stay_fixed_and_drop_out_of_the_covariance(setup):
    _, fitted, test, truth = setup
    batch, true = test[:512], truth[:512]
    free = fitted.infer(batch)
    frozen = fitted.infer(batch, frozen={"logg": true[:, 1]})
    np.testing.assert_allclose(frozen.labels[:, 1], true[:, 1], rtol=1e-12)
    assert np.all(frozen.cov[:, 1, :] == 0) and np.all(frozen.cov[:, :, 1] == 0)
    # knowing logg shrinks the other labels' Fisher errors (evaluated at each fit's own
    # labels, so compare on average), and they become more accurate
    assert np.all(frozen.label_err[:, [0, 2]].mean(axis=0) < free.label_err[:, [0, 2]].mean(axis=0))
    frozen_rmse = np.sqrt(np.mean((frozen.labels - true) ** 2, axis=0))
    free_rmse = np.sqrt(np.mean((free.labels - true) ** 2, axis=0))
    assert np.all(frozen_rmse[[0, 2]] < free_rmse[[0, 2]])
    assert np.all(frozen.dof == free.dof + 1)
    one_value = fitted.infer(batch, frozen={"fe_h": -0.1})
    assert np.all(one_value.labels[:, 2] == pytest.approx(-0.1))


def test_bounds_are_respected_and_flagged(setup):
    _, fitted, test, truth = setup
    batch, true = test[:512], truth[:512]
    low, high = 4500.0, 4900.0
    result = fitted.infer(batch, bounds={"teff": (low, high), "logg": (None, None)})
    teff = result.labels[:, 0]
    assert np.all((teff >= low - 1e-6) & (teff <= high + 1e-6))
    hit = (result.flags & Flag.HIT_BOUND) != 0
    far_outside = (true[:, 0] < low - 100.0) | (true[:, 0] > high + 100.0)  # > 3σ outside
    assert far_outside.sum() > 100 and np.all(hit[far_outside])
    np.testing.assert_allclose(np.minimum(np.abs(teff[hit] - low), np.abs(teff[hit] - high)), 0.0, atol=1e-6)
    well_inside = (true[:, 0] > low + 150.0) & (true[:, 0] < high - 150.0)  # > 4σ inside
    assert well_inside.sum() > 20 and not np.any(hit[well_inside])


def test_quality_flags(setup):
    sim, fitted, test, truth = setup
    batch = test[:512]
    flux, ivar = batch.flux.copy(), batch.ivar.copy()
    rng = np.random.default_rng(1)
    ivar[0:4, 5:] = 0.0  # 5 good pixels for a 10-term model
    ivar[4] = 0.0  # nothing at all
    flux[5:10] += rng.normal(0.0, 0.2, size=(5, N_PIXELS))  # noise far above the reported errors
    hot = np.column_stack([np.full(4, 6500.0), np.full(4, 4.5), np.full(4, 0.3)])
    flux[10:14] = fitted.predict_flux(hot) + rng.normal(0.0, 1 / TEST_SNR, size=(4, N_PIXELS))
    result = fitted.infer(batch.replace(flux=flux, ivar=ivar))
    flags = result.flags
    assert np.all(flags[0:5] & Flag.FEW_PIXELS)
    assert np.all(np.isnan(result.labels[4])) and np.isnan(result.chi2[4])
    assert np.all(flags[5:10] & Flag.POOR_FIT)
    assert np.all(flags[10:14] & Flag.OUTSIDE_TRAINING)
    assert np.mean(flags[14:] == 0) > 0.9
    assert not np.any(flags[14:] & (Flag.FEW_PIXELS | Flag.POOR_FIT | Flag.BAD_COVARIANCE))
    assert Flag.describe(int(flags[0])).startswith("FEW_PIXELS") or "FEW_PIXELS" in Flag.describe(
        int(flags[0])
    )


def test_log_likelihood_is_jax_differentiable_and_consistent(setup):
    _, fitted, test, _ = setup
    result = fitted.infer(test[:512])
    star = 3
    flux, ivar = test.flux[star], test.ivar[star]
    with jax.enable_x64(True):
        # the model is a pytree: pass it as an argument, not as a closed-over constant
        loglike = jax.jit(FittedCannon.log_likelihood)
        best = jnp.asarray(result.labels[star])
        gradient = np.asarray(jax.grad(fitted.log_likelihood)(best, jnp.asarray(flux), jnp.asarray(ivar)))
        # at the maximum-likelihood labels the gradient vanishes (relative to 1σ steps)
        assert np.all(np.abs(gradient * result.label_err[star]) < 1e-3)
        moved = best + jnp.asarray(result.label_err[star])
        delta = float(loglike(fitted, moved, flux, ivar) - loglike(fitted, best, flux, ivar))
    # −2 Δ ln L equals Δχ² computed independently with numpy
    omega = ivar / (1 + ivar * np.asarray(fitted.s2))
    chi2 = [
        np.sum(omega * (flux - fitted.predict_flux(p)[0]) ** 2) for p in (np.asarray(best), np.asarray(moved))
    ]
    assert -2 * delta == pytest.approx(chi2[1] - chi2[0], rel=1e-8)
    assert chi2[0] == pytest.approx(result.chi2[star], rel=1e-8)


def test_save_load_round_trip_gives_identical_inference(setup, tmp_path):
    _, fitted, test, _ = setup
    path = fitted.save(tmp_path / "model.starlabel")
    loaded = load_model(path)
    assert isinstance(loaded, FittedCannon)
    assert loaded.term_names == fitted.term_names and loaded.training_info == fitted.training_info
    for name in ("theta", "s2", "pixel_ok", "allowed", "l1", "wavelength"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
    before, after = fitted.infer(test[:512]), loaded.infer(test[:512])
    np.testing.assert_array_equal(before.labels, after.labels)
    np.testing.assert_array_equal(before.cov, after.cov)
    np.testing.assert_array_equal(before.flags, after.flags)


def test_bad_inference_inputs_are_rejected(setup):
    _, fitted, test, _ = setup
    batch = test[:4]
    with pytest.raises(ValueError, match="trained on 100"):
        fitted.infer(SpectralDataset(batch.flux[:, :50], ivar=batch.ivar[:, :50]))
    with pytest.raises(ValueError, match="wavelength grid"):
        fitted.infer(batch.replace(wavelength=batch.wavelength * 1.001))
    with pytest.raises(ValueError, match="unknown label 'vmic'"):
        fitted.infer(batch, bounds={"vmic": (0, 1)})
    with pytest.raises(ValueError, match="low < high"):
        fitted.infer(batch, bounds={"teff": (5000, 4000)})
    with pytest.raises(ValueError, match=r"one value per star \(4,\)"):
        fitted.infer(batch, frozen={"teff": np.ones(3)})
    with pytest.raises(ValueError, match="every label is frozen"):
        fitted.infer(batch, frozen={"teff": 4500.0, "logg": 2.0, "fe_h": 0.0})
    with pytest.raises(ValueError, match="n_starts"):
        fitted.infer(batch, n_starts=0)
    with pytest.raises(TypeError, match="SpectralDataset"):
        fitted.infer(batch.flux)
    with pytest.raises(ValueError, match=r"\(stars, 3\)"):
        fitted.predict_flux(np.ones((2, 4)))
    assert LabelStepOptions().max_iter == 100


@pytest.mark.parametrize("n_stars", [1, 300])
def test_sufficient_statistics_match_the_pixel_sums(setup, n_stars):
    """Blocked (c, g, H) equal Σ ω f², Θᵀ(ω f), Θᵀ diag(ω) Θ with ω = 1/(σ² + s²) on
    usable pixels — also when the star count is not a multiple of the block."""
    _, fitted, test, _ = setup
    rng = np.random.default_rng(8)
    flux = rng.normal(1.0, 0.05, (n_stars, N_PIXELS))
    ivar = rng.uniform(0.0, 900.0, (n_stars, N_PIXELS))
    ivar[:, ::7] = 0.0  # pixels without information
    theta, s2 = np.asarray(fitted.theta), np.asarray(fitted.s2)
    ok = np.asarray(fitted.pixel_ok).copy()
    ok[3] = False
    with jax.enable_x64(True):
        stats = jax.jit(spectrum_stats)(flux, ivar, theta, theta_pairs(theta), s2, ok)
    omega = np.where(ok & (ivar > 0), ivar / (1.0 + ivar * s2), 0.0)
    np.testing.assert_allclose(stats.c, np.sum(omega * flux**2, axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.g, (omega * flux) @ theta, rtol=1e-10, atol=1e-8)
    expected_H = np.einsum("np,pi,pj->nij", omega, theta, theta)
    np.testing.assert_allclose(stats.H, expected_H, rtol=1e-10, atol=1e-8)
    np.testing.assert_array_equal(stats.n_good, np.sum(omega > 0, axis=1))


@pytest.fixture
def traced_here(monkeypatch):
    """Trace in this process: a CLI test run earlier in the same worker switches on the
    persistent cache, whose exported programs would load without tracing fit_chunk."""
    monkeypatch.setattr(cannon_infer, "exported_dir", lambda: None)


def test_second_test_step_call_does_not_retrace(setup, traced_here):
    # fit_chunk carries an eqx.debug.assert_max_traces counter: a second call on the same
    # shapes must reuse the compiled program (a retrace costs seconds per chunk).
    _, fitted, test, _ = setup
    fitted.infer(test[:512])
    traced = eqx.debug.get_num_traces(fit_chunk)
    assert traced >= 1
    fitted.infer(test[:512])
    assert eqx.debug.get_num_traces(fit_chunk) == traced


def test_infer_of_any_size_reuses_one_compiled_program(setup, traced_here):
    # Every call runs in full chunks, so the calibration's held-out folds at training
    # time, a handful of spectra and a full chunk all run one compiled test step.
    _, fitted, test, truth = setup
    fitted.infer(test[:5])
    traced = eqx.debug.get_num_traces(fit_chunk)
    for n in (1, 7, 40, 300):
        result = fitted.infer(test[:n])
        assert result.n_stars == n
        np.testing.assert_allclose(result.labels[:, 0], truth[:n, 0], atol=10 * np.std(truth[:, 0]))
    assert eqx.debug.get_num_traces(fit_chunk) == traced
