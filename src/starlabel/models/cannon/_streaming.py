"""Training from a dataset file larger than memory: per-pixel sufficient statistics over star blocks.

:meth:`Cannon.fit <starlabel.models.cannon.Cannon.fit>` holds every training spectrum in
memory (100 000 stars × 7214 pixels of float64 flux + ivar is 11.5 GB). Here the file
is read in blocks of ``rows_per_block`` stars, and each pass over it reduces the stars
to a few sums per pixel, so memory follows the block size and not the number of stars.

Every quantity the training of pixel λ needs is such a sum. At a trial scatter ``s²``,
with ``g_n = 1/(σ_n² + s²)`` (0 where ivar = 0), star weights ``w_n``, label vectors
``v_n`` and residuals ``r₀ = f − θ_ref·v`` about a reference ``θ_ref`` (the previous
pass's solution, so that the sums do not cancel), one pass accumulates, for k = 1, 2, 3,

    P_k = Σ_n w g^k v vᵀ (packed),   c_k = Σ_n w g^k r₀ v,   q_k = Σ_n w g^k r₀²,   W_k = Σ_n w g^k.

From these, exactly as in :mod:`._train`: ``A = P_1`` and ``θ = θ_ref + A⁻¹ c_1`` (the
weighted least-squares θ at this s²), ``Σ w g² r² = q_2 − 2δ·c_2 + δᵀP_2δ`` with
``δ = A⁻¹c_1``, and the leverage sum ``tr(A⁻¹P_2)``. The marginal likelihood's
stationarity condition (see :mod:`._train`) is the root of

    F(s²) = h / W_2,   h = Σ w g² r² + tr(A⁻¹ P_2) − W_1,

which is ``M(s²) − s²`` for the EM map ``M`` that :func:`._train.fit_pixels` iterates, so
both find the same fixed point. Instead of one pass per EM step we take Newton steps on
F, whose exact derivative needs the k = 3 sums:

    h' = −2 Σ w g³ r² + 2 uᵀA⁻¹u + tr((A⁻¹P_2)²) − 2 tr(A⁻¹P_3) + W_2,   u = Σ w g² r v,
    F' = h'/W_2 + 2 h W_3 / W_2².

F is nearly linear in s² (exactly ``mean r² − σ² − s²`` for homoscedastic noise), so
Newton converges in a few passes. It is safeguarded per pixel: a bracket of trial
points where F > 0 and F < 0 is kept, a step leaving it bisects, and where F' ≥ 0 the
EM step ``s² + F`` is taken instead; s² = 0 with F(0) ≤ 0 is the boundary maximum, as
in EM. A pixel stops when its step is below ``tol × (s² + typical σ²)``, the rule of
``fit``; that last step is taken without another pass, moving θ along
``dθ/ds² = −A⁻¹u``, so the returned θ is the solve at the returned s² up to second
order in a step that is already below ``tol`` (and s² itself is Newton-accurate).

Pixels with fewer usable stars than active terms, or a singular ``A``, get
``pixel_ok = False`` and the fallback of :mod:`._train`. L1 regularisation is not
supported: its θ step is not the least-squares solve this Newton derivative assumes.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..._errors import UnsupportedOptionError
from ...data import DATASET_SUFFIXES
from ...inference import pin_inactive
from ._normal import outer_pairs, unpack_pairs
from ._train import (
    TrainingOptions,
    _theta_step,
    theta_covariance,
    usable_terms,
    with_fallback,
)

if TYPE_CHECKING:
    from ._model import Cannon, FittedCannon

__all__ = ["StreamFit", "fit_stream", "fit_file"]

logger = logging.getLogger(__name__)

BlockReader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
"""``read(start, stop) -> (flux, ivar)`` for stars ``[start, stop)``, each (stars, pixels)."""


class _Sums(eqx.Module):
    """Per-pixel sums over the stars streamed so far, at one trial s² per pixel."""

    pairs: Float[Array, "powers pixels pairs"]  # Σ w g^k v vᵀ, packed, k = 1, 2, 3
    cross: Float[Array, "powers pixels terms"]  # Σ w g^k r₀ v
    square: Float[Array, "powers pixels"]  # Σ w g^k r₀²
    weight: Float[Array, "powers pixels"]  # Σ w g^k
    n_good: Int[Array, " pixels"]  # stars with ivar > 0 and w > 0
    data_weight: Float[Array, " pixels"]  # Σ w over those stars
    ivar_weight: Float[Array, " pixels"]  # Σ w ivar
    ivar_flux: Float[Array, " pixels"]  # Σ w ivar f


class _Search(eqx.Module):
    """Per-pixel state of the safeguarded Newton search between passes."""

    s2: Float[Array, " pixels"]  # trial s² of the next pass
    low: Float[Array, " pixels"]  # largest trial with F > 0
    high: Float[Array, " pixels"]  # smallest trial with F < 0
    theta_ref: Float[Array, "pixels terms"]  # centre of the next pass's residuals
    done: Bool[Array, " pixels"]
    theta: Float[Array, "pixels terms"]  # θ solved at the last trial s²
    solved_at: Float[Array, " pixels"]  # that trial s²
    ok: Bool[Array, " pixels"]
    change: Float[Array, ""]  # largest step of this pass / (s² + typical σ²)


class StreamFit(eqx.Module):
    """Result of :func:`fit_stream` (the arrays :func:`._train.fit_pixels` returns)."""

    theta: Float[Array, "pixels terms"]
    s2: Float[Array, " pixels"]
    pixel_ok: Bool[Array, " pixels"]
    n_pass: int = eqx.field(static=True)
    converged: bool = eqx.field(static=True)


def _zero_sums(n_pixels: int, n_terms: int) -> _Sums:
    n_pairs = n_terms * (n_terms + 1) // 2
    zeros = jnp.zeros
    return _Sums(
        pairs=zeros((3, n_pixels, n_pairs)),
        cross=zeros((3, n_pixels, n_terms)),
        square=zeros((3, n_pixels)),
        weight=zeros((3, n_pixels)),
        n_good=zeros(n_pixels, dtype=int),
        data_weight=zeros(n_pixels),
        ivar_weight=zeros(n_pixels),
        ivar_flux=zeros(n_pixels),
    )


@eqx.filter_jit
def _accumulate(
    sums: _Sums,
    flux: Float[Array, "stars pixels"],
    ivar: Float[Array, "stars pixels"],
    design: Float[Array, "stars terms"],
    star_weights: Float[Array, " stars"],
    s2: Float[Array, " pixels"],
    theta_ref: Float[Array, "pixels terms"],
) -> _Sums:
    """Add one block of stars to the sums (padding stars have ivar = w = 0)."""
    g = ivar / (1.0 + ivar * s2[None, :])
    residual = flux - design @ theta_ref.T
    pairs_t = outer_pairs(design).T
    ones = jnp.ones((1, design.shape[0]), dtype=flux.dtype)
    # Plain 2-D products per power k (pairsᵀ @ weights, a GEMM; sums over stars as
    # ones @ x, a GEMV): about 3x faster on CPU than one einsum over a stacked (3, stars,
    # pixels) array, which XLA transposes. The loop is three fixed steps, unrolled.
    pairs, cross, square, weight = [], [], [], []
    x = star_weights[:, None] * g
    for _ in range(3):
        weighted = x * residual
        pairs.append(pairs_t @ x)
        cross.append(design.T @ weighted)
        square.append(ones @ (weighted * residual))
        weight.append(ones @ x)
        x = x * g
    has_data = (ivar > 0) & (star_weights[:, None] > 0)
    return _Sums(
        pairs=sums.pairs + jnp.swapaxes(jnp.stack(pairs), 1, 2),
        cross=sums.cross + jnp.swapaxes(jnp.stack(cross), 1, 2),
        square=sums.square + jnp.concatenate(square),
        weight=sums.weight + jnp.concatenate(weight),
        n_good=sums.n_good + jnp.sum(has_data, axis=0),
        data_weight=sums.data_weight + jnp.where(has_data, star_weights[:, None], 0.0).sum(axis=0),
        ivar_weight=sums.ivar_weight + star_weights @ ivar,
        ivar_flux=sums.ivar_flux + star_weights @ (ivar * flux),
    )


def _quadratic(
    matrix: Float[Array, "pixels terms terms"], x: Float[Array, "pixels terms"]
) -> Float[Array, " pixels"]:
    return jnp.einsum("pt,ptu,pu->p", x, matrix, x)


@eqx.filter_jit
def _newton_update(
    search: _Search, sums: _Sums, active: Bool[Array, "pixels terms"], options: TrainingOptions
) -> _Search:
    """Solve θ at this pass's trial s², then take one safeguarded Newton step on F."""
    n_terms = active.shape[1]
    usable, active = usable_terms(sums.n_good, active)
    A, rhs = pin_inactive(unpack_pairs(sums.pairs[0], n_terms), sums.cross[0], active)
    delta, chol = _theta_step(A, rhs, None, rhs, options)  # no L1: the warm start is unused
    finite = jnp.all(jnp.isfinite(delta), axis=1)
    delta = jnp.where(finite[:, None], delta, 0.0)
    theta = search.theta_ref + delta
    both = active[:, :, None] & active[:, None, :]
    cov = theta_covariance(chol, both & finite[:, None, None])
    P2 = unpack_pairs(sums.pairs[1], n_terms)
    P3 = unpack_pairs(sums.pairs[2], n_terms)
    W1, W2, W3 = sums.weight[0], sums.weight[1], sums.weight[2]
    # Σ w g^k r² with r = r₀ − v·δ, from the sums about θ_ref.
    r2_g2 = sums.square[1] - 2.0 * jnp.sum(delta * sums.cross[1], axis=1) + _quadratic(P2, delta)
    r2_g3 = sums.square[2] - 2.0 * jnp.sum(delta * sums.cross[2], axis=1) + _quadratic(P3, delta)
    u = jnp.where(active, sums.cross[1] - jnp.einsum("ptu,pu->pt", P2, delta), 0.0)
    cov_P2 = cov @ P2
    h = r2_g2 + jnp.trace(cov_P2, axis1=1, axis2=2) - W1
    dh = (
        -2.0 * r2_g3
        + 2.0 * _quadratic(cov, u)
        + jnp.sum(cov_P2 * jnp.swapaxes(cov_P2, 1, 2), axis=(1, 2))
        - 2.0 * jnp.sum(cov * P3, axis=(1, 2))
        + W2
    )
    valid = usable & finite & (W2 > 0)
    safe_W2 = jnp.where(valid, W2, 1.0)
    F = jnp.where(valid, h / safe_W2, 0.0)
    dF = jnp.where(valid, dh / safe_W2 + 2.0 * h * W3 / safe_W2**2, -1.0)

    s2 = search.s2
    low = jnp.where(valid & (F > 0), jnp.maximum(search.low, s2), search.low)
    high = jnp.where(valid & (F < 0), jnp.minimum(search.high, s2), search.high)
    newton = s2 - F / jnp.where(dF < 0, dF, -1.0)
    proposal = jnp.maximum(jnp.where((dF < 0) & jnp.isfinite(newton), newton, s2 + F), 0.0)
    inside = (proposal >= low) & (proposal <= high)
    proposal = jnp.where(inside, proposal, 0.5 * (low + jnp.where(jnp.isfinite(high), high, 2.0 * s2)))
    var_typ = sums.data_weight / jnp.maximum(sums.ivar_weight, 1e-300)
    relative = jnp.where(valid & ~search.done, jnp.abs(proposal - s2) / (s2 + var_typ), 0.0)
    settled = relative <= options.tol

    # A settling pixel takes its last (tiny) step without another pass: θ moves along
    # dθ/ds² = −A⁻¹u, so the pair (θ, s²) stays consistent to second order in the step.
    final = valid & settled
    step = jnp.where(final, proposal - s2, 0.0)
    record = ~search.done
    done = search.done | ~valid | settled
    return _Search(
        s2=jnp.where(done, s2, proposal),
        low=low,
        high=high,
        theta_ref=jnp.where((record & finite)[:, None], theta, search.theta_ref),
        done=done,
        theta=jnp.where(
            record[:, None], theta - jnp.einsum("ptu,pu->pt", cov, u) * step[:, None], search.theta
        ),
        solved_at=jnp.where(record, s2 + step, search.solved_at),
        ok=jnp.where(record, valid, search.ok),
        change=jnp.max(relative),
    )


def fit_stream(
    read: BlockReader,
    n_stars: int,
    n_pixels: int,
    design: np.ndarray,
    star_weights: np.ndarray,
    active: np.ndarray,
    options: TrainingOptions,
    *,
    rows_per_block: int = 1024,
    progress: bool = False,
) -> StreamFit:
    """Train all pixels from star blocks, one pass over the stars per Newton step.

    Call inside ``jax.enable_x64(True)``. Numerically the same problem as
    :func:`._train.fit_pixels`; see the module docstring for the method.

    Parameters
    ----------
    read : callable
        ``read(start, stop) -> (flux, ivar)``, arrays of shape (stop − start, pixels).
    n_stars, n_pixels : int
        Sizes of the whole training set.
    design : array, shape (stars, terms)
        Label vectors of all stars (rows of stars left out may be anything finite).
    star_weights : array, shape (stars,)
        Non-negative log-likelihood multipliers (0 leaves a star out).
    active : bool array, shape (pixels, terms)
        Censoring: which terms may be non-zero at each pixel.
    options : TrainingOptions
        ``max_iter`` caps the passes; ``tol`` is the stopping rule of ``fit``.
    rows_per_block : int
        Stars per block; memory is about ``rows_per_block × pixels × 100`` bytes.
    progress : bool
        Draw a progress bar per pass on stderr.

    Returns
    -------
    StreamFit
    """
    from ..._internal._progress import Progress

    n_terms = design.shape[1]
    rows = int(rows_per_block)
    search = _Search(
        s2=jnp.zeros(n_pixels),
        low=jnp.zeros(n_pixels),
        high=jnp.full(n_pixels, jnp.inf, dtype=float),
        theta_ref=jnp.zeros((n_pixels, n_terms)),
        done=jnp.zeros(n_pixels, dtype=bool),
        theta=jnp.zeros((n_pixels, n_terms)),
        solved_at=jnp.zeros(n_pixels),
        ok=jnp.zeros(n_pixels, dtype=bool),
        change=jnp.array(jnp.inf, dtype=float),
    )
    active_j = jnp.asarray(active)
    sums = _zero_sums(n_pixels, n_terms)
    n_pass, converged = 0, False
    while n_pass < options.max_iter and not converged:
        n_pass += 1
        started = time.perf_counter()
        sums = _zero_sums(n_pixels, n_terms)
        with Progress(n_stars, enabled=progress, description=f"training pass {n_pass}") as bar:
            for start in range(0, n_stars, rows):
                stop = min(start + rows, n_stars)
                flux, ivar = read(start, stop)
                if flux.shape != (stop - start, n_pixels) or ivar.shape != flux.shape:
                    raise ValueError(
                        f"rows [{start}, {stop}) came back with flux {flux.shape} and ivar"
                        f" {ivar.shape}; expected ({stop - start}, {n_pixels})."
                    )
                # Pad the last block (ivar = w = 0) so every block has one compiled shape.
                pad = rows - (stop - start)
                sums = _accumulate(
                    sums,
                    jnp.asarray(np.pad(flux, ((0, pad), (0, 0))) if pad else flux, dtype=float),
                    jnp.asarray(np.pad(ivar, ((0, pad), (0, 0))) if pad else ivar, dtype=float),
                    jnp.asarray(np.pad(design[start:stop], ((0, pad), (0, 0)))),
                    jnp.asarray(np.pad(star_weights[start:stop], (0, pad))),
                    search.s2,
                    search.theta_ref,
                )
                bar.advance(stop - start)
        search = _newton_update(search, sums, active_j, options)
        converged = bool(jnp.all(search.done))
        logger.info(
            "Cannon streamed training pass %d: %d of %d pixels settled, largest s² step %.2g (%.1f s).",
            n_pass,
            int(jnp.sum(search.done)),
            n_pixels,
            float(search.change),
            time.perf_counter() - started,
        )
    mean_flux = sums.ivar_flux / jnp.maximum(sums.ivar_weight, 1e-300)
    theta, s2 = with_fallback(search.theta, search.solved_at, search.ok, mean_flux)
    return StreamFit(theta=theta, s2=s2, pixel_ok=search.ok, n_pass=n_pass, converged=converged)


# ----------------------------------------------------------------------------- files
def _check_file(path: Path) -> None:
    if path.suffix.lower() not in DATASET_SUFFIXES:
        raise ValueError(
            f"cannot stream {str(path)!r}: suffix {path.suffix!r} is not one of"
            f" {sorted(DATASET_SUFFIXES)}; save the training set with numpy.savez (uncompressed .npz)"
            " or as HDF5 (.h5)."
        )
    if not path.exists():
        raise FileNotFoundError(f"training file {str(path)!r} does not exist.")
    if DATASET_SUFFIXES[path.suffix.lower()] != "npz":
        return
    try:
        with zipfile.ZipFile(path) as archive:
            compressed = [
                info.filename.removesuffix(".npy")
                for info in archive.infolist()
                if info.filename.removesuffix(".npy") in {"flux", "ivar", "flux_err", "mask"}
                and info.compress_type != zipfile.ZIP_STORED
            ]
    except zipfile.BadZipFile as error:
        raise ValueError(f"could not open {str(path)!r} as an .npz archive: {error}") from error
    if compressed:
        raise ValueError(
            f"{str(path)!r} stores {compressed} compressed (numpy.savez_compressed), which cannot"
            " be read by row ranges without decompressing the whole member on every pass; save"
            " with numpy.savez (uncompressed) or HDF5, or train in memory with Cannon.fit."
        )


def _file_labels(source: Any, label_names: tuple[str, ...], path: Path) -> np.ndarray:
    """All stars' label columns, without reading any spectra."""
    # label_columns leaves out names the file lacks, so check them here.
    names, columns = source.label_columns(label_names)
    missing = [n for n in label_names if n not in names]
    if missing:
        raise ValueError(
            f"{str(path)!r} has no training label(s) {missing}: each needs a 1-D array of one"
            f" value per star ({source.n_stars},) or a column of a 'labels' table named in"
            f" 'label_names'; the file declares labels {list(source.label_names())}. Write the"
            " training set with starlabel.data.write_dataset, or train on labels it has."
        )
    return np.stack([columns[names.index(n)] for n in label_names], axis=1)


def fit_file(
    model: Cannon,
    path: str | Path,
    *,
    star_weights: Any = None,
    rows_per_block: int = 1024,
    progress: bool = False,
) -> FittedCannon:
    """Implementation of :meth:`Cannon.fit_file` (call inside ``jax.enable_x64(True)``)."""
    from ...data import open_rows

    if not (isinstance(rows_per_block, int | np.integer) and rows_per_block >= 1):
        raise ValueError(f"`rows_per_block` must be a positive integer, got {rows_per_block!r}.")
    if np.any(np.asarray(model.l1, dtype=float) > 0):
        raise UnsupportedOptionError(
            "Cannon.fit_file does not support L1 regularisation (l1 > 0): the lasso θ step does"
            " not fit its streamed Newton scheme. Train in memory with"
            " Cannon.fit(starlabel.data.read_dataset(path)), or set l1=0."
        )
    path = Path(path)
    _check_file(path)
    with open_rows(path) as source:
        n_stars, n_pixels = source.n_stars, source.n_pixels
        labels = _file_labels(source, model.label_names, path)
        wavelength = source.read(0, min(1, n_stars)).wavelength
        prep = model._prepare_labels(labels, n_pixels, wavelength, star_weights, repr(str(path)))
        scaler, scaled, design = prep.design()

        def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            block = source.read(start, stop)
            return block.flux, block.ivar

        fit = fit_stream(
            read, n_stars, n_pixels, design, prep.weights, prep.active, prep.options,
            rows_per_block=int(rows_per_block), progress=progress,
        )  # fmt: skip
    if not fit.converged:
        logger.warning(
            "Cannon.fit_file: scatter iterations hit max_iter=%d passes before tol=%g.",
            model.max_iter,
            model.tol,
        )
    info = {
        "em_iterations": fit.n_pass,
        "converged": fit.converged,
        "streamed_rows_per_block": int(rows_per_block),
    }
    return model._fitted(prep, scaler, scaled, (fit.theta, fit.s2, fit.pixel_ok), wavelength, info)
