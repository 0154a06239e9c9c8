"""The CLI as a user runs it: a separate process, errors as exactly one line on stderr."""

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mildnet", *args], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_model_command_error_is_one_line_without_tensorflow_chatter(tmp_path):
    result = _run("evaluate", "--run", str(tmp_path / "no-such-run"), "--dataset", "sample")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'no-such-run'} is not a training run directory (no config.json)"]


def test_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("data", "train", "evaluate", "embed", "search"):
        assert command in result.stdout
