"""A simulated Gaia-like cluster field with known members, for tests and tutorials."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClusterSimulation", "simulate_cluster_field"]


@dataclass(frozen=True)
class ClusterSimulation:
    """Output of :func:`simulate_cluster_field`.

    Attributes
    ----------
    table : astropy.table.Table
        Gaia-archive-style columns: ``source_id``, ``ra``, ``dec`` (deg), ``pmra``,
        ``pmdec`` (mas/yr), ``parallax`` (mas), ``pmra_error``, ``pmdec_error``,
        ``parallax_error``, ``pmra_pmdec_corr``, ``parallax_pmra_corr``,
        ``parallax_pmdec_corr``. Rows listed in ``missing_rows`` have NaN astrometry.
    is_member : ndarray of bool, shape (stars,)
    true_astrometry : ndarray, shape (stars, 3)
        Error-free (pmra, pmdec, parallax).
    covariance : ndarray, shape (stars, 3, 3)
        The measurement covariances used for the noise.
    cluster_mean : ndarray, shape (3,)
    pm_dispersion, parallax_dispersion : float
    missing_rows : ndarray of int
    """

    table: Any
    is_member: np.ndarray
    true_astrometry: np.ndarray
    covariance: np.ndarray
    cluster_mean: np.ndarray
    pm_dispersion: float
    parallax_dispersion: float
    missing_rows: np.ndarray


def simulate_cluster_field(
    n_field: int = 3000,
    n_cluster: int = 300,
    *,
    cluster_mean: Sequence[float] = (-2.8, -1.1, 0.28),
    pm_dispersion: float = 0.05,
    parallax_dispersion: float = 0.01,
    error_range: tuple[float, float] = (0.02, 0.3),
    n_missing: int = 0,
    seed: int = 0,
) -> ClusterSimulation:
    """Simulate a cluster inside a two-component field, observed with correlated errors.

    The field is a 0.7/0.3 mix of a disc-like Gaussian (pm ≈ (−1.8, −0.7) mas/yr,
    widths ≈ (1.8, 1.2) mas/yr, ϖ ≈ 0.35 ± 0.25 mas) and a broad halo-like Gaussian
    (widths ≈ (6, 5) mas/yr, ϖ ≈ 0.2 ± 0.4 mas), uniform on a 0.6° × 0.6° patch. Cluster
    stars are Gaussian in astrometry and on the sky (radius 0.05°). Each star gets a
    proper-motion error σ ~ U(error_range), parallax error 0.8 σ, and a random
    positive-definite correlation matrix, as Gaia reports.

    Parameters
    ----------
    n_field, n_cluster : int
        Star counts.
    cluster_mean : (pmra, pmdec, parallax)
        mas/yr, mas/yr, mas.
    pm_dispersion, parallax_dispersion : float
        Intrinsic cluster spreads (mas/yr, mas).
    error_range : (float, float)
        Range of proper-motion 1-σ errors (mas/yr).
    n_missing : int
        Rows (drawn at random) whose astrometry is set to NaN, as for 2-parameter
        Gaia solutions.
    seed : int
        NumPy generator seed.

    Returns
    -------
    ClusterSimulation
    """
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    n = n_field + n_cluster
    mean = np.asarray(cluster_mean, dtype=float)
    is_member = np.zeros(n, dtype=bool)
    is_member[rng.choice(n, n_cluster, replace=False)] = True
    disc = rng.uniform(size=n) < 0.7
    disc_cov = np.array([[1.8**2, 0.8, 0.05], [0.8, 1.2**2, 0.03], [0.05, 0.03, 0.25**2]])
    halo_cov = np.diag([6.0**2, 5.0**2, 0.4**2])
    true = np.where(
        disc[:, None],
        rng.multivariate_normal([-1.8, -0.7, 0.35], disc_cov, n),
        rng.multivariate_normal([-2.5, -2.0, 0.2], halo_cov, n),
    )
    cluster_cov = np.diag([pm_dispersion**2, pm_dispersion**2, parallax_dispersion**2])
    true[is_member] = rng.multivariate_normal(mean, cluster_cov, n_cluster)

    sigma_pm = rng.uniform(*error_range, size=n)
    sigma = np.stack([sigma_pm, sigma_pm * rng.uniform(0.8, 1.2, n), 0.8 * sigma_pm], axis=1)
    # A random correlation matrix per star: normalise A Aᵀ with A = I + 0.35·N(0, 1).
    a = np.eye(3)[None] + 0.35 * rng.normal(size=(n, 3, 3))
    gram = a @ np.swapaxes(a, 1, 2)
    scale = 1.0 / np.sqrt(np.diagonal(gram, axis1=1, axis2=2))
    corr = gram * scale[:, :, None] * scale[:, None, :]
    cov = corr * sigma[:, :, None] * sigma[:, None, :]
    noise = np.einsum("nij,nj->ni", np.linalg.cholesky(cov), rng.normal(size=(n, 3)))
    observed = true + noise

    ra0, dec0 = 10.0, 40.0
    offsets = rng.uniform(-0.3, 0.3, size=(n, 2))
    offsets[is_member] = rng.normal(0.0, 0.05, size=(n_cluster, 2))
    ra = ra0 + offsets[:, 0] / np.cos(np.deg2rad(dec0))
    dec = dec0 + offsets[:, 1]

    missing = np.sort(rng.choice(n, n_missing, replace=False)) if n_missing else np.zeros(0, dtype=int)
    table = Table()
    table["source_id"] = np.arange(1, n + 1, dtype=np.int64) * 1000 + 7
    table["ra"] = ra
    table["dec"] = dec
    columns = {
        "pmra": observed[:, 0],
        "pmdec": observed[:, 1],
        "parallax": observed[:, 2],
        "pmra_error": sigma[:, 0],
        "pmdec_error": sigma[:, 1],
        "parallax_error": sigma[:, 2],
        "pmra_pmdec_corr": corr[:, 0, 1],
        "parallax_pmra_corr": corr[:, 2, 0],
        "parallax_pmdec_corr": corr[:, 2, 1],
    }
    for name, values in columns.items():
        values = values.copy()
        values[missing] = np.nan
        table[name] = values
    return ClusterSimulation(
        table=table,
        is_member=is_member,
        true_astrometry=true,
        covariance=cov,
        cluster_mean=mean,
        pm_dispersion=float(pm_dispersion),
        parallax_dispersion=float(parallax_dispersion),
        missing_rows=missing,
    )
