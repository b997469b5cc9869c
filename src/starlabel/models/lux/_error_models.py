"""Error models: the noise variance of an output given its reported uncertainties.

An output's likelihood is ``y ~ N(f(z), V)`` with ``V = g(σ²)`` elementwise, where σ² is
the reported variance. Reported uncertainties are often too small (telluric residuals,
sky lines, model mismatch); an error model with a learned extra scatter ``s`` uses
``V = σ² + s²``. The scatter has a half-normal prior, HalfNormal(``prior_scale``), and is
stored in the output's scaled units (the fitted model converts it back to data units).

Scatter parameters are kept as real numbers whose *square* enters ``V``: the likelihood
is then smooth and unconstrained for gradient solvers and ``|s|`` is the scatter.
"""

# No ``from __future__ import annotations`` here: equinox sees ``eqx.AbstractVar`` only in an
# evaluated annotation (as a string it becomes a plain dataclass field, never checked).
import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..._internal import require
from ._named import check_function, named_log_prior, named_parameters

_INIT_FIX = "call initialise(output_size) first (Lux.fit does)"

__all__ = [
    "AbstractErrorModel",
    "AbstractScatter",
    "NoScatter",
    "PixelScatter",
    "ScalarScatter",
    "FunctionErrorModel",
    "error_model_from_config",
]


class AbstractErrorModel(eqx.Module):
    """Total noise variance of one output block from its reported variance."""

    @abc.abstractmethod
    def initialise(self, output_size: int) -> "AbstractErrorModel":
        """Return a copy whose parameters are sized for ``output_size`` columns."""

    @abc.abstractmethod
    def variance(self, reported_var: Float[Array, " outputs"]) -> Float[Array, " outputs"]:
        """Total variance ``V`` for one star, in scaled units squared."""

    @abc.abstractmethod
    def log_prior(self) -> Float[Array, ""]:
        """Log prior density of the error-model parameters."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description for :func:`error_model_from_config`."""


class NoScatter(AbstractErrorModel):
    """Trust the reported uncertainties: ``V = σ²`` (Lux "model 1")."""

    def initialise(self, output_size: int) -> "NoScatter":
        """Nothing to size."""
        return self

    def variance(self, reported_var: Float[Array, " outputs"]) -> Float[Array, " outputs"]:
        """``σ²`` unchanged."""
        return reported_var

    def log_prior(self) -> Float[Array, ""]:
        """0: no parameters."""
        return jnp.zeros(())

    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"type": "none"}


class AbstractScatter(AbstractErrorModel):
    """``V = σ² + s²`` with a half-normal prior on ``s``; updated in closed form by EM."""

    scatter: eqx.AbstractVar[Float[Array, " scatter"] | None]
    prior_scale: eqx.AbstractVar[float]
    per_column: ClassVar[bool]

    @abc.abstractmethod
    def with_scatter(self, scatter: Float[Array, " scatter"]) -> "AbstractScatter":
        """Copy with new scatter values."""

    @abc.abstractmethod
    def variance_coefficients(self) -> Float[Array, " outputs"]:
        """c_j in ``V_j = σ_j² + c_j s_g(j)²`` (how a group's variance reaches column j)."""

    def initialised_scatter(self) -> Float[Array, " scatter"]:
        """``s``; a ``ValueError`` before :meth:`initialise`."""
        return require(self.scatter, f"{type(self).__name__}.scatter", _INIT_FIX)

    def variance(self, reported_var: Float[Array, " outputs"]) -> Float[Array, " outputs"]:
        """``σ² + c s²``."""
        return reported_var + self.variance_coefficients() * self.initialised_scatter() ** 2

    def log_prior(self) -> Float[Array, ""]:
        """Σ log HalfNormal(|s| | prior_scale)."""
        tau = self.prior_scale
        return jnp.sum(
            0.5 * np.log(2.0 / np.pi) - np.log(tau) - 0.5 * self.initialised_scatter() ** 2 / tau**2
        )

    def __check_init__(self) -> None:
        if not self.prior_scale > 0:
            raise ValueError(f"`prior_scale` must be > 0, got {self.prior_scale}.")


class PixelScatter(AbstractScatter):
    """One extra scatter per column (per pixel for flux, per label for labels): ``V = σ² + s_j²``.

    Parameters
    ----------
    prior_scale : float
        Scale of the half-normal prior on each ``s_j`` in scaled units (default 5, weak).
    """

    scatter: Float[Array, " scatter"] | None = None
    prior_scale: float = eqx.field(default=5.0, static=True)
    per_column: ClassVar[bool] = True

    def initialise(self, output_size: int) -> "PixelScatter":
        """Start every ``s_j`` at 0.1 (scaled units); EM moves it in one step."""
        return PixelScatter(scatter=jnp.full(output_size, 0.1), prior_scale=self.prior_scale)

    def with_scatter(self, scatter: Float[Array, " scatter"]) -> "PixelScatter":
        """Copy with new values."""
        return PixelScatter(scatter=scatter, prior_scale=self.prior_scale)

    def variance_coefficients(self) -> Float[Array, " outputs"]:
        """Ones: each column has its own scatter."""
        return jnp.ones_like(self.initialised_scatter())

    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"type": "pixel", "prior_scale": self.prior_scale}


class ScalarScatter(AbstractScatter):
    """One extra scatter, in the output's data units, shared by every column.

    Outputs are standardised per column, so a scatter that is uniform in data units
    (e.g. flux units) is ``s r_j`` in scaled units, with ``r_j = median(scale) /
    scale_j`` set by :meth:`for_scales` when the model is fitted; ``s`` itself is in
    units of the median column scale.

    Parameters
    ----------
    prior_scale : float
        Scale of the half-normal prior on ``s`` (units of the median column scale;
        default 5, weak).
    """

    scatter: Float[Array, " scatter"] | None = None
    relative_scale: Float[Array, " outputs"] | None = None
    prior_scale: float = eqx.field(default=5.0, static=True)
    per_column: ClassVar[bool] = False

    def initialise(self, output_size: int) -> "ScalarScatter":
        """Start ``s`` at 0.1; columns share one scale until :meth:`for_scales`."""
        relative = self.relative_scale if self.relative_scale is not None else jnp.ones(output_size)
        return ScalarScatter(scatter=jnp.full(1, 0.1), relative_scale=relative, prior_scale=self.prior_scale)

    def for_scales(self, scales: Float[Array, " outputs"]) -> "ScalarScatter":
        """Copy whose scatter is uniform in data units for columns scaled by ``scales``."""
        relative = jnp.median(scales) / scales
        return ScalarScatter(scatter=self.scatter, relative_scale=relative, prior_scale=self.prior_scale)

    def with_scatter(self, scatter: Float[Array, " scatter"]) -> "ScalarScatter":
        """Copy with a new value."""
        return ScalarScatter(
            scatter=scatter, relative_scale=self.relative_scale, prior_scale=self.prior_scale
        )

    def variance_coefficients(self) -> Float[Array, " outputs"]:
        """``r_j²``."""
        return require(self.relative_scale, "ScalarScatter.relative_scale", _INIT_FIX) ** 2

    def config(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"type": "scalar", "prior_scale": self.prior_scale}


class FunctionErrorModel(AbstractErrorModel):
    """A user function ``fn(err, **params) -> total_err`` (1-σ in, 1-σ out).

    The error transform ``sqrt(err² + s²)`` is :class:`PixelScatter`;
    use this class for anything else, e.g. a multiplicative inflation
    ``lambda err, k: k * err``. Trained on the gradient path only.

    Parameters
    ----------
    fn : callable
        Pure JAX function of one star's reported errors (outputs,) and the named
        parameters, returning total 1-σ errors (outputs,) in scaled units.
    params : mapping of str to array
        Initial values (they set the shapes).
    priors : mapping of str to numpyro.distributions.Distribution, optional
        Prior per parameter; parameters without one are flat.
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
        check_function(fn, "fn(err, **params)")
        self.fn = fn
        self.params, self.priors = named_parameters(params, priors)

    def initialise(self, output_size: int) -> "FunctionErrorModel":
        """Check that ``fn`` keeps the shape (output_size,)."""
        shape = jax.eval_shape(lambda e: self.fn(e, **self.params), jnp.ones(output_size)).shape
        if shape != (output_size,):
            raise ValueError(
                f"FunctionErrorModel fn returns shape {shape} for errors of shape ({output_size},);"
                " it must return one total error per column."
            )
        return self

    def variance(self, reported_var: Float[Array, " outputs"]) -> Float[Array, " outputs"]:
        """``fn(σ, **params)²``."""
        return self.fn(jnp.sqrt(reported_var), **self.params) ** 2

    def log_prior(self) -> Float[Array, ""]:
        """Σ over named priors of ``prior.log_prob(param)``."""
        return named_log_prior(self.params, self.priors)

    def config(self) -> dict[str, Any]:
        """Raises: user code is never serialised."""
        raise ValueError(
            "a Lux model with a FunctionErrorModel cannot be saved (functions are not"
            " serialised); use NoScatter, PixelScatter or ScalarScatter to save."
        )


def error_model_from_config(config: Mapping[str, Any], output_size: int) -> AbstractErrorModel:
    """Rebuild an initialised error model (placeholder values) from its :meth:`config`."""
    kind = config.get("type")
    if kind == "none":
        return NoScatter()
    if kind == "pixel":
        return PixelScatter(prior_scale=config["prior_scale"]).initialise(output_size)
    if kind == "scalar":
        return ScalarScatter(prior_scale=config["prior_scale"]).initialise(output_size)
    raise ValueError(f"unknown error model type {kind!r} in model file; known: none, pixel, scalar.")
