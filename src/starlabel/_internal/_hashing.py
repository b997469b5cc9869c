"""SHA-256 of input files, optionally started early on a background thread.

A run manifest records each input's SHA-256 (``starlabel.pipeline._inputs``). On a
577 MB input that costs about 0.45 s of one core, and the command line used to spend
it after importing JAX (about a second of the other core's idle time). hashlib
releases the GIL while it hashes a block, so :func:`hash_in_background`, called before
those imports, does the same work concurrently; :func:`sha256_of_file` then collects
the digest (or hashes in the calling thread when none was started). The digest is the
same either way. Standard library only, so the command line can import it before
numpy and JAX.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["hash_in_background", "sha256_of_file", "discard_background_hash"]

_BLOCK = 1 << 22
"""Bytes read and hashed at a time (large enough that hashlib drops the GIL)."""


class _Pending:
    """One file's digest, computed by the background worker (or found cancelled)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.digest: str | None = None

    def run(self) -> None:
        try:
            if not self.cancelled.is_set():
                self.digest = _hash(self.path, self.cancelled)
        except Exception:  # noqa: BLE001 - the caller hashes again and reports the error
            self.digest = None
        finally:
            self.done.set()

    def result(self) -> str | None:
        """The digest, or None if hashing was cancelled or failed (the caller hashes again)."""
        self.done.wait()
        return self.digest


_PENDING: dict[tuple[int, int, int, int], _Pending] = {}
_LOCK = threading.Lock()


def _key(stat: os.stat_result) -> tuple[int, int, int, int]:
    # The file's identity and version: a link to it shares the digest, an edit changes it.
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _hash(path: Path, cancelled: threading.Event | None = None) -> str | None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            if cancelled is not None and cancelled.is_set():
                return None
            digest.update(block)
    return digest.hexdigest()


def _work(queue: list[_Pending]) -> None:
    for pending in queue:  # in the order the caller will ask for them
        pending.run()


def hash_in_background(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Start hashing the existing regular files of ``paths``, in order, on one daemon thread.

    Anything else (globs, folders, missing files) is skipped: the caller hashes what it
    resolves later. A file already started (or a link to it) is not queued again. One
    thread for all files, so a survey of many files reads them one at a time.
    """
    queue = []
    for entry in paths:
        path = Path(entry)
        try:
            stat = path.stat()
        except (OSError, ValueError):
            continue
        if not path.is_file():
            continue
        with _LOCK:
            if _key(stat) not in _PENDING:
                _PENDING[_key(stat)] = pending = _Pending(path)
                queue.append(pending)
    if queue:
        threading.Thread(target=_work, args=(queue,), name="starlabel-sha256", daemon=True).start()


def discard_background_hash(path: Path, stat: os.stat_result | None = None) -> None:
    """Stop a background hash of ``path`` that is no longer needed (e.g. a resumed run's)."""
    with _LOCK:
        pending = _PENDING.pop(_key(stat or path.stat()), None)
    if pending is not None:
        pending.cancelled.set()


def sha256_of_file(path: Path, stat: os.stat_result | None = None) -> str:
    """Hex SHA-256 of the file's bytes: the background digest when one was started.

    ``stat`` is ``path.stat()`` when the caller has it; a file changed since its
    background hash started has another key and is hashed again here.
    """
    with _LOCK:
        pending = _PENDING.pop(_key(stat or path.stat()), None)
    digest = pending.result() if pending is not None else None
    return digest if digest is not None else _hash(path)  # type: ignore[return-value]
