"""ruff's lint and format checks (pyproject.toml) over the whole repository, as part of the test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("check", [["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]])
def test_ruff(check):
    r = subprocess.run([sys.executable, "-m", "ruff", *check], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"ruff {' '.join(check)} found:\n{r.stdout}{r.stderr}"
