"""``PayneSpectrum``: the Payne's labels → flux model as an :class:`AbstractFluxModel`."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..base import AbstractFluxModel
from ._network import PayneNetwork

__all__ = ["PayneSpectrum"]


class PayneSpectrum(AbstractFluxModel):
    """Flux ``N((ℓ − low)/(high − low) − ½)`` of a trained network ``N``.

    Labels are scaled to [−½, ½] over the training range (The Payne's convention). The
    network's basis product runs in its own precision (float32) and the flux is returned
    in the labels' dtype, so a float64 fit keeps its residuals and normal equations in
    float64 while the largest product runs at single-precision speed.

    Attributes
    ----------
    label_names : tuple of str
    network : PayneNetwork
    low, high : Float[Array, " labels"]
        Training label minimum and maximum (own units).
    s2 : Float[Array, " pixels"]
        Per-pixel scatter variance learned on held-out residuals (flux²).
    pixel_ok : Bool[Array, " pixels"]
        Pixels the model describes.
    train_labels : Float[Array, "train labels"]
        (A subsample of) the training labels: test-step starting points.
    box : Float[Array, "2 labels"]
        Training label range.
    """

    label_names: tuple[str, ...] = eqx.field(static=True)
    network: PayneNetwork
    low: Float[Array, " labels"]
    high: Float[Array, " labels"]
    s2: Float[Array, " pixels"]
    pixel_ok: Bool[Array, " pixels"]
    train_labels: Float[Array, "train labels"]
    box: Float[Array, "2 labels"]

    def __init__(
        self,
        label_names: tuple[str, ...],
        network: PayneNetwork,
        low: Float[Array, " labels"],
        high: Float[Array, " labels"],
        s2: Float[Array, " pixels"],
        pixel_ok: Bool[Array, " pixels"],
        train_labels: Float[Array, "train labels"],
    ) -> None:
        self.label_names = tuple(label_names)
        self.network = network
        self.low = low
        self.high = high
        self.s2 = s2
        self.pixel_ok = pixel_ok
        self.train_labels = train_labels
        self.box = jnp.stack([low, high])

    def scaled(self, labels: Float[Array, "*batch labels"]) -> Float[Array, "*batch labels"]:
        """Labels (own units) → network input in [−½, ½] over the training range."""
        return (labels - self.low) / (self.high - self.low) - 0.5

    def components(self, labels: Float[Array, " labels"]) -> Float[Array, " components"]:
        """The bottleneck ``z`` at ``labels`` (flux = ``E z + b``), in the labels' dtype."""
        return self.network.components(self.scaled(labels))

    def flux(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """Model flux of one star at ``labels`` (own units), in the labels' dtype."""
        return self.network(self.scaled(labels)).astype(labels.dtype)
