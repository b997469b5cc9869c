"""Full abundance sets: ASPCAP censoring windows, the vmicro label, and 18-label Cannons.

* the ASPCAP window reader decodes known lines at their known (vacuum) wavelengths
  and its windows give back exactly the file's pixels on the DR13–17 grid;
* ``starlabel train cannon --censor aspcap`` censors each element label to its
  element's windows, end to end through the CLI on a tiny simulated file;
* the line-list simulator's free ``vmicro`` label strengthens saturated lines;
* an 18-label (190-term) quadratic Cannon recovers labels of spectra drawn from its own
  family within 15 % of the Cramér–Rao bound (the inverse Fisher matrix at the truth),
  through the residual test step that many-term models take.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import LINE_ELEMENTS, ShiftScale, SpectralDataset, read_result, simulate_lines
from starlabel.inference import Marquardt, damped_newton
from starlabel.models import load_model
from starlabel.models.cannon import FittedCannon, PolynomialVectorizer, censor_from_windows
from starlabel.models.cannon._infer import LabelSpace
from starlabel.models.cannon._quadratic_step import _evaluate, quadratic_form, use_quadratic_step
from starlabel.survey import (
    ASPCAP_WINDOW_ELEMENTS,
    GRIDS,
    aspcap_censor,
    aspcap_window_masks,
    aspcap_windows,
    label_element,
)

LABELS_18 = ("teff", "logg", "fe_h", "vmicro") + tuple(f"{e}_fe" for e in LINE_ELEMENTS)


@pytest.fixture
def window_file(shared_data: Path) -> Path:
    path = shared_data / "apogee" / "astronn_aspcap_l31c_masks.npy"
    if not path.is_file():
        pytest.skip(f"{path} is not in the shared data")
    return path


# ----------------------------------------------------------------------------- ASPCAP windows
# Vacuum wavelengths (Å) of well-known APOGEE lines (Smith et al. 2013; Shetrone et al. 2015).
KNOWN_LINES = {
    "Na": (16378.3, 16393.3),
    "K": (15167.2, 15172.5),
    "Mg": (15745.0, 15753.3, 15770.1),
    "Al": (16723.5, 16755.1, 16767.9),
    "Ca": (16141.2, 16155.2, 16161.8),
}


def _inside(windows: list[tuple[float, float]], wavelength: float) -> bool:
    return any(lo <= wavelength <= hi for lo, hi in windows)


def test_aspcap_windows_decode_known_lines(window_file):
    windows = aspcap_windows(path=window_file)
    assert tuple(windows) == ASPCAP_WINDOW_ELEMENTS
    for element, lines in KNOWN_LINES.items():
        for line in lines:
            assert _inside(windows[element], line), (element, line)
            # … and not in an unrelated element's sparse windows
            assert not _inside(windows["Nd"], line)
    assert len(windows["Na"]) == 2 and len(windows["K"]) == 2
    assert windows["Ce"] == []  # no Ce windows in the l31c set
    # Intervals reproduce the file's pixels exactly on its own grid.
    masks = aspcap_window_masks(["Fe", "C", "TiII"], path=window_file)
    for element, mask in masks.items():
        assert mask.shape == (7514,)
        again = censor_from_windows(GRIDS["dr17"].wavelength, windows[element])
        assert np.array_equal(again, mask), element
    assert masks["Fe"].sum() > 2000 and masks["TiII"].sum() < 50


def test_label_names_map_to_elements(window_file):
    assert label_element("mg_fe") == "Mg" and label_element("MG_H") == "Mg"
    assert label_element("ti2_fe") == "TiII" and label_element("c1_fe") == "CI"
    assert label_element("k") == "K"
    for free in ("teff", "logg", "fe_h", "m_h", "alpha_fe", "vmicro", "snr"):
        assert label_element(free) is None, free
    censor = aspcap_censor(("teff", "fe_h", "al_fe", "ni_h"), path=window_file)
    assert set(censor) == {"al_fe", "ni_h"}
    with pytest.raises(ValueError, match="names an ASPCAP window element"):
        aspcap_censor(("teff", "logg", "fe_h"), path=window_file)
    with pytest.raises(ValueError, match="unknown ASPCAP window element"):
        aspcap_windows(["Xx"], path=window_file)
    with pytest.raises(FileNotFoundError, match="astroNN"):
        aspcap_windows(path=window_file.parent / "missing.npy")


def test_cli_censor_aspcap_end_to_end(window_file, tmp_path, monkeypatch):
    monkeypatch.setenv("STARLABEL_SHARED_DATA", str(window_file.parents[1]))
    labels = ("teff", "logg", "fe_h", "mg_fe", "ti_fe")
    runner = CliRunner()
    data = tmp_path / "sim.npz"
    out = runner.invoke(
        app,
        ["simulate", "lines", "-o", str(data), "--n-stars", "80", "--n-pixels", "800",
         "--elements", "mg,ti", "--free-vmicro", "--seed", "4"],
        catch_exceptions=False,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    model = tmp_path / "censored.starlabel"
    out = runner.invoke(
        app,
        ["train", "cannon", str(data), "--labels", ",".join(labels), "-o", str(model),
         "--censor", "aspcap", "--no-calibrate"],
        catch_exceptions=False,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "censoring 2 element label(s) to ASPCAP windows" in out.output
    fitted = load_model(model)
    wavelength = np.asarray(fitted.wavelength)
    allowed = np.asarray(fitted.allowed)
    windows = aspcap_windows(["Mg", "Ti"], path=window_file)
    assert np.array_equal(allowed[3], censor_from_windows(wavelength, windows["Mg"]))
    assert np.array_equal(allowed[4], censor_from_windows(wavelength, windows["Ti"]))
    assert allowed[:3].all() and 0 < allowed[3].sum() < 100
    # A .npy code file works the same way, and the model infers.
    again = tmp_path / "again.starlabel"
    out = runner.invoke(
        app,
        ["train", "cannon", str(data), "--labels", ",".join(labels), "-o", str(again),
         "--censor", str(window_file), "--no-calibrate"],
        catch_exceptions=False,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert np.array_equal(np.asarray(load_model(again).allowed), allowed)
    result = tmp_path / "labels.csv"
    out = runner.invoke(
        app, ["infer", str(model), str(data), "-o", str(result), "--no-progress"], catch_exceptions=False
    )
    assert out.exit_code == 0, out.output
    inferred = read_result(result)
    assert inferred.label_names == labels and np.all(np.isfinite(inferred.label_err))


# ----------------------------------------------------------------------------- vmicro
def test_free_vmicro_label_strengthens_saturated_lines():
    fixed = {"teff": 4700.0, "logg": 2.5, "fe_h": 0.0, "alpha_fe": 0.0, "vmacro": 5.0, "vmicro": [1.0, 2.0]}
    sim = simulate_lines(2, free_vmicro=True, labels=fixed, n_pixels=3000, bad_pixel_fraction=0.0,
                         continuum_error=0.0, seed=1)  # fmt: skip
    assert sim.dataset.label_names[5] == "vmicro"
    np.testing.assert_allclose(sim.dataset.labels[:, 5], [1.0, 2.0])
    depth = 1.0 - sim.true_flux
    width = depth.sum(axis=1)
    assert width[1] > 1.1 * width[0]  # saturated lines grow with ξ …
    weak = depth[0] < 0.02
    # … while weak ones keep their strength (W ∝ τ0 Δ does not depend on Δ)
    np.testing.assert_allclose(depth[1][weak].sum(), depth[0][weak].sum(), rtol=0.15)
    tied = simulate_lines(50, n_pixels=200, seed=5)
    assert "vmicro" not in tied.dataset.label_names
    with pytest.raises(ValueError, match="free_vmicro=True"):
        simulate_lines(5, n_pixels=100, labels={"vmicro": 1.0})


# ----------------------------------------------------------------------------- 18 labels
def _quadratic_cannon(n_pixels: int, seed: int) -> FittedCannon:
    """An 18-label (190-term) quadratic Cannon with every label acting on every pixel.

    Built directly rather than trained (training 190 terms is benchmarks/abundances.py's
    job): θ like a spectrum's (1 − depth, linear terms ~ depth·N(0, 0.2²), quadratic ~
    depth·N(0, 0.03²)), intrinsic scatter s ~ U(0, 0.005), labels scaled by shift and
    scale as training would have, the training labels a unit Gaussian cloud.
    """
    rng = np.random.default_rng(seed)
    vectorizer = PolynomialVectorizer.from_order(LABELS_18, 2)
    depth = rng.uniform(0.05, 0.5, n_pixels)
    theta = np.concatenate(
        [(1 - depth)[:, None], depth[:, None] * rng.normal(0, 0.2, (n_pixels, 18)),
         depth[:, None] * rng.normal(0, 0.03, (n_pixels, 171))], axis=1,
    )  # fmt: skip
    config = {"label_names": list(LABELS_18), "exponents": [list(r) for r in vectorizer.exponents],
              "n_pixels": n_pixels, "n_kept_train": 400, "has_wavelength": False}  # fmt: skip
    train = rng.normal(0.0, 1.0, (400, 18))
    s2 = rng.uniform(0.0, 0.005, n_pixels) ** 2
    with jax.enable_x64(True):  # float64 arrays, as training makes them
        return eqx.tree_at(
            lambda m: (m.theta, m.s2, m.pixel_ok, m.allowed, m.label_scaler, m.label_space),
            FittedCannon.skeleton(config),
            (jnp.asarray(theta), jnp.asarray(s2), jnp.ones(n_pixels, bool), jnp.ones((18, n_pixels), bool),
             ShiftScale(jnp.asarray(np.linspace(-0.5, 0.5, 18)), jnp.full(18, 0.1)),
             LabelSpace(jnp.asarray(np.stack([train.min(0), train.max(0)])), jnp.asarray(train),
                        jnp.asarray(10.0))),
        )  # fmt: skip


def test_18_label_cannon_reaches_the_cramer_rao_bound():
    n_test, n_pixels = 1000, 300
    model = _quadratic_cannon(n_pixels, seed=7)
    assert model.vectorizer.n_terms == 190 and use_quadratic_step(model.vectorizer)

    # Spectra from the model's own family: its flux at labels inside the training cloud
    # plus Gaussian noise of variance σ² + s² (the noise the test step assumes).
    rng = np.random.default_rng(11)
    truth = 0.1 * rng.normal(0.0, 0.7, (n_test, 18)) + np.linspace(-0.5, 0.5, 18)
    sigma = np.full((n_test, n_pixels), 0.01)
    total = np.sqrt(sigma**2 + np.asarray(model.s2)[None, :])
    flux = model.predict_flux(truth) + rng.normal(size=sigma.shape) * total
    test = SpectralDataset(flux, ivar=1.0 / sigma**2)
    result = model.infer(test, calibrate=False)
    assert np.mean(result.flags == 0) > 0.95
    # From the training mean the Gauss–Newton steps converge at once (one evaluation each).
    assert np.median(result.extra["n_iter"]) <= 4 and np.max(result.extra["n_iter"]) <= 8

    # Cramér–Rao bound per star: the inverse Fisher matrix at the true labels.
    shift, scale = np.asarray(model.label_scaler.shift), np.asarray(model.label_scaler.scale)
    with jax.enable_x64(True):
        jac = np.asarray(jax.vmap(model.vectorizer.jacobian)(jnp.asarray((truth - shift) / scale)))
    # ∂f/∂label (stars, labels, pixels), as FittedCannon.derivatives gives one star at a time
    derivative = np.einsum("pt,ntk->nkp", np.asarray(model.theta), jac) / scale[None, :, None]
    np.testing.assert_allclose(derivative[0], model.derivatives(truth[0]), rtol=1e-10, atol=1e-12)
    fisher = np.einsum("nkp,np,njp->nkj", derivative, 1.0 / total**2, derivative)
    crb = np.sqrt(np.mean(np.diagonal(np.linalg.inv(fisher), axis1=1, axis2=2), axis=0))
    rmse = np.sqrt(np.mean((result.labels - truth) ** 2, axis=0))
    ratio = rmse / crb
    # 1,000 spectra: the ratio's standard error is 1/sqrt(2000) ≈ 2 %, so 10 % can fail.
    assert np.all(np.abs(ratio - 1.0) < 0.10), dict(zip(LABELS_18, np.round(ratio, 3), strict=True))
    # The reported errors are that bound (evaluated at the estimate instead of the truth).
    reported = np.sqrt(np.mean(result.label_err**2, axis=0))
    np.testing.assert_allclose(reported, crb, rtol=0.05)

    # The float32 Jacobian/Fisher products leave the labels at the float64 optimum: at
    # the returned labels the float64 objective's Newton decrement gᵀM⁻¹g (the χ² a
    # further step would gain; labels off by δ·error give ~δ²) is far below 1e-4.
    n = 64
    with jax.enable_x64(True):
        form = quadratic_form(model.vectorizer, model.theta, dtype=np.float64)
        ivar = np.asarray(test.ivar[:n])
        omega = ivar / (1.0 + ivar * np.asarray(model.s2)[None, :])
        pad = form.constant.size - n_pixels
        blocks = lambda a: jnp.asarray(np.pad(a, ((0, 0), (0, pad))).reshape(n, *form.constant.shape))  # noqa: E731
        x = jnp.asarray((result.labels[:n] - shift) / scale)
        chi2, g, M = jax.vmap(lambda f, w, x: _evaluate(form, f, w, x))(
            blocks(test.flux[:n]), blocks(omega), x
        )
        decrement = np.einsum("nk,nk->n", g, np.linalg.solve(M, g[..., None])[..., 0])
    np.testing.assert_allclose(chi2, result.chi2[:n], rtol=1e-9)
    assert np.max(decrement) < 1e-4, np.max(decrement)


def test_damped_newton_evaluate_matches_loss_and_linearise():
    """One carried ``evaluate`` reaches the same minimum as ``loss`` + ``linearise``."""
    with jax.enable_x64(True):
        t = jnp.linspace(0.0, 3.0, 40)
        data = 2.0 * jnp.exp(-0.7 * t) + 0.3 + 0.01 * jnp.sin(7.0 * t)

        def residual(p: jax.Array) -> jax.Array:
            return data - (p[0] * jnp.exp(-p[1] * t) + p[2])

        def linearise(p: jax.Array) -> tuple[jax.Array, jax.Array]:
            J = -jax.jacfwd(residual)(p)  # model Jacobian
            return -J.T @ residual(p), J.T @ J

        def evaluate(p: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
            return (residual(p) @ residual(p), *linearise(p))

        x0 = jnp.array([1.0, 0.2, 0.0])
        kwargs = {"damping": Marquardt(), "max_steps": 50, "tol": 1e-12, "lower": jnp.array([0.0, 0.0, 0.25])}
        plain = jax.jit(lambda x: damped_newton(lambda p: residual(p) @ residual(p), linearise, x, **kwargs))(
            x0
        )
        carried = jax.jit(lambda x: damped_newton(None, None, x, evaluate=evaluate, **kwargs))(x0)
        assert bool(plain.converged) and bool(carried.converged)
        np.testing.assert_allclose(carried.x, plain.x, rtol=1e-9)
        assert float(carried.x[2]) > 0.25  # the bound is inactive at the minimum …
        assert carried.grad is not None and carried.curvature is not None
        np.testing.assert_allclose(carried.curvature, linearise(carried.x)[1], rtol=1e-12)
        # … and the carried path stops as soon as it lands (no extra step to find out).
        assert int(carried.iteration) <= int(plain.iteration)
        with pytest.raises(ValueError, match="either"):
            damped_newton(lambda p: p @ p, None, x0, evaluate=evaluate, **kwargs)
