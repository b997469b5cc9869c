"""`starlabel infer` with a real Cannon survives SIGKILL: the same command resumes it.

The command runs as a user would start it (a subprocess of the installed CLI) on many
small chunks; it is killed with SIGKILL once some chunk parts are on disk, then run
again to the end. The table must equal an uninterrupted run's (the same command, run
in-process), row for row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import read_result, simulate_cannon, write_dataset
from starlabel.models.cannon import Cannon
from starlabel.pipeline import run_dir_for

_CLI = [sys.executable, "-c", "from starlabel.cli import main; main()"]


def _n_parts(run_dir: Path) -> int:
    folder = run_dir / "parts"
    return len(list(folder.glob("*.npz"))) if folder.is_dir() else 0


def test_sigkilled_cannon_infer_resumes_to_the_uninterrupted_table(tmp_path: Path) -> None:
    sim = simulate_cannon(360, 40, 3, seed=5)
    fitted = Cannon(sim.dataset.label_names).fit(sim.dataset[np.arange(200)])
    model = fitted.save(tmp_path / "cannon.starlabel")
    survey = tmp_path / "survey"
    survey.mkdir()
    for i, start in enumerate(range(200, 360, 40)):
        part = sim.dataset[np.arange(start, start + 40)]
        write_dataset(part.replace(ids=[f"f{i}-{j:03d}" for j in range(40)]), survey / f"part{i}.npz")

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def command(output: Path) -> list[str]:
        return [
            *_CLI,
            "infer",
            str(model),
            str(survey),
            "-o",
            str(output),
            "--chunk-size",
            "2",
            "--no-progress",
        ]

    output = tmp_path / "killed.parquet"
    run_dir = run_dir_for(output)
    process = subprocess.Popen(command(output), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _n_parts(run_dir) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    n_before = _n_parts(run_dir)
    assert 3 <= n_before < 80, f"the kill should land mid-run; {n_before} of 80 parts were written"
    assert not output.exists()

    resumed = subprocess.run(command(output), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{160 - 2 * n_before} inferred now, {2 * n_before} resumed, 0 errors" in resumed.stdout

    # The uninterrupted run, in this process through the same CLI entry point.
    reference = tmp_path / "whole.parquet"
    whole = CliRunner().invoke(app, command(reference)[len(_CLI) :], catch_exceptions=False)
    assert whole.exit_code == 0, whole.output

    a, b = read_result(output), read_result(reference)
    assert len(set(a.ids)) == a.n_stars == 160
    np.testing.assert_array_equal(a.ids, b.ids)
    for name in ("labels", "cov", "chi2", "dof", "flags"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # and the labels are the Cannon's: close to the simulated truth
    rmse = np.sqrt(np.mean((a.labels - sim.true_labels[200:]) ** 2, axis=0))
    assert np.all(rmse < 0.1 * sim.true_labels.std(axis=0)), rmse
