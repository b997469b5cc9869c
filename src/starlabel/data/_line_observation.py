"""How :func:`~starlabel.data.simulate_lines` observes a spectrum (private): continuum and noise.

Per-chip smooth continuum errors or the star's own (unnormalised) continuum shape,
the fixed per-pixel error pattern (detector response, sky lines), Gaussian noise at the
requested S/N, and bad pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._internal import empty_aligned
from ._linelist import APSTAR_SEGMENTS

__all__: list[str] = []


# ----------------------------------------------------------------------------- continuum & noise
def _segments_of(pixels: np.ndarray) -> np.ndarray:
    """Which detector (0, 1, 2) each apStar pixel falls on."""
    return np.searchsorted(np.array([s for s, _ in APSTAR_SEGMENTS[1:]]), pixels, side="right")


def _smooth_continuum(rng: np.random.Generator, pixels: np.ndarray, n: int, amplitude: float) -> np.ndarray:
    """1 + δ, float32 (stars, pixels): Legendre degree 3 per detector, coefficients ~ N(0, amplitude²)."""
    if amplitude == 0:
        return np.ones((n, len(pixels)), np.float32)
    chip = _segments_of(pixels)
    basis = np.zeros((4 * len(APSTAR_SEGMENTS), len(pixels)), np.float32)
    for c, (lo, hi) in enumerate(APSTAR_SEGMENTS):
        sel = chip == c
        x = 2.0 * (pixels[sel] - lo) / (hi - lo) - 1.0
        basis[4 * c : 4 * c + 4, sel] = np.polynomial.legendre.legvander(x, 3).T
    coef = rng.normal(0.0, amplitude, (n, basis.shape[0])).astype(np.float32)
    out = coef @ basis
    out += 1.0
    return out


def _stellar_continuum(wavelength: np.ndarray, teff: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Planck slope at Teff (relative to 16,000 Å) × each detector's throughput, float32."""
    x = 1.4388e8 / wavelength[None, :]
    planck = (16000.0 / wavelength[None, :]) ** 5 * np.expm1(1.4388e8 / 16000.0 / teff[:, None])
    planck /= np.expm1(x / teff[:, None])
    chip = _segments_of(pixels)
    throughput = np.empty(len(pixels))
    for c in np.unique(chip):
        sel = chip == c
        lo, hi = APSTAR_SEGMENTS[c]
        u = 2.0 * (pixels[sel] - lo) / (hi - lo) - 1.0
        throughput[sel] = (1.0 - 0.25 * u**2) * (1.0 - 0.1 * c)
    return (planck * throughput[None, :]).astype(np.float32)


@dataclass(frozen=True)
class _Observed:
    true_flux: np.ndarray  # float32 (stars, pixels)
    flux_err: np.ndarray  # float32, inflated at bad pixels
    flux: np.ndarray  # aligned float64, noisy
    ivar: np.ndarray  # aligned float64, 0 at bad pixels
    bad: np.ndarray  # bool


def _observe(
    rng: np.random.Generator,
    flux: np.ndarray,
    continuum: np.ndarray,
    snr: np.ndarray,
    pattern: np.ndarray,
    bad_fraction: float,
) -> _Observed:
    """Continuum, photon-like noise and bad pixels, in float32 passes over (stars, pixels)."""
    n, p = flux.shape
    true_flux = flux * continuum
    # Photon-like: σ = √(F C C̄) / S/N, so S/N is `snr` on a continuum pixel of the star's
    # mean brightness C̄ and falls as √C on fainter continuum and as √F in line cores.
    sigma = np.maximum(flux, 0.05)
    sigma *= continuum
    np.sqrt(sigma, out=sigma)
    sigma *= (pattern[None, :] * np.sqrt(continuum.mean(axis=1))[:, None] / snr[:, None]).astype(np.float32)
    noise = rng.standard_normal((n, p), dtype=np.float32)
    noise *= sigma
    noisy = empty_aligned((n, p))
    np.add(true_flux, noise, out=noisy)
    # Bad pixels: junk flux (10σ scale) with errors inflated ×100, masked.
    n_bad = rng.binomial(n * p, bad_fraction) if bad_fraction > 0 else 0
    where = rng.choice(n * p, n_bad, replace=False) if n_bad else np.zeros(0, int)
    noisy.flat[where] += 10.0 * sigma.flat[where] * rng.standard_normal(n_bad)
    ivar = empty_aligned((n, p))
    np.multiply(sigma, sigma, out=ivar)
    np.divide(1.0, ivar, out=ivar)
    ivar.flat[where] = 0.0
    sigma.flat[where] *= 100.0
    bad = np.zeros((n, p), bool)
    bad.flat[where] = True
    return _Observed(true_flux, sigma, noisy, ivar, bad)


def _noise_pattern(pixels: np.ndarray) -> np.ndarray:
    """Fixed per-pixel error multiplier: 1 ± 5 % detector response, ×2–6 at sky-line pixels."""
    rng = np.random.default_rng(1515)
    pattern = rng.normal(1.0, 0.05, 8575)
    sky = rng.uniform(size=8575) < 0.03
    pattern[sky] *= rng.uniform(2.0, 6.0, sky.sum())
    return pattern[pixels]
