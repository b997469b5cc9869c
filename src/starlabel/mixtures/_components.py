"""Population components observed through Gaussian measurement errors.

Each component describes the distribution of an object's *true* value ``v`` (a
vector of ``dims`` measured quantities). Objects are observed as ``y = v + ε`` with
``ε ~ N(0, C_i)``, so the density a mixture needs is the component convolved with the
object's error distribution,

    p_k(y_i | θ_k) = ∫ N(y_i | v, C_i) p_k(v | θ_k) dv.

For Gaussian components the integral is analytic, N(y_i | μ_k, V_k + C_i): the
per-object true values are marginalised out exactly instead of being sampled (the
"deconvolution" of Bovy, Hogg & Roweis 2011). A delta function (``V_k = 0``) is the
usual "the model is exact, only the noise scatters" inlier component.

Every ``log_prob`` takes the observations and their covariances and returns one
log-density per object; mixtures combine them with logsumexp (see ``_mixture.py``).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
from jaxtyping import Array, Float

__all__ = [
    "AbstractComponent",
    "Gaussian",
    "GaussianMixture",
    "Uniform",
    "FromDistribution",
    "gaussian_log_prob",
    "symmetric_inverse",
]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(
    residual: Float[Array, "*batch dims"], cov: Float[Array, "*batch dims dims"]
) -> Float[Array, "*batch"]:
    """Log-density of a zero-mean multivariate normal, batched over leading axes.

    Computes ``log N(r | 0, Σ) = -½ rᵀΣ⁻¹r - ½ log|Σ| - (d/2) log 2π`` through a
    Cholesky factor of each ``Σ``.

    Parameters
    ----------
    residual : Array, shape (..., dims)
        ``y - μ`` for each object.
    cov : Array, shape (..., dims, dims)
        Symmetric positive-definite covariance of each residual (same leading axes).

    Returns
    -------
    Array, shape (...)
        One log-density per residual (NaN where a covariance is not positive definite).
    """
    dims = residual.shape[-1]
    if dims <= _UNROLL_DIMS:
        return _small_gaussian_log_prob(residual, cov)
    chol = jnp.linalg.cholesky(cov)
    white = jsl.solve_triangular(chol, residual[..., None], lower=True)[..., 0]
    log_det_half = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * jnp.sum(white**2, axis=-1) - log_det_half - 0.5 * dims * _LOG_2PI


# Astrometry has 1-3 dimensions (a line's y; pm; pm + parallax). For those, a Cholesky
# written out element by element is plain vectorised arithmetic over the objects: it
# runs several times faster on CPU than batched LAPACK calls on 3x3 blocks, and its
# gradient compiles in a fraction of the time (NUTS traces it twice: warmup, sampling).
_UNROLL_DIMS = 4


def _small_gaussian_log_prob(residual: Array, cov: Array) -> Array:
    dims = residual.shape[-1]
    chol: dict[tuple[int, int], Array] = {}
    for j in range(dims):
        diag = cov[..., j, j] - sum((chol[j, k] ** 2 for k in range(j)), jnp.zeros_like(cov[..., j, j]))
        chol[j, j] = jnp.sqrt(diag)
        for i in range(j + 1, dims):
            off = cov[..., i, j] - sum((chol[i, k] * chol[j, k] for k in range(j)), jnp.zeros_like(diag))
            chol[i, j] = off / chol[j, j]
    white = []
    for i in range(dims):
        acc = residual[..., i] - sum(
            (chol[i, k] * white[k] for k in range(i)), jnp.zeros_like(residual[..., i])
        )
        white.append(acc / chol[i, i])
    quad = sum((w**2 for w in white), jnp.zeros_like(white[0]))
    log_det_half = sum((jnp.log(chol[j, j]) for j in range(dims)), jnp.zeros_like(white[0]))
    return -0.5 * quad - log_det_half - 0.5 * dims * _LOG_2PI


def symmetric_inverse(cov: Float[Array, "*batch dims dims"]) -> Float[Array, "*batch dims dims"]:
    """Inverse of symmetric matrices, batched; closed-form adjugate for dims ≤ 3.

    Batched LAPACK on millions of 2×2/3×3 blocks is dominated by per-matrix call
    overhead on CPU; the adjugate formula is a handful of vectorised multiplies.
    Larger matrices fall back to ``jnp.linalg.inv``.
    """
    dims = cov.shape[-1]
    if dims == 1:
        return 1.0 / cov
    if dims == 2:
        a, b, d = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
        det = a * d - b * b
        rows = [[d, -b], [-b, a]]
    elif dims == 3:
        a, b, c = cov[..., 0, 0], cov[..., 0, 1], cov[..., 0, 2]
        d, e, f = cov[..., 1, 1], cov[..., 1, 2], cov[..., 2, 2]
        c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
        c11, c12, c22 = a * f - c * c, b * c - a * e, a * d - b * b
        det = a * c00 + b * c01 + c * c02
        rows = [[c00, c01, c02], [c01, c11, c12], [c02, c12, c22]]
    else:
        return jnp.linalg.inv(cov)
    adjugate = jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)
    return adjugate / det[..., None, None]


def _check_observations(y: Array, y_cov: Array, dims: int | None, who: str) -> None:
    if y.ndim != 2:
        raise ValueError(f"{who}: `y` must be 2-D (stars, dims), got shape {y.shape}.")
    if y_cov.shape != (*y.shape, y.shape[1]):
        raise ValueError(
            f"{who}: `y_cov` has shape {y_cov.shape} but must be (stars, dims, dims) ="
            f" {(*y.shape, y.shape[1])} to match `y`; for independent errors use"
            " jnp.eye(dims) * err[..., None] ** 2."
        )
    if dims is not None and y.shape[1] != dims:
        raise ValueError(f"{who}: the component has {dims} dims but `y` has {y.shape[1]} columns.")


class AbstractComponent(eqx.Module):
    """A population density for an object's true value, convolved with its errors.

    Subclasses implement :meth:`log_prob`. Components are pytrees, so their
    parameters can be sampled, differentiated and vmapped like any array.
    """

    @abc.abstractmethod
    def log_prob(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, " stars"]:
        """Log-density of each observation, marginalised over its true value.

        Parameters
        ----------
        y : Array, shape (stars, dims)
            Observed values.
        y_cov : Array, shape (stars, dims, dims)
            Measurement covariance of each observation (zeros for exact data).

        Returns
        -------
        Array, shape (stars,)
            ``log ∫ N(y_i | v, C_i) p(v) dv`` for each object.
        """


class Gaussian(AbstractComponent):
    """A Gaussian population, N(v | μ, V); observed density N(y | μ, V + C_i).

    ``mean`` may be shared, shape (dims,), or given per object, shape (stars, dims):
    the inlier component of a regression is a Gaussian whose mean is the model
    prediction and whose covariance is the intrinsic scatter (zeros = exact model).

    Parameters
    ----------
    mean : Array, shape (dims,) or (stars, dims)
        Population mean, in the units of ``y``.
    cov : Array, shape (dims, dims)
        Intrinsic covariance V (units of ``y`` squared); may be zero when every
        observation has a positive-definite ``y_cov``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> g = Gaussian(jnp.zeros(1), jnp.ones((1, 1)))
    >>> float(g.log_prob(jnp.zeros((1, 1)), jnp.zeros((1, 1, 1)))[0])  # log N(0|0,1)
    -0.918938...
    """

    mean: Float[Array, "*stars dims"]
    cov: Float[Array, "dims dims"]

    def __check_init__(self) -> None:
        if self.mean.ndim not in (1, 2):
            raise ValueError(f"Gaussian.mean must be (dims,) or (stars, dims), got {self.mean.shape}.")
        dims = self.mean.shape[-1]
        if self.cov.shape != (dims, dims):
            raise ValueError(
                f"Gaussian.cov has shape {self.cov.shape}; expected {(dims, dims)} to match"
                f" mean {self.mean.shape}."
            )

    def log_prob(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, " stars"]:
        """Log N(y_i | μ, V + C_i) per object (see :class:`AbstractComponent`)."""
        _check_observations(y, y_cov, self.mean.shape[-1], "Gaussian.log_prob")
        if self.mean.ndim == 2 and self.mean.shape[0] != y.shape[0]:
            raise ValueError(
                f"Gaussian.mean is per object with {self.mean.shape[0]} rows but `y` has {y.shape[0]}."
            )
        residual = y - jnp.broadcast_to(self.mean, y.shape)
        return gaussian_log_prob(residual, y_cov + self.cov[None, :, :])


class GaussianMixture(AbstractComponent):
    """A population that is itself a Gaussian mixture, Σ_j a_j N(v | μ_j, V_j).

    Used for backgrounds with structure (a Galactic field in proper motion needs at
    least two components). Each sub-component is deconvolved like :class:`Gaussian`.

    Parameters
    ----------
    log_weights : Array, shape (components,)
        Log sub-component weights; normalised internally (``-inf`` switches one off).
    means : Array, shape (components, dims)
    covs : Array, shape (components, dims, dims)
        Intrinsic covariances, positive definite.
    """

    log_weights: Float[Array, " components"]
    means: Float[Array, "components dims"]
    covs: Float[Array, "components dims dims"]

    def __check_init__(self) -> None:
        k, d = self.means.shape
        if self.log_weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise ValueError(
                "GaussianMixture needs log_weights (components,), means (components, dims),"
                f" covs (components, dims, dims); got {self.log_weights.shape},"
                f" {self.means.shape}, {self.covs.shape}."
            )

    @property
    def n_components(self) -> int:
        """Number of sub-components."""
        return self.means.shape[0]

    def component_log_probs(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, "stars components"]:
        """Weighted sub-component log-densities, ``log a_j + log N(y_i | μ_j, V_j + C_i)``."""
        _check_observations(y, y_cov, self.means.shape[1], "GaussianMixture.log_prob")
        residual = y[:, None, :] - self.means[None, :, :]
        total = y_cov[:, None, :, :] + self.covs[None, :, :, :]
        log_w = self.log_weights - jss.logsumexp(self.log_weights)
        return gaussian_log_prob(residual, total) + log_w[None, :]

    def log_prob(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, " stars"]:
        """Log-density per object: logsumexp of :meth:`component_log_probs`."""
        return jss.logsumexp(self.component_log_probs(y, y_cov), axis=1)


class Uniform(AbstractComponent):
    """A uniform box population, convolved with (diagonal) Gaussian errors.

    The observed density in each dimension is
    ``[Φ((high - y)/σ) - Φ((low - y)/σ)] / (high - low)``. Only the diagonal of
    ``y_cov`` is used, so the convolution is exact for uncorrelated errors and an
    approximation otherwise.

    Parameters
    ----------
    low, high : Array, shape (dims,)
        Box edges in the units of ``y``, ``low < high``.
    """

    low: Float[Array, " dims"]
    high: Float[Array, " dims"]

    def __check_init__(self) -> None:
        if self.low.ndim != 1 or self.low.shape != self.high.shape:
            raise ValueError(
                f"Uniform.low and .high must both be (dims,), got {self.low.shape} and {self.high.shape}."
            )

    def log_prob(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, " stars"]:
        """Log of the error-convolved box density per object."""
        _check_observations(y, y_cov, self.low.shape[0], "Uniform.log_prob")
        var = jnp.diagonal(y_cov, axis1=1, axis2=2)
        # A tiny floor keeps exact data (σ = 0) finite: Φ(±∞) is then the plain box.
        sigma = jnp.sqrt(jnp.maximum(var, jnp.finfo(y.dtype).tiny))
        upper = jss.log_ndtr((self.high[None, :] - y) / sigma)
        lower = jss.log_ndtr((self.low[None, :] - y) / sigma)
        # log(Φ(a) - Φ(b)) = log Φ(a) + log1p(-exp(log Φ(b) - log Φ(a))), stable in the tails.
        log_mass = upper + jnp.log1p(-jnp.exp(jnp.minimum(lower - upper, -1e-300)))
        return jnp.sum(log_mass - jnp.log(self.high - self.low)[None, :], axis=1)


class FromDistribution(AbstractComponent):
    """Any numpyro distribution as a component, *without* error deconvolution.

    Use it for user-defined backgrounds whose width is much larger than the
    measurement errors (then convolving changes nothing); ``y_cov`` is ignored.

    Parameters
    ----------
    distribution : numpyro.distributions.Distribution
        Its ``log_prob`` must map ``y`` of shape (stars, dims) to (stars,): an event
        shape of ``(dims,)``, e.g. ``dist.Normal(0, 10).expand([1]).to_event(1)``.
    """

    distribution: object

    def __check_init__(self) -> None:
        if not hasattr(self.distribution, "log_prob"):
            raise TypeError(
                "FromDistribution needs a numpyro distribution (with .log_prob), got"
                f" {type(self.distribution).__name__}."
            )

    def log_prob(
        self, y: Float[Array, "stars dims"], y_cov: Float[Array, "stars dims dims"]
    ) -> Float[Array, " stars"]:
        """``distribution.log_prob(y)`` per object; the errors ``y_cov`` are ignored."""
        _check_observations(y, y_cov, None, "FromDistribution.log_prob")
        out = self.distribution.log_prob(y)  # type: ignore[attr-defined]
        if out.shape != y.shape[:1]:
            raise ValueError(
                f"FromDistribution: log_prob returned shape {out.shape}, expected ({y.shape[0]},);"
                " give the distribution an event shape (dims,) with .to_event(1)."
            )
        return out
