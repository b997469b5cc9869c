"""The fixed H-band line list and the per-star line physics of :func:`simulate_lines`.

Everything here is deterministic: the line list is drawn once from a fixed seed, the
curve of growth is a table computed from the Voigt function, and a star's spectrum is
a pure JAX function of its labels. Randomness (labels, noise, bad pixels) lives in
``_lines.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ELEMENTS",
    "LineList",
    "line_list",
    "APSTAR_SEGMENTS",
    "apstar_wavelength",
    "VELOCITY_PER_PIXEL",
]

# ----------------------------------------------------------------------------- grid
LOG_LAMBDA0 = 4.179
"""log10 of the wavelength (Å, vacuum) of apStar pixel 0."""
DLOG_LAMBDA = 6e-6
"""Step in log10 λ per apStar pixel."""
C_KMS = 299_792.458
VELOCITY_PER_PIXEL = C_KMS * DLOG_LAMBDA * np.log(10.0)
"""km/s per pixel of the log-linear grid (≈ 4.14): a Doppler shift is a uniform pixel shift."""
APSTAR_SEGMENTS: tuple[tuple[int, int], ...] = ((322, 3242), (3648, 6048), (6412, 8306))
"""apStar pixel ranges [start, stop) of the three detectors kept in the DR12 7,214-pixel grid."""
N_APSTAR = 8575


def apstar_wavelength(pixel: np.ndarray | float) -> np.ndarray:
    """Vacuum wavelength (Å) of apStar pixel coordinates: λ = 10^(4.179 + 6·10⁻⁶ i)."""
    return np.asarray(10.0 ** (LOG_LAMBDA0 + DLOG_LAMBDA * np.asarray(pixel, dtype=float)))


# ----------------------------------------------------------------------------- atoms
ELEMENTS: tuple[str, ...] = (
    "C",
    "N",
    "O",
    "Na",
    "Mg",
    "Al",
    "Si",
    "S",
    "K",
    "Ca",
    "Ti",
    "V",
    "Mn",
    "Ni",
    "Fe",
)
"""Elements with lines in the list; every one but Fe can be a free ``<x>_fe`` label."""
# Asplund et al. (2009) solar abundances A(X) = log10(N_X/N_H) + 12.
SOLAR_A = np.array([8.43, 7.83, 8.69, 6.24, 7.60, 6.45, 7.51, 7.12, 5.03, 6.34, 4.95, 3.93, 5.43, 6.22, 7.50])
# First ionisation potentials (eV) and atomic masses (amu).
CHI_ION = np.array(
    [11.26, 14.53, 13.62, 5.14, 7.65, 5.99, 8.15, 10.36, 4.34, 6.11, 6.83, 6.75, 7.43, 7.64, 7.90]
)
MASS = np.array([12.0, 14.0, 16.0, 23.0, 24.3, 27.0, 28.1, 32.1, 39.1, 40.1, 47.9, 50.9, 54.9, 58.7, 55.8])
ALPHA_ELEMENTS = ("O", "Mg", "Si", "S", "Ca", "Ti")
H_SLOT = len(ELEMENTS)
"""Index of hydrogen (A = 12) in the abundance vector; atoms use it as their 'second' element."""

NEUTRAL, ION, MOLECULE = 0, 1, 2

# species: name, element(s), stage, number of lines, χ_exc range (eV), dissociation D0 (eV),
# log a offset (strong damping wings for the alkali-earth and Al lines of the H band)
_SPECIES: tuple[tuple[str, str, str | None, int, int, tuple[float, float], float, float], ...] = (
    ("Fe I", "Fe", None, NEUTRAL, 220, (2.2, 6.5), 0.0, 0.0),
    ("Fe II", "Fe", None, ION, 6, (5.5, 8.0), 0.0, 0.0),
    ("Ti II", "Ti", None, ION, 5, (3.0, 4.0), 0.0, 0.0),
    ("C I", "C", None, NEUTRAL, 12, (7.5, 9.8), 0.0, 0.0),
    ("Na I", "Na", None, NEUTRAL, 4, (3.6, 4.3), 0.0, 0.3),
    ("Mg I", "Mg", None, NEUTRAL, 20, (5.1, 6.7), 0.0, 0.6),
    ("Al I", "Al", None, NEUTRAL, 6, (4.0, 4.8), 0.0, 0.5),
    ("Si I", "Si", None, NEUTRAL, 40, (5.8, 7.2), 0.0, 0.3),
    ("S I", "S", None, NEUTRAL, 8, (6.5, 8.0), 0.0, 0.0),
    ("K I", "K", None, NEUTRAL, 3, (2.6, 3.0), 0.0, 0.3),
    ("Ca I", "Ca", None, NEUTRAL, 15, (4.5, 5.5), 0.0, 0.3),
    ("Ti I", "Ti", None, NEUTRAL, 25, (1.5, 4.5), 0.0, 0.0),
    ("V I", "V", None, NEUTRAL, 5, (1.5, 2.5), 0.0, 0.0),
    ("Mn I", "Mn", None, NEUTRAL, 8, (4.0, 6.0), 0.0, 0.0),
    ("Ni I", "Ni", None, NEUTRAL, 25, (4.0, 6.5), 0.0, 0.0),
    ("OH", "O", "H", MOLECULE, 120, (0.2, 1.6), 4.39, 0.0),
    ("CO", "C", "O", MOLECULE, 150, (0.2, 1.2), 11.09, 0.0),
    ("CN", "C", "N", MOLECULE, 120, (0.2, 1.5), 7.76, 0.0),
)
# CO's second-overtone band heads (Å): its lines pile up redward of them.
_CO_BANDHEADS = np.array([15578.0, 15775.0, 15978.0, 16185.0, 16397.0, 16614.0, 16836.0])

LINE_LIST_SEED = 15
"""The fixed seed the line list is drawn from (the same list in every run)."""

# The reference star the lines' log gf are set from: a red-clump giant.
_REFERENCE = {"teff": 4750.0, "logg": 2.5, "fe_h": 0.0, "alpha_fe": 0.0}


@dataclass(frozen=True)
class LineList:
    """The simulator's fixed line list over the APOGEE H band (one row per line).

    Attributes
    ----------
    wavelength : ndarray, shape (lines,)
        Rest vacuum wavelength, Å.
    pixel : ndarray, shape (lines,)
        The same as an apStar pixel coordinate (float).
    species : ndarray of str, shape (lines,)
        e.g. ``"Fe I"``, ``"Mg I"``, ``"Ti II"``, ``"OH"``, ``"CO"``, ``"CN"``.
    element, element2 : ndarray of int, shape (lines,)
        Indices into :data:`ELEMENTS` of the absorber (for molecules its two atoms;
        ``element2`` is hydrogen for atoms and OH).
    stage : ndarray of int, shape (lines,)
        0 neutral atom, 1 singly ionised atom, 2 molecule.
    chi : ndarray, shape (lines,)
        Excitation potential of the lower level, eV.
    log_gf : ndarray, shape (lines,)
        Oscillator strength (log10 g·f, arbitrary zero point shared by all lines).
    log_a : ndarray, shape (lines,)
        log10 of the Voigt damping parameter a at the reference star.
    mass : ndarray, shape (lines,)
        Mass of the absorber, amu (sets its thermal Doppler width).
    dissociation : ndarray, shape (lines,)
        Dissociation energy D0 of molecules, eV (0 for atoms).
    """

    wavelength: np.ndarray
    pixel: np.ndarray
    species: np.ndarray
    element: np.ndarray
    element2: np.ndarray
    stage: np.ndarray
    chi: np.ndarray
    log_gf: np.ndarray
    log_a: np.ndarray
    mass: np.ndarray
    dissociation: np.ndarray

    def __len__(self) -> int:
        return len(self.wavelength)

    def of_species(self, name: str) -> np.ndarray:
        """Indices of the lines of one species (e.g. ``"Fe I"``)."""
        return np.flatnonzero(self.species == name)


@functools.cache
def line_list() -> LineList:
    """The fixed line list: 792 lines of 18 species over apStar pixels 0–8575 (drawn once)."""
    rng = np.random.default_rng(LINE_LIST_SEED)
    lo, hi = float(apstar_wavelength(0.0)), float(apstar_wavelength(N_APSTAR - 1.0))
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("wl", "sp", "e1", "e2", "st", "chi", "tau", "la", "d0")
    }
    for name, el1, el2, stage, count, (chi_lo, chi_hi), d0, damp in _SPECIES:
        if name == "CO":
            heads = rng.choice(_CO_BANDHEADS, count)
            wl = heads + rng.exponential(25.0, count)
        else:
            wl = rng.uniform(lo, hi, count)
        # Line strengths at the reference star: many weak lines, a tail of saturated ones.
        strong = rng.uniform(size=count) < 0.12
        log_tau = np.where(strong, rng.uniform(0.3, 2.0, count), rng.uniform(-2.5, 0.3, count))
        columns["wl"].append(wl)
        columns["sp"].append(np.full(count, name))
        columns["e1"].append(np.full(count, ELEMENTS.index(el1)))
        columns["e2"].append(np.full(count, H_SLOT if el2 in (None, "H") else ELEMENTS.index(el2)))
        columns["st"].append(np.full(count, stage))
        columns["chi"].append(rng.uniform(chi_lo, chi_hi, count))
        columns["tau"].append(log_tau)
        columns["la"].append(rng.normal(-1.8 + damp, 0.25, count))
        columns["d0"].append(np.full(count, d0))
    cat = {k: np.concatenate(v) for k, v in columns.items()}
    keep = (cat["wl"] > lo) & (cat["wl"] < hi)
    order = np.argsort(cat["wl"][keep])
    cat = {k: v[keep][order] for k, v in cat.items()}
    e1, e2, stage = cat["e1"].astype(int), cat["e2"].astype(int), cat["st"].astype(int)
    mass = np.where(
        e2 == H_SLOT,
        MASS[e1] + np.where(stage == MOLECULE, 1.0, 0.0),
        MASS[e1] + MASS[np.minimum(e2, len(MASS) - 1)],
    )
    partial = LineList(
        wavelength=cat["wl"],
        pixel=(np.log10(cat["wl"]) - LOG_LAMBDA0) / DLOG_LAMBDA,
        species=cat["sp"],
        element=e1,
        element2=e2,
        stage=stage,
        chi=cat["chi"],
        log_gf=np.zeros(len(e1)),
        log_a=cat["la"],
        mass=mass,
        dissociation=cat["d0"],
    )
    # log gf is whatever makes the reference star's line-centre optical depth the drawn one.
    ref = np.array([[_REFERENCE["teff"], _REFERENCE["logg"], _REFERENCE["fe_h"], _REFERENCE["alpha_fe"]]])
    abundances = solar_abundances(ref[:, 2], ref[:, 3], np.zeros((1, len(ELEMENTS))))
    log_tau_ref = np.asarray(
        jax.jit(_line_optics)(
            jnp.float32(ref[0, 0]),
            jnp.float32(ref[0, 1]),
            jnp.float32(ref[0, 2]),
            jnp.asarray(abundances[0], jnp.float32),
            jnp.float32(np.nan),
            _line_arrays(partial),
        )[0]
    )
    return LineList(**{**partial.__dict__, "log_gf": cat["tau"] - log_tau_ref})


# ----------------------------------------------------------------------------- abundances
def solar_abundances(fe_h: np.ndarray, alpha_fe: np.ndarray, x_fe: np.ndarray) -> np.ndarray:
    """A(X) per star and element, plus hydrogen: shape (stars, elements + 1).

    ``A(X) = A_sun(X) + [Fe/H] + [X/Fe]`` with ``[X/Fe] = [α/Fe] + x_fe`` for the α
    elements (O, Mg, Si, S, Ca, Ti) and ``x_fe`` for the others (zero for Fe).
    """
    alpha = np.array([e in ALPHA_ELEMENTS for e in ELEMENTS], dtype=float)
    a = SOLAR_A[None, :] + fe_h[:, None] + alpha[None, :] * alpha_fe[:, None] + x_fe
    return np.concatenate([a, np.full((len(fe_h), 1), 12.0)], axis=1)


# ----------------------------------------------------------------------------- physics
def _line_arrays(lines: LineList) -> dict[str, jax.Array]:
    """Per-line and per-species device arrays.

    A star's physics is computed per species (18 values: abundance, ionisation or
    dissociation, continuum, Doppler width); only the terms that differ between the
    lines of a species are per line.
    """
    f32 = jnp.float32
    _, first, species = np.unique(lines.species, return_index=True, return_inverse=True)
    return {
        "species": jnp.asarray(species.astype(np.int32)),
        "chi": jnp.asarray(lines.chi, f32),
        "log_gf_wl": jnp.asarray(lines.log_gf + np.log10(lines.wavelength), f32),  # τ0 ∝ gf λ
        "log_a": jnp.asarray(lines.log_a, f32),
        "sp_e1": jnp.asarray(lines.element[first]),
        "sp_e2": jnp.asarray(lines.element2[first]),
        "sp_stage": jnp.asarray(lines.stage[first]),
        "sp_mass": jnp.asarray(lines.mass[first], f32),
        "sp_d0": jnp.asarray(lines.dissociation[first], f32),
    }


def _atmosphere(teff: jax.Array, logg: jax.Array, fe_h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log10 electron and gas pressure (dyn cm⁻²) of a photosphere at optical depth ~1.

    Scalings of a grey photosphere: P_gas ∝ g^0.6 (hydrostatic, opacity ∝ P), P_e rising
    steeply with T (hydrogen and metal ionisation) and with metallicity (metals donate
    the electrons in cool stars). Calibrated to log P_e ≈ 1.1, log P_g ≈ 5.0 for the Sun.
    """
    log_t = jnp.log10(teff / 5777.0)
    log_pe = 1.1 + 0.55 * (logg - 4.44) + 0.35 * fe_h + 7.0 * log_t
    log_pg = 5.0 + 0.6 * (logg - 4.44) - 0.25 * fe_h - 1.0 * log_t
    return log_pe, log_pg


def microturbulence(logg: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """Microturbulence ξ (km/s) tied to logg (≈ APOGEE's giant relation; ~1 km/s in dwarfs)."""
    return jnp.clip(2.478 - 0.325 * logg, 0.6, 2.5)


def _line_optics(
    teff: jax.Array,
    logg: jax.Array,
    fe_h: jax.Array,
    abundance: jax.Array,
    vmicro: jax.Array,
    lines: dict[str, jax.Array],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One star's line-centre optical depth, Doppler width and damping, per line.

    ``vmicro`` is the microturbulence ξ in km/s; NaN ties it to logg
    (:func:`microturbulence`).

    Returns ``(log10 τ0, Doppler 1/e half-width Δ in km/s, log10 a)``, each shape (lines,).
    τ0 = gf · N_absorber/N_H · exp(−χ/kT) · λ / (κ_c Δ): the Boltzmann factor for the
    lower level, Saha ionisation balance at the electron pressure P_e for atoms (the
    neutral or the ionised fraction), dissociation equilibrium ∝ P_gas exp(D0/kT) /
    T^2.5 for molecules, divided by the H⁻ continuum opacity ∝ P_e θ^2.5 10^(0.754 θ).
    """
    theta = 5040.0 / teff
    log_pe, log_pg = _atmosphere(teff, logg, fe_h)
    # Saha: log10(N_II / N_I) for each element (partition functions ~ 1, g-ratio 2).
    chi_ion = jnp.asarray(np.append(CHI_ION, 13.6), jnp.float32)
    saha = jnp.log10(2.0) + 2.5 * jnp.log10(teff) - 0.1762 - log_pe - theta * chi_ion
    log_neutral = -jnp.logaddexp(0.0, saha * np.log(10.0)) / np.log(10.0)
    log_ionised = saha + log_neutral
    e1, e2, stage = lines["sp_e1"], lines["sp_e2"], lines["sp_stage"]
    log_eps = (abundance[e1] - 12.0) + (abundance[e2] - 12.0)
    log_molecule = log_pg + theta * lines["sp_d0"] - 2.5 * jnp.log10(teff) + log_neutral[e1] + log_neutral[e2]
    log_stage = jnp.where(
        stage == NEUTRAL, log_neutral[e1], jnp.where(stage == ION, log_ionised[e1], log_molecule - 10.0)
    )
    log_kappa = log_pe + 2.5 * jnp.log10(theta) + 0.754 * theta
    xi = jnp.where(jnp.isnan(vmicro), microturbulence(logg), vmicro)
    doppler = jnp.sqrt(2.0 * 0.008314 * teff / lines["sp_mass"] + xi**2)  # km/s; 2k/m_u = 0.01663
    # Van der Waals damping grows with the gas pressure; a = Γ / (4π Δν_D).
    _, log_pg_ref = _atmosphere(jnp.float32(4750.0), jnp.float32(2.5), jnp.float32(0.0))
    damping = 0.7 * (log_pg - log_pg_ref) + 0.3 * jnp.log10(teff / 4750.0) - jnp.log10(doppler / 1.8)
    strength = log_eps + log_stage - log_kappa - jnp.log10(doppler)  # per species
    sp = lines["species"]
    log_tau = lines["log_gf_wl"] + strength[sp] - theta * lines["chi"]
    log_a = lines["log_a"] + damping[sp]
    doppler = doppler[sp]
    return log_tau, doppler, log_a


# ----------------------------------------------------------------------------- curve of growth
_COG_LOG_TAU = (-4.0, 7.0, 0.05)
_COG_LOG_A = (-4.0, 0.0, 0.1)


@functools.cache
def curve_of_growth() -> np.ndarray:
    """log10(W/Δ) of a Voigt line, on the grid log10 τ0 × log10 a (221 × 41).

    W = Δ ∫ (1 − exp(−τ0 H(a, u))) du, with H(a, u) = Re w(u + ia) the Voigt function
    (H(0, u) = exp(−u²)) and Δ the Doppler 1/e half-width: linear in τ0 for weak lines,
    ∝ √(ln τ0) once the core saturates, ∝ √(a τ0) on the damping part.
    """
    from scipy.special import wofz

    log_tau = np.arange(_COG_LOG_TAU[0], _COG_LOG_TAU[1] + 1e-9, _COG_LOG_TAU[2])
    log_a = np.arange(_COG_LOG_A[0], _COG_LOG_A[1] + 1e-9, _COG_LOG_A[2])
    u = np.sinh(np.linspace(0.0, np.arcsinh(3e4), 2500))
    voigt = wofz(u[None, :] + 1j * 10.0 ** log_a[:, None]).real  # (a, u)
    width = np.empty((len(log_tau), len(log_a)))
    for i, lt in enumerate(log_tau):  # 221 small vector steps, once per process
        absorbed = -np.expm1(-(10.0**lt) * voigt)
        width[i] = 2.0 * np.trapezoid(absorbed, u, axis=1)
    return np.log10(width)


def _interp_cog(table: jax.Array, log_tau: jax.Array, log_a: jax.Array) -> jax.Array:
    """Bilinear interpolation of :func:`curve_of_growth`; linear in τ0 below the table."""
    t0, t1, dt = _COG_LOG_TAU
    a0, a1, da = _COG_LOG_A
    ft = (jnp.clip(log_tau, t0, t1) - t0) / dt
    fa = (jnp.clip(log_a, a0, a1) - a0) / da
    it = jnp.clip(jnp.floor(ft).astype(jnp.int32), 0, table.shape[0] - 2)
    ia = jnp.clip(jnp.floor(fa).astype(jnp.int32), 0, table.shape[1] - 2)
    wt, wa = ft - it, fa - ia
    value = (
        table[it, ia] * (1 - wt) * (1 - wa)
        + table[it + 1, ia] * wt * (1 - wa)
        + table[it, ia + 1] * (1 - wt) * wa
        + table[it + 1, ia + 1] * wt * wa
    )
    return value + jnp.minimum(log_tau - t0, 0.0)  # weak-line limit: W ∝ τ0


# ----------------------------------------------------------------------------- rendering
WINDOW_HALF_WIDTH = 14
"""Each line is evaluated within ±14 pixels (±58 km/s) of its centre, tapered to 0 at the edge."""
_TAPER = 4


@dataclass(frozen=True)
class _Layout:
    """Every (line, pixel) pair of a pixel range within a line's window, sorted by pixel.

    ``pixel[e]`` is the rest-frame pixel (relative to ``first``) of entry e, ``line[e]``
    the line (an index into ``lines``), ``offset[e]`` the pixel's distance from that
    line's centre and ``taper[e]`` the window's weight. A star's flux is then one
    sorted segment product of (1 − depth) over the entries: about 30 entries per line
    instead of lines × pixels, and no data-dependent indexing.
    """

    first: int
    n_pixels: int
    lines: np.ndarray  # (relevant lines,) indices into the line list
    line: np.ndarray  # (entries,) int32
    pixel: np.ndarray  # (entries,) int32, non-decreasing
    offset: np.ndarray  # (entries,) float32
    taper: np.ndarray  # (entries,) float32


@functools.cache
def _layout(first: int, stop: int) -> _Layout:
    lines = line_list()
    h = WINDOW_HALF_WIDTH
    base = np.floor(lines.pixel).astype(int)
    relevant = np.flatnonzero((base + h + 1 >= first) & (base - h < stop))
    q = base[relevant, None] + np.arange(-h, h + 2)[None, :]  # (relevant, 2h + 2)
    which = np.broadcast_to(np.arange(len(relevant))[:, None], q.shape)
    distance = q - lines.pixel[relevant, None]
    edge = np.clip((np.abs(distance) - (h - _TAPER)) / _TAPER, 0.0, 1.0)
    keep = (q >= first) & (q < stop)
    order = np.argsort(q[keep], kind="stable")
    return _Layout(
        first=first,
        n_pixels=stop - first,
        lines=relevant,
        line=which[keep][order].astype(np.int32),
        pixel=(q[keep][order] - first).astype(np.int32),
        offset=distance[keep][order].astype(np.float32),
        taper=(np.cos(0.5 * np.pi * edge[keep][order]) ** 2).astype(np.float32),
    )


def _profile_coefficients(
    teff: jax.Array,
    logg: jax.Array,
    fe_h: jax.Array,
    abundance: jax.Array,
    vmicro: jax.Array,
    vmacro: jax.Array,
    sigma_inst: jax.Array,
    lines: dict[str, jax.Array],
    cog: jax.Array,
) -> jax.Array:
    """One star's observed line profiles as pseudo-Voigt coefficients, shape (4, lines).

    The equivalent width W comes from the curve of growth; the intrinsic line's
    effective Gaussian width W / (√(2π) d_c) (d_c its central depth, so saturated lines
    are broader) is added in quadrature to macroturbulence (Gaussian, σ = ζ/√2) and the
    instrument (σ = c / (2.355 R)); the Lorentzian half-width √π τ0 a Δ² / W matches the
    damping wings of the saturated line. Combined with the pseudo-Voigt of Thompson,
    Cox & Hastings (1987), normalised to area W, so the line's central depth never
    exceeds d_c < 1. Returned rows: Lorentz amplitude, Lorentz γ², Gauss amplitude,
    Gauss 1/(2σ²), all in pixel units.
    """
    log_tau, doppler, log_a = _line_optics(teff, logg, fe_h, abundance, vmicro, lines)
    log_tau = jnp.minimum(log_tau, 6.5)
    delta = doppler / VELOCITY_PER_PIXEL  # Doppler width in pixels
    width = jnp.exp(np.log(10.0) * _interp_cog(cog, log_tau, log_a)) * delta  # equivalent width, pixels
    a = jnp.exp(np.log(10.0) * log_a)
    tau = jnp.exp(np.log(10.0) * log_tau)
    # Central optical depth τ0 H(a, 0), with H(a, 0) = exp(a²) erfc(a) ≈ 1 / (1 + 2a/√π).
    central = -jnp.expm1(-tau / (1.0 + 1.1284 * a))
    sigma_int = width / (np.sqrt(2 * np.pi) * central)
    sigma_mac = vmacro / (np.sqrt(2.0) * VELOCITY_PER_PIXEL)
    sigma = jnp.sqrt(sigma_int**2 + sigma_mac**2 + sigma_inst**2)
    gamma = jnp.minimum(np.sqrt(np.pi) * tau * a * delta**2 / width, 6.0)
    f_g, f_l = 2.35482 * sigma, 2.0 * gamma
    f = (
        f_g**5
        + 2.69269 * f_g**4 * f_l
        + 2.42843 * f_g**3 * f_l**2
        + 4.47163 * f_g**2 * f_l**3
        + 0.07842 * f_g * f_l**4
        + f_l**5
    ) ** 0.2
    r = f_l / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    half = 0.5 * f
    s = f / 2.35482
    return jnp.stack(
        [
            width * eta * half / np.pi,
            half**2,
            width * (1.0 - eta) / (np.sqrt(2 * np.pi) * s),
            0.5 / s**2,
        ]
    )


def _render_one(
    coefficients: jax.Array, fraction: jax.Array, shift: jax.Array, layout: dict[str, jax.Array], n_rest: int
) -> jax.Array:
    """One star's flux on the output pixels: Π (1 − line depth) over the entries of each pixel."""
    amp_l, gamma2, amp_g, inv2s2 = (coefficients[k][layout["line"]] for k in range(4))
    x = layout["offset"] - fraction
    x2 = x * x
    depth = (amp_l / (x2 + gamma2) + amp_g * jnp.exp(-x2 * inv2s2)) * layout["taper"]
    rest = jax.ops.segment_prod(
        1.0 - jnp.minimum(depth, 0.999), layout["pixel"], num_segments=n_rest, indices_are_sorted=True
    )
    return rest[layout["out"] - shift]


@functools.partial(jax.jit, static_argnames="n_rest")
def _render(
    teff: jax.Array,
    logg: jax.Array,
    fe_h: jax.Array,
    abundance: jax.Array,
    vmicro: jax.Array,
    vmacro: jax.Array,
    pixel_shift: jax.Array,
    sigma_inst: jax.Array,
    lines: dict[str, jax.Array],
    cog: jax.Array,
    layout: dict[str, jax.Array],
    n_rest: int,
) -> jax.Array:
    """Noise-free, continuum-normalised flux of a batch of stars, shape (stars, pixels)."""
    coefficients = jax.vmap(_profile_coefficients, in_axes=(0, 0, 0, 0, 0, 0, None, None, None))(
        teff, logg, fe_h, abundance, vmicro, vmacro, sigma_inst, lines, cog
    )
    whole = jnp.floor(pixel_shift)
    return jax.vmap(_render_one, in_axes=(0, 0, 0, None, None))(
        coefficients, pixel_shift - whole, whole.astype(jnp.int32), layout, n_rest
    )


def line_spectra(
    teff: np.ndarray,
    logg: np.ndarray,
    fe_h: np.ndarray,
    abundance: np.ndarray,
    vmacro: np.ndarray,
    velocity: np.ndarray,
    pixels: np.ndarray,
    resolution: float,
    *,
    vmicro: np.ndarray | None = None,
    max_velocity: float = 0.0,
    chunk: int = 64,
) -> np.ndarray:
    """Noise-free, continuum-normalised line spectra, shape (stars, pixels), float32.

    Parameters
    ----------
    teff, logg, fe_h, vmacro, velocity : ndarray, shape (stars,)
        K, dex (cgs), dex, km/s, km/s (radial velocity; positive = redshift).
    abundance : ndarray, shape (stars, elements + 1)
        A(X) from :func:`solar_abundances`.
    pixels : ndarray of int, shape (pixels,)
        apStar pixel indices to return.
    resolution : float
        Spectral resolving power R = λ/Δλ(FWHM) at 16,000 Å; it varies by ±3 % across the band.
    vmicro : ndarray, shape (stars,), optional
        Microturbulence ξ, km/s; default (or NaN) ξ tied to logg by :func:`microturbulence`.
    max_velocity : float
        Cover shifts up to this |velocity| (km/s) too, so that calls with different
        velocities share one pixel layout and one compilation.
    chunk : int
        Stars per compiled call (the last chunk is padded, so one shape compiles once).
    """
    lines = line_list()
    n = len(teff)
    shift = np.log10(1.0 + np.asarray(velocity, float) / C_KMS) / DLOG_LAMBDA  # pixels
    whole = np.floor(shift).astype(int)
    largest = max(np.abs(whole).max(initial=0), abs(max_velocity) / VELOCITY_PER_PIXEL)
    margin = int(32 * np.ceil((largest + 1) / 32))  # few distinct layouts
    first = int(pixels.min()) - margin
    stop = int(pixels.max()) + margin + 1
    layout = _layout(first, stop)
    wl = lines.wavelength[layout.lines]
    r_lambda = resolution * (1.0 + 0.03 * (wl - 16000.0) / 900.0)
    sigma_inst = jnp.asarray(C_KMS / (r_lambda * 2.35482 * VELOCITY_PER_PIXEL), jnp.float32)
    line_arrays = _line_arrays(lines)
    line_arrays = {k: v if k.startswith("sp_") else v[layout.lines] for k, v in line_arrays.items()}
    device_layout = {
        "line": jnp.asarray(layout.line),
        "pixel": jnp.asarray(layout.pixel),
        "offset": jnp.asarray(layout.offset),
        "taper": jnp.asarray(layout.taper),
        "out": jnp.asarray(np.asarray(pixels) - first, jnp.int32),
    }
    cog = jnp.asarray(curve_of_growth(), jnp.float32)
    size = chunk  # one batch shape per pixel layout: one compilation
    out = np.empty((n, len(pixels)), dtype=np.float32)
    xi = np.full(n, np.nan) if vmicro is None else vmicro
    columns = [np.asarray(c, np.float32) for c in (teff, logg, fe_h, vmacro, shift, xi)]
    abundance = np.asarray(abundance, np.float32)
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        pad = size - (hi - lo)
        batch = [np.pad(c[lo:hi], (0, pad), mode="edge") for c in columns]
        ab = np.pad(abundance[lo:hi], ((0, pad), (0, 0)), mode="edge")
        flux = _render(
            batch[0],
            batch[1],
            batch[2],
            ab,
            batch[5],
            batch[3],
            batch[4],
            sigma_inst,
            line_arrays,
            cog,
            device_layout,
            layout.n_pixels,
        )
        out[lo:hi] = np.asarray(flux)[: hi - lo]
    return out
