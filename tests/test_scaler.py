import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from starlabel._internal import x64
from starlabel.data import ShiftScale

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    data=arrays(np.float64, (12, 3), elements=finite),
    errors=arrays(np.float64, (12, 3), elements=st.floats(0.0, 1e3)),
    robust=st.booleans(),
)
@x64
def test_round_trip_with_errors(data, errors, robust):
    scaler = ShiftScale.fit(data, robust=robust)
    scaled, scaled_err = scaler.transform(data, errors)
    back, back_err = scaler.inverse_transform(scaled, scaled_err)
    np.testing.assert_allclose(back, data, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(back_err, errors, rtol=1e-9, atol=1e-9)
    assert np.all(np.asarray(scaler.scale) > 0)


@settings(max_examples=25, deadline=None)
@given(data=arrays(np.float64, (30, 2), elements=st.floats(-100, 100)))
@example(data=np.full((30, 2), 9.27646175e-141))  # constant column: std is rounding noise
@x64
def test_error_propagation_matches_monte_carlo_linear_map(data):
    # An affine map's error propagation is exact: check against explicit derivative.
    scaler = ShiftScale.fit(data, robust=False)
    cov = np.array([[4.0, 1.0], [1.0, 9.0]])
    scaled_cov = np.asarray(scaler.transform_cov(cov))
    jac = np.diag(1 / np.asarray(scaler.scale))
    np.testing.assert_allclose(scaled_cov, jac @ cov @ jac.T, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(scaler.inverse_transform_cov(scaled_cov)), cov, rtol=1e-12)
    ivar = 1 / np.diag(cov)
    np.testing.assert_allclose(np.asarray(scaler.transform_ivar(ivar)), 1 / np.diag(scaled_cov), rtol=1e-12)


@x64
def test_fit_ignores_nan_and_zero_weight_and_handles_constant_columns():
    x = np.array([[1.0, 5.0, 2.0], [3.0, np.nan, 2.0], [5.0, 7.0, 2.0], [100.0, 9.0, 2.0]])
    w = np.ones_like(x)
    w[3, 0] = 0.0
    scaler = ShiftScale.fit(x, weights=w, robust=False)
    np.testing.assert_allclose(np.asarray(scaler.shift), [3.0, 7.0, 2.0])
    np.testing.assert_allclose(np.asarray(scaler.scale)[:2], [np.std([1, 3, 5]), np.std([5, 7, 9])])
    assert float(scaler.scale[2]) == 1.0  # constant column: no division by zero


@x64
def test_robust_fit_ignores_outlier():
    rng = np.random.default_rng(0)
    x = rng.normal(10.0, 2.0, (2000, 1))
    x[:50] = 1e6
    scaler = ShiftScale.fit(x)
    assert abs(float(scaler.shift[0]) - 10.0) < 0.3
    assert abs(float(scaler.scale[0]) - 2.0) < 0.3
