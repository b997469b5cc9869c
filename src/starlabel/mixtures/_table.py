"""Cluster membership for a catalogue table: column discovery, skipping, output.

This is the "normal programming" edge of the cluster model: it reads any table
astropy can read (CSV, FITS, VOTable, ECSV, …), finds the astrometry, error and
correlation columns by the Gaia archive's and VizieR's naming conventions, builds
each star's covariance, reports and skips rows it cannot use, runs
:func:`fit_cluster_membership`, and returns the input table with membership columns
added, plus a JSON-able summary of the fitted cluster and field.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..data import TABLE_FORMATS, read_table_file, write_table_file
from ._cluster import ClusterFit, fit_cluster_membership

__all__ = ["MembershipResult", "fit_membership_table", "read_table"]

logger = logging.getLogger(__name__)

# Column-name conventions, tried in order and case-insensitively.
_PM_CANDIDATES = (("pmra", "pmdec"), ("pmRA", "pmDE"), ("pm_ra", "pm_dec"))
_PARALLAX_CANDIDATES = ("parallax", "Plx", "plx")
_POSITION_CANDIDATES = (("ra", "dec"), ("RA_ICRS", "DE_ICRS"), ("RAdeg", "DEdeg"), ("RA", "DEC"))
_ERROR_PATTERNS = ("{}_error", "e_{}", "{}_err", "err_{}", "{}_e", "{}Err", "{}_sigma")
_CORR_PATTERNS = ("{a}_{b}_corr", "{a}{b}cor", "{a}{b}_corr", "{a}_{b}_cor", "{a}{b}corr")
_ADDED_COLUMNS = ("p_member", "p_member_err", "p_member_map", "member_status")


def read_table(source: Any) -> Any:
    """Read a catalogue into an ``astropy.table.Table`` (a Table is returned as is).

    Parameters
    ----------
    source : path-like or astropy Table
        CSV, ECSV, FITS, VOTable (``.vot``/``.xml``), HDF5 or Parquet, by suffix;
        other suffixes are left to astropy's format guessing.

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    FileNotFoundError
        When the path does not exist.
    ValueError
        When astropy cannot read the file (the message lists the known suffixes).
    """
    from astropy.table import Table

    if isinstance(source, Table):
        return source
    path = Path(os.fspath(source))
    if not path.exists():
        raise FileNotFoundError(f"table {str(path)!r} does not exist.")
    if path.suffix.lower() not in TABLE_FORMATS:
        return Table.read(path)  # leave other suffixes to astropy's format guessing
    try:
        return read_table_file(path)
    except Exception as error:  # astropy raises many types for unreadable files
        raise ValueError(
            f"could not read {str(path)!r} as a table ({error}); use one of the suffixes"
            f" {sorted(TABLE_FORMATS)} or pass an astropy Table."
        ) from error


def _lookup(table: Any, name: str) -> str | None:
    if name in table.colnames:
        return name
    lowered = {c.lower(): c for c in table.colnames}
    return lowered.get(name.lower())


def _require(table: Any, name: str, role: str) -> str:
    found = _lookup(table, name)
    if found is None:
        raise KeyError(f"{role} column {name!r} is not in the table; its columns are {list(table.colnames)}.")
    return found


def _find_error(table: Any, column: str) -> str | None:
    for pattern in _ERROR_PATTERNS:
        found = _lookup(table, pattern.format(column))
        if found is not None:
            return found
    return None


def _find_corr(table: Any, a: str, b: str) -> str | None:
    for first, second in ((a, b), (b, a)):
        for pattern in _CORR_PATTERNS:
            found = _lookup(table, pattern.format(a=first, b=second))
            if found is not None:
                return found
    return None


def _column(table: Any, name: str) -> np.ndarray:
    column = table[name]
    values = np.asarray(column.filled(np.nan) if hasattr(column, "filled") else column, dtype=float)
    return values


def _resolve_columns(
    table: Any,
    pm_columns: Sequence[str] | None,
    parallax_column: str | None,
    use_parallax: bool,
    error_columns: Sequence[str] | Mapping[str, str] | None,
    correlation_columns: Mapping[tuple[str, str], str] | None,
    position_columns: Sequence[str] | None,
) -> dict[str, Any]:
    """Map each role (value, error, correlation) to a column name, or raise listing columns."""
    if pm_columns is None:
        for pair in _PM_CANDIDATES:
            if all(_lookup(table, c) for c in pair):
                pm_columns = pair
                break
        else:
            raise KeyError(
                "no proper-motion columns found (tried"
                f" {[list(p) for p in _PM_CANDIDATES]}); pass pm_columns=(ra_col, dec_col)."
                f" The table's columns are {list(table.colnames)}."
            )
    if isinstance(pm_columns, str) or len(pm_columns) != 2:
        raise ValueError(f"`pm_columns` must name two columns (pmra, pmdec), got {pm_columns!r}.")
    values = [_require(table, c, "proper-motion") for c in pm_columns]
    if use_parallax:
        if parallax_column is None:
            found = [_lookup(table, c) for c in _PARALLAX_CANDIDATES]
            found = [c for c in found if c]
            if not found:
                raise KeyError(
                    f"no parallax column found (tried {list(_PARALLAX_CANDIDATES)}); pass"
                    " parallax_column=... or use_parallax=False. The table's columns are"
                    f" {list(table.colnames)}."
                )
            parallax_column = found[0]
        values.append(_require(table, parallax_column, "parallax"))

    if error_columns is None:
        errors = []
        for value in values:
            err = _find_error(table, value)
            if err is None:
                tried = [p.format(value) for p in _ERROR_PATTERNS]
                raise KeyError(
                    f"no uncertainty column found for {value!r} (tried {tried}); pass"
                    " error_columns=[...] in the order pmra, pmdec[, parallax]. The table's"
                    f" columns are {list(table.colnames)}."
                )
            errors.append(err)
    else:
        if isinstance(error_columns, Mapping):
            missing = [v for v in values if v not in error_columns]
            if missing:
                raise KeyError(
                    f"`error_columns` has no entry for {missing}; it maps value column -> error column."
                )
            given = [error_columns[v] for v in values]
        else:
            given = list(error_columns)
        if len(given) != len(values):
            raise ValueError(
                f"`error_columns` lists {len(given)} columns but {len(values)} are fitted ({values});"
                " give one error column per fitted column, in the same order."
            )
        errors = [_require(table, c, "uncertainty") for c in given]

    correlations: dict[tuple[int, int], str] = {}
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            name = None
            if correlation_columns is not None:
                name = correlation_columns.get((values[i], values[j])) or correlation_columns.get(
                    (values[j], values[i])
                )
                if name is not None:
                    name = _require(table, name, "correlation")
            else:
                name = _find_corr(table, values[i], values[j])
            if name is not None:
                correlations[i, j] = name

    positions = None
    if position_columns is not None:
        if isinstance(position_columns, str) or len(position_columns) != 2:
            raise ValueError(f"`position_columns` must name (ra, dec) in degrees, got {position_columns!r}.")
        positions = [_require(table, c, "position") for c in position_columns]
    return {"values": values, "errors": errors, "correlations": correlations, "positions": positions}


def _tangent_plane(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Gnomonic offsets (ξ, η) in degrees about the median position."""
    ra0, dec0 = np.deg2rad(np.median(ra)), np.deg2rad(np.median(dec))
    a, d = np.deg2rad(ra), np.deg2rad(dec)
    cos_c = np.sin(dec0) * np.sin(d) + np.cos(dec0) * np.cos(d) * np.cos(a - ra0)
    xi = np.cos(d) * np.sin(a - ra0) / cos_c
    eta = (np.cos(dec0) * np.sin(d) - np.sin(dec0) * np.cos(d) * np.cos(a - ra0)) / cos_c
    return np.rad2deg(np.stack([xi, eta], axis=1))


@dataclass(frozen=True)
class MembershipResult:
    """Membership probabilities for a catalogue, with the fitted cluster and field.

    Attributes
    ----------
    table : astropy.table.Table
        Every input row and column, plus ``p_member`` (posterior membership
        probability), ``p_member_err`` (its spread over the posterior of the cluster
        parameters), ``p_member_map`` (at the MAP) and ``member_status`` (``"fit"``,
        or ``"skipped: ..."`` naming the unusable columns; probabilities are NaN there).
    fit : ClusterFit
        The model fit on the usable rows.
    columns : dict
        Columns used: ``values``, ``errors``, ``correlations`` (pairs → column),
        ``positions``.
    n_skipped : int
        Rows left out for missing or invalid astrometry.
    source : str
        Where the table came from.
    elapsed_s : float
        Wall-clock seconds for the fit.
    parallax_zero_point : float
        Subtracted from the cluster parallax before inverting it to a distance.
    """

    table: Any
    fit: ClusterFit
    columns: dict[str, Any]
    n_skipped: int
    source: str
    elapsed_s: float
    parallax_zero_point: float = 0.0
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fitted cluster and field parameters and run facts, JSON-able."""
        fit = self.fit
        n, n_err = fit.n_members()
        used = self.table["member_status"] == "fit"
        p = np.asarray(self.table["p_member"])[used]
        return {
            "starlabel_version": __version__,
            "source": self.source,
            "columns": {
                "values": self.columns["values"],
                "errors": self.columns["errors"],
                "correlations": {f"{a}|{b}": c for (a, b), c in self._named_correlations().items()},
                "positions": self.columns["positions"],
            },
            "n_rows": len(self.table),
            "n_fitted": int(np.sum(used)),
            "n_skipped": self.n_skipped,
            "skipped_reasons": dict(self.skipped_reasons),
            "cluster": fit.parameters(self.parallax_zero_point),
            "parallax_zero_point_mas": self.parallax_zero_point,
            "n_members": {"expected": n, "std": n_err},
            "n_p_member_above_0.5": int(np.sum(p > 0.5)),
            "field": {
                "n_components": fit.n_field,
                "at_upper_limit": bool(len(fit.bic) > 1 and fit.n_field == max(fit.bic)),
                "bic": {str(k): v for k, v in fit.bic.items()},
                "weights": np.exp(
                    np.asarray(fit.field.log_weights) - _logsumexp(np.asarray(fit.field.log_weights))
                ).tolist(),
                "means": np.asarray(fit.field.means).tolist(),
                "covariances": np.asarray(fit.field.covs).tolist(),
                "dims": list(fit.dim_names),
            },
            "sampler": {
                "method": fit.method,
                "n_samples": int(fit.samples["weights"].shape[0]),
                "divergences": fit.divergences,
                "min_ess": fit.min_ess,
                "em_iterations": fit.em_iterations,
            },
            "elapsed_s": self.elapsed_s,
        }

    def _named_correlations(self) -> dict[tuple[str, str], str]:
        values = self.columns["values"]
        return {(values[i], values[j]): c for (i, j), c in self.columns["correlations"].items()}

    def summary(self) -> str:
        """A printable report: cluster parameters, member count, field K and BIC, skips."""
        fit = self.fit
        params = fit.parameters(self.parallax_zero_point)
        n, n_err = fit.n_members()
        units = {"pmra": "mas/yr", "pmdec": "mas/yr", "parallax": "mas"}
        lines = [f"cluster membership for {self.source}"]
        lines.append(
            f"  rows: {len(self.table)}, fitted: {len(self.table) - self.n_skipped}, skipped: {self.n_skipped}"
            + (
                f" ({', '.join(f'{k}: {v}' for k, v in self.skipped_reasons.items())})"
                if self.n_skipped
                else ""
            )
        )
        corr = self._named_correlations()
        lines.append(
            "  columns: "
            + ", ".join(self.columns["values"])
            + "; errors: "
            + ", ".join(self.columns["errors"])
            + "; correlations: "
            + (", ".join(corr.values()) if corr else "none found (assumed 0)")
        )
        for name, stats in params.items():
            dim = name.removeprefix("mean_")
            unit = units.get(
                dim, "mas/yr" if name == "pm_dispersion" else "mas" if name == "parallax_dispersion" else ""
            )
            unit = "kpc" if name == "distance_kpc" else "deg" if name.endswith("_deg") else unit
            lines.append(
                f"  {name:<20} {stats['median']:10.4f} +{stats['p84'] - stats['median']:.4f}"
                f" -{stats['median'] - stats['p16']:.4f} {unit}"
            )
        lines.append(f"  members (expected)   {n:10.1f} ± {n_err:.1f}")
        bic = ", ".join(f"K={k}: {v:.1f}" for k, v in fit.bic.items())
        lines.append(f"  field: K = {fit.n_field} Gaussians by BIC ({bic})")
        if len(fit.bic) > 1 and fit.n_field == max(fit.bic):
            lines.append("  (K is the largest tried: BIC may keep falling; raise n_field_max to check)")
        lines.append(
            f"  posterior: {fit.method}, {fit.samples['weights'].shape[0]} samples, {fit.divergences} divergences,"
            f" min ESS {fit.min_ess:.0f}; {self.elapsed_s:.1f} s"
        )
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as indented JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")
        return path

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the table (format by suffix, as :func:`read_table`); returns the path."""
        return write_table_file(self.table, path, hdf5_path="members", overwrite=overwrite)


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x))
    return top + math.log(float(np.sum(np.exp(x - top))))


def fit_membership_table(
    source: Any,
    *,
    pm_columns: Sequence[str] | None = None,
    parallax_column: str | None = None,
    use_parallax: bool = True,
    error_columns: Sequence[str] | Mapping[str, str] | None = None,
    correlation_columns: Mapping[tuple[str, str], str] | None = None,
    position_columns: Sequence[str] | None = None,
    n_field_max: int = 4,
    n_field: int | None = None,
    cluster_guess: Sequence[float] | None = None,
    nuts: bool = True,
    num_warmup: int = 400,
    num_samples: int = 400,
    parallax_zero_point: float = 0.0,
    seed: int = 0,
) -> MembershipResult:
    """Cluster membership probabilities for every star of a catalogue table.

    Finds the columns, builds each star's astrometric covariance from its errors and
    (when present) Gaia's correlation coefficients, skips and reports rows with
    missing or invalid astrometry, fits :func:`fit_cluster_membership`, and returns
    the table with ``p_member``, ``p_member_err``, ``p_member_map`` and
    ``member_status`` columns added.

    Column discovery (case-insensitive), unless the columns are given:

    * proper motions: ``pmra``/``pmdec`` (Gaia archive) or ``pmRA``/``pmDE`` (VizieR);
    * parallax: ``parallax`` or ``Plx``;
    * errors: ``<col>_error`` (archive) or ``e_<col>`` (VizieR), also ``<col>_err``;
    * correlations: ``<a>_<b>_corr`` (archive, e.g. ``pmra_pmdec_corr``) or
      ``<a><b>cor`` (VizieR, e.g. ``pmRApmDEcor``), in either order; absent ones are 0.

    Parameters
    ----------
    source : path-like or astropy Table
        The catalogue (see :func:`read_table` for formats).
    pm_columns : (str, str), optional
        Proper motion in RA (μ_α* = μ_α cos δ) and Dec, mas/yr.
    parallax_column : str, optional
        Parallax in mas (found automatically when ``None``).
    use_parallax : bool
        Fit parallax too (recommended); ``False`` uses proper motions only.
    error_columns : sequence or mapping of str, optional
        1-σ error columns in the order (pmra, pmdec[, parallax]), or a mapping value → error.
    correlation_columns : mapping of (str, str) to str, optional
        Correlation-coefficient columns keyed by pairs of value columns.
    position_columns : (str, str), optional
        RA and Dec in degrees; when given, the cluster is also a Gaussian on the sky.
    n_field_max, n_field, cluster_guess, nuts, num_warmup, num_samples, seed
        Passed to :func:`fit_cluster_membership`.
    parallax_zero_point : float
        Subtracted from the cluster parallax (mas) before inverting it to a distance
        (Gaia DR3: about −0.017 mas; default 0, no correction).

    Returns
    -------
    MembershipResult

    Raises
    ------
    KeyError
        When a column cannot be found (the message lists the table's columns).
    ValueError
        When the table already has membership columns, or too few usable rows remain.

    Examples
    --------
    >>> result = fit_membership_table("field.csv", pm_columns=("pmRA", "pmDE"),
    ...                               parallax_column="Plx")  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    >>> result.write("members.csv"); result.to_json("members.json")  # doctest: +SKIP
    """
    start = time.perf_counter()
    table = read_table(source)
    source_name = str(source) if not hasattr(source, "colnames") else "<table>"
    clash = [c for c in _ADDED_COLUMNS if c in table.colnames]
    if clash:
        raise ValueError(
            f"the table already has column(s) {clash}, which this fit adds; remove or rename them"
            " (e.g. table.remove_columns([...])) before fitting."
        )
    columns = _resolve_columns(
        table, pm_columns, parallax_column, use_parallax, error_columns, correlation_columns, position_columns
    )
    values = np.stack([_column(table, c) for c in columns["values"]], axis=1)
    errors = np.stack([_column(table, c) for c in columns["errors"]], axis=1)
    dims = values.shape[1]
    corr = np.broadcast_to(np.eye(dims), (len(table), dims, dims)).copy()
    for (i, j), name in columns["correlations"].items():
        corr[:, i, j] = corr[:, j, i] = _column(table, name)

    # Name, for every unusable row, each column that makes it so, before skipping it.
    checks: list[tuple[str, np.ndarray]] = []
    for k, name in enumerate(columns["values"]):
        checks.append((name, ~np.isfinite(values[:, k])))
    for k, name in enumerate(columns["errors"]):
        checks.append((name, ~(errors[:, k] > 0)))  # NaN, zero or negative
    for (i, j), name in columns["correlations"].items():
        checks.append((name, ~(np.abs(corr[:, i, j]) < 1)))
    if columns["positions"] is not None:
        ra, dec = (_column(table, c) for c in columns["positions"])
        checks.append((columns["positions"][0], ~np.isfinite(ra)))
        checks.append((columns["positions"][1], ~np.isfinite(dec)))
    bad_matrix = np.stack([bad for _, bad in checks], axis=1)
    skipped = np.any(bad_matrix, axis=1)
    ok = ~skipped
    reasons = np.full(len(table), "", dtype=object)
    for row in np.flatnonzero(skipped):
        reasons[row] = "missing or invalid " + ", ".join(
            n for (n, _), b in zip(checks, bad_matrix[row], strict=True) if b
        )
    distinct, counts_arr = np.unique(reasons[skipped].astype(str), return_counts=True)
    counts = {str(r): int(c) for r, c in zip(distinct, counts_arr, strict=True)}
    if skipped.any():
        logger.warning(
            "fit_membership_table: skipping %d of %d rows (%s).",
            int(skipped.sum()),
            len(table),
            "; ".join(f"{k}: {v}" for k, v in counts.items()),
        )
    positions = None

    sigma = np.where(ok[:, None], errors, 1.0)
    cov = corr * sigma[:, :, None] * sigma[:, None, :]
    if columns["positions"] is not None:
        positions = _tangent_plane(ra[ok], dec[ok])
    fit = fit_cluster_membership(
        values[ok],
        cov[ok],
        positions=positions,
        dim_names=("pmra", "pmdec", "parallax")[:dims],
        n_field_max=n_field_max,
        n_field=n_field,
        cluster_guess=cluster_guess,
        nuts=nuts,
        num_warmup=num_warmup,
        num_samples=num_samples,
        seed=seed,
    )

    out = table.copy()
    for name, fitted in (
        ("p_member", fit.p_member),
        ("p_member_err", fit.p_member_err),
        ("p_member_map", fit.p_member_map),
    ):
        column = np.full(len(table), np.nan)
        column[ok] = fitted
        out[name] = column
    status = np.where(ok, "fit", np.char.add("skipped: ", reasons.astype(str)))
    out["member_status"] = status
    out.meta["membership"] = "starlabel.mixtures.fit_membership_table"
    return MembershipResult(
        table=out,
        fit=fit,
        columns=columns,
        n_skipped=int(skipped.sum()),
        source=source_name,
        elapsed_s=time.perf_counter() - start,
        parallax_zero_point=float(parallax_zero_point),
        skipped_reasons=counts,
    )
