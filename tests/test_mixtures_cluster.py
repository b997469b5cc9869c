"""Cluster/field membership: simulated truth (archive columns) and the real NGC 103 field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.mixtures import fit_cluster_membership, fit_membership_table, simulate_cluster_field


@pytest.fixture(scope="module")
def simulated():
    sim = simulate_cluster_field(n_field=1000, n_cluster=120, n_missing=4, seed=3)
    result = fit_membership_table(
        sim.table, position_columns=("ra", "dec"), n_field_max=2, num_warmup=200, num_samples=200, seed=1
    )
    return sim, result


def test_simulated_columns_found_by_archive_convention(simulated):
    _, result = simulated
    assert result.columns["values"] == ["pmra", "pmdec", "parallax"]
    assert result.columns["errors"] == ["pmra_error", "pmdec_error", "parallax_error"]
    assert sorted(result.columns["correlations"].values()) == [
        "parallax_pmdec_corr",
        "parallax_pmra_corr",
        "pmra_pmdec_corr",
    ]


def test_simulated_truth_recovered(simulated):
    sim, result = simulated
    assert result.fit.method == "nuts" and result.fit.divergences < 5 and result.fit.min_ess > 50
    params = result.fit.parameters()
    for i, name in enumerate(("pmra", "pmdec", "parallax")):
        stats = params[f"mean_{name}"]
        assert abs(stats["median"] - sim.cluster_mean[i]) < 3.5 * stats["std"] + 1e-3, name
        assert stats["std"] < 0.02
    assert abs(params["pm_dispersion"]["median"] - sim.pm_dispersion) < 0.025
    assert result.fit.n_field == 2 and result.fit.bic[1] > result.fit.bic[2]  # a two-Gaussian field
    # Sky term: the cluster sits at the field centre with radius 0.05 deg.
    assert abs(params["radius_deg"]["median"] - 0.05) < 0.01


def test_simulated_memberships_are_calibrated(simulated):
    sim, result = simulated
    used = np.asarray(result.table["member_status"]) == "fit"
    p = np.asarray(result.table["p_member"])[used]
    truth = sim.is_member[used]
    assert np.mean(p[truth] > 0.5) > 0.9
    assert np.mean(p[~truth] < 0.5) > 0.98
    # Expected and realised member counts agree within the stated uncertainty.
    n, n_err = result.fit.n_members()
    assert abs(n - truth.sum()) < 3.0 * n_err
    confident = p > 0.9
    assert truth[confident].mean() > 0.9


def test_missing_rows_reported_and_kept(simulated):
    sim, result = simulated
    assert result.n_skipped == len(sim.missing_rows) == 4
    status = np.asarray(result.table["member_status"])
    assert all(status[sim.missing_rows] != "fit")
    assert "pmra" in status[sim.missing_rows[0]]
    assert np.all(np.isnan(np.asarray(result.table["p_member"])[sim.missing_rows]))
    assert len(result.table) == len(sim.table)
    assert set(sim.table.colnames) <= set(result.table.colnames)
    assert "skipped: 4" in result.summary()


def test_real_ngc103_field_through_the_cli(shared_data, tmp_path):
    """`starlabel members TABLE --pm pmRA,pmDE --parallax Plx -o members.csv`, as README.md shows it."""
    path = shared_data / "gaia" / "asteca_field_ngc103_gaiadr3.csv"
    # Laplace posterior (--no-nuts) here to keep the suite fast; NUTS is exercised on the
    # simulated field above and on this one in the tutorial (docs/mixtures.md has its numbers).
    args = [
        "members",
        str(path),
        "--pm",
        "pmRA,pmDE",
        "--parallax",
        "Plx",
        "-o",
        str(tmp_path / "members.csv"),
    ]
    options = ["--errors", "e_pmRA,e_pmDE,e_Plx", "--n-field-max", "4", "--no-nuts", "--seed", "0"]
    result = CliRunner().invoke(app, [*args, *options, "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "mean_pmra" in result.output and "skipped: 65" in result.output
    summary = json.loads((tmp_path / "members.json").read_text())
    params = summary["cluster"]
    assert abs(params["mean_pmra"]["median"] - (-2.8)) < 0.1
    assert abs(params["mean_pmdec"]["median"] - (-1.1)) < 0.1
    assert abs(params["mean_parallax"]["median"] - 0.28) < 0.05
    for name in ("mean_pmra", "mean_pmdec", "mean_parallax"):
        assert 0 < params[name]["std"] < 0.02
    assert summary["sampler"]["method"] == "laplace"
    assert summary["field"]["n_components"] >= 2  # a single Gaussian field is rejected by BIC
    bic = summary["field"]["bic"]
    assert bic["1"] - min(bic.values()) > 100
    n, n_err = summary["n_members"]["expected"], summary["n_members"]["std"]
    assert 100 < n < 1000 and 0 < n_err < 0.2 * n
    # The 65 rows without astrometry are reported and kept, not dropped.
    assert summary["n_skipped"] == 65 and summary["n_rows"] == 8683

    source = Table.read(path, format="ascii.csv")
    back = Table.read(tmp_path / "members.csv", format="ascii.csv", comment="#")  # after the ECSV header
    assert back.colnames[: len(source.colnames)] == source.colnames
    assert {"p_member", "p_member_err", "p_member_map", "member_status"} <= set(back.colnames)
    p, p_err = np.asarray(back["p_member"], dtype=float), np.asarray(back["p_member_err"], dtype=float)
    assert np.isfinite(p_err).sum() == np.isfinite(p).sum() == 8683 - 65
    assert np.all((p[np.isfinite(p)] >= 0) & (p[np.isfinite(p)] <= 1))
    assert np.sum(p[np.isfinite(p)]) == pytest.approx(n, rel=0.05)
    paths = sorted((tmp_path / "plots").iterdir())
    assert [q.name for q in paths] == ["members_parallax.png", "members_pm.png"]
    assert all(q.stat().st_size > 10_000 for q in paths)


def test_missing_columns_listed(tmp_path):
    table = Table({"pmRA": [1.0, 2.0], "pmDE": [0.0, 1.0], "Plx": [0.1, 0.2], "e_pmRA": [0.1, 0.1]})
    with pytest.raises(KeyError, match=r"pmDE.*columns are \['pmRA', 'pmDE', 'Plx', 'e_pmRA'\]"):
        fit_membership_table(table)
    with pytest.raises(KeyError, match="no proper-motion columns"):
        fit_membership_table(Table({"a": [1.0]}))
    with pytest.raises(ValueError, match="one error column per fitted column"):
        fit_membership_table(table, error_columns=["e_pmRA"])
    table["p_member"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="already has column"):
        fit_membership_table(table)


def test_array_input_validation():
    y = np.zeros((50, 3))
    with pytest.raises(ValueError, match="covariance"):
        fit_cluster_membership(y, np.ones((50, 2)))
    bad = np.ones((50, 3))
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"first rows: \[7\]"):
        fit_cluster_membership(y, bad)
    with pytest.raises(ValueError, match="1…8"):
        fit_cluster_membership(y, np.ones((50, 3)), n_field=9)
