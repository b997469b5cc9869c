"""The test step's choices as small typed, serialisable objects (the optimistix pattern).

A test step is four choices, each an :class:`equinox.Module` with its settings as fields:

* the **estimator** (:class:`MAP`, :class:`PosteriorMean`, :class:`NUTS`): which point
  estimate and which label posterior;
* the **uncertainty** of the MAP (:class:`Fisher`, :class:`Laplace`, :class:`NUTS`);
* the **nuisance** parameters fitted jointly (:class:`Nuisance`: radial velocity,
  continuum), or None;
* the **binary** comparison (:class:`Binary`), or None.

:class:`TestStep` bundles them with the routine's remaining keyword ``options`` and is
the one place where a combination is refused (:meth:`TestStep.__check_init__`). It
round-trips through JSON (:meth:`TestStep.to_json`, :meth:`TestStep.from_json`), which
is what a run manifest records and what the pipeline hands to its workers;
:meth:`TestStep.from_options` turns the flat keyword form (the CLI's flags,
:func:`~starlabel.models.infer_labels`' arguments) into objects once.
:func:`starlabel.models.infer` runs a test step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._calibration import ErrorCalibration

__all__ = [
    "AbstractStrategy",
    "AbstractEstimator",
    "AbstractUncertainty",
    "MAP",
    "PosteriorMean",
    "NUTS",
    "Fisher",
    "Laplace",
    "Nuisance",
    "Binary",
    "TestStep",
    "ESTIMATORS",
    "UNCERTAINTIES",
    "as_uncertainty",
    "calibration_options",
    "calibration_from_options",
]


class AbstractStrategy(eqx.Module):
    """A test-step choice: its ``name`` (the CLI's word for it) and JSON-able settings."""

    name: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        """``{"type": class name, <field>: value, …}`` (JSON-able)."""
        record: dict[str, Any] = {"type": type(self).__name__}
        for item in dataclasses.fields(self):
            record[item.name] = _jsonable(getattr(self, item.name), item.name)
        return record


class AbstractEstimator(AbstractStrategy):
    """Which point estimate and label posterior the test step reports."""


class AbstractUncertainty(AbstractStrategy):
    """How the covariance of the MAP labels is computed."""


class MAP(AbstractEstimator):
    """The model's own multi-start maximum-likelihood test step (``fitted.infer``)."""

    name: ClassVar[str] = "map"


class PosteriorMean(AbstractEstimator):
    """Posterior mean and covariance by grid quadrature or importance sampling.

    See :func:`~starlabel.models.infer_posterior_mean` (polynomial-in-labels models).

    Attributes
    ----------
    prior : "none", "gaussian", "kde", dict or AbstractLabelPrior
        Label prior ("gaussian"/"kde" are fitted to the model's training labels).
    temperature : float or "auto"
        Likelihood temperature T > 0; ``"auto"`` chooses it by cross-validation on the
        training set (:func:`~starlabel.models.select_temperature`).
    likelihood : {"gaussian", "student"}
        Pixel likelihood.
    width_scale : tuple of float, optional
        Per-label factors for the posterior widths
        (:func:`~starlabel.models.rescale_uncertainty`).
    error_calibration : ErrorCalibration, optional
        Calibration of the posterior errors (:attr:`TemperatureSelection.calibration`).
    """

    name: ClassVar[str] = "mean"
    prior: Any = "none"
    temperature: float | str = 1.0
    likelihood: str = "gaussian"
    width_scale: tuple[float, ...] | None = None
    error_calibration: ErrorCalibration | None = None


class NUTS(AbstractEstimator, AbstractUncertainty):
    """NUTS draws of the label posterior.

    As the estimator, the tempered posterior of a polynomial-in-labels model with a
    label prior (:func:`~starlabel.models.infer_nuts`); as the uncertainty of the MAP,
    the model's own posterior started at the MAP
    (:func:`~starlabel.models.posterior_infer`). Sampler settings left None take the
    chosen routine's defaults.

    Attributes
    ----------
    prior, temperature, width_scale, error_calibration
        As for :class:`PosteriorMean` (estimator only).
    num_warmup, num_samples, num_chains : int, optional
        Sampler settings per star.
    """

    name: ClassVar[str] = "nuts"
    prior: Any = "none"
    temperature: float | str = 1.0
    width_scale: tuple[float, ...] | None = None
    error_calibration: ErrorCalibration | None = None
    num_warmup: int | None = None
    num_samples: int | None = None
    num_chains: int | None = None

    def sampler_options(self) -> dict[str, int]:
        """The sampler settings that were set."""
        names = ("num_warmup", "num_samples", "num_chains")
        return {n: int(getattr(self, n)) for n in names if getattr(self, n) is not None}


class Fisher(AbstractUncertainty):
    """Inverse Fisher matrix at the MAP (noise variance σ² + s²); the default."""

    name: ClassVar[str] = "fisher"


class Laplace(AbstractUncertainty):
    """Inverse observed curvature of the log posterior at the MAP."""

    name: ClassVar[str] = "laplace"


class Nuisance(AbstractStrategy):
    """Radial velocity and/or a multiplicative continuum fitted jointly with the labels.

    Attributes
    ----------
    rv : bool
        Fit a velocity (columns ``rv``, ``rv_err``).
    continuum_order : int, optional
        Order of the continuum polynomial per region (columns ``cont_r{region}_c{power}``).
    """

    name: ClassVar[str] = "nuisance"
    rv: bool = True
    continuum_order: int | None = None

    def __check_init__(self) -> None:
        if not self.rv and self.continuum_order is None:
            raise ValueError("nothing to fit: pass fit_rv=True and/or continuum_order=0, 1, 2, ….")


def _binary_dict(calibration: Any) -> dict[str, Any] | None:
    if calibration is None:
        return None
    if isinstance(calibration, Mapping):
        return dict(calibration)
    return dict(calibration.to_dict())  # a BinaryCalibration


class Binary(AbstractStrategy):
    """Also fit a two-star model and compare (:func:`~starlabel.models.fit_binary`).

    Attributes
    ----------
    calibration : mapping, optional
        The decision learned on the training set (the model-file header's
        ``binary_calibration``, :meth:`BinaryCalibration.to_dict`); None: the fixed
        rule ``delta_bic > 0``.
    """

    name: ClassVar[str] = "binary"
    # A BinaryCalibration is kept in its JSON form, so the step stays serialisable.
    calibration: dict[str, Any] | None = eqx.field(default=None, converter=_binary_dict)


ESTIMATORS: tuple[str, ...] = ("map", "mean", "nuts")
"""Estimator names (the CLI's ``--estimator`` choices)."""

UNCERTAINTIES: tuple[str, ...] = ("fisher", "laplace", "nuts")
"""Uncertainty names (the CLI's ``--uncertainty`` choices)."""

_CLASSES: dict[str, type[AbstractStrategy]] = {
    cls.__name__: cls for cls in (MAP, PosteriorMean, NUTS, Fisher, Laplace, Nuisance, Binary)
}


def _is_none_prior(prior: Any) -> bool:
    return prior is None or (isinstance(prior, str) and prior.strip().lower() == "none")


class TestStep(eqx.Module):
    """A whole test step: estimator, uncertainty, nuisance, binary and further options.

    Attributes
    ----------
    estimator : MAP, PosteriorMean or NUTS
    uncertainty : Fisher, Laplace or NUTS
        Covariance of the MAP labels (the plain MAP test step only).
    nuisance : Nuisance, optional
    binary : Binary, optional
    options : mapping
        Further keywords for the chosen routine (``n_nodes``, ``v_max``, ``n_starts``,
        a plug-in model's ``infer`` options, …); JSON-able when recorded in a run.

    Raises
    ------
    ValueError
        On an unsupported combination, with one message per combination naming the
        choices (and their CLI flags) and what to change.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name

    estimator: AbstractEstimator = MAP()
    uncertainty: AbstractUncertainty = Fisher()
    nuisance: Nuisance | None = None
    binary: Binary | None = None
    options: Mapping[str, Any] = eqx.field(default_factory=dict)

    def __check_init__(self) -> None:
        estimator, uncertainty = self.estimator, self.uncertainty
        if not isinstance(estimator, AbstractEstimator):
            raise TypeError(f"`estimator` must be MAP(), PosteriorMean(…) or NUTS(…), got {estimator!r}.")
        if not isinstance(uncertainty, AbstractUncertainty):
            raise TypeError(f"`uncertainty` must be Fisher(), Laplace() or NUTS(…), got {uncertainty!r}.")
        plain_map = isinstance(estimator, MAP) and self.nuisance is None and self.binary is None
        if not isinstance(uncertainty, Fisher) and not plain_map:
            raise ValueError(
                "--uncertainty applies to the plain MAP test step (--estimator map, no --fit-rv,"
                " --fit-continuum or --binary); --estimator mean/nuts already give posterior errors."
            )
        if isinstance(uncertainty, NUTS) and (
            not _is_none_prior(uncertainty.prior)
            or uncertainty.temperature != 1.0
            or uncertainty.width_scale is not None
            or uncertainty.error_calibration is not None
        ):
            raise ValueError(
                "uncertainty=NUTS(…) samples the model's own posterior at the MAP: prior,"
                " temperature and calibration belong to estimator=NUTS(…) (--estimator nuts)."
            )
        if isinstance(estimator, (PosteriorMean, NUTS)):
            temperature = estimator.temperature
            if isinstance(temperature, str) and temperature.strip().lower() != "auto":
                raise ValueError(f"`temperature` must be a number or 'auto', got {temperature!r}.")
            if estimator.width_scale is not None and estimator.error_calibration is not None:
                raise ValueError("pass `width_scale` or `error_calibration`, not both.")
        if isinstance(estimator, PosteriorMean) and estimator.likelihood not in ("gaussian", "student"):
            raise ValueError(f"unknown likelihood {estimator.likelihood!r}; choose 'gaussian' or 'student'.")
        if self.binary is not None:
            if not isinstance(estimator, MAP) or (
                self.nuisance is not None and self.nuisance.continuum_order is not None
            ):
                raise ValueError("--binary runs its own MAP fits; use estimator='map' and no continuum.")
        elif self.nuisance is not None and isinstance(estimator, NUTS):
            raise ValueError(
                "NUTS with a velocity/continuum is not supported; use estimator='map' or 'mean'."
            )

    # ------------------------------------------------------------------ flat form
    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, **more: Any) -> TestStep:
        """Objects from the flat keyword form (CLI flags, ``infer_labels`` arguments).

        Recognised keys: ``estimator`` ("map", "mean", "nuts"), ``prior``,
        ``temperature``, ``likelihood``, ``width_scale``, ``error_calibration``,
        ``uncertainty`` ("fisher", "laplace", "nuts"), ``fit_rv``, ``continuum_order``,
        ``binary``, ``binary_calibration``; every other key stays in ``options``.
        Inverse of :meth:`to_options`.
        """
        flat = {**dict(options or {}), **more}
        name = flat.pop("estimator", "map")
        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}.")
        prior = flat.pop("prior", "none")
        temperature = flat.pop("temperature", 1.0)
        likelihood = flat.pop("likelihood", "gaussian")
        width_scale = flat.pop("width_scale", None)
        error_calibration = flat.pop("error_calibration", None)
        if isinstance(temperature, str) and temperature.strip().lower() == "auto" and name == "map":
            raise ValueError(
                "--temperature tempers the posterior of --estimator mean or nuts (temperature= of"
                " PosteriorMean/NUTS); the MAP ignores it: drop it or change the estimator."
            )
        if name == "map":
            if not _is_none_prior(prior):
                raise ValueError(
                    "a prior changes the posterior, not the maximum-likelihood test step; use"
                    " estimator='mean' (or 'nuts') with a prior."
                )
            if width_scale is not None or error_calibration is not None:
                raise ValueError(
                    "`width_scale` and `error_calibration` calibrate posterior widths; use"
                    " estimator='mean' or 'nuts' (the MAP errors carry the model's own calibration)."
                )
            _temperature(temperature)  # checked, then ignored by the MAP (as it always was)
        if likelihood != "gaussian" and name != "mean":
            raise ValueError(
                "--likelihood student works with --estimator mean (likelihood= of PosteriorMean);"
                " add --estimator mean or drop --likelihood."
            )
        estimator: AbstractEstimator
        if name == "map":
            estimator = MAP()
        else:
            scale = None if width_scale is None else _width_tuple(width_scale)
            calibration = None if error_calibration is None else _calibration(error_calibration)
            if name == "mean":
                estimator = PosteriorMean(prior, _temperature(temperature), likelihood, scale, calibration)
            else:
                sampler = {k: flat.pop(k) for k in ("num_warmup", "num_samples", "num_chains") if k in flat}
                estimator = NUTS(prior, _temperature(temperature), scale, calibration, **sampler)
        uncertainty = as_uncertainty(flat.pop("uncertainty", "fisher"))
        if isinstance(uncertainty, NUTS) and isinstance(flat.get("posterior_options"), Mapping):
            # The sampler settings of uncertainty="nuts" travel in posterior_options.
            posterior = dict(flat.pop("posterior_options"))
            sampler = {
                k: posterior.pop(k) for k in ("num_warmup", "num_samples", "num_chains") if k in posterior
            }
            uncertainty = NUTS(**sampler)
            if posterior:
                flat["posterior_options"] = posterior
        fit_rv = bool(flat.pop("fit_rv", False))
        continuum_order = flat.pop("continuum_order", None)
        nuisance = Nuisance(fit_rv, continuum_order) if fit_rv or continuum_order is not None else None
        binary_calibration = flat.pop("binary_calibration", None)
        binary = Binary(binary_calibration) if flat.pop("binary", False) else None
        return cls(estimator, uncertainty, nuisance, binary, flat)

    def to_options(self) -> dict[str, Any]:
        """The flat keyword form (JSON-able); :meth:`from_options` inverts it."""
        flat: dict[str, Any] = {}
        estimator = self.estimator
        if not isinstance(estimator, MAP):
            flat["estimator"] = estimator.name
        if isinstance(estimator, (PosteriorMean, NUTS)):
            if not _is_none_prior(estimator.prior):
                flat["prior"] = _jsonable(estimator.prior, "prior")
            if estimator.temperature != 1.0:
                flat["temperature"] = estimator.temperature
            if isinstance(estimator, PosteriorMean) and estimator.likelihood != "gaussian":
                flat["likelihood"] = estimator.likelihood
            if estimator.width_scale is not None:
                flat["width_scale"] = list(estimator.width_scale)
            if estimator.error_calibration is not None:
                flat["error_calibration"] = calibration_options(estimator.error_calibration)
            if isinstance(estimator, NUTS):
                flat.update(estimator.sampler_options())
        if not isinstance(self.uncertainty, Fisher):
            flat["uncertainty"] = self.uncertainty.name
            if isinstance(self.uncertainty, NUTS) and self.uncertainty.sampler_options():
                posterior = dict(self.options.get("posterior_options") or {})
                flat["posterior_options"] = {**self.uncertainty.sampler_options(), **posterior}
        if self.nuisance is not None:
            if self.nuisance.rv:
                flat["fit_rv"] = True
            if self.nuisance.continuum_order is not None:
                flat["continuum_order"] = int(self.nuisance.continuum_order)
        if self.binary is not None:
            flat["binary"] = True
            if self.binary.calibration is not None:
                flat["binary_calibration"] = dict(self.binary.calibration)
        flat.update({k: v for k, v in self.options.items() if k not in flat})
        return flat

    # ------------------------------------------------------------------ JSON form
    def to_json(self) -> dict[str, Any]:
        """``{"estimator": {...}, "uncertainty": {...}, "nuisance": {...} | None, …}``."""
        return {
            "estimator": self.estimator.to_json(),
            "uncertainty": self.uncertainty.to_json(),
            "nuisance": None if self.nuisance is None else self.nuisance.to_json(),
            "binary": None if self.binary is None else self.binary.to_json(),
            "options": _jsonable(dict(self.options), "options"),
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> TestStep:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ValueError
            On an unknown strategy type or field.
        """
        parts = {
            key: _strategy_from_json(record.get(key))
            for key in ("estimator", "uncertainty", "nuisance", "binary")
        }
        return cls(
            parts["estimator"] or MAP(),
            parts["uncertainty"] or Fisher(),
            parts["nuisance"],
            parts["binary"],
            dict(record.get("options") or {}),
        )


# ---------------------------------------------------------------------- helpers
def _temperature(value: Any) -> float | str:
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        raise ValueError(f"`temperature` must be a number or 'auto', got {value!r}.")
    number = float(value)
    if not number > 0:
        raise ValueError(f"`temperature` must be > 0, got {value}.")
    return number


def _width_tuple(width_scale: Any) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(width_scale, dtype=float))
    return tuple(float(v) for v in values)


def _calibration(value: Any) -> ErrorCalibration:
    if isinstance(value, ErrorCalibration):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"`error_calibration` is not a calibration_options() mapping: {value!r}.")
    return calibration_from_options(value, tuple(value.get("label_names", ())))


def as_uncertainty(name: str | AbstractUncertainty) -> AbstractUncertainty:
    """``Fisher()``, ``Laplace()`` or ``NUTS()`` for its name; an uncertainty object unchanged."""
    if isinstance(name, AbstractUncertainty):
        return name
    classes: dict[str, type[AbstractUncertainty]] = {"fisher": Fisher, "laplace": Laplace, "nuts": NUTS}
    if name not in classes:
        raise ValueError(f"unknown uncertainty {name!r}; choose one of {list(UNCERTAINTIES)}.")
    return classes[name]()


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, ErrorCalibration):
        return calibration_options(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if (
        isinstance(value, (np.ndarray, np.generic))
        or hasattr(value, "__jax_array__")
        or isinstance(value, jnp.ndarray)
    ):
        return np.asarray(value).tolist()
    raise ValueError(
        f"`{where}` holds {type(value).__name__}, which has no JSON form; pass a name or a dict"
        " (a run records its test step as JSON)."
    )


def _strategy_from_json(record: Any) -> Any:
    if record is None:
        return None
    fields = dict(record)
    name = fields.pop("type", None)
    if name not in _CLASSES:
        raise ValueError(f"unknown test-step strategy {name!r}; known: {sorted(_CLASSES)}.")
    cls = _CLASSES[name]
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{name} has no field(s) {unknown}; it has {sorted(known)}.")
    if fields.get("error_calibration") is not None:
        fields["error_calibration"] = _calibration(fields["error_calibration"])
    if fields.get("width_scale") is not None:
        fields["width_scale"] = tuple(float(v) for v in fields["width_scale"])
    return cls(**fields)


def calibration_options(calibration: ErrorCalibration) -> dict[str, Any]:
    """A JSON-able form of an :class:`ErrorCalibration` (for run options and manifests)."""
    return {
        "label_names": list(calibration.label_names),
        "scale": np.asarray(calibration.scale).tolist(),
        "floor": np.asarray(calibration.floor).tolist(),
        "misfit_power": np.asarray(calibration.misfit_power).tolist(),
        "rchi2_ref": float(calibration.rchi2_ref),
        "n_folds": calibration.n_folds,
        "n_stars": calibration.n_stars,
    }


def calibration_from_options(options: Mapping[str, Any], label_names: tuple[str, ...]) -> ErrorCalibration:
    """Rebuild :func:`calibration_options` output, checking it against ``label_names``.

    Raises
    ------
    ValueError
        If the labels differ or a value is missing, not finite or negative.
    """
    try:
        names = tuple(options["label_names"])
        arrays = {f: np.asarray(options[f], dtype=float) for f in ("scale", "floor", "misfit_power")}
        reference = float(options["rchi2_ref"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"`error_calibration` is not a calibration_options() mapping: {error!r}.") from None
    k = len(names)
    if names != tuple(label_names) or any(a.shape != (k,) for a in arrays.values()):
        raise ValueError(
            f"`error_calibration` is for labels {list(names)}, the model infers {list(label_names)}."
        )
    if not all(np.all(np.isfinite(a) & (a >= 0)) for a in arrays.values()) or not reference > 0:
        raise ValueError(f"`error_calibration` holds non-finite or negative values: {dict(options)!r}.")
    nan = jnp.full(k, jnp.nan)
    return ErrorCalibration(
        names,
        jnp.asarray(arrays["scale"]),
        jnp.asarray(arrays["floor"]),
        jnp.asarray(arrays["misfit_power"]),
        jnp.asarray(reference),
        nan,
        nan,
        nan,
        nan,
        n_folds=int(options.get("n_folds", 5)),
        n_stars=int(options.get("n_stars", 0)),
    )
