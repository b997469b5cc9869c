"""The cross-validation driver of the error calibration, shared by every family's ``fit``.

:func:`cross_validated_calibration` refits a model on K−1 folds of its training set,
runs the uncalibrated test step on the held-out fold and hands the residuals to
:func:`~._calibration_fit.fit_error_calibration`; :func:`calibrated_fit` does that for
a fitted model of any family and stores the result in its ``calibration`` field, with
the per-family defaults below (measured, see ``docs/uncertainties.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import numpy as np

from .._internal import fold_indices, fold_of
from ..data import InferenceResult, SpectralDataset
from ._calibration_fit import aim_coverage, balance_noise_aware, fit_error_calibration
from ._error_calibration import CALIBRATION_FOLDS, ErrorCalibration
from ._local_bias import LocalBias, cross_fold_shift, leave_one_out_shift
from ._training_distance import TrainingDistance
from .base import AbstractFittedModel

Calibrated = TypeVar("Calibrated", bound=AbstractFittedModel)

logger = logging.getLogger(__name__)

__all__ = [
    "IRREDUCIBLE_SHARE",
    "LABEL_TERM",
    "LEARN_SIZE_FACTOR",
    "DISTANCE_TERM",
    "AIM_COVERAGE",
    "calibrated_fit",
    "cross_validated_calibration",
]

IRREDUCIBLE_SHARE: dict[str, float] = {"cannon": 0.7, "lux": 1.0, "nn": 0.0}
"""Default irreducible share ``r`` per model kind, used by ``fit`` (1 for other kinds:
no factor). Measured on held-out stars (``benchmarks/results/calibration_size_factor.json``,
``benchmarks/results/calibration_distance_term.json``, ``docs/uncertainties.md``): for
the Cannon r = 0.7 (f = 0.970 with 5 folds) keeps every label of the real giants within
the targets; for Lux any r < 1 widens the line-list [Fe/H] and [α/Fe] spreads and fails
the 250-star giants test (log g 1.18). For the NN r = 0 (f = 0.894): its held-out errors
shrink the most with more training stars (the final network is clearly better than the
fold networks), and with the distance and label-space terms r = 0 meets both targets
for every giants label (std z 1.04–1.10, 67.6–70.2 %) and brings the line-list labels
to std z 0.94–1.02 and 67.4–72.6 % (the previous default, r = 1 without those terms:
0.87–0.97 and 72.6–78.5 %)."""

LABEL_TERM = frozenset({"cannon", "lux", "nn", "payne"})
"""Model kinds whose ``fit`` learns the label-space term (:class:`LocalErrors`). The NN
too since its r is 0: with the distance term and r = 0 the term brings the giants'
worst label from 1.04 to 0.96 tolerances from the targets (Teff std z 1.104 → 1.097,
[M/H] coverage 71.2 → 70.2 %; measured on the recorded fold arrays of
``benchmarks/results/calibration_distance_term.json`` while choosing), the line-list
worst unchanged (1.08). With r = 1 it had lowered the NN's line-list std z from
0.88–0.96 to 0.85–0.91 (``benchmarks/results/calibration_label_term.json``)."""

LEARN_SIZE_FACTOR: frozenset[str] = frozenset({"cannon", "payne"})
"""Model kinds whose ``fit`` learns the training-size factor per label from a half-size
cross-validation (two more fits on half the stars); others use :data:`IRREDUCIBLE_SHARE`.
The Cannon (``benchmarks/results/calibration_distance_term.json``): on the line-list
spectra its log g and [α/Fe] errors shrink more with the training set than the other
labels' (held-out std z 0.88 and 0.93 with r alone, 0.93 and 1.01 learned; worst
distance from the targets 1.76 → 1.16 tolerances), and on the giants the learned factor
equals r's (unchanged); two fits on half the stars cost it about one more full fit.
Not the NN: those two fits would take its training with calibration past 6× the time
without (5.2× now), and r = 0 does as well there. Not Lux: not measured at full size.
An earlier form (MSE ∝ N^−α, α ≤ 2) made the Cannon's errors too small on 250 and 1,000
training stars; the current one shrinks them by at most √(1 − 1/K), r = 0
(:func:`~._calibration_fit.fit_error_calibration`).
The Payne, with the label-space and distance terms too: its fold networks (4/5 of the
stars) are clearly worse than the final one, and without these terms its line-list
errors were too large ([Fe/H] std z 0.895, vmacro 0.83, 70–76 % within 1σ,
``benchmarks/results/payne.json`` at 6959e39); with them std z 0.94–1.01 and
65.8–70.0 % for all five labels, training with calibration 5.3× the final fit
(``benchmarks/results/payne_calibration_terms.json``)."""

DISTANCE_TERM = frozenset({"cannon", "lux", "nn", "payne"})
"""Model kinds whose ``fit`` learns the distance term (:class:`TrainingDistance`): every
family. It is what makes the NN's tails honest (giants 1σ coverage 76 → 74–75 % on its
own, 67.6–70.2 % with r = 0; see :mod:`._training_distance`), and costs the Cannon and Lux
nothing on the giants (worst label 0.51 → 0.48 and 0.29 → 0.37 tolerances from the
targets; ``benchmarks/results/calibration_distance_term.json``)."""


AIM_COVERAGE: frozenset[str] = frozenset({"cannon"})
"""Model kinds whose calibration ends with :func:`~._calibration_fit.aim_coverage` (68.27 %
of the held-out fold stars within ±1σ, std z kept within 0.93–1.07) instead of
:func:`~._calibration_fit.balance_noise_aware`. The Cannon: on ten line-list training
sets (2,000 dwarfs each, 1,000 fresh test stars; ``benchmarks/results/calibration_seeds.json``)
its z are lighter-tailed than a Gaussian and the noise-aware rule left 64–66 % of the
test stars within ±1σ on average for four of five labels (64.1–66.5 %), all five within
both targets in 1 of 10 training sets; aiming at the coverage brings that to 4 of 10 and
the label-by-label share within both targets from 0.68 to 0.84, and keeps the real giants
within both (std z 1.06/0.99/1.03, 68.6–69.4 %). Not measured for the other families.
Only without the label-space bias correction (``bias_correction``, the Cannon's
default): the light tails came from that bias. Corrected, the Cannon's real-giants z are
a little heavier-tailed than a Gaussian and aiming at the coverage left their Teff std z
above 1.1 (5-fold CV over the 500 giants); the noise-aware rule keeps every giants label
within both targets (std z 1.06–1.09, 69.8–71.0 %, ``benchmarks/results/calibration.json``)
and does about as well on the ten line-list sets (``calibration_seeds.json``)."""


def cross_validated_calibration(
    refit: Callable[[np.ndarray], Any],
    infer: Callable[[Any, np.ndarray], InferenceResult],
    reference: np.ndarray,
    label_names: tuple[str, ...],
    *,
    n_folds: int = CALIBRATION_FOLDS,
    seed: int = 0,
    irreducible_share: float = 1.0,
    learn_size_factor: bool = False,
    label_term: bool = True,
    distance_term: bool = False,
    balance: Callable[[np.ndarray], float] = balance_noise_aware,
    bias_correction: bool = False,
    exclude: np.ndarray | None = None,
) -> ErrorCalibration:
    """Learn an :class:`ErrorCalibration` by K-fold cross-validation on a training set.

    For each fold: ``fitted = refit(kept_rows)`` trains on the other folds and
    ``infer(fitted, held_rows)`` runs the *uncalibrated* test step on the held-out
    stars; their residuals against ``reference`` and statistical errors are then fitted
    by :func:`fit_error_calibration`. Only the training set is used.

    Parameters
    ----------
    refit : callable
        ``rows (n,) int → fitted model`` trained on those training rows only.
    infer : callable
        ``(fitted, rows) → InferenceResult`` with statistical errors for those rows.
    reference : ndarray, shape (stars, labels)
        The training labels (NaN = unknown).
    label_names : tuple of str
    n_folds : int
        K (default 5).
    seed : int
        Seed of the fold assignment.
    irreducible_share : float
        ``r`` of the training-size factor (see :func:`fit_error_calibration`).
    learn_size_factor : bool
        Also run a 2-fold cross-validation (two more fits, on half the stars each) and
        learn the training-size factor per label from how the held-out errors shrink
        from N/2 to (K−1)N/K training stars (``half_residuals`` of
        :func:`fit_error_calibration`). If a half-size fit fails (too few stars), the
        factor falls back to ``irreducible_share``.
    label_term : bool
        Learn the label-space term from the held-out stars' inferred labels
        (``labels`` of :func:`fit_error_calibration`).
    distance_term : bool
        Learn the distance term: the floor's growth with the distance of the inferred
        labels from the training labels (``distance`` of :func:`fit_error_calibration`).
    balance : callable
        The final width factor's rule (``balance`` of :func:`fit_error_calibration`).
    bias_correction : bool
        Learn the label-space bias correction (:class:`LocalBias`) from the held-out
        residuals and fit the rest of the calibration to corrected residuals: each
        held-out star corrected with the other folds' residuals
        (:func:`~._local_bias.cross_fold_shift`), the half-size residuals with every
        star's but its own.
    exclude : ndarray of bool, shape (stars,), optional
        Training stars whose held-out residuals are left out of the fits of the
        calibration and of the bias correction (they are still refitted, held out and
        inferred, and their labels still count in the χ² median and the distance
        term): stars the model was told to ignore, whose residuals would measure their
        reference labels, not the model.

    Returns
    -------
    ErrorCalibration

    Raises
    ------
    ValueError
        On a bad ``n_folds`` or too few usable held-out stars.
    """
    reference = np.asarray(reference, dtype=float)
    n = reference.shape[0]
    residuals = np.full(reference.shape, np.nan)
    errors = np.full(reference.shape, np.nan)
    rchi2 = np.full(n, np.nan)
    predicted = np.full(reference.shape, np.nan)
    everyone = np.arange(n)
    folds = list(fold_indices(n, n_folds, seed))
    for held in folds:
        fitted = refit(np.setdiff1d(everyone, held))
        result = infer(fitted, held)
        predicted[held] = result.labels
        residuals[held] = result.labels - reference[held]
        errors[held] = result.label_err
        rchi2[held] = result.reduced_chi2
    half = _half_size_residuals(refit, infer, reference, seed) if learn_size_factor else None
    if exclude is not None:
        excluded = np.asarray(exclude, dtype=bool)
        residuals[excluded] = np.nan
        if half is not None:
            half[excluded] = np.nan
    bias = LocalBias.from_residuals(residuals, predicted) if bias_correction else None
    if bias is not None:
        residuals_before = residuals
        residuals = residuals - cross_fold_shift(bias, residuals, predicted, fold_of(n, n_folds, seed))
        if half is not None:
            # The same correction at the K-fold labels, each star's own residual left out
            # (it was not made by a half-size model, but it is this star's).
            half = half - leave_one_out_shift(bias, residuals_before, predicted)
    return fit_error_calibration(
        residuals,
        errors,
        label_names,
        rchi2=rchi2,
        n_folds=n_folds,
        irreducible_share=irreducible_share,
        labels=predicted if label_term else None,
        half_residuals=half,
        distance=TrainingDistance.from_folds(reference, predicted, folds) if distance_term else None,
        balance=balance,
        bias=bias,
    )


def _weighted_out(weights: np.ndarray) -> np.ndarray:
    """Stars weighted below half the largest weight (bool, like ``weights``)."""
    top = float(np.max(weights)) if weights.size else 0.0
    return weights < 0.5 * top


def _half_size_residuals(
    refit: Callable[[np.ndarray], Any],
    infer: Callable[[Any, np.ndarray], InferenceResult],
    reference: np.ndarray,
    seed: int,
) -> np.ndarray | None:
    """Held-out residuals of a 2-fold cross-validation; None if a half-size fit fails."""
    n = reference.shape[0]
    half = np.full(reference.shape, np.nan)
    everyone = np.arange(n)
    for held in fold_indices(n, 2, seed + 1):
        try:
            fitted = refit(np.setdiff1d(everyone, held))
        except ValueError as error:
            logger.warning(
                "the training-size factor is not learned (a fit on half the %d training stars failed:"
                " %s); using the irreducible share instead.",
                n,
                error,
            )
            return None
        half[held] = infer(fitted, held).labels - reference[held]
    return half


def calibrated_fit(
    fitted: Calibrated,
    train: SpectralDataset,
    refit: Callable[[np.ndarray], Calibrated],
    *,
    n_folds: int = CALIBRATION_FOLDS,
    seed: int = 0,
    irreducible_share: float | None = None,
    learn_size_factor: bool | None = None,
    label_term: bool | None = None,
    distance_term: bool | None = None,
    balance: Callable[[np.ndarray], float] | None = None,
    bias_correction: bool = False,
    star_weights: np.ndarray | None = None,
) -> Calibrated:
    """``fitted`` carrying the calibration its family's default test step needs.

    Shared by every family's ``fit(calibrate=True)``: cross-validates ``refit`` on
    ``train`` (the training labels are the reference) and stores the result in the
    fitted model's ``calibration`` field. ``irreducible_share`` defaults to the
    fitted model's kind's entry in :data:`IRREDUCIBLE_SHARE` (1 for other kinds); the
    other options default to the kind's membership of :data:`LEARN_SIZE_FACTOR`,
    :data:`LABEL_TERM` and :data:`DISTANCE_TERM`, and ``balance`` to
    :func:`~._calibration_fit.aim_coverage` for the kinds in :data:`AIM_COVERAGE` without
    ``bias_correction``, else :func:`~._calibration_fit.balance_noise_aware`.
    ``bias_correction`` (off unless the family's ``fit`` asks: the Cannon's does by
    default) is that of :func:`cross_validated_calibration`. ``star_weights`` (stars,), the training
    weights ``refit`` applies: stars weighted below half the largest weight (e.g.
    likely outliers of a robust fit) are left out of the residuals the calibration
    and the correction are fitted to (``exclude``).
    """
    kind = fitted.kind
    if irreducible_share is None:
        irreducible_share = IRREDUCIBLE_SHARE.get(kind, 1.0)
    if learn_size_factor is None:
        learn_size_factor = kind in LEARN_SIZE_FACTOR
    if label_term is None:
        label_term = kind in LABEL_TERM
    if distance_term is None:
        distance_term = kind in DISTANCE_TERM
    if balance is None:
        # Aiming at the coverage answers z lighter-tailed than a Gaussian, which the
        # label-space bias makes them; with the bias corrected they are not (AIM_COVERAGE).
        balance = aim_coverage if kind in AIM_COVERAGE and not bias_correction else balance_noise_aware
    names = tuple(fitted.label_names)
    if train.labels is None:
        raise ValueError("the training set has no labels to calibrate the errors against.")
    # Index the label columns directly: select_labels would copy the spectra too.
    reference = train.labels[:, [train.label_index(n) for n in names]]

    def infer(model: Calibrated, rows: np.ndarray) -> InferenceResult:
        return model.infer(train[rows], calibrate=False)

    def refit_fold(rows: np.ndarray) -> Calibrated:
        try:
            return refit(rows)
        except ValueError as error:
            raise ValueError(
                f"error calibration refits the model on {n_folds - 1}/{n_folds} of the training set"
                f" ({len(rows)} of {train.n_stars} stars), which failed: {error} Train on more stars,"
                " or without calibration (calibrate=False; --no-calibrate on the command line)."
            ) from error

    calibration = cross_validated_calibration(
        refit_fold,
        infer,
        reference,
        names,
        n_folds=n_folds,
        seed=seed,
        irreducible_share=irreducible_share,
        learn_size_factor=learn_size_factor,
        label_term=label_term,
        distance_term=distance_term,
        balance=balance,
        bias_correction=bias_correction,
        exclude=None if star_weights is None else _weighted_out(np.asarray(star_weights, dtype=float)),
    )
    return eqx.tree_at(lambda m: m.calibration, fitted, calibration, is_leaf=lambda x: x is None)
