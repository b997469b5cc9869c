"""Boundary validation with messages that name the field and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

_T = TypeVar("_T")


def require(value: _T | None, name: str, fix: str) -> _T:
    """``value``, or a ``ValueError`` saying that ``name`` is not set and how to ``fix`` it.

    For fields that are ``None`` until a step fills them (a model before ``fit``, a
    transform before ``initialise``): using one early is a bug worth a clear message.
    """
    if value is None:
        raise ValueError(f"{name} is not set yet: {fix}.")
    return value


def as_float_array(value: object, name: str) -> np.ndarray:
    """Convert ``value`` to a float64 numpy array, or raise naming ``name``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"`{name}` must be numeric array-like; could not convert {type(value).__name__}"
            f" to float64 ({error})."
        ) from error
    return array


def numeric_label(values: object, name: str, source: object) -> np.ndarray:
    """Label values as float64, or a ``ValueError`` naming the label, the file and a bad value.

    ``source`` names where the values come from (a file path) in the message. NaN
    marks an unknown label; strings that spell numbers (``"4800"``) are accepted.
    """
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    example: object = None
    for value in np.asarray(values).ravel():
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        try:
            float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            example = text if isinstance(text, str) else repr(text)
            break
    raise ValueError(
        f"label {name!r} in {str(source)!r} holds non-numeric values (e.g. {str(example)!r}); labels"
        " must be numbers, with NaN where a value is unknown: fix that column or train on other labels."
    ) from None


def check_shape(array: np.ndarray, expected: tuple[int | None, ...], name: str, hint: str) -> None:
    """Raise ``ValueError`` unless ``array`` has ``expected`` shape (``None`` = any size).

    ``hint`` says which other array fixed the expectation, e.g. ``"(stars, pixels) of flux"``.
    """
    ok = array.ndim == len(expected) and all(
        want is None or want == got for want, got in zip(expected, array.shape, strict=True)
    )
    if not ok:
        shown = tuple("?" if want is None else want for want in expected)
        raise ValueError(f"`{name}` has shape {array.shape} but must have shape {shown}, {hint}.")


def check_label_names(
    label_names: Sequence[str], n_labels: int, name: str = "label_names"
) -> tuple[str, ...]:
    """Return label names as a tuple of unique non-empty strings matching ``n_labels``."""
    if isinstance(label_names, str):
        raise TypeError(
            f"`{name}` must be a sequence of strings such as ('teff', 'logg'), not one string;"
            f" did you mean {tuple(label_names.split(','))!r}?"
        )
    names = tuple(str(n) for n in label_names)
    if len(names) != n_labels:
        raise ValueError(
            f"`{name}` has {len(names)} entries {names} but the labels array has {n_labels}"
            " columns; give one name per label column."
        )
    if any(not n for n in names):
        raise ValueError(f"`{name}` contains an empty name: {names}.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"`{name}` repeats {duplicates}; label names must be unique.")
    return names
