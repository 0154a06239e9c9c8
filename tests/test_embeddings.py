"""Catalog embeddings: batching, fingerprints, the cache (reuse / incremental / rebuild), shards, bad images.

Real TensorFlow with the tiny_cnn model on 32 px JPEGs; stores are real LocalStores in tmp_path.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from mildnet import embeddings as emb
from mildnet.errors import ImageError, ModelError, StoreError
from mildnet.runs import open_run
from mildnet.search import Searcher
from mildnet.store import LocalStore
from tests.conftest import make_labelled_folder

SIZE = 32


def _tiny(seed: int):
    import keras

    from mildnet.models import build_model

    keras.utils.set_random_seed(seed)
    return build_model("tiny_cnn", SIZE)


@pytest.fixture(scope="module")
def model():
    return _tiny(0)


@pytest.fixture
def images(tmp_path):
    return make_labelled_folder(tmp_path / "images", classes=("red", "green", "blue"), per_class=4, size=SIZE)


class Counter:
    """A progress callback that records how many images the model actually saw."""

    def __init__(self):
        self.calls = []

    def __call__(self, done, total):
        self.calls.append((done, total))

    @property
    def done(self):
        return self.calls[-1][0] if self.calls else 0


def _add_image(root, rel, colour=(10, 200, 200), seed=1):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


# --- embedding images ------------------------------------------------------------------------------------------


def test_embed_images_keeps_last_partial_batch_and_matches_single_uploads(model, images):
    paths = sorted(images.rglob("*.jpg"))[:7]
    counter = Counter()
    vectors = emb.embed_images(model, paths, batch_size=3, progress=counter)
    assert vectors.shape == (7, 32) and vectors.dtype == np.float32
    assert counter.calls[-1] == (7, 7)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The single-upload path (raw bytes through load_image) gives the same vector as the batch pipeline.
    single = emb.embed_image(model, paths[6].read_bytes())
    np.testing.assert_allclose(single, vectors[6], atol=1e-5)


def test_embed_images_names_a_bad_image(model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="bad.jpg"):
        emb.embed_images(model, [bad])
    with pytest.raises(ImageError):
        emb.embed_image(model, b"garbage bytes")


# --- fingerprints ----------------------------------------------------------------------------------------------


def test_model_fingerprint_survives_save_load_and_tracks_weights(model, tmp_path):
    from mildnet.models import load_model, save_model

    fp = emb.model_fingerprint(model)
    reloaded = load_model(save_model(model, tmp_path / "m.keras"))
    assert emb.model_fingerprint(reloaded) == fp
    assert emb.model_fingerprint(_tiny(1)) != fp


def test_catalog_fingerprint_is_stat_based(images):
    ids = emb.catalog_ids(images)
    fp = emb.catalog_fingerprint(images, ids)
    assert emb.catalog_fingerprint(images, list(reversed(ids))) == fp  # order does not matter
    target = images / ids[0]
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert emb.catalog_fingerprint(images, ids) != fp
    assert emb.catalog_fingerprint(images, ids[1:]) != fp


# --- the cache -------------------------------------------------------------------------------------------------


def test_cache_reuse_and_incremental_update(model, images, tmp_path):
    store = LocalStore(tmp_path / "store")
    first = Counter()
    built = emb.update_catalog(model, images, store, batch_size=5, progress=first)
    assert built.status == "built" and built.embedded == 12 and first.done == 12
    assert len(built.embeddings) == 12 and built.embeddings.ids == sorted(built.embeddings.ids)
    meta = built.embeddings.meta
    assert meta["model_name"] == "tiny_cnn" and meta["image_size"] == SIZE and meta["dim"] == 32
    assert meta["model_fingerprint"] == emb.model_fingerprint(model)
    assert built.key == emb.cache_key(emb.dataset_name(images), meta["model_fingerprint"])

    again = Counter()
    reused = emb.update_catalog(model, images, store, batch_size=5, progress=again)
    assert reused.status == "reused" and reused.embedded == 0 and again.calls == []
    assert reused.embeddings.equals(built.embeddings)
    assert emb.load_cached(model, images, store) is not None

    # Two new images, one removed, one rewritten (new content, size and mtime).
    _add_image(images, "cyan/cyan_0.jpg", seed=1)
    _add_image(images, "cyan/cyan_1.jpg", seed=2)
    (images / "red/red_0.jpg").unlink()
    changed = "green/green_1.jpg"
    _add_image(images, changed, colour=(250, 250, 250), seed=3)
    assert emb.load_cached(model, images, store) is None  # stale: never served silently

    counter = Counter()
    updated = emb.update_catalog(model, images, store, batch_size=5, progress=counter)
    assert updated.status == "updated"
    assert (updated.embedded, updated.removed) == (3, 1) and counter.done == 3
    s = updated.embeddings
    assert len(s) == 13 and "red/red_0.jpg" not in s and "cyan/cyan_1.jpg" in s
    unchanged = [i for i in built.embeddings.ids if i in s and i != changed]
    np.testing.assert_array_equal(s.vectors[s.rows_of(unchanged)],
                                  built.embeddings.vectors[built.embeddings.rows_of(unchanged)])
    assert not np.allclose(s.vectors[s.rows_of([changed])],
                           built.embeddings.vectors[built.embeddings.rows_of([changed])])

    full = emb.update_catalog(model, images, LocalStore(tmp_path / "other"), batch_size=5)
    assert full.embeddings.ids == s.ids
    np.testing.assert_allclose(full.embeddings.vectors, s.vectors, atol=1e-5)
    assert full.embeddings.catalog_fingerprint == s.catalog_fingerprint
    assert emb.update_catalog(model, images, store).status == "reused"


def test_plan_update_decides_without_a_model():
    from mildnet.store import EmbeddingSet

    fp, size = "f" * 64, SIZE
    ids, sigs = ["a", "b", "c", "x"], ["1:1", "2:2", "3:3", "5:5"]
    meta = {"model_fingerprint": fp, "catalog_fingerprint": emb.plan_update(None, ids, sigs, model_fp=fp,
            image_size=size).catalog_fp, "image_size": size, "embedding_version": emb.EMBEDDING_VERSION,
            "signatures": sigs[:3], "skipped": [{"id": "x", "reason": "not an image", "signature": "5:5"}]}
    cached = EmbeddingSet(ids[:3], ids[:3], np.eye(3, dtype=np.float32), meta)
    assert emb.plan_update(None, ids, sigs, model_fp=fp, image_size=size).status == "built"
    assert emb.plan_update(cached, ids, sigs, model_fp=fp, image_size=size).status == "reused"
    # b rewritten, c removed, d new, e gone from the disk, x still the same unreadable file.
    plan = emb.plan_update(cached, ["a", "b", "d", "e", "x"], ["1:1", "9:9", "4:4", "missing", "5:5"],
                           model_fp=fp, image_size=size)
    assert plan.status == "updated" and plan.keep == {"a": 0} and plan.embed == ["b", "d"]
    assert plan.missing == ["e"] and plan.dropped == ["c"] and list(plan.kept_skips) == ["x"]
    other = emb.plan_update(cached, ids, sigs, model_fp="0" * 64, image_size=size)
    assert other.status == "rebuilt" and other.keep == {} and other.embed == ids
    assert emb.plan_update(cached, ids, sigs, model_fp=fp, image_size=size, rebuild=True).embed == ids


def test_changed_model_is_rebuilt_never_served(model, images, tmp_path):
    store = LocalStore(tmp_path / "store")
    first = emb.update_catalog(model, images, store)
    other = _tiny(7)
    second = emb.update_catalog(other, images, store)
    assert second.status == "built" and second.key != first.key and second.embedded == 12
    # Forced onto the same key, a set from another model is rebuilt, not reused or patched.
    forced = emb.update_catalog(other, images, store, key=first.key)
    assert forced.status == "rebuilt" and forced.embedded == 12
    assert store.get(first.key).model_fingerprint == emb.model_fingerprint(other)
    assert emb.update_catalog(other, images, store, rebuild=True).status == "rebuilt"


def test_shards_merge_into_the_unsharded_set(model, images, tmp_path):
    store = LocalStore(tmp_path / "store")
    whole = emb.update_catalog(model, images, LocalStore(tmp_path / "whole"), batch_size=4).embeddings
    key = emb.cache_key(emb.dataset_name(images), emb.model_fingerprint(model))
    sizes = []
    for index in (0, 2):
        part = emb.update_catalog(model, images, store, shard=(index, 3), batch_size=4)
        assert part.key == emb.shard_key(key, index, 3)
        sizes.append(len(part.embeddings))
    with pytest.raises(StoreError, match="1/3"):
        emb.merge_shards(store, key, 3)
    sizes.append(len(emb.update_catalog(model, images, store, shard=(1, 3), batch_size=4).embeddings))
    assert sorted(sizes) == [4, 4, 4]
    merged = emb.merge_shards(store, key, 3)
    assert merged.ids == whole.ids
    np.testing.assert_allclose(merged.vectors, whole.vectors, atol=1e-5)
    assert merged.catalog_fingerprint == whole.catalog_fingerprint
    # The merged set is a normal, fresh cache entry.
    assert emb.update_catalog(model, images, store).status == "reused"


def test_shards_stay_mergeable_after_an_image_changes_in_one_of_them(model, images, tmp_path):
    import os

    store = LocalStore(tmp_path / "store")
    key = emb.cache_key(emb.dataset_name(images), emb.model_fingerprint(model))
    for index in (0, 1):
        emb.update_catalog(model, images, store, shard=(index, 2), batch_size=4)
    emb.merge_shards(store, key, 2)
    # Touch one image of shard 1 only: shard 0's rows are reused as they are, but what it records of the whole
    # catalogue must follow, or the merge refuses these shards for ever (only --rebuild got out).
    changed = images / emb.shard_ids(emb.catalog_ids(images), 1, 2)[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    statuses = [emb.update_catalog(model, images, store, shard=(i, 2), batch_size=4).status for i in (0, 1)]
    assert statuses == ["reused", "updated"]
    merged = emb.merge_shards(store, key, 2)
    assert emb.update_catalog(model, images, store).status == "reused"
    assert merged.catalog_fingerprint == store.get(key).catalog_fingerprint


def test_a_reused_set_follows_the_stores_dtype(model, images, tmp_path):
    first = emb.update_catalog(model, images, LocalStore(tmp_path / "store"), batch_size=4)
    assert first.embeddings.dtype == "float32"
    half = LocalStore(tmp_path / "store", dtype="float16")
    again = emb.update_catalog(model, images, half, batch_size=4)
    # Nothing to embed, but `embed --dtype float16` on an existing float32 set must not be a silent no-op.
    assert again.status == "reused" and again.embedded == 0
    assert again.embeddings.dtype == "float16" and half.get(first.key).dtype == "float16"
    assert LocalStore(tmp_path / "store").get(first.key).dtype == "float16"
    np.testing.assert_allclose(half.get(first.key).vectors.astype(np.float32), first.embeddings.vectors, atol=1e-3)
    # Back to float32: half-precision rows cannot be widened to what the model gave, so they are embedded again.
    back = emb.update_catalog(model, images, LocalStore(tmp_path / "store", dtype="float32"), batch_size=4)
    assert back.embedded == len(first.embeddings) and back.embeddings.dtype == "float32"
    np.testing.assert_allclose(back.embeddings.vectors, first.embeddings.vectors, atol=1e-6)


def test_unreadable_images_are_skipped_with_a_warning(model, images, tmp_path):
    (images / "red" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = (images / "blue" / "blue_0.jpg").read_bytes()
    (images / "blue" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    store = LocalStore(tmp_path / "store")
    result = emb.update_catalog(model, images, store, batch_size=4)
    skipped = {e["id"]: e["reason"] for e in result.skipped}
    assert "red/broken.jpg" in skipped and "not an image" in skipped["red/broken.jpg"]
    assert "red/broken.jpg" not in result.embeddings
    assert len(result.embeddings) + len(skipped) == 14
    assert result.embeddings.meta["skipped"] == result.skipped
    # Unchanged bad files are remembered, not retried on every run.
    again = emb.update_catalog(model, images, store, batch_size=4)
    assert again.status == "reused" and {e["id"] for e in again.skipped} == set(skipped)


def test_open_searcher_for_a_run(model, images, tmp_path):
    run = make_run(tmp_path / "run", model)
    store = LocalStore(tmp_path / "store")
    counter = Counter()
    # What the app does (ui/resources.searcher): embed the catalogue when needed, then search the fresh set.
    loaded, config = open_run(run)
    result = emb.update_catalog(loaded, images, store, progress=counter, image_size=config["image_size"])
    searcher = Searcher(emb.load_cached(loaded, images, store, image_size=config["image_size"]))
    assert config["model"] == "tiny_cnn" and config["image_size"] == SIZE
    assert result.status == "built" and counter.done == 12 and len(searcher) == 12
    query = emb.embed_image(loaded, images / "green/green_2.jpg", config["image_size"])
    hits = searcher.query(query, k=3)[0]
    assert hits[0].id == "green/green_2.jpg"
    assert emb.update_catalog(loaded, images, store, image_size=config["image_size"]).status == "reused"


def make_run(run_dir, model, image_size=SIZE):
    """A minimal training run directory (config.json + best.keras) as ``mildnet.training`` writes it."""
    import json

    from mildnet.models import save_model
    from mildnet.training import TrainConfig

    run_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(images=str(run_dir), triplets=str(run_dir / "t.csv"), model=model.name, weights="none",
                         image_size=image_size, embedding_dim=int(model.outputs[0].shape[-1]), out=str(run_dir))
    (run_dir / "config.json").write_text(json.dumps({"format": 1, "config": config.to_dict()}))
    save_model(model, run_dir / "best.keras")
    return run_dir


# --- one compiled graph for every path ---------------------------------------------------------------------------


def test_batches_and_single_images_share_one_compiled_graph_that_does_not_keep_the_model_alive(images):
    import gc
    import weakref

    from mildnet.data.images import load_image

    model = _tiny(3)
    pixels = np.stack([load_image(p, SIZE) for p in sorted(images.rglob("*.jpg"))[:5]])
    batch = emb.run_model(model, pixels)
    singles = np.concatenate([emb.run_model(model, pixels[i : i + 1]) for i in range(5)])
    # Same graph whatever the batch size, so a catalogue row and the same photo uploaded alone agree.
    np.testing.assert_allclose(singles, batch, atol=1e-6)
    assert list(emb._COMPILED[model]) == [(SIZE, "uint8")]
    # Float pixels (augmented or synthetic batches) get their own graph; the cast inside the uint8 one is exact.
    np.testing.assert_allclose(emb.run_model(model, pixels.astype(np.float32)), batch, atol=1e-6)
    assert sorted(emb._COMPILED[model]) == [(SIZE, "float32"), (SIZE, "uint8")]
    with pytest.raises(ValueError, match="batch, size, size, 3"):
        emb.run_model(model, pixels[0])
    # The app swaps models when a run is retrained: the per-model graph must not pin the old one in memory.
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_a_model_failing_at_run_time_is_a_one_line_model_error(images):
    import keras
    import tensorflow as tf

    class FailsOnBrightPixels(keras.layers.Layer):  # a stand-in for an out-of-memory or a broken custom layer
        def call(self, x):
            return tf.debugging.check_numerics(tf.math.log(200.0 - x), "pixel over 200")

    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(FailsOnBrightPixels()(inputs)))
    bright = np.full((2, SIZE, SIZE, 3), 255, dtype=np.uint8)
    with pytest.raises(ModelError, match=r"^the model failed on a batch of 2 images of 32 px: InvalidArgumentError: "
                                         r".*pixel over 200") as info:
        emb.run_model(model, bright)
    assert "\n" not in str(info.value)
    assert emb.run_model(model, np.zeros_like(bright)).shape == (2, 3)
    # An eager op's error (the shape of an out-of-memory one) loses its "{{function_node ...}}" and "[Op:...]".
    with pytest.raises(tf.errors.InvalidArgumentError) as eager:
        tf.reshape(tf.zeros(3), (2,))
    assert emb._op_error_reason(eager.value) == \
        "Input to reshape is a tensor with 3 values, but the requested shape has 2"
    # A real out-of-memory takes ~20 s to raise on this machine, so its text (TensorFlow 2.21, verbatim) is
    # parsed here: the reason sits before the node marker, with a "Hint:" and an "[Op:...]" line after it.
    oom = tf.errors.ResourceExhaustedError(None, None, (
        "Graph execution error:\n\nDetected at node zeros defined at (most recent call last):\n"
        '  File "/tmp/oom.py", line 20, in <module>\n\n  File "/tmp/oom.py", line 18, in f\n\n'
        "OOM when allocating tensor with shape[1000000000,1000000] and type float on "
        "/job:localhost/replica:0/task:0/device:CPU:0 by allocator mklcpu\n\t [[{{node zeros}}]]\n"
        "Hint: If you want to see a list of allocated tensors when OOM happens, add "
        "report_tensor_allocations_upon_oom to RunOptions for current allocation info.\n [Op:__inference_f_43]"))
    reason = emb._op_error_reason(oom)
    assert reason.startswith("OOM when allocating tensor with shape[1000000000,1000000]"), reason
    assert reason.endswith("(out of memory: try a smaller batch size)")


def test_a_set_from_an_older_embedding_version_is_rebuilt_not_extended(model, images, tmp_path):
    from mildnet.store import EmbeddingSet

    store = LocalStore(tmp_path / "store")
    first = emb.update_catalog(model, images, store)
    old = first.embeddings
    store.put(first.key, EmbeddingSet(old.ids, old.paths, old.vectors, {**old.meta, "embedding_version": 1}))
    _add_image(images, "cyan/cyan_0.jpg")
    again = emb.update_catalog(model, images, store)
    assert again.key == first.key and again.status == "rebuilt" and again.embedded == 13
    assert store.get(first.key).meta["embedding_version"] == emb.EMBEDDING_VERSION


def test_the_shipped_calibration_still_belongs_to_the_shipped_model():
    # The model fingerprint is recorded in calibration.json: changing what it hashes (not the weights) would
    # silently turn the default model's match strengths off in the app and the CLI.
    from mildnet import calibration as cal
    from mildnet.pretrained import default_run_dir

    run = default_run_dir()
    model, _ = open_run(run)
    assert cal.load(run).model_fingerprint == emb.model_fingerprint(model)
