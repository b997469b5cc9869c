"""JAX's persistent compilation cache, pointed at a per-user folder.

Compiling the batched test step takes 2–3 s on a CPU; every new process pays it: each
run, each resume after a crash, each Ray actor. JAX can keep compiled executables on
disk and reuse them when the program, shapes and backend are the same (the results
are bit-identical: the same executable runs). The CLI switches it on for every command
that computes, the pipeline by default.

JAX by default writes only executables that took ≥ 1 s to compile. A CLI run also
compiles dozens of small programs (array staging, the design matrix, eager array
operations: 10–50 ms each, about 1 s together), so :func:`enable_compilation_cache`
lowers that threshold to 0 unless the user set it (``JAX_PERSISTENT_CACHE_*``
environment variables or ``jax.config``): reading a small entry back costs ~1 ms.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["CACHE_DIR_ENV", "default_cache_dir", "default_compilation_cache_dir", "enable_compilation_cache"]

logger = logging.getLogger("starlabel")

_SMALL_ENTRIES = {
    # option -> (JAX's default, our value); changed only while it still has JAX's default
    "jax_persistent_cache_min_compile_time_secs": (1.0, 0.0),
    "jax_persistent_cache_min_entry_size_bytes": (0, -1),
}

CACHE_DIR_ENV = "STARLABEL_CACHE_DIR"
"""Environment variable naming starlabel's cache folder (compiled code goes in ``jax/``)."""


def default_cache_dir() -> Path:
    """``$STARLABEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/starlabel``, else ``~/.cache/starlabel``."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "starlabel"


def default_compilation_cache_dir() -> Path:
    """``$STARLABEL_CACHE_DIR/jax``, else ``$XDG_CACHE_HOME/starlabel/jax``, else ``~/.cache/starlabel/jax``."""
    return default_cache_dir() / "jax"


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> str | None:
    """Use JAX's persistent compilation cache in ``directory`` (default: see above).

    Small programs are cached too (see above). A cache folder the user configured in
    JAX already is kept, and so are its size thresholds. JAX reads the setting
    when it first compiles in a process, so call this before any computation (the CLI
    and the pipeline's workers do). Returns the folder in use, or None when it could
    not be created (the run then simply compiles, with a logged warning).
    """
    import jax

    # JAX's options are dynamic attributes of jax.config, invisible to a type checker.
    configured = jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    if configured:
        return str(configured)
    path = Path(directory).expanduser() if directory is not None else default_compilation_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("starlabel: no compilation cache (%s); every process compiles afresh.", error)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    for option, (jax_default, ours) in _SMALL_ENTRIES.items():
        if getattr(jax.config, option) == jax_default and option.upper() not in os.environ:
            jax.config.update(option, ours)
    return str(path)
