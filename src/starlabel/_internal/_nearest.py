"""Nearest neighbours in label space, without importing scipy for small problems.

Training and the test step look up nearest training stars in a few label dimensions:
the distance to the nearest one (the outside-the-training-set flag), the mean distance
to the k nearest (the calibration's distance term) and the k nearest themselves (its
label-space term). For the sizes a training run or a chunk of the test step meets
(≤ :data:`BRUTE_FORCE_PAIRS` point pairs, e.g. 2,048 × 2,048) every distance is
computed in NumPy, in blocks, in milliseconds; importing ``scipy.spatial`` for a k-d
tree would cost about 0.2 s of every ``starlabel`` process. Larger problems use the
tree, and so does every problem above :data:`TREE_PAIRS` once the tree is free or paid
for: when ``scipy.spatial`` is already imported, or when this process has spent more
time on brute force than the import costs (a long run, e.g. the pipeline's chunks:
at 4,000 × 800 points in 3 dimensions the tree takes 2.7 ms, brute force 4–6 ms). Both give the same
neighbours and distances to rounding (points at exactly equal distances may come in
another order).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

__all__ = ["BRUTE_FORCE_PAIRS", "TREE_PAIRS", "k_nearest", "neighbour_mean"]

BRUTE_FORCE_PAIRS = 1 << 24
"""Above this many (query, point) pairs, :func:`k_nearest` always builds a k-d tree."""

TREE_PAIRS = 1 << 16
"""Above this many pairs, a k-d tree once the import is free or paid for."""

SCIPY_IMPORT_SECONDS = 0.2
"""What importing ``scipy.spatial`` costs a process: the brute-force time budget."""

_brute_force_seconds = 0.0
"""Time this process has spent in brute-force searches (compared with the import cost)."""

_BLOCK_ELEMENTS = 1 << 16
"""(query, point) scores held at once by the brute-force search: 512 kB of float64, which
stays in cache (4.3 ms at 4,000 × 800 points; 6.0 ms with 2 MB blocks, 8.6 ms with 8 MB)."""


def k_nearest(points: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances and indices of the ``k`` rows of ``points`` nearest each row of ``query``.

    Parameters
    ----------
    points : ndarray, shape (n, dims)
        Reference points (finite).
    query : ndarray, shape (m, dims)
        Query points (finite).
    k : int
        Neighbours per query, ≥ 1; beyond the n points, distance inf and index n (as
        scipy's k-d tree query).

    Returns
    -------
    distance : ndarray, shape (m, k)
        Ascending along each row.
    index : ndarray of int, shape (m, k)
        Rows of ``points``.
    """
    points = np.asarray(points, dtype=float)
    query = np.asarray(query, dtype=float)
    n, m = len(points), len(query)
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}.")
    if k > n:
        distance, index = k_nearest(points, query, n) if n else (np.empty((m, 0)), np.empty((m, 0), int))
        missing = (m, k - n)
        return np.hstack([distance, np.full(missing, np.inf)]), np.hstack([index, np.full(missing, n)])
    if _tree_pays(m * n):
        from scipy.spatial import KDTree

        distance, index = KDTree(points).query(query, k=k)
        return np.asarray(distance).reshape(m, k), np.asarray(index).reshape(m, k)
    global _brute_force_seconds
    started = time.perf_counter()
    distance = np.empty((m, k))
    index = np.empty((m, k), dtype=np.int64)
    rows = max(1, _BLOCK_ELEMENTS // max(1, n))
    scores_of = _ranking_scores(points)
    for start in range(0, m, rows):
        block = query[start : start + rows]
        if k == 1:  # the outside-the-training-set flag: the first of equal minima, as the tree
            nearest = np.argmin(scores_of(block), axis=1)[:, None]
        elif k < n:
            nearest = np.argpartition(scores_of(block), k - 1, axis=1)[:, :k]
        else:
            nearest = np.broadcast_to(np.arange(n), (len(block), n))
        # The candidates' distances summed from their differences, as the tree does: the
        # ranking scores lose digits to cancellation (|q|² + |p|² − 2q·p), these do not.
        picked = np.sum((block[:, None, :] - points[nearest]) ** 2, axis=2)
        if k > 1:  # sort by distance, then index: the order a k-d tree query gives without ties
            order = np.lexsort((nearest, picked), axis=1)
            nearest = np.take_along_axis(nearest, order, axis=1)
            picked = np.take_along_axis(picked, order, axis=1)
        index[start : start + rows] = nearest
        distance[start : start + rows] = np.sqrt(picked)
    _brute_force_seconds += time.perf_counter() - started
    return distance, index


def neighbour_mean(
    points: np.ndarray, values: np.ndarray, query: np.ndarray, k: int, *, leave_one_out: bool = False
) -> np.ndarray:
    """Mean of ``values`` over the ``k`` rows of ``points`` nearest each row of ``query``.

    Parameters
    ----------
    points : ndarray, shape (n, dims)
        Reference points (finite).
    values : ndarray, shape (n, columns)
        A value per reference point and column; NaN (missing) values are left out of
        the mean.
    query : ndarray, shape (m, dims)
        Query points (finite).
    k : int
        Neighbours averaged (at most ``n``, or ``n − 1`` with ``leave_one_out``).
    leave_one_out : bool
        For queries that are the reference points themselves: drop each query's nearest
        point (itself) from its neighbourhood.

    Returns
    -------
    ndarray, shape (m, columns)
        NaN where a neighbourhood has no value in that column.
    """
    skip = int(leave_one_out)
    k = min(k, len(points) - skip)
    index = k_nearest(points, query, k + skip)[1][:, skip:]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": NaN, said above
        return np.nanmean(np.asarray(values)[index], axis=1)


def _tree_pays(pairs: int) -> bool:
    """Whether a k-d tree is the cheaper search for ``pairs`` (query, point) pairs."""
    if pairs > BRUTE_FORCE_PAIRS:
        return True
    paid = "scipy.spatial" in sys.modules or _brute_force_seconds > SCIPY_IMPORT_SECONDS
    return pairs > TREE_PAIRS and paid


def _ranking_scores(points: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``block (rows, dims) -> |p|² − 2 q·p`` (rows, points): squared distances less ``|q|²``.

    What ranks the points for each query (``|q|²`` is the same along a row), as one
    matrix product and one addition per block: 4–6× faster than summing squared
    differences one dimension at a time (at 4,000 × 800 points in 3 dimensions, 4 ms
    against 17–26 ms), which was slower than the k-d tree it stands in for.
    """
    twice = -2.0 * np.ascontiguousarray(points.T)  # (dims, n)
    norms = np.einsum("ij,ij->i", points, points)

    def scores(block: np.ndarray) -> np.ndarray:
        out = block @ twice
        out += norms
        return out

    return scores
