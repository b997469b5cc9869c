"""The Cannon: configuration (:class:`Cannon`) and trained model (:class:`FittedCannon`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..._internal import as_float_array, x64
from ...data import InferenceResult, ShiftScale, SpectralDataset
from .._calibration import ErrorCalibration, apply_calibration, calibrated_fit
from .._infer import infer as typed_infer
from .._posterior import refine_uncertainty, resolve_uncertainty
from .._strategies import AbstractUncertainty, as_uncertainty
from ..base import (
    AbstractFittedFluxModel,
    AbstractLinearFittedModel,
    AbstractMapStepModel,
    AbstractSpectralModel,
)
from ._censor import active_terms
from ._flux_model import PolynomialSpectrum
from ._folds import fold_refit
from ._infer import LabelSpace
from ._map import check_options, map_step
from ._prepare import (
    Prepared,
    check_configuration,
    label_matrix,
    label_names_tuple,
    label_space,
    prepare_labels,
    terms_tuple,
)
from ._serialise import fitted_config, fitted_skeleton
from ._train import TrainingArrays, fit_arrays, training_arrays
from ._vectorizer import PolynomialVectorizer

__all__ = ["Cannon", "FittedCannon"]

logger = logging.getLogger(__name__)


class Cannon(AbstractSpectralModel):
    """The Cannon (Ness et al. 2015): each pixel's flux is a polynomial in the labels.

    ``f_nλ = θ_λ · v(ℓ_n) + noise``, noise variance ``σ_nλ² + s_λ²``, where ``v`` holds
    monomials of the scaled labels and ``s_λ²`` is the pixel's intrinsic scatter. This
    object is configuration only; :meth:`fit` returns a :class:`FittedCannon`.

    Parameters
    ----------
    label_names : sequence of str
        Labels the model is a function of (columns taken from the training set).
    order : int
        Total polynomial degree (default 2, the quadratic Cannon). Ignored with ``terms``.
    terms : str or sequence of str, optional
        Explicit non-constant terms, e.g. ``"teff + logg + teff^2 + logg*teff"``; the
        constant is always included.
    censor : mapping, optional
        ``{label: mask}`` where ``mask`` is a boolean array (pixels,) that is True where
        the label may affect the flux, or a list of ``(start, end)`` wavelength windows
        in Å (needs the training set's wavelengths). Outside its mask a label contributes
        no term (linear or cross) to the flux.
    l1 : float or array of shape (pixels,)
        L1 penalty λ added to each pixel's negative log-likelihood times ``Σ_t |θ_t|``
        over the non-constant terms (default 0, no regularisation). The likelihood is in
        inverse-variance units, so sensible λ grow with S/N and the number of stars.
    l1_solver : {"coordinate_descent", "fista"}
        Convex solver for ``l1 > 0``; ``"fista"`` is the slower cross-check.
    max_iter : int
        Cap on the θ/s² alternation (EM) iterations.
    tol : float
        EM stops when no s² moves by more than ``tol × (s² + typical σ²)``.

    Examples
    --------
    >>> from starlabel.data import simulate_cannon
    >>> sim = simulate_cannon(n_stars=200, n_pixels=50, seed=1)
    >>> fitted = Cannon(label_names=sim.dataset.label_names).fit(sim.dataset)
    >>> fitted.theta.shape
    (50, 10)

    References
    ----------
    Ness, Hogg, Rix, Ho & Zasowski (2015), ApJ 808, 16.
    Casey et al. (2016), arXiv:1603.03040 (censoring, L1 regularisation).
    """

    label_names: tuple[str, ...] = eqx.field(static=True, converter=label_names_tuple)
    order: int = eqx.field(static=True, default=2)
    terms: str | tuple[str, ...] | None = eqx.field(static=True, default=None, converter=terms_tuple)
    censor: Mapping[str, Any] | None = None
    l1: Any = 0.0
    l1_solver: str = eqx.field(static=True, default="coordinate_descent")
    max_iter: int = eqx.field(static=True, default=200)
    tol: float = eqx.field(static=True, default=1e-5)

    def __check_init__(self) -> None:
        check_configuration(self)

    @property
    def vectorizer(self) -> PolynomialVectorizer:
        """The label vector this configuration describes."""
        if self.terms is not None:
            return PolynomialVectorizer.from_terms(self.label_names, self.terms)
        return PolynomialVectorizer.from_order(self.label_names, self.order)

    def _prepare(self, train: SpectralDataset, star_weights: Any = None) -> Prepared:
        """Validate a training set and build everything training needs except the scaling."""
        labels = label_matrix(train, self.label_names, "train")
        return self._prepare_labels(
            labels, train.n_pixels, train.wavelength, star_weights, "the training set"
        )

    def _prepare_labels(
        self, labels: np.ndarray, n_pixels: int, wavelength: Any, star_weights: Any, source: str
    ) -> Prepared:
        """:meth:`_prepare` from the label matrix alone (no spectra), for streamed training too."""
        return prepare_labels(self, labels, n_pixels, wavelength, star_weights, source)

    def _fitted(
        self,
        prep: Prepared,
        scaler: ShiftScale,
        scaled: np.ndarray,
        trained: tuple[Any, Any, Any],
        wavelength: Any,
        info: dict[str, Any],
    ) -> FittedCannon:
        """Assemble the FittedCannon from a training run's (θ, s², pixel_ok)."""
        theta, s2, pixel_ok = trained
        info = {
            "n_train": int(prep.used.sum()),
            "n_missing_labels": int(np.sum(~prep.complete)),  # left out: a label is NaN
            "bad_pixels": int(np.sum(~np.asarray(pixel_ok))),
            "l1_solver": self.l1_solver,
            **info,
        }
        return FittedCannon(
            label_names=self.label_names,
            vectorizer=prep.vectorizer,
            label_scaler=scaler,
            # device_put, not jnp.asarray: no conversion program to lower per shape.
            theta=jax.device_put(np.asarray(theta)),
            s2=jax.device_put(np.asarray(s2)),
            pixel_ok=jax.device_put(np.asarray(pixel_ok)),
            allowed=jax.device_put(prep.allowed),
            l1=jax.device_put(prep.l1),
            wavelength=None if wavelength is None else jax.device_put(np.asarray(wavelength)),
            label_space=label_space(scaled[prep.used]),
            training_info=tuple(sorted(info.items())),
        )

    def _fit_arrays(
        self,
        prep: Prepared,
        arrays: TrainingArrays,
        wavelength: Any,
        info: Mapping[str, Any] | None = None,
        init: FittedCannon | None = None,
        tol: float | None = None,
    ) -> FittedCannon:
        """Train on prepared spectra (see :func:`._train.training_arrays`) with ``prep``'s weights.

        ``init``: a model whose θ and s² the EM starts from (same fixed point; fewer
        iterations when it was trained on most of the same stars). ``tol``: the EM's
        tolerance instead of ``self.tol``.
        """
        scaler, scaled, design = prep.design()
        start = None if init is None else (np.asarray(init.theta), np.asarray(init.s2))
        theta, s2, pixel_ok, n_iter, converged = fit_arrays(
            arrays, design, prep.weights, prep.active, prep.l1, prep.options, start, tol, prep.vectorizer
        )
        if not converged:
            logger.warning(
                "Cannon.fit: scatter iterations hit max_iter=%d before tol=%g.", self.max_iter, self.tol
            )
        info = {"em_iterations": int(n_iter), "converged": bool(converged), **(info or {})}
        return self._fitted(prep, scaler, scaled, (theta, s2, pixel_ok), wavelength, info)

    @x64
    def fit(
        self,
        train: SpectralDataset,
        *,
        star_weights: Any = None,
        calibrate: bool = True,
        bias_correction: bool = True,
    ) -> FittedCannon:
        """Train θ (pixels, terms) and s² (pixels,) on spectra with known labels.

        Parameters
        ----------
        train : SpectralDataset
            Training spectra with (at least) the labels ``label_names``. Stars missing
            any of these labels (NaN) are left out.
        star_weights : array-like, shape (stars,), optional
            Non-negative multipliers of each star's log-likelihood in both the θ and the
            s² updates (e.g. EM membership probabilities; default 1). Stars weighted
            below half the largest weight stay out of the calibration's fits.
        calibrate : bool
            Also learn the error calibration of the default test step by 5-fold
            cross-validation on ``train`` (default True; see
            :class:`~starlabel.models.ErrorCalibration`), so that :meth:`FittedCannon.infer`
            reports calibrated ``<label>_err``. False keeps the statistical errors and
            trains faster (3.6× on 2,000 stars × 7,214 px with 5 labels:
            ``benchmarks/results/calibration_train_time.json``).
        bias_correction : bool
            With ``calibrate`` (default True), :meth:`FittedCannon.infer` subtracts from
            each star's labels the mean held-out residual of the training stars nearest
            them (``<label>_bias``; ``docs/uncertainties.md``), its errors calibrated on
            labels corrected alike. False keeps the model's own labels.

        Returns
        -------
        FittedCannon

        Raises
        ------
        ValueError
            On missing labels, bad weights, a censor mask of the wrong shape, or fewer
            usable stars than model terms.
        """
        prep = self._prepare(train, star_weights)
        arrays = training_arrays(train.flux, train.ivar)
        fitted = self._fit_arrays(prep, arrays, train.wavelength)
        if not calibrate:
            return fitted
        return calibrated_fit(
            fitted,
            train,
            fold_refit(self, prep, arrays, train, star_weights, fitted),
            bias_correction=bias_correction,
            star_weights=None if star_weights is None else prep.weights,
        )

    @x64
    def fit_file(
        self,
        path: Any,
        *,
        star_weights: Any = None,
        rows_per_block: int = 1024,
        progress: bool = False,
    ) -> FittedCannon:
        """Train like :meth:`fit` on a dataset file, streaming it in blocks of stars.

        For training sets larger than memory: each pass over the file reduces the
        spectra to per-pixel sums (normal matrices and scatter-derivative terms), and
        safeguarded Newton steps on each pixel's marginal likelihood take the place of
        the EM iterations of :meth:`fit`, usually 4–6 passes. Peak memory follows
        ``rows_per_block × pixels`` and not the number of stars; θ and s² equal
        :meth:`fit`'s to its tolerance ``tol`` (see ``docs/cannon.md``).

        Parameters
        ----------
        path : path-like
            Uncompressed ``.npz`` (:func:`numpy.savez`, or
            :func:`starlabel.data.write_dataset`) or HDF5 (``.h5``/``.hdf5``) with
            ``flux`` (stars, pixels), ``ivar`` or ``flux_err``, optional ``mask`` and
            ``wavelength`` (Å), and the labels ``label_names`` as 1-D per-star arrays or
            columns of a ``labels`` table (the layout of :mod:`starlabel.data`). Stars
            missing any label (NaN) are left out.
        star_weights : array-like, shape (stars,), optional
            Non-negative multipliers of each star's log-likelihood, as in :meth:`fit`.
        rows_per_block : int
            Stars read and reduced at a time (default 1024: about 0.9 GB peak for
            7214 pixels; memory ≈ ``rows_per_block × pixels × 100`` bytes + JAX).
        progress : bool
            Draw a progress bar for each pass on stderr.

        Returns
        -------
        FittedCannon
            ``training_info["em_iterations"]`` counts the passes over the file.

        Raises
        ------
        ValueError
            If the file is missing a label, stores its spectra compressed
            (``savez_compressed``: save with :func:`numpy.savez` or HDF5 instead), has
            inconsistent shapes, or has fewer usable stars than model terms.
        NotImplementedError
            If ``l1 > 0`` (train in memory with :meth:`fit`).

        Examples
        --------
        >>> fitted = Cannon(label_names=("teff", "logg", "fe_h")).fit_file(
        ...     "train.h5", rows_per_block=2048, progress=True)  # doctest: +SKIP
        """
        from ._streaming import fit_file

        return fit_file(
            self, path, star_weights=star_weights, rows_per_block=rows_per_block, progress=progress
        )


class FittedCannon(AbstractFittedFluxModel, AbstractLinearFittedModel, AbstractMapStepModel):
    """A trained Cannon: per-pixel coefficients θ, scatter s², label scaling, censoring.

    Attributes
    ----------
    label_names : tuple of str
    vectorizer : PolynomialVectorizer
        The label vector (terms, in :attr:`term_names` order).
    label_scaler : ShiftScale
        ``x = (label − shift) / scale``, fitted on the training labels (mean, std).
    theta : array, shape (pixels, terms)
        Coefficients in the scaled labels (flux units).
    s2 : array, shape (pixels,)
        Intrinsic scatter variance s_λ² (flux² units).
    pixel_ok : bool array, shape (pixels,)
        False where training had too few stars or a singular system; such pixels are
        ignored by the test step.
    allowed : bool array, shape (labels, pixels)
        Censoring masks (True where a label may affect the flux).
    l1 : array, shape (pixels,)
        L1 strength used in training.
    wavelength : array, shape (pixels,), optional
        Training wavelengths, Å.
    label_space : LabelSpace
        Training-label range, subsample and nearest-neighbour radius (scaled units):
        starting points and the OUTSIDE_TRAINING flag.
    training_info : tuple of (str, value)
        Training diagnostics (stars used, EM iterations, convergence, bad pixels).
    calibration : ErrorCalibration, optional
        Error calibration of the default test step, learned by cross-validation at
        ``fit`` time; None when trained with ``calibrate=False`` (or by an older
        starlabel).
    """

    kind: ClassVar[str] = "cannon"

    label_names: tuple[str, ...] = eqx.field(static=True)
    vectorizer: PolynomialVectorizer
    label_scaler: ShiftScale
    theta: Float[Array, "pixels terms"]
    s2: Float[Array, " pixels"]
    pixel_ok: Bool[Array, " pixels"]
    allowed: Bool[Array, "labels pixels"]
    l1: Float[Array, " pixels"]
    wavelength: Float[Array, " pixels"] | None
    label_space: LabelSpace
    training_info: tuple[tuple[str, Any], ...] = eqx.field(static=True, default=())
    calibration: ErrorCalibration | None = None

    def __check_init__(self) -> None:
        n_pixels, n_terms = self.theta.shape
        if n_terms != self.vectorizer.n_terms:
            raise ValueError(f"`theta` has {n_terms} terms but the vectorizer has {self.vectorizer.n_terms}.")
        if self.allowed.shape != (len(self.label_names), n_pixels):
            raise ValueError(
                f"`allowed` has shape {self.allowed.shape}; expected {(len(self.label_names), n_pixels)}."
            )

    # ------------------------------------------------------------------ properties
    @property
    def n_pixels(self) -> int:
        """Number of pixels."""
        return self.theta.shape[0]

    @property
    def term_names(self) -> tuple[str, ...]:
        """Names of the columns of :attr:`theta`."""
        return self.vectorizer.term_names

    @property
    def scatter(self) -> np.ndarray:
        """Intrinsic scatter s_λ (flux units), shape (pixels,)."""
        return np.sqrt(np.asarray(self.s2))

    @property
    def active_terms(self) -> np.ndarray:
        """Bool (pixels, terms): which coefficients censoring lets be non-zero."""
        return active_terms(self.vectorizer.exponent_array, np.asarray(self.allowed))

    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.label_scaler.shift), np.asarray(self.label_scaler.scale)

    def _labels_array(self, labels: Any, name: str = "labels") -> np.ndarray:
        array = as_float_array(labels, name)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != len(self.label_names):
            raise ValueError(
                f"`{name}` has shape {np.shape(labels)}; expected (stars, {len(self.label_names)})"
                f" with columns {list(self.label_names)}."
            )
        return array

    # ------------------------------------------------------------------ generative
    def flux_model(self) -> PolynomialSpectrum:
        """The labels → flux model (float64) the grid, velocity and binary fits evaluate."""
        with jax.enable_x64(True):
            shift = jnp.asarray(self.label_scaler.shift, dtype=jnp.float64)
            scale = jnp.asarray(self.label_scaler.scale, dtype=jnp.float64)
            space = self.label_space
            return PolynomialSpectrum(
                self.label_names,
                self.vectorizer,
                shift,
                scale,
                jnp.asarray(self.theta, dtype=jnp.float64),
                jnp.asarray(self.s2, dtype=jnp.float64),
                jnp.asarray(self.pixel_ok),
                jnp.asarray(space.train) * scale[None, :] + shift[None, :],
                jnp.asarray(space.box) * scale[None, :] + shift[None, :],
            )

    def configuration(self) -> Cannon:
        """The :class:`Cannon` with this label vector, to refit on cross-validation folds.

        Censoring and L1 settings are not stored in the fitted model: pass the original
        configuration explicitly where those matter.
        """
        return Cannon(self.label_names, terms=tuple(self.term_names[1:]))

    @x64
    def predict_flux(self, labels: Any) -> np.ndarray:
        """Model flux at ``labels``.

        Parameters
        ----------
        labels : array-like, shape (stars, labels) or (labels,)
            Labels in their own units, columns in :attr:`label_names` order.

        Returns
        -------
        numpy.ndarray, shape (stars, pixels)
        """
        array = self._labels_array(labels)
        shift, scale = self._scale()
        x = jnp.asarray((array - shift[None, :]) / scale[None, :])
        return np.asarray(self.vectorizer.design(x) @ self.theta.T)

    @x64
    def derivatives(self, labels: Any = None) -> np.ndarray:
        """``∂f_λ/∂label_k`` in flux per label unit, shape (labels, pixels).

        Parameters
        ----------
        labels : array-like, shape (labels,), optional
            Where to evaluate (default: the label pivot, i.e. the training mean).
        """
        shift, scale = self._scale()
        point = shift if labels is None else self._labels_array(labels)[0]
        x = jnp.asarray((point - shift) / scale)
        jac = self.vectorizer.jacobian(x)  # (terms, labels)
        return np.asarray((self.theta @ jac).T / scale[:, None])

    def log_likelihood(
        self,
        labels: Float[Array, " labels"],
        flux: Float[Array, " pixels"],
        ivar: Float[Array, " pixels"],
    ) -> Float[Array, ""]:
        """Gaussian log-likelihood of one spectrum at ``labels``, including s².

        ``ln p = −½ Σ_λ [ω_λ (f_λ − θ_λ·v)² − ln(ω_λ/2π)]`` over pixels with ω > 0,
        ``ω = 1/(σ² + s²)``. Pure JAX (jit/vmap/grad-able); call it inside
        ``jax.enable_x64(True)`` for full precision, as :meth:`infer` does.

        Parameters
        ----------
        labels : array, shape (labels,)
            Labels in their own units.
        flux, ivar : arrays, shape (pixels,)
            Spectrum and inverse variances (0 = masked).
        """
        x = (labels - self.label_scaler.shift) / self.label_scaler.scale
        residual = flux - self.theta @ self.vectorizer(x)
        good = self.pixel_ok & (ivar > 0)
        omega = jnp.where(good, ivar / (1.0 + ivar * self.s2), 0.0)
        log_norm = jnp.where(good, jnp.log(jnp.where(good, omega, 1.0) / (2.0 * jnp.pi)), 0.0)
        return -0.5 * jnp.sum(omega * residual**2) + 0.5 * jnp.sum(log_norm)

    # ------------------------------------------------------------------ test step
    def infer(
        self, data: SpectralDataset, *, uncertainty: str | AbstractUncertainty = "fisher", **options: Any
    ) -> InferenceResult:
        """Labels of every spectrum by :func:`starlabel.models.infer`; options: :meth:`infer_map`."""
        return typed_infer(self, data, uncertainty=as_uncertainty(uncertainty), **options)

    @x64
    def infer_map(
        self,
        data: SpectralDataset,
        *,
        n_starts: int = 3,
        bounds: Mapping[str, Any] | None = None,
        frozen: Mapping[str, Any] | None = None,
        chunk_size: int = 512,
        max_iter: int = 100,
        tol: float = 1e-6,
        poor_fit: float = 3.0,
        uncertainty: str | AbstractUncertainty = "fisher",
        posterior_options: Mapping[str, Any] | None = None,
        calibrate: bool = True,
    ) -> InferenceResult:
        """The Cannon's own test step: labels, covariances, χ² and flags of every spectrum.

        Parameters
        ----------
        data : SpectralDataset
            Spectra on the training pixel grid (labels, if any, are ignored).
        n_starts : int
            Starting points per spectrum: the linear estimate plus ``n_starts − 1``
            training stars spread along the training-label distribution (≥ 1).
        bounds : mapping, optional
            ``{label: (low, high)}`` in label units; None for an open side. Labels
            finishing on a bound are flagged HIT_BOUND. Unbounded labels are still
            kept within the training range widened by its width on each side.
        frozen : mapping, optional
            ``{label: value}`` (number or one value per star) held fixed; their
            covariance rows are zero.
        chunk_size : int
            Spectra per compiled batch; bounds memory (≈ chunk_size × pixels × 40 B).
        max_iter : int
            Levenberg–Marquardt iterations for the best start.
        tol : float
            Convergence when a full Gauss–Newton step would lower χ² by < ``tol``.
        poor_fit : float
            Reduced χ² above which POOR_FIT is set.
        uncertainty : {"fisher", "laplace", "nuts"} or Fisher, Laplace, NUTS
            ``"fisher"`` (default): labels at the χ² minimum, covariance the inverse
            Fisher matrix with noise variance σ² + s². ``"laplace"``: the observed
            curvature there; ``"nuts"``: NUTS draws started there (``extra`` gains
            ``rhat_<label>``, ``ess_<label>``); see :func:`starlabel.models.posterior_infer`.
        posterior_options : mapping, optional
            Keywords for :func:`~starlabel.models.posterior_infer` (``num_warmup``,
            ``num_samples``, ``num_chains``, ``seed``, ``prediction_variance``, …).
        calibrate : bool
            Apply the model's :attr:`calibration` (default True): ``cov`` becomes the
            calibrated total ``D C D + diag(σ_sys²)`` and the statistical errors are
            kept in ``extra["<label>_err_stat"]``. Only the ``"fisher"`` errors it was
            learned on are calibrated; ``meta["errors"]`` says which you got. Its label
            correction (``extra["<label>_bias"]``) applies to the ``"fisher"`` and
            ``"laplace"`` labels (one optimum), not to NUTS's posterior means.

        Returns
        -------
        InferenceResult
            ``labels`` (stars, labels), ``cov`` (see ``uncertainty``, ``calibrate``),
            ``chi2``, ``dof`` (good pixels − free labels), ``flags``,
            ``extra["n_iter"]`` and ``extra["<label>_err_stat"]``.

        Raises
        ------
        ValueError
            If ``data`` is on another pixel or wavelength grid, or an option is malformed.
        """
        if not isinstance(data, SpectralDataset):
            raise TypeError(f"`data` must be a SpectralDataset, got {type(data).__name__}.")
        self._check_grid(data)
        check_options(n_starts=n_starts, chunk_size=chunk_size)
        uncertainty, posterior_options = resolve_uncertainty(uncertainty, posterior_options)
        if uncertainty != "fisher" and frozen:
            raise ValueError("`frozen` labels work with uncertainty='fisher' only; drop one of them.")
        result = map_step(
            self, data, n_starts=n_starts, bounds=bounds, frozen=frozen, chunk_size=chunk_size,
            max_iter=max_iter, tol=tol, poor_fit=poor_fit,
        )  # fmt: skip
        if uncertainty == "fisher":
            return apply_calibration(self.calibration, result, calibrate=calibrate, bounds=bounds)
        refined = refine_uncertainty(self, data, result, result.labels, uncertainty, posterior_options)
        why = f"uncertainty={uncertainty!r}; the calibration was learned on 'fisher'"
        laplace = uncertainty == "laplace"  # same optimum: its labels are corrected alike
        return apply_calibration(
            self.calibration, refined, calibrate=calibrate, why_not=why, map_labels=laplace, bounds=bounds
        )

    def _check_grid(self, data: SpectralDataset) -> None:
        if data.n_pixels != self.n_pixels:
            raise ValueError(
                f"`data` has {data.n_pixels} pixels but this Cannon was trained on {self.n_pixels};"
                " resample the spectra onto the training grid."
            )
        if data.wavelength is not None and self.wavelength is not None:
            if not np.allclose(data.wavelength, np.asarray(self.wavelength), rtol=1e-9, atol=1e-6):
                raise ValueError(
                    "`data.wavelength` differs from the training wavelength grid; resample the"
                    " spectra onto the model's grid (FittedCannon.wavelength)."
                )

    # ------------------------------------------------------------------ serialisation
    def config(self) -> dict[str, Any]:
        """JSON-able structure: labels, term exponents, sizes, training diagnostics."""
        return fitted_config(self)

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> FittedCannon:
        """A FittedCannon with the structure ``config`` describes and zero arrays."""
        return fitted_skeleton(cls, config)
