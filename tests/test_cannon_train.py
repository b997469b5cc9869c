"""Cannon training: θ and s² against simulated truth, weights, bad pixels, censoring, L1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from starlabel.data import SpectralDataset, simulate_cannon
from starlabel.models.cannon import Cannon, PolynomialVectorizer, lasso_coordinate_descent, lasso_fista
from starlabel.models.cannon._l1 import lasso_kkt_violation, lasso_objective
from starlabel.models.cannon._train import TrainingOptions, fit_pixels

N_STARS, N_PIXELS = 400, 60
TOL = 1e-12  # one tolerance (and few shapes) everywhere, so trainings share compilations


@pytest.fixture(scope="module")
def sim():
    return simulate_cannon(N_STARS, N_PIXELS, 3, snr=(40.0, 150.0), scatter=0.01, seed=3)


def _sim_design(sim):
    vec = PolynomialVectorizer.from_order(sim.dataset.label_names, 2)
    with jax.enable_x64(True):
        return np.asarray(vec.design(jnp.asarray((sim.true_labels - sim.pivot) / sim.scale)))


def _train_in_sim_basis(sim, weights=None):
    options = TrainingOptions(tol=TOL)
    data = sim.dataset
    design = _sim_design(sim)
    weights = np.ones(data.n_stars) if weights is None else weights
    with jax.enable_x64(True):
        out = fit_pixels(
            data.flux, data.ivar, design, weights, np.ones((data.n_pixels, design.shape[1]), bool),
            np.zeros(data.n_pixels), options,
        )  # fmt: skip
    return design, out


def test_theta_recovered_within_its_own_uncertainty(sim):
    """In the simulator's label basis θ is directly comparable to the truth: the errors
    divided by the normal-equation standard errors must look like N(0, 1)."""
    design, (theta, s2, ok, n_iter, converged) = _train_in_sim_basis(sim)
    assert converged and ok.all() and n_iter < 30
    omega = sim.dataset.ivar / (1.0 + sim.dataset.ivar * s2)
    A = np.einsum("np,nt,nu->ptu", omega, design, design)
    se = np.sqrt(np.diagonal(np.linalg.inv(A), axis1=1, axis2=2))
    z = (theta - sim.theta) / se
    assert abs(z.mean()) < 0.1
    assert 0.9 < z.std() < 1.1


def test_scatter_recovered_and_unbiased(sim):
    _, (_, s2, _, _, _) = _train_in_sim_basis(sim)
    truth = sim.scatter**2
    # 400 stars give s² to ~10-20 %; the average over pixels must be unbiased.
    assert abs(s2.mean() / truth.mean() - 1) < 0.05
    assert np.corrcoef(np.sqrt(s2), sim.scatter)[0, 1] > 0.95


def test_scatter_maximises_the_weighted_marginal_likelihood(sim, rng):
    """Brute-force 1-D maximisation of the θ-marginalised likelihood agrees with the EM
    fixed point, with non-uniform star weights in both the θ and the s² terms."""
    weights = rng.uniform(0.2, 2.0, N_STARS)
    design, (_, s2, _, _, _) = _train_in_sim_basis(sim, weights)
    data = sim.dataset

    def negative_marginal(log_s2, p):
        omega = weights * data.ivar[:, p] / (1 + data.ivar[:, p] * np.exp(log_s2))
        A = design.T @ (omega[:, None] * design)
        theta = np.linalg.solve(A, design.T @ (omega * data.flux[:, p]))
        r = data.flux[:, p] - design @ theta
        return (
            0.5 * np.sum(omega * r**2)
            - 0.5 * np.sum(weights * np.log(omega / weights))
            + 0.5 * np.linalg.slogdet(A)[1]
        )

    for p in range(0, N_PIXELS, 12):
        best = minimize_scalar(lambda v, p=p: negative_marginal(v, p), bounds=(-20, -2), method="bounded",
                               options={"xatol": 1e-10})  # fmt: skip
        assert s2[p] == pytest.approx(np.exp(best.x), rel=1e-5)


def test_star_weight_two_equals_a_duplicated_star(sim):
    data = sim.dataset[:300]
    twice = SpectralDataset.concatenate([data, data[:100].replace(ids=[f"dup{i}" for i in range(100)])])
    model = Cannon(label_names=data.label_names, tol=TOL)
    by_weight = model.fit(data, star_weights=np.r_[np.full(100, 2.0), np.ones(200)], calibrate=False)
    by_copy = model.fit(twice, calibrate=False)
    np.testing.assert_allclose(by_weight.s2, by_copy.s2, rtol=1e-7, atol=1e-14)
    probe = sim.true_labels[:20]
    np.testing.assert_allclose(by_weight.predict_flux(probe), by_copy.predict_flux(probe), atol=1e-10)
    # a zero weight is the same as a star without information (ivar = 0)
    dropped = model.fit(data, star_weights=np.r_[np.zeros(100), np.ones(200)], calibrate=False)
    blind = model.fit(
        data.replace(ivar=np.where(np.arange(300)[:, None] < 100, 0.0, data.ivar)), calibrate=False
    )
    np.testing.assert_allclose(dropped.s2, blind.s2, rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(dropped.predict_flux(probe), blind.predict_flux(probe), atol=1e-10)


def test_public_fit_predicts_the_true_flux(sim):
    fitted = Cannon(label_names=sim.dataset.label_names, tol=TOL).fit(sim.dataset, calibrate=False)
    assert dict(fitted.training_info)["converged"]
    residual = fitted.predict_flux(sim.true_labels) - sim.true_flux
    # A least-squares fit of T terms to N stars leaves an error of about
    # sqrt(T/N) × (noise ⊕ scatter) on the mean model.
    per_star = np.median(1.0 / sim.dataset.ivar) + sim.scatter**2
    expected = np.sqrt(np.mean(10 / N_STARS * per_star))
    assert np.sqrt(np.mean(residual**2)) < 1.3 * expected
    assert fitted.theta.shape == (N_PIXELS, 10) and fitted.term_names[1] == "teff"


def test_empty_and_sparse_pixels_are_flagged_not_nan(sim):
    data = sim.dataset
    ivar = data.ivar.copy()
    ivar[:, 5] = 0.0  # no star
    ivar[8:, 9] = 0.0  # 8 stars for 10 terms
    fitted = Cannon(label_names=data.label_names, tol=TOL).fit(data.replace(ivar=ivar), calibrate=False)
    ok = np.asarray(fitted.pixel_ok)
    assert not ok[5] and not ok[9] and ok.sum() == N_PIXELS - 2
    assert np.all(np.isfinite(fitted.theta)) and np.all(np.isfinite(fitted.s2))
    assert dict(fitted.training_info)["bad_pixels"] == 2


def test_censored_label_has_exactly_zero_derivative_outside_its_windows(sim):
    data = sim.dataset
    wave = data.wavelength
    windows = [(wave[10], wave[20]), (wave[40], wave[45])]
    plain = Cannon(label_names=data.label_names, tol=TOL).fit(data, calibrate=False)
    censored = Cannon(label_names=data.label_names, censor={"fe_h": windows}, tol=TOL).fit(
        data, calibrate=False
    )
    inside = np.zeros(N_PIXELS, bool)
    inside[10:21] = inside[40:46] = True
    for point in (None, sim.true_labels[0], sim.true_labels[7]):
        derivative = censored.derivatives(point)
        assert np.all(derivative[2, ~inside] == 0.0)
        assert np.all(derivative[2, inside] != 0.0)
    # every term containing fe_h is exactly zero outside; the model still trains and
    # inside its windows agrees with the uncensored fit
    uses = PolynomialVectorizer.from_order(data.label_names, 2).exponent_array[:, 2] > 0
    assert np.all(np.asarray(censored.theta)[~inside][:, uses] == 0.0)
    assert np.all(np.asarray(censored.pixel_ok)) and dict(censored.training_info)["converged"]
    np.testing.assert_allclose(censored.derivatives()[:, inside], plain.derivatives()[:, inside], rtol=1e-6)
    # outside, the unmodelled [Fe/H] dependence is absorbed into larger scatter
    assert np.mean(np.asarray(censored.s2)[~inside]) > 2 * np.mean(np.asarray(plain.s2)[~inside])


def test_l1_sparsity_rises_with_strength(sim):
    data = sim.dataset
    zero_fraction = []
    for strength in (0.0, 3e2, 3e3, 3e4):
        fitted = Cannon(label_names=data.label_names, l1=strength, tol=TOL).fit(data, calibrate=False)
        theta = np.asarray(fitted.theta)
        assert np.all(theta[:, 0] != 0.0)  # the constant term is never penalised
        zero_fraction.append(np.mean(theta[:, 1:] == 0.0))
    assert zero_fraction[0] == 0.0
    assert all(b > a for a, b in zip(zero_fraction, zero_fraction[1:], strict=False))
    assert zero_fraction[-1] > 0.5


def test_l1_solvers_agree_on_the_trained_model(sim):
    data = sim.dataset
    per_pixel = np.linspace(1e3, 5e3, N_PIXELS)
    cd = Cannon(label_names=data.label_names, l1=per_pixel, tol=TOL).fit(data, calibrate=False)
    fista = Cannon(label_names=data.label_names, l1=per_pixel, tol=TOL, l1_solver="fista").fit(
        data, calibrate=False
    )
    np.testing.assert_allclose(cd.theta, fista.theta, atol=1e-7)
    np.testing.assert_allclose(cd.s2, fista.s2, rtol=1e-5, atol=1e-12)


def test_lasso_solvers_reach_the_same_optimum(rng):
    n_pixels, n_terms = 12, 6
    m = rng.normal(size=(n_pixels, 40, n_terms))
    A = np.einsum("pnt,pnu->ptu", m, m) + 0.1 * np.eye(n_terms)
    b = rng.normal(size=(n_pixels, n_terms)) * 5
    penalty = np.full((n_pixels, n_terms), 2.0)
    penalty[:, 0] = 0.0
    with jax.enable_x64(True):
        A, b, penalty = jnp.asarray(A), jnp.asarray(b), jnp.asarray(penalty)
        start = jnp.linalg.solve(A, b[..., None])[..., 0]
        cd, _ = lasso_coordinate_descent(A, b, penalty, start)
        fista, _ = lasso_fista(A, b, penalty, start, tol=1e-12)
        assert float(jnp.max(lasso_kkt_violation(A, b, penalty, cd))) < 1e-8
        assert float(jnp.max(lasso_kkt_violation(A, b, penalty, fista))) < 1e-6
        np.testing.assert_allclose(
            lasso_objective(A, b, penalty, cd), lasso_objective(A, b, penalty, fista), rtol=1e-10
        )
        np.testing.assert_allclose(cd, fista, atol=1e-6)
        assert np.mean(np.asarray(cd)[:, 1:] == 0) > 0.1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"label_names": "teff"}, TypeError, "not the string"),
        ({"label_names": ("teff", "teff")}, ValueError, "repeats"),
        ({"label_names": ("teff",), "l1": -1.0}, ValueError, "non-negative"),
        ({"label_names": ("teff",), "l1_solver": "powell"}, ValueError, "coordinate_descent"),
        ({"label_names": ("teff",), "terms": "teff + vmic"}, ValueError, "unknown label 'vmic'"),
        ({"label_names": ("teff",), "order": 0}, ValueError, "order"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        Cannon(**kwargs)


def test_bad_training_inputs_are_rejected(sim):
    data = sim.dataset[:40]
    model = Cannon(label_names=data.label_names)
    with pytest.raises(ValueError, match=r"lacks labels \['vmic'\]"):
        Cannon(label_names=("teff", "vmic")).fit(data)
    with pytest.raises(ValueError, match="has no labels"):
        model.fit(SpectralDataset(data.flux, ivar=data.ivar))
    with pytest.raises(ValueError, match=r"one weight per star of the training set, \(40,\)"):
        model.fit(data, star_weights=np.ones(3))
    with pytest.raises(ValueError, match="≥ 0"):
        model.fit(data, star_weights=-np.ones(40))
    with pytest.raises(ValueError, match="more stars than terms"):
        model.fit(data[:8])
    with pytest.raises(ValueError, match=r"one value per pixel \(60,\)"):
        Cannon(label_names=data.label_names, l1=np.ones(7)).fit(data)
