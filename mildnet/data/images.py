"""Image decoding shared by training, evaluation, embedding and search.

Every pixel a model sees goes through :func:`load_image`: embedding calls it in a thread pool
(:func:`decode_batches`), training's ``tf.data`` pipeline through ``tf.numpy_function``, and an upload in the
app on raw bytes (:func:`load_image_and_preview`). One decoder means training and search see identical pixels,
and Pillow handles formats TensorFlow's decoders do not (CMYK JPEG, palette PNG with transparency, WebP, EXIF
orientation, the first frame of a GIF).
"""

from __future__ import annotations

import io
import os
import unicodedata
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mildnet.errors import DataError, ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
NAME_MAX_BYTES = 255  # one file name on ext4, xfs, btrfs, APFS and NTFS (in UTF-16 units there)

# An upload larger than this is refused before decoding: a 20 MB file or a 50 Mpx "decompression
# bomb" would stall the app for every user.
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
# Formats other than JPEG are decoded at full size (JPEG decodes at 1/2-1/8 scale for the model): a 161 kB PNG of
# 7060x7060 px took 423 MB to decode and convert. 16 Mpx (4000x4000) bounds that near 150 MB.
MAX_FULL_DECODE_PIXELS = 16_000_000

# Transparent areas become white, the usual background of catalog photos.
_BACKGROUND = (255, 255, 255)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

# Images per round of parallel decoding: progress and stop requests are checked between rounds.
_DECODE_ROUND = 64
# decode_batches' read-ahead: 256 MB holds 5 batches of 64 at 512 px, 27 at 224 px (it takes at most workers + 1).
_READ_AHEAD_BYTES = 256 * 2**20


# What decoding hostile bytes can raise. Pillow's format plugins raise whatever their parsers hit (OSError and
# SyntaxError by design, but also struct.error from a corrupt EXIF block, ValueError from a truncated PNG header,
# IndexError...): any of them means "not a readable image", never a crash of the job or the page.
_HOSTILE = Exception


def _describe(source: ImageSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"uploaded data ({len(source)} bytes)"
    return str(source)


def _open(source: ImageSource) -> Image.Image:
    name = _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("the uploaded file is empty")
        if len(data) > MAX_FILE_BYTES:
            raise ImageError(
                f"{name} is too large ({len(data) / 1e6:.1f} MB; at most {MAX_FILE_BYTES // 2**20} MB)"
            )
        fp: object = io.BytesIO(data)
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            # A named pipe, socket or device would block or stream forever once opened: never open one.
            if path.exists():
                raise ImageError(f"{path} is not a regular file (a pipe, socket or device?)")
            raise ImageError(f"image file not found: {path}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"{path} is too large (at most {MAX_FILE_BYTES // 2**20} MB)")
        fp = path
    try:
        image = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image in a format we read (JPEG, PNG, WebP, BMP or GIF; "
                         "HEIC and PDF are not)") from None
    except Image.DecompressionBombError:
        # Pillow refuses images far over its own pixel limit while opening, before our check below.
        raise ImageError(f"{name} has too many pixels (more than the {MAX_PIXELS // 1_000_000} Mpx limit)") from None
    except OSError as exc:
        raise ImageError(f"cannot open {name}: {exc}") from None
    except _HOSTILE as exc:
        raise ImageError(f"cannot open {name}: {type(exc).__name__}: {exc}") from None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise ImageError(
            f"{name} is {image.width}x{image.height} pixels, more than the {MAX_PIXELS // 1_000_000} Mpx limit"
        )
    if image.format != "JPEG" and image.width * image.height > MAX_FULL_DECODE_PIXELS:
        kind = image.format or "image"
        image.close()
        raise ImageError(f"{name} is a {kind} of {image.width}x{image.height} pixels; images other than JPEG may "
                         f"have at most {MAX_FULL_DECODE_PIXELS // 1_000_000} Mpx (save it smaller or as a JPEG)")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        # Palette images may carry transparency in info; RGBA keeps it for compositing.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_image(source: ImageSource, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file path or raw bytes into a uint8 RGB array of shape (H, W, 3).

    EXIF orientation is applied, the first frame of an animation is used, and any colour mode
    (greyscale, palette, RGBA, CMYK, 16-bit) becomes RGB. ``size`` (int for a square, or
    ``(width, height)``) resizes with an antialiasing filter. Raises :class:`ImageError` with a
    one-line reason for anything that is not a readable image.
    """
    target = _target(size)
    return np.asarray(_resized(_decode_rgb(source, target), target), dtype=np.uint8)


def load_image_and_preview(source: ImageSource, size: int, preview_px: int) -> tuple[np.ndarray, np.ndarray]:
    """One decode, two results: exactly ``load_image(source, size)``, and an RGB preview of at most
    ``preview_px`` a side for display.

    The preview comes from the same decode, so a large JPEG's preview is only as sharp as the reduced-scale
    decode the model input needs (at least ``size`` px a side): decoding it sharper would change the model's
    pixels, and an uploaded catalogue photo would no longer find itself with score 1.
    """
    target = _target(size)
    image = _decode_rgb(source, target)
    pixels = _resized(image, target)
    preview = image.copy()
    preview.thumbnail((preview_px, preview_px))
    return np.asarray(pixels, dtype=np.uint8), np.asarray(preview, dtype=np.uint8)


def _resized(image: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """The model's input: one bilinear (antialiased) resize, so catalogue and upload pixels agree exactly."""
    return image if target is None or image.size == target else image.resize(target, Image.Resampling.BILINEAR)


def _target(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    target = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if min(target) < 1:
        raise ImageError(f"image size must be positive, got {size}")
    return target


def _decode_rgb(source: ImageSource, target: tuple[int, int] | None) -> Image.Image:
    """The decoded, upright RGB image, JPEGs at the smallest 1/2-1/8 scale still covering ``target``."""
    original = _open(source)
    image = original
    name = _describe(source)
    try:
        image.seek(0)
        if target is not None and image.format == "JPEG":
            # Let the JPEG decoder scale down by 2, 4 or 8 while decoding (never below the target, either way
            # round, so EXIF rotation cannot leave it short): a 12 Mpx phone photo decodes ~20x faster, a
            # 400x533 catalogue photo 2x; the resize then starts nearer its target.
            image.draft(image.mode, (max(target), max(target)))
        image.load()
        try:
            image = ImageOps.exif_transpose(image)
        except _HOSTILE:
            pass  # a corrupt EXIF block (Pillow fails re-packing it): the pixels are fine, keep them unrotated
        image = _to_rgb(image)
        # A copy when nothing above made one: the pixels must outlive the file handle closed below.
        return image.copy() if image is original else image
    except _HOSTILE as exc:
        raise ImageError(f"{name} is damaged or truncated ({exc})") from None
    finally:
        original.close()  # the file handle, not only at garbage collection (thousands per epoch)


def verify_image(path: str | os.PathLike) -> str | None:
    """``None`` if :func:`load_image` will decode ``path``, else the one-line reason it will not.

    The same gate as the loader (regular file, size and pixel limits), then a decode of the whole
    compressed stream: a header check alone passes truncated JPEGs that training then fails on. JPEGs
    decode in draft mode (1/8 scale, the DCT still reads every byte), so a check costs ~1 ms a photo.
    """
    try:
        image = _open(path)
    except ImageError as exc:
        return str(exc)
    try:
        if image.format == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except _HOSTILE as exc:
        return f"{path} is damaged or truncated ({exc})"
    finally:
        image.close()
    return None


def list_images(root: str | os.PathLike, left_out: dict[str, str] | None = None) -> list[str]:
    """Image files under ``root``, as sorted '/'-separated paths relative to it (hidden files and folders
    skipped; folder links not followed).

    Names a catalogue file cannot keep as they are (:func:`name_problem`) and entries that are not regular
    files (a pipe named x.jpg would block a reader) are skipped; ``left_out``, when given, receives each of
    them with the reason."""
    root = Path(root)
    found = []
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # as os.walk does: an unreadable sub-folder holds nothing we can use
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), name + "/"))
                continue
            if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            problem = name_problem(name)
            try:
                if problem is None and not entry.is_file():  # follows a file link, as opening it would
                    problem = "not a regular file (a pipe, socket, device or broken link)"
            except OSError as exc:
                problem = f"cannot be read ({exc.strerror or exc})"
            if problem is None:
                found.append(name)
            elif left_out is not None:
                left_out[name] = problem
    return sorted(found)


def name_problem(name: str) -> str | None:
    """Why a photo's '/'-separated relative path cannot be kept verbatim in a catalogue or triplet CSV (whose
    readers trim cells and read backslashes as folder separators), or None."""
    # isprintable() is False for every control and line/paragraph separator (and for rarer characters that are
    # fine here): the usual all-printable name skips the per-character check of a folder listing (hot: the app
    # re-lists a followed folder every few seconds).
    if not name.isprintable() and any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return "its name holds a line break or another control character: rename it"
    if any(part != part.strip() for part in name.split("/")):
        return "its name starts or ends with a space: rename it"
    if "\\" in name:
        return "its name holds a backslash, which catalogue files read as a folder separator: rename it"
    return None


def unsafe_links(root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(link, why)`` for every symbolic link under ``root`` (hidden ones aside, as :func:`list_images`
    skips them) that a reader or a copy following it would take out of ``root``, to nothing, or round a
    loop (a folder link back to one of its own parents copies for ever)."""
    root = Path(root).resolve()
    found = []
    # os.walk does not follow folder links, so every dirpath here is a real folder under root.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for entry in [*dirnames, *filenames]:
            path = here / entry
            if entry.startswith(".") or not path.is_symlink():
                continue
            name = path.relative_to(root).as_posix()
            try:
                target = path.resolve(strict=True)
            except FileNotFoundError:
                found.append((name, "points to nothing"))
                continue
            except (RuntimeError, OSError):  # RuntimeError up to Python 3.12, OSError(ELOOP) after
                found.append((name, "is a loop of links"))
                continue
            if not target.is_relative_to(root):
                # The target stays unnamed: on a shared server it would reveal another folder's layout.
                found.append((name, "leads outside the folder"))
            elif target.is_dir() and here.is_relative_to(target):
                found.append((name, f"leads back to its own parent {target.relative_to(root).as_posix() or '.'}"))
    return sorted(found)


def refuse_unsafe_links(root: str | os.PathLike, hint: str = "copy the images in, or give the folder that "
                        "holds them") -> None:
    """Raise DataError listing the first few :func:`unsafe_links` under ``root``, if any."""
    unsafe = unsafe_links(root)
    if not unsafe:
        return
    shown = "; ".join(f"{link} {why}" for link, why in unsafe[:3])
    more = f"; and {len(unsafe) - 3} more" if len(unsafe) > 3 else ""
    raise DataError(f"{root} holds links that cannot be followed safely ({shown}{more}): images must stay inside "
                    f"the folder you give; {hint}")


# --- tf.data -------------------------------------------------------------------------------------


def tf_load_image(path, size: int):
    """TensorFlow op: a scalar string path tensor -> float32 (size, size, 3) RGB in [0, 255].

    Uses :func:`load_image` under ``tf.numpy_function`` so the pipeline decodes exactly like an upload.
    """
    import tensorflow as tf

    def _decode(raw_path: bytes) -> np.ndarray:
        return load_image(raw_path.decode("utf-8"), size)

    image = tf.numpy_function(_decode, [path], tf.uint8, stateful=False)
    image.set_shape((size, size, 3))
    return tf.cast(image, tf.float32)


def pipeline_error_reason(exc: Exception) -> str:
    """The ImageError message buried in a tf.data error, or the error's first line."""
    text = getattr(exc, "message", None) or str(exc)
    for line in text.splitlines():
        if "ImageError" in line:
            return line.split("ImageError:", 1)[-1].strip()
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__


# --- decoding many images ------------------------------------------------------------------------


def decode_workers() -> int:
    """Threads for parallel decoding: one per core. Pillow releases the GIL while it decodes and
    resizes, so threads scale without the start-up cost of processes."""
    return max(1, min(8, os.cpu_count() or 1))


def map_images(
    image_root: str | os.PathLike,
    rel_paths: Sequence[str],
    work: Callable[[int, Path], None],
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Calls ``work(i, image_root / rel_paths[i])`` for every image, in a thread pool.

    Missing files fail first, all named in one :class:`DataError`; an unreadable one raises the
    ``ImageError`` of ``load_image`` (a DataError naming the file). Returns False when
    ``should_stop()`` turned true between two rounds (the remaining images were not processed).
    """
    root = Path(image_root)
    missing = [p for p in rel_paths if not (root / p).is_file()]
    if missing:
        raise DataError(missing_message(missing, len(rel_paths), root))
    total = len(rel_paths)
    with ThreadPoolExecutor(max_workers=workers or decode_workers()) as pool:
        for start in range(0, total, _DECODE_ROUND):
            if should_stop is not None and should_stop():
                return False
            stop = min(total, start + _DECODE_ROUND)
            # list() re-raises the first worker exception here, in the caller's thread.
            list(pool.map(lambda i: work(i, root / rel_paths[i]), range(start, stop)))
            if progress is not None:
                progress(stop, total)
    return True


@dataclass(frozen=True)
class DecodedBatch:
    """One batch from :func:`decode_batches`: ``pixels[i]`` is ``load_image(paths[i], size)``; the batch's
    images that did not decode are in ``failed`` ({path: one-line reason}), not in ``paths``."""

    paths: list[str]
    pixels: np.ndarray  # (len(paths), size, size, 3) uint8
    failed: dict[str, str]


def _decode_batch(paths: Sequence[str], size: int) -> DecodedBatch:
    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    good: list[str] = []
    failed: dict[str, str] = {}
    for path in paths:
        try:
            pixels[len(good)] = load_image(path, size)
        except ImageError as exc:
            failed[path] = str(exc)
            continue
        good.append(path)
    return DecodedBatch(good, pixels[: len(good)], failed)


def decode_batches(
    paths: Sequence[str | os.PathLike], size: int, batch_size: int = 64, workers: int | None = None
) -> Iterator[DecodedBatch]:
    """``load_image`` over ``paths`` in batches of ``batch_size``, in order, decoded ahead in a thread pool.

    Each worker decodes a whole batch while the caller runs the model on an earlier one. Embedding used a
    ``tf.data`` pipeline of :func:`tf_load_image` before: it spent ~0.3 CPU-ms a photo on its own threads and
    GIL hand-offs (a third of the decoding itself), and stalled on one core in about one call in three on the
    2-core machine, taking twice as long; decoding alone, it ran at 0.4x of these batches. A bad image does
    not stop the batches: it is reported in its batch's ``failed``. At most ~256 MB of pixels are in flight.
    """
    paths = [os.fspath(p) for p in paths]
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    in_flight = max(1, min((workers or decode_workers()) + 1, _READ_AHEAD_BYTES // decoded_bytes(batch_size, size)))
    return _decoded_in_order(chunks, size, in_flight)


def _decoded_in_order(chunks: list[list[str]], size: int, in_flight: int) -> Iterator[DecodedBatch]:
    # One worker fewer than batches in flight (when there are two or more), so a worker never waits for the
    # caller to take a batch.
    pool = ThreadPoolExecutor(max_workers=max(1, min(in_flight - 1, len(chunks))))
    try:
        pending = deque(pool.submit(_decode_batch, chunk, size) for chunk in chunks[:in_flight])
        queued = len(pending)
        while pending:
            batch = pending.popleft().result()
            if queued < len(chunks):
                pending.append(pool.submit(_decode_batch, chunks[queued], size))
                queued += 1
            yield batch
    finally:
        # The caller may stop early (an error, a closed generator): drop the batches nobody will take.
        pool.shutdown(wait=True, cancel_futures=True)


def decoded_bytes(n_images: int, size: int) -> int:
    """Memory taken by ``n_images`` decoded ``size`` px RGB images (uint8)."""
    return int(n_images) * int(size) * int(size) * 3


@dataclass
class ImageCache:
    """Decoded images in memory: ``pixels[i]`` is ``load_image(image_root / paths[i], size)``.

    Decoding a full-size JPEG costs far more than looking it up, and a training run reads every
    image once per epoch per triplet that names it; keeping the uint8 pixels (not float32: 4x less
    memory) makes each image cost one decode per run. The pixels are exactly what the streaming
    pipeline would decode, so a cached and a streamed run see identical inputs.
    """

    paths: list[str]
    size: int
    pixels: np.ndarray  # (len(paths), size, size, 3) uint8
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.pixels.dtype != np.uint8 or self.pixels.shape != (len(self.paths), self.size, self.size, 3):
            raise ValueError(f"{len(self.paths)} paths at {self.size} px but pixels "
                             f"{self.pixels.dtype} {self.pixels.shape}")
        self._index = {p: i for i, p in enumerate(self.paths)}

    @classmethod
    def decode(
        cls,
        image_root: str | os.PathLike,
        rel_paths: Iterable[str],
        size: int,
        workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> "ImageCache | None":
        """Decodes each distinct image of ``rel_paths`` once, in parallel; None if ``should_stop`` fired."""
        unique = list(dict.fromkeys(rel_paths))
        pixels = np.empty((len(unique), size, size, 3), dtype=np.uint8)

        def work(i: int, path: Path) -> None:
            pixels[i] = load_image(path, size)

        if not map_images(image_root, unique, work, workers, progress, should_stop):
            return None
        return cls(unique, size, pixels)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: str) -> bool:
        return path in self._index

    def rows(self, paths: Iterable[str]) -> np.ndarray:
        """Row numbers of ``paths`` in ``pixels`` (a path may repeat); KeyError for an unknown one."""
        try:
            return np.array([self._index[p] for p in paths], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"image {exc.args[0]!r} is not in the cache") from None


def missing_message(missing: Sequence[str], total: int, root: Path, examples: int = 5) -> str:
    shown = ", ".join(missing[:examples]) + (", ..." if len(missing) > examples else "")
    return f"{len(missing)} of {total} images are missing under {root}: {shown}"
