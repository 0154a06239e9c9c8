"""Resolving a :class:`~mildnet.runs.TrainConfig` before training: a dataset name becomes its files, and
unset model settings become the parent run's (``init_from``) or the zoo's defaults.

``TrainConfig`` itself lives in :mod:`mildnet.runs` (it is what a run's ``config.json`` holds, and reading a
run must not import the training loop); it is re-exported by :mod:`mildnet.training`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mildnet.data import manifest
from mildnet.errors import DataError
from mildnet.runs import RunInfo, TrainConfig, TrainConfigError

# A flat folder's triplets are instance-level (the positive an augmented view of the query's own photo): they are
# all learnt within the first epoch, so validation cannot tell epochs apart, and at the default 1e-3 ten epochs
# push apart other photos of the same type and colour. Measured on Luma's train photos added as a flat folder
# (issue 17; test type + colour triplets of other Luma products): from a clothing-small model 0.884 -> 0.865 at
# 1e-3, 0.899 at 1e-4 (3 or 10 epochs); from the shipped model 0.925 -> 0.903 at 1e-3, 0.923 at 1e-4.
INSTANCE_LEARNING_RATE = 1e-4


def default_learning_rate(dataset: str | None) -> float:
    """The learning rate to train ``dataset`` with when the user gives none: :data:`INSTANCE_LEARNING_RATE` for a
    registered dataset of instance-level triplets (a flat folder added with ``data add``), else TrainConfig's.
    An unknown name gets TrainConfig's (resolving the dataset reports it)."""
    default = TrainConfig().learning_rate
    if not dataset:
        return default
    try:
        rows = manifest.dataset_splits(dataset)
    except DataError:
        return default
    return INSTANCE_LEARNING_RATE if any(row.kind == "instance" for row in rows) else default


def dataset_splits(name: str, progress=None) -> dict:
    """``{split: DatasetSplit}`` of a ``data_manifest.csv`` dataset, prepared (generated, imported or
    downloaded by ``manifest.prepare``) first if its files are missing."""
    splits = manifest.dataset_splits(name)
    if manifest.missing_files(splits):
        splits = manifest.prepare(name, progress=progress)
    return {s.split: s for s in splits}


def check_model_settings(config: TrainConfig) -> None:
    """Raises the zoo's ``ModelArgumentError`` for a model name, input size or embedding size no zoo model accepts
    (unset ones are the zoo's defaults). :func:`~mildnet.training.train` calls it before the dataset is resolved,
    which may generate or download it. A run started from a parent (``init_from``) is not checked here: it takes
    the parent's model, and :func:`resolve_model_settings` reports settings that contradict it."""
    if config.init_from:
        return
    # Imported here: the zoo builds Keras models, and resolving a dataset should not import TensorFlow.
    from mildnet.models.zoo import DEFAULT_MODEL, check_model_arguments, default_input_size

    name = config.model or DEFAULT_MODEL
    size = default_input_size(name) if config.image_size is None else config.image_size
    check_model_arguments(name, size, config.embedding_dim)


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


def resolve_model_settings(config: TrainConfig, parent: RunInfo | None) -> TrainConfig:
    """``config`` with ``model``, ``image_size``, ``weights`` and ``freeze`` decided: taken from ``parent``
    (TrainConfigError where the two contradict), else from the zoo's defaults."""
    # Imported here: the zoo builds Keras models, and resolving a dataset should not import TensorFlow.
    from mildnet.models.zoo import (
        DEFAULT_MODEL,
        default_freeze,
        default_input_size,
        has_pretrained_weights,
        normalise_weights,
    )

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
        updates["weights"] = None  # weights come from the parent's best model
        if config.freeze == "auto":  # the parent's features are as pretrained as its backbone was
            updates["freeze"] = pc.freeze
    else:
        updates["model"] = config.model or DEFAULT_MODEL
        updates["image_size"] = config.image_size or default_input_size(updates["model"])
        if config.weights == "auto":
            updates["weights"] = "imagenet" if has_pretrained_weights(updates["model"]) else None
        elif normalise_weights(config.weights) is None:
            updates["weights"] = None
        if config.freeze == "auto":
            pretrained = updates.get("weights", config.weights) is not None
            updates["freeze"] = default_freeze(updates["model"]) if pretrained else "none"
    return dataclasses.replace(config, **updates)
