"""First-order optimisers per parameter group, with delayed starts (optax).

Physical parameters differ in scale by orders of magnitude (Teff in K beside [Fe/H] in
dex, or latents beside a scatter), so one learning rate rarely suits them all. Mapping
an optimiser onto each group, and starting some groups late so that well-constrained
parameters settle first, is the cheap fix; Fisher preconditioning
(:class:`NaturalGradient`) and whitening (:class:`Whitening`) are the principled ones.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Bool, PyTree

from ._custom_types import Params

__all__ = ["delay", "group_optimisers"]


def delay(optimiser: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """Hold a group still for the first ``steps`` updates, then run ``optimiser``.

    During the delay the updates are exactly zero and ``optimiser``'s state (momentum,
    Adam moments) is not advanced, so it starts fresh at step ``steps``.

    Parameters
    ----------
    optimiser : optax.GradientTransformation
        The optimiser to start late.
    steps : int
        Number of initial updates to skip (``>= 0``).

    Returns
    -------
    optax.GradientTransformation

    Raises
    ------
    ValueError
        If ``steps`` is negative.

    Examples
    --------
    >>> import optax
    >>> late = delay(optax.sgd(1e-2, momentum=0.5), 50)
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    start = int(steps)

    # optax's ConditionFn: the step count (an integer scalar) and optional extra args.
    def started(step: ArrayLike, **extra_args: Any) -> Bool[Array, ""]:
        del extra_args
        return jnp.asarray(step) >= start

    return optax.transforms.conditionally_mask(optimiser, started)


def group_optimisers(
    optimisers: Mapping[str | tuple[str, ...], optax.GradientTransformation],
    params: Params,
    labels: Callable[[Params], PyTree[str]] | None = None,
) -> optax.GradientTransformation:
    """One optax optimiser per group of parameters (``optax.multi_transform``).

    Parameters
    ----------
    optimisers : mapping
        Group name (or tuple of names sharing one optimiser) to optimiser, e.g.
        ``{("mean", "std"): optax.sgd(2e-3), "power": delay(optax.sgd(5e-3), 50)}``.
    params : pytree
        The parameters to be optimised. Without ``labels`` it must be a dict, and its
        top-level keys are the group names.
    labels : callable, optional
        ``labels(params)`` returning a pytree of group-name strings with the structure of
        ``params`` (or a prefix of it), for parameters that are not a dict.

    Returns
    -------
    optax.GradientTransformation
        Use it with ``optimistix.OptaxMinimiser`` and :func:`fit_map`.

    Raises
    ------
    ValueError
        If a group name is unknown, appears twice, or a parameter has no optimiser; the
        message lists the names.
    TypeError
        If ``params`` is not a dict and ``labels`` is not given.
    """
    transforms: dict[str, optax.GradientTransformation] = {}
    for key, optimiser in optimisers.items():
        for name in (key,) if isinstance(key, str) else key:
            if name in transforms:
                raise ValueError(f"group {name!r} is given an optimiser twice in `optimisers`.")
            transforms[name] = optimiser
    if labels is None:
        if not isinstance(params, Mapping):
            raise TypeError(
                f"`params` is a {type(params).__name__}, not a dict: pass `labels`, a function"
                " returning the group name of each parameter."
            )
        unknown = sorted(set(transforms) - set(params))
        missing = sorted(set(params) - set(transforms))
        if unknown or missing:
            raise ValueError(
                f"`optimisers` must name each top-level key of `params` once: unknown"
                f" {unknown}, without an optimiser {missing} (keys: {sorted(params)})."
            )
        labels = _top_level_keys
    # multi_transform takes a Mapping[Hashable, …], invariant in its key type: a str-keyed
    # dict must be declared Hashable-keyed to be accepted.
    groups: dict[Hashable, optax.GradientTransformation] = {**transforms}
    return optax.multi_transform(groups, labels)


def _top_level_keys(params: Params) -> PyTree[str]:
    # Every leaf under key k is labelled k (the keys may hold nested pytrees).
    return {key: jax.tree.map(lambda _, k=key: k, value) for key, value in params.items()}
