"""Chunking, row reading, resume, manifest refusal and error isolation of the pipeline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from starlabel.data import SpectralDataset, read_dataset, read_result, simulate_cannon, write_dataset
from starlabel.models import load_model
from starlabel.pipeline import (
    ChunkSpec,
    InputFile,
    LocalEngine,
    RunMismatchError,
    Segment,
    WorkerSpec,
    describe_inputs,
    open_rows,
    plan_chunks,
    resolve_engine,
    resolve_inputs,
    run_dir_for,
    run_inference,
)
from test_pipeline_support import LABELS, make_survey


@pytest.fixture
def survey(tmp_path: Path) -> tuple[Path, list[Path]]:
    return make_survey(tmp_path, n_files=3, n_stars=50, n_pixels=24)


def _expected(model_path: Path, files: list[Path]):
    data = SpectralDataset.concatenate([read_dataset(f) for f in files])
    return load_model(model_path).infer(data)


@pytest.mark.parametrize(("sizes", "chunk_size"), [((10, 0, 7), 3), ((5,), 5), ((5, 6), 100), ((1, 1), 1)])
def test_plan_covers_every_row_exactly_once(sizes: tuple[int, ...], chunk_size: int) -> None:
    inputs = [InputFile(f"/f{i}.npz", 0, 0, "", n, 4) for i, n in enumerate(sizes)]
    inputs.insert(1, InputFile("/bad.npz", 0, 0, "", -1, -1, "ValueError: corrupt"))
    chunks = plan_chunks(inputs, chunk_size)
    segments = [segment for chunk in chunks for segment in chunk.segments]
    for i, item in enumerate(inputs):
        rows = [np.arange(s.start, s.stop) for s in segments if s.file_index == i]
        np.testing.assert_array_equal(
            np.concatenate(rows or [np.array([], int)]), np.arange(max(item.n_stars, 0))
        )
    # every chunk is full except the last, and spans files where it must
    assert [c.n_stars for c in chunks[:-1]] == [chunk_size] * (len(chunks) - 1)
    assert 0 < chunks[-1].n_stars <= chunk_size and sum(c.n_stars for c in chunks) == sum(sizes)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len({c.name for c in chunks}) == len(chunks)
    assert all(s.n_stars > 0 for s in segments)


def test_plan_packs_small_files_into_full_chunks() -> None:
    inputs = [InputFile(f"/star{i}.npz", 0, 0, "", 1, 4) for i in range(10)]
    chunks = plan_chunks(inputs, 4)
    assert [len(c.segments) for c in chunks] == [4, 4, 2]
    assert [s.path for s in chunks[1].segments] == ["/star4.npz", "/star5.npz", "/star6.npz", "/star7.npz"]


def test_plan_rejects_bad_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks([], 0)


@pytest.mark.parametrize("suffix", [".npz", ".h5", "compressed.npz"])
def test_row_reader_matches_full_read(tmp_path: Path, suffix: str) -> None:
    data = simulate_cannon(40, 16, 3, seed=3, bad_pixel_fraction=0.1).dataset
    path = write_dataset(data, tmp_path / ("data" + suffix.removeprefix("compressed")))
    if suffix.startswith("compressed"):
        arrays = dict(np.load(path))
        path = tmp_path / "compressed.npz"
        np.savez_compressed(path, **arrays)
    full = read_dataset(path)
    with open_rows(path) as rows:
        assert (rows.n_stars, rows.n_pixels) == (40, 16)
        for start, stop in [(0, 7), (7, 33), (33, 40), (38, 99)]:
            part = rows.read(start, stop, labels=("logg", "missing", "teff"))
            np.testing.assert_array_equal(part.flux, full.flux[start:stop])
            np.testing.assert_array_equal(part.ivar, full.ivar[start:stop])
            np.testing.assert_array_equal(part.mask, full.mask[start:stop])
            np.testing.assert_array_equal(part.ids, full.ids[start:stop])
            np.testing.assert_array_equal(part.wavelength, full.wavelength)
            assert part.label_names == ("logg", "teff")
            np.testing.assert_array_equal(part.labels, full.labels[start:stop][:, [1, 0]])


def test_row_reader_names_the_problem(tmp_path: Path) -> None:
    np.savez(tmp_path / "noflux.npz", ivar=np.ones((2, 3)))
    with pytest.raises(KeyError, match="no 'flux' array"):
        open_rows(tmp_path / "noflux.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        open_rows(tmp_path / "junk.npz")


def test_resolve_inputs_files_globs_folders(survey: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, files = survey
    folder = files[0].parent
    assert resolve_inputs([str(folder)]) == files
    assert resolve_inputs([str(folder / "part0[12].npz"), str(files[0]), str(files[1])]) == [
        files[1],
        files[2],
        files[0],
    ]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_inputs([str(tmp_path / "nope.npz")])
    with pytest.raises(FileNotFoundError, match="matches no dataset files"):
        resolve_inputs([str(tmp_path / "*.h5")])
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="suffix"):
        resolve_inputs([str(tmp_path / "x.txt")])
    with pytest.raises(ValueError, match="no inputs"):
        resolve_inputs([])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".h5", ".fits"])
def test_run_matches_direct_inference(survey: tuple[Path, list[Path]], tmp_path: Path, suffix: str) -> None:
    model_path, files = survey
    output = tmp_path / f"labels{suffix}"
    summary = run_inference(model_path, [str(files[0].parent)], output, chunk_size=16, progress=False)
    assert summary.complete and summary.n_written == summary.n_spectra == 150
    assert summary.n_processed == 150 and summary.n_errors == 0
    got, want = read_result(output), _expected(model_path, files)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.labels, want.labels, rtol=1e-12)
    np.testing.assert_allclose(got.chi2, want.chi2, rtol=1e-12)
    np.testing.assert_array_equal(got.flags, want.flags)
    np.testing.assert_array_equal(got.extra["n_good"], want.extra["n_good"])
    run_dir = run_dir_for(output)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [Path(item["path"]) for item in manifest["inputs"]] == files
    assert all(len(item["sha256"]) == 64 for item in manifest["inputs"])
    assert manifest["options"]["chunk_size"] == 16
    assert manifest["options"]["chunk_plan"] == "packed"
    # 150 spectra in chunks of 16, across the three 50-star files
    assert len(list((run_dir / "parts").glob("*.npz"))) == 10


def test_progress_bar_and_reference_labels(survey: tuple[Path, list[Path]], tmp_path: Path, capsys) -> None:
    model_path, files = survey
    output = tmp_path / "labels.parquet"
    run_inference(model_path, files[:2], output, chunk_size=20, labels_from_input=True, progress=True)
    assert "spectra" in capsys.readouterr().err
    got = read_result(output)
    truth = SpectralDataset.concatenate([read_dataset(f) for f in files[:2]])
    for k, name in enumerate(LABELS):
        np.testing.assert_array_equal(got.extra[f"ref_{name}"], truth.labels[:, k])


def test_mapped_and_copied_reads_give_identical_results(
    survey: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    model_path, files = survey
    mapped = run_inference(model_path, files, tmp_path / "mapped.parquet", chunk_size=16, progress=False)
    copied = run_inference(
        model_path, files, tmp_path / "copied.parquet", chunk_size=16, progress=False, memmap=False
    )
    assert mapped.n_written == copied.n_written == 150
    a, b = read_result(mapped.output), read_result(copied.output)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.cov, b.cov)
    np.testing.assert_array_equal(a.flags, b.flags)
    # resuming with the other setting is allowed: it does not change results
    again = run_inference(
        model_path, files, tmp_path / "mapped.parquet", chunk_size=16, progress=False, memmap=False
    )
    assert again.n_resumed == 150 and again.n_processed == 0


def test_restart_resumes_and_refuses_changes(survey: tuple[Path, list[Path]], tmp_path: Path) -> None:
    model_path, files = survey
    output = tmp_path / "labels.parquet"
    first = run_inference(model_path, files, output, chunk_size=16, progress=False)
    # Drop two parts as if the run had been killed before finishing them.
    parts = sorted((run_dir_for(output) / "parts").glob("*.npz"))
    for part in parts[3:5]:
        part.unlink()
    again = run_inference(model_path, files, output, chunk_size=16, progress=False)
    # parts[3] holds rows 48-50 of file 0 and 0-14 of file 1, parts[4] rows 14-30 of file 1.
    assert again.n_processed == 16 + 16
    assert again.n_resumed + again.n_processed == 150 and again.n_written == 150
    assert np.array_equal(read_result(output).ids, _expected(model_path, files).ids)
    assert first.n_written == again.n_written

    with pytest.raises(RunMismatchError, match="'chunk_size' differs"):
        run_inference(model_path, files, output, chunk_size=8, progress=False)
    with pytest.raises(RunMismatchError, match="input list differs"):
        run_inference(model_path, files[:2], output, chunk_size=16, progress=False)
    with pytest.raises(RunMismatchError, match="infer_options"):
        run_inference(model_path, files, output, chunk_size=16, infer_options={"delay": 0.0}, progress=False)
    other_model, _ = make_survey(tmp_path / "other", n_files=1, n_pixels=24, seed=7)
    with pytest.raises(RunMismatchError, match="model differs"):
        run_inference(other_model, files, output, chunk_size=16, progress=False)
    data = read_dataset(files[1])
    write_dataset(data.replace(flux=data.flux + 0.01), files[1])
    with pytest.raises(RunMismatchError, match=r"input file\(s\) changed"):
        run_inference(model_path, files, output, chunk_size=16, progress=False)
    fresh = run_inference(model_path, files, output, chunk_size=8, overwrite=True, progress=False)
    assert fresh.n_resumed == 0 and fresh.n_processed == 150 and fresh.complete


def test_bad_file_and_bad_chunk_are_reported_and_run_continues(
    survey: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    model_path, files = survey
    corrupt = files[0].parent / "part99.npz"
    corrupt.write_bytes(b"PK\x03\x04 truncated archive")
    output = tmp_path / "labels.csv"
    summary = run_inference(
        model_path,
        [str(files[0].parent)],
        output,
        chunk_size=10,
        infer_options={"fail_on_id": "file1-star00023"},
        progress=False,
    )
    assert not summary.complete
    assert summary.n_bad_inputs == 1 and summary.n_failed == 10 and summary.n_errors == 2
    assert summary.n_written == 140
    with open(summary.errors_report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["scope"], Path(r["input"]).name) for r in rows] == [
        ("file", "part99.npz"),
        ("chunk", "part01.npz"),
    ]
    assert rows[1]["rows"] == "20-30" and "refusing chunk with star file1-star00023" in rows[1]["error"]
    ids = read_result(output).ids
    assert len(ids) == len(set(ids)) == 140
    assert not any(f"file1-star{j:05d}" in set(ids) for j in range(20, 30))


def test_argument_errors_are_clear(survey: tuple[Path, list[Path]], tmp_path: Path) -> None:
    model_path, files = survey
    with pytest.raises(ValueError, match="suffix '.txt'"):
        run_inference(model_path, files, tmp_path / "out.txt", progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        run_inference(model_path, files, tmp_path / "out.csv", chunk_size=0, progress=False)
    with pytest.raises(FileNotFoundError, match="model file"):
        run_inference(tmp_path / "missing.starlabel", files, tmp_path / "out.csv", progress=False)
    with pytest.raises(ValueError, match="JSON"):
        run_inference(model_path, files, tmp_path / "out.csv", infer_options={"x": object()}, progress=False)
    with pytest.raises(ValueError, match="only apply to engine='ray'"):
        resolve_engine("local", num_workers=2)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_engine("spark")  # type: ignore[arg-type]
    assert resolve_engine(LocalEngine(prefetch=0)) == LocalEngine(prefetch=0)


def test_chunk_spec_names_are_stable() -> None:
    chunk = ChunkSpec(12, (Segment(3, "/x.npz", 0, 5), Segment(4, "/y.npz", 0, 2)))
    assert chunk.name == "c0000012" and chunk.n_stars == 7
    with pytest.raises(ValueError, match="at least one segment"):
        ChunkSpec(0, ())


def test_unreadable_rows_are_reported_and_their_chunk_neighbours_kept(
    survey: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    model_path, files = survey
    # File 1 passes planning (its header is fine) but fails validation when its rows
    # are read; its chunks also hold rows of files 0 and 2.
    data = read_dataset(files[1])
    ivar = data.ivar.copy()
    ivar[7, 3] = -1.0
    bad = tmp_path / "bad" / "part01.npz"
    bad.parent.mkdir()
    write_dataset(
        SpectralDataset(data.flux, ivar=np.abs(ivar), wavelength=data.wavelength, ids=data.ids), bad
    )
    with np.load(bad) as archive:
        arrays = dict(archive)
    arrays["ivar"] = ivar
    np.savez(bad, **arrays)
    inputs = [files[0], bad, files[2]]
    output = tmp_path / "labels.csv"
    summary = run_inference(model_path, inputs, output, chunk_size=16, progress=False)
    # chunk 3 holds rows 48-50 of file 0 and rows 0-14 of file 1; only the latter fail
    assert summary.n_written == 136 and summary.n_failed == 14 and not summary.complete
    with open(summary.errors_report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["scope"], Path(r["input"]).name, r["chunk"], r["rows"], r["n_spectra"]) for r in rows] == [
        ("chunk", "part01.npz", "c0000003", "0-14", "14")
    ]
    assert "negative" in rows[0]["error"]
    got = read_result(output)
    kept = SpectralDataset.concatenate([read_dataset(files[0]), data[14:], read_dataset(files[2])])
    want = load_model(model_path).infer(kept)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.labels, want.labels, rtol=1e-12)
    # A chunk with rows left out runs again on restart (the error may have been
    # transient); here it fails the same way and the report still lists the rows.
    again = run_inference(model_path, inputs, output, chunk_size=16, progress=False)
    assert again.n_processed == 2 and again.n_resumed == 134 and again.n_failed == 14
    assert again.n_written == 136


def test_transient_read_failure_heals_on_restart(
    survey: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlabel.pipeline._worker import ChunkProcessor

    model_path, files = survey
    output = tmp_path / "labels.parquet"
    original = ChunkProcessor.read_segment

    def flaky(self: ChunkProcessor, segment: Segment):
        if segment.file_index == 1 and segment.start == 0:
            raise OSError("Too many open files")
        return original(self, segment)

    monkeypatch.setattr(ChunkProcessor, "read_segment", flaky)
    first = run_inference(model_path, files, output, chunk_size=16, progress=False)
    assert first.n_failed == 14 and first.n_written == 136 and "Too many open files" in first.first_error
    monkeypatch.setattr(ChunkProcessor, "read_segment", original)
    healed = run_inference(model_path, files, output, chunk_size=16, progress=False)
    assert healed.complete and healed.n_failed == 0 and healed.n_errors == 0
    assert healed.n_processed == 16 and healed.n_resumed == 134
    got, want = read_result(output), _expected(model_path, files)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.labels, want.labels, rtol=1e-12)


def test_small_files_without_ids_and_mixed_grids_share_chunks(tmp_path: Path) -> None:
    model_path, files = make_survey(tmp_path, n_files=1, n_stars=6, n_pixels=24)
    data = read_dataset(files[0])
    folder = tmp_path / "stars"
    folder.mkdir()
    singles = []
    for j in range(6):
        # every file numbers its one star "0"; the last three have no wavelength grid
        star = SpectralDataset(
            data.flux[j : j + 1], ivar=data.ivar[j : j + 1], wavelength=data.wavelength if j < 3 else None
        )
        singles.append(write_dataset(star, folder / f"star{j}.npz"))
    summary = run_inference(model_path, singles, tmp_path / "labels.csv", chunk_size=4, progress=False)
    assert summary.complete and summary.n_written == 6
    got = read_result(tmp_path / "labels.csv")
    assert got.ids.tolist() == ["0"] * 6
    np.testing.assert_allclose(got.labels, load_model(model_path).infer(data).labels, rtol=1e-12)

    rows = WorkerSpec(str(model_path)).build().read(plan_chunks(describe_inputs(singles), 4)[0])
    # one batch per pixel grid: stars 0-2 with wavelengths, star 3 without
    assert [len(b.segments) for b in rows.batches] == [3, 1] and not rows.skipped
    assert [b.data.ids.tolist() for b in rows.batches] == [["0", "1", "2"], ["0"]]  # positions
    assert [b.ids.tolist() for b in rows.batches] == [["0", "0", "0"], ["0"]]  # the stars' own


def test_local_engine_never_imports_ray(survey: tuple[Path, list[Path]], tmp_path: Path) -> None:
    import subprocess
    import sys

    from test_pipeline_support import TESTS_DIR

    model_path, files = survey
    script = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r})\n"
        "from test_pipeline_support import register; register()\n"
        "from starlabel.pipeline import run_inference\n"
        f"s = run_inference({str(model_path)!r}, [{str(files[0])!r}], {str(tmp_path / 'o.csv')!r}, progress=False)\n"
        "assert s.complete and 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_links_are_hashed_once_and_symlinks_deduplicated(
    survey: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    import os

    from starlabel.pipeline import describe_inputs

    _, files = survey
    hard, soft = tmp_path / "hard.npz", tmp_path / "soft.npz"
    os.link(files[0], hard)
    soft.symlink_to(files[0])
    # A symbolic link names the same file again: listing it twice would duplicate spectra.
    assert resolve_inputs([str(files[0]), str(soft)]) == [files[0]]
    described = describe_inputs([files[0], hard, files[1]])
    assert described[0].sha256 == described[1].sha256 != described[2].sha256
    assert described[1].path == str(hard) and described[1].n_stars == 50
