"""pyproject.toml says what requirements*.txt say, and ships every file of the shipped runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines(name: str) -> list[str]:
    """The pins of a requirements file, comments and ``-r`` includes left out, spaces removed."""
    lines = []
    for line in (PROJECT_ROOT / name).read_text(encoding="utf-8").splitlines():
        line = re.sub(r"\s+#.*$|^#.*$", "", line).strip()
        if line and not line.startswith("-"):
            lines.append(line.replace(" ", ""))
    return lines


def test_dependencies_are_requirements_txt():
    assert PYPROJECT["project"]["dependencies"] == requirement_lines("requirements.txt")


def test_test_extra_is_requirements_test_txt():
    assert "-r requirements.txt" in (PROJECT_ROOT / "requirements-test.txt").read_text(encoding="utf-8")
    assert PYPROJECT["project"]["optional-dependencies"]["test"] == requirement_lines("requirements-test.txt")


def test_package_data_ships_every_file_of_the_shipped_runs():
    package = PROJECT_ROOT / "mildnet" / "pretrained"
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["mildnet.pretrained"]
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    # Every data file but the embeddings cache `embed --run` may leave in a shipped run (not shipped: .gitignore).
    files = {p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
             and "embeddings" not in p.relative_to(package).parts}
    assert files and files == shipped, sorted(str(p.relative_to(package)) for p in files ^ shipped)
    assert {p.parent.name for p in shipped if p.name == "best.keras"} >= {"real", "sample"}


def test_the_console_script_is_the_cli():
    assert PYPROJECT["project"]["scripts"] == {"mildnet": "mildnet.cli:main"}
    main = (PROJECT_ROOT / "mildnet" / "__main__.py").read_text(encoding="utf-8")
    assert "from mildnet.cli import main" in main
