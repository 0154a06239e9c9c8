"""What every store shares: the :class:`Store` interface and the checks of what a store writes and reads."""

from __future__ import annotations

import abc
import json
import re

import numpy as np

from mildnet import safe_json
from mildnet.errors import DataError, StoreError
from mildnet.store.embedding_set import EmbeddingSet

FORMAT_VERSION = 1
# Reads of a set that writers keep replacing are retried this often (with a growing pause, ~2 s in all).
READ_ATTEMPTS = 50


class Store(abc.ABC):
    """Embedding sets under namespace keys. ``get`` returns None for an absent key (a cache miss)."""

    @abc.abstractmethod
    def put(self, key: str, s: EmbeddingSet) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> EmbeddingSet | None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True if something was removed."""

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """All keys, sorted."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for logs and the UI (never contains a password)."""

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    # A small JSON document kept beside a set (a per-catalogue calibration): replaced whole, removed with the set.
    def put_document(self, key: str, name: str, document: dict) -> None:
        raise StoreError(f"{self.describe()} cannot keep documents beside its sets")

    def get_document(self, key: str, name: str) -> dict | None:
        """The document, None when absent; StoreError when it is unreadable or not a JSON object."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (no-op for stores that hold none)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise StoreError(f"store key must be a non-empty string, got {key!r}")
    if any(ord(c) < 32 for c in key):
        raise StoreError(f"store key must not contain control characters: {key!r}")
    return key


def as_store_dtype(s: EmbeddingSet, dtype: str | None) -> EmbeddingSet:
    if dtype is None:
        return s
    try:
        return s.astype(dtype)
    except DataError as exc:
        raise StoreError(f"cannot store the set as {dtype}: {exc}") from None


def check_format(header: dict, where: str) -> None:
    """Refuses a set written in a newer store format: read as this version understands it, it could be wrong."""
    fmt = header.get("format", FORMAT_VERSION)
    if not isinstance(fmt, int) or fmt < 1:
        raise StoreError(f"corrupt embedding metadata at {where}: format {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise StoreError(f"the embedding set at {where} was written by a newer mildnet (store format {fmt}; this "
                         f"version reads format {FORMAT_VERSION}): upgrade, or rebuild it with `python -m mildnet "
                         "embed ... --rebuild`")


def items_payload(s: EmbeddingSet) -> bytes:
    return json.dumps({"ids": s.ids, "paths": s.paths}, ensure_ascii=False).encode("utf-8")


def parse_items(raw: bytes, n: int, where: str) -> tuple[list[str], list[str]]:
    try:
        items = safe_json.loads(raw)
        ids, paths = items["ids"], items["paths"]
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"corrupt id list in {where}: {exc}") from None
    if not (isinstance(ids, list) and isinstance(paths, list) and len(ids) == len(paths) == n):
        raise StoreError(f"corrupt id list in {where}: expected {n} ids and paths")
    return ids, paths


def build_set(ids: list, paths: list, vectors: np.ndarray, meta: dict, where: str) -> EmbeddingSet:
    try:
        return EmbeddingSet(ids, paths, vectors, meta)
    except DataError as exc:
        raise StoreError(f"unusable embedding set in {where}: {exc}") from None


def check_document_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", name):
        raise StoreError(f"invalid document name {name!r}")
    return name


def parse_document(raw: bytes, where: str) -> dict:
    try:
        document = safe_json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{where} is damaged (not JSON: {exc})") from None
    if not isinstance(document, dict):
        raise StoreError(f"{where} is damaged (not a JSON object)")
    return document
