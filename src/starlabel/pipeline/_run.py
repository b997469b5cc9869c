"""The survey-scale entry point: streaming, resumable inference over many files.

Run directory layout (``OUT`` is the requested output table, e.g. ``labels.parquet``)::

    OUT                      merged table (CSV/FITS/HDF5/Parquet by suffix), written last
    OUT.run/
        manifest.json        model + checksum, options, inputs + checksums, engine
        parts/cNNNNNNN.npz   one result part per finished chunk (chunk N of the plan)
        errors/cNNNNNNN.json why a chunk, or some of its segments, failed
        errors.csv           the errors report: bad files and failed segments, with reasons
        summary.json         counts and timings of the latest attempt

Restarting the same command after a crash (even ``kill -9``) skips the chunks that
have complete parts, retries failed chunks and chunks with rows left out, and merges
again; see :func:`run_inference`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._internal import write_json_atomic
from .._internal._compile_cache import default_compilation_cache_dir
from .._internal._prefetch import import_in_background
from .._internal._progress import Progress
from ..data import RESULT_SUFFIXES, RunManifest, read_manifest
from ..models import MODEL_KINDS, TestStep, read_model_header
from ._chunks import CHUNK_PLAN, plan_chunks
from ._engine import AbstractEngine, WorkerSpec
from ._engine_choice import resolve_engine
from ._inputs import describe_inputs, resolve_inputs
from ._parts import (
    PARTS_DIR,
    clear_partials,
    done_chunk_names,
    finished_chunk_names,
    has_part,
    merge_parts,
    write_chunk_error,
    write_errors_report,
    write_part,
)

__all__ = ["RunSummary", "run_dir_for", "run_inference"]

_ERRORS_DIR = "errors"


@dataclass(frozen=True)
class RunSummary:
    """What a call to :func:`run_inference` did (also written to ``summary.json``).

    Attributes
    ----------
    output : pathlib.Path
        The merged table (absent when no chunk succeeded).
    run_dir : pathlib.Path
        The run directory (manifest, parts, errors report).
    errors_report : pathlib.Path
        ``run_dir/errors.csv``.
    n_inputs : int
        Input files after expanding globs and folders.
    n_bad_inputs : int
        Files that could not be read (listed in the errors report).
    n_spectra : int
        Spectra in the readable input files.
    n_written : int
        Spectra in the output table.
    n_resumed : int
        Spectra whose results came from earlier attempts.
    n_processed : int
        Spectra inferred successfully by this call.
    n_failed : int
        Spectra in chunks that failed (listed in the errors report).
    n_errors : int
        Rows of the errors report.
    first_error : str
        The first failure's reason (empty if none), to show without opening the report.
    seconds : float
        Wall time of this call.
    startup_seconds : float
        Wall time until the first chunk finished: planning, checksums, model loading,
        worker start-up and compilation, plus that chunk (NaN if nothing ran).
    steady_spectra_per_second : float
        Spectra inferred after the first chunk finished, per second of the rest of
        the call (merge included): the rate a long run settles at. NaN when fewer
        than two chunks ran.
    engine : str
        Engine used by this call.
    """

    output: Path
    run_dir: Path
    errors_report: Path
    n_inputs: int
    n_bad_inputs: int
    n_spectra: int
    n_written: int
    n_resumed: int
    n_processed: int
    n_failed: int
    n_errors: int
    first_error: str
    seconds: float
    startup_seconds: float
    steady_spectra_per_second: float
    engine: str

    @property
    def complete(self) -> bool:
        """True when every input spectrum is in the output and no file was bad."""
        return self.n_written == self.n_spectra and self.n_bad_inputs == 0

    @property
    def spectra_per_second(self) -> float:
        """Throughput of this call (spectra inferred / wall time)."""
        return self.n_processed / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        record = asdict(self)
        record.update(
            output=str(self.output),
            run_dir=str(self.run_dir),
            errors_report=str(self.errors_report),
            complete=self.complete,
            spectra_per_second=self.spectra_per_second,
        )
        return record


def run_dir_for(output: str | os.PathLike[str]) -> Path:
    """The run directory that belongs to output table ``output``: ``OUT.run`` beside it."""
    output = Path(output).absolute()
    return output.with_name(output.name + ".run")


def _check_options(infer_options: Mapping[str, Any] | TestStep | None) -> tuple[TestStep, dict[str, Any]]:
    """The test step to run and its flat (provenance) form, both checked JSON-able."""
    if infer_options is None:
        infer_options = {}
    if isinstance(infer_options, TestStep):
        step = infer_options
        options = step.to_options()
    elif isinstance(infer_options, Mapping):
        options = dict(infer_options)
        try:
            json.dumps(options, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`infer_options` must be JSON-serialisable (they are recorded in the run manifest): {error}."
            ) from error
        step = TestStep.from_options(options)  # words to objects, once
    else:
        raise TypeError(
            f"`infer_options` must be a TestStep or a mapping of test-step keywords, got"
            f" {type(infer_options).__name__}."
        )
    try:
        json.dumps(step.to_json(), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`infer_options` must be JSON-serialisable (they are recorded in the run manifest): {error}."
        ) from error
    return step, options


def _cache_folder(compilation_cache: bool | str | os.PathLike[str]) -> str | None:
    if compilation_cache is False:
        return None
    if compilation_cache is True:
        return str(default_compilation_cache_dir())
    if isinstance(compilation_cache, (str, os.PathLike)):
        return str(Path(compilation_cache).expanduser().absolute())
    raise TypeError(
        f"`compilation_cache` must be True, False or a folder path, got {type(compilation_cache).__name__}."
    )


def run_inference(
    model: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    chunk_size: int = 1024,
    engine: str | AbstractEngine = "local",
    address: str | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    labels_from_input: bool = False,
    infer_options: Mapping[str, Any] | TestStep | None = None,
    progress: bool = True,
    compilation_cache: bool | str | os.PathLike[str] = True,
    memmap: bool = True,
) -> RunSummary:
    """Infer labels for every spectrum in many dataset files, chunk by chunk, resumably.

    The rows of the input files, in order, are cut into chunks of ``chunk_size``
    spectra; a chunk spans file boundaries, so many small files still make full
    batches. A chunk is read on its own (memory follows the chunk size, not the survey
    size), passed to the model's batched ``infer``, and its result stored as a part in
    the run directory (``run_dir_for(output)``, layout in the module docstring).
    Finally the parts are merged, in input order, into ``output``. A bad file, rows
    that cannot be read or a failing chunk are recorded in ``errors.csv`` and the run
    goes on.

    Running the same call again after an interruption (including SIGKILL) continues
    where it stopped: finished chunks are skipped, failed ones (and ones with rows
    left out) retried, and every
    input spectrum appears in the output exactly once. A restart with a different
    model file, different inputs or input contents, or different options is refused
    unless ``overwrite=True``.

    The code is device-agnostic: JAX runs the model on a GPU when it sees one.

    Parameters
    ----------
    model : path-like
        A model saved with :func:`starlabel.models.save_model`.
    inputs : sequence of str or path-like
        Dataset files (``.npz``, ``.h5``), globs or folders; see
        :func:`starlabel.pipeline.resolve_inputs`.
    output : path-like
        Output table; the format follows the suffix (``.csv``, ``.ecsv``, ``.fits``,
        ``.h5``, ``.parquet``). Parquet is merged in streaming fashion and suits
        10⁷+ spectra; the others are assembled in memory (~200 bytes per spectrum).
    chunk_size : int
        Spectra per chunk (the unit of work, of resume and of peak memory: about
        ``3 × chunk_size × pixels × 8`` bytes per chunk in flight).
    engine : {"local", "ray"} or AbstractEngine
        ``"local"`` runs in this process (no Ray import); ``"ray"`` runs on Ray actors
        (:class:`starlabel.pipeline.RayEngine`). Both give identical results.
    address : str, optional
        Ray cluster address (``"auto"``, ``"ray://head:10001"``); ``engine="ray"`` only.
    num_workers : int, optional
        Ray actors (default: one per cluster CPU); ``engine="ray"`` only.
    overwrite : bool
        Discard an existing run directory and output instead of resuming.
    labels_from_input : bool
        Also copy the model's labels from the input files into the output as
        ``ref_<label>`` columns (NaN where absent), for the report's one-to-one plots.
    infer_options : TestStep or mapping, optional
        The test step (:class:`starlabel.models.TestStep`), or its flat keyword form
        (:meth:`~starlabel.models.TestStep.from_options`: ``estimator``, ``prior``,
        ``fit_rv``, …, and the model's own ``infer`` keywords), converted once here. The
        manifest records both forms (JSON): ``infer_options`` and ``test_step``.
    progress : bool
        Show a progress bar (spectra done, spectra/s, ETA) on stderr.
    compilation_cache : bool or path-like
        Keep compiled test steps in JAX's persistent compilation cache, so that a
        resumed run and every Ray worker on a node skip the 2–3 s compilation after
        the first: True (default) uses ``$STARLABEL_CACHE_DIR/jax`` or
        ``~/.cache/starlabel/jax``, a path uses that folder, False leaves JAX's
        configuration alone. Results do not depend on it.
    memmap : bool
        Memory-map the rows of ``.npz`` inputs written by
        :func:`~starlabel.data.write_dataset` (copy-on-write; faster, no copy) rather
        than copying them (see :func:`starlabel.data.open_rows`). Turn it off for
        inputs that other programs may truncate or rewrite during the run (a mapped
        file that shrinks ends the process with SIGBUS; the run then resumes).
        Results do not depend on it.

    Returns
    -------
    RunSummary

    Raises
    ------
    FileNotFoundError
        If the model or an input does not exist, or a glob/folder matches no files.
    ValueError
        For an unsupported output suffix, bad option values, or an unknown engine.
    RunMismatchError
        If the run directory belongs to a different run and ``overwrite`` is False.

    Examples
    --------
    >>> summary = run_inference("cannon.starlabel", ["survey/*.npz"], "labels.parquet",
    ...                         chunk_size=2048, progress=False)  # doctest: +SKIP
    >>> summary.complete, summary.errors_report  # doctest: +SKIP
    (True, PosixPath('.../labels.parquet.run/errors.csv'))
    """
    began = time.perf_counter()
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer (spectra per chunk), got {chunk_size!r}.")
    cache_folder = _cache_folder(compilation_cache)
    output = Path(output).absolute()
    if output.suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(
            f"output {str(output)!r} has suffix {output.suffix!r}; use one of {sorted(RESULT_SUFFIXES)}"
            " (.parquet for large surveys)."
        )
    model_path = Path(model).absolute()
    header = read_model_header(model_path)
    step, options = _check_options(infer_options)
    runner = resolve_engine(engine, address=address, num_workers=num_workers)
    paths = resolve_inputs(inputs)

    run_dir = run_dir_for(output)
    if overwrite:
        shutil.rmtree(run_dir, ignore_errors=True)
        output.unlink(missing_ok=True)
    previous = read_manifest(run_dir)
    described = describe_inputs(paths, known=previous.inputs if previous else ())
    manifest = RunManifest(
        model={
            "path": str(model_path),
            "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            "kind": header.get("kind"),
            "label_names": header.get("label_names"),
            "library_version": header.get("library_version"),
            "config": header.get("config"),
        },
        options={
            "chunk_size": chunk_size,
            "chunk_plan": CHUNK_PLAN,
            "infer_options": options,
            "test_step": step.to_json(),
            "labels_from_input": labels_from_input,
        },
        output=str(output),
        inputs=tuple(described),
        engine=runner.describe(),
    )
    if previous is not None:
        manifest.check_compatible(previous, run_dir)
    for folder in (run_dir, run_dir / PARTS_DIR, run_dir / _ERRORS_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    manifest.write(run_dir)
    clear_partials(run_dir)

    chunks = plan_chunks(described, chunk_size)
    complete = finished_chunk_names(run_dir)
    todo = [chunk for chunk in chunks if chunk.name not in complete]
    n_spectra = sum(chunk.n_stars for chunk in chunks)
    n_resumed = n_spectra - sum(chunk.n_stars for chunk in todo)
    kind = str(header.get("kind"))
    spec = WorkerSpec(
        model_path=str(model_path),
        test_step=step,
        labels_from_input=labels_from_input,
        model_kind=(kind, MODEL_KINDS[kind]) if kind in MODEL_KINDS else None,
        compilation_cache=cache_folder,
        memmap=bool(memmap),
    )

    if output.suffix.lower() not in (".parquet", ".csv"):
        # The merge below builds an astropy Table (not for Parquet, nor CSV: data._ecsv);
        # import it on the core the test step leaves idle instead of after the last chunk.
        import_in_background("astropy.table")
    n_processed = 0
    first_done_at = None
    n_after_first = 0
    first_error = next((item.error for item in described if item.error), "")
    with Progress(n_spectra, n_resumed, enabled=progress) as bar:
        for outcome in runner.run(spec, todo):
            first_chunk = first_done_at is None
            if first_chunk:
                first_done_at = time.perf_counter()
            failures = outcome.failures()
            n_failed_here = sum(segment.n_stars for segment, _ in failures)
            n_ok = outcome.chunk.n_stars - n_failed_here
            if outcome.result is not None:
                try:
                    write_part(run_dir, outcome.chunk, outcome.result, failures)
                except ValueError as error:
                    failures = [(segment, f"ValueError: {error}") for segment in outcome.chunk.segments]
                    n_ok, n_failed_here = 0, outcome.chunk.n_stars
            if (outcome.result is None or n_ok == 0) and not has_part(run_dir, outcome.chunk):
                # (A chunk that already has a partial part keeps it and its record.)
                write_chunk_error(run_dir, outcome.chunk, failures)
            if failures:
                first_error = first_error or failures[0][1]
                bar.advance(n_failed_here, failed=True)
            if n_ok:
                if not first_chunk:
                    n_after_first += n_ok
                n_processed += n_ok
                bar.advance(n_ok)

    report, n_errors, n_failed = write_errors_report(run_dir, described, chunks)
    provenance = {
        "model": {
            "kind": kind,
            "path": str(model_path),
            "sha256": manifest.model["sha256"],
            "starlabel_version": header.get("library_version"),
            "training_set": header.get("training_set"),
        },
        "test_step": options,
    }
    n_written = merge_parts(run_dir, chunks, output, provenance) if done_chunk_names(run_dir) else 0
    finished = time.perf_counter()
    steady = (
        n_after_first / (finished - first_done_at)
        if first_done_at is not None and n_after_first and finished > first_done_at
        else float("nan")
    )
    summary = RunSummary(
        output=output,
        run_dir=run_dir,
        errors_report=report,
        n_inputs=len(described),
        n_bad_inputs=sum(1 for item in described if item.error),
        n_spectra=n_spectra,
        n_written=n_written,
        n_resumed=n_resumed,
        n_processed=n_processed,
        n_failed=n_failed,
        n_errors=n_errors,
        first_error=first_error,
        seconds=finished - began,
        startup_seconds=(first_done_at - began) if first_done_at is not None else float("nan"),
        steady_spectra_per_second=steady,
        engine=str(runner.describe()["name"]),
    )
    write_json_atomic(run_dir / "summary.json", summary.to_json())
    return summary
