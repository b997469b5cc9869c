"""`infer -o out.csv` writes astropy's bytes without importing astropy (data/_ecsv.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from starlabel.data import InferenceResult, read_result
from starlabel.data._ecsv import ecsv_csv_text
from starlabel.data._tables import write_table_file


def _result(meta: dict, n: int = 7, *, ids=None) -> InferenceResult:
    rng = np.random.default_rng(3)
    names = ("teff", "logg", "mg_fe", "snr_like")
    cov = np.einsum("nij,nkj->nik", *(2 * [rng.normal(size=(n, 4, 4))]))
    return InferenceResult(
        ids=np.array([f"star-{i}" for i in range(n)]) if ids is None else ids,
        label_names=names,
        labels=rng.normal(size=(n, 4)) * np.array([1000.0, 1.0, 0.1, 3e-7]),
        cov=cov,
        chi2=rng.uniform(1, 2, n).astype(np.float32),
        dof=np.full(n, 7000.0),
        flags=rng.integers(0, 8, n),
        extra={
            "n_iter": rng.integers(1, 9, n),
            "teff_err_stat": rng.uniform(size=n),
            "ok": rng.random(n) > 0.5,
        },
        meta=meta,
    )


def _astropy_bytes(result: InferenceResult, tmp_path) -> str:
    path = tmp_path / "astropy.csv"
    write_table_file(result.to_table(), path, hdf5_path="results")
    return path.read_text()


META = {
    "model": "cannon",
    "n_starts": np.int64(3),
    "ratio": np.float64(1e17),
    "tiny": 2.5e-300,
    "nan": float("nan"),
    "flag": True,
    "text": "a, b: 'c' — ünïcode " + "long words " * 20,
    "provenance": {"model": {"path": "/x/m.starlabel", "sha256": "ab" * 32}, "z": [1, 2.5, "q"], "a": {}},
}


@pytest.mark.parametrize("meta", [META, {}], ids=["rich-meta", "no-meta"])
def test_csv_bytes_equal_astropys(meta, tmp_path):
    result = _result(meta)
    text = result._csv_text()
    assert text is not None
    assert text == _astropy_bytes(result, tmp_path)
    path = result.write(tmp_path / "fast.csv")
    assert path.read_text() == text
    back = read_result(path)
    np.testing.assert_array_equal(back.labels, result.labels)
    assert back.meta.get("model") == meta.get("model")


def test_what_the_fast_path_cannot_write_goes_through_astropy(tmp_path):
    result = _result({}, ids=np.array(["a,b", "c", "d", "e", "f", "g", "h"]))  # quoted by astropy
    assert result._csv_text() is None
    path = result.write(tmp_path / "slow.csv")
    assert path.read_text() == _astropy_bytes(result, tmp_path)
    columns = {"a": np.ones(2)}
    # astropy writes tuples, arrays and shared dicts with tags or aliases: not reproduced
    shared: dict = {"k": 1}
    for meta in ({"pair": (1, 2)}, {"x": np.arange(3)}, {"p": shared, "q": shared}):
        assert ecsv_csv_text(columns, {}, {}, meta) is None
    assert ecsv_csv_text(columns, {}, {}, {"p": {"k": 1}, "q": {"k": 1}}) is not None


def test_writing_a_csv_result_does_not_import_astropy(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from starlabel.data import InferenceResult\n"
        "r = InferenceResult(ids=np.array(['a', 'b']), label_names=('teff',), labels=np.ones((2, 1)),"
        " cov=np.ones((2, 1, 1)), chi2=np.ones(2), dof=np.ones(2), flags=np.zeros(2, int), meta={'m': 1})\n"
        f"r.write({str(tmp_path / 'r.csv')!r})\n"
        "assert not [m for m in sys.modules if m.startswith('astropy')], 'astropy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
