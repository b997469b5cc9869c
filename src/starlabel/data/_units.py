"""Units of common stellar labels, for the columns of result tables.

Label names are the user's; these are the usual spellings of the usual labels. A name
not recognised here gets no unit (never a guessed one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["LABEL_UNITS", "column_units", "label_unit"]

LABEL_UNITS: dict[str, str] = {
    "teff": "K",
    "logg": "dex",  # log10(g / (cm s-2))
    "vmicro": "km / s",
    "vmacro": "km / s",
    "vsini": "km / s",
    "vbroad": "km / s",
    "rv": "km / s",
    "vrad": "km / s",
    "feh": "dex",
    "mh": "dex",
    "alpha": "dex",
}
"""Unit (astropy string) of each recognised label name (lower case)."""

# [X/H], [X/Fe], [X/M] abundances spelled x_h, x_fe, x_m (fe_h, m_h, mg_fe, alpha_m, …).
_ABUNDANCE = re.compile(r"^[a-z]{1,5}_(h|fe|m)$")

DESCRIPTIONS: dict[str, str] = {"logg": "log10(g / (cm s-2))"}
"""Column descriptions where the unit alone is ambiguous."""

_VELOCITY_EXTRAS = ("rv", "rv_err", "binary_dv", "binary_dv_err", "binary_v1")


def label_unit(name: str) -> str | None:
    """Unit of label ``name`` (``"K"``, ``"dex"``, ``"km / s"``), or None when unknown.

    Examples
    --------
    >>> label_unit("teff"), label_unit("mg_fe"), label_unit("vmicro"), label_unit("snr")
    ('K', 'dex', 'km / s', None)
    """
    key = name.lower()
    if key in LABEL_UNITS:
        return LABEL_UNITS[key]
    return "dex" if _ABUNDANCE.match(key) else None


def column_units(columns: Iterable[str], label_names: Sequence[str]) -> dict[str, str]:
    """Units of a result table's columns that carry a label or a velocity.

    A label's unit goes to ``<label>``, ``<label>_err``, ``<label>_err_stat``, ``<label>_bias``,
    ``ref_<label>``, the binary
    components ``<label>_1``, ``<label>_2`` (and their ``_err``) and the posterior-mean extras
    ``<label>_best``, ``mode2_<label>``; ``rv``, ``rv_err`` and the binary velocity
    columns are km/s. Columns without a known unit are left out.
    """
    units: dict[str, str] = {}
    by_column: dict[str, str] = {}
    for name in label_names:
        unit = label_unit(name)
        if unit is not None:
            for column in (
                name,
                f"{name}_err",
                f"{name}_err_stat",
                f"{name}_bias",
                f"ref_{name}",
                f"{name}_1",
                f"{name}_2",
                f"{name}_1_err",
                f"{name}_2_err",
                f"{name}_best",
                f"mode2_{name}",
            ):
                by_column[column] = unit
    by_column.update(dict.fromkeys(_VELOCITY_EXTRAS, "km / s"))
    for column in columns:
        if column in by_column:
            units[column] = by_column[column]
    return units
