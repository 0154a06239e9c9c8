"""Triplet training of an embedding model: the public API of three modules.

- :mod:`mildnet.training.config`: a TrainConfig's unset settings resolved (dataset files, the parent run's or
  the zoo's model settings); :class:`~mildnet.runs.TrainConfig` itself is part of the run directory.
- :mod:`mildnet.training.pipeline`: triplet files, validation hold-out, image checks, augmentation, the
  per-epoch ``tf.data`` datasets, the image cache and cached features for a frozen backbone.
- :mod:`mildnet.training.loop`: :func:`train`, :func:`resume`, the epochs, optimizer state and callbacks.
"""

from mildnet.runs import TrainConfig, TrainConfigError
from mildnet.training.config import INSTANCE_LEARNING_RATE, dataset_splits, default_learning_rate, resolve_dataset
from mildnet.training.loop import TrainingCallback, TrainResult, make_optimizer, make_strategy, resume, train
from mildnet.training.pipeline import (
    augment_image,
    cache_images,
    feature_head,
    feature_triplet_dataset,
    holdout_split,
    read_triplet_frame,
    triplet_dataset,
)

__all__ = [
    "INSTANCE_LEARNING_RATE",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingCallback",
    "augment_image",
    "cache_images",
    "dataset_splits",
    "default_learning_rate",
    "feature_head",
    "feature_triplet_dataset",
    "holdout_split",
    "make_optimizer",
    "make_strategy",
    "read_triplet_frame",
    "resolve_dataset",
    "resume",
    "train",
    "triplet_dataset",
]
