"""The data home: where the app and the CLI keep what they make, the same place for both.

``$MILDNET_HOME``, else ``.mildnet`` in the working directory (never inside the installed package):

- ``embeddings/``: the embedding store, unless ``$MILDNET_STORE`` (a folder or a Redis URL) or
  ``$MILDNET_REDIS_URL`` names another, so `embed`/`search` find what the app embedded and the reverse;
- ``runs/``: training runs started from the app (``$MILDNET_RUNS`` overrides);
- ``thumbnails/``: the app's grid thumbnails;
- ``shop.json``: what the owner published (:mod:`mildnet.shop`);
- ``milvus.db``: the embedded Milvus index (milvus-lite) when ``$MILDNET_INDEX`` chooses it; ``faiss/``: built
  faiss indexes, named by the set's and settings' fingerprint, so the next process reads them instead of rebuilding.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MILDNET_HOME"
STORE_ENV = "MILDNET_STORE"
REDIS_ENV = "MILDNET_REDIS_URL"
INDEX_ENV = "MILDNET_INDEX"


def data_home() -> Path:
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else Path.cwd() / ".mildnet"


def store_spec() -> str:
    """The embedding store everyone opens by default: ``$MILDNET_STORE``, else ``$MILDNET_REDIS_URL``, else the
    data home's ``embeddings/`` folder."""
    for name in (STORE_ENV, REDIS_ENV):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return str(data_home() / "embeddings")


def index_spec() -> str:
    """The index back end everyone uses by default: ``$MILDNET_INDEX`` (``exact``, ``faiss``, ``milvus`` or
    ``milvus://host:port``; see :mod:`mildnet.search.index`), else exact search."""
    return os.environ.get(INDEX_ENV, "").strip() or "exact"
