"""Image catalogs: a folder of product images becomes a table, and triplets are generated from it.

A catalog is a DataFrame with the columns of ``CATALOG_COLUMNS`` (see ARCHITECTURE.md): ``image``
(relative to the image root), ``product_id`` (images of one product are positives of each other),
``category`` (a negative of the same category is "in-class", of another "out-of-class"; may be
empty), ``split``. It is built from a labels CSV, from class sub-folders (optionally under split
folders, as in clothing-dataset-small), or read back from a ``catalog.csv``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mildnet.data import cells
from mildnet.data.images import list_images
from mildnet.data.triplets import COLUMNS as TRIPLET_COLUMNS
from mildnet.data.triplets import unsafe_reason
from mildnet.errors import DataError

CATALOG_COLUMNS = ("image", "product_id", "category", "split")
# Set on the rows of augmented views (instance-level datasets, mildnet.data.instance): the photo the view was
# made from. Such rows feed triplets but are not products a shopper should be shown.
AUGMENTED_COLUMN = "augmented_from"
SPLITS = ("train", "val", "test")
# Folder names that mean a split rather than a class.
_SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
# Accepted spellings of the product column in a user's labels CSV, in order of preference.
_PRODUCT_COLUMNS = ("product_id", "product", "label", "class")


def read_catalog(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``catalog.csv`` (as written by :func:`write_catalog` or the sample generator)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"catalog file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"catalog {path} is empty (needs a header row: image,product_id,...)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read catalog {path}: {exc}") from None
    return normalise_catalog(cells.unescape_frame(frame), source=str(path))


def write_catalog(path: str | os.PathLike, catalog: pd.DataFrame) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    cells.escape_frame(catalog).to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)
    return path


def find_catalog(image_root: str | os.PathLike) -> Path | None:
    """``catalog.csv`` in the image root or beside it (the sample layout: DIR/images + DIR/catalog.csv)."""
    root = Path(image_root)
    for candidate in (root / "catalog.csv", root.parent / "catalog.csv"):
        if candidate.is_file():
            return candidate
    return None


def read_catalog_for(image_root: str | os.PathLike, path: str | os.PathLike | None = None) -> pd.DataFrame | None:
    """The catalog table with ``image`` made relative to ``image_root``; None when there is none.

    A catalog found beside the image folder may name images relative to its own folder
    (``images/a.jpg``); that prefix is removed so the names match the triplet files.
    """
    catalog_path = Path(path) if path is not None else find_catalog(image_root)
    if catalog_path is None:
        return None
    catalog = read_catalog(catalog_path)  # validated: image, product_id, category, split (+ extras)
    root = Path(image_root).resolve()
    try:
        prefix = root.relative_to(catalog_path.resolve().parent).as_posix()
    except ValueError:
        prefix = "."
    if prefix != ".":
        under = catalog["image"].str.startswith(prefix + "/")
        if under.any() and not (root / catalog["image"].iloc[0]).is_file():
            catalog = catalog[under].copy()
            catalog["image"] = catalog["image"].str.slice(len(prefix) + 1)
    return catalog.reset_index(drop=True)


_COLUMN_NAME = re.compile(r"[\w .()-]{1,40}")


def _describe_header(columns) -> str:
    """The header's column names when they look like column names; else not a word of it: a file that is not a
    labels CSV (someone typed /etc/shadow into the app's field) must not have its first line shown back."""
    names = [str(c) for c in columns]
    if names and len(names) <= 30 and all(_COLUMN_NAME.fullmatch(n) for n in names):
        return "found: " + ", ".join(names)
    return "its first line is not a CSV header of column names"


def normalise_catalog(frame: pd.DataFrame, source: str = "catalog") -> pd.DataFrame:
    """Validate a catalog table and bring it to the standard columns (extra columns are kept)."""
    frame = frame.copy()
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "image" not in frame.columns:
        raise DataError(f"{source}: needs an 'image' column ({_describe_header(frame.columns)})")
    if "product_id" not in frame.columns:
        product = next((c for c in _PRODUCT_COLUMNS if c in frame.columns), None)
        if product is None:
            raise DataError(f"{source}: needs a product column, one of {', '.join(_PRODUCT_COLUMNS)}")
        frame["product_id"] = frame[product]
    for column in ("category", "split"):
        if column not in frame.columns:
            frame[column] = ""
    frame = frame.fillna("")
    for column in frame.columns:
        frame[column] = frame[column].astype(str).str.strip()
    frame["image"] = frame["image"].str.replace("\\", "/", regex=False)
    empty = frame["image"].eq("") | frame["product_id"].eq("")
    if empty.any():
        raise DataError(f"{source}: {int(empty.sum())} rows have an empty image or product")
    unsafe = [name for name in frame["image"] if unsafe_reason(name)]
    if unsafe:
        raise DataError(f"{source}: image names must stay under the image root, e.g. {unsafe[0]!r}")
    duplicated = frame["image"].duplicated()
    if duplicated.any():
        raise DataError(f"{source}: image listed twice: {frame['image'][duplicated].iloc[0]!r}")
    # "validation", "Train", "testing": the spellings a folder layout would accept mean the same split here.
    frame["split"] = frame["split"].map(lambda v: _SPLIT_FOLDERS.get(v.lower(), v))
    bad_split = ~frame["split"].isin(("", *SPLITS))
    if bad_split.any():
        raise DataError(
            f"{source}: unknown split {frame['split'][bad_split].iloc[0]!r} (use {', '.join(SPLITS)} or leave empty)"
        )
    ordered = list(CATALOG_COLUMNS) + [c for c in frame.columns if c not in CATALOG_COLUMNS]
    return frame[ordered].reset_index(drop=True)


def catalog_from_folder(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.DataFrame:
    """Build a catalog from a folder of images.

    - With ``labels_csv`` (columns ``image`` and ``product_id``/``product``/``label``, optional
      ``category`` and ``split``), the CSV says which product each image shows; images it names must exist.
    - Otherwise sub-folders are classes (``root/<class>/x.jpg``), optionally under split folders
      (``root/train/<class>/x.jpg``); the class becomes the product id.
    Images without a split are assigned one by product, seeded, so products never straddle splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    images = list_images(root)
    if not images:
        raise DataError(f"no images (jpg, png, webp, bmp, gif) found under {root}")
    if labels_csv is not None:
        labels = read_catalog(labels_csv)
        missing = sorted(set(labels["image"]) - set(images))
        if missing:
            raise DataError(
                f"{labels_csv}: {len(missing)} listed images are not under {root}, e.g. {missing[0]!r}"
            )
        catalog = labels
    else:
        catalog = normalise_catalog(pd.DataFrame([_from_path(name) for name in images]), source=str(root))
    return assign_splits(catalog, split_fractions, seed)


def folder_class(name: str) -> str | None:
    """The class folder of an image path as :func:`catalog_from_folder` reads it (``[split/]class/.../x.jpg``:
    the folders under an optional train/val/test folder), or None for a file directly under the root."""
    parts = name.split("/")
    split = _SPLIT_FOLDERS.get(parts[0].lower(), "") if len(parts) > 2 else ""
    folders = parts[1:-1] if split else parts[:-1]
    return "/".join(folders) if folders else None


def _from_path(name: str) -> dict[str, str]:
    parts = name.split("/")
    split = _SPLIT_FOLDERS.get(parts[0].lower(), "") if len(parts) > 2 else ""
    # A file directly under the root is its own product: it has no positive but can be a negative.
    product = folder_class(name) or Path(name).stem
    return {"image": name, "product_id": product, "category": "", "split": split}


def assign_splits(
    catalog: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> pd.DataFrame:
    """Give every product without a split one of train/val/test, whole products at a time."""
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    catalog = catalog.copy()
    unassigned = catalog["split"].eq("")
    if not unassigned.any():
        return catalog
    products = np.array(sorted(catalog.loc[unassigned, "product_id"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(products)
    n_train = int(round(fractions[0] * len(products)))
    n_val = int(round(fractions[1] * len(products)))
    split_of = {p: "train" for p in products[:n_train]}
    split_of.update({p: "val" for p in products[n_train : n_train + n_val]})
    split_of.update({p: "test" for p in products[n_train + n_val :]})
    catalog.loc[unassigned, "split"] = catalog.loc[unassigned, "product_id"].map(split_of)
    return catalog


def generate_triplets(
    catalog: pd.DataFrame,
    per_query: int = 2,
    seed: int = 0,
    in_class_share: float = 0.5,
) -> dict[str, pd.DataFrame]:
    """MILDNet triplets from a catalog, one table per split (only images of that split are used).

    Every image whose product has another image in its split is a query ``per_query`` times.
    The positive is another image of the same product, preferring a ``catalog`` view for a ``wild``
    query (the paper's wild-to-catalog setting). The negative is another product's image: of the
    same category ("in-class", the hard case) with probability ``in_class_share`` where the
    category is known and has other products, else of another category ("out-of-class").
    Seeded: the same catalog and seed give the same triplets.
    """
    if per_query < 1:
        raise ValueError(f"per_query must be at least 1, got {per_query}")
    if not 0.0 <= in_class_share <= 1.0:
        raise ValueError(f"in_class_share must be in [0, 1], got {in_class_share}")
    catalog = normalise_catalog(catalog)
    if catalog["split"].eq("").any():
        catalog = assign_splits(catalog, seed=seed)
    rng = np.random.default_rng(seed)
    result = {}
    for split in SPLITS:
        part = catalog[catalog["split"] == split].reset_index(drop=True)
        result[split] = _split_triplets(part, per_query, rng, in_class_share)
    if all(frame.empty for frame in result.values()):
        raise DataError("no triplets can be made: no product has two or more images in the same split")
    return result


def _split_triplets(part: pd.DataFrame, per_query: int, rng: np.random.Generator, in_class_share: float):
    empty = pd.DataFrame(columns=list(TRIPLET_COLUMNS))
    if part.empty or part["product_id"].nunique() < 2:
        return empty
    images = part["image"].to_numpy()
    products = part["product_id"].to_numpy()
    categories = part["category"].to_numpy()
    views = part["view"].to_numpy() if "view" in part.columns else np.full(len(part), "")
    by_product = part.groupby("product_id").indices
    by_category = part.groupby("category").indices
    all_rows = np.arange(len(part))
    rows = []
    for q in all_rows:
        same = by_product[products[q]]
        candidates = same[same != q]
        if len(candidates) == 0:
            continue
        if views[q] == "wild":
            catalog_views = candidates[views[candidates] == "catalog"]
            if len(catalog_views):
                candidates = catalog_views
        known = categories[q] != ""
        in_class = by_category[categories[q]] if known else all_rows
        in_class = in_class[products[in_class] != products[q]]
        out_class = all_rows[(categories != categories[q]) & (products != products[q])] if known else in_class
        for _ in range(per_query):
            pool = in_class if (len(in_class) and (rng.random() < in_class_share or not len(out_class))) else out_class
            if not len(pool):
                break
            rows.append((images[q], images[rng.choice(candidates)], images[rng.choice(pool)]))
    if not rows:
        return empty
    return pd.DataFrame(rows, columns=list(TRIPLET_COLUMNS)).drop_duplicates().reset_index(drop=True)


def gallery(catalog: pd.DataFrame) -> pd.DataFrame:
    """The searchable rows of a catalog: real photos, without the augmented views of an instance-level dataset."""
    if AUGMENTED_COLUMN not in catalog.columns:
        return catalog
    return catalog[catalog[AUGMENTED_COLUMN].fillna("").astype(str).str.strip().eq("")].reset_index(drop=True)


def triplet_types(triplets: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """Per triplet: ``negative_type`` (in-class / out-of-class / unknown) and ``query_view``
    (wild / catalog / unknown), derived from the catalog (MILDNet files carry no type column)."""
    info = catalog.drop_duplicates("image").set_index("image")

    def column(name: str) -> dict:
        if name not in info.columns:
            return {}
        return info[name].fillna("").astype(str).str.strip().str.lower().to_dict()

    category, view = column("category"), column("view")
    q_cat = triplets["query"].map(category).fillna("")
    n_cat = triplets["negative"].map(category).fillna("")
    known = q_cat.ne("") & n_cat.ne("")
    negative_type = np.where(~known, "unknown", np.where(q_cat == n_cat, "in-class", "out-of-class"))
    query_view = triplets["query"].map(view).fillna("")
    query_view = query_view.where(query_view.isin(["wild", "catalog"]), "unknown")
    return pd.DataFrame({"negative_type": negative_type, "query_view": query_view}, index=triplets.index)
