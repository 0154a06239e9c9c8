"""Your own catalogue: ``data add`` / ``list`` / ``remove`` and ``embed``/``search``/``train``/``evaluate
--dataset NAME`` on it, end to end through ``mildnet.cli.main`` (in-process, like tests/test_cli_search.py).

The user registry and the derived files live under ``tmp_path`` (``$MILDNET_USER_MANIFEST``); the tracked
data_manifest.csv is the project's, read only. Photos are tiny generated JPEGs, or a few real ones from
``../shared`` where present.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mildnet.cli import main
from mildnet.data import manifest as mf
from mildnet.data import user_datasets as ud
from mildnet.data.catalog import AUGMENTED_COLUMN, gallery, read_catalog
from mildnet.data.images import unsafe_links
from mildnet.data.instance import MAX_VIEW_SIDE
from mildnet.data.triplets import read_triplets
from mildnet.errors import DataError
from tests.conftest import make_labelled_folder


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    """The user registry file (absent until the first `data add`); derived files go to its folder's data/."""
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    path = tmp_path / "reg" / "data_manifest.user.csv"
    monkeypatch.setenv(mf.USER_ENV_VAR, str(path))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def make_flat(root: Path, n: int = 12, size: int = 48, seed: int = 0) -> Path:
    """``n`` distinct photos directly in ``root``: a random colour block with a random stripe each."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.empty((size, size + 8, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        row = rng.integers(0, size - 8)
        pixels[row:row + 8] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(root / f"p{i:02d}.jpg", quality=90)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes: equal snapshots mean nothing was written there."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows_of(name: str) -> list[mf.DatasetSplit]:
    return [s for s in mf.load_manifest() if s.dataset == name]


def check_triplets(rows: list[mf.DatasetSplit], catalog: pd.DataFrame) -> int:
    """Every registered triplet is clean, names files under the image root, and pairs by product."""
    product = catalog.set_index("image")["product_id"]
    split_of = catalog.set_index("image")["split"]
    total = 0
    for row in rows:
        table = read_triplets(row.triplets)
        assert not table.problems, table.problems[:3]
        for query, positive, negative in table.triplets[["query", "positive", "negative"]].itertuples(index=False):
            assert product[query] == product[positive] != product[negative]
            assert split_of[query] == split_of[positive] == split_of[negative] == row.split
        assert all((row.image_root / name).is_file() for name in table.images)
        total += len(table.triplets)
    return total


# --- a flat folder without labels -------------------------------------------------------------------------------


def test_flat_folder_without_labels_is_instance_level_and_searchable(registry, tmp_path, capsys):
    photos = make_flat(tmp_path / "shop")
    before = snapshot(photos)
    code, out, err = run(capsys, "data", "add", "shop", "--images", photos)
    assert code == 0, err
    assert "added shop: 12 images, instance-level" in out

    rows = rows_of("shop")
    home = registry.parent / "data" / "shop"
    assert rows and {r.kind for r in rows} == {"instance"} and {r.source for r in rows} == {"local"}
    assert rows[0].origin == photos.resolve().as_posix()
    assert rows[0].image_root == home / "images" and rows[0].catalog == home / "catalog.csv"
    assert "instance-level" in rows[0].notes
    assert "data/shop/catalog.csv" in registry.read_text()  # stored relative to the registry's folder

    catalog = read_catalog(home / "catalog.csv")
    originals = gallery(catalog)
    assert sorted(originals["image"]) == [f"photos/p{i:02d}.jpg" for i in range(12)]
    views = catalog[catalog[AUGMENTED_COLUMN] != ""]
    assert len(views) == 24 and set(views[AUGMENTED_COLUMN]) == set(originals["image"])
    photo = views.merge(originals, left_on=AUGMENTED_COLUMN, right_on="image", suffixes=("", "_photo"))
    assert (photo["product_id"] == photo["product_id_photo"]).all() and (photo["split"] == photo["split_photo"]).all()
    assert originals["product_id"].is_unique
    for name in views["image"]:
        with Image.open(home / "images" / name) as view:
            assert max(view.size) <= MAX_VIEW_SIDE and view.format == "JPEG"
    assert check_triplets(rows, catalog) > 0
    assert snapshot(photos) == before  # nothing written into the user's folder

    # Searchable at once with the shipped default model; results are photos, never augmented views.
    store = tmp_path / "store"
    code, out, err = run(capsys, "embed", "--dataset", "shop", "--store", store)
    assert code == 0, err
    assert "images: 12 " in out and "key: shop/" in out
    assert str(Path("mildnet", "pretrained", "real")) in err  # the default model, said on stderr
    code, out, err = run(capsys, "search", "--dataset", "shop", "--store", store, "--image", photos / "p03.jpg",
                         "-k", 4, "--json")
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["n_catalog"] == 12 and payload["key"].startswith("shop/")
    assert payload["results"][0]["id"] == "photos/p03.jpg"
    assert payload["results"][0]["path"] == str(home / "images" / "photos" / "p03.jpg")
    assert all(r["id"].startswith("photos/") for r in payload["results"])
    assert "changed since" not in err  # embed and search agree on the catalogue's ids

    # `data list` shows it, with its model.
    code, out, err = run(capsys, "data", "list", "--store", store, "--json")
    assert code == 0, err
    info = next(d for d in json.loads(out)["datasets"] if d["name"] == "shop")
    assert info["source"] == photos.resolve().as_posix() and info["kind"] == "instance" and info["added"]
    assert info["images"] == 12 and info["state"] == "ready"
    assert info["triplets"] == {r.split: len(read_triplets(r.triplets).triplets) for r in rows}
    [label] = info["embedded"]
    assert label.startswith("real [") and label.endswith("12 images")
    code, out, _ = run(capsys, "data", "list", "--store", store)
    line = next(line for line in out.splitlines() if line.startswith("shop "))
    assert "(instance-level)" in line and "ready" in line and photos.resolve().as_posix() in line
    assert any(line.startswith("sample ") for line in out.splitlines())  # the tracked ones too

    # evaluate --dataset works on it too, without --run (the default model).
    split = rows[0].split
    code, out, err = run(capsys, "evaluate", "--dataset", "shop", "--split", split, "--no-baselines")
    assert code == 0, err
    assert f"shop:{split}" in out and "triplet accuracy" in out


def test_flat_folder_of_real_photos(registry, clothing_dir, tmp_path, capsys):
    shop = tmp_path / "real-shop"
    shop.mkdir()
    for cls in ("dress", "pants", "shoes", "hat"):
        for photo in sorted((clothing_dir / "test" / cls).iterdir())[:3]:
            shutil.copyfile(photo, shop / f"{cls}_{photo.name}")
    code, out, err = run(capsys, "data", "add", "real-shop", "--images", shop)
    assert code == 0, err
    assert rows_of("real-shop")[0].kind == "instance"
    home = registry.parent / "data" / "real-shop"
    catalog = read_catalog(home / "catalog.csv")
    assert len(gallery(catalog)) == 12 and check_triplets(rows_of("real-shop"), catalog) > 0
    store = tmp_path / "store"
    assert run(capsys, "embed", "--dataset", "real-shop", "--store", store)[0] == 0
    query = sorted(shop.iterdir())[5]
    code, out, err = run(capsys, "search", "--dataset", "real-shop", "--store", store, "--image", query, "--json")
    assert code == 0, err
    results = json.loads(out.strip().splitlines()[-1])["results"]
    assert len(results) == 5 and results[0]["id"] == f"photos/{query.name}" and results[0]["score"] > 0.999


# --- class folders ----------------------------------------------------------------------------------------------


def test_class_folders_in_place_then_train_and_copy(registry, tmp_path, capsys):
    shop = tmp_path / "classes"
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        make_labelled_folder(shop / split, classes=("red", "green", "blue"), per_class=3, seed=seed)
    before = snapshot(shop)
    code, out, err = run(capsys, "data", "add", "classes", "--images", shop)
    assert code == 0, err
    assert "27 images, 3 products" in out
    rows = rows_of("classes")
    assert [r.split for r in rows] == ["train", "val", "test"] and {r.kind for r in rows} == {"labelled"}
    assert rows[0].image_root == shop.resolve()  # in place: no copy, no views
    home = registry.parent / "data" / "classes"
    catalog = read_catalog(home / "catalog.csv")
    assert set(catalog["product_id"]) == {"red", "green", "blue"} and AUGMENTED_COLUMN not in catalog.columns
    assert catalog.groupby("split").size().to_dict() == {"train": 9, "val": 9, "test": 9}  # from the folders
    assert check_triplets(rows, catalog) > 0
    assert not (home / "images").exists() and snapshot(shop) == before

    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--dataset", "classes", "--model", "tiny_cnn", "--weights", "none",
                         "--image-size", 32, "--epochs", 1, "--batch-size", 4, "--out", out_dir)
    assert code == 0, err
    config = json.loads((out_dir / "config.json").read_text())["config"]
    assert config["images"] == str(shop.resolve()) and config["triplets"] == str(home / "train.csv")
    assert config["val_triplets"] == str(home / "val.csv")

    # --copy: the images are copied under data/NAME/images (not links to the user's files).
    code, out, err = run(capsys, "data", "add", "copied", "--images", shop, "--copy")
    assert code == 0, err
    copied_root = registry.parent / "data" / "copied" / "images"
    assert rows_of("copied")[0].image_root == copied_root
    assert snapshot(copied_root) == before
    original, copy = shop / "train" / "red" / "red_0.jpg", copied_root / "train" / "red" / "red_0.jpg"
    assert not os.path.samefile(original, copy)

    code, out, err = run(capsys, "data", "remove", "copied")
    assert code == 0, err
    assert "were not touched" in out and not (registry.parent / "data" / "copied").exists()
    assert "copied" not in mf.datasets() and "classes" in mf.datasets() and snapshot(shop) == before


def test_real_class_folders_register_in_place(registry, clothing_dir, capsys):
    count = sum(1 for p in clothing_dir.rglob("*.jpg"))
    code, out, err = run(capsys, "data", "add", "clothes", "--images", clothing_dir)
    assert code == 0, err
    assert f"added clothes: {count} images, 10 products" in out
    rows = rows_of("clothes")
    assert rows[0].image_root == clothing_dir.resolve() and [r.split for r in rows] == ["train", "val", "test"]
    catalog = read_catalog(rows[0].catalog)
    # The dataset's own split folders are kept (validation -> val).
    assert catalog["split"].value_counts().to_dict() == {
        "train": len(list((clothing_dir / "train").rglob("*.jpg"))),
        "val": len(list((clothing_dir / "validation").rglob("*.jpg"))),
        "test": len(list((clothing_dir / "test").rglob("*.jpg"))),
    }
    assert all(len(read_triplets(r.triplets).triplets) > 0 for r in rows)
    assert run(capsys, "data", "remove", "clothes")[0] == 0
    assert sum(1 for p in clothing_dir.rglob("*.jpg")) == count


# --- a folder plus a labels CSV ---------------------------------------------------------------------------------


def test_folder_with_labels_csv(registry, tmp_path, capsys):
    photos = make_flat(tmp_path / "shop", n=13)
    labels = tmp_path / "labels.csv"
    # Two photos per product; p12 is not listed (left out, with a warning); p00/p01 are pinned to test.
    rows = [{"image": f"p{i:02d}.jpg", "product_id": f"sku{i // 2}", "category": "tops" if i < 6 else "shoes",
             "split": "test" if i < 2 else ""} for i in range(12)]
    pd.DataFrame(rows).to_csv(labels, index=False)
    code, out, err = run(capsys, "data", "add", "labelled", "--images", photos, "--labels", labels)
    assert code == 0, err
    assert "12 images, 6 products" in out and "1 image(s) left out, e.g. 'p12.jpg': not in the labels CSV" in err
    rows_ = rows_of("labelled")
    assert {r.kind for r in rows_} == {"labelled"} and rows_[0].image_root == photos.resolve()
    assert str(labels.resolve()) in rows_[0].notes
    catalog = read_catalog(rows_[0].catalog)
    assert catalog.set_index("image").loc[["p00.jpg", "p01.jpg"], "split"].tolist() == ["test", "test"]
    assert catalog.groupby("product_id")["split"].nunique().max() == 1  # splits by product
    assert check_triplets(rows_, catalog) > 0

    # One photo per product (the usual shop export): instance-level, keeping the categories for hard negatives.
    single = tmp_path / "single.csv"
    pd.DataFrame([{"image": f"p{i:02d}.jpg", "label": f"sku{i}", "category": "tops" if i % 2 else "shoes"}
                  for i in range(13)]).to_csv(single, index=False)
    code, out, err = run(capsys, "data", "add", "single", "--images", photos, "--labels", single)
    assert code == 0, err
    rows_ = rows_of("single")
    assert {r.kind for r in rows_} == {"instance"}
    catalog = read_catalog(rows_[0].catalog)
    assert set(gallery(catalog)["product_id"]) == {f"sku{i}" for i in range(13)}
    assert set(catalog["category"]) == {"tops", "shoes"}
    assert check_triplets(rows_, catalog) > 0


# --- bad input: one line, exit 1 or 2, registry unchanged --------------------------------------------------------


def _outside_photo(tmp_path: Path) -> Path:
    return make_flat(tmp_path / "outside", n=1) / "p00.jpg"


def _bad_input(case: str, tmp_path: Path) -> tuple[list, int, str]:
    """(arguments after `data add`, expected exit code, message fragment) for one kind of bad input."""
    if case == "missing folder":
        return ["x", "--images", tmp_path / "nope"], 1, "image folder not found"
    if case == "not a folder":
        return ["x", "--images", _outside_photo(tmp_path)], 1, "is not a folder"
    if case == "no images":
        folder = tmp_path / "empty"
        (folder / "sub").mkdir(parents=True)
        (folder / "notes.txt").write_text("not a photo")
        return ["x", "--images", folder], 1, "no images"
    if case == "unreadable images":
        folder = tmp_path / "broken"
        folder.mkdir()
        for i in range(3):
            (folder / f"p{i}.jpg").write_bytes(b"not a jpeg")
        return ["x", "--images", folder], 1, "none of the 3 images"
    if case == "tracked name":
        return ["sample", "--images", make_flat(tmp_path / "shop", n=3)], 1, "already exists"
    if case == "added name":
        return ["mine", "--images", make_flat(tmp_path / "shop2", n=3)], 1, "already exists"
    if case == "bad name":
        return ["../up", "--images", make_flat(tmp_path / "shop", n=3)], 2, "dataset name"
    if case == "labels name missing files":
        photos = make_flat(tmp_path / "shop", n=3)
        labels = tmp_path / "labels.csv"
        labels.write_text("image,product_id\np00.jpg,a\np01.jpg,a\nghost.jpg,b\n")
        return ["x", "--images", photos, "--labels", labels], 1, "'ghost.jpg'"
    if case == "labels file missing":
        photos = make_flat(tmp_path / "shop", n=3)
        return ["x", "--images", photos, "--labels", tmp_path / "no.csv"], 1, "labels CSV not found"
    if case == "file link escaping":
        photos = make_flat(tmp_path / "shop", n=3)
        (photos / "stolen.jpg").symlink_to(_outside_photo(tmp_path))
        return ["x", "--images", photos], 1, "stolen.jpg leads outside the folder"
    if case == "folder link escaping":
        photos = make_flat(tmp_path / "shop", n=3)
        (photos / "more").symlink_to(_outside_photo(tmp_path).parent, target_is_directory=True)
        return ["x", "--images", photos], 1, "more leads outside the folder"
    if case == "folder holding the dataset's files":
        return ["x", "--images", tmp_path], 1, "overlaps"
    raise AssertionError(case)


BAD_INPUTS = ["missing folder", "not a folder", "no images", "unreadable images", "tracked name", "added name",
              "bad name", "labels name missing files", "labels file missing", "file link escaping",
              "folder link escaping",
              "folder holding the dataset's files"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_leaves_the_registry(registry, tmp_path, capsys, case):
    assert run(capsys, "data", "add", "mine", "--images", make_flat(tmp_path / "mine", n=4))[0] == 0
    registered = registry.read_bytes()
    data_dir = registry.parent / "data"
    files_before = snapshot(data_dir)
    argv, expected, fragment = _bad_input(case, tmp_path)
    code, out, err = run(capsys, "data", "add", *argv)
    assert code == expected, (out, err)
    # The error is one line, the last on stderr (a progress bar may precede it once work has started).
    last = err.rstrip("\n").rsplit("\n", 1)[-1].split("\r")[-1]
    assert last.startswith("error: ") and fragment in last and err.count("error: ") == 1, err
    assert "Traceback" not in err
    assert registry.read_bytes() == registered
    assert snapshot(data_dir) == files_before  # no home, no staging folder left behind
    assert sorted(p.name for p in data_dir.iterdir()) == [".user-registry.lock", "mine"]


def test_remove_refuses_tracked_and_unknown_names(registry, tmp_path, capsys):
    assert run(capsys, "data", "add", "mine", "--images", make_flat(tmp_path / "mine", n=4))[0] == 0
    registered = registry.read_bytes()
    code, _, err = run(capsys, "data", "remove", "sample")
    assert code == 1 and "only unregisters datasets you added" in err and err.count("\n") == 1
    code, _, err = run(capsys, "data", "remove", "nope")
    assert code == 1 and "added: mine" in err
    assert registry.read_bytes() == registered


def test_remove_keeps_the_users_photos_that_were_hard_linked(registry, tmp_path, capsys):
    photos = make_flat(tmp_path / "shop", n=6)
    before = snapshot(photos)
    code, out, err = run(capsys, "data", "add", "shop", "--images", photos)
    assert code == 0, err
    linked = registry.parent / "data" / "shop" / "images" / "photos" / "p00.jpg"
    # A hard link (same file, no extra disk), not a symbolic link that would leave the image root.
    assert not linked.is_symlink() and os.path.samefile(linked, photos / "p00.jpg")
    assert "(hard-linked)" in out
    code, out, err = run(capsys, "data", "remove", "shop")
    assert code == 0, err
    assert not (registry.parent / "data" / "shop").exists() and "shop" not in mf.datasets()
    assert snapshot(photos) == before and os.stat(photos / "p00.jpg").st_nlink == 1


def test_embed_needs_images_or_a_registered_dataset(registry, capsys):
    code, _, err = run(capsys, "embed", "--dataset", "nowhere")
    assert code == 2 and "not a registered dataset" in err and "data add nowhere" in err
    code, _, err = run(capsys, "embed")
    assert code == 2 and "--images DIR" in err


# --- helpers ------------------------------------------------------------------------------------------------------


def test_unsafe_links_lists_links_leaving_the_root_dangling_or_looping(tmp_path):
    root = make_flat(tmp_path / "root", n=2)
    outside = _outside_photo(tmp_path)
    (root / "inside.jpg").symlink_to(root / "p00.jpg")
    (root / "out.jpg").symlink_to(outside)
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / ".hidden.jpg").symlink_to(outside)  # skipped like list_images skips it
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("..")
    (root / "sub" / "sibling").symlink_to(root / "other")
    (root / "other").mkdir()
    (root / "a.jpg").symlink_to(root / "b.jpg")
    (root / "b.jpg").symlink_to(root / "a.jpg")
    found = dict(unsafe_links(root))
    assert sorted(found) == ["a.jpg", "b.jpg", "dangling.jpg", "out.jpg", "sub/up"], found
    assert "outside" in found["out.jpg"] and "nothing" in found["dangling.jpg"]
    assert "loop" in found["a.jpg"] and "parent" in found["sub/up"]


def test_remove_deletes_an_unpacked_upload_but_never_a_users_folder(registry, tmp_path):
    uploaded = make_flat(ud.user_data_dir() / ud.UPLOADS_DIR / "shop", n=6)
    ud.mark_upload(uploaded, "shop")  # as the app's add_zip marks what it unpacks
    mine = make_flat(tmp_path / "mine", n=6, seed=1)
    before = snapshot(mine)
    ud.add_dataset("shop", uploaded)
    ud.add_dataset("mine", mine)
    ud.remove_dataset("shop")
    ud.remove_dataset("mine")
    assert not uploaded.exists()  # the app's own copy of a zip's photos
    assert snapshot(mine) == before


def test_a_flat_folder_trains_at_the_instance_learning_rate_unless_told_otherwise(registry, tmp_path, capsys):
    """Instance-level triplets are learnt within an epoch; at the default rate they erase what the start model knew
    about type and colour (issue 17), so `train --dataset FLAT` and the sidebar start at 1e-4; a labelled folder and
    an explicit --lr keep theirs."""
    import argparse

    from mildnet.cli.train import _config_from_args, register
    from mildnet.training import INSTANCE_LEARNING_RATE, TrainConfig, default_learning_rate

    assert run(capsys, "data", "add", "flat", "--images", make_flat(tmp_path / "flat"))[0] == 0
    labelled = make_labelled_folder(tmp_path / "lab", per_class=3)
    assert run(capsys, "data", "add", "labelled", "--images", labelled)[0] == 0
    assert default_learning_rate("flat") == INSTANCE_LEARNING_RATE < TrainConfig().learning_rate
    assert default_learning_rate("labelled") == default_learning_rate(None) == TrainConfig().learning_rate
    assert default_learning_rate("no-such-dataset") == TrainConfig().learning_rate  # resolving it reports the name

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))

    def lr(*argv):
        return _config_from_args(parser.parse_args(["train", *argv, "--out", str(tmp_path / "run")])).learning_rate

    assert lr("--dataset", "flat") == INSTANCE_LEARNING_RATE
    assert lr("--dataset", "flat", "--lr", "0.003") == 0.003
    assert lr("--dataset", "labelled") == TrainConfig().learning_rate


# --- data remove deletes only what the dataset created (issue 18, F1 and F9) -------------------------------------


def test_remove_leaves_photos_under_uploads_that_the_app_did_not_unpack_for_this_dataset(registry, tmp_path, capsys):
    """F1: a folder under data/uploads/ is the user's unless the app unpacked it for this very dataset: a user's own
    folder there, and another dataset's unpacked zip registered a second time, both keep their photos."""
    uploads = registry.parent / "data" / ud.UPLOADS_DIR
    mine = make_flat(uploads / "myphotos")
    zipped = make_flat(uploads / "zipped", n=6, seed=1)
    ud.mark_upload(zipped, "zipped")  # as the app's add_zip does
    assert run(capsys, "data", "add", "mine", "--images", mine)[0] == 0
    assert run(capsys, "data", "add", "zipped", "--images", zipped)[0] == 0
    assert run(capsys, "data", "add", "flatcopy", "--images", zipped)[0] == 0
    before_mine, before_zip = snapshot(mine), snapshot(zipped)

    code, out, err = run(capsys, "data", "remove", "mine")
    assert code == 0 and "were not touched" in out, err
    code, out, err = run(capsys, "data", "remove", "flatcopy")
    assert code == 0 and "were not touched" in out, err
    assert snapshot(mine) == before_mine and snapshot(zipped) == before_zip

    code, out, err = run(capsys, "data", "remove", "zipped")  # its own unpacked copy goes with it
    assert code == 0 and "deleted the photos unpacked from its uploaded zip" in out, err
    assert not zipped.exists() and mine.is_dir()


def test_remove_deletes_an_unpacked_zip_with_one_top_folder_and_the_name_can_be_used_again(registry, tmp_path,
                                                                                          capsys):
    """F9: a zip with one top folder unpacks to data/uploads/NAME/shop and registers that folder; removing the
    dataset removes data/uploads/NAME, so the name is free again."""
    target = registry.parent / "data" / ud.UPLOADS_DIR / "shop"
    make_flat(target / "shop")
    ud.mark_upload(target, "shop")
    assert run(capsys, "data", "add", "shop", "--images", target / "shop")[0] == 0
    code, out, err = run(capsys, "data", "remove", "shop")
    assert code == 0, err
    assert not target.exists()


def test_a_labels_file_that_is_not_a_csv_is_refused_without_showing_its_content(registry, tmp_path, capsys):
    """Issue 18 F2: the app's "Labels CSV" field takes any server path; the error named the first line's "columns",
    which for /etc/shadow was root's entry. Column names that look like column names are still listed."""
    photos = make_flat(tmp_path / "photos", n=4)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    code, out, err = run(capsys, "data", "add", "s", "--images", photos, "--labels", secret)
    assert code != 0 and "needs an 'image' column" in err and "hashhash" not in err and "19000" not in err
    csv = tmp_path / "labels.csv"
    csv.write_text("img,sku\np00.jpg,1\n")
    code, out, err = run(capsys, "data", "add", "s", "--images", photos, "--labels", csv)
    assert code != 0 and "found: img, sku" in err


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_a_folder_name_with_a_unicode_line_separator_keeps_the_registry_readable(registry, tmp_path, capsys,
                                                                                separator):
    """Issue 18 F3: the registry was written by csv.writer but read with str.splitlines(), which also splits on
    these; then `data list`, `data remove` and every page failed for good."""
    photos = make_flat(tmp_path / f"photos{separator}x", n=4)
    assert run(capsys, "data", "add", "sep", "--images", photos)[0] == 0
    code, out, err = run(capsys, "data", "list")
    assert code == 0 and "sep" in out, err
    assert rows_of("sep")[0].origin == photos.resolve().as_posix()
    code, out, err = run(capsys, "data", "remove", "sep")
    assert code == 0, err


def test_two_refreshes_placing_the_same_photos_at_once_do_not_collide(tmp_path):
    # Two app sessions refreshing one changed folder both place its new photos (issue 18 F11: SameFileError).
    root = make_flat(tmp_path / "root", n=3)
    photos = sorted(p.name for p in root.glob("*.jpg"))
    quiet = lambda *args: None  # noqa: E731
    assert ud._place(root, photos, tmp_path / "dest", False, quiet) == "hard-linked"
    assert ud._place(root, photos, tmp_path / "dest", False, quiet) == "hard-linked"
    assert ud._place(root, photos, tmp_path / "copy", True, quiet) == "copied"
    assert ud._place(root, photos, tmp_path / "copy", True, quiet) == "copied"
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == photos


def _hold_lock(path: Path):
    """Another process holding ``path``'s flock, as a stuck `data add` or app session would."""
    import subprocess
    import sys

    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_held_registry_lock_times_out_with_a_message_naming_it(registry, tmp_path, capsys, monkeypatch):
    # Issue 18 F7: `data add`/`remove` waited for ever, silently.
    monkeypatch.setattr(ud, "REGISTRY_LOCK_TIMEOUT", 0.5)
    photos = make_flat(tmp_path / "shop", n=4)
    holder = _hold_lock(registry.parent / "data" / ".user-registry.lock")
    try:
        code, _, err = run(capsys, "data", "add", "shop", "--images", photos)
        assert code == 1 and "the dataset registry is locked" in err and ".user-registry.lock" in err, err
        assert err.strip().splitlines()[-1].startswith("error:")
    finally:
        holder.kill()
        holder.wait()
    assert run(capsys, "data", "add", "shop", "--images", photos)[0] == 0


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_long_refresh_of_one_dataset_does_not_block_adding_another(registry, tmp_path, capsys, monkeypatch):
    # A refresh holds its dataset's own lock while it writes views; the registry stays free for other adds.
    monkeypatch.setattr(ud, "REGISTRY_LOCK_TIMEOUT", 0.5)
    monkeypatch.setattr(ud, "DATASET_LOCK_TIMEOUT", 0.5)
    first, second = make_flat(tmp_path / "first", n=4), make_flat(tmp_path / "second", n=4, seed=1)
    assert run(capsys, "data", "add", "first", "--images", first)[0] == 0
    make_flat(tmp_path / "more", n=2, seed=2)
    for photo in (tmp_path / "more").iterdir():
        shutil.move(photo, first / f"new-{photo.name}")
    holder = _hold_lock(registry.parent / "data" / ".first.lock")
    try:
        assert run(capsys, "data", "add", "second", "--images", second)[0] == 0
        with pytest.raises(DataError, match="dataset first is locked"):
            ud.refresh_dataset("first")
        code, _, err = run(capsys, "data", "remove", "first")
        assert code == 1 and "dataset first is locked" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert ud.refresh_dataset("first").changes.new == ["new-p00.jpg", "new-p01.jpg"]


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.skipif(os.name != "posix", reason="process liveness by pid")
def test_staging_left_by_a_killed_add_is_swept_by_the_next_one(registry, tmp_path, capsys):
    # Issue 18 F8: SIGTERM/SIGKILL mid-add left data/.NAME.adding-* for ever.
    data = registry.parent / "data"
    dead, alive = data / f".shop.adding-{_dead_pid()}-0123abcd", data / f".other.adding-{os.getppid()}-0123abcd"
    for folder in (dead, alive):
        make_flat(folder / "images", n=2)
    assert run(capsys, "data", "add", "shop", "--images", make_flat(tmp_path / "shop", n=4))[0] == 0
    assert not dead.exists() and alive.exists()  # a live process's work is left alone
    assert not [p for p in data.iterdir() if ".adding-" in p.name and p != alive]


@pytest.mark.skipif(os.name != "posix", reason="process liveness by pid")
def test_sigterm_during_data_add_cleans_up_and_says_so(registry, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    photos = make_flat(tmp_path / "shop", n=400, size=96)
    env = {**os.environ, "MILDNET_USER_MANIFEST": str(registry)}
    process = subprocess.Popen([sys.executable, "-m", "mildnet", "data", "add", "shop", "--images", str(photos),
                                "--copy"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=Path(__file__).resolve().parents[1])
    data = registry.parent / "data"
    deadline = time.monotonic() + 60
    while not list(data.glob(".shop.adding-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the add finished before SIGTERM arrived")
    assert process.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert not list(data.glob(".shop.adding-*")) and not (data / "shop").exists()
    assert not registry.exists() or "shop" not in registry.read_text()


def test_a_damaged_user_registry_leaves_the_tracked_datasets_usable(registry, capsys):
    # Issue 18 F3: a registry that cannot be parsed stopped every command and page, tracked datasets included.
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text('dataset,split,triplets\nx,train\n"unclosed\n')
    code, out, err = run(capsys, "data", "list")
    assert code == 0 and "sample" in out and "clothing-small" in out, err
    assert err.startswith("warning: ") and str(registry) in err and "left out until it is repaired" in err
    assert "sample" in mf.datasets()
    code, out, err = run(capsys, "data", "remove", "x")  # editing it is refused, with the reason, never guessed
    assert code == 1 and str(registry) in err.strip().splitlines()[-1]
    assert registry.read_text() == 'dataset,split,triplets\nx,train\n"unclosed\n'


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB file system of our own (tmpfs), for a full disk and, remounted, a read-only one; skipped where
    this machine does not let the tests mount one."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.strip()[:120]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(small_disk, tmp_path, capsys, monkeypatch):
    # Issue 18 F11: OSError 28 / 30 from staging, the lock or PIL's save was a traceback.
    import subprocess

    monkeypatch.setenv(mf.USER_ENV_VAR, str(small_disk / "reg" / "data_manifest.user.csv"))
    photos = tmp_path / "big"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # ~110 kB each: more than the 1 MB disk holds once copied and viewed
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(photos / f"b{i}.jpg", quality=95)
    code, _, err = run(capsys, "data", "add", "big", "--images", photos, "--copy")
    last = err.strip().splitlines()[-1]
    assert code == 1 and last == "error: the disk is full (no space left on device); free some space and try again"
    data = small_disk / "reg" / "data"
    assert not [p for p in data.iterdir() if not p.name.endswith(".lock")], list(data.iterdir())
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code, _, err = run(capsys, "data", "add", "big", "--images", photos)
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: ") and "Read-only" in err, err
    assert "Traceback" not in err


def test_data_refresh_follows_the_folder_then_embed_adds_only_the_new_photos(registry, tmp_path, capsys,
                                                                              monkeypatch):
    # A deployment's catalogue job (deploy/compose.yaml's `embed`): refresh, then embed what is new.
    monkeypatch.setenv("MILDNET_STORE", str(tmp_path / "store"))
    photos = make_flat(tmp_path / "photos", n=12)
    assert run(capsys, "data", "add", "shop", "--images", photos)[0] == 0
    code, out, _ = run(capsys, "data", "refresh", "shop")
    assert code == 0 and "has not changed" in out
    assert run(capsys, "embed", "--model", "tiny_cnn", "--image-size", "32", "--dataset", "shop")[0] == 0
    make_flat(tmp_path / "more", n=3, seed=5)
    for path in (tmp_path / "more").iterdir():
        path.rename(photos / f"new_{path.name}")
    (photos / sorted(p.name for p in photos.iterdir() if not p.name.startswith("new_"))[0]).unlink()
    code, out, err = run(capsys, "data", "refresh", "shop")
    assert code == 0, err
    assert "3 new, 1 removed" in out and "14 images" in out
    code, out, err = run(capsys, "embed", "--model", "tiny_cnn", "--image-size", "32", "--dataset", "shop")
    assert code == 0 and "updated (3 embedded, 1 removed)" in out, out + err
    code, _, err = run(capsys, "data", "refresh", "nowhere")
    assert code == 1 and "was not added from a folder" in err
