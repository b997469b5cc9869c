"""A straight line fitted through outliers: the smallest complete mixture model.

Inliers scatter about ``y = m x + b`` by their reported errors only; outliers come
from a broad Gaussian N(μ_out, s_out²), also observed through their errors. Both
per-point true values are integrated out analytically, leaving five population
parameters (m, b, μ_out, s_out and the inlier weight) for NUTS, and each point's
inlier probability follows from the component log-densities (``_mixture.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float
from numpy.typing import ArrayLike

from .._internal import as_float_array, x64
from ._components import Gaussian
from ._mixture import Mixture, mixture_factor, posterior_membership, sample_weights
from ._sampling import find_map, run_nuts

__all__ = ["LineFit", "LineSimulation", "fit_line_with_outliers", "simulate_line_with_outliers"]


class LineSimulation(eqx.Module):
    """Simulated straight-line data with injected outliers (known truth).

    Attributes
    ----------
    x, y, y_err : ndarray, shape (stars,)
        Abscissae, observed ordinates and their 1-σ errors.
    is_outlier : ndarray of bool, shape (stars,)
        True for the points drawn from the outlier population.
    slope, intercept : float
        The true line.
    """

    x: np.ndarray
    y: np.ndarray
    y_err: np.ndarray
    is_outlier: np.ndarray
    slope: float
    intercept: float


def simulate_line_with_outliers(
    n_points: int = 32,
    n_outliers: int = 8,
    *,
    slope: float = 3.17,
    intercept: float = -11.9,
    outlier_scale: float = 15.0,
    seed: int = 42,
) -> LineSimulation:
    """Simulate points on a line with a subset replaced by broad-Gaussian outliers.

    x ~ U(0, 10) (sorted); true ``y = slope·x + intercept``; ``n_outliers`` indices
    drawn with replacement get a true ``y ~ N(0, outlier_scale²)`` instead; errors
    σ ~ U(0.5, 3); the observed ``y`` adds N(0, σ²) noise. Defaults: N = 32, 8
    outliers, m = 3.17, b = −11.9, generator seed 42, whose draws give 8 distinct outliers; other seeds may repeat an index, and
    ``is_outlier`` then marks fewer points.

    Parameters
    ----------
    n_points, n_outliers : int
        Sizes, ``0 <= n_outliers <= n_points``.
    slope, intercept, outlier_scale : float
        Truth.
    seed : int
        NumPy generator seed.

    Returns
    -------
    LineSimulation
    """
    if not 0 <= n_outliers <= n_points:
        raise ValueError(f"need 0 <= n_outliers <= n_points, got {n_outliers} and {n_points}.")
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 10.0, n_points))
    true_y = slope * x + intercept
    # Indices are drawn with replacement (seed=42 gives 8 distinct ones); a repeated
    # index means fewer distinct outliers.
    picked = rng.choice(n_points, size=n_outliers)
    true_y[picked] = rng.normal(0.0, outlier_scale, n_outliers)
    is_outlier = np.zeros(n_points, dtype=bool)
    is_outlier[picked] = True
    y_err = rng.uniform(0.5, 3.0, n_points)
    y = rng.normal(true_y, y_err)
    return LineSimulation(x, y, y_err, is_outlier, float(slope), float(intercept))


class LineFit(eqx.Module):
    """Posterior of the line-plus-outliers mixture and per-point memberships.

    Attributes
    ----------
    samples : dict of str to ndarray
        Posterior samples: ``m``, ``b``, ``outlier_mean``, ``outlier_scale`` (samples,),
        and ``weights`` (samples, 2) = (inlier, outlier) fractions.
    map_params : dict of str to ndarray
        The maximum a posteriori point (same keys, no samples axis).
    p_inlier : ndarray, shape (stars,)
        Posterior probability that each point lies on the line (averaged over samples).
    p_inlier_std : ndarray, shape (stars,)
        Spread of the conditional inlier probability over the posterior samples.
    p_inlier_map : ndarray, shape (stars,)
        Inlier probability at the MAP parameters.
    divergences : int
        NUTS divergent transitions (should be 0).
    min_ess : float
        Smallest effective sample size over the parameters.
    """

    samples: dict[str, np.ndarray]
    map_params: dict[str, np.ndarray]
    p_inlier: np.ndarray
    p_inlier_std: np.ndarray
    p_inlier_map: np.ndarray
    divergences: int
    min_ess: float

    def interval(self, name: str, level: float = 0.68) -> tuple[float, float]:
        """Central posterior interval of a scalar parameter (``m``, ``b``, …)."""
        if name not in self.samples or self.samples[name].ndim != 1:
            scalars = [k for k, v in self.samples.items() if v.ndim == 1]
            raise KeyError(f"no scalar parameter {name!r}; choose one of {scalars}.")
        if not 0.0 < level < 1.0:
            raise ValueError(f"`level` must be in (0, 1), got {level}.")
        tail = 50.0 * (1.0 - level)
        low, high = np.percentile(self.samples[name], [tail, 100.0 - tail])
        return float(low), float(high)

    def band(self, x: ArrayLike, level: float = 0.68) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior median line and central ``level`` band at abscissae ``x``.

        Returns
        -------
        median, low, high : ndarray, shape (len(x),)
        """
        x = as_float_array(x, "x").ravel()
        lines = self.samples["m"][:, None] * x[None, :] + self.samples["b"][:, None]
        tail = 50.0 * (1.0 - level)
        low, median, high = np.percentile(lines, [tail, 50.0, 100.0 - tail], axis=0)
        return median, low, high

    def summary(self) -> str:
        """A printable table of posterior medians and 68% intervals."""
        lines = ["parameter        median      68% interval"]
        for name in ("m", "b", "outlier_mean", "outlier_scale"):
            low, high = self.interval(name)
            lines.append(f"{name:<14} {np.median(self.samples[name]):9.3f}   [{low:.3f}, {high:.3f}]")
        w = self.samples["weights"][:, 0]
        lines.append(
            f"{'inlier_weight':<14} {np.median(w):9.3f}   [{np.percentile(w, 16):.3f}, {np.percentile(w, 84):.3f}]"
        )
        lines.append(
            f"points with p_inlier < 0.5: {int(np.sum(self.p_inlier < 0.5))} of {self.p_inlier.size}"
        )
        lines.append(f"NUTS: {self.divergences} divergences, min ESS {self.min_ess:.0f}")
        return "\n".join(lines)


def _line_log_probs(
    params: Mapping[str, Array],
    x: Float[Array, " stars"],
    y: Float[Array, " stars"],
    y_err: Float[Array, " stars"],
) -> Float[Array, "stars components"]:
    """``log w_k + log p_k(y_i)`` for (inlier, outlier) at one parameter point."""
    inlier = Gaussian((params["m"] * x + params["b"])[:, None], jnp.zeros((1, 1), y.dtype))
    outlier = Gaussian(
        jnp.reshape(params["outlier_mean"], (1,)), jnp.reshape(params["outlier_scale"] ** 2, (1, 1))
    )
    mixture = Mixture((inlier, outlier), jnp.log(params["weights"]))
    return mixture.component_log_probs(y[:, None], (y_err**2)[:, None, None])


def _line_model(
    x: Float[Array, " stars"],
    y: Float[Array, " stars"],
    y_err: Float[Array, " stars"],
    prior_scale: Float[Array, ""],
) -> None:
    params = {
        "m": numpyro.sample("m", dist.Normal(0.0, prior_scale)),
        "b": numpyro.sample("b", dist.Normal(0.0, prior_scale)),
        "outlier_mean": numpyro.sample("outlier_mean", dist.Normal(0.0, prior_scale)),
        # Log-uniform: scale-free prior on the outlier spread over seven decades.
        "outlier_scale": numpyro.sample(
            "outlier_scale", dist.LogUniform(prior_scale * 1e-4, prior_scale * 1e3)
        ),
        "weights": sample_weights("weights", 2),
    }
    mixture_factor("y", _line_log_probs(params, x, y, y_err))


def _robust_start(x: np.ndarray, y: np.ndarray, y_err: np.ndarray) -> dict[str, np.ndarray]:
    """A starting point that outliers do not drag: iteratively reweighted least squares."""
    design = np.stack([x, np.ones_like(x)], axis=1)
    weights = 1.0 / y_err**2
    for _ in range(20):
        coef = np.linalg.lstsq(design * np.sqrt(weights)[:, None], y * np.sqrt(weights), rcond=None)[0]
        z = np.abs(y - design @ coef) / y_err
        # Huber weights at 2σ: a point 10σ away counts one fifth as much.
        weights = np.minimum(1.0, 2.0 / np.maximum(z, 1e-12)) / y_err**2
    resid = y - design @ coef
    far = np.abs(resid) / y_err > 3.0
    frac = float(np.clip(far.mean(), 0.05, 0.5))
    spread = float(np.std(resid[far])) if far.sum() > 1 else float(3.0 * np.std(resid))
    centre = float(np.mean(y[far])) if far.any() else float(np.median(y))
    return {
        "m": np.asarray(coef[0]),
        "b": np.asarray(coef[1]),
        "outlier_mean": np.asarray(centre),
        "outlier_scale": np.asarray(max(spread, 1.0 * float(np.median(y_err)))),
        "weights": np.array([1.0 - frac, frac]),
    }


@x64
def fit_line_with_outliers(
    x: ArrayLike,
    y: ArrayLike,
    y_err: ArrayLike,
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    prior_scale: float = 100.0,
    seed: int = 0,
) -> LineFit:
    """Fit ``y = m x + b`` with a broad outlier population, by MAP then NUTS.

    The likelihood of point i is
    ``w N(y_i | m x_i + b, σ_i²) + (1 - w) N(y_i | μ_out, σ_i² + s_out²)``
    (both true values integrated out). Priors: m, b, μ_out ~ N(0, prior_scale²),
    s_out log-uniform on [10⁻⁴, 10³]·prior_scale, (w, 1 - w) ~ Dirichlet(1, 1).

    Parameters
    ----------
    x, y, y_err : array-like, shape (stars,)
        Abscissae, ordinates and 1-σ errors on ``y`` (> 0), same units as ``y``.
    num_warmup, num_samples : int
        NUTS adaptation and sampling steps (one chain).
    prior_scale : float
        Width of the parameter priors, in units of ``y``; keep it much larger than the data.
    seed : int
        Seed of the sampler's key.

    Returns
    -------
    LineFit

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite values, or non-positive ``y_err``.

    Examples
    --------
    >>> sim = simulate_line_with_outliers()
    >>> fit = fit_line_with_outliers(sim.x, sim.y, sim.y_err, num_warmup=300, num_samples=300)
    >>> lo, hi = fit.interval("m"); lo < 3.17 < hi
    True

    References
    ----------
    Hogg, Bovy & Lang (2010), "Data analysis recipes: fitting a model to data", §3.
    """
    arrays = {name: as_float_array(v, name).ravel() for name, v in (("x", x), ("y", y), ("y_err", y_err))}
    n = arrays["x"].size
    for name, value in arrays.items():
        if value.size != n:
            raise ValueError(f"`{name}` has {value.size} values but `x` has {n}; give one per point.")
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f"`{name}` has {int(np.sum(~np.isfinite(value)))} non-finite values; drop those points."
            )
    if np.any(arrays["y_err"] <= 0):
        raise ValueError("`y_err` must be > 0 for every point (the inlier model has no intrinsic scatter).")
    if n < 3:
        raise ValueError(f"need at least 3 points to fit a line with outliers, got {n}.")

    data = (
        jnp.asarray(arrays["x"]),
        jnp.asarray(arrays["y"]),
        jnp.asarray(arrays["y_err"]),
        jnp.asarray(float(prior_scale)),
    )
    start = _robust_start(arrays["x"], arrays["y"], arrays["y_err"])
    mode = find_map(_line_model, data, start)
    map_values = mode.values
    chain = run_nuts(
        _line_model, data, mode, jax.random.key(seed), num_warmup=num_warmup, num_samples=num_samples
    )
    samples = {k: chain.samples[k] for k in ("m", "b", "outlier_mean", "outlier_scale", "weights")}
    posterior = posterior_membership(_line_log_probs, samples, *data[:3])
    at_map = posterior_membership(
        _line_log_probs, jax.tree.map(lambda v: jnp.asarray(v)[None], map_values), *data[:3]
    )
    return LineFit(
        samples=samples,
        map_params={k: np.asarray(map_values[k]) for k in samples},
        p_inlier=np.asarray(posterior.probability[:, 0]),
        p_inlier_std=np.asarray(posterior.std[:, 0]),
        p_inlier_map=np.asarray(at_map.probability[:, 0]),
        divergences=chain.divergences,
        min_ess=chain.min_ess,
    )
