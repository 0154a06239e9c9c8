"""Cosine nearest-neighbour search over a catalog's embeddings, and the results plot.

The searcher follows the product design: scikit-learn ``NearestNeighbors(metric="cosine",
algorithm="brute")`` fitted on the catalog matrix. Queries are answered in chunks of ``chunk_size`` rows, so
memory stays at about ``chunk_size x N`` distances however many queries arrive at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Callable, Iterable, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from mildnet.errors import DataError, ImageError
from mildnet.store import EmbeddingSet

__all__ = ["Hit", "Searcher", "plot_results"]


@dataclasses.dataclass(frozen=True)
class Hit:
    """One result: catalog ``id``, its image ``path`` and the cosine similarity ``score`` (1 = identical)."""

    id: str
    path: str
    score: float


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Searcher:
    """Top-k cosine neighbours among ``embeddings``.

    Results are ordered by decreasing score; equal scores are ordered by catalog row, so results are
    deterministic. ``k`` larger than the catalog returns every (non-excluded) item.
    """

    def __init__(self, embeddings: EmbeddingSet, chunk_size: int = 1024) -> None:
        from sklearn.neighbors import NearestNeighbors

        if not isinstance(embeddings, EmbeddingSet):
            raise DataError(f"Searcher needs an EmbeddingSet, got {type(embeddings).__name__}")
        if len(embeddings) == 0:
            raise DataError("the embedding set is empty: embed a catalog with at least one image first")
        self.embeddings = embeddings
        self.chunk_size = _check_positive_int("chunk_size", chunk_size)
        self._nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(embeddings.vectors)
        norms = np.linalg.norm(embeddings.vectors.astype(np.float64), axis=1)
        # Zero rows stay zero (score 0 against everything), as in sklearn's cosine distance.
        self._inv_norms = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.dim

    def __repr__(self) -> str:
        return f"Searcher(n={len(self)}, dim={self.dim}, chunk_size={self.chunk_size})"

    # -- queries --------------------------------------------------------------------------------------------

    def query(
        self,
        vectors: np.ndarray,
        k: int = 5,
        exclude_ids: Iterable[str] | Sequence[Iterable[str] | None] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each query vector; ``vectors`` is (D,) or (Q, D).

        ``exclude_ids`` is either one collection of ids excluded from every query's results, or a sequence
        of Q collections (or None), one per query. Excluded items do not count towards ``k``: a query still
        gets ``k`` hits while the catalog has enough other items.
        """
        k = _check_positive_int("k", k)
        q = self._check_vectors(vectors)
        excluded_rows = self._exclusions(exclude_ids, len(q))
        out: list[list[Hit]] = []
        for start in range(0, len(q), self.chunk_size):
            stop = min(start + self.chunk_size, len(q))
            out.extend(self._query_chunk(q[start:stop], k, excluded_rows[start:stop]))
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

    def _query_chunk(self, q: np.ndarray, k: int, excluded: list[np.ndarray]) -> list[list[Hit]]:
        n = len(self)
        extra = max((len(e) for e in excluded), default=0)
        # Asking for k + (largest exclusion) candidates guarantees k survivors after filtering.
        n_neighbors = min(n, k + extra)
        idx = self._nn.kneighbors(q, n_neighbors=n_neighbors, return_distance=False)
        scores = self._exact_scores(q, idx)
        ids, paths = self.embeddings.ids, self.embeddings.paths
        out = []
        for row_s, row_i, ex in zip(scores, idx, excluded):
            # Deterministic order: score, then catalog row (sklearn's partial sort leaves ties in any order).
            order = np.lexsort((row_i, -row_s))
            row_s, row_i = row_s[order], row_i[order]
            if len(ex):
                keep = ~np.isin(row_i, ex)
                row_s, row_i = row_s[keep], row_i[keep]
            out.append([Hit(ids[r], paths[r], float(sc)) for r, sc in zip(row_i[:k], row_s[:k])])
        return out

    def _exact_scores(self, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query with its candidates, recomputed row by row in float64.

        sklearn's float32 GEMM distances differ in the last bits with the batch size (BLAS blocking), so a
        product's scores and near-tie order would depend on which other queries shared its batch; this
        per-pair computation does not, and is cheap (k candidates per query).
        """
        q64 = q.astype(np.float64)
        qn = np.linalg.norm(q64, axis=1)
        q64 *= np.divide(1.0, qn, out=np.zeros_like(qn), where=qn > 0)[:, None]
        cand = self.embeddings.vectors[idx].astype(np.float64)  # (Qc, m, D)
        sims = np.einsum("qmd,qd->qm", cand, q64) * self._inv_norms[idx]
        return np.clip(sims, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------------------------

ImageSource = str | os.PathLike | np.ndarray
Loader = Callable[[str], Any]


def _to_display(image: Any) -> np.ndarray:
    """uint8/float image -> array matplotlib shows correctly (floats in [0, 255] per the package convention)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"cannot show an image of shape {arr.shape}; expected HxW or HxWx3")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("image contains NaN or infinity")
        scale = 255.0 if arr.size and arr.max() > 1.0 else 1.0
        arr = np.clip(arr / scale, 0.0, 1.0)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _open_file(path: Path, max_side: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))  # keeps the figure small and fast for big product photos
            return np.asarray(im)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from None


def _load(source: Any, images: Path | Loader | None, max_side: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return _to_display(source)
    if callable(images):
        return _to_display(images(str(source)))
    path = Path(source)
    if images is not None and not path.is_absolute():
        path = Path(images) / path
    return _to_display(_open_file(path, max_side))


def plot_results(
    query_image: ImageSource,
    hits: Sequence[Hit],
    images: str | os.PathLike | Loader | None,
    out_path: str | os.PathLike | io.IOBase,
    title: str | None = None,
    *,
    ncols: int | None = None,
    thumb_px: int = 256,
    dpi: int = 100,
) -> str | os.PathLike | io.IOBase:
    """Save a PNG grid: the query, then each hit with its rank and score.

    ``query_image``: an array (HxWx3, uint8 or float in [0, 255]) or a path. ``images`` says where hit
    images come from: a folder that relative ``hit.path`` values are resolved against, a ``loader(path)``
    returning an array, or None to open ``hit.path`` as given. ``out_path`` may also be a binary file object
    (e.g. ``io.BytesIO`` for a web page). A query image that cannot be read raises ImageError; an unreadable
    hit is drawn as a labelled blank tile, so one bad catalog file does not hide the other results.
    """
    # The object-oriented API with an Agg canvas: no pyplot, so no global backend switch or figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hits = list(hits)
    for h in hits:
        if not isinstance(h, Hit):
            raise DataError(f"hits must be Hit objects, got {type(h).__name__}")
    thumb_px = _check_positive_int("thumb_px", thumb_px)
    panels = len(hits) + 1
    ncols = min(panels, 6) if ncols is None else _check_positive_int("ncols", ncols)
    nrows = -(-panels // ncols)

    query = _load(query_image, None, thumb_px)
    fig = Figure(figsize=(2.2 * ncols, 2.5 * nrows + (0.4 if title else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()

    axes[0].imshow(query, cmap="gray" if query.ndim == 2 else None)
    axes[0].set_title("query", fontsize=9, fontweight="bold", color="tab:blue")
    for rank, (hit, ax) in enumerate(zip(hits, axes[1:]), start=1):
        label = f"#{rank}  {hit.score:.3f}\n{_short(hit.id)}"
        try:
            img = _load(hit.path, images, thumb_px)
        except ImageError as exc:
            ax.text(0.5, 0.5, "unreadable\n" + _short(str(exc), 40), ha="center", va="center", fontsize=7,
                    wrap=True, transform=ax.transAxes)
            ax.set_title(label, fontsize=8, color="tab:red")
            continue
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()

    if not isinstance(out_path, (str, os.PathLike)):
        fig.savefig(out_path, format="png", dpi=dpi)
        return out_path
    # Atomic: a temp file beside the target renamed into place, so a failed write never leaves a
    # truncated PNG (or destroys a previous good one); an unwritable path is a one-line DataError.
    target = Path(out_path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(21, "is a directory", str(target))
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, target)
    except OSError as exc:
        raise DataError(f"cannot write the plot to {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return out_path


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
