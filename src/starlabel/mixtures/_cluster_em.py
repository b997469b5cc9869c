"""Extreme-deconvolution EM of the full cluster + K-Gaussian field model (private).

The first stage of :func:`~starlabel.mixtures.fit_cluster_membership`: a cluster
Gaussian and K field Gaussians, all deconvolved by each star's measurement covariance
(Bovy, Hogg & Roweis 2011), fitted by EM for every K = 1 … ``n_field_max`` at once, from
starting points at the strongest small-scale proper-motion overdensity. The MAP and
posterior samples of the cluster parameters are in ``_cluster.py``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
from jaxtyping import Array, Float

from ._components import Gaussian, GaussianMixture, symmetric_inverse

__all__: list[str] = []

_COV_FLOOR = 1e-8  # added to every fitted covariance: keeps EM off singular components


class _EMState(eqx.Module):
    """Parameters of the full cluster + K-Gaussian field model during EM."""

    log_weights: Float[Array, " components"]  # cluster first, then K_max field slots
    cluster_mean: Float[Array, " dims"]
    cluster_disp: Float[Array, 2]  # (σ_pm, σ_ϖ); σ_ϖ unused without parallax
    field_means: Float[Array, "field dims"]
    field_covs: Float[Array, "field dims dims"]
    centre: Float[Array, 2]
    radius: Float[Array, ""]


def _cluster_cov(disp: Array, dims: int) -> Array:
    variances = jnp.concatenate([jnp.full((2,), disp[0] ** 2), disp[1:2] ** 2])[:dims]
    return jnp.diag(variances)


def _position_log_prob(positions: Array, centre: Array, radius: Array) -> Array:
    """Isotropic 2-D Gaussian in tangent-plane offsets (degrees)."""
    sq = jnp.sum((positions - centre[None, :]) ** 2, axis=1)
    return -0.5 * sq / radius**2 - 2.0 * jnp.log(radius) - math.log(2.0 * math.pi)


def _full_log_probs(
    state: _EMState, y: Array, y_cov: Array, positions: Array, log_area: Array, use_positions: bool
) -> Array:
    """(stars, 1 + K_max) weighted log-densities of the full model."""
    dims = y.shape[1]
    cluster = Gaussian(state.cluster_mean, _cluster_cov(state.cluster_disp, dims)).log_prob(y, y_cov)
    field = GaussianMixture(
        jnp.zeros(state.field_means.shape[0], y.dtype), state.field_means, state.field_covs
    )
    # Unnormalised sub-component densities: the weights live in state.log_weights.
    field_lp = field.component_log_probs(y, y_cov) + math.log(state.field_means.shape[0])
    if use_positions:
        cluster = cluster + _position_log_prob(positions, state.centre, state.radius)
        field_lp = field_lp - log_area
    lp = jnp.concatenate([cluster[:, None], field_lp], axis=1)
    return lp + state.log_weights[None, :]


def _em_step(
    state: _EMState,
    active: Array,
    y: Array,
    y_cov: Array,
    positions: Array,
    log_area: Array,
    use_positions: bool,
) -> tuple[_EMState, Array]:
    dims = y.shape[1]
    lp = _full_log_probs(state, y, y_cov, positions, log_area, use_positions)
    total = jss.logsumexp(lp, axis=1)
    resp = jnp.exp(lp - total[:, None])
    means = jnp.concatenate([state.cluster_mean[None, :], state.field_means], axis=0)
    covs = jnp.concatenate([_cluster_cov(state.cluster_disp, dims)[None], state.field_covs], axis=0)
    # Extreme-deconvolution E-step: posterior mean b and covariance B of each star's
    # true astrometry under each component.
    t = covs[None, :, :, :] + y_cov[:, None, :, :]
    resid = y[:, None, :] - means[None, :, :]
    gain = jnp.einsum("nkij,kjl->nkil", symmetric_inverse(t), covs)  # T⁻¹V
    b = means[None, :, :] + jnp.einsum("nkji,nkj->nki", gain, resid)
    post_cov = covs[None] - jnp.einsum("kij,nkjl->nkil", covs, gain)
    weight = jnp.sum(resp, axis=0)
    safe = jnp.maximum(weight, 1e-300)
    new_means = jnp.einsum("nk,nkd->kd", resp, b) / safe[:, None]
    diff = b - new_means[None, :, :]
    scatter = jnp.einsum("nki,nkj->kij", resp[:, :, None] * diff, diff) + jnp.sum(
        resp[:, :, None, None] * post_cov, axis=0
    )
    new_covs = scatter / safe[:, None, None] + _COV_FLOOR * jnp.eye(dims)[None]
    keep = (weight > 1e-8) & jnp.concatenate([jnp.ones(1, bool), active])
    new_means = jnp.where(keep[:, None], new_means, means)
    new_covs = jnp.where(keep[:, None, None], new_covs, covs)
    # Cluster covariance restricted to diag(σ_pm², σ_pm²[, σ_ϖ²]): the constrained M-step
    # keeps the diagonal of the free update and averages the two proper-motion terms.
    cdiag = jnp.diagonal(new_covs[0])
    disp = jnp.sqrt(jnp.stack([0.5 * (cdiag[0] + cdiag[1]), cdiag[min(2, dims - 1)]]))
    log_weights = jnp.where(
        jnp.concatenate([jnp.ones(1, bool), active]), jnp.log(safe / y.shape[0]), -jnp.inf
    )
    centre, radius = state.centre, state.radius
    if use_positions:
        centre = jnp.einsum("n,nd->d", resp[:, 0], positions) / safe[0]
        sq = jnp.sum((positions - centre[None, :]) ** 2, axis=1)
        radius = jnp.sqrt(jnp.sum(resp[:, 0] * sq) / (2.0 * safe[0]))
    new = _EMState(log_weights, new_means[0], disp, new_means[1:], new_covs[1:], centre, radius)
    return new, jnp.sum(total)


@eqx.filter_jit
def _run_em(
    state: _EMState,
    active: Array,
    y: Array,
    y_cov: Array,
    positions: Array,
    log_area: Array,
    use_positions: bool,
    max_iter: int,
    tol: float,
) -> tuple[_EMState, Array, Array]:
    def run_one(state: _EMState, active: Array) -> tuple:
        def cond(carry: tuple) -> Array:
            _, ll, previous, it = carry
            return (it < max_iter) & (jnp.abs(ll - previous) > tol)

        def body(carry: tuple) -> tuple:
            state, ll, _, it = carry
            new, current = _em_step(state, active, y, y_cov, positions, log_area, use_positions)
            return new, current, ll, it + 1

        init = (state, jnp.asarray(-jnp.inf, y.dtype), jnp.asarray(jnp.inf, y.dtype), jnp.asarray(0))
        state, _, _, it = jax.lax.while_loop(cond, body, init)
        # Log-likelihood at the returned parameters (the loop's value lags one step).
        lp = _full_log_probs(state, y, y_cov, positions, log_area, use_positions)
        return state, jnp.sum(jss.logsumexp(lp, axis=1)), it

    # Sequentially (lax.map), not vmapped: under vmap every K would run as many EM
    # iterations as the slowest one needs.
    return jax.lax.map(lambda pair: run_one(*pair), (state, active))


def _peak_guess(y: np.ndarray, y_err: np.ndarray) -> tuple[np.ndarray, float]:
    """Locate the cluster as the strongest small-scale overdensity in proper motion.

    A fine and a coarse smoothing of the 2-D proper-motion histogram are subtracted;
    the field is smooth on the coarse scale, so the cluster is the largest excess.
    Returns the guessed astrometry (dims,) and the histogram bin width (mas/yr).
    """
    from scipy.ndimage import gaussian_filter

    pm = y[:, :2]
    low, high = np.percentile(pm, [2.0, 98.0], axis=0)
    width = float(np.clip(2.0 * np.median(y_err[:, :2]), 0.03, 0.5))
    n_bins = np.clip(np.ceil((high - low) / width).astype(int), 8, 600)
    hist, xe, ye = np.histogram2d(
        pm[:, 0], pm[:, 1], bins=n_bins, range=[[low[0], high[0]], [low[1], high[1]]]
    )
    excess = gaussian_filter(hist, 1.0) - gaussian_filter(hist, 8.0)
    i, j = np.unravel_index(np.argmax(excess), excess.shape)
    centre = np.array([0.5 * (xe[i] + xe[i + 1]), 0.5 * (ye[j] + ye[j + 1])])
    guess = np.empty(y.shape[1])
    guess[:2] = centre
    if y.shape[1] > 2:
        near = np.hypot(*(pm - centre[None, :]).T) < 2.0 * width
        guess[2] = np.median(y[near, 2]) if near.sum() >= 3 else np.median(y[:, 2])
    return guess, width


def _initial_states(
    y: np.ndarray,
    y_err: np.ndarray,
    guess: np.ndarray,
    width: float,
    n_field_max: int,
    positions: np.ndarray | None,
) -> tuple[_EMState, np.ndarray]:
    """Starting points for K = 1 … n_field_max (stacked), and the active-slot masks."""
    dims = y.shape[1]
    median = np.median(y, axis=0)
    mad = 1.4826 * np.median(np.abs(y - median[None, :]), axis=0)
    base = np.diag(np.maximum(mad, 1e-3) ** 2)
    # Nested widths (×1, ×4, ×16, …) let one component take the core of the field and
    # the next ones its halo and high-velocity tail; EM then moves them freely.
    covs = np.stack([base * 4.0**k for k in range(n_field_max)])
    shift = np.zeros((n_field_max, dims))
    shift[:, 0] = 0.1 * mad[0] * np.arange(n_field_max)
    field_means = median[None, :] + shift
    states, actives = [], []
    centre = np.zeros(2) if positions is None else np.median(positions, axis=0)
    radius = 1.0 if positions is None else 0.25 * float(np.median(np.abs(positions - centre[None, :])))
    disp = np.array([width, 0.05 if dims < 3 else max(0.5 * float(np.median(y_err[:, 2])), 1e-3)])
    for k in range(1, n_field_max + 1):
        active = np.arange(n_field_max) < k
        log_w = np.concatenate([[math.log(0.05)], np.where(active, math.log(0.95 / k), -np.inf)])
        parts = (log_w, guess, disp, field_means, covs, centre, np.asarray(radius, dtype=float))
        states.append(_EMState(*(jnp.asarray(part, dtype=float) for part in parts)))
        actives.append(active)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    return stacked, np.stack(actives)
