"""The ``faiss`` index back end: approximate candidates from a faiss index, exact cosines from the stored set.

faiss finds a few candidates more than asked (HNSW graph, or IVF-PQ codes for catalogues whose float32 matrix
should not be duplicated); each candidate is then re-scored exactly as :class:`~mildnet.search.searcher.Searcher`
does (float64, one pair at a time, from the stored vectors), so scores are true cosines, equal to the exact back
end's bit for bit, and the order is exact search's wherever faiss found the right candidates. Filters (the
engine's ``allowed`` mask) and a query's excluded ids go into faiss as an ID selector, so a filtered query
still gets ``k`` hits; a filter that leaves few rows is answered by scanning those rows exactly (a graph walk
through a sparse filter is both slower and less complete than the scan).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from mildnet import home
from mildnet.errors import DataError
from mildnet.search.searcher import Hit, Searcher, check_positive_int
from mildnet.store import EmbeddingSet

__all__ = ["KINDS", "FaissIndex", "RescoredIndex"]

KINDS = ("hnsw", "ivfpq")
# Candidates taken beyond k before the exact re-scoring: neighbours that faiss ranks just below the k-th
# (rounding in its float32 or PQ scores) still get their exact score.
_MARGIN = 8
# Queries with their own excluded ids, up to this many each, share one index call (over-fetching by that many).
_BATCHED_EXCLUSIONS = 64


def _positive(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    return check_positive_int(name, value)


class RescoredIndex(Searcher):
    """What the approximate back ends share: :meth:`Searcher.query`'s contract (checks, exclusions, ``allowed``,
    ``k`` beyond the set) over candidates that a subclass's :meth:`_candidates` finds, re-scored exactly with
    :meth:`Searcher._exact_scores` and ordered as exact search orders them (score, then row). A query whose
    candidates come back short of ``k`` (a filter the index could not get through) is answered by an exact
    scan of the rows it may return, so it gets fewer than ``k`` hits only when fewer rows are allowed."""

    def query(
        self,
        vectors: np.ndarray,
        k: int = 5,
        exclude_ids: Iterable[str] | Sequence[Iterable[str] | None] | None = None,
        *,
        allowed: np.ndarray | None = None,
        filters: Mapping[str, str | Sequence[str]] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each query vector, as :meth:`Searcher.query`; scores are exact cosines, which rows
        make the top ``k`` is the index's answer. ``filters``: the catalogue filter that made ``allowed``
        (column -> value or values), for a back end that can run it itself."""
        k = check_positive_int("k", k)
        q = self._check_vectors(vectors)
        n = len(self)
        excluded = self._exclusions(exclude_ids, len(q))
        mask = None
        if allowed is not None:
            mask = self._check_mask(allowed)
        elif filters:
            mask = self._filter_mask(filters)
        context = self._prepare(filters, mask)
        q64, q32 = self._unit_queries(q)

        # One exclusion list for every query (a product page): one index call that leaves it out. A few ids per
        # query (a batch of product pages): one call asking for that many more, each query's own dropped after.
        empty = np.zeros(0, dtype=np.intp)
        longest = max(len(ex) for ex in excluded)
        if all(ex is excluded[0] for ex in excluded):
            groups = [(np.arange(len(q)), excluded[0], 0)]
        elif mask is None and longest <= _BATCHED_EXCLUSIONS:
            groups = [(np.arange(len(q)), empty, longest)]
        else:
            groups = [(np.array([r]), ex, 0) for r, ex in enumerate(excluded)]
        out: list[list[Hit]] = [[] for _ in range(len(q))]
        for rows, ex, extra in groups:
            keep = None
            if mask is not None or len(ex):
                keep = np.ones(n, bool) if mask is None else mask.copy()
                keep[ex] = False
            n_keep = n if keep is None else int(np.count_nonzero(keep))
            if n_keep == 0:
                continue
            # Asked for everything: a scan is both exact and no slower.
            if k + extra >= n_keep:
                candidates = self._scan(q32[rows], np.arange(n) if keep is None else np.flatnonzero(keep),
                                        k + extra)
            else:
                candidates = self._candidates(q32[rows], k + extra, keep, n_keep, ex, context)
            for i, r in enumerate(rows):
                own_keep, cand = keep, candidates[i]
                if extra:
                    own_keep = np.ones(n, bool)
                    own_keep[excluded[r]] = False
                    cand = cand[own_keep[cand]]
                n_own = n if own_keep is None else int(np.count_nonzero(own_keep))
                hits = self._rank(q64, r, cand, k)
                if len(hits) < min(k, n_own):
                    allowed_rows = np.arange(n) if own_keep is None else np.flatnonzero(own_keep)
                    hits = self._rank(q64, r, self._scan(q32[r:r + 1], allowed_rows, k)[0], k)
                out[r] = hits
        return out

    def _digest(self, settings: Mapping[str, Any], *extra: bytes) -> str:
        """sha256 of the index settings, the set's ids and vector bytes (and ``extra``): what a kept index (a
        file, a collection) must match to be reused for this set."""
        h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode())
        h.update(json.dumps(self.embeddings.ids).encode())
        x = self.embeddings.vectors
        h.update(str(x.dtype).encode())
        step = max(1, (16 << 20) // max(1, x.strides[0]))
        for a in range(0, len(x), step):
            h.update(memoryview(x[a:a + step]).cast("B"))
        for part in extra:
            h.update(part)
        return h.hexdigest()

    def _filter_mask(self, filters: Mapping[str, Any]) -> np.ndarray:
        raise DataError(f"filters on {', '.join(filters)} need an allowed mask (the catalogue's filter of the rows)")

    def _prepare(self, filters, mask: np.ndarray | None) -> Any:
        """What every group of this query shares (e.g. a filter expression); None by default."""
        return None

    def _candidates(self, q32: np.ndarray, k: int, keep: np.ndarray | None, n_keep: int, excluded: np.ndarray,
                    context: Any) -> list[np.ndarray]:
        """Candidate rows for each query (more than ``k``, within ``keep`` when given)."""
        raise NotImplementedError

    def _scan(self, q32: np.ndarray, rows: np.ndarray, k: int) -> list[np.ndarray]:
        """Candidates among ``rows`` by a float32 scan: every row within the float32 error bound of the k-th."""
        x = self.embeddings.vectors
        scores = np.empty((len(q32), len(rows)), dtype=np.float32)
        for a in range(0, len(rows), self._upcast_rows):
            r = rows[a:a + self._upcast_rows]
            scores[:, a:a + len(r)] = (x[r].astype(np.float32) @ q32.T).T * self._inv_norms[r].astype(np.float32)
        kk = min(k, len(rows))
        kth = -np.partition(-scores, kk - 1, axis=1)[:, kk - 1]
        thr = kth - np.float32(2.0 * self._tol)
        return [rows[scores[i] >= thr[i]] for i in range(len(q32))]

    def _rank(self, q64: np.ndarray, r: int, candidates: np.ndarray, k: int) -> list[Hit]:
        cand = np.unique(candidates).astype(np.intp)
        if not len(cand):
            return []
        score = self._exact_scores(q64, np.full(len(cand), r, dtype=np.intp), cand)
        order = np.lexsort((cand, -score))[:k]
        ids, paths = self.embeddings.ids, self.embeddings.paths
        return [Hit(ids[j], paths[j], float(score[o])) for o, j in zip(order, cand[order].tolist())]


class FaissIndex(RescoredIndex):
    """Top-k cosine neighbours among ``embeddings`` through a faiss index (``kind="hnsw"`` or ``"ivfpq"``).

    HNSW (``IndexHNSWFlat``, inner product on the unit rows): ``M`` graph links a node (memory ~ (D*4 + M*8)
    bytes a row), ``ef_construction`` the build's search width, ``ef_search`` the query's (more: better
    recall, slower; raised to the candidates asked when that is larger).

    IVF-PQ (``IndexIVFPQ``): ``nlist`` coarse cells (default ~4 sqrt(N), at least 39 training rows a cell),
    ``pq_m`` sub-quantisers of ``nbits`` bits (default nbits 8, fewer for sets under 10k rows, and D bits a
    row: 32 bytes at 256-d),
    ``nprobe`` cells visited a query (default 16), ``rerank`` candidates a hit re-scored exactly (default
    32: PQ scores are coarse); trained on at most ``train_size`` rows picked with ``seed``.

    ``exact_below``: a filter (``allowed``) leaving at most this many rows is answered by an exact scan of those
    rows. ``threads``: faiss' OpenMP threads, a process-wide setting (default: faiss' own, all cores).
    ``cache``: keep the built index in ``cache_dir`` (default ``faiss/`` in the data home; faiss' own file
    format), named after a fingerprint of the set and the build settings, so the next process opening the same
    set reads it instead of building (a 1M-row HNSW graph takes minutes); older files of the same catalogue,
    model and kind are removed.

    Results, exclusions, ``allowed`` and ``k`` larger than the set behave as :meth:`Searcher.query` documents;
    scores are exact cosines.
    """

    def __init__(self, embeddings: EmbeddingSet, kind: str = "hnsw", *, M: int = 32, ef_construction: int = 80,
                 ef_search: int = 64, nlist: int | None = None, pq_m: int | None = None, nbits: int | None = None,
                 nprobe: int | None = None, rerank: int | None = None, train_size: int = 100_000, seed: int = 0,
                 exact_below: int = 20_000, threads: int | None = None, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
        ivf_only = {"nlist": nlist, "pq_m": pq_m, "nbits": nbits, "nprobe": nprobe, "rerank": rerank}
        if kind == "hnsw":
            given = [name for name, value in ivf_only.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} apply to kind='ivfpq' only (this index is kind='hnsw')")
        self.M = _positive("M", M)
        self.ef_construction = _positive("ef_construction", ef_construction)
        self.ef_search = _positive("ef_search", ef_search)
        self.train_size = _positive("train_size", train_size)
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(exact_below, bool) or not isinstance(exact_below, Integral) or exact_below < 0:
            raise ValueError(f"exact_below must be a non-negative integer, got {exact_below!r}")
        self.exact_below = int(exact_below)
        self.threads = _positive("threads", threads, allow_none=True)
        if not isinstance(cache, bool):
            raise ValueError(f"cache must be True or False, got {cache!r}")
        self.cache_dir = (Path(cache_dir) if cache_dir is not None else home.data_home() / "faiss") if cache else None
        super().__init__(embeddings)
        try:
            import faiss
        except ImportError as exc:
            raise DataError(f"the 'faiss' index needs the faiss-cpu package (pip install faiss-cpu): {exc}") from None
        self._faiss = faiss
        if self.threads is not None:
            faiss.omp_set_num_threads(self.threads)
        n, dim = len(self), self.dim
        self.kind = kind
        if kind == "ivfpq":
            self.nlist = _positive("nlist", nlist, allow_none=True) or int(min(max(1, n // 39),
                                                                              max(1, round(4 * math.sqrt(n)))))
            if self.nlist > n:
                raise ValueError(f"nlist must be at most the number of rows ({n}), got {self.nlist}")
            # A sub-quantiser of b bits has 2**b centroids; faiss' k-means wants 39 training rows a centroid.
            self.nbits = _positive("nbits", nbits, allow_none=True) or int(max(1, min(8, math.log2(max(2, n / 39)))))
            if self.nbits > 16:
                raise ValueError(f"nbits must be between 1 and 16, got {self.nbits}")
            if 2 ** self.nbits > n:
                raise ValueError(f"nbits={self.nbits} needs at least {2 ** self.nbits} rows to train, the set has {n}")
            # Codes of D bits a row (D/8 bytes: 32 at 256-d), whatever nbits a small set allows.
            target = max(1, dim // self.nbits)
            default_m = max(m for m in range(1, target + 1) if dim % m == 0)
            self.pq_m = _positive("pq_m", pq_m, allow_none=True) or default_m
            if dim % self.pq_m:
                raise ValueError(f"pq_m must divide the embedding dimension {dim}, got {self.pq_m}")
            self.nprobe = min(self.nlist, _positive("nprobe", nprobe, allow_none=True) or 16)
            # PQ scores are coarse; re-scoring a few hundred rows exactly costs tens of microseconds.
            self.rerank = _positive("rerank", rerank, allow_none=True) or 32
        self.seed = int(seed)
        self._index, self.loaded_from = self._load_or_build()

    def __repr__(self) -> str:
        if self.kind == "hnsw":
            detail = f"M={self.M}, ef_construction={self.ef_construction}, ef_search={self.ef_search}"
        else:
            detail = f"nlist={self.nlist}, pq_m={self.pq_m}, nbits={self.nbits}, nprobe={self.nprobe}"
        return (f"FaissIndex(n={len(self)}, dim={self.dim}, dtype={self.embeddings.vectors.dtype}, "
                f"kind={self.kind!r}, {detail})")

    # -- building -------------------------------------------------------------------------------------------

    def _unit_blocks(self, rows: np.ndarray | None = None):
        """The rows as unit float32 vectors, a block at a time (a float16 set is never upcast whole)."""
        x = self.embeddings.vectors
        rows = np.arange(len(x)) if rows is None else rows
        for a in range(0, len(rows), self._upcast_rows):
            r = rows[a:a + self._upcast_rows]
            block = x[r].astype(np.float32)
            block *= self._inv_norms[r, None].astype(np.float32)
            yield block

    def _settings(self) -> dict:
        if self.kind == "hnsw":
            return {"kind": "hnsw", "M": self.M, "ef_construction": self.ef_construction, "version": 1}
        return {"kind": "ivfpq", "nlist": self.nlist, "pq_m": self.pq_m, "nbits": self.nbits, "seed": self.seed,
                "train_size": self.train_size, "version": 1}

    def _load_or_build(self):
        """``(faiss index, the file it was read from or None)``."""
        if self.cache_dir is None:
            return self._build(self.seed), None
        faiss = self._faiss
        meta = self.embeddings.meta
        stem = "_".join(re.sub(r"\W", "_", str(part))[:60] for part in
                        (meta.get("dataset") or "set", self.embeddings.model_fingerprint[:16] or "nomodel", self.kind))
        path = self.cache_dir / f"{stem}-{self._digest(self._settings())[:24]}.faiss"
        if path.is_file():
            try:
                index = faiss.read_index(str(path))
            except RuntimeError:
                index = None  # a damaged file: built again and replaced below
            if index is not None and index.ntotal == len(self) and index.d == self.dim:
                return index, path
        index = self._build(self.seed)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            faiss.write_index(index, str(temporary))
            os.replace(temporary, path)
            for old in self.cache_dir.glob(f"{stem}-*.faiss"):
                if old != path:
                    old.unlink(missing_ok=True)
        except (OSError, RuntimeError):
            pass  # an unwritable cache costs the next process a build, not this one its index
        return index, None

    def _build(self, seed: int):
        faiss = self._faiss
        n, dim = len(self), self.dim
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, self.nlist, self.pq_m, self.nbits, faiss.METRIC_INNER_PRODUCT)
            self._quantizer = quantizer  # the IVF index borrows it
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=min(n, self.train_size), replace=False))
            index.train(np.concatenate(list(self._unit_blocks(sample))))
            index.nprobe = self.nprobe
        # HNSW inserts in large batches build the graph in parallel; small ones serialise.
        batch = []
        size = 0
        for block in self._unit_blocks():
            batch.append(block)
            size += len(block)
            if size >= 65_536:
                index.add(np.concatenate(batch))
                batch, size = [], 0
        if batch:
            index.add(np.concatenate(batch))
        return index

    # -- queries --------------------------------------------------------------------------------------------

    def _candidates(self, q32, k, keep, n_keep, excluded, context):
        # A filter (more rows left out than the query's excluded ids) that leaves few rows: scan them.
        if keep is not None and n_keep <= self.exact_below and len(self) - n_keep > len(excluded):
            return self._scan(q32, np.flatnonzero(keep), k)
        return self._search(q32, k, keep, n_keep)

    def _search(self, q32: np.ndarray, k: int, keep: np.ndarray | None, n_keep: int) -> list[np.ndarray]:
        """faiss' candidates (rows) for each query: k plus a margin (``rerank`` times k for IVF-PQ)."""
        faiss = self._faiss
        want = k * self.rerank + _MARGIN if self.kind == "ivfpq" else k + _MARGIN
        want = min(want, n_keep)
        bits = None if keep is None else np.packbits(keep, bitorder="little")
        selector = None if bits is None else faiss.IDSelectorBitmap(bits)
        # A filter passing a share s of the rows leaves ~s of what the walk visits: widen it by 1/s (bounded;
        # filters narrower than exact_below rows never get here unless asked to).
        widen = 1.0 if keep is None else min(32.0, len(self) / n_keep)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=int(max(self.ef_search, want) * widen))
        else:
            params = faiss.SearchParametersIVF(nprobe=min(self.nlist, math.ceil(self.nprobe * widen)))
        if selector is not None:
            params.sel = selector
        _, labels = self._index.search(q32, want, params=params)
        del bits  # the selector reads the bitmap during the search only
        return [row[row >= 0] for row in labels]
