"""Cannon label vectors, term lists, derivatives and censoring masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel.models.cannon import PolynomialVectorizer, censor_from_windows
from starlabel.models.cannon._censor import active_terms, resolve_censor

NAMES = ("teff", "logg", "m_h")


def test_order_two_has_all_monomials_in_standard_order():
    vec = PolynomialVectorizer.from_order(NAMES, 2)
    assert vec.term_names == (
        "1", "teff", "logg", "m_h",
        "teff^2", "teff*logg", "teff*m_h", "logg^2", "logg*m_h", "m_h^2",
    )  # fmt: skip
    x = jnp.array([0.5, -2.0, 3.0])
    expected = [1, 0.5, -2, 3, 0.25, -1, 1.5, 4, -6, 9]
    with jax.enable_x64(True):
        np.testing.assert_allclose(vec(x), expected)
    assert PolynomialVectorizer.from_order(NAMES, 3).n_terms == 20  # C(3+3, 3)


def test_explicit_terms_parse_powers_and_products():
    vec = PolynomialVectorizer.from_terms(NAMES, "teff + logg + teff^2 + logg*teff + m_h^3*logg")
    assert vec.term_names == ("1", "teff", "logg", "teff^2", "teff*logg", "logg*m_h^3")
    assert vec.order == 4
    np.testing.assert_array_equal(vec.linear_term_index(), [1, 2, -1])
    with jax.enable_x64(True):
        value = vec(jnp.array([2.0, 3.0, -1.0]))
    np.testing.assert_allclose(value, [1, 2, 3, 4, 6, -3])
    # a sequence of strings is the same model
    assert PolynomialVectorizer.from_terms(NAMES, ["teff", "logg"]).term_names == ("1", "teff", "logg")


@pytest.mark.parametrize(
    ("terms", "match"),
    [
        ("teff + vmic", "unknown label 'vmic'"),
        ("teff + teff", "appears twice"),
        ("teff + logg*teff + teff*logg", "appears twice"),
        ("teff ++ logg", "empty term"),
        ("teff^x", "cannot parse"),
        ("1", "no non-constant term"),
    ],
)
def test_bad_terms_are_rejected_with_the_reason(terms, match):
    with pytest.raises(ValueError, match=match):
        PolynomialVectorizer.from_terms(NAMES, terms)


def test_bad_order_is_rejected():
    with pytest.raises(ValueError, match="order"):
        PolynomialVectorizer.from_order(NAMES, 0)


@pytest.mark.parametrize("point", [[0.3, -1.2, 0.7], [0.0, 0.0, 0.0], [1.5, 0.0, -0.4]])
def test_jacobian_matches_autodiff_and_finite_differences(point):
    vec = PolynomialVectorizer.from_terms(NAMES, "teff + logg^3 + teff*logg*m_h^2 + m_h + teff^2")
    with jax.enable_x64(True):
        x = jnp.asarray(point)
        analytic = vec.jacobian(x)
        np.testing.assert_allclose(analytic, jax.jacfwd(vec)(x), atol=1e-14)
        step = 1e-6
        numeric = jnp.stack(
            [(vec(x + step * e) - vec(x - step * e)) / (2 * step) for e in jnp.eye(3)], axis=1
        )
        np.testing.assert_allclose(analytic, numeric, atol=1e-8)
        # derivatives are finite at x = 0 (no 0 · inf from real powers)
        assert np.all(np.isfinite(jax.grad(lambda y: vec(y).sum())(jnp.zeros(3))))


def test_censor_from_windows_marks_closed_intervals():
    wave = np.arange(15000.0, 15010.0)
    mask = censor_from_windows(wave, [(15001.0, 15002.5), (15008, 15009)])
    np.testing.assert_array_equal(np.flatnonzero(mask), [1, 2, 8, 9])
    assert not censor_from_windows(wave, []).any()


@pytest.mark.parametrize(
    ("windows", "match"),
    [([(15005.0, 15001.0)], "start < end"), ([(1.0, 2.0, 3.0)], "pairs"), ([(np.nan, 2.0)], "finite")],
)
def test_censor_from_windows_rejects_bad_windows(windows, match):
    with pytest.raises(ValueError, match=match):
        censor_from_windows(np.arange(10.0), windows)


def test_censoring_deactivates_every_term_of_a_censored_label():
    vec = PolynomialVectorizer.from_order(NAMES, 2)
    wave = np.linspace(15000, 15010, 11)
    allowed = resolve_censor({"m_h": [(15002.0, 15004.0)]}, NAMES, 11, wave)
    active = active_terms(vec.exponent_array, allowed)
    uses_mh = vec.exponent_array[:, 2] > 0
    inside = (wave >= 15002) & (wave <= 15004)
    np.testing.assert_array_equal(active[:, uses_mh], np.repeat(inside[:, None], uses_mh.sum(), axis=1))
    assert active[:, ~uses_mh].all()


@pytest.mark.parametrize(
    ("censor", "wavelength", "match"),
    [
        ({"vmic": [(1.0, 2.0)]}, np.arange(5.0), "not a model label"),
        ({"teff": np.ones(4, dtype=bool)}, np.arange(5.0), r"one entry per pixel, \(5,\)"),
        ({"teff": [(1.0, 2.0)]}, None, "no `wavelength`"),
    ],
)
def test_bad_censor_inputs_name_the_problem(censor, wavelength, match):
    with pytest.raises(ValueError, match=match):
        resolve_censor(censor, NAMES, 5, wavelength)
