"""``PolynomialSpectrum``: the Cannon's labels → flux model, θ · v((ℓ − shift)/scale).

It implements :class:`~starlabel.models.AbstractPosteriorFluxModel`: the generic test
step's ``PosteriorMean`` and ``NUTS`` estimators reach the Cannon's integrators
(``_posterior_mean``, ``_nuts``) through its methods.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
from jaxtyping import Array, Bool, Float

from ...data import InferenceResult, SpectralDataset
from ..base import AbstractFittedFluxModel, AbstractFittedModel, AbstractPosteriorFluxModel
from ._nuts import nuts_posterior
from ._posterior_mean import posterior_mean

__all__ = ["PolynomialSpectrum", "polynomial_spectrum"]


class PolynomialSpectrum(AbstractPosteriorFluxModel):
    """A pure-JAX view of a model whose flux is ``θ · v((ℓ − shift)/scale)`` per pixel.

    Built from a fitted Cannon by :meth:`FittedCannon.flux_model`; this is what the
    posterior-mean, radial-velocity, continuum and binary fits evaluate.

    Attributes
    ----------
    label_names : tuple of str
    vectorizer : callable Module
        Scaled labels (labels,) → label vector (terms,).
    shift, scale : Float[Array, " labels"]
        Label scaling.
    theta : Float[Array, "pixels terms"]
        Coefficients (flux units).
    s2 : Float[Array, " pixels"]
        Intrinsic scatter variance (flux²).
    pixel_ok : Bool[Array, " pixels"]
        Pixels the model describes (others are ignored).
    train_labels : Float[Array, "train labels"]
        Training labels kept by the model (own units): priors and starting points.
    box : Float[Array, "2 labels"]
        Training label range (own units).
    """

    label_names: tuple[str, ...] = eqx.field(static=True)
    vectorizer: Any
    shift: Float[Array, " labels"]
    scale: Float[Array, " labels"]
    theta: Float[Array, "pixels terms"]
    s2: Float[Array, " pixels"]
    pixel_ok: Bool[Array, " pixels"]
    train_labels: Float[Array, "train labels"]
    box: Float[Array, "2 labels"]

    def __init__(
        self,
        label_names: tuple[str, ...],
        vectorizer: Any,
        shift: Float[Array, " labels"],
        scale: Float[Array, " labels"],
        theta: Float[Array, "pixels terms"],
        s2: Float[Array, " pixels"],
        pixel_ok: Bool[Array, " pixels"],
        train_labels: Float[Array, "train labels"],
        box: Float[Array, "2 labels"],
    ) -> None:
        self.label_names = tuple(label_names)
        self.vectorizer = vectorizer
        self.shift = shift
        self.scale = scale
        self.theta = theta
        self.s2 = s2
        self.pixel_ok = pixel_ok
        self.train_labels = train_labels
        self.box = box

    def infer_posterior_mean(
        self, data: SpectralDataset, *, fitted: AbstractFittedModel | None = None, **options: Any
    ) -> InferenceResult:
        """Grid/importance posterior mean (options: ``cannon._posterior_mean.posterior_mean``)."""
        return posterior_mean(self, data, fitted=fitted, **options)

    def infer_nuts(
        self, data: SpectralDataset, key: Any, *, fitted: AbstractFittedModel | None = None, **options: Any
    ) -> InferenceResult:
        """NUTS posterior mean (options: ``cannon._nuts.nuts_posterior``)."""
        return nuts_posterior(self, data, key, fitted=fitted, **options)


def polynomial_spectrum(fitted: object) -> PolynomialSpectrum:
    """The :class:`PolynomialSpectrum` of a fitted Cannon (or the spectrum itself).

    Raises
    ------
    TypeError
        If ``fitted`` has no polynomial flux model: the grid test steps need a model
        linear in its coefficients.
    """
    if isinstance(fitted, PolynomialSpectrum):
        return fitted
    if isinstance(fitted, AbstractFittedFluxModel):
        model = fitted.flux_model()
        if isinstance(model, PolynomialSpectrum):
            return model
    raise TypeError(
        f"{type(fitted).__name__} is not a polynomial-in-labels model: the posterior-mean,"
        " grid test steps need one such as a FittedCannon (or a PolynomialSpectrum)."
    )
