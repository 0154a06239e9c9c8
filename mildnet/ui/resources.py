"""Everything the app computes once and reuses across reruns, sessions and pages (``st.cache_*``).

Keys are plain values that change when the underlying files change (a run's model mtime, a triplet
file's mtime, the catalog fingerprint), so a retrained run or a regenerated dataset is picked up without a
server restart, and a plain rerun never recomputes anything. Long jobs (embedding a catalog) are not run
inside a cached function: cached functions cannot drive a progress bar created outside them, so the cached
:func:`engine` never embeds; ``layout.build_embeddings`` updates it in the page with visible progress.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from mildnet import evaluation as core_evaluation  # `evaluation` is this module's cached evaluation of a run
from mildnet import shop
from mildnet.data.manifest import dataset_splits, manifest_path, user_manifest_path
from mildnet.pretrained import REAL_PHOTOS
from mildnet.runs import CALIBRATION_FILE, METRICS_FILE, model_path
from mildnet.search.engine import Catalogue, LoadedModel, SearchEngine
from mildnet.search.index import parse_index_spec
from mildnet.store import open_store
from mildnet.ui import catalogue, settings
from mildnet.ui import data as uidata
from mildnet.ui import runs as uiruns


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


# --- datasets ------------------------------------------------------------------------------------


def manifest_stamp() -> tuple:
    """Both registries: a catalogue added from the app or with `data add` only changes the user one."""
    path, user = manifest_path(), user_manifest_path()
    return str(path), _mtime(path), str(user), _mtime(user)


@st.cache_data(show_spinner=False, ttl=60)
def _dataset_names(stamp: tuple) -> list[str]:
    return uidata.dataset_names()


def names() -> list[str]:
    return _dataset_names(manifest_stamp())


@st.cache_data(show_spinner=False, max_entries=4)
def _published(path: str, stamp: float | None):
    return shop.load_published(path)


def published():
    """What the owner published (:mod:`mildnet.shop`), re-read when its file changes (the CLI may publish)."""
    path = shop.shop_file()
    return _published(str(path), _mtime(path))


def forget_published() -> None:
    _published.clear()


@st.cache_resource(show_spinner=False, max_entries=16)
def _splits(name: str, stamp: tuple) -> tuple:
    return tuple(dataset_splits(name))


def splits(name: str) -> tuple:
    """A dataset's registry rows, parsed once per registry change (not on every rerun)."""
    return _splits(name, manifest_stamp())


@st.cache_resource(show_spinner=False, max_entries=16)
def _describe(name: str, stamp: tuple, files_stamp: tuple) -> uidata.Dataset:
    return uidata.describe(name, _splits(name, stamp))


def dataset(name: str) -> uidata.Dataset:
    stamp = manifest_stamp()
    files_stamp = tuple(_mtime(s.triplets) for s in _splits(name, stamp))
    return _describe(name, stamp, files_stamp)


@st.cache_data(show_spinner="Reading triplets…", max_entries=32)
def split_triplets(name: str, split: str, stamp: float):
    return uidata.read_split(dataset(name), split)


def triplets(ds: uidata.Dataset, split: str):
    return split_triplets(ds.name, split, _mtime(ds.split(split).triplets))


# The catalogue is read once per change and serves both the pages' tables and the search engine.
@st.cache_resource(show_spinner=False, max_entries=8)
def _catalogue(name: str, stamp: tuple) -> Catalogue:
    return Catalogue.registered(name)


def _catalogue_stamp(ds: uidata.Dataset) -> tuple:
    """What the searchable ids are read from: the registry, the catalogue table and the triplet files."""
    return (manifest_stamp(), _mtime(ds.catalog_path), *(_mtime(s.triplets) for s in ds.splits))


@st.cache_data(show_spinner=False, max_entries=16)
def _gallery(name: str, stamp: tuple):
    return uidata.gallery(_catalogue(name, stamp))


def gallery(ds: uidata.Dataset):
    """The searchable images (catalog rows) of a dataset."""
    return _gallery(ds.name, _catalogue_stamp(ds))


@st.cache_data(show_spinner=False, max_entries=8)
def _gallery_rows(name: str, stamp: tuple):
    return _gallery(name, stamp).drop_duplicates("image").set_index("image")


def gallery_rows(ds: uidata.Dataset):
    """The gallery indexed by image id (a card's row), built once per catalogue change, not on every rerun."""
    return _gallery_rows(ds.name, _catalogue_stamp(ds))


# The product picker's choices over a large catalogue (labels for 100k rows take ~0.3 s): built once per catalogue,
# embedded set and filter, not on every rerun.
@st.cache_resource(show_spinner=False, max_entries=32)
def _picker(name: str, stamp: tuple, set_key: str, category: str, colour: str, _found: SearchEngine):
    return uidata.picker_choices(_gallery(name, stamp), _found.embeddings.index, category, colour)


def picker(ds: uidata.Dataset, found: SearchEngine, category: str = "All", colour: str = "All"):
    """``uidata.PickerChoices`` of the products that are searchable now, filtered by category and colour."""
    emb = found.embeddings
    return _picker(ds.name, _catalogue_stamp(ds), f"{found.key}/{emb.catalog_fingerprint}/{id(emb)}", category,
                   colour, found)


@st.cache_data(show_spinner=False, max_entries=32)
def _annotated(name: str, split: str, stamp: tuple):
    ds = dataset(name)
    catalog = uidata.read_catalog(ds)
    return uidata.annotate(triplets(ds, split), catalog)


def annotated(ds: uidata.Dataset, split: str):
    return _annotated(ds.name, split, (_mtime(ds.catalog_path), _mtime(ds.split(split).triplets)))


@st.cache_data(show_spinner=False, max_entries=16)
def _counts(name: str, stamp: tuple):
    return uidata.split_counts(dataset(name))


def split_counts(ds: uidata.Dataset):
    return _counts(ds.name, tuple(_mtime(s.triplets) for s in ds.splits))


@st.cache_resource(show_spinner="Checking the triplet files and images…", max_entries=8)
def _check(name: str, stamp: tuple):
    return uidata.check(dataset(name))


def data_check(ds: uidata.Dataset):
    return _check(ds.name, (_mtime(ds.image_root), *(_mtime(s.triplets) for s in ds.splits)))


@st.cache_resource(show_spinner=False, ttl=5, max_entries=16)
def _folder_changes(name: str, stamp: tuple):
    return catalogue.folder_changes(name)


def folder_changes(name: str):
    """How the folder an added dataset came from changed (None for other datasets). Listing a big folder
    takes a moment: reruns within a few seconds reuse the answer."""
    return _folder_changes(name, manifest_stamp())


def forget_folder_changes() -> None:
    _folder_changes.clear()


# --- runs and models -----------------------------------------------------------------------------


# cache_resource, not cache_data: Run objects are returned as they are (no pickling, which also breaks when
# Streamlit reloads an edited module and the class object changes).
@st.cache_resource(show_spinner=False, max_entries=32)
def _runs(dataset_name: str | None, runs_root: str, pretrained_root: str, stamp: tuple) -> list[uiruns.Run]:
    return uiruns.list_runs(dataset_name)


def _runs_stamp(dataset_name: str | None) -> tuple:
    """Which run folders hold a model, and since when: a new or retrained run changes it (stat calls only)."""
    folders = []
    root = settings.runs_dir()
    if root.is_dir():
        folders.extend(p for p in root.iterdir() if p.is_dir())
    if dataset_name:
        folders.append(settings.pretrained_dir() / dataset_name)
    folders.append(settings.pretrained_dir() / REAL_PHOTOS)
    return tuple(sorted((str(p), _mtime(model_path(p)), _mtime(p / METRICS_FILE)) for p in folders))


def runs(dataset_name: str | None) -> list[uiruns.Run]:
    """Runs for a dataset; re-read only when a run folder or its model changes."""
    return _runs(dataset_name, str(settings.runs_dir()), str(settings.pretrained_dir()), _runs_stamp(dataset_name))


def forget_runs() -> None:
    _runs.clear()


@st.cache_resource(show_spinner="Loading the model…", max_entries=6)
def _model(run_dir: str, stamp: float, calibration_stamp: float) -> LoadedModel:
    return LoadedModel.from_run(run_dir)


# --- the search engine ---------------------------------------------------------------------------


def store():
    return _store(settings.store_spec())


@st.cache_resource(show_spinner=False)
def _store(spec: str):
    return open_store(spec)


@st.cache_resource(show_spinner="Loading the catalogue…", max_entries=8)
def _engine(run_dir: str, stamp: float, calibration_stamp: float, dataset_name: str, catalogue_stamp: tuple,
            store_spec: str, index_spec: str) -> SearchEngine:
    # store_spec is part of the key: an engine reading one store must not answer for another.
    index, options = parse_index_spec(index_spec)
    return SearchEngine.open(_model(run_dir, stamp, calibration_stamp), _catalogue(dataset_name, catalogue_stamp),
                             _store(store_spec), index=index, index_options=options)


def engine(run: uiruns.Run, ds: uidata.Dataset) -> SearchEngine:
    """The search engine of this run's model over this catalogue, opened once (it never embeds: see
    :func:`pending` and ``layout.build_embeddings``)."""
    return _engine(run.key, run.stamp, _mtime(run.path / CALIBRATION_FILE), ds.name, _catalogue_stamp(ds),
                   settings.store_spec(), settings.index_spec())


# Whether the photos changed since they were embedded costs one stat a photo (1.7 s at 100k photos): asked at most
# every few seconds, not on every rerun. A change made through the app (a catalogue refresh) changes the
# catalogue's stamp and so opens a new engine at once.
@st.cache_resource(show_spinner=False, ttl=10, max_entries=8)
def _pending(_engine_obj: SearchEngine, engine_id: int, generation: int):
    return _engine_obj.pending()


def pending(found: SearchEngine):
    """What an update would embed (``Pending``), for engines that hold a set; None for one that holds none."""
    if not found.ready:
        return None
    return _pending(found, id(found), id(found.embeddings))


def forget_pending() -> None:
    _pending.clear()


# --- evaluation ----------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=64)
def _evaluation(run_dir: str, stamp: float, dataset_name: str, split: str, triplets_stamp: float,
                catalog_fp: str, _engine_obj: SearchEngine):
    ds = dataset(dataset_name)
    table_triplets = uidata.read_split(ds, split)
    catalog = uidata.read_catalog(ds)
    emb = _engine_obj.embeddings
    needed = set(table_triplets["query"]) | set(table_triplets["positive"]) | set(table_triplets["negative"])
    if all(name in emb for name in needed):
        # The catalog embeddings already hold every image: the metrics are pure numpy, no network pass.
        return core_evaluation.evaluate_embeddings(emb, table_triplets, catalog)
    loaded = _engine_obj.model
    return core_evaluation.evaluate_triplets(loaded.model, ds.image_root, table_triplets, loaded.image_size, catalog)


def evaluation(run: uiruns.Run, ds: uidata.Dataset, split: str, found: SearchEngine):
    """A run's triplet metrics on a split, from the engine's embeddings where they hold every photo."""
    return _evaluation(run.key, run.stamp, ds.name, split, _mtime(ds.split(split).triplets),
                       found.embeddings.catalog_fingerprint, found)


# --- no-learning baselines -----------------------------------------------------------------------


def _weights_stamp() -> tuple:
    """Where the ImageNet weights are looked for, and whether a copy is there now: putting the file in the
    cache (the fix an unavailable baseline suggests) changes the key, so the next rerun scores it."""
    from mildnet.models.squeezenet import CACHE_ENV, URL_ENV, WEIGHTS_FILENAME

    cache = os.environ.get(CACHE_ENV) or os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    return cache, os.environ.get(URL_ENV, ""), _mtime(Path(cache) / "models" / WEIGHTS_FILENAME)


# cache_data: the value is plain JSON-like dicts (baseline_summary), cheap to copy and safe across reloads.
@st.cache_data(show_spinner=False, max_entries=16)
def _baselines(dataset_name: str, split: str, stamp: tuple, weights_stamp: tuple) -> dict:
    ds = dataset(dataset_name)
    results = core_evaluation.evaluate_baselines(ds.image_root, uidata.read_split(ds, split), uidata.read_catalog(ds))
    return core_evaluation.baseline_summary(results)


def baselines(ds: uidata.Dataset, split: str) -> dict:
    """The no-learning baselines scored on a split's triplets (``baseline_summary`` dicts, an unavailable one
    as ``{"unavailable": reason}``): computed once per dataset, split and weights location."""
    stamp = (_mtime(ds.split(split).triplets), _mtime(ds.catalog_path))
    return _baselines(ds.name, split, stamp, _weights_stamp())
