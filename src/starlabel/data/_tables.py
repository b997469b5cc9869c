"""Tables on disk: one place that maps suffixes to formats and reads/writes them.

Results (:mod:`starlabel.data._result`) and catalogues (:mod:`starlabel.mixtures`)
share this so that every command accepts the same suffixes. Parquet goes through
pyarrow directly: astropy's Parquet reader needs pandas, which starlabel does not.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .._errors import MissingExtraError
from .._internal import atomic_path

if TYPE_CHECKING:
    from astropy.table import Column, Table

logger = logging.getLogger("starlabel")

__all__ = [
    "FITS_META_CARD",
    "META_KEY",
    "TABLE_FORMATS",
    "arrow_table",
    "csv_comment_header",
    "csv_body",
    "csv_text",
    "read_table_file",
    "table_column",
    "table_format",
    "write_table_file",
]

TABLE_FORMATS: dict[str, str] = {
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".fits": "fits",
    ".fit": "fits",
    ".vot": "votable",
    ".xml": "votable",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".parquet": "parquet",
}


def table_column(table: Table, name: str) -> Column:
    """The column ``name`` of ``table`` (a ``Column`` or ``MaskedColumn``).

    Only a typed ``table[name]``: astropy's ``Table.__getitem__`` is unannotated, so a
    type checker reads its result as the union of what every key kind returns (``Row``,
    ``Table``, …), while a column name always gives a column.
    """
    return cast("Column", table[name])


def table_format(path: str | os.PathLike[str]) -> str:
    """The astropy format name for ``path``'s suffix.

    Raises
    ------
    ValueError
        When the suffix is not one of :data:`TABLE_FORMATS` (the message lists them).
    """
    suffix = Path(path).suffix.lower()
    try:
        return TABLE_FORMATS[suffix]
    except KeyError:
        raise ValueError(
            f"cannot tell the table format of {str(path)!r} from its suffix; use one of"
            f" {sorted(TABLE_FORMATS)}."
        ) from None


META_KEY = "starlabel_meta"
"""Parquet schema-metadata key and HDF5 attribute holding the table metadata as JSON."""

FITS_META_CARD = "SL_META"
"""FITS header keyword holding the table metadata as JSON (a long string: CONTINUE cards)."""


def _meta_json(table: Any) -> str:
    """``{"meta": …, "units": {column: unit}}`` of an astropy table, as JSON."""
    units = {name: str(column.unit) for name, column in table.columns.items() if column.unit is not None}
    return json.dumps({"meta": dict(table.meta), "units": units}, default=str)


def _apply_meta_json(table: Any, text: str) -> None:
    """Restore metadata and column units recorded by :func:`_meta_json` (in place)."""
    record = json.loads(text)
    table.meta.clear()
    table.meta.update(record.get("meta", {}))
    for name, unit in record.get("units", {}).items():
        if name in table.colnames:
            table[name].unit = unit


def _import_pyarrow(path: Path) -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401  (the submodule: pa.parquet)
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(
            f"Parquet table {str(path)!r} needs pyarrow: pip install 'starlabel[parquet]'."
        ) from error
    return pa


def arrow_table(table: Any, string_lengths: dict[str, int] | None = None) -> Any:
    """An astropy table as a ``pyarrow.Table``: units as field metadata, the rest as JSON.

    The schema metadata holds :data:`META_KEY` (see :func:`_meta_json`) and, for
    astropy's own Parquet reader, the width of each string column
    (``table::len::<column>``: ``string_lengths`` or the column's own width).
    """
    import pyarrow as pa

    fields, arrays = [], []
    lengths = dict(string_lengths or {})
    for name, column in table.columns.items():
        values = np.asarray(column)
        mask = np.asarray(column.mask) if getattr(column, "mask", None) is not None else None
        array = pa.array(values, mask=mask if mask is not None and mask.any() else None)
        if values.dtype.kind == "U":
            lengths.setdefault(name, max(values.dtype.itemsize // 4, 1))
        unit = {b"unit": str(column.unit).encode()} if column.unit is not None else None
        fields.append(pa.field(name, array.type, metadata=unit))
        arrays.append(array)
    metadata = {f"table::len::{name}": str(n) for name, n in lengths.items()}
    metadata[META_KEY] = _meta_json(table)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def _read_parquet(path: Path) -> Any:
    from astropy.table import MaskedColumn, Table

    pa = _import_pyarrow(path)
    arrow = pa.parquet.read_table(path)
    table = Table()
    for name in arrow.column_names:
        column = arrow.column(name)
        values = column.to_numpy(zero_copy_only=False)
        if values.dtype == object:
            values = np.asarray(["" if v is None else v for v in values], dtype=str)
        if column.null_count:
            mask = column.is_null().to_numpy(zero_copy_only=False)
            table[name] = MaskedColumn(values, mask=mask)
        else:
            table[name] = values
        field_meta = arrow.schema.field(name).metadata or {}
        if b"unit" in field_meta:
            table_column(table, name).unit = field_meta[b"unit"].decode()
    schema_meta = arrow.schema.metadata or {}
    if META_KEY.encode() in schema_meta:
        _apply_meta_json(table, schema_meta[META_KEY.encode()].decode())
    return table


def _write_fits(table: Any, path: Path) -> None:
    """FITS with units as TUNITn (also non-FITS ones such as dex) and all metadata as JSON."""
    from astropy.io import fits

    plain = table.copy(copy_data=False)
    for column in plain.columns.values():
        column.unit = None  # astropy refuses units outside the FITS standard (dex)
    # Short scalar keys stay readable as ordinary cards; everything is in the JSON card.
    plain.meta = {
        k: v for k, v in table.meta.items() if len(str(k)) <= 8 and isinstance(v, str | int | float | bool)
    }
    hdu = fits.table_to_hdu(plain)
    for i, column in enumerate(table.columns.values(), start=1):
        if column.unit is not None:
            hdu.header[f"TUNIT{i}"] = str(column.unit)
    hdu.header[FITS_META_CARD] = _meta_json(table)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


def _read_fits(path: Path) -> Any:
    import warnings

    from astropy.table import Table
    from astropy.units import Unit, UnitsWarning

    with warnings.catch_warnings():
        # TUNITn = 'dex' is not a FITS-standard unit; it is restored below.
        warnings.simplefilter("ignore", UnitsWarning)
        table = Table.read(path, format="fits")
    text = table.meta.pop(FITS_META_CARD, None)
    if text is not None:
        _apply_meta_json(table, str(text))
    for column in table.columns.values():
        if column.unit is not None and type(column.unit).__name__ == "UnrecognizedUnit":
            # Unit's metaclass __call__ takes parse_strict; pyright checks Unit.__init__.
            column.unit = Unit(str(column.unit), parse_strict="silent")  # pyright: ignore[reportCallIssue]
    return table


def csv_comment_header(table: Any) -> str:
    """An ECSV header (``# ``-prefixed YAML: column types, units, metadata) for a CSV file.

    The CSV body that follows is plain comma-separated text; readers that skip ``#``
    lines (pandas ``comment='#'``, astropy ``comment='#'``) see an ordinary CSV, and
    astropy's ``format='ascii.ecsv'`` reads the whole file with units and metadata.
    """
    import io

    buffer = io.StringIO()
    table[:0].write(buffer, format="ascii.ecsv", delimiter=",")
    return "".join(f"{line}\n" for line in buffer.getvalue().splitlines() if line.startswith("#"))


def _write_csv(table: Any, path: Path) -> None:
    import yaml

    try:
        header = csv_comment_header(table)
    except (TypeError, ValueError, yaml.YAMLError) as error:
        # Metadata that YAML cannot represent (from a user's catalogue) must not cost
        # the table: write it without the header, and say so.
        logger.warning("starlabel: %s written without its ECSV metadata header (%s).", path.name, error)
        header = ""
    body = csv_text(table)  # column-wise; None where only astropy's writer reproduces the values
    with open(path, "w", newline="") as handle:
        handle.write(header)
        if body is None:
            table.write(handle, format="ascii.csv")
        else:
            handle.write(body)


def _read_csv(path: Path) -> Any:
    from astropy.table import Table

    with open(path) as handle:
        first = handle.readline()
    if first.startswith("# %ECSV"):
        return Table.read(path, format="ascii.ecsv")
    return Table.read(path, format="ascii.csv", comment="#")


def read_table_file(path: str | os.PathLike[str], *, hdf5_path: str | None = None) -> Any:
    """Read ``path`` into an ``astropy.table.Table``, format chosen by suffix.

    Column units and table metadata written by :func:`write_table_file` come back in
    every format.

    Parameters
    ----------
    path : path-like
        A file with one of the :data:`TABLE_FORMATS` suffixes.
    hdf5_path : str, optional
        Dataset name inside an HDF5 file (the first table when omitted).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        For an unknown suffix.
    """
    from astropy.table import Table

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table {str(path)!r} does not exist.")
    fmt = table_format(path)
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt == "fits":
        return _read_fits(path)
    if fmt == "ascii.csv":
        return _read_csv(path)
    kwargs: dict[str, Any] = {"format": fmt}
    if fmt == "hdf5" and hdf5_path is not None:
        kwargs["path"] = hdf5_path
    return Table.read(path, **kwargs)


def _writable_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """``path`` as a Path whose folder exists; refuses to replace a file unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_table_file(
    table: Any, path: str | os.PathLike[str], *, hdf5_path: str, overwrite: bool = True
) -> Path:
    """Write an astropy Table atomically, format chosen by suffix; returns the path.

    Column units and the table metadata (nested JSON-able values included) are kept:
    ECSV and HDF5 natively (HDF5 also as the JSON attribute :data:`META_KEY` for other
    tools), FITS as TUNITn cards plus the JSON card :data:`FITS_META_CARD`, Parquet as
    field metadata plus the JSON schema entry :data:`META_KEY`, CSV as an ECSV
    comment header (:func:`csv_comment_header`).

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is false.
    ValueError
        For an unknown suffix.
    """
    path = _writable_path(path, overwrite)
    fmt = table_format(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if fmt == "fits":
            _write_fits(table, tmp)
        elif fmt == "parquet":
            pa = _import_pyarrow(path)
            pa.parquet.write_table(arrow_table(table), tmp)
        elif fmt == "ascii.csv":
            _write_csv(table, tmp)
        elif fmt == "hdf5":
            table.write(tmp, format=fmt, overwrite=True, path=hdf5_path, serialize_meta=True)
            import h5py

            with h5py.File(tmp, "r+") as handle:
                handle[hdf5_path].attrs[META_KEY] = _meta_json(table)
        else:
            table.write(tmp, format=fmt, overwrite=True)
    return path


def write_text_file(text: str, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write a table already formatted as ``text`` (a CSV file) atomically; returns the path.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is false.
    """
    path = _writable_path(path, overwrite)
    with atomic_path(path, suffix=path.suffix) as tmp, open(tmp, "w", newline="") as handle:
        handle.write(text)
    return path


# Characters that make astropy's CSV writer quote or trim a string value.
_CSV_SPECIAL = (",", '"', "\n", "\r")


def csv_text(table: Any) -> str | None:
    """The text astropy's ``ascii.csv`` writer produces for ``table``, built column-wise.

    ``table`` is an ``astropy.table.Table`` (the results writer's, after its ECSV header).

    astropy formats a CSV row by row in Python (about 3 µs per value). Here each
    column becomes text in one call (``map(str, column.tolist())``: Python's shortest
    round-trip repr, the digits astropy writes) and rows are joined by ``zip``, so no
    Python code runs per row; 1.5–2× faster, and the bytes are identical (the tests
    compare them). Returns None, and the caller uses astropy, for what this does not
    reproduce: masked, multidimensional, byte-string or formatted columns, and strings
    that astropy would quote or trim (and empty ones).
    """
    if any(getattr(table[n], "mask", None) is not None or table[n].info.format for n in table.colnames):
        return None
    return csv_body([str(name) for name in table.colnames], [np.asarray(table[n]) for n in table.colnames])


def csv_body(names: list[str], arrays: list[np.ndarray]) -> str | None:
    """:func:`csv_text` of plain columns: the header line and rows astropy writes, or None.

    ``names`` and ``arrays`` (each shape (rows,)) in table order; None for what
    astropy's writer alone reproduces (see :func:`csv_text`).
    """
    if any(char in name for name in names for char in _CSV_SPECIAL) or any(n != n.strip() for n in names):
        return None
    columns: list[list[str]] = [names]
    for values in arrays:
        if values.ndim != 1 or values.dtype.kind not in "fiubU":
            return None
        if values.dtype.kind == "U" and len(values):
            special = np.zeros(len(values), dtype=bool)
            for char in _CSV_SPECIAL:
                special |= np.char.find(values, char) >= 0
            # astropy quotes an empty value when it is alone on its line
            if special.any() or np.any(np.char.strip(values) != values) or np.any(values == ""):
                return None
        # float32 is widened to a Python float, as astropy does; str(float) is repr(float).
        columns.append(list(map(str, values.tolist())))
    header, body = columns[0], columns[1:]
    lines = [",".join(header), *map(",".join, zip(*body, strict=True))] if body else [",".join(header)]
    return "\n".join(lines) + "\n"
