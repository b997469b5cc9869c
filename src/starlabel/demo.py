"""The embedded end-to-end demo behind ``starlabel demo``.

Simulates Cannon-style spectra with known labels, trains every available model family
on half of them, infers the other half, and compares the models in one metrics table
with plots. When the shared real data are found it repeats this on the 500 real APOGEE
giants (train/test split). The tables show whether each model's ``<label>_err`` are
honest on the test stars (std of z = residual/error and the share with |z| < 1), and a
plot compares the z distributions with a unit Gaussian. Writes everything under one
folder with a Markdown summary.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from .data import (
    InferenceResult,
    SpectralDataset,
    read_dataset,
    shared_data_dir,
    simulate_cannon,
    write_dataset,
)
from .evaluate import MetricsTable, evaluate_against, format_metrics, plot_spectrum, plot_zscore_comparison
from .models.base import AbstractFittedModel, AbstractSpectralModel

__all__ = ["DemoSummary", "run_demo", "DEMO_MODELS"]


def _plot_cannon_spectrum(
    fitted: AbstractFittedModel, result: InferenceResult, test: SpectralDataset, path: Path, what: str
) -> None:
    """The first test star's spectrum with the Cannon's model flux at its inferred labels."""
    from .models.cannon import FittedCannon  # imported already by _cannon

    if not isinstance(fitted, FittedCannon):
        return
    plot_spectrum(
        test.wavelength,
        test.flux[0],
        path,
        model_flux=fitted.predict_flux(result.labels[:1])[0],
        ivar=test.ivar[0],
        mask=test.mask[0],
        title=f"{what} with the cannon model at its inferred labels",
    )


def _cannon(names: tuple[str, ...], quick: bool) -> AbstractSpectralModel:
    from .models.cannon import Cannon

    return Cannon(label_names=names, order=2)


def _lux(names: tuple[str, ...], quick: bool) -> AbstractSpectralModel:
    from .models.lux import Lux

    return Lux(label_names=names, latent_size=8, scatter="pixel")


def _nn(names: tuple[str, ...], quick: bool) -> AbstractSpectralModel:
    from .models.nn import NNRegressor

    # Quick mode trains every model six times (5-fold error calibration): fewer epochs.
    return NNRegressor(label_names=names, epochs=60 if quick else 400, seed=0)


DEMO_MODELS: dict[str, Callable[[tuple[str, ...], bool], AbstractSpectralModel]] = {
    "cannon": _cannon,
    "lux": _lux,
    "nn": _nn,
}
"""Model name → factory of its default configuration, in the order the demo runs them."""


@dataclass(frozen=True)
class DemoSummary:
    """What the demo produced: the printed text and where the summary file is."""

    text: str
    path: Path
    metrics: dict[str, dict[str, MetricsTable]]


def _run_case(
    case: str,
    train: SpectralDataset,
    test: SpectralDataset,
    out: Path,
    quick: bool,
    console: Console,
) -> tuple[dict[str, MetricsTable], list[str]]:
    tables: dict[str, MetricsTable] = {}
    notes: list[str] = []
    zscores: dict[str, np.ndarray] = {}
    names = train.label_names
    for name, factory in DEMO_MODELS.items():
        try:
            model = factory(names, quick)
        except ImportError as error:
            notes.append(f"{name}: not available in this build ({error}).")
            continue
        folder = out / case / name
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with console.status(f"{case}: training {name} on {train.n_stars} stars…"):
            fitted: AbstractFittedModel = model.fit(train)
        trained = time.perf_counter() - start
        fitted.save(folder / f"{name}.starlabel")
        start = time.perf_counter()
        with console.status(f"{case}: inferring {test.n_stars} test spectra with {name}…"):
            result = fitted.infer(test)
        inferred = time.perf_counter() - start
        result.write(folder / "results.csv")
        tables[name] = evaluate_against(result, test, names, plots=folder, model=name)
        if test.labels is None:
            raise ValueError(f"the {case} test set has no labels to compare the inferred ones with.")
        reference = test.labels[:, [test.label_index(n) for n in names]]
        zscores[name] = (result.labels - reference) / result.label_err
        notes.append(
            f"{name}: trained in {trained:.1f} s, inferred {test.n_stars} spectra in {inferred:.1f} s."
        )
        console.log(f"{case}: {name}: train {trained:.1f} s, infer {inferred:.1f} s")
        if name == "cannon":
            _plot_cannon_spectrum(
                fitted, result, test, folder / "spectrum.png", f"{case}: star {test.ids[0]}"
            )
    if zscores:
        plot_zscore_comparison(
            zscores,
            names,
            out / case / "zscores.png",
            title=f"{case}: are the test stars' <label>_err honest? (calibrated, default)",
        )
    return tables, notes


def _sampling_note(n_test: int) -> str:
    """How far one split's std z and 1σ coverage may fall from 1 and 68 % by chance alone."""
    spread = math.sqrt(1.0 / (2.0 * n_test))  # standard error of a Gaussian sample's std
    coverage = math.sqrt(0.6827 * 0.3173 / n_test)
    return (
        f"Calibrated errors give std z 1 and 68 % within |z| < 1; on {n_test} test stars one split"
        f" scatters by ±{spread:.2f} and ±{100 * coverage:.1f} points even for Gaussian errors (more"
        " with heavy tails). Cross-validated figures: docs/uncertainties.md."
    )


def run_demo(
    out: str | os.PathLike[str] = "starlabel-demo",
    *,
    quick: bool = False,
    real: bool = True,
    console: Console | None = None,
) -> DemoSummary:
    """Run the demo and write its outputs under ``out``.

    Parameters
    ----------
    out : path-like
        Output folder (created). Holds per-case/per-model models, result tables and
        plots, ``metrics.json`` and ``summary.md``.
    quick : bool
        Smaller simulated set and shorter NN training (used by the tests).
    real : bool
        Also run on the shared real APOGEE giants when :func:`shared_data_dir` finds them.
    console : rich.console.Console, optional
        Where progress goes (default: stderr).

    Returns
    -------
    DemoSummary
    """
    console = console or Console(stderr=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    n_stars, n_pixels = (600, 120) if quick else (2000, 300)
    simulation = simulate_cannon(n_stars, n_pixels, 3, snr=(40.0, 150.0), bad_pixel_fraction=0.005, seed=0)
    write_dataset(simulation.dataset, out / "simulated.h5")
    cases: dict[str, tuple[SpectralDataset, SpectralDataset, str]] = {
        "simulated": (
            *simulation.dataset.split(0.5, seed=0),
            f"{n_stars} simulated giants, {n_pixels} pixels, S/N 40–150, quadratic truth; half train, half test",
        )
    }
    folder = shared_data_dir() if real else None
    giants_path = None if folder is None else folder / "apogee" / "giants_100px.npz"
    if giants_path is not None and giants_path.exists():
        giants = read_dataset(giants_path, labels=("teff", "logg", "m_h"))
        cases["apogee_giants"] = (
            *giants.split(0.2, seed=0),
            "500 real APOGEE giants (100 pixels, ASPCAP labels); 400 train, 100 test",
        )

    metrics: dict[str, dict[str, MetricsTable]] = {}
    lines = ["# starlabel demo", ""]
    text_parts = []
    for case, (train, test, description) in cases.items():
        tables, notes = _run_case(case, train, test, out, quick, console)
        metrics[case] = tables
        table_text = format_metrics(list(tables.values())) if tables else "(no model available)"
        if tables:
            table_text += "\n" + _sampling_note(test.n_stars)
        text_parts.append(f"== {case}: {description}\n{table_text}")
        lines += [f"## {case}", "", description, "", "```", table_text, "```", ""]
        lines += [f"- {note}" for note in notes] + [""]
        for name in tables:
            lines.append(f"![{name} one-to-one]({case}/{name}/one_to_one.png)")
        if tables:
            lines += ["", "std z and |z|<1: z = (inferred − reference)/<label>_err on the test stars.", ""]
            lines.append(f"![z distributions against N(0, 1)]({case}/zscores.png)")
        lines.append("")
    elapsed = time.perf_counter() - start
    if "apogee_giants" not in cases:
        note = "real APOGEE giants not found (set STARLABEL_SHARED_DATA to run on them)."
        text_parts.append(note)
        lines += [note, ""]
    lines.append(f"Total time: {elapsed:.1f} s.")
    (out / "metrics.json").write_text(
        json.dumps(
            {case: {m: t.to_dict() for m, t in tables.items()} for case, tables in metrics.items()}, indent=2
        )
        + "\n"
    )
    summary_path = out / "summary.md"
    summary_path.write_text("\n".join(lines) + "\n")
    text = "\n\n".join(text_parts) + f"\n\ntotal {elapsed:.1f} s"
    return DemoSummary(text=text, path=summary_path, metrics=metrics)
