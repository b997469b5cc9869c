"""Every command and option of the CLI, run through the CLI on small simulated data.

One simulated survey (a quadratic Cannon model, 3 labels, known truth) and one Cannon
trained on it through `starlabel train cannon` are shared by the whole module. Each
test-step option must be accepted, add the columns docs/test_step.md promises, and
give labels near the truth. Internal numerics are left to the library tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import typer
from astropy.table import Table
from matplotlib.image import imread
from typer.testing import CliRunner

from starlabel import __version__
from starlabel.cli import app
from starlabel.data import read_dataset, read_result, simulate_cannon, write_dataset
from starlabel.models import load_model
from test_docs_contract import fenced_commands

# One xdist worker runs the module, so the shared model and compiled test steps are built once.
pytestmark = pytest.mark.xdist_group("cli")

LABELS = ("teff", "logg", "fe_h")
# --fit-rv leaves out the pixels within reach of its ±150 km/s of each region edge (36
# here, 4.2 km/s per pixel); on 100 pixels the 28 left cannot pin the labels down.
N_TRAIN, N_TEST, N_PIXELS = 160, 16, 300


def run(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"starlabel {' '.join(map(str, args))}:\n{result.output}"
    return result.output


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("cli")
    sim = simulate_cannon(N_TRAIN + N_TEST, N_PIXELS, 3, snr=100.0, seed=3)
    data = sim.dataset.replace(ids=[f"star{i:04d}" for i in range(N_TRAIN + N_TEST)])
    train = write_dataset(data[np.arange(N_TRAIN)], folder / "train.npz")
    test = write_dataset(data[np.arange(N_TRAIN, N_TRAIN + N_TEST)], folder / "test.npz")
    model = folder / "cannon.starlabel"
    run("train", "cannon", train, "--labels", ",".join(LABELS), "-o", model)
    return {
        "folder": folder,
        "train": train,
        "test": test,
        "model": model,
        "truth": sim.true_labels[N_TRAIN:],
        "spread": sim.true_labels.std(axis=0),
    }


def _scaled_rmse(labels: np.ndarray, survey: dict) -> np.ndarray:
    return np.sqrt(np.mean((labels - survey["truth"]) ** 2, axis=0)) / survey["spread"]


def test_version():
    assert run("--version").strip() == f"starlabel {__version__}"


def test_simulate_latent(tmp_path):
    run("simulate", "latent", "-o", tmp_path / "lux.npz", "--n-stars", 40, "--n-pixels", 16, "--n-labels", 2)
    data = read_dataset(tmp_path / "lux.npz")
    assert (data.n_stars, data.n_pixels, len(data.label_names)) == (40, 16, 2)
    assert np.all(np.isfinite(data.labels)) and np.all(data.ivar > 0)


def test_train_cannon_stream_gives_the_in_memory_model(survey, tmp_path):
    streamed = tmp_path / "streamed.starlabel"
    run("train", "cannon", survey["train"], "--labels", ",".join(LABELS), "-o", streamed, "--stream")
    a, b = load_model(survey["model"]), load_model(streamed)
    assert a.label_names == b.label_names == LABELS
    np.testing.assert_allclose(np.asarray(b.theta), np.asarray(a.theta), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(b.s2), np.asarray(a.s2), rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize(
    ("family", "options", "max_rmse"),
    [
        ("lux", ["--latent-size", "4", "--scatter", "scalar"], 0.35),
        ("nn", ["--hidden", "32", "--epochs", "150", "--seed", "1"], 0.5),
    ],
)
def test_train_lux_and_nn_then_infer(survey, tmp_path, family, options, max_rmse):
    model = tmp_path / f"{family}.starlabel"
    out = run("train", family, survey["train"], "--labels", ",".join(LABELS), "-o", model, *options)
    assert f"saved {family} model" in out
    assert load_model(model).label_names == LABELS
    run("infer", model, survey["test"], "-o", tmp_path / "labels.csv", "--no-progress")
    table = read_result(tmp_path / "labels.csv")
    assert table.n_stars == N_TEST and np.all(table.label_err > 0)
    # well below predicting the mean (scaled RMSE 1)
    assert np.all(_scaled_rmse(table.labels, survey) < max_rmse), _scaled_rmse(table.labels, survey)


# (options, extra columns docs/test_step.md promises); every case must get the labels to
# within 0.1 of their spread (the MAP is at ~0.02 here)
INFER_CASES = {
    "fisher": ([], {"n_iter"}),
    "laplace": (["--uncertainty", "laplace"], set()),
    "uncertainty-nuts": (["--uncertainty", "nuts"], {"rhat_teff", "ess_teff", "rhat_fe_h"}),
    # README's combination: every option of the grid posterior mean at once
    "mean-kde-student-auto": (
        ["--estimator", "mean", "--prior", "kde", "--likelihood", "student", "--temperature", "auto"]
        + ["--train", "TRAIN"],
        {"teff_best", "mode2_teff", "mode2_mass", "n_eff", "log_evidence"},
    ),
    "nuts-gaussian": (["--estimator", "nuts", "--prior", "gaussian"], {"rhat_max", "ess_min", "n_divergent"}),
    "rv-continuum": (["--fit-rv", "--fit-continuum", "1"], {"rv", "rv_err", "cont_r0_c0", "cont_r0_c1"}),
    "binary": (["--binary"], {"binary", "delta_chi2", "delta_bic", "binary_w", "teff_1", "teff_2"}),
}


@pytest.mark.parametrize("case", INFER_CASES)
def test_infer_option(survey, tmp_path, case):
    options, columns = INFER_CASES[case]
    options = [str(survey["train"]) if o == "TRAIN" else o for o in options]
    out = tmp_path / "labels.csv"
    printed = run("infer", survey["model"], survey["test"], "-o", out, "--no-progress", *options)
    if "auto" in options:  # the temperature and error calibration chosen on the training set are shown
        assert f"(cross-validated on {survey['train']})" in printed and "error calibration" in printed
    table = read_result(out)
    np.testing.assert_array_equal(table.ids, [f"star{i:04d}" for i in range(N_TRAIN, N_TRAIN + N_TEST)])
    assert table.label_names == LABELS  # not rv or binary_w, which have _err columns too
    written = Table.read(out, format="ascii.csv", comment="#")
    assert columns <= set(written.colnames), sorted(columns - set(written.colnames))
    labels, errors = table.labels, table.label_err
    assert np.all(np.isfinite(labels)) and np.all(errors > 0)
    assert np.all(_scaled_rmse(labels, survey) < 0.1), _scaled_rmse(labels, survey)
    if "rv" in columns and "binary" not in columns:
        # unshifted spectra: velocities consistent with 0, continuum at 1
        rv, rv_err = np.asarray(written["rv"]), np.asarray(written["rv_err"])
        assert np.all(rv_err > 0) and np.all(np.abs(rv) < 5 * rv_err + 0.05)
        assert np.all(np.abs(np.asarray(written["cont_r0_c0"]) - 1) < 0.01)
    if case == "binary":
        assert np.all(np.isfinite(np.asarray(written["delta_chi2"], dtype=float)))


def test_train_binary_calibration_refuses_a_streamed_training_set(survey, tmp_path):
    """The learned binary decision refits the training set in memory (the learning itself runs
    in test_teststep_binary.py)."""
    refused = CliRunner().invoke(app, ["train", "cannon", str(survey["train"]), "--labels", ",".join(LABELS),
                                       "-o", str(tmp_path / "m"), "--stream", "--binary-calibration"])  # fmt: skip
    assert refused.exit_code != 0 and "drop --stream" in refused.output, refused.output
    assert not (tmp_path / "m").exists()


def test_infer_with_an_unreadable_input_writes_the_rest_and_exits_1(survey, tmp_path):
    (tmp_path / "mixed").mkdir()
    shutil.copy(survey["test"], tmp_path / "mixed" / "good.npz")
    (tmp_path / "mixed" / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    result = CliRunner().invoke(app, ["infer", str(survey["model"]), str(tmp_path / "mixed"), "-o",
                                      str(tmp_path / "mixed.csv"), "--no-progress"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"wrote {N_TEST} rows" in result.output and "first error" in result.output
    assert "not a zip file" in result.output and "Exit" not in result.output
    assert read_result(tmp_path / "mixed.csv").n_stars == N_TEST


def test_simulate_noise_and_bad_pixel_options(tmp_path):
    run("simulate", "cannon", "-o", tmp_path / "s.npz", "--n-stars", 200, "--n-pixels", 50, "--snr", 50,
        "--bad-pixel-fraction", 0.1, "--seed", 2)  # fmt: skip
    data = read_dataset(tmp_path / "s.npz")
    assert np.mean(data.mask) == pytest.approx(0.1, abs=0.02)
    assert np.median(1 / np.sqrt(data.ivar[~data.mask])) == pytest.approx(1 / 50, rel=0.05)


def test_train_cannon_terms_censor_and_l1(survey, tmp_path):
    wavelength = read_dataset(survey["test"]).wavelength
    window = [float(wavelength[0]), float(wavelength[N_PIXELS // 2])]
    (tmp_path / "censor.json").write_text(json.dumps({"fe_h": [window]}))
    model = tmp_path / "censored.starlabel"
    run("train", "cannon", survey["train"], "--labels", ",".join(LABELS), "-o", model,
        "--terms", "teff + logg + fe_h + teff^2 + logg*teff", "--censor", tmp_path / "censor.json",
        "--l1", 1.0)  # fmt: skip
    fitted = load_model(model)
    assert len(fitted.term_names) == 6  # the constant and the five terms asked for
    allowed = np.asarray(fitted.allowed)
    inside = (wavelength >= window[0]) & (wavelength <= window[1])
    assert allowed[2, inside].all() and not allowed[2, ~inside].any() and allowed[:2].all()


def test_infer_run_options_and_overwrite(survey, tmp_path):
    out = tmp_path / "labels.csv"
    common = [survey["model"], survey["test"], "-o", out, "--no-progress"]
    run("infer", *common, "--no-memmap", "--no-compilation-cache")
    first = read_result(out)
    # Other options into the same run directory: refused without --overwrite …
    refused = CliRunner().invoke(app, ["infer", *map(str, common), "--uncertainty", "laplace"])
    assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
    # … and done from scratch with it: same optimum, new errors.
    assert f"{N_TEST} inferred now, 0 resumed" in run("infer", *common, "--uncertainty", "laplace",
                                                      "--overwrite", "--memmap", "--compilation-cache")  # fmt: skip
    second = read_result(out)
    assert np.all(np.abs(second.labels - first.labels) < 0.01 * first.label_err)
    assert not np.array_equal(second.label_err, first.label_err)


# Options no test can run here, and why.
UNTESTED_OPTIONS = {("prepare", "--allstar"): "the shared data hold no allStar catalogue"}


def test_every_cli_option_is_used_by_some_test():
    """Each option (any of its spellings) appears as a literal in the tests or the docs' command lines."""
    root = typer.main.get_command(app)
    sources = "\n".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py"))
    used = {f'"{word}"' for line in fenced_commands() for word in line.words}

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, (*path, name))
        yield path, command

    missing = []
    for path, command in walk(root, ()):
        for parameter in command.params:
            if parameter.param_type_name != "option":
                continue
            spellings = [f'"{o}"' for o in (*parameter.opts, *parameter.secondary_opts)]
            key = (" ".join(path), parameter.opts[0])
            if key not in UNTESTED_OPTIONS and not any(s in sources or s in used for s in spellings):
                missing.append(" ".join(["starlabel", *path, parameter.opts[0]]))
    assert not missing, f"options no test runs: {missing}"


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


def _screenshot(chromium: str, page: Path, folder: Path) -> np.ndarray:
    """RGB in [0, 1] of the page as headless Chromium draws it in a 1200 × 3000 window."""
    shot = folder / f"{page.stem}.png"
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={folder / 'chromium'}", f"--screenshot={shot}", "--window-size=1200,3000",
            page.as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return imread(shot)[..., :3]


def test_evaluate_and_report_render_in_a_browser(survey, tmp_path):
    out = tmp_path / "labels.parquet"
    run("infer", survey["model"], survey["test"], "-o", out, "--no-progress")
    printed = run(
        "evaluate", out, survey["test"], "--labels", ",".join(LABELS), "--json", tmp_path / "m.json",
        "--plots", tmp_path / "plots",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "m.json").read_text())["labels"]
    for label in LABELS:  # the printed table row: model, label, n, RMSE, …
        row = next(line.split() for line in printed.splitlines() if line.split()[1:2] == [label])
        assert int(row[2]) == N_TEST
        decimals = len(row[3].partition(".")[2])
        assert abs(float(row[3]) - metrics[label]["rmse"]) <= 0.5 * 10.0**-decimals + 1e-12  # as rounded
    assert metrics["teff"]["rmse"] < 0.1 * survey["spread"][0]
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"one_to_one.png", "residuals.png", "kiel.png"}
    html = tmp_path / "report.html"
    assert str(html) in run("report", f"{out}.run", "--truth", survey["test"], "-o", html)
    page = html.read_text(encoding="utf-8")
    assert "Comparison with reference labels" in page and f"{N_TEST} stars" in page
    assert page.count("data:image/png;base64,") >= 7

    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH: apt-get install chromium to check the report renders")
    # The same page with every plot removed is the baseline: the plots must add ink.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", page), encoding="utf-8")
    image, baseline = _screenshot(chromium, html, tmp_path), _screenshot(chromium, bare, tmp_path)
    assert image.shape == baseline.shape == (3000, 1200, 3)
    ink, bare_ink = (np.mean(x.min(axis=2) < 0.8) for x in (image, baseline))
    colour = np.sum(image.max(axis=2) - image.min(axis=2) > 0.25)  # text and tables are grey
    assert ink > 1.5 * bare_ink + 0.01 and colour > 2_000, (ink, bare_ink, colour)  # plots add half again
