"""One entry point for every test step: :func:`infer` runs a :class:`~starlabel.models.TestStep`.

The estimator, uncertainty, nuisance and binary choices arrive as typed objects
(:mod:`starlabel.models._strategies`, where invalid combinations are refused); this
module only routes them to the routine that computes them. It sits above every
test-step module (grid/importance posterior mean, NUTS, nuisance, binary, tempering),
none of which imports it back.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from ..data import InferenceResult, SpectralDataset
from ._binary import fit_binary
from ._calibration import ErrorCalibration
from ._estimators import check_temperature, infer_nuts, infer_posterior_mean
from ._nuisance import infer_with_nuisance
from ._strategies import (
    MAP,
    NUTS,
    AbstractEstimator,
    AbstractUncertainty,
    Binary,
    Fisher,
    Nuisance,
    PosteriorMean,
    TestStep,
    calibration_from_options,
)
from ._temperature import check_width_scale, rescale_uncertainty, select_temperature, unfitted_configuration
from .base import AbstractFittedModel, AbstractFluxModel, AbstractMapStepModel, AbstractSpectralModel

__all__ = ["infer", "run_test_step", "infer_labels"]


def infer(
    fitted: AbstractFittedModel | AbstractFluxModel,
    data: SpectralDataset,
    *,
    estimator: AbstractEstimator | None = None,
    uncertainty: AbstractUncertainty | None = None,
    nuisance: Nuisance | None = None,
    binary: Binary | None = None,
    train: SpectralDataset | None = None,
    model: AbstractSpectralModel | None = None,
    key: PRNGKeyArray | None = None,
    **options: Any,
) -> InferenceResult:
    """Labels, errors and flags of every spectrum, by the chosen test step.

    Parameters
    ----------
    fitted : AbstractFittedModel or AbstractFluxModel
        The trained model (a bare flux model only with a velocity/continuum nuisance or
        a binary fit).
    data : SpectralDataset
        Spectra on the model's grid (with ``wavelength`` for velocity/continuum/binary).
    estimator : MAP, PosteriorMean or NUTS, optional
        ``MAP()`` (default): the model's multi-start MAP (``fitted.infer``), or the joint MAP with
        the nuisance; ``PosteriorMean(prior=…, temperature=…)``: posterior mean and
        covariance by grid quadrature or importance sampling; ``NUTS(…)``: posterior mean
        and covariance of NUTS draws.
    uncertainty : Fisher, Laplace or NUTS, optional
        ``Fisher()`` (default) or another covariance of the plain MAP labels (:func:`~starlabel.models.posterior_infer`).
    nuisance : Nuisance, optional
        Radial velocity and/or continuum fitted jointly (extra ``rv``, ``rv_err``,
        ``cont_r{region}_c{power}``).
    binary : Binary, optional
        Also fit a two-star model and compare (extra ``binary``, ``p_binary``,
        ``delta_chi2``, ``delta_bic`` and the components).
    train : SpectralDataset, optional
        Training set, needed only for ``temperature="auto"``.
    model : AbstractSpectralModel, optional
        Unfitted configuration to refit for ``temperature="auto"`` (default: rebuilt
        from ``fitted``).
    key : PRNGKeyArray, optional
        For ``estimator=NUTS(…)`` (default ``jax.random.key(0)``).
    **options
        Passed to the chosen routine (e.g. ``n_nodes``, ``v_max``, ``n_starts``).

    Returns
    -------
    InferenceResult

    Raises
    ------
    ValueError
        On an unsupported combination (:class:`~starlabel.models.TestStep`), or
        ``temperature="auto"`` without ``train``.
    """
    step = TestStep(
        MAP() if estimator is None else estimator,
        Fisher() if uncertainty is None else uncertainty,
        nuisance,
        binary,
        options,
    )
    return run_test_step(step, fitted, data, train=train, model=model, key=key)


def run_test_step(
    step: TestStep,
    fitted: AbstractFittedModel | AbstractFluxModel,
    data: SpectralDataset,
    *,
    train: SpectralDataset | None = None,
    model: AbstractSpectralModel | None = None,
    key: PRNGKeyArray | None = None,
) -> InferenceResult:
    """Run ``step`` on ``data`` (see :func:`infer`, which builds the step from its arguments)."""
    estimator, options = step.estimator, dict(step.options)
    meta_extra: dict[str, Any] = {}
    width_scale: Any = None
    calibration: ErrorCalibration | None = None
    temperature = 1.0
    if isinstance(estimator, (PosteriorMean, NUTS)):
        width_scale, calibration = estimator.width_scale, estimator.error_calibration
        if estimator.temperature == "auto":
            if train is None:
                raise ValueError(
                    "temperature='auto' is chosen by cross-validation on the training set; pass"
                    " `train` (the SpectralDataset the model was trained on). Test data are never used."
                )
            # The cross-validation runs the same posterior as the final inference.
            likelihood_options = {
                k: options[k] for k in ("dof", "method", "n_samples", "min_ess") if k in options
            }
            if isinstance(estimator, PosteriorMean):
                likelihood_options["likelihood"] = estimator.likelihood
            selection = select_temperature(
                unfitted_configuration(fitted, model), train, prior=estimator.prior, **likelihood_options
            )
            temperature = selection.temperature
            if width_scale is None and calibration is None:
                calibration = selection.calibration
            # JSON, not a Python repr: it goes into every result table's provenance.
            meta_extra["temperature_cv"] = json.dumps(selection.to_dict(), default=float)
        else:
            temperature = check_temperature(estimator.temperature)
    label_names = tuple(fitted.label_names)
    if width_scale is not None:
        width_scale = check_width_scale(width_scale[0] if len(width_scale) == 1 else width_scale, label_names)
    if calibration is not None and tuple(calibration.label_names) != label_names:
        calibration = calibration_from_options(
            {"label_names": list(calibration.label_names)}, label_names
        )  # raises the "is for labels …" error
    result = _estimate(step, fitted, data, estimator, temperature, options, key)
    if width_scale is not None:
        result = rescale_uncertainty(result, width_scale)
    if calibration is not None:
        # A width calibration only: a label correction learned on MAP labels does not
        # belong on posterior means (and a calibration from options has none).
        result = dataclasses.replace(calibration, bias=None).apply(result)
    if meta_extra:
        result = dataclasses.replace(result, meta={**result.meta, **meta_extra})
    return result


def _estimate(
    step: TestStep,
    fitted: AbstractFittedModel | AbstractFluxModel,
    data: SpectralDataset,
    estimator: AbstractEstimator,
    temperature: float,
    options: dict[str, Any],
    key: PRNGKeyArray | None,
) -> InferenceResult:
    """The routine that computes ``step`` (combinations were checked by :class:`TestStep`)."""
    nuisance = step.nuisance
    fit_rv = nuisance is not None and nuisance.rv
    if step.binary is not None:
        return fit_binary(fitted, data, fit_rv=fit_rv, calibration=step.binary.calibration, **options)
    if nuisance is not None:
        extra: dict[str, Any] = {}
        if isinstance(estimator, PosteriorMean):
            extra = {"prior": estimator.prior, "temperature": temperature}
            if estimator.likelihood != "gaussian":
                extra["likelihood"] = estimator.likelihood
        return infer_with_nuisance(
            fitted,
            data,
            fit_rv=nuisance.rv,
            continuum_order=nuisance.continuum_order,
            estimator=estimator.name,
            **extra,
            **options,
        )
    if isinstance(estimator, MAP):
        uncertainty = step.uncertainty
        if isinstance(fitted, AbstractFluxModel):
            raise TypeError(
                f"a bare {type(fitted).__name__} (AbstractFluxModel) has no test step of its own;"
                " fit it with a velocity/continuum nuisance or pass a fitted model."
            )
        # A model whose `infer` delegates here exposes its own step as `infer_map`.
        own_step = fitted.infer_map if isinstance(fitted, AbstractMapStepModel) else fitted.infer
        if isinstance(uncertainty, Fisher):
            return own_step(data, **options)
        if isinstance(uncertainty, NUTS):
            posterior = {
                **uncertainty.sampler_options(),
                **dict(options.pop("posterior_options", None) or {}),
            }
            options["posterior_options"] = posterior
        return own_step(data, uncertainty=uncertainty.name, **options)
    if isinstance(estimator, PosteriorMean):
        likelihood = {} if estimator.likelihood == "gaussian" else {"likelihood": estimator.likelihood}
        return infer_posterior_mean(
            fitted, data, prior=estimator.prior, temperature=temperature, **likelihood, **options
        )
    assert isinstance(estimator, NUTS)
    return infer_nuts(
        fitted,
        data,
        jax.random.key(0) if key is None else key,
        prior=estimator.prior,
        temperature=temperature,
        **estimator.sampler_options(),
        **options,
    )


def infer_labels(
    fitted: AbstractFittedModel | AbstractFluxModel,
    data: SpectralDataset,
    *,
    estimator: str = "map",
    prior: Any = "none",
    temperature: float | str = 1.0,
    train: SpectralDataset | None = None,
    model: AbstractSpectralModel | None = None,
    fit_rv: bool = False,
    continuum_order: int | None = None,
    binary: bool = False,
    key: PRNGKeyArray | None = None,
    width_scale: Any = None,
    error_calibration: Any = None,
    **options: Any,
) -> InferenceResult:
    """:func:`infer` with the choices as words (the CLI's flags), as in earlier releases.

    ``estimator`` ("map", "mean", "nuts"), ``prior``, ``temperature`` (a number or
    "auto"), ``fit_rv``, ``continuum_order``, ``binary`` (``binary_calibration=`` in
    ``options``), ``width_scale``, ``error_calibration`` and ``options`` (``likelihood``,
    ``uncertainty``, ``n_nodes``, ``v_max``, …) become a
    :class:`~starlabel.models.TestStep` by :meth:`~starlabel.models.TestStep.from_options`.

    Raises
    ------
    ValueError
        On an unknown estimator (listing the valid ones), an unsupported combination,
        or ``"auto"`` without ``train``.
    """
    flat = dict(options)
    flat.update(estimator=estimator, prior=prior, temperature=temperature, fit_rv=fit_rv, binary=binary)
    if continuum_order is not None:
        flat["continuum_order"] = continuum_order
    if width_scale is not None:
        flat["width_scale"] = np.asarray(width_scale, dtype=float).tolist()
    if error_calibration is not None:
        flat["error_calibration"] = error_calibration
    step = TestStep.from_options(flat)
    return run_test_step(step, fitted, data, train=train, model=model, key=key)
