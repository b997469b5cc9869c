"""The packed-parameter models of the velocity/continuum fits: :class:`NuisanceModel`.

``[labels, v, continuum coefficients]`` of one star → observed flux (see
:mod:`starlabel.models._nuisance` for the model and the fit), and
:func:`build_nuisance_model`, which puts a fitted model on a data wavelength grid.
"""

# No ``from __future__ import annotations`` here: equinox sees ``eqx.AbstractVar`` only in an
# evaluated annotation (as a string it becomes a plain dataclass field, never checked).
import abc
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._doppler import DopplerResampler, SplinePrefilter, find_regions, rest_columns, rest_spline
from .base import AbstractFittedModel, AbstractFluxModel, AbstractLinearFluxModel, flux_model_of

__all__ = ["AbstractPackedModel", "NuisanceModel", "build_nuisance_model", "compiled_view"]


def _continuum_basis(wavelength: np.ndarray, regions: np.ndarray, order: int) -> np.ndarray:
    """Chebyshev basis (pixels, regions × (order + 1)), zero outside each region."""
    unique = np.unique(regions)
    basis = np.zeros((len(wavelength), len(unique) * (order + 1)))
    for j, r in enumerate(unique):
        idx = np.flatnonzero(regions == r)
        lo, hi = wavelength[idx[0]], wavelength[idx[-1]]
        t = 2.0 * (wavelength[idx] - lo) / max(hi - lo, 1e-12) - 1.0
        basis[idx, j * (order + 1) : (j + 1) * (order + 1)] = np.polynomial.chebyshev.chebvander(t, order)
    return basis


class AbstractPackedModel(eqx.Module):
    """A model flux of packed parameters (labels and nuisances) with its Jacobian.

    What the batched Levenberg–Marquardt fits; labels alone are an
    :class:`~starlabel.models.AbstractFluxModel` (``spectrum``).
    """

    spectrum: eqx.AbstractVar[AbstractFluxModel]

    @abc.abstractmethod
    def flux(self, params: Float[Array, " params"]) -> Float[Array, " pixels"]:
        """Model flux of one star."""

    @abc.abstractmethod
    def jacobian(self, params: Float[Array, " params"]) -> Float[Array, "pixels params"]:
        """∂flux/∂params."""

    def flux_and_jacobian(self, params: Float[Array, " params"]) -> tuple[Array, Array]:
        """Both at once (override to share work; one LM step needs both)."""
        return self.flux(params), self.jacobian(params)


class NuisanceModel(AbstractPackedModel):
    """Flux model ``c(λ; a) · S_v[m(ℓ)]`` with parameters packed as ``[ℓ, v, a]``.

    ``m`` is any :class:`~starlabel.models.AbstractFluxModel`. A linear one (the Cannon)
    is shifted through its prefiltered coefficients ``theta_spline`` (one prefilter for
    every label vector); any other is prefiltered at each evaluation by ``prefilter``.

    Attributes
    ----------
    spectrum : AbstractFluxModel
        The rest-frame label model.
    resampler : DopplerResampler
        Velocity shifts on the model grid.
    theta_spline : Float[Array, "pixels terms"] or None
        B-spline coefficients of a linear model's θ (see :meth:`DopplerResampler.prefilter`).
    prefilter : SplinePrefilter or None
        The prefilter of a non-linear model's spectra.
    basis : Float[Array, "pixels coefficients"]
        Continuum basis (regions × (order + 1) columns; empty without continuum).
    fit_rv : bool
        Whether ``v`` is free (else held at 0).
    order : int
        Continuum polynomial order per region (−1: no continuum).
    """

    spectrum: AbstractFluxModel
    resampler: DopplerResampler
    theta_spline: Float[Array, "pixels terms"] | None
    prefilter: SplinePrefilter | None
    basis: Float[Array, "pixels coefficients"]
    fit_rv: bool = eqx.field(static=True)
    order: int = eqx.field(static=True)

    @property
    def n_labels(self) -> int:
        """Number of labels."""
        return self.spectrum.n_labels

    @property
    def n_continuum(self) -> int:
        """Number of continuum coefficients."""
        return int(self.basis.shape[1])

    @property
    def n_params(self) -> int:
        """Labels + velocity + continuum coefficients."""
        return self.n_labels + 1 + self.n_continuum

    def unpack(self, params: Float[Array, " params"]) -> tuple[Array, Array, Array]:
        """``(labels, v, continuum coefficients)`` from the packed vector."""
        k = self.n_labels
        return params[:k], params[k], params[k + 1 :]

    def continuum(self, coefficients: Float[Array, " coefficients"]) -> Float[Array, " pixels"]:
        """Multiplicative continuum (1 everywhere without continuum terms)."""
        if self.n_continuum == 0:
            return jnp.ones(self.basis.shape[0], dtype=self.basis.dtype)
        return self.basis @ coefficients

    def coefficients(
        self, v: Float[Array, ""], coefficients: Float[Array, " coefficients"]
    ) -> Float[Array, "pixels terms"]:
        """Per-pixel model coefficients ``c ⊙ S_v θ`` (linear in the label vector; linear models only)."""
        if self.theta_spline is None:
            raise TypeError("per-pixel coefficients exist for a linear flux model (the Cannon) only.")
        return self.continuum(coefficients)[:, None] * self.resampler(self.theta_spline, v)

    def rest_spline(self, labels: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        """B-spline coefficients of the rest-frame model spectrum at ``labels``."""
        return rest_spline(self.spectrum, self.theta_spline, self.prefilter, labels)

    def rest_columns(self, labels: Float[Array, " labels"]) -> Float[Array, "pixels k"]:
        """:meth:`rest_spline` and its label derivatives, (pixels, 1 + labels)."""
        return rest_columns(self.spectrum, self.theta_spline, self.prefilter, labels)

    def flux(self, params: Float[Array, " params"]) -> Float[Array, " pixels"]:
        """Model flux of one star."""
        labels, v, coefficients = self.unpack(params)
        return self.continuum(coefficients) * self.resampler(self.rest_spline(labels), v)

    def jacobian(self, params: Float[Array, " params"]) -> Float[Array, "pixels params"]:
        """∂flux/∂params, analytic (jacfwd through the taps' gathers costs ~15× more)."""
        return self.flux_and_jacobian(params)[1]

    def flux_and_jacobian(self, params: Float[Array, " params"]) -> tuple[Array, Array]:
        """Flux and ∂flux/∂params from one rest-frame evaluation of ``[m(ℓ), ∂m/∂ℓ]``.

        For a linear model that is one product of θ with ``[x(ℓ), ∂x/∂ℓ]``.
        """
        labels, v, coefficients = self.unpack(params)
        rest = self.rest_columns(labels)  # (pixels, 1 + labels)
        continuum = self.continuum(coefficients)
        moved = self.resampler(rest, v)
        shifted = moved[:, 0]
        columns = [
            moved[:, 1:] * continuum[:, None],
            (continuum * self.resampler.derivative(rest[:, 0], v))[:, None],
            self.basis * shifted[:, None],
        ]
        return continuum * shifted, jnp.concatenate(columns, axis=1)

    def weights(self, ivar: Float[Array, " pixels"]) -> Float[Array, " pixels"]:
        """Inverse variances with s², zero outside usable pixels."""
        return jnp.where(self.resampler.usable, self.spectrum.weights(ivar), 0.0)

    def free(self) -> np.ndarray:
        """Bool (params,): which parameters are fitted."""
        free = np.ones(self.n_params, dtype=bool)
        free[self.n_labels] = self.fit_rv
        return free


_Model = TypeVar("_Model", bound=AbstractPackedModel)


def compiled_view(model: _Model) -> _Model:
    """``model`` (with a ``spectrum``) keeping one training label row, for compiled fits.

    The batched fits never read the training labels (their templates and bounds are
    taken before), but as an array of the model pytree their shape keys the compiled
    programs: a model refitted on another number of stars (each fold of a binary
    calibration, then the final model) compiled every fit again.
    """
    return eqx.tree_at(lambda m: m.spectrum.train_labels, model, model.spectrum.train_labels[:1])


def build_nuisance_model(
    fitted: AbstractFittedModel | AbstractFluxModel,
    wavelength: Any,
    *,
    fit_rv: bool = True,
    continuum_order: int | None = None,
    v_max: float = 150.0,
    regions: Any = None,
) -> NuisanceModel:
    """The :class:`NuisanceModel` of a fitted model on a wavelength grid.

    Parameters
    ----------
    fitted : AbstractFittedFluxModel or AbstractFluxModel
        FittedCannon, FittedPayne, or a flux model itself.
    wavelength : array-like, shape (pixels,)
        The data's (= model's) wavelengths, Å, uniform in ln λ within each region.
    fit_rv : bool
        Fit a velocity.
    continuum_order : int, optional
        Polynomial order of the multiplicative continuum per region (None: no continuum).
    v_max : float
        Largest |v| (km/s) searched and allowed.
    regions : array-like of int, shape (pixels,), optional
        Region (chip) of each pixel; default split at wavelength gaps.

    Raises
    ------
    ValueError
        On a bad order or a wavelength grid that is not log-uniform.
    """
    if continuum_order is not None and not (isinstance(continuum_order, int) and 0 <= continuum_order <= 10):
        raise ValueError(f"`continuum_order` must be an integer in [0, 10] or None, got {continuum_order!r}.")
    if wavelength is None:
        raise ValueError(
            "radial-velocity and continuum fits need `data.wavelength` (Å); the dataset has none."
        )
    spectrum = flux_model_of(fitted)
    wl = np.asarray(wavelength, dtype=np.float64)
    if wl.shape != (spectrum.n_pixels,):
        raise ValueError(f"`wavelength` has shape {wl.shape}; the model has {spectrum.n_pixels} pixels.")
    region = find_regions(wl) if regions is None else np.asarray(regions, dtype=np.int64)
    resampler = DopplerResampler.from_wavelength(wl, v_max=v_max if fit_rv else 1e-6, regions=region)
    order = -1 if continuum_order is None else int(continuum_order)
    basis = _continuum_basis(wl, region, order) if order >= 0 else np.zeros((len(wl), 0))
    linear = isinstance(spectrum, AbstractLinearFluxModel)
    with jax.enable_x64(True):
        theta_spline = jnp.asarray(resampler.prefilter(np.asarray(spectrum.theta))) if linear else None
        prefilter = None if linear else SplinePrefilter(resampler)
        return NuisanceModel(
            spectrum, resampler, theta_spline, prefilter, jnp.asarray(basis), bool(fit_rv), order
        )
