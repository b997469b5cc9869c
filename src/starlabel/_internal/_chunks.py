"""Batched calls in fixed-size chunks: one compiled program serves every chunk.

XLA compiles a program per input shape, so a function mapped over the stars of a
survey is called on chunks of exactly ``size`` rows; the last, short chunk is padded
(by default with copies of its first row, which keeps the padded rows finite and
well-conditioned) and the padded outputs are dropped.

With ``workers > 1`` the chunks run in a thread pool: XLA releases the GIL while it
executes, so chunks of small per-star programs (a batched Levenberg–Marquardt), whose
operations are too small for XLA's own intra-op threads, run side by side on the cores.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = ["map_chunks", "repeat_first_row", "usable_cpus"]

Rows = TypeVar("Rows")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one): ``workers``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def repeat_first_row(rows: Rows, size: int) -> Rows:
    """Pad every leaf of ``rows`` (leading axis = stars) to ``size`` rows with its first row."""

    def pad(leaf: Any) -> Any:
        leaf = np.asarray(leaf)
        missing = size - leaf.shape[0]
        return np.concatenate([leaf, np.repeat(leaf[:1], missing, axis=0)]) if missing else leaf

    return jax.tree.map(pad, rows)


def map_chunks(
    fn: Callable[[Rows], Any],
    rows: Rows,
    *,
    size: int,
    pad: Callable[[Rows, int], Rows] = repeat_first_row,
    workers: int = 1,
) -> Any:
    """Apply ``fn`` to ``rows`` ``size`` rows at a time and concatenate its outputs.

    Parameters
    ----------
    fn
        Called on a pytree like ``rows`` whose leaves hold exactly ``size`` rows; returns
        a pytree of arrays whose leading axis is those rows (anything else — the model,
        shared arrays — is closed over).
    rows
        Pytree of arrays sharing a leading axis of ``n`` rows (stars). Full chunks are
        passed as slices, without a copy.
    size
        Chunk length (≥ 1); pick it with :func:`starlabel._internal.bucket_size` or a
        caller's own rule so that similar calls share a compiled program.
    pad
        ``pad(short_chunk, size)`` returns the last chunk grown to ``size`` rows; the
        default repeats its first row. Pass another rule where padded rows must be
        inert in a particular way (zero inverse variance, unobserved masks).
    workers
        Chunks run at once in threads (each under the caller's 64-bit setting, which
        JAX keeps per thread). Use it where one chunk cannot keep the cores busy.

    Returns
    -------
    pytree of numpy arrays
        ``fn``'s output structure, each leaf with ``n`` rows (padding removed).
    """
    if size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {size}.")
    leaves = jax.tree.leaves(rows)
    if not leaves:
        raise ValueError("map_chunks needs at least one array to chunk.")
    n = int(np.shape(leaves[0])[0])
    if any(np.shape(leaf)[0] != n for leaf in leaves):
        shapes = [np.shape(leaf) for leaf in leaves]
        raise ValueError(f"every chunked array must have the same number of rows, got shapes {shapes}.")
    if n == 0:
        raise ValueError("map_chunks got zero rows.")
    chunks = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        chunk = jax.tree.map(lambda leaf, a=start, b=stop: leaf[a:b], rows)
        chunks.append((pad(chunk, size) if stop - start < size else chunk, stop - start))

    def run(item: tuple[Rows, int]) -> Any:
        out = fn(item[0])
        return jax.tree.map(lambda leaf, k=item[1]: np.asarray(leaf)[:k], out)

    if workers <= 1 or len(chunks) == 1:
        pieces = [run(item) for item in chunks]
    else:
        enable = bool(jax.config.read("jax_enable_x64"))  # thread-local: re-enter it in the workers

        def in_worker(item: tuple[Rows, int]) -> Any:
            with jax.enable_x64(enable):
                return run(item)

        # The first chunk runs here, alone: it compiles (or loads) the program once,
        # where workers starting together would each compile it.
        first = run(chunks[0])
        with concurrent.futures.ThreadPoolExecutor(min(workers, len(chunks) - 1)) as pool:
            pieces = [first, *pool.map(in_worker, chunks[1:])]
    if len(pieces) == 1:
        return pieces[0]
    return jax.tree.map(lambda *parts: np.concatenate(parts), *pieces)
