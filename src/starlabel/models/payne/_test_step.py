r"""The Payne's test step on per-spectrum χ² statistics in its K-component bottleneck.

The model flux is ``m(ℓ) = E z(ℓ) + b`` (see :mod:`._network`), so with
``Ω = diag(1/(σ² + s²))`` and ``r₀ = f − b``

.. math:: \chi^2(\ell) = c - 2 g^\top z + z^\top H z,\quad H = E^\top\Omega E,\
          g = E^\top\Omega r_0,\ c = r_0^\top\Omega r_0 ,

exactly. ``H`` and ``g`` cost one pass over the pixels per spectrum (matrix products in
float32, ``H`` as ``Ω @ pairs`` with the per-pixel products of basis columns formed
once; ``E`` has orthonormal columns, so ``H`` is well conditioned);
after that every Levenberg–Marquardt step costs only the small network. With the
Cholesky factor ``H = LLᵀ`` the χ² is ``c − |y|² + |y − Lᵀz(ℓ)|²`` with ``y = L⁻¹g``:
a least-squares problem of K "pixels" that the same LM as every other fit
(:func:`starlabel.models._nuisance._lm`) solves, with the same Fisher covariance
``(J_zᵀ H J_z)⁻¹ = (Jᵀ Ω J)⁻¹``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..._internal import map_chunks
from .._flux_fit import LabelFit, check_fit_options, template_labels
from .._nuisance import AbstractPackedModel, _lm
from ._flux_model import PayneSpectrum

__all__ = ["basis_pairs", "fit_payne_labels"]


class _Whitened(AbstractPackedModel):
    """``Lᵀ z(ℓ)``: the bottleneck in the coordinates where the χ² is a plain sum of squares."""

    spectrum: PayneSpectrum
    factor_t: Float[Array, "components components"]

    def flux(self, params: Float[Array, " labels"]) -> Float[Array, " components"]:
        return self.factor_t @ self.spectrum.components(params)

    def jacobian(self, params: Float[Array, " labels"]) -> Float[Array, "components labels"]:
        return self.factor_t @ jax.jacfwd(self.spectrum.components)(params)


def basis_pairs(basis: Float[Array, "pixels components"]) -> Float[Array, "pixels pairs"]:
    """Products ``E_λi E_λj`` (i ≤ j) of every pixel: ``H`` of a whole chunk is one GEMM ``Ω @ pairs``.

    Forming ``Eᵀ Ω E`` per spectrum as a batched product measured 90–117 spectra/s at
    7,214 pixels and K = 64 on 2 busy cores; the pair GEMM, 600/s (the Cannon's
    ``theta_pairs`` trick).
    """
    i, j = np.triu_indices(basis.shape[1])
    return basis[:, i] * basis[:, j]


@eqx.filter_jit
def _fit_chunk(
    spectrum: PayneSpectrum,
    pairs: Array,
    flux: Array,
    ivar: Array,
    templates: Array,
    lower: Array,
    upper: Array,
    n_starts: int,
    n_iter: int,
) -> LabelFit:
    basis = spectrum.network.basis  # (pixels, K), float32
    offset = spectrum.network.offset.astype(flux.dtype)
    omega = jax.vmap(spectrum.weights)(ivar)  # (stars, pixels), float64
    r0 = flux - offset[None, :]
    c = jnp.sum(omega * r0 * r0, axis=1)
    omega32 = omega.astype(basis.dtype)
    # The one pass over the pixels: K×K and K statistics of every spectrum (float32 GEMMs).
    k = basis.shape[1]
    i, j = np.triu_indices(k)
    upper_flat = (omega32 @ pairs).astype(flux.dtype)  # (stars, pairs)
    H = (
        jnp.zeros((flux.shape[0], k, k), dtype=flux.dtype)
        .at[:, i, j]
        .set(upper_flat)
        .at[:, j, i]
        .set(upper_flat)
    )
    g = ((omega32 * r0.astype(basis.dtype)) @ basis).astype(flux.dtype)
    jitter = 1e-9 * jnp.trace(H, axis1=1, axis2=2)[:, None, None] / k + 1e-300
    factor = jnp.linalg.cholesky(H + jitter * jnp.eye(k, dtype=flux.dtype)[None])
    y = jax.vmap(lambda L, v: jax.scipy.linalg.solve_triangular(L, v, lower=True))(factor, g)
    z_templates = jax.vmap(spectrum.components)(templates)  # (templates, K)
    free = jnp.ones(templates.shape[1], dtype=flux.dtype)
    ones = jnp.ones(k, dtype=flux.dtype)

    def one_star(L: Array, y_star: Array, c_star: Array, H_star: Array, g_star: Array) -> tuple[Array, ...]:
        # Template χ² from the statistics: c − 2 g·z + zᵀHz.
        chi2 = c_star - 2 * z_templates @ g_star + jnp.einsum("tk,kj,tj->t", z_templates, H_star, z_templates)
        order = jnp.argsort(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))[:n_starts]
        model = _Whitened(spectrum, L.T)
        params, cov, rest, done = jax.vmap(
            lambda p0: _lm(model, y_star, ones, p0, lower, upper, free, n_iter)
        )(templates[order])
        best = jnp.argmin(jnp.where(jnp.isfinite(rest), rest, jnp.inf))
        return params[best], cov[best], c_star - y_star @ y_star + rest[best], done[best]

    labels, cov, chi2, done = jax.vmap(one_star)(factor, y, c, H, g)
    return LabelFit(labels, cov, chi2, jnp.sum(omega > 0, axis=1).astype(flux.dtype), done)


def fit_payne_labels(
    spectrum: PayneSpectrum,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    n_templates: int,
    n_starts: int,
    n_iter: int,
    chunk_size: int,
) -> LabelFit:
    """Maximum-likelihood labels of every spectrum (float64 arrays; call under x64).

    Same answer as :func:`starlabel.models._flux_fit.fit_labels` on the model's pixels,
    at a fraction of the cost. Arguments as there; ``flux``/``ivar`` are (stars, pixels).
    """
    check_fit_options(n_templates=n_templates, n_starts=n_starts, n_iter=n_iter, chunk_size=chunk_size)
    templates = jnp.asarray(template_labels(spectrum, n_templates), dtype=jnp.float64)
    n_starts = min(n_starts, int(templates.shape[0]))
    low, high = spectrum.safety_box()
    lower, upper = jnp.asarray(low), jnp.asarray(high)
    pairs = basis_pairs(spectrum.network.basis)
    return map_chunks(
        lambda rows: _fit_chunk(
            spectrum,
            pairs,
            jnp.asarray(rows[0]),
            jnp.asarray(rows[1]),
            templates,
            lower,
            upper,
            n_starts,
            n_iter,
        ),
        (flux, ivar),
        size=min(chunk_size, flux.shape[0]),
    )
