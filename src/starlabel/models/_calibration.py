r"""Calibrated label uncertainties: how far a model's statistical errors are from its real ones.

A model's own error for a star (the inverse Fisher matrix, a Laplace width, the spread
of a network's outputs under flux noise) measures the *statistical* uncertainty the
model believes in. On spectra the model cannot describe exactly it is too small, by
a factor and by a floor that no S/N removes (Cannon on real giants: held-out z spread
≈ 3). :func:`cross_validated_calibration` learns, from the training set alone, per label

.. math:: \sigma_\mathrm{total}^2 = (a\,\sigma_\mathrm{stat})^2
          + \sigma_\mathrm{sys}^2\,(\chi^2_\nu / \tilde\chi^2_\nu)^{\gamma} ,

where :math:`\chi^2_\nu` is the star's reduced χ² and :math:`\tilde\chi^2_\nu` its
median over the held-out training stars (the term is 1 for models without a χ², such
as the NN regressor: there γ = 0), by K-fold cross-validation: refit on K−1 folds, run
the same test step on the held-out fold, and fit ``a``, ``σ_sys`` and ``γ`` to the
held-out residuals by maximum likelihood (:func:`fit_error_calibration`).

The fold models train on (K−1)/K of the training set, so their errors are larger than
the final model's by the part of the error that shrinks with more training data. With
``r`` the *irreducible share* of the held-out variance (the part that does not shrink:
model misfit, label noise) and the rest falling as 1/N, the final model's variance is
the folds' times

.. math:: f^2 = 1 - (1 - r)/K ,

and ``f`` (the *training-size factor*) multiplies the learned total.
:class:`ErrorCalibration` stores the result in the fitted model (and its model file) and :meth:`ErrorCalibration.apply` turns any
:class:`~starlabel.data.InferenceResult` of that test step into calibrated totals,
keeping the statistical part as ``<label>_err_stat``. It knows nothing about model
families, so every family and estimator can use it. See ``docs/uncertainties.md``.
"""

from __future__ import annotations

from ._calibration_cv import (
    DISTANCE_TERM,
    IRREDUCIBLE_SHARE,
    LABEL_TERM,
    LEARN_SIZE_FACTOR,
    calibrated_fit,
    cross_validated_calibration,
)
from ._calibration_fit import fit_error_calibration
from ._error_calibration import (
    CALIBRATION_FOLDS,
    STAT_SUFFIX,
    ErrorCalibration,
    apply_calibration,
    model_labels,
    with_stat_errors,
)

__all__ = [
    "CALIBRATION_FOLDS",
    "DISTANCE_TERM",
    "IRREDUCIBLE_SHARE",
    "LABEL_TERM",
    "LEARN_SIZE_FACTOR",
    "STAT_SUFFIX",
    "ErrorCalibration",
    "apply_calibration",
    "calibrated_fit",
    "cross_validated_calibration",
    "fit_error_calibration",
    "model_labels",
    "with_stat_errors",
]
