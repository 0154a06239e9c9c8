"""Embedding sets and the stores that cache them (a local folder or a shared Redis).

An :class:`EmbeddingSet` is the catalog's embedding matrix plus the ids/paths its rows belong to and the
metadata that says which model and catalog produced it. A :class:`Store` keeps sets under namespace keys
(the embedding module uses ``f"{dataset}/{model_fingerprint}"``).

Both stores publish a set atomically: a writer first writes a complete new *version*, then switches a small
pointer (a file replaced with ``os.replace`` / a Redis key set inside MULTI/EXEC) and only then deletes the
previous version. A crash mid-write therefore leaves the old set readable, and a reader sees either the old
set or the new one, never a mix. Data is written as ``.npy`` (``allow_pickle=False``), JSON and raw float32
(or float16, with a store's ``dtype="float16"``) bytes; nothing is ever pickled.

Modules: ``embedding_set`` (the set), ``base`` (the :class:`Store` interface and the checks every store
shares), ``local`` (:class:`LocalStore`), ``redis_store`` (:class:`RedisStore`; not ``redis``, which would
read like the client library it imports), ``urls`` (Redis URL checks, password redaction) and ``opener``
(:func:`open_store`).
"""

from mildnet.store.base import Store
from mildnet.store.embedding_set import DTYPES, EmbeddingSet, utc_now_iso
from mildnet.store.local import LocalStore
from mildnet.store.opener import DEFAULT_LOCAL_PATH, open_store
from mildnet.store.redis_store import RedisStore
from mildnet.store.urls import REDIS_URL_ENV, StoreURLError, check_redis_url

__all__ = [
    "EmbeddingSet",
    "Store",
    "LocalStore",
    "RedisStore",
    "open_store",
    "DEFAULT_LOCAL_PATH",
    "DTYPES",
    "REDIS_URL_ENV",
    "StoreURLError",
    "check_redis_url",
    "utc_now_iso",
]
