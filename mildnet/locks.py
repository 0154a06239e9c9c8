"""Exclusive locks between processes: the kernel's flock on a file, so a process that ends (even killed) never
leaves one held. Where there is no flock (Windows) a lock is a no-op; its callers keep their writes atomic anyway.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:
    fcntl = None

_POLL_S = 0.05


@contextlib.contextmanager
def exclusive(path: Path, timeout: float | None = None, busy: Callable[[], Exception] | None = None,
              waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if missing). ``timeout`` None waits as long as it takes;
    otherwise ``busy()`` is raised once ``timeout`` seconds have passed (0: at once) and ``waiting()`` is called
    while it waits. OSError when ``path`` cannot be opened."""
    with open(path, "a+") as handle:
        if fcntl is not None:
            if timeout is None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise (busy() if busy is not None else TimeoutError(f"{path} is locked")) from None
                        if waiting is not None:
                            waiting()
                        time.sleep(_POLL_S)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
