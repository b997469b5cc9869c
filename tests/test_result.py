import numpy as np
import pytest

from starlabel.data import Flag, InferenceResult, read_result


@pytest.fixture
def result():
    rng = np.random.default_rng(0)
    n = 7
    a = rng.normal(size=(n, 2, 2))
    cov = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(2)
    return InferenceResult(
        ids=[f"star{i}" for i in range(n)],
        label_names=("teff", "logg"),
        labels=rng.normal(size=(n, 2)),
        cov=cov,
        chi2=rng.uniform(50, 150, n),
        dof=np.full(n, 97.0),
        flags=np.array([0, 1, 2, 3, 0, 64, 0]),
        extra={"n_iter": np.arange(n)},
        meta={"model": "test"},
    )


@pytest.mark.parametrize("suffix", [".csv", ".fits", ".h5", ".parquet", ".ecsv"])
def test_round_trip_every_table_format(tmp_path, result, suffix):
    path = result.write(tmp_path / f"results{suffix}")
    back = read_result(path)
    assert back.label_names == result.label_names
    np.testing.assert_array_equal(back.ids, result.ids)
    np.testing.assert_allclose(back.labels, result.labels, rtol=1e-12)
    np.testing.assert_allclose(back.cov, result.cov, rtol=1e-12)
    np.testing.assert_allclose(back.reduced_chi2, result.chi2 / 97.0)
    np.testing.assert_array_equal(back.flags, result.flags)
    np.testing.assert_array_equal(back.extra["n_iter"], np.arange(7))


def test_table_columns_are_the_public_contract(result):
    table = result.to_table()
    assert table.colnames[:5] == ["id", "teff", "teff_err", "logg", "logg_err"]
    for column in ("chi2", "dof", "rchi2", "flags", "n_iter", "cov_teff_logg"):
        assert column in table.colnames
    np.testing.assert_allclose(table["teff_err"], np.sqrt(result.cov[:, 0, 0]))


def test_flags_describe_and_shape_validation(result):
    assert Flag.describe(0) == "ok"
    assert Flag.describe(3) == "NOT_CONVERGED|HIT_BOUND"
    with pytest.raises(ValueError, match=r"chi2 has shape \(3,\)"):
        InferenceResult(
            ids=["a"] * 2,
            label_names=("x",),
            labels=np.zeros((2, 1)),
            cov=None,
            chi2=np.zeros(3),
            dof=np.ones(2),
            flags=np.zeros(2),
        )
    with pytest.raises(ValueError, match="suffix"):
        result.write("results.txt")


def test_concatenate(result):
    both = result.concatenate_with([result])
    assert both.n_stars == 14
    np.testing.assert_array_equal(both.labels[7:], result.labels)
