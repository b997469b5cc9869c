"""Locating the shared real-data folder (APOGEE spectra, masks, Gaia fields).

The folder is never part of the package. Tests, tutorials, benchmarks and the demo
find it through :func:`shared_data_dir`, so one place decides where it is.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir", "SHARED_DATA_ENV"]

SHARED_DATA_ENV = "STARLABEL_SHARED_DATA"


def shared_data_dir() -> Path | None:
    """Return the shared data folder, or ``None`` when it is not available.

    Looks, in order, at ``$STARLABEL_SHARED_DATA``, ``../shared/data`` beside the source
    checkout, and ``../shared/data`` relative to the working directory.
    """
    candidates = []
    if os.environ.get(SHARED_DATA_ENV):
        candidates.append(Path(os.environ[SHARED_DATA_ENV]))
    checkout = Path(__file__).resolve().parents[3]
    candidates += [checkout.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if (candidate / "apogee").is_dir() or (candidate / "gaia").is_dir():
            return candidate
    return None
