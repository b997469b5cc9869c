"""``PolynomialSpectrum``: the Cannon's labels → flux model, θ · v((ℓ − shift)/scale)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
from jaxtyping import Array, Bool, Float

from ..base import AbstractLinearFluxModel

__all__ = ["PolynomialSpectrum"]


class PolynomialSpectrum(AbstractLinearFluxModel):
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
