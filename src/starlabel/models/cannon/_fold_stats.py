"""Cannon fold fits from per-pixel sums at the full fit's scatter (the error calibration's refits).

The error calibration trains the Cannon again on K−1 of K folds (and on halves) of
the training set. At a fixed scatter s₀² per pixel, everything an EM iteration needs
is a sum over the training stars of ``w gᵏ`` times ``v vᵀ``, ``f v``, ``f²``, ``σ²`` or
1 (``g = 1/(σ² + s₀²)``, ``v`` the label vector, ``f`` the flux), so a fold's sums are
the whole set's minus its held-out stars' (:func:`pixel_sums`): one pass over each
held-out part replaces the EM's passes over K−1 of K stars per iteration and fold.

:func:`solve_fold` starts where the iterated refit starts, at the full fit's s₀², and
takes the EM's steps on the sums: θ at s₀², the scatter's fixed-point update, θ at the
new scatter, and so on, with ``g(s²) = g/(1 + g δ)`` (``δ = s² − s₀²``, a few per cent
of σ² between a fold and the full set) expanded in powers of ``g δ`` up to the
:data:`POWERS` summed. Three steps with four powers reach the converged fold's s²
(relative to ``s² + σ²``) to 7e-4 on 208 stars × 60 px with a scatter as large as the
noise; on the 3-label simulation with 7,214 px to a median 1e-6 and at most 3e-4 on
800 stars (4/5 folds), a median 5e-6 and at most 2e-3 on 500 (the halves, whose s²
moves up to 20 % from the full set's): the iterated refit's tolerance is 1e-3
(:data:`._folds.FOLD_TOL`).

The fold keeps the full fit's label scaling: a polynomial basis closed under shifting
and scaling each label (every term's lower powers present, as in ``order=``) spans the
same functions in any scaling, so the fold's flux model is that of a fit in its own
scaling; :func:`closed_under_scaling` checks that condition. (Without L1: a penalty on
θ depends on the scaling.)
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..._internal._exported import exported_call, exported_dir
from ...inference import pin_inactive
from ._normal import outer_pairs, pack_pairs, unpack_pairs
from ._scatter import noise_variance
from ._train import theta_covariance, usable_terms, with_fallback

ArrayLike = Array | np.ndarray

__all__ = ["PixelSums", "add_sums", "closed_under_scaling", "pixel_sums", "solve_fold", "zero_sums"]


POWERS = 4
"""Powers of ``g`` summed: θ at ``s₀² + δ`` is expanded to order ``POWERS − 1`` in ``g δ``,
the scatter update's weights to order ``POWERS − 2``."""


class PixelSums(eqx.Module):
    """Per-pixel sums over a set of stars at a fixed scatter ``s₀²``, ``g = ivar/(1 + ivar s₀²)``.

    Row ``k`` of each field sums with weight ``w g^(k+1)``. Every field is linear in
    the star weights ``w``, so the sums of a fold are the whole set's minus its
    held-out stars'.
    """

    gram: Float[Array, "powers pixels pairs"]
    """Σ w gᵏ v vᵀ (packed upper triangles, :func:`._normal.outer_pairs`)."""
    rhs: Float[Array, "powers pixels terms"]
    """Σ w gᵏ f v."""
    flux2: Float[Array, "powers pixels"]
    """Σ w gᵏ f²."""
    variance: Float[Array, "powers pixels"]
    """Σ w gᵏ σ² (σ² = 1/ivar)."""
    weight: Float[Array, "powers pixels"]
    """Σ w gᵏ."""
    n_good: Float[Array, " pixels"]
    """Stars with data (ivar > 0 and w > 0)."""
    mean: Float[Array, "2 pixels"]
    """Σ w ivar f and Σ w ivar: the weighted mean flux that failed pixels fall back to."""


def closed_under_scaling(exponents: np.ndarray) -> bool:
    """True when every term's lower powers are terms too (``exponents``: (terms, labels)).

    Then shifting and scaling the labels maps the span of the terms onto itself.
    """
    terms = {tuple(int(p) for p in row) for row in np.asarray(exponents)}
    for row in terms:
        for k, power in enumerate(row):
            if power > 0 and (*row[:k], power - 1, *row[k + 1 :]) not in terms:
                return False
    return True


def _sums_impl(
    flux: Float[Array, "rows pixels"],
    ivar: Float[Array, "rows pixels"],
    design: Float[Array, "rows terms"],
    weights: Float[Array, " rows"],
    s0: Float[Array, " pixels"],
) -> PixelSums:
    has_data = (ivar > 0) & (weights[:, None] > 0)
    flux = jnp.where(ivar > 0, flux, 0.0)  # rows without data may hold anything
    g = ivar / (1.0 + ivar * s0[None, :])
    variance = noise_variance(ivar)
    powers = [weights[:, None] * g]
    for _ in range(POWERS - 1):
        powers.append(powers[-1] * g)
    wg = jnp.stack(powers)  # (powers, rows, pixels)
    return PixelSums(
        gram=jnp.einsum("krp,rq->kpq", wg, outer_pairs(design)),
        rhs=jnp.einsum("krp,rt->kpt", wg * flux[None], design),
        flux2=jnp.sum(wg * (flux * flux)[None], axis=1),
        variance=jnp.sum(wg * variance[None], axis=1),
        weight=jnp.sum(wg, axis=1),
        n_good=jnp.sum(has_data, axis=0).astype(flux.dtype),
        mean=jnp.stack([weights @ (ivar * flux), weights @ ivar]),
    )


def _gathered_sums_impl(
    flux: Float[Array, "rows pixels"],
    ivar: Float[Array, "rows pixels"],
    design: Float[Array, "rows terms"],
    weights: Float[Array, " held"],
    s0: Float[Array, " pixels"],
    index: Int[Array, " held"],
) -> PixelSums:
    # Only the held-out rows: a pass over them alone (``weights`` is 0 on padding).
    return _sums_impl(flux[index], ivar[index], design[index], weights, s0)


def _solve_impl(
    plus: PixelSums,
    minus: PixelSums,
    active: Bool[Array, "pixels terms"],
    s0: Float[Array, " pixels"],
    *,
    steps: int,
) -> tuple[Array, Array, Array]:
    s = jax.tree_util.tree_map(jnp.subtract, plus, minus)
    n_terms = active.shape[1]
    usable, active = usable_terms(jnp.round(s.n_good).astype(jnp.int32), active)
    both = active[:, :, None] & active[:, None, :]

    def series(stacked: Array, delta: Array, shift: int) -> Array:
        # Σ_j c_j (−δ)^j (row j + shift of `stacked`), with c_j = 1 (shift 0: g(s) =
        # g/(1 + g δ)) or j + 1 (shift 1: g(s)² = g²/(1 + g δ)²); rows broadcast over pixels.
        out = jnp.zeros_like(stacked[0])
        for j in range(POWERS - shift):
            coefficient = (1.0 if shift == 0 else j + 1.0) * (-delta) ** j
            out = out + coefficient.reshape(-1, *([1] * (stacked.ndim - 2))) * stacked[j + shift]
        return out

    def theta_at(delta: Array) -> tuple[Array, Array, Array]:
        # θ at s₀² + δ, the normal equations' weights g(s) expanded in g δ.
        A, b = pin_inactive(unpack_pairs(series(s.gram, delta, 0), n_terms), series(s.rhs, delta, 0), active)
        chol = jnp.linalg.cholesky(A)
        theta = jax.vmap(jax.scipy.linalg.cho_solve, in_axes=((0, None), 0))((chol, True), b)
        finite = jnp.all(jnp.isfinite(theta), axis=1)
        return jnp.where(finite[:, None], theta, 0.0), chol, finite

    def scatter_step(theta: Array, chol: Array, finite: Array, delta: Array) -> Array:
        # The EM's M step (see ._train) at s₀² + δ, its weights w g(s)² expanded in g δ.
        gram2 = series(s.gram, delta, 1)
        cov = theta_covariance(chol, both & finite[:, None, None])
        leverage = jnp.sum(gram2 * pack_pairs(cov, quadratic_form=True), axis=1)
        quadratic = jnp.einsum("pi,pij,pj->p", theta, unpack_pairs(gram2, n_terms), theta)
        residual2 = series(s.flux2, delta, 1) - 2.0 * jnp.sum(theta * series(s.rhs, delta, 1), axis=1)
        numerator = residual2 + quadratic - series(s.variance, delta, 1) + leverage
        s2 = jnp.maximum(numerator / jnp.maximum(series(s.weight, delta, 1), 1e-300), 0.0)
        return jnp.where(usable & finite, s2, s0)

    delta = jnp.zeros_like(s0)
    theta, chol, ok = theta_at(delta)
    ok = usable & ok
    for _ in range(steps):
        delta = scatter_step(theta, chol, ok, delta) - s0
        theta, chol, finite = theta_at(delta)
        ok = ok & finite
    mean_flux = s.mean[0] / jnp.maximum(s.mean[1], 1e-300)
    theta, s2 = with_fallback(theta, s0 + delta, ok, mean_flux)
    return theta, s2, ok


def pixel_sums(
    flux: ArrayLike,
    ivar: ArrayLike,
    design: ArrayLike,
    weights: ArrayLike,
    s0: ArrayLike,
    index: np.ndarray | None = None,
) -> PixelSums:
    """:class:`PixelSums` of the rows ``index`` (all rows when None) of one block of pixels.

    ``flux``, ``ivar`` (rows, pixels), ``design`` (rows, terms), ``weights`` (rows,)
    as in :func:`._train.fit_block_impl`; ``s0`` (pixels,) the scatter the sums are taken at.
    """
    if index is None:
        out = _call("cannon_fold_sums", _sums_tuple, [flux, ivar, design, weights, s0])
    else:
        out = _call("cannon_fold_sums_at", _gathered_tuple, [flux, ivar, design, weights, s0, index])
    return PixelSums(*out)  # the fields in order


def solve_fold(
    sums: PixelSums, minus: PixelSums | None, active: ArrayLike, s0: ArrayLike, steps: int = 3
) -> tuple[Array, Array, Array]:
    """θ (pixels, terms), s² (pixels,), pixel_ok (pixels,) of the fit whose sums are ``sums − minus``.

    ``minus``: the held-out stars' sums (None: nothing held out; zeros are passed, so
    that both cases run one compiled program). ``active`` (pixels, terms): the terms
    censoring leaves free; ``s0`` (pixels,): the scatter ``sums`` were taken at.
    ``steps`` scatter updates from ``s0``, each followed by θ at the new scatter.
    """
    fn = _solve_programs(steps)
    minus = zero_sums(sums) if minus is None else minus
    theta, s2, ok = _call("cannon_fold_solve", fn, [sums, minus, active, s0], static=steps)
    return theta, s2, ok


def add_sums(parts: list[PixelSums]) -> PixelSums:
    """The sums over the union of disjoint sets of stars: the sum of their sums.

    In NumPy, left to right (a compiled program per number of parts cost more to
    compile, once per process without a cache, than these adds take).
    """
    if len(parts) == 1:
        return parts[0]
    fields = [jax.tree_util.tree_leaves(part) for part in parts]
    total = [np.array(leaf) for leaf in fields[0]]  # copies: the parts stay as they are
    for leaves in fields[1:]:
        for into, leaf in zip(total, leaves, strict=True):
            into += np.asarray(leaf)
    return PixelSums(*(jax.device_put(leaf) for leaf in total))


def zero_sums(like: PixelSums) -> PixelSums:
    """Sums over no stars, shaped as ``like``."""
    leaves = jax.tree_util.tree_leaves(like)
    return PixelSums(*(jax.device_put(np.zeros(np.shape(leaf), leaf.dtype)) for leaf in leaves))


@jax.jit
def _sums_tuple(*arrays: Array) -> tuple[Array, ...]:
    return tuple(jax.tree_util.tree_leaves(_sums_impl(*arrays)))


@jax.jit
def _gathered_tuple(*arrays: Array) -> tuple[Array, ...]:
    return tuple(jax.tree_util.tree_leaves(_gathered_sums_impl(*arrays)))


@functools.cache
def _solve_programs(steps: int) -> Any:
    return jax.jit(functools.partial(_solve_impl, steps=steps))


def _call(name: str, fn: Any, arrays: list[Any], static: Any = ()) -> tuple[Array, ...]:
    """``fn(*arrays)``, a tuple of arrays, compiled; through the stored program when the cache is on.

    See :mod:`starlabel._internal._exported` (the CLI's case: no tracing in a later process).
    """
    leaves, tree = jax.tree_util.tree_flatten(arrays)
    # Every input committed to the one device: the compiled programs' outputs are, and
    # a program called once with committed and once with uncommitted arrays (sums
    # added in NumPy) is lowered and compiled twice.
    device = jax.devices()[0]
    leaves = [jax.device_put(leaf, device) for leaf in leaves]
    if exported_dir() is None:
        return fn(*jax.tree_util.tree_unflatten(tree, leaves))

    def flat(*xs: Array) -> tuple[Array, ...]:
        return fn(*jax.tree_util.tree_unflatten(tree, xs))

    return exported_call(name, flat, static, leaves)
