"""The search engine (mildnet/search/engine.py) on a real folder of photos and a real tiny model: opening without
embedding, pending changes, updates, filters, index back ends and the errors callers turn into messages."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mildnet.errors import DataError, ImageError
from mildnet.search.catalogue import Catalogue, FilterError
from mildnet.search.engine import LoadedModel, NotEmbedded, SearchEngine, UnknownId
from mildnet.search.index import INDEXES, Index, build_index
from mildnet.store import LocalStore
from tests.conftest import make_labelled_folder


@pytest.fixture(scope="module")
def model():
    from mildnet.models import build_model

    return LoadedModel.from_keras(build_model("tiny_cnn", input_size=32, weights=None), {"image_size": 32})


@pytest.fixture
def shop(tmp_path):
    """Twelve photos in colour folders, with a catalogue table giving each a colour and a size."""
    root = make_labelled_folder(tmp_path / "photos", per_class=4)
    rows = ["image,product_id,category,colour,size"]
    for i, path in enumerate(sorted(root.rglob("*.jpg"))):
        rel = path.relative_to(root).as_posix()
        rows.append(f"{rel},{path.stem},shirt,{rel.split('/')[0]},{'S' if i % 2 else 'L'}")
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    return root


def test_open_never_embeds_and_update_makes_it_ready(model, shop, tmp_path):
    store = LocalStore(tmp_path / "store")
    engine = SearchEngine.open(model, Catalogue.folder(shop), store)
    assert not engine.ready and store.keys() == []
    with pytest.raises(NotEmbedded, match="embed"):
        engine.query_id("red/red_0.jpg")
    assert engine.pending().status == "built" and engine.pending().embed == 12
    calls = []
    result = engine.update(lambda done, total: calls.append((done, total)))
    assert result.status == "built" and engine.ready and len(engine) == 12 and calls[-1] == (12, 12)
    assert engine.pending().up_to_date
    # Another process opening the same store finds the set as it is.
    again = SearchEngine.open(model, Catalogue.folder(shop), store)
    assert again.ready and again.embeddings.equals(engine.embeddings)


def test_queries_by_id_and_photo_agree_and_carry_the_table(model, shop, tmp_path):
    engine = SearchEngine.open(model, Catalogue.folder(shop), LocalStore(tmp_path / "store"))
    engine.update()
    by_id = engine.query_id("red/red_1.jpg", k=3)
    assert by_id.query == {"id": "red/red_1.jpg"} and "red/red_1.jpg" not in [r.id for r in by_id.results]
    by_photo = engine.query_image(shop / "red" / "red_1.jpg", k=4)
    assert by_photo.results[0].id == "red/red_1.jpg" and by_photo.results[0].score == pytest.approx(1.0, abs=1e-5)
    # The photo's own row aside, the same products in the same order with the same scores.
    assert [(r.id, round(r.score, 6)) for r in by_photo.results[1:]] == [(r.id, round(r.score, 6))
                                                                         for r in by_id.results]
    assert by_id.results[0].row["category"] == "shirt" and "colour" in by_id.results[0].row
    payload = by_id.to_dict(image_root=shop)
    assert payload["results"][0]["path"] == str(shop / by_id.results[0].id)
    assert set(payload) >= {"query", "key", "model", "n_catalog", "close_match", "calibration", "results"}
    with pytest.raises(ImageError):
        engine.query_image(b"not a photo", k=3)
    with pytest.raises(UnknownId, match="not in catalogue"):
        engine.query_id("nowhere.jpg")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        engine.query_id("red/red_1.jpg", k=0)


def test_filters_keep_only_matching_rows(model, shop, tmp_path):
    engine = SearchEngine.open(model, Catalogue.folder(shop), LocalStore(tmp_path / "store"))
    engine.update()
    found = engine.query_id("red/red_1.jpg", k=12, filters={"colour": "BLUE", "size": ["s"]})
    assert [r.row["colour"] for r in found.results] == ["blue"] * 2 and {r.row["size"] for r in found.results} == {"S"}
    everything = engine.query_id("red/red_1.jpg", k=12)
    assert [r.id for r in everything.results if r.row["colour"] == "blue" and r.row["size"] == "S"] == \
        [r.id for r in found.results]
    assert engine.query_id("red/red_1.jpg", k=5, filters={"colour": "purple"}).results == []
    with pytest.raises(FilterError, match="no column 'price'"):
        engine.query_id("red/red_1.jpg", filters={"price": "9"})
    bare = SearchEngine.open(model, Catalogue.folder(make_labelled_folder(tmp_path / "bare")),
                             LocalStore(tmp_path / "store"))
    bare.update()
    with pytest.raises(FilterError, match="has no table"):
        bare.query_id("red/red_1.jpg", filters={"colour": "red"})


def test_pending_sees_new_removed_and_replaced_photos(model, shop, tmp_path):
    store = LocalStore(tmp_path / "store")
    engine = SearchEngine.open(model, Catalogue.folder(shop), store)
    engine.update()
    os.remove(shop / "catalog.csv")  # a plain folder from now on: every photo under it is searched
    (shop / "green" / "green_0.jpg").unlink()
    (shop / "red" / "red_9.jpg").write_bytes((shop / "red" / "red_0.jpg").read_bytes())
    engine = SearchEngine.open(model, Catalogue.folder(shop), store)
    changes = engine.pending()
    assert (changes.status, changes.new, changes.removed) == ("updated", 1, 1)
    assert changes.describe() == "1 new, 1 removed"
    before = engine.searcher
    assert engine.update().status == "updated" and engine.searcher is not before and len(engine) == 12
    assert engine.query_image(shop / "red" / "red_9.jpg", k=1).results[0].score == pytest.approx(1.0, abs=1e-5)


def test_index_back_ends_plug_in_by_name(model, shop, tmp_path):
    store = LocalStore(tmp_path / "store")
    exact = SearchEngine.open(model, Catalogue.folder(shop), store)
    exact.update()
    assert isinstance(exact.searcher, Index) and "exact" in INDEXES
    # The same protocol answered by scikit-learn's brute force (the design's reference): the same results.
    reference = SearchEngine.open(model, Catalogue.folder(shop), store, index="exact",
                                  index_options={"backend": "sklearn"})
    for item in ("red/red_0.jpg", "blue/blue_3.jpg"):
        a, b = exact.query_id(item, k=5), reference.query_id(item, k=5)
        assert [(r.id, r.score) for r in a.results] == [(r.id, r.score) for r in b.results]
    with pytest.raises(DataError, match="unknown index 'annoy'; choose one of: exact"):
        build_index("annoy", exact.embeddings)


def test_searcher_mask_is_checked(model, shop, tmp_path):
    engine = SearchEngine.open(model, Catalogue.folder(shop), LocalStore(tmp_path / "store"))
    engine.update()
    with pytest.raises(DataError, match="boolean mask"):
        engine.searcher.query(engine.embeddings.vectors[0], k=3, allowed=np.ones(3, bool))


def test_index_spec_as_users_write_it(capsys, monkeypatch):
    from mildnet.cli import main
    from mildnet.search.index import parse_index_spec

    assert parse_index_spec("") == ("exact", {}) and parse_index_spec(" exact ") == ("exact", {})
    assert parse_index_spec("milvus://db.shop:19530/") == ("milvus", {"uri": "http://db.shop:19530"})
    for bad, said in (("annoy", "unknown index 'annoy'"), ("redis://x:1", "milvus://HOST:PORT"),
                      ("milvus://", "milvus://HOST:PORT")):
        with pytest.raises(DataError, match=said):
            parse_index_spec(bad)
    # The CLI refuses an unknown back end as a usage error before loading anything; $MILDNET_INDEX is its default.
    assert main(["search", "--index", "annoy", "--id", "x", "--dataset", "not-registered"]) == 2
    assert "unknown index 'annoy'" in capsys.readouterr().err
    monkeypatch.setenv("MILDNET_INDEX", "annoy")
    assert main(["embed", "--images", "/nowhere"]) == 2
    assert "unknown index 'annoy'" in capsys.readouterr().err


def test_a_float16_store_serves_after_update_what_it_serves_after_a_restart(model, shop, tmp_path):
    store = LocalStore(tmp_path / "store", dtype="float16")
    engine = SearchEngine.open(model, Catalogue.folder(shop), store)
    engine.update()
    assert engine.embeddings.dtype == "float16"
    reopened = SearchEngine.open(model, Catalogue.folder(shop), LocalStore(tmp_path / "store", dtype="float16"))
    assert reopened.embeddings.equals(engine.embeddings)
    a, b = engine.query_id("blue/blue_2.jpg", k=5), reopened.query_id("blue/blue_2.jpg", k=5)
    assert [(r.id, r.score) for r in a.results] == [(r.id, r.score) for r in b.results]


def test_concurrent_queries_are_batched_and_answer_as_one_at_a_time():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mildnet.search.batching import QueryBatcher
    from mildnet.search.searcher import Searcher
    from mildnet.store import EmbeddingSet

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    ids = [f"p{i:04d}" for i in range(len(x))]
    searcher = Searcher(EmbeddingSet(ids, ids, x))
    calls = []
    lock = threading.Lock()

    class Counting:
        """The exact searcher, counting the queries of each pass (a real index, not a stand-in)."""

        embeddings = searcher.embeddings

        def query(self, vectors, k=5, exclude_ids=None, **options):
            with lock:
                calls.append(len(np.atleast_2d(vectors)))
            return searcher.query(vectors, k=k, exclude_ids=exclude_ids, **options)

    index, batcher = Counting(), QueryBatcher(max_batch=8, passes=2)
    jobs = [(x[i] + 0.01 * rng.standard_normal(16).astype(np.float32), 1 + i % 7, [ids[i]] if i % 2 else None)
            for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda job: batcher.query(index, *job), jobs))
    want = [searcher.query(v, k=k, exclude_ids=ex)[0] for v, k, ex in jobs]
    assert got == want  # same ids, scores and order as one query at a time, each with its own k and exclusions
    assert sum(calls) == 200 and max(calls) > 1 and max(calls) <= 8  # batched under load, never above the cap
    # Alone, a query is answered at once, in a pass of its own; a bad vector fails alone with the index's message.
    calls.clear()
    assert batcher.query(index, x[5], 3) == searcher.query(x[5], k=3)[0] and calls == [1]
    with pytest.raises(DataError, match="dimension 3"):
        batcher.query(index, np.ones(3, np.float32), 3)
    with pytest.raises(ValueError, match="max_batch"):
        QueryBatcher(0)
    with pytest.raises(ValueError, match="passes"):
        QueryBatcher(4, passes=0)


def test_a_big_catalogue_batches_concurrent_queries_through_the_engine(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from mildnet.embeddings import EMBEDDING_VERSION, cache_key
    from mildnet.search import engine as engine_module
    from mildnet.store import EmbeddingSet

    rng = np.random.default_rng(4)
    n = engine_module.BATCH_FROM_ROWS + 100
    x = rng.standard_normal((n, 32)).astype(np.float32)
    ids = [f"p{i:05d}.jpg" for i in range(n)]
    store = LocalStore(tmp_path / "store", fsync=False)
    store.put(cache_key("big", "f" * 64), EmbeddingSet(ids, ids, x, {
        "model_fingerprint": "f" * 64, "catalog_fingerprint": "c", "image_size": 8,
        "embedding_version": EMBEDDING_VERSION}))
    model = LoadedModel(None, {}, "vectors", 8, "f" * 64)
    engine = SearchEngine.open(model, Catalogue("big", tmp_path, tuple(ids)), store, calibrate=False)
    passes = []
    real = engine.searcher.query

    def counting(vectors, *args, **kwargs):
        passes.append(len(np.atleast_2d(vectors)))
        return real(vectors, *args, **kwargs)

    engine.searcher.query = counting  # the real searcher, counted: how many queries each pass answered
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: engine.query_id(ids[i], k=4), range(64)))
    assert [[r.id for r in g.results] for g in got] == [[h.id for h in real(x[i], k=4, exclude_ids=[ids[i]])[0]]
                                                         for i in range(64)]
    assert sum(passes) == 64 and max(passes) > 1


def test_filter_masks_are_coded_once_per_set_and_match_the_table(tmp_path):
    import pandas as pd

    ids = tuple(f"p{i:03d}.jpg" for i in range(300))
    rng = np.random.default_rng(2)
    table = pd.DataFrame({"image": ids, "category": rng.choice(["Dress ", "shirt"], 300),
                          "colour": rng.choice(["red", "Blue", "black"], 300)}).iloc[:-5]  # 5 photos without a row
    catalogue = Catalogue("c", tmp_path, ids, table)
    cache = {}
    got = catalogue.mask(ids, {"category": "dress", "colour": ["RED", "blue "]}, cache)
    want = np.zeros(300, bool)
    want[:295] = (table["category"].str.strip().str.casefold().eq("dress")
                  & table["colour"].str.casefold().isin(["red", "blue"])).to_numpy()
    assert (got == want).all() and not got[-5:].any() and set(cache) == {"category", "colour"}
    assert (catalogue.mask(ids, {"category": "dress", "colour": ["RED", "blue "]}, cache) == got).all()
    assert (catalogue.mask(ids, {"category": "dress", "colour": ["RED", "blue "]}) == got).all()  # no cache
    assert not catalogue.mask(ids, {"colour": "green"}, cache).any()
