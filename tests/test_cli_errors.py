"""The CLI's exit codes: 2 and one line for user errors, 3 and a logged traceback for bugs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import starlabel.data
from starlabel.cli import app
from starlabel.data import simulate_cannon, write_dataset

runner = CliRunner()


@pytest.fixture
def small_data(tmp_path):
    return write_dataset(simulate_cannon(30, 12, 2, seed=1).dataset, tmp_path / "train.npz")


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--labels", "teff,nope"], "'nope'"),  # KeyError: an unknown label
        (["--labels", "teff", "--stream", "--l1", "0.5"], "l1 > 0"),  # UnsupportedOptionError
    ],
)
def test_user_error_is_one_line_and_exit_code_2(small_data, tmp_path, extra, culprit):
    result = runner.invoke(app, ["train", "cannon", str(small_data), *extra, "-o", str(tmp_path / "m.sl")])
    assert result.exit_code == 2, result.output
    last = result.stderr.splitlines()[-1]  # after the progress notes, if any
    assert last.startswith("error: ") and culprit in last
    assert sum(line.startswith("error: ") for line in result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.sl").exists()


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), TypeError("unhashable type: 'list'")])
def test_internal_error_exits_3_and_logs_the_traceback(tmp_path, monkeypatch, bug):
    monkeypatch.setenv("STARLABEL_CACHE_DIR", str(tmp_path / "cache"))

    def broken_writer(dataset, path):
        raise bug

    monkeypatch.setattr(starlabel.data, "write_dataset", broken_writer)
    result = runner.invoke(app, ["simulate", "cannon", "-o", str(tmp_path / "s.npz"), "--n-stars", "5"])

    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"internal error (a bug in starlabel, not in your input): {bug!r}"[:58])
    assert f"{type(bug).__name__}: {bug}" in result.stderr
    match = re.search(r"traceback written to (\S+\.log)", result.stderr)
    assert match, result.stderr
    log = Path(match.group(1))
    assert log.parent == tmp_path / "cache" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "in broken_writer" in text and f"{type(bug).__name__}: {bug}" in text
    assert "command 'simulate'" in text
    assert len(result.stderr.splitlines()) == 3  # short: message, log path, what to do


def test_out_of_memory_is_one_line_and_exit_code_4(tmp_path):
    # A real allocation failure: 10^11 stars cannot be simulated on any test machine.
    out = tmp_path / "s.npz"
    result = runner.invoke(app, ["simulate", "cannon", "-o", str(out), "--n-stars", str(10**11)])
    assert result.exit_code == 4, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory in `simulate`")
    assert "Unable to allocate" in lines[0] and "--chunk-size" in lines[0]
    assert "Traceback" not in result.output and not out.exists()
