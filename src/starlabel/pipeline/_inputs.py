"""Input discovery and fingerprints: files, globs and folders → checked dataset files.

A survey run points at many dataset files. Each one is described once per run by an
:class:`InputFile` (path, size, modification time, SHA-256, shape) that goes into the
run manifest, so a restart can tell whether it is still looking at the same data.
Shapes are read from the file headers only; no spectra are loaded here.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._internal._hashing import discard_background_hash, sha256_of_file
from ..data import DATASET_SUFFIXES, InputFile, open_rows

__all__ = ["InputFile", "resolve_inputs", "describe_inputs"]


def _expand(entry: str) -> list[Path]:
    if glob.has_magic(entry):
        matches = sorted(Path(p) for p in glob.glob(entry, recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix.lower() in DATASET_SUFFIXES]
        if not files:
            raise FileNotFoundError(
                f"input pattern {entry!r} matches no dataset files"
                f" ({'/'.join(sorted(DATASET_SUFFIXES))}); check the pattern and quote it"
                " so the shell does not expand it."
            )
        return files
    path = Path(entry)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATASET_SUFFIXES)
        if not files:
            raise FileNotFoundError(
                f"input folder {entry!r} holds no dataset files with suffixes {sorted(DATASET_SUFFIXES)}."
            )
        return files
    if not path.exists():
        raise FileNotFoundError(f"input {entry!r} does not exist; give a file, a folder or a glob.")
    if path.suffix.lower() not in DATASET_SUFFIXES:
        raise ValueError(
            f"input {entry!r} has suffix {path.suffix!r}; dataset files must end in"
            f" {sorted(DATASET_SUFFIXES)} (convert other formats with starlabel's readers)."
        )
    return [path]


def resolve_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, globs and folders into a de-duplicated, ordered list of dataset files.

    Order is the order of ``inputs``; within a glob or a folder, paths are sorted, so
    the same command always yields the same list (and the same chunk plan).

    Parameters
    ----------
    inputs : sequence of str or path-like
        Dataset files (``.npz``, ``.h5``, ``.hdf5``), glob patterns (``"obs/*.npz"``,
        ``"**"`` recurses) or folders (searched recursively).

    Returns
    -------
    list of pathlib.Path
        Absolute paths; a file named twice appears once, at its first position.

    Raises
    ------
    FileNotFoundError
        If an entry does not exist, or a glob or folder holds no dataset files.
    ValueError
        If ``inputs`` is empty or a file has an unknown suffix.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no inputs given; pass at least one dataset file, glob or folder.")
    seen: dict[Path, None] = {}
    for entry in inputs:
        for path in _expand(os.fspath(entry)):
            seen.setdefault(path.resolve(), None)
    return list(seen)


def describe_inputs(paths: Iterable[Path], known: Sequence[InputFile] = ()) -> list[InputFile]:
    """Fingerprint and measure each input file.

    Files whose path, size and modification time equal an entry of ``known`` (the
    manifest of an earlier attempt) keep that entry's checksum instead of being read
    again: hashing a survey costs as much I/O as processing it. This is the same
    change test ``make`` and ``rsync`` use; any edit that touches a file changes it.

    Parameters
    ----------
    paths : iterable of pathlib.Path
        Files from :func:`resolve_inputs`.
    known : sequence of InputFile
        Entries from a previous manifest to reuse.

    Returns
    -------
    list of InputFile
        One per path, in order. Unreadable files get ``n_stars == -1`` and an ``error``.
    """
    cache = {(k.path, k.size, k.mtime_ns): k for k in known}
    # Links (hard or symbolic) to one file are hashed once per run.
    by_target: dict[tuple[int, int, int, int], str] = {}
    described = []
    for path in paths:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key in cache:
            discard_background_hash(path, stat)  # the command line may have started one
            described.append(cache[key])
            continue
        target = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if target not in by_target:
            by_target[target] = sha256_of_file(path, stat)
        error = ""
        n_stars = n_pixels = -1
        try:
            with open_rows(path) as rows:
                n_stars, n_pixels = rows.n_stars, rows.n_pixels
        except Exception as exc:  # a bad file is reported, not fatal (see module docstring)
            error = f"{type(exc).__name__}: {exc}"
        described.append(
            InputFile(str(path), stat.st_size, stat.st_mtime_ns, by_target[target], n_stars, n_pixels, error)
        )
    return described
