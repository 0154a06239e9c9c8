"""Triplet training of an embedding model (MILDNet / RankNet deep ranking): :func:`train`, :func:`resume`.

One shared-weight embedding network sees the query, positive and negative images of a batch as ONE
stacked batch (concat 3B -> embed -> split): a single forward pass, and batch-norm statistics taken
over all three roles, as in the reference (which interleaved q, p, n rows in one batch).

A run writes its run directory (layout: :mod:`mildnet.runs`). ``history.csv`` is the commit point of an
epoch: both models are written first (atomically), then the history row. A stop request (``stop_event``)
or a crash in the middle of an epoch discards that partial epoch, so ``resume`` always restarts from a
finished epoch with matching history.

The loop is a plain ``tf.GradientTape`` loop under a ``tf.distribute`` strategy (the default one on a
single device, ``MirroredStrategy`` when several GPUs are visible); it installs no signal handler and
keeps no global state, so the app can run it in a background thread and stop it with a
``threading.Event``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mildnet.calibration import calibrate_run
from mildnet.data.images import ImageCache, pipeline_error_reason
from mildnet.data.triplets import write_triplets
from mildnet.embeddings import embed_paths, model_fingerprint, model_image_size, normalize_rows
from mildnet.errors import DataError, MildnetError, ModelError
from mildnet.evaluation import triplet_accuracy, triplet_distances
from mildnet.home import data_home
from mildnet.optimizers import get_optimizer
from mildnet.runs import (
    BEST_MODEL,
    CONFIG_FILE,
    HELDOUT_FILE,
    HISTORY_FILE,
    LAST_MODEL,
    LOCK_FILE,
    METRICS_FILE,
    OPTIMIZER_FILE,
    RunInfo,
    TrainConfig,
    TrainConfigError,
    jsonable,
    load_run_model,
    new_run_dir,
    read_run,
    run_lock,
    write_history,
    write_json,
    write_resume_record,
    write_run_config,
)
from mildnet.store import EmbeddingSet
from mildnet.training.config import check_model_settings, resolve_dataset, resolve_model_settings
from mildnet.training.pipeline import (
    cache_images,
    cached_features,
    feature_head,
    feature_triplet_dataset,
    prepare_data,
    triplet_dataset,
)

log = logging.getLogger(__name__)


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
        return jsonable(data)


# --- train and resume ----------------------------------------------------------------------------


def make_strategy():
    """MirroredStrategy over all GPUs when there are several, else the default (no-op) strategy."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def make_optimizer(config: TrainConfig):
    """A fresh Keras optimizer for the run's settings (``optimizer`` names one of ``mildnet.optimizers``)."""
    return get_optimizer(config.optimizer, config.learning_rate, config.momentum)


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
    checkpoints; a model name or size no zoo model takes (``ModelArgumentError``) before the dataset is
    resolved. Returns when all epochs ran or ``stop_event`` was set (status ``"stopped"``).
    ``strategy`` (a ``tf.distribute.Strategy``) overrides :func:`make_strategy`.
    """
    check_model_settings(config)
    config = resolve_dataset(config).validate()
    parent = read_run(config.init_from) if config.init_from else None
    config = resolve_model_settings(config, parent)
    # By default where the app lists runs (the data home's runs/), so a run trained here can be picked there.
    run_dir = (Path(config.out) if config.out else new_run_dir(data_home() / "runs", config.model)).resolve()
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
    data = prepare_data(config, run_dir, new_run=True)

    import keras

    from mildnet import models

    keras.utils.set_random_seed(config.seed)
    strategy = strategy or make_strategy()
    with strategy.scope():
        model = _initial_model(config, parent)
    _check_model_input(model, config)
    frozen = models.freeze_layers(model, config.freeze)
    if frozen:
        log.info("frozen through %s: %s", config.freeze, ", ".join(frozen))
    config = dataclasses.replace(config, embedding_dim=int(model.outputs[0].shape[-1]))
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if data["heldout"]:
        write_triplets(run_dir / HELDOUT_FILE, data["val"])
    write_run_config(run_dir, config, parent=parent, data=data["summary"])
    try:
        with run_lock(run_dir):
            return _fit(model, strategy, config, run_dir, data, [], callbacks, stop_event)
    except Exception:
        if not (run_dir / HISTORY_FILE).exists():
            _discard_new_run(run_dir, created)
        raise


def _discard_new_run(run_dir: Path, created: bool) -> None:
    """Removes what :func:`train` wrote for a run that failed before its first epoch (e.g. an image the
    decoder refused mid-epoch): a folder holding only config.json would block the same command rerun
    ("already holds a training run") while having nothing to resume. Only our own files are removed."""
    for name in (CONFIG_FILE, HELDOUT_FILE, METRICS_FILE, LOCK_FILE,
                 *(_staged(run_dir / f).name for f in _STAGED_FILES)):
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
    read_run(run_dir)  # a one-line error for a folder that is not a run, before anything is written into it
    with run_lock(Path(run_dir)):
        return _resume_locked(Path(run_dir), callbacks, stop_event, epochs, strategy)


def _resume_locked(run_dir: Path, callbacks, stop_event, epochs, strategy) -> TrainResult:
    from mildnet import models

    _recover_staged(run_dir, len(read_run(run_dir).history))
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
    data = prepare_data(config, run_dir, new_run=False)
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
    models.freeze_layers(model, config.freeze)
    write_resume_record(info, config, after_epoch=done)
    rows = info.history.to_dict("records")
    return _fit(model, strategy, config, run_dir, data, rows, callbacks, stop_event)


def _initial_model(config: TrainConfig, parent: RunInfo | None):
    """The parent run's best model (incremental training) or a fresh zoo model."""
    from mildnet import models

    if parent is not None:
        path = parent.model_path("best")
        if not path.is_file():
            raise ModelError(f"--init-from {parent.run_dir} has no {path.name} (it never finished an epoch)")
        return models.load_model(path, expected_name=config.model)
    return models.build_model(config.model, config.image_size, config.embedding_dim, config.weights)


def _check_model_input(model, config: TrainConfig) -> None:
    shape = tuple(model.inputs[0].shape)
    if shape[1] is not None and shape[1] != config.image_size:
        raise ModelError(f"the model takes {shape[1]} px images but the run is set to {config.image_size} px")


# --- optimizer state and staged files -----------------------------------------------------------


def _save_optimizer(optimizer, path: Path, epoch: int, model=None) -> None:
    """Optimizer state (step count, momentum / Adam moments) beside last.keras, as a pickle-free .npz:
    the .keras files are inference models and carry none, and without it a resumed run would restart
    its momentum from zero. ``epoch`` says which finished epoch the state belongs to. The model's random
    generators (Dropout's seed state) go with it: a loaded .keras starts them afresh, so a resumed run drew
    other dropout masks than an uninterrupted one."""
    arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    names = np.array([v.path for v in optimizer.variables], dtype=str)
    rngs = _seed_states(model) if model is not None else []
    arrays.update({f"r{i}": np.asarray(v.numpy()) for i, v in enumerate(rngs)})
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, names=names, epoch=np.int64(epoch), n_rng=np.int64(len(rngs)), **arrays)
    os.replace(tmp, path)


def _seed_states(model) -> list:
    """The model's seed-generator state variables (Dropout and other random layers), in layer order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


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


def _restore_optimizer(optimizer, model, path: Path) -> None:
    """Loads what :func:`_save_optimizer` wrote: the optimizer's state and the model's random-generator
    states. A missing or mismatching file only costs a warning (the optimizer then restarts from zero state,
    like a warm restart; dropout draws restart)."""
    if not path.is_file():
        log.warning("no %s in the run: the optimizer state restarts from zero", path.name)
        return
    try:
        with np.load(path, allow_pickle=False) as saved:
            names = [str(n) for n in saved["names"]]
            values = [saved[f"v{i}"] for i in range(len(names))]
            # Files from before the random states were kept have no n_rng.
            rngs = [saved[f"r{i}"] for i in range(int(saved["n_rng"]))] if "n_rng" in saved.files else []
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable %s (%s): the optimizer state restarts from zero", path.name, exc)
        return
    variables = optimizer.variables
    # Shapes, not names, decide: Keras numbers optimizer names per process (sgd, sgd_1, ...).
    if len(variables) != len(values) or any(tuple(v.shape) != x.shape for v, x in zip(variables, values)):
        log.warning("%s does not match this model's optimizer: its state restarts from zero", path.name)
    else:
        for variable, value in zip(variables, values):
            variable.assign(value)
    states = _seed_states(model)
    if rngs and (len(rngs) != len(states) or any(tuple(v.shape) != x.shape for v, x in zip(states, rngs))):
        log.warning("%s does not match this model's random layers: dropout draws restart", path.name)
        return
    for variable, value in zip(states, rngs):
        variable.assign(value)


# --- the epochs ----------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """What every epoch of a run reads: its triplets, the decoded images (None: streamed from disk) and, when
    everything below ``features`` is frozen, the features computed once with the ``head`` that trains on them."""

    train: pd.DataFrame
    val: pd.DataFrame
    cache: ImageCache | None
    head: Any = None  # None: the whole model trains on images
    features: EmbeddingSet | None = None


def _fit(model, strategy, config: TrainConfig, run_dir: Path, data: dict, rows: list[dict],
         callbacks: Sequence[TrainingCallback], stop_event: threading.Event | None) -> TrainResult:
    from mildnet.losses import get_loss

    inputs = _epoch_inputs(model, config, data, stop_event)
    loss_fn = get_loss(config.loss)
    monitor = "val_accuracy" if len(inputs.val) else "loss"
    max_triplets = config.steps_per_epoch * config.batch_size if config.steps_per_epoch else None
    n_epoch_triplets = min(len(inputs.train), max_triplets or len(inputs.train))
    steps_per_epoch = math.ceil(n_epoch_triplets / config.batch_size)
    optimizer = _optimizer_for(model, strategy, config, run_dir, resumed=bool(rows))
    train_step = _train_step(model, inputs, optimizer, strategy, loss_fn, config)

    best = None
    best_distances = None  # the best epoch's validation distances: what the match strength is fitted on
    best_fingerprint = None  # model_fingerprint of the best.keras this session wrote: calibration records it
    for row in rows:
        if _is_better(row, best, monitor):
            best = row
    for cb in callbacks:
        cb.on_train_begin(config.epochs, steps_per_epoch)
    started = time.monotonic()
    stopped = False
    for epoch in range(len(rows) + 1, config.epochs + 1):
        if stop_event is not None and stop_event.is_set():
            stopped = True
            break
        epoch_start = time.monotonic()
        totals = _run_epoch(strategy, train_step, _epoch_dataset(inputs, config, epoch, max_triplets), epoch,
                            steps_per_epoch, callbacks, stop_event)
        if totals is None:
            # The partial epoch is discarded: last.keras and history stay at the last finished epoch.
            stopped = True
            break
        total_loss, total_correct, total_n = totals
        val_loss, val_accuracy, distances = _validate(model, inputs, config, loss_fn)
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
            best, best_distances = row, distances
        rows.append(row)
        _commit_epoch(model, optimizer, run_dir, rows)
        if row["best"] and distances is not None:
            # Hashed now, from the weights just saved: the model in memory moves on with the next epoch, and
            # calibrating would otherwise load best.keras again only to hash it (a model and its .keras reload
            # hash the same).
            best_fingerprint = model_fingerprint(model)
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(row))
    result = TrainResult(
        run_dir=run_dir,
        status="stopped" if stopped else "completed",
        epochs=config.epochs,
        epochs_completed=len(rows),
        best_epoch=int(best["epoch"]) if best else None,
        best=jsonable(dict(best)) if best else None,
        monitor=monitor,
        history=jsonable([dict(r) for r in rows]),
        n_train_triplets=len(inputs.train),
        n_val_triplets=len(inputs.val),
        seconds=round(time.monotonic() - started, 3),
    )
    write_json(run_dir / METRICS_FILE, result.to_dict())
    if best_distances is not None:
        _calibrate(run_dir, best_distances, best_fingerprint)
    elif best is not None and len(inputs.val):
        # Resumed after its best epoch: this session has no distances of it, and the session that found it may
        # have been interrupted before calibrating. Measured again from best.keras (one pass over validation).
        _calibrate(run_dir, None, None)
    if best is not None and config.init_from:
        _carry_product_types(run_dir, config, inputs)
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def _epoch_inputs(model, config: TrainConfig, data: dict, stop_event: threading.Event | None) -> _Inputs:
    train_df, val_df = data["train"], data["val"]
    should_stop = stop_event.is_set if stop_event is not None else None
    inputs = _Inputs(train_df, val_df, cache_images(config, [train_df, val_df], should_stop=should_stop))
    inputs.head = feature_head(model)
    if inputs.head is not None:
        # Nothing below the features layer can change, so each image's features are computed once
        # and the epochs train the head alone: seconds per epoch instead of minutes.
        inputs.features = cached_features(model, config, [train_df, val_df], inputs.cache)
        if config.augment:
            log.info("training on cached features: augmentation does not apply")
    return inputs


def _epoch_dataset(inputs: _Inputs, config: TrainConfig, epoch: int, max_triplets: int | None):
    if inputs.features is not None:
        return feature_triplet_dataset(inputs.train, inputs.features, config.batch_size, config.seed, epoch,
                                       max_triplets)
    return triplet_dataset(inputs.train, config.images, config.image_size, config.batch_size,
                           config.augment, config.seed, epoch, max_triplets, cache=inputs.cache)


def _optimizer_for(model, strategy, config: TrainConfig, run_dir: Path, resumed: bool):
    with strategy.scope():
        optimizer = make_optimizer(config)
        # Built here, in the strategy's scope, not lazily inside the replicated step.
        optimizer.build(model.trainable_variables)
        if resumed:
            _restore_optimizer(optimizer, model, run_dir / OPTIMIZER_FILE)
    return optimizer


def _train_step(model, inputs: _Inputs, optimizer, strategy, loss_fn, config: TrainConfig):
    """The compiled step: ``(q, p, n)`` batch -> summed loss, correct triplets and triplet count (all replicas)."""
    import tensorflow as tf

    from mildnet.losses import triplet_distances as tf_triplet_distances

    net = inputs.head if inputs.head is not None else model
    margin = float(config.margin)

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

    if strategy.num_replicas_in_sync > 1:
        return tf.function(replicated_step, reduce_retracing=True)
    # A batch-agnostic signature: one trace serves full and last partial batches of every epoch.
    if inputs.features is not None:
        spec = tf.TensorSpec([None, inputs.features.vectors.shape[1]], tf.float32)
    else:
        spec = tf.TensorSpec([None, config.image_size, config.image_size, 3], tf.float32)
    return tf.function(replicated_step, input_signature=[(spec, spec, spec)])


def _run_epoch(strategy, train_step, dataset, epoch: int, steps_per_epoch: int,
               callbacks: Sequence[TrainingCallback], stop_event: threading.Event | None):
    """Trains one epoch: ``(summed loss, correct triplets, triplets)``, or None when ``stop_event`` fired."""
    import tensorflow as tf

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
                return None
    except tf.errors.OpError as exc:
        raise DataError(f"training stopped at epoch {epoch}: could not read an image: "
                        f"{pipeline_error_reason(exc)}") from None
    return total_loss, total_correct, total_n


def _validate(model, inputs: _Inputs, config: TrainConfig, loss_fn) -> tuple[float, float, tuple | None]:
    """Validation loss, accuracy and the (positive, negative) squared distances it measured."""
    import tensorflow as tf

    val_df = inputs.val
    if val_df.empty:
        return float("nan"), float("nan"), None
    images = pd.concat([val_df["query"], val_df["positive"], val_df["negative"]])
    if inputs.features is not None:
        unique = list(dict.fromkeys(images))
        vectors = inputs.head(inputs.features.rows(unique), training=False)
        table = EmbeddingSet.from_paths(unique, normalize_rows(np.asarray(vectors)))
    else:
        table = embed_paths(model, config.images, images, config.image_size,
                            batch_size=max(3 * config.batch_size, 32), cache=inputs.cache)
    d_pos, d_neg = triplet_distances(table, val_df)
    q, p, n = (table.rows(val_df[c]) for c in ("query", "positive", "negative"))
    val_loss = float(tf.reduce_mean(loss_fn(q, p, n, margin=float(config.margin))))
    return val_loss, triplet_accuracy(d_pos, d_neg), (d_pos, d_neg)


def _commit_epoch(model, optimizer, run_dir: Path, rows: list[dict]) -> None:
    """Writes the epoch of ``rows[-1]``: its models and optimizer state staged, then history.csv (the commit
    point), then the staged files published."""
    from mildnet import models

    epoch = rows[-1]["epoch"]
    if rows[-1]["best"]:
        models.save_model(model, _staged(run_dir / BEST_MODEL))
    models.save_model(model, _staged(run_dir / LAST_MODEL))
    _save_optimizer(optimizer, _staged(run_dir / OPTIMIZER_FILE), epoch, model)  # staged last: see _recover
    write_history(run_dir / HISTORY_FILE, rows)
    _publish_staged(run_dir)


# Photos of the run's training set the carried-over type head is fitted on (two embedding passes of them).
CARRY_PHOTOS = 512


def _carry_product_types(run_dir: Path, config: TrainConfig, inputs: _Inputs) -> None:
    """A run continued from one with a product-type head (the shipped real-photo model has one) gets it carried
    over to its own weights (:func:`mildnet.product_types.carry_over`), so its catalogues keep deciding "close match"
    by kind. A failure, or a model that moved too far, costs the run the head, not its model: a warning."""
    from mildnet import product_types as pt

    parent_dir = Path(config.init_from)
    if not (parent_dir / pt.FILE).is_file():
        return
    try:
        parent = load_run_model(parent_dir)
        types = pt.load(parent_dir, model_fingerprint(parent))
        if types is None:
            log.warning("the starting run's product types belong to other weights; this run has none")
            return
        train = inputs.train
        photos = sorted(set(train["query"]) | set(train["positive"]) | set(train["negative"]))
        if len(photos) > CARRY_PHOTOS:
            photos = sorted(random.Random(0).sample(photos, CARRY_PHOTOS))
        best = load_run_model(run_dir)
        size = model_image_size(best)
        old, new = (embed_paths(m, config.images, photos, size, batch_size=64).rows(photos) for m in (parent, best))
        head, agreement = pt.carry_over(types, old, new, model_fingerprint(best),
                                        summary={"carried_from": str(parent_dir.resolve())})
        if head is None:
            log.warning("the product types were not carried over: the new model types only %.0f%% of %d training "
                        "photos as its starting model did", 100 * agreement, len(photos))
            return
        pt.save(head, run_dir)
    except (MildnetError, OSError, ValueError, np.linalg.LinAlgError) as exc:
        log.warning("could not carry the product types over to this run: %s", exc)


def _calibrate(run_dir: Path, distances: tuple[np.ndarray, np.ndarray] | None, fingerprint: str | None) -> None:
    """Fits the run's match strength (calibration.json) on the validation distances of its best epoch
    (``fingerprint``: its best model's). A failure costs the run its calibrated scores, not its model, so it is a
    warning (``python -m mildnet calibrate`` redoes it)."""
    try:
        calibrate_run(run_dir, distances=distances, fingerprint=fingerprint)
    except MildnetError as exc:
        log.warning("could not calibrate the run's match strength: %s", exc)
