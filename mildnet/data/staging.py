"""Work in progress beside its destination, renamed into place when done, and swept when abandoned.

A staging folder (or file) is named ``.NAME.WHAT-PID-HEX``: a command killed before it could clean up (SIGKILL,
a power cut, a server stopped mid-upload) leaves one behind, and the next command that stages in the same folder
deletes those whose process is gone. Until then they are hidden, so no listing counts them.

An upload the app holds for one of its sessions (a zip on the "Add a catalogue" page, not added yet) is kept on
disk, not in the server's memory, as ``.SESSION.held-PID-HEX.zip``: swept like the rest once its process is gone,
and by :func:`sweep_held` once its session has ended while the process runs on.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

_STAGED = re.compile(r"^\..+\.[a-z]+-(\d+)-[0-9a-f]{8}(\.zip)?$")
HELD = "held"
_HELD = re.compile(rf"^\.(?P<session>[A-Za-z0-9_-]+)\.{HELD}-(?P<pid>\d+)-[0-9a-f]{{8}}(\.zip)?$")


def staging_path(parent: str | os.PathLike, name: str, what: str, suffix: str = "") -> Path:
    """A fresh staging name in ``parent`` for ``name`` (``what``: adding, unzip, upload...; lower-case)."""
    return Path(parent) / f".{name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def discard(path: str | os.PathLike, tries: int = 5) -> None:
    """Remove a staging folder after a failure or a stop, tolerating a file that appears or is held while it goes
    (a writer finishing its file as the folder is emptied left it in place once, CI 2026-12-05): retried briefly."""
    path = Path(path)
    for attempt in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.05 * (attempt + 1))


def make_staging_dir(parent: str | os.PathLike, name: str, what: str) -> Path:
    path = staging_path(parent, name, what)
    path.mkdir(parents=True)
    return path


def session_tag(session_id: str) -> str:
    """``session_id`` as it appears in a held file's name: Streamlit's ids (uuid4) unchanged, anything else made
    file-name safe (and short)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", session_id)[:64] or "_"


def held_path(parent: str | os.PathLike, session_id: str, suffix: str = ".zip") -> Path:
    """A fresh name in ``parent`` for an upload held for the session ``session_id`` of this process."""
    return staging_path(parent, session_tag(session_id), HELD, suffix)


def held_session(path: str | os.PathLike) -> tuple[str, int] | None:
    """(session tag, pid) of a held upload's name, or None for any other name."""
    match = _HELD.match(Path(path).name)
    return (match.group("session"), int(match.group("pid"))) if match else None


def _entries(parent: str | os.PathLike) -> list[Path]:
    """What ``parent`` holds, or nothing where it is missing or unreadable (then there is nothing to sweep)."""
    try:
        return list(Path(parent).iterdir())
    except OSError:
        return []


def sweep_held(parent: str | os.PathLike, session_active: Callable[[str], bool | None], idle_seconds: float,
               keep_session: str | None = None) -> list[Path]:
    """Delete the held uploads in ``parent`` whose owner is gone; returns what was deleted.

    Gone: its process has ended (as :func:`sweep_abandoned`), or it is this process's and ``session_active(tag)``
    says False (the server no longer has that session connected) while the file has not been touched (its page
    touches it on every rerun) for ``idle_seconds``: a disconnected session can still be resumed for that long
    (Streamlit's ``server.disconnectedSessionTTL``). Where the session cannot be asked (None), only the process
    rule applies. Another live process's uploads are its own to sweep. ``keep_session``'s are never touched.
    """
    swept = []
    now = time.time()
    for entry in _entries(parent):
        owner = held_session(entry)
        if owner is None or owner[0] == (keep_session and session_tag(keep_session)):
            continue
        tag, pid = owner
        if pid == os.getpid():
            if session_active(tag) is not False:
                continue
            try:
                if now - entry.lstat().st_mtime < idle_seconds:
                    continue
            except OSError:
                continue
        elif process_alive(pid):
            continue
        try:
            entry.unlink(missing_ok=True)  # a file (a folder of that name is not one we made: unlink refuses it)
        except OSError:
            continue
        swept.append(entry)
    return swept


def sweep_abandoned(parent: str | os.PathLike) -> list[Path]:
    """Delete the staging folders and files in ``parent`` whose process has ended; returns what was deleted."""
    swept = []
    for entry in _entries(parent):
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
