"""The Payne's network: scaled labels → normalised flux of every pixel.

``x → act(W₁x + b₁) → act(W₂h + b₂) → z = W₃h + b₃ → flux = E z + b`` : hidden layers
with a smooth activation, then a *linear* bottleneck of ``K`` components ``z`` and a
learned basis ``E`` (pixels × K) of spectra. Line-list spectra with 5 labels need few
components (a PCA of the 2,000 noise-free 7,214-pixel training spectra of
benchmarks/payne.py leaves an RMS residual of
4e-4 at K = 32 and 1e-4 at K = 64, against noise of ~6e-3), and the bottleneck is what
makes the test step fast: the model flux lies in the span of ``E``, so a spectrum's χ²
is a quadratic form in ``z`` whose K×K statistics are formed once per spectrum (the
Cannon's trick), and every Gauss–Newton step costs only the small network.

Weights are plain arrays so that a batch of stars is one matrix product per layer.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["ACTIVATIONS", "PayneNetwork"]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}
"""Hidden activations by name (``"sigmoid"`` is the original Payne's)."""


class PayneNetwork(eqx.Module):
    """Dense network ``x (labels,) → flux (pixels,)`` through a linear ``K``-component bottleneck.

    Attributes
    ----------
    weights : tuple of Float[Array, "out in"]
        Layer matrices: hidden layers, then the bottleneck (K, hidden), then the basis
        ``E`` (pixels, K).
    biases : tuple of Float[Array, " out"]
        Layer offsets; the last (pixels,) starts at the mean training flux.
    activation : str
        Key of :data:`ACTIVATIONS` (hidden layers only; the last two layers are linear).
    """

    weights: tuple[Float[Array, "out in"], ...]
    biases: tuple[Float[Array, " out"], ...]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        sizes: tuple[int, ...],
        activation: str,
        key: PRNGKeyArray,
        *,
        output_bias: Float[Array, " pixels"] | None = None,
        dtype: jnp.dtype = jnp.float32,
    ) -> None:
        keys = jax.random.split(key, len(sizes) - 1)
        weights, biases = [], []
        for n_in, n_out, k in zip(sizes[:-1], sizes[1:], keys, strict=True):
            # LeCun-normal: unit-variance pre-activations for unit-variance inputs.
            weights.append(jax.random.normal(k, (n_out, n_in), dtype=dtype) / jnp.sqrt(n_in).astype(dtype))
            biases.append(jnp.zeros(n_out, dtype=dtype))
        if output_bias is not None:
            biases[-1] = jnp.asarray(output_bias, dtype=dtype)
        self.weights = tuple(weights)
        self.biases = tuple(biases)
        self.activation = activation

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths, input first: (labels, hidden…, components, pixels)."""
        return (int(self.weights[0].shape[1]), *(int(w.shape[0]) for w in self.weights))

    @property
    def basis(self) -> Float[Array, "pixels components"]:
        """``E``: the spectra the flux is a combination of."""
        return self.weights[-1]

    @property
    def offset(self) -> Float[Array, " pixels"]:
        """``b``: the flux at ``z = 0``."""
        return self.biases[-1]

    def components(self, x: Float[Array, " labels"]) -> Float[Array, " components"]:
        """Bottleneck ``z`` of one star's scaled labels ``x``, computed in ``x``'s dtype.

        The layers before the basis are small, so a float64 ``x`` (the test step's
        Gauss–Newton) costs little and converges to float64 precision.
        """
        act = ACTIVATIONS[self.activation]
        h = x
        for w, b in zip(self.weights[:-2], self.biases[:-2], strict=True):
            h = act(w.astype(x.dtype) @ h + b.astype(x.dtype))
        return self.weights[-2].astype(x.dtype) @ h + self.biases[-2].astype(x.dtype)

    def __call__(self, x: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """Flux of one star's scaled labels ``x``, in the weights' dtype (``jax.vmap`` for many)."""
        x = x.astype(self.basis.dtype)
        return self.basis @ self.components(x) + self.offset

    def orthonormalised(self) -> PayneNetwork:
        """The same function with orthonormal basis columns (``E = QR``; ``R`` moves into the bottleneck).

        Keeps the test step's K×K statistics well conditioned in float32.
        """
        q, r = np.linalg.qr(np.asarray(self.basis, dtype=np.float64))
        dtype = self.basis.dtype
        w = jnp.asarray(r @ np.asarray(self.weights[-2], dtype=np.float64), dtype=dtype)
        b = jnp.asarray(r @ np.asarray(self.biases[-2], dtype=np.float64), dtype=dtype)
        weights = (*self.weights[:-2], w, jnp.asarray(q, dtype=dtype))
        biases = (*self.biases[:-2], b, self.biases[-1])
        return eqx.tree_at(lambda n: (n.weights, n.biases), self, (weights, biases))
