"""The fitted error calibration of a model and how it turns statistical errors into totals.

:class:`ErrorCalibration` holds, per label, ``σ_total² = (a σ_stat)² + σ_sys² ·
(per-star factors)`` learned by cross-validation (:mod:`._calibration_fit`,
:mod:`._calibration_cv`; the overview is in :mod:`._calibration`), and applies it to any
:class:`~starlabel.data.InferenceResult` of the test step it was learned on
(:meth:`ErrorCalibration.apply`, :func:`apply_calibration`), keeping the statistical
part as ``<label>_err_stat``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from ..data import InferenceResult
from ._local_bias import BIAS_SUFFIX, LocalBias
from ._local_errors import LocalErrors
from ._training_distance import TrainingDistance

__all__ = [
    "CALIBRATION_FOLDS",
    "STAT_SUFFIX",
    "ErrorCalibration",
    "apply_calibration",
    "model_labels",
    "with_stat_errors",
]

CALIBRATION_FOLDS = 5
"""Default number of cross-validation folds used at ``fit`` time."""


STAT_SUFFIX = "_err_stat"
"""Suffix of the extra result columns holding the statistical (uncalibrated) errors."""


class ErrorCalibration(eqx.Module):
    """Per-label calibration ``σ_total² = (scale · σ_stat)² + floor²`` learned by cross-validation.

    Attributes
    ----------
    label_names : tuple of str
    scale : Float[Array, " labels"]
        ``a``: factor on the model's statistical errors (≥ 0, dimensionless).
    floor : Float[Array, " labels"]
        ``σ_sys``: error added in quadrature, in each label's own units (≥ 0), for a
        star whose reduced χ² is the typical ``rchi2_ref``.
    misfit_power : Float[Array, " labels"]
        ``γ`` (0 ≤ γ ≤ 2): the added error grows as ``(χ²_ν / rchi2_ref)^(γ/2)``, so
        stars the model fits badly get larger errors. 0 for models without a χ².
    rchi2_ref : Float[Array, ""]
        Median reduced χ² of the held-out training stars (1 when there is none).
    z_std_before, z_std_after : Float[Array, " labels"]
        Spread (standard deviation) of the held-out ``z = Δ/σ`` with the statistical
        and with the calibrated errors, over all held-out stars of the fit.
    coverage_before, coverage_after : Float[Array, " labels"]
        Share of held-out stars with ``|z| < 1`` (0.683 when calibrated).
    n_folds : int
        Cross-validation folds the calibration was learned with.
    n_stars : int
        Held-out stars with finite residuals and errors (the fit's sample).
    irreducible_share : float
        ``r`` in [0, 1]: share of the held-out error variance that does not shrink with
        more training data; sets :attr:`size_factor`. 1 (the default) leaves it off.
    local : LocalErrors, optional
        The label-space term (model format 4): the added error also grows as
        ``(L(ℓ)/L̄)^(δ/2)``, ``L`` the mean squared held-out residual of the training stars
        nearest the star's inferred labels. None (calibrations learned before format 4,
        or without inferred labels): no such term.
    size_power : Float[Array, " labels"], optional
        ``α`` per label (model format 4), learned from a second cross-validation at half
        the training set (:func:`fit_error_calibration`, ``half_residuals``): the final
        model's errors are the folds' times ``((K−1)/K)^(α/2)`` (:attr:`size_factors`),
        which then replaces the factor from :attr:`irreducible_share`.
    distance : TrainingDistance, optional
        The distance term (model format 5): the added error also grows as
        ``(D(ℓ)/D̃)^(η/2)``, ``D`` the mean distance of the star's inferred labels to
        its nearest training labels. None: no such term.
    bias : LocalBias, optional
        The label-space bias correction (model format 6): :meth:`apply` subtracts from
        each star's labels the mean held-out residual of the training stars nearest its
        inferred labels, and the rest of the calibration was learned on residuals
        corrected the same way. None: the labels are the model's own.
    """

    label_names: tuple[str, ...] = eqx.field(static=True)
    scale: Float[Array, " labels"]
    floor: Float[Array, " labels"]
    misfit_power: Float[Array, " labels"]
    rchi2_ref: Float[Array, ""]
    z_std_before: Float[Array, " labels"]
    z_std_after: Float[Array, " labels"]
    coverage_before: Float[Array, " labels"]
    coverage_after: Float[Array, " labels"]
    n_folds: int = eqx.field(static=True, default=CALIBRATION_FOLDS)
    n_stars: int = eqx.field(static=True, default=0)
    irreducible_share: float = eqx.field(static=True, default=1.0)
    local: LocalErrors | None = None
    size_power: Float[Array, " labels"] | None = None
    distance: TrainingDistance | None = None
    bias: LocalBias | None = None

    def __check_init__(self) -> None:
        share = self.irreducible_share
        if not (isinstance(share, int | float) and 0.0 <= share <= 1.0):
            raise ValueError(
                f"`irreducible_share` must be a number in [0, 1] (1 turns the training-size factor"
                f" off), got {share!r}."
            )
        k = len(self.label_names)
        for name in _REPORTED:
            if getattr(self, name).shape != (k,):
                raise ValueError(
                    f"ErrorCalibration.{name} has shape {getattr(self, name).shape}; expected ({k},),"
                    f" one value per label {list(self.label_names)}."
                )

    # ------------------------------------------------------------------ use
    @property
    def size_factor(self) -> float:
        """``f = sqrt(1 − (1 − r)/K)``: the final model's errors over the fold models' (≤ 1).

        The K fold models each train on (K−1)/K of the training set; if a share
        ``1 − r`` of their error variance falls as 1/(training stars), the model trained
        on all of it has ``f²`` times their variance.
        """
        return float(np.sqrt(1.0 - (1.0 - self.irreducible_share) / self.n_folds))

    @property
    def size_factors(self) -> np.ndarray:
        """Per-label training-size factors, shape (labels,).

        ``((K−1)/K)^(α/2)`` when :attr:`size_power` was learned, else :attr:`size_factor`
        for every label.
        """
        if self.size_power is None:
            return np.full(len(self.label_names), self.size_factor)
        return ((self.n_folds - 1) / self.n_folds) ** (0.5 * np.asarray(self.size_power, dtype=float))

    def with_irreducible_share(self, share: float) -> ErrorCalibration:
        """A copy with another irreducible share ``r`` (another :attr:`size_factor`).

        A learned :attr:`size_power` is dropped: ``r`` then sets the factor.
        """
        return dataclasses.replace(self, irreducible_share=share, size_power=None)

    def floor_variance(self, rchi2: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """``σ_sys² (χ²_ν/rchi2_ref)^γ (L(ℓ)/L̄)^δ (D(ℓ)/D̃)^η`` per star and label, (stars, labels).

        Stars without a finite, positive reduced χ² get the plain ``σ_sys²``; the
        label-space factors are 1 without :attr:`local` / :attr:`distance`, without
        ``labels`` (stars, labels) or for a star whose inferred labels are not all finite.
        """
        rchi2 = np.asarray(rchi2, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(np.isfinite(rchi2) & (rchi2 > 0), rchi2 / float(self.rchi2_ref), 1.0)
        ratio = np.clip(ratio, _RATIO_RANGE[0], _RATIO_RANGE[1])
        gamma = np.asarray(self.misfit_power, dtype=float)
        floor2 = np.asarray(self.floor, dtype=float)[None, :] ** 2 * ratio[:, None] ** gamma[None, :]
        if self.local is not None and labels is not None:
            floor2 = floor2 * self.local.factor(np.asarray(labels, dtype=float))
        if self.distance is not None and labels is not None:
            floor2 = floor2 * self.distance.factor(np.asarray(labels, dtype=float))
        return floor2

    def total_cov(
        self, cov: np.ndarray, rchi2: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """Calibrated covariances ``F [A C A + diag(floor_variance)] F``.

        ``A = diag(a)``, ``F = diag(f)`` the training-size factors (:attr:`size_factors`).

        Labels whose statistical variance is zero (frozen) or not finite keep it:
        the floor is added only where the model reports a positive variance.

        Parameters
        ----------
        cov : ndarray, shape (stars, labels, labels)
            Statistical covariances, labels in :attr:`label_names` order.
        rchi2 : ndarray, shape (stars,), optional
            Reduced χ² of each star's fit (default: the typical value for every star).
        labels : ndarray, shape (stars, labels), optional
            The inferred labels (for the label-space terms :attr:`local` and
            :attr:`distance`; without them those factors are 1).

        Returns
        -------
        ndarray, shape (stars, labels, labels)
        """
        cov = np.asarray(cov, dtype=float)
        a = np.asarray(self.scale, dtype=float)
        floor2 = self.floor_variance(np.full(cov.shape[0], np.nan) if rchi2 is None else rchi2, labels)
        diag = np.diagonal(cov, axis1=1, axis2=2)
        with np.errstate(invalid="ignore"):
            add = np.where(diag > 0, floor2, 0.0)
        total = cov * (a[:, None] * a[None, :])[None]
        k = np.arange(cov.shape[1])
        total[:, k, k] += add
        f = self.size_factors
        return total * (f[:, None] * f[None, :])[None]

    def apply(self, result: InferenceResult, bounds: Mapping[str, Any] | None = None) -> InferenceResult:
        """``result`` with calibrated covariances; the statistical errors kept as extras.

        Parameters
        ----------
        result : InferenceResult
            Output of the test step this calibration was learned on, with the same
            label names.
        bounds : mapping, optional
            The test step's label bounds, kept by the corrected labels
            (:meth:`correct_labels`).

        Returns
        -------
        InferenceResult
            ``cov`` (hence ``<label>_err``) the calibrated total; ``extra`` gains
            ``<label>_err_stat``; ``meta["error_calibration"]`` describes the
            calibration and ``meta["errors"]`` is ``"calibrated"``. With a
            :attr:`bias` correction the labels are the model's less the correction,
            which ``extra`` keeps as ``<label>_bias`` (the model's own label is
            ``<label> + <label>_bias``).

        Raises
        ------
        ValueError
            If the result's labels differ from the calibration's or it has no covariance.
        """
        if tuple(result.label_names) != self.label_names:
            raise ValueError(
                f"this calibration is for labels {list(self.label_names)}, but the result has"
                f" {list(result.label_names)}."
            )
        if result.cov is None:
            raise ValueError("the result has no covariance to calibrate.")
        # The label-space terms and the correction were learned at the model's own labels.
        cov = self.total_cov(result.cov, result.reduced_chi2, result.labels)
        corrected = self.correct_labels(with_stat_errors(result), bounds)
        return dataclasses.replace(
            corrected,
            cov=cov,
            meta={**corrected.meta, "errors": "calibrated", "error_calibration": self.describe()},
        )

    def correct_labels(
        self, result: InferenceResult, bounds: Mapping[str, Any] | None = None
    ) -> InferenceResult:
        """``result`` with the :attr:`bias` correction subtracted from its labels.

        ``extra`` gains ``<label>_bias``, the correction (label units), so the model's
        own labels stay recoverable (:func:`model_labels`). Labels whose statistical
        variance is exactly zero (frozen: held at a given value) are not moved; a
        corrected label is kept within ``bounds`` (``{label: (low, high)}`` in label
        units, None for an open side: the test step's own bounds). Without a
        :attr:`bias`, ``result`` unchanged.
        """
        if self.bias is None:
            return result
        shift = self.bias.shift(result.labels)
        if result.cov is not None:  # a NaN covariance (BAD_COVARIANCE) is not frozen
            shift = np.where(np.diagonal(result.cov, axis1=1, axis2=2) == 0, 0.0, shift)
        labels = result.labels - shift
        for name, (low, high) in (bounds or {}).items():
            k = self.label_names.index(name)
            labels[:, k] = np.clip(
                labels[:, k], -np.inf if low is None else low, np.inf if high is None else high
            )
        shift = result.labels - labels
        extra = {f"{n}{BIAS_SUFFIX}": shift[:, k] for k, n in enumerate(self.label_names)}
        return dataclasses.replace(result, labels=labels, extra={**result.extra, **extra})

    # ------------------------------------------------------------------ report
    def describe(self) -> str:
        """One line: ``a`` and ``σ_sys`` per label and how they were learned."""
        parts = [
            f"{n}: a={float(a):.3g}, sys={float(s):.3g}, gamma={float(g):.2g}"
            for n, a, s, g in zip(
                self.label_names,
                np.asarray(self.scale),
                np.asarray(self.floor),
                np.asarray(self.misfit_power),
                strict=True,
            )
        ]
        if self.local is not None:
            parts = [
                f"{p}, local={float(d):.2g}" for p, d in zip(parts, np.asarray(self.local.power), strict=True)
            ]
        if self.distance is not None:
            parts = [
                f"{p}, distance={float(e):.2g}"
                for p, e in zip(parts, np.asarray(self.distance.power), strict=True)
            ]
        local = (
            ""
            if self.local is None
            else f"; label-space term from the {self.local.neighbours} nearest of {self.local.n_refs} held-out stars"
        )
        if self.size_power is None:
            size = f"training-size factor f={self.size_factor:.3f} (irreducible share {self.irreducible_share:g})"
        else:
            size = "training-size factors learned from a half-size CV"
            parts = [
                f"{p}, f={f:.3f} (alpha={float(al):.2g})"
                for p, f, al in zip(parts, self.size_factors, np.asarray(self.size_power), strict=True)
            ]
        bias = (
            ""
            if self.bias is None
            else f"; labels corrected by the mean held-out residual of the {self.bias.neighbours} nearest"
            f" of {self.bias.n_refs} held-out stars"
        )
        return f"{self.n_folds}-fold CV on {self.n_stars} training stars; {size}{local}{bias}; " + "; ".join(
            parts
        )

    def table(self) -> list[dict[str, Any]]:
        """Per-label rows (label, a, σ_sys, held-out std z and coverage before/after)."""
        arrays = [np.asarray(getattr(self, f)) for f in _REPORTED]
        power = None if self.local is None else np.asarray(self.local.power)
        eta = None if self.distance is None else np.asarray(self.distance.power)
        return [
            {
                "label": name,
                **{f: float(a[k]) for f, a in zip(_REPORTED, arrays, strict=True)},
                **({} if power is None else {"local_power": float(power[k])}),
                **({} if eta is None else {"distance_power": float(eta[k])}),
            }
            for k, name in enumerate(self.label_names)
        ]

    # ------------------------------------------------------------------ files
    def config(self) -> dict[str, Any]:
        """JSON-able structure for the model-file header (arrays are stored separately)."""
        return {
            "label_names": list(self.label_names),
            "n_folds": self.n_folds,
            "n_stars": self.n_stars,
            "irreducible_share": self.irreducible_share,
            "size_factor": self.size_factor,  # for readers of the header; derived from the above
            **({} if self.local is None else {"local": self.local.config()}),
            **({} if self.distance is None else {"distance": self.distance.config()}),
            **({} if self.bias is None else {"bias": self.bias.config()}),
            **({} if self.size_power is None else {"size_factors": self.size_factors.tolist()}),
        }

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> ErrorCalibration:
        """A placeholder calibration with the structure ``config`` describes.

        Headers written before model format 3 have no ``irreducible_share``: those
        calibrations were learned without the training-size factor (f = 1) and keep it;
        before format 4 none has a label-space term (``local``), before format 6 none a
        bias correction (``bias``).
        """
        names = tuple(config["label_names"])
        # device_put of numpy, not jnp.ones: load_model replaces it, and jnp.ones would
        # compile a small program per shape in every process that loads a model.
        ones = jax.device_put(np.ones(len(names)))
        arrays = {name: ones for name in _REPORTED}
        return cls(
            names,
            **arrays,
            rchi2_ref=jax.device_put(np.ones(())),
            n_folds=int(config["n_folds"]),
            n_stars=int(config["n_stars"]),
            irreducible_share=float(config.get("irreducible_share", 1.0)),
            local=None if config.get("local") is None else LocalErrors.skeleton(config["local"], len(names)),
            distance=None
            if config.get("distance") is None
            else TrainingDistance.skeleton(config["distance"], len(names)),
            size_power=ones if "size_factors" in config else None,
            bias=None if config.get("bias") is None else LocalBias.skeleton(config["bias"], len(names)),
        )


_REPORTED = (
    "scale",
    "floor",
    "misfit_power",
    "z_std_before",
    "z_std_after",
    "coverage_before",
    "coverage_after",
)
_RATIO_RANGE = (0.1, 100.0)
"""χ²_ν / χ̃²_ν is clipped to this range: a star far outside it is flagged POOR_FIT anyway,
and the clip keeps one absurd fit from getting an absurd error."""


def model_labels(result: InferenceResult) -> np.ndarray:
    """The model's own labels of ``result`` (stars, labels): ``<label> + <label>_bias``.

    The labels a model's flux, χ² and flags refer to; equal to ``result.labels`` when
    no bias correction was applied. What to start a fit from, or predict flux at.
    """
    shift = [result.extra.get(f"{n}{BIAS_SUFFIX}") for n in result.label_names]
    if all(s is None for s in shift):
        return result.labels
    return result.labels + np.stack(
        [np.zeros(result.n_stars) if s is None else np.asarray(s, dtype=float) for s in shift], axis=1
    )


def with_stat_errors(result: InferenceResult) -> InferenceResult:
    """``result`` with ``<label>_err_stat`` extras equal to its current ``<label>_err``."""
    errors = result.label_err
    extra = {**result.extra, **{f"{n}{STAT_SUFFIX}": errors[:, k] for k, n in enumerate(result.label_names)}}
    return dataclasses.replace(result, extra=extra)


def apply_calibration(
    calibration: ErrorCalibration | None,
    result: InferenceResult,
    *,
    calibrate: bool = True,
    why_not: str = "",
    map_labels: bool = False,
    bounds: Mapping[str, Any] | None = None,
) -> InferenceResult:
    """Calibrate ``result`` when a calibration exists and is wanted; say which it is.

    The one place every family's ``infer`` finishes: ``<label>_err_stat`` is always
    added, and ``meta["errors"]`` is ``"calibrated"`` or ``"statistical"`` with
    ``meta["error_calibration"]`` saying why not (no calibration in the model,
    ``calibrate=False``, or ``why_not``: a test step the calibration was not learned on).

    Parameters
    ----------
    calibration : ErrorCalibration or None
        The fitted model's calibration.
    result : InferenceResult
        The test step's statistical result.
    calibrate : bool
        False to keep the statistical errors.
    why_not : str
        Non-empty when this test step differs from the one calibrated (e.g. another
        ``uncertainty``): the statistical errors are kept and this reason recorded.
    map_labels : bool
        With ``why_not``: the labels are still those of the test step the calibration
        was learned on (e.g. the Laplace approximation at the same optimum), so its
        label correction (:meth:`ErrorCalibration.correct_labels`) still applies.
    bounds : mapping, optional
        The test step's label bounds, kept by corrected labels.

    Returns
    -------
    InferenceResult
    """
    if calibration is not None and calibrate and not why_not and result.cov is not None:
        return calibration.apply(result, bounds)
    if calibration is None:
        reason = "none: the model was trained without error calibration (retrain to calibrate)"
    elif not calibrate:
        reason = "off: calibrate=False"
    else:
        reason = f"not applied: {why_not or 'no covariance'}"
    stat = with_stat_errors(result)
    if calibration is not None and calibrate and map_labels:
        stat = calibration.correct_labels(stat, bounds)
    return dataclasses.replace(stat, meta={**stat.meta, "errors": "statistical", "error_calibration": reason})
