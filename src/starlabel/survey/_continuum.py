"""Pseudo-continuum normalisation: fit a smooth function to continuum pixels, divide.

The rule that matters most: the normalisation must be a *linear* operation on the flux
and must not depend on S/N or on the labels, or a high-S/N training set and a lower-S/N
test set end up normalised differently and every label inferred from the test set is
biased. Both fitted methods here are weighted linear least squares on a fixed set of
pixels (the continuum pixels, chosen once for the whole survey), fitted region by
region (APOGEE: chip by chip):

    c(λ) = Σ_j a_j φ_j(λ),   a = (Φᵀ W Φ)⁻¹ Φᵀ W f,   W = diag(ivar · [pixel is continuum])

so ``c`` is linear in ``f`` and its expectation under noise is the noise-free continuum
at every S/N. Scaling all ivar by a constant (a different S/N) does not change the fit.

* :class:`SinesAndCosines` – φ = 1, sin(2πkλ/L), cos(2πkλ/L) for k = 1…order
  (The Cannon's choice, Ness et al. 2015; Casey et al. 2016).
* :class:`Polynomial` – Legendre polynomials in λ scaled to [−1, 1] per region, with
  iterative symmetric outlier rejection (a quadratic per chip by default). The fit
  is linear once the rejected pixels are fixed; rejection is relative to each star's
  robust scatter and symmetric, so it does not move the level with S/N.
* :class:`RunningQuantile` – an upper quantile of the flux in a sliding window. For
  exploration only: it is **not** S/N-invariant. Noise widens the flux distribution in
  every window, so the 90th percentile rises with the noise (by ≈1.3σ at S/N σ⁻¹) and
  low-S/N spectra come out normalised too low.

Errors are propagated: ``ivar_norm = 1 / (σ²/c² + f²·σ_c²/c⁴)``, with σ_c² the
continuum variance from the least-squares covariance (set ``propagate_error=False`` to
keep only the first term). The running quantile has no variance (σ_c = 0).

References
----------
Ness, M., Hogg, D. W., Rix, H.-W., Ho, A. Y. Q., & Zasowski, G. 2015, ApJ, 808, 16.
Casey, A. R., Hogg, D. W., Ness, M., et al. 2016, arXiv:1603.03040.
"""

# No ``from __future__ import annotations`` here: equinox sees ``eqx.AbstractClassVar`` only in an
# evaluated annotation (as a string it becomes a plain dataclass field, never checked).
import abc
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import equinox as eqx
import numpy as np
from jaxtyping import Bool, Float

from ..data import SpectralDataset

__all__ = [
    "AbstractContinuum",
    "ContinuumFit",
    "Polynomial",
    "RunningQuantile",
    "SinesAndCosines",
    "CONTINUUM_METHODS",
    "continuum_normalise",
    "fit_continuum",
    "resolve_continuum",
]

_CHUNK = 512  # stars per block: bounds the (stars, pixels, terms) temporaries


class RegionFit(NamedTuple):
    """A continuum fitted over one region, for a block of stars."""

    continuum: np.ndarray  # (stars, pixels), NaN where undetermined
    variance: np.ndarray  # (stars, pixels)
    used: np.ndarray  # (stars, pixels) bool: pixels that entered the final fit
    ok: np.ndarray  # (stars,) bool


def _weighted_lstsq(design: np.ndarray, flux: np.ndarray, weight: np.ndarray) -> RegionFit:
    """Batched weighted least squares of ``flux ≈ coef · designᵀ`` for every star."""
    # Sines and cosines of period ≥ 467 Å over a 600 Å chip are nearly collinear; an
    # orthonormal basis of the same column space gives the same fit with a normal matrix
    # close to diagonal, so float64 keeps ~15 digits instead of ~6.
    design, _ = np.linalg.qr(design)
    n_terms = design.shape[1]
    outer = (design[:, :, None] * design[:, None, :]).reshape(design.shape[0], n_terms * n_terms)
    normal = (weight @ outer).reshape(-1, n_terms, n_terms)
    rhs = (weight * flux) @ design
    n_used = np.count_nonzero(weight > 0, axis=1)
    # Scale to unit diagonal before judging conditioning, so the raw flux units (and so
    # the S/N) do not decide whether a fit counts as well posed.
    diag = np.sqrt(np.maximum(np.einsum("stt->st", normal), 1e-300))
    scaled = normal / (diag[:, :, None] * diag[:, None, :])
    ok = (n_used >= 2 * n_terms) & (np.linalg.cond(scaled) < 1e10)
    eye = np.broadcast_to(np.eye(n_terms), normal.shape)
    safe = np.where(ok[:, None, None], normal, eye)
    inverse = np.linalg.inv(safe)
    coef = np.einsum("stu,su->st", inverse, np.where(ok[:, None], rhs, 0.0))
    continuum = coef @ design.T
    variance = np.einsum("pt,stu,pu->sp", design, inverse, design, optimize=True)
    continuum[~ok] = np.nan
    variance[~ok] = np.nan
    return RegionFit(continuum, variance, weight > 0, ok)


class AbstractContinuum(eqx.Module):
    """A continuum model fitted independently in each wavelength region.

    Subclasses implement :meth:`fit_region`. ``linear`` says whether the fitted
    continuum is a linear function of the flux for a fixed pixel set, the property that
    makes a normalisation S/N-invariant.
    """

    if TYPE_CHECKING:
        # Type checkers do not read eqx.AbstractClassVar (an alias of ClassVar) as a
        # ClassVar and would make `linear` a constructor argument of every subclass.
        linear: ClassVar[bool]
    else:
        linear: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def fit_region(
        self,
        wavelength: Float[np.ndarray, " pixels"],
        flux: Float[np.ndarray, "stars pixels"],
        ivar: Float[np.ndarray, "stars pixels"],
        use: Bool[np.ndarray, "stars pixels"],
    ) -> RegionFit:
        """Fit the continuum of one region for a block of stars.

        Parameters
        ----------
        wavelength : ndarray, shape (pixels,)
            Å, the region's pixels only.
        flux, ivar : ndarray, shape (stars, pixels)
        use : bool ndarray, shape (stars, pixels)
            Pixels allowed in the fit (good continuum pixels).
        """


class SinesAndCosines(AbstractContinuum):
    """Continuum = constant + sines and cosines of wavelength, weighted by ivar.

    ``c(λ) = a_0 + Σ_{k=1}^{order} [a_k sin(2πkλ/L) + b_k cos(2πkλ/L)]``.

    Parameters
    ----------
    length_scale : float
        L in Å (default 1400 Å, about two APOGEE chips).
    order : int
        Number of harmonics (default 3: 7 coefficients per region).
    """

    length_scale: float = eqx.field(default=1400.0, static=True)
    order: int = eqx.field(default=3, static=True)
    linear: ClassVar[bool] = True

    def __check_init__(self) -> None:
        if not self.length_scale > 0:
            raise ValueError(f"`length_scale` must be > 0 Å, got {self.length_scale}.")
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 0:
            raise ValueError(f"`order` must be an integer ≥ 0, got {self.order!r}.")

    def design(self, wavelength: Float[np.ndarray, " pixels"]) -> Float[np.ndarray, "pixels terms"]:
        """Basis functions at ``wavelength`` (Å), shape (pixels, 2·order + 1)."""
        phase = 2.0 * np.pi * np.asarray(wavelength, dtype=np.float64)[:, None] / self.length_scale
        k = np.arange(1, self.order + 1)[None, :]
        return np.concatenate([np.ones_like(phase), np.sin(k * phase), np.cos(k * phase)], axis=1)

    def fit_region(
        self,
        wavelength: Float[np.ndarray, " pixels"],
        flux: Float[np.ndarray, "stars pixels"],
        ivar: Float[np.ndarray, "stars pixels"],
        use: Bool[np.ndarray, "stars pixels"],
    ) -> RegionFit:
        """See :meth:`AbstractContinuum.fit_region`."""
        return _weighted_lstsq(self.design(wavelength), flux, np.where(use, ivar, 0.0))


class Polynomial(AbstractContinuum):
    """Continuum = low-order polynomial per region, with iterative outlier rejection.

    Each iteration fits Legendre polynomials in λ scaled to [−1, 1] over the region by
    ivar-weighted least squares, then keeps only pixels within ``clip`` robust standard
    deviations (1.4826 × median absolute residual) of the fit; it stops when the kept set
    no longer changes or after ``max_iterations`` fits. Rejected pixels may come back.

    Parameters
    ----------
    degree : int
        Polynomial degree (default 2: a quadratic per chip).
    clip : float
        Rejection threshold in robust standard deviations (default 3).
    max_iterations : int
        Maximum number of fits (default 5; 1 = no rejection).
    """

    degree: int = eqx.field(default=2, static=True)
    clip: float = eqx.field(default=3.0, static=True)
    max_iterations: int = eqx.field(default=5, static=True)
    linear: ClassVar[bool] = True

    def __check_init__(self) -> None:
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 0:
            raise ValueError(f"`degree` must be an integer ≥ 0, got {self.degree!r}.")
        if not self.clip > 0:
            raise ValueError(f"`clip` must be > 0 (robust standard deviations), got {self.clip}.")
        if self.max_iterations < 1:
            raise ValueError(f"`max_iterations` must be ≥ 1, got {self.max_iterations}.")

    def fit_region(
        self,
        wavelength: Float[np.ndarray, " pixels"],
        flux: Float[np.ndarray, "stars pixels"],
        ivar: Float[np.ndarray, "stars pixels"],
        use: Bool[np.ndarray, "stars pixels"],
    ) -> RegionFit:
        """See :meth:`AbstractContinuum.fit_region`."""
        lo, hi = float(wavelength.min()), float(wavelength.max())
        scaled = 2.0 * (wavelength - lo) / max(hi - lo, 1e-12) - 1.0
        design = np.polynomial.legendre.legvander(scaled, self.degree)
        allowed = use
        fit = _weighted_lstsq(design, flux, np.where(allowed, ivar, 0.0))
        for _ in range(self.max_iterations - 1):
            residual = np.abs(flux - fit.continuum)
            spread = np.where(fit.used, residual, np.nan)
            spread[~fit.ok] = 0.0  # failed fits: nothing to reject, and no all-NaN rows
            scale = 1.4826 * np.nanmedian(spread, axis=1)
            keep = allowed & (residual <= self.clip * scale[:, None])
            if np.array_equal(keep, fit.used):
                break
            fit = _weighted_lstsq(design, flux, np.where(keep, ivar, 0.0))
        return fit


class RunningQuantile(AbstractContinuum):
    """Continuum = a quantile of the flux in a sliding window (exploration only).

    **Not S/N-invariant and not linear**: noise broadens the flux distribution in each
    window, so an upper quantile rises with the noise level. Never use it to normalise
    a training set and a test set of different S/N.

    Parameters
    ----------
    window : int
        Window width in pixels (odd; default 151, ≈ 35 Å on the APOGEE grid).
    quantile : float
        Quantile in (0, 1) (default 0.9).
    min_fraction : float
        Windows with fewer usable pixels than this fraction of ``window`` give no value.
    """

    window: int = eqx.field(default=151, static=True)
    quantile: float = eqx.field(default=0.9, static=True)
    min_fraction: float = eqx.field(default=0.2, static=True)
    linear: ClassVar[bool] = False

    def __check_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"`window` must be an odd number of pixels ≥ 3, got {self.window}.")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"`quantile` must be in (0, 1), got {self.quantile}.")

    def fit_region(
        self,
        wavelength: Float[np.ndarray, " pixels"],
        flux: Float[np.ndarray, "stars pixels"],
        ivar: Float[np.ndarray, "stars pixels"],
        use: Bool[np.ndarray, "stars pixels"],
    ) -> RegionFit:
        """See :meth:`AbstractContinuum.fit_region`."""
        n_stars, n_pixels = flux.shape
        half = self.window // 2
        stride = max(1, self.window // 4)
        centres = np.unique(np.append(np.arange(0, n_pixels, stride), n_pixels - 1))
        padded = np.pad(np.where(use, flux, np.nan), ((0, 0), (half, half)), constant_values=np.nan)
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.window, axis=1)[:, centres]
        ordered = np.sort(windows, axis=2)  # NaN sorts last
        n_valid = np.count_nonzero(np.isfinite(windows), axis=2)
        position = self.quantile * np.maximum(n_valid - 1, 0)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, np.maximum(n_valid - 1, 0))
        take = lambda idx: np.take_along_axis(ordered, idx[..., None], axis=2)[..., 0]  # noqa: E731
        values = take(low) + (position - low) * (take(high) - take(low))
        values[n_valid < max(2, int(self.min_fraction * self.window))] = np.nan
        # Linear interpolation between window centres, the same for every star.
        pixel = np.arange(n_pixels)
        j = np.clip(np.searchsorted(centres, pixel, side="right") - 1, 0, max(len(centres) - 2, 0))
        if len(centres) == 1:
            continuum = np.repeat(values, n_pixels, axis=1)
        else:
            t = (pixel - centres[j]) / (centres[j + 1] - centres[j])
            continuum = values[:, j] * (1.0 - t) + values[:, j + 1] * t
        ok = np.any(np.isfinite(continuum), axis=1)
        return RegionFit(continuum, np.zeros_like(continuum), use, ok)


def describe_continuum(method: AbstractContinuum) -> str:
    """``Name(field=value, …)`` with every setting, defaults included (for reports)."""
    settings = ", ".join(f"{f.name}={getattr(method, f.name)!r}" for f in dataclasses.fields(method))
    return f"{type(method).__name__}({settings})"


CONTINUUM_METHODS: dict[str, type[AbstractContinuum]] = {
    "sincos": SinesAndCosines,
    "poly": Polynomial,
    "quantile": RunningQuantile,
}
"""Short names accepted wherever a continuum method is expected (the CLI's choices)."""


def resolve_continuum(method: str | AbstractContinuum) -> AbstractContinuum:
    """The continuum method named ``method`` with default settings, or ``method`` itself.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid choices.
    """
    if isinstance(method, AbstractContinuum):
        return method
    if isinstance(method, str) and method.lower() in CONTINUUM_METHODS:
        return CONTINUUM_METHODS[method.lower()]()
    raise ValueError(
        f"unknown continuum method {method!r}; choose one of {sorted(CONTINUUM_METHODS)}"
        " or pass an instance such as SinesAndCosines(length_scale=1400.0, order=3)."
    )


@dataclass(frozen=True)
class ContinuumFit:
    """The fitted continua of a set of spectra.

    Attributes
    ----------
    continuum : ndarray, shape (stars, pixels)
        Continuum in the units of the input flux; NaN outside every region and where a
        region's fit failed.
    variance : ndarray, shape (stars, pixels)
        Variance of the continuum from the least-squares covariance (0 for methods
        without one).
    used : bool ndarray, shape (stars, pixels)
        Pixels that entered the final fit.
    ok : bool ndarray, shape (stars, regions)
        Whether each region's fit succeeded (enough well-spread usable pixels).
    regions : tuple of (float, float)
        Region bounds in Å.
    method : AbstractContinuum
    """

    continuum: np.ndarray
    variance: np.ndarray
    used: np.ndarray
    ok: np.ndarray
    regions: tuple[tuple[float, float], ...]
    method: AbstractContinuum

    @property
    def n_failed(self) -> int:
        """Number of (star, region) fits that failed."""
        return int(np.count_nonzero(~self.ok))


def _region_index(wavelength: np.ndarray, regions: Sequence[tuple[float, float]]) -> np.ndarray:
    index = np.full(wavelength.shape, -1, dtype=np.int64)
    for r, (lo, hi) in enumerate(regions):
        inside = (wavelength >= lo) & (wavelength < hi)
        if np.any(inside & (index >= 0)):
            raise ValueError(f"`regions` overlap: region {r} ({lo}, {hi}) Å overlaps an earlier one.")
        index[inside] = r
    return index


def fit_continuum(
    wavelength: Float[np.ndarray, " pixels"],
    flux: Float[np.ndarray, "stars pixels"],
    ivar: Float[np.ndarray, "stars pixels"],
    *,
    method: str | AbstractContinuum = "sincos",
    continuum_pixels: np.ndarray | None = None,
    regions: Sequence[tuple[float, float]] | None = None,
) -> ContinuumFit:
    """Fit a continuum to every spectrum, region by region, on the continuum pixels.

    Parameters
    ----------
    wavelength : ndarray, shape (pixels,)
        Å.
    flux : ndarray, shape (stars, pixels)
        Any flux units.
    ivar : ndarray, shape (stars, pixels)
        Inverse variances (0 = bad pixel, never used).
    method : str or AbstractContinuum
        ``"sincos"``, ``"poly"``, ``"quantile"`` or a configured instance.
    continuum_pixels : bool ndarray, shape (pixels,), optional
        Pixels to fit. ``None`` uses every good pixel, which puts the continuum through
        the mean flux (the level ASPCAP's normalisation has), not the line-free level.
    regions : sequence of (float, float), optional
        Half-open wavelength ranges ``[lo, hi)`` in Å fitted independently (APOGEE: the
        chips, :func:`chip_regions`). Default: one region spanning all pixels. Pixels in
        no region get a NaN continuum.

    Returns
    -------
    ContinuumFit

    Raises
    ------
    ValueError
        For shape mismatches, overlapping regions, or an unknown method.

    Examples
    --------
    >>> wl = np.linspace(15200.0, 15800.0, 600)
    >>> flux = np.tile(2.0 + 1e-3 * (wl - 15500.0), (2, 1))
    >>> fit = fit_continuum(wl, flux, np.ones_like(flux), method="poly")
    >>> bool(np.allclose(fit.continuum, flux))
    True
    """
    model = resolve_continuum(method)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.shape != ivar.shape or flux.shape[1:] != wavelength.shape:
        raise ValueError(
            f"`flux` {flux.shape} and `ivar` {ivar.shape} must be (stars, pixels) with"
            f" pixels = len(wavelength) = {wavelength.shape[0]}."
        )
    if continuum_pixels is None:
        allowed = np.ones(wavelength.shape, dtype=bool)
    else:
        allowed = np.asarray(continuum_pixels)
        if allowed.dtype != bool or allowed.shape != wavelength.shape:
            raise ValueError(
                f"`continuum_pixels` must be a boolean array of shape {wavelength.shape}; got"
                f" dtype {allowed.dtype}, shape {allowed.shape}. Load index arrays with"
                " load_continuum_pixels()."
            )
    if regions is None:
        regions = ((float(wavelength.min()), float(np.nextafter(wavelength.max(), np.inf))),)
    regions = tuple((float(lo), float(hi)) for lo, hi in regions)
    index = _region_index(wavelength, regions)

    n_stars, n_pixels = flux.shape
    continuum = np.full((n_stars, n_pixels), np.nan)
    variance = np.full((n_stars, n_pixels), np.nan)
    used = np.zeros((n_stars, n_pixels), dtype=bool)
    ok = np.zeros((n_stars, len(regions)), dtype=bool)
    good = (ivar > 0) & np.isfinite(flux)
    for r in range(len(regions)):
        columns = np.flatnonzero(index == r)
        if columns.size == 0:
            continue
        for start in range(0, n_stars, _CHUNK):
            rows = slice(start, start + _CHUNK)
            fit = model.fit_region(
                wavelength[columns],
                np.where(good[rows][:, columns], flux[rows][:, columns], 0.0),
                ivar[rows][:, columns],
                good[rows][:, columns] & allowed[columns],
            )
            continuum[rows, columns] = fit.continuum
            variance[rows, columns] = fit.variance
            used[rows, columns] = fit.used
            ok[rows, r] = fit.ok
    return ContinuumFit(continuum, variance, used, ok, regions, model)


def continuum_normalise(
    dataset: SpectralDataset,
    method: str | AbstractContinuum = "sincos",
    *,
    continuum_pixels: np.ndarray | None = None,
    regions: Sequence[tuple[float, float]] | None = None,
    propagate_error: bool = True,
) -> tuple[SpectralDataset, ContinuumFit]:
    """Divide every spectrum of ``dataset`` by its fitted continuum.

    Normalised flux is ``f / c``; its inverse variance is
    ``1 / (σ²/c² + f²σ_c²/c⁴)`` (``propagate_error=False``: ``c²/σ²``). Pixels where the
    continuum is undetermined or not positive become bad (``mask``, ``ivar = 0``).

    Parameters
    ----------
    dataset : SpectralDataset
        Spectra with ``wavelength`` (Å) set.
    method, continuum_pixels, regions
        See :func:`fit_continuum`.
    propagate_error : bool
        Include the continuum's own uncertainty in the normalised ivar.

    Returns
    -------
    normalised : SpectralDataset
        Same stars, labels and ids; ``meta["continuum"]`` describes the method.
    fit : ContinuumFit
        The continua, for plots and diagnostics.

    Raises
    ------
    ValueError
        If the dataset has no wavelengths, or see :func:`fit_continuum`.
    """
    if dataset.wavelength is None:
        raise ValueError(
            "continuum normalisation needs `wavelength` (Å) on the dataset; give it when"
            " building the SpectralDataset (APOGEE grids: resolve_grid('dr17').wavelength)."
        )
    fit = fit_continuum(
        dataset.wavelength,
        dataset.flux,
        dataset.ivar,
        method=method,
        continuum_pixels=continuum_pixels,
        regions=regions,
    )
    c = fit.continuum
    defined = np.isfinite(c) & (c > 0)
    safe_c = np.where(defined, c, 1.0)
    flux = np.where(defined, dataset.flux / safe_c, 0.0)
    bad = dataset.mask | ~defined
    with np.errstate(divide="ignore"):
        pixel_var = np.where(dataset.ivar > 0, 1.0 / np.where(dataset.ivar > 0, dataset.ivar, 1.0), np.inf)
    var = pixel_var / safe_c**2
    if propagate_error:
        var = var + flux**2 * np.where(defined, np.nan_to_num(fit.variance), 0.0) / safe_c**2
    ivar = np.where(bad | ~np.isfinite(var), 0.0, 1.0 / np.where(np.isfinite(var), var, 1.0))
    meta = dict(dataset.meta)
    meta["continuum"] = describe_continuum(fit.method)
    meta["continuum_regions"] = [list(r) for r in fit.regions]
    meta["continuum_pixels"] = (
        int(np.count_nonzero(continuum_pixels)) if continuum_pixels is not None else "all"
    )
    return dataset.replace(flux=flux, ivar=ivar, mask=bad, meta=meta), fit
