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
  :class:`AbstractMapStepModel` marks a fitted model whose ``infer`` delegates to
  :func:`starlabel.models.infer`, which runs the model's own step ``infer_map`` (Cannon, Lux);
  every family's fitted model is also an :class:`~starlabel.models.AbstractCalibratedModel`
  (it carries the error calibration learned at training; the model file keeps it);
* flux models: :class:`AbstractFluxModel` (labels of one star → its normalised flux,
  pure JAX), :class:`AbstractLinearFluxModel` (flux linear in a feature vector of the
  labels) and :class:`AbstractPosteriorFluxModel` (a linear model whose label posterior
  the ``PosteriorMean``/``NUTS`` estimators integrate: the Cannon's). The generic
  test-step pieces (radial velocity, continuum, binary, Fisher/Laplace/NUTS
  uncertainties, the estimators' routing) are written against these classes and never
  import a model family.

Serialisation contract: ``config()`` returns the JSON-able hyperparameters needed to
rebuild a *skeleton* (any array values) with ``skeleton(config)``; the saved arrays
are the skeleton's array leaves, matched by their pytree key paths.
"""

# No ``from __future__ import annotations`` here: equinox sees ``eqx.AbstractVar`` only in an
# evaluated annotation (as a string it becomes a plain dataclass field, never checked).
import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..data import InferenceResult, SpectralDataset
from ._io import AbstractCalibratedModel, AbstractSavedModel

__all__ = [
    "AbstractSpectralModel",
    "AbstractFittedModel",
    "AbstractGenerativeModel",
    "AbstractFittedFluxModel",
    "AbstractLinearFittedModel",
    "AbstractLatentModel",
    "AbstractMapStepModel",
    "AbstractFluxModel",
    "AbstractLinearFluxModel",
    "AbstractPosteriorFluxModel",
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
    def fit(self, train: SpectralDataset, *, calibrate: bool = True, **options: Any) -> AbstractFittedModel:
        """Fit to ``train`` (spectra with labels ``label_names``); return a fitted model.

        ``calibrate=False`` skips learning the default test step's error calibration
        (the cross-validation refits, which need no calibration of their own, pass it).
        """


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


class AbstractPosteriorFluxModel(AbstractLinearFluxModel):
    """A linear flux model whose label posterior has per-spectrum χ² statistics.

    The ``PosteriorMean`` and ``NUTS`` estimators of :func:`starlabel.models.infer`
    (and the tempering cross-validation, and the nuisance fit's posterior mean) call
    these methods, so the generic test step does not import the family that implements
    them (the Cannon's ``PolynomialSpectrum``).
    """

    @abc.abstractmethod
    def infer_posterior_mean(
        self, data: SpectralDataset, *, fitted: AbstractFittedModel | None = None, **options: Any
    ) -> InferenceResult:
        """Posterior mean and covariance of every star's labels (grid or importance sampling).

        ``fitted``: the fitted model this flux model comes from, whose own MAP labels
        start the importance sampler (None: the training labels only).
        """

    @abc.abstractmethod
    def infer_nuts(
        self,
        data: SpectralDataset,
        key: Any,
        *,
        fitted: AbstractFittedModel | None = None,
        **options: Any,
    ) -> InferenceResult:
        """Posterior mean and covariance of NUTS draws (``fitted``'s MAP whitens the sampler)."""


class AbstractMapStepModel(AbstractFittedModel, AbstractCalibratedModel):
    """A fitted model whose ``infer`` delegates to :func:`starlabel.models.infer`.

    Its own test step is :meth:`infer_map`, which that entry point runs for
    ``estimator=MAP()``, so the choices are checked in one place (Cannon, Lux); that
    step applies the model's error calibration unless ``calibrate=False``.
    """

    @abc.abstractmethod
    def infer_map(self, data: SpectralDataset, **options: Any) -> InferenceResult:
        """The model's own test step: MAP labels; ``uncertainty=`` a posterior method name.

        ``calibrate=False`` leaves the model's error calibration off.
        """


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


class AbstractLinearFittedModel(AbstractGenerativeModel):
    """A fitted model whose flux is linear in per-pixel coefficients (the Cannon).

    ``flux_λ(ℓ) = θ_λ · v(label_scaler.transform(ℓ))``: what the training uncertainty of
    the coefficients (:func:`~starlabel.models.training_prediction_variance`) needs.

    Attributes
    ----------
    vectorizer : callable Module
        Scaled labels (labels,) → feature vector (terms,); ``design`` for (stars, labels).
    label_scaler : ShiftScale
        Labels (own units) → scaled labels.
    theta : Float[Array, "pixels terms"]
        Coefficients (flux units).
    s2 : Float[Array, " pixels"]
        Intrinsic scatter variance per pixel, flux².
    """

    vectorizer: eqx.AbstractVar[Any]
    label_scaler: eqx.AbstractVar[Any]
    theta: eqx.AbstractVar[Float[Array, "pixels terms"]]
    s2: eqx.AbstractVar[Float[Array, " pixels"]]

    @property
    @abc.abstractmethod
    def active_terms(self) -> np.ndarray:
        """Bool (pixels, terms): coefficients fitted in training (False: censored, held at 0)."""


class AbstractLatentModel(AbstractGenerativeModel, AbstractMapStepModel):
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


def flux_model_of(fitted: AbstractFittedModel | AbstractFluxModel) -> AbstractFluxModel:
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
