"""The generic test step: labels of every spectrum under any :class:`AbstractFluxModel`.

For a model that is not linear in its coefficients (the Payne) the per-spectrum
normal-equation statistics of the Cannon's test step do not exist, so each spectrum is
fitted on its pixels: the χ² of a few template label vectors (training labels) picks
the starts, and the same batched Levenberg–Marquardt as the velocity/continuum fits
(:func:`starlabel.models._nuisance._lm`) runs from the best of them, with the model's
Jacobian (forward-mode autodiff unless the model supplies one). The covariance is the
inverse Fisher matrix ``(Jᵀ Ω J)⁻¹`` with ``Ω = 1/(σ² + s²)``. No wavelengths needed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._internal import map_chunks, x64
from ..data import Flag, InferenceResult, SpectralDataset
from ._nuisance import AbstractPackedModel, _lm, fit_quality
from .base import AbstractFittedModel, AbstractFluxModel, flux_model_of

__all__ = [
    "LabelFit",
    "check_fit_options",
    "fit_labels",
    "label_result",
    "template_labels",
]


class _LabelsOnly(AbstractPackedModel):
    """A flux model seen as the LM's packed-parameter model (parameters = labels)."""

    spectrum: AbstractFluxModel

    def flux(self, params: Float[Array, " labels"]) -> Float[Array, " pixels"]:
        return self.spectrum.flux(params)

    def jacobian(self, params: Float[Array, " labels"]) -> Float[Array, "pixels labels"]:
        return self.spectrum.jacobian(params)


class LabelFit(eqx.Module):
    """Per-star output of :func:`fit_labels` (leading axis: stars).

    Attributes
    ----------
    labels : Float[Array, "stars labels"]
        Maximum-likelihood labels (own units).
    cov : Float[Array, "stars labels labels"]
        Inverse Fisher matrix there.
    chi2 : Float[Array, " stars"]
        χ² with noise variance σ² + s².
    n_good : Float[Array, " stars"]
        Pixels that entered the fit.
    converged : Bool[Array, " stars"]
        Whether the LM stopped on a negligible χ² change (not on its iteration cap).
    """

    labels: Float[Array, "stars labels"]
    cov: Float[Array, "stars labels labels"]
    chi2: Float[Array, " stars"]
    n_good: Float[Array, " stars"]
    converged: Bool[Array, " stars"]


def template_labels(spectrum: AbstractFluxModel, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct training label vectors (a seeded random draw): the fit's candidate starts."""
    train = np.asarray(spectrum.train_labels)
    if len(train) <= n:
        return train
    return train[np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))]


@eqx.filter_jit
def _fit_chunk(
    spectrum: AbstractFluxModel,
    flux: Array,
    ivar: Array,
    templates: Array,
    lower: Array,
    upper: Array,
    n_starts: int,
    n_iter: int,
) -> LabelFit:
    model = _LabelsOnly(spectrum)
    free = jnp.ones(templates.shape[1], dtype=flux.dtype)
    template_flux = jax.vmap(spectrum.flux)(templates)  # (templates, pixels), once per chunk

    def one_star(f: Array, iv: Array) -> tuple[Array, ...]:
        omega = spectrum.weights(iv)
        chi2 = jnp.sum(omega[None, :] * (f[None, :] - template_flux) ** 2, axis=1)
        order = jnp.argsort(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))[:n_starts]
        params, cov, fit_chi2, done = jax.vmap(
            lambda p0: _lm(model, f, omega, p0, lower, upper, free, n_iter)
        )(templates[order])
        best = jnp.argmin(jnp.where(jnp.isfinite(fit_chi2), fit_chi2, jnp.inf))
        return params[best], cov[best], fit_chi2[best], jnp.sum(omega > 0).astype(f.dtype), done[best]

    return LabelFit(*jax.vmap(one_star)(flux, ivar))


@x64
def fit_labels(
    fitted: AbstractFittedModel | AbstractFluxModel,
    data: SpectralDataset,
    *,
    n_templates: int = 16,
    n_starts: int = 1,
    n_iter: int = 30,
    chunk_size: int = 256,
) -> LabelFit:
    """Maximum-likelihood labels of every spectrum under a flux model (flat priors).

    Parameters
    ----------
    fitted : AbstractFluxModel or AbstractFittedFluxModel
    data : SpectralDataset
        Spectra on the model's pixel grid.
    n_templates : int
        Training label vectors whose χ² ranks the starting points.
    n_starts : int
        Levenberg–Marquardt runs per spectrum, from the best templates.
    n_iter : int
        Cap on Levenberg–Marquardt iterations.
    chunk_size : int
        Spectra per compiled batch (the last is padded: one compilation).

    Returns
    -------
    LabelFit

    Raises
    ------
    ValueError
        On a pixel-count mismatch or bad options.
    """
    spectrum = flux_model_of(fitted)
    if data.n_pixels != spectrum.n_pixels:
        raise ValueError(
            f"`data` has {data.n_pixels} pixels; the model has {spectrum.n_pixels}: put the spectra"
            " on the model's pixel grid."
        )
    check_fit_options(n_templates=n_templates, n_starts=n_starts, n_iter=n_iter, chunk_size=chunk_size)
    templates = jnp.asarray(template_labels(spectrum, n_templates), dtype=jnp.float64)
    n_starts = min(n_starts, int(templates.shape[0]))
    low, high = spectrum.safety_box()
    lower, upper = jnp.asarray(low), jnp.asarray(high)
    return map_chunks(
        lambda rows: _fit_chunk(
            spectrum, jnp.asarray(rows[0]), jnp.asarray(rows[1]), templates, lower, upper, n_starts, n_iter
        ),
        (data.flux, data.ivar),
        size=min(chunk_size, data.n_stars),
    )


def check_fit_options(**options: int) -> None:
    """Every option must be an integer ≥ 1 (``n_templates``, ``n_starts``, ``n_iter``, ``chunk_size``)."""
    for name, value in options.items():
        if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
            raise ValueError(f"`{name}` must be an integer ≥ 1, got {value!r}.")


def label_result(
    spectrum: AbstractFluxModel,
    data: SpectralDataset,
    fit: LabelFit,
    *,
    poor_fit: float = 3.0,
    outside_margin: float = 0.1,
    meta: dict[str, object] | None = None,
) -> InferenceResult:
    """The :class:`InferenceResult` of a :func:`fit_labels` run, with quality flags.

    Flags: NOT_CONVERGED, BAD_COVARIANCE, POOR_FIT (reduced χ² above ``poor_fit``),
    OUTSIDE_TRAINING (beyond the training range by
    more than ``outside_margin`` of its width), FEW_PIXELS (under half the pixels used).
    """
    labels = np.asarray(fit.labels, dtype=np.float64)
    k = labels.shape[1]
    cov, dof, flags = fit_quality(
        np.asarray(fit.cov),
        np.asarray(fit.chi2),
        np.asarray(fit.n_good),
        k,
        np.asarray(fit.converged),
        poor_fit,
    )
    box = np.asarray(spectrum.box)
    margin = outside_margin * (box[1] - box[0])
    outside = np.any((labels < box[0] - margin) | (labels > box[1] + margin), axis=1)
    flags |= np.where(outside, int(Flag.OUTSIDE_TRAINING), 0)
    flags |= np.where(np.asarray(fit.n_good) < 0.5 * data.n_pixels, int(Flag.FEW_PIXELS), 0)
    return InferenceResult(
        ids=data.ids,
        label_names=spectrum.label_names,
        labels=labels,
        cov=cov,
        chi2=np.asarray(fit.chi2, dtype=np.float64),
        dof=dof,
        flags=flags,
        meta=dict(meta or {}),
    )
