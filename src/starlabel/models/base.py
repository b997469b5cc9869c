"""The protocol every spectral model family follows (Cannon, Lux, NN, Payne).

A model object is configuration only; :meth:`AbstractSpectralModel.fit` returns a
*fitted* model, an immutable pytree holding the learned arrays. Fitted models infer
labels for new spectra, can be saved with :func:`starlabel.models.save_model`, and
rebuilt with :func:`starlabel.models.load_model`.

Two families of abstract classes, in the equinox abstract/final style (every class is
abstract, named ``AbstractX``, or final; concrete methods are never overridden):

* models: :class:`AbstractSpectralModel` (configuration) → :class:`AbstractFittedModel`
  (trained) → :class:`AbstractGenerativeModel` (also labels → spectra), refined into
  :class:`AbstractFittedFluxModel` (exposes a per-star :class:`AbstractFluxModel`: Cannon,
  Payne) and :class:`AbstractLatentModel` (labels are a function of latents: Lux);
* flux models: :class:`AbstractFluxModel` (labels of one star → its normalised flux,
  pure JAX) and :class:`AbstractLinearFluxModel` (flux linear in a feature vector of the
  labels: the Cannon). The generic test-step pieces (radial velocity, continuum,
  Fisher/Laplace/NUTS uncertainties) are written against :class:`AbstractFluxModel`.

Serialisation contract: ``config()`` returns the JSON-able hyperparameters needed to
rebuild a *skeleton* (any array values) with ``skeleton(config)``; the saved arrays
are the skeleton's array leaves, matched by their pytree key paths.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..data import InferenceResult, SpectralDataset
from ._io import AbstractSavedModel

__all__ = [
    "AbstractSpectralModel",
    "AbstractFittedModel",
    "AbstractGenerativeModel",
    "AbstractFittedFluxModel",
    "AbstractLatentModel",
    "AbstractFluxModel",
    "AbstractLinearFluxModel",
    "flux_model_of",
]


class AbstractFittedModel(AbstractSavedModel):
    """A trained model: infers labels of new spectra; saved and loaded without pickle.

    ``kind``, ``label_names``, ``config()``, ``skeleton()`` and ``save()`` come from
    :class:`starlabel.models.AbstractSavedModel`, the model file format's contract.
    """

    label_names: eqx.AbstractVar[tuple[str, ...]]

    @abc.abstractmethod
    def infer(self, data: SpectralDataset, **options: Any) -> InferenceResult:
        """Infer labels (and uncertainties) for every spectrum in ``data``."""


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

    @abc.abstractmethod
    def log_likelihood(
        self, params: Float[Array, " params"], flux: Float[Array, " pixels"], ivar: Float[Array, " pixels"]
    ) -> Float[Array, ""]:
        """Log-likelihood of one spectrum (pure JAX) given its parameters.

        ``params`` are the labels in their own units, or the latents of an
        :class:`AbstractLatentModel`; Gaussian in the flux with a variance that does not
        depend on ``params`` (what the Fisher/Laplace/NUTS uncertainties use).
        """


class AbstractFluxModel(eqx.Module):
    """Labels of one star → its normalised flux, with the noise model the fits use.

    Pure JAX: :meth:`flux`, :meth:`jacobian` and :meth:`log_likelihood` are jit-, vmap-
    and grad-able. Labels are in their own units (K, dex, …) throughout.

    Attributes
    ----------
    label_names : tuple of str
    s2 : Float[Array, " pixels"]
        Intrinsic (model) scatter variance per pixel, flux².
    pixel_ok : Bool[Array, " pixels"]
        Pixels the model describes; the others are ignored by every fit.
    train_labels : Float[Array, "train labels"]
        Training labels the model keeps (own units): starting points and templates.
    box : Float[Array, "2 labels"]
        Training label range (own units): minimum row, maximum row.
    """

    label_names: eqx.AbstractVar[tuple[str, ...]]
    s2: eqx.AbstractVar[Float[Array, " pixels"]]
    pixel_ok: eqx.AbstractVar[Bool[Array, " pixels"]]
    train_labels: eqx.AbstractVar[Float[Array, "train labels"]]
    box: eqx.AbstractVar[Float[Array, "2 labels"]]

    @abc.abstractmethod
    def flux(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """Model flux of one star at ``labels`` (own units)."""

    def __call__(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """Same as :meth:`flux`."""
        return self.flux(labels)

    def jacobian(self, labels: Float[Array, " labels"]) -> Float[Array, "pixels labels"]:
        """∂flux/∂labels (flux per label unit), by forward-mode autodiff."""
        return jax.jacfwd(self.flux)(labels)

    @property
    def n_pixels(self) -> int:
        """Number of pixels."""
        return int(self.s2.shape[0])

    @property
    def n_labels(self) -> int:
        """Number of labels."""
        return len(self.label_names)

    def weights(self, ivar: Float[Array, " pixels"]) -> Float[Array, " pixels"]:
        """``1/(σ² + s²)`` on usable pixels, 0 elsewhere (``ivar = 1/σ²``, 0 = masked)."""
        good = self.pixel_ok & (ivar > 0)
        return jnp.where(good, ivar / (1.0 + ivar * self.s2), 0.0)

    def log_likelihood(
        self,
        labels: Float[Array, " labels"],
        flux: Float[Array, " pixels"],
        ivar: Float[Array, " pixels"],
    ) -> Float[Array, ""]:
        """Gaussian log-likelihood of one spectrum, noise variance σ² + s².

        ``ln p = −½ Σ_λ [ω_λ (f_λ − m_λ(ℓ))² − ln(ω_λ/2π)]`` over pixels with ω > 0.
        """
        omega = self.weights(ivar)
        good = omega > 0
        log_norm = jnp.where(good, jnp.log(jnp.where(good, omega, 1.0) / (2.0 * jnp.pi)), 0.0)
        return -0.5 * jnp.sum(omega * (flux - self.flux(labels)) ** 2) + 0.5 * jnp.sum(log_norm)

    def safety_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Training range widened by its width on each side (own units): fit bounds."""
        box = np.asarray(self.box)
        width = np.maximum(box[1] - box[0], 1e-9)
        return box[0] - width, box[1] + width


class AbstractLinearFluxModel(AbstractFluxModel):
    """A flux model linear in a feature vector of the labels: ``θ · v((ℓ − shift)/scale)``.

    The Cannon. Linearity in the coefficients lets the test step work on per-spectrum
    normal-equation statistics and lets a Doppler shift act on θ once for every label.

    Attributes
    ----------
    vectorizer : callable Module
        Scaled labels (labels,) → feature vector (terms,).
    shift, scale : Float[Array, " labels"]
        Label scaling, own units.
    theta : Float[Array, "pixels terms"]
        Coefficients (flux units).
    """

    vectorizer: eqx.AbstractVar[Any]
    shift: eqx.AbstractVar[Float[Array, " labels"]]
    scale: eqx.AbstractVar[Float[Array, " labels"]]
    theta: eqx.AbstractVar[Float[Array, "pixels terms"]]

    @property
    def n_terms(self) -> int:
        """Number of features (columns of θ)."""
        return int(self.theta.shape[1])

    def label_vector(self, labels: Float[Array, " labels"]) -> Float[Array, " terms"]:
        """``v((ℓ − shift)/scale)``."""
        return self.vectorizer((labels - self.shift) / self.scale)

    def flux(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """Model flux of one star at ``labels`` (own units)."""
        return self.theta @ self.label_vector(labels)


class AbstractFittedFluxModel(AbstractGenerativeModel):
    """A fitted model whose spectra come from a per-star :class:`AbstractFluxModel`.

    The Cannon and the Payne. Generic test steps (radial velocity, continuum, posterior
    uncertainties) take ``fitted.flux_model()``.
    """

    @abc.abstractmethod
    def flux_model(self) -> AbstractFluxModel:
        """The pure-JAX labels → flux model (float64 arrays)."""

    @abc.abstractmethod
    def configuration(self) -> AbstractSpectralModel:
        """The unfitted model that refits this family the same way (cross-validation)."""


class AbstractLatentModel(AbstractGenerativeModel):
    """A fitted model whose labels are a function of per-star latents (Lux).

    Attributes
    ----------
    latent_size : int
        Number of latents per star.
    """

    latent_size: eqx.AbstractVar[int]

    @abc.abstractmethod
    def latents_to_labels(self, latents: Float[Array, "*batch latents"]) -> Float[Array, "*batch labels"]:
        """Labels (own units) of latents."""

    @abc.abstractmethod
    def latent_log_prior(self, latents: Float[Array, " latents"]) -> Float[Array, ""]:
        """Log prior density of one star's latents."""

    @abc.abstractmethod
    def infer_latents(self, data: SpectralDataset, **options: Any) -> Any:
        """Per-star latents (first element: means, shape (stars, latents))."""

    @abc.abstractmethod
    def infer_map(self, data: SpectralDataset, **options: Any) -> InferenceResult:
        """The model's own test step (MAP labels; ``uncertainty=`` a posterior method name).

        What :func:`starlabel.models.infer` runs for ``estimator=MAP()``; the model's
        ``infer`` delegates to that entry point, so options are checked in one place.
        """


def flux_model_of(fitted: Any) -> AbstractFluxModel:
    """The :class:`AbstractFluxModel` of a fitted model (or the flux model itself).

    Raises
    ------
    TypeError
        If ``fitted`` has no per-star flux model (e.g. the flux → label NN regressor, or
        Lux, whose flux depends on latents rather than labels).
    """
    if isinstance(fitted, AbstractFluxModel):
        return fitted
    if isinstance(fitted, AbstractFittedFluxModel):
        return fitted.flux_model()
    raise TypeError(
        f"{type(fitted).__name__} has no labels → flux model: radial-velocity and continuum"
        " fits need an AbstractFluxModel or a fitted model exposing one (FittedCannon, FittedPayne)."
    )
