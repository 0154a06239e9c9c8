"""pyproject.toml says what requirements*.txt say, and ships every file of the shipped runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_the_installed_wheel_works_from_any_folder_with_its_own_data_home(tmp_path):
    """Issue 19 (4): installed from its wheel, `mildnet data list` failed (no data_manifest.csv in site-packages)
    and the app would write runs/ into the package. The wheel ships the registry (share/mildnet) and everything
    it makes goes to the data home: .mildnet/ in the working folder."""
    import shutil

    import numpy as np
    from PIL import Image

    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, never in the checkout.
    anywhere = shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", "embeddings", ".hypothesis", ".ruff_cache",
                                      ".pytest_cache")
    top = {"build", "dist", "data", "runs", ".mildnet"}  # the checkout's own outputs, not the package's data/

    def ignore(folder: str, names: list[str]) -> set[str]:
        return anywhere(folder, names) | (top & set(names) if Path(folder) == PROJECT_ROOT else set())

    source = shutil.copytree(PROJECT_ROOT, tmp_path / "source", ignore=ignore)
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(source)], capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    wheel = next(dist.glob("mildnet-*.whl"))
    venv = tmp_path / "venv"
    # The venv sees the installed dependencies (tensorflow & co.) but not this checkout: only the wheel's mildnet.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    work = tmp_path / "elsewhere"
    photos = work / "photos"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILDNET_")}
    env["PYTHONPATH"] = ""
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"

    def mildnet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "mildnet"), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([str(python), "-c", "import mildnet; print(mildnet.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert str(venv) in where.stdout, where.stdout + where.stderr  # the wheel's copy, not the checkout
    listed = mildnet("data", "list")
    assert listed.returncode == 0 and "sample" in listed.stdout and "clothing-small" in listed.stdout, listed.stderr
    assert mildnet("data", "add", "shop", "--images", str(photos)).returncode == 0
    assert mildnet("embed", "--dataset", "shop").returncode == 0
    found = mildnet("search", "--dataset", "shop", "--image", str(photos / "p2.jpg"), "--json")
    assert found.returncode == 0 and '"id": "photos/p2.jpg"' in found.stdout, found.stderr
    home = work / ".mildnet"
    assert (home / "data_manifest.user.csv").is_file() and (home / "data" / "shop").is_dir()
    assert (home / "embeddings").is_dir()
    installed = Path(where.stdout.strip()).parent
    assert not list(installed.rglob("embeddings")) and not (installed.parent / "data").exists()

    # The app from the same folder: `mildnet app` runs the app the wheel ships, on the same data home.
    import time
    import urllib.request

    from tests.redis_server import free_port

    port = free_port()
    server = subprocess.Popen([str(venv / "bin" / "mildnet"), "app", "--port", str(port)], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, healthy = time.monotonic() + 90, False
        while time.monotonic() < deadline and server.poll() is None and not healthy:
            try:
                healthy = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200
            except OSError:
                time.sleep(0.5)
        assert healthy, server.stderr.read() if server.poll() is not None else "no answer in 90 s"
    finally:
        server.terminate()
        server.wait(30)


def test_the_wheel_ships_every_page_of_the_app():
    shipped = PYPROJECT["tool"]["setuptools"]["data-files"]["share/mildnet/pages"]
    pages = (PROJECT_ROOT / "pages").glob("*.py")
    assert sorted(shipped) == sorted(p.relative_to(PROJECT_ROOT).as_posix() for p in pages)
