"""Running the test step over a dataset: options, chunking, starting points, flags.

The numerical core lives in ``_test_step``; this module prepares its inputs (scaled
bounds, frozen labels, starting points from the training labels), streams spectra
through it in fixed-size chunks (padded, so each chunk size compiles once and memory
stays bounded), and turns its raw output into an :class:`InferenceResult`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Bool, Float

from ..._internal import empty_aligned
from ..._internal._exported import compile_in_background, exported_call, exported_dir
from ..._internal._nearest import k_nearest
from ...data import Flag, InferenceResult
from .._sanity import unusable_widths
from ._test_step import LabelFit, LabelStepOptions, SpectrumStats, fit_labels, spectrum_stats
from ._vectorizer import PolynomialVectorizer

__all__ = [
    "LabelSpace",
    "start_pool",
    "resolve_bounds",
    "resolve_frozen",
    "run_test_step",
    "assemble_result",
    "compile_test_step_in_background",
]


class LabelSpace(eqx.Module):
    """What the training set says about plausible labels (all in scaled units).

    Attributes
    ----------
    box : array, shape (2, labels)
        Minimum and maximum training label.
    train : array, shape (train_stars, labels)
        (A subsample of) the training labels.
    nn_radius : float array, shape ()
        Largest distance from a training star to its nearest training neighbour.
    """

    box: Float[Array, "2 labels"]
    train: Float[Array, "train_stars labels"]
    nn_radius: Float[Array, ""]

    @property
    def safety_box(self) -> np.ndarray:
        """Hard limits for unbounded labels: the training range widened by its width.

        Applied on each side, so that an unconstrained polynomial cannot run off to infinity.
        """
        box = np.asarray(self.box)
        width = np.maximum(box[1] - box[0], 1e-6)
        return np.stack([box[0] - width, box[1] + width])

    def outside(self, x: np.ndarray, free: np.ndarray) -> np.ndarray:
        """Bool (stars,): labels outside the training-label distribution.

        True where a free label lies outside the training range or at the safety box, or
        the labels are farther from every training star than any training star is from
        its nearest neighbour.
        """
        box, safety = np.asarray(self.box), self.safety_box
        outside_box = np.any(free & ((x < box[0]) | (x > box[1])), axis=1)
        at_safety = np.any(free & ((x <= safety[0] + 1e-9) | (x >= safety[1] - 1e-9)), axis=1)
        far = nearest_distance(x, np.asarray(self.train)) > float(self.nn_radius)
        return outside_box | at_safety | far


def nearest_distance(points: np.ndarray, train: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each row of ``points`` to the nearest row of ``train``.

    :func:`~starlabel._internal._nearest.k_nearest` (no scipy import at these sizes). With
    ``exclude_self`` (``points`` is ``train``) each row's own zero distance is skipped: the
    second neighbour is taken.
    """
    if len(points) == 0:
        return np.empty(0)
    k = 2 if exclude_self else 1
    if len(train) < k:
        return np.full(len(points), np.inf)
    return k_nearest(train, points, k)[0][:, -1]


def start_pool(train: np.ndarray, n: int) -> np.ndarray:
    """``n`` training stars spread along the main axis of the training labels.

    Stars at the quantiles ``(i + ½)/n`` of the projection onto the first principal
    axis: real training points, so every start lies inside the label distribution
    (e.g. on the giant branch), covering it end to end.
    """
    if n <= 0:
        return np.zeros((0, train.shape[1]))
    centred = train - np.median(train, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = centred @ vt[0]
    targets = np.quantile(projection, (np.arange(n) + 0.5) / n)
    picks = np.argmin(np.abs(projection[None, :] - targets[:, None]), axis=1)
    return train[picks]


def resolve_bounds(
    bounds: Mapping[str, Any] | None,
    label_names: tuple[str, ...],
    shift: np.ndarray,
    scale: np.ndarray,
    safety_box: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """User bounds ``{label: (low, high)}`` (original units, None = open) → scaled arrays."""
    lower = np.full(len(label_names), -np.inf)
    upper = np.full(len(label_names), np.inf)
    for name, pair in (bounds or {}).items():
        if name not in label_names:
            raise ValueError(f"`bounds` names unknown label {name!r}; labels are {list(label_names)}.")
        try:
            low, high = pair
        except (TypeError, ValueError):
            raise ValueError(
                f"`bounds[{name!r}]` must be a (low, high) pair (None for open), got {pair!r}."
            ) from None
        k = label_names.index(name)
        lower[k] = -np.inf if low is None else float(low)
        upper[k] = np.inf if high is None else float(high)
        if not lower[k] < upper[k]:
            raise ValueError(f"`bounds[{name!r}]` needs low < high, got {pair!r}.")
    lower = np.maximum((lower - shift) / scale, safety_box[0])
    upper = np.minimum((upper - shift) / scale, safety_box[1])
    return lower, upper


def resolve_frozen(
    frozen: Mapping[str, Any] | None,
    label_names: tuple[str, ...],
    n_stars: int,
    shift: np.ndarray,
    scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``{label: value or (stars,) values}`` → free mask (labels,) and scaled values (stars, labels)."""
    free = np.ones(len(label_names), dtype=bool)
    values = np.zeros((n_stars, len(label_names)))
    for name, value in (frozen or {}).items():
        if name not in label_names:
            raise ValueError(f"`frozen` names unknown label {name!r}; labels are {list(label_names)}.")
        column = np.asarray(value, dtype=np.float64)
        if column.ndim == 0:
            column = np.full(n_stars, float(column))
        if column.shape != (n_stars,):
            raise ValueError(
                f"`frozen[{name!r}]` must be a number or one value per star ({n_stars},),"
                f" got shape {column.shape}."
            )
        if not np.all(np.isfinite(column)):
            raise ValueError(f"`frozen[{name!r}]` contains NaN or inf; give finite label values.")
        k = label_names.index(name)
        free[k] = False
        values[:, k] = (column - shift[k]) / scale[k]
    if not free.any():
        raise ValueError("every label is frozen; leave at least one label free to fit.")
    return free, values


def _fit_chunk(
    flux: Float[Array, "stars pixels"],
    ivar: Float[Array, "stars pixels"],
    frozen_values: Float[Array, "stars labels"],
    theta: Float[Array, "pixels terms"],
    pairs: Float[Array, "pixels pairs"],
    s2: Float[Array, " pixels"],
    pixel_ok: Bool[Array, " pixels"],
    starts: Float[Array, "starts labels"],
    free: Bool[Array, " labels"],
    lower: Float[Array, " labels"],
    upper: Float[Array, " labels"],
    box: Float[Array, "2 labels"],
    vectorizer: PolynomialVectorizer,
    options: LabelStepOptions,
) -> LabelFit:
    def one(stats: SpectrumStats, frozen_value: Array) -> LabelFit:
        return fit_labels(vectorizer, stats, starts, frozen_value, free, lower, upper, box, options)

    return jax.vmap(one)(spectrum_stats(flux, ivar, theta, pairs, s2, pixel_ok), frozen_values)


# The trace counter (no limit) lets tests prove a second call on the same shapes reuses
# the compiled program: eqx.debug.get_num_traces(fit_chunk).
fit_chunk = eqx.filter_jit(eqx.debug.assert_max_traces(_fit_chunk, max_traces=None))

_FIT_FIELDS = ("x", "cov", "chi2", "n_good", "n_iter", "converged", "hit_bound")


def _fit_chunk_fields(
    *arrays: Array, vectorizer: PolynomialVectorizer, options: LabelStepOptions
) -> tuple[Array, ...]:
    """:func:`_fit_chunk` of arrays only, returning :class:`LabelFit`'s fields as a tuple."""
    out = _fit_chunk(*arrays, vectorizer=vectorizer, options=options)
    return tuple(getattr(out, name) for name in _FIT_FIELDS)


def _call_fit_chunk(
    arrays: list[Any], vectorizer: PolynomialVectorizer, options: LabelStepOptions
) -> dict[str, Array]:
    """One compiled test-step call.

    With the compilation cache on (CLI, pipeline) the traced program is kept on disk,
    so a new process skips tracing it (about a second; see
    :mod:`starlabel._internal._exported`); otherwise the ordinary ``filter_jit``.
    """
    if exported_dir() is None:
        # `arrays`: fit_chunk's array arguments in order (a list, as exported_call takes).
        out = fit_chunk(*arrays, vectorizer, options)  # pyright: ignore[reportCallIssue]
        return {name: getattr(out, name) for name in _FIT_FIELDS}
    fn = functools.partial(_fit_chunk_fields, vectorizer=vectorizer, options=options)
    values = exported_call("cannon_test_step", fn, (vectorizer, options), arrays)
    return dict(zip(_FIT_FIELDS, values, strict=True))


def compile_test_step_in_background(
    vectorizer: PolynomialVectorizer,
    n_pixels: int,
    *,
    n_starts: int,
    chunk_size: int,
    options: LabelStepOptions,
) -> None:
    """Start compiling the test step a calibrating ``train`` will run, on another thread.

    The error calibration runs the default test step on the held-out stars of each fold
    (the program a later ``infer`` reuses). Compiling it (about 5 CPU s, the largest
    program of a cold ``train``) while the training itself runs takes it off the
    critical path on a machine with a second core. Only with the compilation cache on
    (the CLI); shapes as :func:`run_test_step` passes them (``n_starts - 1`` training
    stars as extra starts). Call under x64, as the test step runs.
    """
    f64 = np.dtype(np.float64) if jax.config.jax_enable_x64 else np.dtype(np.float32)  # pyright: ignore[reportAttributeAccessIssue]
    n_labels, n_terms = vectorizer.n_labels, vectorizer.n_terms
    shapes = [
        ((chunk_size, n_pixels), f64),  # flux
        ((chunk_size, n_pixels), f64),  # ivar
        ((chunk_size, n_labels), f64),  # frozen values
        ((n_pixels, n_terms), f64),  # theta
        ((n_pixels, n_terms * (n_terms + 1) // 2), f64),  # packed θθᵀ
        ((n_pixels,), f64),  # s2
        ((n_pixels,), np.dtype(bool)),  # pixel_ok
        ((max(n_starts - 1, 1), n_labels), f64),  # extra starts
        ((n_labels,), np.dtype(bool)),  # free
        ((n_labels,), f64),  # lower
        ((n_labels,), f64),  # upper
        ((2, n_labels), f64),  # box
    ]
    avals = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    fn = functools.partial(_fit_chunk_fields, vectorizer=vectorizer, options=options)
    compile_in_background("cannon_test_step", fn, (vectorizer, options), avals)


def chunk_length(n_stars: int, chunk_size: int) -> int:
    """Chunk length: ``chunk_size``, whatever the number of spectra.

    Every call runs in full chunks, so that the pipeline's short last chunk (1,200
    spectra: 1,024 + 176), the error calibration's held-out folds at training time and
    a later ``infer`` of any size all reuse one compiled program instead of compiling
    one per size (1–3 s each on a CPU, 5–20 s on a busy one; more than padding costs:
    a 512-spectrum chunk of 7,214 pixels takes ~0.05 s of CPU). ``n_stars`` is kept
    for the callers' sake.
    """
    del n_stars
    return int(chunk_size)


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    out = empty_aligned((size, *rows.shape[1:]), rows.dtype)
    out[: len(rows)] = rows
    out[len(rows) :] = 0
    return out


def run_test_step(
    flux: np.ndarray,
    ivar: np.ndarray,
    frozen_values: np.ndarray,
    model_arrays: tuple[Array, Array, Array, Array],
    starts: np.ndarray,
    free: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    box: np.ndarray,
    vectorizer: PolynomialVectorizer,
    options: LabelStepOptions,
    chunk_size: int,
) -> dict[str, np.ndarray]:
    """Fit every spectrum, ``chunk_size`` at a time; returns stacked numpy outputs."""
    n_stars = flux.shape[0]
    size = chunk_length(n_stars, chunk_size)
    theta, pairs, s2, pixel_ok = model_arrays
    # device_put, not jnp.asarray (a conversion program lowered per shape in every process).
    shared = [jax.device_put(np.asarray(a)) for a in (starts, free, lower, upper, box)]
    pieces: list[dict[str, np.ndarray]] = []
    for start in range(0, n_stars, size):
        stop = min(start + size, n_stars)
        pad = size - (stop - start)
        # Slices of a full chunk go to JAX as they are: a dataset's arrays are aligned
        # (see starlabel._internal._aligned), so on the CPU they are used in place.
        # Only the last, short chunk is copied, into a zero-padded aligned buffer.
        chunk = [
            a[start:stop] if pad == 0 else _padded(a[start:stop], size) for a in (flux, ivar, frozen_values)
        ]
        out = _call_fit_chunk([*chunk, theta, pairs, s2, pixel_ok, *shared], vectorizer, options)
        pieces.append({name: np.asarray(value)[: stop - start] for name, value in out.items()})
    return {name: np.concatenate([p[name] for p in pieces]) for name in _FIT_FIELDS}


def assemble_result(
    raw: dict[str, np.ndarray],
    *,
    ids: np.ndarray,
    label_names: tuple[str, ...],
    shift: np.ndarray,
    scale: np.ndarray,
    free: np.ndarray,
    outside: np.ndarray,
    n_terms: int,
    poor_fit: float,
    meta: Mapping[str, Any],
    box: np.ndarray | None = None,
) -> InferenceResult:
    """Unscale labels and covariances and set the quality flags.

    ``shift``/``scale`` are (labels,) or per star (stars, labels); ``outside`` (stars,)
    marks labels outside the training distribution (see :meth:`LabelSpace.outside`).
    ``box`` (2, labels), the training label range in scaled units, enables the
    UNCONSTRAINED flag (a free label's error wider than that range) and the check
    that a non-empty star's labels are finite.
    """
    x = raw["x"]
    n_free = int(np.sum(free))
    n_good = raw["n_good"].astype(np.int64)
    dof = n_good - n_free
    empty = n_good == 0
    labels = np.where(empty[:, None], np.nan, x * scale + shift)
    cov = raw["cov"] * (scale[..., :, None] * scale[..., None, :])
    diag = np.diagonal(cov, axis1=1, axis2=2)[:, free]
    bad_cov = ~np.all(np.isfinite(cov), axis=(1, 2)) | np.any(diag <= 0, axis=1)
    wide = np.zeros(len(x), dtype=bool)
    if box is not None:
        check = unusable_widths(x[:, free], raw["cov"][:, free][:, :, free], np.asarray(box)[:, free])
        bad_cov |= check.bad_covariance
        wide = check.wide
    cov = np.where(bad_cov[:, None, None], np.nan, cov)

    flags = np.zeros(len(x), dtype=np.int64)
    flags |= np.where(~raw["converged"], int(Flag.NOT_CONVERGED), 0)
    flags |= np.where(raw["hit_bound"], int(Flag.HIT_BOUND), 0)
    flags |= np.where(outside, int(Flag.OUTSIDE_TRAINING), 0)
    flags |= np.where(n_good <= n_terms, int(Flag.FEW_PIXELS), 0)
    flags |= np.where(bad_cov, int(Flag.BAD_COVARIANCE), 0)
    flags |= np.where(wide, int(Flag.UNCONSTRAINED), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rchi2 = np.where(dof > 0, raw["chi2"] / dof, np.nan)
    flags |= np.where(rchi2 > poor_fit, int(Flag.POOR_FIT), 0)
    return InferenceResult(
        ids=ids,
        label_names=label_names,
        labels=labels,
        cov=cov,
        chi2=np.where(empty, np.nan, raw["chi2"]),
        dof=dof.astype(float),
        flags=flags,
        extra={"n_iter": raw["n_iter"].astype(np.int64)},
        meta=dict(meta),
    )
