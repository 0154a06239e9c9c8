"""The results of one query as a PNG grid (the CLI's ``search --plot``)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mildnet.errors import DataError, ImageError
from mildnet.search.searcher import Hit, check_positive_int

__all__ = ["plot_results"]


ImageSource = str | os.PathLike | np.ndarray
Loader = Callable[[str], Any]


def _to_display(image: Any) -> np.ndarray:
    """uint8/float image -> array matplotlib shows correctly (floats in [0, 255] per the package convention)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"cannot show an image of shape {arr.shape}; expected HxW or HxWx3")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("image contains NaN or infinity")
        scale = 255.0 if arr.size and arr.max() > 1.0 else 1.0
        arr = np.clip(arr / scale, 0.0, 1.0)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _open_file(path: Path, max_side: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))  # keeps the figure small and fast for big product photos
            return np.asarray(im)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from None


def _load(source: Any, images: Path | Loader | None, max_side: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return _to_display(source)
    if callable(images):
        return _to_display(images(str(source)))
    path = Path(source)
    if images is not None and not path.is_absolute():
        path = Path(images) / path
    return _to_display(_open_file(path, max_side))


def plot_results(
    query_image: ImageSource,
    hits: Sequence[Hit],
    images: str | os.PathLike | Loader | None,
    out_path: str | os.PathLike | io.IOBase,
    title: str | None = None,
    *,
    ncols: int | None = None,
    thumb_px: int = 256,
    dpi: int = 100,
) -> str | os.PathLike | io.IOBase:
    """Save a PNG grid: the query, then each hit with its rank and score.

    ``query_image``: an array (HxWx3, uint8 or float in [0, 255]) or a path. ``images`` says where hit
    images come from: a folder that relative ``hit.path`` values are resolved against, a ``loader(path)``
    returning an array, or None to open ``hit.path`` as given. ``out_path`` may also be a binary file object
    (e.g. ``io.BytesIO`` for a web page). A query image that cannot be read raises ImageError; an unreadable
    hit is drawn as a labelled blank tile, so one bad catalog file does not hide the other results.
    """
    # The object-oriented API with an Agg canvas: no pyplot, so no global backend switch or figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hits = list(hits)
    for h in hits:
        if not isinstance(h, Hit):
            raise DataError(f"hits must be Hit objects, got {type(h).__name__}")
    thumb_px = check_positive_int("thumb_px", thumb_px)
    panels = len(hits) + 1
    ncols = min(panels, 6) if ncols is None else check_positive_int("ncols", ncols)
    nrows = -(-panels // ncols)

    query = _load(query_image, None, thumb_px)
    fig = Figure(figsize=(2.2 * ncols, 2.5 * nrows + (0.4 if title else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()

    axes[0].imshow(query, cmap="gray" if query.ndim == 2 else None)
    axes[0].set_title("query", fontsize=9, fontweight="bold", color="tab:blue")
    for rank, (hit, ax) in enumerate(zip(hits, axes[1:]), start=1):
        label = f"#{rank}  {hit.score:.3f}\n{_short(hit.id)}"
        try:
            img = _load(hit.path, images, thumb_px)
        except ImageError as exc:
            ax.text(0.5, 0.5, "unreadable\n" + _short(str(exc), 40), ha="center", va="center", fontsize=7,
                    wrap=True, transform=ax.transAxes)
            ax.set_title(label, fontsize=8, color="tab:red")
            continue
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()

    if not isinstance(out_path, (str, os.PathLike)):
        fig.savefig(out_path, format="png", dpi=dpi)
        return out_path
    # Atomic: a temp file beside the target renamed into place, so a failed write never leaves a
    # truncated PNG (or destroys a previous good one); an unwritable path is a one-line DataError.
    target = Path(out_path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(21, "is a directory", str(target))
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, target)
    except OSError as exc:
        raise DataError(f"cannot write the plot to {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return out_path


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
