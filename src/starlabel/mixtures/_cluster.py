"""Star-cluster membership from astrometry: a cluster Gaussian against a Gaussian-mixture field.

Model, for star i with measured astrometry y_i = (μ_α*, μ_δ[, ϖ]) and measurement
covariance C_i:

* cluster: true astrometry ~ N(m, Σ_c) with Σ_c = diag(σ_pm², σ_pm²[, σ_ϖ²]), an
  isotropic internal proper-motion dispersion and a parallax spread; observed
  density N(y_i | m, Σ_c + C_i). Optionally the sky position also enters: an
  isotropic Gaussian of radius r about a centre, against a field that is uniform over
  the footprint.
* field: K Gaussians with free means and full covariances, each deconvolved the
  same way (extreme deconvolution); K = 1 … ``n_field_max`` is chosen by BIC.

Fitting: EM for every K at once (one vmapped program), BIC picks K, then the field
is held at its EM estimate while the cluster parameters and the cluster fraction
get a MAP refinement and posterior samples (NUTS, or a Laplace approximation when
``nuts=False``). Conditioning on the field shape is deliberate: it is set by
thousands of field stars and is a nuisance here, and sampling its ~10K parameters
would cost far more than the whole fit budget for no change in the cluster numbers.

References
----------
Bovy, Hogg & Roweis (2011), "Extreme deconvolution", Ann. Appl. Stat. 5, 1657.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array
from numpy.typing import ArrayLike

from .._errors import LaplaceUnavailableError
from .._internal import as_float_array, x64
from ._cluster_em import _cluster_cov, _initial_states, _peak_guess, _position_log_prob, _run_em
from ._components import Gaussian, GaussianMixture, gaussian_log_prob
from ._mixture import mixture_factor, sample_weights
from ._sampling import find_map, laplace_samples, run_nuts

__all__ = ["ClusterFit", "fit_cluster_membership"]


def _cluster_model(
    y: Array, y_cov: Array, field_lp: Array, positions: Array, n_far: Array, prior_scale: Array
) -> None:
    """Cluster parameters and the cluster fraction, with the field density given.

    ``n_far`` stars left out of ``y`` have a negligible cluster density: each adds
    log(w_field) + const to the likelihood (see ``_near_cluster``).
    """
    dims = y.shape[1]
    # numpyro types a sample as ArrayLike; inside a model it is a JAX array (asarray: no copy).
    mean = jnp.asarray(numpyro.sample("cluster_mean", dist.Normal(jnp.zeros(dims), prior_scale).to_event(1)))
    # Half-normal dispersions: unlike a log-uniform prior they do not leave NUTS a long
    # flat valley in log σ when the parallax spread is unresolved (σ_ϖ → 0).
    pm_disp = numpyro.sample("pm_dispersion", dist.HalfNormal(1.0))
    disp = [pm_disp]
    if dims > 2:
        disp.append(numpyro.sample("parallax_dispersion", dist.HalfNormal(0.1)))
    else:
        disp.append(pm_disp)
    weights = sample_weights("weights", 2)
    cluster_lp = Gaussian(mean, _cluster_cov(jnp.stack(disp), dims)).log_prob(y, y_cov)
    if positions.shape[1] == 2:
        centre = jnp.asarray(numpyro.sample("centre", dist.Normal(jnp.zeros(2), 10.0).to_event(1)))
        radius = jnp.asarray(numpyro.sample("radius", dist.HalfNormal(1.0)))
        cluster_lp = cluster_lp + _position_log_prob(positions, centre, radius)
    lp = jnp.stack([cluster_lp, field_lp], axis=1) + jnp.log(weights)[None, :]
    mixture_factor("astrometry", lp)
    numpyro.factor("far_field", n_far * jnp.log(weights[1]))


def _near_cluster(lp_map: np.ndarray, margin: float = 30.0) -> np.ndarray:
    """Stars whose cluster term matters anywhere near the MAP (boolean mask).

    A star whose weighted cluster density is e^-30 of its field density at the MAP
    contributes log(w_f f_i) + log(1 + ε), ε < e^-30 × e^Δ, where Δ is how much a
    posterior-plausible parameter change can raise its cluster density (a few units
    for a star many σ away). Dropping ε changes the log-likelihood by far less than
    1e-6 in total while cutting the stars NUTS differentiates through by ~5×.
    """
    return (lp_map[:, 0] - lp_map[:, 1]) > -margin


def _sample_log_probs(
    params: Mapping[str, Array], y: Array, y_cov: Array, field_lp: Array, positions: Array
) -> Array:
    """Weighted (cluster, field) log-densities at one sample of the cluster model."""
    dims = y.shape[1]
    disp = jnp.stack([params["pm_dispersion"], params.get("parallax_dispersion", params["pm_dispersion"])])
    cluster_lp = gaussian_log_prob(
        y - params["cluster_mean"][None, :], y_cov + _cluster_cov(disp, dims)[None]
    )
    if positions.shape[1] == 2:
        cluster_lp = cluster_lp + _position_log_prob(positions, params["centre"], params["radius"])
    return jnp.stack([cluster_lp, field_lp], axis=1) + jnp.log(params["weights"])[None, :]


@eqx.filter_jit
def _field_terms(
    field: GaussianMixture,
    start: dict,
    y: Array,
    y_cov: Array,
    positions: Array,
    log_area: Array,
    use_positions: bool,
) -> tuple[Array, Array]:
    """Field log-density per star and the (cluster, field) log-densities at ``start``."""
    field_lp = field.log_prob(y, y_cov) - (log_area if use_positions else 0.0)
    return field_lp, _sample_log_probs(start, y, y_cov, field_lp, positions)


@eqx.filter_jit
def _membership_summary(
    samples: dict, map_params: dict, y: Array, y_cov: Array, field_lp: Array, positions: Array
) -> tuple[Array, Array, Array, Array]:
    """Posterior membership (mean, spread), MAP membership and per-sample member counts.

    One scan over the samples, in O(stars) memory: the logsumexp average of the
    conditional membership, its second moment, and Σ_i p(member_i | θ_s).
    """

    def conditional(params: dict) -> Array:
        lp = _sample_log_probs(params, y, y_cov, field_lp, positions)
        return lp[:, 0] - jss.logsumexp(lp, axis=1)

    def step(carry: tuple[Array, Array], params: dict) -> tuple[tuple[Array, Array], Array]:
        log_sum, square_sum = carry
        log_p = conditional(params)
        return (jnp.logaddexp(log_sum, log_p), square_sum + jnp.exp(2.0 * log_p)), jnp.sum(jnp.exp(log_p))

    init = (jnp.full(y.shape[:1], -jnp.inf, y.dtype), jnp.zeros(y.shape[:1], y.dtype))
    (log_sum, square_sum), counts = jax.lax.scan(step, init, samples)
    n = counts.shape[0]
    probability = jnp.exp(log_sum - math.log(n))
    std = jnp.sqrt(jnp.maximum(square_sum / n - probability**2, 0.0))
    return probability, std, jnp.exp(conditional(map_params)), counts


class ClusterFit(eqx.Module):
    """Result of :func:`fit_cluster_membership`.

    Attributes
    ----------
    dim_names : tuple of str
        Names of the astrometric dimensions, e.g. ``("pmra", "pmdec", "parallax")``.
    p_member : ndarray, shape (stars,)
        Posterior membership probability of each star.
    p_member_err : ndarray, shape (stars,)
        Its spread over the posterior samples of the cluster parameters.
    p_member_map : ndarray, shape (stars,)
        Membership at the MAP parameters.
    samples : dict of str to ndarray
        Posterior samples: ``cluster_mean`` (samples, dims) in mas/yr and mas,
        ``pm_dispersion`` (mas/yr), ``parallax_dispersion`` (mas, with parallax),
        ``weights`` (samples, 2) = (cluster, field) fractions, and with positions
        ``centre`` (samples, 2) and ``radius`` (degrees, tangent-plane offsets).
    member_counts : ndarray, shape (samples,)
        Expected number of members, Σ_i p(member_i | θ_s), per sample.
    field : GaussianMixture
        The field model (intrinsic, i.e. deconvolved) chosen by BIC.
    bic : dict of int to float
        BIC of the EM fit for each number of field components tried.
    em_iterations : int
        EM iterations used for the chosen K.
    method : str
        ``"nuts"`` or ``"laplace"``: how the posterior samples were drawn.
    divergences : int
        NUTS divergences (0 for Laplace).
    min_ess : float
        Smallest effective sample size (number of draws for Laplace).
    """

    dim_names: tuple[str, ...] = eqx.field(static=True)
    p_member: np.ndarray
    p_member_err: np.ndarray
    p_member_map: np.ndarray
    samples: dict[str, np.ndarray]
    member_counts: np.ndarray
    field: GaussianMixture
    bic: dict[int, float]
    em_iterations: int
    method: str
    divergences: int
    min_ess: float

    @property
    def n_field(self) -> int:
        """Number of field components chosen by BIC."""
        return self.field.n_components

    def n_members(self) -> tuple[float, float]:
        """Expected member count and its 1-σ uncertainty.

        The variance adds the spread of the expected count over parameter samples
        to the Poisson-binomial variance Σ_i p_i (1 - p_i) of the count itself.
        """
        p = self.p_member[np.isfinite(self.p_member)]
        variance = np.var(self.member_counts) + np.sum(p * (1.0 - p))
        return float(np.mean(self.member_counts)), float(np.sqrt(variance))

    def distance_samples(self, parallax_zero_point: float = 0.0) -> np.ndarray:
        """Distance samples in kpc, ``1 / (ϖ_cluster - zero_point)`` with ϖ in mas.

        Gaia DR3 parallaxes are offset by about −0.017 mas on average (Lindegren et al.
        2021); pass ``parallax_zero_point=-0.017`` to correct for it.
        """
        if "parallax" not in self.dim_names:
            raise ValueError("the fit has no parallax dimension; no distance can be derived.")
        plx = self.samples["cluster_mean"][:, self.dim_names.index("parallax")] - parallax_zero_point
        with np.errstate(divide="ignore"):
            return np.where(plx > 0, 1.0 / plx, np.inf)

    def parameters(self, parallax_zero_point: float = 0.0) -> dict[str, dict[str, float]]:
        """Posterior median, mean, standard deviation and 16/84th percentiles of each quantity."""
        columns: dict[str, np.ndarray] = {}
        for i, name in enumerate(self.dim_names):
            columns[f"mean_{name}"] = self.samples["cluster_mean"][:, i]
        columns["pm_dispersion"] = self.samples["pm_dispersion"]
        if "parallax_dispersion" in self.samples:
            columns["parallax_dispersion"] = self.samples["parallax_dispersion"]
            columns["distance_kpc"] = self.distance_samples(parallax_zero_point)
        columns["cluster_fraction"] = self.samples["weights"][:, 0]
        if "centre" in self.samples:
            columns["centre_xi_deg"] = self.samples["centre"][:, 0]
            columns["centre_eta_deg"] = self.samples["centre"][:, 1]
            columns["radius_deg"] = self.samples["radius"]
        out = {}
        for name, values in columns.items():
            finite = values[np.isfinite(values)]
            p16, p50, p84 = np.percentile(finite, [16.0, 50.0, 84.0])
            out[name] = {
                "median": float(p50),
                "mean": float(np.mean(finite)),
                "std": float(np.std(finite)),
                "p16": float(p16),
                "p84": float(p84),
            }
        return out


def _validate(
    astrometry: Any, covariance: Any, positions: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    y = as_float_array(astrometry, "astrometry")
    if y.ndim != 2 or y.shape[1] not in (2, 3):
        raise ValueError(
            f"`astrometry` must be (stars, 2) = (pmra, pmdec) or (stars, 3) with parallax last;"
            f" got shape {y.shape}."
        )
    cov = as_float_array(covariance, "covariance")
    if cov.shape == y.shape:  # 1-σ errors given: independent
        cov = np.einsum("ni,ij->nij", cov**2, np.eye(y.shape[1]))
    if cov.shape != (*y.shape, y.shape[1]):
        raise ValueError(
            f"`covariance` has shape {cov.shape}; give (stars, dims, dims) covariances or"
            f" (stars, dims) 1-σ errors matching `astrometry` {y.shape}."
        )
    bad = ~np.isfinite(y).all(axis=1) | ~np.isfinite(cov).all(axis=(1, 2))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} stars have non-finite astrometry or errors (first rows:"
            f" {np.flatnonzero(bad)[:5].tolist()}); drop them first, or use"
            " fit_membership_table, which reports and skips them."
        )
    eig_min = np.linalg.eigvalsh(cov).min(axis=1)
    if np.any(eig_min <= 0):
        raise ValueError(
            f"{int(np.sum(eig_min <= 0))} stars have covariances that are not positive definite"
            f" (first rows: {np.flatnonzero(eig_min <= 0)[:5].tolist()}); check for zero errors"
            " or correlations outside (-1, 1)."
        )
    pos = None
    if positions is not None:
        pos = as_float_array(positions, "positions")
        if pos.shape != (y.shape[0], 2) or not np.isfinite(pos).all():
            raise ValueError(
                f"`positions` must be finite tangent-plane offsets (stars, 2) in degrees, got"
                f" shape {pos.shape}."
            )
    return y, cov, pos


@x64
def fit_cluster_membership(
    astrometry: ArrayLike,
    covariance: ArrayLike,
    *,
    positions: ArrayLike | None = None,
    dim_names: Sequence[str] | None = None,
    n_field_max: int = 4,
    n_field: int | None = None,
    cluster_guess: Sequence[float] | None = None,
    nuts: bool = True,
    num_warmup: int = 400,
    num_samples: int = 400,
    max_em_iter: int = 500,
    prior_scale: float = 100.0,
    seed: int = 0,
) -> ClusterFit:
    """Fit a cluster + field mixture to astrometry and return membership probabilities.

    See the module docstring for the model. Every star's measurement covariance is
    deconvolved; the field's K is chosen by BIC over ``1 … n_field_max`` (or fixed by
    ``n_field``); posterior samples come from NUTS (``nuts=True``) or a Laplace
    approximation at the MAP.

    Parameters
    ----------
    astrometry : array-like, shape (stars, 2) or (stars, 3)
        Proper motions μ_α* and μ_δ in mas/yr, optionally parallax ϖ in mas (last).
    covariance : array-like, shape (stars, dims, dims) or (stars, dims)
        Measurement covariances (mas², mas²/yr², …), or independent 1-σ errors.
    positions : array-like, shape (stars, 2), optional
        Tangent-plane offsets (ξ, η) in degrees; adds the spatial cluster/field terms.
    dim_names : sequence of str, optional
        Names of the astrometry columns (default pmra, pmdec[, parallax]).
    n_field_max : int
        Largest number of field Gaussians tried (1 … 8).
    n_field : int, optional
        Use exactly this many field Gaussians (no BIC search).
    cluster_guess : sequence of float, shape (dims,), optional
        Starting cluster astrometry; default: the strongest proper-motion overdensity.
    nuts : bool
        Sample the cluster parameters with NUTS (else Laplace approximation).
    num_warmup, num_samples : int
        NUTS warmup and kept samples; ``num_samples`` Laplace draws otherwise.
    max_em_iter : int
        EM iteration cap for each K.
    prior_scale : float
        Width (mas/yr, mas) of the Gaussian prior on the cluster mean.
    seed : int
        Seed of the sampling key.

    Returns
    -------
    ClusterFit

    Raises
    ------
    ValueError
        On shapes, non-finite values, or non-positive-definite covariances (naming the
        rows), and on ``n_field``/``n_field_max`` outside 1 … 8.

    References
    ----------
    Bovy, Hogg & Roweis (2011), Ann. Appl. Stat. 5, 1657 (extreme deconvolution);
    Schwarz (1978), Ann. Stat. 6, 461 (BIC).
    """
    y, cov, pos = _validate(astrometry, covariance, positions)
    n_stars, dims = y.shape
    names = tuple(dim_names) if dim_names is not None else ("pmra", "pmdec", "parallax")[:dims]
    if len(names) != dims:
        raise ValueError(f"`dim_names` has {len(names)} entries but astrometry has {dims} columns.")
    tried = [n_field] if n_field is not None else list(range(1, n_field_max + 1))
    if not all(isinstance(k, int) and 1 <= k <= 8 for k in tried):
        raise ValueError(f"numbers of field components must be integers in 1…8, got {tried}.")
    if n_stars < 20 * (max(tried) + 1):
        raise ValueError(f"only {n_stars} stars for up to {max(tried)} field components; lower n_field_max.")

    y_err = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    if cluster_guess is None:
        guess, width = _peak_guess(y, y_err)
    else:
        guess = as_float_array(cluster_guess, "cluster_guess").ravel()
        if guess.shape != (dims,):
            raise ValueError(
                f"`cluster_guess` must have {dims} values ({', '.join(names)}), got {guess.size}."
            )
        width = float(np.clip(2.0 * np.median(y_err[:, :2]), 0.03, 0.5))

    use_positions = pos is not None
    log_area = 0.0
    if use_positions:
        from scipy.spatial import ConvexHull

        log_area = math.log(ConvexHull(pos).volume)  # 2-D "volume" is the area, deg²
    k_max = max(tried)
    states, actives = _initial_states(y, y_err, guess, width, k_max, pos)
    if n_field is not None:
        states = jax.tree.map(lambda leaf: leaf[n_field - 1 : n_field], states)
        actives = actives[n_field - 1 : n_field]
    data = (jnp.asarray(y), jnp.asarray(cov))
    pos_arr = jnp.asarray(pos if use_positions else np.zeros((n_stars, 0)))
    fitted, log_like, iterations = _run_em(
        states,
        jnp.asarray(actives),
        *data,
        pos_arr,
        jnp.asarray(log_area),
        use_positions,
        max_em_iter,
        1e-6 * n_stars,
    )
    n_params = np.array(
        [
            dims
            + (2 if dims > 2 else 1)
            + (3 if use_positions else 0)
            + k * (dims + dims * (dims + 1) // 2)
            + k
            for k in tried
        ]
    )
    bic_values = -2.0 * np.asarray(log_like) + n_params * math.log(n_stars)
    best = int(np.nanargmin(bic_values))
    chosen = jax.tree.map(lambda leaf: leaf[best], fitted)
    k = tried[best]

    field = GaussianMixture(chosen.log_weights[1 : k + 1], chosen.field_means[:k], chosen.field_covs[:k])
    cluster_weight = float(jnp.exp(chosen.log_weights[0]))
    start: dict[str, Any] = {
        "cluster_mean": chosen.cluster_mean,
        "pm_dispersion": jnp.maximum(chosen.cluster_disp[0], 2e-4),
        "weights": jnp.asarray([cluster_weight, 1.0 - cluster_weight]),
    }
    if dims > 2:
        start["parallax_dispersion"] = jnp.clip(chosen.cluster_disp[1], 2e-5, 0.5)
    if use_positions:
        start["centre"] = chosen.centre
        start["radius"] = chosen.radius
    # EM already maximised the full likelihood, so its point decides which stars matter.
    field_lp, lp_start = _field_terms(field, start, *data, pos_arr, jnp.asarray(log_area), use_positions)
    near = _near_cluster(np.asarray(lp_start))
    near_args = (
        data[0][near],
        data[1][near],
        field_lp[near],
        pos_arr[near],
        jnp.asarray(float(np.sum(~near))),
        jnp.asarray(float(prior_scale)),
    )
    mode = find_map(_cluster_model, near_args, start)
    keys = tuple(start)
    if nuts:
        chain = run_nuts(
            _cluster_model,
            near_args,
            mode,
            jax.random.key(seed),
            num_warmup=num_warmup,
            num_samples=num_samples,
        )
        samples = {name: chain.samples[name] for name in keys}
        divergences, min_ess, method = chain.divergences, chain.min_ess, "nuts"
    else:
        draws, ok = laplace_samples(_cluster_model, near_args, mode, seed, num_samples)
        if not ok:
            raise LaplaceUnavailableError(
                "the posterior Hessian at the MAP is not positive definite, so the Laplace"
                " approximation is unavailable; use nuts=True."
            )
        samples = {name: np.asarray(draws[name]) for name in keys}
        divergences, min_ess, method = 0, float(num_samples), "laplace"

    probability, std, p_map, counts = _membership_summary(
        {name: jnp.asarray(v) for name, v in samples.items()},
        {name: jnp.asarray(mode.values[name]) for name in keys},
        *data,
        field_lp,
        pos_arr,
    )
    return ClusterFit(
        dim_names=names,
        p_member=np.asarray(probability),
        p_member_err=np.asarray(std),
        p_member_map=np.asarray(p_map),
        samples={name: np.asarray(v) for name, v in samples.items()},
        member_counts=np.asarray(counts),
        field=field,
        bic={kk: float(b) for kk, b in zip(tried, bic_values, strict=True)},
        em_iterations=int(np.asarray(iterations)[best]),
        method=method,
        divergences=divergences,
        min_ess=min_ess,
    )
