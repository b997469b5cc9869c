"""The model file format, exercised with a small least-squares model defined here."""

from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

from starlabel._internal import x64
from starlabel.data import InferenceResult, ShiftScale, SpectralDataset, simulate_cannon
from starlabel.models import (
    FORMAT_VERSION,
    AbstractFittedModel,
    load_model,
    read_model_header,
    register_model_kind,
    save_model,
)


class LinearLabels(AbstractFittedModel):
    """labels ≈ W · flux + b, fitted by least squares (a test double for the protocol)."""

    kind: ClassVar[str] = "test-linear-io"
    label_names: tuple[str, ...]
    weights: Float[Array, "pixels labels"]
    scaler: ShiftScale

    @classmethod
    @x64
    def train(cls, data: SpectralDataset) -> "LinearLabels":
        scaler = ShiftScale.fit(data.labels)
        design = np.hstack([data.flux, np.ones((data.n_stars, 1))])
        weights, *_ = np.linalg.lstsq(design, np.asarray(scaler.transform(data.labels)), rcond=None)
        return cls(data.label_names, jnp.asarray(weights), scaler)

    @x64
    def infer(self, data: SpectralDataset, **options: Any) -> InferenceResult:
        design = jnp.hstack([jnp.asarray(data.flux), jnp.ones((data.n_stars, 1))])
        labels = np.asarray(self.scaler.inverse_transform(design @ self.weights))
        n = data.n_stars
        return InferenceResult(
            data.ids, self.label_names, labels, None, np.zeros(n), np.ones(n), np.zeros(n, int)
        )

    def config(self) -> dict[str, Any]:
        return {"label_names": list(self.label_names)}

    @classmethod
    def skeleton(cls, config: dict[str, Any]) -> "LinearLabels":
        zero = jnp.zeros(1)
        return cls(tuple(config["label_names"]), jnp.zeros((1, 1)), ShiftScale(zero, zero + 1))


register_model_kind("test-linear-io", "test_model_io:LinearLabels")


@pytest.fixture(scope="module")
def fitted_and_data():
    sim = simulate_cannon(300, 40, 2, seed=1)
    return LinearLabels.train(sim.dataset), sim.dataset


def test_round_trip_gives_identical_inference(tmp_path, fitted_and_data):
    fitted, data = fitted_and_data
    path = save_model(fitted, tmp_path / "m.starlabel")
    header = read_model_header(path)
    assert header["kind"] == "test-linear-io" and header["format_version"] == FORMAT_VERSION
    assert header["label_names"] == ["teff", "logg"]
    loaded = load_model(path)
    assert isinstance(loaded, LinearLabels)
    assert loaded.weights.dtype == jnp.float64
    np.testing.assert_array_equal(loaded.infer(data).labels, fitted.infer(data).labels)


def test_corrupt_truncated_and_future_files(tmp_path, fitted_and_data):
    fitted, _ = fitted_and_data
    path = save_model(fitted, tmp_path / "m.starlabel")
    raw = path.read_bytes()
    (tmp_path / "trunc.starlabel").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.starlabel")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.starlabel")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="no starlabel header"):
        load_model(tmp_path / "plain.npz")
    import json

    header = read_model_header(path)
    header["format_version"] = 99
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "__header__"}
    with open(tmp_path / "future.starlabel", "wb") as handle:
        np.savez(handle, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    with pytest.raises(ValueError, match="format version 99.*upgrade starlabel"):
        load_model(tmp_path / "future.starlabel")
    header["format_version"], header["kind"] = 1, "no-such-model"
    with open(tmp_path / "kind.starlabel", "wb") as handle:
        np.savez(handle, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    with pytest.raises(ValueError, match="unknown model kind 'no-such-model'"):
        load_model(tmp_path / "kind.starlabel")


def test_save_rejects_unfitted_objects(tmp_path):
    # Under the test suite's runtime type checks beartype rejects it first; without
    # them save_model's own isinstance check raises the same TypeError class.
    with pytest.raises(TypeError):
        save_model(object(), tmp_path / "x.starlabel")  # type: ignore[arg-type]
