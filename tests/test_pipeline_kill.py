"""Exactly-once under SIGKILL: kill a real inference process at random points, resume.

A subprocess runs ``run_inference``; the test kills it with SIGKILL after a random
number of new chunk parts (or at a random time, possibly during start-up), several
times, then lets the same command finish. Every input spectrum must appear in the
output exactly once, with the same values as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from starlabel.data import SpectralDataset, read_dataset, read_result
from starlabel.models import load_model
from starlabel.pipeline import run_dir_for, run_inference
from test_pipeline_support import TESTS_DIR, make_survey, register

_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_pipeline_support import register
register()
from starlabel.pipeline import run_inference
run_inference({model!r}, {inputs!r}, {output!r}, chunk_size=6,
              infer_options={{"delay": 0.04}}, progress=False)
"""


def _n_parts(run_dir: Path) -> int:
    folder = run_dir / "parts"
    return len(list(folder.glob("*.npz"))) if folder.is_dir() else 0


def _wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    model_path, files = make_survey(tmp_path, n_files=5, n_stars=60, n_pixels=24)
    output = tmp_path / "labels.parquet"
    run_dir = run_dir_for(output)
    n_chunks = 5 * 10
    script = _SCRIPT.format(
        tests=TESTS_DIR, model=str(model_path), inputs=[str(f) for f in files], output=str(output)
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    kills_while_running = 0
    attempts = 0
    while kills_while_running < 6 and attempts < 12:
        attempts += 1
        process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
        before = _n_parts(run_dir)
        if attempts == 1 or rng.uniform() < 0.2:
            # Anywhere, start-up included.
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            target = before + int(rng.integers(1, 5))
            _wait_for(lambda target=target: _n_parts(run_dir) >= target, process, timeout=60)
            time.sleep(rng.uniform(0.0, 0.04))
        alive = process.poll() is None
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        assert alive or process.returncode == 0, stderr.decode()[-2000:]
        after = _n_parts(run_dir)
        if alive and 0 < after < n_chunks:
            kills_while_running += 1
    assert kills_while_running >= 6, (
        f"only {kills_while_running} kills hit a running process in {attempts} attempts"
    )

    # One more kill as soon as the last part exists: the merge or the report is running.
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    _wait_for(lambda: _n_parts(run_dir) >= n_chunks, process, timeout=60)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    register()
    summary = run_inference(
        model_path, files, output, chunk_size=6, infer_options={"delay": 0.04}, progress=False
    )
    assert summary.complete and summary.n_errors == 0
    result = read_result(output)
    expected_data = SpectralDataset.concatenate([read_dataset(f) for f in files])
    assert len(result.ids) == len(set(result.ids)) == expected_data.n_stars
    np.testing.assert_array_equal(result.ids, expected_data.ids)
    expected = load_model(model_path).infer(expected_data)
    np.testing.assert_allclose(result.labels, expected.labels, rtol=1e-12)
    np.testing.assert_allclose(result.chi2, expected.chi2, rtol=1e-12)
    assert not list(run_dir.rglob("*.partial*"))
