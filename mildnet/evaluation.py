"""Evaluating an embedding model: triplet accuracy, distance distributions and retrieval metrics.

The heavy part (running the network) is :func:`mildnet.embeddings.embed_paths`; everything after it is plain
numpy on an :class:`~mildnet.store.EmbeddingSet` keyed by image path, so the metrics are tested on hand-made
embeddings, the training loop reuses the same code for its per-epoch validation and the app scores a
catalogue's cached embeddings as they are.

Four no-learning baselines, :class:`PixelFeatures` (tiny raw-pixel thumbnails), :class:`ColourHistogram`,
:class:`ImageNetFeatures` (SqueezeNet ImageNet features, no training) and ImageNet features concatenated
with the histogram, produce the same :class:`~mildnet.store.EmbeddingSet`, so every metric here scores them exactly
like a network: a trained model is only worth its cost if it beats them. :func:`evaluate_baselines`
scores them all on a run's triplets, reporting one it cannot compute (no weights offline) as unavailable
with the reason instead of failing.

:class:`~mildnet.data.images.ImageCache` holds decoded images in memory (decoded once, in parallel, through
``load_image``); training builds one so that its epochs and validation passes never decode an image twice.

Distances are squared euclidean on L2-normalised rows (``2 - 2 cos``, in [0, 4]), the distance the
hinge loss is trained on; a triplet counts as correct when ``d(q,p) < d(q,n)`` (a tie is wrong, so a
collapsed model that maps everything to one point scores 0, not 50%).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from mildnet.data.images import map_images
from mildnet.embeddings import embed_paths, normalize_rows, run_model
from mildnet.errors import DataError, MildnetError, ModelError
from mildnet.store import EmbeddingSet

RETRIEVAL_KS = (1, 5, 10)
HISTOGRAM_BINS = 20
# Squared distance between unit vectors lies in [0, 4]: fixed edges make runs comparable.
HISTOGRAM_RANGE = (0.0, 4.0)
# Queries per block of the similarity matrix: bounds memory at block x gallery floats.
_RETRIEVAL_BLOCK = 1024


# --- learning-free baselines --------------------------------------------------------------------


class FeatureExtractor:
    """A learning-free image -> feature-vector baseline; ``embed`` gives the same
    :class:`~mildnet.store.EmbeddingSet` as :func:`embed_paths`, so every metric scores it like a network."""

    name = "baseline"
    decode_size = 32  # side the image is shrunk to (load_image's antialiased resize) before features

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def features(self, image: np.ndarray) -> np.ndarray:
        """One uint8 (decode_size, decode_size, 3) image -> a float32 (dim,) vector, not yet normalised."""
        raise NotImplementedError

    def embed(
        self,
        image_root: str | os.PathLike,
        rel_paths: Iterable[str],
        progress: Callable[[int, int], None] | None = None,
        workers: int | None = None,
    ) -> EmbeddingSet:
        """Features of each distinct image of ``rel_paths`` (first-seen order), L2-normalised."""
        from mildnet.data.images import load_image

        unique = list(dict.fromkeys(rel_paths))
        vectors = np.zeros((len(unique), self.dim), dtype=np.float32)

        def work(i: int, path: Path) -> None:
            vectors[i] = self.features(load_image(path, self.decode_size))

        map_images(image_root, unique, work, workers, progress)
        return EmbeddingSet.from_paths(unique, normalize_rows(vectors))

    def describe(self) -> dict:
        return {"baseline": self.name}


class PixelFeatures(FeatureExtractor):
    """Raw pixels: the image shrunk to ``size`` x ``size`` RGB, flattened.

    Two images are close when similar colours sit in similar places: the floor any learned
    embedding must clear, since it needs no training at all.
    """

    name = "pixels"

    def __init__(self, size: int = 32):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"pixel baseline size must be a positive integer, got {size!r}")
        self.decode_size = size

    @property
    def dim(self) -> int:
        return self.decode_size * self.decode_size * 3

    def features(self, image: np.ndarray) -> np.ndarray:
        return image.reshape(-1).astype(np.float32) / 255.0

    def describe(self) -> dict:
        return {"baseline": self.name, "size": self.decode_size}


class ColourHistogram(FeatureExtractor):
    """A joint RGB colour histogram with ``bins`` levels per channel (``bins**3`` cells).

    Position-free: it matches garments by colour alone, whatever their pose or crop, which is
    often what makes two shop photos look alike. The image is shrunk to ``decode_size`` px first;
    the proportions of colours barely change and decoding stays cheap.
    """

    name = "histogram"

    def __init__(self, bins: int = 8, decode_size: int = 64):
        if not isinstance(bins, int) or not 1 <= bins <= 256 or 256 % bins:
            raise ValueError(f"histogram bins must divide 256 (e.g. 4, 8, 16), got {bins!r}")
        if not isinstance(decode_size, int) or decode_size < 1:
            raise ValueError(f"histogram decode size must be a positive integer, got {decode_size!r}")
        self.bins = bins
        self.decode_size = decode_size

    @property
    def dim(self) -> int:
        return self.bins**3

    def features(self, image: np.ndarray) -> np.ndarray:
        level = image.reshape(-1, 3).astype(np.int64) // (256 // self.bins)
        cell = (level[:, 0] * self.bins + level[:, 1]) * self.bins + level[:, 2]
        return np.bincount(cell, minlength=self.dim).astype(np.float32)

    def describe(self) -> dict:
        return {"baseline": self.name, "bins": self.bins, "space": "rgb", "decode_size": self.decode_size}


# ImageNet's training resolution: the features are what the network learnt at that scale.
IMAGENET_SIZE = 224


class ImageNetFeatures(FeatureExtractor):
    """SqueezeNet v1.1 ImageNet features, no training: the ``squeezenet_gap`` zoo model (global average of
    fire9, 512-d) with the ImageNet weights.

    This is where fine-tuning starts, so it is the baseline that says whether the triplet training itself
    bought anything. ``weights`` is ``"imagenet"`` (read from the shipped real-photo model's frozen backbone,
    else downloaded: see :func:`mildnet.models.squeezenet.load_weights`) or a path to a local copy of the
    weights file. The network is built on first use; missing or broken weights raise :class:`ModelError` then.
    """

    name = "imagenet"

    def __init__(self, weights: str | os.PathLike = "imagenet", image_size: int = IMAGENET_SIZE,
                 batch_size: int = 32):
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"ImageNet baseline image size must be an integer >= 32, got {image_size!r}")
        if weights is None or str(weights).strip().lower() in ("", "none", "random"):
            raise ValueError("the ImageNet baseline needs ImageNet weights: 'imagenet' or a weights file path")
        self.weights = str(weights)
        self.decode_size = image_size
        self.batch_size = batch_size
        self._model = None

    @property
    def dim(self) -> int:
        return 512

    def model(self):
        if self._model is None:
            import contextlib
            import io
            import sys

            from mildnet.models import build_model

            # Keras announces a weights download on stdout, where the CLI writes its report and JSON: the
            # notice goes to stderr once the download worked, and is dropped when it failed (the
            # ModelError then says what happened, in one line).
            notice = io.StringIO()
            with contextlib.redirect_stdout(notice):
                model = build_model("squeezenet_gap", self.decode_size, weights=self.weights)
            sys.stderr.write(notice.getvalue())
            self._model = model
        return self._model

    def features(self, image: np.ndarray) -> np.ndarray:
        return run_model(self.model(), np.asarray(image)[None])[0]

    def embed(self, image_root, rel_paths, progress=None, workers=None) -> EmbeddingSet:
        return embed_paths(self.model(), image_root, rel_paths, self.decode_size, self.batch_size, progress)

    def describe(self) -> dict:
        return {"baseline": self.name, "model": "squeezenet_gap", "weights": self.weights,
                "image_size": self.decode_size}


def concat_tables(tables: Sequence[EmbeddingSet]) -> EmbeddingSet:
    """Rows of several tables over the same paths, each L2-normalised then concatenated (and the result
    normalised): every part weighs the same, so cosine similarity is the mean of the parts' cosines."""
    if not tables:
        raise ValueError("no tables to concatenate")
    paths = tables[0].paths
    for table in tables[1:]:
        if table.paths != paths:
            raise ValueError("tables to concatenate must hold the same paths in the same order")
    return EmbeddingSet.from_paths(paths, normalize_rows(np.hstack([normalize_rows(t.vectors) for t in tables])))


class ConcatenatedFeatures(FeatureExtractor):
    """Several baselines side by side with equal weight (see :func:`concat_tables`): ImageNet features know
    shapes and textures but wash out colour, which the histogram adds back."""

    decode_size = None  # each part decodes at its own size

    def __init__(self, parts: Sequence[FeatureExtractor]):
        if len(parts) < 2:
            raise ValueError("a concatenated baseline needs at least two parts")
        self.parts = list(parts)
        self.name = "+".join(part.name for part in self.parts)

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    def features(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the parts decode at different sizes: use embed()")

    def embed(self, image_root, rel_paths, progress=None, workers=None) -> EmbeddingSet:
        unique = list(dict.fromkeys(rel_paths))
        return concat_tables([part.embed(image_root, unique, progress, workers) for part in self.parts])

    def describe(self) -> dict:
        return {"baseline": self.name, "parts": [part.describe() for part in self.parts]}


# The order the CLI and the app list them in: cheapest first, strongest last.
BASELINE_NAMES = ("pixels", "histogram", "imagenet", "imagenet+histogram")


def make_baseline(name: str, weights: str | os.PathLike = "imagenet",
                  image_size: int = IMAGENET_SIZE) -> FeatureExtractor:
    """A baseline by name (one of :data:`BASELINE_NAMES`) with its default settings; ``weights`` and
    ``image_size`` only concern the ImageNet ones."""
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose one of: {', '.join(BASELINE_NAMES)}")
    parts = [_component(part, weights, image_size) for part in name.split("+")]
    return parts[0] if len(parts) == 1 else ConcatenatedFeatures(parts)


def _component(name: str, weights, image_size: int) -> FeatureExtractor:
    if name == "imagenet":
        return ImageNetFeatures(weights, image_size)
    return {"pixels": PixelFeatures, "histogram": ColourHistogram}[name]()


def unavailable_reason(name: str, exc: MildnetError) -> str:
    """Why a baseline could not be computed, with the fix where the user has one (local weights)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ModelError) and name == "imagenet":
        from mildnet.models.squeezenet import CACHE_ENV, WEIGHTS_FILENAME

        # The loader's own hint names its Python argument; the fix below names the CLI option instead.
        text = text.split("; pass weights=PATH")[0]
        cache = os.environ.get(CACHE_ENV) or "~/.keras"
        return (f"SqueezeNet ImageNet weights unavailable: {text}. Fix: pass a local copy of {WEIGHTS_FILENAME} "
                f"(evaluate --baseline-weights PATH), or put it in {cache}/models/ where it is found offline")
    return text


def evaluate_baselines(
    images: str | os.PathLike,
    triplets: pd.DataFrame,
    catalog: pd.DataFrame | None = None,
    weights: str | os.PathLike = "imagenet",
    names: Sequence[str] = BASELINE_NAMES,
    *,
    image_size: int = IMAGENET_SIZE,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, "EvaluationReport | dict"]:
    """Scores each baseline of ``names`` on ``triplets`` (images under the root ``images``), like a run.

    Returns name -> :class:`EvaluationReport` (``source`` describes the baseline), or
    ``{"unavailable": reason}`` for a baseline that could not be computed (e.g. ImageNet weights neither
    cached nor downloadable: the reason says how to pass a local file). Every name asked for is in the
    result. A concatenated baseline reuses its parts' features, so nothing is computed twice.
    ``progress(done, total, name)`` follows each feature pass.
    """
    unknown = [n for n in names if n not in BASELINE_NAMES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from: {', '.join(BASELINE_NAMES)}")
    if len(triplets) == 0:
        raise DataError("no triplets to evaluate")
    paths = list(dict.fromkeys(pd.concat([triplets["query"], triplets["positive"], triplets["negative"]])))
    features: dict[str, EmbeddingSet | str] = {}  # part name -> its table, or why it failed

    def part_table(part: str) -> EmbeddingSet | str:
        if part not in features:
            step = None if progress is None else (lambda done, total: progress(done, total, part))
            try:
                features[part] = _component(part, weights, image_size).embed(images, paths, step)
            except MildnetError as exc:
                features[part] = unavailable_reason(part, exc)
        return features[part]

    results: dict[str, EvaluationReport | dict] = {}
    for name in names:
        tables = [part_table(part) for part in name.split("+")]
        failed = [t for t in tables if isinstance(t, str)]
        if failed:
            results[name] = {"unavailable": failed[0]}
            continue
        report = evaluate_embeddings(tables[0] if len(tables) == 1 else concat_tables(tables), triplets, catalog)
        report.source = make_baseline(name, weights, image_size).describe()
        results[name] = report
    return results


def baseline_summary(results: dict, run_accuracy: float | None = None) -> dict[str, dict]:
    """JSON-able form of :func:`evaluate_baselines`' result: per baseline its triplet accuracy, per-type
    accuracies, retrieval and source, plus ``gain_points`` (run minus baseline, in percentage points)
    when ``run_accuracy`` is given; an unavailable baseline stays ``{"unavailable": reason}``."""
    summary = {}
    for name, result in results.items():
        if isinstance(result, dict):
            summary[name] = {"unavailable": str(result["unavailable"])}
            continue
        data = result.to_dict()
        entry = {key: data[key] for key in ("triplet_accuracy", "n_triplets", "by_type", "retrieval", "source")
                 if key in data}
        gain = _gain_points(run_accuracy, data["triplet_accuracy"])
        if gain is not None:
            entry["gain_points"] = gain
        summary[name] = entry
    return summary


def _gain_points(run_accuracy, baseline_accuracy) -> float | None:
    run, base = _json_float(run_accuracy), _json_float(baseline_accuracy)
    return None if run is None or base is None else round(100.0 * (run - base), 2)


def format_baseline_table(run_label: str, run_report: "EvaluationReport", summary: dict[str, dict]) -> str:
    """The run and the baselines on the same triplets, one row each, with the run's gain over each."""
    types = [t for t in run_report.by_type]
    header = f"{'':<24}{'accuracy':>10}" + "".join(f"{t.replace('_', '-'):>14}" for t in types) + f"{'run gain':>12}"
    lines = [f"no-learning baselines on the same {run_report.n_triplets} triplets:", header]

    def row(label: str, accuracy, by_type: dict, gain: str) -> str:
        cells = "".join(f"{_pct((by_type.get(t) or {}).get('accuracy')):>14}" for t in types)
        return f"{label[:23]:<24}{_pct(accuracy):>10}{cells}{gain:>12}"

    lines.append(row(run_label, run_report.triplet_accuracy, run_report.by_type, ""))
    for name, entry in summary.items():
        if "unavailable" in entry:
            lines.append(f"{name:<24}unavailable: {entry['unavailable']}")
            continue
        gain = entry.get("gain_points")
        lines.append(row(name, entry["triplet_accuracy"], entry.get("by_type", {}),
                         "n/a" if gain is None else f"{gain:+.1f} pts"))
    return "\n".join(lines)


# --- triplet metrics -----------------------------------------------------------------------------


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise squared euclidean distance of L2-normalised rows."""
    a, b = normalize_rows(a), normalize_rows(b)
    return np.sum(np.square(a - b), axis=-1)


def triplet_distances(table: EmbeddingSet, triplets: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(d(q,p), d(q,n))`` for every triplet row."""
    q = table.rows(triplets["query"])
    return (squared_distances(q, table.rows(triplets["positive"])),
            squared_distances(q, table.rows(triplets["negative"])))


def triplet_accuracy(d_pos: np.ndarray, d_neg: np.ndarray) -> float:
    """Share of triplets with ``d(q,p) < d(q,n)``; NaN for no triplets."""
    d_pos, d_neg = np.asarray(d_pos), np.asarray(d_neg)
    return float(np.mean(d_pos < d_neg)) if d_pos.size else float("nan")


def distance_summary(d: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict:
    d = np.asarray(d, dtype=np.float64)
    counts, _ = np.histogram(d, bins=bins, range=HISTOGRAM_RANGE)
    if not d.size:
        return {"n": 0, "mean": None, "median": None, "std": None, "histogram": counts.tolist()}
    return {
        "n": int(d.size),
        "mean": float(d.mean()),
        "median": float(np.median(d)),
        "std": float(d.std()),
        "histogram": counts.tolist(),
    }


def triplet_types(triplets: pd.DataFrame, catalog: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Boolean masks over the triplet rows: ``in_class``/``out_of_class`` (the negative's category
    equals / differs from the query's) and ``wild_query``/``catalog_query`` (the query's ``view``).
    Rows whose images are not in the catalog, or lack the column's value, are in neither mask."""
    if catalog is None or "image" not in catalog.columns:
        return {}
    from mildnet.data.catalog import triplet_types as types_of

    types = types_of(triplets, catalog)
    negative, view = types["negative_type"].to_numpy(), types["query_view"].to_numpy()
    masks: dict[str, np.ndarray] = {}
    if (negative != "unknown").any():
        masks["in_class"] = negative == "in-class"
        masks["out_of_class"] = negative == "out-of-class"
    if (view != "unknown").any():
        masks["wild_query"] = view == "wild"
        masks["catalog_query"] = view == "catalog"
    return masks


# --- retrieval -----------------------------------------------------------------------------------


def retrieval_metrics(vectors: np.ndarray, labels: Sequence, ks: Sequence[int] = RETRIEVAL_KS) -> dict | None:
    """Each image queries all the others: recall@k (a same-label image in the top k) and mAP.

    Queries whose label has no other image are skipped (nothing to find). Returns None when no
    query is left. Ties in similarity keep gallery order (stable sort), which is deterministic.
    """
    vectors = normalize_rows(vectors)
    labels = np.asarray(pd.Series(list(labels)).astype(str))
    n = len(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    query_ids = np.flatnonzero(counts[inverse] > 1)
    if query_ids.size == 0:
        return None
    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    for start in range(0, query_ids.size, _RETRIEVAL_BLOCK):
        block = query_ids[start : start + _RETRIEVAL_BLOCK]
        sims = vectors[block] @ vectors.T
        sims[np.arange(block.size), block] = -np.inf  # an image never retrieves itself
        order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]
        relevant = labels[order] == labels[block][:, None]
        for k in ks:
            hits[k] += int(relevant[:, :k].any(axis=1).sum())
        ranks = np.arange(1, n, dtype=np.float64)
        precision = np.cumsum(relevant, axis=1) / ranks
        ap_sum += float(((precision * relevant).sum(axis=1) / relevant.sum(axis=1)).sum())
    n_queries = int(query_ids.size)
    result = {"n_queries": n_queries, "n_gallery": int(n)}
    result.update({f"recall@{k}": hits[k] / n_queries for k in ks})
    result["mAP"] = ap_sum / n_queries
    return result


# --- report --------------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    n_triplets: int
    n_images: int
    triplet_accuracy: float
    by_type: dict[str, dict]  # type -> {"n", "accuracy"}
    distances: dict  # {"positive": summary, "negative": summary, "bin_edges": [...]}
    retrieval: dict | None  # {"n_queries", "n_gallery", "recall@1", ..., "mAP"} or None
    d_pos: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    d_neg: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    source: dict = field(default_factory=dict)  # where model and data came from, for the JSON

    def to_dict(self) -> dict:
        """JSON-able summary (the raw distance arrays are left out; the histograms are in)."""
        return {
            "triplet_accuracy": _json_float(self.triplet_accuracy),
            "n_triplets": self.n_triplets,
            "n_images": self.n_images,
            "by_type": {k: {"n": v["n"], "accuracy": _json_float(v["accuracy"])} for k, v in self.by_type.items()},
            "distances": self.distances,
            "retrieval": self.retrieval,
            **({"source": self.source} if self.source else {}),
        }

    def format(self) -> str:
        """A human-readable table."""
        lines = [f"{'triplets':<22}{self.n_triplets:>10}", f"{'distinct images':<22}{self.n_images:>10}"]
        lines.append(f"{'triplet accuracy':<22}{_pct(self.triplet_accuracy):>10}")
        for name, value in self.by_type.items():
            label = f"  {name.replace('_', '-')}"
            lines.append(f"{label:<22}{_pct(value['accuracy']):>10}   (n={value['n']})")
        for side in ("positive", "negative"):
            s = self.distances.get(side, {})
            if s.get("n"):
                lines.append(f"{'d(q,' + side[0] + ') mean/median':<22}{s['mean']:>10.3f}   {s['median']:.3f}")
        if self.retrieval:
            r = self.retrieval
            lines.append(f"retrieval over {r['n_gallery']} images, {r['n_queries']} queries with a match:")
            for key, value in r.items():
                if key.startswith("recall@") or key == "mAP":
                    lines.append(f"  {key:<20}{_pct(value):>10}")
        else:
            lines.append("retrieval: no product ids known (pass a catalog.csv with product_id)")
        return "\n".join(lines)


def _json_float(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def evaluate_embeddings(
    table: EmbeddingSet,
    triplets: pd.DataFrame,
    catalog: pd.DataFrame | None = None,
    ks: Sequence[int] = RETRIEVAL_KS,
    bins: int = HISTOGRAM_BINS,
) -> EvaluationReport:
    """All metrics from embeddings already computed (pure numpy).

    Retrieval runs over the distinct images of ``triplets`` that have a ``product_id`` in ``catalog``.
    """
    d_pos, d_neg = triplet_distances(table, triplets)
    correct = d_pos < d_neg
    by_type = {
        name: {"n": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else float("nan")}
        for name, mask in triplet_types(triplets, catalog).items()
    }
    edges = np.linspace(*HISTOGRAM_RANGE, bins + 1).round(6).tolist()
    distances = {"positive": distance_summary(d_pos, bins), "negative": distance_summary(d_neg, bins),
                 "bin_edges": edges}
    images = list(dict.fromkeys(pd.concat([triplets["query"], triplets["positive"], triplets["negative"]])))
    retrieval = None
    if catalog is not None and {"image", "product_id"} <= set(catalog.columns):
        product = catalog.drop_duplicates("image").set_index("image")["product_id"]
        product = product[product.notna() & (product.astype(str).str.strip() != "")]
        gallery = [p for p in images if p in product.index]
        if gallery:
            retrieval = retrieval_metrics(table.rows(gallery), product.loc[gallery].astype(str).tolist(), ks)
    return EvaluationReport(
        n_triplets=int(len(triplets)),
        n_images=len(images),
        triplet_accuracy=triplet_accuracy(d_pos, d_neg),
        by_type=by_type,
        distances=distances,
        retrieval=retrieval,
        d_pos=d_pos,
        d_neg=d_neg,
    )


def evaluate_triplets(
    model,
    image_root: str | os.PathLike,
    triplets: pd.DataFrame,
    image_size: int | None = None,
    catalog: pd.DataFrame | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationReport:
    """Embeds the triplets' images with ``model`` (a Keras embedding model, or a baseline
    :class:`FeatureExtractor` such as ``make_baseline("histogram")``) and computes every metric."""
    if len(triplets) == 0:
        raise DataError("no triplets to evaluate")
    images = pd.concat([triplets["query"], triplets["positive"], triplets["negative"]])
    if isinstance(model, FeatureExtractor):
        table = model.embed(image_root, images, progress)
    else:
        table = embed_paths(model, image_root, images, image_size, batch_size, progress)
    report = evaluate_embeddings(table, triplets, catalog)
    if isinstance(model, FeatureExtractor):
        report.source = model.describe()
    return report
