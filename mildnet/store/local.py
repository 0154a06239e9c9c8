"""A folder of embedding sets on the local disk: :class:`LocalStore`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from mildnet import locks, safe_json
from mildnet.data.staging import process_alive as _process_alive
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
from mildnet.store.embedding_set import EmbeddingSet, check_dtype

log = logging.getLogger(__name__)

_CURRENT = "CURRENT"
_VEC_FILE = "vectors.npy"
_META_FILE = "meta.json"
_ITEMS_FILE = "items.json"
_STALE_TMP_SECONDS = 3600.0
_LOCK = ".publish.lock"


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
        self.dtype = None if dtype is None else check_dtype(dtype)

    def describe(self) -> str:
        return f"local store at {self.root}"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- layout ---------------------------------------------------------------------------------------------

    def _folder(self, key: str) -> Path:
        check_key(key)
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
        s = as_store_dtype(s, self.dtype)
        version = f"v-{uuid.uuid4().hex}"
        # The pid lets the next writer remove this folder at once if we are killed mid-write.
        tmp = folder / f".tmp-{os.getpid()}-{version[2:]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            with open(tmp / _VEC_FILE, "wb") as fh:
                np.save(fh, s.vectors, allow_pickle=False)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            self._write_file(tmp / _ITEMS_FILE, items_payload(s))
            header = {"format": FORMAT_VERSION, "key": key, "n": len(s), "meta": s.meta}
            self._write_file(tmp / _META_FILE, json.dumps(header, indent=1, ensure_ascii=False).encode("utf-8"))
            # Read-the-pointer-then-replace-it is one step for concurrent writers: without the lock two of them
            # read the same previous version, and the one that publishes first is never removed (305 orphaned
            # versions after 1,143 concurrent puts). Readers take no lock.
            with locks.exclusive(folder / _LOCK):  # held for a read and two renames: microseconds
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
            writer = re.match(r"\.tmp-(\d+)-", child.name)
            try:
                old = now - child.stat().st_mtime > _STALE_TMP_SECONDS
            except FileNotFoundError:
                continue
            if writer and not _process_alive(int(writer.group(1))):
                old = True  # its writer is gone (killed): no need to wait the hour
            if stale and old:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    def get(self, key: str) -> EmbeddingSet | None:
        folder = self._folder(key)
        # A concurrent writer may delete the version we just looked up; re-reading the pointer then
        # finds the newer one (writers publish before they delete); a busy writer gets a growing pause.
        for attempt in range(READ_ATTEMPTS):
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
            header = safe_json.loads(meta_path.read_bytes())
            check_format(header, str(meta_path))
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
        ids, paths = parse_items(raw_items, n, str(items_path))
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
        return build_set(ids, paths, vectors, meta, str(vdir))

    def put_document(self, key: str, name: str, document: dict) -> None:
        path = self._folder(key) / f"{check_document_name(name)}.json"
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.json")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_file(tmp, json.dumps(document, indent=1).encode("utf-8"))
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def get_document(self, key: str, name: str) -> dict | None:
        path = self._folder(key) / f"{check_document_name(name)}.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
        return parse_document(raw, str(path))

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
                header = safe_json.loads((folder / version / _META_FILE).read_bytes())
                out.append(str(header["key"]))
            except (StoreError, OSError, ValueError, KeyError, TypeError) as exc:
                # One broken folder must not hide the others; get() reports it properly.
                log.warning("skipping unreadable embedding cache %s: %s", folder, exc)
        return sorted(out)
