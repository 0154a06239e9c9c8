"""The store a user asked for, from a folder path or a Redis URL: :func:`open_store`."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any
from urllib.parse import urlsplit

from mildnet.errors import StoreError
from mildnet.store.base import Store
from mildnet.store.local import LocalStore
from mildnet.store.redis_store import RedisStore
from mildnet.store.urls import REDIS_SCHEMES, REDIS_URL_ENV, StoreURLError, redact_url

DEFAULT_LOCAL_PATH = ".mildnet/embeddings"


def open_store(
    spec: str | os.PathLike | None = None,
    fallback_local: str | os.PathLike | None = None,
    *,
    default_local: str | os.PathLike = DEFAULT_LOCAL_PATH,
    dtype: str | None = None,
    **redis_options: Any,
) -> Store:
    """The store a user asked for.

    ``spec``: a ``redis://`` / ``rediss://`` / ``unix://`` URL -> :class:`RedisStore`; any other string or
    path -> :class:`LocalStore` there; None -> the URL in ``$MILDNET_REDIS_URL`` if set, else a local store
    at ``default_local`` (relative to the working directory).

    ``dtype`` (``"float16"`` / ``"float32"``, None = as given) is the precision sets are stored in.

    If Redis cannot be reached, a StoreError is raised, unless ``fallback_local`` was given: then a
    warning says so and a LocalStore at ``fallback_local`` is returned. The fallback is opt-in because
    silently caching per replica would hide a broken shared cache.
    """
    if spec is None:
        spec = os.environ.get(REDIS_URL_ENV) or None
        if spec is None:
            return LocalStore(default_local, dtype=dtype)
    if isinstance(spec, os.PathLike):
        return LocalStore(spec, dtype=dtype)
    if not isinstance(spec, str) or not spec.strip():
        raise StoreError(f"store must be a Redis URL or a folder path, got {spec!r}")
    spec = spec.strip()
    # Not urlsplit: it raises on a malformed netloc, which RedisStore reports properly.
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", spec)
    scheme = found.group(1).lower() if found else ""
    if scheme in REDIS_SCHEMES:
        try:
            return RedisStore(spec, dtype=dtype, **redis_options)
        except StoreError as exc:
            # A URL that does not parse is a typo to fix, not an outage to ride out.
            if fallback_local is None or isinstance(exc, StoreURLError):
                raise
            # One channel only: an unconfigured logger would print the same line a second time.
            msg = f"{exc}; falling back to the local store at {fallback_local}"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return LocalStore(fallback_local, dtype=dtype)
    if scheme == "file":
        return LocalStore(urlsplit(spec).path, dtype=dtype)
    if scheme:
        raise StoreURLError(f"unsupported store {redact_url(spec)!r}: use a folder path or a redis:// / rediss:// URL")
    return LocalStore(spec, dtype=dtype)
