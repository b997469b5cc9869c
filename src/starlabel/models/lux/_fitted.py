"""``FittedLux``: a trained Lux model — test step, predictions, likelihood, save/load."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ..._internal import as_float_array, map_chunks, x64
from ...data import Flag, InferenceResult, ShiftScale, SpectralDataset
from .._calibration import ErrorCalibration, apply_calibration
from .._infer import infer as typed_infer
from .._posterior import refine_uncertainty, resolve_uncertainty
from .._strategies import AbstractUncertainty, as_uncertainty
from ..base import AbstractLatentModel
from ._error_models import AbstractScatter, error_model_from_config
from ._objective import LOG_2PI, DataBlock, LuxOutput
from ._prepare import OutputData, raw_outputs, scaled_block
from ._test_step import latent_posterior
from ._transforms import transform_from_config

__all__ = ["FittedLux", "LuxFitInfo"]

_RANGE_MARGIN = 0.1
"""Labels beyond the training range by more than this fraction of it get OUTSIDE_TRAINING."""
_POOR_FIT_SIGMA = 5.0
"""POOR_FIT when χ² exceeds dof by this many standard deviations, √(2 dof)."""


class LuxFitInfo(eqx.Module):
    """How training went.

    Attributes
    ----------
    loss_history : Float[Array, " steps"]
        Objective (negative log posterior, nats) at each iteration.
    final_loss : Float[Array, ""]
        Objective at the returned parameters.
    grad_norm : Float[Array, ""]
        Euclidean norm of the objective's gradient there (parameters, and training
        latents for joint MAP); small means a stationary point.
    n_steps : Int[Array, ""]
        Iterations run.
    converged : Bool[Array, ""]
        Whether the stopping tolerance was met before ``max_steps``.
    objective, solver : str
        What was minimised and how (``"marginal"``/``"map"``; ``"alternating"``, ...).
    """

    loss_history: Float[Array, " steps"]
    final_loss: Float[Array, ""]
    grad_norm: Float[Array, ""]
    n_steps: Int[Array, ""]
    converged: Bool[Array, ""]
    objective: str = eqx.field(static=True)
    solver: str = eqx.field(static=True)


def _pad(blocks: tuple[DataBlock, ...], size: int) -> tuple[DataBlock, ...]:
    """Blocks grown to ``size`` rows with unobserved rows (fixed shapes → one compile)."""

    def grow(array, fill):
        missing = size - array.shape[0]
        return jnp.concatenate([array, jnp.full((missing, *array.shape[1:]), fill, dtype=array.dtype)])

    return tuple(
        DataBlock(grow(b.values, 0.0), grow(b.reported_var, 1.0), grow(b.observed, False)) for b in blocks
    )


class FittedLux(AbstractLatentModel):
    """A trained Lux model (see :class:`Lux`).

    Attributes
    ----------
    label_names : tuple of str
    latent_size : int
    outputs : tuple of LuxOutput
        Fitted outputs, ``"labels"`` first, then ``"flux"``, then registered extras.
    scalers : tuple of ShiftScale
        Per-output standardisation (data units → the scaled units of ``outputs``).
    label_range : Float[Array, "2 labels"]
        Training label minimum and maximum (data units), for OUTSIDE_TRAINING.
    fit_info : LuxFitInfo
    calibration : ErrorCalibration, optional
        Error calibration of the default test step (labels from flux alone), learned
        by cross-validation at ``fit`` time; None when trained with ``calibrate=False``.
    """

    kind: ClassVar[str] = "lux"
    label_names: tuple[str, ...] = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    outputs: tuple[LuxOutput, ...]
    scalers: tuple[ShiftScale, ...]
    label_range: Float[Array, "2 labels"]
    fit_info: LuxFitInfo
    calibration: ErrorCalibration | None = None

    # ------------------------------------------------------------------ access
    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the outputs, in model order."""
        return tuple(o.name for o in self.outputs)

    def _index(self, name: str) -> int:
        if name not in self.output_names:
            raise KeyError(f"unknown output {name!r}; this model has outputs {list(self.output_names)}.")
        return self.output_names.index(name)

    @x64
    def scatter(self, name: str = "flux") -> np.ndarray:
        """Learned extra scatter of output ``name`` per column, in data units (0 if none).

        Returns
        -------
        ndarray, shape (columns,)
            E.g. per pixel for ``"flux"`` in flux units.
        """
        index = self._index(name)
        model = self.outputs[index].error_model
        scale = np.asarray(self.scalers[index].scale)
        if not isinstance(model, AbstractScatter):
            return np.zeros_like(scale)
        extra_var = np.asarray(model.variance(jnp.zeros(scale.shape[0])))
        return np.sqrt(extra_var) * scale

    # ------------------------------------------------------------------ pure JAX
    def latents_to_labels(self, latents: Float[Array, "*batch latents"]) -> Float[Array, "*batch labels"]:
        """Noise-free labels (data units) of latents of shape (..., latents). Pure JAX."""
        index = self._index("labels")
        transform, scaler = self.outputs[index].transform, self.scalers[index]
        scaled = jnp.vectorize(transform, signature="(l)->(k)")(latents)
        return scaled * scaler.scale + scaler.shift

    def latent_log_prior(self, latents: Float[Array, " latents"]) -> Float[Array, ""]:
        """Log N(latents | 0, I), the prior every star's latents share. Pure JAX."""
        return -0.5 * jnp.sum(latents**2) - 0.5 * latents.shape[0] * LOG_2PI

    def log_likelihood(
        self,
        latents: Float[Array, " latents"],
        flux: Float[Array, " pixels"],
        ivar: Float[Array, " pixels"],
    ) -> Float[Array, ""]:
        """Log p(flux | latents) in data units, with the learned scatter. Pure JAX.

        ``Σ_j −½ [(f_j − μ_j)² / V_j + log 2πV_j]`` over pixels with ``ivar > 0``, where
        μ is the model flux and ``V_j = 1/ivar_j + s_j²`` (the error model's variance,
        converted to flux units). Call under ``jax.enable_x64(True)`` for float64.
        """
        index = self._index("flux")
        output, scaler = self.outputs[index], self.scalers[index]
        observed = ivar > 0
        safe_ivar = jnp.where(observed, ivar, 1.0)
        scale = scaler.scale
        reported = 1.0 / safe_ivar / scale**2
        var = output.error_model.variance(reported) * scale**2
        mean = output.transform(latents) * scale + scaler.shift
        terms = (flux - mean) ** 2 / var + jnp.log(var) + LOG_2PI
        return -0.5 * jnp.sum(jnp.where(observed, terms, 0.0))

    # ------------------------------------------------------------------ test step
    def _blocks(
        self, data: SpectralDataset, inputs: Sequence[str], extra: Mapping[str, OutputData] | None
    ) -> tuple[tuple[LuxOutput, ...], tuple[DataBlock, ...]]:
        if not isinstance(data, SpectralDataset):
            raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
        inputs = tuple(inputs)
        if not inputs:
            raise ValueError("`inputs` must name at least one output, e.g. ('flux',).")
        for name in inputs:
            self._index(name)
        flux_size = self.scalers[self._index("flux")].shift.shape[0]
        if "flux" in inputs and data.n_pixels != flux_size:
            raise ValueError(
                f"`data` has {data.n_pixels} pixels but this Lux model was trained on {flux_size};"
                " put the spectra on the training pixel grid."
            )
        unused = sorted(set(extra or {}) - set(inputs))
        if unused:
            raise ValueError(f"extra data given for {unused}, which are not in inputs={inputs}.")
        raws = raw_outputs(data, inputs, self.label_names, extra, require_labels=True)
        outputs = tuple(self.outputs[self._index(n)] for n in inputs)
        blocks = tuple(scaled_block(raws[n], self.scalers[self._index(n)]) for n in inputs)
        return outputs, blocks

    def _posterior(self, outputs, blocks, chunk_size: int, steps: int):
        n_stars = blocks[0].values.shape[0]
        size = int(min(chunk_size, 1 << max(0, (n_stars - 1).bit_length())))
        return map_chunks(
            lambda chunk: latent_posterior(outputs, chunk, self.latent_size, steps),
            blocks,
            size=size,
            pad=_pad,
        )

    @x64
    def infer_latents(
        self,
        data: SpectralDataset,
        *,
        inputs: Sequence[str] = ("flux",),
        extra: Mapping[str, OutputData] | None = None,
        chunk_size: int = 4096,
        steps: int = 50,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean (stars, latents) and covariance (stars, latents, latents) of latents.

        Same arguments as :meth:`infer_map`.
        """
        outputs, blocks = self._blocks(data, inputs, extra)
        post = self._posterior(outputs, blocks, chunk_size, steps)
        return post.mean, post.cov

    def infer(
        self,
        data: SpectralDataset,
        *,
        uncertainty: str | AbstractUncertainty = "fisher",
        **options: Any,
    ) -> InferenceResult:
        """Infer labels of every star in ``data``: :func:`starlabel.models.infer` with ``estimator=MAP()``.

        The one typed entry point checks the choices and runs :meth:`infer_map`, where
        the arguments (``inputs``, ``extra``, ``chunk_size``, ``steps``,
        ``include_label_scatter``, ``posterior_options``, ``calibrate``) are documented.
        ``uncertainty`` is ``"fisher"`` (default), ``"laplace"``, ``"nuts"`` or a
        ``Fisher()``/``Laplace()``/``NUTS(…)`` object.
        """
        return typed_infer(self, data, uncertainty=as_uncertainty(uncertainty), **options)

    @x64
    def infer_map(
        self,
        data: SpectralDataset,
        *,
        inputs: Sequence[str] = ("flux",),
        extra: Mapping[str, OutputData] | None = None,
        chunk_size: int = 4096,
        steps: int = 50,
        include_label_scatter: bool = True,
        uncertainty: str | AbstractUncertainty = "fisher",
        posterior_options: Mapping[str, Any] | None = None,
        calibrate: bool = True,
    ) -> InferenceResult:
        """Lux's own test step: labels of every star in ``data`` from its flux (by default) alone.

        What :meth:`infer` (through :func:`starlabel.models.infer`) runs. Each star's
        latents get their posterior given the outputs in ``inputs`` with the
        trained parameters fixed (exact for affine transforms, otherwise ``steps``
        Levenberg–Marquardt iterations and the Laplace approximation). Labels are the
        label transform of the latent mode; their covariance propagates the latent
        covariance through the label transform's Jacobian, so it includes the flux noise
        *and* the learned flux scatter (plus the learned label scatter, see below).

        Parameters
        ----------
        data : SpectralDataset
            Spectra on the training pixel grid. Its labels are ignored unless
            ``"labels"`` is in ``inputs``.
        inputs : sequence of str
            Outputs to condition on (default ``("flux",)``).
        extra : mapping of str to OutputData, optional
            Data for registered extra outputs named in ``inputs``.
        chunk_size : int
            Stars per compiled batch (padded, so every chunk reuses one compilation).
        steps : int
            Iterations for nonlinear transforms (ignored for affine ones).
        include_label_scatter : bool
            Add the learned extra label scatter (the label output's error model, e.g.
            when training labels had no ``label_err``) to ``cov`` (default True): the
            uncertainty of the star's label as the training labels measure it, not
            only of the noise-free ``latents_to_labels`` value. Without a learned
            label scatter this changes nothing.
        uncertainty : {"fisher", "laplace", "nuts"} or Fisher, Laplace, NUTS
            ``"fisher"`` (default): the latent posterior above (exact Gaussian for
            affine transforms, Laplace otherwise), with the learned flux scatter in the
            noise. ``"laplace"`` / ``"nuts"``: :func:`starlabel.models.posterior_infer`
            from the flux, started at that posterior's mode (``"nuts"`` propagates the
            draws exactly through the label transform; ``extra`` gains ``rhat_<label>``
            and ``ess_<label>``). Both need ``inputs=("flux",)``; the learned label
            scatter is added as for ``"fisher"``.
        posterior_options : mapping, optional
            Keywords for :func:`~starlabel.models.posterior_infer` (``num_warmup``,
            ``num_samples``, ``seed``, …) when ``uncertainty`` is not ``"fisher"``.
        calibrate : bool
            Apply the model's :attr:`calibration` (default True): ``cov`` becomes the
            calibrated total and the statistical errors are kept in
            ``extra["<label>_err_stat"]``. Only the test step it was learned on
            (``inputs=("flux",)``, ``uncertainty="fisher"``) is calibrated;
            ``meta["errors"]`` says which you got.

        Returns
        -------
        InferenceResult
            ``labels`` (data units), ``cov`` (stars, labels, labels), ``chi2`` over the
            used entries with the learned scatter in the variance, ``dof`` = used
            entries − latent_size, ``flags`` (NOT_CONVERGED, FEW_PIXELS,
            BAD_COVARIANCE, OUTSIDE_TRAINING, POOR_FIT), ``extra["<label>_err_stat"]``.
        """
        uncertainty, posterior_options = resolve_uncertainty(uncertainty, posterior_options)
        if uncertainty != "fisher" and tuple(inputs) != ("flux",):
            raise ValueError(
                f"uncertainty={uncertainty!r} conditions on the flux alone; use inputs=('flux',)"
                " or uncertainty='fisher'."
            )
        outputs, blocks = self._blocks(data, inputs, extra)
        post = self._posterior(outputs, blocks, chunk_size, steps)
        labels, cov = self._labels_with_cov(jnp.asarray(post.mean), jnp.asarray(post.cov))
        labels, cov = np.asarray(labels), np.asarray(cov)
        # The learned label scatter widens every mode's covariance alike.
        label_scatter = np.diag(self.scatter("labels") ** 2)[None, :, :] if include_label_scatter else 0.0
        cov = cov + label_scatter
        dof = post.n_used - self.latent_size

        flags = np.zeros(data.n_stars, dtype=np.int64)
        flags |= np.where(~post.converged, int(Flag.NOT_CONVERGED), 0)
        flags |= np.where(post.n_used <= self.latent_size, int(Flag.FEW_PIXELS), 0)
        diag = np.diagonal(cov, axis1=1, axis2=2)
        bad_cov = ~np.all(np.isfinite(cov), axis=(1, 2)) | np.any(diag <= 0, axis=1)
        flags |= np.where(bad_cov, int(Flag.BAD_COVARIANCE), 0)
        low, high = np.asarray(self.label_range)
        margin = _RANGE_MARGIN * (high - low)
        outside = np.any((labels < (low - margin)[None, :]) | (labels > (high + margin)[None, :]), axis=1)
        flags |= np.where(outside, int(Flag.OUTSIDE_TRAINING), 0)
        with np.errstate(invalid="ignore"):
            poor = (dof > 0) & (post.chi2 > dof + _POOR_FIT_SIGMA * np.sqrt(2.0 * np.maximum(dof, 1)))
        flags |= np.where(poor, int(Flag.POOR_FIT), 0)
        result = InferenceResult(
            ids=data.ids,
            label_names=self.label_names,
            labels=labels,
            cov=cov,
            chi2=post.chi2,
            dof=dof,
            flags=flags,
            meta={
                "model": "lux",
                "inputs": ",".join(inputs),
                "latent_size": self.latent_size,
                "uncertainty": "fisher",
            },
        )
        why = ""
        if tuple(inputs) != ("flux",):
            why = f"inputs={tuple(inputs)}; the calibration was learned on ('flux',)"
        if uncertainty == "fisher":
            return apply_calibration(self.calibration, result, calibrate=calibrate, why_not=why)
        refined = refine_uncertainty(self, data, result, post.mean, uncertainty, posterior_options)
        if refined.cov is None:
            raise ValueError(f"uncertainty={uncertainty!r} gave no covariance to add the label scatter to.")
        refined = dataclasses.replace(refined, cov=refined.cov + label_scatter)
        why = f"uncertainty={uncertainty!r}; the calibration was learned on 'fisher'"
        return apply_calibration(self.calibration, refined, calibrate=calibrate, why_not=why)

    @eqx.filter_jit
    def _labels_with_cov(self, mean, cov):
        index = self._index("labels")
        transform, scaler = self.outputs[index].transform, self.scalers[index]
        labels = jax.vmap(transform)(mean)
        jac = jax.vmap(jax.jacfwd(transform))(mean)
        label_cov = jnp.einsum("nki,nij,nlj->nkl", jac, cov, jac)
        return scaler.inverse_transform(labels), scaler.inverse_transform_cov(label_cov)

    # ------------------------------------------------------------------ generative
    @x64
    def predict(self, latents: ArrayLike) -> dict[str, np.ndarray]:
        """Noise-free prediction of every output (data units) from latents (stars, latents)."""
        z = jnp.asarray(as_float_array(latents, "latents"))
        if z.ndim != 2 or z.shape[1] != self.latent_size:
            raise ValueError(f"`latents` has shape {z.shape}; expected (stars, {self.latent_size}).")
        return {
            o.name: np.asarray(s.inverse_transform(jax.vmap(o.transform)(z)))
            for o, s in zip(self.outputs, self.scalers, strict=True)
        }

    @x64
    def predict_flux(self, labels: Float[Array, "stars labels"] | np.ndarray) -> np.ndarray:
        """Expected flux (stars, pixels) of stars with the given labels (data units).

        Lux generates labels and flux from shared latents, so the flux at given labels
        is the flux of the latents' posterior mode given those labels (treated as
        exact, up to the learned label scatter). For affine transforms this is
        E[flux | labels] of the fitted linear-Gaussian model; latent directions the
        labels do not constrain stay at their prior mean 0.
        """
        values = as_float_array(labels, "labels")
        if values.ndim != 2 or values.shape[1] != len(self.label_names):
            raise ValueError(
                f"`labels` has shape {values.shape}; expected (stars, {len(self.label_names)})"
                f" with columns {self.label_names}."
            )
        index = self._index("labels")
        scaler = self.scalers[index]
        scaled = (jnp.asarray(values) - scaler.shift[None, :]) / scaler.scale[None, :]
        observed = jnp.isfinite(scaled)
        # Conditioning on labels "as given": a tiny variance stands in for zero noise
        # where the model has no learned label scatter.
        block = DataBlock(jnp.where(observed, scaled, 0.0), jnp.full(scaled.shape, 1e-6), observed)
        post = self._posterior((self.outputs[index],), (block,), 4096, 50)
        return self.predict(post.mean)["flux"]

    # ------------------------------------------------------------------ save/load
    def config(self) -> dict[str, Any]:
        """JSON-able structure (output names, sizes, transform and error-model types)."""
        return {
            "label_names": list(self.label_names),
            "latent_size": self.latent_size,
            "outputs": [
                {
                    "name": o.name,
                    "size": int(s.shift.shape[0]),
                    "transform": o.transform.config(),
                    "error_model": o.error_model.config(),
                }
                for o, s in zip(self.outputs, self.scalers, strict=True)
            ],
            "history_length": int(self.fit_info.loss_history.shape[0]),
            "objective": self.fit_info.objective,
            "solver": self.fit_info.solver,
        }

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> FittedLux:
        """Placeholder-valued model with the structure described by ``config``."""
        latent_size = int(config["latent_size"])
        outputs, scalers = [], []
        for item in config["outputs"]:
            size = int(item["size"])
            outputs.append(
                LuxOutput(
                    item["name"],
                    transform_from_config(item["transform"], latent_size, size),
                    error_model_from_config(item["error_model"], size),
                )
            )
            scalers.append(ShiftScale(jnp.zeros(size), jnp.ones(size)))
        n_labels = int(config["outputs"][0]["size"])
        info = LuxFitInfo(
            loss_history=jnp.zeros(int(config["history_length"])),
            final_loss=jnp.zeros(()),
            grad_norm=jnp.zeros(()),
            n_steps=jnp.zeros((), dtype=int),
            converged=jnp.zeros((), dtype=bool),
            objective=config["objective"],
            solver=config["solver"],
        )
        label_names = tuple(config.get("label_names", ()))
        return cls(
            label_names=label_names,
            latent_size=latent_size,
            outputs=tuple(outputs),
            scalers=tuple(scalers),
            label_range=jnp.zeros((2, n_labels)),
            fit_info=info,
        )
