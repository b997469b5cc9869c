"""Shift-and-scale preprocessing with exact propagation of uncertainties."""

from __future__ import annotations

from typing import Any, overload

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["ShiftScale"]


def _expand(vector: Array, ndim: int) -> Array:
    """Give a per-column vector explicit leading axes (we run with rank promotion off)."""
    return vector.reshape((1,) * (ndim - vector.ndim) + vector.shape)


class ShiftScale(eqx.Module):
    """Affine map ``x' = (x - shift) / scale`` applied per column.

    Used for labels (columns = labels) and for flux (columns = pixels). Because the map
    is affine, uncertainties propagate exactly: ``err' = err / |scale|`` and
    ``cov'_ij = cov_ij / (scale_i scale_j)``; the inverse multiplies back.

    Attributes
    ----------
    shift : Float[Array, "columns"]
        Subtracted first (e.g. the training-set median), in the data's units.
    scale : Float[Array, "columns"]
        Divisor (e.g. the training-set spread), in the data's units; strictly positive.

    Examples
    --------
    >>> import numpy as np
    >>> scaler = ShiftScale.fit(np.array([[4000.0, 1.0], [5000.0, 3.0]]))
    >>> x, err = scaler.transform(np.array([[4500.0, 2.0]]), np.array([[100.0, 0.1]]))
    >>> np.allclose(scaler.inverse_transform(x, err)[1], [[100.0, 0.1]])
    True
    """

    shift: Float[Array, " columns"]
    scale: Float[Array, " columns"]

    def __check_init__(self) -> None:
        if self.shift.shape != self.scale.shape or self.shift.ndim != 1:
            raise ValueError(
                f"`shift` {self.shift.shape} and `scale` {self.scale.shape} must be 1-D and equal."
            )

    @classmethod
    def fit(
        cls,
        x: ArrayLike,
        *,
        weights: ArrayLike | None = None,
        robust: bool = True,
    ) -> ShiftScale:
        """Fit shift and scale per column of ``x`` (rows = samples), ignoring NaN.

        Parameters
        ----------
        x : array-like, shape (samples, columns)
            Training values; NaN entries are ignored (missing labels).
        weights : array-like, shape (samples, columns), optional
            Entries with weight 0 are ignored too (e.g. flux ``ivar``).
        robust : bool
            ``True`` (default): median and 1.4826·MAD, which outliers cannot move;
            ``False``: mean and standard deviation.

        Returns
        -------
        ShiftScale
            Columns without usable entries, or with zero spread (at the rounding level
            of their values), get shift 0 / scale 1 or scale 1 so the transform never
            divides by zero.
        """
        values = np.array(x, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"`x` must be 2-D (samples, columns), got shape {values.shape}.")
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != values.shape:
                raise ValueError(f"`weights` shape {w.shape} must match `x` shape {values.shape}.")
            values = np.where(w > 0, values, np.nan)
        usable = np.any(np.isfinite(values), axis=0)
        safe = np.where(usable[None, :], values, 0.0)
        if robust:
            shift = np.nanmedian(safe, axis=0)
            scale = 1.4826 * np.nanmedian(np.abs(safe - shift), axis=0)
            # Fall back to the standard deviation for columns with a degenerate MAD
            # (e.g. more than half the values identical).
            scale = np.where(scale > 0, scale, np.nanstd(safe, axis=0))
        else:
            shift = np.nanmean(safe, axis=0)
            scale = np.nanstd(safe, axis=0)
        shift = np.where(np.isfinite(shift), shift, 0.0)
        # A spread at the rounding level of the values is no spread (a constant column
        # whose mean does not round-trip), and 1/scale² must stay finite for covariances.
        floor = np.maximum(64.0 * np.finfo(np.float64).eps * np.abs(shift), 1e-150)
        scale = np.where(np.isfinite(scale) & (scale > floor), scale, 1.0)
        return cls(jax.device_put(shift), jax.device_put(scale))  # no per-shape conversion program

    @overload
    def transform(self, x: ArrayLike) -> Array: ...
    @overload
    def transform(self, x: ArrayLike, err: ArrayLike) -> tuple[Array, Array]: ...

    def transform(self, x: ArrayLike, err: ArrayLike | None = None) -> Any:
        """Scale ``x`` (…, columns); with ``err`` also return scaled 1-σ errors."""
        x = jnp.asarray(x)
        scaled = (x - _expand(self.shift, x.ndim)) / _expand(self.scale, x.ndim)
        if err is None:
            return scaled
        err = jnp.asarray(err)
        return scaled, err / _expand(self.scale, err.ndim)

    @overload
    def inverse_transform(self, x: ArrayLike) -> Array: ...
    @overload
    def inverse_transform(self, x: ArrayLike, err: ArrayLike) -> tuple[Array, Array]: ...

    def inverse_transform(self, x: ArrayLike, err: ArrayLike | None = None) -> Any:
        """Undo :meth:`transform`; with ``err`` also return unscaled 1-σ errors."""
        x = jnp.asarray(x)
        unscaled = x * _expand(self.scale, x.ndim) + _expand(self.shift, x.ndim)
        if err is None:
            return unscaled
        err = jnp.asarray(err)
        return unscaled, err * _expand(self.scale, err.ndim)

    def transform_cov(self, cov: ArrayLike) -> Array:
        """Scale covariances (…, columns, columns) into the transformed space."""
        cov = jnp.asarray(cov)
        return cov / _expand(jnp.outer(self.scale, self.scale), cov.ndim)

    def inverse_transform_cov(self, cov: ArrayLike) -> Array:
        """Bring covariances (…, columns, columns) back to the data's units."""
        cov = jnp.asarray(cov)
        return cov * _expand(jnp.outer(self.scale, self.scale), cov.ndim)

    def transform_ivar(self, ivar: ArrayLike) -> Array:
        """Scale inverse variances (…, columns); zeros (no information) stay zero."""
        ivar = jnp.asarray(ivar)
        return ivar * _expand(self.scale**2, ivar.ndim)
