"""Neural-network label regressor: spectrum → labels, the baseline for Cannon and Lux.

A multilayer perceptron (equinox) maps standardised flux to standardised labels and is
trained with optax AdamW on the mean squared error over known labels. Every epoch sees a fresh noisy copy of each training spectrum,
flux + N(0, flux_err²), so the network learns that pixels with large reported errors
carry less information; a held-out validation split picks the best epoch. Training
runs in float32 (the network does not need the precision); one jitted ``lax.scan``
covers all epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data import Flag, InferenceResult, ShiftScale, SpectralDataset
from ._calibration import ErrorCalibration, apply_calibration, calibrated_fit
from ._io import AbstractCalibratedModel
from .base import AbstractFittedModel, AbstractSpectralModel

__all__ = ["NNRegressor", "FittedNNRegressor"]

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}
_NOISE_CAP = 3.0
"""Augmentation noise is capped at this many training standard deviations per pixel, so
pixels with near-zero ivar (not masked, but useless) do not flood the input with noise."""
_RANGE_MARGIN = 0.1


def _as_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(
            f"`label_names` must be a tuple of names such as ('teff', 'logg'), not the string {value!r}."
        )
    return tuple(str(v) for v in value)


class _MLP(eqx.Module):
    """Dense layers of arbitrary widths with one named hidden activation."""

    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(self, sizes: tuple[int, ...], activation: str, key: PRNGKeyArray) -> None:
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.activation = activation

    def __call__(self, x: Float[Array, " pixels"]) -> Float[Array, " labels"]:
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


class NNRegressor(AbstractSpectralModel):
    """Configuration of the MLP label regressor (spectrum → labels).

    Parameters
    ----------
    label_names : tuple of str
        Labels to predict, in order.
    hidden : tuple of int
        Hidden layer widths (default ``(128, 64)``).
    epochs : int
        Training epochs (default 300); the epoch with the lowest validation error is kept.
    learning_rate : float
        AdamW step size (default 1e-3).
    batch_size : int
        Minibatch size (default 64; capped at the training-set size).
    augment : bool
        Draw fresh input noise N(0, flux_err²) every epoch (default True, the lab's "NN 2").
    validation_fraction : float
        Share of the training stars held out to select the best epoch (default 0.2).
    weight_decay : float
        AdamW decoupled weight decay (default 1e-4).
    activation : {"gelu", "relu", "tanh", "silu", "linear"}
        Hidden activation (default ``"gelu"``).
    n_mc : int
        Noise draws per star at inference for the label covariance (default 32).
    seed : int
        Seed for initialisation, the validation split, batches and noise.

    Examples
    --------
    >>> from starlabel.data import simulate_cannon
    >>> sim = simulate_cannon(n_stars=200, n_pixels=50, seed=0)
    >>> fitted = NNRegressor(("teff", "logg", "fe_h"), epochs=20).fit(sim.dataset)
    >>> fitted.infer(sim.dataset[:5]).labels.shape
    (5, 3)
    """

    label_names: tuple[str, ...] = eqx.field(static=True, converter=_as_names)
    hidden: tuple[int, ...] = eqx.field(default=(128, 64), static=True, converter=tuple)
    epochs: int = eqx.field(default=300, static=True)
    learning_rate: float = eqx.field(default=1e-3, static=True)
    batch_size: int = eqx.field(default=64, static=True)
    augment: bool = eqx.field(default=True, static=True)
    validation_fraction: float = eqx.field(default=0.2, static=True)
    weight_decay: float = eqx.field(default=1e-4, static=True)
    activation: str = eqx.field(default="gelu", static=True)
    n_mc: int = eqx.field(default=32, static=True)
    seed: int = eqx.field(default=0, static=True)

    def __check_init__(self) -> None:
        if not self.label_names or any(len(n) == 0 for n in self.label_names):
            raise ValueError(f"`label_names` must be a non-empty tuple of names, got {self.label_names!r}.")
        if not self.hidden or any(int(w) < 1 for w in self.hidden):
            raise ValueError(f"`hidden` must be positive layer widths such as (128, 64), got {self.hidden}.")
        if self.epochs < 1 or self.batch_size < 1 or self.n_mc < 2:
            raise ValueError(
                f"need epochs ≥ 1, batch_size ≥ 1, n_mc ≥ 2; got {self.epochs}, {self.batch_size}, {self.n_mc}."
            )
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"`validation_fraction` must be in (0, 1), got {self.validation_fraction}.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}.")

    def fit(self, train: SpectralDataset, *, calibrate: bool = True) -> FittedNNRegressor:
        """Train on ``train``; NaN labels are left out of the loss, masked pixels imputed.

        Parameters
        ----------
        train : SpectralDataset
            Training spectra with the labels ``label_names``.
        calibrate : bool
            Also learn the error calibration of :meth:`FittedNNRegressor.infer` by
            5-fold cross-validation on ``train`` (default True; see
            :class:`~starlabel.models.ErrorCalibration`): the noise-propagated spread
            misses the network's own error. False keeps the statistical errors and
            trains about five times faster.

        Returns
        -------
        FittedNNRegressor
            The network at the epoch with the lowest validation MSE, with both loss
            histories.

        Raises
        ------
        ValueError
            If ``train`` lacks the labels, has too few stars, or a label is all NaN.
        """
        if not isinstance(train, SpectralDataset):
            raise TypeError(f"`train` must be a SpectralDataset, got {type(train).__name__}.")
        if train.labels is None or not set(self.label_names) <= set(train.label_names):
            have = list(train.label_names) if train.labels is not None else "no labels"
            raise ValueError(
                f"the training set must carry the labels {list(self.label_names)} (it has {have})."
            )
        n_val = max(1, round(self.validation_fraction * train.n_stars))
        if train.n_stars - n_val < 2:
            raise ValueError(f"need at least 3 training stars for a validation split, got {train.n_stars}.")
        labels = np.asarray(train.select_labels(self.label_names).labels, dtype=np.float64)
        known = np.isfinite(labels)
        empty = [n for n, k in zip(self.label_names, known.sum(axis=0), strict=True) if k < 2]
        if empty:
            raise ValueError(f"labels {empty} have fewer than 2 known values in the training set.")

        observed = (train.ivar > 0) & ~train.mask
        flux_scaler = ShiftScale.fit(train.flux, weights=observed.astype(float), robust=False)
        label_scaler = ShiftScale.fit(labels, robust=False)
        x = np.asarray(flux_scaler.transform(np.where(observed, train.flux, np.asarray(flux_scaler.shift))))
        with np.errstate(divide="ignore"):
            err = np.where(observed, 1.0 / np.sqrt(np.where(observed, train.ivar, 1.0)), 0.0)
        x_err = np.minimum(err / np.asarray(flux_scaler.scale)[None, :], _NOISE_CAP)
        y = np.where(known, np.asarray(label_scaler.transform(np.where(known, labels, 0.0))), 0.0)

        rng = np.random.default_rng(self.seed)
        order = rng.permutation(train.n_stars)
        val, fit_rows = order[:n_val], order[n_val:]
        key_init, key_train = jax.random.split(jax.random.key(self.seed))
        sizes = (train.n_pixels, *map(int, self.hidden), len(self.label_names))
        mlp = _MLP(sizes, self.activation, key_init)
        batch = min(self.batch_size, len(fit_rows))
        optimiser = optax.adamw(self.learning_rate, weight_decay=self.weight_decay)

        def as32(a):
            return jnp.asarray(a, dtype=jnp.float32)

        best, train_hist, val_hist, best_epoch = _train(
            mlp,
            (as32(x[fit_rows]), as32(x_err[fit_rows]), as32(y[fit_rows]), jnp.asarray(known[fit_rows])),
            (as32(x[val]), as32(y[val]), jnp.asarray(known[val])),
            key_train,
            optimiser,
            self.epochs,
            batch,
            self.augment,
        )
        masked = np.where(known, labels, np.nan)
        fitted = FittedNNRegressor(
            label_names=self.label_names,
            mlp=best,
            flux_scaler=flux_scaler,
            label_scaler=label_scaler,
            label_range=jnp.asarray(np.stack([np.nanmin(masked, axis=0), np.nanmax(masked, axis=0)])),
            train_loss=train_hist,
            val_loss=val_hist,
            best_epoch=best_epoch,
            n_mc=self.n_mc,
        )
        if not calibrate:
            return fitted
        return calibrated_fit(fitted, train, lambda rows: self.fit(train[rows], calibrate=False))


def _masked_mse(model, x, y, known):
    pred = jax.vmap(model)(x)
    return jnp.sum(jnp.where(known, (pred - y) ** 2, 0.0)) / jnp.maximum(jnp.sum(known), 1)


@eqx.filter_jit
def _train(mlp, fit_data, val_data, key, optimiser, epochs: int, batch: int, augment: bool):
    x, x_err, y, known = fit_data
    x_val, y_val, known_val = val_data
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    n_batches = x.shape[0] // batch

    def loss_fn(p, xb, yb, kb):
        return _masked_mse(eqx.combine(p, static), xb, yb, kb)

    grad_fn = jax.value_and_grad(loss_fn)

    def epoch(carry, epoch_key):
        p, opt_state, best_p, best_val, best_epoch, index = carry
        perm_key, noise_key = jax.random.split(epoch_key)
        noisy = x + augment * x_err * jax.random.normal(noise_key, x.shape, dtype=x.dtype)
        rows = jax.random.permutation(perm_key, x.shape[0])[: n_batches * batch].reshape(n_batches, batch)

        def step(inner, idx):
            p, opt_state = inner
            value, grad = grad_fn(p, noisy[idx], y[idx], known[idx])
            updates, opt_state = optimiser.update(grad, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), value

        (p, opt_state), values = jax.lax.scan(step, (p, opt_state), rows)
        val = loss_fn(p, x_val, y_val, known_val)
        better = val < best_val
        best_p = jax.tree.map(lambda new, old: jnp.where(better, new, old), p, best_p)
        best_epoch = jnp.where(better, index, best_epoch)
        return (p, opt_state, best_p, jnp.minimum(val, best_val), best_epoch, index + 1), (
            jnp.mean(values),
            val,
        )

    carry = (params, optimiser.init(params), params, jnp.asarray(jnp.inf), jnp.asarray(0), jnp.asarray(0))
    carry, (train_hist, val_hist) = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
    return eqx.combine(carry[2], static), train_hist, val_hist, carry[4]


class FittedNNRegressor(AbstractFittedModel, AbstractCalibratedModel):
    """A trained MLP label regressor (see :class:`NNRegressor`).

    Attributes
    ----------
    mlp : the network, at its best validation epoch
    flux_scaler, label_scaler : ShiftScale
        Input and output standardisation.
    label_range : Float[Array, "2 labels"]
        Training label minimum and maximum, for OUTSIDE_TRAINING.
    train_loss, val_loss : Float[Array, " epochs"]
        Mean training (augmented) and validation MSE per epoch, standardised units.
    best_epoch : Int[Array, ""]
        The epoch whose weights were kept.
    calibration : ErrorCalibration, optional
        Error calibration of :meth:`infer`, learned by cross-validation at ``fit``
        time; None when trained with ``calibrate=False``.
    """

    kind: ClassVar[str] = "nn"
    label_names: tuple[str, ...] = eqx.field(static=True)
    mlp: _MLP
    flux_scaler: ShiftScale
    label_scaler: ShiftScale
    label_range: Float[Array, "2 labels"]
    train_loss: Float[Array, " epochs"]
    val_loss: Float[Array, " epochs"]
    best_epoch: Int[Array, ""]
    n_mc: int = eqx.field(static=True)
    calibration: ErrorCalibration | None = None

    def infer(
        self, data: SpectralDataset, *, n_mc: int | None = None, seed: int = 0, calibrate: bool = True
    ) -> InferenceResult:
        """Predict labels of every spectrum in ``data`` (flux only).

        The point estimate is the network's output for the observed flux. ``cov`` is the
        covariance of the outputs over ``n_mc`` noisy copies flux + N(0, flux_err²): it
        propagates the flux noise through the network but not the network's own error
        (compare the validation RMSE); it is never NaN. The network has no likelihood,
        so ``chi2`` and ``dof`` are NaN.

        Parameters
        ----------
        data : SpectralDataset
            Spectra on the training pixel grid; masked pixels are imputed with the
            training mean.
        n_mc : int, optional
            Noise draws (default: the model's ``n_mc``).
        seed : int
            Seed of the noise draws.
        calibrate : bool
            Apply the model's :attr:`calibration` (default True): ``cov`` becomes the
            calibrated total, which includes the network's own error, and the
            noise-propagated errors are kept in ``extra["<label>_err_stat"]``.

        Returns
        -------
        InferenceResult
            Flags: FEW_PIXELS (more than half the pixels masked), OUTSIDE_TRAINING.
        """
        if not isinstance(data, SpectralDataset):
            raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
        n_pixels = self.flux_scaler.shift.shape[0]
        if data.n_pixels != n_pixels:
            raise ValueError(
                f"`data` has {data.n_pixels} pixels but this network was trained on {n_pixels};"
                " put the spectra on the training pixel grid."
            )
        draws = self.n_mc if n_mc is None else int(n_mc)
        if draws < 2:
            raise ValueError(f"`n_mc` must be ≥ 2, got {draws}.")
        observed = (data.ivar > 0) & ~data.mask
        shift = np.asarray(self.flux_scaler.shift)[None, :]
        scale = np.asarray(self.flux_scaler.scale)[None, :]
        x = np.where(observed, (data.flux - shift) / scale, 0.0)
        with np.errstate(divide="ignore"):
            err = np.where(observed, 1.0 / np.sqrt(np.where(observed, data.ivar, 1.0)), 0.0)
        x_err = np.minimum(err / scale, _NOISE_CAP)
        mean, cov = _predict(
            self.mlp,
            jnp.asarray(x, dtype=jnp.float32),
            jnp.asarray(x_err, dtype=jnp.float32),
            jax.random.key(seed),
            draws,
        )
        label_scale = np.asarray(self.label_scaler.scale, dtype=np.float64)
        labels = np.asarray(mean, dtype=np.float64) * label_scale + np.asarray(self.label_scaler.shift)
        cov = np.asarray(cov, dtype=np.float64) * label_scale[:, None] * label_scale[None, :]

        flags = np.zeros(data.n_stars, dtype=np.int64)
        flags |= np.where(observed.mean(axis=1) < 0.5, int(Flag.FEW_PIXELS), 0)
        low, high = np.asarray(self.label_range, dtype=np.float64)
        margin = _RANGE_MARGIN * (high - low)
        outside = np.any((labels < (low - margin)[None, :]) | (labels > (high + margin)[None, :]), axis=1)
        flags |= np.where(outside, int(Flag.OUTSIDE_TRAINING), 0)
        nan = np.full(data.n_stars, np.nan)
        result = InferenceResult(
            ids=data.ids,
            label_names=self.label_names,
            labels=labels,
            cov=cov,
            chi2=nan,
            dof=nan,
            flags=flags,
            meta={"model": "nn", "n_mc": draws, "best_epoch": int(self.best_epoch)},
        )
        return apply_calibration(self.calibration, result, calibrate=calibrate)

    def config(self) -> dict[str, Any]:
        """JSON-able structure: layer sizes, activation, history length."""
        sizes = [self.mlp.layers[0].in_features] + [layer.out_features for layer in self.mlp.layers]
        return {
            "label_names": list(self.label_names),
            "sizes": sizes,
            "activation": self.mlp.activation,
            "epochs": int(self.train_loss.shape[0]),
            "n_mc": self.n_mc,
        }

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> FittedNNRegressor:
        """Placeholder-valued regressor with the structure in ``config``."""
        sizes = tuple(int(s) for s in config["sizes"])
        # Model files store float32 weights; build the skeleton in float32 to match.
        with jax.enable_x64(False):
            mlp = _MLP(sizes, config["activation"], jax.random.key(0))
        epochs = int(config["epochs"])
        return cls(
            label_names=tuple(config["label_names"]),
            mlp=mlp,
            flux_scaler=ShiftScale(jnp.zeros(sizes[0]), jnp.ones(sizes[0])),
            label_scaler=ShiftScale(jnp.zeros(sizes[-1]), jnp.ones(sizes[-1])),
            label_range=jnp.zeros((2, sizes[-1])),
            train_loss=jnp.zeros(epochs),
            val_loss=jnp.zeros(epochs),
            best_epoch=jnp.zeros((), dtype=int),
            n_mc=int(config["n_mc"]),
        )


@eqx.filter_jit
def _predict(mlp, x, x_err, key, draws: int):
    mean = jax.vmap(mlp)(x)
    noise = jax.random.normal(key, (draws, *x.shape), dtype=x.dtype)
    samples = jax.vmap(jax.vmap(mlp))(x[None] + x_err[None] * noise)
    centred = samples - jnp.mean(samples, axis=0, keepdims=True)
    cov = jnp.einsum("snk,snl->nkl", centred, centred) / (draws - 1)
    return mean, cov
