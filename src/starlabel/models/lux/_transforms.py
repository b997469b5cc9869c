"""Transforms: how one output block (labels, flux, photometry…) depends on the latents.

Every Lux output is ``y = f(z; θ) + noise`` for a star's latent vector ``z``. A transform
is an :class:`equinox.Module` whose array fields are the parameters ``θ`` and whose
static fields are its hyperparameters. Transforms are created *unparametrised* by the
user (``AffineTransform()``) and get arrays sized from the data in :meth:`initialise`
when the model is fitted: the user never states the number of pixels.

Affine transforms (``W z + b``) are special: every conditional problem of the model is
then a weighted least-squares problem, and the latents can be integrated out exactly,
so training uses closed-form EM instead of gradient descent (see ``_em.py``).
"""

# No ``from __future__ import annotations`` here: equinox sees ``eqx.AbstractVar`` only in an
# evaluated annotation (as a string it becomes a plain dataclass field, never checked).
import abc
import itertools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..._internal import require
from ._named import check_function, named_log_prior, named_parameters

_INIT_FIX = "call initialise(latent_size, output_size, key) first (Lux.fit does)"

__all__ = [
    "AbstractTransform",
    "AbstractAffineTransform",
    "LinearTransform",
    "AffineTransform",
    "PolynomialTransform",
    "MLPTransform",
    "FunctionTransform",
    "transform_from_config",
]

_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


def _normal_log_prior(tree: Any, scale: float | None) -> Float[Array, ""]:
    """Sum of log N(θ | 0, scale²) over every array leaf of ``tree`` (0 when ``scale`` is None)."""
    if scale is None:
        return jnp.zeros(())
    leaves = [leaf for leaf in jax.tree.leaves(tree) if eqx.is_inexact_array(leaf)]
    total = sum(jnp.sum(leaf**2) for leaf in leaves)
    count = sum(leaf.size for leaf in leaves)
    return -0.5 * total / scale**2 - count * (np.log(scale) + _HALF_LOG_2PI)


def _check_scale(value: float | None, name: str) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"`{name}` must be a positive prior standard deviation or None, got {value}.")


class AbstractTransform(eqx.Module):
    """Map from a latent vector to one output block, with a prior on its parameters.

    Subclasses are final. Until :meth:`initialise` runs, parameter fields are ``None``.
    """

    @abc.abstractmethod
    def initialise(self, latent_size: int, output_size: int, key: PRNGKeyArray) -> "AbstractTransform":
        """Return a copy with parameters sized ``(output_size, …latent_size)`` drawn from ``key``."""

    @abc.abstractmethod
    def __call__(self, latents: Float[Array, " latents"]) -> Float[Array, " outputs"]:
        """Noise-free output for one star's latents, in the output's scaled units."""

    @abc.abstractmethod
    def log_prior(self) -> Float[Array, ""]:
        """Log prior density of the parameters (0 for a flat prior)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description from which :func:`transform_from_config` rebuilds it."""

    @property
    @abc.abstractmethod
    def is_initialised(self) -> bool:
        """Whether the parameter arrays exist."""


class AbstractAffineTransform(AbstractTransform):
    """``y = W z + b``: the family with closed-form training and exact latent marginals.

    ``weight`` has shape (outputs, latents); ``offset()`` is ``b`` (zeros when the
    transform has no bias).
    """

    weight: eqx.AbstractVar[Float[Array, "outputs latents"] | None]
    prior_scale: eqx.AbstractVar[float | None]
    has_bias: ClassVar[bool]

    @abc.abstractmethod
    def offset(self) -> Float[Array, " outputs"]:
        """The intercept ``b`` (zeros for a purely linear transform)."""

    @abc.abstractmethod
    def with_coefficients(
        self, weight: Float[Array, "outputs latents"], bias: Float[Array, " outputs"]
    ) -> "AbstractAffineTransform":
        """Copy with new ``W`` and ``b`` (``b`` is ignored without a bias)."""

    @property
    def is_initialised(self) -> bool:
        """Whether the parameter arrays exist."""
        return self.weight is not None

    def initialised_weight(self) -> Float[Array, "outputs latents"]:
        """``W``; a ``ValueError`` before :meth:`initialise`."""
        return require(self.weight, f"{type(self).__name__}.weight", _INIT_FIX)

    def __call__(self, latents: Float[Array, " latents"]) -> Float[Array, " outputs"]:
        """``W z + b``."""
        return self.initialised_weight() @ latents + self.offset()


class LinearTransform(AbstractAffineTransform):
    """``y = W z``, with an optional Gaussian prior N(0, ``prior_scale``²) on every ``W`` entry.

    Parameters
    ----------
    prior_scale : float or None
        Prior standard deviation of the weights, in scaled output units per unit latent
        (default 1, as in Lux). ``None`` gives a flat prior (fine for the marginal
        objective, degenerate for joint MAP, where latents could shrink as ``W`` grows).

    Examples
    --------
    >>> import jax
    >>> t = LinearTransform().initialise(latent_size=3, output_size=5, key=jax.random.key(0))
    >>> t.weight.shape
    (5, 3)
    """

    weight: Float[Array, "outputs latents"] | None = None
    prior_scale: float | None = eqx.field(default=1.0, static=True)
    has_bias: ClassVar[bool] = False

    def __check_init__(self) -> None:
        _check_scale(self.prior_scale, "prior_scale")

    def initialise(self, latent_size: int, output_size: int, key: PRNGKeyArray) -> "LinearTransform":
        """Weights ~ N(0, 1/latents): outputs start with roughly unit variance."""
        weight = jax.random.normal(key, (output_size, latent_size)) / np.sqrt(latent_size)
        return LinearTransform(weight=weight, prior_scale=self.prior_scale)

    def offset(self) -> Float[Array, " outputs"]:
        """Zeros: a linear transform has no intercept."""
        weight = self.initialised_weight()
        return jnp.zeros(weight.shape[0], dtype=weight.dtype)

    def with_coefficients(
        self, weight: Float[Array, "outputs latents"], bias: Float[Array, " outputs"]
    ) -> "LinearTransform":
        """Copy with new ``W`` (``bias`` is ignored)."""
        return LinearTransform(weight=weight, prior_scale=self.prior_scale)

    def log_prior(self) -> Float[Array, ""]:
        """Σ log N(W | 0, prior_scale²)."""
        return _normal_log_prior(self.weight, self.prior_scale)

    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"type": "linear", "prior_scale": self.prior_scale}


class AffineTransform(AbstractAffineTransform):
    """``y = W z + b`` (the default): a linear map plus a free intercept per output.

    The intercept absorbs whatever the output scaling left uncentred; it has a flat prior.

    Parameters
    ----------
    prior_scale : float or None
        Prior standard deviation of the weights ``W`` (default 1; ``None`` = flat).
    """

    weight: Float[Array, "outputs latents"] | None = None
    bias: Float[Array, " outputs"] | None = None
    prior_scale: float | None = eqx.field(default=1.0, static=True)
    has_bias: ClassVar[bool] = True

    def __check_init__(self) -> None:
        _check_scale(self.prior_scale, "prior_scale")

    def initialise(self, latent_size: int, output_size: int, key: PRNGKeyArray) -> "AffineTransform":
        """Weights ~ N(0, 1/latents), intercepts 0."""
        weight = jax.random.normal(key, (output_size, latent_size)) / np.sqrt(latent_size)
        return AffineTransform(weight=weight, bias=jnp.zeros(output_size), prior_scale=self.prior_scale)

    def offset(self) -> Float[Array, " outputs"]:
        """The intercept ``b``."""
        return require(self.bias, "AffineTransform.bias", _INIT_FIX)

    def with_coefficients(
        self, weight: Float[Array, "outputs latents"], bias: Float[Array, " outputs"]
    ) -> "AffineTransform":
        """Copy with new ``W`` and ``b``."""
        return AffineTransform(weight=weight, bias=bias, prior_scale=self.prior_scale)

    def log_prior(self) -> Float[Array, ""]:
        """Σ log N(W | 0, prior_scale²); the intercept is flat."""
        return _normal_log_prior(self.weight, self.prior_scale)

    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"type": "affine", "prior_scale": self.prior_scale}


def _polynomial_terms(latent_size: int, degree: int) -> np.ndarray:
    """Index tuples (as a padded int array, -1 = unused) of monomials of degree 1…degree."""
    combos = [
        combo
        for d in range(1, degree + 1)
        for combo in itertools.combinations_with_replacement(range(latent_size), d)
    ]
    table = np.full((len(combos), degree), -1, dtype=np.int64)
    for row, combo in enumerate(combos):
        table[row, : len(combo)] = combo
    return table


class PolynomialTransform(AbstractTransform):
    """``y = W φ(z) + b`` with φ the monomials of the latents up to ``degree``.

    With degree 2 and L latents φ has L + L(L+1)/2 features (the Cannon's design, in
    latent space). Linear in ``W`` but not in ``z``, so it trains on the gradient path.

    Parameters
    ----------
    degree : int
        Highest monomial degree (≥ 1; default 2).
    prior_scale : float or None
        Prior standard deviation of ``W`` (default 1; ``None`` = flat).
    """

    weight: Float[Array, "outputs features"] | None = None
    bias: Float[Array, " outputs"] | None = None
    degree: int = eqx.field(default=2, static=True)
    prior_scale: float | None = eqx.field(default=1.0, static=True)

    def __check_init__(self) -> None:
        if self.degree < 1:
            raise ValueError(f"`degree` must be ≥ 1, got {self.degree}.")
        _check_scale(self.prior_scale, "prior_scale")

    @property
    def is_initialised(self) -> bool:
        """Whether the parameter arrays exist."""
        return self.weight is not None

    def _features(self, latents: Float[Array, " latents"]) -> Float[Array, " features"]:
        table = _polynomial_terms(latents.shape[0], self.degree)
        padded = jnp.concatenate([latents, jnp.ones(1, dtype=latents.dtype)])
        # Index -1 picks the appended 1, so lower-degree monomials share one gather.
        return jnp.prod(padded[table], axis=1)

    def initialise(self, latent_size: int, output_size: int, key: PRNGKeyArray) -> "PolynomialTransform":
        """Linear-term weights ~ N(0, 1/latents), higher terms and intercepts 0."""
        n_features = len(_polynomial_terms(latent_size, self.degree))
        weight = jnp.zeros((output_size, n_features))
        linear = jax.random.normal(key, (output_size, latent_size)) / np.sqrt(latent_size)
        weight = weight.at[:, :latent_size].set(linear)
        return PolynomialTransform(
            weight=weight, bias=jnp.zeros(output_size), degree=self.degree, prior_scale=self.prior_scale
        )

    def __call__(self, latents: Float[Array, " latents"]) -> Float[Array, " outputs"]:
        """``W φ(z) + b``."""
        weight = require(self.weight, "PolynomialTransform.weight", _INIT_FIX)
        return weight @ self._features(latents) + require(self.bias, "PolynomialTransform.bias", _INIT_FIX)

    def log_prior(self) -> Float[Array, ""]:
        """Σ log N(W | 0, prior_scale²); the intercept is flat."""
        return _normal_log_prior(self.weight, self.prior_scale)

    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"type": "polynomial", "degree": self.degree, "prior_scale": self.prior_scale}


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}


class MLPTransform(AbstractTransform):
    """``y = MLP(z)``: an :class:`equinox.nn.MLP` from latents to outputs.

    Parameters
    ----------
    width_size : int
        Hidden layer width (default 32).
    depth : int
        Number of hidden layers (default 2).
    activation : {"tanh", "relu", "gelu", "silu", "softplus"}
        Hidden activation, by name so the model can be saved (default ``"tanh"``).
    prior_scale : float or None
        Prior standard deviation of every weight and bias (default 1; ``None`` = flat).
    """

    mlp: eqx.nn.MLP | None = None
    width_size: int = eqx.field(default=32, static=True)
    depth: int = eqx.field(default=2, static=True)
    activation: str = eqx.field(default="tanh", static=True)
    prior_scale: float | None = eqx.field(default=1.0, static=True)

    def __check_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}.")
        if self.width_size < 1 or self.depth < 0:
            raise ValueError(f"need width_size ≥ 1 and depth ≥ 0, got {self.width_size}, {self.depth}.")
        _check_scale(self.prior_scale, "prior_scale")

    @property
    def is_initialised(self) -> bool:
        """Whether the parameter arrays exist."""
        return self.mlp is not None

    def initialise(self, latent_size: int, output_size: int, key: PRNGKeyArray) -> "MLPTransform":
        """Equinox's default MLP initialisation."""
        mlp = eqx.nn.MLP(
            latent_size,
            output_size,
            self.width_size,
            self.depth,
            activation=_ACTIVATIONS[self.activation],
            key=key,
        )
        return MLPTransform(
            mlp=mlp,
            width_size=self.width_size,
            depth=self.depth,
            activation=self.activation,
            prior_scale=self.prior_scale,
        )

    def __call__(self, latents: Float[Array, " latents"]) -> Float[Array, " outputs"]:
        """The network's output."""
        return require(self.mlp, "MLPTransform.mlp", _INIT_FIX)(latents)

    def log_prior(self) -> Float[Array, ""]:
        """Σ log N(θ | 0, prior_scale²) over all weights and biases."""
        return _normal_log_prior(self.mlp, self.prior_scale)

    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {
            "type": "mlp",
            "width_size": self.width_size,
            "depth": self.depth,
            "activation": self.activation,
            "prior_scale": self.prior_scale,
        }


class FunctionTransform(AbstractTransform):
    """A user function ``fn(latents, **params) -> outputs`` with named parameters and priors.

    Parameters
    ----------
    fn : callable
        Pure JAX function of one star's latents (latents,) and the named parameters,
        returning (outputs,) in the output's scaled units.
    params : mapping of str to array
        Initial parameter values (these set the shapes).
    priors : mapping of str to numpyro.distributions.Distribution, optional
        Prior per parameter name; parameters without one have a flat prior. Each
        distribution's ``log_prob(value)`` is summed.

    Notes
    -----
    A model with a function transform cannot be saved (code is never serialised).

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro.distributions as dist
    >>> t = FunctionTransform(lambda z, a, b: a * jnp.tanh(z[:1]) + b,
    ...                       params={"a": jnp.ones(1), "b": jnp.zeros(1)},
    ...                       priors={"a": dist.Normal(0.0, 2.0)})
    """

    fn: Callable[..., Array] = eqx.field(static=True)
    params: dict[str, Array]
    priors: tuple[tuple[str, Any], ...] = eqx.field(static=True)

    def __init__(
        self,
        fn: Callable[..., Array],
        params: Mapping[str, Any],
        priors: Mapping[str, Any] | tuple[tuple[str, Any], ...] = (),
    ) -> None:
        check_function(fn, "fn(latents, **params)")
        self.fn = fn
        self.params, self.priors = named_parameters(params, priors)

    @property
    def is_initialised(self) -> bool:
        """Always true: the user gives the parameters."""
        return True

    def initialise(self, latent_size: int, output_size: int, key: PRNGKeyArray) -> "FunctionTransform":
        """Check that ``fn`` maps (latent_size,) to (output_size,); parameters are kept."""
        shape = jax.eval_shape(lambda z: self.fn(z, **self.params), jnp.zeros(latent_size)).shape
        if shape != (output_size,):
            raise ValueError(
                f"FunctionTransform fn returns shape {shape} for latents of shape ({latent_size},);"
                f" this output has {output_size} columns, so it must return ({output_size},)."
            )
        return self

    def __call__(self, latents: Float[Array, " latents"]) -> Float[Array, " outputs"]:
        """``fn(latents, **params)``."""
        return self.fn(latents, **self.params)

    def log_prior(self) -> Float[Array, ""]:
        """Σ over named priors of ``prior.log_prob(param)``."""
        return named_log_prior(self.params, self.priors)

    def config(self) -> dict[str, Any]:
        """Raises: user code is never serialised."""
        raise ValueError(
            "a Lux model with a FunctionTransform cannot be saved (functions are not"
            " serialised); keep the function in your own code and refit, or use a built-in"
            " transform (LinearTransform, AffineTransform, PolynomialTransform, MLPTransform)."
        )


def transform_from_config(config: Mapping[str, Any], latent_size: int, output_size: int) -> AbstractTransform:
    """Rebuild an initialised transform (placeholder values) from its :meth:`config`."""
    kind = config.get("type")
    key = jax.random.key(0)
    if kind == "linear":
        base: AbstractTransform = LinearTransform(prior_scale=config["prior_scale"])
    elif kind == "affine":
        base = AffineTransform(prior_scale=config["prior_scale"])
    elif kind == "polynomial":
        base = PolynomialTransform(degree=config["degree"], prior_scale=config["prior_scale"])
    elif kind == "mlp":
        base = MLPTransform(
            width_size=config["width_size"],
            depth=config["depth"],
            activation=config["activation"],
            prior_scale=config["prior_scale"],
        )
    else:
        raise ValueError(
            f"unknown transform type {kind!r} in model file; known: linear, affine, polynomial, mlp."
        )
    return base.initialise(latent_size, output_size, key)
