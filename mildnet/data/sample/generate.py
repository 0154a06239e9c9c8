"""The sample on disk: render every product into a folder, with its catalog, triplets and marker."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mildnet import safe_json
from mildnet.data.catalog import generate_triplets, write_catalog
from mildnet.data.sample.products import MAX_PRODUCTS, MIN_PRODUCTS, SPLITS, Product, make_products
from mildnet.data.sample.render import GENERATOR_VERSION, render_catalog, render_wild
from mildnet.data.triplets import write_triplets
from mildnet.errors import DataError

SAMPLE_COLUMNS = ("image", "product_id", "category", "colour", "pattern", "view", "split")
MIN_SIZE = 32
MAX_SIZE = 1024
MAX_WILD = 50
JPEG_QUALITY = 90
MARKER = "sample.json"

# --------------------------------------------------------------------------------------------------
# The dataset on disk
# --------------------------------------------------------------------------------------------------


def _check_params(products: int, size: int, wild_per_product: int, seed: int) -> None:
    for name, value in (("products", products), ("size", size), ("wild_per_product", wild_per_product),
                        ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not MIN_PRODUCTS <= products <= MAX_PRODUCTS:
        raise ValueError(
            f"products must be between {MIN_PRODUCTS} and {MAX_PRODUCTS}, got {products}: each of the train, "
            f"val and test splits needs two products of one category and two categories"
            if products < MIN_PRODUCTS else
            f"products must be between {MIN_PRODUCTS} and {MAX_PRODUCTS}, got {products}: that is every "
            f"distinct garment/colour/pattern combination the generator can draw"
        )
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if not 1 <= wild_per_product <= MAX_WILD:
        raise ValueError(f"wild_per_product must be between 1 and {MAX_WILD}, got {wild_per_product}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def _params(products: int, size: int, wild_per_product: int, seed: int) -> dict:
    return {"generator": "mildnet.data.sample", "version": GENERATOR_VERSION, "products": int(products),
            "size": int(size), "wild_per_product": int(wild_per_product), "seed": int(seed)}


def _read_marker(out_dir: Path) -> dict | None:
    try:
        marker = safe_json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == "mildnet.data.sample" else None


def is_sample_complete(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a whole sample of this generator version: the marker, the CSVs and every
    image they list (a sample drawn by an older renderer is redrawn on its next use, like a missing one)."""
    out_dir = Path(out_dir)
    marker = _read_marker(out_dir)
    if marker is None or not isinstance(marker.get("files"), list) or marker.get("version") != GENERATOR_VERSION:
        return False
    return all((out_dir / name).is_file() for name in marker["files"])


def _catalog_rows(product: Product, wild_per_product: int) -> list[dict[str, str]]:
    views = [("catalog", "catalog.jpg")] + [("wild", f"wild-{k + 1}.jpg") for k in range(wild_per_product)]
    return [{"image": f"images/{product.product_id}/{name}", "product_id": product.product_id,
             "category": product.category, "colour": product.colour, "pattern": product.pattern,
             "view": view, "split": product.split} for view, name in views]


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` into place; the old dataset (if any) disappears only after that succeeds."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def generate_sample(
    out_dir: str | os.PathLike,
    products: int = 240,
    size: int = 128,
    wild_per_product: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render the sample catalog into ``out_dir`` and return it (see the module docstring for the layout).

    Defaults: 240 products x (1 catalog + 4 wild) = 1,200 JPEGs at 128 px. Same arguments -> byte-identical
    files. A complete sample with the same arguments is reused as is. The work happens in a temporary
    sibling folder renamed into place at the end, so an interrupted run never leaves a half-written
    dataset; an existing folder that is not a sample is never overwritten.
    """
    _check_params(products, size, wild_per_product, seed)
    out_dir = Path(out_dir)
    params = _params(products, size, wild_per_product, seed)
    if _reusable(out_dir, params):
        total = int(products) * (1 + int(wild_per_product))
        if progress is not None:
            progress(total, total)
        return out_dir

    items = make_products(products, seed)
    rows = [row for product in items for row in _catalog_rows(product, wild_per_product)]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _render_all(tmp, items, size, wild_per_product, seed, progress)
        catalog = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
        write_catalog(tmp / "catalog.csv", catalog)
        triplets = generate_triplets(catalog, per_query=2, seed=seed, in_class_share=0.5)
        for split in SPLITS:
            write_triplets(tmp / f"{split}.csv", triplets[split])

        files = ["catalog.csv", *(f"{s}.csv" for s in SPLITS), *catalog["image"]]
        marker = {**params, "images": len(rows), "files": files}
        # Written last: its presence is what makes the folder count as complete.
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _reusable(out_dir: Path, params: dict) -> bool:
    """True when ``out_dir`` already holds a complete sample made with ``params``; DataError when it is
    something else that must not be overwritten (a file, a folder that is not a sample)."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder; choose another output folder")
    marker = _read_marker(out_dir)
    if marker is None and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty and holds no sample catalog; choose an empty or new folder")
    return marker is not None and is_sample_complete(out_dir) and {k: marker.get(k) for k in params} == params


def _render_all(tmp: Path, items: list[Product], size: int, wild_per_product: int, seed: int,
                progress: Callable[[int, int], None] | None) -> None:
    """Every product's catalogue photo and wild views as JPEGs under ``tmp``, on every core."""
    total = len(items) * (1 + wild_per_product)
    done = 0

    def render(product: Product) -> None:
        folder = tmp / "images" / product.product_id
        folder.mkdir(parents=True)
        images = [render_catalog(product, size, seed)]
        images += [render_wild(product, size, seed, k) for k in range(wild_per_product)]
        for row, image in zip(_catalog_rows(product, wild_per_product), images):
            image.save(tmp / row["image"], format="JPEG", quality=JPEG_QUALITY)

    # Every image draws from its own (seed, product, view) generator, so rendering products in
    # parallel gives the same bytes (checked against a sequential render); Pillow's filters and
    # encoders release the GIL, so the app's first start, which renders this catalogue, uses every core.
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(render, items):
            for _ in range(1 + wild_per_product):
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        # A stop (an exception from progress, Ctrl-C) must not wait for the products not started yet.
        pool.shutdown(wait=True, cancel_futures=True)
