"""A line-list spectral simulator that none of starlabel's models can represent exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._dataset import SpectralDataset
from ._line_observation import _noise_pattern, _observe, _smooth_continuum, _stellar_continuum
from ._line_stars import _companions, _draw_population, _element_trends, _planck_ratio
from ._linelist import (
    ALPHA_ELEMENTS,
    APSTAR_SEGMENTS,
    ELEMENTS,
    LineList,
    apstar_wavelength,
    line_list,
    line_spectra,
    microturbulence,
    solar_abundances,
)
from ._simulate import snr_bounds

__all__ = [
    "LINE_LABELS",
    "LINE_TRUTH",
    "LINE_ELEMENTS",
    "POPULATIONS",
    "LineSimulation",
    "simulate_lines",
]

LINE_LABELS: tuple[str, ...] = ("teff", "logg", "fe_h", "alpha_fe", "vmacro")
"""Stellar labels every :func:`simulate_lines` star has: K, dex (cgs), dex, dex, km/s."""
LINE_ELEMENTS: tuple[str, ...] = tuple(e.lower() for e in ELEMENTS if e != "Fe")
"""Elements that can be free labels (``elements=("mg", "c")`` adds ``mg_fe``, ``c_fe``)."""
LINE_TRUTH: tuple[str, ...] = (
    "rv",
    "snr",
    "is_binary",
    "q",
    "flux_ratio",
    "delta_v",
    "teff_2",
    "logg_2",
    "vmacro_2",
)
"""Truth columns written beside the labels: primary radial velocity (km/s), S/N per pixel,
binary flag (0/1), mass ratio, H-band flux ratio secondary/primary, secondary minus primary
velocity (km/s), and the secondary's Teff, logg, vmacro (NaN for single stars)."""
POPULATIONS: tuple[str, ...] = ("giants", "dwarfs", "mixed")


@dataclass(frozen=True)
class LineSimulation:
    """Output of :func:`simulate_lines`.

    Attributes
    ----------
    dataset : SpectralDataset
        Noisy flux, its ``flux_err`` and mask (bad pixels: ``ivar = 0``), wavelength in
        Å, ids, and the true stellar labels :data:`LINE_LABELS` plus any ``<x>_fe``
        element labels (of the primary star, for binaries).
    true_flux : ndarray of float32, shape (stars, pixels)
        Noise-free observed flux (lines, radial velocity, companion and continuum).
    flux_err : ndarray of float32, shape (stars, pixels)
        The 1-σ errors the noise was drawn with (larger at sky-line pixels), ×100 at
        bad pixels; ``dataset`` gives bad pixels ``ivar = 0`` instead.
    continuum : ndarray of float32, shape (stars, pixels)
        The multiplicative continuum in ``true_flux``: ``1 + δ`` (a smooth normalisation
        residual) by default, the stellar-and-instrument continuum with ``keep_continuum``.
    rv : ndarray, shape (stars,)
        Radial velocity of the (primary) star, km/s.
    snr : ndarray, shape (stars,)
        S/N per pixel at the continuum.
    is_binary : ndarray of bool, shape (stars,)
    q, flux_ratio, delta_v : ndarray, shape (stars,)
        Mass ratio M₂/M₁, H-band (16,000 Å) flux ratio secondary/primary and velocity
        of the secondary minus the primary's (km/s); NaN for single stars.
    secondary_labels : ndarray, shape (stars, labels)
        The companion's labels in the dataset's label order (its own Teff, logg and
        vmacro, the primary's composition; NaN for single stars).
    lines : LineList
        The fixed line list the spectra were built from.
    """

    dataset: SpectralDataset
    true_flux: np.ndarray
    flux_err: np.ndarray
    continuum: np.ndarray
    rv: np.ndarray
    snr: np.ndarray
    is_binary: np.ndarray
    q: np.ndarray
    flux_ratio: np.ndarray
    delta_v: np.ndarray
    secondary_labels: np.ndarray
    lines: LineList

    @property
    def truth(self) -> dict[str, np.ndarray]:
        """The :data:`LINE_TRUTH` columns by name, each shape (stars,), as written to files."""
        secondary = {
            f"{name}_2": self.secondary_labels[:, LINE_LABELS.index(name)]
            for name in ("teff", "logg", "vmacro")
        }
        return {
            "rv": self.rv,
            "snr": self.snr,
            "is_binary": self.is_binary.astype(float),
            "q": self.q,
            "flux_ratio": self.flux_ratio,
            "delta_v": self.delta_v,
            **secondary,
        }

    def element_windows(self, half_width: float = 3.0) -> dict[str, list[tuple[float, float]]]:
        """Censoring windows of the free element labels: where each element has lines.

        The simulator's analogue of ASPCAP's per-element windows (whose wavelengths
        are those of real lines, not of this line list): for each ``<x>_fe`` label, the
        intervals ``±half_width`` pixels around every line the element takes part in
        (its atoms, and molecules containing it: CO and CN for C, CN for N, OH and CO
        for O). Pass the result as ``Cannon(censor=...)``.

        Parameters
        ----------
        half_width : float
            Half-width of each window in apStar pixels (3 ≈ the line FWHM at R = 22,500).

        Returns
        -------
        dict of str to list of (start, end)
            ``{<x>_fe: [(start_Å, end_Å), ...]}``, one interval per line, sorted.
        """
        ds = self.dataset
        lines = self.lines
        names = [e.lower() for e in ELEMENTS]
        out = {}
        for label in ds.label_names:
            if not label.endswith("_fe") or label[:-3] not in names:
                continue
            k = names.index(label[:-3])
            pixel = np.sort(lines.pixel[(lines.element == k) | (lines.element2 == k)])
            low, high = apstar_wavelength(pixel - half_width), apstar_wavelength(pixel + half_width)
            out[label] = [(float(a), float(b)) for a, b in zip(low, high, strict=True)]
        return out

    def truth_dataset(self) -> SpectralDataset:
        """The dataset with every :data:`LINE_TRUTH` column added as a label.

        This is what ``starlabel simulate lines`` writes: one array per label and per
        truth column, so ``read_dataset(path, labels=("teff", "logg"))`` picks labels.
        """
        ds = self.dataset
        if ds.labels is None:
            raise ValueError("LineSimulation.dataset has no labels; it was not made by simulate_lines.")
        extra = np.stack([self.truth[k] for k in LINE_TRUTH], axis=1)
        return ds.replace(
            labels=np.concatenate([ds.labels, extra], axis=1), label_names=ds.label_names + LINE_TRUTH
        )


_FIXABLE_RANGES = {
    "teff": (3000.0, 8000.0),
    "logg": (0.0, 5.5),
    "fe_h": (-3.0, 1.0),
    "alpha_fe": (-0.5, 1.0),
    "vmacro": (0.0, 30.0),
    "vmicro": (0.0, 10.0),
    "q": (0.05, 1.0),
}


def _fixed_values(
    labels: Mapping[str, float | Sequence[float] | np.ndarray] | None,
    n_stars: int,
    element_names: tuple[str, ...],
    free_vmicro: bool = False,
) -> dict[str, np.ndarray]:
    """The caller's fixed labels / truth values, each broadcast to (stars,)."""
    extra = ("vmicro",) if free_vmicro else ()
    allowed = LINE_LABELS + extra + tuple(f"{e}_fe" for e in element_names) + ("rv", "q", "delta_v")
    fixed = {}
    for name, value in (labels or {}).items():
        if name not in allowed:
            raise ValueError(
                f"labels has {name!r}, which cannot be fixed; fixable: {list(allowed)}"
                " (name an element in `elements` to fix its <x>_fe; free_vmicro=True to fix vmicro)."
            )
        try:
            fixed[name] = np.broadcast_to(np.asarray(value, dtype=float), (n_stars,)).copy()
        except ValueError:
            raise ValueError(
                f"labels[{name!r}] has shape {np.shape(value)}; give a scalar or one value per star ({n_stars})."
            ) from None
    for name, (low, high) in _FIXABLE_RANGES.items():
        values = fixed.get(name)
        if values is not None and not np.all(
            (values >= low) & (values <= high) | np.isnan(values) & (name == "q")
        ):
            raise ValueError(
                f"labels[{name!r}] must lie in [{low}, {high}] (where the simulator's physics holds),"
                f" got values from {np.nanmin(values)} to {np.nanmax(values)}."
            )
    if "delta_v" in fixed and "q" not in fixed:
        raise ValueError(
            "labels fixes 'delta_v' without 'q'; give the mass ratio q (NaN for single stars) too."
        )
    return fixed


# ----------------------------------------------------------------------------- public
def _output_pixels(n_pixels: int | None, first_pixel: int) -> np.ndarray:
    grid = np.concatenate([np.arange(lo, hi) for lo, hi in APSTAR_SEGMENTS])
    if not 0 <= first_pixel < len(grid):
        raise ValueError(f"first_pixel must be in [0, {len(grid)}), got {first_pixel}.")
    stop = len(grid) if n_pixels is None else first_pixel + n_pixels
    if n_pixels is not None and (n_pixels < 1 or stop > len(grid)):
        raise ValueError(
            f"n_pixels must be 1…{len(grid) - first_pixel} with first_pixel={first_pixel}"
            f" (the DR12 grid has {len(grid)} pixels), got {n_pixels}."
        )
    return grid[first_pixel:stop]


def simulate_lines(
    n_stars: int = 1000,
    *,
    population: str = "giants",
    elements: Sequence[str] = (),
    free_vmicro: bool = False,
    snr: float | tuple[float, float] = (60.0, 250.0),
    rv_scale: float = 0.0,
    binary_fraction: float = 0.0,
    n_pixels: int | None = None,
    first_pixel: int = 0,
    resolution: float = 22_500.0,
    bad_pixel_fraction: float = 0.01,
    continuum_error: float = 0.005,
    keep_continuum: bool = False,
    labels: Mapping[str, float | Sequence[float] | np.ndarray] | None = None,
    seed: int = 0,
) -> LineSimulation:
    r"""Simulate APOGEE-like H-band spectra from a line list with curve-of-growth physics.

    The spectra are *not* polynomial, latent-linear or neural in the labels, so they
    are the "truth our models cannot match": a model trained on them has a misfit that
    the reported flux errors do not contain.

    **Line list.** 792 lines of Fe I/II, C I, Na I, Mg I, Al I, Si I, S I, K I, Ca I,
    Ti I/II, V I, Mn I, Ni I and the molecules OH, CO (piled up redward of its
    second-overtone band heads) and CN, over apStar pixels 0–8575 (15,100–17,000 Å),
    drawn once from a fixed seed: wavelength, species, lower-level excitation
    potential χ, damping constant and log gf (set so that a red-clump reference star,
    4,750 K / 2.5 / solar, has line-centre optical depths log τ0 spread over −2.5…2).

    **Line strength.** For each line, τ0 ∝ gf · (N_X/N_H) · f_stage · 10^(−θχ) · λ /
    (κ_c Δ), θ = 5040/T_eff: A(X) = A☉(X) + [Fe/H] + [X/Fe] with [X/Fe] = [α/Fe] for O,
    Mg, Si, S, Ca, Ti (plus free element labels or Galactic trends); f_stage from the
    Saha equation at a photospheric electron pressure P_e(T_eff, logg, [Fe/H]) for
    atoms, or dissociation equilibrium ∝ P_gas 10^(θ D0) for molecules; the H⁻
    continuum opacity κ_c ∝ P_e θ^2.5 10^(0.754θ); Δ = √(2kT/m + ξ²) the Doppler width,
    with microturbulence ξ tied to logg (ξ = 2.478 − 0.325 logg km/s, clipped to
    0.6–2.5) or, with ``free_vmicro``, a free label ``vmicro`` scattered around that
    relation. ξ adds to the thermal speed in Δ, so it lowers the line-centre depth τ0
    (∝ 1/Δ) and, once a line saturates, raises its equivalent width W (∝ Δ √(ln τ0)):
    weak lines are insensitive to it, strong ones grow with it, which is how
    spectroscopists measure it. So neutral lines of ionised metals hardly
    depend on gravity, ions and molecules do, and everything saturates.

    **Curve of growth and profile.** The equivalent width comes from a tabulated Voigt
    curve of growth W(τ0, a) (damping a ∝ P_gas^0.7), linear for weak lines, ∝
    √(ln τ0) when saturated, ∝ √(a τ0) on the damping part. The observed line is a
    pseudo-Voigt of area W whose Gaussian part adds in quadrature the saturated
    intrinsic width, macroturbulence (σ = vmacro/√2) and the instrument (R(λ) =
    ``resolution`` ± 3 % across the band) and whose Lorentzian part matches the
    damping wings. Blends multiply: flux = Π (1 − depth_i), each line evaluated within
    ±14 pixels of its centre (tapered). At fixed W, a larger vmacro makes a line
    broader and shallower.

    **Observation.** A radial velocity (N(0, ``rv_scale``) km/s) shifts the spectrum by
    log10(1 + v/c)/6·10⁻⁶ pixels. A binary (fraction ``binary_fraction``) adds a
    main-sequence companion of mass ratio q ~ U(0.3, 1) with the same composition:
    for a dwarf primary Teff₂ = Teff₁ q^0.6, logg from g ∝ M/R² with R ∝ M^0.8; its
    H-band flux ratio is (R₂/R₁)² B_λ(T₂)/B_λ(T₁) and its velocity offset ±U(15, 80)
    km/s. The continuum-normalised flux is multiplied by ``1 + δ``, a smooth residual
    of normalisation (Legendre degree 3 per detector, coefficients ~ N(0,
    ``continuum_error``²)), or with ``keep_continuum`` by a Planck slope × detector
    throughput. Noise is Gaussian and photon-like, σ = √(F C C̄) / S/N · pattern, with
    F the line spectrum, C the continuum and C̄ its mean over the star's pixels (S/N ~
    U(``snr``) per star; a fixed pattern of ±5 % pixel response and ×2–6 at 3 %
    "sky-line" pixels); ``bad_pixel_fraction`` of each star's pixels are
    bad: masked, flux corrupted by 10σ-scale junk, error ×100 in ``flux_err``.

    **Labels.** ``population`` picks giants (red giant branch with metal-poor stars
    hotter, plus a red clump), dwarfs (main sequence 4,200–6,500 K and stars leaving
    it) or a 50/50 mix; [Fe/H] ~ N(−0.1, 0.3) clipped to [−1.5, 0.5]; [α/Fe] on a low-α
    sequence anticorrelated with [Fe/H] and a high-α metal-poor one; vmacro from
    Teff/logg relations with 15 % scatter; with ``free_vmicro``, vmicro = ξ(logg) ×
    exp(N(0, 0.2²)) clipped to 0.3–4 km/s.

    Parameters
    ----------
    n_stars : int
        Number of spectra.
    population : {"giants", "dwarfs", "mixed"}
        Which part of the HR diagram the labels are drawn from.
    elements : sequence of str
        Elements from :data:`LINE_ELEMENTS` whose [X/Fe] become free labels
        ``<x>_fe`` (their trend plus N(0, 0.08²) dex; α elements vary around [α/Fe]).
        Elements not named follow their trend exactly. All of :data:`LINE_ELEMENTS`
        with ``free_vmicro`` gives an APOGEE-like 18-label set (Teff, logg, [Fe/H],
        vmicro and 14 [X/Fe]; [α/Fe] then has no spectral effect of its own).
    free_vmicro : bool
        Make the microturbulence a free label ``vmicro`` (km/s, after
        :data:`LINE_LABELS`) instead of a function of logg.
    snr : float or (low, high)
        Per-pixel S/N at the continuum; a range draws each star's S/N uniformly.
    rv_scale : float
        Standard deviation of the radial velocities, km/s (0: rest frame).
    binary_fraction : float
        Fraction of stars with a companion, in [0, 1].
    n_pixels, first_pixel : int
        Return pixels ``first_pixel … first_pixel + n_pixels − 1`` of the APOGEE DR12
        7,214-pixel grid (λ = 10^(4.179 + 6·10⁻⁶ i) for apStar i in [322, 3242) ∪
        [3648, 6048) ∪ [6412, 8306)); default the whole grid.
    resolution : float
        Resolving power R at 16,000 Å.
    bad_pixel_fraction : float
        Fraction of each star's pixels that are bad, in [0, 1).
    continuum_error : float
        Size of the smooth continuum-normalisation residual δ (0: exactly normalised).
    keep_continuum : bool
        Multiply by the stellar and instrument continuum instead of ``1 + δ``.
    labels : mapping of str to float or array of shape (stars,), optional
        Values to fix instead of drawing them: any of :data:`LINE_LABELS`, the
        ``<x>_fe`` of ``elements``, ``rv`` (km/s), ``q`` (mass ratio; NaN = single star;
        fixing it decides which stars are binaries) and ``delta_v`` (km/s, with ``q``).
        Everything else is still drawn, so a fixed seed gives the same noise. Fixed
        values must lie where the physics holds: Teff 3,000–8,000 K, logg 0–5.5,
        [Fe/H] −3…1, [α/Fe] −0.5…1, vmacro 0–30 km/s, q 0.05–1.
    seed : int
        Seed; equal arguments and seed give identical data.

    Returns
    -------
    LineSimulation
        ``.dataset`` for training/inference, ``.truth_dataset()`` with the truth columns
        (what the CLI writes), noise-free flux and the line list.

    Raises
    ------
    ValueError
        For an unknown population or element, or an option out of range.

    Examples
    --------
    >>> sim = simulate_lines(200, n_pixels=500, seed=1)
    >>> sim.dataset.label_names
    ('teff', 'logg', 'fe_h', 'alpha_fe', 'vmacro')
    """
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {list(POPULATIONS)}, got {population!r}.")
    element_names = tuple(e.strip().lower() for e in elements)
    unknown = [e for e in element_names if e not in LINE_ELEMENTS]
    if unknown:
        raise ValueError(f"unknown element(s) {unknown} in elements; choose from {list(LINE_ELEMENTS)}.")
    if len(set(element_names)) != len(element_names):
        raise ValueError(f"elements has repeated names: {list(element_names)}.")
    if n_stars < 1:
        raise ValueError(f"n_stars must be ≥ 1, got {n_stars}.")
    low, high = snr_bounds(snr)
    if not 0 < low <= high:
        raise ValueError(f"snr must be positive with low ≤ high, got {snr}.")
    if not 0.0 <= binary_fraction <= 1.0:
        raise ValueError(f"binary_fraction must be in [0, 1], got {binary_fraction}.")
    if not 0.0 <= bad_pixel_fraction < 1.0:
        raise ValueError(f"bad_pixel_fraction must be in [0, 1), got {bad_pixel_fraction}.")
    if rv_scale < 0 or continuum_error < 0 or resolution <= 0:
        raise ValueError(
            f"rv_scale and continuum_error must be ≥ 0 and resolution > 0, got {rv_scale}, {continuum_error}, {resolution}."
        )
    pixels = _output_pixels(n_pixels, first_pixel)
    wavelength = apstar_wavelength(pixels)
    rng = np.random.default_rng(seed)

    stars = _draw_population(rng, n_stars, population)
    fixed = _fixed_values(labels, n_stars, element_names, free_vmicro)
    for name in LINE_LABELS:
        if name in fixed:
            stars[name] = fixed[name]
    vmicro = None
    if free_vmicro:  # drawn only when asked, so seeds without it give the same stars as before
        tied = np.asarray(microturbulence(stars["logg"]))
        vmicro = np.clip(tied * np.exp(rng.normal(0.0, 0.2, n_stars)), 0.3, 4.0)
        vmicro = fixed.get("vmicro", vmicro)
    if "logg" in fixed:
        stars["giant"] = stars["logg"] < 3.7
    x_fe = _element_trends(stars)
    element_labels = []
    for name in element_names:
        k = [e.lower() for e in ELEMENTS].index(name)
        alpha_term = stars["alpha_fe"] if ELEMENTS[k] in ALPHA_ELEMENTS else 0.0
        x_fe[:, k] += rng.normal(0.0, 0.08, n_stars)
        if f"{name}_fe" in fixed:
            x_fe[:, k] = fixed[f"{name}_fe"] - alpha_term
        element_labels.append(x_fe[:, k] + alpha_term)
    abundance = solar_abundances(stars["fe_h"], stars["alpha_fe"], x_fe)
    rv = rng.normal(0.0, rv_scale, n_stars) if rv_scale > 0 else np.zeros(n_stars)
    star_snr = rng.uniform(low, high, n_stars)

    binary = rng.uniform(size=n_stars) < binary_fraction
    q = np.where(binary, rng.uniform(0.3, 1.0, n_stars), np.nan)
    offset = rng.choice([-1.0, 1.0], n_stars) * rng.uniform(15.0, 80.0, n_stars)  # km/s
    delta_v = np.where(binary, offset, np.nan)
    rv = fixed.get("rv", rv)
    if "q" in fixed:
        q = fixed["q"]
        binary = np.isfinite(q)
        delta_v = np.where(binary, fixed.get("delta_v", offset), np.nan)

    # Primary and companion spectra share a layout covering both stars' velocities.
    fastest = float(np.nanmax(np.abs(np.concatenate([rv, rv + delta_v])), initial=0.0))
    flux = line_spectra(
        stars["teff"],
        stars["logg"],
        stars["fe_h"],
        abundance,
        stars["vmacro"],
        rv,
        pixels,
        resolution,
        vmicro=vmicro,
        max_velocity=fastest,
    )
    secondary = {k: np.full(n_stars, np.nan) for k in ("teff", "logg", "vmacro")}
    flux_ratio = np.full(n_stars, np.nan)
    if binary.any():
        idx = np.flatnonzero(binary)
        comp = _companions({k: v[idx] for k, v in stars.items()}, q[idx])
        second = line_spectra(
            comp["teff"],
            comp["logg"],
            stars["fe_h"][idx],
            abundance[idx],
            comp["vmacro"],
            rv[idx] + delta_v[idx],
            pixels,
            resolution,
            max_velocity=fastest,
        )
        ratio = comp["radius_ratio"][:, None] ** 2 * _planck_ratio(
            wavelength, comp["teff"], stars["teff"][idx]
        )
        flux[idx] = (flux[idx] + ratio * second) / (1.0 + ratio)
        for k in secondary:
            secondary[k][idx] = comp[k]
        at_16000 = _planck_ratio(np.array([16000.0]), comp["teff"], stars["teff"][idx])[:, 0]
        flux_ratio[idx] = comp["radius_ratio"] ** 2 * at_16000

    if keep_continuum:
        continuum = _stellar_continuum(wavelength, stars["teff"], pixels)
    else:
        continuum = _smooth_continuum(rng, pixels, n_stars, continuum_error)
    observed = _observe(rng, flux, continuum, star_snr, _noise_pattern(pixels), bad_pixel_fraction)

    extra = [vmicro] if vmicro is not None else []
    names = LINE_LABELS + ("vmicro",) * len(extra) + tuple(f"{e}_fe" for e in element_names)
    true_labels = np.stack([stars[k] for k in LINE_LABELS] + extra + element_labels, axis=1)
    second_labels = true_labels.copy()
    second_labels[:, 0], second_labels[:, 1], second_labels[:, 4] = (
        secondary["teff"],
        secondary["logg"],
        secondary["vmacro"],
    )
    if extra:  # the companion's microturbulence follows its own logg
        second_labels[:, len(LINE_LABELS)] = np.asarray(microturbulence(secondary["logg"]))
    second_labels[~binary] = np.nan
    dataset = SpectralDataset(
        observed.flux,
        ivar=observed.ivar,
        mask=observed.bad,
        copy=False,  # fresh aligned float64 arrays, adopted as they are
        wavelength=wavelength,
        labels=true_labels,
        label_names=names,
        ids=[f"lines{i:06d}" for i in range(n_stars)],
        meta={
            "simulator": "lines",
            "seed": seed,
            "population": population,
            "resolution": resolution,
            "keep_continuum": keep_continuum,
        },
    )
    return LineSimulation(
        dataset=dataset,
        true_flux=observed.true_flux,
        flux_err=observed.flux_err,
        continuum=continuum,
        rv=rv,
        snr=star_snr,
        is_binary=binary,
        q=q,
        flux_ratio=flux_ratio,
        delta_v=delta_v,
        secondary_labels=second_labels,
        lines=line_list(),
    )
