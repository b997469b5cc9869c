"""Per-chunk result parts, per-chunk error records, the errors report and the merge.

Every write here is atomic (temporary name, ``fsync``, ``os.replace``), so a process
killed at any instant leaves each part either complete under its final name or
absent. Parts are ``.npz`` archives (exact float64, no pickle) named after their
chunk, so a part can exist at most once and the merge, which reads the planned
chunks in plan order, emits every spectrum exactly once.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._internal import atomic_path, write_json_atomic
from ..data import PROVENANCE_KEY, InferenceResult, InputFile, arrow_table
from ._chunks import ChunkSpec, Segment

__all__ = [
    "ERRORS_NAME",
    "PARTS_DIR",
    "clear_partials",
    "done_chunk_names",
    "finished_chunk_names",
    "has_part",
    "merge_parts",
    "read_part",
    "write_chunk_error",
    "write_errors_report",
    "write_part",
]

PARTS_DIR = "parts"
ERRORS_DIR = "errors"
ERRORS_NAME = "errors.csv"
_META_KEY = "__meta__"
_EXTRA_PREFIX = "extra__"


def _part_path(run_dir: Path, chunk: ChunkSpec) -> Path:
    return run_dir / PARTS_DIR / f"{chunk.name}.npz"


def _error_path(run_dir: Path, chunk: ChunkSpec) -> Path:
    return run_dir / ERRORS_DIR / f"{chunk.name}.json"


def clear_partials(run_dir: Path) -> int:
    """Delete temporary files left by a killed attempt; return how many there were."""
    count = 0
    for folder in (run_dir / PARTS_DIR, run_dir / ERRORS_DIR, run_dir):
        if folder.is_dir():
            for leftover in folder.glob("*.partial*"):
                leftover.unlink(missing_ok=True)
                count += 1
    return count


def done_chunk_names(run_dir: Path) -> set[str]:
    """Names of chunks whose part exists (finished in an earlier attempt)."""
    folder = run_dir / PARTS_DIR
    if not folder.is_dir():
        return set()
    return {p.name.removesuffix(".npz") for p in folder.glob("*.npz")}


def finished_chunk_names(run_dir: Path) -> set[str]:
    """Chunks with a part and no error record: complete, skipped on restart.

    A part with a record holds only some of its chunk's rows; such a chunk, like a
    failed one, is tried again on restart.
    """
    folder = run_dir / ERRORS_DIR
    failed = {p.name.removesuffix(".json") for p in folder.glob("*.json")} if folder.is_dir() else set()
    return done_chunk_names(run_dir) - failed


def has_part(run_dir: Path, chunk: ChunkSpec) -> bool:
    """Whether ``chunk`` has a part (complete or partial)."""
    return _part_path(run_dir, chunk).exists()


def write_part(
    run_dir: Path, chunk: ChunkSpec, result: InferenceResult, failures: Sequence[tuple[Segment, str]] = ()
) -> Path:
    """Store one chunk's result atomically.

    ``failures`` are the segments left out of ``result`` (unreadable), with reasons.
    Their error record is written before the part, so that a crash in between never
    leaves a part whose missing rows go unexplained. A chunk without failures drops
    any error record of an earlier attempt after its part is in place: a crash in
    between leaves a record, and a chunk with a record runs again on restart (see
    :func:`finished_chunk_names`), so either way nothing is lost or counted twice.
    """
    expected = chunk.n_stars - sum(segment.n_stars for segment, _ in failures)
    if result.n_stars != expected:
        raise ValueError(
            f"chunk {chunk.name} has {expected} readable spectra but the model returned"
            f" {result.n_stars} results; a model must return one result per input spectrum."
        )
    if failures:
        write_chunk_error(run_dir, chunk, failures, partial=True)
    arrays: dict[str, np.ndarray] = {
        "ids": result.ids.astype(str),
        "labels": result.labels,
        "chi2": result.chi2,
        "dof": result.dof,
        "flags": result.flags,
    }
    if result.cov is not None:
        arrays["cov"] = result.cov
    for key, value in result.extra.items():
        arrays[_EXTRA_PREFIX + key] = np.asarray(value)
    meta = {
        "label_names": list(result.label_names),
        "meta": {k: v for k, v in result.meta.items() if isinstance(v, (str, int, float, bool))},
    }
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = _part_path(run_dir, chunk)
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as handle:
        # numpy's stubs fear a key named allow_pickle in **arrays; ours are column names.
        np.savez(handle, **arrays)  # pyright: ignore[reportArgumentType]
    if not failures:
        _error_path(run_dir, chunk).unlink(missing_ok=True)
    return path


def read_part(path: Path) -> InferenceResult:
    """Read a part written by :func:`write_part`."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    return InferenceResult(
        ids=arrays["ids"],
        label_names=tuple(meta["label_names"]),
        labels=arrays["labels"],
        cov=arrays.get("cov"),
        chi2=arrays["chi2"],
        dof=arrays["dof"],
        flags=arrays["flags"],
        extra={k.removeprefix(_EXTRA_PREFIX): v for k, v in arrays.items() if k.startswith(_EXTRA_PREFIX)},
        meta=meta["meta"],
    )


def write_chunk_error(
    run_dir: Path, chunk: ChunkSpec, failures: Sequence[tuple[Segment, str]], *, partial: bool = False
) -> Path:
    """Record why segments of ``chunk`` failed (one JSON file per chunk).

    ``partial`` marks a chunk whose other segments have a part. Either way the chunk is
    tried again on restart, and the record is dropped once it succeeds in full.
    """
    path = _error_path(run_dir, chunk)
    write_json_atomic(
        path,
        {
            "chunk": chunk.name,
            "partial": partial,
            "failures": [
                {
                    "scope": "chunk",
                    "input": segment.path,
                    "file_index": segment.file_index,
                    "chunk": chunk.name,
                    "rows": segment.rows,
                    "n_spectra": segment.n_stars,
                    "error": error,
                }
                for segment, error in failures
            ],
        },
    )
    return path


_REPORT_COLUMNS = ["scope", "input", "chunk", "rows", "n_spectra", "error"]


def write_errors_report(
    run_dir: Path, inputs: Sequence[InputFile], chunks: Iterable[ChunkSpec]
) -> tuple[Path, int, int]:
    """Write ``run_dir/errors.csv`` listing bad files and failed chunk segments.

    Columns: ``scope`` (``file`` or ``chunk``), ``input``, ``chunk``, ``rows``,
    ``n_spectra`` (spectra left out of the output), ``error``; one row per bad file
    and one per failed segment (a row range of one file within a chunk). Written even
    when empty, so its presence says the run finished its bookkeeping.

    Returns
    -------
    (path, n_errors, n_spectra_missing)
    """
    rows: list[dict[str, Any]] = [
        {"scope": "file", "input": item.path, "chunk": "", "rows": "", "n_spectra": "", "error": item.error}
        for item in inputs
        if item.error
    ]
    done = done_chunk_names(run_dir)
    missing = 0
    for chunk in chunks:
        record_path = _error_path(run_dir, chunk)
        if not record_path.exists():
            continue
        record = json.loads(record_path.read_text())
        if chunk.name in done and not record.get("partial"):
            continue  # a failed attempt's record, left by a crash before a success removed it
        for failure in record.get("failures", []):
            missing += int(failure.get("n_spectra", 0))
            rows.append({key: failure.get(key, "") for key in _REPORT_COLUMNS})
    path = run_dir / ERRORS_NAME
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path, len(rows), missing


def _string_lengths(paths: Sequence[Path]) -> dict[str, int]:
    """Longest string per text column over all parts (astropy needs it for Parquet)."""
    lengths: dict[str, int] = {}
    for path in paths:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                if key == "ids" or key.startswith(_EXTRA_PREFIX):
                    dtype = archive[key].dtype
                    if dtype.kind == "U":
                        column = "id" if key == "ids" else key.removeprefix(_EXTRA_PREFIX)
                        lengths[column] = max(lengths.get(column, 1), dtype.itemsize // 4)
    return lengths


def _arrow_table(result: InferenceResult, schema: Any | None, lengths: dict[str, int]) -> Any:
    # astropy's Parquet reader restores fixed-width strings from the lengths (the
    # widest over all parts) and warns without them.
    table = arrow_table(result.to_table(), lengths)
    if schema is None:
        return table
    if table.schema.names != schema.names:
        raise ValueError(
            f"result parts disagree on columns ({table.schema.names} vs {schema.names}); the model"
            " returned different extra columns for different chunks."
        )
    return table.cast(schema)


def merge_parts(
    run_dir: Path, chunks: Sequence[ChunkSpec], output: Path, provenance: Mapping[str, Any] | None = None
) -> int:
    """Concatenate the finished parts, in plan order, into ``output`` (format by suffix).

    Parquet output is streamed part by part (memory independent of the number of
    spectra); CSV, ECSV, FITS and HDF5 are assembled in memory (about 200 bytes per
    spectrum) and written with :meth:`InferenceResult.write`. Either way the output
    appears atomically, with ``provenance`` (model file, its SHA-256, the inference
    options; see :func:`starlabel.data._result.result_provenance`) in its metadata.

    Returns
    -------
    int
        Number of spectra written.
    """
    done = done_chunk_names(run_dir)
    paths = [_part_path(run_dir, chunk) for chunk in chunks if chunk.name in done]

    def read(path: Path) -> InferenceResult:
        part = read_part(path)
        if provenance is None:
            return part
        return dataclasses.replace(part, meta={**part.meta, PROVENANCE_KEY: dict(provenance)})

    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        if not paths:
            raise ValueError(f"no finished parts in {str(run_dir)!r}: nothing to merge.")
        writer = None
        total = 0
        lengths = _string_lengths(paths)
        with atomic_path(output) as tmp:
            try:
                for path in paths:
                    part = read(path)
                    table = _arrow_table(part, writer.schema if writer is not None else None, lengths)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    total += part.n_stars
            finally:
                if writer is not None:
                    writer.close()
        return total
    parts = [read(path) for path in paths]
    if not parts:
        raise ValueError(f"no finished parts in {str(run_dir)!r}: nothing to merge.")
    merged = parts[0].concatenate_with(parts[1:])
    merged.write(output)
    return merged.n_stars
