"""The hostile-input matrix (issue 11): images, triplet CSVs, manifests, checkpoints, stores, archives, URLs and
model arguments, each a table of :class:`Case` rows (what is given, what must happen) that one test per table
runs, plus a few scenarios that need a whole training run. ``docs/make_reliability.py`` renders these tables
into docs/reliability.md, and ``test_the_reliability_doc_is_current`` fails when that file is stale."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mildnet.cli import main
from mildnet.data import manifest
from mildnet.data.fetch import download, extract
from mildnet.data.images import MAX_FILE_BYTES, load_image, verify_image
from mildnet.data.triplets import check_triplets, read_triplets
from mildnet.errors import DataError, DownloadError, ImageError, ModelError
from mildnet.training import TrainConfig, train


@dataclass(frozen=True)
class Case:
    """One row of the matrix: ``given`` and ``expected`` are the one-line description and behaviour that
    docs/reliability.md shows; ``check`` holds what the table's test asserts it with."""

    id: str
    given: str
    expected: str
    check: dict = field(default_factory=dict, compare=False)


def params(table: list[Case]) -> list:
    return [pytest.param(case, id=case.id, marks=[pytest.mark.redis] if case.check.get("redis") else [])
            for case in table]


def _jpeg(path: Path, colour=(200, 30, 30), size=32) -> Path:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i, colour in enumerate([(200, 30, 30)] * 3 + [(30, 30, 200)] * 3):
        _jpeg(root / f"{'rb'[i // 3]}{i}.jpg", colour)
    return root


def _within(seconds: float, fn, *args):
    """fn(*args) in a thread; fails (instead of hanging the suite) if it does not return in time."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the test thread below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} did not return within {seconds} s (blocked on a pipe?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


# --- named pipes and other non-regular files never block ------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_a_named_pipe_in_a_triplet_file_never_blocks_check_or_training(folder, tmp_path, capsys):
    os.mkfifo(folder / "f.jpg")
    triplets = _write(tmp_path / "t.csv", ["r0.jpg,r1.jpg,f.jpg", "r0.jpg,r2.jpg,b3.jpg"])
    assert "not a regular file" in _within(10, verify_image, folder / "f.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        _within(10, load_image, folder / "f.jpg")
    report = _within(20, check_triplets, folder, [triplets])
    assert report.bad_images == {"f.jpg"}
    assert _within(20, main, ["data", "check", "--images", str(folder), "--triplets", str(triplets)]) == 1
    assert "not a regular file" in capsys.readouterr().out
    config = TrainConfig(images=str(folder), triplets=str(triplets), out=str(tmp_path / "run"), model="tiny_cnn",
                         image_size=16, epochs=1, batch_size=2, val_fraction=0.0, skip_missing=True)
    result = _within(120, train, config)
    assert result.n_train_triplets == 1  # the pipe's triplet dropped, the other trained


# --- training meets an image the check refuses ------------------------------------------------------------


def test_training_skips_or_refuses_a_truncated_image_and_leaves_no_half_run(folder, tmp_path):
    data = (folder / "b5.jpg").read_bytes()
    (folder / "b5.jpg").write_bytes(data[: len(data) // 2])
    triplets = _write(tmp_path / "t.csv", ["r0.jpg,r1.jpg,b5.jpg", "r0.jpg,r2.jpg,b3.jpg", "b3.jpg,b4.jpg,r1.jpg"])
    base = dict(images=str(folder), triplets=str(triplets), model="tiny_cnn", image_size=16, epochs=1,
                batch_size=2, val_fraction=0.0)
    with pytest.raises(DataError, match="b5.jpg"):
        train(TrainConfig(out=str(tmp_path / "strict"), **base))
    assert not (tmp_path / "strict").exists()
    result = train(TrainConfig(out=str(tmp_path / "skip"), skip_missing=True, **base))
    assert result.n_train_triplets == 2
    # Without the pre-check the decoder meets the image mid-epoch: the run fails and leaves no folder
    # that would block the same command ("already holds a training run").
    with pytest.raises(DataError, match="b5.jpg"):
        train(TrainConfig(out=str(tmp_path / "late"), verify_images=False, **base))
    assert not (tmp_path / "late").exists()


# --- archives: an extracted folder gets normal modes -----------------------------------------------------


def test_an_extracted_archive_has_normal_modes(tmp_path, folder):
    import zipfile

    from mildnet.data.fetch import extract

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.iterdir():
            zf.write(path, f"photos/{path.name}")
    out = extract(archive, tmp_path / "out")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert sorted(p.name for p in (out / "photos").iterdir()) == sorted(p.name for p in folder.iterdir())


# Whole-run scenarios, listed for docs/reliability.md (the doc test checks that every test in this module is
# either one of these or runs a table).
SCENARIOS = [
    Case("test_a_named_pipe_in_a_triplet_file_never_blocks_check_or_training",
         "a triplet names a FIFO (named pipe) as an image",
         "load_image/verify_image refuse it unopened ('not a regular file'); data check exits 1 listing it; "
         "train --skip-missing drops its triplet and trains the rest"),
    Case("test_training_skips_or_refuses_a_truncated_image_and_leaves_no_half_run",
         "a triplet names a truncated JPEG",
         "train stops before epoch 1 naming the file and leaves no run folder; --skip-missing trains without it; "
         "without the pre-check the mid-epoch failure also leaves no folder"),
    Case("test_an_extracted_archive_has_normal_modes",
         "a well-formed zip of photos is imported",
         "extracted folder mode 0755 (not mkdtemp's 0700), every photo present"),
]


# --- hostile images: the upload path (bytes), the loader, the check, and data check ------------------------


def _truncated_jpeg(root: Path) -> Path:
    data = _jpeg(root / "whole.jpg", size=128).read_bytes()
    (root / "whole.jpg").unlink()
    return _bytes(root / "x.jpg", data[: len(data) // 2])


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _oversized(root: Path) -> Path:
    path = _jpeg(root / "x.jpg", size=32)
    with open(path, "ab") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # a valid JPEG padded past the 20 MB cap (sparse on disk)
    return path


def _png_of(root: Path, mode: str, size: tuple[int, int]) -> Path:
    Image.new(mode, size).save(root / "x.png")  # 1-bit pixels compress to a few kB whatever the size
    return root / "x.png"


def _fifo(root: Path) -> Path:
    os.mkfifo(root / "x.jpg")
    return root / "x.jpg"


def _folder_named_jpg(root: Path) -> Path:
    (root / "x.jpg").mkdir()
    return root / "x.jpg"


def _dangling_link(root: Path) -> Path:
    os.symlink(root / "gone.jpg", root / "x.jpg")
    return root / "x.jpg"


def _flipped_png(root: Path) -> Path:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(out, "PNG")
    data = bytearray(out.getvalue())
    data[-20:-12] = b"\xff" * 8  # inside the IDAT stream: zlib fails mid-decode
    return _bytes(root / "x.png", bytes(data))


def _short_png_header(root: Path) -> Path:
    out = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(out, "PNG")
    data = bytearray(out.getvalue())
    assert data[8:16] == b"\x00\x00\x00\rIHDR"
    data[11] = 12  # the IHDR chunk's length 13 -> 12: Pillow raises ValueError, not OSError, while opening
    return _bytes(root / "x.png", bytes(data))


IMAGES = [
    Case("empty", "a 0-byte .jpg", "ImageError 'not an image in a format we read'; check: unreadable",
         {"build": lambda r: _bytes(r / "x.jpg", b""), "match": "not an image", "check": "unreadable"}),
    Case("text", "a text file named .jpg", "ImageError 'not an image in a format we read'; check: unreadable",
         {"build": lambda r: _bytes(r / "x.jpg", b"hello, not a photo\n" * 20), "match": "not an image",
          "check": "unreadable"}),
    Case("jpeg-magic-then-garbage", "a JPEG signature followed by random bytes",
         "ImageError 'cannot open' or 'damaged'; check: unreadable",
         {"build": lambda r: _bytes(r / "x.jpg", b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(300)),
          "match": "cannot open|damaged", "check": "unreadable"}),
    Case("truncated-jpeg", "a JPEG cut in half (the header check alone passes it)",
         "ImageError 'damaged or truncated'; check: unreadable (same message)",
         {"build": _truncated_jpeg, "match": "damaged or truncated", "check": "unreadable"}),
    Case("corrupt-png-stream", "a PNG whose compressed pixel stream is overwritten",
         "ImageError 'damaged or truncated'; check: unreadable",
         {"build": _flipped_png, "match": "damaged or truncated|cannot open", "check": "unreadable"}),
    Case("png-short-header", "a PNG whose header chunk says 12 bytes instead of 13 (found by fuzzing)",
         "ImageError 'cannot open ... ValueError: Truncated IHDR chunk'; check: unreadable",
         {"build": _short_png_header, "match": "Truncated IHDR", "check": "unreadable"}),
    Case("over-20MB", "a valid JPEG padded to 20 MB + 1 byte",
         "ImageError 'too large', never decoded; check: unreadable",
         {"build": _oversized, "match": "too large", "check": "unreadable"}),
    Case("over-50Mpx", "a 8000x7000 (56 Mpx) 1-bit PNG of a few kB", "ImageError 'Mpx limit'; check: unreadable",
         {"build": lambda r: _png_of(r, "1", (8000, 7000)), "match": "Mpx limit", "check": "unreadable"}),
    Case("png-7060px", "a 7060x7060 (49.8 Mpx) PNG of a few kB: under the 50 Mpx limit, but decoded at full size",
         "ImageError 'at most 16 Mpx (save it smaller or as a JPEG)'; check: unreadable (was 423 MB to decode)",
         {"build": lambda r: _png_of(r, "1", (7060, 7060)), "match": "at most 16 Mpx", "check": "unreadable"}),
    Case("decompression-bomb", "a 15000x13000 (195 Mpx) PNG: over Pillow's own bomb limit",
         "ImageError 'too many pixels' (Pillow's DecompressionBombError translated); check: unreadable",
         {"build": lambda r: _png_of(r, "1", (15000, 13000)), "match": "too many pixels",
          "check": "unreadable"}),
    Case("fifo", "a named pipe named .jpg",
         "ImageError 'not a regular file', never opened (no hang); check: unreadable",
         {"build": _fifo, "match": "not a regular file", "check": "unreadable", "no_bytes": True}),
    Case("directory", "a folder named .jpg", "ImageError 'not a regular file'; check: missing (not a file)",
         {"build": _folder_named_jpg, "match": "not a regular file", "check": "missing", "no_bytes": True}),
    Case("dangling-symlink", "a symlink to a deleted file", "ImageError 'not found'; check: unreadable",
         {"build": _dangling_link, "match": "not found", "check": "unreadable", "no_bytes": True}),
]


@pytest.mark.parametrize("case", params(IMAGES))
def test_hostile_image(case, folder, tmp_path, capsys):
    if case.id == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("needs POSIX named pipes")
    path = case.check["build"](folder)
    with pytest.raises(ImageError, match=case.check["match"]) as refused:
        _within(30, load_image, path)
    assert "\n" not in str(refused.value)
    # The check gives the loader's own words, so data check and training never disagree about a file.
    assert _within(30, verify_image, path) == str(refused.value)
    if not case.check.get("no_bytes"):  # the Search page's upload path decodes bytes, not files
        with pytest.raises(ImageError) as uploaded:
            load_image(path.read_bytes(), 32)
        assert "\n" not in str(uploaded.value)
    triplets = _write(tmp_path / "t.csv", [f"r0.jpg,r1.jpg,{path.name}", "r0.jpg,r2.jpg,b3.jpg"])
    report = _within(60, check_triplets, folder, [triplets])
    assert path.name in report.bad_images
    assert case.check["check"] in {p.kind for p in report.problems}
    assert _within(60, main, ["data", "check", "--images", str(folder), "--triplets", str(triplets)]) == 1
    out, err = capsys.readouterr()
    assert path.name in out and "Traceback" not in out + err


# --- triplet CSVs: the reader and data check ----------------------------------------------------------------

GOOD_ROW = "r0.jpg,r1.jpg,b3.jpg"
CSVS = [
    Case("field-over-csv-limit", "a 200,000-character field (over the csv module's 131,072 limit)",
         "that row is 'malformed' (line 2, 'field limit'); the others are read; data check exits 1",
         {"text": f"{GOOD_ROW}\n{'x' * 200_000},r1.jpg,b3.jpg\nr0.jpg,r2.jpg,b4.jpg\n",
          "problems": [("malformed", 2)], "rows": 2, "exit": 1}),
    Case("two-columns", "a row with two cells", "'malformed' (expected 3 columns); data check exits 1",
         {"text": f"{GOOD_ROW}\nr0.jpg,r1.jpg\n", "problems": [("malformed", 2)], "rows": 1, "exit": 1}),
    Case("unclosed-quote", "a quote that never closes, swallowing the rest of the file",
         "one 'malformed' row at the quote's line; data check exits 1",
         {"text": f'{GOOD_ROW}\n"r0.jpg,r2.jpg,b4.jpg\n{GOOD_ROW}\n', "problems": [("malformed", 3)], "rows": 1,
          "exit": 1}),
    Case("header-row", "a spreadsheet header 'query,positive,negative' (with a UTF-8 BOM)",
         "skipped, not a triplet; data check exits 0",
         {"text": f"\ufeffquery,positive,negative\n{GOOD_ROW}\n", "problems": [], "rows": 1, "exit": 0}),
    Case("dotdot", "'../secret.jpg' as an image", "'unsafe' ('..' escapes the image root), never opened; exit 1",
         {"text": f"{GOOD_ROW}\n../secret.jpg,r1.jpg,b3.jpg\n", "problems": [("unsafe", 2)], "rows": 1, "exit": 1}),
    Case("absolute", "'/etc/passwd' as an image", "'unsafe' (absolute path); exit 1",
         {"text": f"{GOOD_ROW}\n/etc/passwd,r1.jpg,b3.jpg\n", "problems": [("unsafe", 2)], "rows": 1, "exit": 1}),
    Case("windows-paths", "'C:\\\\x.jpg' and '..\\\\x.jpg' as images", "both 'unsafe'; exit 1",
         {"text": f"{GOOD_ROW}\nC:\\x.jpg,r1.jpg,b3.jpg\n..\\x.jpg,r1.jpg,b3.jpg\n",
          "problems": [("unsafe", 2), ("unsafe", 3)], "rows": 1, "exit": 1}),
    Case("empty-cell", "a row with an empty image name", "'empty'; exit 1",
         {"text": f"{GOOD_ROW}\nr0.jpg,,b3.jpg\n", "problems": [("empty", 2)], "rows": 1, "exit": 1}),
    Case("duplicate", "the same triplet twice", "the second is 'duplicate' (names the first line); exit 1",
         {"text": f"{GOOD_ROW}\n{GOOD_ROW}\n", "problems": [("duplicate", 2)], "rows": 1, "exit": 1}),
    Case("degenerate", "a negative equal to the query", "'degenerate'; exit 1",
         {"text": f"{GOOD_ROW}\nr0.jpg,r1.jpg,r0.jpg\n", "problems": [("degenerate", 2)], "rows": 1, "exit": 1}),
    Case("positive-is-query", "a positive equal to the query", "'degenerate' (distance 0 teaches nothing); exit 1 "
         "(was passed by data check)",
         {"text": f"{GOOD_ROW}\nr0.jpg,r0.jpg,b3.jpg\n", "problems": [("degenerate", 2)], "rows": 1, "exit": 1}),
    Case("formula-escaped", "cells written by us for a spreadsheet: \"'=r0.jpg\" and \"'@b3.jpg\"",
         "read back as '=r0.jpg' and '@b3.jpg' (the apostrophe we add is taken off)",
         {"text": f"{GOOD_ROW}\n'=r0.jpg,r1.jpg,'@b3.jpg\n", "problems": [], "rows": 2, "exit": 1,
          "check": "missing"}),
    Case("nul-in-name", "a NUL byte inside an image name", "'unsafe' (no file system accepts it); exit 1",
         {"text": f"{GOOD_ROW}\nr0.jpg,r1.jpg,b\x003.jpg\n", "problems": [("unsafe", 2)], "rows": 1, "exit": 1}),
    Case("missing-image", "a triplet naming a file that is not there", "'missing'; exit 1",
         {"text": f"{GOOD_ROW}\nr0.jpg,r1.jpg,nope.jpg\n", "problems": [], "rows": 2, "exit": 1, "check": "missing"}),
    Case("empty-file", "a triplet file with no rows",
         "no problems when read; data check fails it ('no triplets'), exit 1",
         {"text": "\n", "problems": [], "rows": 0, "exit": 1, "check": "no triplets"}),
    Case("not-utf8", "a file of Latin-1 bytes", "one-line DataError 'cannot read triplet file'; exit 1",
         {"bytes": "r0.jpg,r1.jpg,caf\xe9.jpg\n".encode("latin-1"), "raises": "cannot read triplet file", "exit": 1}),
]


@pytest.mark.parametrize("case", params(CSVS))
def test_hostile_triplet_file(case, folder, tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes(case.check["bytes"] if "bytes" in case.check else case.check["text"].encode())
    if "raises" in case.check:
        with pytest.raises(DataError, match=case.check["raises"]):
            read_triplets(path)
    else:
        parsed = read_triplets(path)
        assert [(p.kind, p.line) for p in parsed.problems] == case.check["problems"]
        assert len(parsed.triplets) == case.check["rows"]
    assert main(["data", "check", "--images", str(folder), "--triplets", str(path)]) == case.check["exit"]
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if "check" in case.check:
        assert case.check["check"] in out


# --- manifests: load_manifest and `data fetch` reading it -------------------------------------------------------

_HEADER = ",".join(manifest.COLUMNS)


def _manifest_row(**values) -> str:
    return ",".join(values.get(c, "") for c in manifest.COLUMNS)


_GOOD_MANIFEST_ROW = _manifest_row(dataset="d", split="train", triplets="t.csv", image_root="images", source="local")
MANIFESTS = [
    Case("field-over-csv-limit", "a manifest cell of 200,000 characters", "one-line DataError 'unreadable CSV'",
         {"text": f"{_HEADER}\n{_GOOD_MANIFEST_ROW.replace('t.csv', 'x' * 200_000)}\n", "match": "unreadable CSV"}),
    Case("missing-column", "no image_root column", "DataError 'missing column'",
         {"text": "dataset,split,triplets,source\nd,train,t.csv,local\n", "match": "missing column"}),
    Case("unknown-source", "source 'ftp'", "DataError \"unknown source 'ftp'\"",
         {"text": f"{_HEADER}\n{_GOOD_MANIFEST_ROW.replace('local', 'ftp')}\n", "match": "unknown source 'ftp'"}),
    Case("duplicate-split", "the same dataset/split twice", "DataError 'duplicate d/train'",
         {"text": f"{_HEADER}\n{_GOOD_MANIFEST_ROW}\n{_GOOD_MANIFEST_ROW}\n", "match": "duplicate d/train"}),
    Case("bad-name", "a dataset name with a space", "DataError 'dataset name'",
         {"text": f"{_HEADER}\n{_GOOD_MANIFEST_ROW.replace('d,', 'bad name,', 1)}\n", "match": "dataset name"}),
    Case("empty", "a manifest with only a comment", "DataError 'empty manifest'",
         {"text": "# nothing\n", "match": "empty manifest"}),
    Case("not-utf8", "Latin-1 bytes", "one-line DataError naming the file",
         {"bytes": (_HEADER + "\n" + _GOOD_MANIFEST_ROW.replace("t.csv", "caf\xe9.csv") + "\n").encode("latin-1"),
          "match": "cannot read|manifest"}),
]


@pytest.mark.parametrize("case", params(MANIFESTS))
def test_hostile_manifest(case, tmp_path, monkeypatch, capsys):
    path = tmp_path / "manifest.csv"
    path.write_bytes(case.check["bytes"] if "bytes" in case.check else case.check["text"].encode())
    with pytest.raises(DataError, match=case.check["match"]) as refused:
        manifest.load_manifest(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    monkeypatch.setenv(manifest.ENV_VAR, str(path))
    monkeypatch.setenv("MILDNET_USER_MANIFEST", str(tmp_path / "user.csv"))
    assert main(["data", "fetch", "d", "--to", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err


# --- checkpoints: load_model (safe_mode) -------------------------------------------------------------------------


def _keras_file(path: Path, config: dict) -> Path:
    import json

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        archive.writestr("config.json", json.dumps(config))
    return path


def _tiny(path: Path) -> Path:
    from mildnet.models import build_model, save_model

    return save_model(build_model("tiny_cnn", input_size=16), path)


def _lambda_calling_os_system(path: Path) -> Path:
    import keras

    marker = str(path.parent / "pwned")
    inputs = keras.Input((4,))
    # The Lambda's bytecode is marshalled into config.json; loading it would run os.system.
    outputs = keras.layers.Lambda(lambda x: x + 0 * os.system(f"touch {marker}"))(inputs)
    keras.Model(inputs, outputs).save(path)
    Path(marker).unlink(missing_ok=True)  # building the model ran it once here; only loading must not
    return path


def _config_naming_os_system(path: Path) -> Path:
    marker = path.parent / "pwned"
    return _keras_file(path, {"module": "os", "class_name": "system", "config": f"touch {marker}",
                              "registered_name": "system"})


def _foreign(path: Path) -> Path:
    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(path)
    return path


def _truncated_keras(path: Path) -> Path:
    data = _tiny(path.with_name("good.keras")).read_bytes()
    return _bytes(path, data[:-200])


def _weights_bomb(path: Path) -> Path:
    """The shipped sample run's best.keras, its weights member swapped for 256 MB of zeros that deflate to
    ~250 kB (the probe's 2 MB file declared 2 GiB and took 4.9 GB of memory before failing)."""
    shipped = Path(__file__).resolve().parents[1] / "mildnet" / "pretrained" / "sample"
    with zipfile.ZipFile(shipped / "best.keras") as source, zipfile.ZipFile(path, "w") as bomb:
        for member in source.infolist():
            if member.filename.endswith(".h5"):
                info = zipfile.ZipInfo(member.filename)
                info.compress_type = zipfile.ZIP_DEFLATED
                with bomb.open(info, "w", force_zip64=True) as out:
                    block = bytes(1 << 20)
                    for _ in range(256):
                        out.write(block)
            else:
                bomb.writestr(member, source.read(member))
    (path.parent / "config.json").write_bytes((shipped / "config.json").read_bytes())
    return path


CHECKPOINTS = [
    Case("missing", "a path with no file", "ModelError 'not found'",
         {"build": lambda p: p, "match": "not found"}),
    Case("not-a-zip", "a .keras that is plain text", "ModelError 'not a Keras model file'",
         {"build": lambda p: _bytes(p, b"not a zip"), "match": "not a Keras model file"}),
    Case("truncated", "a real .keras with its last 200 bytes cut",
         "ModelError 'could not load model' / not a Keras file",
         {"build": _truncated_keras, "match": "could not load|not a Keras"}),
    Case("unknown-layer", "a config naming a layer class that does not exist", "ModelError 'could not load model'",
         {"build": lambda p: _keras_file(p, {"class_name": "NoSuchLayer", "config": {}}), "match": "could not load"}),
    Case("another-model", "a .keras of a different model (4 inputs -> 2 outputs, not an image embedder)",
         "ModelError 'not an embedding model'",
         {"build": _foreign, "match": "not an embedding model"}),
    Case("wrong-architecture", "a tiny_cnn checkpoint where mildnet_squeezenet is expected",
         "ModelError \"expected 'mildnet_squeezenet'\"",
         {"build": _tiny, "match": "expected 'mildnet_squeezenet'", "expected_name": "mildnet_squeezenet"}),
    Case("lambda-os-system", "a Lambda layer whose bytecode calls os.system",
         "refused by Keras safe_mode: ModelError, the command never runs",
         {"build": _lambda_calling_os_system, "match": "could not load|safe_mode|Lambda"}),
    Case("config-os-system", "a config whose module/class_name is os.system",
         "ModelError, os.system never called",
         {"build": _config_naming_os_system, "match": "could not load|not a Keras"}),
    Case("weights-zip-bomb", "a run's best.keras whose weights member inflates 1000x (256 MB from 250 kB)",
         "ModelError 'would unpack ... times' before Keras reads it; `search --run` exit 1, one line (was: 4.9 GB "
         "of memory for a 2 MB file)", {"build": _weights_bomb, "match": "times its packed size", "cli": True}),
]


@pytest.mark.parametrize("case", params(CHECKPOINTS))
def test_hostile_checkpoint(case, tmp_path, capsys):
    from mildnet.models import load_model

    path = case.check["build"](tmp_path / "best.keras")
    with pytest.raises(ModelError, match=case.check["match"]) as refused:
        load_model(path, expected_name=case.check.get("expected_name"))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "pwned").exists(), "loading a checkpoint ran a shell command"
    if case.check.get("cli"):  # the way a user meets it: a run folder given to search
        photo = _jpeg(tmp_path / "q.jpg")
        assert main(["search", "--run", str(tmp_path), "--image", str(photo), "--images", str(tmp_path),
                     "--store", str(tmp_path / "store")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1 and case.check["match"] in err, err


# --- run files: calibration.json, config.json and history.csv of a trained run ----------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A two-epoch tiny_cnn run on a small generated sample, copied by each case before it is damaged."""
    from mildnet.data.sample import generate_sample

    root = tmp_path_factory.mktemp("run-files")
    sample = generate_sample(root / "sample", products=12, size=32, wild_per_product=2, seed=0)
    assert main(["train", "--images", str(sample), "--triplets", str(sample / "train.csv"), "--val-triplets",
                 str(sample / "val.csv"), "--model", "tiny_cnn", "--weights", "none", "--image-size", "32",
                 "--epochs", "2", "--batch-size", "4", "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def _edit_json(name: str, edit):
    def damage(run: Path) -> None:
        path = run / name
        path.write_text(edit(path.read_text()))
    return damage


def _history_cell(value: str):
    def damage(run: Path) -> None:
        lines = (run / "history.csv").read_text().splitlines()
        header = lines[0].split(",")
        cells = lines[2].split(",")
        cells[header.index("val_accuracy")] = value
        lines[2] = ",".join(cells)
        (run / "history.csv").write_text("\n".join(lines) + "\n")
    return damage


def _n_positive(value: str):
    return _edit_json("calibration.json", lambda text: re.sub(r'"n_positive": *[^,}]+', f'"n_positive": {value}',
                                                              text))


_DEEP = "[" * 200_000 + "]" * 200_000

RUN_FILES = [
    Case("calibration-count-1e999", 'calibration.json with "n_positive": 1e999',
         "CalibrationError '... is damaged (bad value ... not finite)'; the app's Search page keeps working (was an "
         "OverflowError: 'Something went wrong', no results)",
         {"damage": _n_positive("1e999"), "load": "calibration", "match": "damaged.*not finite"}),
    Case("calibration-count-infinity", '"n_positive": Infinity', "the same",
         {"damage": _n_positive("Infinity"), "load": "calibration", "match": "damaged.*not finite"}),
    Case("calibration-count-negative", '"n_positive": -5', "CalibrationError 'not a count' (was accepted)",
         {"damage": _n_positive("-5"), "load": "calibration", "match": "damaged.*not a count"}),
    Case("calibration-deep-json", "calibration.json holding a 200,000-deep array",
         "CalibrationError 'not JSON: nested too deeply' (was a RecursionError traceback)",
         {"damage": _edit_json("calibration.json", lambda _: _DEEP), "load": "calibration",
          "match": "nested too deeply"}),
    Case("config-deep-json", "config.json holding a 200,000-deep array", "`train --resume` exit 1, one line "
         "'nested too deeply' (was RecursionError)",
         {"damage": _edit_json("config.json", lambda _: _DEEP), "exit": 1, "match": "nested too deeply"}),
    Case("config-seed-2-70", "config.json with seed 2**70",
         "`train --resume` exit 1, 'config.json is damaged: ... seed must be an integer from 0 to 2147483647' "
         "(was ValueError from numpy; `train --seed 4294967296`: exit 2)",
         {"damage": _edit_json("config.json", lambda text: re.sub(r'"seed": *\d+', f'"seed": {2**70}', text)),
          "exit": 1, "match": "seed must be an integer from 0 to 2147483647"}),
    Case("history-inf", "history.csv with inf as an epoch's val_accuracy", "`train --resume` exit 1, one line "
         "'history.csv is damaged: epoch 2's val_accuracy ... not a finite number', before any epoch is trained",
         {"damage": _history_cell("inf"), "exit": 1, "match": "epoch 2's val_accuracy"}),
    Case("history-not-a-number", "history.csv with 'abc' as an epoch's val_accuracy", "the same (was a TypeError "
         "after one more epoch was committed)", {"damage": _history_cell("abc"), "exit": 1,
                                                  "match": "epoch 2's val_accuracy"}),
]


@pytest.mark.parametrize("case", params(RUN_FILES))
def test_hostile_run_file(case, trained_run, tmp_path, capsys):
    import shutil

    from mildnet import calibration

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    case.check["damage"](run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    if case.check.get("load") == "calibration":
        with pytest.raises(calibration.CalibrationError, match=case.check["match"]) as refused:
            calibration.load(run)
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 400
        return
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3", "--quiet"]) == case.check["exit"]
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and re.search(case.check["match"], err), err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing committed


# --- stores: search against a damaged local store or a Redis set whose keys vanished ----------------------------


def _embedded(capsys, folder, store):
    assert main(["embed", "--model", "tiny_cnn", "--image-size", "16", "--images", str(folder), "--store", store]) == 0
    capsys.readouterr()


def _search(store, folder):
    return ["search", "--model", "tiny_cnn", "--image-size", "16", "--image", str(folder / "r0.jpg"),
            "--store", store]


def _version(store: Path) -> Path:
    (current,) = store.rglob("CURRENT")
    return current.parent / current.read_text().strip()


def _huge_header(store: Path) -> None:
    matrix = _version(store) / "vectors.npy"
    small = np.load(matrix)
    with open(matrix, "wb") as f:  # the same bytes behind a header that claims 4e12 rows
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (4_000_000_000_000, small.shape[1])})
        f.write(small.astype("<f4").tobytes())


def _truncate_vectors(store: Path) -> None:
    matrix = _version(store) / "vectors.npy"
    matrix.write_bytes(matrix.read_bytes()[:100])


def _pickled_vectors(store: Path) -> None:
    np.save(_version(store) / "vectors.npy", np.array(["a"] * 6, dtype=object), allow_pickle=True)


def _garbled_meta(store: Path) -> None:
    (_version(store) / "meta.json").write_text("{oops")


def _newer_format(store: Path) -> None:
    meta = _version(store) / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 99}))


def _redis_newer_format(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    (key,) = [k for k in client.keys("*") if k.endswith(b":meta")]
    client.set(key, json.dumps({**json.loads(client.get(key)), "format": 99}))


def _escaping_pointer(store: Path) -> None:
    (current,) = store.rglob("CURRENT")
    current.write_text("../../etc")


def _redis_keys_evicted(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    meta_keys = [k for k in client.keys("*") if k.endswith(b":meta")]
    assert meta_keys
    client.delete(*meta_keys)  # what an eviction under maxmemory does to a set


STORES = [
    Case("npy-header-huge-shape", "vectors.npy whose header claims 4e12 rows", "one-line 'corrupt embedding matrix', "
         "nothing allocated; exit 1", {"damage": _huge_header, "match": "corrupt embedding matrix"}),
    Case("npy-truncated", "vectors.npy cut to 100 bytes", "one-line StoreError naming the file; exit 1",
         {"damage": _truncate_vectors, "match": "vectors.npy|corrupt"}),
    Case("npy-pickle", "vectors.npy holding a pickled object array", "refused, never unpickled: "
         "'corrupt embedding matrix'; exit 1", {"damage": _pickled_vectors, "match": "corrupt embedding matrix"}),
    Case("meta-garbled", "meta.json that is not JSON", "one-line StoreError naming meta.json; exit 1",
         {"damage": _garbled_meta, "match": "meta.json"}),
    Case("newer-format", "meta.json written by a newer store format (99)", "refused, not misread: one line "
         "'written by a newer mildnet', how to rebuild; exit 1", {"damage": _newer_format, "match": "newer mildnet"}),
    Case("redis-newer-format", "a Redis set whose header says store format 99", "refused like the local one; exit 1",
         {"damage": _redis_newer_format, "match": "newer mildnet.*--rebuild", "redis": True}),
    Case("pointer-escapes", "CURRENT pointing to '../../etc'", "one-line StoreError naming CURRENT; exit 1",
         {"damage": _escaping_pointer, "match": "CURRENT"}),
    Case("redis-keys-evicted", "a Redis set whose keys were evicted under its 'current' pointer",
         "one line: 'gone from Redis', how to rebuild (--rebuild); exit 1 (was 'keeps changing' forever)",
         {"damage": _redis_keys_evicted, "match": "gone from Redis.*--rebuild", "redis": True}),
]


@pytest.mark.parametrize("case", params(STORES))
def test_hostile_store(case, capsys, folder, tmp_path, request):
    store = request.getfixturevalue("redis_url") if case.check.get("redis") else str(tmp_path / "store")
    _embedded(capsys, folder, store)
    case.check["damage"](store if case.check.get("redis") else Path(store))
    # --images names the catalogue, so the damaged set itself is read (a bare search lists keys, which skips
    # unreadable folders and then says no embeddings exist).
    assert main(_search(store, folder) + ["--images", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and re.search(case.check["match"], err), err


# --- archives: extract() for data fetch and archive imports --------------------------------------------------------


def _zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _tar_of(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info in members:
            archive.addfile(info, io.BytesIO(b"E" * info.size) if info.isfile() else None)
    return path


def _tar_member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


def _bomb(path: Path, kind: str) -> Path:
    zeros = path.with_name("zeros.csv")
    with open(zeros, "wb") as f:
        f.truncate(200 << 20)  # 200 MB of zeros: ~200 kB compressed
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(zeros, "data/zeros.csv")
    else:
        with tarfile.open(path, "w:gz") as archive:
            archive.add(zeros, "data/zeros.csv")
    zeros.unlink()
    return path


ARCHIVES = [
    Case("zip-dotdot", "a zip member '../evil.txt'", "refused ('refusing to extract'), nothing written",
         {"build": lambda p: _zip_of(p, {"pkg/ok.txt": b"ok", "../evil.txt": b"E"}), "match": "refusing"}),
    Case("zip-nested-dotdot", "a zip member 'pkg/../../evil.txt'", "refused, nothing written",
         {"build": lambda p: _zip_of(p, {"pkg/../../evil.txt": b"E"}), "match": "refusing"}),
    Case("zip-absolute", "a zip member '/abs/evil.txt'", "refused, nothing written",
         {"build": lambda p: _zip_of(p, {"/abs/evil.txt": b"E"}), "match": "refusing"}),
    Case("zip-backslash", "a zip member '..\\\\evil.txt' (made on Windows)", "refused, nothing written",
         {"build": lambda p: _zip_of(p, {"..\\evil.txt": b"E"}), "match": "refusing"}),
    Case("tar-dotdot", "a tar member '../evil.txt'", "refused, nothing written",
         {"build": lambda p: _tar_of(p, [_tar_member("../evil.txt")]), "match": "refusing"}),
    Case("tar-symlink", "a tar symlink to /etc/passwd", "refused ('link'), nothing written",
         {"build": lambda p: _tar_of(p, [_tar_member("top/link", tarfile.SYMTYPE, "/etc/passwd")]), "match": "link"}),
    Case("tar-hardlink", "a tar hard link to /etc/passwd", "refused ('link'), nothing written",
         {"build": lambda p: _tar_of(p, [_tar_member("top/link", tarfile.LNKTYPE, "/etc/passwd")]), "match": "link"}),
    Case("zip-bomb", "a 200 kB zip that inflates to 200 MB", "refused ('zip bomb': ratio over 100x), nothing written",
         {"build": lambda p: _bomb(p, "zip"), "match": "zip bomb"}),
    Case("tar-bomb", "a 200 kB tar.gz that inflates to 200 MB", "refused ('zip bomb'), nothing written",
         {"build": lambda p: _bomb(p, "tar.gz"), "match": "zip bomb"}),
    Case("not-an-archive", "random bytes named .zip", "one-line DataError, nothing written",
         {"build": lambda p: _bytes(p, b"not an archive at all"), "match": "archive|zip|tar"}),
]


@pytest.mark.parametrize("case", params(ARCHIVES))
def test_hostile_archive(case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    archive = case.check["build"](work / "in.archive")
    with pytest.raises(DataError, match=case.check["match"]) as refused:
        extract(archive, work / "out")
    assert "\n" not in str(refused.value)
    assert sorted(p.name for p in work.iterdir()) == ["in.archive"]  # no output, no staging folder
    assert not list(tmp_path.rglob("evil.txt"))


# --- folders and photo names: `data add`, `data fetch --from` ------------------------------------------------------


def _photos(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        _jpeg(root / f"p{i}.jpg", (60 * i, 30, 200 - 40 * i))
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _jpeg(root / name, (20, 160, 20))
    return root


def _link_loops(root: Path) -> Path:
    for label in ("hat", "shoes"):
        _photos(root / label, [])
    (root / "hat" / "up").symlink_to("..", target_is_directory=True)
    (root / "shoes" / "again").symlink_to("../..", target_is_directory=True)
    return root


def _file_loop(root: Path) -> Path:
    _photos(root, [])
    (root / "a.jpg").symlink_to(root / "b.jpg")
    (root / "b.jpg").symlink_to(root / "a.jpg")
    return root


def _fifo_photo(root: Path) -> Path:
    for label in ("hat", "shoes"):
        _photos(root / label, [])
    os.mkfifo(root / "hat" / "pipe.jpg")
    return root


FOLDERS = [
    Case("fetch-folder-link-loops", "`data fetch clothing-small --from DIR`, DIR holding two `ln -s ..` folder loops",
         "exit 1 within seconds, one line naming the links, nothing copied (was: copied until the disk was full)",
         {"build": _link_loops, "command": "fetch", "match": "hat/up leads back to its own parent"}),
    Case("add-file-link-loop", "`data add` of a folder where a.jpg -> b.jpg -> a.jpg",
         "exit 1, one line 'a.jpg is a loop of links' (was a RuntimeError traceback)",
         {"build": _file_loop, "match": "a.jpg is a loop of links"}),
    Case("photo-name-carriage-return", "a photo named 'bad\\rname.jpg' (also through an uploaded zip)",
         "added; that photo left out, named with repr, 'control character: rename it'; the rest embeds (was: the "
         "dataset could never be embedded)", {"names": ["bad\rname.jpg"], "left_out": "control character"}),
    Case("photo-name-crlf", "a photo named 'bad\\r\\nname.jpg'", "the same; triplet files stay whole",
         {"names": ["bad\r\nname.jpg"], "left_out": "control character"}),
    Case("photo-name-line-separator", "a photo named with U+2028 in it", "the same",
         {"names": ["bad\u2028name.jpg"], "left_out": "control character"}),
    Case("photo-name-254-bytes", "photo names of 251 to 255 bytes", "added and embedded: their augmented views get "
         "a shortened name with a hash (was OSError 36 'File name too long')",
         {"names": ["y" * (n - 4) + ".jpg" for n in range(251, 256)]}),
    Case("photo-name-spaces-backslash", "' lead.jpg', 'back\\\\slash.jpg', no labels CSV",
         "added; those photos left out, 'rename it' (was: 'not in the labels CSV' and a phantom row "
         "'back/slash.jpg')", {"names": [" lead.jpg", "back\\slash.jpg"], "left_out": "rename it"}),
    Case("photo-name-formula", "'=cmd|' -C calc'!A0.jpg' and '@SUM(1+1).jpg'", "added; in catalog.csv and the "
         "triplet files such cells start with an apostrophe (text in a spreadsheet, not a formula); read back "
         "unchanged", {"names": ["=cmd|' -C calc'!A0.jpg", "@SUM(1+1).jpg"], "formula": True}),
    Case("dataset-name-250-chars", "a dataset name of 250 characters", "usage error, exit 2, one line 'the most is "
         "64' (was OSError 36 from the staging folder)", {"dataset": "n" * 250, "match": "the most is 64", "exit": 2}),
    Case("copy-a-fifo", "`data add --copy` of class folders holding a FIFO named hat/pipe.jpg", "added; the pipe left "
         "out as 'not a regular file' (was shutil.SpecialFileError)", {"build": _fifo_photo, "extra": ["--copy"],
                                                   "left_out": "not a regular file"}),
]


@pytest.mark.parametrize("case", params(FOLDERS))
def test_hostile_folder(case, tmp_path, monkeypatch, capsys):
    from mildnet.data.catalog import read_catalog

    monkeypatch.delenv(manifest.ENV_VAR, raising=False)
    monkeypatch.setenv(manifest.USER_ENV_VAR, str(tmp_path / "reg" / "data_manifest.user.csv"))
    root = case.check.get("build", lambda r: _photos(r, case.check.get("names", [])))(tmp_path / "photos")
    name = case.check.get("dataset", "shop")
    if case.check.get("command") == "fetch":
        command = ["data", "fetch", "clothing-small", "--from", str(root), "--to", str(tmp_path / "out")]
    else:
        command = ["data", "add", name, "--images", str(root), *case.check.get("extra", [])]
    code = _within(60, main, command)
    err = capsys.readouterr().err
    last = err.rstrip("\n").rsplit("\n", 1)[-1].split("\r")[-1]
    if "match" in case.check:
        assert code == case.check.get("exit", 1) and last.startswith("error:"), err
        assert re.search(case.check["match"], last) and err.count("error:") == 1, err
        assert not list((tmp_path / "out").rglob("*.jpg")) and not (tmp_path / "reg").exists()
        return
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:") and "left out" in line]
    if "left_out" in case.check:
        assert len(warnings) == 1 and case.check["left_out"] in warnings[0], err
        assert all(c.isprintable() for c in warnings[0]), warnings  # the odd name is shown with repr
    else:
        assert not warnings, err
    home = tmp_path / "reg" / "data" / name
    catalog = read_catalog(home / "catalog.csv")
    image_root = home / "images" if (home / "images").is_dir() else root
    assert all((image_root / image).is_file() for image in catalog["image"]), "a phantom row"
    if case.check.get("formula"):
        raw = (home / "catalog.csv").read_text() + (home / "train.csv").read_text()
        assert not re.search(r"(^|,)[=@+-]", raw, re.MULTILINE), raw
        assert {"=cmd|' -C calc'!A0.jpg", "@SUM(1+1).jpg"} <= set(catalog["product_id"])
    assert main(["embed", "--dataset", name, "--model", "tiny_cnn", "--image-size", "32",
                 "--store", str(tmp_path / "store")]) == 0, capsys.readouterr().err


# --- URLs: store URLs in embed/search, download URLs ---------------------------------------------------------------

URLS = [
    Case("redis-port-not-a-number", "--store redis://:s3cret@127.0.0.1:notaport/0",
         "usage error, exit 2, one line, password masked, no --fallback-local", {"store": "redis://:s3cret@127.0.0.1:notaport/0"}),
    Case("redis-unclosed-ipv6", "--store redis://[::1/0", "usage error, exit 2, one line",
         {"store": "redis://[::1/0"}),
    Case("redis-unclosed-ipv6-password", "--store redis://:s3cret@[::1/0", "usage error, exit 2, password masked",
         {"store": "redis://:s3cret@[::1/0"}),
    Case("redis-db-not-a-number", "--store redis://localhost:6379/x", "usage error, exit 2",
         {"store": "redis://localhost:6379/x"}),
    Case("unsupported-scheme", "--store http://example.com/store", "usage error, exit 2",
         {"store": "http://example.com/store"}),
    Case("download-unclosed-ipv6", "a dataset URL http://[::1/x.zip",
         "one-line DownloadError 'malformed URL' (was a ValueError traceback)",
         {"download": "http://[::1/x.zip", "match": "malformed URL"}),
    Case("download-port-not-a-number", "a dataset URL http://127.0.0.1:notaport/x.zip",
         "one-line DownloadError 'malformed URL'",
         {"download": "http://127.0.0.1:notaport/x.zip", "match": "malformed URL"}),
    Case("download-refused", "a dataset URL whose server is down (port 1)",
         "one-line DownloadError 'cannot reach', with the --from PATH hint",
         {"download": "http://127.0.0.1:1/x.zip", "match": "cannot reach.*--from PATH"}),
    Case("download-remote-file-url", "file://otherhost/x.zip", "DownloadError 'names a remote host'",
         {"download": "file://otherhost/x.zip", "match": "remote host"}),
]


@pytest.mark.parametrize("case", params(URLS))
def test_hostile_url(case, capsys, folder, tmp_path):
    if "download" in case.check:
        with pytest.raises(DownloadError, match=case.check["match"]) as refused:
            download(case.check["download"], tmp_path / "x.zip", timeout=5)
        assert "\n" not in str(refused.value)
        assert not list(tmp_path.glob("x.zip*"))
        return
    url = case.check["store"]
    for command in (["embed", "--model", "tiny_cnn", "--images", str(folder), "--store", url],
                    ["search", "--model", "tiny_cnn", "--image", str(folder / "r0.jpg"), "--store", url,
                     "--fallback-local", str(tmp_path / "fallback")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1 and "s3cret" not in err, err
    assert not (tmp_path / "fallback").exists()  # a typo is not an outage to fall back from


# --- model arguments: the same usage error in every command ----------------------------------------------------------

ARGUMENTS = [
    Case("unknown-model", "--model nosuch", "exit 2 in embed, search and evaluate, one line listing the names",
         {"args": ["--model", "nosuch"]}),
    Case("image-size-4", "--image-size 4", "exit 2 everywhere (was 1 in embed/search)",
         {"args": ["--model", "tiny_cnn", "--image-size", "4"]}),
    Case("image-size-0", "--image-size 0", "exit 2 everywhere (was silently 224)",
         {"args": ["--model", "tiny_cnn", "--image-size", "0"]}),
    Case("embedding-dim-0", "--embedding-dim 0", "exit 2 everywhere",
         {"args": ["--model", "tiny_cnn", "--embedding-dim", "0"]}),
]


@pytest.mark.parametrize("case", params(ARGUMENTS))
def test_bad_model_arguments(case, folder, tmp_path, capsys):
    triplets = _write(tmp_path / "t.csv", [GOOD_ROW])
    commands = [["embed", "--images", str(folder), "--store", str(tmp_path / "store")],
                ["search", "--image", str(folder / "r0.jpg"), "--store", str(tmp_path / "store")],
                ["evaluate", "--images", str(folder), "--triplets", str(triplets), "--no-baselines"]]
    messages = set()
    for command in commands:
        assert main(command + case.check["args"]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1, err
        messages.add(err)
    assert len(messages) == 1, messages  # the same words whichever command was given them


# The tables docs/make_reliability.py renders, in order: (title, what the inputs go through, table, test).
TABLES = [
    ("Images", "load_image (file and uploaded bytes), verify_image, check_triplets, `data check`",
     IMAGES, "test_hostile_image"),
    ("Triplet CSVs", "read_triplets, `data check`", CSVS, "test_hostile_triplet_file"),
    ("Manifests", "load_manifest, `data fetch` with MILDNET_MANIFEST", MANIFESTS, "test_hostile_manifest"),
    ("Checkpoints", "load_model (Keras safe_mode)", CHECKPOINTS, "test_hostile_checkpoint"),
    ("Run files", "calibration.load (the app, `search`), `train --resume`", RUN_FILES, "test_hostile_run_file"),
    ("Stores", "`search` against a damaged local store / Redis set", STORES, "test_hostile_store"),
    ("Archives", "extract (data fetch, archive imports)", ARCHIVES, "test_hostile_archive"),
    ("Folders and photo names", "`data add` (the app's folder and zip uploads too), `data fetch --from`", FOLDERS,
     "test_hostile_folder"),
    ("URLs", "`embed`/`search --store URL`, download()", URLS, "test_hostile_url"),
    ("Model arguments", "`embed`, `search`, `evaluate`", ARGUMENTS, "test_bad_model_arguments"),
    ("Scenarios", "whole training runs and imports", SCENARIOS, None),
]


def test_the_reliability_doc_is_current():
    from docs.make_reliability import DOC, render

    tested = {name for _, _, _, name in TABLES if name} | {case.id for case in SCENARIOS}
    tests_here = {name for name in globals() if name.startswith("test_")} - {"test_the_reliability_doc_is_current"}
    assert tests_here == tested, "every test in this module is a table's or a listed scenario"
    assert DOC.read_text() == render(), "docs/reliability.md is stale: run python docs/make_reliability.py"
    # The hand-written section names the tests that check each statement: they must exist.
    from docs.make_reliability import SERVING

    suite = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    named = set(re.findall(r"`(test_\w+)`", SERVING))
    assert named and not {name for name in named if f"def {name}(" not in suite}
