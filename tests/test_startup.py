"""Start-up: `starlabel --help` without the scientific stack, lazy package names,
bucketed shapes, and the column-wise CSV writer (same bytes as astropy's)."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from starlabel._internal._buckets import bucket_size
from starlabel.data import InferenceResult, read_result
from starlabel.data._tables import csv_text

HEAVY = ("jax", "numpy", "astropy", "matplotlib", "scipy", "equinox", "h5py")

# One process runs every command line, then reports what got imported.
_PROBE = """
import sys
from starlabel.cli import app
codes = []
for argv in {argvs!r}:
    try:
        app(args=argv, prog_name="starlabel")
    except SystemExit as exit:
        codes.append(exit.code or 0)
print("CODES", *codes, "LOADED", *(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""

COMMAND_LINES = {
    ("--help",): 0,
    ("infer", "--help"): 0,
    ("train", "cannon", "--help"): 0,
    ("--version",): 0,
    ("infer",): 2,  # missing arguments: click's usage error
    ("train", "cannon", "data.npz", "--labels", "teff", "--bogus", "-o", "m"): 2,
}


def test_help_and_argument_errors_load_no_scientific_stack():
    argvs = [list(argv) for argv in COMMAND_LINES]
    run = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argvs=argvs, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    codes, loaded = run.stderr.rsplit("CODES", 1)[1].split("LOADED")
    assert [int(c) for c in codes.split()] == list(COMMAND_LINES.values()), run.stderr
    assert loaded.split() == [], f"--help / argument errors imported {loaded.split()}"
    assert "infer" in run.stdout and "train" in run.stdout  # the help was printed


PACKAGES = (
    "starlabel",
    "starlabel._internal",
    "starlabel.data",
    "starlabel.models",
    "starlabel.inference",
    "starlabel.evaluate",
)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_lazy_name_resolves(package):
    module = importlib.import_module(package)
    names = [n for n in dir(module) if not n.startswith("__")]
    for name in names:
        value = getattr(module, name)
        assert value is getattr(module, name)  # stored after the first look-up
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_top_level_names():
    import starlabel

    assert starlabel.read_dataset is importlib.import_module("starlabel.data").read_dataset
    assert starlabel.load_model is importlib.import_module("starlabel.models._io").load_model
    assert {"SpectralDataset", "InferenceResult", "data", "models", "__version__"} <= set(dir(starlabel))


def test_bucket_size_ladder():
    assert [bucket_size(n) for n in range(1, 17)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16]
    sizes = [bucket_size(n) for n in (1000, 1024, 1025, 1536, 1537, 5000)]
    assert sizes == [1024, 1024, 1536, 1536, 2048, 6144]
    assert bucket_size(0) == 1 and bucket_size(3, minimum=8) == 8 and bucket_size(9, minimum=8) == 12
    sizes = np.arange(1, 20000)
    buckets = np.array([bucket_size(int(n)) for n in sizes])
    assert np.all(buckets >= sizes) and np.all(np.diff(buckets) >= 0)
    assert np.max(buckets / sizes) <= 1.5  # never more than 50 % padding
    assert len(np.unique(buckets[999:9999])) == 8  # 1,000–9,999 stars: 8 programs
    with pytest.raises(ValueError, match="n ≥ 0"):
        bucket_size(-1)


def _astropy_csv(table: Table) -> str:
    buffer = io.StringIO()
    table.write(buffer, format="ascii.csv")
    return buffer.getvalue()


def test_csv_writer_matches_astropy_and_round_trips(tmp_path, rng):
    n = 300
    labels = rng.normal(size=(n, 3)) * [500.0, 1.0, 0.2] + [4800.0, 2.5, 0.0]
    labels[:4, 0] = [1e16, 1e-5, np.nan, -np.inf]  # repr switches to exponent / special values
    cov = np.einsum("ni,nj->nij", labels * 1e-3, labels * 1e-3) + np.eye(3) * 1e-4
    result = InferenceResult(
        ids=[f"2M{i:08d}+{i % 97:04d}" for i in range(n)],
        label_names=("teff", "logg", "m_h"),
        labels=labels,
        cov=cov,
        chi2=rng.chisquare(100, n),
        dof=np.full(n, 97.0),
        flags=rng.integers(0, 128, n),
        extra={"n_iter": rng.integers(1, 30, n), "rv": rng.normal(size=n).astype(np.float32)},
        meta={"kind": "cannon"},
    )
    table = result.to_table()
    assert csv_text(table) == _astropy_csv(table)  # byte for byte
    path = result.write(tmp_path / "labels.csv")  # ECSV-style header, then the column-wise body
    text = path.read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert text.startswith("# %ECSV") and body == _astropy_csv(table)
    back = read_result(path)
    np.testing.assert_array_equal(back.ids, result.ids)
    np.testing.assert_array_equal(back.labels, result.labels)  # repr round-trips exactly
    np.testing.assert_array_equal(back.label_err, result.label_err)
    np.testing.assert_array_equal(back.chi2, result.chi2)
    np.testing.assert_array_equal(back.flags, result.flags)
    np.testing.assert_array_equal(back.extra["rv"], result.extra["rv"].astype(float))


def test_csv_writer_leaves_what_it_cannot_reproduce_to_astropy(tmp_path):
    for column in (["a", "b,c"], ["a", ' "q"'], ["", "x"], ["a\nb", "c"]):
        table = Table({"id": np.array(column), "x": [1.0, 2.0]})
        assert csv_text(table) is None
    result = InferenceResult(
        ids=["a,1", "b"], label_names=("x",), labels=[[1.0], [2.0]], cov=None,
        chi2=[1.0, 2.0], dof=[1.0, 1.0], flags=[0, 0],
    )  # fmt: skip
    back = read_result(result.write(tmp_path / "quoted.csv"))
    assert list(back.ids) == ["a,1", "b"]


def test_training_padding_rows_of_weight_zero_change_nothing(rng):
    """The star bucket pads with weight-0 rows: even garbage in them leaves θ and s² exact."""
    import jax
    import jax.numpy as jnp

    from starlabel.data import simulate_cannon
    from starlabel.models.cannon import PolynomialVectorizer
    from starlabel.models.cannon._train import TrainingOptions, fit_pixels

    data = simulate_cannon(50, 20, 2, snr=50.0, seed=4).dataset  # 50 stars -> a bucket of 64
    options = TrainingOptions(tol=1e-12)
    active, l1 = np.ones((20, 6), bool), np.zeros(20)
    with jax.enable_x64(True):
        scaled = (data.labels - data.labels.mean(0)) / data.labels.std(0)
        design = np.asarray(PolynomialVectorizer.from_order(data.label_names, 2).design(jnp.asarray(scaled)))
        bucketed = fit_pixels(data.flux, data.ivar, design, np.ones(50), active, l1, options)
        # 14 more stars of weight 0 with random spectra and labels: the same 64-row
        # program, so any contribution of a weight-0 row would show.
        extra = lambda a: np.concatenate([a, rng.normal(size=(14, *a.shape[1:])) ** 2 + 0.5])  # noqa: E731
        weights = np.concatenate([np.ones(50), np.zeros(14)])
        garbage = fit_pixels(extra(data.flux), extra(data.ivar), extra(design), weights, active, l1, options)
    assert bucketed[4] and bucketed[2].all()  # converged, every pixel usable
    for a, b in zip(bucketed[:3], garbage[:3], strict=True):
        np.testing.assert_array_equal(a, b)


def test_exported_program_is_loaded_from_disk_and_matches_jit(tmp_path, monkeypatch):
    import functools

    import jax
    import jax.numpy as jnp

    from starlabel._internal import _exported

    def scaled_sum(x, y, *, k):
        return (jnp.sin(x) * k + y, jnp.sum(x))

    monkeypatch.setattr(_exported, "exported_dir", lambda: tmp_path)
    monkeypatch.setattr(_exported, "_CALLS", {})
    x, y = np.linspace(0.0, 1.0, 7), np.ones(7)
    fn = functools.partial(scaled_sum, k=3.0)
    first = _exported.exported_call("scaled_sum", fn, 3.0, [x, y])
    assert len(list(tmp_path.glob("scaled_sum-*.stablehlo"))) == 1
    # A new process: nothing in memory, and tracing is forbidden, so it must load.
    monkeypatch.setattr(_exported, "_CALLS", {})
    monkeypatch.setattr(jax.export, "export", lambda *a, **k: pytest.fail("traced again"))
    again = _exported.exported_call("scaled_sum", fn, 3.0, [x, y])
    for a, b, c in zip(first, again, jax.jit(fn)(x, y), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    with pytest.raises(pytest.fail.Exception, match="traced again"):  # another shape: a new key
        _exported.exported_call("scaled_sum", fn, 3.0, [x[:5], y[:5]])
