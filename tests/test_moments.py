"""The moment trainer (models/cannon/_moments.py) against the exact EM trainer.

Both maximise the same θ-marginalised likelihood; the moment trainer only computes
the normal matrices from label moments and takes a fixed number of passes. On data
with known truth they must agree to well within the statistical errors, with
censoring, star weights and empty pixels, and ``Cannon.fit`` must use the moment
trainer for many-term models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from starlabel.data import LINE_ELEMENTS, simulate_cannon, simulate_lines
from starlabel.models.cannon import Cannon, PolynomialVectorizer
from starlabel.models.cannon import _moments as moments
from starlabel.models.cannon._moments import fit_moments, product_monomials
from starlabel.models.cannon._train import TrainingOptions, fit_pixels

N_STARS, N_PIXELS = 400, 60


@pytest.fixture(scope="module")
def sim():
    # Per-star S/N 40-150 (heteroscedastic across stars) and s up to 0.02: σ² and s² of
    # the same size, so the scatter really changes the weights.
    return simulate_cannon(N_STARS, N_PIXELS, 3, snr=(40.0, 150.0), scatter=0.01, seed=3)


def _design(sim):
    vec = PolynomialVectorizer.from_order(sim.dataset.label_names, 2)
    with jax.enable_x64(True):
        return vec, np.asarray(vec.design(jnp.asarray((sim.true_labels - sim.pivot) / sim.scale)))


def _exact(data, design, weights, active):
    with jax.enable_x64(True):
        theta, s2, ok, _, converged = fit_pixels(
            data.flux, data.ivar, design, weights, active, np.zeros(data.n_pixels), TrainingOptions(tol=1e-12)
        )
    assert converged
    return theta, s2, ok


def _assert_scatter_close(fast_s2, s2, ok):
    """s to 1e-4 (median) and 1e-3 (worst) relative; the leverage shape is approximate."""
    s, fast_s = np.sqrt(s2[ok]), np.sqrt(fast_s2[ok])
    assert np.max(np.abs(fast_s - s)) < 1e-3 * np.max(s)
    scattered = s > 0.05 * np.max(s)
    assert np.median(np.abs(fast_s - s)[scattered] / s[scattered]) < 1e-4
    assert np.max(np.abs(fast_s - s)[scattered] / s[scattered]) < 1e-3


def test_product_monomials_index_every_term_product(sim):
    vec, design = _design(sim)
    monomials, index = product_monomials(vec)
    assert monomials.n_terms == 35  # C(3 + 4, 4) monomials of degree ≤ 4 in 3 labels
    with jax.enable_x64(True):
        phi = np.asarray(monomials.design(jnp.asarray((sim.true_labels - sim.pivot) / sim.scale)))
    products = design[:, :, None] * design[:, None, :]
    np.testing.assert_allclose(phi[:, index], products, rtol=1e-12, atol=1e-12)


def test_moment_trainer_matches_the_exact_trainer(sim, rng):
    """Star weights, a pixel without data and one with too few stars: θ and s² as the EM's."""
    vec, design = _design(sim)
    data = sim.dataset
    ivar = data.ivar.copy()
    ivar[:, 5] = 0.0
    ivar[8:, 9] = 0.0
    data = data.replace(ivar=ivar)
    weights = rng.uniform(0.2, 2.0, N_STARS)
    active = np.ones((N_PIXELS, vec.n_terms), bool)
    theta, s2, ok = _exact(data, design, weights, active)
    # Two passes (the default) and three reach the EM's fixed point: θ to 2e-6 (its
    # standard error here is ~1e-3); one pass is 1e-3 off.
    for passes, theta_tol in ((1, 5e-3), (moments.MOMENT_PASSES, 2e-6), (3, 2e-6)):
        fast_theta, fast_s2, fast_ok = fit_moments(
            data.flux, data.ivar, design, vec, weights, active, passes=passes
        )
        np.testing.assert_array_equal(fast_ok, ok)
        assert not ok[5] and not ok[9]
        np.testing.assert_allclose(fast_theta, theta, atol=theta_tol)
        if passes > 1:
            _assert_scatter_close(fast_s2, s2, ok)


def test_censored_terms_are_exactly_zero_and_match_the_exact_trainer(sim, rng):
    vec, design = _design(sim)
    data = sim.dataset
    active = rng.random((N_PIXELS, vec.n_terms)) < 0.6
    active[:, 0] = True
    theta, s2, ok = _exact(data, design, np.ones(N_STARS), active)
    fast_theta, fast_s2, fast_ok = fit_moments(
        data.flux, data.ivar, design, vec, np.ones(N_STARS), active, passes=3
    )
    assert np.all(fast_theta[~active] == 0.0)
    np.testing.assert_array_equal(fast_ok, ok)
    np.testing.assert_allclose(fast_theta, theta, atol=2e-6)
    _assert_scatter_close(fast_s2, s2, ok)


def test_cannon_fit_trains_many_term_models_from_moments(sim, monkeypatch):
    data = sim.dataset
    exact = Cannon(label_names=data.label_names, tol=1e-12).fit(data, calibrate=False)
    monkeypatch.setattr(moments, "MOMENT_MIN_TERMS", 10)
    fast = Cannon(label_names=data.label_names).fit(data, calibrate=False)
    assert dict(fast.training_info)["em_iterations"] == moments.MOMENT_PASSES
    np.testing.assert_allclose(fast.theta, exact.theta, atol=5e-6)
    np.testing.assert_allclose(np.sqrt(fast.s2), np.sqrt(exact.s2), rtol=1e-3, atol=1e-5)
    # L1 keeps the exact trainer (the lasso needs the normal matrices at every step).
    vec, _ = _design(sim)
    assert moments.use_moments(vec, np.zeros(N_PIXELS))
    assert not moments.use_moments(vec, np.full(N_PIXELS, 1e-3))


def test_18_label_moment_trainer_maximises_the_marginal_likelihood():
    """18 labels (190 terms), 400 stars: s² is the maximum of the θ-marginalised
    likelihood (brute force, per pixel) and θ the normal equations' solution there."""
    sim = simulate_lines(400, elements=LINE_ELEMENTS, free_vmicro=True, n_pixels=64, seed=19)
    names = ("teff", "logg", "fe_h", "vmicro") + tuple(f"{e}_fe" for e in LINE_ELEMENTS)
    data = sim.dataset
    x = data.labels[:, [data.label_index(n) for n in names]]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    vec = PolynomialVectorizer.from_order(names, 2)
    assert vec.n_terms == 190
    with jax.enable_x64(True):
        design = np.asarray(vec.design(jnp.asarray(x)))
    active = np.ones((data.n_pixels, vec.n_terms), bool)
    theta, s2, ok = fit_moments(data.flux, data.ivar, design, vec, np.ones(400), active)
    assert ok.all()

    def solve(log_s2, p):
        good = data.ivar[:, p] > 0
        omega = data.ivar[good, p] / (1 + data.ivar[good, p] * np.exp(log_s2))
        A = design[good].T @ (omega[:, None] * design[good])
        th = np.linalg.solve(A, design[good].T @ (omega * data.flux[good, p]))
        r = data.flux[good, p] - design[good] @ th
        nll = 0.5 * np.sum(omega * r**2) - 0.5 * np.sum(np.log(omega)) + 0.5 * np.linalg.slogdet(A)[1]
        return nll, th, A

    for p in range(0, data.n_pixels, 16):
        best = minimize_scalar(lambda v, p=p: solve(v, p)[0], bounds=(-16, -4), method="bounded",
                               options={"xatol": 1e-7})  # fmt: skip
        _, th, A = solve(best.x, p)
        # With 190 terms fitted to 400 stars the leverage is half the residual variance,
        # and its shape is approximate: s to 2 % (its statistical error is ~5 %).
        assert np.sqrt(s2[p] / np.exp(best.x)) == pytest.approx(1.0, abs=0.02)
        # θ to a few % of its standard error.
        se = np.sqrt(np.diag(np.linalg.inv(A)))
        assert np.max(np.abs(theta[p] - th) / se) < 0.05
