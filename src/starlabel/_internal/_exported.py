"""Traced programs kept on disk (``jax.export``), so a new process does not trace them again.

JAX's persistent compilation cache (``_compile_cache.py``) skips XLA's compilation, but
each process still traces the Python function and lowers it to find its cache entry.
For the Cannon's test step (a vmapped, multi-start Levenberg–Marquardt) that tracing
takes longer than the computation on 10⁴ spectra: about a second of every
``starlabel infer`` on a CPU. :func:`exported_call` stores the traced program once as
serialised StableHLO (:func:`jax.export.export`), keyed by everything that decides it
without tracing: the function's name, its static configuration, the input shapes and
dtypes, the JAX version, x64 mode and a hash of starlabel's own source (so an edited
program never loads a stale one). A later process deserialises it in about a
millisecond; compiling it then hits the persistent compilation cache.

Every call goes through the exported program, the first one included, so repeated
runs give bit-identical results. Used only where the persistent cache is on (the CLI,
the pipeline); without it, it is the ordinary ``jax.jit``. Without ``flatbuffers``
(which ``jax.export`` needs to serialise) nothing is stored and each process traces.
An unreadable entry is exported again.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

__all__ = ["compile_in_background", "exported_call", "exported_dir", "wait_for_background"]

logger = logging.getLogger("starlabel")

_CALLS: dict[str, Callable[..., Any]] = {}
"""Key -> jitted call of the exported program, for later calls in this process."""
_KEYS: dict[Hashable, str] = {}
"""(name, static, shapes, x64) -> key, so that a process builds each key once."""
_PENDING: dict[str, Future[None]] = {}
"""Key -> a compilation running in a background thread (:func:`compile_in_background`)."""
_PENDING_AT_EXIT: list[bool] = []


def exported_dir() -> Path | None:
    """``<compilation cache>/../exported`` when JAX's persistent cache is on, else None."""
    import jax

    # JAX's options are dynamic attributes of jax.config, invisible to a type checker.
    folder = jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    return Path(folder).parent / "exported" if folder else None


@functools.cache
def _source_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _key(name: str, static: Hashable, avals: Sequence[Any]) -> str:
    import jax

    parts = [
        name,
        repr(static),
        repr([(a.shape, str(a.dtype)) for a in avals]),
        jax.__version__,
        jax.default_backend(),
        # A dynamic option of jax.config, like the cache folder above.
        str(bool(jax.config.jax_enable_x64)),  # pyright: ignore[reportAttributeAccessIssue]
        _source_hash(),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def exported_call(
    name: str, fn: Callable[..., tuple[Any, ...]], static: Hashable, arrays: Sequence[Any]
) -> tuple[Any, ...]:
    """``jax.jit(fn)(*arrays)`` through a program traced once and kept on disk.

    Parameters
    ----------
    name : str
        Stable name of the function (part of the key and of the file name).
    fn : callable
        A pure function of ``arrays`` returning a tuple of arrays, with its static
        configuration bound in (e.g. ``functools.partial``).
    static : hashable
        Everything bound into ``fn`` that changes the program. Its ``repr`` is part of
        the key, so it must show every value (Equinox modules of static fields do).
    arrays : sequence of arrays
        The inputs (numpy or JAX arrays).

    Returns
    -------
    tuple of jax.Array
        What ``fn`` returns.
    """
    import jax
    import numpy as np

    folder = exported_dir()
    if folder is None:
        return jax.jit(fn)(*arrays)
    avals = [jax.ShapeDtypeStruct(np.shape(a), jax.dtypes.canonicalize_dtype(a.dtype)) for a in arrays]
    # The key's repr of `static` (Equinox modules print through wadler_lindig) costs
    # tens of ms; a process computes it once per configuration and shapes.
    memo = (name, static, tuple((a.shape, str(a.dtype)) for a in avals), jax.config.jax_enable_x64)  # pyright: ignore[reportAttributeAccessIssue]
    try:
        key = _KEYS.get(memo) or _KEYS.setdefault(memo, _key(name, static, avals))
    except TypeError:  # an unhashable configuration
        key = _key(name, static, avals)
    pending = _PENDING.get(key)
    if pending is not None:  # compiled in the background: wait, then read it from the cache
        pending.exception()
    call = _CALLS.get(key)
    if call is None:
        call = _CALLS[key] = _program(name, fn, key, folder, avals)
    return call(*arrays)


def _program(name: str, fn: Callable[..., Any], key: str, folder: Path, avals: Sequence[Any]) -> Any:
    """The jitted call of the exported program ``key``, loaded, else traced and stored."""
    import jax

    path = folder / f"{name}-{key}.stablehlo"
    exported = _load(path)
    if exported is None:
        exported = jax.export.export(jax.jit(fn))(*avals)
        _store(path, exported)
    return jax.jit(_named(name, exported.call))


def compile_in_background(
    name: str, fn: Callable[..., tuple[Any, ...]], static: Hashable, avals: Sequence[Any]
) -> Future[None] | None:
    """Trace, export and compile ``fn`` for ``avals`` in a thread, into the persistent cache.

    For a program a command will certainly need later (the test step of a calibrating
    ``train``): XLA compiles it on the other core while this one works, and the first
    :func:`exported_call` with the same key waits for it and then reads the executable
    from the cache instead of compiling it again. ``avals`` are
    :class:`jax.ShapeDtypeStruct` without sharding (the calls pass uncommitted arrays:
    NumPy arrays or ``device_put`` without a device). Call it in the precision mode of
    the later call (x64). None (nothing started) when the cache is off.
    """
    import jax

    folder = exported_dir()
    if folder is None:
        return None
    memo = (name, static, tuple((a.shape, str(a.dtype)) for a in avals), jax.config.jax_enable_x64)  # pyright: ignore[reportAttributeAccessIssue]
    key = _KEYS.get(memo) or _KEYS.setdefault(memo, _key(name, static, avals))
    if key in _CALLS or key in _PENDING:
        return _PENDING.get(key)
    x64 = bool(jax.config.jax_enable_x64)  # pyright: ignore[reportAttributeAccessIssue]
    future: Future[None] = Future()
    _PENDING[key] = future

    def work() -> None:
        try:
            with jax.enable_x64(x64):  # the precision mode is per thread
                call = _program(name, fn, key, folder, avals)
                call.lower(*avals).compile()  # written to the persistent cache
            _CALLS.setdefault(key, call)
            future.set_result(None)
        except BaseException as error:  # the later call compiles it itself
            logger.debug("starlabel: background compilation of %s failed (%s)", name, error)
            future.set_exception(error)

    if not _PENDING_AT_EXIT:  # a process that fails first still lets XLA finish, then exits
        atexit.register(wait_for_background)
        _PENDING_AT_EXIT.append(True)
    threading.Thread(target=work, name=f"compile-{name}", daemon=True).start()
    return future


def wait_for_background() -> None:
    """Wait for every background compilation (before a process exits: see the CLI)."""
    for future in list(_PENDING.values()):
        future.exception()


def _named(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` under ``name``, so that JAX's logs and cache keys say which program it is."""

    def program(*arrays: Any) -> Any:
        return call(*arrays)

    program.__name__ = program.__qualname__ = name
    return program


def _load(path: Path) -> Any | None:
    import jax

    try:
        return jax.export.deserialize(bytearray(path.read_bytes()))
    except FileNotFoundError:
        return None
    except Exception as error:  # a corrupt or foreign entry: export again
        logger.debug("starlabel: ignoring exported program %s (%s)", path, error)
        return None


def _store(path: Path, exported: Any) -> None:
    try:
        data = exported.serialize()
    except ImportError as error:  # jax.export serialises with flatbuffers
        logger.debug("starlabel: not storing %s (%s)", path, error)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name, then a rename: concurrent processes (Ray actors) never read
        # a half-written entry.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
            handle.write(data)
        os.replace(handle.name, path)
    except OSError as error:  # a read-only or full cache folder: still correct, just slower
        logger.debug("starlabel: could not store exported program %s (%s)", path, error)
