"""The error calibration's fold fits of an in-memory Cannon training.

``Cannon.fit(calibrate=True)`` hands :func:`~starlabel.models._calibration.calibrated_fit`
a ``refit(rows)`` that trains the same configuration on the stars ``rows``. Two ways:

* summed (the default, without L1 and with terms closed under label scaling): each
  fold from per-pixel sums over the stars at the full fit's scatter (:mod:`._fold_stats`),
  the whole set's sums less the held-out stars', in the full fit's label scaling. Each
  star is summed about twice in all (the 5 held-out parts, then one of the halves)
  instead of in every iteration of 7 EM fits: on 1,000 stars × 7,214 px, 3 labels, the
  folds cost 1.5 CPU s instead of 5.5 and the calibration and the calibrated errors of
  2,000 test stars are the iterated refit's to 1e-4.
* iterated: a fold keeps every star in the padded device arrays of the full fit and
  gives the held-out ones weight 0 (exact zeros in every sum): the same compiled
  program and no sliced copies of the spectra. The label scaling is fitted on the
  fold's stars, as for ``train[rows]``, and the EM starts from the full fit's scatter
  (4/5 of the same stars: the same fixed point in fewer iterations), stopping at
  :data:`FOLD_TOL`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._internal import fold_indices
from ..._internal._buckets import bucket_size
from ...data import SpectralDataset
from .._error_calibration import CALIBRATION_FOLDS
from ._fold_stats import PixelSums, add_sums, closed_under_scaling, pixel_sums, solve_fold, zero_sums
from ._prepare import Prepared
from ._train import TrainingArrays

if TYPE_CHECKING:
    from ._model import Cannon, FittedCannon

__all__ = ["FOLD_TOL", "SUMMED_FOLDS", "fold_refit"]

SUMMED_FOLDS = True
"""Use the summed refit where it applies (False: always the iterated one)."""

FOLD_TOL = 1e-3
"""EM tolerance of the error calibration's fold fits (the final fit keeps ``Cannon.tol``).
Started from the full fit's scatter, a fold needs 3–4 EM iterations at 1e-3 against
8–9 from zero at 1e-5; on the line-list spectra (5 labels, 7,214 px, 2,000 stars) the
calibration's σ_sys and γ moved by < 2e-5 (relative), the calibrated errors of 500 test
stars by < 3e-5, and training with calibration took 3.6× the time without instead of
4.6× (CPU 3.9× instead of 7.7×; ``benchmarks/results/calibration_train_time.json``)."""


def fold_refit(
    model: Cannon,
    prep: Prepared,
    arrays: TrainingArrays,
    train: SpectralDataset,
    star_weights: Any,
    fitted: FittedCannon,
) -> Callable[[np.ndarray], FittedCannon]:
    """``refit(rows)``: ``model`` trained on the stars ``rows`` of ``train`` (see the module doc).

    ``prep`` and ``arrays`` are the full fit's (:meth:`Cannon._prepare`,
    :func:`._train.training_arrays`), ``fitted`` its result (the warm start).
    """
    if SUMMED_FOLDS and np.all(prep.l1 == 0) and closed_under_scaling(prep.vectorizer.exponent_array):
        return _SummedFolds(model, prep, arrays, train.wavelength, fitted).refit

    # The iterated refit: the EM on the fold's stars, from `fitted` (any configuration).
    def refit(rows: np.ndarray) -> FittedCannon:
        weights = np.zeros(train.n_stars)
        weights[rows] = 1.0 if star_weights is None else np.asarray(star_weights, dtype=float)[rows]
        fold = model._prepare_labels(
            prep.labels, train.n_pixels, train.wavelength, weights, "the training set"
        )
        missing = {"n_missing_labels": int(np.sum(~prep.complete[rows]))}
        tol = max(model.tol, FOLD_TOL)
        return model._fit_arrays(fold, arrays, train.wavelength, missing, init=fitted, tol=tol)

    return refit


class _SummedFolds:
    """Fold fits from sums over the stars (:mod:`._fold_stats`), each set of stars summed once.

    A fold's sums are those of its stars when known (the halves: each is the other's
    held-out part), else the whole set's minus its held-out stars'. The whole set's
    sums are the sum of the calibration's K held-out parts when the first fold asked
    for is one of :func:`~starlabel._internal.fold_indices` ``(n, K, 0)`` (what
    :func:`~starlabel.models._calibration.calibrated_fit` asks for), else one pass.
    """

    def __init__(
        self, model: Cannon, prep: Prepared, arrays: TrainingArrays, wavelength: Any, fitted: FittedCannon
    ) -> None:
        self.model, self.prep, self.arrays, self.wavelength = model, prep, arrays, wavelength
        self.scaler, self.scaled, design = prep.design()  # the full fit's scaling (module doc)
        self.rows = arrays.flux[0].shape[0]
        self.design = _pad_rows(design, self.rows)
        s2 = np.asarray(fitted.s2, dtype=float)
        self.blocks: list[tuple[int, np.ndarray, np.ndarray]] = []
        for start in range(0, arrays.n_pixels, arrays.block):
            stop = min(start + arrays.block, arrays.n_pixels)
            pad = arrays.block - (stop - start)
            active = np.pad(prep.active[start:stop], ((0, pad), (0, 0)), constant_values=True)
            self.blocks.append((stop - start, active, np.pad(s2[start:stop], (0, pad))))
        self.sums: dict[bytes, list[PixelSums]] = {}
        self.full: list[PixelSums] | None = None
        # Every set of stars is summed in pieces of one size (a K-fold held-out part,
        # bucketed), so the calibration compiles one summing program, not one per set
        # size (held-out parts and halves), and the pieces are added in NumPy.
        n = arrays.n_stars
        self.piece = bucket_size(-(-n // CALIBRATION_FOLDS) if n >= CALIBRATION_FOLDS else n, minimum=8)

    def _sums_of(self, stars: np.ndarray) -> list[PixelSums]:
        """Per block of pixels, the sums over ``stars`` (sorted indices), computed once."""
        key = stars.tobytes()
        if key not in self.sums:
            pieces = []
            for begin in range(0, max(len(stars), 1), self.piece):
                part = stars[begin : begin + self.piece]
                index = np.zeros(self.piece, dtype=np.int64)
                index[: len(part)] = part
                weights = np.zeros(self.piece)
                weights[: len(part)] = self.prep.weights[part]  # 0 on the padding
                pieces.append(
                    [
                        pixel_sums(flux, ivar, self.design, weights, s0, index)
                        for flux, ivar, (_, _, s0) in zip(
                            self.arrays.flux, self.arrays.ivar, self.blocks, strict=True
                        )
                    ]
                )
            self.sums[key] = [add_sums(list(blocks)) for blocks in zip(*pieces, strict=True)]
        return self.sums[key]

    def _full(self, held: np.ndarray) -> list[PixelSums]:
        if self.full is None:
            n = self.arrays.n_stars
            parts = fold_indices(n, CALIBRATION_FOLDS, 0) if n >= CALIBRATION_FOLDS else []
            if not any(np.array_equal(part, held) for part in parts):
                parts = [np.arange(n)]
            per_part = [self._sums_of(part) for part in parts]
            self.full = [add_sums(list(blocks)) for blocks in zip(*per_part, strict=True)]
        return self.full

    def refit(self, rows: np.ndarray) -> FittedCannon:
        prep, n = self.prep, self.arrays.n_stars
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        weights = np.zeros(n)
        weights[rows] = prep.weights[rows]
        fold = self.model._prepare_labels(
            prep.labels, self.arrays.n_pixels, self.wavelength, weights, "the training set"
        )
        held = np.setdiff1d(np.arange(n), rows)
        full = self._full(held)
        # Each block's sums, less those of the held-out stars (zeros for a half: its own
        # sums; one solving program either way).
        if rows.tobytes() in self.sums:  # the other half of a 2-fold split
            plus = self.sums[rows.tobytes()]
            minus = [zero_sums(p) for p in plus]
        else:
            plus, minus = full, self._sums_of(held)
        parts = [
            solve_fold(a, b, active, s0)
            for a, b, (_, active, s0) in zip(plus, minus, self.blocks, strict=True)
        ]
        theta, s2, ok = (
            np.concatenate(
                [np.asarray(p[j])[:keep] for p, (keep, _, _) in zip(parts, self.blocks, strict=True)]
            )
            for j in range(3)
        )
        info = {"em_iterations": 0, "converged": True, "n_missing_labels": int(np.sum(~prep.complete[rows]))}
        return self.model._fitted(fold, self.scaler, self.scaled, (theta, s2, ok), self.wavelength, info)


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *a.shape[1:]), dtype=float)
    out[: len(a)] = a
    return out
