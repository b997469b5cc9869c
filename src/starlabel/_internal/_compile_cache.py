"""JAX's persistent compilation cache, pointed at a per-user folder.

Compiling the batched test step takes 2–3 s on a CPU; every new process pays it: each
run, each resume after a crash, each Ray actor. JAX can keep compiled executables on
disk and reuse them when the program, shapes and backend are the same (the results
are bit-identical: the same executable runs). The pipeline switches this on by
default; JAX only writes executables that took ≥ 1 s to compile.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["CACHE_DIR_ENV", "default_cache_dir", "default_compilation_cache_dir", "enable_compilation_cache"]

logger = logging.getLogger("starlabel")

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

    A cache folder the user configured in JAX already is kept. JAX reads the setting
    when it first compiles in a process, so call this before any computation (the CLI
    and the pipeline's workers do). Returns the folder in use, or None when it could
    not be created (the run then simply compiles, with a logged warning).
    """
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return str(configured)
    path = Path(directory).expanduser() if directory is not None else default_compilation_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("starlabel: no compilation cache (%s); every process compiles afresh.", error)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)
