"""map_chunks: fixed-size chunks, padded last chunk, outputs trimmed and in order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starlabel._internal import map_chunks


def test_chunks_have_one_shape_and_outputs_match_an_unchunked_call() -> None:
    rng = np.random.default_rng(0)
    rows = {"x": rng.normal(size=(11, 3)), "w": rng.uniform(size=11)}
    shapes = []

    def fn(chunk):
        shapes.append((chunk["x"].shape, chunk["w"].shape))
        return {"sum": jnp.sum(chunk["x"], axis=1) * chunk["w"], "x2": chunk["x"] ** 2}

    out = map_chunks(fn, rows, size=4)
    assert set(shapes) == {((4, 3), (4,))} and len(shapes) == 3
    np.testing.assert_allclose(out["sum"], rows["x"].sum(axis=1) * rows["w"], rtol=1e-6)  # float32 jnp
    np.testing.assert_allclose(out["x2"], rows["x"] ** 2, rtol=1e-6)
    assert isinstance(out["sum"], np.ndarray) and out["sum"].shape == (11,)


def test_custom_padding_reaches_the_last_chunk_only() -> None:
    seen = []

    def pad(chunk, size):
        return np.concatenate([chunk, np.full(size - len(chunk), -1.0)])

    map_chunks(lambda c: seen.append(np.asarray(c).copy()) or c, np.arange(6.0), size=4, pad=pad)
    np.testing.assert_array_equal(seen[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(seen[1], [4, 5, -1, -1])


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        map_chunks(lambda c: c, (np.zeros(3), np.zeros(4)), size=2)
    with pytest.raises(ValueError, match="chunk size must be ≥ 1"):
        map_chunks(lambda c: c, np.zeros(3), size=0)


def test_workers_give_the_same_rows_in_order_and_keep_64_bit() -> None:
    import threading

    seen_threads, dtypes = set(), []

    def fn(chunk):
        seen_threads.add(threading.get_ident())
        dtypes.append(jnp.asarray(chunk).dtype)
        return jnp.asarray(chunk) * 2.0

    rows = np.linspace(0.0, 1.0, 23) + 1e-12  # the 1e-12 survives only in float64
    with jax.enable_x64(True):
        out = map_chunks(fn, rows, size=4, workers=3)
    np.testing.assert_array_equal(out, 2.0 * rows)
    assert set(map(str, dtypes)) == {"float64"} and len(dtypes) == 6
    assert len(seen_threads) >= 2  # the first chunk in the caller (it compiles), the rest in workers
