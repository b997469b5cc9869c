"""Symmetric normal-equation blocks built as one matrix product.

Both training (per pixel: ``A_λ = Σ_n ω_nλ v_n v_nᵀ``) and the test step (per
spectrum: ``H_n = Σ_λ ω_nλ θ_λ θ_λᵀ``) need many small symmetric matrices, each a
weighted sum of outer products. Writing the outer products' upper triangles as
columns turns the whole batch into a single matrix product, ``weights @ pairs``,
which BLAS runs at full speed and which costs half of the full ``einsum``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["PairTable", "pair_table", "outer_pairs", "unpack_pairs", "pack_pairs"]


class PairTable:
    """Index tables for the upper triangle of a ``terms × terms`` symmetric matrix."""

    __slots__ = ("row", "col", "index", "multiplicity")

    def __init__(self, n_terms: int) -> None:
        self.row, self.col = np.triu_indices(n_terms)
        self.index = np.zeros((n_terms, n_terms), dtype=np.int64)
        pairs = np.arange(self.row.size)
        self.index[self.row, self.col] = pairs
        self.index[self.col, self.row] = pairs
        # Off-diagonal entries occur twice in a quadratic form vᵀMv.
        self.multiplicity = np.where(self.row == self.col, 1.0, 2.0)


@functools.cache
def pair_table(n_terms: int) -> PairTable:
    """Cached :class:`PairTable` for ``n_terms``."""
    return PairTable(n_terms)


def outer_pairs(vectors: Float[Array, "rows terms"]) -> Float[Array, "rows pairs"]:
    """Upper-triangle entries of ``v vᵀ`` for each row ``v``, shape (rows, T(T+1)/2)."""
    table = pair_table(vectors.shape[-1])
    return vectors[:, table.row] * vectors[:, table.col]


def unpack_pairs(packed: Float[Array, "*batch pairs"], n_terms: int) -> Float[Array, "*batch terms terms"]:
    """Full symmetric matrices from packed upper triangles."""
    return packed[..., pair_table(n_terms).index]


def pack_pairs(
    matrices: Float[Array, "batch terms terms"], *, quadratic_form: bool = False
) -> Float[Array, "batch pairs"]:
    """Packed upper triangles; with ``quadratic_form`` off-diagonals are doubled.

    ``outer_pairs(v) @ pack_pairs(M, quadratic_form=True).T`` is ``vᵀ M v`` for every
    pair of rows, which is how leverages ``v_nᵀ A_λ⁻¹ v_n`` are computed in one product.
    """
    table = pair_table(matrices.shape[-1])
    packed = matrices[:, table.row, table.col]
    if quadratic_form:
        packed = packed * jnp.asarray(table.multiplicity, dtype=matrices.dtype)[None, :]
    return packed
