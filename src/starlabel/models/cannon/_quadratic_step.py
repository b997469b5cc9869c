"""The test step for many labels: Gauss–Newton on residuals of the quadratic form.

The default test step (:mod:`._test_step`) first reduces every spectrum to sufficient
statistics ``H = Θᵀ diag(ω) Θ``, which costs P·T(T+1)/2 multiply–adds per spectrum
(P pixels, T terms) and needs the packed ``θθᵀ`` table, P·T(T+1)/2 numbers. That grows
with the square of the number of terms, i.e. the fourth power of the number of labels
L (T = (L+1)(L+2)/2 for a quadratic model):

====== ====== ============================ ==========================
labels terms  statistics per spectrum       residual GN per iteration
====== ====== ============================ ==========================
5      21     0.0037 GFLOP (cheap, exact)  0.0010 GFLOP
18     190    0.26 GFLOP, θθᵀ table 1.0 GB 0.0104 GFLOP
====== ====== ============================ ==========================

(P = 7,214, float64; a multiply–add counted as 2 FLOP; :func:`flops_per_spectrum`.)
At 18 labels the statistics alone cost as much as ~25 Gauss–Newton iterations, and the table does not fit in a
laptop's cache or a small GPU. So for a model of at most second order with many terms
we never form them. A quadratic Cannon is, per pixel,

    f_λ(x) = c_λ + a_λ·x + ½ xᵀ Q_λ x,

with ``a_λ`` its linear coefficients and ``Q_λ`` (symmetric, labels × labels) its
quadratic ones. The Jacobian is ``J_λ = a_λ + Q_λ x`` — one (P·L × L)(L) product, a
GEMM across a batch of spectra — and the model flux ``c + ½(a + J)·x`` follows from it.
Each Levenberg–Marquardt iteration evaluates the trial point's residuals, χ², gradient
``JᵀΩr`` and Fisher matrix ``JᵀΩJ``: about 2·P·L² multiply–adds, 25× fewer than the
statistics at 18 labels. The iteration (starts, damping, bounds, frozen labels, the
Newton-decrement stopping rule, the inverse-Fisher covariance) is the same as the
default step's, so results agree to the convergence tolerance; the starts are the
training mean (in place of the linear estimate, which needs ``H``) and the training
stars of the default step.

:func:`use_quadratic_step` chooses this path for second-order models with at least
:data:`QUADRATIC_STEP_MIN_TERMS` terms (the FLOP estimate and measurements are in
``docs/abundances.md``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ...inference import pin_inactive
from ._infer import _padded, chunk_length
from ._test_step import LabelFit, LabelStepOptions
from ._vectorizer import PolynomialVectorizer

__all__ = [
    "QUADRATIC_STEP_MIN_TERMS",
    "QuadraticForm",
    "quadratic_form",
    "use_quadratic_step",
    "run_quadratic_step",
    "flops_per_spectrum",
]

QUADRATIC_STEP_MIN_TERMS = 120
"""Second-order models with at least this many terms (14 labels: 120 terms) take the
residual step. The statistics cost P·T²/2 multiply–adds once, the residual step about
2·P·L² per iteration; with ~13 evaluations per spectrum (three starts explored) they
break even near there, and above it the θθᵀ table passes half a GB."""

_BATCH = 32
"""Spectra evaluated together inside a chunk: their Jacobians (batch × pixels × labels)
stay a few tens of MB."""


def flops_per_spectrum(n_pixels: int, n_labels: int, n_terms: int) -> dict[str, float]:
    """FLOP estimates (multiply–add = 2) of the two test-step formulations, per spectrum.

    Returns ``statistics`` (forming H, g, c once), ``residual_iteration`` (one
    Levenberg–Marquardt iteration of the residual step: the Jacobian product and the
    Fisher matrix) and ``pair_table_bytes`` (the float64 θθᵀ table the statistics need).
    """
    pairs = n_terms * (n_terms + 1) // 2
    return {
        "statistics": 2.0 * n_pixels * (pairs + n_terms + 1),
        "residual_iteration": 2.0 * n_pixels * (2 * n_labels * n_labels + 4 * n_labels),
        "pair_table_bytes": 8.0 * n_pixels * pairs,
    }


def use_quadratic_step(vectorizer: PolynomialVectorizer) -> bool:
    """Whether :meth:`FittedCannon.infer` takes the residual step for this label vector."""
    return vectorizer.order <= 2 and vectorizer.n_terms >= QUADRATIC_STEP_MIN_TERMS


class QuadraticForm(eqx.Module):
    """A second-order Cannon as ``f(x) = c + a·x + ½ xᵀ Q x`` per pixel (scaled labels).

    Attributes
    ----------
    constant : array, shape (pixels,)
    linear : array, shape (pixels, labels)
    curvature : array, shape (pixels · labels, labels)
        Row ``λ·L + k`` is row k of the symmetric ``Q_λ``.
    """

    constant: Float[Array, " pixels"]
    linear: Float[Array, "pixels labels"]
    curvature: Float[Array, "rows labels"]


def quadratic_form(
    vectorizer: PolynomialVectorizer, theta: Float[ArrayLike, "pixels terms"]
) -> QuadraticForm:
    """Rearrange θ (pixels, terms) of a model of order ≤ 2 into a :class:`QuadraticForm`."""
    if vectorizer.order > 2:
        raise ValueError(f"the residual test step needs a model of order ≤ 2, got {vectorizer.order}.")
    theta = np.asarray(theta, dtype=np.float64)
    n_pixels, n_labels = theta.shape[0], vectorizer.n_labels
    linear = np.zeros((n_pixels, n_labels))
    curvature = np.zeros((n_pixels, n_labels, n_labels))
    for t, row in enumerate(vectorizer.exponents[1:], start=1):
        used = [k for k, p in enumerate(row) if p > 0]
        if sum(row) == 1:
            linear[:, used[0]] += theta[:, t]
        elif len(used) == 1:  # x_k²: ½ Q_kk x_k² with Q_kk = 2θ
            curvature[:, used[0], used[0]] += 2.0 * theta[:, t]
        else:  # x_k x_j: ½ (Q_kj + Q_jk) x_k x_j with Q_kj = Q_jk = θ
            k, j = used
            curvature[:, k, j] += theta[:, t]
            curvature[:, j, k] += theta[:, t]
    return QuadraticForm(
        constant=jax.device_put(theta[:, 0].copy()),
        linear=jax.device_put(linear),
        curvature=jax.device_put(curvature.reshape(n_pixels * n_labels, n_labels)),
    )


def _spd_solve(matrix: Float[Array, "k k"], vector: Float[Array, " k"]) -> Float[Array, " k"]:
    """Solve a symmetric positive-definite system by LAPACK's Cholesky (NaN if not SPD).

    The default step unrolls its few-label Cholesky into straight-line code; at 18
    labels that code took minutes to compile, the library call a fraction of a second.
    """
    factor = jnp.linalg.cholesky(matrix)
    return jax.scipy.linalg.cho_solve((factor, True), vector)


class _Point(eqx.Module):
    """χ², gradient JᵀΩr (= −½∇χ²) and Fisher matrix JᵀΩJ at one label point."""

    chi2: Float[Array, ""]
    grad: Float[Array, " labels"]
    fisher: Float[Array, "labels labels"]


def _evaluate(form: QuadraticForm, x: Array, flux: Array, omega: Array) -> _Point:
    n_pixels, n_labels = form.linear.shape
    jac = form.linear + (form.curvature @ x).reshape(n_pixels, n_labels)
    residual = flux - form.constant - (0.5 * (form.linear + jac)) @ x
    weighted = omega * residual
    return _Point(
        chi2=residual @ weighted,
        grad=jac.T @ weighted,
        fisher=(jac * omega[:, None]).T @ jac,
    )


class _State(eqx.Module):
    x: Float[Array, " labels"]
    point: _Point
    damping: Float[Array, ""]
    iteration: Array
    converged: Bool[Array, ""]
    stalled: Bool[Array, ""]


def _levenberg_marquardt(
    form: QuadraticForm,
    flux: Array,
    omega: Array,
    x0: Array,
    free: Array,
    lower: Array,
    upper: Array,
    max_iter: Array | int,
    tol: float,
) -> _State:
    """Damped Gauss–Newton from ``x0``; same rules as the default step's loop."""

    def step(state: _State) -> _State:
        grad, fisher = state.point.grad, state.point.fisher
        # grad points downhill (it is −½∇χ²): a label at a bound that it would push
        # further out is an active constraint and sits this step out.
        blocked = ((state.x <= lower) & (grad < 0)) | ((state.x >= upper) & (grad > 0))
        use = free & ~blocked
        M, r = pin_inactive(fisher, grad, use)
        decrement = r @ _spd_solve(M, r)
        converged = jnp.isfinite(decrement) & (decrement <= tol)
        diag = jnp.maximum(jnp.diagonal(M), 1e-12 * jnp.max(jnp.abs(jnp.diagonal(M))) + 1e-300)
        delta = _spd_solve(M + state.damping * jnp.diag(diag), r)
        trial = jnp.clip(state.x + jnp.where(use, delta, 0.0), lower, upper)
        point = _evaluate(form, trial, flux, omega)
        accept = (point.chi2 <= state.point.chi2) & jnp.isfinite(point.chi2) & ~converged
        return _State(
            x=jnp.where(accept, trial, state.x),
            point=jax.tree.map(lambda new, old: jnp.where(accept, new, old), point, state.point),
            damping=jnp.where(accept, jnp.maximum(state.damping * 0.2, 1e-10), state.damping * 10.0),
            iteration=state.iteration + jnp.where(converged, 0, 1),
            converged=converged,
            stalled=state.damping > 1e16,
        )

    def cond(state: _State) -> Array:
        return ~(state.converged | state.stalled) & (state.iteration < max_iter)

    x0 = jnp.clip(x0, lower, upper)
    init = _State(
        x0,
        _evaluate(form, x0, flux, omega),
        jnp.array(1e-3, dtype=x0.dtype),
        jnp.array(0),
        jnp.array(False),
        jnp.array(False),
    )
    return jax.lax.while_loop(cond, step, init)


def _fit_one(
    form: QuadraticForm,
    flux: Array,
    omega: Array,
    starts: Array,
    frozen_value: Array,
    free: Array,
    lower: Array,
    upper: Array,
    options: LabelStepOptions,
) -> LabelFit:
    n_good = jnp.sum(omega > 0)
    empty = n_good == 0
    starts = jnp.where(free[None, :], starts, frozen_value[None, :])

    def explore(x0: Array) -> _State:
        budget = jnp.where(empty, 0, options.explore_iter)
        return _levenberg_marquardt(form, flux, omega, x0, free, lower, upper, budget, options.tol)

    explored = jax.vmap(explore)(starts)
    chi2 = explored.point.chi2
    best = jnp.argmin(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))
    budget = jnp.where(empty, 0, options.max_iter)
    final = _levenberg_marquardt(form, flux, omega, explored.x[best], free, lower, upper, budget, options.tol)

    fisher, _ = pin_inactive(final.point.fisher, jnp.zeros_like(final.x), free)
    eye = jnp.eye(free.shape[0], dtype=fisher.dtype)
    cov = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(fisher), True), eye)
    cov = jnp.where(free[:, None] & free[None, :], cov, 0.0)
    span = 1e-9 * (1.0 + jnp.abs(final.x))
    hit = free & (((final.x - lower) <= span) | ((upper - final.x) <= span))
    return LabelFit(
        x=final.x,
        cov=cov,
        chi2=final.point.chi2,
        n_good=n_good.astype(int),
        n_iter=explored.iteration[best] + final.iteration,
        converged=final.converged,
        hit_bound=jnp.any(hit),
    )


@eqx.filter_jit
def _fit_chunk(
    flux: Float[ArrayLike, "stars pixels"],
    ivar: Float[ArrayLike, "stars pixels"],
    frozen_values: Float[ArrayLike, "stars labels"],
    form: QuadraticForm,
    s2: Float[Array, " pixels"],
    pixel_ok: Bool[Array, " pixels"],
    starts: Float[Array, "starts labels"],
    free: Bool[Array, " labels"],
    lower: Float[Array, " labels"],
    upper: Float[Array, " labels"],
    options: LabelStepOptions,
) -> LabelFit:
    flux, ivar, frozen_values = jnp.asarray(flux), jnp.asarray(ivar), jnp.asarray(frozen_values)
    usable = pixel_ok.astype(ivar.dtype)

    def one(row: tuple[Array, Array, Array]) -> LabelFit:
        f, w, frozen_value = row
        w = jnp.maximum(w, 0.0)
        omega = usable * w / (1.0 + w * s2)
        return _fit_one(form, f, omega, starts, frozen_value, free, lower, upper, options)

    return jax.lax.map(one, (flux, ivar, frozen_values), batch_size=min(_BATCH, flux.shape[0]))


def run_quadratic_step(
    flux: np.ndarray,
    ivar: np.ndarray,
    frozen_values: np.ndarray,
    form: QuadraticForm,
    s2: Array,
    pixel_ok: Array,
    starts: np.ndarray,
    free: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    options: LabelStepOptions,
    chunk_size: int,
) -> dict[str, np.ndarray]:
    """Fit every spectrum, ``chunk_size`` at a time (as :func:`._infer.run_test_step`).

    ``starts`` (starts, labels) are every starting point in scaled units (the caller
    includes the training mean); returns the :class:`LabelFit` fields stacked as numpy.
    """
    n_stars = flux.shape[0]
    size = chunk_length(n_stars, chunk_size)
    starts_j, free_j, lower_j, upper_j = (jax.device_put(np.asarray(a)) for a in (starts, free, lower, upper))
    fields = ("x", "cov", "chi2", "n_good", "n_iter", "converged", "hit_bound")
    pieces: list[dict[str, np.ndarray]] = []
    for start in range(0, n_stars, size):
        stop = min(start + size, n_stars)
        pad = size - (stop - start)
        rows, weights, frozen = (
            a[start:stop] if pad == 0 else _padded(a[start:stop], size) for a in (flux, ivar, frozen_values)
        )
        out = _fit_chunk(
            rows, weights, frozen, form, s2, pixel_ok, starts_j, free_j, lower_j, upper_j, options
        )
        pieces.append({name: np.asarray(getattr(out, name))[: stop - start] for name in fields})
    return {name: np.concatenate([p[name] for p in pieces]) for name in fields}
