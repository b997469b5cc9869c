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
from ._chunks import ChunkSpec, Segment

TEST_STEP_OPTIONS = frozenset(
    {"estimator", "prior", "temperature", "width_scale", "fit_rv", "continuum_order", "binary"}
)
"""``infer_options`` keys that route a chunk through ``models.infer_labels``."""

__all__ = ["ChunkOutcome", "ChunkProcessor", "ChunkRows", "REFERENCE_PREFIX"]

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
        Segments that could not be read, each with its reason; the other segments'
        spectra still went through the model.
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
class ChunkRows:
    """A chunk's spectra as read: the readable segments stacked, in plan order.

    Attributes
    ----------
    data : SpectralDataset or None
        None when no segment could be read.
    reference : numpy.ndarray or None
        (stars, labels) input labels for ``ref_<label>`` columns (NaN where a file
        lacks a label); None unless the processor carries input labels.
    skipped : tuple of (Segment, str)
        Segments that could not be read, with the reason.
    """

    data: SpectralDataset | None
    reference: np.ndarray | None = None
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
        pieces, references, skipped = [], [], []
        for segment in chunk.segments:
            try:
                data, reference = self.read_segment(segment)
            except Exception as error:  # reported per segment; the rest of the chunk goes on
                skipped.append((segment, _describe(error)))
                continue
            pieces.append(data)
            references.append(reference)
        if not pieces:
            return ChunkRows(None, None, tuple(skipped))
        # One segment (the usual case for large files) is used as read: no copy.
        data = pieces[0] if len(pieces) == 1 else SpectralDataset.concatenate(pieces)
        reference = np.concatenate(references) if self.labels_from_input else None
        return ChunkRows(data, reference, tuple(skipped))

    def infer(self, rows: ChunkRows) -> InferenceResult:
        """Run the model on a chunk's readable rows."""
        data = rows.data
        if data is None:
            raise ValueError("no segment of the chunk could be read.")
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
        if rows.reference is not None:
            extra = dict(result.extra)
            for k, name in enumerate(self.model.label_names):
                extra[REFERENCE_PREFIX + name] = rows.reference[:, k]
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
        rows, error = run_read(self, chunk)
        result = None
        if rows.data is not None:
            with infer_lock if infer_lock is not None else contextlib.nullcontext():
                result, error = run_infer(self, rows)
        return ChunkOutcome(chunk, result, error, time.perf_counter() - began, rows.skipped)


def run_read(processor: ChunkProcessor, chunk: ChunkSpec) -> tuple[ChunkRows, str]:
    """Read a chunk (for the local engine's prefetch thread too), capturing failures.

    The error is empty when at least one segment was read; otherwise it is the first
    segment's reason (each segment's own is in ``ChunkRows.skipped``).
    """
    try:
        rows = processor.read(chunk)
    except Exception as error:  # e.g. segments that cannot be stacked; reported per chunk
        return ChunkRows(None), _describe(error)
    return rows, "" if rows.data is not None else rows.skipped[0][1]


def run_infer(processor: ChunkProcessor, rows: ChunkRows) -> tuple[InferenceResult | None, str]:
    """Infer an already-read chunk, capturing failures."""
    try:
        return processor.infer(rows), ""
    except Exception as error:  # reported per chunk; see ChunkProcessor.__call__
        return None, _describe(error)
