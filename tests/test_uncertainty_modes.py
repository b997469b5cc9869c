"""`infer(..., uncertainty=...)` on the Cannon and Lux: the modes are wired and agree.

The calibration of each mode over ≥ 1000 stars is in ``test_calibration_models.py``;
here the models' own entry points must give the same numbers as ``posterior_infer``
and keep the test step's flags and columns.
"""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.data import Flag, simulate_cannon, simulate_linear_latent
from starlabel.models import posterior_infer


@pytest.fixture(scope="module")
def cannon_case():
    from starlabel.models.cannon import Cannon

    sim = simulate_cannon(n_stars=600, n_pixels=120, n_labels=3, snr=(30.0, 80.0), seed=11)
    fitted = Cannon(sim.dataset.label_names, order=2).fit(sim.dataset[:500], calibrate=False)
    return fitted, sim.dataset[500:532].replace(labels=None), sim.true_labels[500:532]


def test_cannon_laplace_mode_is_posterior_infer_at_its_own_optimum(cannon_case):
    fitted, test, truth = cannon_case
    fisher = fitted.infer(test)
    laplace = fitted.infer(test, uncertainty="laplace")
    reference = posterior_infer(fitted, test, method="laplace", start=fisher.labels)
    np.testing.assert_allclose(laplace.labels, reference.labels, rtol=1e-10)
    np.testing.assert_allclose(laplace.cov, reference.cov, rtol=1e-10)
    # Same optimum (Newton polishes it by a tiny fraction of σ); at S/N ≥ 30 observed and
    # expected curvature differ by a few per cent.
    assert np.all(np.abs(laplace.labels - fisher.labels) < 1e-3 * fisher.label_err)
    np.testing.assert_allclose(laplace.label_err, fisher.label_err, rtol=0.1)
    assert "n_iter" in laplace.extra and laplace.meta["uncertainty"] == "laplace"
    z = (laplace.labels - truth) / laplace.label_err
    assert np.all(np.abs(z) < 5.0), np.abs(z).max()


def test_cannon_nuts_mode_reports_diagnostics_and_keeps_test_step_flags(cannon_case):
    fitted, test, _ = cannon_case
    bounded = fitted.infer(test[:8], bounds={"teff": (None, 4000.0)})
    assert np.any(bounded.flags & Flag.HIT_BOUND)
    nuts = fitted.infer(
        test[:8],
        bounds={"teff": (None, 4000.0)},
        uncertainty="nuts",
        posterior_options={"num_warmup": 100, "num_samples": 200, "seed": 3},
    )
    np.testing.assert_array_equal(nuts.flags & Flag.HIT_BOUND, bounded.flags & Flag.HIT_BOUND)
    for name in fitted.label_names:
        assert np.all(np.isfinite(nuts.extra[f"rhat_{name}"]))
        assert np.all(nuts.extra[f"ess_{name}"] > 20)
    assert nuts.meta["uncertainty"] == "nuts"


def test_cannon_mode_errors_name_the_fix(cannon_case):
    fitted, test, _ = cannon_case
    with pytest.raises(ValueError, match="unknown uncertainty 'hessian'"):
        fitted.infer(test[:2], uncertainty="hessian")
    with pytest.raises(ValueError, match="`frozen` labels work with uncertainty='fisher' only"):
        fitted.infer(test[:2], frozen={"teff": 4500.0}, uncertainty="laplace")
    with pytest.raises(ValueError, match="may not set 'start'"):
        fitted.infer(test[:2], uncertainty="laplace", posterior_options={"start": None})


def test_lux_nuts_mode_agrees_with_its_closed_form_posterior():
    from starlabel.models.lux import Lux

    sim = simulate_linear_latent(n_stars=400, n_latents=3, n_pixels=48, seed=4)
    fitted = Lux(("label_0", "label_1"), latent_size=3, scatter="pixel").fit(
        sim.dataset[:300], calibrate=False
    )
    test = sim.dataset[300:316].replace(labels=None)
    fisher = fitted.infer(test)
    nuts = fitted.infer(
        test, uncertainty="nuts", posterior_options={"num_warmup": 150, "num_samples": 400, "seed": 2}
    )
    # An affine Lux has a Gaussian posterior: NUTS must reproduce it within Monte Carlo error.
    shift = (nuts.labels - fisher.labels) / fisher.label_err
    assert np.all(np.abs(shift) < 0.3), np.abs(shift).max()
    ratio = nuts.label_err / fisher.label_err
    assert np.all((ratio > 0.75) & (ratio < 1.25)), ratio
    with pytest.raises(ValueError, match="conditions on the flux alone"):
        fitted.infer(test, inputs=("flux", "labels"), uncertainty="nuts")
