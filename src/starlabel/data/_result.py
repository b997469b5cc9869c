"""Per-star inference results and their tables (CSV, ECSV, FITS, HDF5, Parquet).

Every table carries its provenance (:func:`result_provenance`) and the units of its
label columns (:mod:`starlabel.data._units`), in the form each format allows (see
:func:`starlabel.data._tables.write_table_file`).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .._internal import check_label_names
from .._version import __version__
from ._ecsv import ecsv_csv_text
from ._tables import TABLE_FORMATS, read_table_file, table_column, write_table_file, write_text_file
from ._units import DESCRIPTIONS, column_units

__all__ = ["Flag", "InferenceResult", "PROVENANCE_KEY", "RESULT_SUFFIXES", "read_result", "result_provenance"]

PROVENANCE_KEY = "provenance"
"""``InferenceResult.meta`` / table-metadata key of the provenance record."""

_MODEL_KEYS = ("kind", "path", "sha256", "starlabel_version", "training_set")
"""What a provenance record says about the model (see :func:`result_provenance`)."""


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def result_provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance record of a result with metadata ``meta``, as written to its tables.

    ``{"starlabel_version": …, "model": {"kind", "path", "sha256", "starlabel_version",
    "training_set"}, "test_step": {…}}``: the starlabel version writing the table; what
    is known of the model (the pipeline knows the model file and its SHA-256, and the
    training-set checksum the file records; a result made in Python knows the kind);
    and every test-step option, from the model's own record (``meta``: estimator,
    uncertainty, prior, temperature, …) and the options it was called with.

    Parameters
    ----------
    meta : mapping
        ``InferenceResult.meta``; an earlier record under ``"provenance"`` is extended.

    Returns
    -------
    dict
        JSON-able.
    """
    earlier = meta.get(PROVENANCE_KEY)
    record: dict[str, Any] = dict(earlier) if isinstance(earlier, Mapping) else {}
    model = dict(record.get("model") or {})
    if "model" in meta and isinstance(meta["model"], str):
        model.setdefault("kind", meta["model"])
    test_step = {
        str(k): v
        for k, v in meta.items()
        if k not in (PROVENANCE_KEY, "label_names", "model") and _jsonable(v)
    }
    test_step.update(record.get("test_step") or {})
    record.update(
        starlabel_version=record.get("starlabel_version", __version__),
        model={k: model.get(k) for k in _MODEL_KEYS} | model,
        test_step=test_step,
    )
    return record


class Flag(enum.IntFlag):
    """Per-star quality flags, combined bitwise in the ``flags`` column.

    A star with ``flags == 0`` passed every check the model ran.
    """

    NOT_CONVERGED = 1
    """The optimiser stopped on its iteration cap, not on its tolerance."""
    HIT_BOUND = 2
    """At least one label finished on a user-given bound."""
    OUTSIDE_TRAINING = 4
    """Labels lie outside the training set's label distribution (extrapolation)."""
    FEW_PIXELS = 8
    """Too few unmasked pixels to constrain the labels."""
    BAD_COVARIANCE = 16
    """The Fisher/Hessian matrix was not positive definite; errors are NaN."""
    MULTIMODAL = 32
    """The posterior has a separated secondary mode."""
    POOR_FIT = 64
    """Reduced χ² far above 1: the model does not describe this spectrum."""
    UNCONSTRAINED = 128
    """A label's uncertainty is wider than the training set's range of that label: the
    spectrum does not constrain it (or the error computation broke down). Treat the
    label as unmeasured; the reported value is mostly the prior's or the start's."""
    BINARY = 256
    """``--binary``: the two-star model fits far better than a single star would (its
    ``binary_score`` beyond the threshold learned on the training set); the labels are
    the primary's from the two-star fit. Not a quality problem, a classification."""

    @classmethod
    def describe(cls, value: int) -> str:
        """Human-readable names of the bits set in ``value`` (``"ok"`` for 0)."""
        names = [f.name for f in cls if value & f.value and f.name]
        return "|".join(names) if names else "ok"


# Result tables are written in every table format except VOTable (no round trip of
# the covariance columns' metadata there).
RESULT_SUFFIXES: dict[str, str] = {k: v for k, v in TABLE_FORMATS.items() if v != "votable"}


@dataclass(frozen=True, init=False)
class InferenceResult:
    """Labels inferred for a set of stars, with uncertainties, fit quality and flags.

    Attributes
    ----------
    ids : ndarray of str, shape (stars,)
        Star identifiers, matching the input dataset.
    label_names : tuple of str
        Names of the label columns.
    labels : ndarray, shape (stars, labels)
        Point estimates in the labels' own units.
    cov : ndarray, shape (stars, labels, labels), optional
        Label covariance matrices (NaN where unavailable).
    chi2 : ndarray, shape (stars,)
        χ² of the best fit over unmasked pixels, with the model's scatter in the noise.
    dof : ndarray, shape (stars,)
        Degrees of freedom: unmasked pixels minus fitted parameters.
    flags : ndarray of int, shape (stars,)
        Bitwise :class:`Flag` values; 0 means no problem found.
    extra : mapping of str to ndarray
        Further per-star columns a method reports (e.g. ``n_iter``, ``outlier_prob``).
    meta : mapping
        Run information (model kind, options, library version), written to table headers.
    """

    ids: np.ndarray
    label_names: tuple[str, ...]
    labels: np.ndarray
    cov: np.ndarray | None
    chi2: np.ndarray
    dof: np.ndarray
    flags: np.ndarray
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    # A hand-written __init__ (not the dataclass one) because construction accepts
    # array-likes (lists, JAX arrays) while the attributes are always numpy arrays of
    # the documented dtype: the fields are typed as what they hold, the arguments as
    # what they accept. The signature is the one the dataclass would generate.
    def __init__(
        self,
        ids: ArrayLike,
        label_names: Sequence[str],
        labels: ArrayLike,
        cov: ArrayLike | None,
        chi2: ArrayLike,
        dof: ArrayLike,
        flags: ArrayLike,
        extra: Mapping[str, ArrayLike] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=float)
        n_stars = labels.shape[0]
        if labels.ndim != 2:
            raise ValueError(f"InferenceResult.labels must be (stars, labels), got shape {labels.shape}.")
        setter = object.__setattr__
        setter(self, "label_names", check_label_names(label_names, labels.shape[1]))
        setter(self, "labels", labels)
        setter(self, "ids", np.asarray(ids).astype(str))
        setter(self, "chi2", np.asarray(chi2, dtype=float))
        setter(self, "dof", np.asarray(dof, dtype=float))
        setter(self, "flags", np.asarray(flags, dtype=np.int64))
        setter(self, "meta", {} if meta is None else meta)
        for name in ("ids", "chi2", "dof", "flags"):
            if getattr(self, name).shape != (n_stars,):
                raise ValueError(
                    f"InferenceResult.{name} has shape {getattr(self, name).shape}; expected"
                    f" ({n_stars},) to match labels {labels.shape}."
                )
        if cov is not None:
            cov = np.asarray(cov, dtype=float)
            k = labels.shape[1]
            if cov.shape != (n_stars, k, k):
                raise ValueError(f"InferenceResult.cov has shape {cov.shape}; expected {(n_stars, k, k)}.")
        setter(self, "cov", cov)
        extra = {} if extra is None else extra
        setter(self, "extra", {key: np.asarray(value) for key, value in extra.items()})
        for key, value in self.extra.items():
            if np.shape(value)[:1] != (n_stars,):
                raise ValueError(
                    f"extra column {key!r} has shape {np.shape(value)}; expected ({n_stars}, …)."
                )

    @property
    def n_stars(self) -> int:
        """Number of stars."""
        return self.labels.shape[0]

    @property
    def label_err(self) -> np.ndarray:
        """1-σ label uncertainties, sqrt(diag(cov)); NaN without a covariance."""
        if self.cov is None:
            return np.full_like(self.labels, np.nan)
        diag = np.diagonal(self.cov, axis1=1, axis2=2)
        with np.errstate(invalid="ignore"):
            return np.where(diag >= 0, np.sqrt(np.abs(diag)), np.nan)

    @property
    def reduced_chi2(self) -> np.ndarray:
        """χ² per degree of freedom; NaN where ``dof <= 0``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.dof > 0, self.chi2 / self.dof, np.nan)

    def label(self, name: str) -> np.ndarray:
        """Column of label ``name``, shape (stars,)."""
        if name not in self.label_names:
            raise KeyError(f"unknown label {name!r}; results have {list(self.label_names)}.")
        return self.labels[:, self.label_names.index(name)]

    def to_table(self) -> Any:
        """As an ``astropy.table.Table``: id, labels, ``<label>_err``, χ², flags, extras.

        Columns: ``id``, then for each label ``<label>``, ``<label>_err`` and, when
        the result has them, ``<label>_err_stat`` (the statistical part of calibrated
        errors) and ``<label>_bias`` (the bias correction subtracted), then ``chi2``,
        ``dof``, ``rchi2`` (reduced χ²), ``flags`` and any other extra columns. Covariances are kept as ``cov_<a>_<b>`` for a < b when present.
        Label columns (and their error columns) carry units where the label is recognised
        (:func:`~starlabel.data._units.label_unit`); ``meta`` holds the scalar metadata,
        ``label_names`` and the ``provenance`` record (:func:`result_provenance`).
        """
        from astropy.table import Table

        table = Table(meta=self._table_meta())
        for name, column in self._columns().items():
            table[name] = column
        for column, unit in column_units(table.colnames, self.label_names).items():
            table_column(table, column).unit = unit
        for name in self.label_names:
            if name.lower() in DESCRIPTIONS:
                table_column(table, name).description = DESCRIPTIONS[name.lower()]
        return table

    def _table_meta(self) -> dict[str, Any]:
        """The table's metadata (see :meth:`to_table`)."""
        meta: dict[str, Any] = {
            str(k): v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool))
        }
        meta["label_names"] = ",".join(self.label_names)
        meta[PROVENANCE_KEY] = result_provenance(self.meta)
        return meta

    def _csv_text(self) -> str | None:
        """The CSV file :meth:`write` writes, built without astropy; None where astropy must."""
        columns = self._columns()
        descriptions = {n: DESCRIPTIONS[n.lower()] for n in self.label_names if n.lower() in DESCRIPTIONS}
        units = column_units(list(columns), self.label_names)
        return ecsv_csv_text(columns, units, descriptions, self._table_meta())

    def _columns(self) -> dict[str, np.ndarray]:
        """The table's columns in order (see :meth:`to_table`)."""
        columns: dict[str, np.ndarray] = {"id": self.ids}
        errors = self.label_err
        placed = set()
        for i, name in enumerate(self.label_names):
            columns[name] = self.labels[:, i]
            columns[f"{name}_err"] = errors[:, i]
            for beside in (f"{name}_err_stat", f"{name}_bias"):
                if beside in self.extra:
                    columns[beside] = np.asarray(self.extra[beside])
                    placed.add(beside)
        if self.cov is not None:
            for i, a in enumerate(self.label_names):
                for j in range(i + 1, len(self.label_names)):
                    columns[f"cov_{a}_{self.label_names[j]}"] = self.cov[:, i, j]
        columns["chi2"] = self.chi2
        columns["dof"] = self.dof
        columns["rchi2"] = self.reduced_chi2
        columns["flags"] = self.flags
        for key, value in self.extra.items():
            if key not in placed:
                columns[key] = np.asarray(value)
        return columns

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the table to CSV, ECSV, FITS, HDF5 (``.h5``) or Parquet, chosen by suffix.

        Every format keeps the units of the label columns and the metadata, including
        the provenance record (see :func:`starlabel.data._tables.write_table_file`).
        """
        path = Path(path)
        if path.suffix.lower() not in RESULT_SUFFIXES:
            raise ValueError(
                f"cannot tell the table format of {str(path)!r} from its suffix; use one of"
                f" {sorted(RESULT_SUFFIXES)}."
            )
        if path.suffix.lower() == ".csv" and (text := self._csv_text()) is not None:
            # The same bytes as the astropy table's CSV, without importing astropy (module _ecsv).
            return write_text_file(text, path, overwrite=overwrite)
        return write_table_file(self.to_table(), path, hdf5_path="results", overwrite=overwrite)

    def concatenate_with(self, others: Sequence[InferenceResult]) -> InferenceResult:
        """Stack this result with ``others`` (same labels) along stars."""
        parts = [self, *others]
        for part in parts[1:]:
            if part.label_names != self.label_names:
                raise ValueError(
                    f"cannot stack results with labels {part.label_names} and {self.label_names}."
                )
        has_cov = all(p.cov is not None for p in parts)
        keys = set.intersection(*(set(p.extra) for p in parts))
        return InferenceResult(
            ids=np.concatenate([p.ids for p in parts]),
            label_names=self.label_names,
            labels=np.concatenate([p.labels for p in parts]),
            cov=np.concatenate([p.cov for p in parts if p.cov is not None]) if has_cov else None,
            chi2=np.concatenate([p.chi2 for p in parts]),
            dof=np.concatenate([p.dof for p in parts]),
            flags=np.concatenate([p.flags for p in parts]),
            extra={k: np.concatenate([np.asarray(p.extra[k]) for p in parts]) for k in sorted(keys)},
            meta=self.meta,
        )


def read_result(path: str | os.PathLike[str]) -> InferenceResult:
    """Read a results table written by :meth:`InferenceResult.write`.

    Label names come from the table's ``label_names`` metadata when present, otherwise
    from columns that have a matching ``<name>_err`` column. Off-diagonal covariances
    are restored when ``cov_<a>_<b>`` columns exist; otherwise only the diagonal.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist.")
    table = read_table_file(path, hdf5_path="results")
    if "id" not in table.colnames:
        raise KeyError(f"{str(path)!r} has no 'id' column; columns: {table.colnames}.")
    names_meta = table.meta.get("label_names") or table.meta.get("LABEL_NAMES")
    if names_meta:
        names = tuple(str(names_meta).split(","))
    else:
        names = tuple(c for c in table.colnames if f"{c}_err" in table.colnames)
    if not names:
        raise KeyError(f"{str(path)!r} has no label columns with matching '<label>_err' columns.")
    labels = np.stack([np.asarray(table[n], dtype=float) for n in names], axis=1)
    errors = np.stack([np.asarray(table[f"{n}_err"], dtype=float) for n in names], axis=1)
    cov = np.zeros((len(table), len(names), len(names)))
    for i, a in enumerate(names):
        cov[:, i, i] = errors[:, i] ** 2
        for j in range(i + 1, len(names)):
            column = f"cov_{a}_{names[j]}"
            if column in table.colnames:
                cov[:, i, j] = cov[:, j, i] = np.asarray(table[column], dtype=float)
    known = {"id", "chi2", "dof", "rchi2", "flags", *names, *(f"{n}_err" for n in names)}
    extra = {c: np.asarray(table[c]) for c in table.colnames if c not in known and not c.startswith("cov_")}
    n = len(table)
    return InferenceResult(
        ids=np.asarray(table["id"]).astype(str),
        label_names=names,
        labels=labels,
        cov=cov,
        chi2=np.asarray(table["chi2"], dtype=float) if "chi2" in table.colnames else np.full(n, np.nan),
        dof=np.asarray(table["dof"], dtype=float) if "dof" in table.colnames else np.full(n, np.nan),
        flags=np.asarray(table["flags"]) if "flags" in table.colnames else np.zeros(n, dtype=int),
        extra=extra,
        meta={
            k: v
            for k, v in table.meta.items()
            if isinstance(v, (str, int, float, bool)) or (k == PROVENANCE_KEY and isinstance(v, Mapping))
        },
    )
