"""Label priors: densities against SciPy, JSON round trips, resolution and errors."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

from starlabel.inference._prior_choice import prior_from_dict, resolve_prior
from starlabel.inference._priors import DistributionPrior, FlatPrior, GaussianPrior, KDEPrior

NAMES = ("teff", "logg", "m_h")


@pytest.fixture
def labels(rng):
    cov = np.array([[300.0**2, 0.8 * 300 * 0.5, 0.0], [0.8 * 300 * 0.5, 0.25, 0.02], [0.0, 0.02, 0.09]])
    return rng.multivariate_normal([4800.0, 2.5, -0.1], cov, size=300)


def _log_prob(prior, points):
    with jax.enable_x64(True):
        return np.asarray(eqx.filter_jit(lambda p, x: jax.vmap(p.log_prob)(x))(prior, jnp.asarray(points)))


def test_gaussian_prior_matches_scipy(labels, rng):
    prior = GaussianPrior.fit(labels, NAMES)
    points = labels[:20] + rng.normal(0, 1, (20, 3)) * [100, 0.2, 0.1]
    reference = stats.multivariate_normal(labels.mean(0), np.cov(labels, rowvar=False)).logpdf(points)
    np.testing.assert_allclose(_log_prob(prior, points), reference, rtol=1e-10)


def test_kde_prior_matches_scipy_gaussian_kde(labels, rng):
    prior = KDEPrior.fit(labels, NAMES)  # Scott's rule, full covariance, like scipy
    points = labels[:20] + rng.normal(0, 1, (20, 3)) * [100, 0.2, 0.1]
    reference = stats.gaussian_kde(labels.T, bw_method="scott").logpdf(points.T)
    np.testing.assert_allclose(_log_prob(prior, points), reference, rtol=1e-9)


def test_localised_kde_agrees_near_its_centre(labels):
    prior = KDEPrior.fit(labels, NAMES, n_local=64)
    with jax.enable_x64(True):
        local = prior.localise(jnp.asarray(labels[0]))
        offsets = np.array([[0, 0, 0], [30, 0.05, 0.02], [-40, -0.06, 0.03]])
        near = labels[0] + offsets
        full = _log_prob(prior, near)
        approx = _log_prob(local, near)
    assert approx[0] == pytest.approx(full[0], abs=1e-12)
    np.testing.assert_allclose(approx, full, atol=0.02)


@pytest.mark.parametrize(
    "make",
    [
        lambda L: FlatPrior(NAMES),
        lambda L: GaussianPrior.fit(L, NAMES),
        lambda L: KDEPrior.fit(L, NAMES, bandwidth=0.3),
        lambda L: DistributionPrior(
            NAMES, dist.Normal(jnp.array([4800.0, 2.5, 0.0]), jnp.array([300.0, 0.5, 0.3])).to_event(1)
        ),
        lambda L: DistributionPrior(
            NAMES,
            dist.MultivariateNormal(jnp.array([4800.0, 2.5, 0.0]), jnp.diag(jnp.array([9e4, 0.25, 0.09]))),
        ),
        lambda L: DistributionPrior(
            NAMES, dist.Uniform(jnp.array([4000.0, 1.0, -1.0]), jnp.array([5500.0, 3.5, 0.5])).to_event(1)
        ),
    ],
)
def test_priors_round_trip_through_json(make, labels):
    with jax.enable_x64(True):
        prior = make(labels)
        text = json.dumps(prior.to_dict())
        again = prior_from_dict(json.loads(text))
    assert type(again) is type(prior) and again.label_names == NAMES
    points = labels[:5]
    np.testing.assert_allclose(_log_prob(again, points), _log_prob(prior, points), rtol=1e-12)


def test_uniform_distribution_prior_support_is_its_bounds():
    prior = DistributionPrior(
        NAMES, dist.Uniform(jnp.array([4000.0, 1.0, -1.0]), jnp.array([5500.0, 3.5, 0.5])).to_event(1)
    )
    lower, upper = prior.support()
    np.testing.assert_allclose(lower, [4000.0, 1.0, -1.0])
    np.testing.assert_allclose(upper, [5500.0, 3.5, 0.5])
    assert _log_prob(prior, np.array([[6000.0, 2.0, 0.0]]))[0] == -np.inf


def test_resolve_prior_names_and_reordering(labels):
    assert isinstance(resolve_prior(None, NAMES), FlatPrior)
    assert isinstance(resolve_prior("none", NAMES), FlatPrior)
    kde = resolve_prior("kde", NAMES, labels)
    assert isinstance(kde, KDEPrior)
    swapped = resolve_prior(kde, ("logg", "teff", "m_h"))
    point = labels[3]
    assert _log_prob(swapped, point[[1, 0, 2]][None])[0] == pytest.approx(
        _log_prob(kde, point[None])[0], rel=1e-12
    )
    wrapped = resolve_prior(dist.Normal(jnp.zeros(3), 1.0).to_event(1), NAMES)
    assert isinstance(wrapped, DistributionPrior)


def test_prior_errors_name_the_problem(labels):
    with pytest.raises(ValueError, match=r"unknown prior 'uniform'.*'none', 'gaussian', 'kde'"):
        resolve_prior("uniform", NAMES, labels)
    with pytest.raises(ValueError, match="train_labels"):
        resolve_prior("kde", NAMES)
    with pytest.raises(ValueError, match=r"event shape \(3,\)"):
        DistributionPrior(NAMES, dist.Normal(jnp.zeros(3), 1.0))  # forgot .to_event(1)
    with pytest.raises(ValueError, match="labels"):
        resolve_prior(KDEPrior.fit(labels, NAMES), ("teff", "logg", "fe_h"))
    with pytest.raises(ValueError, match="unknown prior kind"):
        prior_from_dict({"kind": "flat-ish", "label_names": list(NAMES)})
    with pytest.raises(ValueError, match="at least 5"):
        GaussianPrior.fit(labels[:3], NAMES)
    with pytest.raises(ValueError, match="refusing to import"):
        prior_from_dict(
            {
                "kind": "numpyro",
                "label_names": list(NAMES),
                "distribution": {"__pytree__": "os:system", "children": [], "aux": None},
            }
        )
