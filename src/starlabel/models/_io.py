"""The starlabel model file format: a JSON header plus named arrays, never pickle.

A model file is a NumPy ``.npz`` archive (a zip; the suffix is conventionally
``.starlabel``) holding

* ``__header__``: UTF-8 JSON, one object::

      {"format": "starlabel-model", "format_version": 4,
       "library_version": "0.1.0", "kind": "cannon",
       "label_names": ["teff", "logg", "m_h"], "config": {...},
       "training_set": {"sha256": "…", "of": "arrays", "n_stars": 500, "source": "…"},
       "calibration": {"label_names": [...], "n_folds": 5, "n_stars": 400,
                       "irreducible_share": 1.0, "size_factor": 1.0} or null,
       "binary_calibration": {"threshold": …, "quantiles": [...], …}}  (optional)

  ``training_set`` (optional; files without it load as before) identifies the data
  the model was trained on: the SHA-256 of the training arrays
  (:meth:`SpectralDataset.checksum`, ``"of": "arrays"``) or of the training file
  (``"of": "file"``, for training streamed from a file). Result tables copy it into
  their provenance.

* one array per array leaf of the fitted model, named by its pytree key path
  (e.g. ``.theta``, ``.label_scaler.shift``, ``.calibration.scale``).

Loading reads the header, checks the format and version, rebuilds a skeleton from
``kind`` and ``config`` (plus the error calibration every family carries the same
way, see :class:`~starlabel.models.ErrorCalibration`) and fills its array leaves from
the archive. Reading never unpickles (``allow_pickle=False``), so a model file cannot
execute code.

Versions: 1 had no ``calibration`` key; such files still load, and their models
infer with statistical errors only (a logged warning says so, and every result's
``meta["errors"]`` is ``"statistical"``). Version 2 calibrations had no training-size
factor; they load with ``f = 1`` (as they were learned) and a logged note. The
``binary_calibration`` key (the decision of ``infer --binary``) is optional in version 3:
files without it load, and ``--binary`` then uses the fixed rule with a note.
"""

# No ``from __future__ import annotations`` here: equinox sees ``eqx.AbstractVar`` only in an
# evaluated annotation (as a string it becomes a plain dataclass field, never checked).
import abc
import importlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import equinox as eqx
import jax
import numpy as np

from .._internal import atomic_path, x64
from .._version import __version__
from ._error_calibration import ErrorCalibration

if TYPE_CHECKING:  # annotations only: base.py builds on this module
    from .base import AbstractFittedModel

__all__ = [
    "AbstractSavedModel",
    "AbstractCalibratedModel",
    "FORMAT_VERSION",
    "MODEL_KINDS",
    "model_class",
    "load_model",
    "read_model_header",
    "register_model_kind",
    "save_model",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "starlabel-model"
FORMAT_VERSION = 6
"""Bump when the header or array naming changes; loaders read older versions and refuse newer.

2: optional error calibration (header ``calibration``, arrays ``.calibration.*``).
3: the calibration's training-size factor (``calibration.irreducible_share``, ``size_factor``).
4: the calibration's optional label-space term (header ``calibration.local``, arrays
   ``.calibration.local.*``); files without it load as before.
5: the calibration's optional distance term (header ``calibration.distance``, arrays
   ``.calibration.distance.*``); files without it load as before.
6: the calibration's optional label-space bias correction (header ``calibration.bias``,
   arrays ``.calibration.bias.*``); files without it load and infer the model's own labels."""

MODEL_KINDS: dict[str, str] = {
    "cannon": "starlabel.models.cannon:FittedCannon",
    "lux": "starlabel.models.lux:FittedLux",
    "nn": "starlabel.models.nn:FittedNNRegressor",
    "payne": "starlabel.models.payne:FittedPayne",
}
"""Model kind → ``"module:Class"`` of its fitted class, imported only when loading."""


class AbstractSavedModel(eqx.Module):
    """What the model file format needs of a model: its kind, config and skeleton.

    :class:`starlabel.models.AbstractFittedModel` builds on this class, so every fitted
    model can be saved; the format itself needs nothing else (and so does not depend on
    the model protocol in ``base.py``).
    """

    kind: ClassVar[str]
    """Short registry name written to model files (e.g. ``"cannon"``)."""

    label_names: eqx.AbstractVar[tuple[str, ...]]

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able hyperparameters from which :meth:`skeleton` rebuilds the structure."""

    @classmethod
    @abc.abstractmethod
    def skeleton(cls, config: dict[str, Any]) -> "AbstractSavedModel":
        """A model with the right pytree structure (array values are placeholders)."""

    def save(self, path: str | os.PathLike[str], *, training_set: Any = None) -> Path:
        """Save to ``path`` in the versioned starlabel model format (:func:`save_model`).

        ``training_set`` (the SpectralDataset or file trained on) records its checksum.
        """
        return save_model(self, path, training_set=training_set)


class AbstractCalibratedModel(AbstractSavedModel):
    """A saved model that carries an error calibration (Cannon, Lux, NN, Payne).

    The calibration is learned at training time by cross-validation and applied by the
    model's default test step; the model file keeps it in its header (``None``: the
    model was trained without one, and its errors are statistical only).
    """

    calibration: eqx.AbstractVar[ErrorCalibration | None]


def register_model_kind(kind: str, target: str) -> None:
    """Register a third-party fitted-model class (``"package.module:Class"``) under ``kind``."""
    if ":" not in target:
        raise ValueError(f"`target` must look like 'package.module:Class', got {target!r}.")
    MODEL_KINDS[kind] = target


def model_class(kind: str) -> "type[AbstractFittedModel]":
    """The fitted-model class registered under ``kind`` (imported on first use)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}.")
    module_name, class_name = MODEL_KINDS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, AbstractSavedModel)):
        raise TypeError(f"{MODEL_KINDS[kind]!r} (model kind {kind!r}) is not a starlabel fitted-model class.")
    return cast("type[AbstractFittedModel]", cls)


def _array_leaves(model: eqx.Module) -> list[tuple[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(model)[0]
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves if eqx.is_array(leaf)]


def training_set_record(training_set: Any) -> dict[str, Any]:
    """The ``training_set`` header entry for a SpectralDataset or a training file path."""
    from ..data import SpectralDataset

    if isinstance(training_set, SpectralDataset):
        return {
            "sha256": training_set.checksum(),
            "of": "arrays",
            "n_stars": training_set.n_stars,
            "source": str(training_set.meta.get("source")) if training_set.meta.get("source") else None,
        }
    if isinstance(training_set, str | os.PathLike):
        from .._internal._hashing import sha256_of_file

        path = Path(training_set)
        return {"sha256": sha256_of_file(path), "of": "file", "n_stars": None, "source": str(path.absolute())}
    raise TypeError(
        f"`training_set` must be a SpectralDataset or a file path, got {type(training_set).__name__}."
    )


def save_model(
    model: AbstractSavedModel,
    path: str | os.PathLike[str],
    *,
    training_set: Any = None,
    binary_calibration: Any = None,
) -> Path:
    """Save a fitted model to ``path`` (written atomically; see the module docstring).

    Parameters
    ----------
    model : AbstractSavedModel
    path : path-like
    training_set : SpectralDataset or path-like, optional
        The data the model was trained on; its checksum goes into the header (and from
        there into the provenance of every result table made with this file).
    binary_calibration : BinaryCalibration, optional
        The binary decision learned on the training set; stored in the header as
        ``binary_calibration`` (a JSON object), where ``infer --binary`` finds it.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if not isinstance(model, AbstractSavedModel):
        raise TypeError(
            f"save_model needs a fitted model (got {type(model).__name__}); call .fit(data) first."
        )
    path = Path(path)
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "kind": model.kind,
        "label_names": list(model.label_names),
        "config": model.config(),
        "calibration": None if (calibration := _calibration(model)) is None else calibration.config(),
    }
    if training_set is not None:
        header["training_set"] = training_set_record(training_set)
    if binary_calibration is not None:
        header["binary_calibration"] = binary_calibration.to_dict()
    arrays = {name: np.asarray(leaf) for name, leaf in _array_leaves(model)}
    if "__header__" in arrays:
        raise ValueError("a model leaf may not be called '__header__'.")
    header_bytes = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # numpy's stubs fear a key named allow_pickle in **arrays; ours are model leaf names.
        np.savez(handle, __header__=header_bytes, **arrays)  # pyright: ignore[reportArgumentType]
    return path


def read_model_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the JSON header of a model file without loading its arrays."""
    return _open(Path(path))[0]


def _open(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist.")
    try:
        # Open the file ourselves: np.load leaks its handle when the zip is corrupt.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ValueError(
            f"{str(path)!r} is not a readable starlabel model file (corrupt or truncated?): {error}"
        ) from error
    if "__header__" not in arrays:
        raise ValueError(f"{str(path)!r} has no starlabel header; was it written by save_model?")
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} has a corrupt header: {error}") from error
    if header.get("format") != FORMAT_NAME:
        raise ValueError(f"{str(path)!r} is not a starlabel model (format={header.get('format')!r}).")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} uses model format version {version}, but this starlabel"
            f" ({__version__}) reads versions ≤ {FORMAT_VERSION}; upgrade starlabel"
            f" (it was written by starlabel {header.get('library_version')})."
        )
    return header, arrays


def _calibration(model: AbstractSavedModel) -> ErrorCalibration | None:
    return model.calibration if isinstance(model, AbstractCalibratedModel) else None


@x64
def load_model(path: str | os.PathLike[str]) -> "AbstractFittedModel":
    """Load a fitted model saved by :func:`save_model`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupt, not a starlabel model, from a newer format version, of
        an unknown kind, or its arrays do not match the model structure.
    """
    path = Path(path)
    header, arrays = _open(path)
    cls = model_class(header["kind"])
    skeleton = cls.skeleton(header["config"])
    if header.get("calibration") is not None:
        if not issubclass(cls, AbstractCalibratedModel):
            raise ValueError(f"{str(path)!r}: a {header['kind']!r} model carries no error calibration.")
        skeleton = eqx.tree_at(
            lambda m: m.calibration,
            skeleton,
            ErrorCalibration.skeleton(header["calibration"]),
            is_leaf=lambda x: x is None,
        )
        if header["format_version"] < 3:
            logger.warning(
                "note: %s was written by starlabel %s (model format %s): its error calibration has no"
                " training-size factor (f = 1); retrain to learn one.",
                path,
                header.get("library_version"),
                header["format_version"],
            )
    elif header["format_version"] < 2:
        logger.warning(
            "%s was written by starlabel %s without error calibration: its <label>_err are"
            " statistical errors only (too small on real spectra); retrain it to calibrate them.",
            path,
            header.get("library_version"),
        )
    names = [name for name, _ in _array_leaves(skeleton)]
    missing = sorted(set(names) - set(arrays))
    if missing:
        raise ValueError(f"{str(path)!r} lacks arrays {missing} needed by a {header['kind']!r} model.")
    leaves, treedef = jax.tree_util.tree_flatten(skeleton)
    # device_put, not jnp.asarray: the latter runs a conversion program per array shape,
    # each lowered (and looked up in the compilation cache) in every new process.
    filled = iter(jax.device_put(arrays[name]) for name in names)
    new_leaves = [next(filled) if eqx.is_array(leaf) else leaf for leaf in leaves]
    model = jax.tree_util.tree_unflatten(treedef, new_leaves)
    if tuple(model.label_names) != tuple(header["label_names"]):
        raise ValueError(f"{str(path)!r}: header label names disagree with the model config.")
    return model
