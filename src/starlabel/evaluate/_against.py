"""Evaluate an inference result against a dataset's reference labels, matched by id."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import InferenceResult, SpectralDataset
from ._metrics import MetricsTable, label_metrics

__all__ = ["evaluate_against", "match_by_id"]


def match_by_id(result: InferenceResult, reference: SpectralDataset) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(i_result, i_reference)`` of the stars present in both, by ``id``.

    Raises
    ------
    ValueError
        If no id is shared (e.g. results from a different dataset).
    """
    position = {star_id: i for i, star_id in enumerate(reference.ids)}
    pairs = [(i, position[star_id]) for i, star_id in enumerate(result.ids) if star_id in position]
    if not pairs:
        raise ValueError(
            "no star id in the results matches the reference dataset; were the results"
            f" inferred from this dataset? (e.g. results id {result.ids[:1]}, reference id"
            f" {reference.ids[:1]})"
        )
    rows = np.array(pairs)
    return rows[:, 0], rows[:, 1]


def evaluate_against(
    result: InferenceResult,
    reference: SpectralDataset,
    label_names: Sequence[str] | None = None,
    *,
    plots: str | os.PathLike[str] | None = None,
    model: str = "",
) -> MetricsTable:
    """Metrics (and optionally plots) of ``result`` against ``reference`` labels.

    Parameters
    ----------
    result : InferenceResult
    reference : SpectralDataset
        Must hold the labels ``label_names``; stars are matched by ``id``.
    label_names : sequence of str, optional
        Labels to compare (default: all labels in ``result``).
    plots : path-like, optional
        Folder for ``one_to_one.png``, ``residuals.png`` and, with Teff and logg,
        ``kiel.png``.
    model : str
        Name used in titles and tables.

    Returns
    -------
    MetricsTable
        With the errors' calibration (std z, share with |z| < 1) from ``result.label_err``.
    """
    names = tuple(label_names) if label_names is not None else result.label_names
    missing = [n for n in names if n not in result.label_names]
    if missing:
        raise KeyError(f"results have no label(s) {missing}; they have {list(result.label_names)}.")
    reference = reference.select_labels(names)
    i_result, i_reference = match_by_id(result, reference)
    predicted = np.stack([result.label(n)[i_result] for n in names], axis=1)
    truth = reference.labels[i_reference]  # type: ignore[index]
    errors = np.stack([result.label_err[:, result.label_names.index(n)][i_result] for n in names], axis=1)
    table = label_metrics(predicted, truth, names, model=model, errors=errors)
    if plots is not None:
        # matplotlib loads only when plots are asked for (0.3–0.5 s of a CLI run)
        from ._plots import find_kiel_labels, plot_kiel, plot_one_to_one, plot_residuals

        folder = Path(plots)
        plot_one_to_one(predicted, truth, names, folder / "one_to_one.png", errors=errors, title=model)
        plot_residuals(predicted, truth, names, folder / "residuals.png", title=model)
        kiel = find_kiel_labels(names)
        if kiel is not None:
            teff, logg, metal = kiel
            plot_kiel(
                predicted[:, names.index(teff)],
                predicted[:, names.index(logg)],
                folder / "kiel.png",
                metallicity=None if metal is None else predicted[:, names.index(metal)],
                metallicity_name=metal or "",
                title=f"{model} (inferred)",
            )
    return table
