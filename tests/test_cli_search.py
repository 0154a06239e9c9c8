"""``python -m mildnet embed`` / ``search`` end to end: local and real Redis stores, JSON, plots, errors.

Commands run in-process through ``mildnet.cli.main`` (TensorFlow is imported once); the model is a saved
tiny_cnn run on 32 px JPEGs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mildnet.cli import main
from mildnet.store import LocalStore, RedisStore
from tests.conftest import make_labelled_folder
from tests.test_embeddings import make_run

SIZE = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import keras

    from mildnet.models import build_model

    keras.utils.set_random_seed(0)
    return make_run(tmp_path_factory.mktemp("run") / "run", build_model("tiny_cnn", SIZE))


@pytest.fixture
def images(tmp_path):
    # 13 images with --batch-size 5: the last batch is partial.
    root = make_labelled_folder(tmp_path / "images", classes=("red", "green", "blue"), per_class=4, size=SIZE)
    make_labelled_folder(root, classes=("grey",), per_class=1, size=SIZE, seed=3)
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def embed(capsys, run_dir, images, store, *extra):
    return run(capsys, "embed", "--run", run_dir, "--images", images, "--store", store, "--batch-size", 5, *extra)


def brute_force(vectors, ids, query, k, exclude=None):
    scores = vectors @ query
    order = [r for r in np.argsort(-scores, kind="stable") if ids[r] != exclude][:k]
    return [ids[r] for r in order], scores[order]


def test_embed_then_search_local(capsys, run_dir, images, tmp_path):
    store_dir = tmp_path / "store"
    code, out, err = embed(capsys, run_dir, images, store_dir)
    assert code == 0, err
    assert "images: 13  dim: 32" in out and "cache: built (13 embedded)" in out
    key = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("key: "))
    code, out, _ = embed(capsys, run_dir, images, store_dir)
    assert code == 0 and "cache: reused" in out

    stored = LocalStore(store_dir).get(key)
    assert len(stored) == 13

    code, out, err = run(capsys, "search", "--run", run_dir, "--store", store_dir, "--id", "red/red_1.jpg",
                         "-k", 4, "--json")
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["query"] == {"id": "red/red_1.jpg"} and payload["key"] == key
    assert len(payload["results"]) == 4
    expected_ids, expected_scores = brute_force(stored.vectors, stored.ids,
                                                stored.vectors[stored.index["red/red_1.jpg"]], 4, "red/red_1.jpg")
    assert [r["id"] for r in payload["results"]] == expected_ids
    np.testing.assert_allclose([r["score"] for r in payload["results"]], expected_scores, atol=1e-5)
    assert all(r["path"].endswith(r["id"]) for r in payload["results"])

    plot = tmp_path / "out" / "grid.png"
    code, out, err = run(capsys, "search", "--run", run_dir, "--store", store_dir, "--images", images,
                         "--image", images / "blue/blue_2.jpg", "-k", 3, "--plot", plot)
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.splitlines()[1].split()[-1] == "blue/blue_2.jpg"  # the query image itself ranks first


def test_search_errors_are_one_line(capsys, run_dir, images, tmp_path):
    store_dir = tmp_path / "store"
    code, _, err = run(capsys, "search", "--run", run_dir, "--store", store_dir, "--id", "red/red_1.jpg")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no embeddings" in err and "embed" in err

    assert embed(capsys, run_dir, images, store_dir)[0] == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    code, _, err = run(capsys, "search", "--run", run_dir, "--store", store_dir, "--image", bad)
    assert code == 1 and err.count("\n") == 1 and "bad.png" in err
    code, _, err = run(capsys, "search", "--run", run_dir, "--store", store_dir, "--id", "nope.jpg")
    assert code == 1 and err.count("\n") == 1 and "nope.jpg" in err
    code, _, err = run(capsys, "embed", "--run", run_dir, "--model", "tiny_cnn", "--images", images)
    assert code == 2 and "not both" in err


def test_search_plot_to_an_unwritable_path_is_one_line(capsys, run_dir, images, tmp_path):
    store_dir = tmp_path / "store"
    assert embed(capsys, run_dir, images, store_dir)[0] == 0
    (tmp_path / "a_file").write_text("x")
    for target in (tmp_path / "a_file" / "plot.png", tmp_path):
        code, _, err = run(capsys, "search", "--run", run_dir, "--store", store_dir, "--id", "red/red_1.jpg",
                           "--plot", target)
        assert code == 1 and err.count("\n") == 1 and "cannot write the plot" in err, err


def test_incremental_and_sharded_cli(capsys, run_dir, images, tmp_path):
    store_dir = tmp_path / "store"
    for index in (0, 1):
        code, out, err = embed(capsys, run_dir, images, store_dir, "--shard", f"{index}/2")
        assert code == 0, err
    code, out, err = embed(capsys, run_dir, images, store_dir, "--merge-shards", 2)
    assert code == 0 and "images: 13" in out, err
    assert "cache: reused" in embed(capsys, run_dir, images, store_dir)[1]
    make_labelled_folder(images, classes=("yellow",), per_class=2, size=SIZE, seed=5)
    code, out, _ = embed(capsys, run_dir, images, store_dir)
    assert "cache: updated (2 embedded, 0 removed)" in out and "images: 15" in out
    assert embed(capsys, run_dir, images, store_dir, "--shard", "2/2")[0] == 2


def test_redis_round_trip(capsys, run_dir, images, redis_url):  # noqa: F811
    code, out, err = embed(capsys, run_dir, images, redis_url)
    assert code == 0, err
    assert "Redis store" in out and "cache: built" in out
    code, out, err = run(capsys, "search", "--run", run_dir, "--store", redis_url, "--id", "green/green_0.jpg",
                         "-k", 5, "--json")
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    assert len(payload["results"]) == 5
    stored = RedisStore(redis_url).get(payload["key"])
    expected, _ = brute_force(stored.vectors, stored.ids, stored.vectors[stored.index["green/green_0.jpg"]], 5,
                              "green/green_0.jpg")
    assert [r["id"] for r in payload["results"]] == expected


def test_redis_down_fails_clearly_or_falls_back(capsys, run_dir, images, tmp_path, fresh_redis_server, monkeypatch):
    url = fresh_redis_server.url
    fresh_redis_server.stop()
    code, _, err = embed(capsys, run_dir, images, url)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Redis" in err

    fallback = tmp_path / "fallback"
    # As on a real command line: no logging handlers (pytest's capture handler would hide a logged copy).
    import logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    code, out, err = embed(capsys, run_dir, images, url, "--fallback-local", fallback)
    assert code == 0 and "warning:" in err and str(fallback) in err
    assert err.count("falling back") == 1, err  # once, not also through the logging module's last resort
    assert f"local store at {fallback}" in out
    code, out, _ = run(capsys, "search", "--run", run_dir, "--store", url, "--fallback-local", fallback,
                       "--id", "red/red_0.jpg", "--json")
    assert code == 0 and len(json.loads(out.strip().splitlines()[-1])["results"]) == 5


def test_embed_float16_halves_the_store_and_searches_the_same(capsys, run_dir, images, tmp_path):
    wide, half = tmp_path / "f32", tmp_path / "f16"
    assert embed(capsys, run_dir, images, wide)[0] == 0
    assert embed(capsys, run_dir, images, half, "--dtype", "float16")[0] == 0
    sets = [LocalStore(path) for path in (wide, half)]
    a, b = (store.get(store.keys()[0]) for store in sets)
    assert a.vectors.dtype == np.float32 and b.vectors.dtype == np.float16
    assert np.allclose(a.vectors, b.vectors.astype(np.float32), atol=1e-3)
    for store in (wide, half):
        code, out, _ = run(capsys, "search", "--run", run_dir, "--store", store, "--id", "red/red_1.jpg", "--json")
        assert code == 0 and json.loads(out.splitlines()[-1])["results"][0]["id"].startswith("red/")


def test_two_folders_with_the_same_name_keep_their_own_sets(capsys, run_dir, tmp_path):
    """Issue 18 F4: the cache key was the folder's name: embedding /b/shop/photos replaced /a/shop/photos's set in
    the same store, and searching A returned B's products under paths that do not exist."""
    a = make_labelled_folder(tmp_path / "a" / "photos", classes=("red", "green"), per_class=3, size=SIZE)
    b = make_labelled_folder(tmp_path / "b" / "photos", classes=("blue", "grey"), per_class=2, size=SIZE, seed=5)
    store = tmp_path / "store"
    assert embed(capsys, run_dir, a, store)[0] == 0
    code, out, err = embed(capsys, run_dir, b, store)
    assert code == 0 and "cache: built (4 embedded)" in out and "removed" not in out, err
    code, out, err = run(capsys, "search", "--run", run_dir, "--store", store, "--images", a,
                         "--image", a / "red/red_0.jpg", "-k", 6, "--json")
    assert code == 0, err
    ids = [r["id"] for r in json.loads(out.strip().splitlines()[-1])["results"]]
    assert len(ids) == 6 and all(i.split("/")[0] in ("red", "green") for i in ids)


def test_search_by_the_name_embed_stored_without_registering_it(capsys, run_dir, tmp_path):
    # `embed --images DIR --dataset NAME` names the set; `search --dataset NAME` finds it from the store alone
    # (NAME is not a registered dataset), the folder being the one recorded at embed time.
    images = make_labelled_folder(tmp_path / "photos", classes=("red", "green"), per_class=3, size=SIZE)
    store = tmp_path / "store"
    assert embed(capsys, run_dir, images, store, "--dataset", "my-shop")[0] == 0
    code, out, err = run(capsys, "search", "--run", run_dir, "--store", store, "--dataset", "my-shop",
                         "--id", "red/red_0.jpg", "-k", 2, "--json")
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["key"].startswith("my-shop/") and [r["id"].split("/")[0] for r in payload["results"]] == ["red"] * 2
    code, _, err = run(capsys, "search", "--run", run_dir, "--store", store, "--dataset", "nobody", "--id", "x.jpg")
    assert code == 1 and "no embeddings under" in err
