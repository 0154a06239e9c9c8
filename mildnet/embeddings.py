"""Catalog embeddings: run a model over a folder of images and cache the matrix in a store.

A cached :class:`~mildnet.store.EmbeddingSet` is tied to two fingerprints kept in its metadata:

- the *model fingerprint* (:func:`model_fingerprint`): weights bytes + architecture, so a retrained or
  different model never reuses another model's vectors;
- the *catalog fingerprint* (:func:`catalog_fingerprint`): relative paths, sizes and modification times of
  the images, computed with ``stat`` only (no decoding), so checking the cache costs milliseconds.

A cache is served only when both match. When only the catalog changed, :func:`update_catalog` embeds just
the new (or modified) images and drops removed ones; anything else is rebuilt. Sets live under
``cache_key(dataset, model_fingerprint)`` so several models of one catalog coexist in a store.

Rows are always in sorted id order (ids are '/'-separated paths relative to the image root), which makes
the result independent of listing order and lets shards (contiguous slices of that order) merge back into
exactly the unsharded row order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mildnet.data.images import ImageCache, ImageSource, decode_batches, list_images, load_image, missing_message
from mildnet.errors import DataError, ImageError, ModelError, StoreError
from mildnet.store import EmbeddingSet, Store, utc_now_iso

__all__ = [
    "EmbedOptions",
    "EmbedResult",
    "UpdatePlan",
    "cache_key",
    "catalog_fingerprint",
    "catalog_ids",
    "dataset_name",
    "embed_files",
    "embed_image",
    "embed_images",
    "embed_paths",
    "load_cached",
    "merge_shards",
    "model_fingerprint",
    "model_image_size",
    "run_model",
    "parse_shard",
    "plan_update",
    "shard_ids",
    "shard_key",
    "update_catalog",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

# Bumped when the stored vectors change (decoding path, how the model is run): a set stored under another
# version is rebuilt, never reused or extended. 2: the model runs as one compiled graph (`run_model`), whose
# float rounding differs from the eager op-by-op call of version 1 in the last bits. 3: JPEGs larger than twice
# the model's input are decoded at 1/2, 1/4 or 1/8 scale (`load_image`), which moves their pixels slightly.
EMBEDDING_VERSION = 3
# Frozen at 1, apart from EMBEDDING_VERSION: it is hashed into model_fingerprint, which shipped calibrations
# (calibration.json "model_fingerprint") and cache keys record; bumping it would orphan them for a change of
# the vectors' last bits that the version check above already handles.
_FINGERPRINT_VERSION = 1
_MISSING = "missing"


# --------------------------------------------------------------------------------------------------------------
# Fingerprints and keys
# --------------------------------------------------------------------------------------------------------------


def model_fingerprint(model) -> str:
    """SHA-256 (hex) of a Keras model's architecture and weights.

    Weights are hashed by variable path, dtype, shape and raw bytes; the architecture by the layer classes,
    names and configs (JSON with sorted keys). Things that change on save/load (build config, compile state,
    object ids) are left out, so a model and its ``.keras`` reload give the same fingerprint.
    """
    h = hashlib.sha256()
    h.update(f"mildnet-embedding-v{_FINGERPRINT_VERSION}\n".encode())
    h.update(f"model:{model.name}\n".encode())
    for layer in model.layers:
        try:
            config = layer.get_config()
        except (NotImplementedError, TypeError):
            config = {}
        # Layer names are part of the config; dtype policies serialise differently across Keras versions.
        config = {k: v for k, v in config.items() if k not in ("dtype", "build_config", "trainable")}
        h.update(f"layer:{type(layer).__name__}:".encode())
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        h.update(b"\n")
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy()))
        path = getattr(weight, "path", weight.name)
        h.update(f"weight:{path}:{value.dtype.str}:{value.shape}\n".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _file_signature(root: Path, image_id: str) -> str:
    try:
        st = (root / image_id).stat()
    except OSError:
        return _MISSING
    return f"{st.st_size}:{st.st_mtime_ns}"


def _signatures(root: Path, ids: Sequence[str]) -> list[str]:
    return [_file_signature(root, i) for i in ids]


def _fingerprint_of(ids: Sequence[str], signatures: Sequence[str]) -> str:
    h = hashlib.sha256()
    for image_id, sig in zip(ids, signatures):
        h.update(f"{image_id}\t{sig}\n".encode("utf-8"))
    return h.hexdigest()


def catalog_fingerprint(image_root: str | os.PathLike, ids: Iterable[str]) -> str:
    """SHA-256 (hex) of the sorted relative paths with each file's size and mtime (``stat`` only).

    A new, removed, replaced or touched image changes it; a missing file counts as its own state, so it
    changes again when the file appears.
    """
    ids = _normalise_ids(ids)
    return _fingerprint_of(ids, _signatures(Path(image_root), ids))


def dataset_name(image_root: str | os.PathLike) -> str:
    """The default dataset part of a cache key for a folder that is not a registered dataset: the folder's name
    and 8 hex digits of its resolved path. The name alone made two shops' ``photos`` folders share one set in a
    store: embedding the second replaced the first, and searching the first returned the second's products
    under paths that do not exist (issue 18 F4)."""
    path = Path(os.path.abspath(image_root))
    try:
        path = path.resolve()
    except (OSError, RuntimeError):  # a link loop: the absolute path still names the folder
        pass
    digest = hashlib.sha256(path.as_posix().encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{path.name or 'images'}-{digest}"


def cache_key(dataset: str, model_fp: str) -> str:
    """The store key of a catalog embedded by a model: ``"<dataset>/<first 16 hex of the fingerprint>"``."""
    if not dataset or not model_fp:
        raise ValueError("cache_key needs a dataset name and a model fingerprint")
    return f"{dataset}/{model_fp[:16]}"


def shard_key(key: str, index: int, count: int) -> str:
    return f"{key}/shard-{index}-of-{count}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ValueError otherwise."""
    try:
        left, right = str(text).split("/")
        index, count = int(left), int(right)
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    _check_shard(index, count)
    return index, count


def _check_shard(index: int, count: int) -> None:
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1} for {count} shards, got {index}")


def shard_ids(ids: Sequence[str], index: int, count: int) -> list[str]:
    """The ``index``-th of ``count`` contiguous, near-equal slices of the sorted ids (deterministic)."""
    _check_shard(index, count)
    ids = _normalise_ids(ids)
    bounds = np.linspace(0, len(ids), count + 1).round().astype(int)
    return ids[bounds[index] : bounds[index + 1]]


def catalog_state(image_root: str | os.PathLike, ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(ids as stored: normalised and sorted, each file's signature)``: what :func:`plan_update` compares with
    a cached set (one ``stat`` a photo)."""
    ids = _normalise_ids(ids)
    return ids, _signatures(Path(image_root), ids)


def _normalise_ids(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, str):
        raise DataError("ids must be a list of relative image paths, not a single string")
    out = sorted({str(i).replace("\\", "/") for i in ids})
    for i in out:
        if not i or i.startswith("/") or ".." in i.split("/"):
            raise DataError(f"image ids must be paths relative to the image root, got {i!r}")
    return out


def catalog_ids(image_root: str | os.PathLike, include: Sequence[str] | None = None) -> list[str]:
    """The images of a catalog: those a ``catalog.csv`` in the root lists, else every image under the root.

    ``include`` keeps only ids starting with one of the given prefixes (e.g. ``["validation/", "test/"]``).
    """
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    catalog_file = root / "catalog.csv"
    if catalog_file.is_file():
        from mildnet.data.catalog import read_catalog

        ids = list(read_catalog(catalog_file)["image"])
    else:
        ids = list_images(root)
    if include:
        prefixes = tuple(p.replace("\\", "/") for p in include)
        ids = [i for i in ids if i.startswith(prefixes)]
    if not ids:
        what = f" matching {', '.join(include)}" if include else ""
        raise DataError(f"no images{what} found under {root}")
    return _normalise_ids(ids)


# --------------------------------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------------------------------


def model_image_size(model) -> int | None:
    """The square input side a model was built for, or None when it accepts any size."""
    shape = tuple(model.inputs[0].shape)
    return int(shape[1]) if len(shape) == 4 and shape[1] is not None else None


def _resolve_size(model, image_size: int | None) -> int:
    fixed = model_image_size(model)
    if image_size is None:
        if fixed is None:
            raise ModelError("the model accepts any input size: pass image_size")
        return fixed
    image_size = int(image_size)
    if fixed is not None and fixed != image_size:
        raise ModelError(f"the model takes {fixed}x{fixed} images, not {image_size}x{image_size}")
    return image_size


def _embedding_dim(model) -> int:
    return int(model.outputs[0].shape[-1])


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length. The zoo models end in an L2 layer already; this keeps
    "dot product = cosine" true for any Keras model and for the learning-free baselines."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# model -> {image size: compiled call}. Weak keys so a model the app drops (retrained run, other model) frees
# its graph too; the compiled call holds the model only weakly, or the entry would keep its own key alive.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED_LOCK = threading.Lock()


def _compiled(model, size: int, dtype: str):
    import tensorflow as tf

    with _COMPILED_LOCK:
        per_input = _COMPILED.setdefault(model, {})
        fn = per_input.get((size, dtype))
        if fn is None:
            ref = weakref.ref(model)

            def call(batch):
                # uint8 pixels are cast inside the graph: exact, multi-threaded, and a quarter of the bytes to
                # hand over (a numpy cast of a 64-image batch cost ~0.1 ms an image).
                return ref()(tf.cast(batch, tf.float32), training=False)

            # A free batch dimension: batches of 64, the last partial batch and a single upload share one
            # graph, hence the same kernels: a photo alone and in a batch agree to ~2e-7 (blocking in the
            # convolutions differs), so an uploaded catalogue photo scores 1.000 with itself.
            fn = tf.function(call, input_signature=[tf.TensorSpec([None, size, size, 3], tf.as_dtype(dtype))])
            per_input[(size, dtype)] = fn
    return fn


def run_model(model, batch) -> np.ndarray:
    """The model's raw float32 outputs for a (B, S, S, 3) batch of pixels in [0, 255]: uint8 (what
    :func:`~mildnet.data.images.load_image` decodes) or float.

    Every embedding path (catalogue batches, uploads, the CLI's query image, evaluation) goes through this
    one compiled graph per model, size and input type: run eagerly, the model is ~25% slower on CPU (op-by-op
    dispatch), and mixing eager and compiled calls would change the vectors' last bits between the catalogue
    and a query. Decoded photos are always uint8, so a catalogue image and the same image uploaded share a graph.
    """
    shape = tuple(batch.shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise ValueError(f"run_model needs a (batch, size, size, 3) image batch, got shape {shape}")
    import tensorflow as tf

    dtype = "uint8" if getattr(batch, "dtype", None) == np.uint8 else "float32"
    if dtype == "float32" and not hasattr(batch, "numpy"):  # numpy of another dtype; tensors come as float32
        batch = np.asarray(batch, dtype=np.float32)
    try:
        return np.asarray(_compiled(model, int(shape[1]), dtype)(batch), dtype=np.float32)
    except tf.errors.OpError as exc:
        # Out of memory, a layer failing at run time: one line for the CLI and the app, not TensorFlow's dump.
        raise ModelError(f"the model failed on a batch of {shape[0]} images of {shape[1]} px: "
                         f"{type(exc).__name__}: {_op_error_reason(exc)}") from None


_NOT_A_REASON = ("File ", "Detected at node", "Graph execution error", "Hint:", "[Op:", "[[")


def _op_error_reason(exc) -> str:
    """The line of a TensorFlow error that says what went wrong. A graph error's text is mostly the Python stack
    that built the failing op; the reason is the line before TensorFlow's ``[[{{node ...}}]]`` marker, and a
    "Hint:" and an ``[Op:...]`` line may follow it. An eager error is one line inside ``{{function_node ...}}``
    and ``[Op:...]`` wrappers."""
    lines = [line.strip() for line in (getattr(exc, "message", None) or str(exc)).splitlines()]
    marker = next((i for i, line in enumerate(lines) if line.startswith("[[")), len(lines))
    reasons = [_unwrapped(line) for line in lines[:marker] if line and not line.startswith(_NOT_A_REASON)]
    reasons = [line for line in reasons if line]
    reason = reasons[-1] if reasons else type(exc).__name__
    if reason.startswith("OOM when allocating"):
        reason += " (out of memory: try a smaller batch size)"
    return reason[:300]


def _unwrapped(line: str) -> str:
    line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line)
    return re.sub(r"\s*\[\[\{\{node .*$|\s*\[Op:[^\]]*\].*$", "", line).strip()


def embed_images(
    model,
    paths: Sequence[str | os.PathLike],
    image_size: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> np.ndarray:
    """Embeds image files (decoded ahead by :func:`~mildnet.data.images.decode_batches`): float32 (N, D),
    L2-normalised.

    Every image is embedded, including the last partial batch. ``progress(done, total)`` is called after
    each batch. An unreadable image raises :class:`ImageError` naming it (see :func:`update_catalog` for a
    job that skips such images instead).
    """
    size = _resolve_size(model, image_size)
    vectors, _ = embed_files(model, [os.fspath(p) for p in paths], size, batch_size, progress, strict=True)
    return normalize_rows(vectors)


def embed_files(
    model, paths: Sequence[str | os.PathLike], size: int, batch_size: int = 64, progress: Progress | None = None,
    *, strict: bool = False,
) -> tuple[np.ndarray, dict[str, str]]:
    """The model's raw float32 outputs for image files at ``size`` px, in order, and ``{path: reason}`` for the
    files that did not decode (left out of the outputs). ``strict``: raise :class:`ImageError` naming the first
    such file instead. ``progress(done, total)`` follows the batches. The one loop behind catalogue embedding,
    :func:`embed_images` and :func:`embed_paths`."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    chunks: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    done = 0
    for batch in decode_batches(paths, size, batch_size):
        if strict and batch.failed:
            path, reason = next(iter(batch.failed.items()))
            raise ImageError(reason if path in reason else f"{path}: {reason}")
        if batch.paths:
            chunks.append(run_model(model, batch.pixels))
        skipped.update(batch.failed)
        done += len(batch.paths) + len(batch.failed)
        if progress is not None:
            progress(done, len(paths))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, _embedding_dim(model)), dtype=np.float32)
    return vectors, skipped


def _embed_skipping(
    model, paths: list[str], image_size: int | None, batch_size: int, progress: Progress | None
) -> tuple[np.ndarray, dict[str, str]]:
    """Embeds ``paths``; images that fail to decode are left out. Returns (L2-normalised vectors of the good
    paths in order, {bad path: reason})."""
    vectors, skipped = embed_files(model, paths, _resolve_size(model, image_size), batch_size, progress)
    return normalize_rows(vectors), skipped


def embed_image(model, source: ImageSource, image_size: int | None = None) -> np.ndarray:
    """One image (a path or uploaded bytes) -> its float32 (D,) L2-normalised embedding.

    Decoded with :func:`load_image`, exactly like catalog images; a bad image raises :class:`ImageError`.
    """
    size = _resolve_size(model, image_size)
    pixels = load_image(source, size)[None]
    return normalize_rows(run_model(model, pixels))[0]


# --------------------------------------------------------------------------------------------------------------
# Catalog embedding with a cache
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    """What :func:`update_catalog` did.

    ``status``: ``"reused"`` (cache fresh, nothing embedded), ``"updated"`` (same model, catalog changed:
    only new/changed images embedded), ``"built"`` (no cache) or ``"rebuilt"`` (stale cache replaced, or
    ``rebuild=True``). ``embedded``: images run through the model in this call; ``removed``: rows dropped
    because their image left the catalog; ``skipped``: ``[{id, reason}]`` unreadable images (also in
    ``embeddings.meta["skipped"]``).
    """

    embeddings: EmbeddingSet
    key: str
    status: str
    embedded: int
    removed: int
    skipped: list[dict]
    seconds: float

    def summary(self) -> str:
        s = self.embeddings
        text = f"{self.status}: {len(s)} images, dim {s.dim}, key {self.key!r}"
        if self.status == "updated":
            text += f" ({self.embedded} embedded, {self.removed} removed)"
        if self.skipped:
            text += f"; {len(self.skipped)} unreadable image(s) skipped"
        return text


def _is_fresh(cached: EmbeddingSet | None, model_fp: str, catalog_fp: str, image_size: int) -> bool:
    return (
        cached is not None
        and cached.model_fingerprint == model_fp
        and cached.catalog_fingerprint == catalog_fp
        and cached.meta.get("image_size") == image_size
        and cached.meta.get("embedding_version") == EMBEDDING_VERSION
    )


def _incremental_base(cached: EmbeddingSet | None, model_fp: str, image_size: int) -> bool:
    """A cache whose rows can be kept: same model and pixels, with per-row file signatures."""
    if cached is None or cached.model_fingerprint != model_fp:
        return False
    if cached.meta.get("image_size") != image_size or cached.meta.get("embedding_version") != EMBEDDING_VERSION:
        return False
    sigs = cached.meta.get("signatures")
    return isinstance(sigs, list) and len(sigs) == len(cached)


@dataclasses.dataclass(frozen=True)
class EmbedOptions:
    """How :func:`update_catalog` names, embeds and labels a catalogue's set; every field may be left out.

    ``key`` defaults to ``cache_key(dataset or dataset_name(image_root), model fingerprint)``; ``shard=(i, n)``
    embeds the i-th of n slices under :func:`shard_key`; ``rebuild`` ignores the cached set; ``model_fp``
    spares hashing a big model's weights again when the caller knows it; ``model_name`` and ``extra_meta``
    go into the set's metadata.
    """

    key: str | None = None
    dataset: str | None = None
    image_size: int | None = None
    batch_size: int = 64
    shard: tuple[int, int] | None = None
    rebuild: bool = False
    model_fp: str | None = None
    model_name: str | None = None
    extra_meta: dict | None = None


@dataclasses.dataclass(frozen=True)
class UpdatePlan:
    """What :func:`update_catalog` does to a cached set, decided without the model (see :func:`plan_update`).

    ``keep``: id -> row of the cached set whose vector still belongs to the unchanged file; ``embed``: ids to
    run through the model, in catalogue order; ``kept_skips``: remembered unreadable images whose file has not
    changed (not retried); ``missing``: ids whose file is absent; ``dropped``: cached ids that left the catalogue.
    """

    status: str  # "reused", "updated", "built" or "rebuilt", as in EmbedResult
    catalog_fp: str
    keep: dict[str, int]
    embed: list[str]
    kept_skips: dict[str, dict]
    missing: list[str]
    dropped: list[str]


def plan_update(
    cached: EmbeddingSet | None,
    ids: Sequence[str],
    signatures: Sequence[str],
    *,
    model_fp: str,
    image_size: int,
    rebuild: bool = False,
) -> UpdatePlan:
    """Which images to keep, embed or drop, from the cached set (None: nothing cached), the catalogue's
    ``ids`` and their file ``signatures`` (size and mtime, or ``"missing"``), the model fingerprint and the
    image size. Pure: no file, store or model is touched.

    Rows (and remembered skips) of unchanged files are kept when the cache comes from the same model and
    pixels; anything else is (re-)embedded, and ``rebuild=True`` embeds everything whatever the cache holds.
    """
    catalog_fp = _fingerprint_of(ids, signatures)
    if not rebuild and _is_fresh(cached, model_fp, catalog_fp, image_size):
        return UpdatePlan("reused", catalog_fp, {i: r for r, i in enumerate(cached.ids)}, [], {}, [], [])
    keep: dict[str, int] = {}
    kept_skips: dict[str, dict] = {}
    dropped: list[str] = []
    if not rebuild and _incremental_base(cached, model_fp, image_size):
        now = dict(zip(ids, signatures))
        for row, (i, sig) in enumerate(zip(cached.ids, cached.meta["signatures"])):
            if now.get(i) == sig:
                keep[i] = row
            elif i not in now:
                dropped.append(i)
        for entry in cached.meta.get("skipped", []):
            if isinstance(entry, dict) and now.get(entry.get("id")) == entry.get("signature"):
                kept_skips[entry["id"]] = entry
        status = "updated"
    else:
        status = "rebuilt" if cached is not None or rebuild else "built"
    embed = [i for i, sig in zip(ids, signatures) if i not in keep and i not in kept_skips and sig != _MISSING]
    missing = [i for i, sig in zip(ids, signatures) if sig == _MISSING]
    return UpdatePlan(status, catalog_fp, keep, embed, kept_skips, missing, dropped)


def update_catalog(
    model,
    image_root: str | os.PathLike,
    store: Store,
    ids: Iterable[str] | None = None,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> EmbedResult:
    """Embeds a catalog into ``store`` (or reuses/updates the cached set) and reports what was done.

    ``ids``: relative image paths; default :func:`catalog_ids` (``catalog.csv`` in the root, else all
    images). ``options``: the fields of :class:`EmbedOptions` (``key``, ``dataset``, ``image_size``,
    ``batch_size``, ``shard``, ``rebuild``, ``model_fp``, ``model_name``, ``extra_meta``); merge shards with
    :func:`merge_shards`. :func:`plan_update` decides what to embed; this runs the model and writes the set.
    Unreadable images are skipped and listed in ``meta["skipped"]``; the job never dies on one bad file.
    """
    start = time.perf_counter()
    opts = EmbedOptions(**options)
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    size = _resolve_size(model, opts.image_size)
    model_fp = opts.model_fp or model_fingerprint(model)
    all_ids = catalog_ids(root) if ids is None else _normalise_ids(ids)
    if not all_ids:
        raise DataError(f"no photos to search under {root}: the folder holds no jpg, png, webp, bmp or gif; add "
                        "photos to it")
    base_key = opts.key or cache_key(opts.dataset or dataset_name(root), model_fp)
    all_sigs = _signatures(root, all_ids)
    if opts.shard is not None:
        index, count = opts.shard
        wanted = set(shard_ids(all_ids, index, count))
        pairs = [(i, s) for i, s in zip(all_ids, all_sigs) if i in wanted]
        ids_now, sigs_now = [p[0] for p in pairs], [p[1] for p in pairs]
        store_key = shard_key(base_key, index, count)
    else:
        ids_now, sigs_now = all_ids, all_sigs
        store_key = base_key

    cached = None if opts.rebuild else store.get(store_key)
    if cached is not None and cached.dtype == "float16" and getattr(store, "dtype", None) == "float32":
        cached = None  # half-precision rows cannot be widened back to what the model gave: embed them again
    plan = plan_update(cached, ids_now, sigs_now, model_fp=model_fp, image_size=size, rebuild=opts.rebuild)
    if plan.status == "reused":
        cached = _refresh_reused(store, store_key, cached, _fingerprint_of(all_ids, all_sigs) if opts.shard else None)
        return EmbedResult(cached, store_key, "reused", 0, 0, list(cached.meta.get("skipped", [])),
                           time.perf_counter() - start)

    out_ids, matrix, skipped, embedded = _run_plan(model, root, plan, cached, ids_now, sigs_now, size,
                                                   opts.batch_size, progress)
    sig_of = dict(zip(ids_now, sigs_now))
    meta = {
        "model_fingerprint": model_fp,
        "catalog_fingerprint": plan.catalog_fp,
        "dim": int(matrix.shape[1]),
        "image_size": size,
        "model_name": opts.model_name or model.name,
        "dataset": (opts.dataset or dataset_name(root)) if opts.key is None else base_key,
        "image_root": str(root.resolve()),
        "created": utc_now_iso(),
        "embedding_version": EMBEDDING_VERSION,
        "signatures": [sig_of[i] for i in out_ids],
        "skipped": skipped,
        **(opts.extra_meta or {}),
    }
    if opts.shard is not None:
        meta["shard"] = [opts.shard[0], opts.shard[1]]
        meta["full_catalog_fingerprint"] = _fingerprint_of(all_ids, all_sigs)
    result = EmbeddingSet(out_ids, out_ids, matrix, meta)
    store.put(store_key, result)
    return EmbedResult(result, store_key, plan.status, embedded, len(plan.dropped), meta["skipped"],
                       time.perf_counter() - start)


def _refresh_reused(store: Store, key: str, cached: EmbeddingSet, full_fp: str | None) -> EmbeddingSet:
    """A reused set rewritten without embedding anything when what it records is out of date: a shard's view of
    the whole catalogue (an image changed in another shard; left stale, ``merge_shards`` would refuse these
    shards for ever), or the vectors' precision (a float16 store must not keep serving a float32 set; the
    other way round is embedded again, see update_catalog)."""
    meta = cached.meta
    if full_fp is not None and meta.get("full_catalog_fingerprint") != full_fp:
        meta = {**meta, "full_catalog_fingerprint": full_fp}
    wanted = getattr(store, "dtype", None)
    if meta is cached.meta and wanted in (None, cached.dtype):
        return cached
    refreshed = EmbeddingSet(cached.ids, cached.paths, cached.vectors, meta)
    store.put(key, refreshed)
    return refreshed if wanted in (None, refreshed.dtype) else refreshed.astype(wanted)


def _run_plan(
    model, root: Path, plan: UpdatePlan, cached: EmbeddingSet | None, ids: Sequence[str], signatures: Sequence[str],
    size: int, batch_size: int, progress: Progress | None,
) -> tuple[list[str], np.ndarray, list[dict], int]:
    """Embeds ``plan.embed`` and joins the kept rows: ``(row ids in catalogue order, their float32 matrix,
    skipped entries sorted by id, images embedded)``."""
    sig_of = dict(zip(ids, signatures))
    skipped = dict(plan.kept_skips)
    for i in plan.missing:
        skipped[i] = {"id": i, "reason": f"image file not found: {root / i}", "signature": _MISSING}
    vectors, bad = _embed_skipping(model, [str(root / i) for i in plan.embed], size, batch_size, progress)
    bad_ids = {i for i in plan.embed if str(root / i) in bad}
    for i in plan.embed:
        if i in bad_ids:
            skipped[i] = {"id": i, "reason": bad[str(root / i)], "signature": sig_of[i]}
    for entry in skipped.values():
        if entry["id"] not in plan.kept_skips:
            # Callers show EmbedResult.skipped; a log warning would print a second copy on the CLI.
            log.info("skipping unreadable image %s: %s", entry["id"], entry["reason"])

    fresh_row = {i: r for r, i in enumerate(i for i in plan.embed if i not in bad_ids)}
    out_ids = [i for i in ids if i in plan.keep or i in fresh_row]
    matrix = np.empty((len(out_ids), _embedding_dim(model)), dtype=np.float32)
    for r, i in enumerate(out_ids):
        matrix[r] = cached.vectors[plan.keep[i]] if i in plan.keep else vectors[fresh_row[i]]
    return out_ids, matrix, sorted(skipped.values(), key=lambda e: e["id"]), len(fresh_row)


def merge_shards(store: Store, key: str, count: int, *, delete_shards: bool = False) -> EmbeddingSet:
    """Merges the ``count`` shards stored under ``shard_key(key, i, count)`` into ``key`` and returns the set.

    All shards must exist (the error names the missing ones) and come from the same model and catalog
    state; the merged set's catalog fingerprint is that of the whole catalog, so a later
    :func:`update_catalog` without shards reuses it.
    """
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    shards, missing = [], []
    for index in range(count):
        s = store.get(shard_key(key, index, count))
        if s is None:
            missing.append(index)
        shards.append(s)
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        raise StoreError(
            f"cannot merge {key!r}: shard(s) {names} not found in {store.describe()}; embed them with --shard i/{count}"
        )
    fulls = {s.meta.get("full_catalog_fingerprint") for s in shards}
    if len(fulls) != 1 or None in fulls:
        raise DataError(
            f"the shards of {key!r} were embedded from different catalog states (images changed in between); "
            "re-embed the shards"
        )
    skipped = sorted((e for s in shards for e in s.meta.get("skipped", [])), key=lambda e: e["id"])
    meta = {k: v for k, v in shards[0].meta.items() if k not in ("shard", "full_catalog_fingerprint")}
    meta.update(
        catalog_fingerprint=fulls.pop(),
        signatures=[sig for s in shards for sig in s.meta.get("signatures", [])],
        skipped=skipped,
        shards=count,
        created=utc_now_iso(),
    )
    merged = EmbeddingSet.merge(shards, meta=meta)
    store.put(key, merged)
    if delete_shards:
        for index in range(count):
            store.delete(shard_key(key, index, count))
    return merged


# --------------------------------------------------------------------------------------------------------------
# For the app and the CLI
# --------------------------------------------------------------------------------------------------------------


def load_cached(
    model,
    image_root: str | os.PathLike,
    store: Store,
    ids: Iterable[str] | None = None,
    *,
    dataset: str | None = None,
    image_size: int | None = None,
    model_fp: str | None = None,
) -> EmbeddingSet | None:
    """The cached set if it is fresh (same model, same catalog files), else None. Never embeds anything."""
    size = _resolve_size(model, image_size)
    model_fp = model_fp or model_fingerprint(model)
    root = Path(image_root)
    all_ids = catalog_ids(root) if ids is None else _normalise_ids(ids)
    cached = store.get(cache_key(dataset or dataset_name(root), model_fp))
    if _is_fresh(cached, model_fp, catalog_fingerprint(root, all_ids), size):
        return cached
    return None


# --------------------------------------------------------------------------------------------------------------
# Images named by path under a root (training, calibration, evaluation)
# --------------------------------------------------------------------------------------------------------------


def embed_paths(
    model,
    image_root: str | os.PathLike,
    rel_paths: Iterable[str],
    image_size: int | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    cache: ImageCache | None = None,
    normalize: bool = True,
) -> EmbeddingSet:
    """Embeds each distinct image of ``rel_paths`` once (first-seen order), last partial batch included.

    ``image_size`` defaults to the model's input size. ``progress(done, total)`` is called after
    each batch. A missing or undecodable image raises :class:`DataError` naming it. With a ``cache``
    of that size holding every image, no image is decoded (same pixels, so the same embeddings).
    ``normalize=False`` keeps the model's raw outputs (intermediate features, not embeddings).
    """
    unique = list(dict.fromkeys(rel_paths))
    if image_size is None:
        image_size = model_image_size(model)
        if image_size is None:
            raise ValueError("the model accepts any input size: pass image_size")
    if not unique:
        dim = int(model.outputs[0].shape[-1])
        return EmbeddingSet.from_paths([], np.zeros((0, dim), dtype=np.float32))
    if cache is not None and cache.size == image_size and all(p in cache for p in unique):
        return _embed_cached(model, cache, unique, batch_size, progress, normalize)
    root = Path(image_root)
    missing = [p for p in unique if not (root / p).is_file()]
    if missing:
        raise DataError(missing_message(missing, len(unique), root))
    try:
        vectors, _ = embed_files(model, [root / p for p in unique], image_size, batch_size, progress, strict=True)
    except ImageError as exc:
        raise DataError(f"could not read an image under {root}: {exc}") from None
    return EmbeddingSet.from_paths(unique, normalize_rows(vectors) if normalize else vectors)


def _embed_cached(model, cache: ImageCache, unique: list[str], batch_size: int, progress,
                  normalize=True) -> EmbeddingSet:
    rows = cache.rows(unique)
    chunks = []
    for start in range(0, len(rows), batch_size):
        batch = cache.pixels[rows[start : start + batch_size]]
        chunks.append(run_model(model, batch))
        if progress is not None:
            progress(min(start + batch_size, len(rows)), len(rows))
    vectors = np.concatenate(chunks)
    return EmbeddingSet.from_paths(unique, normalize_rows(vectors) if normalize else vectors)
