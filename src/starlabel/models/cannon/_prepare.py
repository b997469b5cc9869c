"""What training needs before any spectrum is touched: label matrix, weights, censoring, design.

:func:`prepare_labels` turns a :class:`~._model.Cannon` configuration and the training
labels into a :class:`Prepared` bundle (star weights and which stars train, the
per-pixel L1 strengths, censoring masks and active terms, training options), shared
by the in-memory fit, its calibration folds and the streamed ``fit_file``.
:meth:`Prepared.design` fits the label scaling and evaluates the design matrix;
:func:`label_space` summarises the training labels the fitted model keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from ...data import ShiftScale, SpectralDataset
from ._censor import active_terms, resolve_censor
from ._infer import LabelSpace, nearest_distance
from ._train import L1_SOLVERS, TrainingOptions, training_star_weights
from ._vectorizer import PolynomialVectorizer

if TYPE_CHECKING:
    from ._model import Cannon

__all__ = [
    "MAX_KEPT_TRAIN",
    "Prepared",
    "check_configuration",
    "design_matrix",
    "label_matrix",
    "label_names_tuple",
    "label_space",
    "prepare_labels",
    "terms_tuple",
]

MAX_KEPT_TRAIN = 2048
"""Training labels kept in the model (for starts and the OUTSIDE_TRAINING test)."""


def label_names_tuple(value: Sequence[str]) -> tuple[str, ...]:
    """``Cannon.label_names`` as a tuple; a single string is refused (a common slip)."""
    if isinstance(value, str):
        raise TypeError(
            f"`label_names` must be a sequence of names such as ('teff', 'logg'), not the string"
            f" {value!r}; did you mean {tuple(value.split(','))!r}?"
        )
    return tuple(value)


def terms_tuple(value: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """``Cannon.terms`` as given when a string or None, else as a tuple."""
    return value if value is None or isinstance(value, str) else tuple(value)


def check_configuration(model: Cannon) -> None:
    """Refuse a :class:`~._model.Cannon` configuration that cannot train, naming the field."""
    names = model.label_names
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"`label_names` must be non-empty strings such as ('teff', 'logg'), got {names!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`label_names` repeats a name: {names}.")
    if model.l1_solver not in L1_SOLVERS:
        raise ValueError(f"unknown `l1_solver` {model.l1_solver!r}; choose one of {list(L1_SOLVERS)}.")
    if not (isinstance(model.max_iter, int) and model.max_iter >= 1):
        raise ValueError(f"`max_iter` must be an integer ≥ 1, got {model.max_iter!r}.")
    l1 = np.asarray(model.l1, dtype=float)
    if l1.ndim > 1 or not np.all(np.isfinite(l1)) or np.any(l1 < 0):
        raise ValueError(
            f"`l1` must be a finite, non-negative number or one value per pixel (pixels,); got {model.l1!r}."
        )
    model.vectorizer  # noqa: B018 - builds the term list, raising on bad `order`/`terms`


def label_matrix(data: SpectralDataset, label_names: tuple[str, ...], what: str) -> np.ndarray:
    """The columns ``label_names`` of ``data.labels``, shape (stars, labels), validated."""
    if not isinstance(data, SpectralDataset):
        raise TypeError(f"`{what}` must be a SpectralDataset, got {type(data).__name__}.")
    if data.labels is None:
        raise ValueError(
            f"`{what}` has no labels; the Cannon trains on spectra with known labels"
            f" {list(label_names)} (pass labels= and label_names= to SpectralDataset)."
        )
    missing = [n for n in label_names if n not in data.label_names]
    if missing:
        raise ValueError(f"`{what}` lacks labels {missing}; it has {list(data.label_names)}.")
    # Index the columns directly: select_labels would copy the whole dataset.
    return data.labels[:, [data.label_index(n) for n in label_names]]


class Prepared(NamedTuple):
    """A training set's labels and settings, ready for :func:`._train.fit_arrays`."""

    labels: np.ndarray
    """Training labels, shape (stars, labels), NaN where unknown."""
    complete: np.ndarray
    """Bool (stars,): every label known."""
    weights: np.ndarray
    """Star weights (stars,), 0 for stars that do not train."""
    used: np.ndarray
    """Bool (stars,): the star trains (complete, weight > 0)."""
    vectorizer: PolynomialVectorizer
    l1: np.ndarray
    """L1 strength per pixel (pixels,)."""
    allowed: np.ndarray
    """Bool (labels, pixels): censoring masks."""
    active: np.ndarray
    """Bool (pixels, terms): coefficients censoring lets be non-zero."""
    options: TrainingOptions

    def design(self) -> tuple[ShiftScale, np.ndarray, np.ndarray]:
        """Label scaler fitted on the used stars, scaled labels and design matrix (stars, terms)."""
        scaler = ShiftScale.fit(self.labels[self.used], robust=False)
        shift, scale = np.asarray(scaler.shift), np.asarray(scaler.scale)
        scaled = np.where(self.complete[:, None], (self.labels - shift) / scale, 0.0)
        return scaler, scaled, design_matrix(self.vectorizer, scaled)


def design_matrix(vectorizer: PolynomialVectorizer, x: np.ndarray) -> np.ndarray:
    """``vectorizer.design(x)`` in NumPy, (stars, labels) -> (stars, terms), float64.

    The same arithmetic in the same order as the vectorizer's (powers by repeated
    multiplication, the product over labels left to right), so the same numbers
    (``tests/test_latency_compiles.py``), without compiling a program per number of
    training stars, once per process without a cache.
    """
    x = np.asarray(x, dtype=np.float64)
    exponents = vectorizer.exponent_array
    powers = [np.ones_like(x)]
    for _ in range(int(exponents.max())):
        powers.append(powers[-1] * x)
    # factors[s, t, k] = x[s, k] ** exponents[t, k]
    factors = np.stack(powers, axis=1)[:, exponents, np.arange(vectorizer.n_labels)]
    result = factors[..., 0]
    for k in range(1, vectorizer.n_labels):
        result = result * factors[..., k]
    return result


def prepare_labels(
    model: Cannon, labels: np.ndarray, n_pixels: int, wavelength: Any, star_weights: Any, source: str
) -> Prepared:
    """Validate the training labels and settings of ``model`` (no spectra needed).

    Parameters
    ----------
    model : Cannon
        The configuration (labels, terms, censoring, L1, EM options).
    labels : ndarray, shape (stars, labels)
        Training labels in ``model.label_names`` order (NaN = unknown: the star is left out).
    n_pixels : int
    wavelength : array, shape (pixels,), optional
        Needed when ``censor`` gives wavelength windows.
    star_weights : array-like, shape (stars,), optional
    source : str
        How to name the training set in error messages.
    """
    vectorizer = model.vectorizer
    weights, used, complete = training_star_weights(
        labels, star_weights, vectorizer.n_terms, model.label_names, source
    )
    l1 = np.array(
        np.broadcast_to(np.asarray(model.l1, dtype=float), (n_pixels,))
        if np.ndim(model.l1) == 0
        else model.l1,
        dtype=float,
    )
    if l1.shape != (n_pixels,):
        raise ValueError(f"`l1` has shape {l1.shape}; give a number or one value per pixel ({n_pixels},).")
    allowed = resolve_censor(model.censor, model.label_names, n_pixels, wavelength)
    return Prepared(
        labels=labels,
        complete=complete,
        weights=weights,
        used=used,
        vectorizer=vectorizer,
        l1=l1,
        allowed=allowed,
        active=active_terms(vectorizer.exponent_array, allowed),
        options=TrainingOptions(max_iter=model.max_iter, tol=model.tol, l1_solver=model.l1_solver),
    )


def label_space(scaled: np.ndarray) -> LabelSpace:
    """Training-label summary (scaled units) from the used training stars' labels, (stars, labels)."""
    kept = scaled
    if len(kept) > MAX_KEPT_TRAIN:
        kept = kept[np.sort(np.random.default_rng(0).choice(len(kept), MAX_KEPT_TRAIN, replace=False))]
    return LabelSpace(
        box=jax.device_put(np.stack([scaled.min(axis=0), scaled.max(axis=0)])),
        train=jax.device_put(np.ascontiguousarray(kept)),
        # device_put, not jnp.asarray: no conversion program to compile.
        nn_radius=jax.device_put(np.float64(np.max(nearest_distance(kept, kept, exclude_self=True)))),
    )
