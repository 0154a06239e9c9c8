"""The training input pipeline: triplet files, validation hold-out, image checks, augmentation and the
``tf.data`` datasets of one epoch.

Every distinct image of the training and validation triplets is decoded once, in parallel, into an
in-memory uint8 :class:`~mildnet.data.images.ImageCache` when it fits ``cache_gb``; the epochs then only
gather and augment. Above the budget each epoch decodes its images from disk again (streaming). Both paths
give identical batches. A model whose layers up to ``features`` are frozen trains its head on features
computed once per image instead (:func:`feature_head`, :func:`feature_triplet_dataset`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mildnet.data.images import ImageCache, decoded_bytes, tf_load_image
from mildnet.data.triplets import COLUMNS, check_triplets, read_triplets
from mildnet.embeddings import embed_paths
from mildnet.errors import DataError
from mildnet.runs import HELDOUT_FILE, TrainConfig
from mildnet.store import EmbeddingSet

log = logging.getLogger(__name__)

# Augmentation of the reference trainer (trainer/task.py): zoom 0.2, shear 0.2 rad, rotation 30 deg,
# 'nearest' fill, horizontal flips. The reference also flipped vertically; we do not: an upside-down
# garment never occurs in a query photo, so it only costs capacity.
ROTATION_DEGREES = 30.0
SHEAR_RADIANS = 0.2
ZOOM_RANGE = 0.2


# --- triplets and splits -------------------------------------------------------------------------


def read_triplet_frame(path: str | os.PathLike) -> pd.DataFrame:
    """The usable triplets of a MILDNet triplet CSV (bad rows skipped with a warning); DataError when none is."""
    tf_ = read_triplets(path)
    if tf_.problems:
        kinds = pd.Series([p.kind for p in tf_.problems]).value_counts().to_dict()
        log.warning("%s: skipped %d bad rows (%s)", path, len(tf_.problems),
                    ", ".join(f"{n} {k}" for k, n in kinds.items()))
    if tf_.triplets.empty:
        raise DataError(f"{path}: no usable triplets ({tf_.n_rows} rows read)")
    return tf_.triplets.loc[:, list(COLUMNS)].reset_index(drop=True)


def holdout_split(triplets: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits off about ``fraction`` of the query images as validation: their triplets are the validation
    set, and no training triplet uses a held-out query image in any role (as another query's positive or
    negative it would be trained on, and a (q, p) pair trained as (p, q) scores the same distance), so
    validation scores queries the model never saw. Deterministic in ``seed``; keeps at least one query on each
    side when there are two or more."""
    queries = np.array(sorted(triplets["query"].unique()))
    if fraction <= 0 or len(queries) < 2:
        return triplets.reset_index(drop=True), triplets.iloc[:0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    n_val = min(max(1, int(round(fraction * len(queries)))), len(queries) - 1)
    val_queries = set(rng.permutation(queries)[:n_val])
    val = triplets[triplets["query"].isin(val_queries)].reset_index(drop=True)
    return without_images(triplets, val_queries), val


def without_images(triplets: pd.DataFrame, images: set) -> pd.DataFrame:
    """The triplets that use none of ``images`` as query, positive or negative."""
    uses = triplets["query"].isin(images) | triplets["positive"].isin(images) | triplets["negative"].isin(images)
    return triplets[~uses].reset_index(drop=True)


def _check_images(root: Path, files: Sequence[Path], frames: list[pd.DataFrame], verify: bool, skip: bool):
    """Fails (DataError naming the count and first files) on missing or unreadable images, or with
    ``skip`` drops the triplets using them, with a warning. Returns the frames, filtered."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    report = check_triplets(root, list(files), verify_images=verify)
    bad = sorted(report.bad_images)
    if not bad:
        return frames
    shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    message = (f"{len(bad)} of {report.n_images} images named in the triplets are missing or unreadable "
               f"under {root}: {shown}")
    if not skip:
        raise DataError(message + " (fix the files, or pass --skip-missing to drop those triplets)")
    log.warning("%s; dropping the triplets that use them", message)
    bad_set = set(bad)
    kept = [f[~(f["query"].isin(bad_set) | f["positive"].isin(bad_set) | f["negative"].isin(bad_set))]
            .reset_index(drop=True) for f in frames]
    if kept[0].empty:
        raise DataError(message + ": no training triplet is left")
    return kept


def prepare_data(config: TrainConfig, run_dir: Path, new_run: bool) -> dict:
    """The run's training and validation triplets (``train``, ``val``), whether validation was held out of
    the training file (``heldout``) and the counts config.json records (``summary``)."""
    root = Path(config.images)
    train_df = read_triplet_frame(config.triplets)
    files = [Path(config.triplets)]
    heldout = False
    if config.val_triplets:
        val_df = read_triplet_frame(config.val_triplets)
        files.append(Path(config.val_triplets))
    elif not new_run and (run_dir / HELDOUT_FILE).is_file():
        # Resume: the held-out queries must not flow back into training, in any role.
        val_df = read_triplet_frame(run_dir / HELDOUT_FILE)
        train_df = without_images(train_df, set(val_df["query"]))
    else:
        train_df, val_df = holdout_split(train_df, config.val_fraction, config.seed)
        heldout = True
    frames = _check_images(root, files, [train_df, val_df], config.verify_images, config.skip_missing)
    train_df, val_df = frames
    # Decided after the bad images are dropped: an empty held-out file would break --resume and evaluate.
    heldout = heldout and not val_df.empty
    summary = {
        "n_train_triplets": len(train_df),
        "n_val_triplets": len(val_df),
        "val_source": "file" if config.val_triplets else ("heldout" if len(val_df) else "none"),
    }
    return {"train": train_df, "val": val_df, "heldout": heldout, "summary": summary}


# --- augmentation and datasets ---------------------------------------------------------------


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


def cached_features(model, config: TrainConfig, frames: Sequence[pd.DataFrame],
                    cache: ImageCache | None) -> EmbeddingSet:
    """The ``features`` layer's output for every distinct image of ``frames``, computed once."""
    import keras

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
