"""The hot jitted test-step functions compile once per shape: a second call reuses it.

Each function is wrapped in ``eqx.debug.assert_max_traces`` (as a counter); a call on
data of the same shapes as the one before must not trace it again. A retrace costs
seconds per chunk (the whole test step recompiles), so a cache miss — a Python float
that became a traced value, a fresh closure, an unhashable static argument — would
make every pipeline chunk pay a compilation.
"""

from __future__ import annotations

import equinox as eqx
import numpy as np

from starlabel.data import SpectralDataset, simulate_cannon, simulate_linear_latent
from starlabel.models._binary import _fit_binary_chunk, fit_binary
from starlabel.models._nuisance import _fit_chunk as nuisance_chunk
from starlabel.models._nuisance import infer_with_nuisance
from starlabel.models.cannon import Cannon
from starlabel.models.cannon._infer import fit_chunk
from starlabel.models.lux import Lux
from starlabel.models.lux._test_step import latent_posterior
from test_teststep_sim import (
    PIVOT,
    SCALE,
    LineList,
    apogee_wavelength,
    draw_labels,
    line_list_theta,
    truth_spectrum,
)


def _assert_second_call_does_not_trace(fn, call) -> None:
    """Call twice on the same data: ``fn`` is traced (now or earlier in this process)
    by the first call and not again by the second."""
    call()
    traced = eqx.debug.get_num_traces(fn)
    assert traced >= 1  # the counter sees the function (earlier tests may share shapes)
    call()
    assert eqx.debug.get_num_traces(fn) == traced


def test_cannon_test_step_traces_once_per_shape():
    sim = simulate_cannon(300, 40, 3, snr=100.0, scatter=0.005, seed=2)
    fitted = Cannon(label_names=sim.dataset.label_names).fit(sim.dataset[:200], calibrate=False)
    test = sim.dataset[200:]
    _assert_second_call_does_not_trace(fit_chunk, lambda: fitted.infer(test, calibrate=False))


def _line_model(n_pixels: int):
    wavelength = apogee_wavelength(n_pixels)
    lines = LineList(wavelength)
    train = draw_labels(np.random.default_rng(1), 60)
    theta = line_list_theta(lines, wavelength)
    model = truth_spectrum(theta, PIVOT, SCALE, np.full(n_pixels, 0.002), train)
    labels = draw_labels(np.random.default_rng(2), 3)
    flux = lines.flux(labels, wavelength, np.array([-12.0, 3.0, 20.0]))
    err = np.full_like(flux, 0.01)
    noisy = flux + np.random.default_rng(3).normal(size=flux.shape) * err
    return model, SpectralDataset(noisy, flux_err=err, wavelength=wavelength)


def test_nuisance_and_binary_fits_trace_once_per_shape():
    model, data = _line_model(1200)
    _assert_second_call_does_not_trace(nuisance_chunk, lambda: infer_with_nuisance(model, data, fit_rv=True))
    _assert_second_call_does_not_trace(_fit_binary_chunk, lambda: fit_binary(model, data, dv_max=60.0))


def test_lux_test_step_traces_once_per_shape():
    sim = simulate_linear_latent(n_stars=150, n_latents=2, n_pixels=12, seed=4)
    fitted = Lux(("label_0", "label_1"), latent_size=2, objective="map").fit(
        sim.dataset[:100], calibrate=False
    )
    _assert_second_call_does_not_trace(latent_posterior, lambda: fitted.infer(sim.dataset[100:]))
