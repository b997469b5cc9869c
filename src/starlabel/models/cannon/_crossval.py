"""Cross-validation of the Cannon: k-fold and exact leave-one-out.

Every star's labels are predicted by a model that never saw that star: its label
scaling, coefficients, scatter, starting points and training-label range all come
from the other stars. k-fold runs the public ``fit``/``infer`` once per fold.
Leave-one-out — the validation of the Cannon papers — would mean N separate
trainings; here all of them run inside one compiled ``lax.map``, each fold being an
ordinary training with the held-out star's weight set to zero (so it is exact, not
an approximation), followed by the test step on that one star.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..._internal import fold_of, x64
from ...data import InferenceResult, SpectralDataset
from ._infer import assemble_result, start_pool
from ._model import Cannon
from ._test_step import LabelFit, LabelStepOptions, fit_labels, spectrum_stats, theta_pairs
from ._train import TrainingOptions, fit_block_impl
from ._vectorizer import PolynomialVectorizer

__all__ = ["CrossValidation", "cross_validate"]


@dataclass(frozen=True)
class CrossValidation:
    """Held-out predictions for every star of a cross-validated dataset.

    Attributes
    ----------
    result : InferenceResult
        Predicted labels, covariances, χ² and flags, in the dataset's star order.
    reference : ndarray, shape (stars, labels)
        The dataset's own labels (NaN where missing).
    fold : ndarray of int, shape (stars,)
        Fold each star was held out in (its own index for leave-one-out).
    method : str
        ``"k-fold"`` or ``"leave-one-out"``.
    """

    result: InferenceResult
    reference: np.ndarray
    fold: np.ndarray
    method: str

    @property
    def label_names(self) -> tuple[str, ...]:
        """Label names, in column order."""
        return self.result.label_names

    @property
    def predicted(self) -> np.ndarray:
        """Predicted labels, shape (stars, labels)."""
        return self.result.labels

    @property
    def residuals(self) -> np.ndarray:
        """Predicted minus reference, shape (stars, labels)."""
        return self.result.labels - self.reference

    def rmse(self) -> dict[str, float]:
        """Root-mean-square residual per label (stars with both values finite)."""
        res = self.residuals
        return {n: float(np.sqrt(np.nanmean(res[:, k] ** 2))) for k, n in enumerate(self.label_names)}

    def bias(self) -> dict[str, float]:
        """Mean residual per label."""
        res = self.residuals
        return {n: float(np.nanmean(res[:, k])) for k, n in enumerate(self.label_names)}


def _check_folds(folds: Any, n_stars: int) -> int | None:
    """Number of folds, or None for leave-one-out."""
    if isinstance(folds, str):
        if folds.lower() in ("loo", "leave-one-out"):
            return None
        raise ValueError(f"`folds` must be an integer ≥ 2 or 'loo', got {folds!r}.")
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or not 2 <= folds <= n_stars:
        raise ValueError(f"`folds` must be an integer in [2, {n_stars}] or 'loo', got {folds!r}.")
    return None if folds == n_stars else int(folds)


@x64
def cross_validate(
    model: Cannon,
    data: SpectralDataset,
    *,
    folds: Any = 5,
    seed: int = 0,
    star_weights: Any = None,
    n_starts: int = 3,
    max_iter: int = 100,
    tol: float = 1e-6,
    poor_fit: float = 3.0,
) -> CrossValidation:
    """Predict every star's labels with a Cannon trained without that star.

    Parameters
    ----------
    model : Cannon
        Configuration to train (order/terms, censoring, L1, …).
    data : SpectralDataset
        Spectra with the model's labels.
    folds : int or "loo"
        Number of folds (stars are assigned at random, reproducibly from ``seed``), or
        ``"loo"`` (equivalently ``folds = stars``) for exact leave-one-out.
    seed : int
        Seed of the fold assignment.
    star_weights : array-like, shape (stars,), optional
        Training weights, as in :meth:`Cannon.fit`.
    n_starts, max_iter, tol, poor_fit
        Test-step settings, as in :meth:`FittedCannon.infer`.

    Returns
    -------
    CrossValidation

    Raises
    ------
    TypeError, ValueError
        On a non-Cannon ``model``, bad ``folds`` or the errors of :meth:`Cannon.fit`.

    Examples
    --------
    >>> from starlabel.data import simulate_cannon
    >>> sim = simulate_cannon(n_stars=60, n_pixels=30, seed=2)
    >>> cv = cross_validate(Cannon(label_names=sim.dataset.label_names), sim.dataset, folds=3)
    >>> sorted(cv.rmse())
    ['fe_h', 'logg', 'teff']
    """
    if not isinstance(model, Cannon):
        raise TypeError(f"`model` must be a Cannon configuration, got {type(model).__name__}.")
    if not isinstance(data, SpectralDataset):
        raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
    k = _check_folds(folds, data.n_stars)
    reference = model._prepare(data, star_weights).labels
    options = {"n_starts": n_starts, "max_iter": max_iter, "tol": tol, "poor_fit": poor_fit}
    if k is None:
        result = _leave_one_out(model, data, star_weights, **options)
        return CrossValidation(result, reference, np.arange(data.n_stars), "leave-one-out")

    fold = fold_of(data.n_stars, k, seed)
    weights = np.ones(data.n_stars) if star_weights is None else np.asarray(star_weights, dtype=float)
    parts, order = [], []
    for m in range(k):
        held = np.flatnonzero(fold == m)
        kept = np.flatnonzero(fold != m)
        fitted = model.fit(data[kept], star_weights=weights[kept], calibrate=False)
        parts.append(fitted.infer(data[held], **options))
        order.append(held)
    stacked = parts[0].concatenate_with(parts[1:])
    inverse = np.argsort(np.concatenate(order))
    result = InferenceResult(
        ids=stacked.ids[inverse],
        label_names=stacked.label_names,
        labels=stacked.labels[inverse],
        cov=None if stacked.cov is None else stacked.cov[inverse],
        chi2=stacked.chi2[inverse],
        dof=stacked.dof[inverse],
        flags=stacked.flags[inverse],
        extra={key: np.asarray(v)[inverse] for key, v in stacked.extra.items()},
        meta={**stacked.meta, "cross_validation": f"{k}-fold"},
    )
    return CrossValidation(result, reference, fold, "k-fold")


# --------------------------------------------------------------------------- leave-one-out
class _FoldInputs(eqx.Module):
    """Per-fold arrays for one chunk of leave-one-out folds."""

    index: Int[Array, " folds"]
    shift: Float[Array, "folds labels"]
    scale: Float[Array, "folds labels"]
    starts: Float[Array, "folds starts labels"]
    box: Float[Array, "folds 2 labels"]
    lower: Float[Array, "folds labels"]
    upper: Float[Array, "folds labels"]


def _loo_chunk(
    folds: _FoldInputs,
    flux: Float[Array, "stars pixels"],
    ivar: Float[Array, "stars pixels"],
    labels: Float[Array, "stars labels"],
    weights: Float[Array, " stars"],
    active: Bool[Array, "pixels terms"],
    l1: Float[Array, " pixels"],
    vectorizer: PolynomialVectorizer,
    train_options: TrainingOptions,
    use_l1: bool,
    test_options: LabelStepOptions,
) -> LabelFit:
    free = jnp.ones(labels.shape[1], dtype=bool)

    def one(fold: _FoldInputs) -> LabelFit:
        design = vectorizer.design((labels - fold.shift[None, :]) / fold.scale[None, :])
        trained = fit_block_impl(
            flux, ivar, design, weights.at[fold.index].set(0.0), active, l1, train_options, use_l1
        )
        stats = spectrum_stats(
            flux[fold.index][None, :],
            ivar[fold.index][None, :],
            trained.theta,
            theta_pairs(trained.theta),
            trained.s2,
            trained.pixel_ok,
        )
        stats = jax.tree.map(lambda a: a[0], stats)
        return fit_labels(
            vectorizer, stats, fold.starts, jnp.zeros_like(free, dtype=flux.dtype), free,
            fold.lower, fold.upper, fold.box, test_options,
        )  # fmt: skip

    # lax.map, not vmap: each fold is a full training whose batched Cholesky must stay
    # an ordinary (pixels,)-batched call, and memory stays at one fold's worth.
    return jax.lax.map(one, folds)


loo_chunk = eqx.filter_jit(_loo_chunk)


def _fold_scalers(labels: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the used labels with each star left out in turn (closed form)."""
    filled = np.where(used[:, None], labels, 0.0)
    n = used.sum()
    counts = n - used.astype(float)
    mean = (filled.sum(axis=0) - filled) / counts[:, None]
    second = ((filled**2).sum(axis=0) - filled**2) / counts[:, None]
    scale = np.sqrt(np.maximum(second - mean**2, 0.0))
    return mean, np.where(scale > 0, scale, 1.0)


def _leave_one_out(
    model: Cannon,
    data: SpectralDataset,
    star_weights: Any,
    *,
    n_starts: int,
    max_iter: int,
    tol: float,
    poor_fit: float,
) -> InferenceResult:
    prep = model._prepare(data, star_weights)
    n_stars, n_labels = prep.labels.shape
    used = prep.used
    if used.sum() - 1 <= prep.vectorizer.n_terms:
        raise ValueError("leave-one-out needs more than (terms + 1) usable training stars.")
    labels = np.where(prep.complete[:, None], prep.labels, 0.0)
    shift, scale = _fold_scalers(labels, used)

    # Starting points: training stars along the main axis of the label distribution;
    # the held-out star is replaced by its neighbour along that axis, so it never
    # starts at its own reference label.
    full_scale = np.std(labels[used], axis=0)
    full_scale = np.where(full_scale > 0, full_scale, 1.0)
    pool = start_pool(labels[used] / full_scale, max(n_starts - 1, 1)) * full_scale
    used_index = np.flatnonzero(used)
    pool_index = used_index[np.argmin(np.sum((labels[used][None] - pool[:, None]) ** 2, axis=2), axis=1)]
    centred = (labels[used] - np.median(labels[used], axis=0)) / full_scale
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    rank_order = used_index[np.argsort(centred @ axis)]
    position = np.empty(n_stars, dtype=np.int64)
    position[rank_order] = np.arange(len(rank_order))
    neighbour = rank_order[np.clip(position[pool_index] + 1, 0, len(rank_order) - 1)]
    neighbour = np.where(
        neighbour == pool_index, rank_order[np.maximum(position[pool_index] - 1, 0)], neighbour
    )
    chosen = np.where(
        pool_index[None, :] == np.arange(n_stars)[:, None], neighbour[None, :], pool_index[None, :]
    )
    starts = labels[chosen]  # (stars, starts, labels), original units

    options = LabelStepOptions(max_iter=max_iter, tol=tol)
    use_l1 = bool(np.any(prep.l1 > 0))
    # A tuple display, not a comprehension, so its length (six arguments) is known statically.
    shared = (
        jnp.asarray(data.flux),
        jnp.asarray(data.ivar),
        jnp.asarray(labels),
        jnp.asarray(prep.weights),
        jnp.asarray(prep.active),
        jnp.asarray(prep.l1),
    )
    block = max(1, min(n_stars, (1 << 24) // max(n_stars * n_stars, 1)))
    diffs_sq = (labels[:, None, :] - labels[None, :, :]) ** 2  # (stars, stars, labels)
    pieces: list[dict[str, np.ndarray]] = []
    outside = np.zeros(n_stars, dtype=bool)
    for start in range(0, n_stars, block):
        index = np.arange(start, min(start + block, n_stars))
        sh, sc = shift[index], scale[index]
        scaled = (labels[None, :, :] - sh[:, None, :]) / sc[:, None, :]  # (folds, stars, labels)
        train = used[None, :] & (np.arange(n_stars)[None, :] != index[:, None])
        box = np.stack(
            [
                np.where(train[..., None], scaled, np.inf).min(axis=1),
                np.where(train[..., None], scaled, -np.inf).max(axis=1),
            ],
            axis=1,
        )
        width = np.maximum(box[:, 1] - box[:, 0], 1e-6)
        safety = np.stack([box[:, 0] - width, box[:, 1] + width], axis=1)
        fold_inputs = _FoldInputs(
            index=jnp.asarray(index),
            shift=jnp.asarray(sh),
            scale=jnp.asarray(sc),
            starts=jnp.asarray((starts[index] - sh[:, None, :]) / sc[:, None, :]),
            box=jnp.asarray(box),
            lower=jnp.asarray(safety[:, 0]),
            upper=jnp.asarray(safety[:, 1]),
        )
        out = loo_chunk(fold_inputs, *shared, prep.vectorizer, prep.options, use_l1, options)
        raw = {
            f: np.asarray(getattr(out, f))
            for f in ("x", "cov", "chi2", "n_good", "n_iter", "converged", "hit_bound")
        }
        pieces.append(raw)

        # OUTSIDE_TRAINING, per fold: outside the training range or farther from every
        # training star than the farthest nearest-neighbour pair within the fold.
        x = raw["x"]
        pair = np.sqrt(np.einsum("jkl,fl->fjk", diffs_sq, 1.0 / sc**2))  # (folds, stars, stars)
        excluded = ~train
        pair = np.where(excluded[:, :, None] | excluded[:, None, :], np.inf, pair)
        pair[:, np.arange(n_stars), np.arange(n_stars)] = np.inf
        radius = np.max(np.where(train, pair.min(axis=2), -np.inf), axis=1)
        to_train = np.sqrt(np.sum((scaled - x[:, None, :]) ** 2, axis=2))
        nearest = np.where(train, to_train, np.inf).min(axis=1)
        outside[index] = (
            np.any((x < box[:, 0]) | (x > box[:, 1]), axis=1)
            | np.any((x <= safety[:, 0] + 1e-9) | (x >= safety[:, 1] - 1e-9), axis=1)
            | (nearest > radius)
        )
    raw = {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}
    return assemble_result(
        raw,
        ids=data.ids,
        label_names=model.label_names,
        shift=shift,
        scale=scale,
        free=np.ones(n_labels, dtype=bool),
        outside=outside,
        n_terms=prep.vectorizer.n_terms,
        poor_fit=poor_fit,
        meta={"model": "cannon", "cross_validation": "leave-one-out", "n_starts": n_starts},
    )
