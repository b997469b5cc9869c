"""Training many-term quadratic Cannons from weighted label moments.

The exact trainer (:mod:`._train`) forms every pixel's normal matrix
``A_λ = Σ_n ω_nλ v_n v_nᵀ`` from the packed products ``v_t v_u``: 2·N·P·T(T+1)/2 FLOP
per EM iteration, twice (θ and the leverage term), i.e. 2.7 TFLOP for 5,000 stars ×
7,214 pixels × 190 terms (18 labels). But every product ``v_t v_u`` of a quadratic
model's terms is a monomial of degree ≤ 4 in the labels, and there are only
K = C(L+4, 4) of them (7,315 at 18 labels, against 18,145 pairs). So

    A_λ[t, u] = M_λ[m(t, u)],   M = Ωᵀ Φ   (pixels × stars)(stars × K),

one matrix product of 2·N·P·K FLOP (0.53 TFLOP), gathered into each pixel's T × T
matrix. The product runs in float32 (labels scaled to unit spread, so monomials are
O(1)); float32's rounding of ``A`` is removed by one step of iterative refinement whose
residual ``b − Aθ = Vᵀ Ω (f − Vθ)`` is computed from the spectra in float64 (2·N·P·T
FLOP), not from the rounded ``A``.

The intrinsic scatter s² enters only through ``ω = w/(σ² + s²)``, so each scatter update
needs new moments. We take a fixed number of EM passes (the exact trainer's update, with
its leverage term ``Σ_n w g² v_nᵀ A⁻¹ v_n`` approximated by ``T · Σ g ω / Σ ω`` — exact
when a pixel's noise is the same for every star — which avoids a second moment
product). ``benchmarks/abundances.py`` compares θ, s² and the test-step labels with the
exact trainer.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ...inference import pin_inactive
from ._vectorizer import PolynomialVectorizer

__all__ = ["product_monomials", "fit_moments"]


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


@jax.jit
def _moments(omega: Float[Array, "stars pixels"], phi: Float[Array, "stars monomials"]) -> Array:
    return omega.astype(jnp.float32).T @ phi.astype(jnp.float32)


@jax.jit
def _solve_block(
    moments: Float[Array, "pixels monomials"],
    index: Array,
    b: Float[Array, "pixels terms"],
    active: Bool[Array, "pixels terms"],
) -> tuple[Array, Array, Array]:
    """θ of a block of pixels, the Cholesky factors and their finiteness."""
    A = moments.astype(jnp.float64)[:, index]
    A, b = pin_inactive(A, b, active)
    chol = jnp.linalg.cholesky(A)
    theta = jax.vmap(jax.scipy.linalg.cho_solve, in_axes=((0, None), 0))((chol, True), b)
    return theta, chol, jnp.all(jnp.isfinite(theta), axis=1)


@jax.jit
def _refine_block(chol: Array, residual_rhs: Array, active: Bool[Array, "pixels terms"]) -> Array:
    step = jax.vmap(jax.scipy.linalg.cho_solve, in_axes=((0, None), 0))((chol, True), residual_rhs)
    return jnp.where(active, step, 0.0)


def fit_moments(
    flux: np.ndarray,
    ivar: np.ndarray,
    scaled_labels: np.ndarray,
    vectorizer: PolynomialVectorizer,
    star_weights: np.ndarray,
    active: np.ndarray,
    *,
    passes: int = 3,
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train θ (pixels, terms) and s² (pixels,) of a model of order ≤ 2 from label moments.

    Parameters
    ----------
    flux, ivar : arrays, shape (stars, pixels)
    scaled_labels : array, shape (stars, labels)
        Labels in the model's scaled units (training set: mean 0, unit spread).
    vectorizer : PolynomialVectorizer
        Of order ≤ 2 (its term products are then of degree ≤ 4).
    star_weights : array, shape (stars,)
    active : bool array, shape (pixels, terms)
        Terms allowed at each pixel (censoring).
    passes : int
        Scatter updates: s² starts at 0 and is updated after each pass's θ; the θ
        returned is solved at the last s².
    block : int
        Pixels gathered into normal matrices at a time (memory: block · T² float64).

    Returns
    -------
    theta (pixels, terms), s2 (pixels,), pixel_ok (pixels,)
    """
    if vectorizer.order > 2:
        raise ValueError(f"moment training needs a model of order ≤ 2, got {vectorizer.order}.")
    flux, ivar = np.asarray(flux, dtype=np.float64), np.asarray(ivar, dtype=np.float64)
    weights = np.asarray(star_weights, dtype=np.float64)
    n_stars, n_pixels = flux.shape
    monomials, index = product_monomials(vectorizer)
    with jax.enable_x64(True):
        x = jnp.asarray(scaled_labels, dtype=jnp.float64)
        phi = jax.device_put(np.asarray(monomials.design(x), dtype=np.float32))
        design = np.asarray(vectorizer.design(x))
    index_j = jax.device_put(index)
    has_data = (ivar > 0) & (weights[:, None] > 0)
    n_active = active.sum(axis=1)
    usable = has_data.sum(axis=0) > n_active
    active = active & usable[:, None]
    variance = np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), 0.0)
    s2 = np.zeros(n_pixels)
    theta = np.zeros((n_pixels, vectorizer.n_terms))
    ok = np.zeros(n_pixels, dtype=bool)
    for pass_ in range(passes + 1):
        g = ivar / (1.0 + ivar * s2[None, :])
        omega = weights[:, None] * g
        with jax.enable_x64(True):
            moments = _moments(jax.device_put(omega), phi)
        b = (omega * flux).T @ design  # (pixels, terms), float64
        chols = []
        for start in range(0, n_pixels, block):
            rows = slice(start, min(start + block, n_pixels))
            with jax.enable_x64(True):
                th, chol, finite = _solve_block(moments[rows], index_j, jnp.asarray(b[rows]), active[rows])
            theta[rows], ok[rows] = np.asarray(th), np.asarray(finite) & usable[rows]
            chols.append(chol)
        theta = np.where(ok[:, None], theta, 0.0)
        residual = flux - design @ theta.T
        if pass_ == passes:
            # One step of iterative refinement against the exact (float64) normal
            # equations; the scatter updates before it do without.
            rhs = (omega * residual).T @ design
            for k, start in enumerate(range(0, n_pixels, block)):
                rows = slice(start, min(start + block, n_pixels))
                with jax.enable_x64(True):
                    step = np.asarray(_refine_block(chols[k], jnp.asarray(rhs[rows]), active[rows]))
                theta[rows] += np.where(ok[rows, None], step, 0.0)
            break
        wg2 = omega * g
        # Leverage Σ_n w g² v_nᵀA⁻¹v_n with each star's leverage ω_n v_nᵀA⁻¹v_n replaced
        # by its share T·ω_n/Σω of their total (exact for equal noise at a pixel).
        leverage = n_active * (g * omega).sum(axis=0) / np.maximum(omega.sum(axis=0), 1e-300)
        numerator = (wg2 * (residual * residual - variance)).sum(axis=0) + leverage
        s2 = np.where(ok, np.maximum(numerator / np.maximum(wg2.sum(axis=0), 1e-300), 0.0), 0.0)
    mean_flux = (weights @ (ivar * flux)) / np.maximum(weights @ ivar, 1e-300)
    theta = np.where(ok[:, None], theta, 0.0)
    theta[~ok, 0] = mean_flux[~ok]
    return theta, np.where(ok, s2, 0.0), ok
