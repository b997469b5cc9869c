"""The files a user or a packager looks for next to the code agree with the package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import starlabel

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_one_the_metadata_declares() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_names_the_current_version() -> None:
    text = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", text, re.M)
    match = re.search(r"^version: (\S+)$", text, re.M)
    assert match is not None, "CITATION.cff has no version line"
    assert match.group(1) == starlabel.__version__


def test_changelog_has_unreleased_and_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[0] == "Unreleased"
    assert starlabel.__version__ in headings
