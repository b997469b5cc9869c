"""Opening FITS files with astropy's warnings handled on purpose, not silenced.

Real survey files carry small defects: DR13 aspcapStar headers hold ``NAN`` where
FITS wants a number, which astropy repairs with a ``VerifyWarning``. A repaired card is
harmless, so it becomes a *note* on the spectra. A truncated file is not harmless:
astropy only warns ("File may have been truncated") and may hand back short arrays,
so that warning becomes an :class:`OSError` naming the file. Any other warning is
passed on unchanged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

__all__ = ["header_value", "open_fits", "require_file"]


def require_file(path: str | os.PathLike[str], kind: str) -> Path:
    """``path`` as a Path; ``OSError`` naming the ``kind`` of file when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise OSError(f"{kind} file {str(path)!r} does not exist.")
    return path


@contextmanager
def open_fits(path: Path, notes: list[str]) -> Iterator[fits.HDUList]:
    """Open ``path`` read-only; append repairs to ``notes``; raise on truncation."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
        except (OSError, ValueError, IndexError, TypeError) as error:
            raise OSError(f"{path.name}: not a readable FITS file ({error}).") from error
        try:
            with hdul:
                yield hdul
        except (OSError, ValueError, IndexError, KeyError, TypeError) as error:
            # Short data from a truncated file surfaces as a reshape error while reading;
            # the warning astropy recorded says what really happened.
            if any("truncat" in str(w.message).lower() for w in caught):
                raise OSError(f"{path.name}: file is truncated ({error}).") from error
            raise
    repaired = 0
    for warning in caught:
        message = str(warning.message)
        if "truncat" in message.lower():
            raise OSError(f"{path.name}: file is truncated ({message}).")
        if issubclass(warning.category, VerifyWarning):
            repaired += "Fixed" in message
            continue
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if repaired:
        notes.append(f"{path.name}: astropy repaired {repaired} non-standard FITS header card(s)")


def header_value(header: fits.Header, *keys: str, default: object = None) -> object:
    """The first of ``keys`` present in ``header``, else ``default``."""
    for key in keys:
        if key in header:
            return header[key]
    return default
