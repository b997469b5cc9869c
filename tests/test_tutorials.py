"""Every tutorial in docs/tutorials runs end to end in its quick mode, and gives the
numbers the docs quote from it (read from the docs' own text, so that the two cannot
drift apart silently)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.py"))


def _doc_row(doc: str, first_cell: str) -> list[str]:
    """Cells of the Markdown table row of ``doc`` whose first cell starts with ``first_cell``."""
    for line in (DOCS / doc).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(first_cell):
            return cells
    raise AssertionError(f"docs/{doc} has no table row starting {first_cell!r}")


def _numbers(text: str) -> list[float]:
    return [float(x.replace("−", "-")) for x in re.findall(r"[−-]?\d+(?:\.\d+)?", text.replace(" ", ""))]


def check_lux(out: Path, stdout: str) -> None:
    """docs/lux.md, 'The seed experiment': iterations, flux-only RMSE, scatter correlation."""
    summary = json.loads((out / "summary.json").read_text())
    for row, key in (
        ("model 1, no scatter", "model 1 (no scatter)"),
        ("model 2, per-pixel scatter (marginal", "model 2 (per-pixel scatter)"),
    ):
        cells = _doc_row("lux.md", row)
        iterations, rmse = _numbers(cells[1])[0], _numbers(cells[2])
        measured = summary[key]
        assert measured["iterations"] == pytest.approx(iterations, rel=0.2), (row, measured["iterations"])
        # quoted to 3-4 digits; 2% leaves room for another BLAS, not for another result
        np.testing.assert_allclose(measured["test_rmse_vs_truth"], rmse, rtol=0.02, err_msg=row)
        if "model 2" in row:
            r = _numbers(cells[3])[0]
            assert abs(summary["scatter_correlation_with_truth"] - r) < 5e-4


def check_apogee_preparation(out: Path, stdout: str) -> None:
    """docs/survey.md, 'Measured on the shared real files': the raw DR17 and S/N rows."""
    quoted = _numbers(_doc_row("survey.md", "raw DR17 apStar")[1].split("flux on continuum pixels")[1])[:3]
    levels = [
        float(x) for x in re.findall(r"chip: median normalised flux on continuum pixels = ([\d.]+)", stdout)
    ]
    np.testing.assert_allclose(levels, quoted, atol=1e-3)
    snr = _doc_row("survey.md", "S/N 200 → 20")[1]
    sincos_max = float(re.search(r"sincos ≤ ([\d.]+)%", snr).group(1))
    quantile = float(re.search(r"running quantile \+([\d.]+)%", snr).group(1))
    shifts = {
        m: [
            float(x)
            for x in re.search(rf"{m}: continuum level shift vs S/N 200 \(%\): (.*)", stdout)
            .group(1)
            .split(",")
        ]
        for m in ("sincos", "quantile")
    }
    assert max(abs(s) for s in shifts["sincos"]) <= sincos_max
    # the doc's 40 noise realisations against the quick run's 10
    assert shifts["quantile"][-1] == pytest.approx(quantile, abs=0.3)


def check_mixtures(out: Path, stdout: str) -> None:
    """docs/mixtures.md, NGC 103: the targets, and the NUTS values within their errors."""
    summary = json.loads((out / "members.json").read_text())
    for row, name in (("mean μ_α*", "mean_pmra"), ("mean μ_δ", "mean_pmdec"), ("mean ϖ", "mean_parallax")):
        cells = _doc_row("mixtures.md", row)
        value, error = _numbers(cells[1])[:2]
        tolerance, target = _numbers(cells[2])
        measured = summary["cluster"][name]["median"]
        assert abs(measured - target) < tolerance, (row, measured)
        # quick mode uses a Laplace posterior, the doc's numbers come from NUTS
        assert abs(measured - value) < 2 * error + 0.001, (row, measured, value)
    assert summary["n_skipped"] == _numbers(_doc_row("mixtures.md", "rows skipped")[1])[0]
    k, delta_bic = _numbers(_doc_row("mixtures.md", "field K (BIC)")[1].replace("K = 1", ""))
    assert summary["field"]["n_components"] == k
    bic = summary["field"]["bic"]
    assert bic["1"] - min(bic.values()) == pytest.approx(delta_bic, abs=1)
    # The robust Cannon (the doc's table is the full run's, 1000 stars × 300 px; quick
    # runs 500 × 120): plain training is ruined by the shifted labels, robust is not.
    degradation = re.search(r"degradation vs clean: plain \[(.*)\], robust \[(.*)\]", stdout)
    plain, robust = (np.array(g.split(), dtype=float) for g in degradation.groups())
    assert np.all(plain > 5) and np.all(np.abs(robust) < 0.02), (plain, robust)
    found, shifted = map(int, re.search(r"outlier_prob > 0.5: (\d+) of (\d+)", stdout).groups())
    assert found == shifted


def check_test_step(out: Path, stdout: str) -> None:
    """docs/test_step.md's targets on the tutorial's own examples."""
    summary = json.loads((out / "summary.json").read_text())
    # the posterior mean with a learned prior beats the MAP on every label
    assert np.all(np.array(summary["posterior_mean"]["reduction"]) > 0)
    rv = summary["rv"]  # target: error < 0.5 km/s
    assert abs(rv["v_fit"] - rv["v_true"]) < 0.5 and abs(rv["v_fit"] - rv["v_true"]) < 3 * rv["v_err"]
    binary = summary["binary"]  # the mix is flagged, the single star is not
    assert binary["flagged"] == [True, False]
    assert abs(binary["w_fit"] - binary["w_true"]) < 0.1 and abs(binary["dv_fit"] - binary["dv_true"]) < 3


CHECKS = {
    "lux_underestimated_uncertainties": check_lux,
    "apogee_preparation": check_apogee_preparation,
    "mixtures": check_mixtures,
    "test_step": check_test_step,
}


def test_tutorials_exist():
    assert len(TUTORIALS) >= 4
    assert set(CHECKS) <= {p.stem for p in TUTORIALS}


def _compilation_cache_env() -> dict[str, str]:
    """JAX's persistent compilation cache for the tutorial processes: the folder the CLI uses.

    A tutorial is a plain script (it does not switch the cache on), so each run compiled
    all its programs again, most of its ~40 s. The same executables load from the cache
    (bit-identical results), so a rerun of the suite on the same machine skips that;
    programs compiled in under a second are cached too, as the CLI does. A cache the
    environment already names is kept.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return {}
    from starlabel._internal._compile_cache import default_compilation_cache_dir

    return {
        "JAX_COMPILATION_CACHE_DIR": str(default_compilation_cache_dir()),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_quick_mode(script, tmp_path, shared_data):
    env = dict(
        os.environ, MPLBACKEND="Agg", STARLABEL_SHARED_DATA=str(shared_data), **_compilation_cache_env()
    )
    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert any(tmp_path.iterdir()), "the tutorial wrote nothing to --out"
    if script.stem in CHECKS:
        CHECKS[script.stem](tmp_path, completed.stdout)
