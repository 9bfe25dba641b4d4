"""The code keeps the project's style and types: ruff (lint and format) and mypy, with the
settings in pyproject.toml, as the pre-commit hooks run them."""

import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, require


def tool(name: str) -> list[str]:
    found = shutil.which(name, path=str(REPO / ".venv" / "bin")) or shutil.which(name)
    require(found is not None, f"{name} is not installed (pip install -e '.[test]')")
    return [found]  # type: ignore[list-item]


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["ruff", "format", "--check", "."]])
def test_ruff(command):
    result = subprocess.run(
        tool(command[0]) + command[1:], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True
    )
    require("No module named mypy" not in result.stderr, "mypy is not installed")
    assert result.returncode == 0, result.stdout + result.stderr
