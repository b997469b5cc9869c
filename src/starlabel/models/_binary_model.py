"""The two-star flux model :class:`BinaryModel` (see :mod:`starlabel.models._binary`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._doppler import DopplerResampler, SplinePrefilter, rest_columns, rest_spline
from ._nuisance_model import AbstractPackedModel, NuisanceModel
from .base import AbstractFluxModel

__all__ = ["BinaryModel", "DEFAULT_SHARED", "shared_indices"]

DEFAULT_SHARED: tuple[str, ...] = ("fe_h", "m_h", "feh", "mh", "metallicity")
"""Label names treated as shared by both components when ``shared`` is not given."""


class BinaryModel(AbstractPackedModel):
    """Flux of two stars: ``w S_{v1} m(ℓ1) + (1 − w) S_{v1+Δv} m(ℓ2)``.

    Parameters are packed as ``[ℓ1 (labels), ℓ2 (free labels), u, Δv, v1]`` with
    ``w = ½ + ½ σ(u)`` (σ the logistic function), Δv and v1 in km/s. ``m`` is any
    :class:`~starlabel.models.AbstractFluxModel`: a linear one (the Cannon) is shifted
    through its prefiltered θ (``theta_spline``), any other through ``prefilter``, as in
    :class:`~starlabel.models._nuisance.NuisanceModel`.

    Attributes
    ----------
    spectrum : AbstractFluxModel
    resampler : DopplerResampler
    theta_spline : Float[Array, "pixels terms"] or None
        A linear model's prefiltered coefficients for velocity shifts.
    shared : tuple of int
        Indices of labels the components share.
    fit_rv : bool
        Whether the primary's velocity v1 is free (else 0).
    flux_ratio : callable, optional
        ``flux_ratio(ℓ1, ℓ2) -> w`` (pure JAX); replaces the free ``w``.
    prefilter : SplinePrefilter, optional
        The B-spline prefilter of a non-linear model's spectra.
    """

    spectrum: AbstractFluxModel
    resampler: DopplerResampler
    theta_spline: Float[Array, "pixels terms"] | None
    shared: tuple[int, ...] = eqx.field(static=True)
    fit_rv: bool = eqx.field(static=True)
    flux_ratio: Callable[[Array, Array], Array] | None = eqx.field(static=True, default=None)
    prefilter: SplinePrefilter | None = None

    @classmethod
    def like(
        cls,
        single: NuisanceModel,
        shared: tuple[int, ...],
        fit_rv: bool,
        flux_ratio: Callable[[Array, Array], Array] | None = None,
    ) -> BinaryModel:
        """The two-star model on the single-star model's grid, spectrum and prefilter."""
        return cls(
            single.spectrum,
            single.resampler,
            single.theta_spline,
            shared,
            fit_rv,
            flux_ratio,
            single.prefilter,
        )

    @property
    def n_labels(self) -> int:
        """Labels per star."""
        return self.spectrum.n_labels

    @property
    def free_secondary(self) -> np.ndarray:
        """Indices of the secondary's own (not shared) labels."""
        return np.array([k for k in range(self.n_labels) if k not in self.shared], dtype=np.int64)

    @property
    def n_params(self) -> int:
        """Length of the packed parameter vector."""
        return self.n_labels + len(self.free_secondary) + 3

    def unpack(self, params: Float[Array, " params"]) -> tuple[Array, Array, Array, Array, Array]:
        """``(ℓ1, ℓ2, w, Δv, v1)``."""
        k, j = self.n_labels, len(self.free_secondary)
        l1 = params[:k]
        l2 = l1.at[self.free_secondary].set(params[k : k + j]) if j else l1
        u, dv, v1 = params[k + j], params[k + j + 1], params[k + j + 2]
        w = self.flux_ratio(l1, l2) if self.flux_ratio is not None else 0.5 + 0.5 * jax.nn.sigmoid(u)
        return l1, l2, w, dv, v1

    def rest_spline(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """B-spline coefficients of one component's rest-frame spectrum."""
        return rest_spline(self.spectrum, self.theta_spline, self.prefilter, labels)

    def components(self, params: Float[Array, " params"]) -> tuple[Array, Array]:
        """The two weighted component spectra (pixels,) as observed."""
        l1, l2, w, dv, v1 = self.unpack(params)
        m1 = self.resampler(self.rest_spline(l1), v1)
        m2 = self.resampler(self.rest_spline(l2), v1 + dv)
        return w * m1, (1.0 - w) * m2

    def flux(self, params: Float[Array, " params"]) -> Float[Array, " pixels"]:
        """Model flux of one star."""
        a, b = self.components(params)
        return a + b

    def jacobian(self, params: Float[Array, " params"]) -> Float[Array, "pixels params"]:
        """∂flux/∂params (analytic; autodiff when ``flux_ratio`` ties w to the labels)."""
        return self.flux_and_jacobian(params)[1]

    def flux_and_jacobian(self, params: Float[Array, " params"]) -> tuple[Array, Array]:
        """Flux and ∂flux/∂params from one rest-frame evaluation per star (a θ product)."""
        if self.flux_ratio is not None:
            return self.flux(params), jax.jacfwd(self.flux)(params)
        k, own = self.n_labels, self.free_secondary
        l1, l2, w, dv, v1 = self.unpack(params)
        # m(ℓ) and ∂m/∂ℓ of each star (θx and θ∂x/∂ℓ): the dominant cost of an LM step.
        rest1 = rest_columns(self.spectrum, self.theta_spline, self.prefilter, l1)
        rest2 = rest_columns(self.spectrum, self.theta_spline, self.prefilter, l2)
        first, second = self.resampler(rest1, v1), self.resampler(rest2, v1 + dv)
        m1, d1, m2, d2 = first[:, 0], first[:, 1:], second[:, 0], second[:, 1:]
        dm1 = self.resampler.derivative(rest1[:, 0], v1)
        dm2 = self.resampler.derivative(rest2[:, 0], v1 + dv)
        shared = np.isin(np.arange(k), own, invert=True)
        d_l1 = w * d1 + (1.0 - w) * d2 * jnp.asarray(shared, dtype=d2.dtype)[None, :]
        sig = 2.0 * (w - 0.5)
        dw_du = 0.5 * sig * (1.0 - sig)
        columns = [
            d_l1,
            (1.0 - w) * d2[:, own],
            (dw_du * (m1 - m2))[:, None],
            ((1.0 - w) * dm2)[:, None],
            (w * dm1 + (1.0 - w) * dm2)[:, None],
        ]
        return w * m1 + (1.0 - w) * m2, jnp.concatenate(columns, axis=1)

    def free(self) -> np.ndarray:
        """Bool (params,): which parameters are fitted."""
        free = np.ones(self.n_params, dtype=bool)
        free[-3] = self.flux_ratio is None
        free[-1] = self.fit_rv
        return free


def shared_indices(label_names: tuple[str, ...], shared: Sequence[str] | None) -> tuple[int, ...]:
    if shared is None:
        return tuple(i for i, n in enumerate(label_names) if n.lower() in DEFAULT_SHARED)
    unknown = [n for n in shared if n not in label_names]
    if unknown:
        raise ValueError(
            f"`shared` names unknown labels {unknown}; the model's labels are {list(label_names)}."
        )
    return tuple(label_names.index(n) for n in shared)
