import io

import numpy as np
import pytest
from PIL import Image

from mildnet.data import images
from mildnet.data.images import decode_batches, list_images, load_image
from mildnet.errors import ImageError


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _half_red_half_blue(width=40, height=20) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_formats_decode_to_rgb(fmt):
    data = _encode(_half_red_half_blue(), fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    array = load_image(data)
    assert array.shape == (20, 40, 3) and array.dtype == np.uint8
    left, right = array[10, 5].astype(int), array[10, 35].astype(int)
    assert left[0] > 200 and left[2] < 60, left
    assert right[2] > 200 and right[0] < 60, right


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    array = load_image(buffer.getvalue())
    assert array[8, 8, 0] > 200 and array[8, 8, 1] < 60


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (10, 10), 128),
        Image.new("CMYK", (10, 10), (0, 255, 255, 0)),  # red in CMYK
        Image.new("RGBA", (10, 10), (0, 0, 0, 0)),  # fully transparent -> white background
        Image.new("P", (10, 10), 3),
        Image.new("I;16", (10, 10), 1000),
    ],
    ids=["L", "CMYK", "RGBA", "P", "I16"],
)
def test_colour_modes_become_rgb(image):
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    array = load_image(_encode(image, fmt))
    assert array.shape == (10, 10, 3)
    if image.mode == "RGBA":
        assert (array == 255).all()
    if image.mode == "CMYK":
        assert array[5, 5, 0] > 200 and array[5, 5, 1] < 60
    if image.mode == "L":
        assert abs(int(array[5, 5, 0]) - 128) <= 1 and (array[..., 0] == array[..., 2]).all()


def test_exif_orientation_is_applied():
    image = _half_red_half_blue(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    array = load_image(_encode(image, "JPEG", exif=exif, quality=95))
    assert array.shape == (40, 20, 3)
    # The left (red) half ends up on top after a clockwise rotation.
    assert array[5, 10, 0] > 200 and array[35, 10, 2] > 200


def test_a_corrupt_exif_block_is_ignored_not_fatal():
    # Tag 0x010f (Make, ASCII) renamed 0x0128 (ResolutionUnit, a SHORT): Pillow's exif_transpose fails re-packing
    # it with struct.error (found by fuzzing). The pixels are fine: decoded, left unrotated.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Cam"
    data = _encode(_half_red_half_blue(40, 20), "JPEG", exif=exif, quality=95)
    assert data.count(b"\x01\x0f\x00\x02") == 1
    data = data.replace(b"\x01\x0f\x00\x02", b"\x01\x28\x00\x02")
    assert load_image(data).shape == (20, 40, 3)
    assert load_image(data, 16).shape == (16, 16, 3)


def test_resize_and_path_input(tmp_path):
    path = tmp_path / "x.png"
    _half_red_half_blue().save(path)
    assert load_image(path, 16).shape == (16, 16, 3)
    assert load_image(str(path), (30, 12)).shape == (12, 30, 3)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        (_encode(_half_red_half_blue(200, 200), "PNG")[:200], "damaged or truncated"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_uploads_raise_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data, 32)


def test_huge_images_are_refused(monkeypatch):
    data = _encode(Image.new("RGB", (300, 300)), "PNG")
    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 300 - 1)
    with pytest.raises(ImageError, match="Mpx limit"):
        load_image(data)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", len(data) - 1)
    with pytest.raises(ImageError, match="too large"):
        load_image(data)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_decode_batches_keeps_order_and_reports_bad_images_in_their_batch(labelled_folder, tmp_path):
    paths = [str(labelled_folder / name) for name in list_images(labelled_folder)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    paths.insert(6, str(broken))
    paths.append(str(tmp_path / "gone.jpg"))
    batches = list(decode_batches(paths, 24, batch_size=5, workers=2))
    assert [len(b.paths) for b in batches] == [5, 4, 3]
    assert list(batches[1].failed) == [str(broken)] and "not an image" in batches[1].failed[str(broken)]
    assert "not found" in batches[2].failed[str(tmp_path / "gone.jpg")]
    assert [p for b in batches for p in b.paths] == [p for p in paths if "broken" not in p and "gone" not in p]
    pixels = np.concatenate([b.pixels for b in batches])
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, np.stack([load_image(p, 24) for b in batches for p in b.paths]))


def test_decode_batches_can_be_left_early_and_checks_its_arguments(labelled_folder):
    paths = [labelled_folder / name for name in list_images(labelled_folder)]
    batches = decode_batches(paths, 16, batch_size=2, workers=2)
    assert len(next(batches).paths) == 2
    batches.close()  # the pool is shut down, queued batches dropped; nothing hangs
    assert list(decode_batches([], 16)) == []
    with pytest.raises(ValueError, match="batch size"):
        decode_batches(paths, 16, batch_size=0)  # checked at the call, not at the first batch
    with pytest.raises(ValueError, match="image size"):
        decode_batches(paths, 4)


def test_decode_batches_reads_ahead_within_its_memory_cap(labelled_folder, monkeypatch):
    paths = [str(labelled_folder / name) for name in list_images(labelled_folder)]
    import threading
    import time

    running, most = [0], [0]
    lock = threading.Lock()
    real = images._decode_batch

    def slow_decode(chunk, size):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # long enough for a second worker to start, were one allowed
        try:
            return real(chunk, size)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "_decode_batch", slow_decode)
    assert [p for b in decode_batches(paths, 16, batch_size=4, workers=3) for p in b.paths] == paths
    assert most[0] == 3  # uncapped: all three batches decode at once
    most[0] = 0
    monkeypatch.setattr(images, "_READ_AHEAD_BYTES", 1)  # less than one batch: one batch at a time
    assert [p for b in decode_batches(paths, 16, batch_size=4, workers=3) for p in b.paths] == paths
    assert most[0] == 1


def test_list_images_ignores_other_files(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.JPG", format="JPEG")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert list_images(tmp_path) == ["a/x.JPG"]


def test_decompression_bomb_is_an_image_error(monkeypatch):
    # Pillow itself raises DecompressionBombError at open() for images over twice its limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(_encode(Image.new("RGB", (40, 40)), "PNG"))
