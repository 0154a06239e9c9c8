"""The catalog's embedding matrix with the ids/paths its rows belong to: :class:`EmbeddingSet`.

One container for every embedding matrix: a cached catalogue (with the metadata that says which model and
catalog produced it), a search's gallery and an evaluation's embedded triplet images
(:meth:`EmbeddingSet.from_paths`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mildnet.errors import DataError

HALF = np.dtype("<f2")
DTYPES = ("float32", "float16")


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(eq=False)
class EmbeddingSet:
    """Row-aligned ``ids``, ``paths`` and float32 (or float16) ``vectors`` (N, D) plus JSON-serialisable ``meta``.

    ``meta`` always ends up holding ``model_fingerprint``, ``catalog_fingerprint`` (``""`` when unknown),
    ``dim`` (= D) and ``created`` (ISO-8601 UTC); any other JSON-serialisable entries are kept as they are.
    float16 vectors stay float16 (half the memory; see :meth:`astype` and the stores' ``dtype`` option);
    other floating precisions are converted to float32. Non-float or non-finite vectors are refused,
    because a NaN row would silently poison every cosine search (``check_finite=False``, for
    :meth:`from_paths` only, lets an evaluation score a diverged model's outputs instead).
    """

    ids: list[str]
    paths: list[str]
    vectors: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)
    _: dataclasses.KW_ONLY
    check_finite: dataclasses.InitVar[bool] = True

    def __post_init__(self, check_finite: bool) -> None:
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
        self.vectors = np.ascontiguousarray(vec, dtype=HALF if vec.dtype == np.float16 else np.float32)
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
        for a in range(0, n if check_finite else 0, step):
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

    @classmethod
    def from_paths(cls, paths: Sequence[str], vectors: np.ndarray, meta: dict | None = None) -> EmbeddingSet:
        """An in-memory set keyed by image path (``ids`` = ``paths``), as evaluation and training build it.

        Its vectors are not checked for NaN: a diverged model's validation then scores 0 (a NaN distance
        is never smaller) instead of stopping the training run that measures it.
        """
        paths = list(paths)
        return cls(paths, paths, vectors, dict(meta or {}), check_finite=False)

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
        name = check_dtype(dtype)
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

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """The vectors of ``ids`` in that order (an id may repeat): what evaluation and training index by.

        An unknown id raises KeyError naming it: the caller embedded the wrong images, a bug rather than bad
        user data (which :meth:`rows_of` reports as DataError).
        """
        index = self.index
        try:
            return self.vectors[[index[i] for i in ids]]
        except KeyError as exc:
            raise KeyError(f"no embedding for image {exc.args[0]!r}") from None

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
        return self._take(rows, meta)

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
        return self._take(rows, meta)

    def _take(self, rows: np.ndarray, meta: dict | None) -> EmbeddingSet:
        """The set of ``rows`` in that order, with ``meta`` over this set's meta."""
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


def _dtype_name(dtype: Any) -> str:
    return "float16" if np.dtype(dtype) == np.float16 else "float32"


def check_dtype(dtype: Any) -> str:
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
