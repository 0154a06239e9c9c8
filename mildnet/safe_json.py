"""``json.loads`` for files and store records a user or another process may have damaged.

The standard parser raises RecursionError, not a ValueError, on deeply nested input (a 200,000-deep array in a
calibration or config file), which slipped past every ``except ValueError`` and showed a traceback. Here every
unparseable input is a ``json.JSONDecodeError`` (a ValueError), so callers keep one handler.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mildnet.errors import ModelError


def loads(text: str | bytes) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None


def write(path: Path, data: object, indent: int | None = None) -> Path:
    """``data`` as JSON at ``path``, atomically (a reader sees the old file or the new one, never half of one);
    ModelError naming the file when it cannot be written (the run files that use it belong to a model)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
