"""The engine interface, the worker specification, and the local engine.

An engine turns a sequence of :class:`ChunkSpec` into :class:`ChunkOutcome` values, in
any order; the driver (:func:`starlabel.pipeline.run_inference`) writes the parts,
the errors and the progress. Engines are configuration objects: the string names the
CLI takes (``"local"``, ``"ray"``) are resolved to them in one place,
:func:`resolve_engine`.
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._internal._compile_cache import enable_compilation_cache
from ..models import TestStep
from ._chunks import ChunkSpec
from ._worker import ChunkOutcome, ChunkProcessor, finish_chunk, run_read

__all__ = ["AbstractEngine", "LocalEngine", "WorkerSpec"]


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker builds its :class:`ChunkProcessor` (small and picklable).

    Attributes
    ----------
    model_path : str
        Saved model file; must be readable by every worker.
    test_step : TestStep
        The test step to run (default: the model's own MAP, ``TestStep()``).
    labels_from_input : bool
        Carry input labels as ``ref_<label>`` columns.
    model_kind : tuple of (str, str), optional
        ``(kind, "module:Class")`` registration for plug-in model kinds.
    compilation_cache : str, optional
        Folder for JAX's persistent compilation cache in the worker (None: leave
        JAX's setting alone); see :func:`starlabel.pipeline.run_inference`.
    memmap : bool
        Memory-map aligned ``.npz`` rows (see :func:`starlabel.data.open_rows`).
    """

    model_path: str
    test_step: TestStep = field(default_factory=TestStep)
    labels_from_input: bool = False
    model_kind: tuple[str, str] | None = None
    compilation_cache: str | None = None
    memmap: bool = True

    def build(self) -> ChunkProcessor:
        """Load the model and return a processor."""
        if self.compilation_cache is not None:
            enable_compilation_cache(self.compilation_cache)
        return ChunkProcessor(
            self.model_path, self.test_step, self.labels_from_input, self.model_kind, memmap=self.memmap
        )


class AbstractEngine(abc.ABC):
    """Runs chunks through workers; see the module docstring."""

    @abc.abstractmethod
    def run(self, spec: WorkerSpec, chunks: Sequence[ChunkSpec]) -> Iterator[ChunkOutcome]:
        """Yield one outcome per chunk, as each finishes (order unspecified)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in the manifest."""


@dataclass(frozen=True)
class LocalEngine(AbstractEngine):
    """Run every chunk in this process, reading the next chunk while inferring one.

    JAX already spreads one batched test step over all CPU cores (or runs it on the
    GPU when JAX sees one), so one process is the efficient layout on one machine;
    the background thread hides file reading behind the compute.

    Parameters
    ----------
    prefetch : int
        Chunks read ahead of the one being inferred (0 = none). Peak memory grows
        by one chunk per prefetched chunk.
    """

    prefetch: int = 1

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            raise ValueError(f"`prefetch` must be ≥ 0, got {self.prefetch}.")

    def describe(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"name": "local", "prefetch": self.prefetch}

    def run(self, spec: WorkerSpec, chunks: Sequence[ChunkSpec]) -> Iterator[ChunkOutcome]:
        """Yield outcomes in plan order."""
        if not chunks:
            return
        processor = spec.build()
        todo = iter(chunks)
        pending: deque[tuple[ChunkSpec, float, Future[Any]]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="starlabel-read") as reader:

            def submit() -> None:
                chunk = next(todo, None)
                if chunk is not None:
                    pending.append((chunk, time.perf_counter(), reader.submit(run_read, processor, chunk)))

            for _ in range(self.prefetch + 1):
                submit()
            while pending:
                chunk, began, future = pending.popleft()
                rows = future.result()
                submit()
                outcome = finish_chunk(processor, chunk, rows, began)
                del rows
                yield outcome
