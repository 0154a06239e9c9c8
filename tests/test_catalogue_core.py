"""Core of the app's "Add a catalogue": unpacking an uploaded zip (mildnet.data.upload), a catalogue that
follows its folder (mildnet.data.user_datasets.folder_changes / refresh_dataset), grid thumbnails."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mildnet.data import user_datasets as ud
from mildnet.data.catalog import gallery, read_catalog
from mildnet.data.upload import extract_images
from mildnet.errors import DataError
from tests.conftest import make_labelled_folder


def _jpeg(seed=0, size=40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _zip(path: Path, entries) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def test_extract_keeps_photos_unwraps_the_top_folder_and_lists_the_rest(tmp_path):
    archive = _zip(tmp_path / "a.zip", [("shop/a.jpg", _jpeg(1)), ("shop/red/b.jpg", _jpeg(2)),
                                        ("shop/../../x.jpg", _jpeg(3)), ("shop/a.txt", b"x")])
    report = extract_images(archive, tmp_path / "out")
    assert report.root == tmp_path / "out" / "shop" and report.kept == 2
    assert sorted(report.skipped) == ["shop/../../x.jpg", "shop/a.txt"]
    assert not (tmp_path / "x.jpg").exists()
    assert "1 unsafe path" in report.summary()


def test_extract_skips_a_bomb_and_refuses_too_much(tmp_path, monkeypatch):
    from mildnet.data import upload

    bomb = _zip(tmp_path / "bomb.zip", [("big.jpg", b"\0" * (3 << 20)), ("ok.jpg", _jpeg())])
    report = extract_images(bomb, tmp_path / "out")
    assert report.kept == 1 and report.skipped == {"big.jpg": "suspicious compression ratio"}
    monkeypatch.setattr(upload, "MAX_TOTAL_BYTES", 10)
    with pytest.raises(DataError, match="unpacked"):
        extract_images(bomb, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2.*"))


def test_extract_judges_each_member_on_its_own_name(tmp_path):
    # Issue 18 F15: one member name over 255 bytes failed the whole zip; names with control characters (F10)
    # unpacked, then the catalogue could not be embedded.
    long_name = "shop/" + "y" * 300 + ".jpg"
    archive = _zip(tmp_path / "a.zip", [("shop/a.jpg", _jpeg(1)), (long_name, _jpeg(2)), ("shop/b\rc.jpg", _jpeg(3)),
                                        ("shop/d.jpg", _jpeg(4))])
    report = extract_images(archive, tmp_path / "out")
    assert report.kept == 2 and sorted(p.name for p in report.root.iterdir()) == ["a.jpg", "d.jpg"]
    assert "longer than 255 bytes" in report.skipped[long_name]
    assert "control character" in report.skipped["shop/b\rc.jpg"]


def _registry(tmp_path: Path) -> Path:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("dataset,split,triplets,image_root,catalog,source\nx,train,x/train.csv,x,,local\n")
    return manifest


def _added_shop(tmp_path: Path) -> tuple[Path, Path]:
    """``(manifest, folder)``: a flat folder of 12 photos added as dataset "shop"."""
    manifest = _registry(tmp_path)
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(12):
        (folder / f"p{i:02d}.jpg").write_bytes(_jpeg(i))
    ud.add_dataset("shop", folder, manifest=manifest)
    return manifest, folder


def test_refresh_takes_in_new_removed_and_replaced_photos_only(tmp_path):
    manifest, folder = _added_shop(tmp_path)
    home = tmp_path / "data" / "shop"
    before = read_catalog(home / "catalog.csv")
    assert not ud.folder_changes("shop", manifest=manifest)

    (folder / "p00.jpg").unlink()
    (folder / "new.jpg").write_bytes(_jpeg(50))
    time.sleep(0.01)
    replacement = folder / ".tmp.jpg"
    replacement.write_bytes(_jpeg(51))
    os.replace(replacement, folder / "p01.jpg")  # a new file under an old name
    view_of_p02 = (home / "images" / "views" / "p02.jpg.v0.jpg").stat().st_mtime_ns

    changes = ud.folder_changes("shop", manifest=manifest)
    assert (changes.new, changes.removed, changes.changed) == (["new.jpg"], ["p00.jpg"], ["p01.jpg"])
    assert changes.describe() == "1 new, 1 removed, 1 replaced"
    result = ud.refresh_dataset("shop", manifest=manifest)
    assert result.photos == 12 and not ud.folder_changes("shop", manifest=manifest)

    after = read_catalog(home / "catalog.csv")
    photos = set(gallery(after)["image"])
    assert "photos/new.jpg" in photos and "photos/p00.jpg" not in photos
    assert not (home / "images" / "photos" / "p00.jpg").exists()
    assert not (home / "images" / "views" / "p00.jpg.v0.jpg").exists()
    assert (home / "images" / "photos" / "p01.jpg").read_bytes() == (folder / "p01.jpg").read_bytes()
    # Untouched photos keep their views and their split.
    assert (home / "images" / "views" / "p02.jpg.v0.jpg").stat().st_mtime_ns == view_of_p02
    split_before = before.set_index("image")["split"]
    split_after = after.set_index("image")["split"]
    assert all(split_after[i] == split_before[i] for i in split_before.index if i in split_after.index
               and "p01" not in i)
    assert (folder / "p02.jpg").exists()  # the user's folder is only read


def test_refresh_class_folders_in_place_and_a_vanished_folder(tmp_path):
    manifest = _registry(tmp_path)
    folder = make_labelled_folder(tmp_path / "cls")
    ud.add_dataset("cls", folder, manifest=manifest)
    (folder / "red" / "extra.jpg").write_bytes(_jpeg(9))
    assert ud.folder_changes("cls", manifest=manifest).new == ["red/extra.jpg"]
    assert ud.refresh_dataset("cls", manifest=manifest).photos == 13
    import shutil

    shutil.rmtree(folder)
    with pytest.raises(DataError, match="is gone"):
        ud.folder_changes("cls", manifest=manifest)
    with pytest.raises(DataError, match="not added from a folder"):
        ud.folder_changes("x", manifest=manifest)


def test_thumbnails_are_made_once_and_small(tmp_path, monkeypatch):
    from mildnet.ui.thumbnails import thumbnail

    monkeypatch.setenv("MILDNET_THUMBNAILS", str(tmp_path / "thumbs"))
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg(size=1200))
    first = thumbnail(big)
    assert first.parent.parent == tmp_path / "thumbs" and max(Image.open(first).size) == 384
    assert thumbnail(big) == first and first.stat().st_mtime_ns == thumbnail(big).stat().st_mtime_ns
    small = tmp_path / "small.jpg"
    small.write_bytes(_jpeg(size=64))
    assert thumbnail(small) == small
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable image"):
        thumbnail(bad)


def test_refresh_lists_only_splits_with_triplets(tmp_path):
    from mildnet.data import manifest as mf

    manifest, folder = _added_shop(tmp_path)
    splits = {s.split: s for s in mf.load_manifest(manifest) if s.dataset == "shop"}
    assert set(splits) == {"train", "val", "test"}
    test_photos = [i for i in gallery(read_catalog(tmp_path / "data" / "shop" / "catalog.csv")).itertuples()
                   if i.split == "test"]
    for row in test_photos[1:]:  # one test photo left: no negative for it, so no test triplet
        (folder / row.image.split("/", 1)[1]).unlink()
    ud.refresh_dataset("shop", manifest=manifest)
    splits = {s.split for s in mf.load_manifest(manifest) if s.dataset == "shop"}
    assert splits == {"train", "val"}
    assert not (tmp_path / "data" / "shop" / "test.csv").exists()
