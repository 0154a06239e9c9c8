"""Property-based tests (hypothesis) for the three places hostile input enters first: the triplet/CSV reader,
the path confinement of image names and archive members, and the image decoder (issue 11).

Examples are kept small and few (200 per property, no deadline: the 2 shared CI cores stall at random), so
the whole file runs in seconds; hypothesis replays any failure it found from its local database first."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mildnet.data.fetch import _unsafe_reason as member_unsafe_reason
from mildnet.data.images import load_image, verify_image
from mildnet.data.triplets import COLUMNS, parse_triplets, unsafe_reason
from mildnet.errors import ImageError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that matter to CSV parsing and to path handling, plus any text at all: hypothesis shrinks
# failures towards the interesting ones.
_SPECIAL = st.sampled_from(list(",\"\n\r\t /\\.:\x00~ ") + ["..", "../", "..\\", "C:", "//", "\ufeff", "é"])
_NAME_CHARS = st.one_of(_SPECIAL, st.characters(codec="utf-8"))
NAMES = st.lists(_NAME_CHARS, max_size=12).map("".join)
ROOT = Path("/srv/catalogue/images")


def _confined(root: Path, name: str) -> bool:
    """Whether root/name, normalised as the OS would resolve it (no symlinks), stays under root."""
    joined = os.path.normpath(os.path.join(root, name))
    return os.path.commonpath([joined, str(root)]) == str(root)


# --- the triplet/CSV reader ---------------------------------------------------------------------------------


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


@FAST
@given(st.one_of(st.text(max_size=400), st.lists(st.lists(NAMES, max_size=5), max_size=8).map(_csv_text)))
@example('a.jpg,b.jpg,"c.jpg\nd.jpg"\n' + "x" * 200_000 + ",b,c\n\x00,a,b\n")
@example('"unclosed,a,b\n')
def test_the_triplet_reader_never_raises_and_returns_only_safe_rows(text):
    parsed = parse_triplets(text, name="t.csv")
    n_lines = max(1, len(text.splitlines()) + 1)
    for query, positive, negative, line in parsed.triplets.itertuples(index=False):
        for cell in (query, positive, negative):
            assert cell and cell == cell.strip() and "\\" not in cell
            assert unsafe_reason(cell) is None and _confined(ROOT, cell)
        assert negative not in (query, positive)
        assert 1 <= line <= n_lines
    for problem in parsed.problems:
        assert problem.file == "t.csv" and isinstance(problem.line, int) and 1 <= problem.line <= n_lines
        assert problem.detail and "\n" not in problem.detail  # one line per problem in every report
    assert len(parsed.triplets) + len(parsed.problems) <= parsed.n_rows


_PLAIN = st.text(st.characters(categories=("L", "N"), include_characters="_-."), min_size=1, max_size=10)
SAFE_NAMES = st.lists(_PLAIN, min_size=1, max_size=3).map("/".join).filter(lambda n: unsafe_reason(n) is None)


@FAST
@given(st.lists(st.lists(SAFE_NAMES, min_size=3, max_size=3, unique=True), max_size=12))
def test_well_formed_rows_come_back_exactly_in_order(rows):
    assume([cell.lower() for cell in rows[0]] != list(COLUMNS) if rows else True)
    parsed = parse_triplets(_csv_text(rows), name="t.csv")
    unique = list(dict.fromkeys(map(tuple, rows)))  # a repeated row is reported once as a duplicate
    assert [tuple(r) for r in parsed.triplets[list(COLUMNS)].itertuples(index=False)] == unique
    assert [p.kind for p in parsed.problems] == ["duplicate"] * (len(rows) - len(unique))


# --- path confinement ----------------------------------------------------------------------------------------


@FAST
@given(NAMES)
@example("a/../../b")
@example("..\\..\\etc\\passwd")
@example("C:\\Windows")
@example("/etc/passwd")
@example("\\\\server\\share")
def test_an_image_name_the_reader_accepts_stays_under_the_root(name):
    # The reader checks names after turning '\' into '/' (so training opens what was checked); both the
    # raw and the normalised name must be confined when accepted.
    for candidate in (name, name.replace("\\", "/")):
        if unsafe_reason(candidate) is None:
            assert _confined(ROOT, candidate), candidate


@FAST
@given(NAMES)
@example("a/../../b")
@example("..\\evil")
@example("C:/x")
@example("/abs")
def test_an_archive_member_the_extractor_accepts_stays_under_the_target(name):
    if member_unsafe_reason(name) is None:
        assert "\x00" not in name
        assert _confined(ROOT, name) and _confined(ROOT, name.replace("\\", "/")), name


@FAST
@given(NAMES)
def test_names_that_climb_out_are_always_refused(name):
    # The converse: anything that would leave the root is named as unsafe by both checks.
    posix = name.replace("\\", "/")
    if not _confined(ROOT, posix):
        assert unsafe_reason(name) is not None
        assert member_unsafe_reason(name) is not None


# --- the image decoder ---------------------------------------------------------------------------------------


def _encoded(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


_FORMATS = st.sampled_from([("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"),
                            ("PNG", "I;16"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "RGB")])


@st.composite
def image_bytes(draw) -> bytes:
    """Valid images of many formats and modes, then maybe cut, overwritten or extended: the files a real
    upload or a bad disk gives, which pure random bytes almost never reach (they fail at the magic number)."""
    fmt, mode = draw(_FORMATS)
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    data = bytearray(_encoded(fmt, mode, size, draw(st.integers(0, 2**16))))
    damage = draw(st.sampled_from(["none", "truncate", "flip", "append", "prefix"]))
    if damage == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    elif damage == "append":
        data += draw(st.binary(max_size=64))
    elif damage == "prefix":
        data[:0] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=2048), image_bytes())


def _decoded_or_refused(source, size=None):
    """load_image's outcome: the array, or the ImageError; anything else raised fails the test."""
    try:
        return load_image(source, size)
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return exc


@FAST
@given(ANY_BYTES, st.one_of(st.none(), st.integers(1, 40)))
def test_the_loader_returns_rgb_uint8_or_raises_image_error(data, size):
    result = _decoded_or_refused(data, size)
    if isinstance(result, np.ndarray):
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3
        assert result.shape[0] >= 1 and result.shape[1] >= 1
        if size is not None:
            assert result.shape[:2] == (size, size)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@FAST
@given(data=ANY_BYTES)
def test_the_check_agrees_with_the_loader(scratch, data):
    path = scratch / "photo.img"
    path.write_bytes(data)
    reason = verify_image(path)
    result = _decoded_or_refused(path)
    if isinstance(result, ImageError):
        assert reason is not None, f"verify_image passed a file load_image refuses: {result}"
    else:
        assert reason is None, f"verify_image refused a file load_image decodes: {reason}"
