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

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._internal import fold_indices
from ..data import InferenceResult, SpectralDataset
from ._local_errors import MAX_LOCAL_POWER, LocalErrors

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_FOLDS",
    "IRREDUCIBLE_SHARE",
    "ErrorCalibration",
    "apply_calibration",
    "calibrated_fit",
    "cross_validated_calibration",
    "fit_error_calibration",
    "STAT_SUFFIX",
]

CALIBRATION_FOLDS = 5
"""Default number of cross-validation folds used at ``fit`` time."""

IRREDUCIBLE_SHARE: dict[str, float] = {"cannon": 0.7, "lux": 1.0, "nn": 1.0}
"""Default irreducible share ``r`` per model kind, used by ``fit`` (1 for other kinds:
no factor). Measured on held-out stars (``benchmarks/results/calibration_size_factor.json``,
``docs/uncertainties.md``): for the Cannon r = 0.7 (f = 0.970 with 5 folds) keeps every
label of the real giants within the targets and brings the line-list log g spread
from 0.89 to 0.91; for Lux any r < 1 widens the already too wide line-list [Fe/H] and
[α/Fe] spreads and fails the 250-star giants test (log g 1.18); for the NN r = 0
(f = 0.894) meets both targets for every line-list label (one of five at r = 1) but
widens the giants' spreads to 1.11–1.14 and fails the 250-star giants test ([M/H]
1.24), so it stays at 1: the share depends on the training labels' own noise (exact
simulated labels against ASPCAP's), not on the family alone."""

LABEL_TERM = frozenset({"cannon", "lux"})
"""Model kinds whose ``fit`` learns the label-space term (:class:`LocalErrors`). Not the
NN: on the line-list spectra it lowered the held-out std z from 0.88–0.96 to 0.85–0.91
(``benchmarks/results/calibration_label_term.json``)."""

LEARN_SIZE_FACTOR: frozenset[str] = frozenset()
"""Model kinds whose ``fit`` learns the training-size factor per label from a half-size
cross-validation (two more fits on half the stars); others use :data:`IRREDUCIBLE_SHARE`.
Empty (opt-in: ``calibrated_fit(..., learn_size_factor=True)``) until measured at full
size: an earlier form (MSE ∝ N^−α, α ≤ 2) made the Cannon's errors too small on 250
and 1,000 training stars (held-out std z 1.10–1.16 on the giants)."""

STAT_SUFFIX = "_err_stat"
"""Suffix of the extra result columns holding the statistical (uncalibrated) errors."""

_CLIP = 5.0
"""Held-out stars with |z| above this (under the current fit) are left out of the next fit."""
_MIN_STARS = 10
"""Fewest finite held-out residuals per label for a calibration fit."""
_COVERAGE_1SIGMA = 0.6827
"""Share of a unit Gaussian within ±1."""
_TOLERANCE = (0.1, 0.04)
"""How far std(z) from 1 and the ±1σ share from 68.27 % count as equally bad (the
targets of the project: std z in [0.9, 1.1], coverage 68 ± 4 %)."""


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
        """``σ_sys² (χ²_ν / rchi2_ref)^γ (L(ℓ)/L̄)^δ`` per star and label, shape (stars, labels).

        Stars without a finite, positive reduced χ² get the plain ``σ_sys²``; the
        label-space factor is 1 without :attr:`local`, without ``labels`` (stars, labels)
        or for a star whose inferred labels are not all finite.
        """
        rchi2 = np.asarray(rchi2, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(np.isfinite(rchi2) & (rchi2 > 0), rchi2 / float(self.rchi2_ref), 1.0)
        ratio = np.clip(ratio, _RATIO_RANGE[0], _RATIO_RANGE[1])
        gamma = np.asarray(self.misfit_power, dtype=float)
        floor2 = np.asarray(self.floor, dtype=float)[None, :] ** 2 * ratio[:, None] ** gamma[None, :]
        if self.local is not None and labels is not None:
            floor2 = floor2 * self.local.factor(np.asarray(labels, dtype=float))
        return floor2

    def total_cov(
        self, cov: np.ndarray, rchi2: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """Calibrated covariances ``F [D C D + diag(σ_sys² (χ²_ν/χ̃²_ν)^γ (L/L̄)^δ)] F``.

        ``D = diag(a)``, ``F = diag(f)`` the training-size factors (:attr:`size_factors`).

        Labels whose statistical variance is zero (frozen) or not finite keep it:
        the floor is added only where the model reports a positive variance.

        Parameters
        ----------
        cov : ndarray, shape (stars, labels, labels)
            Statistical covariances, labels in :attr:`label_names` order.
        rchi2 : ndarray, shape (stars,), optional
            Reduced χ² of each star's fit (default: the typical value for every star).
        labels : ndarray, shape (stars, labels), optional
            The inferred labels (for the label-space term :attr:`local`; without them
            that factor is 1).

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

    def apply(self, result: InferenceResult) -> InferenceResult:
        """``result`` with calibrated covariances; the statistical errors kept as extras.

        Parameters
        ----------
        result : InferenceResult
            Output of the test step this calibration was learned on, with the same
            label names.

        Returns
        -------
        InferenceResult
            ``cov`` (hence ``<label>_err``) the calibrated total; ``extra`` gains
            ``<label>_err_stat``; ``meta["error_calibration"]`` describes the
            calibration and ``meta["errors"]`` is ``"calibrated"``.

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
        stat = with_stat_errors(result)
        return dataclasses.replace(
            stat,
            cov=self.total_cov(result.cov, result.reduced_chi2, result.labels),
            meta={**stat.meta, "errors": "calibrated", "error_calibration": self.describe()},
        )

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
        return f"{self.n_folds}-fold CV on {self.n_stars} training stars; {size}{local}; " + "; ".join(parts)

    def table(self) -> list[dict[str, Any]]:
        """Per-label rows (label, a, σ_sys, held-out std z and coverage before/after)."""
        arrays = [np.asarray(getattr(self, f)) for f in _REPORTED]
        power = None if self.local is None else np.asarray(self.local.power)
        return [
            {
                "label": name,
                **{f: float(a[k]) for f, a in zip(_REPORTED, arrays, strict=True)},
                **({} if power is None else {"local_power": float(power[k])}),
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
            **({} if self.size_power is None else {"size_factors": self.size_factors.tolist()}),
        }

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> ErrorCalibration:
        """A placeholder calibration with the structure ``config`` describes.

        Headers written before model format 3 have no ``irreducible_share``: those
        calibrations were learned without the training-size factor (f = 1) and keep it;
        before format 4 none has a label-space term (``local``).
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
            size_power=ones if "size_factors" in config else None,
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
_MAX_POWER = 2.0
"""Upper bound of γ. Lowered from 3: with the bound at 2 the held-out spreads of Lux on
the line-list spectra ([Fe/H] 1.120 → 1.108, [α/Fe] 1.207 → 1.198) and its log g
coverage on the giants (73.0 → 72.8 %) move toward the targets, and no label of any
family moves away from them by more than 0.006 in std z or 0.2 points of coverage
(``benchmarks/results/calibration_size_factor.json``). It also bounds the posterior
mean's calibration (``--temperature auto``), which uses the same fit."""


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

    Returns
    -------
    InferenceResult
    """
    if calibration is not None and calibrate and not why_not and result.cov is not None:
        return calibration.apply(result)
    if calibration is None:
        reason = "none: the model was trained without error calibration (retrain to calibrate)"
    elif not calibrate:
        reason = "off: calibrate=False"
    else:
        reason = f"not applied: {why_not or 'no covariance'}"
    stat = with_stat_errors(result)
    return dataclasses.replace(stat, meta={**stat.meta, "errors": "statistical", "error_calibration": reason})


# --------------------------------------------------------------------------- fitting
def _nll(
    params: np.ndarray, delta2: np.ndarray, sigma2: np.ndarray, logs: np.ndarray
) -> tuple[float, np.ndarray]:
    """Gaussian negative log-likelihood of residuals; gradient in (ln a, ln σ_sys, powers).

    ``logs`` (stars, terms) are the log factors the floor grows with (ln χ²_ν/χ̃²_ν and
    ln L/L̄); ``params[2:]`` their powers (γ, δ).
    """
    a2, s2 = np.exp(2.0 * params[0]), np.exp(2.0 * params[1])
    floor = s2 * np.exp(logs @ params[2:])
    var = a2 * sigma2 + floor
    value = 0.5 * np.sum(delta2 / var + np.log(var))
    dvar = 0.5 * (1.0 / var - delta2 / var**2)
    grad = [np.sum(dvar * 2.0 * a2 * sigma2), np.sum(dvar * 2.0 * floor), *(logs.T @ (dvar * floor))]
    return float(value), np.array(grad)


def _fit_label(
    delta: np.ndarray, sigma: np.ndarray, logs: np.ndarray, max_powers: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Maximum-likelihood (a, σ_sys, powers) for one label, refitted without |z| > 5 outliers.

    ``logs`` (stars, terms) and ``max_powers`` (terms,): the floor is
    ``σ_sys² exp(logs @ powers)`` with ``0 ≤ powers ≤ max_powers`` (a term that is 0 for
    every star gets power 0). Also returns the stars kept in the last fit (bool, like
    ``delta``).
    """
    from scipy.optimize import minimize

    keep = np.ones(delta.shape, dtype=bool)
    spread = float(np.sqrt(np.mean(delta**2))) or 1.0
    # ln σ_sys is bounded below far under the residual spread: a floor of 1e-6 of it is
    # "no floor" for every purpose, and the bound keeps the optimiser finite.
    low = np.log(1e-6 * spread)
    top = np.where(np.any(logs != 0, axis=0), max_powers, 0.0)
    lower = np.array([-20.0, low, *np.zeros(len(top))])
    upper = np.array([20.0, np.log(100.0 * spread), *top])
    params = np.array(
        [np.log(max(np.sqrt(np.mean((delta / sigma) ** 2)), 1e-3)), np.log(0.5 * spread), *np.zeros(len(top))]
    )
    for _ in range(5):
        best = minimize(
            _nll,
            np.clip(params, lower, upper),
            args=(delta[keep] ** 2, sigma[keep] ** 2, logs[keep]),
            jac=True,
            method="L-BFGS-B",
            bounds=list(zip(lower, upper, strict=True)),
        )
        params = best.x
        a, s = np.exp(params[:2])
        z = delta / np.sqrt((a * sigma) ** 2 + s**2 * np.exp(logs @ params[2:]))
        new_keep = np.abs(z) < _CLIP
        if np.array_equal(new_keep, keep) or new_keep.sum() < _MIN_STARS:
            break
        keep = new_keep
    a, s = np.exp(params[:2])
    return float(a), float(s if s > 1e-5 * spread else 0.0), params[2:], keep


def _balance(z: np.ndarray) -> float:
    """Factor ``c`` on the fitted widths that best meets both calibration targets at once.

    ``z`` are the held-out stars the likelihood fit kept (|z| < 5). The fit makes their
    mean z² ≈ 1. Residuals with heavier tails
    than a Gaussian then put more than 68 % of the stars inside ±1σ; ``c`` (0.8–1.25)
    minimises the larger of ``|std(z/c) − 1| / 0.1`` and ``|P(|z| < c) − 0.683| / 0.04``,
    so the variance and the central interval are wrong by the same share of their
    tolerance. For Gaussian residuals ``c = 1``.
    """
    factors = np.linspace(0.8, 1.25, 91)
    spread = np.std(z) / factors
    coverage = np.mean(np.abs(z)[None, :] < factors[:, None], axis=1)
    badness = np.maximum(
        np.abs(spread - 1.0) / _TOLERANCE[0], np.abs(coverage - _COVERAGE_1SIGMA) / _TOLERANCE[1]
    )
    return float(factors[np.argmin(badness)])


def fit_error_calibration(
    residuals: np.ndarray,
    errors: np.ndarray,
    label_names: tuple[str, ...],
    *,
    rchi2: np.ndarray | None = None,
    n_folds: int = CALIBRATION_FOLDS,
    irreducible_share: float = 1.0,
    max_power: float = _MAX_POWER,
    labels: np.ndarray | None = None,
    neighbours: int | None = None,
    half_residuals: np.ndarray | None = None,
) -> ErrorCalibration:
    """Fit ``σ_total² = (a σ_stat)² + σ_sys² (χ²_ν/χ̃²_ν)^γ (L/L̄)^δ`` per label to held-out residuals.

    Maximum likelihood of ``Δ ~ N(0, σ_total²)`` per label, with ``a > 0``,
    ``σ_sys ≥ 0`` and ``0 ≤ γ ≤ 2`` (γ = 0 without ``rchi2``). Robust to a few
    catastrophic residuals: stars with ``|z| > 5`` under a fit are left out of the next
    one (up to five refits), so a handful of stars at the wrong place along the giant
    branch does not inflate every star's error. Finally ``a`` and ``σ_sys`` are scaled
    by one factor (0.8–1.25) that balances the two calibration targets, std(z) = 1 and
    68.3 % within ±1σ, when the residuals' tails are heavier than a Gaussian's (see
    ``docs/uncertainties.md``).

    Parameters
    ----------
    residuals : ndarray, shape (stars, labels)
        Held-out ``predicted − reference`` in label units (NaN = missing).
    errors : ndarray, shape (stars, labels)
        The test step's statistical 1-σ errors for the same stars.
    label_names : tuple of str
    rchi2 : ndarray, shape (stars,), optional
        The held-out stars' reduced χ² (NaN or absent for models without a likelihood).
    n_folds : int
        Folds the residuals came from (recorded; with ``irreducible_share`` it sets the
        training-size factor ``f``).
    irreducible_share : float
        ``r`` in [0, 1]; the calibrated totals are multiplied by
        ``f = sqrt(1 − (1 − r)/n_folds)`` (see :attr:`ErrorCalibration.size_factor`).
        1 (no factor) by default; every family's ``fit`` (:func:`calibrated_fit`) uses
        its kind's measured :data:`IRREDUCIBLE_SHARE`.
    max_power : float
        Upper bound of ``γ``.
    labels : ndarray, shape (stars, labels), optional
        The held-out stars' inferred labels. With them the floor also grows with the
        held-out residuals of the star's ``neighbours`` nearest stars in label space
        (:class:`~starlabel.models._local_errors.LocalErrors`, ``0 ≤ δ ≤ 1.5``, each star's
        own residual left out); without them ``δ`` = 0 and there is no such term.
    neighbours : int, optional
        ``k`` of that term (default √stars within [10, 50]).
    half_residuals : ndarray, shape (stars, labels), optional
        Held-out residuals of the same stars from a 2-fold cross-validation (models
        trained on half the training set). With them the training-size factor is learned
        per label (:attr:`ErrorCalibration.size_power`); ``irreducible_share`` then sets
        the least shrinkage assumed (the half-size estimate can only make ``f`` smaller:
        on a few hundred stars it is noisy, and clipped at no shrinkage).

    Returns
    -------
    ErrorCalibration

    Raises
    ------
    ValueError
        If shapes disagree or a label has fewer than 10 usable stars (finite residual
        and positive finite error): a calibration that cannot be fitted is an error,
        never a silent default.
    """
    residuals = np.asarray(residuals, dtype=float)
    errors = np.asarray(errors, dtype=float)
    names = tuple(label_names)
    if residuals.shape != errors.shape or residuals.ndim != 2 or residuals.shape[1] != len(names):
        raise ValueError(
            f"`residuals` {residuals.shape} and `errors` {errors.shape} must both be (stars,"
            f" {len(names)}) for labels {list(names)}."
        )
    rows: dict[str, list[float]] = {f: [] for f in _REPORTED}
    good_all = np.isfinite(residuals) & np.isfinite(errors) & (errors > 0)
    rchi2 = np.full(len(residuals), np.nan) if rchi2 is None else np.asarray(rchi2, dtype=float)
    usable = np.isfinite(rchi2) & (rchi2 > 0)
    reference = float(np.median(rchi2[usable])) if usable.mean() > 0.5 else 1.0
    if usable.mean() > 0.5:
        ratio = np.clip(np.where(usable, rchi2 / reference, 1.0), *_RATIO_RANGE)
    else:  # no χ² (e.g. the NN regressor): a constant floor
        ratio = np.ones(len(residuals))
    log_ratio = np.log(ratio)
    local = None if labels is None else LocalErrors.from_residuals(residuals, labels, neighbours=neighbours)
    # The reference stars are the fit's own stars: each one's residual is left out of its
    # own neighbourhood, so δ is learned from residuals the term did not see.
    log_local = (
        np.zeros(residuals.shape)
        if local is None or labels is None
        else local.log_ratio(np.asarray(labels, dtype=float), leave_one_out=True)
    )
    powers = []
    for k, name in enumerate(names):
        good = good_all[:, k]
        if good.sum() < _MIN_STARS:
            raise ValueError(
                f"cannot calibrate the errors of {name!r}: only {int(good.sum())} held-out stars have a"
                f" finite residual and a positive error (need ≥ {_MIN_STARS}); train with more stars"
                " or without calibration (calibrate=False / --no-calibrate)."
            )
        delta, sigma = residuals[good, k], errors[good, k]
        logs = np.stack([log_ratio[good], log_local[good, k]], axis=1)
        a, s, power, kept = _fit_label(delta, sigma, logs, np.array([max_power, MAX_LOCAL_POWER]))
        gamma = float(power[0])
        powers.append(float(power[1]))
        z0 = delta / sigma
        z1 = delta / np.sqrt((a * sigma) ** 2 + s**2 * np.exp(logs @ power))
        width = _balance(z1[kept])
        a, s, z1 = a * width, s * width, z1 / width
        for f, v in zip(
            _REPORTED,
            (a, s, gamma, np.std(z0), np.std(z1), np.mean(np.abs(z0) < 1), np.mean(np.abs(z1) < 1)),
            strict=True,
        ):
            rows[f].append(float(v))
    return ErrorCalibration(
        names,
        **{f: jnp.asarray(rows[f]) for f in _REPORTED},
        rchi2_ref=jnp.asarray(reference),
        n_folds=int(n_folds),
        n_stars=int(good_all.all(axis=1).sum()),
        irreducible_share=irreducible_share,
        local=None if local is None else local.with_power(np.array(powers)),
        size_power=None
        if half_residuals is None
        else jnp.asarray(
            np.maximum(
                _size_power(residuals, np.asarray(half_residuals, dtype=float), n_folds),
                _share_power(irreducible_share, n_folds),
            )
        ),
    )


def _share_power(share: float, n_folds: int) -> float:
    """The ``α`` whose factor ``((K−1)/K)^(α/2)`` equals ``f`` of the irreducible share ``r``."""
    return max(0.0, float(np.log(1.0 - (1.0 - share) / n_folds) / np.log((n_folds - 1) / n_folds)))


def _size_power(residuals: np.ndarray, half: np.ndarray, n_folds: int) -> np.ndarray:
    """``α`` per label from the held-out mean squared error at (K−1)/K and at 1/2 of N.

    The model of :attr:`ErrorCalibration.irreducible_share`, ``MSE(n) = V + c/n``,
    through both points: the final model's MSE is the folds' times
    ``f² = 1 − (MSE_half/MSE_K − 1)/(K − 2)``, clipped to ``[1 − 1/K, 1]`` (the
    irreducible share between 0 and 1: errors that grow with more training data are
    noise, and a steeper fall between N/2 and (K−1)N/K, as when a model overfits a
    small training set, is not extrapolated further). Returned as
    ``α = ln f² / ln((K−1)/K)``. Same stars in both (finite in both), each set's
    squared residuals above its 99th percentile clipped to it, so a few catastrophic
    stars do not decide.
    """
    if half.shape != residuals.shape:
        raise ValueError(
            f"`half_residuals` {half.shape} must have the shape of `residuals` {residuals.shape}."
        )
    alpha = np.zeros(residuals.shape[1])
    if n_folds <= 2:  # the half-size CV is the K-fold one: nothing to learn
        return alpha
    for k in range(residuals.shape[1]):
        both = np.isfinite(residuals[:, k]) & np.isfinite(half[:, k])
        if both.sum() < _MIN_STARS:
            continue
        full2, half2 = residuals[both, k] ** 2, half[both, k] ** 2
        # Each clipped at its own 99th percentile: the same relative trim of both.
        full2 = np.minimum(full2, np.quantile(full2, 0.99))
        half2 = np.minimum(half2, np.quantile(half2, 0.99))
        ratio = np.mean(half2) / max(float(np.mean(full2)), 1e-300)
        f2 = np.clip(1.0 - (ratio - 1.0) / (n_folds - 2), 1.0 - 1.0 / n_folds, 1.0)
        alpha[k] = max(0.0, float(np.log(f2) / np.log((n_folds - 1) / n_folds)))
    return alpha


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
    for held in fold_indices(n, n_folds, seed):
        fitted = refit(np.setdiff1d(everyone, held))
        result = infer(fitted, held)
        predicted[held] = result.labels
        residuals[held] = result.labels - reference[held]
        errors[held] = result.label_err
        rchi2[held] = result.reduced_chi2
    half = _half_size_residuals(refit, infer, reference, seed) if learn_size_factor else None
    return fit_error_calibration(
        residuals,
        errors,
        label_names,
        rchi2=rchi2,
        n_folds=n_folds,
        irreducible_share=irreducible_share,
        labels=predicted if label_term else None,
        half_residuals=half,
    )


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
    fitted: Any,
    train: SpectralDataset,
    refit: Callable[[np.ndarray], Any],
    *,
    n_folds: int = CALIBRATION_FOLDS,
    seed: int = 0,
    irreducible_share: float | None = None,
    learn_size_factor: bool | None = None,
    label_term: bool | None = None,
) -> Any:
    """``fitted`` carrying the calibration its family's default test step needs.

    Shared by every family's ``fit(calibrate=True)``: cross-validates ``refit`` on
    ``train`` (the training labels are the reference) and stores the result in the
    fitted model's ``calibration`` field. ``irreducible_share`` defaults to the
    fitted model's kind's entry in :data:`IRREDUCIBLE_SHARE` (1 for other kinds).
    """
    kind = getattr(fitted, "kind", "")
    if irreducible_share is None:
        irreducible_share = IRREDUCIBLE_SHARE.get(kind, 1.0)
    if learn_size_factor is None:
        learn_size_factor = kind in LEARN_SIZE_FACTOR
    if label_term is None:
        label_term = kind in LABEL_TERM
    names = tuple(fitted.label_names)
    if train.labels is None:
        raise ValueError("the training set has no labels to calibrate the errors against.")
    # Index the label columns directly: select_labels would copy the spectra too.
    reference = train.labels[:, [train.label_index(n) for n in names]]

    def infer(model: Any, rows: np.ndarray) -> InferenceResult:
        return model.infer(train[rows], calibrate=False)

    def refit_fold(rows: np.ndarray) -> Any:
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
    )
    return eqx.tree_at(lambda m: m.calibration, fitted, calibration, is_leaf=lambda x: x is None)
