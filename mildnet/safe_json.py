"""``json.loads`` for files and store records a user or another process may have damaged.

The standard parser raises RecursionError, not a ValueError, on deeply nested input (a 200,000-deep array in a
calibration or config file), which slipped past every ``except ValueError`` and showed a traceback. Here every
unparseable input is a ``json.JSONDecodeError`` (a ValueError), so callers keep one handler.
"""

from __future__ import annotations

import json


def loads(text: str | bytes) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None
