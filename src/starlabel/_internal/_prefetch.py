"""Import modules on a background thread while the main thread waits on compiled code.

``starlabel infer`` spends most of its run inside XLA, which releases the GIL, and on a
CPU it keeps about one core busy. The results writer then imports astropy's table
machinery (about 0.2–0.3 s of one core) at the very end. :func:`import_in_background`
starts such imports early on the idle core; the later ``import`` statement finds the
module ready (or waits for the thread to finish it, under Python's import lock).
Failures are left to that later import, which raises them as usual.
"""

from __future__ import annotations

import importlib
import threading

__all__ = ["import_in_background"]


def _import_all(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # the caller's own import reports it  # noqa: BLE001, S110
            pass


def import_in_background(*names: str) -> threading.Thread:
    """Import ``names`` in order on a daemon thread (an early exit never waits for it)."""
    thread = threading.Thread(target=_import_all, args=(names,), name="starlabel-import", daemon=True)
    thread.start()
    return thread
