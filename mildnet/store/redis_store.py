"""Embedding sets in a shared Redis: :class:`RedisStore` (the ``redis`` library is imported when one opens)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from mildnet import safe_json
from mildnet.errors import StoreError
from mildnet.store.base import (
    FORMAT_VERSION,
    READ_ATTEMPTS,
    Store,
    as_store_dtype,
    build_set,
    check_document_name,
    check_format,
    check_key,
    items_payload,
    parse_document,
    parse_items,
)
from mildnet.store.embedding_set import DTYPES, HALF, EmbeddingSet, check_dtype
from mildnet.store.urls import check_redis_url, redact_url

log = logging.getLogger(__name__)
# A set header claiming more values than this (16 GB of float32) is corrupt, whatever its other fields say.
_MAX_VALUES = 1 << 32


_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def _reason(exc: Exception) -> str:
    """One short line for a Redis error: redis-py prefixes a pipeline's error with the failed command and its
    arguments (our vector bytes); an out-of-memory refusal says what to do."""
    text = _PIPELINE_PREFIX.sub("", str(exc)).strip() or type(exc).__name__
    text = text.splitlines()[0][:200]
    if "maxmemory" in text:
        text += (" (Redis is out of memory: raise its maxmemory, use a store with room, or a local store; "
                 "the sets already there are untouched)")
    return text


class RedisStore(Store):
    """Embedding sets in Redis, shared by every app replica that uses the same URL and ``prefix``.

    Layout for a key ``K`` (``P`` = prefix, default ``mildnet:emb:``)::

        P{K}:current          -> version id (the only key readers start from)
        P{K}:v:{ver}:meta     -> JSON {format, key, n, dim, chunk_rows, chunks, meta, dtype}
        P{K}:v:{ver}:ids      -> JSON {ids, paths}
        P{K}:v:{ver}:vec:{i}  -> rows [i*chunk_rows, (i+1)*chunk_rows) as raw little-endian float32 (or
                                 float16 when ``dtype`` says so; a header without ``dtype`` is float32)
        P__keys__             -> set of all K (so ``keys()`` needs no SCAN over the whole database)

    ``put`` writes a new version in pipelined batches with a TTL (so a crashed writer's leftovers expire),
    then in one MULTI/EXEC points ``current`` at it, makes it persistent and registers K; afterwards it
    deletes the previous version with one DEL. Readers fetch a version in one MULTI/EXEC, so they see it
    whole or (if a writer deleted it meanwhile) not at all and retry from the pointer.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mildnet:emb:",
        chunk_rows: int = 4096,
        batch_bytes: int = 64 << 20,
        pending_ttl_s: int = 3600,
        connect_timeout_s: float = 5.0,
        socket_timeout_s: float = 60.0,
        retries: int = 2,
        client: Any = None,
        dtype: str | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise StoreError(f"not a Redis URL: a {type(url).__name__} (expected redis://host:port/db or rediss://...)")
        check_redis_url(url)
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        if not isinstance(batch_bytes, int) or batch_bytes < 1:
            raise ValueError(f"batch_bytes must be a positive integer, got {batch_bytes!r}")
        if not isinstance(pending_ttl_s, int) or pending_ttl_s < 1:
            raise ValueError(f"pending_ttl_s must be a positive integer, got {pending_ttl_s!r}")
        self.url = url
        self.prefix = prefix
        self.chunk_rows = chunk_rows
        self.batch_bytes = batch_bytes
        self.pending_ttl_s = pending_ttl_s
        # None keeps each set's own precision; "float16" / "float32" converts on put (reads return as stored).
        self.dtype = None if dtype is None else check_dtype(dtype)
        self._safe_url = redact_url(url)
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError:
            raise StoreError("the 'redis' package is needed for a Redis store: pip install redis") from None
        self._redis_errors = (redis.exceptions.RedisError,)
        if client is not None:
            self._r = client
        else:
            try:
                # redis-py's default retries a refused connection ~10 times; a down cache should fail fast.
                self._r = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=connect_timeout_s,
                    socket_timeout=socket_timeout_s,
                    retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
                    decode_responses=False,
                )
            except (ValueError, TypeError) as exc:
                raise StoreError(f"bad Redis URL {self._safe_url}: {exc}") from None
        with self._errors("connect to"):
            self._r.ping()

    def describe(self) -> str:
        return f"Redis store at {self._safe_url} (prefix {self.prefix!r})"

    def __repr__(self) -> str:
        return f"RedisStore({self._safe_url!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        with contextlib.suppress(*self._redis_errors):
            self._r.close()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except self._redis_errors as exc:
            raise StoreError(f"cannot {action} Redis at {self._safe_url}: {_reason(exc)}") from None

    # -- key names ------------------------------------------------------------------------------------------

    def _k(self, key: str, *parts: str) -> bytes:
        return ":".join([f"{self.prefix}{key}", *parts]).encode("utf-8")

    def put_document(self, key: str, name: str, document: dict) -> None:
        check_key(key)
        raw = json.dumps(document).encode("utf-8")
        with self._errors("write to"):
            self._r.set(self._k(key, "doc", check_document_name(name)), raw)

    def get_document(self, key: str, name: str) -> dict | None:
        check_key(key)
        with self._errors("read from"):
            raw = self._r.get(self._k(key, "doc", check_document_name(name)))
        return None if raw is None else parse_document(raw, f"document {name!r} of {key!r}")

    def _index_key(self) -> bytes:
        return f"{self.prefix}__keys__".encode()

    def _version_keys(self, key: str, version: str, chunks: int) -> list[bytes]:
        return [self._k(key, "v", version, "meta"), self._k(key, "v", version, "ids")] + [
            self._k(key, "v", version, "vec", str(i)) for i in range(chunks)
        ]

    # -- API ------------------------------------------------------------------------------------------------

    def put(self, key: str, s: EmbeddingSet) -> None:
        check_key(key)
        if not isinstance(s, EmbeddingSet):
            raise StoreError(f"put expects an EmbeddingSet, got {type(s).__name__}")
        s = as_store_dtype(s, self.dtype)
        n, dim = s.vectors.shape
        chunks = -(-n // self.chunk_rows)
        version = uuid.uuid4().hex
        header = {
            "format": FORMAT_VERSION, "key": key, "n": n, "dim": dim,
            "chunk_rows": self.chunk_rows, "chunks": chunks, "meta": s.meta, "dtype": s.dtype,
        }
        names = self._version_keys(key, version, chunks)
        try:
            results, before = self._write_version(key, version, names, header, s, chunks)
        except StoreError:
            # Out of memory (or cut off) half-way: our partial version would hold memory until its TTL; DEL is
            # allowed even over maxmemory, and frees it for the sets that are there.
            with contextlib.suppress(*self._redis_errors):
                # Unless the error came after EXEC published it (a reply lost with the connection).
                if self._r.get(self._k(key, "current")) != version.encode("ascii"):
                    self._r.delete(*names)
            raise
        previous = results[0]
        if previous == version.encode("ascii"):
            # redis-py replays a transaction whose reply was lost with the connection: the replay's GET returns
            # our own version, and the one it replaced would stay in Redis for ever unless taken from before.
            previous = before
        previous = previous.decode("ascii", "replace") if previous else None
        if previous and previous != version:
            try:
                self._drop_version(key, previous)
            except StoreError as exc:
                # The new set is published and readable; a leftover old version costs memory, not correctness.
                log.warning("%s (the new set was written)", exc)

    def _write_version(self, key: str, version: str, names: list[bytes], header: dict, s: EmbeddingSet,
                       chunks: int) -> tuple[list, bytes | None]:
        """Writes a version's keys (expiring) and publishes it in one MULTI/EXEC; returns EXEC's results and the
        pointer read just before it (see put)."""
        vec = s.vectors
        with self._errors(f"write {key!r} to"):
            pipe = self._r.pipeline(transaction=False)
            pipe.set(names[0], json.dumps(header).encode("utf-8"), ex=self.pending_ttl_s)
            pipe.set(names[1], items_payload(s), ex=self.pending_ttl_s)
            pending = 0
            for i in range(chunks):
                block = vec[i * self.chunk_rows:(i + 1) * self.chunk_rows].tobytes()
                pipe.set(names[2 + i], block, ex=self.pending_ttl_s)
                pending += len(block)
                # Bounded batches: one pipeline holding a whole large catalog would double client memory.
                if pending >= self.batch_bytes:
                    pipe.execute()
                    pending = 0
            pipe.execute()
            before = self._r.get(self._k(key, "current"))
            tx = self._r.pipeline(transaction=True)
            tx.set(self._k(key, "current"), version.encode("ascii"), get=True)
            tx.sadd(self._index_key(), key.encode("utf-8"))
            for name in names:
                tx.persist(name)
            return tx.execute(), before

    def _drop_version(self, key: str, version: str) -> None:
        with self._errors(f"clean up an old version of {key!r} in"):
            raw = self._r.get(self._k(key, "v", version, "meta"))
            chunks = 0
            if raw is not None:
                try:
                    chunks = int(safe_json.loads(raw)["chunks"])
                except (ValueError, TypeError, KeyError):
                    log.warning("old version %s of %r has corrupt metadata; removing what is known", version, key)
            # One DEL is atomic, so a reader's MULTI sees the old version whole or not at all.
            self._r.delete(*self._version_keys(key, version, chunks))

    def get(self, key: str) -> EmbeddingSet | None:
        check_key(key)
        where = f"{self._safe_url} key {key!r}"
        with self._errors(f"read {key!r} from"):
            for attempt in range(READ_ATTEMPTS):
                if attempt:
                    # A writer replaced the set under us; back off a little so a busy writer cannot starve us.
                    time.sleep(min(0.002 * attempt, 0.05))
                version = self._r.get(self._k(key, "current"))
                if version is None:
                    return None
                version = version.decode("ascii", "replace")
                raw_meta = self._r.get(self._k(key, "v", version, "meta"))
                if raw_meta is None:
                    if self._r.get(self._k(key, "current")) == version.encode("ascii"):
                        # Not a writer at work: the set's keys were evicted (maxmemory) or flushed.
                        raise StoreError(f"the embedding set at {where} is gone from Redis (evicted or flushed: "
                                         f"version {version} has no data); rebuild it with `python -m mildnet "
                                         f"embed ... --rebuild` (or delete the key)")
                    continue  # replaced meanwhile
                try:
                    header = safe_json.loads(raw_meta)
                    check_format(header, where)
                    n, dim, chunks, meta = int(header["n"]), int(header["dim"]), int(header["chunks"]), header["meta"]
                    dtype = header.get("dtype", "float32")
                    if not isinstance(meta, dict) or n < 0 or dim < 0 or chunks < 0 or dtype not in DTYPES:
                        raise ValueError("bad header values")
                    # Checked against each other before anything is allocated from them: every chunk holds
                    # at least one row, and the matrix must fit the sizes Redis can hold at all.
                    if chunks > max(n, 1) or (n > 0) != (chunks > 0) or n * dim > _MAX_VALUES:
                        raise ValueError(f"n={n}, dim={dim}, chunks={chunks} do not fit together")
                except (ValueError, TypeError, KeyError) as exc:
                    raise StoreError(f"corrupt embedding metadata at {where}: {exc}") from None
                # A version's keys never change once written (a new set is a new version), so plain pipelined GETs
                # read it whole or find keys missing (a writer dropped it: retried below). Not MULTI: over
                # maxmemory Redis refuses a transaction even of reads (issue 18 F16), and every read then failed.
                pipe = self._r.pipeline(transaction=False)
                for name in self._version_keys(key, version, chunks)[1:]:
                    pipe.get(name)
                values = pipe.execute()
                if any(v is None for v in values):
                    if self._r.get(self._k(key, "current")) == version.encode("ascii"):
                        raise StoreError(f"incomplete embedding set at {where} (keys evicted or flushed?); rebuild "
                                         f"it with `python -m mildnet embed ... --rebuild` (or delete the key)")
                    continue
                ids, paths = parse_items(values[0], n, where)
                blob = b"".join(values[1:])
                raw_dtype = HALF if dtype == "float16" else np.dtype("<f4")
                if len(blob) != n * dim * raw_dtype.itemsize:
                    raise StoreError(
                        f"corrupt embedding matrix at {where}: {len(blob)} bytes, expected {n}x{dim} {dtype}"
                    )
                # frombuffer views the joined bytes read-only; the set gets its own writable array.
                vectors = np.frombuffer(blob, dtype=raw_dtype).reshape(n, dim).copy()
                return build_set(ids, paths, vectors, meta, where)
        raise StoreError(f"embedding set {key!r} at {self._safe_url} keeps changing while being read; try again")

    def delete(self, key: str) -> bool:
        check_key(key)
        with self._errors(f"delete {key!r} from"):
            tx = self._r.pipeline(transaction=True)
            tx.getdel(self._k(key, "current"))
            tx.srem(self._index_key(), key.encode("utf-8"))
            previous, _ = tx.execute()
            # The documents kept beside the set (its catalogue calibration) go with it, as in a local store's
            # folder; a stale one left behind was read again for a new set under the same key.
            pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", self._k(key, "doc")) + b":*"
            documents = list(self._r.scan_iter(match=pattern, count=100))
            if documents:
                self._r.delete(*documents)
        if previous is None:
            return False
        self._drop_version(key, previous.decode("ascii", "replace"))
        return True

    def keys(self) -> list[str]:
        with self._errors("list keys in"):
            members = self._r.smembers(self._index_key())
        return sorted(m.decode("utf-8") for m in members)
