"""The habits that keep the code base as it is: ruff and mypy (untyped definitions refused in model/) are part
of the test suite, so `.ci/run` fails on a lint or type error like on any other test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.skipif(shutil.which("ruff") is None and _run("ruff", "--version").returncode != 0,
                    reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_is_clean() -> None:
    r = _run("ruff", "check", "src", "tests")
    assert r.returncode == 0, r.stdout[-3000:]


def test_mypy_is_clean() -> None:
    if _run("mypy", "--version").returncode != 0:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    r = _run("mypy", "src/thpsim")
    assert r.returncode == 0, r.stdout[-3000:]
