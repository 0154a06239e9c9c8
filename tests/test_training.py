"""Triplet training on a tiny generated sample (48 px JPEGs, tiny_cnn at 32 px, a few steps per epoch):
run-directory files, stop flag, resume, incremental lineage, bad inputs, and the train/evaluate CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import numpy as np
import pandas as pd
import pytest

from mildnet import models, training
from mildnet.cli import main
from mildnet.errors import DataError, ModelError
from mildnet.runs import read_run
from mildnet.training import TrainConfig, TrainConfigError, TrainingCallback, holdout_split, resume, train
from mildnet.training.config import resolve_model_settings


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from mildnet.data.sample import generate_sample

    return generate_sample(tmp_path_factory.mktemp("data") / "sample", products=12, size=48, wild_per_product=2, seed=0)


def tiny_config(sample, out, **overrides) -> TrainConfig:
    values = dict(
        images=str(sample), triplets=str(sample / "train.csv"), val_triplets=str(sample / "val.csv"),
        out=str(out), model="tiny_cnn", image_size=32, epochs=2, batch_size=8, seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


class Recorder(TrainingCallback):
    """Records every callback; optionally sets a stop event at a given (epoch, step) or epoch end."""

    def __init__(self, stop_event=None, stop_at_batch=None, stop_after_epoch=None):
        self.events = []
        self.stop_event, self.stop_at_batch, self.stop_after_epoch = stop_event, stop_at_batch, stop_after_epoch

    def on_train_begin(self, total_epochs, steps_per_epoch):
        self.events.append(("begin", total_epochs, steps_per_epoch))

    def on_batch_end(self, epoch, step, logs):
        self.events.append(("batch", epoch, step, logs["loss"]))
        if self.stop_at_batch == (epoch, step):
            self.stop_event.set()

    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch", epoch, dict(logs)))
        if self.stop_after_epoch == epoch:
            self.stop_event.set()

    def on_train_end(self, result):
        self.events.append(("end", result.status))


@pytest.fixture(scope="module")
def base_run(sample, tmp_path_factory):
    recorder = Recorder()
    result = train(tiny_config(sample, tmp_path_factory.mktemp("runs") / "base"), [recorder])
    return result, recorder


# --- pure parts ------------------------------------------------------------------------------------


def test_config_validation_lists_every_problem():
    config = TrainConfig(images="x", triplets="y", epochs=0, optimizer="rmsprop", margin=-1.0, loss="hinge")
    with pytest.raises(TrainConfigError) as info:
        config.validate()
    message = str(info.value)
    assert "epochs" in message and "optimizer" in message and "margin" in message
    with pytest.raises(TrainConfigError, match="no image root"):
        TrainConfig(triplets="y").validate()


def test_config_json_roundtrip_and_fingerprint():
    config = TrainConfig(images="x", triplets="y", loss="contrastive", margin=0.5)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.fingerprint() == config.fingerprint()
    plain = TrainConfig(images="x", triplets="y").fingerprint()
    assert TrainConfig(images="x", triplets="y", epochs=9).fingerprint() == plain
    assert TrainConfig(images="x", triplets="y", margin=0.2).fingerprint() != plain
    with pytest.raises(TrainConfigError, match="unknown training settings: colour"):
        TrainConfig.from_dict({"colour": "red"})


def test_holdout_split_has_disjoint_queries_and_is_seeded():
    triplets = pd.DataFrame(
        [(f"q{i % 10}", f"p{i}", f"n{i}") for i in range(40)], columns=["query", "positive", "negative"]
    )
    train_df, val_df = holdout_split(triplets, 0.2, seed=3)
    assert len(train_df) + len(val_df) == 40
    assert not set(train_df["query"]) & set(val_df["query"])
    assert val_df["query"].nunique() == 2
    again = holdout_split(triplets, 0.2, seed=3)[1]
    pd.testing.assert_frame_equal(val_df, again)
    assert holdout_split(triplets, 0.0, seed=3)[1].empty
    # Queries are also other triplets' positives and negatives (as in real triplet files): a held-out query is
    # used by no training triplet in any role, so no (q, p) pair is trained as (p, q).
    mixed = pd.DataFrame([(f"q{i % 10}", f"q{(i + 1) % 10}", f"q{(i + 5) % 10}") for i in range(40)],
                         columns=["query", "positive", "negative"])
    train_df, val_df = holdout_split(mixed, 0.2, seed=3)
    held = set(val_df["query"])
    assert len(held) == 2 and not train_df.empty
    assert not held & set(train_df[["query", "positive", "negative"]].to_numpy().ravel())


def test_augment_image_is_seeded_and_keeps_shape_and_range():
    import tensorflow as tf

    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, 32, 3)), tf.float32)
    a = training.augment_image(image, tf.constant([1, 2], tf.int64)).numpy()
    b = training.augment_image(image, tf.constant([1, 2], tf.int64)).numpy()
    c = training.augment_image(image, tf.constant([1, 3], tf.int64)).numpy()
    assert a.shape == (32, 32, 3) and a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_triplet_dataset_batches_keep_the_last_partial_batch(sample):
    from mildnet.data.triplets import read_triplets

    triplets = read_triplets(sample / "train.csv").triplets
    batches = list(training.triplet_dataset(triplets, sample, 32, batch_size=8, augment=True, seed=1, epoch=1))
    assert [b[0].shape[0] for b in batches] == [8, 8, len(triplets) - 16]
    assert batches[0][1].shape == (8, 32, 32, 3)
    again = list(training.triplet_dataset(triplets, sample, 32, batch_size=8, augment=True, seed=1, epoch=1))
    np.testing.assert_array_equal(batches[0][2].numpy(), again[0][2].numpy())


def test_cached_and_streaming_pipelines_give_identical_batches(sample):
    from mildnet.data.images import ImageCache
    from mildnet.data.triplets import read_triplets

    triplets = read_triplets(sample / "train.csv").triplets
    paths = pd.concat([triplets["query"], triplets["positive"], triplets["negative"]])
    cache = ImageCache.decode(sample, paths, 32, workers=2)
    assert len(cache) == paths.nunique() and cache.pixels.dtype == np.uint8
    for augment, max_triplets in ((True, None), (False, 11)):
        kwargs = dict(batch_size=8, augment=augment, seed=3, epoch=2, max_triplets=max_triplets)
        streamed = list(training.triplet_dataset(triplets, sample, 32, **kwargs))
        cached = list(training.triplet_dataset(triplets, sample, 32, cache=cache, **kwargs))
        assert len(cached) == len(streamed) > 1
        for a, b in zip(streamed, cached):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x.numpy(), y.numpy())
    with pytest.raises(ValueError, match="16 px"):
        training.triplet_dataset(triplets, sample, 16, batch_size=8, cache=cache)


def test_cache_budget_decides_between_memory_and_streaming(sample, caplog):
    from mildnet.data.triplets import read_triplets

    triplets = read_triplets(sample / "train.csv").triplets
    config = tiny_config(sample, "unused")
    with caplog.at_level("INFO", logger="mildnet.training"):
        cache = training.cache_images(config, [triplets])
        assert cache is not None and cache.size == 32 and "into memory" in caplog.text
        n = len(cache)
        tight = dataclasses.replace(config, cache_gb=(n * 32 * 32 * 3 - 1) / 1e9)
        assert training.cache_images(tight, [triplets]) is None
        assert "streaming images from disk" in caplog.text
    assert training.cache_images(config, [triplets], should_stop=lambda: True) is None


def test_freeze_resolution_and_layers(tmp_path):
    from mildnet.models import build_model, load_model, save_model

    resolve = resolve_model_settings
    base = TrainConfig(images="x", triplets="y")
    assert resolve(base, None).freeze == "features"  # the default model from ImageNet weights: all but its head
    squeezenet = dataclasses.replace(base, model="mildnet_squeezenet")
    assert resolve(squeezenet, None).freeze == "fire5"
    assert resolve(dataclasses.replace(base, weights="none"), None).freeze == "none"  # random init learns all
    assert resolve(dataclasses.replace(base, model="tiny_cnn", weights="none"), None).freeze == "none"
    assert resolve(dataclasses.replace(base, freeze="fire3"), None).freeze == "fire3"
    # Runs written before the setting existed trained every layer, and resume that way.
    legacy = {k: v for k, v in base.to_dict().items() if k != "freeze"}
    assert TrainConfig.from_dict(legacy).freeze == "none"

    model = build_model("mildnet_squeezenet", 64, 16, None)
    frozen = models.freeze_layers(model, "fire3")
    assert frozen[0] == "conv1" and frozen[-1].startswith("fire3_") and len(frozen) == 7
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "fire4_squeeze1x1" in trainable and "fc1" in trainable and not trainable & set(frozen)
    save_model(model, tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    assert not again.get_layer("fire3_expand3x3").trainable and again.get_layer("fire4_expand3x3").trainable
    assert models.freeze_layers(model, "none") == []
    with pytest.raises(ModelError, match="no such layer"):
        models.freeze_layers(model, "fire99")


def test_frozen_layers_keep_their_weights_in_training(sample, tmp_path):
    from mildnet.models import load_model

    config = tiny_config(sample, tmp_path / "run", epochs=1, freeze="conv2", learning_rate=0.05)
    result = train(config)
    assert read_run(result.run_dir).config.freeze == "conv2"
    after_1 = load_model(result.run_dir / "last.keras")
    resume(result.run_dir, epochs=2)  # the resumed model is frozen the same way
    after_2 = load_model(result.run_dir / "last.keras")
    for name, same in (("conv1", True), ("conv2", True), ("conv3", False), ("embedding", False)):
        before, after = after_1.get_layer(name).get_weights()[0], after_2.get_layer(name).get_weights()[0]
        assert np.array_equal(before, after) == same, name
    with pytest.raises(ModelError, match="no such layer"):
        train(tiny_config(sample, tmp_path / "bad", freeze="conv9"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_frozen_backbone_trains_the_head_on_cached_features(sample, tmp_path):
    from mildnet.models import build_model, load_model

    config = tiny_config(sample, tmp_path / "run", model="squeezenet_colour", weights="none", freeze="features",
                         epochs=2, learning_rate=0.01)
    start = build_model("squeezenet_colour", 32, None, None)
    assert training.feature_head(start) is None  # nothing frozen yet: the whole network would train
    models.freeze_layers(start, "features")
    head = training.feature_head(start)
    assert [layer.name for layer in head.layers if layer.weights] == ["embedding"]
    result = train(config)
    assert result.epochs_completed == 2 and 0.0 <= result.history[-1]["val_accuracy"] <= 1.0
    assert (result.run_dir / "calibration.json").is_file()  # every run with a val set gets its match strength
    # Fitted on the best epoch's validation distances, it matches a calibration that embeds the val set again.
    from mildnet import calibration

    grid = np.linspace(-1.0, 1.0, 41)
    fitted = calibration.load(result.run_dir).match(grid)
    np.testing.assert_allclose(calibration.calibrate_run(result.run_dir).match(grid), fitted, atol=1e-4)
    first = load_model(result.run_dir / "last.keras")
    resume(result.run_dir, epochs=3)
    again = load_model(result.run_dir / "last.keras")
    # The backbone never moves; the embedding layer does, and resume continues on the same features.
    for name, same in (("conv1", True), ("fire9_expand3x3", True), ("embedding", False)):
        before, after = first.get_layer(name).get_weights()[0], again.get_layer(name).get_weights()[0]
        assert np.array_equal(before, after) == same, name
    assert len(read_run(result.run_dir).history) == 3


def test_streaming_and_cached_runs_train_identically(sample, base_run, tmp_path):
    streamed = train(tiny_config(sample, tmp_path / "streamed", cache_gb=0))
    cached = base_run[0]
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in streamed.history], [r[key] for r in cached.history], rtol=1e-5)
    # cache_gb is not a model setting
    assert read_run(streamed.run_dir).fingerprint == read_run(cached.run_dir).fingerprint


# --- end-to-end ------------------------------------------------------------------------------------


def test_train_writes_the_run_directory(base_run):
    from mildnet.models import load_model

    result, recorder = base_run
    run = result.run_dir
    for name in ("config.json", "history.csv", "metrics.json", "best.keras", "last.keras"):
        assert (run / name).is_file(), name
    assert result.status == "completed" and result.epochs_completed == 2 and result.monitor == "val_accuracy"
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["val_accuracy"].between(0, 1).all() and np.isfinite(history["loss"]).all()
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["model"] == "tiny_cnn" and meta["config"]["embedding_dim"] == 32
    assert meta["lineage"] == [] and meta["data"]["val_source"] == "file"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["best_epoch"] in (1, 2)
    load_model(run / "best.keras", expected_name="tiny_cnn")
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "begin" and kinds[-1] == "end" and kinds.count("epoch") == 2
    assert recorder.events[0] == ("begin", 2, 3)  # 22 triplets, batches of 8
    assert kinds.count("batch") == 6


@pytest.mark.slow
def test_stop_after_epoch_then_resume_continues_history(sample, tmp_path):
    stop = threading.Event()
    recorder = Recorder(stop, stop_after_epoch=1)
    config = tiny_config(sample, tmp_path / "run", epochs=3, val_triplets=None, val_fraction=0.25)
    first = train(config, [recorder], stop_event=stop)
    assert first.status == "stopped" and first.epochs_completed == 1
    assert (first.run_dir / "best.keras").is_file() and (first.run_dir / "val_triplets.csv").is_file()
    assert json.loads((first.run_dir / "metrics.json").read_text())["status"] == "stopped"
    history_1 = pd.read_csv(first.run_dir / "history.csv")

    second = resume(first.run_dir)
    assert second.status == "completed" and second.epochs_completed == 3
    history = pd.read_csv(second.run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(history.iloc[:1], history_1)
    # Same shuffling, augmentation and optimizer state (optimizer.npz) as an uninterrupted run.
    assert (second.run_dir / "optimizer.npz").is_file()
    straight = train(dataclasses.replace(config, out=str(tmp_path / "straight")))
    np.testing.assert_allclose(history["loss"], [r["loss"] for r in straight.history], rtol=1e-5)
    np.testing.assert_allclose(history["val_loss"], [r["val_loss"] for r in straight.history], rtol=1e-5)
    info = read_run(second.run_dir)
    assert info.meta["resumed"][0]["after_epoch"] == 1
    assert info.meta["data"]["val_source"] == "heldout"
    with pytest.raises(TrainConfigError, match="already finished 3 of 3"):
        resume(second.run_dir)


@pytest.mark.slow
def test_a_model_with_dropout_resumes_exactly(sample, tmp_path):
    # A loaded .keras starts Dropout's seed generator afresh: optimizer.npz keeps its state, or a resumed run
    # draws other masks than an uninterrupted one (mildnet_squeezenet: val accuracy 0.5 vs 0.6875 at epoch 2).
    config = tiny_config(sample, tmp_path / "run", model="mildnet_squeezenet", image_size=64, weights="none",
                         freeze="none", epochs=2, steps_per_epoch=2)
    straight = train(dataclasses.replace(config, out=str(tmp_path / "straight")))
    stop = threading.Event()
    assert train(config, [Recorder(stop, stop_after_epoch=1)], stop_event=stop).epochs_completed == 1
    resumed = resume(tmp_path / "run")
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]


def test_crash_during_the_epoch_hand_over_resumes_from_a_consistent_epoch(sample, tmp_path):
    """An epoch's files are staged, history.csv commits, then they are renamed: a crash at either side of
    the commit is completed (history has the epoch) or rolled back (it does not) by resume."""
    from mildnet.training.loop import _recover_staged

    stop = threading.Event()
    first = train(tiny_config(sample, tmp_path / "run", epochs=2, val_triplets=None, val_fraction=0.25),
                  [Recorder(stop, stop_after_epoch=1)], stop_event=stop)
    run = first.run_dir
    assert not list(run.glob("*.next.*")), "staged files must be renamed once history commits"
    last_bytes = (run / "last.keras").read_bytes()

    def stage_epoch(epoch):
        (run / "last.next.keras").write_bytes(b"a newer model")
        with np.load(run / "optimizer.npz", allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
        np.savez(run / "optimizer.next.npz", **{**arrays, "epoch": np.int64(epoch)})

    # Crash before history.csv recorded epoch 2: the staged files are discarded.
    stage_epoch(2)
    _recover_staged(run, epochs_in_history=1)
    assert not list(run.glob("*.next.*")) and (run / "last.keras").read_bytes() == last_bytes
    # Crash after history.csv recorded the epoch but before the renames: they are completed.
    stage_epoch(1)
    _recover_staged(run, epochs_in_history=1)
    assert not list(run.glob("*.next.*")) and (run / "last.keras").read_bytes() == b"a newer model"


def test_stop_from_another_thread_mid_epoch_keeps_best(sample, tmp_path):
    """The app's use: training in a background thread, stopped from the UI thread."""
    stop, in_epoch_2 = threading.Event(), threading.Event()

    class Pause(Recorder):
        def on_batch_end(self, epoch, step, logs):
            super().on_batch_end(epoch, step, logs)
            if (epoch, step) == (2, 1):
                in_epoch_2.set()
                stop.wait(30)  # hold the loop here until the other thread asks to stop

    recorder, results = Pause(), []
    worker = threading.Thread(
        target=lambda: results.append(train(tiny_config(sample, tmp_path / "run"), [recorder], stop_event=stop))
    )
    worker.start()
    assert in_epoch_2.wait(60)
    stop.set()
    worker.join(60)
    (result,) = results
    assert result.status == "stopped" and result.epochs_completed == 1 and result.best_epoch == 1
    assert result.best_model_path is not None  # the partial epoch 2 is discarded, best.keras kept
    assert list(pd.read_csv(result.run_dir / "history.csv")["epoch"]) == [1]
    assert recorder.events[-1] == ("end", "stopped")


_MIRRORED_SCRIPT = """
import json, sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mildnet.embeddings import model_fingerprint
from mildnet.runs import load_run_model
from mildnet.training import TrainConfig, loop, train
sample, out = sys.argv[1], sys.argv[2]
hashed, calibrate_run = [], loop.calibrate_run
def recording_calibrate_run(run_dir, **kwargs):  # these runs are too short to rank: calibration may refuse
    hashed.append(kwargs["fingerprint"])
    return calibrate_run(run_dir, **kwargs)
loop.calibrate_run = recording_calibrate_run
losses = {}
for name, strategy in (("one", tf.distribute.get_strategy()),
                       ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    config = TrainConfig(images=sample, triplets=sample + "/val.csv", val_triplets=sample + "/test.csv",
                         model="tiny_cnn", image_size=32, epochs=2, batch_size=8, steps_per_epoch=1,
                         augment=False, learning_rate=0.05, verify_images=False, out=out + "/" + name)
    result = train(config, strategy=strategy)
    losses[name] = [row[key] for row in result.history for key in ("loss", "val_loss")]
    # Hashed by training from the (mirrored) model in memory, it must be the saved best model's fingerprint.
    losses["same_fingerprint_" + name] = hashed[-1] == model_fingerprint(load_run_model(result.run_dir))
print(json.dumps(losses))
"""


@pytest.mark.slow
def test_mirrored_strategy_matches_a_single_device(sample, tmp_path):
    """Two CPU replicas must give the single-device losses (gradients averaged over the global batch)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT, str(sample), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(losses["two"], losses["one"], rtol=1e-4)
    assert losses["same_fingerprint_one"] is True and losses["same_fingerprint_two"] is True


def test_incremental_training_records_lineage(sample, base_run, tmp_path):
    parent = base_run[0].run_dir
    config = TrainConfig(images=str(sample), triplets=str(sample / "test.csv"), out=str(tmp_path / "week2"),
                         init_from=str(parent), epochs=1, batch_size=8, val_fraction=0.3)
    result = train(config)
    info = read_run(result.run_dir)
    assert info.config.model == "tiny_cnn" and info.config.image_size == 32  # inherited
    (entry,) = info.lineage
    assert entry["run_dir"] == str(parent.resolve())
    assert entry["fingerprint"] == read_run(parent).fingerprint
    assert entry["best_epoch"] == base_run[0].best_epoch and entry["status"] == "completed"
    with pytest.raises(TrainConfigError, match="image_size"):
        train(TrainConfig(images=str(sample), triplets=str(sample / "test.csv"), out=str(tmp_path / "x"),
                          init_from=str(parent), image_size=40))


def test_missing_images_fail_before_training_or_are_skipped(sample, tmp_path):
    lines = (sample / "train.csv").read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines + ["images/nope/a.jpg,images/nope/b.jpg," + lines[0].split(",")[2]]) + "\n")
    with pytest.raises(DataError, match=r"2 of \d+ images .*images/nope/a\.jpg"):
        train(tiny_config(sample, tmp_path / "run", triplets=str(bad)))
    assert not (tmp_path / "run").exists()  # nothing written before the check
    result = train(tiny_config(sample, tmp_path / "run", triplets=str(bad), skip_missing=True, epochs=1,
                               steps_per_epoch=1))
    assert result.n_train_triplets == len(lines)


def test_a_held_out_set_emptied_by_skip_missing_is_not_written(sample, tmp_path):
    from mildnet.runs import HELDOUT_FILE
    from mildnet.training.pipeline import holdout_split, read_triplet_frame

    frame = read_triplet_frame(sample / "train.csv")
    held = set(holdout_split(frame, 0.1, seed=0)[1]["query"])
    # Every triplet of the queries that will be held out names a missing negative: --skip-missing drops them all.
    rows = [f"{q},{p},{'images/nope/x.jpg' if q in held else n}" for q, p, n in frame.itertuples(index=False)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    result = train(tiny_config(sample, tmp_path / "run", triplets=str(tmp_path / "t.csv"), val_triplets=None,
                               skip_missing=True, epochs=1, steps_per_epoch=1))
    assert not (result.run_dir / HELDOUT_FILE).exists()  # an empty file broke --resume and evaluate
    assert resume(result.run_dir, epochs=2).status == "completed"


def test_existing_run_directory_is_not_overwritten(sample, base_run):
    with pytest.raises(TrainConfigError, match="already holds a training run"):
        train(tiny_config(sample, base_run[0].run_dir))


def test_a_resumed_run_is_calibrated_even_when_its_best_epoch_came_before(base_run, tmp_path):
    import threading

    run = tmp_path / "interrupted"
    shutil.copytree(base_run[0].run_dir, run)
    (run / "calibration.json").unlink()  # the session that found the best epoch was killed before calibrating
    stop = threading.Event()
    stop.set()  # this session trains no epoch at all, so it has no validation distances of its own
    result = resume(run, stop_event=stop, epochs=3)
    assert result.status == "stopped" and result.best_epoch == base_run[0].best_epoch
    assert (run / "calibration.json").is_file()


def test_run_folder_content_is_written_and_read_back_by_runs(base_run, tmp_path):
    from mildnet import runs

    parent = read_run(base_run[0].run_dir)
    child = tmp_path / "child"
    child.mkdir()
    config = dataclasses.replace(parent.config, out=str(child), init_from=str(parent.run_dir), epochs=3)
    data = {"n_train": 5, "n_val": 2, "val_source": "heldout"}
    meta = runs.write_run_config(child, config, parent=parent, data=data)
    info = read_run(child)
    assert info.meta == meta and info.config == config and info.fingerprint == config.fingerprint()
    assert meta["format"] == runs.RUN_FORMAT and meta["data"] == data and meta["created"]
    assert info.lineage == [runs.lineage_entry(parent)] + parent.lineage and info.lineage[0]["run_dir"]
    assert info.resumed == []

    longer = dataclasses.replace(config, epochs=5)
    runs.write_resume_record(info, longer, after_epoch=2)
    runs.write_resume_record(read_run(child), longer, after_epoch=4)
    again = read_run(child)
    assert again.config == longer and [r["after_epoch"] for r in again.resumed] == [2, 4]
    assert all(r["at"] for r in again.resumed)
    unchanged = ("format", "fingerprint", "lineage", "data", "created")
    assert {k: again.meta[k] for k in unchanged} == {k: meta[k] for k in unchanged}
    # Hand-edited folders: the app lists them, so the record is read leniently.
    assert runs.read_resume_record({"resumed": "yesterday"}) == []
    assert runs.read_resume_record({"resumed": [3, {"after_epoch": 1}]}) == [{"after_epoch": 1}]


def _counting(monkeypatch, module, name, *also):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    for where in (module, *also):
        monkeypatch.setattr(where, name, counted)
    return calls


def test_calibrating_a_run_reads_it_once_and_loads_its_model_at_most_once(base_run, tmp_path, monkeypatch):
    from mildnet import calibration, runs
    from mildnet.embeddings import model_fingerprint
    from mildnet.models import io

    run = tmp_path / "run"
    shutil.copytree(base_run[0].run_dir, run)
    recorded = calibration.load(run).source["model_fingerprint"]
    assert recorded == model_fingerprint(runs.load_run_model(run))  # what training hashed is the best model's
    reads = _counting(monkeypatch, runs, "read_run", calibration)
    loads = _counting(monkeypatch, io, "load_model")

    assert calibration.calibrate_run(run).source["model_fingerprint"] == recorded
    assert len(reads) == 1 and len(loads) == 1  # config.json read once; best.keras loaded once, to embed and hash
    reads.clear(), loads.clear()
    distances = (np.linspace(0.05, 0.5, 20), np.linspace(1.0, 2.0, 20))
    calibration.calibrate_run(run, distances=distances, fingerprint=recorded)
    assert len(reads) == 1 and loads == []  # nothing to embed, and the hash is known
    assert calibration.load(run).source["model_fingerprint"] == recorded
    calibration.calibrate_run(run, distances=distances)  # without it, the model is loaded to hash
    assert len(loads) == 1 and calibration.load(run).source["model_fingerprint"] == recorded


@pytest.mark.parametrize("settings", [
    {},
    # the whole backbone frozen: the head trains on cached features
    {"model": "squeezenet_colour", "weights": "none", "freeze": "features"},
    {"model": "mildnet_squeezenet", "image_size": 64, "weights": "none", "freeze": "none"},  # dropout
], ids=["tiny_cnn", "cached_features", "dropout"])
def test_training_calibrates_without_loading_its_best_model_again(sample, tmp_path, monkeypatch, settings):
    from mildnet import calibration
    from mildnet.embeddings import model_fingerprint
    from mildnet.models import io
    from mildnet.runs import load_run_model

    loads = _counting(monkeypatch, io, "load_model")
    result = train(tiny_config(sample, tmp_path / "run", epochs=2, steps_per_epoch=1, **settings))
    assert loads == []
    monkeypatch.undo()
    # The fingerprint training hashed from the model in memory is the saved best model's, as if loaded to hash it.
    best = load_run_model(result.run_dir)
    assert calibration.load(result.run_dir).source["model_fingerprint"] == model_fingerprint(best)


def test_hand_damaged_run_files_are_one_line_errors(base_run, tmp_path, capsys):
    from mildnet.cli import main
    from mildnet.runs import read_run

    run = tmp_path / "typed"
    shutil.copytree(base_run[0].run_dir, run)
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["image_size"] = "32"  # a string: calibrate raised TypeError deep inside
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"config.json is damaged: .*image_size must be a positive integer"):
        read_run(run)
    meta["config"]["image_size"], meta["format"] = 32, 99  # a run folder from a newer mildnet
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"written by a newer mildnet \(run format 99"):
        read_run(run)
    run = tmp_path / "columns"
    shutil.copytree(base_run[0].run_dir, run)
    history = pd.read_csv(run / "history.csv").drop(columns=["val_loss", "val_accuracy"])
    history.to_csv(run / "history.csv", index=False)  # resume raised KeyError: 'val_accuracy'
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "history.csv is damaged: no val_loss, val_accuracy column" in err
    assert len(err.strip().splitlines()) == 1


def test_two_trainers_cannot_write_one_run_folder(base_run, tmp_path):
    from mildnet.runs import run_lock

    run = tmp_path / "busy"
    shutil.copytree(base_run[0].run_dir, run)
    with run_lock(run):  # another trainer (a terminal's --resume, the app's sidebar) holds the run
        with pytest.raises(TrainConfigError, match="being trained by another process"):
            resume(run, epochs=3)
    assert resume(run, epochs=3).status == "completed"  # released: the run continues


def test_resume_rejects_corrupt_or_foreign_checkpoints(base_run, tmp_path):
    import keras

    run = tmp_path / "copy"
    shutil.copytree(base_run[0].run_dir, run)
    (run / "last.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="last.keras"):
        resume(run, epochs=3)
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs)), name="other")
    other.save(run / "last.keras")
    with pytest.raises(ModelError, match="expected 'tiny_cnn'"):
        resume(run, epochs=3)
    with pytest.raises(ModelError, match="not a training run"):
        resume(tmp_path)


# --- CLI -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_then_evaluate_json(sample, base_run, tmp_path, capsys):
    out = tmp_path / "cli-run"
    rc = main(["train", "--images", str(sample), "--triplets", str(sample / "train.csv"), "--model", "tiny_cnn",
               "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--no-augment", "--out", str(out),
               "--quiet"])
    assert rc == 0
    assert "completed: 1/1 epochs" in capsys.readouterr().out
    assert read_run(out).config.augment is False

    rc = main(["evaluate", "--run", str(base_run[0].run_dir), "--images", str(sample),
               "--triplets", str(sample / "test.csv"), "--json", "--quiet"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["n_triplets"] == len((sample / "test.csv").read_text().splitlines())
    assert 0 <= report["triplet_accuracy"] <= 1
    assert set(report["by_type"]) == {"in_class", "out_of_class", "wild_query", "catalog_query"}
    assert report["retrieval"]["n_queries"] > 0  # catalog.csv in the image root gives product ids
    assert "triplet accuracy" in "\n".join(lines[:-1])

    # An untrained network, for a "before training" baseline.
    rc = main(["evaluate", "--model", "tiny_cnn", "--image-size", "32", "--images", str(sample),
               "--triplets", str(sample / "test.csv"), "--json", "--quiet"])
    assert rc == 0 and "triplet_accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_train_from_a_manifest_dataset(sample, tmp_path, monkeypatch, capsys):
    manifest = tmp_path / "data_manifest.csv"
    rows = ["dataset,split,triplets,image_root,catalog,source"]
    rows += [f"tiny,{s},{sample}/{s}.csv,{sample},{sample}/catalog.csv,local" for s in ("train", "val", "test")]
    manifest.write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("MILDNET_MANIFEST", str(manifest))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "tiny", "--model", "tiny_cnn", "--image-size", "32", "--epochs", "1",
                 "--steps-per-epoch", "1", "--out", str(out), "--quiet"]) == 0
    info = read_run(out)
    assert info.config.dataset == "tiny" and info.config.val_triplets == str(sample / "val.csv")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--dataset", "tiny", "--split", "test", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["source"]["data"] == "tiny:test"


def test_cli_errors(sample, base_run, tmp_path, capsys):
    assert main(["train", "--triplets", str(sample / "train.csv")]) == 2
    assert main(["train", "--resume"]) == 2
    assert main(["train", "--resume", "--out", str(base_run[0].run_dir), "--lr", "0.1"]) == 2
    assert main(["train", "--resume", "--out", str(base_run[0].run_dir), "--seed", "0"]) == 2  # 0 is given too
    # An unknown model or a size it cannot take is a usage error before any data is read, as in other commands.
    assert main(["train", "--images", str(sample), "--triplets", str(sample / "train.csv"), "--model", "nope"]) == 2
    assert main(["train", "--images", str(sample), "--triplets", str(sample / "train.csv"), "--model",
                 "mildnet_squeezenet", "--image-size", "16"]) == 2
    assert main(["train", "--images", str(sample), "--triplets", str(sample / "train.csv"), "--epochs", "0"]) == 2
    assert main(["evaluate", "--run", str(base_run[0].run_dir), "--model", "tiny_cnn"]) == 2
    capsys.readouterr()
    rc = main(["train", "--images", str(tmp_path), "--triplets", str(sample / "train.csv"), "--model", "tiny_cnn",
               "--image-size", "32", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "missing" in err and len(err.strip().splitlines()) == 1
    rc = main(["evaluate", "--run", str(tmp_path), "--images", str(sample), "--triplets", str(sample / "test.csv")])
    assert rc == 1 and "not a training run" in capsys.readouterr().err
    # An --out that already holds a run is a bad argument (exit 2), like every other TrainConfigError.
    rc = main(["train", "--images", str(sample), "--triplets", str(sample / "train.csv"), "--model", "tiny_cnn",
               "--image-size", "32", "--out", str(base_run[0].run_dir), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a training run" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def missing_dataset(tmp_path, monkeypatch):
    # Registered but not on disk: resolving it would prepare it (a local one: fail on the missing folder).
    manifest = tmp_path / "data_manifest.csv"
    manifest.write_text("dataset,split,triplets,image_root,catalog,source\n"
                        f"gone,train,{tmp_path}/gone/train.csv,{tmp_path}/gone,,local\n")
    monkeypatch.setenv("MILDNET_MANIFEST", str(manifest))
    return "gone"


@pytest.mark.parametrize("settings, message", [
    ({"model": "nope"}, "unknown model 'nope'"),
    ({"model": "mildnet_squeezenet", "image_size": 16}, "mildnet_squeezenet needs an integer input_size >= 32"),
    ({"image_size": 16}, "squeezenet_colour needs an integer input_size"),  # unset model: the zoo default's
    ({"model": "tiny_cnn", "embedding_dim": 0}, "embedding_dim must be a positive integer"),
])
def test_train_checks_its_model_settings_before_it_resolves_the_dataset(missing_dataset, tmp_path, settings,
                                                                        message):
    from mildnet.models.zoo import ModelArgumentError

    with pytest.raises(DataError):  # what resolving the dataset says
        train(TrainConfig(dataset=missing_dataset, model="tiny_cnn", image_size=32, out=str(tmp_path / "run")))
    with pytest.raises(ModelArgumentError, match=message):
        train(TrainConfig(dataset=missing_dataset, out=str(tmp_path / "run"), **settings))
    assert not (tmp_path / "run").exists()


def test_cli_train_maps_the_zoo_check_to_a_usage_error(missing_dataset, capsys):
    from pathlib import Path

    import mildnet.cli.train

    assert main(["train", "--dataset", missing_dataset, "--model", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nope'") and len(err.strip().splitlines()) == 1
    assert main(["train", "--dataset", missing_dataset, "--model", "tiny_cnn", "--image-size", "32", "--quiet"]) == 1
    assert "check_model_arguments" not in Path(mildnet.cli.train.__file__).read_text()  # train's own check decides


def test_training_leaves_the_process_random_state_alone(sample, tmp_path):
    import random

    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    train(tiny_config(sample, tmp_path / "run", epochs=1))
    assert (random.random(), np.random.random()) == expected
