"""The protocol every spectral model family follows (Cannon, Lux, NN).

A model object is configuration only; :meth:`AbstractSpectralModel.fit` returns a
*fitted* model, an immutable pytree holding the learned arrays. Fitted models infer
labels for new spectra, can be saved with :func:`starlabel.models.save_model`, and
rebuilt with :func:`starlabel.models.load_model`.

Serialisation contract: ``config()`` returns the JSON-able hyperparameters needed to
rebuild a *skeleton* (any array values) with ``skeleton(config)``; the saved arrays
are the skeleton's array leaves, matched by their pytree key paths.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float

from ..data import InferenceResult, SpectralDataset

__all__ = ["AbstractSpectralModel", "AbstractFittedModel", "AbstractGenerativeModel"]


class AbstractFittedModel(eqx.Module):
    """A trained model: infers labels of new spectra; saved and loaded without pickle."""

    kind: ClassVar[str]
    """Short registry name written to model files (e.g. ``"cannon"``)."""

    label_names: eqx.AbstractVar[tuple[str, ...]]

    @abc.abstractmethod
    def infer(self, data: SpectralDataset, **options: Any) -> InferenceResult:
        """Infer labels (and uncertainties) for every spectrum in ``data``."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able hyperparameters from which :meth:`skeleton` rebuilds the structure."""

    @classmethod
    @abc.abstractmethod
    def skeleton(cls, config: dict[str, Any]) -> AbstractFittedModel:
        """A model with the right pytree structure (array values are placeholders)."""

    def save(self, path: str | os.PathLike[str], *, training_set: Any = None) -> Path:
        """Save to ``path`` in the versioned starlabel model format (see ``models/_io``).

        ``training_set`` (the SpectralDataset or file trained on) records its checksum.
        """
        from ._io import save_model

        return save_model(self, path, training_set=training_set)


class AbstractSpectralModel(eqx.Module):
    """Configuration of a model family; :meth:`fit` learns from a labelled dataset."""

    label_names: eqx.AbstractVar[tuple[str, ...]]

    @abc.abstractmethod
    def fit(self, train: SpectralDataset, **options: Any) -> AbstractFittedModel:
        """Fit to ``train`` (spectra with labels ``label_names``); return a fitted model."""


class AbstractGenerativeModel(AbstractFittedModel):
    """A fitted model that also maps labels to spectra (Cannon, Lux)."""

    @abc.abstractmethod
    def predict_flux(self, labels: Float[Array, "stars labels"] | np.ndarray) -> np.ndarray:
        """Model flux, shape (stars, pixels), at ``labels`` given in the labels' own units."""
