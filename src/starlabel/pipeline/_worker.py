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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import InferenceResult, SpectralDataset, open_rows
from ..models import (
    MODEL_KINDS,
    AbstractFittedModel,
    TestStep,
    load_model,
    register_model_kind,
    run_test_step,
)
from ._chunks import ChunkSpec, Segment

__all__ = ["ChunkBatch", "ChunkOutcome", "ChunkProcessor", "ChunkRows", "REFERENCE_PREFIX"]

REFERENCE_PREFIX = "ref_"
"""Prefix of the output columns that carry input labels when ``labels_from_input``."""


@dataclass(frozen=True)
class ChunkOutcome:
    """The result of one chunk, or why it failed.

    Attributes
    ----------
    chunk : ChunkSpec
    result : InferenceResult or None
        Results for the chunk's rows in plan order, less the ``skipped`` segments;
        None when the chunk failed.
    error : str
        ``"ExceptionType: message"`` of the failure; empty on success.
    seconds : float
        Wall time spent reading and inferring.
    skipped : tuple of (Segment, str)
        Segments left out of ``result`` (unreadable, or their batch failed in the
        model), each with its reason; the other segments' spectra are in ``result``.
    """

    chunk: ChunkSpec
    result: InferenceResult | None
    error: str = ""
    seconds: float = 0.0
    skipped: tuple[tuple[Segment, str], ...] = ()

    def failures(self) -> list[tuple[Segment, str]]:
        """Every segment whose spectra are not in ``result``, with the reason."""
        reasons = dict(self.skipped)
        if self.result is None:
            return [(segment, reasons.get(segment, self.error)) for segment in self.chunk.segments]
        return list(self.skipped)


@dataclass(frozen=True)
class ChunkBatch:
    """Consecutive readable segments of a chunk that share a pixel grid: one model call.

    Attributes
    ----------
    data : SpectralDataset
        Their spectra, stacked, with the stars' ids; numbered by position instead
        when the ids repeat across files (files without ``ids`` all number their
        stars from "0").
    ids : numpy.ndarray
        The stars' own ids, put back on the model's results.
    reference : numpy.ndarray or None
        (stars, labels) input labels for ``ref_<label>`` columns (NaN where a file
        lacks a label); None unless the processor carries input labels.
    segments : tuple of Segment
    """

    data: SpectralDataset
    ids: np.ndarray
    reference: np.ndarray | None
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class ChunkRows:
    """A chunk as read: its readable segments in batches (plan order), and the rest.

    Attributes
    ----------
    batches : tuple of ChunkBatch
        Usually one; a new batch starts wherever the pixel grid changes.
    skipped : tuple of (Segment, str)
        Segments that could not be read, with the reason.
    """

    batches: tuple[ChunkBatch, ...] = ()
    skipped: tuple[tuple[Segment, str], ...] = ()


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


class ChunkProcessor:
    """Load a model once, then turn chunks into :class:`ChunkOutcome` values.

    Parameters
    ----------
    model_path : str
        Saved model file.
    test_step : TestStep
        What to run on each batch (:func:`starlabel.models.run_test_step`; the
        manifest records its JSON form).
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
        test_step: TestStep,
        labels_from_input: bool,
        model_kind: tuple[str, str] | None = None,
        *,
        memmap: bool = True,
    ) -> None:
        if model_kind is not None and MODEL_KINDS.get(model_kind[0]) != model_kind[1]:
            register_model_kind(*model_kind)
        self.model: AbstractFittedModel = load_model(model_path)
        self.test_step = test_step
        self.labels_from_input = labels_from_input
        self.memmap = memmap

    def read_segment(self, segment: Segment) -> tuple[SpectralDataset, np.ndarray | None]:
        """One segment's spectra, and its reference labels when asked (NaN where absent)."""
        with open_rows(segment.path, memmap=self.memmap) as rows:
            data = rows.read(segment.start, segment.stop)
            reference = None
            if self.labels_from_input:
                names, columns = rows.label_columns(self.model.label_names, segment.start, segment.stop)
                reference = np.full((data.n_stars, len(self.model.label_names)), np.nan)
                for name, column in zip(names, columns, strict=True):
                    reference[:, self.model.label_names.index(name)] = column
        if data.n_stars != segment.n_stars:
            raise ValueError(
                f"{segment.path!r} rows {segment.rows} gave {data.n_stars} spectra;"
                " the file changed during the run."
            )
        return data, reference

    def read(self, chunk: ChunkSpec) -> ChunkRows:
        """Read every segment of the chunk; a segment that fails is skipped with its reason."""
        pieces: list[tuple[Segment, SpectralDataset, np.ndarray | None]] = []
        skipped = []
        for segment in chunk.segments:
            try:
                pieces.append((segment, *self.read_segment(segment)))
            except Exception as error:  # reported per segment; the rest of the chunk goes on
                skipped.append((segment, _describe(error)))
        runs: list[list[tuple[Segment, SpectralDataset, np.ndarray | None]]] = []
        for piece in pieces:
            if runs and runs[-1][-1][1].same_grid(piece[1]):
                runs[-1].append(piece)
            else:
                runs.append([piece])
        return ChunkRows(tuple(self._batch(run) for run in runs), tuple(skipped))

    def _batch(self, run: list[tuple[Segment, SpectralDataset, np.ndarray | None]]) -> ChunkBatch:
        segments = tuple(segment for segment, _, _ in run)
        datasets = [data for _, data, _ in run]
        reference = np.concatenate([ref for _, _, ref in run]) if self.labels_from_input else None  # type: ignore[misc]
        if len(datasets) == 1:  # the usual case for large files: used as read, no copy
            return ChunkBatch(datasets[0], datasets[0].ids, reference, segments)
        ids = np.concatenate([data.ids for data in datasets])
        unique = len(np.unique(ids)) == len(ids)
        stacked = SpectralDataset.concatenate(datasets, ids=None if unique else np.arange(len(ids)))
        return ChunkBatch(stacked, ids, reference, segments)

    def infer_batch(self, batch: ChunkBatch) -> InferenceResult:
        """Run the model on one batch; the result carries the stars' own ids."""
        data = batch.data
        # The test step's choices were resolved into objects once, by the caller; the
        # pipeline only forwards them to the models' entry point.
        result = run_test_step(self.test_step, self.model, data)
        if not isinstance(result, InferenceResult):
            raise TypeError(
                f"{type(self.model).__name__}.infer returned {type(result).__name__}, not InferenceResult."
            )
        if not np.array_equal(result.ids, data.ids):
            raise ValueError("the model returned results whose ids differ from its input spectra.")
        extra = dict(result.extra)
        if batch.reference is not None:
            for k, name in enumerate(self.model.label_names):
                extra[REFERENCE_PREFIX + name] = batch.reference[:, k]
        return dataclasses.replace(result, ids=batch.ids, extra=extra)

    def infer(self, rows: ChunkRows) -> tuple[InferenceResult | None, tuple[tuple[Segment, str], ...]]:
        """Run the model on every batch; a batch that fails is reported with its reason.

        Returns the results of the batches that worked, stacked in plan order (None if
        none did), and the failed batches' segments with the reason.
        """
        results, failed = [], []
        for batch in rows.batches:
            try:
                results.append(self.infer_batch(batch))
            except Exception as error:  # reported per batch; see ChunkProcessor.__call__
                failed.extend((segment, _describe(error)) for segment in batch.segments)
        if not results:
            return None, tuple(failed)
        return results[0].concatenate_with(results[1:]) if len(results) > 1 else results[0], tuple(failed)

    def __call__(
        self, chunk: ChunkSpec, infer_lock: contextlib.AbstractContextManager[Any] | None = None
    ) -> ChunkOutcome:
        """Read and infer one chunk; any exception becomes a failed outcome.

        ``infer_lock`` is held around inference only, so that threads sharing this
        processor read concurrently but run one compiled test step at a time.
        """
        began = time.perf_counter()
        rows = run_read(self, chunk)
        with infer_lock if infer_lock is not None else contextlib.nullcontext():
            return finish_chunk(self, chunk, rows, began)


def run_read(processor: ChunkProcessor, chunk: ChunkSpec) -> ChunkRows:
    """Read a chunk (for the local engine's prefetch thread too), capturing failures."""
    try:
        return processor.read(chunk)
    except Exception as error:  # reported for every segment; see ChunkOutcome.failures
        return ChunkRows((), tuple((segment, _describe(error)) for segment in chunk.segments))


def finish_chunk(processor: ChunkProcessor, chunk: ChunkSpec, rows: ChunkRows, began: float) -> ChunkOutcome:
    """Infer an already-read chunk and describe the outcome (failures captured)."""
    try:
        result, failed = processor.infer(rows)
    except Exception as error:  # e.g. batches whose results cannot be stacked
        result = None
        failed = tuple((segment, _describe(error)) for batch in rows.batches for segment in batch.segments)
    left_out = rows.skipped + failed
    error = "" if result is not None else (left_out[0][1] if left_out else "the chunk has no rows")
    return ChunkOutcome(chunk, result, error, time.perf_counter() - began, left_out)
