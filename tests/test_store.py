"""Embedding sets, the local store and the Redis store (against a real redis-server)."""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pytest

from mildnet.errors import DataError, StoreError
from mildnet.store import EmbeddingSet, LocalStore, RedisStore, open_store
from tests.redis_server import free_port

redis = pytest.importorskip("redis")


def make_set(n=50, dim=8, seed=0, prefix="img", model="m1", catalog="c1") -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((n, dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    ids = [f"{prefix}/{i:04d}.jpg" for i in range(n)]
    return EmbeddingSet(ids, [f"/data/{i}" for i in ids], vec,
                        {"model_fingerprint": model, "catalog_fingerprint": catalog, "note": "x"})


# ---------------------------------------------------------------------------------------------- EmbeddingSet


def test_embedding_set_fills_meta_and_validates():
    s = make_set(5, 3)
    assert s.meta["dim"] == 3 and s.meta["created"] and s.meta["note"] == "x"
    assert len(s) == 5 and s.dim == 3 and "img/0001.jpg" in s
    with pytest.raises(DataError, match="rows disagree"):
        EmbeddingSet(["a", "b"], ["a"], np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="unique.*'a'"):
        EmbeddingSet(["a", "a"], ["a", "b"], np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="2-D"):
        EmbeddingSet(["a"], ["a"], np.zeros(3, np.float32))
    with pytest.raises(DataError, match="float32"):
        EmbeddingSet(["a"], ["a"], np.zeros((1, 3), np.int64))
    with pytest.raises(DataError, match="NaN"):
        EmbeddingSet(["a"], ["a"], np.array([[np.nan, 1.0]], np.float32))
    with pytest.raises(DataError, match="dim=4"):
        EmbeddingSet(["a"], ["a"], np.zeros((1, 3), np.float32), {"dim": 4})
    with pytest.raises(DataError, match="JSON"):
        EmbeddingSet(["a"], ["a"], np.zeros((1, 3), np.float32), {"bad": object()})
    # float64 is accepted and stored as float32 (the stores write float32 only)
    assert EmbeddingSet(["a"], ["a"], np.ones((1, 2))).vectors.dtype == np.float32


def test_subset_without_with_added():
    s = make_set(10, 4)
    sub = s.subset(["img/0003.jpg", "img/0001.jpg"])
    assert sub.ids == ["img/0003.jpg", "img/0001.jpg"]
    assert np.array_equal(sub.vectors, s.vectors[[3, 1]]) and sub.paths == [s.paths[3], s.paths[1]]
    with pytest.raises(DataError, match="not in the embedding set"):
        s.subset(["nope"])

    rest = s.without(["img/0000.jpg", "img/0005.jpg"])
    assert len(rest) == 8 and "img/0005.jpg" not in rest
    assert np.array_equal(rest.vectors, np.delete(s.vectors, [0, 5], axis=0))
    with pytest.raises(DataError, match="not in the set"):
        s.without(["nope"])
    assert len(s.without(["nope"], missing="ignore")) == 10

    new = make_set(3, 4, seed=9, prefix="new")
    changed = EmbeddingSet(["img/0002.jpg"], ["/moved"], np.full((1, 4), 0.5, np.float32),
                           {"model_fingerprint": "m1"})
    grown = rest.with_added(new).with_added(changed, meta={"catalog_fingerprint": "c2"})
    assert grown.ids == rest.ids + new.ids  # replaced row stays in place, new rows appended
    row = grown.ids.index("img/0002.jpg")
    assert np.array_equal(grown.vectors[row], changed.vectors[0]) and grown.paths[row] == "/moved"
    assert np.array_equal(grown.vectors[-3:], new.vectors)
    assert grown.meta["catalog_fingerprint"] == "c2"
    assert np.array_equal(rest.vectors, np.delete(s.vectors, [0, 5], axis=0))  # inputs untouched
    with pytest.raises(DataError, match="already in the set"):
        rest.with_added(changed, on_duplicate="error")
    with pytest.raises(DataError, match="different models"):
        s.with_added(make_set(2, 4, model="other", prefix="o"))
    with pytest.raises(DataError, match="dimensions"):
        s.with_added(make_set(2, 5, prefix="o"))


def test_merge_shards():
    a, b, c = make_set(4, 3, 1, "a"), make_set(5, 3, 2, "b"), make_set(2, 3, 3, "c", catalog="c9")
    m = EmbeddingSet.merge([a, b, c])
    assert m.ids == a.ids + b.ids + c.ids
    assert np.array_equal(m.vectors, np.concatenate([a.vectors, b.vectors, c.vectors]))
    assert m.meta["shards"] == 3 and m.meta["catalog_fingerprint"] not in ("c1", "c9")
    assert EmbeddingSet.merge([a, b, c]).meta["catalog_fingerprint"] == m.meta["catalog_fingerprint"]

    overlap = EmbeddingSet([a.ids[1], "z"], ["p1", "pz"], np.ones((2, 3), np.float32), {"model_fingerprint": "m1"})
    with pytest.raises(DataError, match="share 1 id"):
        EmbeddingSet.merge([a, overlap])
    first = EmbeddingSet.merge([a, overlap], on_duplicate="first")
    last = EmbeddingSet.merge([a, overlap], on_duplicate="last")
    assert first.ids == last.ids == a.ids + ["z"]
    assert np.array_equal(first.vectors[1], a.vectors[1]) and np.array_equal(last.vectors[1], np.ones(3))
    with pytest.raises(DataError, match="at least one"):
        EmbeddingSet.merge([])


# ---------------------------------------------------------------------------------------------- LocalStore


def test_local_round_trip_keys_delete(tmp_path):
    store = LocalStore(tmp_path / "cache")
    assert store.get("ds/abc") is None and store.keys() == []
    s = make_set(300, 16)
    store.put("ds/abc", s)
    store.put("ds_abc", make_set(3, 2))  # sanitises like "ds/abc": must not collide
    got = store.get("ds/abc")
    assert got.equals(s) and got.vectors.dtype == np.float32
    assert store.get("ds_abc").dim == 2
    assert store.keys() == ["ds/abc", "ds_abc"]
    assert "ds/abc" in store and str(tmp_path) in store.describe()
    assert store.delete("ds/abc") is True and store.delete("ds/abc") is False
    assert store.get("ds/abc") is None and store.keys() == ["ds_abc"]
    with pytest.raises(StoreError, match="non-empty"):
        store.get("")


def test_local_overwrite_leaves_single_version(tmp_path):
    store = LocalStore(tmp_path)
    store.put("k", make_set(5, 3, seed=1))
    new = make_set(7, 3, seed=2)
    store.put("k", new)
    assert store.get("k").equals(new)
    (folder,) = [p for p in tmp_path.iterdir()]
    assert sorted(p.name for p in folder.iterdir() if p.name not in ("CURRENT", ".publish.lock")).__len__() == 1


@pytest.mark.parametrize("fail_at", ["replace", "save"])
def test_local_crash_mid_write_keeps_previous_version(tmp_path, monkeypatch, fail_at):
    store = LocalStore(tmp_path)
    old = make_set(20, 4, seed=1)
    store.put("k", old)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    if fail_at == "replace":
        real = os.replace

        def failing_replace(src, dst):
            if str(dst).endswith("CURRENT"):  # die exactly at the commit point
                raise OSError(28, "No space left on device")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", failing_replace)
    else:
        def failing_save(*args, **kwargs):
            raise OSError(5, "I/O error")

        monkeypatch.setattr(np, "save", failing_save)

    with pytest.raises(StoreError, match="cannot write"):
        store.put("k", make_set(30, 4, seed=2))
    monkeypatch.undo()
    assert store.get("k").equals(old)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no temp leftovers


def test_local_concurrent_writers_leave_one_version_and_a_killed_writers_files_go(tmp_path):
    # Issue 18 F20: two writers read the same previous version; the first one published was never removed
    # (305 orphaned folders, 170 MB after 1,143 puts) until a put an hour later; so were a killed writer's files.
    import subprocess
    import sys
    import threading

    store = LocalStore(tmp_path / "store", fsync=False)
    store.put("k", make_set(20, 8))
    folder = next((tmp_path / "store").iterdir())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed = folder / f".tmp-{gone.pid}-{'0' * 32}"
    killed.mkdir()
    (killed / "vectors.npy").write_bytes(b"half")

    def writer(seed: int) -> None:
        for i in range(40):
            store.put("k", make_set(20 + (seed + i) % 5, 8))

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    versions = sorted(p.name for p in folder.iterdir() if p.name.startswith(("v-", ".tmp-")))
    assert len(versions) == 1 and (folder / "CURRENT").read_text().strip() == versions[0], versions
    assert len(store.get("k")) in range(20, 25)


def test_local_corrupt_files_raise_store_error_with_path(tmp_path):
    store = LocalStore(tmp_path)
    store.put("k", make_set(6, 3))
    (folder,) = list(tmp_path.iterdir())
    version = folder / (folder / "CURRENT").read_text()

    vec = version / "vectors.npy"
    good = vec.read_bytes()
    vec.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(StoreError, match=str(vec).replace("\\", "\\\\")):
        store.get("k")
    vec.write_bytes(b"not numpy at all")
    with pytest.raises(StoreError, match="corrupt embedding matrix"):
        store.get("k")
    np.save(vec, np.array(["a"] * 6, dtype=object), allow_pickle=True)  # a pickle must never be loaded
    with pytest.raises(StoreError, match="corrupt embedding matrix"):
        store.get("k")
    vec.write_bytes(good)
    assert store.get("k") is not None

    (version / "meta.json").write_text("{oops")
    with pytest.raises(StoreError, match="meta.json"):
        store.get("k")
    (version / "meta.json").write_text(json.dumps({"format": 1, "key": "k", "n": 6, "meta": {}}))
    (version / "items.json").write_text(json.dumps({"ids": ["a"], "paths": ["a"]}))
    with pytest.raises(StoreError, match="items.json"):
        store.get("k")
    (folder / "CURRENT").write_text("../../etc")
    with pytest.raises(StoreError, match="CURRENT"):
        store.get("k")
    store.put("k", make_set(2, 3))  # a fresh write repairs the key
    assert len(store.get("k")) == 2


def test_local_incremental_update_flow(tmp_path):
    store = LocalStore(tmp_path)
    store.put("ds/m", make_set(10, 4))
    cached = store.get("ds/m")
    updated = cached.without(["img/0000.jpg"]).with_added(make_set(2, 4, seed=5, prefix="new"))
    store.put("ds/m", updated)
    assert store.get("ds/m").equals(updated) and len(updated) == 11


# ---------------------------------------------------------------------------------------------- RedisStore


def test_redis_round_trip_multi_chunk(redis_url):
    store = RedisStore(redis_url, chunk_rows=7, batch_bytes=100)  # several chunks and pipeline batches
    s = make_set(50, 5)
    assert store.get("ds/m1") is None
    store.put("ds/m1", s)
    got = store.get("ds/m1")
    assert got.equals(s)
    r = redis.Redis.from_url(redis_url)
    version = r.get(b"mildnet:emb:ds/m1:current").decode()
    assert len(r.keys(f"mildnet:emb:ds/m1:v:{version}:vec:*".encode())) == 8  # ceil(50 / 7)
    assert all(r.ttl(k) == -1 for k in r.keys(b"mildnet:emb:*"))  # published data never expires
    empty = EmbeddingSet([], [], np.zeros((0, 5), np.float32), {"model_fingerprint": "m"})
    store.put("empty", empty)
    assert store.get("empty").equals(empty)
    assert store.keys() == ["ds/m1", "empty"]


def test_redis_overwrite_is_atomic_and_removes_old_version(redis_url):
    store = RedisStore(redis_url, chunk_rows=4)
    r = redis.Redis.from_url(redis_url)
    store.put("k", make_set(20, 3, seed=1))
    old_version = r.get(b"mildnet:emb:k:current").decode()
    new = make_set(9, 3, seed=2)
    store.put("k", new)
    assert store.get("k").equals(new)
    assert r.keys(f"mildnet:emb:k:v:{old_version}:*".encode()) == []
    assert len(r.keys(b"mildnet:emb:k:v:*")) == 2 + 3  # meta, ids, ceil(9/4) chunks

    # A writer that fails before publishing leaves the old set readable and no partial version behind.
    real_pipeline = store._r.pipeline

    def dying_pipeline(transaction=True):
        if transaction:
            raise redis.exceptions.ConnectionError("connection reset by peer")
        return real_pipeline(transaction=transaction)

    store._r.pipeline = dying_pipeline
    with pytest.raises(StoreError, match="cannot write 'k' to Redis at redis://127.0.0.1"):
        store.put("k", make_set(30, 3, seed=3))
    store._r.pipeline = real_pipeline
    assert store.get("k").equals(new)
    # Its partial version is deleted at once while Redis is reachable (else its keys expire with their TTL).
    orphans = [k for k in r.keys(b"mildnet:emb:k:v:*") if r.ttl(k) > 0]
    assert orphans == []

    assert store.delete("k") is True and store.delete("k") is False
    assert store.get("k") is None and store.keys() == []
    assert [k for k in r.keys(b"mildnet:emb:*") if r.ttl(k) == -1] == []  # only expiring orphans left


def test_redis_overwrite_whose_reply_is_lost_still_removes_the_old_version(redis_url):
    """redis-py replays a MULTI/EXEC whose reply was lost with the connection; the replay's SET ... GET then
    returns the new version itself, and the old one used to stay in Redis for ever (persisted)."""
    import contextlib
    import socket
    import threading

    target = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    dropped = threading.Event()

    def relay(src, dst, to_server, state):
        try:
            while data := src.recv(1 << 16):
                if to_server and b"EXEC\r\n" in data:
                    state["exec_sent"] = True
                if not to_server and state.get("exec_sent") and not dropped.is_set():
                    dropped.set()  # the server ran the transaction; its reply never reaches the client
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown, not only close: the other relay thread is blocked in recv on these sockets, which keeps
            # them open after close(), and the client would wait out its 60-s socket timeout for a reply.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    listener = socket.create_server(("127.0.0.1", port := free_port()))

    def accept():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server, state = socket.create_connection(("127.0.0.1", target)), {}
            threading.Thread(target=relay, args=(client, server, True, state), daemon=True).start()
            threading.Thread(target=relay, args=(server, client, False, state), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        RedisStore(redis_url).put("k", make_set(10, 3, seed=1))
        new = make_set(10, 3, seed=2)
        RedisStore(f"redis://127.0.0.1:{port}/0").put("k", new)
        assert dropped.is_set()
    finally:
        listener.close()
    r = redis.Redis.from_url(redis_url)
    assert np.array_equal(RedisStore(redis_url).get("k").vectors, new.vectors)
    versions = {k.split(b":")[4] for k in r.keys(b"mildnet:emb:k:v:*")}
    assert versions == {r.get(b"mildnet:emb:k:current")}


def test_redis_replicas_share_data_and_prefixes_isolate(redis_url):
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    s = make_set(12, 4)
    a.put("shared", s)
    assert b.get("shared").equals(s)
    b.put("shared", make_set(3, 4, seed=7))
    assert len(a.get("shared")) == 3
    other = RedisStore(redis_url, prefix="otherapp:")
    assert other.get("shared") is None and other.keys() == []


def test_redis_corrupt_data_raises_store_error(redis_url):
    store = RedisStore(redis_url, chunk_rows=4)
    store.put("k", make_set(10, 3))
    r = redis.Redis.from_url(redis_url)
    version = r.get(b"mildnet:emb:k:current").decode()
    r.set(f"mildnet:emb:k:v:{version}:vec:1".encode(), b"xx")
    with pytest.raises(StoreError, match="corrupt embedding matrix"):
        store.get("k")
    r.delete(f"mildnet:emb:k:v:{version}:vec:1".encode())
    with pytest.raises(StoreError, match="incomplete"):
        store.get("k")
    r.set(f"mildnet:emb:k:v:{version}:meta".encode(), b"{")
    with pytest.raises(StoreError, match="corrupt embedding metadata"):
        store.get("k")


def test_redis_down_or_bad_url_gives_one_line_store_error(fresh_redis_server):
    url = fresh_redis_server.url
    store = RedisStore(url)
    store.put("k", make_set(3, 2))
    fresh_redis_server.stop()
    with pytest.raises(StoreError) as info:
        store.get("k")
    msg = str(info.value)
    assert url in msg and "\n" not in msg and info.value.__cause__ is None
    with pytest.raises(StoreError, match=f"cannot connect to Redis at {url}"):
        RedisStore(url)
    closed = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreError) as info:
        open_store(closed)
    assert "hunter2" not in str(info.value) and "user:***@127.0.0.1" in str(info.value)
    with pytest.raises(StoreError, match="bad Redis URL"):
        RedisStore("redis://127.0.0.1:notaport/0")
    with pytest.raises(StoreError, match="not a Redis URL"):
        RedisStore("http://example.com")


def test_redis_out_of_memory_is_one_short_line_and_keeps_what_was_stored(fresh_redis_server):
    # Issue 18 F16: the OOM error printed the failed pipeline command with its raw vector bytes.
    client = redis.Redis.from_url(fresh_redis_server.url)
    store = RedisStore(fresh_redis_server.url)
    store.put("kept", make_set(50, 16))
    client.config_set("maxmemory-policy", "volatile-lru")
    client.config_set("maxmemory", str(client.info("memory")["used_memory"] + (1 << 20)))
    big = EmbeddingSet(ids=[f"b{i}" for i in range(20_000)], paths=[f"b{i}.jpg" for i in range(20_000)],
                       vectors=np.random.default_rng(0).random((20_000, 64), dtype=np.float32), meta={})
    with pytest.raises(StoreError) as info:
        store.put("big", big)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400 and "Command #" not in message and "b'" not in message
    assert "Redis is out of memory" in message and "maxmemory" in message
    assert not client.keys(b"mildnet:emb:big:*")  # the partial version is deleted, not left to its TTL
    # Still over maxmemory (as when other keys fill it): reads must go on working. A MULTI of GETs was refused
    # there ("every later read fails inside MULTI"), which made this test fail now and then in CI.
    client.config_set("maxmemory", str(max(client.info("memory")["used_memory"] - (256 << 10), 1 << 20)))
    assert store.get("kept").ids == make_set(50, 16).ids and store.get("big") is None


def test_redis_wrong_password_is_store_error(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.config_set("requirepass", "s3cret")
    try:
        with pytest.raises(StoreError, match="cannot connect to Redis at redis://127.0.0.1"):
            RedisStore(redis_url)
        with pytest.raises(StoreError, match="cannot connect"):
            RedisStore(redis_url.replace("redis://", "redis://:wrong@"))
        ok = redis_url.replace("redis://", "redis://:s3cret@")
        RedisStore(ok).put("k", make_set(2, 2))
    finally:
        redis.Redis.from_url(redis_url.replace("redis://", "redis://:s3cret@")).config_set("requirepass", "")


# ---------------------------------------------------------------------------------------------- open_store


def test_open_store_dispatch(tmp_path, monkeypatch, redis_url):
    monkeypatch.delenv("MILDNET_REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    default = open_store(None)
    assert isinstance(default, LocalStore)
    assert default.root == tmp_path.joinpath(".mildnet/embeddings").relative_to(tmp_path)
    assert open_store(None, default_local=tmp_path / "x").root == tmp_path / "x"
    assert isinstance(open_store(str(tmp_path / "y")), LocalStore)
    assert isinstance(open_store(redis_url), RedisStore)
    monkeypatch.setenv("MILDNET_REDIS_URL", redis_url)
    assert isinstance(open_store(None), RedisStore)
    with pytest.raises(StoreError, match="unsupported store"):
        open_store("s3://bucket/x")


def test_open_store_fallback_only_when_asked(tmp_path):
    down = f"redis://127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with pytest.raises(StoreError, match=f"cannot connect to Redis at {down}"):
        open_store(down)
    assert time.monotonic() - start < 3.0  # a down cache must not stall the app in retries
    with pytest.warns(RuntimeWarning, match="falling back to the local store"):
        store = open_store(down, fallback_local=tmp_path / "fb")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "fb"
    store.put("k", make_set(2, 2))
    assert store.get("k") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(open_store(str(tmp_path / "plain")), LocalStore)


# ---------------------------------------------------------------------------------------------- concurrency


def _readers_never_see_a_mix(make_store):
    """A writer alternates two sets under one key while a reader (another store object, like another app
    replica) keeps reading: every read must be exactly one of the two sets."""
    import threading

    sets = [make_set(40, 6, seed=1, catalog="A"), make_set(25, 6, seed=2, catalog="B")]
    writer_store, reader_store = make_store(), make_store()
    writer_store.put("k", sets[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def write():
        try:
            i = 0
            while not stop.is_set():
                i += 1
                writer_store.put("k", sets[i % 2])
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    seen = set()
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            got = reader_store.get("k")
            assert got is not None
            assert got.equals(sets[0]) or got.equals(sets[1])
            seen.add(got.catalog_fingerprint)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert seen == {"A", "B"}  # the reader really raced the writer


def test_local_readers_never_see_a_mix(tmp_path):
    _readers_never_see_a_mix(lambda: LocalStore(tmp_path, fsync=False))


def test_redis_readers_never_see_a_mix(redis_url):
    _readers_never_see_a_mix(lambda: RedisStore(redis_url, chunk_rows=8))


# ---------------------------------------------------------------------------------------------- float16 option


def test_float16_set_halves_memory_and_refuses_overflow():
    s = make_set(40, 16)
    half = s.astype("float16")
    assert half.dtype == "float16" and half.vectors.dtype == np.float16
    assert half.vectors.nbytes * 2 == s.vectors.nbytes
    assert np.abs(half.vectors.astype(np.float32) - s.vectors).max() <= 2.0**-11  # unit rows: |x| <= 1
    assert half.astype("float16") is half and half.astype("float32").dtype == "float32"
    assert half.ids == s.ids and half.meta == s.meta
    with pytest.raises(DataError, match="do not fit float16"):
        EmbeddingSet(["a"], ["a"], np.array([[7e4, 0]], np.float32)).astype("float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        s.astype("int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        LocalStore("x", dtype="float64")


def test_local_store_float16_round_trip_and_half_the_bytes(tmp_path):
    s = make_set(300, 32)
    full, half = LocalStore(tmp_path / "f32"), LocalStore(tmp_path / "f16", dtype="float16")
    full.put("ds/m", s)
    half.put("ds/m", s)
    got = half.get("ds/m")
    assert got.dtype == "float16" and got.equals(s.astype("float16"))
    # A plain store reads back what it was given, float16 included.
    assert LocalStore(tmp_path / "f16").get("ds/m").dtype == "float16"
    assert full.get("ds/m").equals(s)
    size = {name: sum(p.stat().st_size for p in (tmp_path / name).rglob("vectors.npy")) for name in ("f32", "f16")}
    assert size["f16"] - 128 <= (size["f32"] - 128) / 2 + 1  # .npy header aside, half the bytes


def test_redis_store_float16_round_trip_and_half_the_bytes(redis_url):
    s = make_set(50, 6)
    store = RedisStore(redis_url, chunk_rows=7, dtype="float16", prefix="half:")
    store.put("ds/m", s)
    got = store.get("ds/m")
    assert got.dtype == "float16" and got.equals(s.astype("float16"))
    got.vectors[0, 0] = 0  # the set owns a writable array, not a view of the reply bytes
    r = redis.Redis.from_url(redis_url)
    version = r.get(b"half:ds/m:current").decode()
    stored = sum(r.strlen(k) for k in r.keys(f"half:ds/m:v:{version}:vec:*".encode()))
    assert stored == 50 * 6 * 2
    # A float32 set written by an older version (no dtype in the header) still reads as float32.
    plain = RedisStore(redis_url, prefix="plain:")
    plain.put("ds/m", s)
    key = r.get(b"plain:ds/m:current").decode()
    header = json.loads(r.get(f"plain:ds/m:v:{key}:meta".encode()))
    header.pop("dtype")
    r.set(f"plain:ds/m:v:{key}:meta".encode(), json.dumps(header).encode())
    assert plain.get("ds/m").equals(s)
    assert isinstance(open_store(redis_url, dtype="float16"), RedisStore)
    assert open_store(redis_url, dtype="float16").dtype == "float16"


def _documents_go_with_their_set(store):
    store.put("shop/abc", make_set())
    store.put_document("shop/abc", "catalogue-calibration", {"threshold": 0.5})
    assert store.get_document("shop/abc", "catalogue-calibration") == {"threshold": 0.5}
    assert store.delete("shop/abc")
    assert store.get_document("shop/abc", "catalogue-calibration") is None
    store.put("shop/abc", make_set(seed=1))  # a new set under the same key starts without the old one's documents
    assert store.get_document("shop/abc", "catalogue-calibration") is None


def test_local_documents_are_deleted_with_their_set(tmp_path):
    _documents_go_with_their_set(LocalStore(tmp_path))


def test_redis_documents_are_deleted_with_their_set(redis_url):
    """Review of issue 17: RedisStore.delete left a set's documents behind (a local store's folder takes them)."""
    _documents_go_with_their_set(RedisStore(redis_url, prefix="docs-test:"))
