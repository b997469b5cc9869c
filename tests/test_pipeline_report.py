"""The HTML run report: self-contained, with the sections it promises."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from starlabel.data import read_result
from starlabel.evaluate._report import write_report
from starlabel.pipeline import run_dir_for, run_inference
from test_pipeline_support import make_survey


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("report")
    model_path, files = make_survey(folder, n_files=2, n_stars=40, n_pixels=24)
    output = folder / "labels.parquet"
    run_inference(
        model_path, files, output, chunk_size=16, labels_from_input=True,
        infer_options={"fail_on_id": "file1-star00003"}, progress=False,
    )  # fmt: skip
    return output, files


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_of_a_run_directory_is_self_contained(finished_run: tuple[Path, list[Path]]) -> None:
    output, _ = finished_run
    path = write_report(run_dir_for(output))
    assert path == run_dir_for(output) / "report.html"
    page = path.read_text(encoding="utf-8")
    for heading in (
        "Run",
        "Errors (2)",  # the failed chunk spans both files: one row per file
        "Label distributions",
        "Kiel diagram",
        "Quality flags",
        "χ² distribution",
        "Comparison with reference labels",
        "Calibration of the errors",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert "file1-star00003" in page  # the failed chunk's reason is shown
    images = _images(page)
    # labels, errors, kiel, flags, chi2, one-to-one, residuals, z-scores
    assert len(images) == 8 and all(image.startswith(b"\x89PNG") for image in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    result = read_result(output)
    assert f"{result.n_stars:,} stars" in page and result.n_stars == 64
    assert "ok (no flag)" in page and "NOT_CONVERGED" in page


def test_report_with_truth_file_and_label_subset(
    finished_run: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    output, files = finished_run
    out = write_report(output, truth=files[0], labels=["logg"], out=tmp_path / "r.html")
    page = out.read_text(encoding="utf-8")
    # the failed chunk (rows 32-48 of the run) took file 0's last 8 stars with it
    assert f"{files[0].name} (32 matched ids)" in page
    assert "<h2>Kiel diagram</h2>" not in page  # teff not among the shown labels
    assert len(_images(page)) == 7


def test_report_without_reference_labels(tmp_path: Path) -> None:
    model_path, files = make_survey(tmp_path, n_files=1, n_stars=20, n_pixels=24)
    output = tmp_path / "plain.csv"
    run_inference(model_path, files, output, chunk_size=8, progress=False)
    alone = tmp_path / "copy" / "plain.csv"  # a results table without its run directory
    alone.parent.mkdir()
    alone.write_bytes(output.read_bytes())
    page = write_report(alone).read_text(encoding="utf-8")
    assert "Comparison with reference labels" not in page and "No reference labels" in page
    assert "<h2>Run</h2>" not in page and alone.with_suffix(".html").exists()


def test_report_errors_name_the_problem(finished_run: tuple[Path, list[Path]], tmp_path: Path) -> None:
    output, files = finished_run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="without manifest.json"):
        write_report(tmp_path)
    with pytest.raises(KeyError, match="not in"):
        write_report(output, labels=["vmic"], out=tmp_path / "x.html")
    with pytest.raises(FileNotFoundError, match="truth file"):
        write_report(output, truth=tmp_path / "nope.npz", out=tmp_path / "x.html")
    np.savez(
        tmp_path / "other.npz",
        flux=np.ones((2, 24)),
        ivar=np.ones((2, 24)),
        ids=np.array(["a", "b"]),
        teff=np.ones(2),
        logg=np.ones(2),
        fe_h=np.ones(2),
        label_names=np.array(["teff", "logg", "fe_h"]),
    )
    with pytest.raises(ValueError, match="no star id"):
        write_report(output, truth=tmp_path / "other.npz", out=tmp_path / "x.html")
