"""End to end with the real Cannon: the pipeline's output equals FittedCannon.infer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from starlabel.data import SpectralDataset, read_dataset, read_result, simulate_cannon, write_dataset
from starlabel.models import save_model
from starlabel.pipeline import run_inference

cannon = pytest.importorskip(
    "starlabel.models.cannon", reason="the Cannon model family is not in this checkout"
)


def test_cannon_run_equals_direct_inference(tmp_path: Path) -> None:
    # One simulation, split: each simulator seed draws its own spectral model.
    every = simulate_cannon(300 + 128, 60, 3, seed=5).dataset
    train = every[:300]
    fitted = cannon.Cannon(label_names=train.label_names, order=2).fit(train, calibrate=False)
    model_path = save_model(fitted, tmp_path / "cannon.starlabel")
    files = []
    for i in range(2):
        data = every[300 + 64 * i : 300 + 64 * (i + 1)]
        data = data.replace(ids=[f"f{i}s{j}" for j in range(64)])
        files.append(write_dataset(data, tmp_path / f"obs{i}.npz"))
    output = tmp_path / "labels.fits"
    # Pipeline chunks and the Cannon's compiled batch have the same size: one compile.
    summary = run_inference(
        model_path, files, output, chunk_size=32, infer_options={"chunk_size": 32},
        labels_from_input=True, progress=False,
    )  # fmt: skip
    assert summary.complete and summary.n_written == 128
    got = read_result(output)
    data = SpectralDataset.concatenate([read_dataset(f) for f in files])
    want = fitted.infer(data, chunk_size=32)
    np.testing.assert_allclose(got.labels, want.labels, rtol=1e-10)
    np.testing.assert_allclose(got.label_err, want.label_err, rtol=1e-8)
    np.testing.assert_array_equal(got.flags, want.flags)
    # The Cannon recovers the simulated labels it was given as reference columns.
    assert np.nanmedian(np.abs(got.extra["ref_teff"] - got.labels[:, 0])) < 100.0
