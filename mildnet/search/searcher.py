"""Cosine nearest-neighbour search over a catalog's embeddings (exact: the reference and default back end).

The default path is the hardware floor: one float32 BLAS product of a chunk of queries with the catalog
matrix and an ``argpartition``, then an exact float64 re-scoring of the few candidates near the k-th, so the
results equal a float64 brute force (and scikit-learn ``NearestNeighbors(metric="cosine")``, the design's
reference, still available as ``backend="sklearn"``). Chunks are sized so the working memory stays a
fraction of the catalog matrix however many queries arrive at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any

import numpy as np

from mildnet.errors import DataError
from mildnet.store import EmbeddingSet

__all__ = ["Hit", "Searcher", "check_positive_int"]


@dataclasses.dataclass(frozen=True)
class Hit:
    """One result: catalog ``id``, its image ``path`` and the cosine similarity ``score`` (1 = identical)."""

    id: str
    path: str
    score: float


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


_BACKENDS = ("blas", "sklearn")
# Unit-norm rows are used as they are (no normalised copy of the matrix) when every norm is this close to 1;
# the deviation is folded into the candidate tolerance below.
_UNIT_NORM_SLACK = 1e-4
# Extra candidates taken beyond k from the float32 scores: with them the k-th/candidate boundary is usually
# clear of float32 rounding, so the exact check below rarely needs a full row scan.
_MARGIN = 4
# Up to this many queries at once, the scores are computed catalog-major (see Searcher._scores).
_FEW_QUERIES = 64


class Searcher:
    """Top-k cosine neighbours among ``embeddings``.

    Order: decreasing exact cosine (computed per pair in float64 from the stored vectors), then catalog row
    (the lower row first) for equal scores. This is scikit-learn ``NearestNeighbors(metric="cosine")``'s
    order wherever its float32 distances separate the neighbours; where they tie, sklearn's own tie order is
    whatever its partial sort leaves (scrambled beyond 16 neighbours), so ours is the row order, which is
    what sklearn returns for exact duplicates up to 16 neighbours. Results do not depend on the batch or
    chunk a query was answered in. ``k`` larger than the catalog returns every (non-excluded) item.

    ``backend="blas"`` (default): one float32 matrix product per chunk of queries over the catalog matrix
    (as stored: float32, or float16 upcast block by block) and an ``argpartition``; candidates within the
    float32 rounding bound of the k-th are re-scored exactly, so the result equals a float64 brute force.
    ``backend="sklearn"``: scikit-learn's brute-force ``kneighbors`` (the design's reference), then the same
    exact re-scoring and order.

    ``chunk_size``: queries answered per block; None sizes blocks so that the working memory (scores and
    their partition indices) stays within ~1/4 of the catalog matrix (at least 16 MiB), however many
    queries arrive.
    """

    def __init__(
        self, embeddings: EmbeddingSet, chunk_size: int | None = None, *, backend: str = "blas"
    ) -> None:
        if not isinstance(embeddings, EmbeddingSet):
            raise DataError(f"Searcher needs an EmbeddingSet, got {type(embeddings).__name__}")
        if len(embeddings) == 0:
            raise DataError("the embedding set is empty: embed a catalog with at least one image first")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}; got {backend!r}")
        self.embeddings = embeddings
        self.backend = backend
        vectors = embeddings.vectors
        n, dim = vectors.shape
        norms = _row_norms(vectors)
        # Zero rows stay zero (score 0 against everything), as in sklearn's cosine distance.
        self._inv_norms = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        slack = float(np.max(np.abs(norms - 1.0)))
        # Scores of unit rows need no per-row scaling; other rows are scaled after the product (no copy).
        self._scale = None if slack <= _UNIT_NORM_SLACK else self._inv_norms.astype(np.float32)
        # Bound on |float32 score - exact cosine|: a float32 dot product of D terms errs by at most ~D units
        # in the last place times sum|x_i q_i| <= 1 (Higham 3.1), doubled for the normalisations and
        # upcasts, plus the norm slack of rows used unscaled.
        self._tol = 2.0 * (dim + 8) * float(np.finfo(np.float32).eps) + (slack if self._scale is None else 0.0)
        row_bytes = n * (4 + 8)  # one query's float32 scores + argpartition's int64 indices
        # The floor of 32 MiB keeps blocks of small catalogs large enough for an efficient GEMM (blocks of a few
        # dozen rows ran 2-4x slower than the floor on 2 busy cores: BLAS thread hand-offs per call).
        budget = max(vectors.nbytes // 4, 32 << 20)
        auto = max(1, min(4096, budget // row_bytes))
        self.chunk_size = auto if chunk_size is None else check_positive_int("chunk_size", chunk_size)
        # float16 rows are upcast this many at a time for the product (a ~8 MiB float32 block).
        self._upcast_rows = max(1, (8 << 20) // (4 * dim))
        self._nn = None
        if backend == "sklearn":
            from sklearn.neighbors import NearestNeighbors

            self._nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(vectors)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.dim

    def __repr__(self) -> str:
        return (f"Searcher(n={len(self)}, dim={self.dim}, dtype={self.embeddings.vectors.dtype}, "
                f"backend={self.backend!r}, chunk_size={self.chunk_size})")

    # -- queries --------------------------------------------------------------------------------------------

    def query(
        self,
        vectors: np.ndarray,
        k: int = 5,
        exclude_ids: Iterable[str] | Sequence[Iterable[str] | None] | None = None,
        *,
        allowed: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each query vector; ``vectors`` is (D,) or (Q, D).

        ``exclude_ids`` is either one collection of ids excluded from every query's results, or a sequence
        of Q collections (or None), one per query. Excluded items do not count towards ``k``: a query still
        gets ``k`` hits while the catalog has enough other items. ``allowed``: a boolean mask over the catalog
        rows (a filter such as one category); rows outside it are never returned, so a query gets fewer than
        ``k`` hits only when fewer rows are allowed.
        """
        k = check_positive_int("k", k)
        q = self._check_vectors(vectors)
        excluded_rows = self._exclusions(exclude_ids, len(q))
        blocked = None
        if allowed is not None:
            mask = self._check_mask(allowed)
            if not mask.any():
                return [[] for _ in range(len(q))]  # a filter nothing passes
            if self.backend == "sklearn":
                rows = np.flatnonzero(~mask)
                excluded_rows = [np.union1d(ex, rows) for ex in excluded_rows]
            else:
                # One masked assignment a chunk: merging the blocked rows into every query's exclusions sorted
                # half the catalogue per query (289 ms a query at 1M with a 50% filter, against 60 ms unfiltered).
                blocked = ~mask
        out: list[list[Hit]] = []
        for start in range(0, len(q), self.chunk_size):
            stop = min(start + self.chunk_size, len(q))
            out.extend(self._query_chunk(q[start:stop], k, excluded_rows[start:stop], blocked))
        return out

    def query_id(self, item_id: str, k: int = 5, exclude_self: bool = True) -> list[Hit]:
        """Neighbours of a catalog item (a click on a product); the item itself is left out by default."""
        return self.query_ids([item_id], k=k, exclude_self=exclude_self)[0]

    def query_ids(self, ids: Sequence[str], k: int = 5, exclude_self: bool = True) -> list[list[Hit]]:
        """Batch :meth:`query_id`."""
        if isinstance(ids, str):
            raise DataError("query_ids takes a list of ids; use query_id for one id")
        ids = list(ids)
        rows = self._rows_or_error(ids)
        vectors = self.embeddings.vectors[rows]
        return self.query(vectors, k=k, exclude_ids=[[i] for i in ids] if exclude_self else None)

    # -- internals ------------------------------------------------------------------------------------------

    def _rows_or_error(self, ids: list[str]) -> np.ndarray:
        index = self.embeddings.index
        missing = [i for i in ids if i not in index]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:5])
            raise DataError(
                f"{len(missing)} id(s) not in the searched catalog ({len(self)} items): {shown}"
                + (" ..." if len(missing) > 5 else "")
            )
        return np.array([index[i] for i in ids], dtype=np.int64)

    def _check_mask(self, allowed: Any) -> np.ndarray:
        mask = np.asarray(allowed)
        if mask.dtype != bool or mask.shape != (len(self),):
            raise DataError(f"allowed must be a boolean mask of the {len(self)} catalog rows, got "
                            f"{mask.dtype} {mask.shape}")
        return mask

    @staticmethod
    def _unit_queries(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(float64 unit queries, their float32 copy)``: zero queries stay zero (score 0 against everything)."""
        q64 = q.astype(np.float64)
        qn = np.linalg.norm(q64, axis=1)
        q64 *= np.divide(1.0, qn, out=np.zeros_like(qn), where=qn > 0)[:, None]
        return q64, q64.astype(np.float32)

    def _check_vectors(self, vectors: Any) -> np.ndarray:
        try:
            q = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"query vectors must be numeric: {exc}") from None
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise DataError(f"query vectors must have shape (D,) or (Q, D), got {q.shape}")
        if q.shape[1] != self.dim:
            raise DataError(
                f"query vectors have dimension {q.shape[1]} but the catalog embeddings have {self.dim}: "
                "were they computed with a different model?"
            )
        if not np.isfinite(q).all():
            raise DataError("query vectors contain NaN or infinity")
        return q

    def _exclusions(self, exclude_ids: Any, n_queries: int) -> list[np.ndarray]:
        empty = np.zeros(0, dtype=np.int64)
        if exclude_ids is None:
            return [empty] * n_queries
        if isinstance(exclude_ids, str):
            exclude_ids = [exclude_ids]
        items = list(exclude_ids)
        index = self.embeddings.index

        def rows(ids: Iterable[str] | None) -> np.ndarray:
            if ids is None:
                return empty
            if isinstance(ids, str):
                ids = [ids]
            # Ids outside the catalog cannot appear in results, so they need no extra candidates.
            return np.array(sorted({index[i] for i in ids if i in index}), dtype=np.int64)

        if items and all(isinstance(i, str) for i in items):
            shared = rows(items)
            return [shared] * n_queries
        if len(items) != n_queries:
            raise DataError(
                f"exclude_ids must be one list of ids, or one list per query ({n_queries}); got {len(items)} lists"
            )
        return [rows(i) for i in items]

    def _scores(self, q32: np.ndarray) -> np.ndarray:
        """float32 cosine scores (Qc, N) of unit queries against every catalog row."""
        x = self.embeddings.vectors
        if x.dtype == np.float32:
            # One query: a matrix-vector product (what the floor does), not a 1-row GEMM. A few queries (concurrent
            # requests batched together): the catalog-major product, read as its transpose, ran 25-35% faster on
            # one BLAS thread at 100k x 256 (8 queries 36 -> 26 ms) than the query-major one.
            if len(q32) == 1:
                s = (x @ q32[0])[None, :]
            elif len(q32) <= _FEW_QUERIES:
                s = (x @ q32.T).T
            else:
                s = q32 @ x.T
        else:
            s = np.empty((len(q32), len(x)), dtype=np.float32)
            step = self._upcast_rows
            for b0 in range(0, len(x), step):
                block = x[b0:b0 + step].astype(np.float32)
                s[:, b0:b0 + step] = (block @ q32.T).T
        if self._scale is not None:
            s *= self._scale
        return s

    def _candidates_blas(self, q32: np.ndarray, k: int, excluded: list[np.ndarray], blocked: np.ndarray | None = None):
        n = len(self)
        s = self._scores(q32)
        cols = None
        if blocked is not None:
            if 2 * int(blocked.sum()) > n:
                # Few rows allowed: partition only those. argpartition over a row that is mostly -inf (equal
                # values) ran ~15x slower than over real scores (47 ms a query at 300k with a 10% filter).
                cols = np.flatnonzero(~blocked)
                s = s[:, cols]
            else:
                s[:, blocked] = -np.inf
        for r, ex in enumerate(excluded):
            if len(ex) and cols is None:
                s[r, ex] = -np.inf
            elif len(ex):
                pos = np.searchsorted(cols, ex)
                hit = pos < len(cols)
                hit[hit] = cols[pos[hit]] == ex[hit]
                s[r, pos[hit]] = -np.inf
        width = s.shape[1]

        def full_row(r: int) -> np.ndarray:
            if cols is None:
                return s[r]
            row = np.full(n, -np.inf, dtype=s.dtype)
            row[cols] = s[r]
            return row

        m = min(width, k + _MARGIN)
        if m == width:
            part = np.broadcast_to(np.arange(width) if cols is None else cols, s.shape)
            return part, s, None, full_row
        part = np.argpartition(s, width - m, axis=1)[:, width - m:]
        top = np.take_along_axis(s, part, axis=1)
        if cols is not None:
            part = cols[part]
        # Every row outside the partition scores at most the partition's minimum.
        return part, top, top.min(axis=1), full_row

    def _candidates_sklearn(self, q32: np.ndarray, k: int, excluded: list[np.ndarray]):
        n = len(self)
        extra = max((len(e) for e in excluded), default=0)
        m = min(n, k + extra + _MARGIN)
        dist, part = self._nn.kneighbors(q32, n_neighbors=m, return_distance=True)
        top = (1.0 - dist).astype(np.float32)
        low = None if m == n else top.min(axis=1)
        for r, ex in enumerate(excluded):
            if len(ex):
                top[r, np.isin(part[r], ex)] = -np.inf

        def full_row(r: int) -> np.ndarray:
            row = self._scores(q32[r:r + 1])[0]
            row[excluded[r]] = -np.inf
            return row

        return part, top, low, full_row

    def _query_chunk(self, q: np.ndarray, k: int, excluded: list[np.ndarray],
                     blocked: np.ndarray | None = None) -> list[list[Hit]]:
        q64, q32 = self._unit_queries(q)
        if self.backend == "sklearn":
            part, top, low, full_row = self._candidates_sklearn(q32, k, excluded)
        else:
            part, top, low, full_row = self._candidates_blas(q32, k, excluded, blocked)

        # Only candidates within twice the float32 error bound of the k-th float32 score can be in the exact
        # top k. If a row outside the partition could be too (its bound reaches that far), scan the full row.
        kk = min(k, top.shape[1])
        kth = -np.partition(-top, kk - 1, axis=1)[:, kk - 1]
        thr = kth - np.float32(2.0 * self._tol)
        keep = (top >= thr[:, None]) & (top > -np.inf)
        widen = np.zeros(len(q), bool) if low is None else low >= thr
        rows_r, cols = np.nonzero(keep & ~widen[:, None])
        pair_q, pair_x = [rows_r], [part[rows_r, cols]]
        for r in np.flatnonzero(widen):
            row = full_row(r)
            cand = np.flatnonzero((row >= thr[r]) & (row > -np.inf))
            pair_q.append(np.full(len(cand), r, dtype=np.intp))
            pair_x.append(cand)
        pair_q = np.concatenate(pair_q)
        pair_x = np.concatenate(pair_x).astype(np.intp, copy=False)
        score = self._exact_scores(q64, pair_q, pair_x)
        # Deterministic order: query, exact score (descending), catalog row.
        order = np.lexsort((pair_x, -score, pair_q))
        pair_q, pair_x, score = pair_q[order], pair_x[order], score[order]
        bounds = np.searchsorted(pair_q, np.arange(len(q) + 1))
        ids, paths = self.embeddings.ids, self.embeddings.paths
        out = []
        for r in range(len(q)):
            a, b = bounds[r], min(bounds[r + 1], bounds[r] + k)
            out.append([Hit(ids[j], paths[j], float(sc)) for j, sc in zip(pair_x[a:b].tolist(), score[a:b])])
        return out

    def _exact_scores(self, q64: np.ndarray, pair_q: np.ndarray, pair_x: np.ndarray) -> np.ndarray:
        """Cosine of each (query, catalog row) pair, recomputed in float64 one pair at a time.

        BLAS results differ in the last bits with the batch shape, so the float32 scores would make a
        product's score and near-tie order depend on the other queries of its chunk; each pair here is one
        contiguous float64 dot product of the stored values, the same whichever chunk it came from. Pairs
        go in blocks of ~4 MiB so the float64 copies stay in cache and memory stays flat.
        """
        x = self.embeddings.vectors
        out = np.empty(len(pair_x), dtype=np.float64)
        step = max(1, (4 << 20) // (16 * self.dim))
        for a in range(0, len(pair_x), step):
            cx = pair_x[a:a + step]
            sims = np.einsum("pd,pd->p", x[cx].astype(np.float64), q64[pair_q[a:a + step]])
            out[a:a + step] = sims * self._inv_norms[cx]
        return np.clip(out, -1.0, 1.0, out=out)


def _row_norms(vectors: np.ndarray) -> np.ndarray:
    """float64 L2 norm of each row, a block at a time (a whole float64 copy would double the memory)."""
    out = np.empty(len(vectors), dtype=np.float64)
    step = max(1, (8 << 20) // (8 * max(1, vectors.shape[1])))
    for a in range(0, len(vectors), step):
        block = vectors[a:a + step].astype(np.float64)
        out[a:a + step] = np.sqrt(np.einsum("nd,nd->n", block, block))
    return out
