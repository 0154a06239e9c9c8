"""Instance-level triplets for a catalogue without labels.

With no product or class labels, the only pairs known to show the same product are two views of one photo.
So each photo becomes its own product: a few augmented views of it (crop, horizontal flip, small rotation,
light brightness/contrast changes) are written as JPEGs, and triplets take the positive from the query's own
photo and views, the negative from another photo. This teaches invariance to framing and lighting, not
"same product, other photo": the registry marks such datasets ``kind=instance`` and their catalog rows
carry ``augmented_from`` (:data:`mildnet.data.catalog.AUGMENTED_COLUMN`) so the app can say so and keep the
views out of search results.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from mildnet.data.catalog import AUGMENTED_COLUMN
from mildnet.data.images import NAME_MAX_BYTES, decode_workers, load_image
from mildnet.errors import ImageError

PHOTOS_DIR = "photos"
VIEWS_DIR = "views"
DEFAULT_VIEWS = 2
# Models see 224 px or less: larger views would only cost disk, encoding and decoding time.
MAX_VIEW_SIDE = 320
_FILL = (255, 255, 255)  # corners uncovered by the rotation: white, the usual catalogue background


def view_name(image: str, k: int) -> str:
    """Where view ``k`` of ``image`` lives, relative to the dataset's image root."""
    folder, _, base = image.rpartition("/")
    leaf = f"{base}.v{k}.jpg"
    if len(leaf.encode("utf-8")) > NAME_MAX_BYTES:
        # A photo name near the file system's 255-byte limit leaves no room for the suffix: keep its start and
        # tell it apart from its neighbours by a hash of the whole name.
        start = base.encode("utf-8")[:200].decode("utf-8", "ignore")
        leaf = f"{start}-{zlib.crc32(base.encode('utf-8')):08x}.v{k}.jpg"
    return f"{VIEWS_DIR}/{folder + '/' if folder else ''}{leaf}"


def photo_name(image: str) -> str:
    return f"{PHOTOS_DIR}/{image}"


def augment(photo: Image.Image, rng: np.random.Generator, max_side: int | None = MAX_VIEW_SIDE) -> Image.Image:
    """One random view: 65-90% crop, rotation within +-12 degrees, flip half the time, +-15% brightness/contrast;
    at most ``max_side`` pixels on its longer side."""
    w, h = photo.size
    scale = rng.uniform(0.65, 0.9)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = photo.crop((x, y, x + cw, y + ch))
    if max_side:
        # Shrinking before the rotation and colour changes makes them several times cheaper.
        view.thumbnail((max_side, max_side))
    view = view.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, fillcolor=_FILL)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.85, 1.15)))
    return ImageEnhance.Contrast(view).enhance(float(rng.uniform(0.85, 1.15)))


def _rng_for(image: str, seed: int) -> np.random.Generator:
    # Seeded by the photo's name, not its position: a photo keeps its views when others are added or removed.
    return np.random.default_rng([seed, zlib.crc32(image.encode("utf-8"))])


def write_views(
    src_root: str | os.PathLike,
    images: Sequence[str],
    dest_root: str | os.PathLike,
    views: int = DEFAULT_VIEWS,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> dict[str, str]:
    """Write ``views`` augmented views of each ``src_root/image`` to ``dest_root/view_name(image, k)``.

    Returns ``{image: reason}`` for photos that could not be decoded (they get no views); the rest is
    deterministic for a given ``seed``. Decoding goes through :func:`load_image` (size limits, EXIF
    orientation), in threads: Pillow releases the GIL while decoding and encoding.
    """
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    src, dest = Path(src_root), Path(dest_root)

    def work(image: str) -> str | None:
        try:
            photo = Image.fromarray(load_image(src / image, None))
        except ImageError as exc:
            return str(exc)
        rng = _rng_for(image, seed)
        for k in range(views):
            view = augment(photo, rng)
            path = dest / view_name(image, k)
            path.parent.mkdir(parents=True, exist_ok=True)
            view.save(path, format="JPEG", quality=85)
        return None

    unreadable: dict[str, str] = {}
    total = len(images)
    with ThreadPoolExecutor(max_workers=workers or decode_workers()) as pool:
        for done, (image, reason) in enumerate(zip(images, pool.map(work, images)), start=1):
            if reason is not None:
                unreadable[image] = reason
            if progress is not None:
                progress(done, total)
    return unreadable


def instance_catalog(catalog: pd.DataFrame, views: int = DEFAULT_VIEWS,
                     leave_out: Sequence[str] = ()) -> pd.DataFrame:
    """The catalog of an instance-level dataset: each photo under ``photos/`` plus its views under ``views/``,
    all sharing the photo's product id, category and split; the views name their photo in ``augmented_from``.

    ``catalog`` has one row per photo (image relative to the user's folder; product ids unique per photo);
    photos in ``leave_out`` (unreadable) are dropped, since a triplet naming them would stop training.
    """
    skip = set(leave_out)
    rows = []
    for record in catalog.to_dict("records"):
        if record["image"] in skip:
            continue
        photo = photo_name(record["image"])
        rows.append({**record, "image": photo, AUGMENTED_COLUMN: ""})
        rows.extend({**record, "image": view_name(record["image"], k), AUGMENTED_COLUMN: photo} for k in range(views))
    columns = list(catalog.columns) + [AUGMENTED_COLUMN]
    return pd.DataFrame(rows, columns=columns)
