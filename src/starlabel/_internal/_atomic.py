"""Atomic file replacement: readers see the old file or the new one, never half of one.

Every writer of a user-visible file (results, run manifests and parts, datasets, model
files, reports) writes to a temporary sibling and renames it over the target. The
temporary name is ``<name>.partial<suffix>``: the pipeline deletes such leftovers of a
killed attempt (``pipeline/_parts.clear_partials``), and ``suffix`` keeps the extension
for writers that pick their format from it (astropy, pyarrow).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "partial_path", "write_json_atomic"]


def partial_path(path: Path, suffix: str = "") -> Path:
    """The temporary sibling of ``path`` that :func:`atomic_path` writes."""
    return path.with_name(path.name + ".partial" + suffix)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it over ``path``.

    Parameters
    ----------
    path
        The file to create or replace.
    suffix
        Appended to the temporary name (``".fits"`` keeps the format visible to writers
        that dispatch on the extension).
    fsync
        Flush the temporary file to disk before the rename, so that a power loss also
        leaves the old or the new file (run manifests and parts; other outputs only
        need the rename, which already protects them from a killed process).

    If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    tmp = partial_path(target, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "w") as handle:
        json.dump(payload, handle, indent=1, default=str)
