"""The error calibration's fold fits of an in-memory Cannon training.

``Cannon.fit(calibrate=True)`` hands :func:`~starlabel.models._calibration.calibrated_fit`
a ``refit(rows)`` that trains the same configuration on the stars ``rows``. Here a fold
keeps every star in the padded device arrays of the full fit and gives the held-out
ones weight 0 (exact zeros in every sum): the same compiled program and no sliced
copies of the spectra. The label scaling is fitted on the fold's stars, as for
``train[rows]``, and the EM starts from the full fit's scatter (4/5 of the same
stars: the same fixed point in fewer iterations), stopping at :data:`FOLD_TOL`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ...data import SpectralDataset
from ._prepare import Prepared
from ._train import TrainingArrays

if TYPE_CHECKING:
    from ._model import Cannon, FittedCannon

__all__ = ["FOLD_TOL", "fold_refit"]

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
