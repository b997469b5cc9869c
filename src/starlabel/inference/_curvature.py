"""Second derivatives of objectives over parameter pytrees, in memory-capped chunks.

Both functions flatten the parameters (``jax.flatten_util.ravel_pytree``), build the
matrix one block of basis directions at a time with ``jax.lax.map(batch_size=...)``,
and return a dense ``(n, n)`` matrix in the flattened order. A full ``jax.hessian``
materialises all ``n`` Hessian-vector products at once; chunking trades a little
speed for a peak memory of ``chunk_size`` products, which is what matters when a
model has thousands of parameters or each product touches a large spectrum.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._internal import x64
from ._custom_types import Args, Params, ResidualFn
from ._util import as_float64

__all__ = ["hessian", "fisher_information", "gaussian_fisher_information"]


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size!r}.")


@x64
def hessian(
    fn: Callable[[Params, Args], Float[Array, ""]],
    params: Params,
    args: Args = None,
    *,
    chunk_size: int | None = None,
) -> Float[Array, "n n"]:
    r"""Hessian :math:`\partial^2 f / \partial\theta_i \partial\theta_j` of a scalar function.

    Built from forward-over-reverse Hessian–vector products, ``chunk_size`` directions at
    a time, then symmetrised. Pass the *negative* log posterior to get the precision
    matrix of the Laplace approximation (or use :func:`laplace_approximation`).

    Parameters
    ----------
    fn : callable
        ``fn(params, args) -> scalar``.
    params : pytree
        Where to evaluate; floating leaves. The matrix is ordered like
        ``ravel_pytree(params)[0]``.
    args : pytree, optional
        Passed to ``fn``.
    chunk_size : int, optional
        Hessian–vector products evaluated together (peak memory ∝ ``chunk_size``).
        Default: all ``n`` at once.

    Returns
    -------
    Float[Array, "n n"]
        Symmetric matrix, ``n`` = total number of scalar parameters.

    Raises
    ------
    ValueError
        If ``chunk_size`` is not a positive integer.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda p, a: 0.5 * (3.0 * p["x"] ** 2 + p["y"] ** 2).sum()
    >>> hessian(f, {"x": jnp.array(1.0), "y": jnp.array(2.0)}).tolist()
    [[3.0, 0.0], [0.0, 1.0]]
    """
    _check_chunk(chunk_size)
    params, args = as_float64((params, args))
    return _hessian(fn, params, args, chunk_size)


@eqx.filter_jit
def _hessian(
    fn: Callable[[Params, Args], Float[Array, ""]], params: Params, args: Args, chunk_size: int | None
) -> Float[Array, "n n"]:
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]

    def grad_flat(x: Float[Array, " n"]) -> Float[Array, " n"]:
        return ravel_pytree(jax.grad(fn)(unravel(x), args))[0]

    def hvp(direction: Float[Array, " n"]) -> Float[Array, " n"]:
        return jax.jvp(grad_flat, (flat,), (direction,))[1]

    rows = jax.lax.map(hvp, jnp.eye(n, dtype=flat.dtype), batch_size=chunk_size or n)
    return 0.5 * (rows + rows.T)


@x64
def fisher_information(
    residuals: ResidualFn,
    params: Params,
    args: Args = None,
    *,
    chunk_size: int | None = None,
) -> Float[Array, "n n"]:
    r"""Fisher information :math:`F = J^\top J` of whitened Gaussian residuals.

    For data :math:`d` with independent Gaussian noise of variance :math:`\sigma^2`
    (for a spectrum: :math:`\sigma^2_\lambda + s^2_\lambda`, the reported noise plus the
    model's intrinsic scatter) and residuals :math:`r = (d - m(\theta))/\sigma`,
    :math:`-\log L = \tfrac12 \sum r^2` and :math:`F = J^\top J` with
    :math:`J = \partial r / \partial \theta`. Unlike the Hessian, ``F`` is positive
    semi-definite everywhere and does not depend on the noise realisation, which makes
    it the right metric for natural gradients and whitening away from the optimum.

    Parameters
    ----------
    residuals : callable
        ``residuals(params, args) -> pytree of arrays`` (e.g. shape ``(pixels,)``).
    params : pytree
        Where to evaluate.
    args : pytree, optional
        Passed to ``residuals``.
    chunk_size : int, optional
        Jacobian columns (Jacobian–vector products) evaluated together.

    Returns
    -------
    Float[Array, "n n"]
        Ordered like ``ravel_pytree(params)[0]``.

    Raises
    ------
    ValueError
        If ``chunk_size`` is not a positive integer.
    """
    _check_chunk(chunk_size)
    params, args = as_float64((params, args))
    return _fisher_information(residuals, params, args, chunk_size)


@eqx.filter_jit
def _fisher_information(
    residuals: ResidualFn, params: Params, args: Args, chunk_size: int | None
) -> Float[Array, "n n"]:
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]

    def residual_flat(x: Float[Array, " n"]) -> Float[Array, " m"]:
        return _ravel_residuals(residuals(unravel(x), args))

    def jvp(direction: Float[Array, " n"]) -> Float[Array, " m"]:
        return jax.jvp(residual_flat, (flat,), (direction,))[1]

    columns = jax.lax.map(jvp, jnp.eye(n, dtype=flat.dtype), batch_size=chunk_size or n)
    return columns @ columns.T


def _ravel_residuals(tree: PyTree[Array]) -> Float[Array, " m"]:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


@x64
def gaussian_fisher_information(
    log_likelihood: Callable[[Params, Float[Array, " data"], Args], Float[Array, ""]],
    params: Params,
    data: ArrayLike,
    args: Args = None,
    *,
    chunk_size: int | None = None,
) -> Float[Array, "n n"]:
    r"""Fisher information of a log-likelihood that is Gaussian in ``data``, from the function alone.

    For :math:`\log L = -\tfrac12 \sum_j w_j (d_j - \mu_j(\theta))^2 + c` with weights
    :math:`w` that do not depend on :math:`\theta` (e.g. :math:`1/(\sigma^2 + s^2)`):
    :math:`\partial_d \log L = -w (d - \mu)`, so :math:`w` is how much that gradient drops
    when every datum rises by 1, :math:`\partial_\theta \partial_d \log L = W J`, and
    :math:`F = J^\top W J = (WJ)^\top W^{-1} (WJ)`. No residual function or model
    prediction is needed, so this works for any model that only exposes its
    log-likelihood (Cannon, Lux). Data with :math:`w_j = 0` (masked) drop out. Unlike the
    Hessian, ``F`` is positive semi-definite everywhere, so it is the metric to use far
    from the optimum (natural gradients, whitening a poor starting point).

    Parameters
    ----------
    log_likelihood : callable
        ``log_likelihood(params, data, args) -> scalar``, Gaussian in ``data``.
    params : pytree
        Where to evaluate.
    data : Float[ArrayLike, " data"]
        The observed data vector (e.g. a spectrum's flux). Its values do not change
        ``F`` for a Gaussian likelihood; only its shape and the weights matter.
    args : pytree, optional
        Passed to ``log_likelihood``.
    chunk_size : int, optional
        Jacobian columns evaluated together.

    Returns
    -------
    Float[Array, "n n"]
        Ordered like ``ravel_pytree(params)[0]``.

    Raises
    ------
    ValueError
        If ``data`` is not one-dimensional or ``chunk_size`` is not a positive integer.
    """
    _check_chunk(chunk_size)
    params, args = as_float64((params, args))
    data = as_float64(jnp.asarray(data))
    if data.ndim != 1:
        raise ValueError(f"`data` must be one-dimensional (a data vector), got shape {data.shape}.")
    return _gaussian_fisher(log_likelihood, params, data, args, chunk_size)


@eqx.filter_jit
def _gaussian_fisher(
    log_likelihood: Callable[[Params, Array, Args], Float[Array, ""]],
    params: Params,
    data: Float[Array, " data"],
    args: Args,
    chunk_size: int | None,
) -> Float[Array, "n n"]:
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]

    def grad_data(x: Float[Array, " n"], d: Float[Array, " data"]) -> Float[Array, " data"]:
        return jax.grad(log_likelihood, argnums=1)(unravel(x), d, args)

    weight = grad_data(flat, data) - grad_data(flat, data + 1.0)
    used = weight > 0
    root = jnp.sqrt(jnp.where(used, weight, 1.0))

    def column(direction: Float[Array, " n"]) -> Float[Array, " data"]:
        weighted = jax.jvp(lambda x: grad_data(x, data), (flat,), (direction,))[1]  # (W J) e_i
        return jnp.where(used, weighted / root, 0.0)

    columns = jax.lax.map(column, jnp.eye(n, dtype=flat.dtype), batch_size=chunk_size or n)
    return columns @ columns.T
