"""Work in progress beside its destination, renamed into place when done, and swept when abandoned.

A staging folder (or file) is named ``.NAME.WHAT-PID-HEX``: a command killed before it could clean up (SIGKILL,
a power cut, a server stopped mid-upload) leaves one behind, and the next command that stages in the same folder
deletes those whose process is gone. Until then they are hidden, so no listing counts them.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

_STAGED = re.compile(r"^\..+\.[a-z]+-(\d+)-[0-9a-f]{8}(\.zip)?$")


def staging_path(parent: str | os.PathLike, name: str, what: str, suffix: str = "") -> Path:
    """A fresh staging name in ``parent`` for ``name`` (``what``: adding, unzip, upload...; lower-case)."""
    return Path(parent) / f".{name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def make_staging_dir(parent: str | os.PathLike, name: str, what: str) -> Path:
    path = staging_path(parent, name, what)
    path.mkdir(parents=True)
    return path


def sweep_abandoned(parent: str | os.PathLike) -> list[Path]:
    """Delete the staging folders and files in ``parent`` whose process has ended; returns what was deleted."""
    parent = Path(parent)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    swept = []
    for entry in entries:
        match = _STAGED.match(entry.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        swept.append(entry)
    return swept


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (True where that cannot be told)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # no cheap liveness check: keep it (it is hidden, and only disk)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or a pid we cannot ask about): not ours to judge
    return True
