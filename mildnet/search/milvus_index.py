"""The ``milvus`` index back end: candidates from a Milvus collection, exact cosines from the stored set.

One code path for both kinds of Milvus: milvus-lite (a local ``.db`` file, by default ``milvus.db`` in the data
home: tests and demos; measured at ~240 ms a single query at 100k rows, so a stand-in for the client code, not
an embedded engine) and a Milvus Standalone/Distributed server (``uri="http://host:port"``, which
``milvus://host:port`` becomes in :func:`mildnet.search.index.parse_index_spec`).

The collection holds each row's number (primary key), its unit vector (HNSW, inner product) and, when the
catalogue's ``rows`` are given, one text field per table column (values trimmed and case-folded, as the
catalogue's filters compare them), so a filter such as ``{"category": "dress"}`` runs inside Milvus as an
expression. The set is inserted only when the collection does not already hold exactly this set: a fingerprint of
the ids, vectors, columns and index settings is kept in the collection's properties. Candidates come back with a
margin and are re-scored exactly as :class:`~mildnet.search.searcher.Searcher` does, so scores are true cosines.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mildnet import home
from mildnet.errors import DataError
from mildnet.search.faiss_index import RescoredIndex
from mildnet.search.searcher import check_positive_int
from mildnet.store import EmbeddingSet

__all__ = ["MilvusIndex", "default_uri"]

_MARGIN = 8
# Milvus refuses a search whose limit exceeds this (its topk cap); larger asks are answered by an exact scan.
_MAX_LIMIT = 16_384
# Row lists written into an expression (`row in [...]`) up to this many; beyond, results are post-filtered.
_MAX_LISTED = 4_096
_MAX_VARCHAR = 65_535
_FINGERPRINT = "mildnet.fingerprint"
_COLUMNS = "mildnet.columns"
_CREATED = "mildnet.created"


def default_uri() -> str:
    """milvus-lite's file in the data home (``$MILDNET_HOME/milvus.db``)."""
    return str(home.data_home() / "milvus.db")


def _client_uri(uri: str | None) -> str:
    text = (uri or "").strip() or default_uri()
    if text.startswith("milvus://"):
        return "http://" + text[len("milvus://"):].strip("/")
    if text.startswith(("http://", "https://", "tcp://", "unix:")):
        return text
    if not text.endswith(".db"):
        raise ValueError(f"uri must be a milvus-lite file ending in .db, http(s)://HOST:PORT or milvus://HOST:PORT; "
                         f"got {text!r}")
    Path(text).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return str(Path(text).expanduser())


def _norm(value: Any) -> str:
    """A table value as the catalogue's filters compare it (trimmed, case-folded text)."""
    return str(value).strip().casefold()


def _literal(values: Iterable[str]) -> str:
    """A Milvus list literal of strings (JSON's escaping is what Milvus' expression parser reads)."""
    return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


class MilvusIndex(RescoredIndex):
    """Top-k cosine neighbours among ``embeddings`` through a Milvus collection.

    ``uri``: a milvus-lite ``.db`` file (default: ``milvus.db`` in the data home), ``http://host:port`` or
    ``milvus://host:port`` (a server); ``token``/``db_name``: the server's credentials and database.
    ``collection``: its name (default: the set's dataset and model fingerprint, and a version named after
    the set's content, so each catalogue and model has its own and an update never changes rows under a
    reader). ``rows``: id -> {column: value} (the catalogue's table, as
    :meth:`Catalogue.rows` gives it) for filters run inside Milvus; ``columns``: which of its columns to keep
    (default all). ``M``/``ef_construction``: the HNSW graph, ``ef_search``: the query's width (raised to
    the candidates asked when larger); ``batch_size``: rows a single insert. Results, exclusions,
    ``allowed`` and ``k`` larger than the set behave as :meth:`Searcher.query` documents.
    """

    def __init__(self, embeddings: EmbeddingSet, uri: str | None = None, *, collection: str | None = None,
                 rows: Mapping[str, Mapping[str, Any]] | None = None, columns: Sequence[str] | None = None,
                 M: int = 32, ef_construction: int = 80, ef_search: int = 64, batch_size: int = 5_000,
                 token: str | None = None, db_name: str | None = None, timeout: float | None = 30.0) -> None:
        self.M = check_positive_int("M", M)
        self.ef_construction = check_positive_int("ef_construction", ef_construction)
        self.ef_search = check_positive_int("ef_search", ef_search)
        self.batch_size = check_positive_int("batch_size", batch_size)
        if collection is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", str(collection)):
            raise ValueError(f"collection must be letters, digits and underscores (not starting with a digit), "
                             f"got {collection!r}")
        if isinstance(columns, str):
            raise ValueError("columns must be a list of column names, not one string")
        super().__init__(embeddings)
        try:
            from pymilvus import DataType, MilvusClient
            from pymilvus.exceptions import MilvusException
        except ImportError as exc:
            raise DataError(f"the 'milvus' index needs the pymilvus package (pip install pymilvus milvus-lite): "
                            f"{exc}") from None
        self._errors = (MilvusException,)
        self.uri = _client_uri(uri)
        self._fields, self._codes = self._table(rows, columns)
        self._named = collection is not None
        self.collection = collection or self._default_name()
        options = {"uri": self.uri, "timeout": timeout}
        if token:
            options["token"] = token
        if db_name:
            options["db_name"] = db_name
        try:
            self._client = MilvusClient(**options)
            self.inserted = self._sync(DataType)
        except self._errors as exc:
            raise DataError(f"Milvus at {self._where()} failed: {exc}") from None

    def __repr__(self) -> str:
        return (f"MilvusIndex(n={len(self)}, dim={self.dim}, uri={self._where()!r}, collection={self.collection!r}, "
                f"columns={list(self._fields)})")

    def _where(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.uri)  # never a password in a message

    def close(self) -> None:
        self._client.close()

    # -- the collection -------------------------------------------------------------------------------------

    def _table(self, rows, columns) -> tuple[dict[str, str], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """column -> field name, and column -> (its distinct normalised values, each set row's value number):
        numbers, so checking a filter against the engine's mask stays a vector operation at a million rows."""
        if rows is None:
            if columns:
                raise ValueError("columns needs rows (the catalogue's table) to take the values from")
            return {}, {}
        if not isinstance(rows, Mapping):
            raise ValueError(f"rows must map each id to its table row, got {type(rows).__name__}")
        present = sorted({c for r in rows.values() for c in r})
        if columns is not None:
            unknown = sorted(set(columns) - set(present))
            if unknown:
                raise ValueError(f"columns {unknown} are not in rows (they have: {', '.join(present) or 'none'})")
            present = sorted(set(columns))
        fields, codes = {}, {}
        for i, column in enumerate(present):
            values = [_norm(rows.get(item, {}).get(column, "")) for item in self.embeddings.ids]
            distinct, number = np.unique(np.array(values, dtype=object), return_inverse=True)
            if max((len(v.encode()) for v in distinct), default=0) > _MAX_VARCHAR:
                continue  # longer than Milvus text fields hold: filters on it use the engine's mask
            fields[column] = f"c{i}_" + re.sub(r"\W", "_", column.encode("ascii", "replace").decode())[:40]
            codes[column] = (distinct, number.astype(np.int32))
        return fields, codes

    def _fingerprint(self) -> str:
        settings = {"M": self.M, "ef_construction": self.ef_construction, "fields": self._fields, "version": 1}
        extra = []
        for column in self._fields:
            distinct, number = self._codes[column]
            extra += [json.dumps(distinct.tolist(), ensure_ascii=False).encode(), number.tobytes()]
        return self._digest(settings, *extra)

    def _default_name(self) -> str:
        meta = self.embeddings.meta
        dataset = re.sub(r"\W", "_", str(meta.get("dataset") or "set"))[:60]
        model = re.sub(r"\W", "", self.embeddings.model_fingerprint)[:16] or "nomodel"
        return f"mildnet_{dataset}_{model}"

    def _sync(self, DataType) -> bool:
        """Make the collection hold this set; True when it had to be (re)filled.

        Default names carry the set's fingerprint (``<catalogue>_<model>_v<fingerprint>``): an updated catalogue
        fills a new collection while queries (this process's previous state, other servers) still read the
        old one with the row numbers of the set they hold; once the new one is filled, versions older than the
        one it replaces are dropped. A name given as ``collection`` is refilled in place."""
        client = self._client
        fingerprint = self._fingerprint()
        base = self.collection
        name = base if self._named else f"{base}_v{fingerprint[:16]}"
        if client.has_collection(name):
            properties = client.describe_collection(name).get("properties") or {}
            if properties.get(_FINGERPRINT) == fingerprint:
                self.collection = name
                client.load_collection(name)
                return False
            client.drop_collection(name)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        for column, field in self._fields.items():
            longest = max((len(v.encode()) for v in self._codes[column][0]), default=0)
            schema.add_field(field, DataType.VARCHAR, max_length=max(1, longest))
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                        params={"M": self.M, "efConstruction": self.ef_construction})
        # The fingerprint is written last: a collection filled half-way (a crash) is refilled next time.
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                                 properties={_COLUMNS: json.dumps(self._fields), _CREATED: repr(time.time())})
        x = self.embeddings.vectors
        for a in range(0, len(x), self.batch_size):
            block = x[a:a + self.batch_size].astype(np.float32)
            block *= self._inv_norms[a:a + len(block), None].astype(np.float32)
            data = [{"row": a + i, "vector": block[i]} for i in range(len(block))]
            for column, field in self._fields.items():
                distinct, number = self._codes[column]
                for i, value in enumerate(distinct[number[a:a + len(block)]]):
                    data[i][field] = value
            client.insert(name, data)
        client.flush(name)
        client.alter_collection_properties(name, properties={_FINGERPRINT: fingerprint})
        client.load_collection(name)
        self.collection = name
        if not self._named:
            self._drop_old_versions(base, keep=name)
        return True

    def _drop_old_versions(self, base: str, keep: str) -> None:
        """Drops versions of ``base`` older than the newest one besides ``keep`` (which may still be read)."""
        client = self._client
        versions = []
        for other in client.list_collections():
            if other != keep and re.fullmatch(re.escape(base) + r"_v[0-9a-f]{16}", other):
                properties = client.describe_collection(other).get("properties") or {}
                versions.append((float(properties.get(_CREATED, 0) or 0), other))
        for _, other in sorted(versions)[:-1]:
            client.drop_collection(other)

    # -- queries --------------------------------------------------------------------------------------------

    def _filter_mask(self, filters: Mapping[str, Any]) -> np.ndarray:
        """The rows passing ``filters`` by the collection's own values (as the catalogue's mask compares)."""
        if any(column not in self._fields for column in filters):
            return super()._filter_mask(filters)
        keep = np.ones(len(self), bool)
        for column, wanted in filters.items():
            distinct, number = self._codes[column]
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            position = {v: i for i, v in enumerate(distinct.tolist())}
            keep &= np.isin(number, [position[v] for v in {_norm(v) for v in values} if v in position])
        return keep

    def _prepare(self, filters, mask: np.ndarray | None) -> str | None:
        """The column expression of ``filters`` when it selects exactly ``mask``; else None."""
        if not filters or mask is None or any(column not in self._fields for column in filters):
            return None
        if not np.array_equal(self._filter_mask(filters), mask):
            return None
        parts = []
        for column, wanted in filters.items():
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            parts.append(f"{self._fields[column]} in {_literal(sorted({_norm(v) for v in values}))}")
        return " and ".join(parts)

    def _candidates(self, q32: np.ndarray, k: int, keep: np.ndarray | None, n_keep: int, excluded: np.ndarray,
                    base: str | None) -> list[np.ndarray]:
        """Milvus' candidate rows for each query: k plus a margin (more where results are post-filtered)."""
        n = len(self)
        limit = k + _MARGIN
        if limit > _MAX_LIMIT:
            return self._scan(q32, np.arange(n) if keep is None else np.flatnonzero(keep), k)
        parts = [] if base is None else [f"({base})"]
        post = None
        if base is None and keep is not None:
            blocked = n - n_keep
            if n_keep <= _MAX_LISTED:
                parts.append(f"row in {np.flatnonzero(keep).tolist()}")
            elif blocked <= _MAX_LISTED:
                parts.append(f"row not in {np.flatnonzero(~keep).tolist()}")
            else:
                # Too many rows either way to list: over-fetch in proportion and filter here.
                post = keep
                limit = min(_MAX_LIMIT, int(np.ceil(limit * n / n_keep)))
        elif len(excluded):
            parts.append(f"row not in {np.asarray(excluded).tolist()}")
        limit = min(limit, _MAX_LIMIT)
        try:
            result = self._client.search(
                self.collection, data=list(q32), limit=limit, filter=" and ".join(parts), output_fields=["row"],
                search_params={"metric_type": "IP", "params": {"ef": max(self.ef_search, limit)}})
        except self._errors as exc:
            raise DataError(f"Milvus at {self._where()} failed: {exc}") from None
        out = []
        for hits in result:
            found = np.array([int(h["row"]) for h in hits], dtype=np.intp)
            out.append(found if post is None else found[post[found]])
        return out
