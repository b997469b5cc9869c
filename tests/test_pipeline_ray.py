"""The Ray engine on a local 2-CPU Ray cluster gives the local engine's results exactly."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

from starlabel.data import read_result
from starlabel.pipeline import RayEngine, resolve_engine, run_inference
from test_pipeline_support import TESTS_DIR, make_survey

ray = pytest.importorskip(
    "ray", reason="Ray is optional: pip install 'starlabel[ray]' to test the Ray engine"
)


@pytest.fixture(scope="module")
def local_cluster():
    with warnings.catch_warnings():
        # Ray forks its raylet from this JAX-threaded process and execs at once, which
        # is safe; JAX's fork warning does not apply.
        warnings.simplefilter("ignore", RuntimeWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _engine(workers: int) -> RayEngine:
    # Fractional CPUs leave the driver room on a 2-CPU box (Ray starves the driver otherwise).
    return RayEngine(
        num_workers=workers, cpus_per_worker=0.5, worker_env={"PYTHONPATH": TESTS_DIR}, startup_timeout_s=120
    )


def test_ray_matches_local_and_isolates_errors(local_cluster, tmp_path: Path) -> None:
    model_path, files = make_survey(tmp_path, n_files=3, n_stars=50, n_pixels=24)
    options = {"fail_on_id": "file2-star00011"}
    local = run_inference(
        model_path, files, tmp_path / "local.parquet", chunk_size=8, infer_options=options, progress=False
    )
    remote = run_inference(
        model_path,
        files,
        tmp_path / "ray.parquet",
        chunk_size=8,
        infer_options=options,
        engine=_engine(2),
        progress=False,
    )
    assert remote.engine == "ray" and remote.n_processed == local.n_processed == 142
    a, b = read_result(tmp_path / "local.parquet"), read_result(tmp_path / "ray.parquet")
    np.testing.assert_array_equal(a.ids, b.ids)
    for name in ("labels", "cov", "chi2", "dof", "flags"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with open(remote.errors_report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # file 2 starts at row 100 of the run: chunk 13 (rows 104-112) is its rows 4-12
    assert len(rows) == 1 and rows[0]["rows"] == "4-12" and "file2-star00011" in rows[0]["error"]


def test_ray_resumes_a_local_run(local_cluster, tmp_path: Path) -> None:
    model_path, files = make_survey(tmp_path, n_files=2, n_stars=30, n_pixels=24)
    output = tmp_path / "labels.csv"
    run_inference(model_path, files, output, chunk_size=10, progress=False)
    parts = sorted((tmp_path / "labels.csv.run" / "parts").glob("*.npz"))
    for part in parts[::2]:
        part.unlink()
    before = read_result(output)
    resumed = run_inference(model_path, files, output, chunk_size=10, engine=_engine(1), progress=False)
    assert resumed.n_processed == 30 and resumed.n_resumed == 30 and resumed.complete
    after = read_result(output)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.labels, after.labels)


def test_ray_refuses_more_workers_than_fit(local_cluster, tmp_path: Path) -> None:
    model_path, files = make_survey(tmp_path, n_files=1, n_stars=10, n_pixels=24)
    with pytest.raises(ValueError, match="does not fit the Ray cluster"):
        run_inference(model_path, files, tmp_path / "x.csv", engine=RayEngine(num_workers=3), progress=False)
    assert isinstance(resolve_engine("ray", num_workers=2), RayEngine)
