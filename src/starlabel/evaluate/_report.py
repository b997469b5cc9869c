"""A self-contained HTML report of an inference run (or any results table).

The page holds the run summary and errors, label distributions, the Kiel diagram,
quality flags, the χ² distribution and — when reference labels exist — the metrics
table with one-to-one and residual plots, and the calibration of the errors
(z = (inferred − reference)/σ against a unit Gaussian). Images are embedded as base64 PNG data
URIs and there is no script or stylesheet to fetch, so the single file works offline
and can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .._internal import atomic_path
from ..data import (
    DATASET_SUFFIXES,
    MANIFEST_NAME,
    RESULT_SUFFIXES,
    Flag,
    InferenceResult,
    read_dataset,
    read_result,
    read_run,
    read_run_counts,
)
from ._metrics import label_metrics
from ._plots import find_kiel_labels, plot_kiel, plot_one_to_one, plot_residuals
from ._uncertainty_plots import plot_zscore_histograms, zscore_summary

__all__ = ["write_report"]

_MAX_POINTS = 20_000
"""Scatter plots show at most this many stars (a fixed random subset): beyond it a
plot only gets slower to draw, not more informative. Histograms and metrics use all."""

_REFERENCE_PREFIX = "ref_"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 100%; display: block; margin: .6em 0; }
.note { color: #666; font-size: .9em; }
"""


def _locate(source: Path) -> tuple[Path | None, Path]:
    """(run directory or None, results table) for a run directory or a results file."""
    if source.is_dir():
        output = Path(read_run(source).output)
        if not output.exists():
            raise FileNotFoundError(
                f"run {str(source)!r} has no merged output {str(output)!r} yet; finish or resume"
                " the run first (rerun the same infer command)."
            )
        return source, output
    if not source.exists():
        raise FileNotFoundError(f"{str(source)!r} does not exist; pass a run directory or a results table.")
    if source.suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(
            f"cannot report on {str(source)!r}: expected a run directory or a results table with"
            f" suffix {sorted(RESULT_SUFFIXES)}."
        )
    run_dir = source.with_name(source.name + ".run")
    return (run_dir if (run_dir / MANIFEST_NAME).exists() else None), source


def _reference(
    result: InferenceResult, truth: Path | None, names: Sequence[str]
) -> tuple[np.ndarray | None, str]:
    """Reference labels aligned with ``result`` (NaN where unknown) and where they came from."""
    if truth is None:
        columns = [f"{_REFERENCE_PREFIX}{n}" for n in names]
        if all(c in result.extra for c in columns):
            reference = np.stack([np.asarray(result.extra[c], dtype=float) for c in columns], axis=1)
            if np.isfinite(reference).any():
                return reference, "the input files (ref_<label> columns)"
        return None, ""
    if not truth.exists():
        raise FileNotFoundError(f"truth file {str(truth)!r} does not exist.")
    suffix = truth.suffix.lower()
    if suffix in DATASET_SUFFIXES:
        # Ask for the labels by name: a file with one array per label declares none.
        dataset = read_dataset(truth, labels=tuple(names))
        ids, available = dataset.ids, dataset.label_names
        table = dataset.labels if dataset.labels is not None else np.empty((len(ids), 0))
    elif suffix in RESULT_SUFFIXES:
        other = read_result(truth)
        ids, available, table = other.ids, other.label_names, other.labels
    else:
        raise ValueError(
            f"truth {str(truth)!r}: expected a dataset ({sorted(DATASET_SUFFIXES)}) or a results"
            f" table ({sorted(RESULT_SUFFIXES)})."
        )
    missing = [n for n in names if n not in available]
    if missing:
        raise KeyError(f"truth file {str(truth)!r} lacks labels {missing}; it has {list(available)}.")
    row_of = {star: i for i, star in enumerate(np.asarray(ids).astype(str))}
    rows = np.array([row_of.get(star, -1) for star in result.ids])
    if not np.any(rows >= 0):
        raise ValueError(f"no star id of the results occurs in truth file {str(truth)!r}; ids must match.")
    picked = table[:, [list(available).index(n) for n in names]]
    reference = np.where((rows >= 0)[:, None], picked[np.maximum(rows, 0)], np.nan)
    return reference, f"{truth.name} ({int(np.sum(rows >= 0))} matched ids)"


def _image(render: Callable[[Path], Path], folder: Path, name: str) -> str:
    path = render(folder / f"{name}.png")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _histograms(values: np.ndarray, names: Sequence[str], xlabel: str, path: Path) -> Path:
    fig = Figure(figsize=(3.6 * len(names), 3.0), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for k, (ax, name) in enumerate(zip(axes, names, strict=True)):
        column = values[:, k][np.isfinite(values[:, k])]
        if column.size:
            ax.hist(column, bins=60, color="0.3")
        ax.set(xlabel=f"{xlabel}{name}", ylabel="stars")
    return _save(fig, path)


def _flag_counts(flags: np.ndarray) -> list[tuple[str, int]]:
    rows = [("ok (no flag)", int(np.sum(flags == 0)))]
    rows += [(str(flag.name), int(np.sum((flags & flag.value) != 0))) for flag in Flag]
    return rows


def _flags_plot(counts: list[tuple[str, int]], path: Path) -> Path:
    fig = Figure(figsize=(7.0, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.barh([name for name, _ in counts][::-1], [n for _, n in counts][::-1], color="0.3")
    ax.set(xlabel="stars")
    return _save(fig, path)


def _chi2_plot(rchi2: np.ndarray, path: Path) -> Path:
    fig = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = fig.subplots()
    good = rchi2[np.isfinite(rchi2) & (rchi2 > 0)]
    if good.size:
        bins = np.geomspace(max(good.min(), 1e-3), max(good.max(), 1e-2), 60)
        ax.hist(good, bins=bins, color="0.3")
        ax.set_xscale("log")
        ax.axvline(float(np.median(good)), color="tab:red", lw=1, label=f"median {np.median(good):.3g}")
        ax.axvline(1.0, color="tab:green", lw=1, label="χ²/dof = 1")
        ax.legend(loc="upper right", fontsize=8)
    ax.set(xlabel="reduced χ² (χ²/dof)", ylabel="stars")
    return _save(fig, path)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    def cell(tag: str, value: Any, i: int) -> str:
        cls = ' class="l"' if i < left else ""
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", v, i) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_section(run_dir: Path | None) -> list[str]:
    if run_dir is None:
        return []
    parts = ["<h2>Run</h2>"]
    manifest = read_run(run_dir)
    model = manifest.model
    rows: list[tuple[str, Any]] = [
        ("run directory", str(run_dir)),
        ("model", f"{model.get('kind')} — {model.get('path')} (sha256 {str(model.get('sha256'))[:12]}…)"),
        ("model labels", ", ".join(model.get("label_names") or [])),
        ("input files", len(manifest.inputs)),
        ("options", json.dumps(dict(manifest.options))),
        ("engine (latest attempt)", json.dumps(dict(manifest.engine))),
        ("starlabel", manifest.library_version),
    ]
    counts = read_run_counts(run_dir)
    if counts is not None:
        rows += [
            ("spectra in inputs", counts.n_spectra),
            ("spectra in output", counts.n_written),
            ("failed spectra", counts.n_failed),
            ("bad input files", counts.n_bad_inputs),
            (
                "latest attempt",
                f"{counts.n_processed} spectra in {counts.seconds:.1f} s"
                f" ({counts.spectra_per_second:.0f} spectra/s);"
                f" {counts.n_resumed} resumed from earlier attempts",
            ),
        ]
    parts.append(_table(("", "value"), rows, left=2))
    errors_path = run_dir / "errors.csv"
    if errors_path.exists():
        with open(errors_path, newline="") as handle:
            errors = list(csv.DictReader(handle))
        parts.append(f"<h2>Errors ({len(errors)})</h2>")
        if errors:
            shown = errors[:100]
            parts.append(
                _table(
                    ("scope", "input", "chunk", "rows", "spectra", "error"),
                    [
                        (e["scope"], e["input"], e["chunk"], e["rows"], e["n_spectra"], e["error"])
                        for e in shown
                    ],
                    left=6,
                )
            )
            if len(errors) > len(shown):
                parts.append(
                    f'<p class="note">First {len(shown)} of {len(errors)}; all are in {html.escape(str(errors_path))}.</p>'
                )
        else:
            parts.append("<p>No bad files and no failed chunks.</p>")
    return parts


def write_report(
    run_dir_or_results: str | os.PathLike[str],
    *,
    truth: str | os.PathLike[str] | None = None,
    labels: Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a single-file HTML report of an inference run or a results table.

    Sections: run summary and errors report (for run directories), label
    distributions and uncertainties, Kiel diagram (when Teff and logg are labels),
    quality flags, reduced-χ² distribution, and, when reference labels are available,
    a metrics table (RMSE, bias, robust scatter; see
    :func:`starlabel.evaluate.label_metrics`) with one-to-one and residual plots.

    Parameters
    ----------
    run_dir_or_results : path-like
        A run directory (``OUT.run`` written by :func:`starlabel.pipeline.run_inference`)
        or a results table (``.csv``, ``.fits``, ``.h5``, ``.parquet``).
    truth : path-like, optional
        Reference labels, matched to the results by star id: a dataset file
        (``.npz``/``.h5``) or a results table. Default: the ``ref_<label>`` columns a
        run with ``labels_from_input=True`` wrote, if any.
    labels : sequence of str, optional
        Labels to show, in order (default: all labels of the results).
    out : path-like, optional
        HTML file to write. Default: ``report.html`` in the run directory, or the
        results path with suffix ``.html``.

    Returns
    -------
    pathlib.Path
        The HTML file. It embeds its images and needs no network.

    Raises
    ------
    FileNotFoundError
        If the run, its output, or the truth file does not exist.
    KeyError
        If a requested label is not in the results or the truth file.
    ValueError
        If no result id matches the truth file, or a suffix is not understood.

    Examples
    --------
    >>> write_report("labels.parquet.run")  # doctest: +SKIP
    PosixPath('labels.parquet.run/report.html')
    """
    run_dir, results_path = _locate(Path(run_dir_or_results))
    result = read_result(results_path)
    names = tuple(labels) if labels is not None else result.label_names
    unknown = [n for n in names if n not in result.label_names]
    if unknown:
        raise KeyError(
            f"labels {unknown} are not in {str(results_path)!r}; it has {list(result.label_names)}."
        )
    if not names:
        raise ValueError("`labels` is empty; name at least one label to report on.")
    columns = [result.label_names.index(n) for n in names]
    predicted = result.labels[:, columns]
    errors = result.label_err[:, columns]
    reference, reference_source = _reference(result, Path(truth) if truth is not None else None, names)
    if out is None:
        out = (run_dir / "report.html") if run_dir is not None else results_path.with_suffix(".html")
    out = Path(out)

    rng = np.random.default_rng(0)
    subset = (
        np.sort(rng.choice(result.n_stars, _MAX_POINTS, replace=False))
        if result.n_stars > _MAX_POINTS
        else slice(None)
    )
    subset_note = (
        f'<p class="note">Scatter plots show a random {_MAX_POINTS:,} of {result.n_stars:,} stars;'
        " histograms and metrics use all.</p>"
        if result.n_stars > _MAX_POINTS
        else ""
    )
    title = f"starlabel report — {results_path.name}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{result.n_stars:,} stars, labels {html.escape(', '.join(names))}.</p>",
    ]
    body += _run_section(run_dir)

    with tempfile.TemporaryDirectory(prefix="starlabel-report-") as scratch:
        folder = Path(scratch)
        body.append("<h2>Label distributions</h2>")
        body.append(_image(lambda p: _histograms(predicted, names, "inferred ", p), folder, "labels"))
        body.append(_image(lambda p: _histograms(errors, names, "1σ error of ", p), folder, "errors"))
        stats = _label_stats(predicted, errors, names)
        body.append(_table(("label", "min", "16%", "median", "84%", "max", "median 1σ error"), stats))
        kiel = find_kiel_labels(names)
        if kiel is not None:
            teff_name, logg_name, metal_name = kiel
            teff = predicted[subset, names.index(teff_name)]
            logg = predicted[subset, names.index(logg_name)]
            metal = predicted[subset, names.index(metal_name)] if metal_name is not None else None
            body.append("<h2>Kiel diagram</h2>" + subset_note)
            body.append(
                _image(
                    lambda p: plot_kiel(teff, logg, p, metallicity=metal, metallicity_name=metal_name or ""),
                    folder,
                    "kiel",
                )
            )
        counts = _flag_counts(result.flags)
        body.append("<h2>Quality flags</h2>")
        body.append(_image(lambda p: _flags_plot(counts, p), folder, "flags"))
        body.append(
            _table(
                ("flag", "stars", "fraction"),
                [(name, n, f"{n / max(result.n_stars, 1):.2%}") for name, n in counts],
            )
        )
        body.append("<h2>χ² distribution</h2>")
        rchi2 = result.reduced_chi2
        body.append(_image(lambda p: _chi2_plot(rchi2, p), folder, "chi2"))
        finite = rchi2[np.isfinite(rchi2)]
        if finite.size:
            body.append(
                _table(
                    ("statistic", "value"),
                    [
                        ("median χ²/dof", float(np.median(finite))),
                        ("fraction χ²/dof > 2", f"{np.mean(finite > 2):.2%}"),
                        ("stars without finite χ²/dof", int(rchi2.size - finite.size)),
                    ],
                )
            )
        if reference is not None:
            body.append("<h2>Comparison with reference labels</h2>")
            body.append(f"<p>Reference labels from {html.escape(reference_source)}.</p>" + subset_note)
            metrics = label_metrics(predicted, reference, names)
            keys = ("n", "rmse", "bias", "mae", "robust_scatter", "scaled_rmse")
            body.append(
                _table(("label", *keys), [(n, *(getattr(metrics[n], k) for k in keys)) for n in names])
            )
            shown_pred, shown_ref, shown_err = predicted[subset], reference[subset], errors[subset]
            body.append(
                _image(
                    lambda p: plot_one_to_one(shown_pred, shown_ref, names, p, errors=shown_err),
                    folder,
                    "one_to_one",
                )
            )
            body.append(
                _image(lambda p: plot_residuals(shown_pred, shown_ref, names, p), folder, "residuals")
            )
            body += _calibration_section(predicted, errors, reference, names, folder)
        else:
            body.append(
                '<p class="note">No reference labels: pass truth=… (CLI: --truth) or run inference'
                " with labels_from_input=True for one-to-one plots and metrics.</p>"
            )

    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def _calibration_section(
    predicted: np.ndarray, errors: np.ndarray, reference: np.ndarray, names: Sequence[str], folder: Path
) -> list[str]:
    """Calibration of the errors: z = (inferred − reference)/σ per label against N(0, 1)."""
    parts = ["<h2>Calibration of the errors</h2>"]
    # σ = 0 gives z = ±inf and a missing reference NaN: both are left out of the statistics.
    with np.errstate(divide="ignore", invalid="ignore"):
        finite = np.isfinite((predicted - reference) / errors)
        usable = [k for k in range(len(names)) if finite[:, k].any()]
        if not usable:
            return [*parts, '<p class="note">No star has a finite error and a reference label.</p>']
        shown = [names[k] for k in usable]
        arrays = (predicted[:, usable], errors[:, usable], reference[:, usable])
        stats = zscore_summary(*arrays)
        image = _image(lambda p: plot_zscore_histograms(*arrays, shown, p), folder, "zscores")
    parts.append(
        "<p>z = (inferred − reference) / σ, with σ the <code>&lt;label&gt;_err</code> column"
        " (reference-label errors not included). Calibrated Gaussian errors give std(z) = 1"
        " and 68.3% of stars within |z| &lt; 1 (95.4% within 2).</p>"
    )
    parts.append(image)
    rows = [
        (
            name,
            int(finite[:, k].sum()),
            float(stats["mean"][i]),
            float(stats["std"][i]),
            f"{float(stats['within_1'][i]):.1%}",
            f"{float(stats['within_2'][i]):.1%}",
        )
        for i, (k, name) in enumerate(zip(usable, shown, strict=True))
    ]
    parts.append(_table(("label", "n", "mean z", "std z", "|z| < 1", "|z| < 2"), rows))
    return parts


def _label_stats(predicted: np.ndarray, errors: np.ndarray, names: Sequence[str]) -> list[tuple[Any, ...]]:
    rows = []
    for k, name in enumerate(names):
        column = predicted[:, k][np.isfinite(predicted[:, k])]
        err = errors[:, k][np.isfinite(errors[:, k])]
        if column.size == 0:
            rows.append((name, *(["nan"] * 6)))
            continue
        lo, p16, med, p84, hi = np.percentile(column, [0, 16, 50, 84, 100])
        rows.append(
            (
                name,
                float(lo),
                float(p16),
                float(med),
                float(p84),
                float(hi),
                float(np.median(err)) if err.size else "nan",
            )
        )
    return rows
