"""Every output is replaced atomically: a failed write keeps the old file and leaves no debris."""

from __future__ import annotations

import numpy as np
import pytest

from starlabel._internal import atomic_path
from starlabel.data import InferenceResult


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target, fsync=True) as tmp:
        assert tmp.name == "out.txt.partial"
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new"

    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failing_table_writer_leaves_the_previous_results(tmp_path, monkeypatch) -> None:
    result = InferenceResult(
        ids=np.array(["a", "b"]),
        label_names=("teff",),
        labels=np.array([[4800.0], [5100.0]]),
        cov=np.array([[[50.0**2]], [[60.0**2]]]),
        chi2=np.array([90.0, 110.0]),
        dof=np.array([97, 97]),
        flags=np.zeros(2, dtype=int),
    )
    path = tmp_path / "labels.fits"
    result.write(path)
    before = path.read_bytes()

    import starlabel.data._tables as tables

    def broken(table, tmp) -> None:
        tmp.write_bytes(b"SIMPLE  = garbage")
        raise OSError("no space left on device")

    monkeypatch.setattr(tables, "_write_fits", broken)
    with pytest.raises(OSError, match="no space left"):
        result.write(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.fits"]
