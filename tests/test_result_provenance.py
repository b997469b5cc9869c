"""Result tables keep their provenance, metadata and label units in every format."""

from __future__ import annotations

import csv
import hashlib
import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

import starlabel
from starlabel.data import InferenceResult, read_dataset, read_result, simulate_cannon
from starlabel.data._tables import FITS_META_CARD, META_KEY, read_table_file
from starlabel.data._units import label_unit
from starlabel.models import read_model_header, save_model
from starlabel.pipeline import run_inference
from test_pipeline_support import fit_linear, make_survey

FORMATS = (".csv", ".ecsv", ".fits", ".h5", ".parquet")
UNITS = {
    "teff": "K",
    "teff_err": "K",
    "logg": "dex",
    "logg_err": "dex",
    "mg_fe": "dex",
    "mg_fe_err": "dex",
    "rv": "km / s",
    "rv_err": "km / s",
}
PROVENANCE = {
    "model": {"kind": "cannon", "path": "/models/giants.starlabel", "sha256": "ab" * 32},
    "test_step": {
        "estimator": "mean",
        "prior": "kde",
        "temperature": 0.25,
        "fit_rv": True,
        "continuum_order": 2,
    },
}


@pytest.fixture
def result(rng):
    n = 7
    labels = np.column_stack([rng.uniform(4000, 5000, n), rng.uniform(1, 3, n), rng.normal(0, 0.1, n)])
    labels[2, 1] = np.nan  # a failed star stays NaN
    cov = np.einsum("i,jk->ijk", np.linspace(1, 2, n), np.diag([50.0**2, 0.1**2, 0.05**2]))
    cov[:, 0, 1] = cov[:, 1, 0] = 0.3
    return InferenceResult(
        ids=[f"2M{i:08d} +x" for i in range(n)],
        label_names=("teff", "logg", "mg_fe"),
        labels=labels,
        cov=cov,
        chi2=rng.uniform(90, 110, n),
        dof=np.full(n, 97.0),
        flags=np.array([0, 1, 4, 0, 0, 64, 0]),
        extra={"rv": rng.normal(0, 5, n), "rv_err": np.full(n, 0.2), "n_iter": np.arange(n)},
        meta={"model": "cannon", "uncertainty": "fisher", "n_starts": 4, "provenance": PROVENANCE},
    )


def test_label_units():
    assert [label_unit(n) for n in ("teff", "logg", "m_h", "fe_h", "alpha_m", "mg_fe", "vmicro", "snr")] == [
        "K",
        "dex",
        "dex",
        "dex",
        "dex",
        "dex",
        "km / s",
        None,
    ]


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_keeps_values_units_and_provenance(result, tmp_path, suffix):
    path = result.write(tmp_path / f"labels{suffix}")

    table = read_table_file(path, hdf5_path="results")
    assert {c: str(table[c].unit) for c in table.colnames if table[c].unit is not None} == UNITS
    back = read_result(path)
    np.testing.assert_array_equal(back.ids, result.ids)
    np.testing.assert_allclose(back.labels, result.labels, rtol=0, atol=0)
    np.testing.assert_allclose(back.cov, result.cov, rtol=1e-15)
    np.testing.assert_array_equal(back.flags, result.flags)
    np.testing.assert_array_equal(back.extra["n_iter"], np.arange(7))
    provenance = back.meta["provenance"]
    assert provenance["starlabel_version"] == starlabel.__version__
    assert provenance["model"] == {**PROVENANCE["model"], "starlabel_version": None, "training_set": None}
    # every test-step option, the model's own record and the options asked for, as JSON values
    assert provenance["test_step"] == {"uncertainty": "fisher", "n_starts": 4, **PROVENANCE["test_step"]}
    assert (back.meta["model"], back.meta["label_names"]) == ("cannon", "teff,logg,mg_fe")
    # writing what was read gives the same record
    again = read_result(back.write(tmp_path / f"again{suffix}"))
    assert again.meta["provenance"] == provenance


def test_each_format_in_its_own_terms(result, tmp_path):
    """What other tools see: FITS cards, HDF5 attributes, Parquet metadata, CSV comments."""
    result.write(tmp_path / "r.fits")
    header = fits.getheader(tmp_path / "r.fits", 1)
    assert header["TTYPE2"] == "teff" and header["TUNIT2"] == "K" and header["TUNIT4"] == "dex"
    assert json.loads(header[FITS_META_CARD])["meta"]["provenance"]["model"]["sha256"] == "ab" * 32

    result.write(tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5") as handle:
        record = json.loads(handle["results"].attrs[META_KEY])
    assert record["units"]["rv"] == "km / s" and record["meta"]["provenance"]["test_step"]["prior"] == "kde"

    result.write(tmp_path / "r.parquet")
    schema = pq.read_schema(tmp_path / "r.parquet")
    assert schema.field("teff").metadata == {b"unit": b"K"} and schema.field("chi2").metadata is None
    assert (
        json.loads(schema.metadata[META_KEY.encode()])["meta"]["provenance"]["test_step"]["temperature"]
        == 0.25
    )

    path = result.write(tmp_path / "r.csv")
    lines = path.read_text().splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert lines[0] == "# %ECSV 1.0" and lines.index(body[0]) > 20  # the header, then the CSV
    assert body[0].startswith("id,teff,teff_err,logg,logg_err,mg_fe,mg_fe_err,cov_teff_logg,")
    rows = list(csv.DictReader(body))
    assert rows[3]["id"] == "2M00000003 +x" and float(rows[3]["teff"]) == result.labels[3, 0]
    array = np.genfromtxt(body, delimiter=",", names=True, dtype=None, encoding=None)
    np.testing.assert_array_equal(array["flags"], result.flags)
    plain = Table.read(path, format="ascii.csv", comment="#")  # astropy as a plain CSV
    np.testing.assert_array_equal(plain["teff"], result.labels[:, 0])
    ecsv = Table.read(path, format="ascii.ecsv")  # and as ECSV, with units and metadata
    assert ecsv["logg"].unit == "dex" and ecsv["logg"].description == "log10(g / (cm s-2))"
    assert ecsv.meta["provenance"]["model"]["kind"] == "cannon"


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])  # streamed and in-memory merges
def test_pipeline_output_names_model_file_training_set_and_options(tmp_path, suffix):
    _, files = make_survey(tmp_path, n_files=2, n_stars=12, n_pixels=16)
    train = simulate_cannon(50, 16, 3, seed=9).dataset
    model = save_model(fit_linear(train), tmp_path / "linear.starlabel", training_set=train)
    assert read_model_header(model)["training_set"]["sha256"] == train.checksum()

    output = tmp_path / f"labels{suffix}"
    options = {"fail_on_id": "none-of-these"}
    run_inference(model, files, output, chunk_size=8, infer_options=options, progress=False)

    provenance = read_result(output).meta["provenance"]
    assert provenance["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert provenance["model"]["path"] == str(model.absolute())
    assert provenance["model"]["kind"] == "test-linear"
    assert provenance["model"]["starlabel_version"] == starlabel.__version__
    assert provenance["model"]["training_set"] == {
        "sha256": train.checksum(),
        "of": "arrays",
        "n_stars": 50,
        "source": None,
    }
    assert provenance["test_step"]["fail_on_id"] == "none-of-these"
    table = read_table_file(output, hdf5_path="results")
    assert table["teff"].unit == "K" and table["fe_h_err"].unit == "dex" and table["chi2"].unit is None


def test_checksum_follows_the_data():
    data = simulate_cannon(20, 8, 2, seed=1).dataset
    same = simulate_cannon(20, 8, 2, seed=1).dataset
    assert data.checksum() == same.checksum() and len(data.checksum()) == 64
    assert data[:19].checksum() != data.checksum()
    assert data.replace(ids=[f"x{i}" for i in range(20)]).checksum() != data.checksum()


def test_training_file_checksum_in_model(tmp_path):
    train = simulate_cannon(30, 8, 3, seed=2).dataset
    path = starlabel.write_dataset(train, tmp_path / "train.npz")
    model = save_model(fit_linear(read_dataset(path)), tmp_path / "m.starlabel", training_set=path)
    record = read_model_header(model)["training_set"]
    assert record == {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "of": "file",
        "n_stars": None,
        "source": str(path.absolute()),
    }
