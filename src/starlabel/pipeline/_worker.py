"""What every engine does to one chunk: read its rows, run the model, catch failures.

Both engines call the same :class:`ChunkProcessor`, so a chunk gives bit-identical
results whichever engine (and whichever worker) ran it. The processor loads the
model once and keeps it; JAX compiles the model's batched test step on the first
chunk of each shape and reuses it for the rest. No model maths lives here: the
pipeline only calls ``model.infer``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import InferenceResult, SpectralDataset, open_rows
from ..models import AbstractFittedModel, load_model, register_model_kind
from ..models._io import MODEL_KINDS
from ._chunks import ChunkSpec

TEST_STEP_OPTIONS = frozenset(
    {"estimator", "prior", "temperature", "width_scale", "fit_rv", "continuum_order", "binary"}
)
"""``infer_options`` keys that route a chunk through ``models.infer_labels``."""

__all__ = ["ChunkOutcome", "ChunkProcessor", "REFERENCE_PREFIX"]

REFERENCE_PREFIX = "ref_"
"""Prefix of the output columns that carry input labels when ``labels_from_input``."""


@dataclass(frozen=True)
class ChunkOutcome:
    """The result of one chunk, or why it failed.

    Attributes
    ----------
    chunk : ChunkSpec
    result : InferenceResult or None
        None when the chunk failed.
    error : str
        ``"ExceptionType: message"`` of the failure; empty on success.
    seconds : float
        Wall time spent reading and inferring.
    """

    chunk: ChunkSpec
    result: InferenceResult | None
    error: str = ""
    seconds: float = 0.0


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


class ChunkProcessor:
    """Load a model once, then turn chunks into :class:`ChunkOutcome` values.

    Parameters
    ----------
    model_path : str
        Saved model file.
    infer_options : mapping
        Keyword arguments for ``model.infer`` (JSON-able; recorded in the manifest).
    labels_from_input : bool
        Read the model's label names from the input files too and return them as
        extra ``ref_<label>`` columns (NaN where a file lacks a label), so that the
        report can compare inferred with reference labels.
    model_kind : tuple of (str, str), optional
        ``(kind, "module:Class")`` to register before loading; engines pass the
        driver's registration so plug-in model kinds work in worker processes.
    memmap : bool
        Memory-map aligned ``.npz`` rows instead of copying them (see
        :func:`starlabel.data.open_rows`); results do not depend on it.
    """

    def __init__(
        self,
        model_path: str,
        infer_options: Mapping[str, Any],
        labels_from_input: bool,
        model_kind: tuple[str, str] | None = None,
        *,
        memmap: bool = True,
    ) -> None:
        if model_kind is not None and MODEL_KINDS.get(model_kind[0]) != model_kind[1]:
            register_model_kind(*model_kind)
        self.model: AbstractFittedModel = load_model(model_path)
        self.infer_options = dict(infer_options)
        self.labels_from_input = labels_from_input
        self.memmap = memmap

    def read(self, chunk: ChunkSpec) -> SpectralDataset:
        """Read the chunk's rows (with reference labels when asked)."""
        wanted = self.model.label_names if self.labels_from_input else ()
        with open_rows(chunk.path, memmap=self.memmap) as rows:
            data = rows.read(chunk.start, chunk.stop, labels=wanted)
        if data.n_stars != chunk.n_stars:
            raise ValueError(
                f"{chunk.path!r} rows {chunk.start}-{chunk.stop} gave {data.n_stars} spectra;"
                " the file changed during the run."
            )
        return data

    def infer(self, chunk: ChunkSpec, data: SpectralDataset) -> InferenceResult:
        """Run the model on an already-read chunk."""
        if TEST_STEP_OPTIONS & set(self.infer_options):
            # Estimators, priors, nuisance parameters and binaries are resolved in one
            # place, the models' test-step entry point; the pipeline only forwards them.
            from ..models._posterior_mean import infer_labels

            result = infer_labels(self.model, data, **self.infer_options)
        else:
            result = self.model.infer(data, **self.infer_options)
        if not isinstance(result, InferenceResult):
            raise TypeError(
                f"{type(self.model).__name__}.infer returned {type(result).__name__}, not InferenceResult."
            )
        if not np.array_equal(result.ids, data.ids):
            raise ValueError("the model returned results whose ids differ from its input spectra.")
        if self.labels_from_input:
            extra = dict(result.extra)
            for name in self.model.label_names:
                column = data.label(name) if name in data.label_names else np.full(data.n_stars, np.nan)
                extra[REFERENCE_PREFIX + name] = np.asarray(column, dtype=float)
            result = dataclasses.replace(result, extra=extra)
        return result

    def __call__(
        self, chunk: ChunkSpec, infer_lock: contextlib.AbstractContextManager[Any] | None = None
    ) -> ChunkOutcome:
        """Read and infer one chunk; any exception becomes a failed outcome.

        ``infer_lock`` is held around inference only, so that threads sharing this
        processor read concurrently but run one compiled test step at a time.
        """
        began = time.perf_counter()
        data, error = run_read(self, chunk)
        result = None
        if data is not None:
            with infer_lock if infer_lock is not None else contextlib.nullcontext():
                result, error = run_infer(self, chunk, data)
        return ChunkOutcome(chunk, result, error, time.perf_counter() - began)


def run_read(processor: ChunkProcessor, chunk: ChunkSpec) -> tuple[SpectralDataset | None, str]:
    """Read a chunk for the local engine's prefetch thread, capturing failures."""
    try:
        return processor.read(chunk), ""
    except Exception as error:  # reported per chunk; see ChunkProcessor.__call__
        return None, _describe(error)


def run_infer(
    processor: ChunkProcessor, chunk: ChunkSpec, data: SpectralDataset
) -> tuple[InferenceResult | None, str]:
    """Infer an already-read chunk, capturing failures."""
    try:
        return processor.infer(chunk, data), ""
    except Exception as error:  # reported per chunk; see ChunkProcessor.__call__
        return None, _describe(error)
