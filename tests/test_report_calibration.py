"""`starlabel report --truth` on the one-array-per-label layout, and its error-calibration panel."""

from __future__ import annotations

import base64
import re

import numpy as np
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import InferenceResult

runner = CliRunner()


def _calibration_rows(page: str) -> dict[str, tuple[int, float, float, str, str]]:
    section = page.split("<h2>Calibration of the errors</h2>")[1]
    rows = re.findall(
        r'<tr><td class="l">(\w+)</td><td>(\d+)</td><td>([-\d.e]+)</td><td>([-\d.e]+)</td>'
        r"<td>([\d.]+%)</td><td>([\d.]+%)</td></tr>",
        section,
    )
    return {name: (int(n), float(mean), float(std), w1, w2) for name, n, mean, std, w1, w2 in rows}


def test_report_truth_in_readme_layout_with_error_calibration(tmp_path, rng):
    n = 4000
    ids = np.array([f"star{i:05d}" for i in range(n)])
    truth = {"teff": rng.uniform(4000, 6000, n), "logg": rng.uniform(1, 4, n)}
    sigma = {"teff": np.full(n, 50.0), "logg": rng.uniform(0.05, 0.2, n)}
    # teff errors are right; logg's true scatter is twice the reported error
    predicted = np.stack(
        [
            truth["teff"] + rng.normal(0, 1, n) * sigma["teff"],
            truth["logg"] + 2 * rng.normal(0, 1, n) * sigma["logg"],
        ],
        axis=1,
    )
    cov = np.zeros((n, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = sigma["teff"] ** 2, sigma["logg"] ** 2
    result = InferenceResult(ids, ("teff", "logg"), predicted, cov, np.ones(n), np.ones(n), np.zeros(n, int))
    result.write(tmp_path / "labels.csv")
    # the README's dataset layout: one array per label, no label_names
    flux = np.ones((n, 3))
    order = rng.permutation(n)  # matched by id, not by row
    columns = {name: values[order] for name, values in truth.items()}
    np.savez(tmp_path / "truth.npz", flux=flux, flux_err=0.01 * flux, ids=ids[order], **columns)

    out = tmp_path / "report.html"
    cli = runner.invoke(
        app, ["report", str(tmp_path / "labels.csv"), "--truth", str(tmp_path / "truth.npz"), "-o", str(out)]
    )

    assert cli.exit_code == 0, cli.output
    page = out.read_text(encoding="utf-8")
    assert f"truth.npz ({n} matched ids)" in page
    rows = _calibration_rows(page)
    assert set(rows) == {"teff", "logg"}
    n_teff, mean_teff, std_teff, within1_teff, _ = rows["teff"]
    assert n_teff == n and abs(mean_teff) < 0.05 and abs(std_teff - 1.0) < 0.04
    assert abs(float(within1_teff.rstrip("%")) - 68.3) < 2.5
    _, _, std_logg, within1_logg, _ = rows["logg"]
    assert abs(std_logg - 2.0) < 0.08  # errors too small by 2: the panel shows it
    assert abs(float(within1_logg.rstrip("%")) - 38.3) < 2.5  # P(|z| < 1/2) for z ~ N(0, 1)
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert "zscores" in [name for name, _ in images]
    png = dict(images)["zscores"]
    assert base64.b64decode(png).startswith(b"\x89PNG") and len(png) > 10_000

    # a label the truth file lacks: one line naming it and the per-star arrays the file has
    np.savez(tmp_path / "teff_only.npz", flux=flux, flux_err=0.01 * flux, ids=ids, teff=truth["teff"])
    cli = runner.invoke(
        app, ["report", str(tmp_path / "labels.csv"), "--truth", str(tmp_path / "teff_only.npz")]
    )
    assert cli.exit_code == 2
    assert (
        cli.stderr.count("\n") == 1
        and "no label array(s) ['logg']" in cli.stderr
        and "['teff']" in cli.stderr
    )
