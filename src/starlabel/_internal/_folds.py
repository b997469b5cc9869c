"""K-fold assignment shared by every cross-validation inside training."""

from __future__ import annotations

import numpy as np

__all__ = ["fold_indices", "fold_of"]


def fold_indices(n: int, n_folds: int, seed: int) -> list[np.ndarray]:
    """Split ``range(n)`` into ``n_folds`` random, nearly equal, sorted index sets.

    Parameters
    ----------
    n : int
        Number of items (stars).
    n_folds : int
        Number of folds (2 ≤ ``n_folds`` ≤ ``n``).
    seed : int
        Seed of the permutation: the same ``(n, n_folds, seed)`` always gives the same folds.

    Returns
    -------
    list of ndarray of int
        The held-out indices of each fold; together they cover ``range(n)`` once.
    """
    if not (isinstance(n_folds, int) and 2 <= n_folds <= n):
        raise ValueError(f"`n_folds` must be an integer in [2, {n}], got {n_folds!r}.")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, n_folds)]


def fold_of(n: int, n_folds: int, seed: int) -> np.ndarray:
    """The fold of each item under :func:`fold_indices`, shape ``(n,)``, values in ``[0, n_folds)``."""
    fold = np.empty(n, dtype=np.int64)
    for m, held in enumerate(fold_indices(n, n_folds, seed)):
        fold[held] = m
    return fold
