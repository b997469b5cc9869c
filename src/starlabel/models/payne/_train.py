"""Training the Payne's network: optax Adam on minibatches, early stopping, learned scatter.

The loss is the mean squared flux residual over observed pixels (masked pixels weigh
nothing), in float32. Epochs run in jitted blocks of ``_BLOCK`` (one ``lax.scan``);
between blocks the host checks the validation loss and stops once it has not improved
for ``patience`` epochs, keeping the best weights. The learning rate follows a cosine
decay over the epoch budget, so long budgets end with small, stable steps.

After the network, each pixel's scatter ``s²`` is fitted by maximum likelihood to the
*validation* stars' residuals, ``r ~ N(0, σ² + s²)``: it is the network's own error,
which the training residuals underestimate.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ._network import PayneNetwork

__all__ = ["TrainHistory", "train_network", "fit_scatter"]

_BLOCK = 10
"""Epochs per compiled block between early-stopping checks."""


class TrainHistory(eqx.Module):
    """Losses per epoch run (mean squared flux residual) and the epoch kept."""

    train_loss: Float[Array, " epochs"]
    val_loss: Float[Array, " epochs"]
    best_epoch: int = eqx.field(static=True)


def _loss(params, static, x, y, w):
    net = eqx.combine(params, static)
    r = jax.vmap(net)(x) - y
    return jnp.sum(w * r * r) / jnp.maximum(jnp.sum(w), 1.0)


@eqx.filter_jit
def _block(params, static, opt_state, optimiser, data, val, key: PRNGKeyArray, batch: int, n_epochs: int):
    x, y, w = data
    n_batches = x.shape[0] // batch
    grad_fn = jax.value_and_grad(_loss)

    def epoch(carry, epoch_key):
        p, state = carry
        rows = jax.random.permutation(epoch_key, x.shape[0])[: n_batches * batch].reshape(n_batches, batch)

        def step(inner, idx):
            p, state = inner
            value, grad = grad_fn(p, static, x[idx], y[idx], w[idx])
            updates, state = optimiser.update(grad, state, p)
            return (optax.apply_updates(p, updates), state), value

        (p, state), values = jax.lax.scan(step, (p, state), rows)
        return (p, state), (jnp.mean(values), _loss(p, static, *val))

    (params, opt_state), (train_loss, val_loss) = jax.lax.scan(
        epoch, (params, opt_state), jax.random.split(key, n_epochs)
    )
    return params, opt_state, train_loss, val_loss


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float, steps: int) -> optax.GradientTransformation:
    """One optimiser object per setting, so that retrainings share the compiled loop.

    ``_block`` is compiled per optimiser identity (its functions are static): a fresh
    ``optax.adam`` per training (K-fold refits, a calibration) compiled it every time.
    """
    return optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))


def train_network(
    network: PayneNetwork,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    epochs: int,
    patience: int,
    learning_rate: float,
    batch_size: int,
    key: PRNGKeyArray,
) -> tuple[PayneNetwork, TrainHistory]:
    """Train ``network`` on ``data = (x, flux, weight)``; keep the best epoch on ``val``.

    Parameters
    ----------
    network : PayneNetwork
        Initial network (float32).
    data, val : tuple of arrays
        Scaled labels (stars, labels), flux (stars, pixels) and per-pixel loss weights
        (stars, pixels; 0 at masked pixels) of the training and validation stars.
    epochs : int
        Most epochs to run.
    patience : int
        Stop after this many epochs without a lower validation loss.
    learning_rate : float
        Peak Adam step (cosine decay to 1 % of it over ``epochs``).
    batch_size : int
        Stars per Adam step (capped at the training-set size).
    key : PRNGKeyArray
        Shuffling.
    """
    x, y, w = (jnp.asarray(a, dtype=jnp.float32) for a in data)
    val32 = tuple(jnp.asarray(a, dtype=jnp.float32) for a in val)
    batch = int(min(batch_size, x.shape[0]))
    steps = max(1, epochs * (x.shape[0] // batch))
    optimiser = _adam(float(learning_rate), int(steps))
    params, static = eqx.partition(network, eqx.is_inexact_array)
    opt_state = optimiser.init(params)
    best_params, best_val, best_epoch = params, np.inf, 0
    train_hist: list[np.ndarray] = []
    val_hist: list[np.ndarray] = []
    done = 0
    while done < epochs and done - best_epoch < patience + 1:
        n = min(_BLOCK, epochs - done)
        key, sub = jax.random.split(key)
        params, opt_state, tl, vl = _block(
            params, static, opt_state, optimiser, (x, y, w), val32, sub, batch, n
        )
        vl = np.asarray(vl)
        train_hist.append(np.asarray(tl))
        val_hist.append(vl)
        # Weights are kept at block ends only: the best block end is the best epoch kept.
        if np.isfinite(vl[-1]) and vl[-1] < best_val:
            best_params, best_val, best_epoch = params, float(vl[-1]), done + n
        done += n
    history = TrainHistory(
        jnp.asarray(np.concatenate(train_hist)), jnp.asarray(np.concatenate(val_hist)), int(best_epoch)
    )
    return eqx.combine(best_params, static), history


def fit_scatter(
    residual: np.ndarray, variance: np.ndarray, observed: np.ndarray, n_iter: int = 100
) -> np.ndarray:
    """Per-pixel ``s²`` maximising ``Σ ln N(r | 0, σ² + s²)`` over held-out stars.

    Parameters
    ----------
    residual, variance : ndarray, shape (stars, pixels)
        Flux residuals and reported noise variances σ².
    observed : bool ndarray, shape (stars, pixels)
        Pixels that count.
    n_iter : int
        Fixed-point iterations ``s² ← s² + Σ w²(r² − σ² − s²)/Σ w²`` (``w = 1/(σ²+s²)``),
        the score equation's weighted form.

    Returns
    -------
    ndarray, shape (pixels,), ≥ 0
    """
    r2 = np.where(observed, residual**2, 0.0)
    var = np.where(observed, variance, 1.0)
    count = observed.sum(axis=0)
    s2 = np.maximum(np.sum(r2 - np.where(observed, var, 0.0), axis=0) / np.maximum(count, 1), 0.0)
    for _ in range(n_iter):
        weight = np.where(observed, 1.0 / (var + s2[None, :]) ** 2, 0.0)
        update = np.sum(weight * (r2 - var - s2[None, :]), axis=0) / np.maximum(weight.sum(axis=0), 1e-300)
        s2 = np.maximum(s2 + update, 0.0)
    return np.where(count > 0, s2, 0.0)
