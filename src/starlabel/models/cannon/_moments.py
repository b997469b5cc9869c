"""Training many-term quadratic Cannons from weighted label moments.

**FLOP floor.** The exact trainer (:mod:`._train`) forms every pixel's normal matrix
``A_λ = Σ_n ω_nλ v_n v_nᵀ`` from the packed products ``v_t v_u``: 2·N·P·T(T+1)/2 FLOP
per EM iteration, twice (θ and the leverage term), i.e. 2.7 TFLOP for 5,000 stars ×
7,214 pixels × 190 terms (18 labels) — 20+ s per iteration even at a 2-core machine's
float32 GEMM peak, and it takes ~8 iterations. Every product ``v_t v_u`` of a quadratic
model's terms is a monomial of degree ≤ 4 in the labels, and there are only
K = C(L+4, 4) of them (7,315 at 18 labels, against 18,145 pairs). So

    A_λ[t, u] = M_λ[m(t, u)],   M = Ωᵀ Φ   (pixels × stars)(stars × K),

one matrix product of 2·N·P·K FLOP (0.53 TFLOP, a few seconds of float32 BLAS GEMM),
gathered into each pixel's T × T matrix (P·T³/3 = 17 GFLOP of Cholesky factors).
The product runs in float32 (labels scaled to unit spread, so monomials are O(1));
its rounding is removed by one step of iterative refinement whose residual
``b − Aθ = Vᵀ Ω (f − Vθ)`` is computed from the spectra in float64 (2·N·P·T FLOP).

**Few passes.** s² enters only through ``ω = w/(σ² + s²)``, so each new s² needs new
moments; we therefore make each moment product count. A *pass* solves θ at the current
s² (one product), then solves the scatter's stationarity condition

    s² = [Σ_n w g² (r_n² − σ_n²) + Σ_n w g² v_nᵀ A⁻¹ v_n] / Σ_n w g²,   g = 1/(σ² + s²)

(the exact trainer's EM fixed point, see :mod:`._train`) to convergence with θ — and so
the residuals r — held fixed: per-pixel scalar iterations over (stars,) arrays, no
moments. θ depends on s² only through the weights, to second order, so the second
pass's s² is already at the fixed point. Its θ is then moved to that s² without new
moments, by a few steps of iterative refinement ``θ += α A⁻¹ Vᵀ Ω' (f − Vθ)`` at the
new weights Ω', preconditioned by the pass's factors (whose float32 rounding the same
steps remove), and s² is solved once more at the final θ. Two products then match the
exact trainer to ~1e-6 in θ (``tests/test_moments.py``;
``benchmarks/results/abundances.json``).

**Leverage.** ``Σ_n w g² v_nᵀ A⁻¹ v_n`` would need a second moment product (weights
``w g²``). We write each star's leverage as ``h_n = ω_n q_n`` with ``q_n = v_nᵀ A⁻¹ v_n``
taken from a *pixel group's* normal matrix (pixels grouped by the ratio of scatter to
noise variance, whose weights across stars look alike) and normalised so that
``Σ_n h_n`` is the pixel's number of active terms, as it is exactly. This is exact
when the noise is the same for every star at a pixel, and when it factorises into a
per-star and a per-pixel part at s² = 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, Bool, Float, Int

from ...inference import pin_inactive
from ._scatter import aitken, noise_variance, typical_variance
from ._vectorizer import PolynomialVectorizer

__all__ = [
    "MOMENT_MIN_TERMS",
    "MOMENT_PASSES",
    "fit_moments",
    "fit_moment_blocks",
    "product_monomials",
    "use_moments",
]

MOMENT_MIN_TERMS = 120
"""Quadratic models with at least this many terms (and no L1) train from moments."""

MOMENT_PASSES = 2
"""Moment products per training (see the module docstring)."""

REFINE_STEPS = 3
"""Refinement steps of the last pass: θ moves to the last s² and to float64 accuracy."""

_GROUPS = 14
"""Pixel groups for the leverage shape: s² = 0, then half-dex bins of s²/σ² from 1e-3."""


def use_moments(vectorizer: PolynomialVectorizer | None, l1: np.ndarray) -> bool:
    """Whether :func:`._train.fit_arrays` trains from moments (many terms, order ≤ 2, no L1)."""
    return (
        vectorizer is not None
        and vectorizer.order <= 2
        and vectorizer.n_terms >= MOMENT_MIN_TERMS
        and not bool(np.any(np.asarray(l1) > 0))
    )


def product_monomials(vectorizer: PolynomialVectorizer) -> tuple[PolynomialVectorizer, np.ndarray]:
    """The distinct monomials ``v_t v_u`` and where each product lands.

    Returns ``(monomials, index)``: a vectorizer over the distinct products (constant
    first) and ``index`` (terms, terms) with ``v_t v_u = monomials(x)[index[t, u]]``.
    """
    exponents = vectorizer.exponent_array
    rows: dict[tuple[int, ...], int] = {tuple([0] * vectorizer.n_labels): 0}
    index = np.zeros((vectorizer.n_terms, vectorizer.n_terms), dtype=np.int64)
    for t, u in itertools.product(range(vectorizer.n_terms), repeat=2):
        row = tuple(int(p) for p in exponents[t] + exponents[u])
        index[t, u] = rows.setdefault(row, len(rows))
    monomials = PolynomialVectorizer(vectorizer.label_names, tuple(rows))
    return monomials, index


def _monomial_design(design: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Φ (stars, monomials) float32: each monomial as the product of its first pair of terms."""
    n_monomials = int(index.max()) + 1
    first_t = np.zeros(n_monomials, dtype=np.int64)
    first_u = np.zeros(n_monomials, dtype=np.int64)
    # Reversed, so the first (t, u) in row-major order is the one that stays.
    flat = index.ravel()[::-1]
    pairs = np.arange(index.size)[::-1]
    first_t[flat], first_u[flat] = pairs // index.shape[1], pairs % index.shape[1]
    d32 = design.astype(np.float32)
    return d32[:, first_t] * d32[:, first_u]


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """OpenBLAS (numpy's and scipy's, which JAX's LAPACK calls use) on one thread.

    Thousands of 190 × 190 factorisations run 5–15× slower when OpenBLAS splits each
    across threads (measured on 2 cores); the big moment product keeps all threads.
    A no-op where the libraries cannot be found.
    """
    restore: list[tuple[object, int]] = []
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            for suffix in ("64_", ""):
                setter = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                getter = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    restore.append((setter, int(getter())))
                    setter(1)
                    break
    except OSError:
        pass
    try:
        yield
    finally:
        for setter, threads in restore:
            setter(threads)  # pyright: ignore[reportCallIssue]


@jax.jit
def _factor(
    moments: Float[Array, "pixels monomials"],
    index: Int[Array, "terms terms"],
    b: Float[Array, "pixels terms"],
    active: Bool[Array, "pixels terms"],
) -> tuple[Array, Array]:
    """θ (pixels, terms) from float32 moments and right-hand sides, and the float64 factors."""
    A, b = pin_inactive(moments.astype(jnp.float64)[:, index], b.astype(jnp.float64), active)
    chol = jnp.linalg.cholesky(A)
    return jnp.where(active, _cho_solve((chol, True), b), 0.0), chol


@jax.jit
def _refine(chol: Array, rhs: Float[Array, "pixels terms"], active: Bool[Array, "pixels terms"]) -> Array:
    return jnp.where(active, _cho_solve((chol, True), rhs), 0.0)


_cho_solve = jax.vmap(jax.scipy.linalg.cho_solve, in_axes=((0, None), 0))


@jax.jit
def _scatter(
    residual: Float[Array, "stars pixels"],
    ivar: Float[Array, "stars pixels"],
    weights: Float[Array, " stars"],
    shape: Float[Array, "stars pixels"],
    n_active: Float[Array, " pixels"],
    s2: Float[Array, " pixels"],
) -> Array:
    """The scatter's fixed point at fixed residuals (see the module docstring).

    ``shape``: each star's ``q_n`` (leverage per unit weight) at its pixel's group.
    Iterated with Aitken's extrapolation (as :mod:`._train`) until s² changes by
    < 1e-9 of σ² + s², at most 100 times.
    """
    e = residual * residual - noise_variance(ivar)
    var_typ = typical_variance(ivar, weights)

    def update(s2: Array) -> Array:
        g = ivar / (1.0 + ivar * s2[None, :])
        wg2 = weights[:, None] * g * g
        leverage = (
            n_active
            * jnp.sum(wg2 * shape, axis=0)
            / jnp.maximum(jnp.sum(weights[:, None] * g * shape, axis=0), 1e-300)
        )
        numerator = jnp.sum(wg2 * e, axis=0) + leverage
        return jnp.maximum(numerator / jnp.maximum(jnp.sum(wg2, axis=0), 1e-300), 0.0)

    def body(state: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        s2, last_step, i, _ = state
        new = update(s2)
        step = new - s2
        change = jnp.max(jnp.abs(step) / (new + var_typ + 1e-300))
        return aitken(new, step, last_step, i), step, i + 1, change

    def cond(state: tuple[Array, Array, Array, Array]) -> Array:
        return (state[2] < 100) & (state[3] > 1e-9)

    init = (s2, jnp.zeros_like(s2), jnp.array(0), jnp.array(jnp.inf, dtype=s2.dtype))
    return jax.lax.while_loop(cond, body, init)[0]


def _groups(s2: np.ndarray, var_typ: np.ndarray) -> np.ndarray:
    """Pixel group (pixels,) by s²/σ²_typical: 0 for s² ≈ 0, then half-dex bins."""
    ratio = s2 / np.maximum(var_typ, 1e-300)
    bins = np.floor(2.0 * np.log10(np.maximum(ratio, 1e-300) / 1e-3)).astype(np.int64)
    return np.where(ratio <= 1e-3, 0, 1 + np.clip(bins, 0, _GROUPS - 2))


def _leverage_shapes(weight_sums: np.ndarray, design: np.ndarray) -> np.ndarray:
    """``q_n = v_nᵀ A_G⁻¹ v_n`` (groups, stars) with ``A_G = Σ_n ω̄_nG v_n v_nᵀ``."""
    shapes = np.ones((weight_sums.shape[1], design.shape[0]))
    for group in range(weight_sums.shape[1]):
        w = weight_sums[:, group]
        if not np.any(w > 0):
            continue
        A = design.T @ (w[:, None] * design)
        try:
            chol = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            continue
        solved = scipy.linalg.solve_triangular(chol, design.T, lower=True)  # L⁻¹Vᵀ (terms, stars)
        shapes[group] = np.sum(solved * solved, axis=0)
    return shapes


def fit_moment_blocks(
    flux_blocks: Sequence[np.ndarray],
    ivar_blocks: Sequence[np.ndarray],
    n_pixels: int,
    design: np.ndarray,
    vectorizer: PolynomialVectorizer,
    star_weights: np.ndarray,
    active: np.ndarray,
    *,
    s2_init: np.ndarray | None = None,
    passes: int = MOMENT_PASSES,
    block: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train θ (pixels, terms) and s² (pixels,) of a model of order ≤ 2 from label moments.

    Parameters
    ----------
    flux_blocks, ivar_blocks : sequences of arrays, each shape (stars, block pixels)
        The training spectra in consecutive blocks of pixels (the last block may be
        padded past ``n_pixels``; padding is ignored). Stars of weight 0 (padding) add
        nothing.
    n_pixels : int
    design : array, shape (stars, terms)
        ``vectorizer``'s terms at the training stars' scaled labels (unit spread).
    vectorizer : PolynomialVectorizer
        Of order ≤ 2 (its term products are then of degree ≤ 4).
    star_weights : array, shape (stars,)
    active : bool array, shape (pixels, terms)
        Terms allowed at each pixel (censoring): inactive terms are exactly 0.
    s2_init : array, shape (pixels,), optional
        Scatter the first pass solves θ at (default 0).
    passes : int
        Moment products: θ is solved at the scatter of the previous pass, and the s²
        returned is the fixed point at that θ.
    block : int
        Pixels gathered into normal matrices at a time (memory: block · T² float64).

    Returns
    -------
    theta (pixels, terms), s2 (pixels,), pixel_ok (pixels,)
    """
    if vectorizer.order > 2:
        raise ValueError(f"moment training needs a model of order ≤ 2, got {vectorizer.order}.")
    weights = np.asarray(star_weights, dtype=np.float64)
    design = np.asarray(design, dtype=np.float64)
    _, index = product_monomials(vectorizer)
    phi = _monomial_design(design, index)
    n_terms = design.shape[1]
    starts = np.cumsum([0] + [b.shape[1] for b in flux_blocks])
    has_data = np.concatenate([np.sum((iv > 0) & (weights[:, None] > 0), axis=0) for iv in ivar_blocks])
    usable = has_data[:n_pixels] > active.sum(axis=1)
    active = active & usable[:, None]
    n_active = active.sum(axis=1).astype(np.float64)
    weight_ivar = np.concatenate([weights @ iv for iv in ivar_blocks])[:n_pixels]
    var_typ = np.concatenate([weights @ (iv > 0) for iv in ivar_blocks])[:n_pixels] / np.maximum(
        weight_ivar, 1e-300
    )
    mean_flux = np.concatenate([weights @ (iv * f) for f, iv in zip(flux_blocks, ivar_blocks, strict=True)])
    mean_flux = mean_flux[:n_pixels] / np.maximum(weight_ivar, 1e-300)
    s2 = np.zeros(n_pixels) if s2_init is None else np.maximum(np.asarray(s2_init, dtype=float), 0.0)
    s2 = np.where(usable, s2, 0.0)
    theta = np.zeros((n_pixels, n_terms))
    ok = np.zeros(n_pixels, dtype=bool)
    with jax.enable_x64(True):
        terms = _Terms(
            phi, design, design.astype(np.float32), jax.device_put(index.astype(np.int32)),
            weights, jax.device_put(weights),
        )  # fmt: skip
        for pass_ in range(passes):
            group = _groups(s2, var_typ)
            sums = np.zeros((design.shape[0], _GROUPS))
            for k, iv in enumerate(ivar_blocks):
                stop = min(starts[k + 1], n_pixels) - starts[k]
                g = iv[:, :stop] / (1.0 + iv[:, :stop] * s2[starts[k] : starts[k] + stop])
                onehot = group[starts[k] : starts[k] + stop, None] == np.arange(_GROUPS)[None, :]
                sums += (weights[:, None] * g) @ onehot
            with _single_threaded_blas():
                shapes = _leverage_shapes(sums, design)
            new_s2 = np.zeros(n_pixels)
            for k, (f_block, iv_block) in enumerate(zip(flux_blocks, ivar_blocks, strict=True)):
                width = min(starts[k + 1], n_pixels) - starts[k]
                for lo in range(0, width, block):
                    hi = min(lo + block, width)
                    rows = slice(starts[k] + lo, starts[k] + hi)
                    theta[rows], new_s2[rows], ok[rows] = _pixel_block(
                        terms, f_block[:, lo:hi], iv_block[:, lo:hi], s2[rows], active[rows],
                        n_active[rows], shapes[group[rows]].T, block, refine=pass_ == passes - 1,
                    )  # fmt: skip
            s2 = np.where(ok & usable, new_s2, 0.0)
    ok &= usable
    theta = np.where(ok[:, None], theta, 0.0)
    theta[~ok, 0] = mean_flux[~ok]
    return theta, np.where(ok, s2, 0.0), ok


class _Terms(NamedTuple):
    """Per-star arrays every block uses."""

    phi: np.ndarray
    """Monomials (stars, K) float32."""
    design: np.ndarray
    """Terms (stars, T) float64."""
    design32: np.ndarray
    index: Array
    """(T, T) monomial of each product of terms, on the device."""
    weights: np.ndarray
    weights_j: Array


def _pixel_block(
    terms: _Terms,
    flux: np.ndarray,
    ivar: np.ndarray,
    s2: np.ndarray,
    active: np.ndarray,
    n_active: np.ndarray,
    shape: np.ndarray,
    block: int,
    refine: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over ≤ ``block`` pixels: moments, θ at ``s2``, then the scatter's fixed point."""
    n = flux.shape[1]
    pad = block - n
    flux, ivar = np.asarray(flux, dtype=np.float64), np.asarray(ivar, dtype=np.float64)
    omega = terms.weights[:, None] * (ivar / (1.0 + ivar * s2[None, :]))
    # The one big product, float32 BLAS GEMM (pixels × stars)(stars × monomials), and
    # the right-hand sides in float32 too: the refinement below restores float64.
    omega32 = np.ascontiguousarray(omega.T, dtype=np.float32)
    moments = np.pad(omega32 @ terms.phi, ((0, pad), (0, 0)))
    b = np.pad((omega32 * flux.T.astype(np.float32)) @ terms.design32, ((0, pad), (0, 0)))
    active = np.pad(active, ((0, pad), (0, 0)), constant_values=True)
    with _single_threaded_blas():
        theta, chol = jax.block_until_ready(_factor(moments, terms.index, b, active))
    theta = np.asarray(theta)[:n]
    residual = flux - terms.design @ theta.T
    finite = np.all(np.isfinite(theta), axis=1)
    padded = lambda a, value=0.0: np.pad(a, ((0, 0), (0, pad)), constant_values=value)  # noqa: E731

    def scatter(theta: np.ndarray, residual: np.ndarray, start: np.ndarray) -> np.ndarray:
        residual = np.where(finite[None, :], residual, flux)
        out = _scatter(
            padded(residual), padded(ivar), terms.weights_j, padded(shape, 1.0),
            np.pad(n_active, (0, pad)), np.pad(start, (0, pad)),
        )  # fmt: skip
        return np.asarray(out)[:n]

    new_s2 = scatter(theta, residual, s2)
    if refine:
        # θ at the new s² without new moments, and float32's rounding removed: steps of
        # iterative refinement θ += α A⁻¹ Vᵀ Ω' (f − Vθ), the float64 residual of the
        # normal equations at the new weights Ω', preconditioned by this pass's A. The
        # eigenvalues of A⁻¹A' lie within the range of ω'/ω over the stars, so
        # α = 2/(min + max) makes every step a contraction.
        new_omega = terms.weights[:, None] * (ivar / (1.0 + ivar * new_s2[None, :]))
        ratio = np.where(omega > 0, new_omega / np.where(omega > 0, omega, 1.0), np.nan)
        alpha = 2.0 / (np.nanmin(ratio, axis=0, initial=np.inf) + np.nanmax(ratio, axis=0, initial=0.0))
        alpha = np.where(np.isfinite(alpha), alpha, 1.0)
        for _ in range(REFINE_STEPS):
            rhs = alpha[:, None] * ((new_omega * residual).T @ terms.design)
            with _single_threaded_blas():
                step = np.asarray(_refine(chol, np.pad(rhs, ((0, pad), (0, 0))), active))[:n]
            theta = theta + step
            residual -= terms.design @ step.T
        finite = np.all(np.isfinite(theta), axis=1)
        new_s2 = scatter(theta, residual, new_s2)
    theta = np.where(finite[:, None], theta, 0.0)
    return theta, np.asarray(new_s2)[:n], finite


def fit_moments(
    flux: np.ndarray,
    ivar: np.ndarray,
    design: np.ndarray,
    vectorizer: PolynomialVectorizer,
    star_weights: np.ndarray,
    active: np.ndarray,
    **options: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fit_moment_blocks` on whole (stars, pixels) arrays ``flux`` and ``ivar``."""
    flux, ivar = np.asarray(flux, dtype=np.float64), np.asarray(ivar, dtype=np.float64)
    return fit_moment_blocks(
        [flux],
        [ivar],
        flux.shape[1],
        design,
        vectorizer,
        star_weights,
        active,
        **options,  # pyright: ignore[reportArgumentType]
    )
