"""Dataset access for the app: manifest rows, triplets, catalog and the data check, as plain functions
(no streamlit) so the pages stay thin and the logic is testable on its own."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from mildnet.data import manifest
from mildnet.data.catalog import read_catalog_for, triplet_types
from mildnet.data.sample import is_sample_complete
from mildnet.data.triplets import check_triplets, read_triplets
from mildnet.errors import DataError
from mildnet.search.catalogue import Catalogue
from mildnet.ui import items

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    name: str
    splits: tuple  # DatasetSplit rows, train/val/test order where present
    image_root: Path  # the folder the triplet (and catalog) paths are relative to

    @property
    def split_names(self) -> list[str]:
        return [s.split for s in self.splits]

    def split(self, name: str):
        for row in self.splits:
            if row.split == name:
                return row
        raise DataError(f"dataset {self.name!r} has no split {name!r}; it has: {', '.join(self.split_names)}")

    @property
    def catalog_path(self) -> Path | None:
        return self.splits[0].catalog

    @property
    def licence(self) -> str:
        return self.splits[0].licence

    @property
    def notes(self) -> str:
        return self.splits[0].notes

    @property
    def source(self) -> str:
        return self.splits[0].source

    @property
    def kind(self) -> str:
        """``instance`` when the triplets are instance-level (positives are augmented views), else as registered."""
        return self.splits[0].kind

    @property
    def origin(self) -> str:
        """The user's folder of a dataset added with ``data add`` (or from the app), else empty."""
        return self.splits[0].origin


def dataset_names() -> list[str]:
    return manifest.datasets()


def is_ready(name: str, splits=None) -> bool:
    """Cheap check (files exist) so a page need not call ``prepare`` on every rerun; ``splits``: the registry
    rows when the caller has them (parsing the registry again costs more than the check)."""
    splits = splits if splits is not None else manifest.dataset_splits(name)
    if splits[0].source == "generated":
        return is_sample_complete(manifest.dataset_home(splits))
    return not manifest.missing_files(splits)


def prepare(name: str, progress=None) -> Dataset:
    """Make the dataset usable (generating the sample on first use) and describe it."""
    splits = manifest.prepare(name, progress=progress)
    return describe(name, splits)


def describe(name: str, splits=None) -> Dataset:
    splits = tuple(splits if splits is not None else manifest.dataset_splits(name))
    return Dataset(name=name, splits=splits, image_root=splits[0].image_root)  # one root per dataset (manifest-checked)


def read_split(dataset: Dataset, split: str) -> pd.DataFrame:
    """The valid triplets of one split (columns query, positive, negative)."""
    table = read_triplets(dataset.split(split).triplets).triplets
    return table[["query", "positive", "negative"]].reset_index(drop=True)


def read_catalog(dataset: Dataset) -> pd.DataFrame | None:
    """The catalog with image names relative to ``dataset.image_root``; None where the dataset has none."""
    path = dataset.catalog_path
    if path is None or not path.is_file():
        return None
    return read_catalog_for(dataset.image_root, path)


def gallery(found: Catalogue) -> pd.DataFrame:
    """Every image the app can search, one row each (the search engine's :class:`Catalogue`: the catalog's real
    photos, else the distinct images of the triplet files, else the folder's photos)."""
    if found.table is not None:
        return found.table
    return pd.DataFrame({"image": list(found.ids), "split": "", "product_id": "", "category": ""})


def annotate(triplets: pd.DataFrame, catalog: pd.DataFrame | None) -> pd.DataFrame:
    """Triplets plus ``negative_type``, ``query_view`` and ``category`` (of the query) where the catalog knows them."""
    out = triplets.copy()
    if catalog is None or catalog.empty:
        out["negative_type"] = "unknown"
        out["query_view"] = "unknown"
        out["category"] = ""
        return out
    types = triplet_types(out, catalog)
    out["negative_type"] = types["negative_type"].to_numpy()
    out["query_view"] = types["query_view"].to_numpy()
    category = catalog.drop_duplicates("image").set_index("image")["category"] if "category" in catalog else None
    out["category"] = out["query"].map(category).fillna("") if category is not None else ""
    return out


INSTANCE_NOTE = ("Instance-level triplets: this catalogue has no product labels, so each photo is its own product and "
                 "the positive is an augmented view (crop, flip, small rotation, lighting) of the query's own photo. "
                 "They teach invariance to framing and lighting, not \"same product, other photo\"; search shows "
                 "only the real photos.")


def kind_note(dataset: Dataset) -> str | None:
    """What the app says about how a dataset's triplets were made, where that is not the usual labels."""
    return INSTANCE_NOTE if dataset.kind == "instance" else None


def split_counts(dataset: Dataset) -> pd.DataFrame:
    rows = []
    for row in dataset.splits:
        table = read_triplets(row.triplets)
        rows.append({"split": row.split, "triplets": len(table.triplets), "images": len(table.images),
                     "bad rows": len(table.problems)})
    return pd.DataFrame(rows)


def check(dataset: Dataset):
    """The data-check report over every split (missing or unreadable images, bad rows, leaks)."""
    return check_triplets(dataset.image_root, [row.triplets for row in dataset.splits])


def shuffled(frame: pd.DataFrame, seed: int | None) -> pd.DataFrame:
    if seed is None:
        return frame
    order = list(range(len(frame)))
    random.Random(seed).shuffle(order)
    return frame.iloc[order].reset_index(drop=True)


PICKER_LIMIT = 5000  # a select box with 100k options freezes the browser


@dataclass(frozen=True)
class PickerChoices:
    """The Search page's product picker: the categories and colours of the searchable products, the ids offered
    for the chosen ones (at most ``PICKER_LIMIT``: a stable sample) out of ``total``, and each id's label."""

    categories: list[str]
    colours: list[str]
    colour_column: str | None
    ids: list[str]
    labels: dict[str, str]
    total: int


def picker_choices(gallery: pd.DataFrame, present, category: str = "All", colour: str = "All",
                   limit: int = PICKER_LIMIT) -> PickerChoices:
    """The picker's choices among the ``gallery`` rows whose image is in ``present`` (the embedded ids)."""
    rows = gallery[gallery["image"].isin(list(present))]
    categories = sorted(c for c in rows.get("category", pd.Series(dtype=str)).unique() if c)
    colour_column = next((c for c in ("colour", "color") if c in rows.columns), None)
    colours = sorted(c for c in rows[colour_column].unique() if c and c != "nan") if colour_column else []
    pool = rows if category == "All" else rows[rows["category"] == category]
    pool = pool if colour == "All" or colour_column is None else pool[pool[colour_column] == colour]
    ids = list(pool["image"])
    total = len(ids)
    if total > limit:
        ids = sorted(random.Random(0).sample(ids, limit))
        pool = pool[pool["image"].isin(ids)]
    labels = {}
    for record in pool.astype(str).to_dict("records"):
        # The title, then what tells photos of one title apart (its file name), so 3,781 photos of class folders
        # do not all read "dress"; the box is searchable by typing any of it.
        bits = (items.title(record), items.details(record), PurePosixPath(record["image"]).name, record.get("view"))
        labels[record["image"]] = " · ".join(b for b in dict.fromkeys(bits) if b and b != "nan") or record["image"]
    return PickerChoices(categories, colours, colour_column, ids, labels, total)
