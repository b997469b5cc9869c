"""What a cold ``starlabel train cannon`` compiles (issue 16: the cold-cache latency).

A calibrating Cannon training compiles four programs, each once: the EM training
block, the held-out stars' pixel sums, the fold solve (the 4/5 folds and the halves
share it) and the test step (compiled on a second thread while training runs; the
calibration's first call reads it back from the cache). Small conversions of the
training labels and the calibration's arrays are NumPy or ``device_put`` and compile
nothing. The count is of executables written to a fresh persistent cache, so it is the
same on a busy or a quiet machine.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from starlabel.data import simulate_cannon, write_dataset
from starlabel.models.cannon import PolynomialVectorizer
from starlabel.models.cannon._prepare import design_matrix


def _programs(cache: Path) -> collections.Counter[str]:
    """Names of the executables in the persistent cache (``jit_<name>-<hash>-cache``)."""
    names = [re.sub(r"-[0-9a-f]{64}.*$", "", p.name) for p in (cache / "jax").iterdir()]
    return collections.Counter(name.removeprefix("jit_") for name in names)


def test_cold_calibrating_train_compiles_four_programs_once_each(tmp_path: Path) -> None:
    sim = simulate_cannon(120, 60, 3, seed=3).dataset
    data = tmp_path / "train.npz"
    write_dataset(sim, data)
    cache = tmp_path / "cache"
    env = {**os.environ, "STARLABEL_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "starlabel.cli", "train", "cannon", str(data)]
    labels = ",".join(sim.label_names)
    done = subprocess.run(
        [*command, "--labels", labels, "-o", str(tmp_path / "m.starlabel")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "error calibration (5-fold" in done.stdout
    assert _programs(cache) == {
        "cannon_train_block": 1,
        "cannon_fold_sums_at": 1,
        "cannon_fold_solve": 1,
        "cannon_test_step": 1,
    }


def test_numpy_design_matrix_is_the_vectorizers_bit_for_bit() -> None:
    import jax

    vectorizer = PolynomialVectorizer.from_order(("a", "b", "c", "d"), 3)
    x = np.random.default_rng(0).normal(size=(257, 4))
    with jax.enable_x64(True):
        expected = np.asarray(jax.jit(vectorizer.design)(x))
    np.testing.assert_array_equal(design_matrix(vectorizer, x), expected)
