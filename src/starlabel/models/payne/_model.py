"""``Payne`` (configuration, training) and ``FittedPayne`` (test step, save/load)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..._internal import as_float_array, x64
from ...data import InferenceResult, SpectralDataset
from .._calibration import ErrorCalibration, apply_calibration, calibrated_fit
from .._flux_fit import label_result
from .._io import AbstractCalibratedModel
from .._posterior import refine_uncertainty, resolve_uncertainty
from .._strategies import AbstractUncertainty
from ..base import AbstractFittedFluxModel, AbstractSpectralModel
from ..nn import _as_names
from ._flux_model import PayneSpectrum
from ._network import ACTIVATIONS, PayneNetwork
from ._test_step import fit_payne_labels
from ._train import fit_scatter, train_network

__all__ = ["Payne", "FittedPayne"]

_MAX_KEPT_TRAIN = 1000
"""Training label vectors kept in the model for starting points."""


class Payne(AbstractSpectralModel):
    """The Payne (Ting et al. 2019): a neural network from labels to the whole spectrum.

    Train it on spectra with known labels: observed stars, or a synthetic grid (model
    spectra with their labels, ``flux_err`` 0 or tiny) to apply to observed spectra.
    The test step fits labels by χ² with the network's Jacobian, like the Cannon's.

    Parameters
    ----------
    label_names : tuple of str
        Labels, in order.
    hidden : tuple of int
        Hidden layer widths (default ``(300, 300)``).
    n_components : int
        Width K of the linear bottleneck before the pixels (default 32): the flux is a
        combination of K learned spectra, which makes the test step fast (see
        ``payne/_network.py`` for how many line-list spectra need). At least the number
        of labels.
    activation : {"silu", "leaky_relu", "sigmoid", "tanh"}
        Hidden activation (default ``"silu"``: smooth, so the Jacobian the test step
        uses is continuous in the labels).
    epochs : int
        Most training epochs (default 500; the step size decays over them); early
        stopping may end sooner.
    patience : int
        Epochs without a lower validation loss before stopping (default 100).
    learning_rate : float
        Peak Adam step size (default 3e-3), cosine-decayed over ``epochs``.
    batch_size : int
        Stars per Adam step (default 64).
    validation_fraction : float
        Share of stars held out for early stopping and the scatter fit (default 0.1).
    seed : int
        Initialisation, validation split and shuffling.

    Examples
    --------
    >>> from starlabel.data import simulate_lines
    >>> sim = simulate_lines(200, n_pixels=100, seed=0)
    >>> names = ("teff", "logg", "fe_h")
    >>> fitted = Payne(names, hidden=(32, 32), epochs=20).fit(sim.dataset, calibrate=False)
    >>> fitted.infer(sim.dataset[:3]).labels.shape
    (3, 3)
    """

    label_names: tuple[str, ...] = eqx.field(static=True, converter=_as_names)
    hidden: tuple[int, ...] = eqx.field(default=(300, 300), static=True, converter=tuple)
    n_components: int = eqx.field(default=32, static=True)
    activation: str = eqx.field(default="silu", static=True)
    epochs: int = eqx.field(default=500, static=True)
    patience: int = eqx.field(default=100, static=True)
    learning_rate: float = eqx.field(default=3e-3, static=True)
    batch_size: int = eqx.field(default=64, static=True)
    validation_fraction: float = eqx.field(default=0.1, static=True)
    seed: int = eqx.field(default=0, static=True)

    def __check_init__(self) -> None:
        if not self.label_names or any(len(n) == 0 for n in self.label_names):
            raise ValueError(f"`label_names` must be a non-empty tuple of names, got {self.label_names!r}.")
        if not self.hidden or any(not isinstance(w, int) or w < 1 for w in self.hidden):
            raise ValueError(
                f"`hidden` must be positive integer widths such as (300, 300), got {self.hidden}."
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}.")
        for name in ("n_components", "epochs", "patience", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer ≥ 1, got {value!r}.")
        if self.n_components < len(self.label_names):
            # The flux is E z + b with K components: with K < labels some label directions
            # leave z, hence the spectrum, unchanged (a singular Fisher matrix).
            raise ValueError(
                f"`n_components` ({self.n_components}) must be at least the number of labels"
                f" ({len(self.label_names)}): the network's spectra span K dimensions."
            )
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"`validation_fraction` must be in (0, 1), got {self.validation_fraction}.")

    def hyperparameters(self) -> dict[str, Any]:
        """JSON-able settings (stored in the fitted model to refit the same way)."""
        return {
            "hidden": list(self.hidden),
            "n_components": self.n_components,
            "activation": self.activation,
            "epochs": self.epochs,
            "patience": self.patience,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }

    def fit(self, train: SpectralDataset, *, calibrate: bool = True) -> FittedPayne:
        """Train the network and the per-pixel scatter on ``train``.

        Parameters
        ----------
        train : SpectralDataset
            Spectra with the labels ``label_names``; stars missing any of them (NaN) are
            left out. Masked pixels (``ivar = 0``) do not enter the loss.
        calibrate : bool
            Also learn the error calibration of :meth:`FittedPayne.infer` by 5-fold
            cross-validation on ``train`` (default True; the network is retrained on
            each fold, so training takes about six times longer). See
            :class:`~starlabel.models.ErrorCalibration`.

        Returns
        -------
        FittedPayne
            The network at its best validation epoch, with its loss histories.

        Raises
        ------
        ValueError
            If ``train`` lacks the labels, or has fewer than 10 stars with all of them.
        """
        if not isinstance(train, SpectralDataset):
            raise TypeError(f"`train` must be a SpectralDataset, got {type(train).__name__}.")
        if train.labels is None or not set(self.label_names) <= set(train.label_names):
            have = list(train.label_names) if train.labels is not None else "no labels"
            raise ValueError(
                f"the training set must carry the labels {list(self.label_names)} (it has {have})."
            )
        labels = np.asarray(train.select_labels(self.label_names).labels, dtype=np.float64)
        complete = np.all(np.isfinite(labels), axis=1)
        if complete.sum() < 10:
            raise ValueError(
                f"the Payne needs at least 10 training stars with all of {list(self.label_names)};"
                f" got {int(complete.sum())}."
            )
        rows = np.flatnonzero(complete)
        labels = labels[rows]
        flux = np.asarray(train.flux[rows], dtype=np.float64)
        ivar = np.asarray(train.ivar[rows], dtype=np.float64)
        observed = (ivar > 0) & ~np.asarray(train.mask[rows]) & np.isfinite(flux)
        flux = np.where(observed, flux, 1.0)
        low, high = labels.min(axis=0), labels.max(axis=0)
        if np.any(high <= low):
            constant = [n for n, lo, hi in zip(self.label_names, low, high, strict=True) if hi <= lo]
            raise ValueError(f"labels {constant} take one value in the training set; drop them.")
        x = (labels - low) / (high - low) - 0.5

        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(rows))
        n_val = max(2, round(self.validation_fraction * len(rows)))
        val, fit_rows = order[:n_val], order[n_val:]
        weight = observed.astype(np.float64)
        mean_flux = np.sum(flux * weight, axis=0) / np.maximum(weight.sum(axis=0), 1.0)
        key_init, key_train = jax.random.split(jax.random.key(self.seed))
        with jax.enable_x64(False):
            network = PayneNetwork(
                (len(self.label_names), *self.hidden, self.n_components, train.n_pixels),
                self.activation,
                key_init,
                output_bias=jnp.asarray(mean_flux, dtype=jnp.float32),
            )
            network, history = train_network(
                network,
                (x[fit_rows], flux[fit_rows], weight[fit_rows]),
                (x[val], flux[val], weight[val]),
                epochs=self.epochs,
                patience=self.patience,
                learning_rate=self.learning_rate,
                batch_size=self.batch_size,
                key=key_train,
            )
            network = network.orthonormalised()
            predicted = np.asarray(
                jax.vmap(network)(jnp.asarray(x[val], dtype=jnp.float32)), dtype=np.float64
            )
        with np.errstate(divide="ignore"):
            variance = np.where(observed[val], 1.0 / np.where(observed[val], ivar[val], 1.0), 0.0)
        s2 = fit_scatter(flux[val] - predicted, variance, observed[val])
        kept = labels if len(labels) <= _MAX_KEPT_TRAIN else labels[np.sort(order[:_MAX_KEPT_TRAIN])]
        with jax.enable_x64(True):
            fitted = FittedPayne(
                label_names=self.label_names,
                network=network,
                low=jnp.asarray(low),
                high=jnp.asarray(high),
                s2=jnp.asarray(s2),
                pixel_ok=jnp.asarray(observed.any(axis=0)),
                train_labels=jnp.asarray(kept),
                wavelength=None if train.wavelength is None else jnp.asarray(train.wavelength),
                train_loss=history.train_loss,
                val_loss=history.val_loss,
                best_epoch=history.best_epoch,
                hyperparameters=tuple(sorted((k, _freeze(v)) for k, v in self.hyperparameters().items())),
            )
        if not calibrate:
            return fitted
        return calibrated_fit(fitted, train, lambda r: self.fit(train[r], calibrate=False))


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class FittedPayne(AbstractFittedFluxModel, AbstractCalibratedModel):
    """A trained Payne (see :class:`Payne`).

    Attributes
    ----------
    label_names : tuple of str
    network : PayneNetwork
        Scaled labels → flux (float32), at the best validation epoch.
    low, high : Float[Array, " labels"]
        Training label range; the network sees ``(ℓ − low)/(high − low) − ½``.
    s2 : Float[Array, " pixels"]
        Per-pixel scatter variance (flux²), fitted to held-out residuals.
    pixel_ok : Bool[Array, " pixels"]
        Pixels observed in training (others are ignored by the test step).
    train_labels : Float[Array, "train labels"]
        Up to 1,000 training label vectors: the test step's starting points.
    wavelength : Float[Array, " pixels"], optional
        Training wavelengths, Å.
    train_loss, val_loss : Float[Array, " epochs"]
        Mean squared flux residual per epoch run (training minibatches; validation).
    best_epoch : int
        Epochs run when the kept weights were taken.
    hyperparameters : tuple of (str, value)
        The :class:`Payne` settings it was trained with.
    calibration : ErrorCalibration, optional
        Error calibration of :meth:`infer` learned by cross-validation at ``fit`` time.
    """

    kind: ClassVar[str] = "payne"
    label_names: tuple[str, ...] = eqx.field(static=True)
    network: PayneNetwork
    low: Float[Array, " labels"]
    high: Float[Array, " labels"]
    s2: Float[Array, " pixels"]
    pixel_ok: Bool[Array, " pixels"]
    train_labels: Float[Array, "train labels"]
    wavelength: Float[Array, " pixels"] | None
    train_loss: Float[Array, " epochs"]
    val_loss: Float[Array, " epochs"]
    best_epoch: int = eqx.field(static=True)
    hyperparameters: tuple[tuple[str, Any], ...] = eqx.field(static=True)
    calibration: ErrorCalibration | None = None

    @property
    def n_pixels(self) -> int:
        """Number of pixels."""
        return int(self.s2.shape[0])

    def flux_model(self) -> PayneSpectrum:
        """The labels → flux model the test step fits (network in float32, rest float64)."""
        with jax.enable_x64(True):
            return PayneSpectrum(
                self.label_names,
                self.network,
                jnp.asarray(self.low, dtype=jnp.float64),
                jnp.asarray(self.high, dtype=jnp.float64),
                jnp.asarray(self.s2, dtype=jnp.float64),
                jnp.asarray(self.pixel_ok),
                jnp.asarray(self.train_labels, dtype=jnp.float64),
            )

    def configuration(self) -> Payne:
        """The :class:`Payne` with the settings this model was trained with."""
        settings = dict(self.hyperparameters)
        settings["hidden"] = tuple(settings["hidden"])
        return Payne(self.label_names, **settings)

    @x64
    def predict_flux(self, labels: Any) -> np.ndarray:
        """Model flux (stars, pixels) at ``labels`` (stars, labels) or (labels,), own units."""
        array = as_float_array(labels, "labels")
        array = array[None, :] if array.ndim == 1 else array
        if array.ndim != 2 or array.shape[1] != len(self.label_names):
            raise ValueError(
                f"`labels` has shape {np.shape(labels)}; expected (stars, {len(self.label_names)})"
                f" with columns {list(self.label_names)}."
            )
        return np.asarray(jax.vmap(self.flux_model().flux)(jnp.asarray(array)))

    def log_likelihood(
        self, labels: Float[Array, " labels"], flux: Float[Array, " pixels"], ivar: Float[Array, " pixels"]
    ) -> Float[Array, ""]:
        """Gaussian log-likelihood of one spectrum at ``labels`` (variance σ² + s²); pure JAX."""
        return self.flux_model().log_likelihood(labels, flux, ivar)

    @x64
    def infer(
        self,
        data: SpectralDataset,
        *,
        n_templates: int = 32,
        n_starts: int = 1,
        max_iter: int = 50,
        chunk_size: int = 64,
        poor_fit: float = 3.0,
        uncertainty: str | AbstractUncertainty = "fisher",
        posterior_options: Mapping[str, Any] | None = None,
        calibrate: bool = True,
    ) -> InferenceResult:
        """Labels, covariances, χ² and flags for every spectrum in ``data``.

        The χ² (noise variance σ² + s²) is minimised by Levenberg–Marquardt with the
        network's Jacobian from the ``n_starts`` best of ``n_templates`` training label
        vectors, on each spectrum's χ² statistics in the network's bottleneck (exact;
        see ``payne/_test_step.py``).

        Parameters
        ----------
        data : SpectralDataset
            Spectra on the training pixel grid (labels, if any, are ignored).
        n_templates, n_starts, max_iter, chunk_size
            Starting points ranked, LM runs per spectrum, LM iteration cap, spectra per
            compiled batch.
        poor_fit : float
            Reduced χ² above which POOR_FIT is set.
        uncertainty : {"fisher", "laplace", "nuts"} or Fisher, Laplace, NUTS
            ``"fisher"`` (default): inverse Fisher matrix at the χ² minimum;
            ``"laplace"``/``"nuts"``: see :func:`starlabel.models.posterior_infer`.
        posterior_options : mapping, optional
            Keywords for :func:`~starlabel.models.posterior_infer`.
        calibrate : bool
            Apply the model's :attr:`calibration` to ``"fisher"`` errors (default True);
            the statistical errors are kept in ``extra["<label>_err_stat"]``.

        Raises
        ------
        ValueError
            On a different pixel count or wavelength grid, or bad options.
        """
        if not isinstance(data, SpectralDataset):
            raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
        if data.n_pixels != self.n_pixels:
            raise ValueError(
                f"`data` has {data.n_pixels} pixels but this Payne was trained on {self.n_pixels};"
                " resample the spectra onto the training grid."
            )
        if data.wavelength is not None and self.wavelength is not None:
            if not np.allclose(data.wavelength, np.asarray(self.wavelength), rtol=1e-9, atol=1e-6):
                raise ValueError(
                    "`data.wavelength` differs from the training wavelength grid; resample the"
                    " spectra onto the model's grid (FittedPayne.wavelength)."
                )
        uncertainty, posterior_options = resolve_uncertainty(uncertainty, posterior_options)
        spectrum = self.flux_model()
        fit = fit_payne_labels(
            spectrum,
            np.asarray(data.flux, dtype=np.float64),
            np.asarray(data.ivar, dtype=np.float64),
            n_templates=n_templates,
            n_starts=n_starts,
            n_iter=max_iter,
            chunk_size=chunk_size,
        )
        result = label_result(
            spectrum,
            data,
            fit,
            poor_fit=poor_fit,
            meta={"model": "payne", "n_starts": n_starts, "max_iter": max_iter, "uncertainty": "fisher"},
        )
        if uncertainty == "fisher":
            return apply_calibration(self.calibration, result, calibrate=calibrate)
        refined = refine_uncertainty(self, data, result, result.labels, uncertainty, posterior_options)
        why = f"uncertainty={uncertainty!r}; the calibration was learned on 'fisher'"
        return apply_calibration(self.calibration, refined, calibrate=calibrate, why_not=why)

    # ------------------------------------------------------------------ serialisation
    def config(self) -> dict[str, Any]:
        """JSON-able structure: labels, layer sizes, activation, history length, settings."""
        return {
            "label_names": list(self.label_names),
            "sizes": list(self.network.sizes),
            "activation": self.network.activation,
            "n_kept_train": int(self.train_labels.shape[0]),
            "has_wavelength": self.wavelength is not None,
            "n_epochs_run": int(self.train_loss.shape[0]),
            "best_epoch": self.best_epoch,
            "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in self.hyperparameters},
        }

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> FittedPayne:
        """A FittedPayne with the structure ``config`` describes (placeholder arrays)."""
        sizes = tuple(int(s) for s in config["sizes"])
        names = tuple(config["label_names"])
        n_labels, n_pixels, epochs = sizes[0], sizes[-1], int(config["n_epochs_run"])
        with jax.enable_x64(False):
            network = PayneNetwork(sizes, config["activation"], jax.random.key(0))
        zeros = np.zeros
        return cls(
            label_names=names,
            network=network,
            low=jnp.asarray(zeros(n_labels)),
            high=jnp.asarray(np.ones(n_labels)),
            s2=jnp.asarray(zeros(n_pixels)),
            pixel_ok=jnp.ones(n_pixels, dtype=bool),
            train_labels=jnp.asarray(zeros((int(config["n_kept_train"]), n_labels))),
            wavelength=jnp.asarray(np.linspace(1.0, 2.0, n_pixels)) if config["has_wavelength"] else None,
            train_loss=jnp.zeros(epochs),
            val_loss=jnp.zeros(epochs),
            best_epoch=int(config["best_epoch"]),
            hyperparameters=tuple(sorted((k, _freeze(v)) for k, v in config["hyperparameters"].items())),
        )
