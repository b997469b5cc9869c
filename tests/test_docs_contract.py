"""What README.md and docs/*.md show a user, the code accepts and runs.

Every ``starlabel …`` line in a fenced block and every ``starlabel …`` or ``--option``
in inline code names a command and options the CLI parser knows (checked on click's
command tree, without running anything). The fenced command lines then run, in the
order the docs show them, on small data: the harness only swaps paths (``../shared/data``
→ ``shared_data_dir()``, absolute paths → the test's folder) and sizes (``--n-stars``,
``--n-pixels``, ``--epochs``, ``--num-workers``). Two kinds of line run elsewhere, from
this same parser: ``starlabel demo`` in tests/test_demo.py and ``--engine ray`` lines in
tests/test_pipeline_ray.py. Every Python block of README.md runs too.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from starlabel.cli import app
from starlabel.data import read_dataset, read_result
from starlabel.models import load_model

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
ROOT = typer.main.get_command(app)

# Small stand-ins for sizes the docs show at survey scale.
SIZES = {"--n-stars": "200", "--n-pixels": "50", "--epochs": "20", "--num-workers": "1"}
# Options dropped because the test supplies their effect itself: a local Ray instance
# stands in for a cluster started with `ray start`.
DROPPED = {"--address"}
_FENCE = re.compile(r"^[ \t]*```([\w-]*)[ \t]*\n(.*?)^[ \t]*```", re.M | re.S)
_INLINE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Documented:
    """One command line as a doc shows it."""

    source: str  # file name relative to the repository
    text: str  # the line as written
    words: tuple[str, ...]  # the words after `starlabel` (empty words for a bare option)

    @property
    def runs_elsewhere(self) -> str | None:
        if self.words[:1] == ("demo",):
            return "tests/test_demo.py"
        if "--engine" in self.words and self.words[self.words.index("--engine") + 1] == "ray":
            return "tests/test_pipeline_ray.py"
        # The Payne's binary path needs > 126 pixels for its velocity search, more than
        # the sizes below allow; that test runs these two command lines on 200 pixels.
        if self.words[:2] == ("train", "payne") and "--binary-calibration" in self.words:
            return "tests/test_payne.py"
        if self.words[:2] == ("infer", "payne.starlabel") and "--binary" in self.words:
            return "tests/test_payne.py"
        return None


def _fenced_lines(text: str) -> Iterator[str]:
    for match in _FENCE.finditer(text):
        if match.group(1) not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in match.group(2).replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                yield part.strip()


def fenced_commands() -> list[Documented]:
    """Every `starlabel` command line of a fenced shell block, in document order."""
    found = []
    for doc in DOCS:
        for line in _fenced_lines(doc.read_text(encoding="utf-8")):
            words = shlex.split(line, comments=True)
            if words and Path(words[0]).name == "starlabel":
                found.append(Documented(doc.name, line, tuple(words[1:])))
    return found


def inline_commands() -> list[Documented]:
    """`starlabel …` spans and bare `--option …` spans of inline code, outside fences."""
    found = []
    for doc in DOCS:
        text = _FENCE.sub("", doc.read_text(encoding="utf-8"))
        for match in _INLINE.finditer(text):
            span = " ".join(match.group(1).replace("\\|", "|").split())
            words = tuple(w.strip("[]") for w in span.split())
            if words[0] == "starlabel":
                found.append(Documented(doc.name, span, words[1:]))
            elif words[0].startswith("--"):
                found.append(Documented(doc.name, span, ("", *words)))
    return found


def _is_group(command: Any) -> bool:
    # Duck-typed: typer ≥ 0.2x ships its own copy of click, older ones use click itself.
    return hasattr(command, "commands")


def _resolve(words: tuple[str, ...]) -> list[tuple[Any, str, tuple[str, ...]]]:
    """(command, its path, remaining words) for each command the words name; `a|b` names both."""
    resolved = [(ROOT, "starlabel", words)]
    done = []
    while resolved:
        command, path, rest = resolved.pop()
        if _is_group(command) and rest and not rest[0].startswith("-"):
            names = rest[0].split("|")
            unknown = [n for n in names if n not in command.commands]
            assert not unknown, (
                f"`{path} {rest[0]}`: no such command {unknown}; it has {sorted(command.commands)}"
            )
            resolved += [(command.commands[n], f"{path} {n}", rest[1:]) for n in names]
        else:
            done.append((command, path, rest))
    return done


def _options(command: Any) -> dict[str, Any]:
    names = {
        name: p
        for p in command.params
        if p.param_type_name == "option"
        for name in (*p.opts, *p.secondary_opts)
    }
    if command.add_help_option:
        names["--help"] = None
    return names


def _all_commands(command: Any = ROOT) -> Iterator[Any]:
    yield command
    if _is_group(command):
        for sub in command.commands.values():
            yield from _all_commands(sub)


def _is_placeholder(value: str) -> bool:
    return value.isupper() or "…" in value or value in ("T",)


def _check_option(command: Any, path: str, words: tuple[str, ...], i: int, where: str) -> None:
    """The option exists; each concrete value shown (`a|b` = either) parses through click."""
    options = _options(command)
    name, _, value = words[i].partition("=")
    assert name in options, f"{where} uses {name}, which `{path}` does not accept (it has {sorted(options)})"
    parameter = options[name]
    if parameter is None or parameter.is_flag:
        return
    if not value and i + 1 < len(words) and not words[i + 1].startswith("-"):
        value = words[i + 1]
    for choice in value.split("|") if value else ():
        if _is_placeholder(choice):
            continue
        try:
            command.make_context(path, [name, choice])
        except Exception as error:  # click's UsageError (typer may ship its own click)
            # Parameters given on the command line are processed first, so an error about
            # another parameter (a required argument left out here) means ours parsed.
            if getattr(getattr(error, "param", None), "name", None) == parameter.name:
                raise AssertionError(f"{where}: {name} {choice!r} is refused: {error}") from None


def check_against_parser(line: Documented) -> None:
    """Fail unless the CLI parser knows the line's command(s), options and choices."""
    where = f"{line.source}: `{line.text}`"
    if line.words[:1] == ("",):  # a bare option: some command must take it
        for command in _all_commands():
            if line.words[1].partition("=")[0] in _options(command):
                _check_option(command, command.name, line.words[1:], 0, where)
                return
        raise AssertionError(f"{where}: no starlabel command accepts {line.words[1]}")
    for command, path, rest in _resolve(line.words):
        if _is_group(command) and rest and set(rest) <= {"--help", "--version"}:
            continue  # `starlabel --help`, `starlabel train --help`
        assert not _is_group(command), f"{where}: `{path}` is a group, not a command"
        for i, word in enumerate(rest):
            if word.startswith("-") and len(word) > 1:
                _check_option(command, path, rest, i, where)


def localise(words: tuple[str, ...], workdir: Path, shared: Path) -> list[str]:
    """The docs' words with shared-data and absolute paths and sizes made local and small."""
    out: list[str] = []
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word in DROPPED:
            skip = True
            continue
        if i and words[i - 1] in SIZES:
            word = SIZES[words[i - 1]]
        elif word.startswith("../shared/data/"):
            word = str(shared / word.removeprefix("../shared/data/"))
        elif word.startswith("/"):
            local = workdir / word.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            word = str(local)
        out.append(word)
    return out


def run_cli(argv: list[str]) -> str:
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, f"starlabel {' '.join(argv)} exited {result.exit_code}:\n{result.output}"
    return result.output


# ----------------------------------------------------------------------------- tests
def test_docs_show_commands_of_every_kind():
    # A parser that found nothing would pass everything below.
    fenced, inline = fenced_commands(), inline_commands()
    assert len(fenced) >= 6 and len(inline) >= 20
    shown = {line.words[0] for line in fenced + inline if line.words[0]}
    assert {"simulate", "train", "infer", "evaluate", "demo", "report", "members"} <= shown


@pytest.mark.parametrize("line", fenced_commands() + inline_commands(), ids=lambda d: f"{d.source}:{d.text}")
def test_documented_command_is_known_to_the_parser(line):
    check_against_parser(line)


def test_parser_check_fails_on_a_renamed_option_or_command():
    good = Documented("x.md", "", ("infer", "M", "D", "-o", "o.csv", "--uncertainty", "laplace|nuts"))
    check_against_parser(good)
    for words in (
        ("infer", "M", "D", "--uncertainty", "bootstrap"),  # unknown choice
        ("infer", "M", "D", "--fit-velocity"),  # unknown option
        ("train", "lux|forest", "D"),  # unknown subcommand
        ("train",),  # a group is not a command
        ("", "--no-such-flag"),
    ):
        with pytest.raises(AssertionError):
            check_against_parser(Documented("x.md", " ".join(words), words))


def test_documented_command_lines_run_in_order(tmp_path, monkeypatch, shared_data):
    """README's quick start, then every other fenced line, as one chain of files."""
    monkeypatch.chdir(tmp_path)
    lines = [line for line in fenced_commands() if line.runs_elsewhere is None]
    assert [line.words[0] for line in lines[:4]] == ["simulate", "train", "infer", "evaluate"]
    outputs = {}
    for line in lines:
        outputs[line.text] = run_cli(localise(line.words, tmp_path, shared_data))

    # simulate: the size substitutions took effect
    train = read_dataset(tmp_path / "train.h5")
    assert (train.n_stars, train.n_pixels) == (200, 50)
    # train + infer on the 500 real giants: every star, labels with errors, near ASPCAP
    table = read_result(tmp_path / "labels.csv")
    giants = np.load(shared_data / "apogee" / "giants_100px.npz")
    assert table.n_stars == 500 and table.label_names == ("teff", "logg", "m_h")
    np.testing.assert_array_equal(table.ids.astype(str), np.arange(500).astype(str))  # row numbers
    assert np.all(table.label_err > 0)
    truth = np.stack([giants[n] for n in table.label_names], axis=1)
    rmse = np.sqrt(np.mean((table.labels - truth) ** 2, axis=0))
    # Training-set residuals of a quadratic Cannon on 100 pixels: ~225 K / 0.44 / 0.19.
    assert np.all(rmse < [240.0, 0.5, 0.21]), rmse
    # evaluate printed the same RMSE it measured and wrote its plots
    evaluate = next(text for line, text in outputs.items() if line.startswith("starlabel evaluate"))
    assert f"{rmse[0]:.1f}" in evaluate
    assert {"one_to_one.png", "residuals.png", "kiel.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}
    # the streamed Cannon (docs/cannon.md) trained on the simulated file, labels from the file
    streamed = load_model(tmp_path / "giants.starlabel")
    assert streamed.kind == "cannon" and streamed.label_names == ("teff", "logg", "fe_h")


def test_readme_python_block_runs(tmp_path, monkeypatch, shared_data):
    blocks = [m.group(2) for m in _FENCE.finditer((REPO / "README.md").read_text()) if m.group(1) == "python"]
    assert blocks, "README.md shows no Python block"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "giants_100px.npz").symlink_to(shared_data / "apogee" / "giants_100px.npz")
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    table = read_result(tmp_path / "labels.fits")
    assert table.n_stars == 100 and table.label_names == ("teff", "logg", "m_h")
    assert (tmp_path / "giants.starlabel").exists()
