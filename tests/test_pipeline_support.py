"""Helpers for the pipeline tests: a tiny fitted model and survey files on disk.

The pipeline must work with any fitted model, so its tests use this small linear
regressor (labels = flux · W + b) registered as model kind ``"test-linear"``. It can
be told to sleep per chunk (to give the SIGKILL test time to strike mid-run), to
fail on chunks containing a given star id (error isolation), and to kill its own
process once on such a chunk (a Ray worker dying mid-run).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from starlabel.data import InferenceResult, SpectralDataset, simulate_cannon, write_dataset
from starlabel.models import AbstractFittedModel, register_model_kind, save_model

KIND = "test-linear"
TARGET = "test_pipeline_support:LinearFitted"
TESTS_DIR = str(Path(__file__).resolve().parent)
LABELS = ("teff", "logg", "fe_h")


class LinearFitted(AbstractFittedModel):
    kind: ClassVar[str] = KIND
    weights: Float[Array, "pixels labels"]
    offset: Float[Array, " labels"]
    label_names: tuple[str, ...] = eqx.field(static=True)

    def infer(
        self,
        data: SpectralDataset,
        *,
        delay: float = 0.0,
        fail_on_id: str | None = None,
        die_on_id: str | None = None,
        die_marker: str | None = None,
    ) -> InferenceResult:
        if delay:
            time.sleep(delay)
        if die_on_id is not None and die_on_id in set(data.ids.tolist()) and die_marker is not None:
            # A worker dies once, as under the OOM killer; the marker lets a rerun pass.
            if not Path(die_marker).exists():
                Path(die_marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
        if fail_on_id is not None and fail_on_id in set(data.ids.tolist()):
            raise ValueError(f"refusing chunk with star {fail_on_id}")
        weights = np.asarray(self.weights)
        labels = data.flux @ weights + np.asarray(self.offset)
        residual = data.flux - 1.0
        chi2 = np.sum(data.ivar * residual**2, axis=1)
        variance = 1.0 / (1.0 + np.sum(data.ivar, axis=1))
        cov = variance[:, None, None] * np.eye(len(self.label_names))[None]
        return InferenceResult(
            ids=data.ids,
            label_names=self.label_names,
            labels=labels,
            cov=cov,
            chi2=chi2,
            dof=np.sum(data.ivar > 0, axis=1) - len(self.label_names),
            flags=(chi2 > 1.5 * np.sum(data.ivar > 0, axis=1)).astype(int),
            extra={"n_good": np.sum(~data.mask, axis=1)},
            meta={"model": KIND},
        )

    def config(self) -> dict[str, Any]:
        return {"label_names": list(self.label_names), "n_pixels": int(self.weights.shape[0])}

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> LinearFitted:
        k = len(config["label_names"])
        return cls(
            weights=jnp.zeros((config["n_pixels"], k)),
            offset=jnp.zeros(k),
            label_names=tuple(config["label_names"]),
        )


def register() -> None:
    register_model_kind(KIND, TARGET)


def fit_linear(train: SpectralDataset) -> LinearFitted:
    design = np.hstack([train.flux, np.ones((train.n_stars, 1))])
    coef, *_ = np.linalg.lstsq(design, train.labels, rcond=None)
    return LinearFitted(
        weights=jnp.asarray(coef[:-1]), offset=jnp.asarray(coef[-1]), label_names=train.label_names
    )


def make_survey(
    folder: Path, n_files: int = 3, n_stars: int = 60, n_pixels: int = 40, seed: int = 0
) -> tuple[Path, list[Path]]:
    """Save a fitted test model and ``n_files`` dataset files with unique ids."""
    register()
    folder.mkdir(parents=True, exist_ok=True)
    train = simulate_cannon(200, n_pixels, 3, seed=seed + 1000).dataset
    model_path = save_model(fit_linear(train), folder / "model.starlabel")
    (folder / "survey").mkdir(exist_ok=True)
    files = []
    for i in range(n_files):
        ds = simulate_cannon(n_stars, n_pixels, 3, seed=seed + i).dataset
        ds = ds.replace(ids=[f"file{i}-star{j:05d}" for j in range(n_stars)])
        files.append(write_dataset(ds, folder / "survey" / f"part{i:02d}.npz"))
    return model_path, files
