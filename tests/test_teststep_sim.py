"""Smooth synthetic spectra with exact Doppler shifts, for the test-step 2.0 tests.

The Cannon simulator draws independent coefficients per pixel, so its spectra have no
continuous wavelength dependence and cannot be Doppler shifted. Here every absorption
line is a Gaussian in ln λ whose depth is a quadratic polynomial in the scaled labels,
so the flux is exactly quadratic in the labels at every wavelength (a quadratic Cannon
can learn it) and a shifted spectrum is the same function evaluated at ln λ − ln D(v).
Other test_teststep_* modules import :func:`simulate_smooth` from here.
"""

from __future__ import annotations

import numpy as np

from starlabel.data import SpectralDataset

C_KMS = 299_792.458
NAMES = ("teff", "logg", "fe_h")
PIVOT = np.array([4700.0, 2.5, -0.15])
SCALE = np.array([400.0, 0.6, 0.3])


def apogee_wavelength(n_pixels: int = 7214) -> np.ndarray:
    """The DR12 gap-removed APOGEE grid (7214 px) or its first ``n_pixels`` (Å)."""
    i = np.concatenate([np.arange(322, 3242), np.arange(3648, 6048), np.arange(6412, 8306)])
    return 10.0 ** (4.179 + 6e-6 * i[:n_pixels])


def draw_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    teff = rng.uniform(4000.0, 5300.0, n)
    logg = np.clip(2.5 + 0.0021 * (teff - 4700.0) + rng.normal(0.0, 0.25, n), 0.5, 3.8)
    fe_h = np.clip(rng.normal(-0.15, 0.3, n), -1.2, 0.45)
    return np.stack([teff, logg, fe_h], axis=1)


class LineList:
    """Random Gaussian lines (in ln λ) with quadratic label dependence of the depths."""

    def __init__(self, wavelength: np.ndarray, seed: int = 0, density: float = 0.12, width_px: float = 1.4):
        rng = np.random.default_rng(seed)
        log_wl = np.log(wavelength)
        step = np.median(np.diff(log_wl))
        n_lines = int(density * len(wavelength))
        self.centre = rng.uniform(log_wl[0], log_wl[-1], n_lines)
        self.sigma = width_px * step * rng.uniform(0.8, 1.3, n_lines)
        self.depth = rng.uniform(0.03, 0.35, n_lines)
        self.linear = rng.normal(0.0, 0.25, (n_lines, 3))
        self.quad = rng.normal(0.0, 0.04, (n_lines, 6))

    def depths(self, labels: np.ndarray) -> np.ndarray:
        x = (labels - PIVOT) / SCALE
        pairs = np.stack([x[:, i] * x[:, j] for i in range(3) for j in range(i, 3)], axis=1)
        return self.depth[None, :] * (1.0 + x @ self.linear.T + pairs @ self.quad.T)

    def flux(self, labels: np.ndarray, wavelength: np.ndarray, v: np.ndarray | float = 0.0) -> np.ndarray:
        """Noise-free flux (stars, pixels) at rest-frame labels, observed at velocity v (km/s)."""
        v = np.broadcast_to(np.asarray(v, dtype=float), (len(labels),))
        beta = v / C_KMS
        shift = 0.5 * np.log((1 + beta) / (1 - beta))  # ln D(v)
        log_wl = np.log(wavelength)[None, :] - shift[:, None]
        depths = self.depths(labels)
        out = np.ones((len(labels), len(wavelength)))
        # Each line only matters within ±6σ (≤ 12 pixels): add it to the pixels of its
        # window, shifted per star, with one scatter-add for all stars and lines.
        step = np.median(np.diff(np.log(wavelength)))
        half = int(np.ceil((6 * self.sigma.max() + np.max(np.abs(shift))) / step)) + 1
        centre_px = np.searchsorted(np.log(wavelength), self.centre)
        window = centre_px[:, None] + np.arange(-half, half + 1)[None, :]
        inside = (window >= 0) & (window < len(wavelength))
        window = np.clip(window, 0, len(wavelength) - 1)
        profile = np.exp(
            -0.5 * ((log_wl[:, window] - self.centre[None, :, None]) / self.sigma[None, :, None]) ** 2
        )  # (stars, lines, window)
        contribution = depths[:, :, None] * profile * inside[None]
        rows = np.broadcast_to(np.arange(len(labels))[:, None, None], contribution.shape)
        cols = np.broadcast_to(window[None], contribution.shape)
        np.subtract.at(out, (rows.ravel(), cols.ravel()), contribution.ravel())
        return out


def simulate_smooth(
    n_stars: int,
    *,
    n_pixels: int = 7214,
    snr: float = 100.0,
    v: np.ndarray | float = 0.0,
    labels: np.ndarray | None = None,
    seed: int = 0,
    lines_seed: int = 0,
) -> tuple[SpectralDataset, np.ndarray, LineList]:
    """Noisy smooth spectra on the APOGEE grid; returns (dataset, labels, line list)."""
    rng = np.random.default_rng(seed)
    wavelength = apogee_wavelength(n_pixels)
    lines = LineList(wavelength, seed=lines_seed)
    labels = draw_labels(rng, n_stars) if labels is None else labels
    flux = lines.flux(labels, wavelength, v)
    err = np.full_like(flux, 1.0 / snr)
    data = SpectralDataset(
        flux + rng.normal(size=flux.shape) * err,
        flux_err=err,
        wavelength=wavelength,
        labels=labels,
        label_names=NAMES,
        ids=[f"s{i:05d}" for i in range(n_stars)],
    )
    return data, labels, lines


def test_smooth_spectra_are_quadratic_in_labels(rng):
    wavelength = apogee_wavelength(400)
    lines = LineList(wavelength)
    base = np.array([[4600.0, 2.4, -0.2]]) + rng.normal(0.0, 1.0, (1, 3)) * [[50.0, 0.1, 0.05]]
    step = np.array([[50.0, 0.1, 0.05]])
    f = [lines.flux(base + k * step, wavelength)[0] for k in range(4)]
    third_difference = f[3] - 3 * f[2] + 3 * f[1] - f[0]
    assert np.max(np.abs(third_difference)) < 1e-12
    assert 0.0 < f[0].min() < 0.9 and f[0].max() <= 1.0


def test_shift_moves_lines_by_the_doppler_factor():
    wavelength = apogee_wavelength(2000)
    lines = LineList(wavelength)
    labels = np.array([[4700.0, 2.5, -0.15]])
    v = 41.4  # km/s: ln D / (6e-6 ln 10) = 10.0 pixels
    rest = lines.flux(labels, wavelength)[0]
    moved = lines.flux(labels, wavelength, v)[0]
    np.testing.assert_allclose(moved[10 + 200 : 1800], rest[200 : 1800 - 10], atol=2e-3)


def truth_spectrum(theta, pivot, scale, scatter, train_labels, names=NAMES):
    """A PolynomialSpectrum from known coefficients (no training), order 2."""
    import jax
    import jax.numpy as jnp

    from starlabel.models.cannon import PolynomialSpectrum, PolynomialVectorizer

    with jax.enable_x64(True):
        train = jnp.asarray(train_labels)
        return PolynomialSpectrum(
            tuple(names),
            PolynomialVectorizer.from_order(tuple(names), 2),
            jnp.asarray(pivot, dtype=jnp.float64),
            jnp.asarray(scale, dtype=jnp.float64),
            jnp.asarray(theta),
            jnp.asarray(np.asarray(scatter) ** 2),
            jnp.ones(np.shape(theta)[0], dtype=bool),
            train,
            jnp.stack([train.min(axis=0), train.max(axis=0)]),
        )


def line_list_theta(lines: LineList, wavelength: np.ndarray) -> np.ndarray:
    """Exact per-pixel coefficients (pixels, 10) of the smooth spectra in the quadratic label vector."""
    log_wl = np.log(wavelength)
    profile = np.exp(-0.5 * ((log_wl[:, None] - lines.centre[None, :]) / lines.sigma[None, :]) ** 2)
    weighted = profile * lines.depth[None, :]
    return np.concatenate(
        [1.0 - weighted.sum(axis=1, keepdims=True), -weighted @ lines.linear, -weighted @ lines.quad], axis=1
    )


def test_line_list_theta_reproduces_the_flux(rng):
    from starlabel.models.cannon import PolynomialSpectrum  # noqa: F401 - import check

    wavelength = apogee_wavelength(300)
    lines = LineList(wavelength)
    labels = draw_labels(rng, 4)
    model = truth_spectrum(line_list_theta(lines, wavelength), PIVOT, SCALE, np.zeros(300), labels)
    import jax

    with jax.enable_x64(True):
        predicted = np.asarray(jax.vmap(model.flux)(jax.numpy.asarray(labels)))
    np.testing.assert_allclose(predicted, lines.flux(labels, wavelength), atol=1e-10)


def template_model(template: np.ndarray, good: np.ndarray):
    """A one-label model made from one observed spectrum: ``1 + (1 + depth)(template − 1)``.

    Used to fit real visits as binaries of two copies of a template star (the label
    "depth" scales its lines; both components share it). Pixels not ``good`` are ignored.
    """
    import jax
    import jax.numpy as jnp

    from starlabel.models.cannon import PolynomialSpectrum, PolynomialVectorizer

    theta = np.stack([np.where(good, template, 1.0), np.where(good, template - 1.0, 0.0)], axis=1)
    with jax.enable_x64(True):
        return PolynomialSpectrum(
            ("depth",),
            PolynomialVectorizer.from_order(("depth",), 1),
            jnp.zeros(1),
            jnp.ones(1),
            jnp.asarray(theta),
            jnp.zeros(len(template)),
            jnp.asarray(good),
            jnp.array([[-0.5], [0.0], [0.5]]),
            jnp.array([[-0.5], [0.5]]),
        )
