"""What a search looks through: a catalogue's searchable photo ids, their folder and their table.

One definition for the app, the CLI and the HTTP API: a registered dataset searches its catalogue's real photos
(an instance-level dataset's augmented views feed training, never results), else the photos of its triplet
files, else every photo of its folder; a plain folder searches its ``catalog.csv`` rows, else every photo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mildnet import embeddings
from mildnet.data import manifest
from mildnet.data.catalog import gallery, read_catalog_for
from mildnet.data.triplets import read_triplets
from mildnet.errors import DataError

__all__ = ["Catalogue", "FilterError", "catalogue_name", "include_prefixes"]


class FilterError(DataError):
    """A filter names a column the catalogue does not have (a usage error, not a broken catalogue)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Catalogue:
    """``name``: the catalogue's part of the store key (``include`` prefixes appended as ``+prefix``);
    ``ids``: searchable photo paths relative to ``image_root``, in catalogue order; ``table``: one row per id
    (``image`` plus whatever the shop's table has: product_id, category, colour, title, url...), or None for
    a folder without a table; ``catalog_path``: the table's file, when there is one."""

    name: str
    image_root: Path
    ids: tuple[str, ...]
    table: pd.DataFrame | None = None
    catalog_path: Path | None = None
    include: tuple[str, ...] = ()

    # -- opening ----------------------------------------------------------------------------------------------

    @classmethod
    def registered(cls, name: str, include: Sequence[str] | None = None) -> Catalogue:
        """A dataset of the registry (`data list`); DataError when it is unknown or its files are missing."""
        registry = manifest.load_manifest()  # read once: the name check and the rows come from the same read
        known = manifest.datasets(registry)
        if name not in known:
            raise DataError(f"{name!r} is not a registered dataset (registered: {', '.join(known)}); "
                            f"register a folder with `python -m mildnet data add {name} --images DIR`")
        splits = manifest.dataset_splits(name, registry)
        missing = manifest.missing_files(splits)
        if missing:
            raise DataError(f"dataset {name} is not ready (missing {missing[0]}); "
                            f"run `python -m mildnet data fetch {name}` first")
        root = splits[0].image_root
        catalog_path = splits[0].catalog
        table = read_catalog_for(root, catalog_path) if catalog_path is not None and catalog_path.is_file() else None
        if table is not None:
            table = gallery(table)
        else:
            table = _triplet_images(splits)
        if table is None or table.empty:
            ids = embeddings.catalog_ids(root)
            table = None
        else:
            table = table.drop_duplicates("image").reset_index(drop=True)
            ids = list(table["image"])
        return cls._make(name, root, ids, table, catalog_path, include)

    @classmethod
    def folder(cls, image_root, *, name: str | None = None, include: Sequence[str] | None = None,
               catalog_path=None) -> Catalogue:
        """A folder of photos (ids: its ``catalog.csv`` rows, else every photo under it); ``name`` defaults to
        the folder's name; ``catalog_path``: a table elsewhere that labels these photos."""
        root = Path(image_root)
        ids = embeddings.catalog_ids(root)
        try:
            table = read_catalog_for(root, catalog_path)
        except (DataError, OSError):
            table = None  # an unreadable table: searched as a plain folder (its photos are still listed)
        if table is not None:
            table = gallery(table).drop_duplicates("image")
            table = table[table["image"].isin(set(ids))].reset_index(drop=True)
        path = Path(catalog_path) if catalog_path is not None else (root / "catalog.csv" if table is not None
                                                                      else None)
        return cls._make(name or embeddings.dataset_name(root), root, ids, table, path, include)

    @classmethod
    def _make(cls, name, root, ids, table, catalog_path, include) -> Catalogue:
        include = include_prefixes(include)
        if include:
            ids = [i for i in ids if i.startswith(include)]
            if not ids:
                raise DataError(f"no photos of {name} match --include {', '.join(include)}")
            if table is not None:
                table = table[table["image"].isin(set(ids))].reset_index(drop=True)
            name = catalogue_name(name, include)
        if not ids:
            raise DataError(f"no photos to search under {root}: add photos to it")
        return cls(name, Path(root), tuple(ids), table, Path(catalog_path) if catalog_path else None, include)

    # -- facts ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """The photos' current state (ids, sizes, mtimes): one stat a photo, so callers keep it a while."""
        return embeddings.catalog_fingerprint(self.image_root, self.ids)

    @property
    def columns(self) -> list[str]:
        return [c for c in self.table.columns if c != "image"] if self.table is not None else []

    def rows(self) -> dict[str, dict[str, str]]:
        """id -> its table row as text (empty cells left out), for cards and API results."""
        if self.table is None:
            return {}
        out = {}
        for record in self.table.astype(str).to_dict("records"):
            out[record["image"]] = {k: v for k, v in record.items() if k != "image" and v not in ("", "nan", "None")}
        return out

    def mask(self, ids: Sequence[str], filters: Mapping[str, str | Sequence[str]] | None,
             cache: dict | None = None) -> np.ndarray | None:
        """Boolean mask over ``ids`` (a stored set's rows) of the photos whose table values pass ``filters``
        (column -> a value or a list of accepted values, compared as text, trimmed and case-insensitively); None
        without filters. FilterError for a column the table does not have. ``cache``: a dict kept with those
        ``ids`` (the engine keeps one per stored set): each column is coded against them once, after which a
        filter costs one ``isin`` over integer codes (a pandas pass over the table per query took ~90 ms at 100k)."""
        if not filters:
            return None
        if self.table is None:
            raise FilterError(f"catalogue {self.name} has no table, so it cannot be filtered by "
                              f"{', '.join(filters)}")
        cache = {} if cache is None else cache
        keep = np.ones(len(ids), dtype=bool)
        for column, wanted in filters.items():
            if column not in self.table.columns or column == "image":
                raise FilterError(f"catalogue {self.name} has no column {column!r} to filter on (it has: "
                                  f"{', '.join(self.columns) or 'none'})")
            if column not in cache:
                cache[column] = self._codes(ids, column)
            codes, lookup = cache[column]
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            accepted = [lookup[v] for v in {str(v).strip().casefold() for v in values} if v in lookup]
            keep &= np.isin(codes, np.asarray(accepted, dtype=codes.dtype))
        return keep

    def _codes(self, ids: Sequence[str], column: str) -> tuple[np.ndarray, dict[str, int]]:
        """Each of ``ids``' value in ``column`` as an integer code (-1: the photo has no row), and value -> code."""
        normalised = pd.Series(self.table[column].astype(str).str.strip().str.casefold().to_numpy(),
                               index=self.table["image"].to_numpy())
        aligned = normalised[~normalised.index.duplicated()].reindex(pd.Index(list(ids)))
        codes, uniques = pd.factorize(aligned, use_na_sentinel=True)
        return codes.astype(np.int64), {str(u): k for k, u in enumerate(uniques)}


def include_prefixes(include: Sequence[str] | None) -> tuple[str, ...]:
    """``--include`` prefixes as photo ids spell them (forward slashes, no surrounding spaces; empty ones dropped)."""
    return tuple(p.replace("\\", "/").strip() for p in include or () if p.strip())


def catalogue_name(name: str, include: Sequence[str] | None) -> str:
    """The name a catalogue's set is stored under: ``name``, plus ``+prefix`` for each ``--include`` prefix."""
    prefixes = include_prefixes(include)
    return name + "".join("+" + p.strip("/") for p in prefixes)


def _triplet_images(splits) -> pd.DataFrame | None:
    """The distinct photos of a dataset's triplet files (registry rows), with the split each first appears in."""
    images: dict[str, str] = {}
    for row in splits:
        if row.triplets is None or not Path(row.triplets).is_file():
            continue
        table = read_triplets(row.triplets).triplets
        split = row.split
        for column in ("query", "positive", "negative"):
            for name in table[column]:
                images.setdefault(name, split)
    if not images:
        return None
    frame = pd.DataFrame({"image": list(images), "split": list(images.values())})
    frame["product_id"] = ""
    frame["category"] = ""
    return frame
