"""Where the app keeps things, overridable by environment variables (tests and deployments point them at
their own folders so nothing touches the project's ``data/``, ``runs/`` or embedding cache).

- ``MILDNET_MANIFEST``: the dataset registry (read by :mod:`mildnet.data.manifest` itself).
- ``MILDNET_HOME``: the data home (:mod:`mildnet.home`), ``.mildnet/`` in the working directory by default.
- ``MILDNET_RUNS``: training runs (default ``runs/`` in the data home).
- ``MILDNET_STORE``: the embedding cache, a folder or a ``redis://`` URL (default ``embeddings/`` in the data
  home; ``MILDNET_REDIS_URL`` is honoured when this is unset).
- ``MILDNET_INDEX``: the index back end searches use (``exact`` by default; ``faiss``, ``milvus`` for an embedded
  milvus-lite file in the data home, or ``milvus://host:port``; see :mod:`mildnet.search.index`).
- ``MILDNET_PRETRAINED``: the folder of committed default runs, one per dataset (default ``mildnet/pretrained``).
- ``MILDNET_DATASET``: the dataset selected when a session starts (default: ``sample`` if listed, else the first).
- ``MILDNET_ADD_ROOTS``: folders (separated by ``os.pathsep``) under which "Add a catalogue" may read a folder or
  a labels CSV of the server's disk. Unset: any path while the app listens on this machine only, none once it
  is served to others (``server.address`` not a loopback address), where only zip uploads remain.
- ``MILDNET_THUMBNAILS``: the thumbnail cache of the image grids (default ``thumbnails/`` beside a local
  ``MILDNET_STORE``, else ``thumbnails/`` in the data home).

No streamlit here: the functions are plain and read the environment on every call, so a test that sets a
variable needs no reset.
"""

from __future__ import annotations

import os
from pathlib import Path

from mildnet.home import data_home
from mildnet.home import index_spec as home_index_spec
from mildnet.home import store_spec as home_store_spec
from mildnet.pretrained import pretrained_root

DEFAULT_DATASET = "sample"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def runs_dir() -> Path:
    return _env_path("MILDNET_RUNS") or data_home() / "runs"


def pretrained_dir() -> Path:
    return pretrained_root()


def store_spec() -> str:
    """The embedding store the app opens, the CLI's default too (:func:`mildnet.home.store_spec`)."""
    return home_store_spec()


def index_spec() -> str:
    """The index back end (:func:`mildnet.home.index_spec`), the CLI's default too."""
    return home_index_spec()


def thumbnails_dir() -> Path:
    own = _env_path("MILDNET_THUMBNAILS")
    if own:
        return own
    store = os.environ.get("MILDNET_STORE", "").strip()
    if store and "://" not in store:
        # A deployment (or a test) that moved the store keeps its thumbnails beside it, not in the project.
        return Path(store).expanduser().parent / "thumbnails"
    return data_home() / "thumbnails"


def initial_dataset(names: list[str]) -> str | None:
    wanted = os.environ.get("MILDNET_DATASET", "").strip() or DEFAULT_DATASET
    if wanted in names:
        return wanted
    return names[0] if names else None


def add_roots() -> list[Path] | None:
    """``MILDNET_ADD_ROOTS`` as resolved folders, or None when unset."""
    value = os.environ.get("MILDNET_ADD_ROOTS", "").strip()
    if not value:
        return None
    return [Path(part).expanduser().resolve() for part in value.split(os.pathsep) if part.strip()]


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def served_locally(address: str | None) -> bool:
    """Whether a server bound to ``address`` (Streamlit's ``server.address``; empty: every interface) can only
    be reached from this machine."""
    return (address or "").strip() in LOOPBACK

