"""The test step: labels of new spectra by multi-start Levenberg–Marquardt on sufficient statistics.

For one spectrum with weights ``ω_λ = 1/(σ_λ² + s_λ²)`` (0 on masked or untrained
pixels) the Cannon's χ² at scaled labels ``x`` is

    χ²(x) = Σ_λ ω_λ (f_λ − θ_λ·v(x))² = c − 2 v(x)·g + v(x)ᵀ H v(x),
    c = Σ ω f²,   g = Θᵀ(ω f),   H = Θᵀ diag(ω) Θ.

``(c, g, H)`` are computed once per spectrum (one matrix product for a whole chunk);
afterwards every χ², gradient ``2 Jᵀ(Hv − g)`` and Gauss–Newton matrix ``2 JᵀHJ``
(J = ∂v/∂x) costs O(terms²), independent of the number of pixels. That is what makes
thousands of spectra per second possible: a residual-based solver would touch every
pixel at every iteration.

Each spectrum is started from several points — the linear estimate (solve ``H v = g``
for an unconstrained label vector, read off its linear terms) and training stars spread
along the main axis of the training-label distribution — and each start takes a few
exploratory iterations; the lowest-χ² start is then iterated to convergence. Damping is
Marquardt's (scaled by diag(JᵀHJ)); bounds are enforced by projection with the active
constraints removed from the step, and frozen labels never move. Convergence is declared
when the predicted χ² decrease of a full Gauss–Newton step (the Newton decrement) drops
below ``tol`` — a statistically meaningful scale, since Δχ² = 1 is one standard deviation.

The covariance is the inverse Fisher matrix ``(JᵀHJ)⁻¹`` at the solution; because ω
includes s², it accounts for the model's intrinsic scatter.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Real

from ...inference import DampedNewtonState, Marquardt, cholesky_solve, damped_newton, pin_inactive
from ._normal import outer_pairs, unpack_pairs
from ._vectorizer import PolynomialVectorizer

__all__ = [
    "LabelStepOptions",
    "SpectrumStats",
    "LabelFit",
    "spectrum_stats",
    "fit_labels",
    "theta_pairs",
    "pixel_weights",
]


class LabelStepOptions(eqx.Module):
    """Static settings of the test step."""

    max_iter: int = eqx.field(static=True, default=100)
    explore_iter: int = eqx.field(static=True, default=4)
    tol: float = eqx.field(static=True, default=1e-6)


class SpectrumStats(eqx.Module):
    """Sufficient statistics ``(c, g, H)`` and usable-pixel count of a spectrum's χ².

    Batched: a leading stars axis (see the module docstring for the χ²). The one type for these statistics: the MAP step here and the grid posterior-mean
    steps both read it (``n_good`` is an integer count, or a float where a caller has
    already converted it for the Student-t likelihood).
    """

    c: Float[Array, "*stars"]
    g: Float[Array, "*stars terms"]
    H: Float[Array, "*stars terms terms"]
    n_good: Real[Array, "*stars"]


class LabelFit(eqx.Module):
    """Result of the test step for one spectrum, in scaled label units."""

    x: Float[Array, " labels"]
    cov: Float[Array, "labels labels"]
    chi2: Float[Array, ""]
    n_good: Int[Array, ""]
    n_iter: Int[Array, ""]
    converged: Bool[Array, ""]
    hit_bound: Bool[Array, ""]


@jax.jit  # one fused kernel; op-by-op gathers cost more than a whole test-step chunk
def theta_pairs(theta: Float[Array, "pixels terms"]) -> Float[Array, "pixels pairs"]:
    """Packed ``θ_λ θ_λᵀ`` per pixel, reused for every spectrum of an inference run."""
    return outer_pairs(theta)


def pixel_weights(
    ivar: Float[Array, "*stars pixels"], s2: Float[Array, " pixels"], usable: Float[Array, " pixels"]
) -> Float[Array, "*stars pixels"]:
    """χ² weights ``ω = 1/(σ² + s²)`` of a spectrum's pixels, 0 where unusable.

    ``usable`` is the 0/1 float mask of trained pixels. Written as ``w/(1 + w s²)`` with
    ``w = max(ivar, 0)`` so that a pixel without information (ivar 0) gets exactly 0.
    """
    w = jnp.maximum(ivar, 0.0)
    return usable * w / (1.0 + w * s2)


_STATS_BLOCK = 128
"""Spectra per matrix product in :func:`spectrum_stats`.

A block's weights (128 × 7214 float64 ≈ 7 MB, twice) stay in the last-level cache
between the elementwise pass and the products; whole-chunk intermediates go to main
memory and back, which measured 2.4× slower on the 2-core development box.
"""


def spectrum_stats(
    flux: Float[Array, "stars pixels"],
    ivar: Float[Array, "stars pixels"],
    theta: Float[Array, "pixels terms"],
    pairs: Float[Array, "pixels pairs"],
    s2: Float[Array, " pixels"],
    pixel_ok: Bool[Array, " pixels"],
) -> SpectrumStats:
    """``(c, g, H)`` of every spectrum (leading axis: stars), as blocked matrix products.

    On the CPU, blocks of :data:`_STATS_BLOCK` spectra go through one (stars × pixels)
    (pixels × pairs) GEMM each, which XLA's CPU backend runs at about twice the speed
    of the batched matrix–vector products a plain vmap produces; on a GPU the whole
    batch is one product.
    """
    # Written with float masks and matrix–vector products only: XLA's CPU backend
    # runs a boolean ``where`` or a row reduction over a (spectra × pixels) block
    # element by element, and those took longer than the GEMMs themselves.
    # Inverse variances are ≥ 0 (``SpectralDataset`` guarantees it), so sign(w) is the
    # good-pixel indicator and w/(1 + w s²) is 0 wherever w is.
    usable = pixel_ok.astype(ivar.dtype)
    ones = jnp.ones_like(s2)

    def one(spectrum: tuple[Array, Array]) -> SpectrumStats:
        f, w = spectrum
        omega = pixel_weights(w, s2, usable)
        weighted = omega * f
        return SpectrumStats(
            c=(weighted * f) @ ones,
            g=weighted @ theta,
            H=unpack_pairs(omega @ pairs, theta.shape[1]),
            n_good=(jnp.sign(jnp.maximum(w, 0.0)) @ usable).astype(int),
        )

    # Accelerators have no such cache to keep and prefer one large product.
    block = _STATS_BLOCK if jax.default_backend() == "cpu" else flux.shape[0]
    return jax.lax.map(one, (flux, ivar), batch_size=min(block, flux.shape[0]))


def _chi2(vectorizer: PolynomialVectorizer, stats: SpectrumStats, x: Array) -> Array:
    v = vectorizer(x)
    return stats.c - 2.0 * v @ stats.g + v @ stats.H @ v


def _levenberg_marquardt(
    vectorizer: PolynomialVectorizer,
    stats: SpectrumStats,
    x0: Float[Array, " labels"],
    free: Bool[Array, " labels"],
    lower: Float[Array, " labels"],
    upper: Float[Array, " labels"],
    max_iter: int | Int[Array, ""],
    tol: float,
) -> DampedNewtonState:
    """:func:`starlabel.inference.damped_newton` on the statistics of one spectrum."""

    def linearise(x: Array) -> tuple[Array, Array, Array]:
        J = vectorizer.jacobian(x)
        v = vectorizer(x)
        grad = J.T @ (stats.H @ v - stats.g)  # ½ ∇χ²
        return grad, J.T @ stats.H @ J, v  # and ½ Gauss–Newton Hessian of χ²; v for `change`

    def change(x: Array, trial: Array, chi2: Array, v: Array) -> Array:
        del x, chi2
        v_trial = vectorizer(trial)
        # χ² change written as a product of the (small) step: c − 2v·g + vᵀHv evaluated
        # twice and subtracted would cancel to ~1e-16·c, far above the tolerance.
        return (v_trial - v) @ (stats.H @ (v_trial + v) - 2.0 * stats.g)

    return damped_newton(
        lambda x: _chi2(vectorizer, stats, x),
        linearise,
        x0,
        damping=_DAMPING,
        max_steps=max_iter,
        tol=tol,
        change=change,
        free=free,
        lower=lower,
        upper=upper,
    )


_DAMPING = Marquardt(initial=1e-3, shrink=0.2, grow=10.0, smallest=1e-10, largest=1e16)


def linear_start(
    vectorizer: PolynomialVectorizer, stats: SpectrumStats, fallback: Float[Array, " labels"]
) -> Float[Array, " labels"]:
    """Labels read off the best unconstrained label vector ``v̂ = H⁻¹ g`` (its linear terms)."""
    n_terms = stats.H.shape[0]
    ridge = 1e-10 * jnp.trace(stats.H) / n_terms + 1e-300
    v_hat = jnp.linalg.solve(stats.H + ridge * jnp.eye(n_terms, dtype=stats.H.dtype), stats.g)
    index = jnp.asarray(vectorizer.linear_term_index())
    # v̂ is relative to the constant term's coefficient, which should be 1.
    scale = jnp.where(jnp.abs(v_hat[0]) > 1e-8, v_hat[0], 1.0)
    guess = jnp.where(index >= 0, v_hat[jnp.maximum(index, 0)] / scale, fallback)
    return jnp.where(jnp.isfinite(guess), guess, fallback)


def fit_labels(
    vectorizer: PolynomialVectorizer,
    stats: SpectrumStats,
    starts: Float[Array, "starts labels"],
    frozen_value: Float[Array, " labels"],
    free: Bool[Array, " labels"],
    lower: Float[Array, " labels"],
    upper: Float[Array, " labels"],
    start_box: Float[Array, "2 labels"],
    options: LabelStepOptions,
) -> LabelFit:
    """Fit the labels of one spectrum from several starts (see the module docstring).

    Parameters
    ----------
    vectorizer : PolynomialVectorizer
    stats : SpectrumStats
    starts : array, shape (starts, labels)
        Extra starting points in scaled units (the linear estimate is always added).
    frozen_value : array, shape (labels,)
        Values (scaled) of frozen labels; ignored where ``free``.
    free : bool array, shape (labels,)
    lower, upper : arrays, shape (labels,)
        Bounds in scaled units (may be ±inf).
    start_box : array, shape (2, labels)
        The linear estimate is clipped into this box (the training range).
    options : LabelStepOptions
    """
    linear = jnp.clip(linear_start(vectorizer, stats, starts[0]), start_box[0], start_box[1])
    all_starts = jnp.concatenate([linear[None, :], starts], axis=0)
    all_starts = jnp.where(free[None, :], all_starts, frozen_value[None, :])

    # A spectrum without usable pixels (or a padding row) has nothing to fit; without
    # this it would iterate until its damping blew up, and under vmap the whole chunk
    # waits for its slowest member.
    empty = stats.n_good == 0

    def explore(x0: Array) -> DampedNewtonState:
        budget = jnp.where(empty, 0, options.explore_iter)
        return _levenberg_marquardt(vectorizer, stats, x0, free, lower, upper, budget, options.tol)

    explored = jax.vmap(explore)(all_starts)
    best = jnp.argmin(jnp.where(jnp.isfinite(explored.loss), explored.loss, jnp.inf))
    final = _levenberg_marquardt(
        vectorizer,
        stats,
        explored.x[best],
        free,
        lower,
        upper,
        jnp.where(empty, 0, options.max_iter),
        options.tol,
    )

    J = vectorizer.jacobian(final.x)
    fisher, _ = pin_inactive(J.T @ stats.H @ J, jnp.zeros_like(final.x), free)
    eye = jnp.eye(free.shape[0], dtype=fisher.dtype)
    cov = jax.vmap(lambda column: cholesky_solve(fisher, column), out_axes=1)(eye)
    cov = jnp.where(free[:, None] & free[None, :], cov, 0.0)
    span = 1e-9 * (1.0 + jnp.abs(final.x))
    hit = free & (((final.x - lower) <= span) | ((upper - final.x) <= span))
    return LabelFit(
        x=final.x,
        cov=cov,
        chi2=_chi2(vectorizer, stats, final.x),
        n_good=stats.n_good,
        n_iter=explored.iteration[best] + final.iteration,
        converged=final.converged,
        hit_bound=jnp.any(hit),
    )
