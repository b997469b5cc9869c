"""``Lux``: configuration of the latent-variable model and its training entry point."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._internal import x64
from ...data import SpectralDataset
from .._calibration import calibrated_fit
from ..base import AbstractSpectralModel
from ._em import fit_closed_form, supports_closed_form
from ._error_models import AbstractErrorModel, AbstractScatter, NoScatter, PixelScatter, ScalarScatter
from ._fitted import FittedLux, LuxFitInfo
from ._gradient import fit_gradient
from ._objective import DataBlock, LuxOutput, joint_objective, marginal_objective
from ._prepare import OutputData, fit_scaler, raw_outputs, scaled_block
from ._transforms import AbstractAffineTransform, AbstractTransform, AffineTransform, LinearTransform

__all__ = ["Lux"]

_SCATTER_CHOICES: dict[str, type[AbstractErrorModel]] = {
    "pixel": PixelScatter,
    "scalar": ScalarScatter,
    "none": NoScatter,
}
_TRANSFORM_CHOICES: dict[str, type[AbstractTransform]] = {
    "affine": AffineTransform,
    "linear": LinearTransform,
}
_SOLVERS = ("auto", "alternating", "lbfgs", "bfgs", "adam")
_OBJECTIVES = ("marginal", "map")


def _as_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(
            f"`label_names` must be a tuple of names such as ('teff', 'logg'), not the string"
            f" {value!r}; did you mean {tuple(value.split(','))!r}?"
        )
    return tuple(str(v) for v in value)


def _resolve(choice: Any, table: Mapping[str, type], what: str, base: type) -> Any:
    """The one place strings become transform / error-model objects."""
    if isinstance(choice, base):
        return choice
    if isinstance(choice, str) and choice in table:
        return table[choice]()
    raise ValueError(f"`{what}` must be one of {sorted(table)} or a {base.__name__}, got {choice!r}.")


class Lux(AbstractSpectralModel):
    """Lux: every star has latents z ~ N(0, I); labels, flux (and more) are transforms of z.

    Training fits the transforms, their error models (e.g. a learned per-pixel scatter
    added in quadrature to the reported flux errors) and the training latents. The test
    step fixes the parameters, fits each new star's latents from its flux alone, and
    predicts its labels, with Laplace uncertainties (:meth:`FittedLux.infer`).

    For affine transforms (the default) training is closed form: EM with the latents
    integrated out (``objective="marginal"``) or exact block-coordinate descent on the
    joint MAP objective (``objective="map"``, the Lux/pollux objective). Other
    transforms (:class:`PolynomialTransform`, :class:`MLPTransform`,
    :class:`FunctionTransform`) train by optimistix L-BFGS on joint MAP, with optax Adam
    as a fallback.

    Parameters
    ----------
    label_names : tuple of str
        Labels to model, in order (e.g. ``("teff", "logg", "m_h")``).
    latent_size : int
        Length L of each star's latent vector (default 8).
    scatter : {"pixel", "scalar", "none"} or AbstractErrorModel
        Extra flux scatter learned in quadrature: one per pixel (default), one for all
        pixels, or none (trust ``flux_err``, the tutorial's "model 1").
    label_scatter : {"auto", "pixel", "scalar", "none"} or AbstractErrorModel
        Extra label scatter. ``"auto"`` (default): one per label when the training set
        has no ``label_err``, none otherwise.
    flux_transform, label_transform : {"affine", "linear"} or AbstractTransform
        How flux and labels depend on the latents (default ``"affine"``).
    outputs : tuple of LuxOutput
        Further outputs (see :meth:`register_output`).
    objective : {"marginal", "map"}
        ``"marginal"`` (default; affine transforms only): latents integrated out, which
        estimates the scatter without the joint-MAP shrinkage. ``"map"``: joint MAP over
        latents and parameters, as in Lux.
    solver : {"auto", "alternating", "lbfgs", "bfgs", "adam"}
        ``"auto"``: closed-form alternating updates (EM for ``"marginal"``) when every
        transform is affine and every error model is a scatter, else L-BFGS.
    max_steps : int
        Iteration cap (default 2000; EM typically stops in 50–300).
    tol : float
        Closed form: stop when the RMS change of the predictions (scaled units) and the
        largest scatter change over one EM map fall below ``tol`` (default 1e-6). Gradient solvers: the
        relative tolerance on parameter and loss changes.
    learning_rate : float
        Adam step size (only for ``solver="adam"``).
    robust_scaling : bool
        Standardise outputs with median/MAD (True) or mean/std (False, default).
    seed : int
        Seed for initialising nonlinear transforms.

    Examples
    --------
    >>> from starlabel.data import simulate_linear_latent
    >>> sim = simulate_linear_latent(n_stars=256, n_pixels=32, seed=1)
    >>> fitted = Lux(("label_0", "label_1"), latent_size=8).fit(sim.dataset[:128])
    >>> result = fitted.infer(sim.dataset[128:])
    >>> result.labels.shape
    (128, 2)

    References
    ----------
    Horta, Price-Whelan, Hogg et al. (2025), "Lux: a generative, multi-output,
    latent-variable model for astronomical data with noisy labels".
    """

    label_names: tuple[str, ...] = eqx.field(static=True, converter=_as_names)
    latent_size: int = eqx.field(default=8, static=True)
    scatter: Any = "pixel"
    label_scatter: Any = "auto"
    flux_transform: Any = "affine"
    label_transform: Any = "affine"
    outputs: tuple[LuxOutput, ...] = ()
    # str, not Literal: tests check annotations at run time, and a bad value must reach
    # __check_init__'s ValueError (which lists the choices).
    objective: str = eqx.field(default="marginal", static=True)
    solver: str = eqx.field(default="auto", static=True)
    max_steps: int = eqx.field(default=2000, static=True)
    tol: float = eqx.field(default=1e-6, static=True)
    learning_rate: float = eqx.field(default=1e-2, static=True)
    robust_scaling: bool = eqx.field(default=False, static=True)
    seed: int = eqx.field(default=0, static=True)

    def __check_init__(self) -> None:
        if not self.label_names or len(set(self.label_names)) != len(self.label_names):
            raise ValueError(
                f"`label_names` must be a non-empty tuple of unique names such as ('teff', 'logg'),"
                f" got {self.label_names!r}."
            )
        if not isinstance(self.latent_size, int) or self.latent_size < 1:
            raise ValueError(f"`latent_size` must be a positive int, got {self.latent_size!r}.")
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"`objective` must be one of {_OBJECTIVES}, got {self.objective!r}.")
        if self.solver not in _SOLVERS:
            raise ValueError(f"`solver` must be one of {_SOLVERS}, got {self.solver!r}.")
        if self.max_steps < 1 or not self.tol > 0:
            raise ValueError(f"need max_steps ≥ 1 and tol > 0, got {self.max_steps}, {self.tol}.")
        _resolve(self.scatter, _SCATTER_CHOICES, "scatter", AbstractErrorModel)
        if self.label_scatter != "auto":
            _resolve(self.label_scatter, _SCATTER_CHOICES, "label_scatter", AbstractErrorModel)
        _resolve(self.flux_transform, _TRANSFORM_CHOICES, "flux_transform", AbstractTransform)
        _resolve(self.label_transform, _TRANSFORM_CHOICES, "label_transform", AbstractTransform)
        names = [o.name for o in self.outputs]
        clash = sorted({n for n in names if names.count(n) > 1 or n in ("labels", "flux")})
        if clash:
            raise ValueError(f"output names {clash} are taken; 'labels' and 'flux' are built in.")

    def register_output(
        self,
        name: str,
        transform: AbstractTransform,
        error_model: AbstractErrorModel | None = None,
    ) -> Lux:
        """Return a copy that also models the output ``name`` (e.g. photometry).

        Parameters
        ----------
        name : str
            Output name; its data come from ``fit(..., extra={name: OutputData(...)})``.
        transform : AbstractTransform
            E.g. ``AffineTransform()``.
        error_model : AbstractErrorModel, optional
            Default :class:`NoScatter` (trust the given uncertainties).

        Returns
        -------
        Lux
        """
        output = LuxOutput(name, transform, error_model if error_model is not None else NoScatter())
        if name in ("labels", "flux") or name in [o.name for o in self.outputs]:
            raise ValueError(
                f"output name {name!r} is taken ('labels' and 'flux' are built in); choose another."
            )
        return eqx.tree_at(lambda m: m.outputs, self, (*self.outputs, output))

    # ------------------------------------------------------------------ fitting
    def _specs(self, train: SpectralDataset) -> tuple[LuxOutput, ...]:
        label_scatter = self.label_scatter
        if label_scatter == "auto":
            label_scatter = "pixel" if train.label_err is None else "none"
        labels = LuxOutput(
            "labels",
            _resolve(self.label_transform, _TRANSFORM_CHOICES, "label_transform", AbstractTransform),
            _resolve(label_scatter, _SCATTER_CHOICES, "label_scatter", AbstractErrorModel),
        )
        flux = LuxOutput(
            "flux",
            _resolve(self.flux_transform, _TRANSFORM_CHOICES, "flux_transform", AbstractTransform),
            _resolve(self.scatter, _SCATTER_CHOICES, "scatter", AbstractErrorModel),
        )
        return (labels, flux, *self.outputs)

    def _choose_solver(self, specs: tuple[LuxOutput, ...]) -> Literal["alternating", "lbfgs", "bfgs", "adam"]:
        reason = supports_closed_form(specs)
        if self.objective == "marginal":
            for spec in specs:
                if not isinstance(spec.transform, AbstractAffineTransform):
                    raise ValueError(
                        f"objective='marginal' integrates the latents out exactly, which needs"
                        f" affine transforms, but output {spec.name!r} has a"
                        f" {type(spec.transform).__name__}; use objective='map'."
                    )
        if self.solver == "auto":
            return "alternating" if reason is None else "lbfgs"
        if self.solver == "alternating" and reason is not None:
            raise ValueError(
                f"solver='alternating' needs affine transforms and scatter error models, but"
                f" {reason}; use solver='lbfgs' (or 'auto')."
            )
        solver = self.solver
        if solver in ("alternating", "lbfgs", "bfgs", "adam"):  # always: "auto" is handled above
            return solver
        raise ValueError(f"`solver` must be one of {_SOLVERS}, got {solver!r}.")

    @x64
    def fit(
        self,
        train: SpectralDataset,
        *,
        extra: Mapping[str, OutputData] | None = None,
        calibrate: bool = True,
    ) -> FittedLux:
        """Train on ``train`` (flux + labels; NaN labels and masked pixels are skipped).

        Parameters
        ----------
        train : SpectralDataset
            Training spectra with the labels ``label_names`` (``label_err`` optional).
        extra : mapping of str to OutputData, optional
            Data of outputs added with :meth:`register_output`.
        calibrate : bool
            Also learn the error calibration of the default test step (labels from
            flux alone) by 5-fold cross-validation on ``train`` (default True; see
            :class:`~starlabel.models.ErrorCalibration`). False keeps the statistical
            errors and trains about six times faster.

        Returns
        -------
        FittedLux

        Raises
        ------
        ValueError
            If labels are missing from ``train``, a label or pixel has too few observed
            values, the options contradict each other, or extra data do not match.
        """
        if not isinstance(train, SpectralDataset):
            raise TypeError(f"`train` must be a SpectralDataset, got {type(train).__name__}.")
        # User-built parameters (FunctionTransform, FunctionErrorModel) may be float32.
        specs = jax.tree.map(
            lambda leaf: jnp.asarray(leaf, dtype=jnp.float64) if eqx.is_inexact_array(leaf) else leaf,
            self._specs(train),
        )
        solver = self._choose_solver(specs)
        names = tuple(s.name for s in specs)
        raws = raw_outputs(train, names, self.label_names, extra, require_labels=True)
        if train.n_stars <= self.latent_size:
            raise ValueError(
                f"the training set has {train.n_stars} stars but latent_size={self.latent_size};"
                " Lux needs more stars than latent dimensions."
            )
        counts = raws["labels"].observed.sum(axis=0)
        if np.any(counts < 2):
            bad = [n for n, c in zip(self.label_names, counts, strict=True) if c < 2]
            raise ValueError(f"labels {bad} have fewer than 2 known (non-NaN) values in the training set.")
        for spec in specs:
            raw = raws[spec.name]
            if isinstance(spec.error_model, NoScatter) and np.any(raw.observed & (raw.variance <= 0)):
                hint = "label_scatter='pixel'" if spec.name == "labels" else "a scatter error model"
                raise ValueError(
                    f"output {spec.name!r} has zero or unknown uncertainties but no learned scatter;"
                    f" give its uncertainties or use {hint}."
                )

        scalers = tuple(fit_scaler(raws[n], self.robust_scaling) for n in names)
        specs = tuple(
            LuxOutput(s.name, s.transform, s.error_model.initialise(len(c.scale)).for_scales(c.scale))
            if isinstance(s.error_model, ScalarScatter)
            else s
            for s, c in zip(specs, scalers, strict=True)
        )
        blocks = tuple(scaled_block(raws[n], s) for n, s in zip(names, scalers, strict=True))
        outputs, latents0 = _initialise(specs, blocks, self.latent_size, self.seed)

        if solver == "alternating":
            result = fit_closed_form(
                outputs,
                blocks,
                integrate=self.objective == "marginal",
                max_steps=self.max_steps,
                tol=self.tol,
            )
            fitted_outputs, latents = result.outputs, result.latents
            history, n_steps, converged = result.history, result.n_steps, result.converged
        else:
            result = fit_gradient(
                outputs,
                blocks,
                latents0,
                objective="marginal" if self.objective == "marginal" else "map",  # checked at init
                solver=solver,
                max_steps=self.max_steps,
                rtol=self.tol,
                atol=self.tol,
                learning_rate=self.learning_rate,
            )
            fitted_outputs, latents = result.outputs, result.latents
            history, n_steps, converged = result.history, result.n_steps, result.converged
            if latents is None:
                from ._test_step import latent_posterior

                latents = latent_posterior(fitted_outputs, blocks, self.latent_size).mean

        final_loss, grad_norm = _final_loss_and_gradient(fitted_outputs, latents, blocks, self.objective)
        labels = raws["labels"]
        masked = np.where(labels.observed, labels.values, np.nan)
        info = LuxFitInfo(
            loss_history=jnp.asarray(history[: int(n_steps)]),
            final_loss=final_loss,
            grad_norm=grad_norm,
            n_steps=jnp.asarray(n_steps),
            converged=jnp.asarray(converged),
            objective=self.objective,
            solver=solver,
        )
        fitted = FittedLux(
            label_names=self.label_names,
            latent_size=self.latent_size,
            outputs=fitted_outputs,
            scalers=scalers,
            label_range=jnp.asarray(np.stack([np.nanmin(masked, axis=0), np.nanmax(masked, axis=0)])),
            fit_info=info,
        )
        if not calibrate:
            return fitted

        def refit(rows: np.ndarray) -> FittedLux:
            subset = None
            if extra is not None:
                subset = {
                    name: OutputData(
                        np.asarray(item.values)[rows],
                        None if item.err is None else np.asarray(item.err)[rows],
                    )
                    for name, item in extra.items()
                }
            return self.fit(train[rows], extra=subset, calibrate=False)

        return calibrated_fit(fitted, train, refit)


@eqx.filter_jit
def _initialise(
    specs: tuple[LuxOutput, ...], blocks: tuple[DataBlock, ...], latent_size: int, seed: int
) -> tuple[tuple[LuxOutput, ...], jax.Array]:
    """Principal components of the zero-filled scaled data start every solver.

    Latents start as the whitened leading principal-component scores, affine weights
    as the matching loadings, and scatters at the RMS excess of the rank-L residual
    over the reported variance; nonlinear transforms start from their own init. The
    components come from the eigenvectors of the small (columns × columns) Gram matrix.
    """
    values = jnp.concatenate([b.values for b in blocks], axis=1)
    n_stars, n_columns = values.shape
    eigval, eigvec = jnp.linalg.eigh(values.T @ values)
    rank = min(latent_size, n_columns)
    top = eigvec[:, ::-1][:, :rank]
    sing = jnp.sqrt(jnp.maximum(eigval[::-1][:rank], 1e-12))
    latents = (
        jnp.zeros((n_stars, latent_size)).at[:, :rank].set(values @ top / sing[None, :] * np.sqrt(n_stars))
    )
    loadings = jnp.zeros((n_columns, latent_size)).at[:, :rank].set(top * sing[None, :] / np.sqrt(n_stars))
    keys = jax.random.split(jax.random.key(seed), len(specs))
    outputs = []
    start = 0
    for index, (spec, block) in enumerate(zip(specs, blocks, strict=True)):
        width = block.values.shape[1]
        stop = start + width
        transform = spec.transform.initialise(latent_size, width, keys[index])
        if isinstance(transform, AbstractAffineTransform):
            transform = transform.with_coefficients(loadings[start:stop], jnp.zeros(width))
        error_model = spec.error_model.initialise(width)
        if isinstance(error_model, AbstractScatter):
            resid = jnp.where(block.observed, block.values - latents @ loadings[start:stop].T, 0.0)
            count = jnp.maximum(jnp.sum(block.observed, axis=0), 1)
            excess = jnp.sum(resid**2 - jnp.where(block.observed, block.reported_var, 0.0), axis=0) / count
            excess = jnp.maximum(excess / error_model.variance_coefficients(), 1e-4)
            if not error_model.per_column:
                excess = jnp.mean(excess, keepdims=True)
            error_model = error_model.with_scatter(jnp.sqrt(excess))
        outputs.append(LuxOutput(spec.name, transform, error_model))
        start = stop
    return tuple(outputs), latents


@eqx.filter_jit
def _final_loss_and_gradient(outputs, latents, blocks, objective: str):
    trainable, static = eqx.partition(outputs, eqx.is_inexact_array)

    def loss(params):
        model = eqx.combine(params[0], static)
        if objective == "marginal":
            return marginal_objective(model, blocks)
        return joint_objective(model, params[1], blocks)

    value, grad = jax.value_and_grad(loss)((trainable, latents))
    leaves = [leaf for leaf in jax.tree.leaves(grad) if eqx.is_array(leaf)]
    return value, jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in leaves))
