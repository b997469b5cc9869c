"""Training labels through the CLI: non-numeric columns are named; dropped stars are counted."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import SpectralDataset, read_dataset, simulate_cannon, write_dataset
from starlabel.models import load_model, read_model_header

runner = CliRunner()


def test_string_label_column_is_named(tmp_path):
    sim = simulate_cannon(20, 8, 2, seed=3).dataset
    teff = np.array([f"{t:.0f}" for t in sim.labels[:, 0]])
    teff[7] = "x"
    path = tmp_path / "strings.npz"
    np.savez(path, flux=sim.flux, ivar=sim.ivar, teff=teff, logg=sim.labels[:, 1])

    result = runner.invoke(
        app, ["train", "cannon", str(path), "--labels", "teff,logg", "-o", str(tmp_path / "m")]
    )

    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: label 'teff' in {str(path)!r} holds non-numeric values (e.g. 'x'); labels must be"
        " numbers, with NaN where a value is unknown: fix that column or train on other labels."
    )
    # numbers written as text are numbers
    teff[7] = "4800"
    np.savez(path, flux=sim.flux, ivar=sim.ivar, teff=teff, logg=sim.labels[:, 1])
    assert read_dataset(path, labels=("teff", "logg")).labels[7, 0] == 4800.0
    # the same check on the labels-table layout and on the streamed reader
    table = np.stack([teff, sim.labels[:, 1].astype(str)], axis=1)
    table[3, 1] = "n/a"
    np.savez(path, flux=sim.flux, ivar=sim.ivar, labels=table, label_names=np.array(["teff", "logg"]))
    with pytest.raises(ValueError, match=r"label 'logg' in .* holds non-numeric values \(e\.g\. 'n/a'\)"):
        read_dataset(path)
    result = runner.invoke(
        app, ["train", "cannon", str(path), "--labels", "teff,logg", "--stream", "-o", str(tmp_path / "m")]
    )
    assert result.exit_code == 2 and "label 'logg'" in result.stderr and "'n/a'" in result.stderr


@pytest.fixture
def half_labelled(tmp_path):
    sim = simulate_cannon(60, 15, 2, seed=5).dataset
    labels = np.array(sim.labels)
    labels[::2, 0] = np.nan  # 30 stars lack teff
    labels[1, 1] = np.nan  # and one more lacks logg
    data = SpectralDataset(sim.flux, ivar=sim.ivar, labels=labels, label_names=sim.label_names)
    return write_dataset(data, tmp_path / "half.npz")


def test_cannon_says_how_many_stars_it_used(half_labelled, tmp_path):
    labels = "teff,logg"
    model = tmp_path / "c.starlabel"
    result = runner.invoke(
        app, ["train", "cannon", str(half_labelled), "--labels", labels, "--order", "1", "-o", str(model)]
    )
    assert result.exit_code == 0, result.output
    assert (
        "training on 29 of 60 stars: 31 dropped because a label is unknown (NaN; per label: teff 30, logg 1)."
        in (result.stderr)
    )
    assert dict(load_model(model).training_info)["n_train"] == 29
    # the model file records which data it learned from
    training_set = read_model_header(model)["training_set"]
    assert training_set["sha256"] == read_dataset(half_labelled, labels=("teff", "logg")).checksum()
    assert (training_set["of"], training_set["n_stars"]) == ("arrays", 60)

    result = runner.invoke(
        app,
        [
            "train",
            "cannon",
            str(half_labelled),
            "--labels",
            labels,
            "--order",
            "1",
            "--stream",
            "-o",
            str(model),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trained on 29 of 60 stars: 31 dropped because a label is unknown (NaN)." in result.stderr
    streamed = read_model_header(model)["training_set"]
    assert (
        streamed["of"] == "file"
        and streamed["sha256"] == hashlib.sha256(half_labelled.read_bytes()).hexdigest()
    )


def test_nn_says_stars_train_on_the_labels_they_have(half_labelled, tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "nn",
            str(half_labelled),
            "--labels",
            "teff,logg",
            "--hidden",
            "8",
            "--epochs",
            "3",
            "-o",
            str(tmp_path / "n"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "training on all 60 stars; 31 lack some label (NaN; per label: teff 30, logg 1)" in result.stderr
