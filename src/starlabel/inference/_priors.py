r"""Priors on stellar labels: none, a Gaussian or a kernel density of training labels, or any NumPyro distribution.

A label prior is a density :math:`p(\ell)` over one star's label vector (labels in
their own units: K, dex, …). It is an ``eqx.Module`` (so it passes through ``jit`` and
``vmap``) and round-trips through plain JSON (:meth:`AbstractLabelPrior.to_dict`,
:func:`~starlabel.inference._prior_choice.prior_from_dict`), so a model file can carry the
prior it was calibrated with; choices (names, dicts, objects) are resolved in
``_prior_choice.py``.

Why a kernel density: the training labels of a survey trace narrow sequences (the
red-giant branch, the red clump) in Teff–logg–[Fe/H]; a Gaussian fills the space between
them, whereas a kernel density keeps the posterior off label combinations no training
star has, which is what breaks the χ² valleys of the test step (``docs/test_step.md``).
"""

# No ``from __future__ import annotations`` here: equinox sees ``eqx.AbstractVar`` only in an
# evaluated annotation (as a string it becomes a plain dataclass field, never checked).
import abc
import importlib
import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._internal import check_label_names, x64

__all__ = [
    "AbstractLabelPrior",
    "FlatPrior",
    "GaussianPrior",
    "KDEPrior",
    "DistributionPrior",
]

PRIOR_FORMAT = 1
"""Version of the JSON layout written by ``to_dict``; bump on incompatible changes."""


def _clean_training_labels(labels: Any, label_names: tuple[str, ...], what: str) -> np.ndarray:
    array = np.asarray(labels, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(label_names):
        raise ValueError(
            f"`{what}` has shape {array.shape}; expected (stars, {len(label_names)}) with columns"
            f" {list(label_names)}."
        )
    array = array[np.all(np.isfinite(array), axis=1)]
    if len(array) < len(label_names) + 2:
        raise ValueError(
            f"`{what}` has {len(array)} stars with all labels finite; a prior fitted to training"
            f" labels needs at least {len(label_names) + 2}."
        )
    return array


def _names(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(
            f"`label_names` must be a sequence of names such as ('teff', 'logg'), not the string {value!r}."
        )
    return tuple(value)


class AbstractLabelPrior(eqx.Module):
    """A prior density over the label vector of one star (labels in their own units).

    Subclasses implement :meth:`log_prob` (pure JAX, for one star; ``vmap`` for many),
    :meth:`support` (a box holding nearly all the prior's mass, or ``None`` for an
    improper prior) and the JSON round trip.
    """

    kind: ClassVar[str]
    label_names: eqx.AbstractVar[tuple[str, ...]]

    @abc.abstractmethod
    def log_prob(self, labels: Float[Array, " labels"]) -> Float[Array, ""]:
        """Log density at ``labels`` (own units); −inf outside the support."""

    @abc.abstractmethod
    def support(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(lower, upper)``, each shape (labels,): a box holding nearly all prior mass."""

    @abc.abstractmethod
    def _params(self) -> dict[str, Any]:
        """JSON-able parameters (without ``kind`` and ``label_names``)."""

    def localise(self, centre: Float[Array, " labels"]) -> "AbstractLabelPrior":
        """A cheaper prior that agrees with this one near ``centre`` (default: itself).

        Grid integration evaluates the prior at thousands of nodes per star inside small
        boxes; a kernel density restricts itself to its nearest kernels there.
        """
        del centre
        return self

    @property
    def n_labels(self) -> int:
        """Number of labels."""
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; :func:`prior_from_dict` rebuilds the prior."""
        out = {"kind": self.kind, "format": PRIOR_FORMAT, "label_names": list(self.label_names)}
        out.update(self._params())
        json.dumps(out)  # fail here, not when the model file is written
        return out

    def reorder(self, label_names: Sequence[str]) -> "AbstractLabelPrior":
        """Return the prior with its labels permuted into ``label_names`` order.

        Raises
        ------
        ValueError
            If the label sets differ.
        """
        names = tuple(label_names)
        if names == self.label_names:
            return self
        if sorted(names) != sorted(self.label_names):
            raise ValueError(
                f"the prior is over labels {list(self.label_names)} but the model infers"
                f" {list(names)}; build the prior from labels with the model's names."
            )
        return _Permuted(names, self, tuple(self.label_names.index(n) for n in names))


class _Permuted(AbstractLabelPrior):
    kind: ClassVar[str] = "permuted"
    label_names: tuple[str, ...] = eqx.field(static=True)
    inner: AbstractLabelPrior
    order: tuple[int, ...] = eqx.field(static=True)

    def log_prob(self, labels: Float[Array, " labels"]) -> Float[Array, ""]:
        inverse = np.argsort(np.asarray(self.order))
        return self.inner.log_prob(labels[inverse])

    def support(self) -> tuple[np.ndarray, np.ndarray] | None:
        box = self.inner.support()
        if box is None:
            return None
        return box[0][list(self.order)], box[1][list(self.order)]

    def localise(self, centre: Float[Array, " labels"]) -> AbstractLabelPrior:
        inverse = np.argsort(np.asarray(self.order))
        return _Permuted(self.label_names, self.inner.localise(centre[inverse]), self.order)

    def _params(self) -> dict[str, Any]:
        raise TypeError("a reordered prior is not serialised; save the original prior instead.")


class FlatPrior(AbstractLabelPrior):
    """The improper flat prior ``p(ℓ) ∝ 1`` (no prior; the default of the test step).

    Parameters
    ----------
    label_names : sequence of str
        The labels.

    Examples
    --------
    >>> prior = FlatPrior(("teff", "logg"))
    >>> float(prior.log_prob(jnp.array([4800.0, 2.5])))
    0.0
    """

    kind: ClassVar[str] = "none"
    label_names: tuple[str, ...] = eqx.field(static=True, converter=_names)

    def log_prob(self, labels: Float[Array, " labels"]) -> Float[Array, ""]:
        return jnp.zeros((), dtype=labels.dtype)

    def support(self) -> None:
        return None

    def _params(self) -> dict[str, Any]:
        return {}


class GaussianPrior(AbstractLabelPrior):
    r"""A multivariate normal prior :math:`N(\mu, \Sigma)` on the labels.

    Parameters
    ----------
    label_names : sequence of str
        The labels.
    mean : array, shape (labels,)
        :math:`\mu`, in label units.
    cov : array, shape (labels, labels)
        :math:`\Sigma`, symmetric positive definite.

    Raises
    ------
    ValueError
        On shapes that do not match the number of labels.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.random.default_rng(0).normal([4800, 2.5], [300, 0.5], (500, 2))
    >>> prior = GaussianPrior.fit(labels, ("teff", "logg"))
    >>> np.round(np.asarray(prior.mean), -1)[0]
    np.float64(4800.0)
    """

    kind: ClassVar[str] = "gaussian"
    label_names: tuple[str, ...] = eqx.field(static=True, converter=_names)
    mean: Float[Array, " labels"]
    cov: Float[Array, "labels labels"]

    def __check_init__(self) -> None:
        k = len(self.label_names)
        if self.mean.shape != (k,) or self.cov.shape != (k, k):
            raise ValueError(
                f"GaussianPrior over {k} labels needs mean ({k},) and cov ({k}, {k}); got"
                f" {self.mean.shape} and {self.cov.shape}."
            )

    @classmethod
    @x64
    def fit(cls, labels: Any, label_names: Sequence[str], *, inflate: float = 1.0) -> "GaussianPrior":
        """The sample mean and covariance of training labels (rows with NaN are dropped).

        Parameters
        ----------
        labels : array-like, shape (stars, labels)
            Training labels in their own units.
        label_names : sequence of str
            One name per column.
        inflate : float
            Multiplies the covariance (> 1 widens the prior).
        """
        names = check_label_names(label_names, np.shape(labels)[-1])
        array = _clean_training_labels(labels, names, "labels")
        if not inflate > 0:
            raise ValueError(f"`inflate` must be > 0, got {inflate}.")
        cov = np.cov(array, rowvar=False).reshape(len(names), len(names)) * inflate
        return cls(names, jnp.asarray(array.mean(axis=0)), jnp.asarray(cov))

    def log_prob(self, labels: Float[Array, " labels"]) -> Float[Array, ""]:
        chol = jnp.linalg.cholesky(self.cov)
        inv_chol = jax.scipy.linalg.solve_triangular(
            chol, jnp.eye(self.n_labels, dtype=chol.dtype), lower=True
        )
        z = inv_chol @ (labels - self.mean)
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return -0.5 * (z @ z + log_det + self.n_labels * math.log(2.0 * math.pi))

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(np.diag(np.asarray(self.cov)))
        mean = np.asarray(self.mean)
        return mean - 4.0 * std, mean + 4.0 * std

    def _params(self) -> dict[str, Any]:
        return {"mean": np.asarray(self.mean).tolist(), "cov": np.asarray(self.cov).tolist()}


class KDEPrior(AbstractLabelPrior):
    r"""A Gaussian kernel density estimate of training labels.

    .. math:: p(\ell) = \frac{1}{N}\sum_{i=1}^{N} N(\ell \mid \ell_i, H),
              \qquad H = b^2\,\hat\Sigma

    with :math:`\hat\Sigma` the training labels' covariance and :math:`b` the bandwidth
    factor (Scott's rule :math:`b = N^{-1/(K+4)}` by default), so the kernels follow the
    correlations of the training set.

    Parameters
    ----------
    label_names : sequence of str
        The labels.
    points : array, shape (kernels, labels)
        Kernel centres (training labels, own units).
    bandwidth : array, shape (labels, labels)
        Kernel covariance :math:`H`.
    n_local : int
        Kernels kept by :meth:`localise` (nearest to the centre in kernel-whitened units).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.random.default_rng(0).normal([4800, 2.5], [300, 0.5], (400, 2))
    >>> prior = KDEPrior.fit(labels, ("teff", "logg"))
    >>> prior.points.shape, prior.bandwidth.shape
    ((400, 2), (2, 2))

    References
    ----------
    Scott (1992), *Multivariate Density Estimation*, Wiley (bandwidth rule).
    """

    kind: ClassVar[str] = "kde"
    label_names: tuple[str, ...] = eqx.field(static=True, converter=_names)
    points: Float[Array, "kernels labels"]
    bandwidth: Float[Array, "labels labels"]
    n_local: int = eqx.field(static=True, default=128)

    def __check_init__(self) -> None:
        k = len(self.label_names)
        if self.points.ndim != 2 or self.points.shape[1] != k or self.bandwidth.shape != (k, k):
            raise ValueError(
                f"KDEPrior over {k} labels needs points (kernels, {k}) and bandwidth ({k}, {k});"
                f" got {self.points.shape} and {self.bandwidth.shape}."
            )

    @classmethod
    @x64
    def fit(
        cls,
        labels: Any,
        label_names: Sequence[str],
        *,
        bandwidth: float | str = "scott",
        max_points: int = 2048,
        n_local: int = 128,
        seed: int = 0,
    ) -> "KDEPrior":
        """A kernel density of training labels.

        Parameters
        ----------
        labels : array-like, shape (stars, labels)
            Training labels in their own units (rows with NaN are dropped).
        label_names : sequence of str
            One name per column.
        bandwidth : "scott" or float
            Bandwidth factor b (kernel covariance b² Σ̂); ``"scott"`` uses N^(−1/(K+4)).
        max_points : int
            Keep at most this many kernels (a seeded random subset), bounding the cost.
        n_local : int
            Kernels used near a point by :meth:`localise`.
        seed : int
            Seed of the subset.
        """
        names = check_label_names(label_names, np.shape(labels)[-1])
        array = _clean_training_labels(labels, names, "labels")
        if len(array) > max_points:
            keep = np.random.default_rng(seed).choice(len(array), max_points, replace=False)
            array = array[np.sort(keep)]
        n, k = array.shape
        if bandwidth == "scott":
            factor = n ** (-1.0 / (k + 4))
        elif isinstance(bandwidth, int | float) and bandwidth > 0:
            factor = float(bandwidth)
        else:
            raise ValueError(f"`bandwidth` must be 'scott' or a positive number, got {bandwidth!r}.")
        cov = np.cov(array, rowvar=False).reshape(k, k)
        return cls(names, jnp.asarray(array), jnp.asarray(factor**2 * cov), n_local=int(n_local))

    def _whitened(self) -> tuple[Array, Array, Array]:
        """Inverse Cholesky factor W of the bandwidth (H⁻¹ = WᵀW), whitened kernel centres, log norm."""
        chol = jnp.linalg.cholesky(self.bandwidth)
        inv_chol = jax.scipy.linalg.solve_triangular(
            chol, jnp.eye(self.n_labels, dtype=chol.dtype), lower=True
        )
        log_norm = -jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * self.n_labels * math.log(2.0 * math.pi)
        return inv_chol, self.points @ inv_chol.T, log_norm

    def log_prob(self, labels: Float[Array, " labels"]) -> Float[Array, ""]:
        # Whitening by a matrix product, not a triangular solve per point: under vmap
        # over grid nodes the factor is computed once and each node costs one matvec.
        inv_chol, points, log_norm = self._whitened()
        z = inv_chol @ labels
        sq = jnp.sum((points - z[None, :]) ** 2, axis=1)
        return jax.nn.logsumexp(-0.5 * sq) + log_norm - jnp.log(self._n_total())

    def _n_total(self) -> Array:
        return jnp.asarray(self.points.shape[0], dtype=self.points.dtype)

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(self.points)
        std = np.sqrt(np.diag(np.asarray(self.bandwidth)))
        return points.min(axis=0) - 3.0 * std, points.max(axis=0) + 3.0 * std

    def localise(self, centre: Float[Array, " labels"]) -> AbstractLabelPrior:
        if self.points.shape[0] <= self.n_local:
            return self
        inv_chol, points, _ = self._whitened()
        z = inv_chol @ centre
        # The nearest kernels in whitened units dominate the sum inside a box a few
        # kernel widths across; the rest contribute < exp(-r²/2) of the nearest.
        _, index = jax.lax.top_k(-jnp.sum((points - z[None, :]) ** 2, axis=1), self.n_local)
        local = _LocalKDE(self.label_names, self.points[index], self.bandwidth, jnp.zeros((), centre.dtype))
        # Match the full density at the centre, so that the nested grid stages (some
        # evaluated with the full sum, some with the local one) join without a step.
        offset = self.log_prob(centre) - local.log_prob(centre)
        return _LocalKDE(self.label_names, local.points, self.bandwidth, offset)

    def _params(self) -> dict[str, Any]:
        return {
            "points": np.asarray(self.points).tolist(),
            "bandwidth": np.asarray(self.bandwidth).tolist(),
            "n_local": self.n_local,
        }


class _LocalKDE(AbstractLabelPrior):
    """The kernels of a :class:`KDEPrior` nearest to a point, plus a log offset."""

    kind: ClassVar[str] = "kde_local"
    label_names: tuple[str, ...] = eqx.field(static=True)
    points: Float[Array, "kernels labels"]
    bandwidth: Float[Array, "labels labels"]
    offset: Float[Array, ""]

    def log_prob(self, labels: Float[Array, " labels"]) -> Float[Array, ""]:
        chol = jnp.linalg.cholesky(self.bandwidth)
        inv_chol = jax.scipy.linalg.solve_triangular(
            chol, jnp.eye(self.n_labels, dtype=chol.dtype), lower=True
        )
        log_norm = -jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * self.n_labels * math.log(2.0 * math.pi)
        sq = jnp.sum((self.points @ inv_chol.T - (inv_chol @ labels)[None, :]) ** 2, axis=1)
        return jax.nn.logsumexp(-0.5 * sq) + log_norm + self.offset

    def support(self) -> None:
        return None

    def _params(self) -> dict[str, Any]:
        raise TypeError("a localised kernel density is not serialised; save the full KDEPrior.")


# --------------------------------------------------------------------------- numpyro
_ALLOWED_PACKAGE = "numpyro."


def _encode(obj: Any) -> Any:
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(o) for o in obj]}
    if isinstance(obj, list):
        return [_encode(o) for o in obj]
    if isinstance(obj, dict):
        return {"__dict__": {str(k): _encode(v) for k, v in obj.items()}}
    if isinstance(obj, jax.Array | np.ndarray | np.generic):
        array = np.asarray(obj)
        return {"__array__": array.tolist(), "dtype": str(array.dtype)}
    cls = type(obj)
    if cls.__module__.startswith(_ALLOWED_PACKAGE) and hasattr(cls, "tree_flatten"):
        children, aux = obj.tree_flatten()
        return {
            "__pytree__": f"{cls.__module__}:{cls.__qualname__}",
            "children": [_encode(c) for c in children],
            "aux": _encode(aux),
        }
    raise TypeError(
        f"cannot serialise {cls.__module__}.{cls.__qualname__} inside a numpyro distribution;"
        " only numpyro distributions, constraints and arrays are supported."
    )


def _decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(o) for o in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tuple__" in obj:
        return tuple(_decode(o) for o in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: _decode(v) for k, v in obj["__dict__"].items()}
    if "__array__" in obj:
        return jnp.asarray(np.asarray(obj["__array__"], dtype=obj["dtype"]))
    if "__pytree__" in obj:
        module_name, _, qualname = obj["__pytree__"].partition(":")
        if not module_name.startswith(_ALLOWED_PACKAGE):
            raise ValueError(f"refusing to import {module_name!r}: only numpyro classes are allowed.")
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
        return target.tree_unflatten(_decode(obj["aux"]), [_decode(c) for c in obj["children"]])
    raise ValueError(f"unrecognised entry in a serialised distribution: {sorted(obj)}.")


class DistributionPrior(AbstractLabelPrior):
    """Any NumPyro distribution over the label vector as a prior.

    Parameters
    ----------
    label_names : sequence of str
        The labels, in the order of the distribution's event dimension.
    distribution : numpyro.distributions.Distribution
        Its event shape must be ``(labels,)`` (use ``.to_event(1)`` on independent
        per-label distributions) and its batch shape ``()``.
    box : (lower, upper), optional
        Support box for grid integration; default the distribution's own bounds when
        finite, otherwise mean ± 5 standard deviations.

    Raises
    ------
    ValueError
        If the event or batch shape does not fit.

    Examples
    --------
    >>> import numpyro.distributions as dist
    >>> d = dist.Normal(jnp.array([4800.0, 2.5]), jnp.array([300.0, 0.5])).to_event(1)
    >>> prior = DistributionPrior(("teff", "logg"), d)
    >>> prior.support()[0].round(1).tolist()
    [3300.0, 0.0]
    """

    kind: ClassVar[str] = "numpyro"
    label_names: tuple[str, ...] = eqx.field(static=True, converter=_names)
    distribution: Any
    box: tuple[tuple[float, ...], tuple[float, ...]] | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        k = len(self.label_names)
        event, batch = tuple(self.distribution.event_shape), tuple(self.distribution.batch_shape)
        if event != (k,) or batch != ():
            raise ValueError(
                f"`distribution` must have event shape ({k},) and batch shape () for labels"
                f" {list(self.label_names)}; got event {event}, batch {batch} (wrap per-label"
                " distributions with .to_event(1))."
            )

    def log_prob(self, labels: Float[Array, " labels"]) -> Float[Array, ""]:
        # NumPyro returns finite densities outside the support unless validation is on
        # (a global flag); the prior contract is −inf there, whatever the flag.
        inside = jnp.all(self.distribution.support.check(labels))
        # Evaluate at the mean outside the support, so gradients stay finite.
        safe = jnp.where(inside, labels, jnp.asarray(self.distribution.mean, dtype=labels.dtype))
        return jnp.where(inside, self.distribution.log_prob(safe), -jnp.inf)

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        if self.box is not None:
            return np.asarray(self.box[0], dtype=float), np.asarray(self.box[1], dtype=float)
        constraint = self.distribution.support
        while hasattr(constraint, "base_constraint"):  # independent(interval(...)) etc.
            constraint = constraint.base_constraint
        lower = np.broadcast_to(
            np.asarray(getattr(constraint, "lower_bound", -np.inf), dtype=float), (self.n_labels,)
        )
        upper = np.broadcast_to(
            np.asarray(getattr(constraint, "upper_bound", np.inf), dtype=float), (self.n_labels,)
        )
        if np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)):
            return lower.copy(), upper.copy()
        mean = np.asarray(self.distribution.mean, dtype=float)
        std = np.sqrt(np.asarray(self.distribution.variance, dtype=float))
        return np.where(np.isfinite(lower), lower, mean - 5 * std), np.where(
            np.isfinite(upper), upper, mean + 5 * std
        )

    def _params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"distribution": _encode(self.distribution)}
        if self.box is not None:
            out["box"] = [list(self.box[0]), list(self.box[1])]
        return out
