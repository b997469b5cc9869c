"""Every tutorial in docs/tutorials runs end to end in its quick mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("*.py"))


def test_tutorials_exist():
    assert len(TUTORIALS) >= 4


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_quick_mode(script, tmp_path, shared_data):
    env = dict(os.environ, MPLBACKEND="Agg", STARLABEL_SHARED_DATA=str(shared_data))
    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert any(tmp_path.iterdir()), "the tutorial wrote nothing to --out"
