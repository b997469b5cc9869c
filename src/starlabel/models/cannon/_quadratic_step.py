"""The test step for many labels: Gauss–Newton on residuals of the quadratic form.

The default test step (:mod:`._test_step`) first reduces every spectrum to sufficient
statistics ``H = Θᵀ diag(ω) Θ``, which costs P·T(T+1)/2 multiply–adds per spectrum
(P pixels, T terms) and needs the packed ``θθᵀ`` table, P·T(T+1)/2 numbers. That grows
with the square of the number of terms, i.e. the fourth power of the number of labels
L (T = (L+1)(L+2)/2 for a quadratic model):

====== ====== ============================ ==========================
labels terms  statistics per spectrum       residual step per evaluation
====== ====== ============================ ==========================
5      21     0.0037 GFLOP (cheap, exact)  0.0011 GFLOP
18     190    0.26 GFLOP, θθᵀ table 1.0 GB 0.0124 GFLOP
====== ====== ============================ ==========================

(P = 7,214; a multiply–add counted as 2 FLOP; :func:`flops_per_spectrum`.)
At 18 labels the statistics alone cost as much as ~21 evaluations, and the table does not fit in a
laptop's cache or a small GPU. So for a model of at most second order with many terms
we never form them. A quadratic Cannon is, per pixel,

    f_λ(x) = c_λ + a_λ·x + ½ xᵀ Q_λ x,

with ``a_λ`` its linear coefficients and ``Q_λ`` (symmetric, labels × labels) its
quadratic ones. The Jacobian is ``J_λ = a_λ + Q_λ x``: for a batch of spectra one
(spectra × L)(L × P·L) matrix product. Each evaluation gives χ² (from the float64
model flux ``c + θ·v(x)``, 2·P·T FLOP), the half-gradient ``−JᵀΩr`` and the Fisher
matrix ``JᵀΩJ``: about 2·P·(2L² + T) FLOP, 15× fewer than the statistics at 18
labels. :func:`starlabel.inference.damped_newton` takes the three from one
``evaluate`` and carries the accepted point's gradient and Fisher matrix, so one
Levenberg–Marquardt iteration is one evaluation (of its trial point). The Jacobian and
Fisher products run in float32 (5–8× faster than float64 on the CPU; the labels agree
with float64 products to ~1e-6 of their errors), the χ² in float64 (the rounding of a
float32 model flux made χ² jitter by ~1e-3, which rejected the last steps). The pixels
are processed in cache-sized blocks.

The damping, bounds, frozen labels, the Newton-decrement stopping rule and the
inverse-Fisher covariance are the default step's. The starts differ: each start costs
one evaluation and the lowest-χ² one is iterated (the default step explores every start
with a few iterations, which here would triple the cost). The first start is the
training mean; its first Gauss–Newton step lands on the linear estimate (the model
linearised there), from which the spectra of the 18-label benchmark converge in 3
iterations.

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

from ...inference import Marquardt, damped_newton, pin_inactive
from ._infer import _padded, chunk_length
from ._test_step import LabelFit, LabelStepOptions, pixel_weights
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
residual step. The statistics cost P·T²/2 multiply–adds once, the residual step
P·(2L² + L + T) per evaluation (~7 per spectrum with three starts); above this the
θθᵀ table also passes half a GB. Fewer terms keep the default step (and its results)."""

_BATCH = 64
"""Spectra evaluated together inside a chunk (one vmapped fit): the products over a
pixel block are then (block · labels × labels) × (labels × 64) matrix products."""


def flops_per_spectrum(n_pixels: int, n_labels: int, n_terms: int) -> dict[str, float]:
    """FLOP estimates (multiply–add = 2) of the two test-step formulations, per spectrum.

    Returns ``statistics`` (forming H, g, c once), ``residual_iteration`` (one
    Levenberg–Marquardt iteration of the residual step: the Jacobian product and the
    Fisher matrix and the float64 model flux) and ``pair_table_bytes`` (the float64 θθᵀ table the statistics need).
    """
    pairs = n_terms * (n_terms + 1) // 2
    return {
        "statistics": 2.0 * n_pixels * (pairs + n_terms + 1),
        "residual_iteration": 2.0 * n_pixels * (2 * n_labels * n_labels + n_labels + n_terms),
        "pair_table_bytes": 8.0 * n_pixels * pairs,
    }


def use_quadratic_step(vectorizer: PolynomialVectorizer) -> bool:
    """Whether :meth:`FittedCannon.infer` takes the residual step for this label vector."""
    return vectorizer.order <= 2 and vectorizer.n_terms >= QUADRATIC_STEP_MIN_TERMS


class QuadraticForm(eqx.Module):
    """A second-order Cannon as ``f(x) = c + a·x + ½ xᵀ Q x`` per pixel (scaled labels).

    Pixels are padded to whole blocks of :attr:`block` (padding: zero coefficients,
    and the spectra get ω = 0 there) and stored block by block, so one evaluation
    streams through the pixels a cache-sized block at a time.

    Attributes
    ----------
    constant : array, shape (blocks, block)
    linear : array, shape (blocks, block, labels)
    terms : array, shape (blocks, block, terms − 1)
        θ without its constant column (float64): the model flux ``c + θ·v(x)`` in full
        precision, for χ².
    vectorizer : PolynomialVectorizer
    curvature : array, shape (blocks, labels, block · labels)
        The symmetric ``Q_λ``: entry ``[b, l, i·L + k]`` is ``Q_λ[k, l]`` of pixel
        ``λ = b·block + i``, so that ``x @ curvature[b]`` is ``Q_λ x`` for the whole
        block. In the evaluation precision (float32 by default; see :func:`quadratic_form`).
    n_pixels : int
        Pixels before padding.
    """

    constant: Float[Array, "blocks block"]
    linear: Float[Array, "blocks block labels"]
    curvature: Float[Array, "blocks labels block_labels"]
    terms: Float[Array, "blocks block terms_1"]
    vectorizer: PolynomialVectorizer
    n_pixels: int = eqx.field(static=True)

    @property
    def block(self) -> int:
        """Pixels per block."""
        return self.constant.shape[1]


_PIXEL_BLOCK = 512
"""Pixels per block of an evaluation: a 64-spectrum batch's Jacobians of one block
(64 × 512 × 19 float32 ≈ 2.5 MB) stay in cache between the product that makes them and
the one that reduces them to ``JᵀΩJ``; unblocked (7,214 px) the same evaluation took
2–3× the CPU time on the 2-core development box."""


def quadratic_form(
    vectorizer: PolynomialVectorizer,
    theta: Float[ArrayLike, "pixels terms"],
    *,
    dtype: type = np.float32,
    block: int = _PIXEL_BLOCK,
) -> QuadraticForm:
    """Rearrange θ (pixels, terms) of a model of order ≤ 2 into a :class:`QuadraticForm`.

    ``dtype`` is the precision of ``Q`` and with it of the Jacobian and ``JᵀΩJ``
    products (the bulk of the work); the constant and linear parts of the model flux,
    the residuals and χ² stay float64, so the accept/reject decisions and the χ² are
    exact. float32 runs the products 5–8× faster on the CPU; the labels move by ~1e-4
    of their errors (checked against float64 in ``tests/test_abundances.py``).
    """
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
    block = max(1, min(block, n_pixels))
    n_blocks = -(-n_pixels // block)
    pad = n_blocks * block - n_pixels

    def blocked(a: np.ndarray) -> np.ndarray:
        a = np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(n_blocks, block, *a.shape[1:])

    rows = blocked(curvature).transpose(0, 3, 1, 2).reshape(n_blocks, n_labels, block * n_labels)
    return QuadraticForm(
        constant=jax.device_put(blocked(theta[:, 0])),
        linear=jax.device_put(blocked(linear).astype(dtype)),
        curvature=jax.device_put(rows.astype(dtype)),
        terms=jax.device_put(blocked(theta[:, 1:])),
        vectorizer=vectorizer,
        n_pixels=n_pixels,
    )


def _spd_solve(matrix: Float[Array, "k k"], vector: Float[Array, " k"]) -> Float[Array, " k"]:
    """Solve a symmetric positive-definite system by LAPACK's Cholesky (NaN if not SPD).

    The default step unrolls its few-label Cholesky into straight-line code; at 18
    labels that code took minutes to compile, the library call a fraction of a second.
    """
    factor = jnp.linalg.cholesky(matrix)
    return jax.scipy.linalg.cho_solve((factor, True), vector)


_Sums = tuple[Array, Array, Array]


def _evaluate(
    form: QuadraticForm, flux: Array, omega: Array, x: Array
) -> tuple[Float[Array, ""], Float[Array, " labels"], Float[Array, "labels labels"]]:
    """χ², ``g = −JᵀΩr`` (half its gradient) and ``M = JᵀΩJ`` at ``x``; flux, ω (blocks, block).

    Block by block: ``Qx`` (the costly product; under vmap one (spectra × labels) ×
    (labels × block·labels) matrix product) gives both the Jacobian ``a + Qx`` and the
    quadratic part ``½ xᵀQx`` of the model.
    """
    low = form.curvature.dtype
    n_labels = x.shape[0]
    x_low = x.astype(low)
    v = form.vectorizer(x)[1:]

    def block(carry: _Sums, piece: tuple[Array, ...]) -> tuple[_Sums, None]:
        constant, linear, curvature, terms, f, w = piece
        # χ² from the float64 model flux: in float32 its rounding (~1e-6 σ per pixel,
        # jumping with the last bits of x) made χ² jitter by ~1e-3, enough to reject
        # the last Gauss–Newton steps and stall short of the 1e-6 tolerance.
        residual = f - constant - terms @ v
        jac = linear + (x_low @ curvature).reshape(-1, n_labels)  # (block, labels)
        fisher = (jac * w.astype(low)[:, None]).T @ jac
        grad = jac.T @ (w * residual).astype(low)
        return (carry[0] + (w * residual) @ residual, carry[1] + grad, carry[2] + fisher), None

    init = (jnp.zeros((), x.dtype), jnp.zeros(n_labels, low), jnp.zeros((n_labels, n_labels), low))
    pieces = (form.constant, form.linear, form.curvature, form.terms, flux, omega)
    (chi2, grad, fisher), _ = jax.lax.scan(block, init, pieces)
    return chi2, -grad.astype(x.dtype), fisher.astype(x.dtype)


_DAMPING = Marquardt(initial=1e-3, shrink=0.2, grow=10.0, smallest=1e-10, largest=1e16)
"""The default step's damping rule (:mod:`._test_step`)."""


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
    n_good = jnp.sum(jnp.sign(omega))
    empty = n_good == 0
    starts = jnp.clip(jnp.where(free[None, :], starts, frozen_value[None, :]), lower[None, :], upper[None, :])

    def evaluate(x: Array) -> tuple[Array, Array, Array]:
        return _evaluate(form, flux, omega, x)

    # The lowest-χ² start (one evaluation each) is iterated to convergence. The first
    # start is the training mean, whose first Gauss–Newton step is the linear estimate
    # (the model linearised there); other starts rarely win on nearly linear labels,
    # and exploring each with iterations cost 3× the whole fit.
    if starts.shape[0] > 1:
        chi2 = jax.vmap(lambda x: evaluate(x)[0])(starts)
        x0 = starts[jnp.argmin(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))]
    else:
        x0 = starts[0]
    final = damped_newton(
        None,
        None,
        x0,
        evaluate=evaluate,
        damping=_DAMPING,
        max_steps=jnp.where(empty, 0, options.max_iter),
        tol=options.tol,
        solve=_spd_solve,
        free=free,
        lower=lower,
        upper=upper,
    )
    assert final.curvature is not None
    fisher, _ = pin_inactive(final.curvature, jnp.zeros_like(final.x), free)
    eye = jnp.eye(free.shape[0], dtype=fisher.dtype)
    cov = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(fisher), True), eye)
    cov = jnp.where(free[:, None] & free[None, :], cov, 0.0)
    span = 1e-9 * (1.0 + jnp.abs(final.x))
    hit = free & (((final.x - lower) <= span) | ((upper - final.x) <= span))
    return LabelFit(
        x=final.x,
        cov=cov,
        chi2=final.loss,
        n_good=n_good.astype(int),
        n_iter=final.iteration,
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
    n_blocks, block = form.constant.shape
    pad = n_blocks * block - form.n_pixels

    def blocked(a: Array) -> Array:
        return jnp.pad(a, (0, pad)).reshape(n_blocks, block)

    usable = pixel_ok.astype(ivar.dtype)

    def one(row: tuple[Array, Array, Array]) -> LabelFit:
        f, w, frozen_value = row
        omega = blocked(pixel_weights(w, s2, usable))
        return _fit_one(form, blocked(f), omega, starts, frozen_value, free, lower, upper, options)

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
