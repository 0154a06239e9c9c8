"""Embedding-set stores: ``LocalStore`` and ``RedisStore`` put/get of an N x D set vs ``np.save``/``np.load`` of the
raw matrix (the floor: same bytes, no ids, no atomic publish, no fsync).

RedisStore talks to a real, throw-away ``redis-server`` on a free loopback port (``tests.redis_server.RedisServer``);
its row is skipped with a message if the binary is missing.

    python bench/bench_store.py             # 100k x 256 (~98 MB of float32), best of 3
    python bench/bench_store.py --quick     # 20k x 256
    python bench/bench_store.py --n 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    p.add_argument("--quick", action="store_true", help="N=20000")
    p.add_argument("--no-redis", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 20_000

    import numpy as np

    from mildnet.store import EmbeddingSet, LocalStore, RedisStore

    rng = np.random.default_rng(0)
    vec = rng.standard_normal((args.n, args.d)).astype(np.float32)
    ids = [f"images/class{i % 50:02d}/{i:07d}.jpg" for i in range(args.n)]
    emb = EmbeddingSet(ids, ids, vec, {"model_fingerprint": "bench", "catalog_fingerprint": "bench"})
    mb = vec.nbytes / 2**20
    print(C.machine_line())
    print(f"set: N={args.n:,} x D={args.d} float32 = {mb:.1f} MB of vectors (+ {args.n:,} ids/paths)\n", flush=True)

    rows = []

    def add(name, seconds, base, check=None):
        rows.append([name, seconds, mb / seconds, C.ratio(base, seconds) if base else "1.0x"])

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw.npy"
        t_save, _ = C.best_of(lambda: np.save(raw, vec, allow_pickle=False), args.repeat)
        t_load, loaded = C.best_of(lambda: np.load(raw, allow_pickle=False), args.repeat)
        assert np.array_equal(loaded, vec)

        def save_fsync():
            with open(tmp / "raw_sync.npy", "wb") as fh:
                np.save(fh, vec, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        t_save_sync, _ = C.best_of(save_fsync, args.repeat)

        rows.append(["baseline: np.save raw matrix", t_save, mb / t_save, "1.0x"])
        rows.append(["baseline: np.save + fsync", t_save_sync, mb / t_save_sync, C.ratio(t_save, t_save_sync)])
        rows.append(["baseline: np.load raw matrix", t_load, mb / t_load, "1.0x"])

        results = {}
        for label, store in [("LocalStore (fsync=True, default)", LocalStore(tmp / "store")),
                             ("LocalStore (fsync=False)", LocalStore(tmp / "store_nosync", fsync=False))]:
            t_put, _ = C.best_of(lambda store=store: store.put("bench/set", emb), args.repeat)
            t_get, got = C.best_of(lambda store=store: store.get("bench/set"), args.repeat)
            results[label] = got.equals(emb)
            rows.append([f"{label} put", t_put, mb / t_put, C.ratio(t_save, t_put)])
            rows.append([f"{label} get", t_get, mb / t_get, C.ratio(t_load, t_get)])

        redis_note = "RedisStore: skipped (--no-redis)"
        if not args.no_redis:
            try:
                from tests.redis_server import RedisServer, redis_server_binary
            except ImportError as exc:  # pytest missing, say
                RedisServer, redis_server_binary = None, lambda: None
                redis_note = f"RedisStore: skipped ({exc})"
            if redis_server_binary() is None:
                redis_note = "RedisStore: skipped (redis-server not installed: apt-get install redis-server)"
            else:
                with RedisServer() as server:
                    store = RedisStore(server.url)
                    t_put, _ = C.best_of(lambda: store.put("bench/set", emb), args.repeat)
                    t_get, got = C.best_of(lambda: store.get("bench/set"), args.repeat)
                    results["RedisStore"] = got.equals(emb)
                    rows.append(["RedisStore put (local redis-server)", t_put, mb / t_put, C.ratio(t_save, t_put)])
                    rows.append(["RedisStore get (local redis-server)", t_get, mb / t_get, C.ratio(t_load, t_get)])
                    store.close()
                redis_note = f"RedisStore: real redis-server on 127.0.0.1:{server.port or 'free port'}, chunk_rows=4096"

    C.print_table(
        f"Embedding store put/get, N={args.n:,} x D={args.d}",
        ["method", "seconds", "MB/s (vectors)", "ratio vs np.save/np.load"], rows,
        notes=["ratio > 1x = faster than the raw baseline; puts compare with np.save, gets with np.load",
               "stores also write/read ids+paths JSON and meta, validate rows (finite, unique ids) and publish "
               "atomically; MB/s counts vector bytes only",
               f"round trip equal: {results}", redis_note, f"best of {args.repeat}"],
    )
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
