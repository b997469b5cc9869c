"""Run directories: the manifest of what a run was asked to do, and its public reader.

``RUN_DIR/manifest.json`` records the model file (path, SHA-256, kind, label names,
the starlabel version that wrote it), the inference options, the chunk size, the
output path and every input file with its checksum. A restart recomputes the same
record and compares the parts that decide *which results* the run produces; any
difference is refused with a message naming it, because mixing parts computed with
two models or two option sets would give a silently inconsistent catalogue. The
engine and the number of workers are recorded too but may change between attempts:
both engines produce identical results.

The format lives here, with the other file formats, so that every layer above
(:mod:`starlabel.evaluate`'s report, :mod:`starlabel.pipeline` that writes it) reads a
run directory through :func:`read_run` (and its latest attempt's counts through
:func:`read_run_counts`) instead of parsing its JSON by raw keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._errors import StarlabelUserError
from .._internal import write_json_atomic
from .._version import __version__

__all__ = [
    "MANIFEST_NAME",
    "SUMMARY_NAME",
    "InputFile",
    "RunCounts",
    "RunManifest",
    "RunMismatchError",
    "read_manifest",
    "read_run",
    "read_run_counts",
]

MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "summary.json"
_FORMAT = "starlabel-run"
_FORMAT_VERSION = 1


class RunMismatchError(StarlabelUserError, RuntimeError):
    """A run directory holds work done with a different model, inputs or options."""


@dataclass(frozen=True)
class InputFile:
    """One input dataset file as recorded in a run manifest.

    Attributes
    ----------
    path : str
        Absolute path.
    size : int
        Size in bytes.
    mtime_ns : int
        Modification time (ns); with ``size`` it decides whether a restart must re-hash.
    sha256 : str
        Hex SHA-256 of the file's bytes.
    n_stars, n_pixels : int
        Shape of its ``flux`` array; ``-1`` when the file could not be read.
    error : str
        Why the file cannot be used (empty when it can). Such files go to the errors
        report instead of stopping the run.
    """

    path: str
    size: int
    mtime_ns: int
    sha256: str
    n_stars: int
    n_pixels: int
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict for the manifest."""
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> InputFile:
        """Inverse of :meth:`to_json`."""
        return cls(**record)


@dataclass(frozen=True)
class RunManifest:
    """Everything that determines a run's results, as written to ``manifest.json``.

    Attributes
    ----------
    model : mapping
        ``path``, ``sha256``, ``kind``, ``label_names``, ``library_version`` (of the
        starlabel that saved it) and ``config`` from the model header.
    options : mapping
        ``chunk_size``, ``chunk_plan`` (see :data:`~starlabel.pipeline._chunks.CHUNK_PLAN`),
        ``infer_options`` (the test step's flat keyword form), ``test_step`` (its
        serialised objects, :meth:`starlabel.models.TestStep.to_json`) and
        ``labels_from_input``.
    output : str
        Absolute path of the merged output table.
    inputs : tuple of InputFile
        The input files, in run order.
    engine : mapping
        Engine description of the latest attempt (informational; not compared).
    library_version : str
        starlabel version running the pipeline.
    """

    model: Mapping[str, Any]
    options: Mapping[str, Any]
    output: str
    inputs: tuple[InputFile, ...]
    engine: Mapping[str, Any] = field(default_factory=dict)
    library_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "library_version": self.library_version,
            "model": dict(self.model),
            "options": dict(self.options),
            "output": self.output,
            "engine": dict(self.engine),
            "inputs": [item.to_json() for item in self.inputs],
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunManifest:
        """Inverse of :meth:`to_json`."""
        return cls(
            model=record["model"],
            options=record["options"],
            output=record["output"],
            inputs=tuple(InputFile.from_json(item) for item in record["inputs"]),
            engine=record.get("engine", {}),
            library_version=record.get("library_version", "unknown"),
        )

    def write(self, run_dir: Path) -> Path:
        """Write ``run_dir/manifest.json`` atomically."""
        path = run_dir / MANIFEST_NAME
        write_json_atomic(path, self.to_json())
        return path

    def check_compatible(self, previous: RunManifest, run_dir: Path) -> None:
        """Raise :class:`RunMismatchError` unless ``previous`` would give the same results.

        Compared: model checksum, options (chunk size, inference options, reference
        labels), output path, and the input list (paths in order and checksums).
        """
        problems = []
        if previous.model.get("sha256") != self.model.get("sha256"):
            problems.append(
                f"the model differs ({previous.model.get('path')} sha256"
                f" {str(previous.model.get('sha256'))[:12]}… vs {self.model.get('path')}"
                f" sha256 {str(self.model.get('sha256'))[:12]}…)"
            )
        for key in sorted(set(previous.options) | set(self.options)):
            if previous.options.get(key) != self.options.get(key):
                problems.append(
                    f"option {key!r} differs ({previous.options.get(key)!r} before,"
                    f" {self.options.get(key)!r} now)"
                )
        if previous.output != self.output:
            problems.append(f"the output differs ({previous.output} vs {self.output})")
        old_paths = [item.path for item in previous.inputs]
        new_paths = [item.path for item in self.inputs]
        if old_paths != new_paths:
            added = sorted(set(new_paths) - set(old_paths))
            removed = sorted(set(old_paths) - set(new_paths))
            detail = (
                f"{len(added)} added (e.g. {added[:2]}), {len(removed)} removed (e.g. {removed[:2]})"
                if added or removed
                else "same files in a different order"
            )
            problems.append(f"the input list differs: {detail}")
        else:
            changed = [
                new.path
                for old, new in zip(previous.inputs, self.inputs, strict=True)
                if old.sha256 != new.sha256
            ]
            if changed:
                problems.append(
                    f"{len(changed)} input file(s) changed since the run started, e.g. {changed[:2]}"
                )
        if problems:
            raise RunMismatchError(
                f"run directory {str(run_dir)!r} belongs to a different run: "
                + "; ".join(problems)
                + ". Rerun with overwrite=True (CLI: --overwrite) to discard its work,"
                " or choose another output path."
            )


def read_manifest(run_dir: Path) -> RunManifest | None:
    """The manifest in ``run_dir``, or None when there is none yet.

    Raises
    ------
    RunMismatchError
        If the manifest exists but is not a starlabel run manifest or is unreadable.
    """
    path = run_dir / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format") != _FORMAT:
            raise ValueError(f"format is {record.get('format')!r}")
        return RunManifest.from_json(record)
    except (ValueError, KeyError, TypeError) as error:
        raise RunMismatchError(
            f"{str(path)!r} is not a readable starlabel run manifest ({error}); rerun with"
            " overwrite=True (CLI: --overwrite) to start the run afresh."
        ) from error


def read_run(path: str | os.PathLike[str]) -> RunManifest:
    """The manifest of a run directory (``OUTPUT.run`` of :func:`~starlabel.pipeline.run_inference`).

    Parameters
    ----------
    path : path-like
        The run directory.

    Returns
    -------
    RunManifest
        Model, options (``infer_options``, ``test_step``), output path, inputs, engine.

    Raises
    ------
    FileNotFoundError
        If ``path`` holds no ``manifest.json``.
    RunMismatchError
        If the manifest is not a readable starlabel run manifest.
    """
    run_dir = Path(path)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise FileNotFoundError(
            f"{str(run_dir)!r} is a folder without {MANIFEST_NAME}; pass a run directory"
            " (OUT.run from `starlabel infer`) or a results table."
        )
    return manifest


@dataclass(frozen=True)
class RunCounts:
    """The counts and timing of a run's latest attempt, read from ``RUN_DIR/summary.json``.

    The pipeline writes the file (``RunSummary.to_json``); readers use this type instead
    of its raw keys. Attributes as in ``starlabel.pipeline.RunSummary``: spectra in the
    inputs, in the output, failed, from unreadable files (count of files), processed by
    the latest attempt, resumed from earlier attempts; its wall time (s) and rate
    (spectra/s).
    """

    n_spectra: int
    n_written: int
    n_failed: int
    n_bad_inputs: int
    n_processed: int
    n_resumed: int
    seconds: float
    spectra_per_second: float

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunCounts:
        """From the parsed ``summary.json`` (a KeyError names a missing entry)."""
        return cls(
            n_spectra=int(record["n_spectra"]),
            n_written=int(record["n_written"]),
            n_failed=int(record["n_failed"]),
            n_bad_inputs=int(record["n_bad_inputs"]),
            n_processed=int(record["n_processed"]),
            n_resumed=int(record["n_resumed"]),
            seconds=float(record["seconds"]),
            spectra_per_second=float(record["spectra_per_second"]),
        )


def read_run_counts(path: str | os.PathLike[str]) -> RunCounts | None:
    """The latest attempt's :class:`RunCounts` of run directory ``path``; None before one finished.

    Raises
    ------
    RunMismatchError
        If ``summary.json`` exists but is not a readable run summary.
    """
    summary = Path(path) / SUMMARY_NAME
    if not summary.exists():
        return None
    try:
        return RunCounts.from_json(json.loads(summary.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise RunMismatchError(
            f"{str(summary)!r} is not a readable starlabel run summary ({error})."
        ) from error
