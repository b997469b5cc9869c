"""Training: exact per-pixel coefficients θ_λ and intrinsic scatter s_λ², all pixels at once.

For pixel λ the (star-weighted) log-likelihood is

    ln L_λ(θ, s²) = −½ Σ_n w_n [ (f_nλ − θ·v_n)² / (σ_nλ² + s²) + ln(σ_nλ² + s²) ]

At fixed s² it is quadratic in θ: the maximiser solves the normal equations
``A θ = b`` with ``A = Σ_n ω_n v_n v_nᵀ``, ``b = Σ_n ω_n f_n v_n``, ``ω_n = w_n/(σ_n² + s²)``,
which we form for every pixel in one matrix product and solve by batched Cholesky.

s² maximises the *marginal* likelihood with θ integrated out under a flat prior,
``ln L_λ(θ̂, s²) − ½ ln det A(s²)``. Unlike the profile likelihood (which ignores that
θ was fitted to the same stars and so underestimates s², badly when few stars pin
many terms) it is unbiased to first order. We maximise it by expectation–maximisation:
given the current s², θ has a Gaussian posterior (mean θ̂, covariance A⁻¹); the M step
maximises the expected log-likelihood, whose squared residuals are
``e_n = r_n² + v_nᵀ A⁻¹ v_n``. Its stationarity condition is the fixed point
``s² = Σ w g² (e − σ²) / Σ w g²`` with ``g = 1/(σ² + s²)`` (a weighted method-of-moments
estimate, exact in one step for homoscedastic noise); we take one step of it per EM
iteration. The fixed point of the whole alternation is the maximum of the marginal
likelihood (checked against brute-force 1-D optimisation in the tests); it converges
in a handful of iterations because θ and s² are nearly orthogonal parameters.

Pixels with fewer usable stars than active terms, or a singular ``A``, are returned
with ``pixel_ok = False`` (θ = weighted mean flux in the constant term, zeros
elsewhere, s² = 0) so that they never inject NaN; the test step ignores them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..._internal import as_float_array, empty_aligned
from ..._internal._buckets import bucket_size
from ..._internal._exported import exported_call, exported_dir
from ...inference import pin_inactive
from ._l1 import lasso_coordinate_descent, lasso_fista
from ._moments import MOMENT_PASSES, fit_moment_blocks, use_moments
from ._normal import outer_pairs, pack_pairs, unpack_pairs
from ._scatter import aitken, noise_variance, typical_variance
from ._vectorizer import PolynomialVectorizer

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingOptions",
    "BlockFit",
    "fit_pixels",
    "fit_arrays",
    "TrainingArrays",
    "training_arrays",
    "fit_block",
    "fit_block_impl",
    "L1_SOLVERS",
    "theta_covariance",
    "usable_terms",
    "with_fallback",
    "training_star_weights",
]

L1Solver = Literal["coordinate_descent", "fista"]
L1_SOLVERS: tuple[str, ...] = ("coordinate_descent", "fista")


class TrainingOptions(eqx.Module):
    """Static knobs of the training loop (hashable, so they are compile-time constants)."""

    max_iter: int = eqx.field(static=True, default=200)
    tol: float = eqx.field(static=True, default=1e-5)
    l1_solver: str = eqx.field(static=True, default="coordinate_descent")
    l1_max_iter: int = eqx.field(static=True, default=5000)
    l1_tol: float = eqx.field(static=True, default=1e-12)


class _EMState(eqx.Module):
    theta: Float[Array, "pixels terms"]
    solved_at: Float[Array, " pixels"]
    solved: Bool[Array, " pixels"]
    s2: Float[Array, " pixels"]
    step: Float[Array, " pixels"]
    iteration: Int[Array, ""]
    change: Float[Array, ""]


class BlockFit(eqx.Module):
    """Result of training one block of pixels."""

    theta: Float[Array, "pixels terms"]
    s2: Float[Array, " pixels"]
    pixel_ok: Bool[Array, " pixels"]
    n_iter: Int[Array, ""]
    converged: Bool[Array, ""]


def _solve_normal(
    omega: Float[Array, "stars pixels"],
    flux: Float[Array, "stars pixels"],
    design: Float[Array, "stars terms"],
    pairs: Float[Array, "stars pairs"],
    active: Bool[Array, "pixels terms"],
) -> tuple[Float[Array, "pixels terms terms"], Float[Array, "pixels terms"]]:
    """Normal matrices and right-hand sides; inactive terms are pinned to θ = 0."""
    A = unpack_pairs(omega.T @ pairs, design.shape[1])
    return pin_inactive(A, (omega * flux).T @ design, active)


def theta_covariance(
    chol: Float[Array, "pixels terms terms"], keep: Bool[Array, "pixels terms terms"]
) -> Float[Array, "pixels terms terms"]:
    """θ's posterior covariance ``A⁻¹`` from its Cholesky factor, zero outside ``keep``."""
    eye = jnp.eye(chol.shape[-1], dtype=chol.dtype)
    cov = jax.vmap(jax.scipy.linalg.cho_solve, in_axes=((0, None), None))((chol, True), eye)
    return jnp.where(keep, cov, 0.0)


def usable_terms(
    n_good: Int[Array, " pixels"], active: Bool[Array, "pixels terms"]
) -> tuple[Bool[Array, " pixels"], Bool[Array, "pixels terms"]]:
    """Pixels with more usable stars than active terms, and their active terms (none elsewhere)."""
    usable = n_good > jnp.sum(active, axis=1)
    return usable, active & usable[:, None]


def with_fallback(
    theta: Float[Array, "pixels terms"],
    s2: Float[Array, " pixels"],
    ok: Bool[Array, " pixels"],
    mean_flux: Float[Array, " pixels"],
) -> tuple[Float[Array, "pixels terms"], Float[Array, " pixels"]]:
    """Failed pixels get θ = (weighted mean flux, 0, …) and s² = 0, never NaN."""
    fallback = jnp.zeros_like(theta).at[:, 0].set(mean_flux)
    return jnp.where(ok[:, None], theta, fallback), jnp.where(ok, s2, 0.0)


def _theta_step(
    A: Float[Array, "pixels terms terms"],
    b: Float[Array, "pixels terms"],
    penalty: Float[Array, "pixels terms"] | None,
    warm: Float[Array, "pixels terms"],
    options: TrainingOptions,
) -> tuple[Float[Array, "pixels terms"], Float[Array, "pixels terms terms"]]:
    chol = jnp.linalg.cholesky(A)
    theta = jax.vmap(jax.scipy.linalg.cho_solve, in_axes=((0, None), 0))((chol, True), b)
    if penalty is not None:
        # Warm start from the previous iterate, or the unregularised solution at first.
        start = jnp.where(jnp.isfinite(warm), warm, jnp.where(jnp.isfinite(theta), theta, 0.0))
        if options.l1_solver == "coordinate_descent":
            theta, _ = lasso_coordinate_descent(
                A, b, penalty, start, max_sweeps=options.l1_max_iter, tol=options.l1_tol
            )
        else:
            theta, _ = lasso_fista(A, b, penalty, start, max_iter=options.l1_max_iter, tol=options.l1_tol)
    return theta, chol


def fit_block_impl(
    flux: Float[Array, "stars pixels"],
    ivar: Float[Array, "stars pixels"],
    design: Float[Array, "stars terms"],
    star_weights: Float[Array, " stars"],
    active: Bool[Array, "pixels terms"],
    l1: Float[Array, " pixels"],
    options: TrainingOptions,
    use_l1: bool,
    s2_init: Float[Array, " pixels"] | None = None,
    theta_init: Float[Array, "pixels terms"] | None = None,
    tol: Float[Array, ""] | None = None,
) -> BlockFit:
    """Train every pixel of one block (see the module docstring for the algorithm).

    Parameters
    ----------
    flux, ivar : arrays, shape (stars, pixels)
        Training flux and inverse variances (0 = no information).
    design : array, shape (stars, terms)
        Label vectors ``v(x_n)`` of the training stars (scaled labels).
    star_weights : array, shape (stars,)
        Non-negative multipliers of each star's log-likelihood (0 drops a star).
    active : bool array, shape (pixels, terms)
        Which terms may be non-zero at each pixel (censoring).
    l1 : array, shape (pixels,)
        L1 strength per pixel (ignored unless ``use_l1``).
    options : TrainingOptions
    use_l1 : bool
        Static: whether to run the lasso solver.
    s2_init : array, shape (pixels,), optional
        Scatter the EM starts from (default 0). The fixed point does not depend on it;
        a start near it (a fit on most of the same stars, as in the error calibration's
        folds) needs fewer iterations.
    theta_init : array, shape (pixels, terms), optional
        Warm start of the lasso's first solve (default: the unregularised solution);
        unused without L1.
    tol : array, shape (), optional
        Convergence tolerance (default ``options.tol``); an argument rather than a
        static option so that fits with other tolerances share one compiled program.
    """
    has_data = (ivar > 0) & (star_weights[:, None] > 0)
    usable, active = usable_terms(jnp.sum(has_data, axis=0), active)
    both = active[:, :, None] & active[:, None, :]
    variance = noise_variance(ivar)
    var_typ = typical_variance(ivar, star_weights)
    pairs = outer_pairs(design)
    is_constant = jnp.arange(design.shape[1]) == 0
    penalty = jnp.where(active & ~is_constant[None, :], l1[:, None], 0.0) if use_l1 else None

    def solve(s2: Array, warm: Array) -> tuple[Array, Array, Array, Array]:
        # g = 1/(σ² + s²) is the only division over (stars, pixels) per iteration; it
        # serves both the normal equations (ω = w g) and the scatter update (w g²).
        g = ivar / (1.0 + ivar * s2[None, :])
        omega = star_weights[:, None] * g
        A, b = _solve_normal(omega, flux, design, pairs, active)
        theta, chol = _theta_step(A, b, penalty, warm, options)
        return theta, chol, omega, g

    def body(state: _EMState) -> _EMState:
        theta, chol, omega, g = solve(state.s2, state.theta)
        finite = jnp.all(jnp.isfinite(theta), axis=1)
        theta = jnp.where(finite[:, None], theta, 0.0)
        # M step, one fixed-point step of  s² = Σ w g² (E[r²] − σ²) / Σ w g²  where
        # E[r²] = r² + v_nᵀ A⁻¹ v_n (θ's posterior variance, which makes this the
        # marginal- rather than profile-likelihood update). The leverage sum is taken as
        # a trace ⟨A⁻¹, Σ_n w g² v_n v_nᵀ⟩ so no (stars, pixels) leverage array is formed.
        cov = theta_covariance(chol, both & finite[:, None, None])
        residual = flux - design @ theta.T
        wg2 = omega * g
        leverage = jnp.sum((wg2.T @ pairs) * pack_pairs(cov, quadratic_form=True), axis=1)
        numerator = jnp.sum(wg2 * (residual * residual - variance), axis=0) + leverage
        s2 = jnp.maximum(numerator / jnp.maximum(jnp.sum(wg2, axis=0), 1e-300), 0.0)
        s2 = jnp.where(usable & finite, s2, 0.0)
        step = s2 - state.s2
        # Pixels without usable data have var_typ = 0 and would make this 0/0 = NaN, which
        # ends the loop after one iteration for every pixel; they take no part.
        change = jnp.max(jnp.where(usable & finite, jnp.abs(step) / (s2 + var_typ), 0.0))
        s2 = aitken(s2, step, state.step, state.iteration)
        return _EMState(theta, state.s2, finite, s2, step, state.iteration + 1, change)

    stop = jnp.asarray(options.tol if tol is None else tol, dtype=flux.dtype)

    def cond(state: _EMState) -> Array:
        return (state.iteration < options.max_iter) & (state.change > stop)

    n_pixels, n_terms = active.shape
    if s2_init is None:
        s2_init = jnp.zeros(n_pixels, dtype=flux.dtype)
    if theta_init is None:
        theta_init = jnp.full((n_pixels, n_terms), jnp.nan, dtype=flux.dtype)
    init = _EMState(
        theta_init,
        jnp.zeros(n_pixels, dtype=flux.dtype),
        jnp.zeros(n_pixels, dtype=bool),
        jnp.where(usable, jnp.maximum(s2_init, 0.0), 0.0),
        jnp.zeros(n_pixels, dtype=flux.dtype),
        jnp.array(0),
        jnp.array(jnp.inf, dtype=flux.dtype),
    )
    final = jax.lax.while_loop(cond, body, init)
    # Return θ with the s² it was solved at (an exactly consistent pair); at convergence
    # that s² is within `tol` of the last update, so no extra solve is needed.
    theta = final.theta
    ok = usable & final.solved
    mean_flux = (star_weights @ (ivar * flux)) / jnp.maximum(star_weights @ ivar, 1e-300)
    theta, s2 = with_fallback(theta, final.solved_at, ok, mean_flux)
    return BlockFit(
        theta=theta,
        s2=s2,
        pixel_ok=ok,
        n_iter=final.iteration,
        converged=final.change <= stop,
    )


class TrainingArrays(NamedTuple):
    """Training flux and inverse variances, padded and on the device, in blocks of pixels.

    Built once by :func:`training_arrays` and reused by every fit on the same spectra
    (the error calibration's folds give held-out stars weight 0 instead of slicing), so
    the padded copies and host-to-device transfers are made once per training set.
    """

    flux: tuple[Array, ...]
    """Per block: flux, shape (bucketed stars, block)."""
    ivar: tuple[Array, ...]
    """Per block: inverse variances, shape (bucketed stars, block); 0 in the padding."""
    n_stars: int
    n_pixels: int
    block: int
    """Pixels per block (the last block is padded with empty pixels)."""


def training_arrays(flux: np.ndarray, ivar: np.ndarray, *, max_elements: int = 1 << 23) -> TrainingArrays:
    """Pad ``flux`` and ``ivar`` (stars, pixels) to the training program's shapes, on the device.

    Blocks of pixels hold ``stars × block ≤ max_elements`` values; the star axis is
    padded to :func:`~starlabel._internal._buckets.bucket_size` (rows of ivar 0) and the
    last block with empty pixels, so every block has one shape and compiles once.
    """
    n_stars, n_pixels = flux.shape
    rows = bucket_size(n_stars, minimum=8)
    block = max(1, min(n_pixels, max_elements // rows))
    blocks = [(start, min(start + block, n_pixels)) for start in range(0, n_pixels, block)]
    # One transfer per array and block, reused by every fit (device_put adopts an
    # aligned host buffer on the CPU instead of copying it).
    put = lambda a, start, stop: jax.device_put(_pad_to(a[:, start:stop], rows, block))  # noqa: E731
    return TrainingArrays(
        flux=tuple(put(flux, start, stop) for start, stop in blocks),
        ivar=tuple(put(ivar, start, stop) for start, stop in blocks),
        n_stars=n_stars,
        n_pixels=n_pixels,
        block=block,
    )


def fit_pixels(
    flux: np.ndarray,
    ivar: np.ndarray,
    design: np.ndarray,
    star_weights: np.ndarray,
    active: np.ndarray,
    l1: np.ndarray,
    options: TrainingOptions,
    *,
    max_elements: int = 1 << 23,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """Train all pixels, in blocks of pixels sized so that ``stars × block ≤ max_elements``.

    Pixels are independent given the labels, so blocking over pixels bounds memory
    without changing the answer. The last block is padded with empty pixels (ivar 0)
    so every block has one shape and compiles once. The star axis is padded to
    :func:`~starlabel._internal._buckets.bucket_size` with stars of weight 0 (which add
    exact zeros to every sum), so training sets of similar size share one compiled
    program and a later run loads it from the compilation cache.

    Returns
    -------
    theta (pixels, terms), s2 (pixels,), pixel_ok (pixels,), max EM iterations, all converged
    """
    arrays = training_arrays(flux, ivar, max_elements=max_elements)
    return fit_arrays(arrays, design, star_weights, active, l1, options)


def fit_arrays(
    arrays: TrainingArrays,
    design: np.ndarray,
    star_weights: np.ndarray,
    active: np.ndarray,
    l1: np.ndarray,
    options: TrainingOptions,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    tol: float | None = None,
    vectorizer: PolynomialVectorizer | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """:func:`fit_pixels` on spectra already prepared by :func:`training_arrays`.

    ``design`` (stars, terms) and ``star_weights`` (stars,) have one row per star of
    ``arrays``; a star of weight 0 adds exact zeros to every sum, so it changes nothing.
    ``init``: optional ``(theta (pixels, terms), s2 (pixels,))`` the EM starts from
    (see :func:`fit_block_impl`'s ``s2_init``, ``theta_init``); the same fixed point, in
    fewer iterations when the start is near it. Default: s² = 0. ``tol`` overrides
    ``options.tol`` without compiling another program.

    ``vectorizer``: the model's terms (``design``'s columns). Given, and a quadratic
    model with many terms and no L1 (:func:`._moments.use_moments`), training runs from
    label moments (:mod:`._moments`: the same fixed point in a few matrix products
    instead of per-pixel EM); the returned iteration count is then its passes.
    """
    if use_moments(vectorizer, l1):
        assert vectorizer is not None
        n = arrays.n_stars
        theta, s2, ok = fit_moment_blocks(
            [np.asarray(f)[:n] for f in arrays.flux], [np.asarray(i)[:n] for i in arrays.ivar],
            arrays.n_pixels, design, vectorizer, star_weights, active,
            s2_init=None if init is None else init[1],
        )  # fmt: skip
        return theta, s2, ok, MOMENT_PASSES, True
    rows, block, n_pixels = arrays.flux[0].shape[0], arrays.block, arrays.n_pixels
    use_l1 = bool(np.any(l1 > 0))
    n_terms = design.shape[1]
    tolerance = np.asarray(options.tol if tol is None else tol, dtype=float)
    begin = None if init is None else (np.asarray(init[0], dtype=float), np.asarray(init[1], dtype=float))
    design_j = jax.device_put(_pad_to(np.asarray(design), rows, design.shape[1]))
    weights_j = jax.device_put(_pad_to(np.asarray(star_weights), rows))
    thetas, s2s, oks, iters, converged = [], [], [], 0, True
    for index, start in enumerate(range(0, n_pixels, block)):
        stop = min(start + block, n_pixels)
        pad = block - (stop - start)
        act = np.pad(active[start:stop], ((0, pad), (0, 0)), constant_values=True)
        lam = np.pad(l1[start:stop], (0, pad))
        if begin is None:
            s2_0, theta_0 = np.zeros(block), np.full((block, n_terms), np.nan)
        else:
            s2_0 = np.pad(begin[1][start:stop], (0, pad))
            theta_0 = np.pad(begin[0][start:stop], ((0, pad), (0, 0)), constant_values=np.nan)
        fields = [
            arrays.flux[index],
            arrays.ivar[index],
            design_j,
            weights_j,
            act,
            lam,
            s2_0,
            theta_0,
            tolerance,
        ]
        out = _call_fit_block(fields, options, use_l1)
        keep = slice(0, stop - start)
        thetas.append(np.asarray(out.theta)[keep])
        s2s.append(np.asarray(out.s2)[keep])
        oks.append(np.asarray(out.pixel_ok)[keep])
        iters = max(iters, int(out.n_iter))
        converged = converged and bool(out.converged)
    return np.concatenate(thetas), np.concatenate(s2s), np.concatenate(oks), iters, converged


def _pad_to(a: np.ndarray, *shape: int) -> np.ndarray:
    """``a`` zero-padded at the end of each axis to ``shape``; ``a`` itself when it fits.

    A block that needs no padding goes to JAX as a plain slice (no copy).
    """
    if a.shape == shape:
        return a
    out = empty_aligned(shape, a.dtype)
    out[...] = 0
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


fit_block = eqx.filter_jit(fit_block_impl)


def _fit_block_fields(*arrays: Array, options: TrainingOptions, use_l1: bool) -> tuple[Array, ...]:
    # `arrays`: fit_block_impl's array arguments in order (a list, as exported_call takes).
    *fields, s2_init, theta_init, tol = arrays
    out = fit_block_impl(*fields, options, use_l1, s2_init, theta_init, tol)  # pyright: ignore[reportCallIssue]
    return (out.theta, out.s2, out.pixel_ok, out.n_iter, out.converged)


def _call_fit_block(arrays: list[Any], options: TrainingOptions, use_l1: bool) -> BlockFit:
    """One compiled training block; with the compilation cache on, traced once per machine.

    See :mod:`starlabel._internal._exported` (the CLI and pipeline case); otherwise the
    ordinary ``filter_jit``.
    """
    if exported_dir() is None:
        # `arrays`: fit_block's array arguments in order (a list, as exported_call takes).
        *fields, s2_init, theta_init, tol = (jnp.asarray(a) for a in arrays)
        return fit_block(*fields, options, use_l1, s2_init, theta_init, tol)  # pyright: ignore[reportCallIssue]
    fn = functools.partial(_fit_block_fields, options=options, use_l1=use_l1)
    theta, s2, pixel_ok, n_iter, converged = exported_call(
        "cannon_train_block", fn, (options, use_l1), arrays
    )
    return BlockFit(theta=theta, s2=s2, pixel_ok=pixel_ok, n_iter=n_iter, converged=converged)


def training_star_weights(
    labels: np.ndarray, star_weights: Any, n_terms: int, label_names: Sequence[str], source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-star weights, used-star mask and complete-label mask for Cannon training.

    Every training path (in memory and streamed) selects stars this way: stars missing
    any label get weight 0 (and are logged); ``star_weights`` (default 1) must be
    finite and ≥ 0. ``source`` names the training set in errors.

    Raises
    ------
    ValueError
        On bad weights, or when no more stars than ``n_terms`` remain.
    """
    n_stars = labels.shape[0]
    if star_weights is None:
        weights = np.ones(n_stars)
    else:
        weights = as_float_array(star_weights, "star_weights")
        if weights.shape != (n_stars,):
            raise ValueError(
                f"`star_weights` has shape {weights.shape}; expected one weight per star of"
                f" {source}, ({n_stars},)."
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("`star_weights` must be finite and ≥ 0 (0 leaves a star out).")
    complete = np.all(np.isfinite(labels), axis=1)
    if not complete.all():
        logger.info("Cannon: leaving out %d training stars with missing labels.", int(np.sum(~complete)))
    weights = np.where(complete, weights, 0.0)
    used = weights > 0
    if used.sum() <= n_terms:
        raise ValueError(
            f"only {int(used.sum())} stars of {source} have all labels {list(label_names)} and"
            f" positive weight, but the model has {n_terms} terms; the Cannon needs more stars"
            " than terms (lower `order` or add stars)."
        )
    return weights, used, complete
