"""The dataset registry (data_manifest.csv) and ``prepare`` for each kind of source, on real files."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from mildnet.data import manifest as mf
from mildnet.data.triplets import read_triplets
from mildnet.errors import DataError, DownloadError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HEADER = ",".join(mf.COLUMNS)


def _row(**values) -> str:
    return ",".join(values.get(c, "") for c in mf.COLUMNS)


def _write_manifest(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the real registry -----------------------------------------------------------------------------


def test_project_manifest_lists_the_three_datasets():
    # Without the developer's own registry (data_manifest.user.csv), which may list more.
    rows = mf.load_manifest(PROJECT_ROOT / "data_manifest.csv", include_user=False)
    assert mf.datasets(rows) == ["sample", "clothing-small", "mildnet-tops"]
    for name, source in [("sample", "generated"), ("clothing-small", "class-folders"), ("mildnet-tops", "download")]:
        splits = mf.dataset_splits(name, rows)
        assert [s.split for s in splits] == ["train", "val", "test"]
        assert {s.source for s in splits} == {source}
        for s in splits:
            assert s.licence, f"{name} needs a licence"
            # Relative paths are resolved against the manifest's folder, inside the ignored data/.
            assert s.triplets.is_relative_to(PROJECT_ROOT / "data")
            assert s.image_root.is_relative_to(PROJECT_ROOT / "data")
    sample = mf.get_split("sample", "train", rows)
    # The sample's catalog and triplet paths are "images/<product>/<view>.jpg", relative to its folder.
    assert sample.image_root == PROJECT_ROOT / "data" / "sample"
    assert sample.catalog == PROJECT_ROOT / "data" / "sample" / "catalog.csv"
    tops = {s.split: s for s in mf.dataset_splits("mildnet-tops", rows)}
    bucket = "https://storage.googleapis.com/fynd-open-source/research/MILDNet/"
    assert tops["train"].url == bucket + "tops_train_shuffle.csv"
    assert tops["val"].url == bucket + "tops_val_full.csv"
    assert tops["test"].url == bucket + "tops_test.csv"
    assert tops["test"].images_url == bucket + "tops.zip" and tops["test"].archive_dir == "tops"
    assert "Street2Shop" in tops["train"].licence
    clothing = mf.get_split("clothing-small", "val", rows)
    assert clothing.images_url.startswith("https://github.com/alexeygrigorev/clothing-dataset-small/archive/")
    assert mf.resolve("clothing-small", "val", rows) == clothing


def test_default_and_env_override(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    assert mf.manifest_path() == PROJECT_ROOT / "data_manifest.csv"
    assert "sample" in mf.datasets()
    own = _write_manifest(tmp_path / "m.csv", [_row(dataset="mine", split="train", triplets="t.csv",
                                                    image_root="img", source="local")])
    monkeypatch.setenv(mf.ENV_VAR, str(own))
    assert mf.datasets() == ["mine"]
    assert mf.get_split("mine", "train").triplets == tmp_path / "t.csv"


GOOD = _row(dataset="d", split="train", triplets="t.csv", image_root="img", source="local")


# --- the user registry merged on read ----------------------------------------------------------------------------


def test_user_registry_is_merged_from_beside_the_manifest_or_the_env(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.USER_ENV_VAR, raising=False)
    tracked = _write_manifest(tmp_path / "m.csv", [GOOD])
    assert mf.user_manifest_path(tracked) == tmp_path / "m.user.csv"
    assert mf.datasets(mf.load_manifest(tracked)) == ["d"]  # no user file yet: fine
    mine = _row(dataset="mine", split="val", triplets="data/mine/val.csv", image_root="/photos", source="local",
                kind="instance", origin="/photos")
    _write_manifest(tmp_path / "m.user.csv", [mine])
    rows = mf.load_manifest(tracked)
    assert mf.datasets(rows) == ["d", "mine"]
    split = mf.get_split("mine", "val", rows)
    assert split.triplets == tmp_path / "data" / "mine" / "val.csv" and split.image_root == Path("/photos")
    assert split.kind == "instance" and split.origin == "/photos"
    assert mf.datasets(mf.load_manifest(tracked, include_user=False)) == ["d"]

    (tmp_path / "other").mkdir()
    elsewhere = _write_manifest(tmp_path / "other" / "reg.csv", [], header="# nothing registered yet\n" + HEADER)
    monkeypatch.setenv(mf.USER_ENV_VAR, str(elsewhere))
    assert mf.user_manifest_path(tracked) == elsewhere
    assert mf.datasets(mf.load_manifest(tracked)) == ["d"]  # an empty user registry is allowed


def test_a_name_in_both_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.USER_ENV_VAR, raising=False)
    tracked = _write_manifest(tmp_path / "m.csv", [GOOD])
    _write_manifest(tmp_path / "m.user.csv", [GOOD])
    with pytest.raises(DataError, match=r"'d' is registered both in .*m\.csv and in .*m\.user\.csv.*data remove d"):
        mf.load_manifest(tracked)


def test_save_user_manifest_round_trip_is_atomic(tmp_path):
    path = tmp_path / "reg" / "data_manifest.user.csv"
    home = tmp_path / "reg" / "data" / "shop"
    rows = [mf.DatasetSplit(dataset="shop", split=s, triplets=home / f"{s}.csv", image_root=Path("/srv/photos"),
                            source="local", catalog=home / "catalog.csv", kind="labelled", origin="/srv/photos",
                            notes="labels, with a comma") for s in ("train", "test")]
    mf.save_user_manifest(rows, path)
    text = path.read_text()
    assert "data/shop/train.csv" in text and "/srv/photos" in text  # inside: relative; outside: absolute
    assert mf.load_user_manifest(path) == rows
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    mf.save_user_manifest([], path)
    assert mf.load_user_manifest(path) == [] and mf.load_user_manifest(tmp_path / "absent.csv") == []
    with pytest.raises(DataError, match="different 'image_root'"):
        mf.save_user_manifest([rows[0], dataclasses.replace(rows[1], image_root=Path("/elsewhere"))], path)
    assert mf.load_user_manifest(path) == []


def test_unknown_kind_is_refused(tmp_path):
    path = _write_manifest(tmp_path / "m.csv", [_row(dataset="d", split="train", triplets="t.csv",
                                                     image_root="img", source="local", kind="guessed")])
    with pytest.raises(DataError, match="unknown kind 'guessed'"):
        mf.load_manifest(path)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        ("dataset,split,triplets,source", [], "missing column.*image_root"),
        (HEADER + ",colour", [GOOD + ",x"], "unknown column.*colour"),
        (HEADER, [], "no datasets"),
        (HEADER, [GOOD.replace("local", "ftp")], "unknown source 'ftp'"),
        (HEADER, [GOOD, GOOD], "duplicate d/train .first on line 2"),
        (HEADER, [GOOD.replace("train", "holdout", 1)], "unknown split 'holdout'"),
        (HEADER, [GOOD.replace("t.csv", "")], "empty 'triplets'"),
        (HEADER, [GOOD + ",extra"], "fields"),
        (HEADER, [GOOD.replace("d,", "bad name,", 1)], "dataset name"),
        (HEADER, [_row(dataset="d", split="train", triplets="t", image_root="i", source="local", sha256="abc")],
         "sha256"),
        (HEADER, [GOOD.replace("local", "download")], "needs the triplet file's url"),
        (HEADER, [GOOD, _row(dataset="d", split="val", triplets="v.csv", image_root="other", source="local")],
         "different 'image_root'"),
    ],
)
def test_bad_manifests(tmp_path, header, rows, message):
    path = _write_manifest(tmp_path / "bad.csv", rows, header=header)
    with pytest.raises(DataError, match=message) as info:
        mf.load_manifest(path)
    assert str(path) in str(info.value)


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(DataError, match=mf.ENV_VAR):
        mf.load_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="empty manifest"):
        mf.load_manifest(tmp_path / "empty.csv")


def test_lookup_errors_list_known_names():
    rows = mf.load_manifest(PROJECT_ROOT / "data_manifest.csv")
    with pytest.raises(DataError, match="unknown dataset 'nope'.*sample, clothing-small, mildnet-tops"):
        mf.get_split("nope", "train", rows)
    local = mf.parse_manifest(HEADER + "\n" + GOOD, base=Path("/x"))
    with pytest.raises(DataError, match="no split 'test'; it has: train"):
        mf.get_split("d", "test", local)


# --- prepare: local ----------------------------------------------------------------------------------


def test_prepare_local(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    path = _write_manifest(tmp_path / "m.csv", [GOOD])
    with pytest.raises(DataError, match=r"dataset d is incomplete, missing: .*t\.csv$"):
        mf.prepare("d", path)
    (tmp_path / "t.csv").write_text("a.jpg,a.jpg,a.jpg\n")
    [split] = mf.prepare("d", path)
    assert split.ready and split.triplets == tmp_path / "t.csv"
    with pytest.raises(DataError, match="local dataset"):
        mf.prepare("d", path, source_override=tmp_path)
    with pytest.raises(DataError, match="local dataset"):
        mf.prepare("d", path, dest=tmp_path / "elsewhere")


# --- prepare: generated sample ------------------------------------------------------------------------


def test_prepare_generated_sample(tmp_path):
    manifest = PROJECT_ROOT / "data_manifest.csv"
    small = {"products": 12, "size": 32, "wild_per_product": 1}
    messages = []
    splits = mf.prepare("sample", manifest, dest=tmp_path / "sample", sample_options=small,
                        progress=lambda d, t, m="": messages.append((d, t, m)))
    root = tmp_path / "sample"
    assert [s.triplets for s in splits] == [root / "train.csv", root / "val.csv", root / "test.csv"]
    assert all(s.image_root == root and s.catalog == root / "catalog.csv" and s.ready for s in splits)
    assert messages[-1] == (24, 24, "rendering sample")
    table = read_triplets(splits[0].triplets)
    assert len(table.triplets) > 0 and all((root / p).is_file() for p in table.images)
    before = (root / "catalog.csv").stat().st_mtime_ns
    mf.prepare("sample", manifest, dest=root)  # complete: reused, not rendered again
    assert (root / "catalog.csv").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="nothing to take from"):
        mf.prepare("sample", manifest, dest=root, source_override=tmp_path)


# --- prepare: class folders --------------------------------------------------------------------------


def _class_manifest(tmp_path: Path, images_url: str = "", images_sha256: str = "") -> Path:
    rows = [
        _row(dataset="shop", split=s, triplets=f"data/shop/{s}.csv", image_root="data/shop/images",
             catalog="data/shop/catalog.csv", source="class-folders", images_url=images_url,
             images_sha256=images_sha256, archive_dir="shop-*", licence="CC0-1.0")
        for s in mf.SPLITS
    ]
    return _write_manifest(tmp_path / "m.csv", rows)


def _zip_folder(folder: Path, archive: Path, top: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return archive


def test_prepare_class_folders_from_archive_url(tmp_path, labelled_folder):
    archive = _zip_folder(labelled_folder, tmp_path / "shop.zip", top="shop-v1")
    manifest = _class_manifest(tmp_path, images_url=archive.as_uri(), images_sha256=_sha(archive))
    messages = []
    splits = mf.prepare("shop", manifest, progress=lambda d, t, m="": messages.append(m))
    home = tmp_path / "data" / "shop"
    assert [s.split for s in splits] == ["train", "val", "test"]
    assert sorted(p.name for p in (home / "images").iterdir()) == ["blue", "green", "red"]
    assert not (home / "downloads").exists()  # the downloaded archive is removed after extraction
    catalog = pd.read_csv(home / "catalog.csv", dtype=str, keep_default_na=False)
    assert len(catalog) == 12 and set(catalog["product_id"]) == {"red", "green", "blue"}
    train = read_triplets(home / "train.csv")
    assert len(train.triplets) > 0 and not train.problems
    assert all((home / "images" / p).is_file() for p in train.images)
    assert any("extracting" in m for m in messages)

    # Already complete: nothing is fetched again (the archive may even be gone).
    archive.unlink()
    before = (home / "train.csv").stat().st_mtime_ns
    mf.prepare("shop", manifest)
    assert (home / "train.csv").stat().st_mtime_ns == before


def test_prepare_class_folders_checksum_mismatch(tmp_path, labelled_folder):
    archive = _zip_folder(labelled_folder, tmp_path / "shop.zip", top="shop-v1")
    manifest = _class_manifest(tmp_path, images_url=archive.as_uri(), images_sha256="0" * 64)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        mf.prepare("shop", manifest)
    assert not (tmp_path / "data" / "shop" / "images").exists()
    # The same archive given as a local file is checked against the manifest too.
    with pytest.raises(DownloadError, match="checksum mismatch"):
        mf.prepare("shop", manifest, source_override=archive)


def test_prepare_class_folders_without_url_needs_override(tmp_path, labelled_folder):
    manifest = _class_manifest(tmp_path)
    with pytest.raises(DataError, match="no images_url.*--from PATH"):
        mf.prepare("shop", manifest)
    splits = mf.prepare("shop", manifest, source_override=labelled_folder, dest=tmp_path / "moved")
    assert splits[0].image_root == tmp_path / "moved" / "images"
    assert (tmp_path / "moved" / "images" / "red").is_dir() and all(s.ready for s in splits)
    assert not (tmp_path / "data").exists()
    # Re-importing from the dataset's own image folder would empty it first: refused, files kept.
    with pytest.raises(DataError, match="overlaps"):
        mf.prepare("shop", manifest, source_override=splits[0].image_root, dest=tmp_path / "moved", force=True)
    assert (tmp_path / "moved" / "images" / "red").is_dir()


def test_prepare_clothing_small_from_shared_copy(tmp_path, clothing_dir):
    splits = mf.prepare("clothing-small", PROJECT_ROOT / "data_manifest.csv",
                        source_override=clothing_dir, dest=tmp_path / "clothing")
    root = tmp_path / "clothing"
    assert splits[0].image_root == root / "images" and splits[0].catalog == root / "catalog.csv"
    catalog = pd.read_csv(root / "catalog.csv", dtype=str, keep_default_na=False)
    # Folder split "validation" becomes our "val"; sizes from shared/README.md.
    assert catalog["split"].value_counts().to_dict() == {"train": 3068, "test": 372, "val": 341}
    assert catalog["product_id"].nunique() == 10
    for split in splits:
        table = read_triplets(split.triplets)
        assert len(table.triplets) > 0 and not table.problems
        sample = sorted(table.images)[:20]
        assert all((split.image_root / name).is_file() for name in sample)


# --- prepare: download -------------------------------------------------------------------------------


def _tops_source(tmp_path: Path, labelled_folder: Path) -> Path:
    """A folder that looks like Fynd's bucket: three triplet CSVs and tops.zip with a tops/ folder."""
    src = tmp_path / "bucket"
    src.mkdir()
    names = [f"{c}/{c}_{i}.jpg" for c in ("red", "green", "blue") for i in range(4)]
    for name, rows in [("tops_train_shuffle.csv", 3), ("tops_val_full.csv", 2), ("tops_test.csv", 1)]:
        lines = [f"{names[i]},{names[i + 1]},{names[i + 4]}" for i in range(rows)]
        (src / name).write_text("\n".join(lines) + "\n")
    _zip_folder(labelled_folder, src / "tops.zip", top="tops")
    return src


def _tops_manifest(tmp_path: Path, src: Path, sha: dict[str, str] | None = None) -> Path:
    sha = sha or {}
    files = {"train": "tops_train_shuffle.csv", "val": "tops_val_full.csv", "test": "tops_test.csv"}
    rows = [
        _row(dataset="tops", split=s, triplets=f"data/tops/{f}", image_root="data/tops/images",
             source="download", url=(src / f).as_uri(), sha256=sha.get(f, ""),
             images_url=(src / "tops.zip").as_uri(), archive_dir="tops", licence="test")
        for s, f in files.items()
    ]
    return _write_manifest(tmp_path / "tops.csv", rows)


def test_prepare_download(tmp_path, labelled_folder):
    src = _tops_source(tmp_path, labelled_folder)
    manifest = _tops_manifest(tmp_path, src, sha={"tops_test.csv": _sha(src / "tops_test.csv")})
    splits = mf.prepare("tops", manifest)
    home = tmp_path / "data" / "tops"
    assert (home / "tops_val_full.csv").read_bytes() == (src / "tops_val_full.csv").read_bytes()
    assert (home / "images" / "red" / "red_0.jpg").is_file()
    for split in splits:
        table = read_triplets(split.triplets)
        assert all((split.image_root / p).is_file() for p in table.images)


def test_prepare_download_from_local_folder(tmp_path, labelled_folder):
    src = _tops_source(tmp_path, labelled_folder)
    manifest = _tops_manifest(tmp_path, Path("/nonexistent/bucket"))
    splits = mf.prepare("tops", manifest, source_override=src, dest=tmp_path / "copy")
    assert all(s.ready for s in splits) and (tmp_path / "copy" / "images" / "blue").is_dir()

    # An already extracted tops/ folder is accepted in place of tops.zip ...
    (src / "tops.zip").unlink()
    (src / "tops").mkdir()
    (src / "tops" / "x.jpg").write_bytes(b"jpeg")
    splits = mf.prepare("tops", manifest, source_override=src, dest=tmp_path / "copy2")
    assert (tmp_path / "copy2" / "images" / "x.jpg").is_file()

    # ... but a folder with neither is an error naming what is expected, and so is a missing CSV.
    (src / "tops" / "x.jpg").unlink()
    (src / "tops").rmdir()
    with pytest.raises(DataError, match="tops.zip or the extracted folder tops/"):
        mf.prepare("tops", manifest, source_override=src, dest=tmp_path / "copy3")
    assert not (tmp_path / "copy3").exists()  # checked before anything was copied
    (src / "tops_test.csv").unlink()
    with pytest.raises(DataError, match="has no tops_test.csv"):
        mf.prepare("tops", manifest, source_override=src, dest=tmp_path / "copy4")


def test_prepare_download_checksum_mismatch(tmp_path, labelled_folder):
    src = _tops_source(tmp_path, labelled_folder)
    manifest = _tops_manifest(tmp_path, src, sha={"tops_train_shuffle.csv": "f" * 64})
    with pytest.raises(DownloadError, match="checksum mismatch.*tops_train_shuffle.csv"):
        mf.prepare("tops", manifest)
    assert not (tmp_path / "data" / "tops" / "tops_train_shuffle.csv").exists()


def test_prepare_download_offline_names_url(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/tops_train_shuffle.csv"
    rows = [_row(dataset="tops", split="train", triplets="t.csv", image_root="img", source="download", url=url)]
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DownloadError, match="--from PATH") as info:
        mf.prepare("tops", manifest)
    assert url in str(info.value)
