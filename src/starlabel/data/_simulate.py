"""Deterministic simulators with known truth, for tests, tutorials and the demo."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ._dataset import SpectralDataset

__all__ = [
    "CannonSimulation",
    "LatentSimulation",
    "simulate_cannon",
    "simulate_linear_latent",
    "STELLAR_LABELS",
]


def snr_bounds(snr: float | tuple[float, float]) -> tuple[float, float]:
    """The (low, high) range of a signal-to-noise option: one number is both bounds."""
    bounds = np.asarray(snr, dtype=float)
    if bounds.shape not in ((), (2,)):
        raise ValueError(f"snr must be a number or a (low, high) pair, got {snr!r}.")
    low, high = np.broadcast_to(bounds, (2,))
    return float(low), float(high)


# --------------------------------------------------------------------------- latent
@dataclass(frozen=True)
class LatentSimulation:
    """Output of :func:`simulate_linear_latent`.

    Attributes
    ----------
    dataset : SpectralDataset
        Observed flux (with reported ``flux_err``) and noisy observed labels
        (with ``label_err``), label names ``label_0 … label_{K-1}``.
    true_labels : ndarray, shape (stars, labels)
        Noise-free labels ``A z``.
    true_flux : ndarray, shape (stars, pixels)
        Noise-free flux ``B z``.
    latents : ndarray, shape (stars, latents)
        The latent vectors z ~ N(0, I).
    A : ndarray, shape (labels, latents)
    B : ndarray, shape (pixels, latents)
    systematic_err : ndarray, shape (pixels,)
        Standard deviation of the extra per-pixel noise added to the flux and *left out*
        of ``flux_err`` (zeros when ``systematic=False``).
    """

    dataset: SpectralDataset
    true_labels: np.ndarray
    true_flux: np.ndarray
    latents: np.ndarray
    A: np.ndarray
    B: np.ndarray
    systematic_err: np.ndarray


def simulate_linear_latent(
    n_stars: int = 2048,
    n_latents: int = 8,
    n_labels: int = 2,
    n_pixels: int = 128,
    *,
    systematic: bool = True,
    seed: int = 42,
) -> LatentSimulation:
    """Simulate the linear latent-variable data of the Lux tutorial (seed 000).

    Each star has latents z ~ N(0, I_L). Labels are ``A z`` and flux is ``B z``, where
    ``A`` picks the first ``n_labels`` latents and ``B`` is N(0, 0.1²) plus two Gaussian
    "features" tied to latents 0 and 1 (amplitudes 4 and 2, centred at P/2 and P/4,
    widths 5 and 3 pixels). Reported 1-σ errors are U(0.01, 0.1) for labels and flux.
    With ``systematic=True`` each pixel also gets extra Gaussian noise with standard
    deviation ``2 cos²(2π i / (P/4))`` that is *not* in ``flux_err``: the reported
    uncertainties are underestimated, as in the tutorial.

    Parameters
    ----------
    n_stars, n_latents, n_labels, n_pixels : int
        Sizes; ``n_labels <= n_latents`` and ``n_latents >= 2``.
    systematic : bool
        Add the periodic unreported per-pixel noise.
    seed : int
        Seed of the NumPy generator; equal seeds give identical data.

    Returns
    -------
    LatentSimulation
    """
    if n_labels > n_latents or n_latents < 2:
        raise ValueError(f"need n_labels ≤ n_latents and n_latents ≥ 2, got {n_labels}, {n_latents}.")
    rng = np.random.default_rng(seed)
    A = np.zeros((n_labels, n_latents))
    A[np.arange(n_labels), np.arange(n_labels)] = 1.0
    pixel = np.arange(n_pixels)
    B = rng.normal(scale=0.1, size=(n_pixels, n_latents))
    B[:, 0] += 4.0 * np.exp(-0.5 * (pixel - n_pixels / 2) ** 2 / 5.0**2)
    B[:, 1] += 2.0 * np.exp(-0.5 * (pixel - n_pixels / 4) ** 2 / 3.0**2)

    latents = rng.normal(size=(n_stars, n_latents))
    true_labels = latents @ A.T
    true_flux = latents @ B.T
    label_err = rng.uniform(0.01, 0.1, size=true_labels.shape)
    flux_err = rng.uniform(0.01, 0.1, size=true_flux.shape)
    labels = rng.normal(true_labels, label_err)
    flux = rng.normal(true_flux, flux_err)
    systematic_err = (
        2.0 * np.cos(2 * np.pi * pixel / (n_pixels / 4)) ** 2 if systematic else np.zeros(n_pixels)
    )
    flux = flux + rng.normal(size=flux.shape) * systematic_err

    dataset = SpectralDataset(
        flux,
        flux_err=flux_err,
        labels=labels,
        label_names=tuple(f"label_{k}" for k in range(n_labels)),
        label_err=label_err,
        ids=[f"sim{i:06d}" for i in range(n_stars)],
        meta={"simulator": "linear_latent", "seed": seed, "systematic": systematic},
    )
    return LatentSimulation(dataset, true_labels, true_flux, latents, A, B, systematic_err)


# --------------------------------------------------------------------------- cannon
STELLAR_LABELS: tuple[str, ...] = ("teff", "logg", "fe_h", "mg_fe", "si_fe", "c_fe", "n_fe")
"""Label names :func:`simulate_cannon` draws, in order (K, dex, dex, …)."""


@dataclass(frozen=True)
class CannonSimulation:
    """Output of :func:`simulate_cannon`.

    Attributes
    ----------
    dataset : SpectralDataset
        Noisy flux with its ``flux_err`` and *true* labels (Cannon training sets treat
        reference labels as exact), wavelength in Å.
    true_labels : ndarray, shape (stars, labels)
    true_flux : ndarray, shape (stars, pixels)
        Noise-free model flux, before intrinsic scatter and noise.
    theta : ndarray, shape (pixels, terms)
        Per-pixel coefficients of the terms ``[1, x_1 … x_K, x_i x_j (i ≤ j)]`` in the
        scaled labels ``x = (label - pivot) / scale``.
    scatter : ndarray, shape (pixels,)
        Intrinsic scatter s_λ (flux units) added before the noise.
    pivot, scale : ndarray, shape (labels,)
        The label scaling used by ``theta``.
    """

    dataset: SpectralDataset
    true_labels: np.ndarray
    true_flux: np.ndarray
    theta: np.ndarray
    scatter: np.ndarray
    pivot: np.ndarray
    scale: np.ndarray


def _draw_stellar_labels(rng: np.random.Generator, n_stars: int, n_labels: int) -> np.ndarray:
    """Red-giant-branch-like labels: logg follows Teff, abundances anticorrelate with [Fe/H]."""
    teff = rng.uniform(4000.0, 5300.0, n_stars)
    logg = np.clip(2.5 + 0.0021 * (teff - 4700.0) + rng.normal(0.0, 0.25, n_stars), 0.5, 3.8)
    fe_h = np.clip(rng.normal(-0.15, 0.3, n_stars), -1.5, 0.5)
    columns = [teff, logg, fe_h]
    for _ in range(3, n_labels):
        columns.append(np.clip(-0.25 * fe_h + rng.normal(0.05, 0.08, n_stars), -0.4, 0.6))
    return np.stack(columns[:n_labels], axis=1)


def _quadratic_design(x: np.ndarray, order: int) -> np.ndarray:
    columns = [np.ones(len(x))]
    for degree in range(1, order + 1):
        for combo in itertools.combinations_with_replacement(range(x.shape[1]), degree):
            columns.append(np.prod(x[:, list(combo)], axis=1))
    return np.stack(columns, axis=1)


def simulate_cannon(
    n_stars: int = 1000,
    n_pixels: int = 500,
    n_labels: int = 3,
    *,
    order: int = 2,
    snr: float | tuple[float, float] = 100.0,
    scatter: float = 0.005,
    bad_pixel_fraction: float = 0.0,
    seed: int = 0,
) -> CannonSimulation:
    """Simulate continuum-normalised spectra that are exactly polynomial in the labels.

    Labels are drawn in realistic red-giant ranges (:data:`STELLAR_LABELS`: Teff
    4000–5300 K, logg tied to Teff, [Fe/H] ~ N(−0.15, 0.3), [X/Fe] anticorrelated with
    [Fe/H]). Each pixel has an absorption depth d_λ ∈ [0, 0.6] from a random line list;
    its coefficients are θ_0 = 1 − d_λ, linear terms ~ d_λ·N(0, 0.15²) and higher terms
    ~ d_λ·N(0, 0.03²). Flux = θ·v(x) + N(0, s_λ²) + N(0, σ²), with s_λ ~ U(0, 2·scatter)
    and σ = 1/S/N per star.

    Parameters
    ----------
    n_stars, n_pixels : int
        Sizes.
    n_labels : int
        1 to 7 labels, named by the first entries of :data:`STELLAR_LABELS`.
    order : int
        Polynomial order of the true model (2 = quadratic, the Cannon default).
    snr : float or (low, high)
        Signal-to-noise per pixel; a range draws each star's S/N uniformly.
    scatter : float
        Mean intrinsic scatter s_λ (flux units); 0 for none.
    bad_pixel_fraction : float
        Fraction of pixels, chosen at random, that are masked (their flux set to NaN).
    seed : int
        Seed; equal seeds give identical data.

    Returns
    -------
    CannonSimulation
    """
    if not 1 <= n_labels <= len(STELLAR_LABELS):
        raise ValueError(f"n_labels must be 1…{len(STELLAR_LABELS)}, got {n_labels}.")
    if not 0.0 <= bad_pixel_fraction < 1.0:
        raise ValueError(f"bad_pixel_fraction must be in [0, 1), got {bad_pixel_fraction}.")
    rng = np.random.default_rng(seed)
    true_labels = _draw_stellar_labels(rng, n_stars, n_labels)
    pivot = np.array([4700.0, 2.5, -0.15, 0.05, 0.05, 0.05, 0.05])[:n_labels]
    scale = np.array([400.0, 0.6, 0.3, 0.1, 0.1, 0.1, 0.1])[:n_labels]
    x = (true_labels - pivot) / scale
    design = _quadratic_design(x, order)

    wavelength = np.geomspace(15150.0, 15150.0 + 0.21 * n_pixels, n_pixels)
    n_lines = max(1, n_pixels // 8)
    centres = rng.uniform(wavelength[0], wavelength[-1], n_lines)
    strengths = rng.uniform(0.05, 0.5, n_lines)
    depth = np.sum(
        strengths[None, :] * np.exp(-0.5 * ((wavelength[:, None] - centres[None, :]) / 0.35) ** 2),
        axis=1,
    )
    depth = np.clip(depth, 0.0, 0.6)
    n_terms = design.shape[1]
    theta = np.empty((n_pixels, n_terms))
    theta[:, 0] = 1.0 - depth
    theta[:, 1 : 1 + n_labels] = depth[:, None] * rng.normal(0.0, 0.15, (n_pixels, n_labels))
    theta[:, 1 + n_labels :] = depth[:, None] * rng.normal(0.0, 0.03, (n_pixels, n_terms - 1 - n_labels))
    true_flux = design @ theta.T

    pixel_scatter = rng.uniform(0.0, 2.0 * scatter, n_pixels) if scatter > 0 else np.zeros(n_pixels)
    low, high = snr_bounds(snr)
    star_snr = rng.uniform(low, high, n_stars)
    flux_err = np.ones((n_stars, n_pixels)) / star_snr[:, None]
    flux = (
        true_flux
        + rng.normal(size=true_flux.shape) * pixel_scatter
        + rng.normal(size=true_flux.shape) * flux_err
    )
    mask = rng.uniform(size=flux.shape) < bad_pixel_fraction
    flux[mask] = np.nan

    dataset = SpectralDataset(
        flux,
        flux_err=flux_err,
        mask=mask,
        wavelength=wavelength,
        labels=true_labels,
        label_names=STELLAR_LABELS[:n_labels],
        ids=[f"sim{i:06d}" for i in range(n_stars)],
        meta={"simulator": "cannon", "seed": seed, "order": order},
    )
    return CannonSimulation(dataset, true_labels, true_flux, theta, pixel_scatter, pivot, scale)
