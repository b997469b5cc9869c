import numpy as np
import pytest

from starlabel.data import (
    SpectralDataset,
    read_dataset,
    simulate_cannon,
    write_dataset,
    write_table_file,
)


@pytest.fixture
def dataset():
    sim = simulate_cannon(40, 30, 3, bad_pixel_fraction=0.05, seed=3)
    err = np.abs(sim.true_labels) * 0.01
    return sim.dataset.replace(label_err=err, meta={"survey": "sim", "seed": 3})


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5"])
def test_round_trip_every_format(tmp_path, dataset, suffix):
    path = write_dataset(dataset, tmp_path / f"data{suffix}")
    back = read_dataset(path)
    assert back.label_names == dataset.label_names
    for field in ("flux", "ivar", "mask", "wavelength", "labels", "label_err"):
        np.testing.assert_array_equal(getattr(back, field), getattr(dataset, field))
    np.testing.assert_array_equal(back.ids, dataset.ids)
    assert back.meta["survey"] == "sim" and back.meta["seed"] == 3
    assert not list(tmp_path.glob("*.partial"))


def test_per_label_arrays_and_label_selection(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "columns.npz",
        flux=rng.normal(1, 0.01, (6, 5)),
        flux_err=np.full((6, 5), 0.01),
        teff=rng.uniform(4000, 5000, 6),
        teff_err=np.full(6, 50.0),
        logg=rng.uniform(1, 3, 6),
        snr=np.full(6, 100.0),
    )
    ds = read_dataset(tmp_path / "columns.npz", labels=["logg", "teff"])
    assert ds.label_names == ("logg", "teff")
    assert np.isnan(ds.label_err[:, 0]).all() and np.all(ds.label_err[:, 1] == 50.0)
    with pytest.raises(
        KeyError,
        match=r"no label array\(s\) \['m_h'\]; 1-D per-star arrays present: \['logg', 'snr', 'teff', 'teff_err'\]",
    ):
        read_dataset(tmp_path / "columns.npz", labels=["m_h"])
    assert read_dataset(tmp_path / "columns.npz").labels is None


def test_labels_matrix_layout(tmp_path):
    np.savez(
        tmp_path / "matrix.npz",
        flux=np.ones((3, 2)),
        ivar=np.full((3, 2), 4.0),
        labels=np.arange(6.0).reshape(3, 2),
        label_names=np.array(["a", "b"]),
    )
    ds = read_dataset(tmp_path / "matrix.npz", labels=["b"])
    np.testing.assert_array_equal(ds.labels[:, 0], [1.0, 3.0, 5.0])
    with pytest.raises(KeyError, match=r"its labels are \['a', 'b'\]"):
        read_dataset(tmp_path / "matrix.npz", labels=["c"])


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dataset(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="known dataset suffixes"):
        read_dataset(tmp_path / "data.txt")
    np.savez(tmp_path / "noflux.npz", spectra=np.ones((2, 2)))
    with pytest.raises(KeyError, match=r"no 'flux' array .* keys present: \['spectra'\]"):
        read_dataset(tmp_path / "noflux.npz")
    np.savez(tmp_path / "noerr.npz", flux=np.ones((2, 2)))
    with pytest.raises(KeyError, match="neither 'flux_err' nor 'ivar'"):
        read_dataset(tmp_path / "noerr.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="could not read"):
        read_dataset(tmp_path / "corrupt.npz")


@pytest.mark.shared_data
def test_real_giants_load_with_labels(apogee_giants):
    assert (apogee_giants.n_stars, apogee_giants.n_pixels) == (500, 100)
    assert apogee_giants.label_names == ("teff", "logg", "m_h")
    teff = apogee_giants.label("teff")
    assert 3500 < np.nanmin(teff) and np.nanmax(teff) < 5500
    assert apogee_giants.wavelength[0] == pytest.approx(15168.13, abs=0.01)
    assert isinstance(apogee_giants, SpectralDataset)


def test_table_writers_refuse_to_replace_unless_asked(tmp_path):
    from astropy.table import Table

    from starlabel.data._tables import write_text_file

    table = Table({"id": ["a", "b"], "teff": [4800.0, 5100.0]})
    path = write_table_file(table, tmp_path / "new" / "results.ecsv", hdf5_path="results")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_table_file(table, path, hdf5_path="results", overwrite=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_text_file("id,teff\n", path, overwrite=False)
    assert Table.read(path)["teff"][1] == 5100.0
    write_text_file("id,teff\nc,5000.0\n", tmp_path / "new" / "results.csv")
    assert (tmp_path / "new" / "results.csv").read_text() == "id,teff\nc,5000.0\n"
