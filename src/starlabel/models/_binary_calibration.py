"""The binary decision learned on a training set: :class:`BinaryCalibration` and ``binary_score``.

See :mod:`starlabel.models._binary` for why a learned threshold: a misfit single star
also gains χ² from a second component, in proportion to its misfit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["BinaryCalibration", "binary_score"]


_PROBABILITIES = np.linspace(0.0, 1.0, 201)
"""Probability levels at which a :class:`BinaryCalibration` keeps the held-out scores."""


@dataclasses.dataclass(frozen=True)
class BinaryCalibration:
    """The binary decision learned on a training set (see the module docstring).

    Attributes
    ----------
    quantiles : tuple of float
        ``binary_score`` of the cross-validated training stars at the probability levels
        ``linspace(0, 1, len(quantiles))`` (non-decreasing).
    threshold : float
        A star is a binary when its ``binary_score`` exceeds this: the
        ``1 − false_positive_rate`` quantile of the held-out scores (or its
        exponential-tail estimate from the top 10 %, whichever is higher).
    false_positive_rate : float
        Share of the training stars above the threshold.
    n_stars, n_folds : int
        Held-out stars and cross-validation folds it was learned from.
    fit_rv : bool
        Whether the fits it was learned from had a free velocity.
    """

    quantiles: tuple[float, ...]
    threshold: float
    false_positive_rate: float
    n_stars: int
    n_folds: int
    fit_rv: bool = True

    def __post_init__(self) -> None:
        q = np.asarray(self.quantiles, dtype=float)
        if q.ndim != 1 or len(q) < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
            raise ValueError("BinaryCalibration.quantiles must be ≥ 2 finite non-decreasing scores.")
        if not 0.0 < self.false_positive_rate < 1.0:
            raise ValueError(f"false_positive_rate must be in (0, 1), got {self.false_positive_rate}.")

    @classmethod
    def from_scores(
        cls, scores: Any, *, false_positive_rate: float = 0.002, n_folds: int = 5, fit_rv: bool = True
    ) -> BinaryCalibration:
        """From held-out training stars' ``binary_score`` (NaN: a failed fit, left out)."""
        scores = np.asarray(scores, dtype=float)
        good = scores[np.isfinite(scores)]
        if len(good) < 20:
            raise ValueError(
                f"learning the binary threshold needs ≥ 20 held-out stars with a finite score, got"
                f" {len(good)}; train on more stars."
            )
        if not 0.0 < false_positive_rate < 1.0:
            raise ValueError(f"false_positive_rate must be in (0, 1), got {false_positive_rate}.")
        return cls(
            tuple(float(x) for x in np.quantile(good, _PROBABILITIES)),
            _tail_quantile(good, false_positive_rate),
            float(false_positive_rate),
            len(good),
            int(n_folds),
            bool(fit_rv),
        )

    def p_binary(self, score: Any) -> np.ndarray:
        """Share of the held-out training stars with a lower score (0 … 1; NaN stays NaN)."""
        score = np.asarray(score, dtype=float)
        q = np.asarray(self.quantiles)
        probabilities = np.linspace(0.0, 1.0, len(q))
        # Ties (a flat stretch of quantiles) take their highest level, so p is a CDF.
        unique, last = np.unique(q[::-1], return_index=True)
        levels = probabilities[::-1][last]
        out = np.interp(score, unique, levels, left=0.0, right=1.0)
        return np.where(np.isfinite(score), out, np.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the model-file header's ``binary_calibration``)."""
        return dataclasses.asdict(self) | {"quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, config: Any) -> BinaryCalibration:
        """Inverse of :meth:`to_dict`; a clear error naming what is missing."""
        if isinstance(config, BinaryCalibration):
            return config
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(config, dict) or not set(fields[:5]) <= set(config):
            raise ValueError(
                f"a binary calibration needs the keys {fields[:5]}; got"
                f" {sorted(config) if isinstance(config, dict) else type(config).__name__}."
                " Retrain with `starlabel train cannon|payne --binary-calibration`."
            )
        return cls(
            quantiles=tuple(float(x) for x in config["quantiles"]),
            threshold=float(config["threshold"]),
            false_positive_rate=float(config["false_positive_rate"]),
            n_stars=int(config["n_stars"]),
            n_folds=int(config["n_folds"]),
            fit_rv=bool(config.get("fit_rv", True)),
        )


def _tail_quantile(scores: np.ndarray, rate: float, tail: float = 0.1) -> float:
    """The ``1 − rate`` quantile, never below its estimate from an exponential tail.

    An empirical 99.5th percentile of a few hundred stars is one of their two or three
    highest scores, as noisy as that; the excesses over the 90th percentile, fitted by an
    exponential of their mean (peaks over threshold), give a steadier extrapolation. The
    larger of the two is kept, so a short training set errs towards fewer false alarms.
    """
    empirical = float(np.quantile(scores, 1.0 - rate))
    if rate >= tail:
        return empirical
    start = float(np.quantile(scores, 1.0 - tail))
    excess = scores[scores > start] - start
    if len(excess) < 5:
        return empirical
    return max(empirical, start + float(np.mean(excess)) * float(np.log(tail / rate)))


def binary_score(
    delta_chi2: Any, chi2_binary: Any, n_good: Any, extra_params: int, n_binary: int
) -> np.ndarray:
    """ΔBIC with Δχ² in units of the binary fit's reduced χ² (when that exceeds 1).

    A model misfit inflates both the reduced χ² and the Δχ² a second component gains, by
    the same factor for a given star, so the ratio is comparable across S/N.
    """
    n_good = np.maximum(np.asarray(n_good, dtype=float), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rchi2 = np.asarray(chi2_binary) / np.maximum(n_good - n_binary, 1.0)
        return np.asarray(delta_chi2) / np.maximum(rchi2, 1.0) - extra_params * np.log(n_good)
