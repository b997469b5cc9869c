"""The Cannon's label vector: monomials in the scaled labels.

A term is a monomial ``x_1^{p_1} x_2^{p_2} … x_K^{p_K}`` in the *scaled* labels
``x = (label - shift) / scale``; the model flux at a pixel is ``θ_λ · v(x)``. Terms are
stored as a static table of integer exponents, so the vectorizer has no array leaves
and never triggers recompilation.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["PolynomialVectorizer"]

_FACTOR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\^\s*(\d+))?\s*$")


def _term_name(exponents: Sequence[int], label_names: Sequence[str]) -> str:
    factors = [
        name if power == 1 else f"{name}^{power}"
        for name, power in zip(label_names, exponents, strict=True)
        if power > 0
    ]
    return "*".join(factors) if factors else "1"


def _parse_terms(terms: str | Sequence[str], label_names: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Exponent rows for an explicit term list such as ``"teff + logg*teff + teff^2"``."""
    pieces = terms.split("+") if isinstance(terms, str) else list(terms)
    rows: list[tuple[int, ...]] = []
    for raw in pieces:
        text = str(raw).strip()
        if not text:
            raise ValueError(
                f"`terms` {terms!r} contains an empty term; write terms separated by '+',"
                " e.g. 'teff + logg + teff^2 + logg*teff'."
            )
        if text == "1":
            continue  # the constant is always included
        powers = [0] * len(label_names)
        for factor in text.split("*"):
            match = _FACTOR.match(factor)
            if match is None:
                raise ValueError(
                    f"cannot parse term {text!r} in `terms`: each factor must be a label name"
                    " optionally raised to an integer power, e.g. 'teff^2*logg'."
                )
            name, power = match.group(1), int(match.group(2) or 1)
            if name not in label_names:
                raise ValueError(
                    f"term {text!r} in `terms` uses unknown label {name!r}; the model's labels"
                    f" are {list(label_names)}."
                )
            if power < 1:
                raise ValueError(f"term {text!r} in `terms` has a zero power; drop that factor.")
            powers[label_names.index(name)] += power
        row = tuple(powers)
        if row in rows:
            raise ValueError(
                f"term {text!r} appears twice in `terms` (as {_term_name(row, label_names)!r});"
                " list each monomial once."
            )
        rows.append(row)
    if not rows:
        raise ValueError("`terms` lists no non-constant term; give at least one, e.g. 'teff'.")
    return rows


class PolynomialVectorizer(eqx.Module):
    """Map scaled labels ``x`` (labels,) to the Cannon label vector ``v(x)`` (terms,).

    The first term is always the constant 1. Build one with :meth:`from_order` (all
    monomials up to a total degree, in the order ``1, x_1 … x_K, x_1², x_1 x_2 …``) or
    :meth:`from_terms` (an explicit list).

    Attributes
    ----------
    label_names : tuple of str
        The labels, in the column order of ``x``.
    exponents : tuple of tuple of int, shape (terms, labels)
        Power of each label in each term; row 0 is all zeros (the constant).

    Examples
    --------
    >>> vec = PolynomialVectorizer.from_terms(("teff", "logg"), "teff + logg + teff^2 + logg*teff")
    >>> vec.term_names
    ('1', 'teff', 'logg', 'teff^2', 'teff*logg')
    """

    label_names: tuple[str, ...] = eqx.field(static=True)
    exponents: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __check_init__(self) -> None:
        n_labels = len(self.label_names)
        if not self.exponents or any(len(row) != n_labels for row in self.exponents):
            raise ValueError(
                f"every exponent row must have one entry per label ({n_labels}); got {self.exponents}."
            )
        if any(power != 0 for power in self.exponents[0]):
            raise ValueError("the first term must be the constant (all exponents zero).")
        if len(set(self.exponents)) != len(self.exponents):
            raise ValueError(f"repeated terms in {self.term_names}.")

    @classmethod
    def from_order(cls, label_names: Sequence[str], order: int = 2) -> PolynomialVectorizer:
        """All monomials of total degree ≤ ``order`` (the standard Cannon model).

        Parameters
        ----------
        label_names : sequence of str
            Label names.
        order : int
            Maximum total degree, ≥ 1 (2 = the quadratic Cannon).
        """
        names = tuple(label_names)
        if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
            raise ValueError(f"`order` must be an integer ≥ 1, got {order!r}.")
        rows = [tuple([0] * len(names))]
        for degree in range(1, int(order) + 1):
            for combo in itertools.combinations_with_replacement(range(len(names)), degree):
                powers = [0] * len(names)
                for k in combo:
                    powers[k] += 1
                rows.append(tuple(powers))
        return cls(names, tuple(rows))

    @classmethod
    def from_terms(cls, label_names: Sequence[str], terms: str | Sequence[str]) -> PolynomialVectorizer:
        """An explicit list of monomials, e.g. ``"teff + logg + teff^2 + logg*teff"``.

        The constant term is always added first (``"1"`` in the list is accepted and
        ignored). Factors are label names with optional integer powers ``^p``, joined by
        ``*``; terms are joined by ``+`` (or given as a sequence of strings).

        Raises
        ------
        ValueError
            On unknown label names, unparsable or repeated terms.
        """
        names = tuple(label_names)
        rows = [tuple([0] * len(names)), *_parse_terms(terms, names)]
        return cls(names, tuple(rows))

    # ------------------------------------------------------------------ properties
    @property
    def n_terms(self) -> int:
        """Number of terms, constant included."""
        return len(self.exponents)

    @property
    def n_labels(self) -> int:
        """Number of labels."""
        return len(self.label_names)

    @property
    def order(self) -> int:
        """Largest total degree of any term."""
        return max(sum(row) for row in self.exponents)

    @property
    def term_names(self) -> tuple[str, ...]:
        """Readable names, e.g. ``('1', 'teff', 'logg', 'teff^2', 'teff*logg')``."""
        return tuple(_term_name(row, self.label_names) for row in self.exponents)

    @property
    def exponent_array(self) -> np.ndarray:
        """The exponents as an int array, shape (terms, labels)."""
        return np.asarray(self.exponents, dtype=np.int64).reshape(self.n_terms, self.n_labels)

    def linear_term_index(self) -> np.ndarray:
        """Index of the term ``x_k`` for each label k, or -1 when the model lacks it."""
        rows = {row: t for t, row in enumerate(self.exponents)}
        eye = np.eye(self.n_labels, dtype=np.int64)
        return np.array([rows.get(tuple(int(p) for p in eye[k]), -1) for k in range(self.n_labels)])

    # ------------------------------------------------------------------ maths
    def _factors(self, x: Float[Array, " labels"]) -> tuple[Array, Array]:
        """Per-term, per-label factors ``x_k^{p_tk}`` and their derivatives, (terms, labels)."""
        exponents = self.exponent_array
        max_power = int(exponents.max())
        # Powers by repeated multiplication, not ``x ** p``: the autodiff rule of a real
        # power evaluates ``p · x^(p-1)``, which is 0 · inf = NaN at x = 0 for p = 0.
        powers = [jnp.ones_like(x)]
        for _ in range(max_power):
            powers.append(powers[-1] * x)
        slopes = [jnp.zeros_like(x)] + [e * powers[e - 1] for e in range(1, max_power + 1)]
        columns = jnp.arange(self.n_labels)[None, :]
        index = jnp.asarray(exponents)
        return jnp.stack(powers, axis=1)[columns, index], jnp.stack(slopes, axis=1)[columns, index]

    def __call__(self, x: Float[Array, " labels"]) -> Float[Array, " terms"]:
        """The label vector ``v(x)`` at scaled labels ``x``."""
        factors, _ = self._factors(x)
        result = factors[:, 0]
        for k in range(1, self.n_labels):
            result = result * factors[:, k]
        return result

    def design(self, x: Float[Array, "stars labels"]) -> Float[Array, "stars terms"]:
        """Label vectors of many stars, shape (stars, terms)."""
        return jax.vmap(self)(x)

    def jacobian(self, x: Float[Array, " labels"]) -> Float[Array, "terms labels"]:
        """``∂v/∂x`` at ``x``, shape (terms, labels), by the product rule (exact).

        Written out rather than by autodiff because the test step evaluates it in every
        iteration of every start of every spectrum; the explicit form is smaller to
        compile and free of divisions (so exact at x = 0).
        """
        factors, slopes = self._factors(x)
        columns = []
        for k in range(self.n_labels):
            column = slopes[:, k]
            for j in range(self.n_labels):
                if j != k:
                    column = column * factors[:, j]
            columns.append(column)
        return jnp.stack(columns, axis=1)
