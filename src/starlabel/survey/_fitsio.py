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
from typing import TypeAlias, cast, overload

from astropy.io import fits
from astropy.io.fits.hdu.base import ExtensionHDU
from astropy.io.fits.verify import VerifyWarning

__all__ = ["CardValue", "HDU", "column_names", "hdu_at", "header_value", "open_fits", "require_file"]

CardValue: TypeAlias = str | int | float | bool
"""The value of a FITS header card (keyword = value).

astropy also has complex values and ``Undefined`` (a keyword without a value); no
reader here looks one up.
"""

HDU: TypeAlias = ExtensionHDU | fits.PrimaryHDU
"""One header-data unit of a FITS file."""


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


def hdu_at(hdul: fits.HDUList, key: int | str) -> HDU:
    """The HDU at index or name ``key`` of ``hdul``; ``IndexError``/``KeyError`` if absent.

    Only a typed ``hdul[key]``: astropy's ``HDUList.__getitem__`` is unannotated and a
    slice gives an ``HDUList``, so a type checker reads every index as possibly a list.
    """
    return cast(HDU, hdul[key])


def column_names(hdu: fits.BinTableHDU | fits.TableHDU) -> list[str]:
    """Names of the columns of a FITS table HDU, in file order."""
    columns = hdu.columns
    if columns is None:
        raise ValueError(f"FITS table HDU {hdu.name!r} has no column definitions.")
    # ColDefs.names is made by a descriptor astropy leaves untyped; it is a list of str.
    return list(cast("list[str]", columns.names))


@overload
def header_value(header: fits.Header, *keys: str) -> CardValue | None: ...
@overload
def header_value(header: fits.Header, *keys: str, default: CardValue) -> CardValue: ...
def header_value(header: fits.Header, *keys: str, default: CardValue | None = None) -> CardValue | None:
    """The first of ``keys`` present in ``header``, else ``default``."""
    for key in keys:
        if key in header:
            # astropy's Header.__getitem__ is unannotated (a slice gives a Header); a
            # keyword gives the card's value.
            return cast(CardValue, header[key])
    return default
