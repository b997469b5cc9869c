"""From datasets to scaled data blocks: validation, missing entries, output scaling.

Every output is standardised per column (shift and scale fitted on the training set's
observed entries) so that priors such as N(0, 1) on the transform weights and the
half-normal on the scatter have the same meaning for every output. Reported
uncertainties are scaled with the values; missing entries (NaN labels, masked or
zero-ivar pixels) are flagged and carry no information.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..._internal import as_float_array
from ...data import ShiftScale, SpectralDataset
from ._objective import DataBlock

__all__ = ["OutputData", "RawOutput", "raw_outputs", "fit_scaler", "scaled_block"]


@dataclass(frozen=True)
class OutputData:
    """Values and 1-σ uncertainties of an extra Lux output (e.g. photometry).

    Parameters
    ----------
    values : array-like, shape (stars, columns)
        Observed values in their own units; NaN = missing.
    err : array-like, shape (stars, columns), optional
        1-σ uncertainties in the same units (NaN or inf = missing). ``None`` means
        "unknown": give the output a learned scatter (``ScalarScatter()`` or
        ``PixelScatter()``).
    """

    values: Any
    err: Any = None


@dataclass(frozen=True)
class RawOutput:
    """One output in data units: values, reported variances and the observed mask (internal)."""

    values: np.ndarray
    variance: np.ndarray
    observed: np.ndarray


def _raw_from_values(values: np.ndarray, err: np.ndarray | None, name: str) -> RawOutput:
    if err is None:
        variance = np.zeros_like(values)
        observed = np.isfinite(values)
    else:
        if err.shape != values.shape:
            raise ValueError(
                f"output {name!r}: err has shape {err.shape} but values have {values.shape};"
                " give one uncertainty per value."
            )
        if np.any(err < 0):
            raise ValueError(f"output {name!r}: err has negative entries; uncertainties must be ≥ 0.")
        variance = err**2
        observed = np.isfinite(values) & np.isfinite(variance)
    return RawOutput(np.where(observed, values, 0.0), np.where(observed, variance, 0.0), observed)


def raw_outputs(
    data: SpectralDataset,
    names: tuple[str, ...],
    label_names: tuple[str, ...],
    extra: Mapping[str, OutputData] | None,
    *,
    require_labels: bool,
) -> dict[str, RawOutput]:
    """Collect the outputs ``names`` of ``data`` (``"labels"``, ``"flux"``, or keys of ``extra``)."""
    extra = dict(extra or {})
    raws: dict[str, RawOutput] = {}
    for name in names:
        if name == "flux":
            observed = (data.ivar > 0) & ~data.mask
            with np.errstate(divide="ignore"):
                variance = np.where(observed, 1.0 / np.where(observed, data.ivar, 1.0), 0.0)
            raws[name] = RawOutput(np.where(observed, data.flux, 0.0), variance, observed)
        elif name == "labels":
            if data.labels is None or not set(label_names) <= set(data.label_names):
                if not require_labels:
                    continue
                have = list(data.label_names) if data.labels is not None else "no labels"
                raise ValueError(
                    f"the dataset must carry the labels {list(label_names)} (it has {have});"
                    " load it with labels=... or pass a labelled training set."
                )
            subset = data.select_labels(label_names)
            err = None if subset.label_err is None else np.asarray(subset.label_err, dtype=float)
            raws[name] = _raw_from_values(np.asarray(subset.labels, dtype=float), err, "labels")
        else:
            if name not in extra:
                raise ValueError(
                    f"output {name!r} was registered but no data were given for it; pass"
                    f" extra={{{name!r}: OutputData(values, err)}}."
                )
            item = extra.pop(name)
            if not isinstance(item, OutputData):
                raise TypeError(f"extra[{name!r}] must be an OutputData, got {type(item).__name__}.")
            values = as_float_array(item.values, f"extra[{name!r}].values")
            if values.ndim == 1:
                values = values[:, None]
            if values.ndim != 2 or values.shape[0] != data.n_stars:
                raise ValueError(
                    f"extra[{name!r}].values has shape {values.shape}; expected"
                    f" ({data.n_stars}, columns), one row per star of the dataset."
                )
            err = None if item.err is None else as_float_array(item.err, f"extra[{name!r}].err")
            if err is not None and err.ndim == 1:
                err = err[:, None]
            raws[name] = _raw_from_values(values, err, name)
    if extra:
        raise ValueError(
            f"extra data given for unknown outputs {sorted(extra)}; register them first with"
            " Lux.register_output(name, transform, error_model)."
        )
    return raws


def fit_scaler(raw: RawOutput, robust: bool) -> ShiftScale:
    """Per-column shift/scale from the observed entries of ``raw``."""
    return ShiftScale.fit(raw.values, weights=raw.observed.astype(float), robust=robust)


def scaled_block(raw: RawOutput, scaler: ShiftScale) -> DataBlock:
    """Scale ``raw`` into a :class:`DataBlock` (missing entries: value 0, variance 1)."""
    shift = np.asarray(scaler.shift)[None, :]
    scale = np.asarray(scaler.scale)[None, :]
    values = np.where(raw.observed, (raw.values - shift) / scale, 0.0)
    variance = np.where(raw.observed, raw.variance / scale**2, 1.0)
    return DataBlock(
        values=jnp.asarray(values, dtype=float),
        reported_var=jnp.asarray(variance, dtype=float),
        observed=jnp.asarray(raw.observed),
    )
