"""Store URLs: which schemes mean Redis, their validation, and the redaction of passwords for messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from mildnet.errors import StoreError

REDIS_URL_ENV = "MILDNET_REDIS_URL"
REDIS_SCHEMES = ("redis", "rediss", "unix")


class StoreURLError(StoreError):
    """A store URL that cannot be parsed (a usage error: the CLI exits 2)."""


def redact_url(url: str) -> str:
    """The URL without its password, for messages (also when the URL cannot be parsed)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # Unparsable: mask whatever sits between '//' and the last '@' by pattern.
        return re.sub(r"(//[^/@]*?:)[^/]*@", r"\1***@", url) if "@" in url else url
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if port:
        host = f"{host}:{port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_redis_url(url: str) -> None:
    """StoreURLError (one line, password masked) unless ``url`` parses as redis[s]://[[user]:pw@]host[:port][/db]."""
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if not found or found.group(1).lower() not in REDIS_SCHEMES:
        raise StoreURLError(f"not a Redis URL: {redact_url(url)} (expected redis://host:port/db or rediss://...)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises for 'host:notaport'
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("expected redis://[:password@]host[:port][/db]")
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"the database must be a number, got {db!r}")
    except ValueError as exc:
        raise StoreURLError(f"bad Redis URL {redact_url(url)}: {exc}") from None
