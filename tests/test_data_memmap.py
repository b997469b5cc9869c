"""Aligned .npz members (data._npz) and memory-mapped row reads (data._rows)."""

import mmap
import zipfile

import numpy as np
import pytest

from starlabel._internal import is_aligned
from starlabel.data import SpectralDataset, open_rows, read_dataset, write_dataset
from starlabel.data._npz import NpzMember, write_npz


def _member_offsets(path):
    with zipfile.ZipFile(path) as archive:
        return {name: NpzMember(path, archive, name, memmap=True)._offset for name in archive.namelist()}


def _is_mapped(array: np.ndarray) -> bool:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


def test_write_npz_aligns_every_member_and_numpy_reads_it_back(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "meta_json": np.array('{"survey": "apogee"}'),  # 0-d stays 0-d
        "flux": rng.normal(size=(37, 101)),
        "mask": rng.random((37, 101)) > 0.5,
        "ids": np.array([f"2M{i:08d}" for i in range(37)]),
        "empty": np.zeros((0, 5)),
        "a_rather_long_member_name" * 8: np.arange(5, dtype=np.int16),
        "fortran": np.asfortranarray(rng.normal(size=(3, 4))),
    }
    path = tmp_path / "aligned.npz"
    with open(path, "wb") as handle:
        write_npz(handle, arrays)
    offsets = _member_offsets(path)
    assert sorted(offsets) == sorted(f"{k}.npy" for k in arrays)
    assert all(offset % 64 == 0 for offset in offsets.values()), offsets
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
    with np.load(path) as loaded:
        for key, value in arrays.items():
            assert loaded[key].shape == value.shape and loaded[key].dtype == value.dtype, key
            np.testing.assert_array_equal(loaded[key], value)
    with pytest.raises(ValueError, match="Python objects"):
        with open(tmp_path / "objects.npz", "wb") as handle:
            write_npz(handle, {"bad": np.array([{}, None], dtype=object)})


def test_dataset_rows_are_mapped_equal_to_copies_and_fall_back_when_unaligned(tmp_path):
    rng = np.random.default_rng(1)
    flux = rng.normal(1.0, 0.02, (64, 7214))
    ivar = np.full_like(flux, 2500.0)
    ivar[5, 100:110] = 0.0
    data = SpectralDataset(flux, ivar=ivar, ids=[f"s{i}" for i in range(64)])
    path = tmp_path / "survey.npz"
    write_dataset(data, path)
    assert all(offset % 64 == 0 for offset in _member_offsets(path).values())

    with open_rows(path) as rows:
        mapped = rows.read(4, 36)  # 4 rows of 7214 float64 = 3607 × 64 bytes: aligned
        unaligned = rows.read(1, 36)  # 57712 bytes per row: row 1 starts 48 bytes off
        small = rows.read(4, 8)  # 0.2 MB: copying beats the mapping's system calls
    with open_rows(path, memmap=False) as rows:
        copied = rows.read(4, 36)
    assert _is_mapped(mapped.flux) and _is_mapped(mapped.ivar)
    assert not _is_mapped(copied.flux) and not _is_mapped(unaligned.flux) and not _is_mapped(small.flux)
    np.testing.assert_array_equal(small.flux, mapped.flux[:4])
    for chunk in (mapped, copied, unaligned):
        assert is_aligned(chunk.flux) and is_aligned(chunk.ivar)
    np.testing.assert_array_equal(mapped.flux, flux[4:36])
    np.testing.assert_array_equal(mapped.ivar, copied.ivar)
    np.testing.assert_array_equal(mapped.mask, ivar[4:36] == 0)
    np.testing.assert_array_equal(unaligned.flux, flux[1:36])
    assert not mapped.flux.flags.writeable  # frozen like every dataset array


def test_repairs_of_mapped_rows_never_reach_the_file(tmp_path):
    flux = np.ones((8, 16384))  # 1 MiB: reads this large are mapped
    flux[2, 3] = np.nan
    ivar = np.full(flux.shape, 100.0)
    mask = np.zeros(flux.shape, bool)
    mask[6, 10] = True
    path = tmp_path / "raw.npz"
    with open(path, "wb") as handle:
        write_npz(handle, {"flux": flux, "ivar": ivar, "mask": mask})
    with open_rows(path) as rows:
        chunk = rows.read(0, 8)
    assert _is_mapped(chunk.flux)
    assert chunk.flux[2, 3] == 0.0 and chunk.ivar[2, 3] == 0.0 and chunk.ivar[6, 10] == 0.0
    assert chunk.n_repaired == 1 and chunk.mask.sum() == 2
    with np.load(path) as on_disk:  # copy-on-write: the file keeps what was written
        assert np.isnan(on_disk["flux"][2, 3]) and on_disk["ivar"][6, 10] == 100.0
    np.testing.assert_array_equal(read_dataset(path).flux, chunk.flux)


def test_a_file_truncated_after_opening_gives_a_clear_error(tmp_path):
    data = SpectralDataset(np.ones((32, 512)), ivar=np.ones((32, 512)))
    path = tmp_path / "cut.npz"
    write_dataset(data, path)
    with open_rows(path) as rows:
        with open(path, "r+b") as handle:
            handle.truncate(40_000)
        with pytest.raises(ValueError, match="truncated"):
            rows.read(16, 32)


def test_rows_are_copied_when_no_file_descriptor_is_left(tmp_path):
    import errno

    data = SpectralDataset(np.ones((32, 512)), ivar=np.ones((32, 512)))
    path = tmp_path / "many.npz"
    write_dataset(data, path)

    def refuse(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    with open_rows(path) as rows, pytest.MonkeyPatch.context() as patch:
        patch.setattr(mmap, "mmap", refuse)
        chunk = rows.read(0, 32)
    assert not _is_mapped(chunk.flux) and is_aligned(chunk.flux)
    np.testing.assert_array_equal(chunk.flux, data.flux)
