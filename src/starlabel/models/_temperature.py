r"""Tempering chosen by cross-validation on the training set, and its error calibration.

The tempered posterior :math:`p(d|\ell)^{1/T} p(\ell)` widens the likelihood to absorb
model misspecification. :func:`select_temperature` picks T by k-fold cross-validation
*inside the training set*: refit on k−1 folds, score the held-out fold's known labels
under each T's Gaussian posterior summary (:func:`~starlabel.models.infer_posterior_mean`),
keep the best. Test data are never used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .._internal import fold_indices
from ..data import Flag, InferenceResult, SpectralDataset
from ..inference import resolve_prior
from ._accuracy_guard import guard_temperature
from ._calibration import ErrorCalibration, fit_error_calibration
from ._estimators import check_method, infer_posterior_mean, map_start
from ._strategies import calibration_options
from .base import AbstractFittedFluxModel, AbstractFittedModel, AbstractFluxModel, AbstractSpectralModel

__all__ = [
    "TemperatureSelection",
    "select_temperature",
    "unfitted_configuration",
    "rescale_uncertainty",
    "check_width_scale",
    "MAX_WIDTH_SCALE",
]


@dataclass(frozen=True)
class TemperatureSelection:
    """Outcome of :func:`select_temperature`.

    Attributes
    ----------
    temperature : float
        The chosen T (best held-out ``score``).
    temperatures : tuple of float
        Candidates tried.
    score : str
        The criterion that chose: ``"calibrated"``, ``"crps"`` or ``"log"``.
    crps : ndarray, shape (temperatures,)
        Mean over held-out training stars and labels of the continuous ranked
        probability score of ``N(mean, σ²)`` at the known label, in units of that
        label's training spread (lower is better).
    log_score : ndarray, shape (temperatures,)
        Mean over held-out training stars of ``log N(ℓ_true | mean, cov)`` (higher is better).
    rmse : ndarray, shape (temperatures, labels)
        Held-out RMSE of the posterior mean per label.
    z_std : ndarray, shape (temperatures, labels)
        Standard deviation of ``(mean − ℓ_true)/σ`` per label.
    label_names : tuple of str
    width_scale : ndarray, shape (labels,)
        ``z_std`` at the chosen temperature: the factor by which the posterior widths
        must grow for the held-out training stars' z to spread as N(0, 1). Apply it
        with :func:`rescale_uncertainty` (``infer_labels(temperature="auto")`` does).
    usable : ndarray, shape (temperatures,)
        Share of held-out training stars whose posterior entered the scores (finite
        label and width, not flagged BAD_COVARIANCE, nor NOT_CONVERGED when importance
        sampled).
    calibration : ErrorCalibration
        ``σ_total² = (a σ)² + σ_sys² (χ²_ν/χ̃²_ν)^γ`` fitted to the held-out
        residuals and posterior widths at the chosen T
        (:func:`~starlabel.models.fit_error_calibration`); what
        ``infer_labels(temperature="auto")`` applies. Unlike ``width_scale`` it also
        covers the model's misfit, which does not shrink with S/N.
    calibrated_crps : ndarray, shape (temperatures,)
        ``crps`` with each star's σ replaced by its calibrated total under the
        calibration fitted at that T (the default criterion).
    accuracy_refused : tuple of float
        Candidates the accuracy guard refused: held-out RMSE more than 1 % above the
        best candidate's for some label (:mod:`starlabel.models._accuracy_guard`).

    All per-temperature arrays follow ``temperatures``, which includes any candidates
    added while widening the range (see :func:`select_temperature`).
    """

    temperature: float
    temperatures: tuple[float, ...]
    score: str
    crps: np.ndarray
    log_score: np.ndarray
    rmse: np.ndarray
    z_std: np.ndarray
    label_names: tuple[str, ...] = field(default=())
    width_scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    usable: np.ndarray = field(default_factory=lambda: np.ones(0))
    calibration: ErrorCalibration | None = None
    calibrated_crps: np.ndarray = field(default_factory=lambda: np.ones(0))
    accuracy_refused: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (store it with the model)."""
        return {
            "temperature": self.temperature,
            "temperatures": list(self.temperatures),
            "score": self.score,
            "crps": self.crps.tolist(),
            "log_score": self.log_score.tolist(),
            "rmse": self.rmse.tolist(),
            "z_std": self.z_std.tolist(),
            "label_names": list(self.label_names),
            "width_scale": self.width_scale.tolist(),
            "usable": self.usable.tolist(),
            "calibrated_crps": self.calibrated_crps.tolist(),
            "accuracy_refused": list(self.accuracy_refused),
            "calibration": None if self.calibration is None else calibration_options(self.calibration),
        }


def _gaussian_log_score(mean: np.ndarray, cov: np.ndarray | None, truth: np.ndarray) -> np.ndarray:
    if cov is None:  # no covariance: no score, as for one that is not positive definite
        return np.full(len(mean), np.nan)
    diff = truth - mean
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return np.full(len(mean), np.nan)
    z = np.linalg.solve(chol, diff[..., None])[..., 0]
    log_det = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
    return -0.5 * (np.sum(z**2, axis=1) + log_det + mean.shape[1] * np.log(2 * np.pi))


def _gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of N(mean, std²) at ``truth`` (Gneiting & Raftery 2007, eq. 21), elementwise."""
    from scipy.stats import norm

    z = (truth - mean) / std
    return std * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / np.sqrt(np.pi))


def check_width_scale(width_scale: Any, label_names: Sequence[str]) -> np.ndarray:
    scale = np.asarray(width_scale, dtype=float)
    if scale.ndim == 0:
        scale = np.full(len(label_names), float(scale))
    if scale.shape != (len(label_names),) or not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(
            f"`width_scale` must be a positive number or one per label {list(label_names)},"
            f" got {width_scale!r}."
        )
    return scale


def rescale_uncertainty(result: InferenceResult, width_scale: Any) -> InferenceResult:
    """Multiply every star's label uncertainties by a per-label factor.

    The covariance becomes ``cov · (k kᵀ)``, so ``<label>_err`` grows by ``k`` and the
    correlations are kept; labels, χ² and flags are unchanged. Use the factor that
    cross-validation on the training set found (:attr:`TemperatureSelection.width_scale`).

    Parameters
    ----------
    result : InferenceResult
    width_scale : float or array, shape (labels,)
        Positive factors in ``result.label_names`` order.

    Returns
    -------
    InferenceResult
        With ``meta["width_scale"]`` recording the factors.
    """
    scale = check_width_scale(width_scale, result.label_names)
    return dataclasses.replace(
        result,
        cov=result.cov * (scale[:, None] * scale[None, :]),
        meta={**result.meta, "width_scale": scale.tolist()},
    )


def select_temperature(
    model: AbstractSpectralModel,
    train: SpectralDataset,
    *,
    prior: Any = "kde",
    temperatures: Sequence[float] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
    n_folds: int = 5,
    seed: int = 0,
    score: str = "calibrated",
    max_temperature: float = 1024.0,
    min_usable: float = 0.5,
    **grid_options: Any,
) -> TemperatureSelection:
    """Choose the likelihood temperature by k-fold cross-validation on the training set.

    For each fold, ``model`` is refitted on the other folds, the prior is rebuilt from
    their labels, and the held-out spectra are inferred with :func:`infer_posterior_mean`
    at every candidate T. The criteria are proper scoring rules of the held-out stars'
    known labels under the Gaussian summary (mean, σ) of their posterior, so they
    reward accurate means *and* honest widths. The raw ones differ in the tails: the
    log score charges a star z²/2, so a few confidently wrong stars (labels outside the
    training bulk) push T up until every width covers them; the CRPS charges ≈ σ|z|,
    so it is decided by the bulk. On the 500 shared giants the CRPS picks T ≈ 4
    (lowest RMSE), the log score T ≥ 8 (z spread closest to 1, RMSE 3–5 points
    worse); see ``docs/test_step.md``.

    Width and location are separated. At every T the held-out residuals and widths
    are fitted by the error calibration ``σ_total² = (a σ)² + σ_sys² (χ²_ν/χ̃²_ν)^γ``
    (:func:`~starlabel.models.fit_error_calibration`), and the default criterion,
    ``"calibrated"``, is the CRPS under those calibrated widths: T then only has to
    place the posterior mean well (how much the prior counts), not also make its raw
    width right. With thousands of pixels and a model that misfits, the raw CRPS
    chooses T ≈ z² ≈ 100 for width alone, which lets the prior pull the labels; the
    calibrated one stays near 1. The chosen T's calibration is returned as
    ``calibration`` and its plain z spread as ``width_scale``.

    Nothing untrustworthy is returned silently: held-out stars without a usable
    posterior are left out of the scores (and counted in ``usable``); when the best T
    is at the upper end of the candidates the range is widened (doubling, up to
    ``max_temperature``), at the lower end and above 1 halved down to 1; and the
    failures listed under Raises are errors.

    Parameters
    ----------
    model : AbstractSpectralModel
        Unfitted configuration (e.g. ``Cannon(label_names, order=2)``); refitted per fold.
    train : SpectralDataset
        Training spectra with labels ``model.label_names`` (the only data used).
    prior : str or dict
        Prior choice, rebuilt per fold from that fold's training labels.
    temperatures : sequence of float
        Candidates (> 0).
    n_folds : int
        Folds (≥ 2).
    seed : int
        Seed of the fold assignment.
    score : {"calibrated", "crps", "log"}
        The criterion (see above); ``"calibrated"`` (default) is the CRPS after the
        error calibration fitted at each T.
    max_temperature : float
        When the best candidate is the largest, the range is widened by doubling up to
        this; when it is the smallest and above 1, by halving down to 1.
    min_usable : float
        Share of held-out stars that must get a usable posterior (finite, converged)
        for a temperature to be scored; stars that do not are left out of the scores.
    **grid_options
        Passed to :func:`infer_posterior_mean` (e.g. ``n_nodes``, ``likelihood``,
        ``method``).

    Returns
    -------
    TemperatureSelection

    References
    ----------
    Gneiting & Raftery (2007), JASA 102, 359 (proper scoring rules, CRPS).

    Raises
    ------
    ValueError
        On fewer than two folds, a non-positive candidate, or a training set without the
        model's labels; and instead of returning nonsense: when no temperature gives
        enough usable held-out posteriors, when the best temperature is still the
        largest at ``max_temperature``, or when the width factor of a label is not
        finite or outside [1/:data:`MAX_WIDTH_SCALE`, :data:`MAX_WIDTH_SCALE`]. Each
        message names the cause and what to do.
    """
    if score not in ("calibrated", "crps", "log"):
        raise ValueError(f"unknown score {score!r}; choose 'calibrated', 'crps' or 'log'.")
    temps = tuple(float(t) for t in temperatures)
    if not temps or any(not t > 0 for t in temps):
        raise ValueError(f"`temperatures` must be positive numbers, got {temperatures!r}.")
    if not (isinstance(n_folds, int) and 2 <= n_folds <= train.n_stars):
        raise ValueError(f"`n_folds` must be an integer in [2, {train.n_stars}], got {n_folds!r}.")
    names = tuple(model.label_names)
    if train.labels is None or any(n not in train.label_names for n in names):
        raise ValueError(f"`train` must carry the labels {list(names)} for cross-validation.")
    truth_all = train.select_labels(names).labels
    if truth_all is None:  # checked above; this tells the type checker
        raise ValueError(f"`train` must carry the labels {list(names)} for cross-validation.")
    folds = fold_indices(train.n_stars, n_folds, seed)
    sampled = check_method(grid_options.get("method", "auto"), len(names)) == "importance"
    fits = []
    for held in folds:
        rest = np.setdiff1d(np.arange(train.n_stars), held)
        fold_prior = resolve_prior(prior, names, truth_all[rest]) if isinstance(prior, str) else prior
        fitted = _fit_uncalibrated(model, train[rest])
        # The MAP start does not depend on T: find it once per fold.
        start = map_start(fitted, train[held]) if sampled else None
        fits.append((held, fitted, fold_prior, start))
    finite = np.all(np.isfinite(truth_all), axis=1)
    spread = np.std(truth_all[finite], axis=0) if np.any(finite) else np.full(len(names), np.nan)
    scored: dict[float, _HeldOutScores] = {}

    def evaluate(temperature: float) -> _HeldOutScores:
        if temperature not in scored:
            results = [
                (
                    held,
                    infer_posterior_mean(
                        fitted, train[held], prior=p, temperature=temperature, start=start, **grid_options
                    ),
                )
                for held, fitted, p, start in fits
            ]
            scored[temperature] = _held_out_scores(
                results, truth_all, finite, spread, min_usable, names, n_folds
            )
        return scored[temperature]

    def criterion(temperature: float) -> float:
        out = evaluate(temperature)
        return {"calibrated": out.calibrated_crps, "crps": out.crps, "log": -out.log_score}[score]

    temps = sorted(set(temps))
    best = _best_temperature(temps, criterion, max_temperature)
    temps = sorted(scored)
    table = [scored[t] for t in temps]
    # The score may prefer a T whose means are less accurate (the prior pulls harder):
    # refuse candidates more than 1 % worse in held-out RMSE than the best candidate.
    if np.isfinite(criterion(best)):
        guard = guard_temperature(temps, [criterion(t) for t in temps], np.array([t.rmse for t in table]))
        best, refused = guard.temperature, guard.refused
    else:
        refused = ()
    chosen = scored[best]
    _check_width_scale_cv(chosen, best, names, temps, table, train.n_stars)
    calibration = _posterior_calibration(chosen, best)
    return TemperatureSelection(
        best,
        tuple(temps),
        score,
        np.array([t.crps for t in table]),
        np.array([t.log_score for t in table]),
        np.array([t.rmse for t in table]),
        np.array([t.z_std for t in table]),
        names,
        width_scale=chosen.z_std,
        usable=np.array([t.usable for t in table]),
        calibration=calibration,
        calibrated_crps=np.array([t.calibrated_crps for t in table]),
        accuracy_refused=refused,
    )


def _fit_uncalibrated(model: AbstractSpectralModel, data: SpectralDataset) -> AbstractFittedModel:
    """``model.fit(data)`` without the default-test-step error calibration (not used here)."""
    return model.fit(data, calibrate=False)


class _HeldOutScores(NamedTuple):
    """Cross-validation scores of one temperature over the held-out training stars."""

    crps: float
    log_score: float
    rmse: np.ndarray
    z_std: np.ndarray
    usable: float
    """Share of held-out stars with a finite label, a usable posterior and a score."""
    residuals: np.ndarray
    """(stars, labels) posterior mean − training label; NaN where not usable."""
    errors: np.ndarray
    """(stars, labels) posterior σ."""
    rchi2: np.ndarray
    """(stars,) reduced χ² at the posterior mean."""
    calibrated_crps: float
    """``crps`` with the widths replaced by their calibrated totals (``calibration``)."""
    calibration: ErrorCalibration | None
    """(a, σ_sys, γ) fitted to these held-out residuals; None when the fit failed."""
    calibration_error: str
    """Why the calibration fit failed (empty when it did not)."""


_UNUSABLE = int(Flag.NOT_CONVERGED | Flag.BAD_COVARIANCE)


def _held_out_scores(
    results: list[tuple[np.ndarray, InferenceResult]],
    truth: np.ndarray,
    finite: np.ndarray,
    spread: np.ndarray,
    min_usable: float,
    names: tuple[str, ...],
    n_folds: int,
) -> _HeldOutScores:
    """Scores over stars whose posterior is usable; NaN scores when too few are."""
    n, k = truth.shape
    means, stds = np.full((n, k), np.nan), np.full((n, k), np.nan)
    log_scores, ok, rchi2 = np.full(n, np.nan), np.zeros(n, dtype=bool), np.full(n, np.nan)
    for held, result in results:
        means[held], stds[held], rchi2[held] = result.labels, result.label_err, result.reduced_chi2
        log_scores[held] = _gaussian_log_score(result.labels, result.cov, truth[held])
        # A grid quadrature is exact with few effective nodes (its n_eff flag is a hint,
        # not a failure); importance weights with few effective draws are a failure.
        unusable = _UNUSABLE if result.meta.get("method") == "importance" else int(Flag.BAD_COVARIANCE)
        ok[held] = (result.flags & unusable) == 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = (means - truth) / stds
        ok &= finite & np.all(np.isfinite(z), axis=1) & np.isfinite(log_scores)
        crps = _gaussian_crps(means, stds, truth) / spread[None, :]
    usable = float(np.mean(ok))
    residuals = np.where(ok[:, None], means - truth, np.nan)
    if usable < min_usable or not np.any(ok):
        nan_k = np.full(k, np.nan)
        why = f"only {usable:.0%} of the held-out stars have a usable posterior"
        return _HeldOutScores(np.nan, np.nan, nan_k, nan_k, usable, residuals, stds, rchi2, np.nan, None, why)
    rmse = np.sqrt(np.mean((means[ok] - truth[ok]) ** 2, axis=0))
    calibration, why, calibrated = None, "", np.nan
    try:
        calibration = fit_error_calibration(residuals, stds, names, rchi2=rchi2, n_folds=n_folds)
    except ValueError as error:
        why = str(error)
    if calibration is not None:
        total = np.sqrt(
            (np.asarray(calibration.scale)[None, :] * stds) ** 2 + calibration.floor_variance(rchi2)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            calibrated_crps = _gaussian_crps(means, total, truth) / spread[None, :]
        calibrated = float(np.mean(calibrated_crps[ok]))
    return _HeldOutScores(
        float(np.mean(crps[ok])),
        float(np.mean(log_scores[ok])),
        rmse,
        np.std(z[ok], axis=0),
        usable,
        residuals,
        stds,
        rchi2,
        calibrated,
        calibration,
        why,
    )


def _best_temperature(temps: list[float], criterion: Any, max_temperature: float) -> float:
    """Minimise ``criterion`` over ``temps``, widening the range while the best is at its edge.

    Above: double the largest candidate up to ``max_temperature``. Below: halve the
    smallest down to T = 1 (the untempered likelihood, the natural lower end).
    """
    values = {t: criterion(t) for t in temps}
    while True:
        usable = {t: v for t, v in values.items() if np.isfinite(v)}
        if not usable:
            return min(values)  # the caller reports the failure with the table
        best = min(usable, key=lambda t: usable[t])
        if len(values) == 1:
            return best
        if best == max(values) and best < max_temperature:
            nxt = min(2.0 * best, max_temperature)
        elif best == min(values) and best > 1.0:
            nxt = max(0.5 * best, 1.0)
        else:
            return best
        values[nxt] = criterion(nxt)


MAX_WIDTH_SCALE: float = 20.0
"""Largest width factor :func:`select_temperature` accepts (and 1/that the smallest)."""


def _check_width_scale_cv(
    chosen: _HeldOutScores,
    temperature: float,
    names: tuple[str, ...],
    temps: list[float],
    table: list[_HeldOutScores],
    n_stars: int,
) -> None:
    """Raise instead of returning a temperature or width factor that cannot be trusted."""
    usable = ", ".join(f"T={t:g}: {s.usable:.0%}" for t, s in zip(temps, table, strict=True))
    if not np.isfinite(chosen.crps):
        raise ValueError(
            "temperature cross-validation failed: at no temperature did enough held-out training"
            f" stars get a usable posterior (finite label and width, converged; {usable} of"
            f" {n_stars}). Check the training set's labels and spectra (flux, ivar), or pass a"
            " number to --temperature (temperature=) instead of 'auto'."
        )
    at_edge = len(temps) > 1 and temperature == max(temps)
    if at_edge:
        raise ValueError(
            f"temperature cross-validation picked T={temperature:g}, the largest allowed: the"
            " model misfits the held-out training spectra so much that no tempering calibrates"
            " it. Use a more flexible model (or more training stars), or pass a number to"
            " --temperature (temperature=) and check the errors yourself."
        )
    scale = chosen.z_std
    bad = [
        f"{n}={v:.3g}"
        for n, v in zip(names, scale, strict=True)
        if not (np.isfinite(v) and 1.0 / MAX_WIDTH_SCALE <= v <= MAX_WIDTH_SCALE)
    ]
    if bad:
        raise ValueError(
            f"width calibration failed at T={temperature:g}: the held-out training stars' z"
            f" spread ({', '.join(bad)}) is outside [{1 / MAX_WIDTH_SCALE:g}, {MAX_WIDTH_SCALE:g}],"
            " so the posterior widths cannot be trusted even after rescaling. Check the"
            " training labels for outliers, or use --estimator map."
        )


def _posterior_calibration(chosen: _HeldOutScores, temperature: float) -> ErrorCalibration:
    """The error calibration of the held-out posteriors at the chosen T, checked."""
    calibration = chosen.calibration
    if calibration is None:
        raise ValueError(
            f"error calibration of the posterior mean failed at T={temperature:g}: {chosen.calibration_error}"
        )
    after = np.asarray(calibration.z_std_after)
    values = np.concatenate([np.asarray(calibration.scale), np.asarray(calibration.floor), after])
    if not np.all(np.isfinite(values)) or np.any(after > MAX_WIDTH_SCALE):
        raise ValueError(
            f"error calibration of the posterior mean failed at T={temperature:g}"
            f" ({calibration.describe()}; held-out z spread after it"
            f" {np.round(after, 3).tolist()}): the errors cannot be trusted. Check the training"
            " labels for outliers, or use --estimator map."
        )
    return calibration


def unfitted_configuration(
    fitted: AbstractFittedModel | AbstractFluxModel, model: AbstractSpectralModel | None = None
) -> AbstractSpectralModel:
    """The unfitted configuration to refit in temperature cross-validation.

    ``model`` when given; else ``fitted.configuration()`` for an
    :class:`~starlabel.models.AbstractFittedFluxModel`.
    """
    if model is not None:
        return model
    if isinstance(fitted, AbstractFittedFluxModel):
        # Same label vector; censoring and L1 settings are not stored in the fitted
        # model, so pass `model=` to cross-validate a censored or regularised Cannon.
        return fitted.configuration()
    raise ValueError(
        "temperature='auto' refits the model on training folds; pass `model=` (the unfitted"
        f" configuration) for a {type(fitted).__name__}."
    )
