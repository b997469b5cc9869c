"""The table of spectrum file formats, format detection, and reading many files at once.

The registry is an explicit, read-only table (:data:`SPECTRUM_FORMATS`), not something
that import side effects fill in: what starlabel can read is visible in one place.
Each entry has a reader and, for formats that can be recognised without help, an
identifier. Generic formats (``fits``, ``hdf5``, ``npz``) need an
:class:`ArrayLayout` and are only used when named.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from astropy.io import fits

from ._apogee import read_apstar, read_aspcapstar
from ._generic import ArrayLayout, read_fits_spectra, read_hdf5_spectra, read_npz_spectra
from ._spectra import SurveySpectra

__all__ = [
    "SPECTRUM_FORMATS",
    "ReadOptions",
    "SkippedFile",
    "SpectrumFormat",
    "expand_inputs",
    "identify_format",
    "read_many",
    "read_spectra",
]


@dataclass(frozen=True)
class ReadOptions:
    """Options for the readers; each format uses the ones that apply to it.

    Parameters
    ----------
    combination : {"global", "pixel", "visits"} or int
        apStar: which combined spectrum or the visits (see :func:`read_apstar`).
    layout : ArrayLayout, optional
        Required by the generic ``fits``, ``hdf5`` and ``npz`` formats.
    """

    combination: str | int = "global"
    layout: ArrayLayout | None = None


def _needs_layout(
    name: str, reader: Callable[[Path, ArrayLayout], SurveySpectra]
) -> Callable[[Path, ReadOptions], SurveySpectra]:
    def read(path: Path, options: ReadOptions) -> SurveySpectra:
        if options.layout is None:
            raise ValueError(
                f"format {name!r} is generic: pass layout=ArrayLayout(flux=..., flux_err=..., ...)"
                f" saying where {path.name} keeps each quantity."
            )
        return reader(path, options.layout)

    return read


def _fits_header(path: Path) -> fits.Header | None:
    # Identification only peeks: a defective header is the reader's to report, later.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fits.getheader(path, 0)
        except Exception:  # noqa: BLE001
            return None


# "aspcapStar" contains "apStar": names must not be preceded by a letter.
_APSTAR_NAME = re.compile(r"(?<![A-Za-z])apStar")
_ASPCAPSTAR_NAME = re.compile(r"(?<![A-Za-z])aspcapStar")


def _identifier(
    own: re.Pattern[str], other: re.Pattern[str], header_test: Callable[[fits.Header], bool]
) -> Callable[[Path], bool]:
    """Recognise a file by its name, else (for FITS not named as the other kind) its header."""

    def identify(path: Path) -> bool:
        if own.search(path.name):
            return True
        if not path.name.lower().endswith((".fits", ".fit", ".fits.gz")) or other.search(path.name):
            return False
        header = _fits_header(path)
        return header is not None and header_test(header)

    return identify


_is_apstar = _identifier(_APSTAR_NAME, _ASPCAPSTAR_NAME, lambda h: "NWAVE" in h and "FERRE" not in h)
_is_aspcapstar = _identifier(_ASPCAPSTAR_NAME, _APSTAR_NAME, lambda h: "FERRE" in h)


@dataclass(frozen=True)
class SpectrumFormat:
    """One row of the format table.

    Attributes
    ----------
    name : str
        Short name used by ``format=`` and the CLI.
    description : str
        What the format is, shown when nothing matches.
    read : callable
        ``read(path, options) -> SurveySpectra``.
    identify : callable or None
        ``identify(path) -> bool``; ``None`` for formats that must be named.
    """

    name: str
    description: str
    read: Callable[[Path, ReadOptions], SurveySpectra]
    identify: Callable[[Path], bool] | None


SPECTRUM_FORMATS: MappingProxyType[str, SpectrumFormat] = MappingProxyType(
    {
        "apstar": SpectrumFormat(
            "apstar",
            "APOGEE apStar (raw flux, error, bitmask in HDUs 1-3)",
            lambda path, options: read_apstar(path, combination=options.combination),
            _is_apstar,
        ),
        "aspcapstar": SpectrumFormat(
            "aspcapstar",
            "APOGEE aspcapStar (normalised flux, error, model; ASPCAP table in HDU 4)",
            lambda path, options: read_aspcapstar(path),
            _is_aspcapstar,
        ),
        "fits": SpectrumFormat(
            "fits", "any FITS file, with an ArrayLayout", _needs_layout("fits", read_fits_spectra), None
        ),
        "hdf5": SpectrumFormat(
            "hdf5", "any HDF5 file, with an ArrayLayout", _needs_layout("hdf5", read_hdf5_spectra), None
        ),
        "npz": SpectrumFormat(
            "npz", "a NumPy .npz archive, with an ArrayLayout", _needs_layout("npz", read_npz_spectra), None
        ),
    }
)
"""Known spectrum formats, in the order :func:`identify_format` tries them."""


def _format_list() -> str:
    return "; ".join(f"{f.name}: {f.description}" for f in SPECTRUM_FORMATS.values())


def identify_format(path: str | os.PathLike[str]) -> str:
    """Name of the format of ``path`` (``"apstar"`` or ``"aspcapstar"``).

    Looks at the file name first, then at the primary FITS header.

    Raises
    ------
    ValueError
        When no format recognises the file; the message lists the known formats and
        says how to name one.
    """
    path = Path(path)
    for spec in SPECTRUM_FORMATS.values():
        if spec.identify is not None and spec.identify(path):
            return spec.name
    raise ValueError(
        f"cannot tell the format of {path.name}; known formats: {_format_list()}."
        " Name one with format=... (and layout=ArrayLayout(...) for the generic ones)."
    )


def read_spectra(
    path: str | os.PathLike[str],
    format: str | None = None,
    options: ReadOptions | None = None,
) -> SurveySpectra:
    """Read one spectrum file through the format table.

    Parameters
    ----------
    path : path-like
    format : str, optional
        A key of :data:`SPECTRUM_FORMATS`; default: detect with :func:`identify_format`.
    options : ReadOptions, optional

    Returns
    -------
    SurveySpectra

    Raises
    ------
    ValueError
        For an unknown or undetectable format (the message lists the known ones).
    OSError, KeyError
        From the reader, naming the file.
    """
    path = Path(path)
    name = identify_format(path) if format is None else format.lower()
    if name not in SPECTRUM_FORMATS:
        raise ValueError(f"unknown format {format!r}; known formats: {_format_list()}.")
    return SPECTRUM_FORMATS[name].read(path, options or ReadOptions())


@dataclass(frozen=True)
class SkippedFile:
    """A file that could not be read, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{Path(self.path).name}: {self.reason}"


_FOLDER_SUFFIXES = (".fits", ".fit", ".fits.gz")


def expand_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], pattern: str | None = None
) -> list[Path]:
    """Files named by ``inputs``: files as given, folders expanded to their FITS files.

    Parameters
    ----------
    inputs : path-like or iterable of path-like
        Files and/or folders.
    pattern : str, optional
        Glob for folders (default: every ``*.fits``, ``*.fit``, ``*.fits.gz``), sorted.

    Raises
    ------
    FileNotFoundError
        If an input does not exist (all missing inputs are named).
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    files: list[Path] = []
    missing: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = (
                sorted(path.glob(pattern))
                if pattern
                else sorted(p for p in path.iterdir() if p.name.lower().endswith(_FOLDER_SUFFIXES))
            )
            files += [p for p in found if p.is_file()]
        elif path.is_file():
            files.append(path)
        else:
            missing.append(str(path))
    if missing:
        raise FileNotFoundError(f"input(s) not found: {missing}.")
    return files


def read_many(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    format: str | None = None,
    options: ReadOptions | None = None,
    pattern: str | None = None,
    progress: bool = True,
) -> tuple[SurveySpectra, tuple[SkippedFile, ...]]:
    """Read many spectrum files (and folders of them) into one :class:`SurveySpectra`.

    A file that cannot be read (truncated, not FITS, wrong layout, a different pixel
    grid from the first file read) is skipped and reported by name; the rest still load.

    Parameters
    ----------
    inputs : path-like or iterable of path-like
        Files and/or folders (see :func:`expand_inputs`).
    format : str, optional
        Force one format for every file; default: detect per file.
    options : ReadOptions, optional
    pattern : str, optional
        Glob for folders.
    progress : bool
        Show a rich progress bar on stderr.

    Returns
    -------
    spectra : SurveySpectra
        Every readable spectrum, in input order.
    skipped : tuple of SkippedFile
        Each unreadable file with the reason.

    Raises
    ------
    FileNotFoundError
        If an input does not exist.
    ValueError
        If no file could be read at all (the message gives the first reasons).
    """
    files = expand_inputs(inputs, pattern)
    if not files:
        raise ValueError(f"no spectrum files found in {inputs!r} (pattern {pattern or '*.fits'}).")
    options = options or ReadOptions()
    parts: list[SurveySpectra] = []
    skipped: list[SkippedFile] = []

    def read_one(path: Path) -> None:
        try:
            part = read_spectra(path, format, options)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            skipped.append(SkippedFile(str(path), str(error)))
            return
        if parts and part.n_pixels != parts[0].n_pixels:
            skipped.append(
                SkippedFile(
                    str(path),
                    f"has {part.n_pixels} pixels but {parts[0].sources[0]} has {parts[0].n_pixels};"
                    " read files of one grid together",
                )
            )
            return
        parts.append(part)

    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("reading spectra"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("read", total=len(files))
            for path in files:
                read_one(path)
                bar.advance(task)
    else:
        for path in files:
            read_one(path)
    if not parts:
        reasons = "; ".join(str(s) for s in skipped[:3])
        raise ValueError(f"none of the {len(files)} file(s) could be read: {reasons}.")
    return SurveySpectra.concatenate(parts), tuple(skipped)
