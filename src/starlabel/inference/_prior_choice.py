"""Resolve a prior choice (name, serialised dict, object, NumPyro distribution) into a label prior.

The one place where prior names and serialised priors become
:class:`~starlabel.inference.AbstractLabelPrior` objects (the classes live in
``_priors.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._priors import (
    PRIOR_FORMAT,
    AbstractLabelPrior,
    DistributionPrior,
    FlatPrior,
    GaussianPrior,
    KDEPrior,
    _decode,
)

__all__ = ["PRIOR_KINDS", "prior_from_dict", "resolve_prior"]

PRIOR_KINDS: dict[str, type[AbstractLabelPrior]] = {
    "none": FlatPrior,
    "gaussian": GaussianPrior,
    "kde": KDEPrior,
    "numpyro": DistributionPrior,
}
"""Prior kind (as written by ``to_dict`` and accepted on the CLI) → class."""


def prior_from_dict(spec: dict[str, Any]) -> AbstractLabelPrior:
    """Rebuild a prior from :meth:`AbstractLabelPrior.to_dict` output (parsed JSON).

    Raises
    ------
    ValueError
        On an unknown kind or a newer format.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError("a serialised prior must be a dict with a 'kind' entry (from prior.to_dict()).")
    kind = spec["kind"]
    if kind not in PRIOR_KINDS:
        raise ValueError(f"unknown prior kind {kind!r}; known kinds: {sorted(PRIOR_KINDS)}.")
    if int(spec.get("format", PRIOR_FORMAT)) > PRIOR_FORMAT:
        raise ValueError(
            f"this prior was written in format {spec['format']}, newer than this library's"
            f" {PRIOR_FORMAT}; upgrade starlabel."
        )
    names = tuple(spec["label_names"])
    with jax.enable_x64(True):
        if kind == "none":
            return FlatPrior(names)
        if kind == "gaussian":
            return GaussianPrior(names, jnp.asarray(spec["mean"]), jnp.asarray(spec["cov"]))
        if kind == "kde":
            return KDEPrior(
                names,
                jnp.asarray(spec["points"]),
                jnp.asarray(spec["bandwidth"]),
                n_local=int(spec.get("n_local", 128)),
            )
        box = spec.get("box")
        return DistributionPrior(
            names,
            _decode(spec["distribution"]),
            None if box is None else (tuple(box[0]), tuple(box[1])),
        )


def resolve_prior(
    prior: Any,
    label_names: Sequence[str],
    train_labels: Any = None,
) -> AbstractLabelPrior:
    """Turn a prior choice (name, dict, object or None) into a prior over ``label_names``.

    The one place where prior names are resolved: ``"none"`` (or None) → :class:`FlatPrior`,
    ``"gaussian"`` → :meth:`GaussianPrior.fit`, ``"kde"`` → :meth:`KDEPrior.fit` of
    ``train_labels``; a dict is read with :func:`prior_from_dict`; a NumPyro distribution
    is wrapped in :class:`DistributionPrior`; a prior object is reordered to
    ``label_names``.

    Parameters
    ----------
    prior : str, dict, AbstractLabelPrior, numpyro Distribution or None
        The choice.
    label_names : sequence of str
        The model's labels, in order.
    train_labels : array-like, shape (stars, labels), optional
        Training labels in ``label_names`` order; needed for ``"gaussian"`` and ``"kde"``.

    Raises
    ------
    ValueError
        On an unknown name (listing the valid ones), or a fitted prior without labels.
    """
    names = tuple(label_names)
    if prior is None:
        return FlatPrior(names)
    if isinstance(prior, AbstractLabelPrior):
        return prior.reorder(names)
    if isinstance(prior, dict):
        return prior_from_dict(prior).reorder(names)
    if isinstance(prior, str):
        choice = prior.strip().lower()
        if choice == "none":
            return FlatPrior(names)
        if choice in ("gaussian", "kde"):
            if train_labels is None:
                raise ValueError(
                    f"prior {choice!r} is fitted to training labels; pass `train_labels` (stars,"
                    f" {len(names)}) or a model that keeps its training labels."
                )
            fit = GaussianPrior.fit if choice == "gaussian" else KDEPrior.fit
            return fit(train_labels, names)
        raise ValueError(
            f"unknown prior {prior!r}; choose one of ['none', 'gaussian', 'kde'] or pass a prior object."
        )
    if hasattr(prior, "log_prob") and hasattr(prior, "event_shape"):
        return DistributionPrior(names, prior)
    raise TypeError(
        f"`prior` must be 'none', 'gaussian', 'kde', a dict, an AbstractLabelPrior or a numpyro"
        f" distribution; got {type(prior).__name__}."
    )
