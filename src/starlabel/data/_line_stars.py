"""The stars of :func:`~starlabel.data.simulate_lines` (private): labels, abundance trends, companions.

An HR-diagram-like population (giants and/or dwarfs with two α sequences), the
Galactic [X/Fe] trends and mixing on top of the α term, and the secondaries of
binaries (mass ratio → Teff, logg, radius) with their H-band flux ratio.
"""

from __future__ import annotations

import numpy as np

from ._linelist import ELEMENTS

__all__: list[str] = []


# ----------------------------------------------------------------------------- labels
def _draw_population(rng: np.random.Generator, n: int, population: str) -> dict[str, np.ndarray]:
    """Teff, logg, [Fe/H], [α/Fe], vmacro of an HR-diagram-like population."""
    fe_h = np.clip(rng.normal(-0.1, 0.3, n), -1.5, 0.5)
    # Two α sequences: the low-α disc anticorrelated with [Fe/H], a high-α one of
    # metal-poor stars.
    p_high = 0.6 / (1.0 + np.exp((fe_h + 0.45) / 0.12))
    high = rng.uniform(size=n) < p_high
    alpha = np.where(high, 0.27 - 0.1 * (fe_h + 0.5), 0.02 - 0.12 * fe_h) + rng.normal(0.0, 0.03, n)
    alpha_fe = np.clip(alpha, -0.15, 0.45)
    if population == "giants":
        giant = np.ones(n, bool)
    elif population == "dwarfs":
        giant = np.zeros(n, bool)
    else:
        giant = rng.uniform(size=n) < 0.5
    # Giants: red giant branch (metal-poor ones hotter) plus a red clump (a quarter).
    clump = rng.uniform(size=n) < 0.25
    logg_rgb = 3.6 - 2.5 * rng.beta(1.6, 1.0, n)
    teff_rgb = 4550.0 + 480.0 * (logg_rgb - 2.5) - 280.0 * fe_h + rng.normal(0.0, 60.0, n)
    teff_rc = 4720.0 - 150.0 * fe_h + rng.normal(0.0, 70.0, n)
    logg_rc = rng.normal(2.45, 0.08, n)
    teff_g = np.where(clump, teff_rc, teff_rgb)
    logg_g = np.where(clump, logg_rc, logg_rgb)
    # Dwarfs: main sequence 4200–6500 K, with stars evolving off it at lower logg.
    teff_d = 4200.0 + 2300.0 * rng.beta(1.3, 1.1, n)
    logg_ms = 4.62 - 0.45 * ((teff_d - 4200.0) / 2300.0) ** 2 + 0.05 * fe_h
    logg_d = logg_ms - np.abs(rng.normal(0.0, 0.15, n))
    teff = np.clip(np.where(giant, teff_g, teff_d), 3700.0, 6600.0)
    logg = np.clip(np.where(giant, logg_g, logg_d), 0.8, 4.9)
    # Macroturbulence: Doyle et al. (2014)-like for dwarfs, APOGEE-giant-like for giants.
    dt = teff - 5777.0
    vmac_d = 3.21 + 2.33e-3 * dt + 2.0e-6 * dt**2 - 2.0 * (logg - 4.44)
    vmac_g = 10.0 ** (0.741 - 0.0998 * logg - 0.225 * fe_h)
    vmacro = np.clip(np.where(giant, vmac_g, vmac_d) * np.exp(rng.normal(0.0, 0.15, n)), 0.5, 15.0)
    return {"teff": teff, "logg": logg, "fe_h": fe_h, "alpha_fe": alpha_fe, "vmacro": vmacro, "giant": giant}


def _element_trends(stars: dict[str, np.ndarray]) -> np.ndarray:
    """[X/Fe] beyond the α term for each element (stars, elements): Galactic trends and mixing.

    Giants show first-dredge-up C depletion and N enhancement growing up the giant
    branch; [Al/Fe] follows [α/Fe] by half; [Mn/Fe] falls and [Ni/Fe] barely moves
    with [Fe/H]; Ti is partly α (its α term is damped to 0.8). The rest are solar.
    """
    n = len(stars["teff"])
    trend = np.zeros((n, len(ELEMENTS)))
    mixing = np.where(stars["giant"], np.clip(3.2 - stars["logg"], 0.0, 2.0), 0.0)
    trend[:, ELEMENTS.index("C")] = -0.1 * mixing - 0.05 * stars["giant"]
    trend[:, ELEMENTS.index("N")] = 0.15 * mixing + 0.1 * stars["giant"]
    trend[:, ELEMENTS.index("Al")] = 0.5 * stars["alpha_fe"]
    trend[:, ELEMENTS.index("Mn")] = 0.2 * stars["fe_h"]
    trend[:, ELEMENTS.index("Ni")] = 0.03 * stars["fe_h"]
    trend[:, ELEMENTS.index("Ti")] = -0.2 * stars["alpha_fe"]
    return trend


# ----------------------------------------------------------------------------- binaries
def _planck_ratio(wavelength: np.ndarray, t2: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """B_λ(T2) / B_λ(T1), shapes (stars, pixels) from (pixels,) and (stars,)."""
    x = 1.4388e8 / wavelength[None, :]  # hc/k in Å K
    return np.expm1(x / t1[:, None]) / np.expm1(x / t2[:, None])


def _companions(stars: dict[str, np.ndarray], q: np.ndarray) -> dict[str, np.ndarray]:
    """Secondary Teff, logg and radius ratio from the mass ratio q = M2/M1.

    The secondary is on the main sequence with the primary's composition: M2 = q M1
    with R ∝ M^0.8, so g ∝ M^-0.6 and, for a dwarf primary, Teff2 = Teff1 q^0.6. A giant
    primary has M1 = 1.2 M☉ and its companion sits on the main sequence
    (Teff ≈ 5777 K · M^0.6, logg ≈ 4.44 − 0.6 log M).
    """
    giant = stars["giant"]
    m1 = np.where(giant, 1.2, np.clip((stars["teff"] / 5777.0) ** (1 / 0.6), 0.5, 1.6))
    m2 = q * m1
    teff2 = np.where(giant, 5777.0 * m2**0.6, stars["teff"] * q**0.6)
    logg2 = np.where(giant, 4.44 - 0.6 * np.log10(m2), stars["logg"] - 0.6 * np.log10(q))
    teff2, logg2 = np.clip(teff2, 3200.0, 6600.0), np.clip(logg2, 3.5, 5.1)
    r1 = np.sqrt(m1 / 10.0 ** (stars["logg"] - 4.44))
    r2 = np.sqrt(m2 / 10.0 ** (logg2 - 4.44))
    dt = teff2 - 5777.0
    vmac2 = np.clip(3.21 + 2.33e-3 * dt + 2.0e-6 * dt**2 - 2.0 * (logg2 - 4.44), 0.5, 15.0)
    return {"teff": teff2, "logg": logg2, "vmacro": vmac2, "radius_ratio": r2 / r1}
