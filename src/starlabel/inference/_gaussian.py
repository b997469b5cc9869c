"""Gaussian (Laplace / Fisher) approximations to a posterior around its mode."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float

from .._internal import x64
from ._curvature import fisher_information, hessian
from ._custom_types import Args, LogDensityFn, Params, ResidualFn
from ._solution import RESULTS
from ._util import as_float64

__all__ = [
    "GaussianApproximation",
    "NotPositiveDefiniteWarning",
    "gaussian_from_precision",
    "laplace_approximation",
    "fisher_approximation",
]

DEFAULT_RTOL = 1e-10
"""Eigenvalues of the precision below ``rtol × largest`` count as not positive."""


class NotPositiveDefiniteWarning(RuntimeWarning):
    """A precision matrix was not positive definite; its covariance is NaN."""


class GaussianApproximation(eqx.Module):
    r"""A multivariate normal :math:`N(\mu, P^{-1})` over a parameter pytree.

    Holds the eigen-decomposition of the precision :math:`P = V \Lambda V^\top`, computed
    once and reused for the covariance, the standard errors, natural-gradient steps and
    the whitening transform (:func:`whiten`). Build one with
    :func:`gaussian_from_precision`, :func:`laplace_approximation` or
    :func:`fisher_approximation`.

    Attributes
    ----------
    mean : pytree
        The centre (usually the MAP), in the parameters' own structure.
    precision : Float[Array, "n n"]
        Inverse covariance, in the flattened order of ``mean``.
    covariance : Float[Array, "n n"]
        :math:`P^{-1}`; all NaN when ``result`` is ``not_positive_definite``.
    eigenvalues : Float[Array, " n"]
        Eigenvalues of ``precision``, ascending.
    eigenvectors : Float[Array, "n n"]
        Columns are the matching eigenvectors.
    result : RESULTS
        ``successful`` or ``not_positive_definite``.
    """

    mean: Params
    precision: Float[Array, "n n"]
    covariance: Float[Array, "n n"]
    eigenvalues: Float[Array, " n"]
    eigenvectors: Float[Array, "n n"]
    result: RESULTS

    @property
    @x64
    def std(self) -> Params:
        r"""Standard errors :math:`\sqrt{\mathrm{diag}\,P^{-1}}` in the structure of ``mean``."""
        unravel = ravel_pytree(self.mean)[1]
        return unravel(jnp.sqrt(jnp.diagonal(self.covariance)))

    @property
    @x64
    def correlation(self) -> Float[Array, "n n"]:
        """Correlation matrix, flattened order."""
        sd = jnp.sqrt(jnp.diagonal(self.covariance))
        return self.covariance / (sd[:, None] * sd[None, :])


@x64
def gaussian_from_precision(
    mean: Params, precision: Float[ArrayLike, "n n"], *, rtol: float = DEFAULT_RTOL
) -> GaussianApproximation:
    """Build a :class:`GaussianApproximation` from a centre and a precision matrix.

    Parameters
    ----------
    mean : pytree
        The centre; its flattened size ``n`` must match ``precision``.
    precision : Float[Array, "n n"]
        Symmetric inverse covariance (e.g. Hessian of the negative log posterior).
    rtol : float
        The matrix counts as positive definite when its smallest eigenvalue exceeds
        ``rtol`` times its largest absolute eigenvalue.

    Returns
    -------
    GaussianApproximation

    Raises
    ------
    ValueError
        If ``precision`` is not square with the flattened size of ``mean``.
    """
    mean = as_float64(mean)
    flat = ravel_pytree(mean)[0]
    precision = jnp.asarray(precision, dtype=flat.dtype)
    n = flat.shape[0]
    if precision.shape != (n, n):
        raise ValueError(
            f"`precision` has shape {precision.shape} but `mean` has {n} scalar parameters;"
            f" expected ({n}, {n})."
        )
    return _from_precision(mean, precision, float(rtol))


@eqx.filter_jit
def _from_precision(mean: Params, precision: Float[Array, "n n"], rtol: float) -> GaussianApproximation:
    precision = 0.5 * (precision + precision.T)
    eigenvalues, eigenvectors = jnp.linalg.eigh(precision)
    largest = jnp.max(jnp.abs(eigenvalues))
    positive = jnp.all(jnp.isfinite(eigenvalues)) & (eigenvalues[0] > rtol * largest)
    safe = jnp.where(positive, eigenvalues, 1.0)
    covariance = (eigenvectors / safe[None, :]) @ eigenvectors.T
    covariance = jnp.where(positive, 0.5 * (covariance + covariance.T), jnp.nan)
    result = RESULTS.where(positive, RESULTS.successful, RESULTS.not_positive_definite)
    return GaussianApproximation(mean, precision, covariance, eigenvalues, eigenvectors, result)


def _warn_if_not_pd(approx: GaussianApproximation, what: str) -> None:
    ok = approx.result == RESULTS.successful
    if isinstance(ok, Tracer):
        return  # inside jit/vmap: the result code is the record
    bad = ~np.asarray(ok)
    if np.any(bad):
        warnings.warn(
            f"the {what} matrix is not positive definite ({int(np.sum(bad))} of {bad.size});"
            " the parameters may not be at a minimum or some are unconstrained by the data."
            " Covariances are NaN there; check `.result`.",
            NotPositiveDefiniteWarning,
            stacklevel=3,
        )


class _NegatedLogDensity(eqx.Module):
    log_density: LogDensityFn

    def __call__(self, params: Params, args: Args) -> Float[Array, ""]:
        return -self.log_density(params, args)


@x64
def laplace_approximation(
    log_density: LogDensityFn,
    params: Params,
    args: Args = None,
    *,
    chunk_size: int | None = None,
    rtol: float = DEFAULT_RTOL,
) -> GaussianApproximation:
    r"""Laplace approximation: precision = Hessian of :math:`-\log p` at ``params``.

    At the MAP this is the curvature of the actual posterior, including everything the
    log density includes (noise, intrinsic scatter, priors). Away from a minimum it
    can be indefinite: then ``result`` is ``not_positive_definite``, the covariance is
    NaN, and (outside ``jit``) a :class:`NotPositiveDefiniteWarning` is emitted.

    Parameters
    ----------
    log_density : callable
        ``log_density(params, args) -> scalar``.
    params : pytree
        The MAP (or any point) at which to expand.
    args : pytree, optional
        Passed to ``log_density``.
    chunk_size : int, optional
        Hessian–vector products per chunk (see :func:`hessian`).
    rtol : float
        Positive-definiteness tolerance (see :func:`gaussian_from_precision`).

    Returns
    -------
    GaussianApproximation

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> log_p = lambda p, a: -0.5 * jnp.sum((p / a) ** 2)
    >>> approx = laplace_approximation(log_p, jnp.zeros(2), jnp.array([2.0, 0.5]))
    >>> approx.std.tolist()
    [2.0, 0.5]
    """
    precision = hessian(_NegatedLogDensity(log_density), params, args, chunk_size=chunk_size)
    approx = gaussian_from_precision(params, precision, rtol=rtol)
    _warn_if_not_pd(approx, "Hessian")
    return approx


@x64
def fisher_approximation(
    residuals: ResidualFn,
    params: Params,
    args: Args = None,
    *,
    prior_precision: Float[ArrayLike, "n n"] | None = None,
    chunk_size: int | None = None,
    rtol: float = DEFAULT_RTOL,
) -> GaussianApproximation:
    r"""Gaussian approximation with the Fisher information as precision.

    Precision :math:`F = J^\top J (+ P_\mathrm{prior})` for whitened residuals (see
    :func:`fisher_information`): the Cramér–Rao covariance for the noise model the
    residuals encode.

    Parameters
    ----------
    residuals : callable
        ``residuals(params, args) -> pytree``; ``(data - model) / σ_total``.
    params : pytree
        Centre of the approximation (the MAP).
    args : pytree, optional
        Passed to ``residuals``.
    prior_precision : Float[Array, "n n"], optional
        Added to :math:`J^\top J` (a Gaussian prior's inverse covariance).
    chunk_size : int, optional
        Jacobian columns per chunk.
    rtol : float
        Positive-definiteness tolerance.

    Returns
    -------
    GaussianApproximation
    """
    precision = fisher_information(residuals, params, args, chunk_size=chunk_size)
    if prior_precision is not None:
        precision = precision + jnp.asarray(prior_precision, dtype=precision.dtype)
    approx = gaussian_from_precision(params, precision, rtol=rtol)
    _warn_if_not_pd(approx, "Fisher")
    return approx
