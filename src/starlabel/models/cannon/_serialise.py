"""A trained Cannon's structure in its model file: the JSON header and the zero skeleton.

``models._io`` writes a model as a JSON header (:func:`fitted_config`) and named arrays;
reading it builds :func:`fitted_skeleton` from the header and fills in the arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jaxtyping import Array

from ...data import ShiftScale
from ._infer import LabelSpace
from ._vectorizer import PolynomialVectorizer

if TYPE_CHECKING:
    from ._model import FittedCannon

__all__ = ["fitted_config", "fitted_skeleton"]


def fitted_config(fitted: FittedCannon) -> dict[str, Any]:
    """JSON-able structure: labels, term exponents, sizes, training diagnostics."""
    return {
        "label_names": list(fitted.label_names),
        "exponents": [list(row) for row in fitted.vectorizer.exponents],
        "n_pixels": fitted.n_pixels,
        "n_kept_train": int(fitted.label_space.train.shape[0]),
        "has_wavelength": fitted.wavelength is not None,
        "training_info": dict(fitted.training_info),
    }


def fitted_skeleton(cls: type[FittedCannon], config: dict[str, Any]) -> FittedCannon:
    """A ``cls`` (FittedCannon) with the structure ``config`` describes and zero arrays."""
    names = tuple(config["label_names"])
    exponents = tuple(tuple(int(p) for p in row) for row in config["exponents"])
    n_pixels, n_terms, n_labels = int(config["n_pixels"]), len(exponents), len(names)

    # Placeholders put on the device from numpy (load_model replaces every array):
    # jnp.zeros & co. would each compile a small program per shape in every process
    # that loads a model. Device arrays, not numpy ones, because the fields are typed.
    def zeros(shape: Any, dtype: Any = float) -> Array:
        return jax.device_put(np.zeros(shape, dtype=dtype))

    return cls(
        label_names=names,
        vectorizer=PolynomialVectorizer(names, exponents),
        label_scaler=ShiftScale(zeros(n_labels), zeros(n_labels)),
        theta=zeros((n_pixels, n_terms)),
        s2=zeros(n_pixels),
        pixel_ok=zeros(n_pixels, bool),
        allowed=zeros((n_labels, n_pixels), bool),
        l1=zeros(n_pixels),
        wavelength=zeros(n_pixels) if config["has_wavelength"] else None,
        label_space=LabelSpace(
            zeros((2, n_labels)), zeros((int(config["n_kept_train"]), n_labels)), zeros(())
        ),
        training_info=tuple(sorted(config.get("training_info", {}).items())),
    )
