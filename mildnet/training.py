"""Triplet training of an embedding model (MILDNet / RankNet deep ranking).

One shared-weight embedding network sees the query, positive and negative images of a batch as ONE
stacked batch (concat 3B -> embed -> split): a single forward pass, and batch-norm statistics taken
over all three roles, as in the reference (which interleaved q, p, n rows in one batch).

Everything a run produces lives in its **run directory**::

    config.json    {"config": TrainConfig, "fingerprint", "lineage": [...], "data": {...}, "created", ...}
    history.csv    one row per finished epoch: loss, accuracy, val_loss, val_accuracy, seconds, best
    best.keras     the model of the best epoch so far (models.save_model, self-contained)
    last.keras     the model after the last finished epoch (what --resume continues from)
    optimizer.npz  the optimizer state after that epoch (momentum etc.; numpy, no pickle)
    metrics.json   the final summary (also written when a run is stopped)
    val_triplets.csv  the held-out validation triplets, when no validation file was given

``history.csv`` is the commit point of an epoch: both models are written first (atomically), then the
history row. A stop request (``stop_event``) or a crash in the middle of an epoch discards that
partial epoch, so ``resume`` always restarts from a finished epoch with matching history.

Input pipeline: every distinct image of the training and validation triplets is decoded once, in
parallel, into an in-memory uint8 :class:`~mildnet.data.images.ImageCache` when it fits
``cache_gb``; the epochs then only gather and augment. Above the budget each epoch decodes its
images from disk again (streaming). Both paths give identical batches.

The loop is a plain ``tf.GradientTape`` loop under a ``tf.distribute`` strategy (the default one on a
single device, ``MirroredStrategy`` when several GPUs are visible); it installs no signal handler and
keeps no global state, so the app can run it in a background thread and stop it with a
``threading.Event``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mildnet.errors import DataError, MildnetError, ModelError
from mildnet.data.images import ImageCache, decoded_bytes, pipeline_error_reason

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HELDOUT_FILE = "val_triplets.csv"
OPTIMIZER_FILE = "optimizer.npz"

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("hinge", "contrastive")
RUN_FORMAT = 1

# Augmentation of the reference trainer (trainer/task.py): zoom 0.2, shear 0.2 rad, rotation 30 deg,
# 'nearest' fill, horizontal flips. The reference also flipped vertically; we do not: an upside-down
# garment never occurs in a query photo, so it only costs capacity.
ROTATION_DEGREES = 30.0
SHEAR_RADIANS = 0.2
ZOOM_RANGE = 0.2

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "best")

# Memory for decoded images (uint8): 2 GB holds ~14,000 images at 224 px.
DEFAULT_CACHE_GB = 2.0

# What freeze="auto" freezes when a model starts from pretrained weights: the layers feeding (and
# including) this block. On CPU the backward pass dominates a step, and most of it is spent in the
# high-resolution early blocks (SqueezeNet at 224 px, CPU-s per step of 16 triplets: all trainable
# ~1.1, conv1..fire3 frozen ~0.66, conv1..fire5 ~0.49). Their ImageNet edge/colour/texture filters
# need no retuning for product photos: on clothing-dataset-small, 5 epochs with conv1..fire5 frozen
# reached the held-out accuracy of conv1..fire3 frozen (91.0% vs 90.6%) with 19% less CPU time
# (14.6 vs 17.9 CPU-minutes; docs/results-clothing-small.md). Models not listed keep the trainable
# flags their zoo builder set (the VGG models freeze their own early blocks).
# squeezenet_colour freezes its whole backbone: only its linear embedding layer trains, on features
# computed once per image (see _fit), which on real photos learnt more than fine-tuning fire6..fire9 did.
FREEZE_THROUGH = {"mildnet_squeezenet": "fire5", "squeezenet_gap": "fire5", "squeezenet_colour": "features"}


class TrainConfigError(MildnetError):
    """A training setting is invalid or contradicts the run it resumes or starts from."""


# --- configuration -------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run directory.

    ``None`` for ``model``, ``image_size`` and ``embedding_dim`` means "the parent run's" with
    ``init_from``, else the zoo default (``models.DEFAULT_MODEL``, 224 px, the model's own dim).
    ``weights="auto"`` means ImageNet weights where the model has a pretrained backbone.
    """

    images: str = ""  # image root; triplet paths are relative to it
    triplets: str = ""  # training triplet CSV (MILDNet format)
    val_triplets: str | None = None  # validation CSV; None -> hold out val_fraction of the queries
    dataset: str | None = None  # data_manifest.csv name that filled images/triplets (informational)
    out: str | None = None  # run directory; None -> runs/<model>-<timestamp>
    model: str | None = None
    weights: str | None = "auto"  # auto | imagenet | none | path to backbone weights
    image_size: int | None = None
    embedding_dim: int | None = None
    # Defaults tuned on real photos (docs/training-recipe.md); the reference used 6 epochs of SGD
    # (lr 1e-3, momentum 0.9, Nesterov), 16 triplets a step and margin 1.0.
    epochs: int = 10
    batch_size: int = 32  # triplets per step (3x images through the network)
    steps_per_epoch: int | None = None  # cap on steps per epoch (a fresh random subset each epoch)
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam, or sgd: momentum + Nesterov, as the reference
    momentum: float = 0.9
    loss: str = "hinge"
    # Squared distances of unit vectors lie in [0, 4]; 1.0 asks every negative to be far away, which
    # on real photos (where a same-type other-colour negative is genuinely close) fit worse than 0.3.
    margin: float = 0.3
    augment: bool = True
    seed: int = 0
    val_fraction: float = 0.1
    init_from: str | None = None  # run directory whose best.keras starts this run (incremental)
    verify_images: bool = True  # decode-check every image's header before training
    skip_missing: bool = False  # drop triplets with missing/unreadable images instead of failing
    # auto | none | a layer or block name (e.g. "fire5"): freeze every layer feeding it, itself included.
    # auto = FREEZE_THROUGH[model] when starting from pretrained weights or a parent run, else none.
    freeze: str = "auto"
    cache_gb: float = DEFAULT_CACHE_GB  # memory for decoded images; 0 = decode from disk every epoch

    def validate(self) -> "TrainConfig":
        """Returns self; raises TrainConfigError listing every invalid field."""
        problems = []

        def need(ok: bool, message: str):
            if not ok:
                problems.append(message)

        def positive_int(name, value, allow_none=False):
            if value is None and allow_none:
                return
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive integer, got {value!r}")

        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("steps_per_epoch", self.steps_per_epoch, allow_none=True)
        positive_int("embedding_dim", self.embedding_dim, allow_none=True)
        positive_int("image_size", self.image_size, allow_none=True)
        if isinstance(self.image_size, int) and self.image_size < 8:
            problems.append(f"image_size must be at least 8 pixels, got {self.image_size}")
        need(_is_number(self.learning_rate) and self.learning_rate > 0,
             f"learning_rate must be a positive number, got {self.learning_rate!r}")
        need(_is_number(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(_is_number(self.margin) and self.margin > 0, f"margin must be a positive number, got {self.margin!r}")
        need(_is_number(self.val_fraction) and 0 <= self.val_fraction < 1,
             f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
             f"seed must be a non-negative integer, got {self.seed!r}")
        need(isinstance(self.augment, bool), f"augment must be true or false, got {self.augment!r}")
        need(isinstance(self.freeze, str) and self.freeze.strip() != "",
             f"freeze must be auto, none or a layer name, got {self.freeze!r}")
        need(_is_number(self.cache_gb) and self.cache_gb >= 0,
             f"cache_gb must be a non-negative number, got {self.cache_gb!r}")
        need(bool(self.images), "no image root given (images)")
        need(bool(self.triplets), "no training triplet file given (triplets)")
        if problems:
            raise TrainConfigError("invalid training settings: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"unknown training settings: {', '.join(unknown)}")
        if "freeze" not in data:
            # Written before the setting existed: that run trained every layer; its resume must too.
            data = {**data, "freeze": "none"}
        return cls(**data)

    def fingerprint(self) -> str:
        """Short hash of the settings that shape the model (not where files live or how long it ran)."""
        ignored = {"out", "epochs", "verify_images", "cache_gb"}
        payload = {k: v for k, v in self.to_dict().items() if k not in ignored}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- callbacks and results -----------------------------------------------------------------------


class TrainingCallback:
    """Progress hooks; override what you need. Called from the training thread, so an
    implementation feeding a UI must hand data over thread-safely (e.g. a ``queue.Queue``).

    Epochs are 1-based; after a resume the first epoch reported is the one after the last saved.
    ``logs`` of ``on_batch_end``: running ``loss``, ``accuracy`` over the epoch so far, ``steps``.
    ``logs`` of ``on_epoch_end``: the history row (``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``, ``seconds``, ``best``).
    """

    def on_train_begin(self, total_epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_batch_end(self, epoch: int, step: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        pass

    def on_train_end(self, result: "TrainResult") -> None:
        pass


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "completed" or "stopped"
    epochs: int  # epochs asked for
    epochs_completed: int
    best_epoch: int | None
    best: dict | None  # the history row of the best epoch
    monitor: str  # "val_accuracy" (higher is better) or "loss" when there is no validation set
    history: list[dict]
    n_train_triplets: int
    n_val_triplets: int
    seconds: float

    @property
    def best_model_path(self) -> Path | None:
        path = self.run_dir / BEST_MODEL
        return path if path.is_file() else None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        return _jsonable(data)


# --- data ----------------------------------------------------------------------------------------


def _read_triplet_frame(path: str | os.PathLike) -> pd.DataFrame:
    from mildnet.data.triplets import COLUMNS, read_triplets

    tf_ = read_triplets(path)
    if tf_.problems:
        kinds = pd.Series([p.kind for p in tf_.problems]).value_counts().to_dict()
        log.warning("%s: skipped %d bad rows (%s)", path, len(tf_.problems),
                    ", ".join(f"{n} {k}" for k, n in kinds.items()))
    if tf_.triplets.empty:
        raise DataError(f"{path}: no usable triplets ({tf_.n_rows} rows read)")
    return tf_.triplets.loc[:, list(COLUMNS)].reset_index(drop=True)


def holdout_split(triplets: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits off about ``fraction`` of the triplets as validation, by query image: a query's
    triplets all land on one side, so validation never scores a query the model trained on.
    Deterministic in ``seed``; keeps at least one query on each side when there are two or more."""
    queries = np.array(sorted(triplets["query"].unique()))
    if fraction <= 0 or len(queries) < 2:
        return triplets.reset_index(drop=True), triplets.iloc[:0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    n_val = min(max(1, int(round(fraction * len(queries)))), len(queries) - 1)
    val_queries = set(rng.permutation(queries)[:n_val])
    is_val = triplets["query"].isin(val_queries)
    return triplets[~is_val].reset_index(drop=True), triplets[is_val].reset_index(drop=True)


def _check_images(root: Path, files: Sequence[Path], frames: list[pd.DataFrame], verify: bool, skip: bool):
    """Fails (DataError naming the count and first files) on missing or unreadable images, or with
    ``skip`` drops the triplets using them, with a warning. Returns the frames, filtered."""
    from mildnet.data.triplets import check_triplets

    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    report = check_triplets(root, list(files), verify_images=verify)
    bad = sorted(report.bad_images)
    if not bad:
        return frames
    shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    message = f"{len(bad)} of {report.n_images} images named in the triplets are missing or unreadable under {root}: {shown}"
    if not skip:
        raise DataError(message + " (fix the files, or pass --skip-missing to drop those triplets)")
    log.warning("%s; dropping the triplets that use them", message)
    bad_set = set(bad)
    kept = [f[~(f["query"].isin(bad_set) | f["positive"].isin(bad_set) | f["negative"].isin(bad_set))].reset_index(drop=True)
            for f in frames]
    if kept[0].empty:
        raise DataError(message + ": no training triplet is left")
    return kept


# --- augmentation --------------------------------------------------------------------------------


def augment_image(image, seed):
    """Random horizontal flip, rotation, shear and zoom of one float32 (H, W, 3) image, in TF ops.

    ``seed`` is a shape-[2] integer tensor: the same seed gives the same transform (stateless ops),
    which makes augmented epochs reproducible and identical after a resume. Border pixels are
    extended ('nearest'), like the reference's ImageDataGenerator.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    theta = tf.random.stateless_uniform([], seeds[1], -ROTATION_DEGREES, ROTATION_DEGREES) * (math.pi / 180.0)
    shear = tf.random.stateless_uniform([], seeds[2], -SHEAR_RADIANS, SHEAR_RADIANS)
    zx = tf.random.stateless_uniform([], seeds[3], 1.0 - ZOOM_RANGE, 1.0 + ZOOM_RANGE)
    zy = tf.random.stateless_uniform([], seeds[4], 1.0 - ZOOM_RANGE, 1.0 + ZOOM_RANGE)
    # Output pixel (x, y) samples input point M @ (x, y) about the centre, M = rotate @ shear @ zoom
    # (the order of Keras' ImageDataGenerator).
    cos, sin = tf.cos(theta), tf.sin(theta)
    a = cos * zx
    b = (-cos * tf.sin(shear) - sin * tf.cos(shear)) * zy
    c = sin * zx
    d = (-sin * tf.sin(shear) + cos * tf.cos(shear)) * zy
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    transform = tf.stack([a, b, cx - a * cx - b * cy, c, d, cy - c * cx - d * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )[0]
    return tf.clip_by_value(out, 0.0, 255.0)


def triplet_dataset(
    triplets: pd.DataFrame,
    image_root: str | os.PathLike,
    image_size: int,
    batch_size: int,
    augment: bool = False,
    seed: int = 0,
    epoch: int = 1,
    max_triplets: int | None = None,
    cache: ImageCache | None = None,
):
    """One epoch of ``(q, p, n)`` float32 image batches, shuffled by ``(seed, epoch)``.

    Deterministic in ``(seed, epoch)``, including augmentation, so a resumed run sees the epochs an
    uninterrupted one would. The last partial batch is kept (no triplet is silently dropped).

    With a ``cache`` (an :class:`~mildnet.data.images.ImageCache` of ``image_size`` holding every
    image of ``triplets``) images are looked up instead of decoded; the batches are identical.
    """
    import tensorflow as tf

    from mildnet.data.images import tf_load_image

    order = _epoch_order(len(triplets), seed, epoch, max_triplets)
    roles = ("query", "positive", "negative")
    index = np.arange(len(order), dtype=np.int64)
    epoch_seed = np.int64(seed) * 100_003 + epoch

    def augmented(images, i):
        if augment:
            images = [augment_image(img, tf.stack([epoch_seed, 3 * i + k])) for k, img in enumerate(images)]
        return tuple(images)

    if cache is not None:
        if cache.size != image_size:
            raise ValueError(f"the image cache holds {cache.size} px images, the dataset needs {image_size} px")
        columns = [cache.rows(triplets[col].to_numpy()[order]) for col in roles]
        pixels = cache.pixels

        def load(q, p, n, i):
            # One numpy gather per triplet: a few microseconds, against milliseconds for a decode.
            stacked = tf.numpy_function(lambda *rows: pixels[list(rows)], [q, p, n], tf.uint8, stateful=False)
            stacked.set_shape((3, image_size, image_size, 3))
            return augmented(tf.unstack(tf.cast(stacked, tf.float32)), i)

    else:
        root = Path(image_root)
        columns = [[str(root / name) for name in triplets[col].to_numpy()[order]] for col in roles]

        def load(q, p, n, i):
            return augmented([tf_load_image(path, image_size) for path in (q, p, n)], i)

    dataset = tf.data.Dataset.from_tensor_slices((*columns, index))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _epoch_order(n: int, seed: int, epoch: int, max_triplets: int | None) -> np.ndarray:
    """The triplets an epoch visits, in order: a permutation fixed by ``(seed, epoch)`` (so a resumed run
    replays it), cut to ``max_triplets``."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order if max_triplets is None else order[:max_triplets]


def cache_images(
    config: TrainConfig,
    frames: Sequence[pd.DataFrame],
    progress=None,
    should_stop=None,
) -> ImageCache | None:
    """Decodes every distinct image of ``frames`` once into memory when it fits ``config.cache_gb``.

    Returns None (the run then streams from disk, decoding each image every epoch) when the
    estimate is over the budget, or when ``should_stop()`` fired while decoding. Logs which.
    """
    paths = list(dict.fromkeys(p for f in frames for col in ("query", "positive", "negative") for p in f[col]))
    needed = decoded_bytes(len(paths), config.image_size)
    budget = config.cache_gb * 1e9
    if needed > budget:
        log.info("streaming images from disk: %d images at %d px need %.2f GB, over cache_gb=%g",
                 len(paths), config.image_size, needed / 1e9, config.cache_gb)
        return None
    log.info("decoding %d images at %d px into memory (%.2f GB)", len(paths), config.image_size, needed / 1e9)
    started = time.monotonic()
    cache = ImageCache.decode(config.images, paths, config.image_size, progress=progress, should_stop=should_stop)
    if cache is not None:
        log.info("decoded %d images in %.1fs", len(cache), time.monotonic() - started)
    return cache


def feature_head(model):
    """The trainable part above a model's ``features`` layer, as a model of its own (sharing weights),
    when everything feeding that layer is frozen; else None (the whole network trains)."""
    import keras

    from mildnet.models.zoo import FEATURES_LAYER

    try:
        boundary = model.get_layer(FEATURES_LAYER)
    except ValueError:
        return None
    feeding = keras.Model(model.inputs[0], boundary.output)
    if any(layer.trainable_weights for layer in feeding.layers):
        return None
    return keras.Model(boundary.output, model.outputs[0])


def _cached_features(model, config: TrainConfig, frames: Sequence[pd.DataFrame], cache: ImageCache | None):
    """The ``features`` layer's output for every distinct image of ``frames``, computed once."""
    import keras

    from mildnet.evaluation import embed_paths
    from mildnet.models.zoo import FEATURES_LAYER

    extractor = keras.Model(model.inputs[0], model.get_layer(FEATURES_LAYER).output)
    paths = [p for f in frames for col in ("query", "positive", "negative") for p in f[col]]
    started = time.monotonic()
    table = embed_paths(extractor, config.images, paths, config.image_size, batch_size=64, cache=cache,
                        normalize=False)
    log.info("computed the features of %d images in %.1fs", len(table.paths), time.monotonic() - started)
    return table


def feature_triplet_dataset(triplets: pd.DataFrame, features, batch_size: int, seed: int = 0, epoch: int = 1,
                            max_triplets: int | None = None):
    """One epoch of ``(q, p, n)`` feature batches (rows of ``features``, an EmbeddingSet), shuffled
    exactly as :func:`triplet_dataset` shuffles images."""
    import tensorflow as tf

    order = _epoch_order(len(triplets), seed, epoch, max_triplets)
    columns = [features.rows(triplets[col].to_numpy()[order]) for col in ("query", "positive", "negative")]
    return tf.data.Dataset.from_tensor_slices(tuple(columns)).batch(batch_size)


# --- run directory -------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """What a run directory holds, for resume, incremental training, evaluation and the app."""

    run_dir: Path
    config: TrainConfig
    meta: dict  # the whole config.json
    history: pd.DataFrame
    metrics: dict | None

    @property
    def lineage(self) -> list[dict]:
        return self.meta.get("lineage", [])

    @property
    def fingerprint(self) -> str:
        return self.meta.get("fingerprint") or self.config.fingerprint()

    def model_path(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise ValueError(f"which must be 'best' or 'last', got {which!r}")
        return self.run_dir / (BEST_MODEL if which == "best" else LAST_MODEL)


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    """Reads a run directory written by :func:`train`; ModelError if it is not one."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(f"{run_dir} is not a training run directory (no {CONFIG_FILE})")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{config_path} is damaged: {exc}") from None
    history = _read_history(run_dir / HISTORY_FILE)
    metrics = None
    if (run_dir / METRICS_FILE).is_file():
        try:
            metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
        except ValueError:
            log.warning("ignoring damaged %s", run_dir / METRICS_FILE)
    return RunInfo(run_dir, config, meta, history, metrics)


def load_run_model(run_dir: str | os.PathLike, which: str = "best"):
    """The run's ``best`` (default) or ``last`` model, checked to be the architecture it trained."""
    from mildnet import models

    info = read_run(run_dir)
    path = info.model_path(which)
    if not path.is_file():
        raise ModelError(f"{run_dir} has no {path.name} yet (no finished epoch)")
    return models.load_model(path, expected_name=info.config.model)


def _read_history(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    try:
        history = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ModelError(f"{path} is damaged: {exc}") from None
    if "epoch" not in history.columns or list(history["epoch"]) != list(range(1, len(history) + 1)):
        raise ModelError(f"{path} is damaged: epochs are not 1..{len(history)}")
    return history


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_history(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)).to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def _jsonable(value: Any):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def new_run_dir(runs_root: str | os.PathLike, name: str) -> Path:
    """A fresh run folder name: ``name`` and local time, with a counter if two start within a second."""
    runs_root = Path(runs_root)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = runs_root / f"{name}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = runs_root / f"{name}-{stamp}-{n}"
        n += 1
    return candidate


def _lineage_entry(parent: RunInfo) -> dict:
    metrics = parent.metrics or {}
    return {
        "run_dir": str(parent.run_dir.resolve()),
        "fingerprint": parent.fingerprint,
        "model": parent.config.model,
        "triplets": parent.config.triplets,
        "created": parent.meta.get("created"),
        "status": metrics.get("status", "unfinished"),
        "best_epoch": metrics.get("best_epoch"),
        "best": metrics.get("best"),
    }


# --- resolution of defaults ----------------------------------------------------------------------


def dataset_splits(name: str, progress=None) -> dict:
    """``{split: DatasetSplit}`` of a ``data_manifest.csv`` dataset, prepared (generated, imported or
    downloaded by ``manifest.prepare``) first if its files are missing."""
    try:
        from mildnet.data import manifest
    except ImportError:
        raise TrainConfigError("datasets by name need mildnet.data.manifest, which is not installed") from None
    splits = manifest.dataset_splits(name)
    if manifest.missing_files(splits):
        splits = manifest.prepare(name, progress=progress)
    return {s.split: s for s in splits}


def resolve_dataset(config: TrainConfig, progress=None) -> TrainConfig:
    """Fills ``images``/``triplets``/``val_triplets`` from ``data_manifest.csv`` when ``dataset`` is set."""
    if not config.dataset or (config.images and config.triplets):
        return config
    splits = dataset_splits(config.dataset, progress)
    if "train" not in splits:
        raise DataError(f"dataset {config.dataset!r} has no train split")
    updates = {
        "images": config.images or str(splits["train"].image_root),
        "triplets": config.triplets or str(splits["train"].triplets),
    }
    if config.val_triplets is None and "val" in splits:  # else a slice of train is held out
        updates["val_triplets"] = str(splits["val"].triplets)
    return dataclasses.replace(config, **updates)


def _resolve_model_settings(config: TrainConfig, parent: RunInfo | None) -> TrainConfig:
    from mildnet import models

    updates: dict[str, Any] = {}
    if parent is not None:
        pc = parent.config
        for name in ("model", "image_size", "embedding_dim"):
            mine, theirs = getattr(config, name), getattr(pc, name)
            if mine is not None and mine != theirs:
                raise TrainConfigError(
                    f"--init-from {parent.run_dir} trained {name}={theirs!r}; this run asks for {mine!r} "
                    f"(leave {name} unset to continue from it)"
                )
            updates[name] = theirs
        updates["weights"] = None  # weights come from the parent's best.keras
        if config.freeze == "auto":  # the parent's features are as pretrained as its backbone was
            updates["freeze"] = pc.freeze
    else:
        updates["model"] = config.model or models.DEFAULT_MODEL
        updates["image_size"] = config.image_size or 224
        if config.weights == "auto":
            updates["weights"] = "imagenet" if _has_pretrained_backbone(updates["model"]) else None
        elif isinstance(config.weights, str) and config.weights.strip().lower() in ("", "none", "random"):
            updates["weights"] = None
        if config.freeze == "auto":
            pretrained = updates.get("weights", config.weights) is not None
            updates["freeze"] = FREEZE_THROUGH.get(updates["model"], "none") if pretrained else "none"
    return dataclasses.replace(config, **updates)


def _has_pretrained_backbone(name: str) -> bool:
    from mildnet.models import has_pretrained_weights

    return has_pretrained_weights(name)


def freeze_layers(model, freeze: str) -> list[str]:
    """Freezes every layer feeding ``freeze`` (a layer name, or a block prefix such as ``"fire3"``
    meaning the last layer named ``fire3_*``), that layer included. ``"none"`` changes nothing:
    layers the model was built or saved frozen stay frozen. Returns the names of the layers with
    weights that are now frozen. Raises ModelError for a name the model does not have."""
    import keras

    if freeze in ("none", "auto"):
        return []
    names = [layer.name for layer in model.layers]
    if freeze in names:
        boundary = freeze
    else:
        matches = [n for n in names if n.startswith(freeze + "_")]
        if not matches:
            raise ModelError(f"cannot freeze through {freeze!r}: {model.name} has no such layer or block")
        boundary = matches[-1]
    # The layers of the sub-graph input -> boundary are exactly its ancestors, whatever the layer order.
    feeding = keras.Model(model.inputs, model.get_layer(boundary).output)
    frozen = []
    for layer in feeding.layers:
        layer.trainable = False
        if layer.weights:
            frozen.append(layer.name)
    return frozen


# --- the loop ------------------------------------------------------------------------------------


def make_strategy():
    """MirroredStrategy over all GPUs when there are several, else the default (no-op) strategy."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def make_optimizer(config: TrainConfig):
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=config.momentum, nesterov=True)


def _is_better(row: dict, best: dict | None, monitor: str) -> bool:
    if best is None:
        return True
    if monitor == "loss":
        return row["loss"] < best["loss"]
    if row["val_accuracy"] != best["val_accuracy"]:
        return row["val_accuracy"] > best["val_accuracy"]
    return row["val_loss"] < best["val_loss"]  # ties (common on small sets) go to the lower loss


def _keeps_process_rngs(fn):
    """Restores Python's and NumPy's global random states when ``fn`` returns or raises.

    A run seeds them (``keras.utils.set_random_seed``) so its initial weights are reproducible; in the app
    the run is one thread of a shared server process, and without this every other session's random draws
    would follow the training seed afterwards. (TensorFlow's global seed stays set: nothing else in the
    process draws TF random numbers.)
    """
    import functools
    import random

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            return fn(*args, **kwargs)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    return wrapper


@_keeps_process_rngs
def train(
    config: TrainConfig,
    callbacks: Sequence[TrainingCallback] = (),
    stop_event: threading.Event | None = None,
    strategy=None,
) -> TrainResult:
    """Starts a new run in ``config.out`` (which must not hold a run yet) and trains it.

    Raises TrainConfigError / DataError / ModelError before any training on bad settings, files or
    checkpoints. Returns when all epochs ran or ``stop_event`` was set (status ``"stopped"``).
    ``strategy`` (a ``tf.distribute.Strategy``) overrides :func:`make_strategy`.
    """
    config = resolve_dataset(config).validate()
    parent = read_run(config.init_from) if config.init_from else None
    config = _resolve_model_settings(config, parent)
    run_dir = (Path(config.out) if config.out else new_run_dir("runs", config.model)).resolve()
    if (run_dir / CONFIG_FILE).exists():
        raise TrainConfigError(f"{run_dir} already holds a training run: resume it or choose another output folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainConfigError(f"{run_dir} exists and is not a folder")
    config = dataclasses.replace(
        config,
        out=str(run_dir),
        images=str(Path(config.images).resolve()),
        triplets=str(Path(config.triplets).resolve()),
        val_triplets=str(Path(config.val_triplets).resolve()) if config.val_triplets else None,
        init_from=str(Path(config.init_from).resolve()) if config.init_from else None,
    )
    data = _prepare_data(config, run_dir, new_run=True)

    import keras

    keras.utils.set_random_seed(config.seed)
    strategy = strategy or make_strategy()
    with strategy.scope():
        model = _initial_model(config, parent)
    _check_model_input(model, config)
    frozen = freeze_layers(model, config.freeze)
    if frozen:
        log.info("frozen through %s: %s", config.freeze, ", ".join(frozen))
    config = dataclasses.replace(config, embedding_dim=int(model.outputs[0].shape[-1]))
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": RUN_FORMAT,
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "lineage": ([_lineage_entry(parent)] + parent.lineage) if parent else [],
        "data": data["summary"],
        "created": _now(),
        "resumed": [],
    }
    if data["heldout"]:
        from mildnet.data.triplets import write_triplets

        write_triplets(run_dir / HELDOUT_FILE, data["val"])
    _write_json(run_dir / CONFIG_FILE, meta)
    try:
        return _fit(model, strategy, config, run_dir, data, [], callbacks, stop_event)
    except Exception:
        if not (run_dir / HISTORY_FILE).exists():
            _discard_new_run(run_dir, created)
        raise


def _discard_new_run(run_dir: Path, created: bool) -> None:
    """Removes what :func:`train` wrote for a run that failed before its first epoch (e.g. an image the
    decoder refused mid-epoch): a folder holding only config.json would block the same command rerun
    ("already holds a training run") while having nothing to resume. Only our own files are removed."""
    for name in (CONFIG_FILE, HELDOUT_FILE, METRICS_FILE, *(_staged(run_dir / f).name for f in _STAGED_FILES)):
        (run_dir / name).unlink(missing_ok=True)
    if created:
        try:
            run_dir.rmdir()
        except OSError:  # something else was put there meanwhile: leave it
            pass


@_keeps_process_rngs
def resume(
    run_dir: str | os.PathLike,
    callbacks: Sequence[TrainingCallback] = (),
    stop_event: threading.Event | None = None,
    epochs: int | None = None,
    strategy=None,
) -> TrainResult:
    """Continues an interrupted run from its last finished epoch (``last.keras`` + ``optimizer.npz``)
    up to its ``epochs`` (or a new, larger ``epochs``). Shuffling, augmentation and optimizer state
    continue exactly as in an uninterrupted run; only a run directory without ``optimizer.npz``
    restarts the momentum / Adam moments from zero (with a warning)."""
    from mildnet import models

    _recover_staged(Path(run_dir), len(read_run(run_dir).history))
    info = read_run(run_dir)
    run_dir = info.run_dir.resolve()
    config = info.config
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    config.validate()
    done = len(info.history)
    if done >= config.epochs:
        raise TrainConfigError(
            f"{run_dir} already finished {done} of {config.epochs} epochs; ask for more epochs to continue it"
        )
    data = _prepare_data(config, run_dir, new_run=False)
    import keras

    keras.utils.set_random_seed(config.seed + done)
    strategy = strategy or make_strategy()
    with strategy.scope():
        if done:
            model = models.load_model(run_dir / LAST_MODEL, expected_name=config.model)
        else:  # stopped before its first epoch finished: start over the way train() did
            parent = read_run(config.init_from) if config.init_from else None
            model = _initial_model(config, parent)
    _check_model_input(model, config)
    freeze_layers(model, config.freeze)
    meta = dict(info.meta)
    meta["config"] = config.to_dict()
    meta["resumed"] = list(meta.get("resumed", [])) + [{"after_epoch": done, "at": _now()}]
    _write_json(run_dir / CONFIG_FILE, meta)
    rows = info.history.to_dict("records")
    return _fit(model, strategy, config, run_dir, data, rows, callbacks, stop_event)


def _initial_model(config: TrainConfig, parent: RunInfo | None):
    """The parent run's best model (incremental training) or a fresh zoo model."""
    from mildnet import models

    if parent is not None:
        path = parent.model_path("best")
        if not path.is_file():
            raise ModelError(f"--init-from {parent.run_dir} has no {BEST_MODEL} (it never finished an epoch)")
        return models.load_model(path, expected_name=config.model)
    return models.build_model(config.model, config.image_size, config.embedding_dim, config.weights)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_model_input(model, config: TrainConfig) -> None:
    shape = tuple(model.inputs[0].shape)
    if shape[1] is not None and shape[1] != config.image_size:
        raise ModelError(f"the model takes {shape[1]} px images but the run is set to {config.image_size} px")


def _prepare_data(config: TrainConfig, run_dir: Path, new_run: bool) -> dict:
    root = Path(config.images)
    train_df = _read_triplet_frame(config.triplets)
    files = [Path(config.triplets)]
    heldout = False
    if config.val_triplets:
        val_df = _read_triplet_frame(config.val_triplets)
        files.append(Path(config.val_triplets))
    elif not new_run and (run_dir / HELDOUT_FILE).is_file():
        # Resume: the held-out queries must not flow back into training.
        val_df = _read_triplet_frame(run_dir / HELDOUT_FILE)
        train_df = train_df[~train_df["query"].isin(set(val_df["query"]))].reset_index(drop=True)
    else:
        train_df, val_df = holdout_split(train_df, config.val_fraction, config.seed)
        heldout = not val_df.empty
    frames = _check_images(root, files, [train_df, val_df], config.verify_images, config.skip_missing)
    train_df, val_df = frames
    summary = {
        "n_train_triplets": len(train_df),
        "n_val_triplets": len(val_df),
        "val_source": "file" if config.val_triplets else ("heldout" if len(val_df) else "none"),
    }
    return {"train": train_df, "val": val_df, "heldout": heldout, "summary": summary}


def _save_optimizer(optimizer, path: Path, epoch: int) -> None:
    """Optimizer state (step count, momentum / Adam moments) beside last.keras, as a pickle-free .npz:
    the .keras files are inference models and carry none, and without it a resumed run would restart
    its momentum from zero. ``epoch`` says which finished epoch the state belongs to."""
    arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    names = np.array([v.path for v in optimizer.variables], dtype=str)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, names=names, epoch=np.int64(epoch), **arrays)
    os.replace(tmp, path)


# An epoch's best/last model and optimizer state are first written under staged names and renamed into
# place only after history.csv records the epoch, so a crash at any moment leaves files that all belong to
# the same finished epoch (``_recover_staged`` completes or discards an interrupted hand-over).
_STAGED_FILES = (BEST_MODEL, LAST_MODEL, OPTIMIZER_FILE)  # the optimizer last: its epoch decides


def _staged(path: Path) -> Path:
    return path.with_name(f"{path.stem}.next{path.suffix}")


def _publish_staged(run_dir: Path) -> None:
    for name in _STAGED_FILES:
        staged = _staged(run_dir / name)
        if staged.exists():
            os.replace(staged, run_dir / name)


def _recover_staged(run_dir: Path, epochs_in_history: int) -> None:
    """After a crash: publish staged files of an epoch that history.csv recorded, discard the others."""
    staged_optimizer = _staged(run_dir / OPTIMIZER_FILE)
    committed = False
    if staged_optimizer.is_file():
        try:
            with np.load(staged_optimizer, allow_pickle=False) as saved:
                committed = int(saved["epoch"]) <= epochs_in_history
        except (OSError, ValueError, KeyError):
            committed = False  # a torn file cannot belong to a committed epoch: it was written before history
    if committed:
        _publish_staged(run_dir)
        return
    for name in _STAGED_FILES:
        _staged(run_dir / name).unlink(missing_ok=True)


def _restore_optimizer(optimizer, path: Path) -> None:
    """Loads what :func:`_save_optimizer` wrote; a missing or mismatching file only costs a warning
    (the optimizer then restarts from zero state, like a warm restart)."""
    if not path.is_file():
        log.warning("no %s in the run: the optimizer state restarts from zero", path.name)
        return
    try:
        with np.load(path, allow_pickle=False) as saved:
            names = [str(n) for n in saved["names"]]
            values = [saved[f"v{i}"] for i in range(len(names))]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable %s (%s): the optimizer state restarts from zero", path.name, exc)
        return
    variables = optimizer.variables
    # Shapes, not names, decide: Keras numbers optimizer names per process (sgd, sgd_1, ...).
    if len(variables) != len(values) or any(tuple(v.shape) != x.shape for v, x in zip(variables, values)):
        log.warning("%s does not match this model's optimizer: its state restarts from zero", path.name)
        return
    for variable, value in zip(variables, values):
        variable.assign(value)


def _fit(model, strategy, config: TrainConfig, run_dir: Path, data: dict, rows: list[dict],
         callbacks: Sequence[TrainingCallback], stop_event: threading.Event | None) -> TrainResult:
    import tensorflow as tf

    from mildnet import models
    from mildnet.embeddings import normalize_rows
    from mildnet.evaluation import embed_paths, triplet_accuracy, triplet_distances
    from mildnet.losses import get_loss
    from mildnet.losses import triplet_distances as tf_triplet_distances
    from mildnet.store import EmbeddingSet

    train_df, val_df = data["train"], data["val"]
    should_stop = stop_event.is_set if stop_event is not None else None
    cache = cache_images(config, [train_df, val_df], should_stop=should_stop)
    head = feature_head(model)
    features = None
    if head is not None:
        # Nothing below the features layer can change, so each image's features are computed once
        # and the epochs train the head alone: seconds per epoch instead of minutes.
        features = _cached_features(model, config, [train_df, val_df], cache)
        if config.augment:
            log.info("training on cached features: augmentation does not apply")
    loss_fn = get_loss(config.loss)
    margin = float(config.margin)
    monitor = "val_accuracy" if len(val_df) else "loss"
    max_triplets = config.steps_per_epoch * config.batch_size if config.steps_per_epoch else None
    n_epoch_triplets = min(len(train_df), max_triplets or len(train_df))
    steps_per_epoch = math.ceil(n_epoch_triplets / config.batch_size)

    with strategy.scope():
        optimizer = make_optimizer(config)
        # Built here, in the strategy's scope, not lazily inside the replicated step.
        optimizer.build(model.trainable_variables)
        if rows:
            _restore_optimizer(optimizer, run_dir / OPTIMIZER_FILE)

    net = head if head is not None else model

    def step_fn(q, p, n):
        k = tf.shape(q)[0]
        x = tf.concat([q, p, n], axis=0)
        with tf.GradientTape() as tape:
            embeddings = net(x, training=True)
            eq, ep, en = embeddings[:k], embeddings[k : 2 * k], embeddings[2 * k :]
            per_triplet = loss_fn(eq, ep, en, margin=margin)
            # Averaged over the global batch so that summed replica gradients are the batch mean.
            loss = tf.nn.compute_average_loss(per_triplet)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        d_qp, d_qn = tf_triplet_distances(eq, ep, en)
        correct = tf.reduce_sum(tf.cast(d_qp < d_qn, tf.float32))
        return tf.reduce_sum(per_triplet), correct, tf.cast(k, tf.float32)

    def replicated_step(batch):
        per_replica = strategy.run(step_fn, args=batch)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica]

    if strategy.num_replicas_in_sync == 1:
        # A batch-agnostic signature: one trace serves full and last partial batches of every epoch.
        if features is not None:
            spec = tf.TensorSpec([None, features.vectors.shape[1]], tf.float32)
        else:
            spec = tf.TensorSpec([None, config.image_size, config.image_size, 3], tf.float32)
        train_step = tf.function(replicated_step, input_signature=[(spec, spec, spec)])
    else:
        train_step = tf.function(replicated_step, reduce_retracing=True)

    def validate() -> tuple[float, float, tuple | None]:
        """Validation loss, accuracy and the (positive, negative) squared distances it measured."""
        if val_df.empty:
            return float("nan"), float("nan"), None
        images = pd.concat([val_df["query"], val_df["positive"], val_df["negative"]])
        if features is not None:
            unique = list(dict.fromkeys(images))
            vectors = normalize_rows(np.asarray(head(features.rows(unique), training=False)))
            table = EmbeddingSet.from_paths(unique, vectors)
        else:
            table = embed_paths(model, config.images, images, config.image_size,
                                batch_size=max(3 * config.batch_size, 32), cache=cache)
        d_pos, d_neg = triplet_distances(table, val_df)
        q, p, n = (table.rows(val_df[c]) for c in ("query", "positive", "negative"))
        val_loss = float(tf.reduce_mean(loss_fn(q, p, n, margin=margin)))
        return val_loss, triplet_accuracy(d_pos, d_neg), (d_pos, d_neg)

    best = None
    best_distances = None  # the best epoch's validation distances: what the match strength is fitted on
    for row in rows:
        if _is_better(row, best, monitor):
            best = row
    first_epoch = len(rows) + 1
    for cb in callbacks:
        cb.on_train_begin(config.epochs, steps_per_epoch)
    started = time.monotonic()
    stopped = False
    for epoch in range(first_epoch, config.epochs + 1):
        if stop_event is not None and stop_event.is_set():
            stopped = True
            break
        epoch_start = time.monotonic()
        if features is not None:
            dataset = feature_triplet_dataset(train_df, features, config.batch_size, config.seed, epoch, max_triplets)
        else:
            dataset = triplet_dataset(train_df, config.images, config.image_size, config.batch_size,
                                      config.augment, config.seed, epoch, max_triplets, cache=cache)
        total_loss = total_correct = total_n = 0.0
        try:
            for step, batch in enumerate(strategy.experimental_distribute_dataset(dataset), start=1):
                loss_sum, correct, count = (float(v) for v in train_step(batch))
                total_loss += loss_sum
                total_correct += correct
                total_n += count
                logs = {"loss": total_loss / total_n, "accuracy": total_correct / total_n, "steps": steps_per_epoch}
                for cb in callbacks:
                    cb.on_batch_end(epoch, step, logs)
                if stop_event is not None and stop_event.is_set():
                    stopped = True
                    break
        except tf.errors.OpError as exc:
            raise DataError(f"training stopped at epoch {epoch}: could not read an image: {pipeline_error_reason(exc)}") from None
        if stopped:
            # The partial epoch is discarded: last.keras and history stay at the last finished epoch.
            break
        val_loss, val_accuracy, distances = validate()
        row = {
            "epoch": epoch,
            "loss": total_loss / max(total_n, 1),
            "accuracy": total_correct / max(total_n, 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "seconds": round(time.monotonic() - epoch_start, 3),
            "best": False,
        }
        if _is_better(row, best, monitor):
            row["best"] = True
            models.save_model(model, _staged(run_dir / BEST_MODEL))
            best, best_distances = row, distances
        models.save_model(model, _staged(run_dir / LAST_MODEL))
        _save_optimizer(optimizer, _staged(run_dir / OPTIMIZER_FILE), epoch)  # staged last: see _recover
        rows.append(row)
        _write_history(run_dir / HISTORY_FILE, rows)  # the epoch's commit point
        _publish_staged(run_dir)
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(row))
    result = TrainResult(
        run_dir=run_dir,
        status="stopped" if stopped else "completed",
        epochs=config.epochs,
        epochs_completed=len(rows),
        best_epoch=int(best["epoch"]) if best else None,
        best=_jsonable(dict(best)) if best else None,
        monitor=monitor,
        history=_jsonable([dict(r) for r in rows]),
        n_train_triplets=len(train_df),
        n_val_triplets=len(val_df),
        seconds=round(time.monotonic() - started, 3),
    )
    _write_json(run_dir / METRICS_FILE, result.to_dict())
    if best_distances is not None:
        _calibrate(run_dir, best_distances)
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def _calibrate(run_dir: Path, distances: tuple[np.ndarray, np.ndarray]) -> None:
    """Fits the run's match strength (calibration.json) on the validation distances of its best epoch. A
    failure costs the run its calibrated scores, not its model, so it is a warning (``python -m mildnet
    calibrate`` redoes it)."""
    from mildnet.calibration import calibrate_run

    try:
        calibrate_run(run_dir, distances=distances)
    except MildnetError as exc:
        log.warning("could not calibrate the run's match strength: %s", exc)
