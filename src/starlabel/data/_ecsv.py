"""The CSV results file (ECSV comment header + plain CSV body) written without astropy.

``starlabel infer -o out.csv`` writes a CSV whose ``#`` header is astropy's ECSV
header (column types, units, descriptions, metadata). Building it through an astropy
``Table`` imports ``astropy.table`` and ``astropy.io.ascii`` (about 0.4 s of every
``infer``); here the same bytes come from PyYAML with astropy's dumper settings
(flow style chosen per node, width 130, ``!!omap`` for the table metadata, column keys
in astropy's order). :func:`ecsv_csv_text` returns None for anything it does not
reproduce (metadata values other than strings, numbers, booleans and nested
dicts/lists of them; columns :func:`~._tables.csv_body` refuses), and the writer then
uses astropy. The tests compare the bytes with astropy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ecsv_csv_text"]

_COLUMN_KEYS = ("name", "unit", "datatype", "format", "description", "meta")


class _Unsupported(Exception):
    """A metadata value astropy's dumper would write differently (or with a tag)."""


def _plain(value: Any, seen: set[int]) -> Any:
    """``value`` as plain Python (dicts, lists, str, int, float, bool, None).

    NumPy scalars become Python ones (astropy's dumper writes them alike). A dict or
    list met twice would be written by astropy as a YAML alias: unsupported.
    """
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        value = value.item()
    if isinstance(value, bool | str | int | float) or value is None:
        return value
    if isinstance(value, dict | list):
        if id(value) in seen:
            raise _Unsupported("a shared dict or list")
        seen.add(id(value))
        if isinstance(value, list):
            return [_plain(v, seen) for v in value]
        return {_plain(k, seen): _plain(v, seen) for k, v in value.items()}
    raise _Unsupported(type(value).__name__)


class _ColumnAttributes(dict):
    """One column's attributes, already in astropy's key order (not sorted)."""


def _dumper() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        """astropy's ``TableDumper`` (``astropy.table.meta``) for plain values."""

        def represent_mapping(self, tag: str, mapping: Any, flow_style: Any = None) -> Any:
            # Keys in insertion order (the metadata) or astropy's column-key order, and
            # flow style when every key and value is a plain scalar.
            value: list[Any] = []
            node = yaml.MappingNode(tag, value, flow_style=flow_style)
            best_style = True
            items = list(mapping.items())
            if not isinstance(mapping, _ColumnAttributes):
                try:
                    items = sorted(items)
                except TypeError:
                    pass
            for key, item in items:
                node_key, node_value = self.represent_data(key), self.represent_data(item)
                for part in (node_key, node_value):
                    if not (isinstance(part, yaml.ScalarNode) and not part.style):
                        best_style = False
                value.append((node_key, node_value))
            node.flow_style = best_style if flow_style is None else flow_style
            return node

        def represent_float(self, data: float) -> Any:
            # astropy writes str(x), not repr(x) (the same for Python floats), and a
            # mantissa without a point gains ".0" (1e17 -> 1.0e+17).
            if data != data:
                text = ".nan"
            elif data in (float("inf"), -float("inf")):
                text = ".inf" if data > 0 else "-.inf"
            else:
                text = str(data).lower()
                if "." not in text and "e" in text:
                    text = text.replace("e", ".0e", 1)
            return self.represent_scalar("tag:yaml.org,2002:float", text)

    Dumper.add_representer(float, Dumper.represent_float)
    Dumper.add_representer(_ColumnAttributes, yaml.SafeDumper.represent_dict)
    return Dumper


def _omap(dumper: Any, pairs: list[tuple[str, Any]]) -> Any:
    """An ``!!omap`` node (astropy's ``_repr_pairs``): a list of one-key mappings."""
    import yaml

    items = [dumper.represent_data({key: value}) for key, value in pairs]
    best = all(isinstance(item, yaml.ScalarNode) and not item.style for item in items)
    return yaml.SequenceNode("tag:yaml.org,2002:omap", items, flow_style=best)


def _header(
    columns: Mapping[str, np.ndarray],
    units: Mapping[str, str],
    descriptions: Mapping[str, str],
    meta: Mapping[str, Any],
) -> list[str]:
    import yaml

    dumper_class = _dumper()

    class _Meta(list):
        """The table metadata: an ordered list of (key, value) pairs, dumped as ``!!omap``."""

    dumper_class.add_representer(_Meta, lambda dumper, data: _omap(dumper, list(data)))
    datatype = []
    for name, values in columns.items():
        attributes = {"name": name, "datatype": _datatype(values)}
        if name in units:
            attributes["unit"] = units[name]
        if name in descriptions:
            attributes["description"] = descriptions[name]
        datatype.append(
            _ColumnAttributes((key, attributes[key]) for key in _COLUMN_KEYS if key in attributes)
        )
    header: dict[str, Any] = {"datatype": datatype, "delimiter": ","}
    if meta:
        seen: set[int] = set()
        header["meta"] = _Meta((str(k), _plain(v, seen)) for k, v in meta.items())
    header["schema"] = "astropy-2.0"
    text = yaml.dump(header, Dumper=dumper_class, default_flow_style=None, width=130, sort_keys=False)
    return ["%ECSV 1.0", "---", *text.splitlines()]


def _datatype(values: np.ndarray) -> str:
    name = values.dtype.name
    if name.startswith(("bytes", "str")):
        return "string"
    return name.removesuffix("_")


def ecsv_csv_text(
    columns: Mapping[str, np.ndarray],
    units: Mapping[str, str],
    descriptions: Mapping[str, str],
    meta: Mapping[str, Any],
) -> str | None:
    """The CSV file astropy writes for a table of ``columns``: ECSV ``#`` header, then the rows.

    Parameters
    ----------
    columns : mapping of str to ndarray
        Column name → values, shape (rows,), in table order.
    units, descriptions : mapping of str to str
        Per column, where it has one (astropy unit strings as astropy prints them).
    meta : mapping
        The table metadata, in order.

    Returns
    -------
    str or None
        The file's text, or None where astropy's writer must be used (module docstring).
    """
    from ._tables import csv_body

    body = csv_body(list(columns), [np.asarray(v) for v in columns.values()])
    if body is None:
        return None
    import yaml

    try:
        header = _header(columns, units, descriptions, meta)
    except (_Unsupported, yaml.YAMLError):
        return None
    return "".join(f"# {line}\n" for line in header) + body
