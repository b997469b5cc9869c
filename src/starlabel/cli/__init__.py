"""The ``starlabel`` command line: argument parsing and wiring only.

Exit codes, the same for every command:

- 0: success.
- 1: ``infer`` finished with spectra left without results (see its errors report);
  re-running the same command retries them.
- 2: bad input (a missing or unreadable file, a missing key, an unknown label, a bad
  option): one line ``error: …`` on stderr naming the culprit and the fix.
- 3: an internal error (a bug in starlabel or a library under it): a short message on
  stderr, and the full traceback in a log file whose path the message gives
  (``$STARLABEL_CACHE_DIR/logs/``, else ``~/.cache/starlabel/logs/``).
- 4: out of memory: one line ``error: out of memory …`` saying what to make smaller.

Numerical work lives in the library so that it can be tested on its own.
"""

from __future__ import annotations

import gc

from . import _demo, _evaluate, _infer, _prepare, _simulate, _train  # noqa: F401  (register commands)
from ._common import app, startup_done, train_app

__all__ = ["app", "main", "train_app"]


def main() -> None:
    """Console-script entry point."""
    # Start-up (argument parsing, importing JAX and the library) allocates about a
    # million long-lived objects; the cyclic collector would walk them some 400 times
    # (~0.15 CPU s of a 3 s command). It is off until the command has imported what it
    # computes with (see _common.startup_done), then those objects are frozen out of it.
    gc.disable()
    try:
        app()
    finally:
        startup_done()
