"""The HTTP API under load: a real ``python -m mildnet serve`` process driven by an asyncio client (aiohttp) at 1,
8 and 32 concurrent clients, against the same engine called in this process from as many threads (the floor).

Queries: photo uploads (``POST /v1/search``, real photos, the shipped real-photo model) and product ids
(``GET /v1/products/{id}/similar``), k=5, on catalogues of 10,000 and 100,000 photos (2,500 and 25,000 products
of 4 photos). The catalogues are synthetic vectors with a realistic spread, stored as the engine's own set (key,
fingerprints, meta) so the server opens them ready without embedding: each product is a noisy copy of a real
photo's embedding (clothing-small, else the sample), its photos noisy copies of that (cosine ~0.9 to the product,
~0.8 to the photo it came from), with the real photo's garment type as the category. The catalogue calibration is
fitted on the vectors once and kept beside the set, as ``embed`` would. Each figure is the median latency (p50),
the 99th percentile (p99) and queries/s over the whole run; the ratio columns divide the API's p50 and throughput
by the floor's in the same run. The client runs on the same cores as the server, so its own CPU is in the API
figures: aiohttp, because httpx spent 1-3 CPU-ms a request (4-15x more; at 32 connections it, not the server,
set the pace on 2 cores).

    python bench/bench_api.py            # 10k and 100k, 400 photo / 1,000 id queries per cell (~5 min on 2 cores)
    python bench/bench_api.py --quick    # 10k only, 100 / 200 queries per cell (~1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import _common as C  # noqa: E402

CONCURRENCY = (1, 8, 32)
SIZES = (10_000, 100_000)
K = 5
PHOTOS_PER_PRODUCT = 4
COLOURS = ("black", "white", "grey", "navy", "blue", "red", "green", "beige", "pink", "yellow")


def query_photos(n: int) -> list[Path]:
    """Real photos: clothing-small's test split when ../shared has it, else the sample's wild photos."""
    real = C.SHARED_DATA / "clothing-dataset-small" / "test"
    if real.is_dir():
        photos = sorted(p for p in real.rglob("*.jpg"))
    else:
        from mildnet.data.sample import generate_sample, is_sample_complete

        sample = C.REPO / "data" / "sample"
        if not is_sample_complete(sample):
            generate_sample(sample)
        photos = sorted((sample / "images").rglob("wild-*.jpg"))
    random.Random(0).shuffle(photos)
    return photos[:n]


def write_catalogue(root: Path, n: int, centres: np.ndarray, centre_types: list[str], model, store) -> str:
    """A catalogue folder (catalog.csv only: its photos are never read) and its stored set; returns its name."""
    import pandas as pd

    from mildnet import catalogue_calibration as cc
    from mildnet import embeddings as emb
    from mildnet.search.engine import Catalogue
    from mildnet.store import EmbeddingSet

    rng = np.random.default_rng(n)
    products = n // PHOTOS_PER_PRODUCT
    source = rng.integers(0, len(centres), products)
    d = centres.shape[1]
    product_vectors = centres[source] + 0.5 * rng.standard_normal((products, d)).astype(np.float32) / np.sqrt(d)
    product_vectors /= np.linalg.norm(product_vectors, axis=1, keepdims=True)
    vectors = np.repeat(product_vectors, PHOTOS_PER_PRODUCT, axis=0)
    vectors += 0.45 * rng.standard_normal(vectors.shape).astype(np.float32) / np.sqrt(d)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    types = [centre_types[s] for s in source]
    colours = rng.choice(COLOURS, products)
    rows = [{"image": f"items/{types[p]}/p{p:06d}-{v}.jpg", "product_id": f"p{p:06d}", "category": types[p],
             "colour": colours[p], "split": "train"} for p in range(products) for v in range(PHOTOS_PER_PRODUCT)]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "catalog.csv", index=False)

    catalogue = Catalogue.folder(root)
    order = {i: r for r, i in enumerate(row["image"] for row in rows)}
    ids = list(catalogue.ids)  # sorted, as update_catalog stores them
    vectors = vectors[[order[i] for i in ids]]
    ids_now, signatures = emb.catalog_state(root, ids)
    meta = {"model_fingerprint": model.fingerprint, "catalog_fingerprint": emb.catalog_fingerprint(root, ids),
            "dim": d, "image_size": model.image_size, "model_name": model.name, "dataset": catalogue.name,
            "image_root": str(root.resolve()), "created": "bench", "embedding_version": emb.EMBEDDING_VERSION,
            "signatures": signatures, "skipped": [], "include": [], "source": model.label}
    key = emb.cache_key(catalogue.name, model.fingerprint)
    stored = EmbeddingSet(ids_now, ids_now, vectors, meta)
    store.put(key, stored)
    # Vector-only calibration (no photos to augment), kept beside the set as `embed` keeps it.
    own, note = cc.refresh(store, key, store.get(key), None, root, catalogue.table, model.image_size)
    if own is None:
        raise SystemExit(f"the synthetic catalogue could not be calibrated: {note}")
    return catalogue.name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, store_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(C.REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mildnet", "serve", "--images", str(folder), "--store", str(store_dir),
         "--port", str(port), "--no-embed", "--log-level", "warning"],
        cwd=C.REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server stopped:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5):
                return process, url
        except OSError:  # not listening yet (URLError), or 503 until ready (HTTPError)
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"the server was not ready after 180 s:\n{log.read_text()}")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default), from /proc."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "qps": len(ms) / wall,
            "n": len(ms)}


async def drive_api(url: str, queries: list, concurrency: int) -> dict:
    """``concurrency`` clients on as many keep-alive connections, each sending its next query as soon as the
    previous answer arrived."""
    import aiohttp

    pending = iter(queries)
    latencies: list[float] = []

    async def client(http: aiohttp.ClientSession) -> None:
        for kind, value in pending:
            t0 = time.perf_counter()
            if kind == "photo":
                form = aiohttp.FormData()
                form.add_field("image", value[1], filename=value[0], content_type="image/jpeg")
                request = http.post("/v1/search", params={"k": K}, data=form)
            else:
                request = http.get(f"/v1/products/{value}/similar", params={"k": K})
            async with request as response:
                body = await response.read()
            latencies.append(time.perf_counter() - t0)
            if response.status != 200:
                raise SystemExit(f"{kind} query failed: {response.status} {body[:300]!r}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return stats(latencies, wall)


def drive_engine(engine, queries: list, concurrency: int) -> dict:
    """The floor: the same queries on the engine in this process, from ``concurrency`` threads."""
    def one(query) -> float:
        kind, value = query
        t0 = time.perf_counter()
        if kind == "photo":
            engine.query_image(value[1], k=K, name=value[0])
        else:
            engine.query_id(value, k=K)
        return time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        latencies = list(pool.map(one, queries))
        wall = time.perf_counter() - t0
    return stats(latencies, wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the 10k catalogue only, fewer queries (~1 minute)")
    p.add_argument("--photo-queries", type=int, default=None, help="photo queries per cell (default 400; quick 100)")
    p.add_argument("--id-queries", type=int, default=None, help="id queries per cell (default 1000; quick 200)")
    p.add_argument("--sizes", default=None, help="catalogue sizes in photos (default 10000,100000; quick 10000)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    n_photo = args.photo_queries or (100 if args.quick else 400)
    n_id = args.id_queries or (200 if args.quick else 1000)
    n_blas = min(n_id, 60 if args.quick else 200)  # the default BLAS setting can be slow: fewer queries
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES[:1] if args.quick else SIZES)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mildnet import embeddings as emb
    from mildnet.pretrained import default_run_dir
    from mildnet.search.engine import Catalogue, LoadedModel, SearchEngine
    from mildnet.store import LocalStore

    print(C.machine_line())
    model = LoadedModel.from_run(default_run_dir())
    photos = query_photos(64)
    uploads = [(p.name, p.read_bytes()) for p in photos]
    centre_photos = query_photos(400)
    centres = emb.embed_images(model.model, centre_photos, image_size=model.image_size)
    centre_types = [p.parent.name if p.parent.name != "p" else "garment" for p in centre_photos]
    print(f"model: {model.name} {model.image_size} px, dim {centres.shape[1]}; {len(uploads)} query photos "
          f"({photos[0].parent.parent}); {n_photo} photo and {n_id} id queries per cell, k={K}", flush=True)

    from threadpoolctl import threadpool_info, threadpool_limits

    blas_default = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    rows, figures, blas_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        for n in sizes:
            folder = Path(tmp) / f"shop-{n}"
            with C.Timer() as t_build:
                write_catalogue(folder, n, centres, centre_types, model, store)
            engine = SearchEngine.open(model, Catalogue.folder(folder), store)
            assert engine.ready and engine.catalogue_calibration[0] is not None
            rng = random.Random(n)
            ids = list(engine.embeddings.ids)
            workloads = {"photo": [("photo", uploads[i % len(uploads)]) for i in range(n_photo)],
                         "id": [("id", rng.choice(ids)) for _ in range(n_id)]}
            if n == sizes[0]:
                # Why `serve` gives each query one BLAS thread: the engine alone, the two settings side by side.
                few = workloads["id"][:n_blas]
                for threads in (blas_default, 1):
                    with threadpool_limits(limits=threads, user_api="blas"):
                        drive_engine(engine, few[:16], 4)
                        for concurrency in CONCURRENCY:
                            r = drive_engine(engine, few, concurrency)
                            blas_rows.append([f"{n // 1000}k id, {threads} BLAS thread(s)", concurrency, r["p50"],
                                              r["p99"], r["qps"]])
                            figures.append({"catalogue": n, "query": "id", "clients": concurrency,
                                            f"in_process_blas_{threads}": r})
            # The server's setting (`serve --blas-threads 1`) for the floor too, so both sides compute alike.
            threadpool_limits(limits=1, user_api="blas")
            process, url = start_server(folder, store.root, Path(tmp) / f"server-{n}.log")
            print(f"{n:,} photos: catalogue written in {t_build.seconds:.1f} s; server {url}", flush=True)
            try:
                for kind, queries in workloads.items():
                    warm = queries[:16]
                    drive_engine(engine, warm, 4)
                    asyncio.run(drive_api(url, warm, 4))
                    for concurrency in CONCURRENCY:
                        floor = drive_engine(engine, queries, concurrency)
                        server_cpu, client_cpu = cpu_seconds(process.pid), cpu_seconds()
                        api = asyncio.run(drive_api(url, queries, concurrency))
                        api["server_cpu_ms"] = (cpu_seconds(process.pid) - server_cpu) * 1000 / len(queries)
                        api["client_cpu_ms"] = (cpu_seconds() - client_cpu) * 1000 / len(queries)
                        figures.append({"catalogue": n, "query": kind, "clients": concurrency, "api": api,
                                        "in_process": floor})
                        rows.append([f"{n // 1000}k {kind}", concurrency, floor["p50"], floor["p99"], floor["qps"],
                                     api["p50"], api["p99"], api["qps"], f"{api['p50'] / floor['p50']:.2f}x",
                                     f"{api['qps'] / floor['qps']:.2f}", api["server_cpu_ms"],
                                     api["client_cpu_ms"]])
                        print(f"  {kind} x{concurrency}: API p50 {api['p50']:.1f} ms, {api['qps']:.0f} q/s; "
                              f"in-process p50 {floor['p50']:.1f} ms, {floor['qps']:.0f} q/s", flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)
    print()
    C.print_table(
        "The engine in-process, id queries, by BLAS threads a query (latency in ms)",
        ["catalogue, query", "clients", "p50", "p99", "q/s"], blas_rows,
        notes=[f"{blas_default} BLAS thread(s): numpy's default here (OpenBLAS); 1: what `serve` sets "
               "(--blas-threads)"])
    C.print_table(
        "HTTP API vs the engine in-process (k=5; latency in ms)",
        ["catalogue, query", "clients", "engine p50", "engine p99", "engine q/s", "API p50", "API p99", "API q/s",
         "p50 ratio", "q/s ratio", "server CPU/q", "client CPU/q"],
        rows,
        notes=["engine: SearchEngine.query_image / query_id called from that many threads in this process (the "
               "floor; one BLAS thread a query, as the server); API: a real `python -m mildnet serve` process "
               "(uvicorn, one worker, access log off) and an aiohttp asyncio client with that many connections, on "
               "the same cores",
               "photo: a real photo uploaded (multipart) and embedded with the shipped model; id: a catalogue "
               "product's stored vector",
               "server / client CPU/q: CPU ms the server process / this process (the client) spent per API query"])
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": C.machine_line(), "figures": figures}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
