"""Tables on disk: one place that maps suffixes to formats and reads/writes them.

Results (:mod:`starlabel.data._result`) and catalogues (:mod:`starlabel.mixtures`)
share this so that every command accepts the same suffixes. Parquet goes through
pyarrow directly: astropy's Parquet reader needs pandas, which starlabel does not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import MissingExtraError

__all__ = ["TABLE_FORMATS", "read_table_file", "table_format", "write_table_file"]

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


def _read_parquet(path: Path) -> Any:
    from astropy.table import MaskedColumn, Table

    try:
        import pyarrow.parquet as pq
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(
            f"reading {str(path)!r} needs pyarrow: pip install 'starlabel[parquet]'."
        ) from error
    arrow = pq.read_table(path)
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
    return table


def read_table_file(path: str | os.PathLike[str], *, hdf5_path: str | None = None) -> Any:
    """Read ``path`` into an ``astropy.table.Table``, format chosen by suffix.

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
    kwargs: dict[str, Any] = {"format": fmt}
    if fmt == "hdf5" and hdf5_path is not None:
        kwargs["path"] = hdf5_path
    return Table.read(path, **kwargs)


def write_table_file(
    table: Any, path: str | os.PathLike[str], *, hdf5_path: str, overwrite: bool = True
) -> Path:
    """Write an astropy Table atomically, format chosen by suffix; returns the path.

    FITS keeps only metadata keys of ≤ 8 characters (header keywords) and Parquet
    none, so that scalar metadata never makes a write fail.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is false.
    ValueError
        For an unknown suffix.
    """
    path = Path(path)
    fmt = table_format(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.copy(copy_data=False)
    kwargs: dict[str, Any] = {"format": fmt, "overwrite": True}
    if fmt == "hdf5":
        kwargs.update(path=hdf5_path, serialize_meta=True)
    elif fmt == "fits":
        table.meta = {k: v for k, v in table.meta.items() if len(str(k)) <= 8}
    elif fmt == "parquet":
        table.meta = {}
    tmp = path.with_name(path.name + ".partial" + path.suffix)
    table.write(tmp, **kwargs)
    os.replace(tmp, path)
    return path
