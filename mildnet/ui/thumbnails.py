"""Thumbnails for image grids, made once per image and kept on disk (no streamlit here).

A grid of 5-16 catalogue photos sent at full size is megabytes per page and slow to draw; a 384 px JPEG is a
few tens of kB. The file name is a hash of the source's path, size and modification time, so a replaced photo
gets a new thumbnail and nothing needs invalidating.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mildnet.ui import settings

SIZE = 384  # px on the longer side: sharp in a 5-column grid on a wide screen


def thumbnail(path: str | os.PathLike, size: int = SIZE) -> Path:
    """A cached JPEG thumbnail of ``path`` (the file itself when it is already small).

    Raises OSError (missing file) or ValueError (not a decodable image) with a short message."""
    path = Path(path)
    info = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}|{size}".encode()).hexdigest()
    folder = settings.thumbnails_dir()
    target = folder / key[:2] / f"{key}.jpg"
    if target.is_file():
        return target
    try:
        with Image.open(path) as image:
            if max(image.size) <= size and image.format in ("JPEG", "PNG", "WEBP"):
                return path  # already small and browser-friendly
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, several times faster
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size))
    except (UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image: {path.name}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    # Another session may write the same thumbnail at once: each writes its own temp file, the rename is atomic.
    handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            image.save(out, format="JPEG", quality=85)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
