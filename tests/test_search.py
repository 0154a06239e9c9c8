"""Searcher against a brute-force numpy reference, and the results plot."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mildnet.errors import DataError, ImageError
from mildnet.search import Hit, Searcher, plot_results
from mildnet.store import EmbeddingSet


def random_set(n=200, dim=16, seed=0, normalise=True) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((n, dim)).astype(np.float32)
    if normalise:
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    ids = [f"p{i:04d}/front.jpg" for i in range(n)]
    return EmbeddingSet(ids, [f"images/{i}" for i in ids], vec, {"model_fingerprint": "m"})


def reference(emb: EmbeddingSet, queries: np.ndarray, k: int, exclude=None) -> list[list[tuple[str, float]]]:
    """Brute force: dot products of L2-normalised rows, full argsort."""
    x = emb.vectors.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = np.atleast_2d(queries).astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims = q @ x.T
    out = []
    for qi, row in enumerate(sims):
        banned = set(exclude[qi]) if exclude else set()
        order = [r for r in np.argsort(-row, kind="stable") if emb.ids[r] not in banned]
        out.append([(emb.ids[r], float(row[r])) for r in order[:k]])
    return out


def assert_same(hits: list[list[Hit]], ref: list[list[tuple[str, float]]]) -> None:
    assert len(hits) == len(ref)
    for got, want in zip(hits, ref):
        assert [h.id for h in got] == [w[0] for w in want]
        np.testing.assert_allclose([h.score for h in got], [w[1] for w in want], atol=1e-5)


@pytest.mark.parametrize("normalise", [True, False])
def test_matches_brute_force(normalise):
    emb = random_set(300, 24, seed=1, normalise=normalise)
    queries = np.random.default_rng(2).standard_normal((37, 24)).astype(np.float32)
    searcher = Searcher(emb)
    hits = searcher.query(queries, k=7)
    assert_same(hits, reference(emb, queries, 7))
    assert all(h.path == f"images/{h.id}" for row in hits for h in row)
    assert all(row[i].score >= row[i + 1].score for row in hits for i in range(6))


def test_single_vector_batch_equals_one_by_one_and_chunking():
    emb = random_set(150, 8, seed=3)
    queries = np.random.default_rng(4).standard_normal((23, 8)).astype(np.float32)
    whole = Searcher(emb, chunk_size=1024).query(queries, k=5)
    chunked = Searcher(emb, chunk_size=4).query(queries, k=5)  # 23 = 5 chunks of 4 + a partial one
    one_by_one = [Searcher(emb).query(q, k=5)[0] for q in queries]
    assert whole == chunked == one_by_one
    assert len(Searcher(emb).query(queries[0], k=5)) == 1


def test_query_id_excludes_self_and_still_returns_k():
    emb = random_set(60, 8, seed=5)
    s = Searcher(emb, chunk_size=7)
    target = emb.ids[10]
    hits = s.query_id(target, k=5)
    assert len(hits) == 5 and target not in [h.id for h in hits]
    assert_same([hits], reference(emb, emb.vectors[10], 5, exclude=[[target]]))
    with_self = s.query_id(target, k=5, exclude_self=False)
    assert with_self[0].id == target and with_self[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.id for h in with_self[1:]] == [h.id for h in hits[:4]]

    batch = s.query_ids(emb.ids[:20], k=3)
    assert batch == [s.query_id(i, k=3) for i in emb.ids[:20]]


def test_exclusion_global_and_per_query():
    emb = random_set(80, 6, seed=6)
    s = Searcher(emb, chunk_size=3)
    q = np.random.default_rng(7).standard_normal((5, 6)).astype(np.float32)
    top = s.query(q, k=4)
    banned = [top[0][0].id, top[0][1].id, "not-in-catalog"]
    hits = s.query(q, k=4, exclude_ids=banned)
    assert all(len(row) == 4 and not {h.id for h in row} & set(banned) for row in hits)
    assert_same(hits, reference(emb, q, 4, exclude=[banned] * 5))
    per_query = [[r[0].id for r in top][i:i + 1] for i in range(5)]
    per_query[2] = None
    hits = s.query(q, k=4, exclude_ids=per_query)
    assert hits[2] == top[2]
    assert_same([hits[0]], reference(emb, q[:1], 4, exclude=[per_query[0]]))
    with pytest.raises(DataError, match="one list per query"):
        s.query(q, k=4, exclude_ids=[["a"], ["b"]])


def test_k_larger_than_catalog():
    emb = random_set(6, 4, seed=8)
    s = Searcher(emb)
    assert len(s.query(emb.vectors[0], k=50)[0]) == 6
    assert len(s.query_id(emb.ids[0], k=50)) == 5
    assert_same(s.query(emb.vectors[:2], k=50), reference(emb, emb.vectors[:2], 50))


def test_errors_are_clear():
    emb = random_set(10, 4)
    s = Searcher(emb)
    with pytest.raises(DataError, match="dimension 5 but the catalog embeddings have 4"):
        s.query(np.ones(5, np.float32))
    with pytest.raises(DataError, match="not in the searched catalog.*'nope'"):
        s.query_id("nope")
    with pytest.raises(DataError, match="NaN"):
        s.query(np.array([np.nan, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        s.query(np.ones(4, np.float32), k=0)
    with pytest.raises(ValueError, match="chunk_size"):
        Searcher(emb, chunk_size=0)
    with pytest.raises(DataError, match="empty"):
        Searcher(EmbeddingSet([], [], np.zeros((0, 4), np.float32)))


def test_ties_are_ordered_by_catalog_row():
    vec = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0.6, 0.8]], np.float32)
    emb = EmbeddingSet(list("abcde"), list("abcde"), vec)
    hits = Searcher(emb).query(np.array([1, 0], np.float32), k=4)[0]
    assert [h.id for h in hits] == ["a", "c", "d", "e"]
    # Many exact ties: sklearn's partial sort returns them scrambled; rows must come back in catalog order.
    rng = np.random.default_rng(0)
    pick = rng.integers(0, 3, 64)
    vec = np.eye(3, dtype=np.float32)[pick] + np.float32(0.5)
    emb = EmbeddingSet([f"r{i:02d}" for i in range(64)], [""] * 64, vec)
    hits = Searcher(emb).query(np.array([1, 0.2, 0.1], np.float32), k=64)[0]
    keyed = [(-round(h.score, 6), h.id) for h in hits]
    assert keyed == sorted(keyed)


def test_batch_of_many_queries_is_fast_enough():
    import time

    emb = random_set(4096, 64, seed=9)
    s = Searcher(emb, chunk_size=512)
    start = time.perf_counter()
    hits = s.query(emb.vectors, k=5)
    assert time.perf_counter() - start < 10.0
    assert [row[0].id for row in hits] == emb.ids  # every item is its own nearest neighbour


# ---------------------------------------------------------------------------------------------- plot_results


def _write_images(root, emb, n):
    rng = np.random.default_rng(0)
    for hit_path in emb.paths[:n]:
        p = root / hit_path
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(p)


def test_plot_results_writes_png(tmp_path):
    emb = random_set(12, 4)
    _write_images(tmp_path, emb, 12)
    hits = Searcher(emb).query_id(emb.ids[0], k=5)
    out = tmp_path / "plots" / "result.png"
    query = np.random.default_rng(1).uniform(0, 255, (64, 48, 3)).astype(np.float32)
    plot_results(query, hits, tmp_path, out, title="top-5")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 2_000_000
    with Image.open(out) as im:
        assert im.size[0] > im.size[1] > 100  # one row of 6 tiles

    # loader callable, query given as a path, a missing hit drawn as a blank tile, a file object as output
    bogus = [Hit("gone", "missing.jpg", 0.5)]
    buf = io.BytesIO()
    plot_results(tmp_path / emb.paths[0], hits + bogus,
                 lambda p: np.asarray(Image.open(tmp_path / p)) if p != "missing.jpg" else _raise(p), buf)
    assert buf.getvalue()[:4] == b"\x89PNG"
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.size[0] > 0


def _raise(p):
    raise ImageError(f"image not found: {p}")


def test_plot_results_bad_query_image(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        plot_results(tmp_path / "none.jpg", [], None, tmp_path / "x.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot decode"):
        plot_results(tmp_path / "bad.jpg", [], None, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_results_unwritable_path_is_a_one_line_error_and_keeps_the_old_plot(tmp_path):
    from mildnet.errors import DataError

    emb = random_set(6, 4)
    _write_images(tmp_path, emb, 6)
    hits = Searcher(emb).query_id(emb.ids[0], k=3)
    query = np.zeros((8, 8, 3), np.uint8)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="cannot write the plot"):
        plot_results(query, hits, tmp_path, tmp_path / "file.txt" / "out.png")
    with pytest.raises(DataError, match="cannot write the plot"):
        plot_results(query, hits, tmp_path, tmp_path)  # a folder, not a file
    out = tmp_path / "good.png"
    plot_results(query, hits, tmp_path, out)
    before = out.read_bytes()
    with pytest.raises(ImageError):
        plot_results(tmp_path / "missing.jpg", hits, tmp_path, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_plot_results_decompression_bomb_hit_is_a_blank_tile(tmp_path):
    Image.new("RGB", (15000, 15000), (200, 10, 10)).save(tmp_path / "bomb.png")
    buf = io.BytesIO()
    plot_results(np.zeros((8, 8, 3), np.uint8), [Hit("bomb", "bomb.png", 0.9)], tmp_path, buf)
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_plot_results_leaves_matplotlib_state_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    emb = random_set(3, 4)
    _write_images(tmp_path, emb, 3)
    plot_results(np.zeros((8, 8, 3), np.uint8), Searcher(emb).query_id(emb.ids[0], k=2), tmp_path,
                 tmp_path / "p.png")
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


# ---------------------------------------------------------------------------------------------- backends, ties


def sklearn_knn(emb: EmbeddingSet, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(emb.vectors)
    return nn.kneighbors(np.atleast_2d(queries), n_neighbors=k)


@pytest.mark.parametrize("backend", ["blas", "sklearn"])
def test_identical_to_sklearn_nearest_neighbors(backend):
    emb = random_set(700, 48, seed=11, normalise=False)
    queries = np.random.default_rng(12).standard_normal((60, 48)).astype(np.float32)
    dist, idx = sklearn_knn(emb, queries, 10)
    hits = Searcher(emb, chunk_size=16, backend=backend).query(queries, k=10)
    assert [[h.id for h in row] for row in hits] == [[emb.ids[j] for j in row] for row in idx]
    np.testing.assert_allclose([[h.score for h in row] for row in hits], 1.0 - dist, atol=1e-6)


def sklearn_canonical(dist: np.ndarray, idx: np.ndarray) -> list[list[int]]:
    """sklearn's neighbours with exact ties put in row order: its distances agree, its tie order is arbitrary
    (argpartition leaves tied rows in any order and argsort beyond 16 items is not stable)."""
    return [[j for _, j in sorted(zip(np.round(d, 6), i))] for d, i in zip(dist, idx)]


def test_exact_duplicates_come_in_catalog_row_order():
    base = random_set(40, 12, seed=13).vectors
    vec = np.concatenate([base, base, base])  # every product photographed three times: exact ties
    emb = EmbeddingSet([f"r{i:03d}" for i in range(120)], [""] * 120, vec)
    dist, idx = sklearn_knn(emb, base[:8], 9)
    raw = [[emb.ids[j] for j in row] for row in idx]
    want = [[emb.ids[j] for j in row] for row in sklearn_canonical(dist, idx)]
    for backend in ("blas", "sklearn"):
        hits = Searcher(emb, backend=backend).query(base[:8], k=9)
        got = [[h.id for h in row] for row in hits]
        assert got == want
        assert [h.id for h in hits[0][:3]] == ["r000", "r040", "r080"]
        # Same neighbours as sklearn's raw output; only the order inside a tie may differ.
        assert [sorted(g) for g in got] == [sorted(r) for r in raw]
    assert want != raw  # the fixture does hit one of sklearn's scrambled ties (else the test proves less)


def test_many_ties_beyond_sklearns_stable_range_are_in_row_order():
    rng = np.random.default_rng(0)
    vec = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 64)] + np.float32(0.5)
    emb = EmbeddingSet([f"r{i:02d}" for i in range(64)], [""] * 64, vec)
    q = np.array([1, 0.2, 0.1], np.float32)
    dist, idx = sklearn_knn(emb, q, 64)
    want = [emb.ids[j] for j in sklearn_canonical(dist, idx)[0]]
    assert want != [emb.ids[j] for j in idx[0]]  # sklearn's raw order does scramble this tie
    for backend in ("blas", "sklearn"):
        s = Searcher(emb, backend=backend)
        assert [h.id for h in s.query(q, k=64)[0]] == want
        # k cutting through a tie keeps its lowest rows (sklearn keeps an arbitrary subset, same distances).
        cut = s.query(q, k=30)[0]
        assert [h.id for h in cut] == want[:30]
        np.testing.assert_allclose([h.score for h in cut], 1.0 - sklearn_knn(emb, q, 30)[0][0], atol=1e-6)


def test_near_ties_below_float32_resolution_follow_the_exact_order():
    # 40 rows a few float32 ulps apart: their float32 scores tie or swap, the exact (float64) order does not.
    # k=20 cuts through the cluster, so the candidate boundary is exercised (widening past the margin).
    rng = np.random.default_rng(14)
    v = rng.standard_normal(64).astype(np.float32)
    v /= np.linalg.norm(v)
    vec = np.repeat(v[None], 40, axis=0)
    cols = rng.integers(0, 64, (40, 3))
    for r in range(40):
        vec[r, cols[r]] = np.nextafter(vec[r, cols[r]], np.float32(2 * (r % 2) - 1) * np.inf)
    far = random_set(300, 64, seed=15).vectors
    emb = EmbeddingSet([f"x{i:03d}" for i in range(340)], [""] * 340, np.concatenate([far[:150], vec, far[150:]]))
    q = v + np.float32(1e-3) * rng.standard_normal(64).astype(np.float32)
    want = reference(emb, q, 20)
    for backend in ("blas", "sklearn"):
        for chunk in (1, 3):
            hits = Searcher(emb, chunk_size=chunk, backend=backend).query(np.stack([q, q, q]), k=20)
            assert_same(hits, want * 3)
            assert hits[0] == hits[1] == hits[2]


def test_backends_agree_with_exclusions_and_k_beyond_catalog():
    emb = random_set(90, 10, seed=16)
    q = np.random.default_rng(17).standard_normal((9, 10)).astype(np.float32)
    per_query = [[emb.ids[i], emb.ids[i + 1]] for i in range(9)]
    for k, ex in ((4, None), (4, per_query), (200, per_query), (3, [emb.ids[0]])):
        a = Searcher(emb, chunk_size=2).query(q, k=k, exclude_ids=ex)
        b = Searcher(emb, chunk_size=5, backend="sklearn").query(q, k=k, exclude_ids=ex)
        assert a == b
    assert Searcher(emb).query_ids(emb.ids[:7], k=6) == Searcher(emb, backend="sklearn").query_ids(emb.ids[:7], k=6)
    with pytest.raises(ValueError, match="backend must be one of"):
        Searcher(emb, backend="faiss")


def test_float16_set_searches_its_own_values_block_by_block():
    emb = random_set(500, 32, seed=18).astype("float16")
    q = np.random.default_rng(19).standard_normal((25, 32)).astype(np.float32)
    s = Searcher(emb)
    s._upcast_rows = 37  # several upcast blocks and a partial one
    as_f32 = EmbeddingSet(emb.ids, emb.paths, emb.vectors.astype(np.float32))
    assert s.query(q, k=6) == Searcher(as_f32).query(q, k=6)
    assert_same(s.query(q, k=6), reference(as_f32, q, 6))


@pytest.mark.slow
def test_memory_stays_bounded_however_many_queries():
    import tracemalloc

    emb = random_set(100_000, 128, seed=20)  # a 49 MiB matrix
    s = Searcher(emb)
    assert s.chunk_size * len(emb) * 12 <= max(emb.vectors.nbytes // 4, 32 << 20)
    queries = np.random.default_rng(21).standard_normal((3000, 128)).astype(np.float32)
    tracemalloc.start()
    try:
        hits = s.query(queries, k=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One block for all 3000 queries would be 3000 x 100000 x 12 bytes = 3.4 GiB.
    assert len(hits) == 3000 and peak < 0.75 * emb.vectors.nbytes


@pytest.mark.parametrize("share", [0.9, 0.5, 0.1, 0.002])
def test_allowed_rows_match_a_brute_force_whatever_the_share(share):
    # A filter keeps few rows or many (the search takes two paths): the same results as a float64 brute force
    # over the allowed rows, exclusions applied, k beyond what is allowed included, and as the sklearn back end.
    rng = np.random.default_rng(11)
    n = 3000
    x = rng.standard_normal((n, 24)).astype(np.float32)
    ids = [f"i{i:04d}" for i in range(n)]
    blas = Searcher(EmbeddingSet(ids, ids, x))
    sklearn = Searcher(EmbeddingSet(ids, ids, x), backend="sklearn")
    mask = rng.random(n) < share
    x64 = x.astype(np.float64)
    unit = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    for i in range(0, 40, 3):
        exclude = [ids[i], ids[i + 1]] if i % 2 else None
        scores = unit @ unit[i]
        ok = mask.copy()
        if exclude:
            ok[[i, i + 1]] = False
        order = [j for j in np.lexsort((np.arange(n), -scores)) if ok[j]]
        for k in (1, 5, 40):
            got = blas.query(x[i], k=k, exclude_ids=exclude, allowed=mask)[0]
            assert [h.id for h in got] == [ids[j] for j in order[:k]]
            assert got == sklearn.query(x[i], k=k, exclude_ids=exclude, allowed=mask)[0]
