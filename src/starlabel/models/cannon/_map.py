"""The default test step of a trained Cannon: multi-start MAP labels of every spectrum.

:func:`map_step` resolves the options against the model (bounds and frozen labels in
scaled units, starting points from the kept training labels), runs the batched
Levenberg–Marquardt of ``_test_step`` (or, for many labels, the quadratic residual
step of ``_quadratic_step``) over the spectra in fixed-size chunks, and assembles the
statistical (Fisher) result with its quality flags. The error calibration and the
other uncertainty modes are applied by :meth:`FittedCannon.infer
<starlabel.models.cannon.FittedCannon.infer>` on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from ...data import InferenceResult, SpectralDataset
from ._infer import (
    assemble_result,
    compile_test_step_in_background,
    resolve_bounds,
    resolve_frozen,
    run_test_step,
    start_pool,
)
from ._normal import pair_table
from ._quadratic_step import quadratic_form, run_quadratic_step, use_quadratic_step
from ._test_step import LabelStepOptions

if TYPE_CHECKING:
    from ._model import FittedCannon

__all__ = ["check_options", "map_step", "prepare_calibration_test_step"]


def map_step(
    fitted: FittedCannon,
    data: SpectralDataset,
    *,
    n_starts: int,
    bounds: Mapping[str, Any] | None,
    frozen: Mapping[str, Any] | None,
    chunk_size: int,
    max_iter: int,
    tol: float,
    poor_fit: float,
) -> InferenceResult:
    """Fisher-error MAP labels of ``data`` (stars, pixels) under ``fitted``, uncalibrated.

    The options are those of :meth:`FittedCannon.infer` (already validated there);
    ``meta["uncertainty"]`` is ``"fisher"``.
    """
    shift, scale = fitted._scale()
    space = fitted.label_space
    names = fitted.label_names
    lower, upper = resolve_bounds(bounds, names, shift, scale, space.safety_box)
    free, frozen_values = resolve_frozen(frozen, names, data.n_stars, shift, scale)
    train = np.asarray(space.train)
    pool = start_pool(train, n_starts - 1)
    if len(pool) == 0:
        pool = np.median(train, axis=0)[None, :]
    options = LabelStepOptions(max_iter=max_iter, tol=tol)
    if use_quadratic_step(fitted.vectorizer):  # many labels: see _quadratic_step
        starts = np.concatenate([np.zeros((1, len(names))), pool])[:n_starts]
        raw = run_quadratic_step(
            data.flux, data.ivar, frozen_values, quadratic_form(fitted.vectorizer, fitted.theta),
            fitted.s2, fitted.pixel_ok, starts, free, lower, upper, options, chunk_size,
        )  # fmt: skip
    else:
        # θθᵀ packed per pixel by numpy (the same products, bit for bit): the jitted
        # version is lowered anew in every process, which costs more than this.
        theta = np.asarray(fitted.theta)
        table = pair_table(theta.shape[1])
        pairs = jax.device_put(theta[:, table.row] * theta[:, table.col])
        arrays = (fitted.theta, pairs, fitted.s2, fitted.pixel_ok)
        raw = run_test_step(
            data.flux, data.ivar, frozen_values, arrays, pool, free, lower, upper,
            np.asarray(space.box), fitted.vectorizer, options, chunk_size,
        )  # fmt: skip
    return assemble_result(
        raw,
        ids=data.ids,
        label_names=names,
        shift=shift,
        scale=scale,
        free=free,
        outside=space.outside(raw["x"], free),
        box=np.asarray(space.box),
        n_terms=fitted.vectorizer.n_terms,
        poor_fit=poor_fit,
        meta={"model": "cannon", "n_starts": n_starts, "max_iter": max_iter, "uncertainty": "fisher"},
    )


def check_options(*, n_starts: int, chunk_size: int) -> None:
    """Raise on malformed test-step options."""
    if not (isinstance(n_starts, int) and n_starts >= 1):
        raise ValueError(f"`n_starts` must be an integer ≥ 1, got {n_starts!r}.")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")


def prepare_calibration_test_step(vectorizer: Any, n_pixels: int, infer_map: Any) -> None:
    """Compile, in the background, the test step a calibrating fit of ``vectorizer`` will run.

    With the default options of ``infer_map`` (:meth:`FittedCannon.infer_map`, those
    the error calibration uses on its held-out folds); nothing for the many-label
    residual step (its own program) or without the compilation cache. See
    :func:`._infer.compile_test_step_in_background`.
    """
    import inspect

    if use_quadratic_step(vectorizer):
        return
    defaults = {name: p.default for name, p in inspect.signature(infer_map).parameters.items()}
    with jax.enable_x64(True):  # as infer_map runs
        compile_test_step_in_background(
            vectorizer,
            n_pixels,
            n_starts=defaults["n_starts"],
            chunk_size=defaults["chunk_size"],
            options=LabelStepOptions(max_iter=defaults["max_iter"], tol=defaults["tol"]),
        )
