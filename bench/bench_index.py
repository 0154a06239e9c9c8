"""Index back ends (issue 21) against exact search: recall@10, query latency p50/p99, build time and memory.

Data: ``--seeds STORE``: real embeddings (every set in a local store folder, e.g. Luma and clothing-small photos
embedded with the shipped model) plus generated neighbours (points between a real photo and one of its 20
nearest real neighbours, plus noise: the real photos' local geometry at 1M rows); without it, generated
clustered vectors (categories > products > photos). Queries are generated the same way, not catalogue rows.
Every approximate back end is measured through the engine's interface (``build_index(name, set).query``: faiss
or Milvus candidates, then the exact re-scoring), one query at a time, with exact search (``Searcher``, BLAS)
timed in the same run on the same queries as the baseline and the reference top 10.

Table 1 at ``--n`` (default 1M: exact, faiss HNSW at several ef, faiss IVF-PQ at two nprobe); table 3: the same
HNSW index and exact search with filters (random masks of 50% / 10% / 1% of the rows). Table 2 at
``--milvus-n`` (default 100k): exact, faiss HNSW and milvus-lite side by side; milvus-lite (pure Python over
faiss segments, ~240 ms a single query) is the stand-in that runs the Milvus client code here, not an
embedded engine: a Milvus server's speed at scale comes from its published benchmarks.

    python bench/bench_index.py             # 1M x 256, milvus-lite at 100k (about 10-15 min on 2 cores)
    python bench/bench_index.py --quick     # 20k x 256, milvus-lite at 5k (about a minute)
    python bench/bench_index.py --n 200000 --queries 300 --milvus-n 50000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import _common as C  # noqa: E402

K = 10


def rss_mb() -> float:
    """Current resident set size (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def catalogue_vectors(n: int, d: int, q: int, seed: int, categories: int = 50, per_product: int = 4):
    """(catalogue (n, d) float32 unit rows, q query rows: new photos of random catalogue products), generated.

    Three levels: 50 categories, products of 4 photos; per coordinate a photo is category + 0.7 product + 0.5
    photo noise, so two photos of one product are ~0.86 cosine apart, of one category ~0.57, unrelated ~0 (at
    100k rows HNSW's recall matches the issue's earlier measurement; at 1M the many equally close same-category
    rows make it a hard case)."""
    rng = np.random.default_rng(seed)
    products = max(1, n // per_product)
    centres = rng.standard_normal((categories, d), dtype=np.float32)
    product = centres[rng.integers(0, categories, products)]
    product += 0.7 * rng.standard_normal(product.shape, dtype=np.float32)

    def photos(of: np.ndarray) -> np.ndarray:
        block = product[of] + 0.5 * rng.standard_normal((len(of), d), dtype=np.float32)
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    x = np.empty((n, d), dtype=np.float32)
    step = 50_000
    for a in range(0, n, step):
        x[a:a + step] = photos(np.arange(a, min(n, a + step)) % products)
    return x, photos(rng.integers(0, products, q))


def real_seed_vectors(store: str) -> np.ndarray:
    """Every embedding set in a local store folder (e.g. real photos embedded with the shipped model), stacked."""
    from mildnet.store import LocalStore

    local = LocalStore(store)
    sets = [local.get(key) for key in local.keys()]
    sets = [s for s in sets if s is not None and len(s)]
    if not sets or len({s.dim for s in sets}) != 1:
        raise SystemExit(f"no usable embedding sets (one dimension) in {store}")
    x = np.concatenate([s.vectors.astype(np.float32) for s in sets])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def neighbours_of_real(seeds: np.ndarray, n: int, q: int, seed: int, links: int = 20):
    """(n rows, q queries) generated around real embeddings: a point between a real photo and one of its ``links``
    nearest real neighbours (uniform position on the segment), plus noise of 0.2-0.5 of a unit vector's length
    in a random direction. Real photos' local geometry, at any catalogue size."""
    rng = np.random.default_rng(seed)
    s = seeds @ seeds.T
    np.fill_diagonal(s, -np.inf)
    near = np.argpartition(-s, links, axis=1)[:, :links]
    d = seeds.shape[1]

    def make(count: int) -> np.ndarray:
        i = rng.integers(0, len(seeds), count)
        j = near[i, rng.integers(0, links, count)]
        t = rng.random((count, 1), dtype=np.float32)
        block = (1 - t) * seeds[i] + t * seeds[j]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        noise = rng.standard_normal((count, d), dtype=np.float32)
        noise *= (rng.uniform(0.2, 0.5, (count, 1)) / np.linalg.norm(noise, axis=1, keepdims=True)).astype(np.float32)
        block += noise
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    x = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 50_000):
        x[a:a + 50_000] = make(min(50_000, n - a))
    return x, make(q)


def latencies(index, q: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
    """Seconds per single query (one call each, as a web request asks) and each query's top-K ids."""
    times, found = np.empty(len(q)), []
    for i, v in enumerate(q):
        t0 = time.perf_counter()
        hits = index.query(v, k=K)[0]
        times[i] = time.perf_counter() - t0
        found.append([h.id for h in hits])
    return times, found


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def run_table(title: str, es, q: np.ndarray, variants, notes: list[str], kept: dict | None = None) -> tuple[list, bool]:
    """Exact first (the reference and the baseline), then each (label, factory, how) variant on the same queries."""
    from mildnet.search.searcher import Searcher

    rows, ok = [], True
    before = rss_mb()
    t0 = time.perf_counter()
    exact = Searcher(es)
    build_exact = time.perf_counter() - t0
    latencies(exact, q[:3])  # warm-up (BLAS threads, page faults)
    t_exact, truth = latencies(exact, q)
    p50_exact = float(np.median(t_exact))
    rows.append(["exact (Searcher, BLAS)", build_exact, rss_mb() - before, 1.0, p50_exact * 1e3,
                 float(np.percentile(t_exact, 99)) * 1e3, "1.0x"])
    results = {"exact": (1.0, p50_exact)}
    for label, factory, settings in variants:
        before = rss_mb()
        t0 = time.perf_counter()
        try:
            index = factory()
        except Exception as exc:  # noqa: BLE001 - a back end that cannot start is a table row, not a crash
            rows.append([label, "-", "-", "-", "-", "-", f"SKIP {type(exc).__name__}: {str(exc)[:60]}"])
            continue
        build = time.perf_counter() - t0
        memory = rss_mb() - before
        for setting_label, apply in settings:
            apply(index)
            latencies(index, q[:3])
            t, found = latencies(index, q)
            r = recall(found, truth)
            p50 = float(np.median(t))
            rows.append([f"{label} {setting_label}".strip(), build, memory, r, p50 * 1e3,
                         float(np.percentile(t, 99)) * 1e3, C.ratio(p50_exact, p50)])
            results[f"{label} {setting_label}".strip()] = (r, p50)
            build, memory = "", ""  # one build, several query settings
            # Scores are exact cosines whatever found them: a shared hit must score as exact search scores it.
            a, b = exact.query(q[0], k=K)[0], index.query(q[0], k=K)[0]
            exact_scores = {h.id: h.score for h in a}
            if any(h.id in exact_scores and h.score != exact_scores[h.id] for h in b):
                ok = False
                notes.append(f"FAIL {label} {setting_label}: a hit's score differs from exact search's")
        if kept is not None:
            kept[label] = index
            continue
        close = getattr(index, "close", None)
        if close is not None:
            close()
        del index
    headers = ["back end", "build s", "memory MiB", f"recall@{K}", "p50 ms", "p99 ms", "p50 speed-up vs exact"]
    C.print_table(title, headers, rows, notes)
    return results, ok


def filtered_table(es, q: np.ndarray, hnsw, apply) -> None:
    """Queries with a filter (the engine's ``allowed`` mask) through exact search and faiss HNSW (ID selector;
    a filter leaving <= exact_below rows is scanned exactly)."""
    from mildnet.search.searcher import Searcher

    if hnsw is None:
        return
    apply(hnsw)
    exact = Searcher(es)
    rng = np.random.default_rng(3)
    rows = []
    for share in (0.5, 0.1, 0.01):
        allowed = rng.random(len(es)) < share

        def run(index, mask=allowed, queries=q):
            times, found = np.empty(len(queries)), []
            for i, v in enumerate(queries):
                t0 = time.perf_counter()
                found.append([h.id for h in index.query(v, k=K, allowed=mask)[0]])
                times[i] = time.perf_counter() - t0
            return times, found

        run(exact, queries=q[:3])  # warm-up
        t_exact, truth = run(exact)
        run(hnsw, queries=q[:3])
        t, found = run(hnsw)
        rows.append([f"{share:.0%} of rows allowed ({int(allowed.sum()):,})", np.median(t_exact) * 1e3,
                     recall(found, truth), np.median(t) * 1e3, float(np.percentile(t, 99)) * 1e3,
                     C.ratio(float(np.median(t_exact)), float(np.median(t)))])
    C.print_table(f"Table 3: filtered queries, top {K}, N={len(es):,} (random masks: a filter unrelated to the "
                  "vectors, HNSW's hard case)",
                  ["filter", "exact p50 ms", f"HNSW ef 64 recall@{K}", "p50 ms", "p99 ms", "speed-up vs exact"],
                  rows, [f"faiss: ID selector bitmap, ef widened by 1/share (at most 32x); <= {hnsw.exact_below:,} "
                         "allowed rows: exact scan of those rows"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="catalogue rows of table 1")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--queries", type=int, default=200, help="single queries timed per row")
    p.add_argument("--milvus-n", type=int, default=100_000, help="rows of table 2 (exact, faiss, milvus-lite)")
    p.add_argument("--milvus-queries", type=int, default=50)
    p.add_argument("--nlist", type=int, default=None, help="IVF-PQ cells (default 1024 at >= 200k rows)")
    p.add_argument("--seeds", default=None, help="local store folder of real embeddings to generate around")
    p.add_argument("--quick", action="store_true", help="20k rows, milvus-lite at 5k, 50 queries")
    p.add_argument("--no-milvus", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.milvus_n, args.milvus_queries = 20_000, 50, 5_000, 20

    import faiss

    from mildnet.search.faiss_index import FaissIndex
    from mildnet.store import EmbeddingSet

    print(C.machine_line(), f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    t0 = time.perf_counter()
    if args.seeds:
        seeds = real_seed_vectors(args.seeds)
        args.d = seeds.shape[1]
        x, q = neighbours_of_real(seeds, args.n, args.queries + 50, seed=0)
        source = f"generated around {len(seeds):,} real embeddings ({args.seeds})"
    else:
        x, q = catalogue_vectors(args.n, args.d, args.queries + 50, seed=0)
        source = "generated clustered unit vectors (categories > products > photos)"
    ids = [f"p{i:07d}.jpg" for i in range(args.n)]
    es = EmbeddingSet(ids, ids, x, {"dataset": "bench", "model_fingerprint": f"bench{args.n}"})
    q, batch = q[:args.queries], q[args.queries:]
    print(f"{args.n:,} x {args.d} {source} in {time.perf_counter() - t0:.1f} s ({x.nbytes / 2**20:,.0f} MiB "
          "float32)\n")
    ok = True

    def set_ef(ef):
        def apply(index):
            index.ef_search = ef
        return apply

    def set_nprobe(nprobe):
        def apply(index):
            index.nprobe = nprobe
        return apply

    nlist = args.nlist or (1024 if args.n >= 200_000 else None)
    variants = [
        ("faiss HNSW M32 efC80", lambda: FaissIndex(es, "hnsw", M=32, ef_construction=80, cache=False),
         [(f"ef {ef}", set_ef(ef)) for ef in (32, 64, 128, 256, 512)]),
        ("faiss IVF-PQ", lambda: FaissIndex(es, "ivfpq", nlist=nlist, cache=False),
         [(f"nprobe {npr}", set_nprobe(npr)) for npr in (16, 64)]),
    ]
    notes = [f"{len(q)} single queries (generated as the catalogue is, not catalogue rows), top {K}; recall "
             f"against exact search's top {K}; every back end re-scores its candidates exactly (true cosines)",
             "memory: resident memory added by the build (the stored set itself, held by every back end for the "
             "re-scoring, not counted); IVF-PQ codes 32 B a row + ids",
             "IVF-PQ: nlist " + (str(nlist) if nlist else "~4 sqrt(N)") + ", 32 sub-quantisers x 8 bits, 32 x k "
             "candidates re-scored exactly"]
    kept: dict = {}
    results, good = run_table(f"Table 1: one query, top {K}, N={args.n:,} x D={args.d} (float32)", es, q, variants,
                              notes, kept)
    ok &= good
    best = [(label, r, p50) for label, (r, p50) in results.items() if label.startswith("faiss HNSW") and r >= 0.95]
    p50_exact = results["exact"][1]
    if best:
        label, r, p50 = min(best, key=lambda item: item[2])
        verdict = "met" if p50_exact / p50 >= 10 else "NOT met"
        print(f"target (faiss HNSW >= 0.95 recall@{K} at >= 10x exact per query): {verdict}: {label}, recall "
              f"{r:.3f}, {p50 * 1e3:.2f} ms vs exact {p50_exact * 1e3:.2f} ms = {p50_exact / p50:.1f}x\n")
    else:
        print(f"target (faiss HNSW >= 0.95 recall@{K}): NOT met at any ef measured\n")

    filtered_table(es, q, kept.get("faiss HNSW M32 efC80"), set_ef(64))
    kept.clear()

    if not args.no_milvus:
        from mildnet.search.milvus_index import MilvusIndex

        m = min(args.milvus_n, args.n)
        small = es.subset(ids[:m]) if m < args.n else es
        small.meta["model_fingerprint"] = f"bench{m}"
        qm = q[:args.milvus_queries]
        with tempfile.TemporaryDirectory() as tmp:
            uri = str(Path(tmp) / "bench.db")
            variants = [
                ("faiss HNSW M32 efC80", lambda: FaissIndex(small, "hnsw", M=32, ef_construction=80, cache=False),
                 [("ef 64", set_ef(64))]),
                ("milvus-lite HNSW M32 efC80", lambda: MilvusIndex(small, uri, M=32, ef_construction=80),
                 [("ef 64", set_ef(64))]),
            ]
            notes = [f"{len(qm)} single queries; milvus-lite build = collection + insert + flush + index + load",
                     "milvus-lite is pure Python over faiss segments: it runs the Milvus client code (tests, demos), "
                     "it is not an embedded engine; a Milvus server's speed is its own (published benchmarks)"]
            _, good = run_table(f"Table 2: one query, top {K}, N={m:,} x D={args.d}: exact, faiss, milvus-lite",
                                small, qm, variants, notes)
            ok &= good
            # Batches are where a client/server index earns its round trip: per-query time in a batch of 50.
            index = MilvusIndex(small, uri, M=32, ef_construction=80)
            index.query(batch[:5], k=K)
            t0 = time.perf_counter()
            index.query(batch, k=K)
            per = (time.perf_counter() - t0) / len(batch)
            index.close()
            print(f"milvus-lite, one call of 50 queries: {per * 1e3:.1f} ms a query "
                  f"(reopening the filled collection: inserted={index.inserted})\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
