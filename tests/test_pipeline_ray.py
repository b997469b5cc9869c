"""The Ray engine on a local 2-CPU Ray cluster gives the local engine's results exactly."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import read_result, simulate_cannon, write_dataset
from starlabel.models.cannon import Cannon
from starlabel.pipeline import RayEngine, resolve_engine, run_dir_for, run_inference
from test_docs_contract import fenced_commands, localise
from test_pipeline_support import TESTS_DIR, make_survey

ray = pytest.importorskip(
    "ray", reason="Ray is optional: pip install 'starlabel[ray]' to test the Ray engine"
)
# One worker under pytest-xdist runs them all, so one local Ray instance serves them.
pytestmark = pytest.mark.xdist_group("ray")


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


def test_a_worker_killed_mid_run_costs_only_its_queued_chunks(local_cluster, tmp_path: Path) -> None:
    model_path, files = make_survey(tmp_path, n_files=2, n_stars=40, n_pixels=24)
    local = tmp_path / "local.parquet"
    run_inference(model_path, files, local, chunk_size=5, progress=False)
    # The worker that gets row 20 (chunk 4 of 16) SIGKILLs itself, once.
    options = {"die_on_id": "file0-star00020", "die_marker": str(tmp_path / "died"), "delay": 0.05}
    output = tmp_path / "ray.parquet"
    engine = RayEngine(
        num_workers=2, cpus_per_worker=0.5, tasks_per_worker=2, worker_env={"PYTHONPATH": TESTS_DIR},
        startup_timeout_s=120,
    )  # fmt: skip
    first = run_inference(
        model_path, files, output, chunk_size=5, infer_options=options, engine=engine, progress=False
    )
    assert (tmp_path / "died").exists() and not first.complete
    # Only the chunks queued at the dead worker fail (the one it died on and at most
    # one behind it); a new worker takes its place and the other chunks all finish.
    with open(first.errors_report, newline="") as handle:
        errors = list(csv.DictReader(handle))
    assert 1 <= len(errors) <= 2 and all("worker died" in row["error"] for row in errors), errors
    assert first.n_written == 80 - 5 * len(errors)
    # The same command again retries exactly those chunks; the table is the local one.
    second = run_inference(
        model_path, files, output, chunk_size=5, infer_options=options, engine=engine, progress=False
    )
    assert second.complete and second.n_processed == 5 * len(errors) and second.n_errors == 0
    a, b = read_result(local), read_result(output)
    np.testing.assert_array_equal(a.ids, b.ids)
    for name in ("labels", "cov", "chi2", "dof", "flags"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_documented_ray_command_runs_through_the_cli(local_cluster, tmp_path: Path, monkeypatch) -> None:
    """docs/scaling.md's `starlabel infer … --engine ray` line, on this process's Ray instance."""
    lines = [line for line in fenced_commands() if line.runs_elsewhere == "tests/test_pipeline_ray.py"]
    assert lines, "docs show no `--engine ray` command line any more"
    monkeypatch.chdir(tmp_path)
    sim = simulate_cannon(260, 30, 3, seed=2)
    Cannon(sim.dataset.label_names).fit(sim.dataset[np.arange(200)]).save(tmp_path / "cannon.starlabel")
    for i, start in enumerate((200, 230)):
        folder = tmp_path / "survey" / f"plate{i}"
        folder.mkdir(parents=True)
        write_dataset(sim.dataset[np.arange(start, start + 30)], folder / "spectra.h5")
    for line in lines:
        argv = localise(line.words, tmp_path, tmp_path)
        output = Path(argv[argv.index("-o") + 1])
        result = CliRunner().invoke(app, [*argv, "--no-progress"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        table = read_result(output)
        assert table.n_stars == 60
        assert json.loads((run_dir_for(output) / "summary.json").read_text())["engine"] == "ray"
        rmse = np.sqrt(np.mean((table.labels - sim.true_labels[200:]) ** 2, axis=0))
        assert np.all(rmse < 0.1 * sim.true_labels.std(axis=0)), rmse
