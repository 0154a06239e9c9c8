"""The faiss and Milvus index back ends (mildnet/search/faiss_index.py, milvus_index.py) against exact search:
clustered vectors (top 1 equal, at least 4 of the top 5, filters, exclusions, k beyond the set, float16), and
through the search engine on real shop photos (Magento Luma, from ../shared) embedded with the shipped model.
Milvus runs as milvus-lite (a local file); its tests skip, saying why, where milvus-lite cannot start."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from mildnet.errors import DataError
from mildnet.search.catalogue import Catalogue
from mildnet.search.engine import LoadedModel, SearchEngine
from mildnet.search.index import INDEXES, build_index
from mildnet.search.searcher import Searcher
from mildnet.store import EmbeddingSet, LocalStore

faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -r requirements-test.txt)")


def clustered(n=3000, dim=32, clusters=30, seed=0, spread=0.35) -> EmbeddingSet:
    """Unit vectors around a few centres (products of a few kinds), with model/dataset meta like a catalogue's."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"p{i:05d}.jpg" for i in range(n)]
    return EmbeddingSet(ids, ids, x.astype(np.float32), {"dataset": "clustered", "model_fingerprint": f"m{seed}"})


def queries(es: EmbeddingSet, count=30, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = es.vectors[rng.choice(len(es), count, replace=False)].astype(np.float64)
    return q + 0.1 * rng.standard_normal(q.shape) / np.sqrt(es.dim)


def assert_agrees(exact, approx, k=5):
    """Top 1 equal and at least 4 of the top 5 for every query; a shared hit has exact search's very score."""
    assert len(exact) == len(approx)
    for a, b in zip(exact, approx):
        assert len(a) == len(b)
        if not a:
            continue
        assert b[0].id == a[0].id
        assert len({h.id for h in a[:k]} & {h.id for h in b[:k]}) >= min(4, len(a[:k]))
        scores = {h.id: h.score for h in a}
        assert all(h.score == scores[h.id] for h in b if h.id in scores)
        assert [h.score for h in b] == sorted((h.score for h in b), reverse=True)


@pytest.fixture(scope="module")
def milvus_ok(tmp_path_factory):
    """milvus-lite starts here (a throwaway file), or the Milvus tests skip saying why."""
    pymilvus = pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install pymilvus milvus-lite)")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install milvus-lite)")
    path = tmp_path_factory.mktemp("milvus") / "probe.db"
    try:
        client = pymilvus.MilvusClient(str(path))
        client.list_collections()
        client.close()
    except (pymilvus.exceptions.MilvusException, OSError, RuntimeError) as exc:
        pytest.skip(f"milvus-lite cannot start here: {exc}")
    return True


# exact_below=0: filters go through faiss' ID selector however few rows they leave (else those are scanned).
BACK_ENDS = [("faiss", {}), ("faiss", {"exact_below": 0}), ("faiss", {"kind": "ivfpq", "exact_below": 0}),
             ("milvus", {})]
NAMES = ["faiss-hnsw", "faiss-hnsw-selector", "faiss-ivfpq-selector", "milvus-lite"]


@pytest.fixture(scope="module")
def data():
    return clustered()


@pytest.fixture(scope="module", params=BACK_ENDS, ids=NAMES)
def back_end(request, data, tmp_path_factory):
    name, options = request.param
    if name == "milvus":
        request.getfixturevalue("milvus_ok")
        options = {"uri": str(tmp_path_factory.mktemp("milvus") / "milvus.db")}
    return build_index(name, data, **options)


def test_registered_by_name():
    assert {"exact", "faiss", "milvus"} <= set(INDEXES)


def test_top_hits_agree_with_exact_search(data, back_end):
    exact = Searcher(data)
    q = queries(data)
    assert_agrees(exact.query(q, k=10), back_end.query(q, k=10))
    # One vector or a batch: the same answer.
    assert back_end.query(q[3], k=5) == back_end.query(q, k=5)[3:4]


def test_filters_and_exclusions_agree_with_exact_search(data, back_end):
    exact = Searcher(data)
    q = queries(data, count=12)
    rng = np.random.default_rng(2)
    for share in (0.5, 0.03, 0.002):  # broad (in the index), selective (listed or scanned), almost nothing
        allowed = rng.random(len(data)) < share
        a = exact.query(q, k=5, allowed=allowed, exclude_ids=["p00001.jpg"])
        b = back_end.query(q, k=5, allowed=allowed, exclude_ids=["p00001.jpg"])
        assert_agrees(a, b)
        assert all(allowed[data.index[h.id]] and h.id != "p00001.jpg" for hits in b for h in hits)
    # One exclusion list per query: each query's own left out.
    own = [[data.ids[int(np.argmax(data.vectors @ v.astype(np.float32)))]] for v in q[:4]]
    b = back_end.query(q[:4], k=5, exclude_ids=own + [])
    assert all(o[0] not in {h.id for h in hits} for o, hits in zip(own, b))
    assert_agrees(exact.query(q[:4], k=5, exclude_ids=own), b)
    assert back_end.query(q[:2], k=5, allowed=np.zeros(len(data), bool)) == [[], []]
    with pytest.raises(DataError, match="boolean mask"):
        back_end.query(q[0], k=3, allowed=np.ones(3, bool))
    with pytest.raises(DataError, match="dimension"):
        back_end.query(np.ones(7), k=3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        back_end.query(q[0], k=0)


def test_k_beyond_the_set_returns_every_allowed_row(data, back_end):
    q = queries(data, count=2)
    allowed = np.zeros(len(data), bool)
    allowed[:7] = True
    hits = back_end.query(q, k=50, allowed=allowed)
    assert [len(h) for h in hits] == [7, 7]
    assert hits == Searcher(data).query(q, k=50, allowed=allowed)


def test_small_float16_set_answers_like_exact_search(milvus_ok, tmp_path):
    es = clustered(n=300, dim=16, clusters=6, seed=3).astype("float16")
    exact = Searcher(es)
    q = queries(es, count=10)
    for name, options in (("faiss", {"M": 8}), ("faiss", {"kind": "ivfpq", "nlist": 4}),
                          ("milvus", {"uri": str(tmp_path / "m.db")})):
        index = build_index(name, es, **options)
        assert_agrees(exact.query(q, k=5), index.query(q, k=5))
        everything = index.query(q[0], k=1000)[0]
        assert len(everything) == 300 and everything == exact.query(q[0], k=1000)[0]


def test_faiss_options_are_checked(data):
    from mildnet.search.faiss_index import FaissIndex

    small = clustered(n=200, dim=16, clusters=4)
    for options, message in (({"kind": "annoy"}, "kind must be one of 'hnsw', 'ivfpq'"),
                             ({"M": 0}, "M must be a positive integer"),
                             ({"ef_search": 2.5}, "ef_search must be a positive integer"),
                             ({"nlist": 8}, "nlist apply to kind='ivfpq' only"),
                             ({"kind": "ivfpq", "pq_m": 5}, "pq_m must divide the embedding dimension 16"),
                             ({"kind": "ivfpq", "nlist": 500}, "nlist must be at most the number of rows"),
                             ({"kind": "ivfpq", "nbits": 9}, "needs at least 512 rows"),
                             ({"exact_below": -1}, "exact_below must be a non-negative integer")):
        with pytest.raises(ValueError, match=message):
            FaissIndex(small, **options)
    index = FaissIndex(small, kind="ivfpq", nlist=4, nprobe=100)
    assert index.nprobe == 4 and "nlist=4" in repr(index)


def test_milvus_keeps_a_filled_collection_and_refills_a_changed_one(milvus_ok, tmp_path):
    from mildnet.search.milvus_index import MilvusIndex

    uri = str(tmp_path / "shop.db")
    es = clustered(n=400, dim=16, clusters=5, seed=4)
    rows = {i: {"category": ("dress", "shirt", "Hat ")[r % 3], "colour": ("red", "blue")[r % 2]}
            for r, i in enumerate(es.ids)}
    first = MilvusIndex(es, uri, rows=rows)
    assert first.inserted and first.collection.startswith("mildnet_clustered_m4_v")
    again = MilvusIndex(es, uri, rows=rows)
    assert not again.inserted  # another process (or a restart) finds the collection as it left it
    q = queries(es, count=6)
    exact = Searcher(es)
    # A catalogue filter runs inside Milvus as an expression when it selects exactly the engine's mask.
    filters = {"category": ["HAT", "dress"], "colour": "red"}
    allowed = np.array([rows[i]["category"].strip().lower() in ("hat", "dress") and rows[i]["colour"] == "red"
                        for i in es.ids])
    assert again._prepare(filters, allowed) == 'c0_category in ["dress", "hat"] and c1_colour in ["red"]'
    assert again._prepare(filters, ~allowed) is None  # a mask it does not reproduce: the mask decides
    expected = exact.query(q, k=5, allowed=allowed, exclude_ids=[es.ids[0]])
    assert_agrees(expected, again.query(q, k=5, allowed=allowed, filters=filters, exclude_ids=[es.ids[0]]))
    assert_agrees(expected, again.query(q, k=5, filters=filters, exclude_ids=[es.ids[0]]))
    with pytest.raises(DataError, match="need an allowed mask"):
        MilvusIndex(es, str(tmp_path / "bare.db")).query(q, k=5, filters={"category": "dress"})
    # An updated catalogue fills a new version; the one before it stays readable, older ones go.
    changed = EmbeddingSet(es.ids, es.paths, es.vectors[::-1].copy(), es.meta)
    refilled = MilvusIndex(changed, uri, rows=rows)
    assert refilled.inserted and refilled.collection != first.collection
    assert_agrees(Searcher(changed).query(q, k=5), refilled.query(q, k=5))
    assert_agrees(expected, again.query(q, k=5, allowed=allowed, exclude_ids=[es.ids[0]]))
    third = MilvusIndex(EmbeddingSet(es.ids, es.paths, es.vectors[:, ::-1].copy(), es.meta), uri, rows=rows)
    kept = sorted(c for c in third._client.list_collections() if c.startswith("mildnet_clustered_m4_v"))
    assert kept == sorted([refilled.collection, third.collection])
    named = MilvusIndex(es, uri, collection="shop_index")
    assert named.collection == "shop_index" and MilvusIndex(changed, uri, collection="shop_index").inserted
    with pytest.raises(ValueError, match="uri must be"):
        MilvusIndex(es, "shop.sqlite")
    with pytest.raises(DataError, match=r"Milvus at http://127.0.0.1:9 failed: .*Fail connecting"):
        MilvusIndex(es, "milvus://127.0.0.1:9", timeout=2)
    with pytest.raises(ValueError, match="collection must be"):
        MilvusIndex(es, uri, collection="1 bad")
    with pytest.raises(ValueError, match="not in rows"):
        MilvusIndex(es, uri, rows=rows, columns=["price"])


def test_milvus_default_file_is_in_the_data_home(milvus_ok, monkeypatch, tmp_path):
    from mildnet.search.milvus_index import MilvusIndex, default_uri

    monkeypatch.setenv("MILDNET_HOME", str(tmp_path / "home"))
    index = MilvusIndex(clustered(n=100, dim=8, clusters=3))
    assert index.uri == default_uri() == str(tmp_path / "home" / "milvus.db")
    assert (tmp_path / "home" / "milvus.db").exists()


# -- the engine on real shop photos ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def luma_shop(tmp_path_factory, luma_dir):
    """48 Magento Luma photos (bags, tops, bottoms... in several colours) with their table, and the shipped model."""
    from mildnet.pretrained import default_run_dir

    luma = luma_dir

    labels = pd.read_csv(luma / "labels.csv")
    labels = labels[labels["view"] == "main"].drop_duplicates("product_id")
    picked = labels.groupby("product_type", group_keys=False).head(6).head(48)
    root = tmp_path_factory.mktemp("luma")
    for image in picked["image"]:
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(luma / image, root / image)
    table = picked[["image", "product_id", "product_type", "colour"]].rename(columns={"product_type": "category"})
    table.to_csv(root / "catalog.csv", index=False)
    model = LoadedModel.from_run(default_run_dir())
    store = LocalStore(tmp_path_factory.mktemp("store"))
    exact = SearchEngine.open(model, Catalogue.folder(root), store, calibrate=False)
    exact.update()
    return root, model, store, exact


@pytest.mark.parametrize("index", ["faiss", "milvus"])
def test_engine_on_real_photos_agrees_with_exact_search(luma_shop, index, request):
    if index == "milvus":
        request.getfixturevalue("milvus_ok")
    root, model, store, exact = luma_shop
    engine = SearchEngine.open(model, Catalogue.folder(root), store, index=index, calibrate=False)
    assert type(engine.searcher).__name__ == {"faiss": "FaissIndex", "milvus": "MilvusIndex"}[index]
    table = pd.read_csv(root / "catalog.csv")
    colour = table["colour"].value_counts().index[0]
    for item in table["image"][::6]:
        for filters in (None, {"colour": colour}, {"category": table["category"].iloc[0]}):
            if filters and index == "milvus":  # the filter runs inside Milvus, as an expression on its column
                allowed = engine.catalogue.mask(engine.embeddings.ids, filters)
                assert engine.searcher._prepare(filters, allowed).startswith(f"c{int('colour' in filters)}_")
            a = exact.query_id(item, k=5, filters=filters)
            b = engine.query_id(item, k=5, filters=filters)
            assert_agrees([[r for r in a.results]], [[r for r in b.results]])
        photo = engine.query_image(root / item, k=5)
        assert photo.results[0].id == item and [r.id for r in photo.results] == \
            [r.id for r in exact.query_image(root / item, k=5).results]


def test_faiss_keeps_its_index_for_the_next_process(tmp_path):
    from mildnet.search.faiss_index import FaissIndex

    es = clustered(n=500, dim=16, clusters=5, seed=5)
    q = queries(es, count=5)
    built = FaissIndex(es, M=8, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.faiss"))
    assert built.loaded_from is None and len(files) == 1 and files[0].name.startswith("clustered_m5_hnsw-")
    read = FaissIndex(es, M=8, cache_dir=tmp_path)
    assert read.loaded_from == files[0] and read.query(q, k=5) == built.query(q, k=5)
    # Other settings or other vectors: another file; the catalogue's older one goes.
    changed = FaissIndex(EmbeddingSet(es.ids, es.paths, es.vectors[::-1].copy(), es.meta), M=8, cache_dir=tmp_path)
    assert changed.loaded_from is None and [p.name for p in tmp_path.glob("*.faiss")] != [files[0].name]
    files[0].write_bytes(b"damaged")
    assert FaissIndex(es, M=8, cache_dir=tmp_path).loaded_from is None  # rebuilt, not an error
    FaissIndex(es, M=8, cache=False, cache_dir=tmp_path / "off")
    assert not (tmp_path / "off").exists()
    with pytest.raises(ValueError, match="cache must be True or False"):
        FaissIndex(es, cache="yes")
