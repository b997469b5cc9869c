"""The pipeline's persistent compilation cache: a second run, with JAX's in-memory
caches cleared (as in a new process), reuses the compiled test step from disk and gets
bit-identical results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from starlabel.data import read_result, simulate_cannon, write_dataset
from starlabel.models import save_model
from starlabel.models.cannon import Cannon
from starlabel.pipeline import run_inference

_SCRIPT = """
import json, logging
import jax
hits = []
class Hits(logging.Handler):
    def emit(self, record):
        if "cache hit" in record.getMessage():
            hits.append(record.getMessage())
logger = logging.getLogger("jax._src.compiler")
logger.setLevel(logging.DEBUG)
logger.addHandler(Hits())
from starlabel.pipeline import run_inference
found = []
for output in {outputs!r}:
    run_inference({model!r}, [{data!r}], output, chunk_size=64, overwrite=True,
                  progress=False, compilation_cache={cache!r})
    found.append(any("cannon_test_step" in h for h in hits))  # the exported test step
    hits.clear()
    jax.clear_caches()  # as if a new process: only the on-disk cache is left
print(json.dumps({{"fit_chunk_hit": found}}))
"""


def _run(script: str) -> dict:
    # JAX stores only executables that took ≥ 1 s to compile; this model compiles faster.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_run_hits_the_disk_cache_with_identical_results(tmp_path: Path) -> None:
    sim = simulate_cannon(300, 40, 3, seed=4).dataset
    model = save_model(
        Cannon(label_names=sim.label_names).fit(sim[:200], calibrate=False), tmp_path / "cannon.starlabel"
    )
    data = tmp_path / "survey.npz"
    write_dataset(sim[200:], data)
    cache = tmp_path / "xla"
    outputs = [tmp_path / "first.parquet", tmp_path / "second.parquet"]

    found = _run(
        _SCRIPT.format(model=str(model), data=str(data), outputs=[str(o) for o in outputs], cache=str(cache))
    )["fit_chunk_hit"]
    assert any(cache.iterdir()), "the first run stored nothing in the cache folder"
    assert found == [False, True], found
    a, b = (read_result(out) for out in outputs)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.cov, b.cov)


def test_bad_cache_option_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="compilation_cache"):
        run_inference(tmp_path / "missing.starlabel", ["x.npz"], tmp_path / "o.parquet", compilation_cache=3)
