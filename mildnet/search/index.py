"""Index back ends: how the engine finds the top k of a stored set. One file per back end, named here.

``exact`` (:class:`~mildnet.search.searcher.Searcher`: BLAS matmul + argpartition + float64 re-scoring) is the
reference and the default; an approximate back end (faiss, Milvus) is one more module with a class built from an
:class:`~mildnet.store.EmbeddingSet` that answers :meth:`Index.query` with the same :class:`Hit` lists, and one
more line in :data:`INDEXES`. Back ends are imported when chosen, so an optional engine's package is needed only
by those who use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from mildnet.errors import DataError
from mildnet.search.searcher import Hit
from mildnet.store import EmbeddingSet

__all__ = ["DEFAULT_INDEX", "INDEXES", "Index", "build_index", "index_names", "parse_index_spec"]

DEFAULT_INDEX = "exact"

# name -> "module:class"; the class is called with the stored set and the back end's options.
INDEXES: dict[str, str] = {
    "exact": "mildnet.search.searcher:Searcher",
    "faiss": "mildnet.search.faiss_index:FaissIndex",
    "milvus": "mildnet.search.milvus_index:MilvusIndex",
}


@runtime_checkable
class Index(Protocol):
    """What the engine asks of a back end (Searcher's interface): top-k cosine hits per query vector, best first;
    ``exclude_ids`` one list for all queries or one per query; ``allowed`` a boolean mask over the set's rows."""

    embeddings: EmbeddingSet

    def __len__(self) -> int: ...

    def query(self, vectors: np.ndarray, k: int = 5,
              exclude_ids: Iterable[str] | Sequence[Iterable[str] | None] | None = None, *,
              allowed: np.ndarray | None = None) -> list[list[Hit]]: ...


def index_names() -> list[str]:
    return list(INDEXES)


def build_index(name: str, embeddings: EmbeddingSet, **options) -> Index:
    """The back end ``name`` over ``embeddings``; DataError naming the choices for an unknown one."""
    if name not in INDEXES:
        raise DataError(f"unknown index {name!r}; choose one of: {', '.join(INDEXES)}")
    module, _, attribute = INDEXES[name].partition(":")
    try:
        factory = getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        raise DataError(f"the {name!r} index needs a package that is not installed: {exc}") from None
    return factory(embeddings, **options)


def parse_index_spec(spec: str | None) -> tuple[str, dict]:
    """``(back end name, its options)`` from what a user writes: a name (``exact``, ``faiss``, ``milvus``), or
    ``milvus://host:port`` for a Milvus server (the same back end, pointed at it); empty: the default."""
    text = (spec or "").strip()
    if not text:
        return DEFAULT_INDEX, {}
    if "://" in text:
        scheme, _, address = text.partition("://")
        if scheme.lower() != "milvus" or not address.strip("/"):
            raise DataError(f"unknown index address {text!r}: a server index is written milvus://HOST:PORT")
        return "milvus", {"uri": "http://" + address.strip("/")}
    if text not in INDEXES:
        raise DataError(f"unknown index {text!r}; choose one of: {', '.join(INDEXES)} (or milvus://HOST:PORT)")
    return text, {}
