"""Aligned host arrays: datasets and row reads hand JAX buffers it uses without copying."""

import jax
import numpy as np
import pytest

from starlabel._internal import as_aligned, empty_aligned
from starlabel._internal._aligned import ALIGNMENT, is_aligned
from starlabel.data import SpectralDataset, open_rows, write_dataset


@pytest.mark.parametrize("shape", [(0,), (3,), (5, 7), (1024, 7214), (2, 3, 5)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.bool_, np.int16])
def test_empty_aligned_shape_dtype_and_alignment(shape, dtype):
    out = empty_aligned(shape, dtype)
    assert out.shape == shape and out.dtype == np.dtype(dtype)
    assert out.flags.c_contiguous and out.flags.writeable
    assert out.size == 0 or out.ctypes.data % ALIGNMENT == 0


def test_as_aligned_adopts_only_when_asked_and_possible():
    aligned = empty_aligned((4, 6))
    aligned[:] = np.arange(24.0).reshape(4, 6)
    assert as_aligned(aligned, copy=False) is aligned
    copied = as_aligned(aligned, copy=True)
    assert copied is not aligned and is_aligned(copied)
    np.testing.assert_array_equal(copied, aligned)
    # a view one element in is misaligned: copied even with copy=False
    shifted = aligned.reshape(-1)[1:]
    out = as_aligned(shifted, copy=False)
    assert out is not shifted and is_aligned(out)
    np.testing.assert_array_equal(out, shifted)


def test_dataset_copy_false_adopts_and_repairs_in_place():
    flux = empty_aligned((3, 4))
    flux[:] = 1.0
    flux[0, 1] = np.nan
    ivar = empty_aligned((3, 4))
    ivar[:] = 100.0
    data = SpectralDataset(flux, ivar=ivar, copy=False)
    assert data.flux is flux and data.ivar is ivar
    assert flux[0, 1] == 0.0 and ivar[0, 1] == 0.0 and data.mask[0, 1]
    assert not flux.flags.writeable  # the dataset now owns it

    # the default keeps private, aligned copies and leaves the caller's arrays alone
    mine = np.ones((3, 4))
    mine[2, 2] = np.inf
    copied = SpectralDataset(mine, ivar=np.full((3, 4), 4.0))
    assert copied.flux is not mine and np.isinf(mine[2, 2]) and mine.flags.writeable
    assert is_aligned(copied.flux) and is_aligned(copied.ivar)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_row_reads_are_aligned_and_used_by_jax_in_place(tmp_path, suffix):
    rng = np.random.default_rng(3)
    flux = rng.normal(1.0, 0.01, (40, 7214))
    data = SpectralDataset(flux, flux_err=np.full_like(flux, 0.01), ids=[f"s{i}" for i in range(40)])
    path = tmp_path / f"spectra{suffix}"
    write_dataset(data, path)
    with open_rows(path) as rows:
        chunk = rows.read(8, 24)
    np.testing.assert_array_equal(chunk.flux, flux[8:24])
    assert list(chunk.ids) == [f"s{i}" for i in range(8, 24)]
    assert is_aligned(chunk.flux) and is_aligned(chunk.ivar)
    if jax.default_backend() == "cpu":
        # the property that matters: no host copy when a chunk enters a jitted function
        with jax.enable_x64(True):  # as inside the test step: float64 is kept, not converted
            assert jax.device_put(chunk.flux).unsafe_buffer_pointer() == chunk.flux.ctypes.data


def test_float32_spectra_become_aligned_float64_in_one_conversion():
    flux32 = np.random.default_rng(4).normal(1.0, 0.01, (6, 9)).astype(np.float32)
    data = SpectralDataset(flux32, ivar=np.full((6, 9), 1e4, dtype=np.float32), copy=False)
    assert data.flux.dtype == np.float64 and is_aligned(data.flux) and is_aligned(data.ivar)
    np.testing.assert_array_equal(data.flux, flux32.astype(np.float64))
    assert flux32.flags.writeable  # the caller's float32 array is left alone
