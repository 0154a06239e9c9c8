"""Embedding sets and the stores that cache them (a local folder or a shared Redis).

An :class:`EmbeddingSet` is the catalog's embedding matrix plus the ids/paths its rows belong to and the
metadata that says which model and catalog produced it. A :class:`Store` keeps sets under namespace keys
(the embedding module uses ``f"{dataset}/{model_fingerprint}"``).

Both stores publish a set atomically: a writer first writes a complete new *version*, then switches a small
pointer (a file replaced with ``os.replace`` / a Redis key set inside MULTI/EXEC) and only then deletes the
previous version. A crash mid-write therefore leaves the old set readable, and a reader sees either the old
set or the new one, never a mix. Data is written as ``.npy`` (``allow_pickle=False``), JSON and raw float32
(or float16, with a store's ``dtype="float16"``) bytes; nothing is ever pickled.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from mildnet.errors import DataError, StoreError

__all__ = [
    "EmbeddingSet",
    "Store",
    "LocalStore",
    "RedisStore",
    "open_store",
    "DEFAULT_LOCAL_PATH",
    "DTYPES",
    "REDIS_URL_ENV",
]

log = logging.getLogger(__name__)
# Reads of a set that writers keep replacing are retried this often (with a growing pause, ~2 s in all).
_READ_ATTEMPTS = 50
# A set header claiming more values than this (16 GB of float32) is corrupt, whatever its other fields say.
_MAX_VALUES = 1 << 32

DEFAULT_LOCAL_PATH = ".mildnet/embeddings"
REDIS_URL_ENV = "MILDNET_REDIS_URL"
REDIS_SCHEMES = ("redis", "rediss", "unix")

_FORMAT_VERSION = 1
_REQUIRED_META = ("model_fingerprint", "catalog_fingerprint", "dim", "created")


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# EmbeddingSet
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class EmbeddingSet:
    """Row-aligned ``ids``, ``paths`` and float32 (or float16) ``vectors`` (N, D) plus JSON-serialisable ``meta``.

    ``meta`` always ends up holding ``model_fingerprint``, ``catalog_fingerprint`` (``""`` when unknown),
    ``dim`` (= D) and ``created`` (ISO-8601 UTC); any other JSON-serialisable entries are kept as they are.
    float16 vectors stay float16 (half the memory; see :meth:`astype` and the stores' ``dtype`` option);
    other floating precisions are converted to float32. Non-float or non-finite vectors are refused,
    because a NaN row would silently poison every cosine search.
    """

    ids: list[str]
    paths: list[str]
    vectors: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.ids, str) or isinstance(self.paths, str):
            raise DataError("EmbeddingSet ids and paths must be sequences of strings, not a single string")
        self.ids = [str(i) for i in self.ids]
        self.paths = [str(p) for p in self.paths]
        vec = self.vectors
        if not isinstance(vec, np.ndarray):
            raise DataError(f"EmbeddingSet vectors must be a numpy array, got {type(vec).__name__}")
        if vec.ndim != 2:
            raise DataError(f"EmbeddingSet vectors must be 2-D (N, D), got shape {vec.shape}")
        if not np.issubdtype(vec.dtype, np.floating):
            raise DataError(f"EmbeddingSet vectors must be float32, got dtype {vec.dtype}")
        # Stores write raw little-endian rows; normalising the layout here keeps every writer simple.
        self.vectors = np.ascontiguousarray(vec, dtype=_HALF if vec.dtype == np.float16 else np.float32)
        n, dim = self.vectors.shape
        if len(self.ids) != n or len(self.paths) != n:
            raise DataError(
                f"EmbeddingSet rows disagree: {len(self.ids)} ids, {len(self.paths)} paths, {n} vectors"
            )
        if len(set(self.ids)) != n:
            dupes = _duplicates(self.ids)
            raise DataError(f"EmbeddingSet ids must be unique; duplicated: {_preview(dupes)}")
        # Checked a block at a time: a whole-matrix boolean mask would cost a quarter of a float32 matrix.
        step = max(1, (4 << 20) // max(1, dim))
        for a in range(0, n, step):
            finite = np.isfinite(self.vectors[a:a + step]).all(axis=1)
            if not finite.all():
                bad = a + int(np.flatnonzero(~finite)[0])
                raise DataError(f"EmbeddingSet vector for id {self.ids[bad]!r} contains NaN or infinity")
        if not isinstance(self.meta, dict):
            raise DataError(f"EmbeddingSet meta must be a dict, got {type(self.meta).__name__}")
        meta = dict(self.meta)
        if "dim" in meta and meta["dim"] != dim:
            raise DataError(f"EmbeddingSet meta says dim={meta['dim']!r} but the vectors have {dim} columns")
        meta["dim"] = int(dim)
        meta.setdefault("model_fingerprint", "")
        meta.setdefault("catalog_fingerprint", "")
        meta.setdefault("created", utc_now_iso())
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise DataError(f"EmbeddingSet meta must be JSON-serialisable: {exc}") from None
        self.meta = meta
        self._index: dict[str, int] | None = None

    # -- basic accessors ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float16"``: the precision the vectors are held in."""
        return _dtype_name(self.vectors.dtype)

    def astype(self, dtype: str | np.dtype) -> EmbeddingSet:
        """This set with its vectors held as ``"float32"`` or ``"float16"`` (itself when already so).

        float16 halves memory and store bytes; values round to ~3 significant digits (relative error
        <= 2**-11), and a float16 set cannot hold values beyond +-65504 (refused, not turned into inf).
        """
        name = _check_dtype(dtype)
        if name == self.dtype:
            return self
        if name == "float16":
            big = float(np.max(np.abs(self.vectors), initial=0.0))
            if big > float(np.finfo(np.float16).max):
                raise DataError(f"vectors up to {big:g} do not fit float16 (max 65504); keep them float32")
        return EmbeddingSet(self.ids, self.paths, self.vectors.astype(name), self.meta)

    @property
    def model_fingerprint(self) -> str:
        return str(self.meta["model_fingerprint"])

    @property
    def catalog_fingerprint(self) -> str:
        return str(self.meta["catalog_fingerprint"])

    @property
    def index(self) -> dict[str, int]:
        """``id -> row`` (built lazily; the set is treated as immutable after construction)."""
        if self._index is None:
            self._index = {i: r for r, i in enumerate(self.ids)}
        return self._index

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    def rows_of(self, ids: Iterable[str]) -> np.ndarray:
        """Row numbers of ``ids`` in order; unknown ids -> DataError listing a few of them."""
        ids = _as_id_list(ids)
        index = self.index
        missing = [i for i in ids if i not in index]
        if missing:
            raise DataError(f"{len(missing)} id(s) not in the embedding set: {_preview(missing)}")
        return np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))

    def equals(self, other: EmbeddingSet) -> bool:
        """Exact equality of ids, paths, vectors (bitwise) and meta; used by tests and cache checks."""
        return (
            isinstance(other, EmbeddingSet)
            and self.ids == other.ids
            and self.paths == other.paths
            and self.vectors.shape == other.vectors.shape
            and np.array_equal(self.vectors, other.vectors)
            and self.meta == other.meta
        )

    # -- derived sets ---------------------------------------------------------------------------------------

    def subset(self, ids: Iterable[str], *, meta: dict | None = None) -> EmbeddingSet:
        """Rows for ``ids``, in the given order (unknown or repeated ids -> DataError)."""
        rows = self.rows_of(ids)
        return EmbeddingSet(
            [self.ids[r] for r in rows],
            [self.paths[r] for r in rows],
            self.vectors[rows],
            {**self.meta, **(meta or {})},
        )

    def without(self, ids: Iterable[str], *, missing: str = "error", meta: dict | None = None) -> EmbeddingSet:
        """The set minus ``ids`` (order of the remaining rows kept).

        ``missing="error"`` refuses ids that are not present (a typo would otherwise go unnoticed);
        ``missing="ignore"`` skips them, which suits removing products that may never have been embedded.
        """
        _check_choice("missing", missing, ("error", "ignore"))
        drop = set(_as_id_list(ids))
        if missing == "error":
            absent = sorted(drop - self.index.keys())
            if absent:
                raise DataError(f"cannot remove {len(absent)} id(s) that are not in the set: {_preview(absent)}")
        keep = np.fromiter((i not in drop for i in self.ids), dtype=bool, count=len(self))
        rows = np.flatnonzero(keep)
        return EmbeddingSet(
            [self.ids[r] for r in rows],
            [self.paths[r] for r in rows],
            self.vectors[rows],
            {**self.meta, **(meta or {})},
        )

    def with_added(
        self, new: EmbeddingSet, *, on_duplicate: str = "replace", meta: dict | None = None
    ) -> EmbeddingSet:
        """This set updated with ``new``: new ids are appended, ids already present are replaced in place
        (``on_duplicate="replace"``: the new embedding wins, e.g. after an image changed) or refused
        (``"error"``). The model fingerprint and dimension must match, since vectors from different models
        are not comparable. ``meta`` overrides entries of this set's meta (e.g. the new catalog fingerprint).
        """
        _check_choice("on_duplicate", on_duplicate, ("replace", "error"))
        _check_compatible([self, new])
        index = self.index
        dupes = [i for i in new.ids if i in index]
        if dupes and on_duplicate == "error":
            raise DataError(f"{len(dupes)} id(s) are already in the set: {_preview(dupes)}")
        ids = list(self.ids)
        paths = list(self.paths)
        vectors = self.vectors.copy() if dupes else self.vectors
        fresh_rows = []
        for r, i in enumerate(new.ids):
            if i in index:
                paths[index[i]] = new.paths[r]
                vectors[index[i]] = new.vectors[r]
            else:
                fresh_rows.append(r)
        ids += [new.ids[r] for r in fresh_rows]
        paths += [new.paths[r] for r in fresh_rows]
        vectors = np.concatenate([vectors, new.vectors[fresh_rows]], axis=0)
        return EmbeddingSet(ids, paths, vectors, {**self.meta, **(meta or {})})

    @staticmethod
    def merge(
        sets: Sequence[EmbeddingSet], *, on_duplicate: str = "error", meta: dict | None = None
    ) -> EmbeddingSet:
        """Concatenate shards (in the given order).

        Duplicate ids are refused (``"error"``) or resolved deterministically: ``"first"`` keeps the row of
        the earliest shard, ``"last"`` the latest one's vector at the first position. All shards must share
        the model fingerprint and dimension. The merged meta is the first shard's, with a combined
        ``catalog_fingerprint`` when the shards disagree, plus ``shards``; ``meta`` overrides the result.
        """
        _check_choice("on_duplicate", on_duplicate, ("error", "first", "last"))
        sets = list(sets)
        if not sets:
            raise DataError("merge needs at least one embedding set")
        for s in sets:
            if not isinstance(s, EmbeddingSet):
                raise DataError(f"merge takes EmbeddingSet objects, got {type(s).__name__}")
        _check_compatible(sets)
        merged = sets[0]
        for s in sets[1:]:
            dupes = [i for i in s.ids if i in merged.index]
            if dupes and on_duplicate == "error":
                raise DataError(f"shards share {len(dupes)} id(s): {_preview(dupes)}")
            if dupes and on_duplicate == "first":
                s = s.without(dupes)
            merged = merged.with_added(s, on_duplicate="replace")
        out_meta = dict(sets[0].meta)
        fps = [s.catalog_fingerprint for s in sets]
        if len(set(fps)) > 1:
            # Order-sensitive on purpose: different shard orders give different row orders.
            out_meta["catalog_fingerprint"] = hashlib.sha256("\n".join(fps).encode()).hexdigest()[:16]
        out_meta["shards"] = len(sets)
        out_meta.update(meta or {})
        return EmbeddingSet(merged.ids, merged.paths, merged.vectors, out_meta)


def _check_compatible(sets: Sequence[EmbeddingSet]) -> None:
    first = sets[0]
    for s in sets[1:]:
        if s.dim != first.dim:
            raise DataError(f"embedding sets have different dimensions: {first.dim} vs {s.dim}")
        if s.model_fingerprint != first.model_fingerprint:
            raise DataError(
                "embedding sets come from different models "
                f"({first.model_fingerprint!r} vs {s.model_fingerprint!r}); re-embed with one model"
            )


def _as_id_list(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, str):
        # A bare string would otherwise be iterated character by character.
        return [ids]
    return [str(i) for i in ids]


def _duplicates(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dupes: list[str] = []
    for i in items:
        if i in seen and i not in dupes:
            dupes.append(i)
        seen.add(i)
    return dupes


def _preview(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


_HALF = np.dtype("<f2")
DTYPES = ("float32", "float16")


def _dtype_name(dtype: Any) -> str:
    return "float16" if np.dtype(dtype) == np.float16 else "float32"


def _check_dtype(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}; got {dtype!r}")
    return name


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise StoreError(f"store key must be a non-empty string, got {key!r}")
    if any(ord(c) < 32 for c in key):
        raise StoreError(f"store key must not contain control characters: {key!r}")
    return key


def _as_store_dtype(s: EmbeddingSet, dtype: str | None) -> EmbeddingSet:
    if dtype is None:
        return s
    try:
        return s.astype(dtype)
    except DataError as exc:
        raise StoreError(f"cannot store the set as {dtype}: {exc}") from None


def _items_payload(s: EmbeddingSet) -> bytes:
    return json.dumps({"ids": s.ids, "paths": s.paths}, ensure_ascii=False).encode("utf-8")


def _parse_items(raw: bytes, n: int, where: str) -> tuple[list[str], list[str]]:
    try:
        items = json.loads(raw)
        ids, paths = items["ids"], items["paths"]
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"corrupt id list in {where}: {exc}") from None
    if not (isinstance(ids, list) and isinstance(paths, list) and len(ids) == len(paths) == n):
        raise StoreError(f"corrupt id list in {where}: expected {n} ids and paths")
    return ids, paths


def _build_set(ids: list, paths: list, vectors: np.ndarray, meta: dict, where: str) -> EmbeddingSet:
    try:
        return EmbeddingSet(ids, paths, vectors, meta)
    except DataError as exc:
        raise StoreError(f"unusable embedding set in {where}: {exc}") from None


# --------------------------------------------------------------------------------------------------------------
# Store interface
# --------------------------------------------------------------------------------------------------------------


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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (no-op for stores that hold none)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------
# LocalStore
# --------------------------------------------------------------------------------------------------------------

_CURRENT = "CURRENT"
_VEC_FILE = "vectors.npy"
_META_FILE = "meta.json"
_ITEMS_FILE = "items.json"
_STALE_TMP_SECONDS = 3600.0


class LocalStore(Store):
    """A folder of embedding sets: ``root/<safe key>/CURRENT`` names the live version folder
    ``v-<uuid>/`` holding ``vectors.npy``, ``meta.json`` and ``items.json`` (ids + paths).

    A new version is written into ``.tmp-<uuid>/`` next to it, renamed to ``v-<uuid>`` and published by
    replacing ``CURRENT`` with ``os.replace`` (atomic on POSIX and Windows); only then is the old version
    removed. Renaming a whole folder over an existing one is not atomic (POSIX refuses a non-empty target),
    hence the pointer file.
    """

    def __init__(self, root: str | os.PathLike, *, fsync: bool = True, dtype: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.fsync = bool(fsync)
        # None keeps each set's own precision; "float16" / "float32" converts on put (reads return as stored).
        self.dtype = None if dtype is None else _check_dtype(dtype)

    def describe(self) -> str:
        return f"local store at {self.root}"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- layout ---------------------------------------------------------------------------------------------

    def _folder(self, key: str) -> Path:
        _check_key(key)
        # Readable prefix for humans plus a hash so that distinct keys never share a folder
        # ("a/b" and "a_b" sanitise alike).
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "key"
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        return self.root / f"{safe}-{digest}"

    @staticmethod
    def _read_current(folder: Path) -> str | None:
        try:
            name = (folder / _CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {folder / _CURRENT}: {exc.strerror or exc}") from None
        if not re.fullmatch(r"v-[0-9a-f]{32}", name):
            raise StoreError(f"corrupt version pointer {folder / _CURRENT}: {name[:60]!r}")
        return name

    def _write_file(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    # -- API ------------------------------------------------------------------------------------------------

    def put(self, key: str, s: EmbeddingSet) -> None:
        if not isinstance(s, EmbeddingSet):
            raise StoreError(f"put expects an EmbeddingSet, got {type(s).__name__}")
        folder = self._folder(key)
        s = _as_store_dtype(s, self.dtype)
        version = f"v-{uuid.uuid4().hex}"
        tmp = folder / f".tmp-{version[2:]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            with open(tmp / _VEC_FILE, "wb") as fh:
                np.save(fh, s.vectors, allow_pickle=False)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            self._write_file(tmp / _ITEMS_FILE, _items_payload(s))
            header = {"format": _FORMAT_VERSION, "key": key, "n": len(s), "meta": s.meta}
            self._write_file(tmp / _META_FILE, json.dumps(header, indent=1, ensure_ascii=False).encode("utf-8"))
            try:
                previous = self._read_current(folder)
            except StoreError:
                previous = None  # a corrupt pointer is simply overwritten; _sweep removes orphans later
            os.replace(tmp, folder / version)
            pointer_tmp = folder / f".{_CURRENT}.{version[2:]}"
            try:
                self._write_file(pointer_tmp, version.encode("ascii"))
                os.replace(pointer_tmp, folder / _CURRENT)  # the commit point
            except BaseException:
                pointer_tmp.unlink(missing_ok=True)
                shutil.rmtree(folder / version, ignore_errors=True)
                raise
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"cannot write embeddings for {key!r} under {folder}: {exc}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if previous and previous != version:
            shutil.rmtree(folder / previous, ignore_errors=True)
        self._sweep(folder, keep=version)

    def _sweep(self, folder: Path, keep: str) -> None:
        """Remove leftovers of crashed writers. Only old ones: a fresh ``.tmp-`` may belong to a concurrent
        writer that has not published yet."""
        now = time.time()
        for child in folder.iterdir():
            if child.name in (keep, _CURRENT):
                continue
            stale = child.name.startswith((".tmp-", "v-", f".{_CURRENT}."))
            try:
                old = now - child.stat().st_mtime > _STALE_TMP_SECONDS
            except FileNotFoundError:
                continue
            if stale and old:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    def get(self, key: str) -> EmbeddingSet | None:
        folder = self._folder(key)
        # A concurrent writer may delete the version we just looked up; re-reading the pointer then
        # finds the newer one (writers publish before they delete); a busy writer gets a growing pause.
        for attempt in range(_READ_ATTEMPTS):
            if attempt:
                time.sleep(min(0.002 * attempt, 0.05))
            version = self._read_current(folder)
            if version is None:
                return None
            try:
                return self._load_version(folder / version)
            except FileNotFoundError:
                if self._read_current(folder) == version:
                    raise StoreError(
                        f"embedding cache {folder / version} is incomplete (files missing); "
                        f"delete it to recompute"
                    ) from None
        raise StoreError(f"embedding cache {folder} keeps changing while being read; try again")

    def _load_version(self, vdir: Path) -> EmbeddingSet:
        meta_path, items_path, vec_path = vdir / _META_FILE, vdir / _ITEMS_FILE, vdir / _VEC_FILE
        try:
            header = json.loads(meta_path.read_bytes())
            n, meta = int(header["n"]), header["meta"]
            if not isinstance(meta, dict):
                raise TypeError("meta is not an object")
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"corrupt embedding metadata {meta_path}: {exc}") from None
        try:
            raw_items = items_path.read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot read {items_path}: {exc}") from None
        ids, paths = _parse_items(raw_items, n, str(items_path))
        try:
            # Mapped, not read: a header claiming a huge shape is checked below before any allocation
            # (a file shorter than its header claims fails the mapping with a ValueError).
            vectors = np.load(vec_path, allow_pickle=False, mmap_mode="r")
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            raise StoreError(f"corrupt embedding matrix {vec_path}: {exc}") from None
        if vectors.ndim != 2 or vectors.shape[0] != n or vectors.dtype not in (np.float32, np.float16):
            raise StoreError(
                f"corrupt embedding matrix {vec_path}: shape {vectors.shape} dtype {vectors.dtype}, "
                f"expected ({n}, D) float32 or float16"
            )
        try:
            vectors = np.array(vectors)  # into memory: the file may be replaced by the next writer
        except MemoryError:
            raise StoreError(f"not enough memory for the embedding matrix {vec_path} {vectors.shape}") from None
        return _build_set(ids, paths, vectors, meta, str(vdir))

    def delete(self, key: str) -> bool:
        folder = self._folder(key)
        if not folder.exists():
            return False
        existed = (folder / _CURRENT).exists()
        try:
            # Removing the pointer first makes the key vanish atomically for readers.
            (folder / _CURRENT).unlink(missing_ok=True)
            shutil.rmtree(folder)
        except OSError as exc:
            raise StoreError(f"cannot delete {folder}: {exc}") from None
        return existed

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            try:
                version = self._read_current(folder)
                if version is None:
                    continue
                header = json.loads((folder / version / _META_FILE).read_bytes())
                out.append(str(header["key"]))
            except (StoreError, OSError, ValueError, KeyError, TypeError) as exc:
                # One broken folder must not hide the others; get() reports it properly.
                log.warning("skipping unreadable embedding cache %s: %s", folder, exc)
        return sorted(out)


# --------------------------------------------------------------------------------------------------------------
# RedisStore
# --------------------------------------------------------------------------------------------------------------


class StoreURLError(StoreError):
    """A store URL that cannot be parsed (a usage error: the CLI exits 2)."""


def _redact_url(url: str) -> str:
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
        raise StoreURLError(f"not a Redis URL: {_redact_url(url)} (expected redis://host:port/db or rediss://...)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises for 'host:notaport'
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("expected redis://[:password@]host[:port][/db]")
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"the database must be a number, got {db!r}")
    except ValueError as exc:
        raise StoreURLError(f"bad Redis URL {_redact_url(url)}: {exc}") from None


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
        self.dtype = None if dtype is None else _check_dtype(dtype)
        self._safe_url = _redact_url(url)
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
            # One line, no redis traceback: the CLI and the UI show this message as is.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"cannot {action} Redis at {self._safe_url}: {reason}") from None

    # -- key names ------------------------------------------------------------------------------------------

    def _k(self, key: str, *parts: str) -> bytes:
        return ":".join([f"{self.prefix}{key}", *parts]).encode("utf-8")

    def _index_key(self) -> bytes:
        return f"{self.prefix}__keys__".encode()

    def _version_keys(self, key: str, version: str, chunks: int) -> list[bytes]:
        return [self._k(key, "v", version, "meta"), self._k(key, "v", version, "ids")] + [
            self._k(key, "v", version, "vec", str(i)) for i in range(chunks)
        ]

    # -- API ------------------------------------------------------------------------------------------------

    def put(self, key: str, s: EmbeddingSet) -> None:
        _check_key(key)
        if not isinstance(s, EmbeddingSet):
            raise StoreError(f"put expects an EmbeddingSet, got {type(s).__name__}")
        s = _as_store_dtype(s, self.dtype)
        n, dim = s.vectors.shape
        vec = s.vectors
        chunks = -(-n // self.chunk_rows)
        version = uuid.uuid4().hex
        header = {
            "format": _FORMAT_VERSION, "key": key, "n": n, "dim": dim,
            "chunk_rows": self.chunk_rows, "chunks": chunks, "meta": s.meta, "dtype": s.dtype,
        }
        names = self._version_keys(key, version, chunks)
        with self._errors(f"write {key!r} to"):
            pipe = self._r.pipeline(transaction=False)
            pipe.set(names[0], json.dumps(header).encode("utf-8"), ex=self.pending_ttl_s)
            pipe.set(names[1], _items_payload(s), ex=self.pending_ttl_s)
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
            tx = self._r.pipeline(transaction=True)
            tx.set(self._k(key, "current"), version.encode("ascii"), get=True)
            tx.sadd(self._index_key(), key.encode("utf-8"))
            for name in names:
                tx.persist(name)
            results = tx.execute()
        previous = results[0].decode("ascii", "replace") if results[0] else None
        if previous and previous != version:
            self._drop_version(key, previous)

    def _drop_version(self, key: str, version: str) -> None:
        with self._errors(f"clean up an old version of {key!r} in"):
            raw = self._r.get(self._k(key, "v", version, "meta"))
            chunks = 0
            if raw is not None:
                try:
                    chunks = int(json.loads(raw)["chunks"])
                except (ValueError, TypeError, KeyError):
                    log.warning("old version %s of %r has corrupt metadata; removing what is known", version, key)
            # One DEL is atomic, so a reader's MULTI sees the old version whole or not at all.
            self._r.delete(*self._version_keys(key, version, chunks))

    def get(self, key: str) -> EmbeddingSet | None:
        _check_key(key)
        where = f"{self._safe_url} key {key!r}"
        with self._errors(f"read {key!r} from"):
            for attempt in range(_READ_ATTEMPTS):
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
                    header = json.loads(raw_meta)
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
                tx = self._r.pipeline(transaction=True)
                for name in self._version_keys(key, version, chunks)[1:]:
                    tx.get(name)
                values = tx.execute()
                if any(v is None for v in values):
                    if self._r.get(self._k(key, "current")) == version.encode("ascii"):
                        raise StoreError(f"incomplete embedding set at {where} (keys evicted or flushed?); rebuild "
                                         f"it with `python -m mildnet embed ... --rebuild` (or delete the key)")
                    continue
                ids, paths = _parse_items(values[0], n, where)
                blob = b"".join(values[1:])
                raw_dtype = _HALF if dtype == "float16" else np.dtype("<f4")
                if len(blob) != n * dim * raw_dtype.itemsize:
                    raise StoreError(
                        f"corrupt embedding matrix at {where}: {len(blob)} bytes, expected {n}x{dim} {dtype}"
                    )
                # frombuffer views the joined bytes read-only; the set gets its own writable array.
                vectors = np.frombuffer(blob, dtype=raw_dtype).reshape(n, dim).copy()
                return _build_set(ids, paths, vectors, meta, where)
        raise StoreError(f"embedding set {key!r} at {self._safe_url} keeps changing while being read; try again")

    def delete(self, key: str) -> bool:
        _check_key(key)
        with self._errors(f"delete {key!r} from"):
            tx = self._r.pipeline(transaction=True)
            tx.getdel(self._k(key, "current"))
            tx.srem(self._index_key(), key.encode("utf-8"))
            previous, _ = tx.execute()
        if previous is None:
            return False
        self._drop_version(key, previous.decode("ascii", "replace"))
        return True

    def keys(self) -> list[str]:
        with self._errors("list keys in"):
            members = self._r.smembers(self._index_key())
        return sorted(m.decode("utf-8") for m in members)


# --------------------------------------------------------------------------------------------------------------
# open_store
# --------------------------------------------------------------------------------------------------------------


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
        raise StoreURLError(f"unsupported store {_redact_url(spec)!r}: use a folder path or a redis:// / rediss:// URL")
    return LocalStore(spec, dtype=dtype)
