"""The offline sample catalog: layout, determinism, splits, triplets, images, validation, atomic writes."""

from __future__ import annotations

import csv
import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mildnet.data import sample
from mildnet.data.sample import generate_sample, is_sample_complete
from mildnet.errors import DataError

PARAMS = {"products": 30, "size": 48, "wild_per_product": 2, "seed": 3}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return generate_sample(tmp_path_factory.mktemp("sample") / "data", **PARAMS)


@pytest.fixture(scope="module")
def catalog(out) -> pd.DataFrame:
    return pd.read_csv(out / "catalog.csv", dtype=str, keep_default_na=False)


def _triplets(out: Path, split: str) -> list[list[str]]:
    with open(out / f"{split}.csv", newline="") as fh:
        return list(csv.reader(fh))


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_layout_and_columns(out, catalog):
    assert list(catalog.columns) == ["image", "product_id", "category", "colour", "pattern", "view", "split"]
    assert len(catalog) == PARAMS["products"] * (1 + PARAMS["wild_per_product"])
    assert catalog["image"].is_unique
    assert catalog["image"].str.match(r"^images/[^\\]+\.jpg$").all()
    assert set(catalog["category"]) <= set(sample.CATEGORIES)
    assert set(catalog["colour"]) <= set(sample.COLOURS)
    assert set(catalog["pattern"]) <= set(sample.PATTERNS)
    assert set(catalog["split"]) == {"train", "val", "test"}
    # 30 products cycle through all six garment shapes, and the colour/pattern walk covers many of each.
    assert catalog["category"].nunique() == len(sample.CATEGORIES)
    assert catalog["colour"].nunique() >= 10
    assert catalog["pattern"].nunique() >= 5
    per_product = catalog.groupby("product_id")
    assert (per_product["view"].apply(lambda v: (v == "catalog").sum()) == 1).all()
    assert (per_product["view"].apply(lambda v: (v == "wild").sum()) == PARAMS["wild_per_product"]).all()
    for column in ("category", "colour", "pattern", "split"):
        assert (per_product[column].nunique() == 1).all(), column
    assert _all_files(out) == sorted(
        ["catalog.csv", "train.csv", "val.csv", "test.csv", "sample.json", *catalog["image"]]
    )


def test_products_are_distinct():
    products = sample.make_products(sample.MAX_PRODUCTS, seed=0)
    keys = {(p.category, p.colour, p.pattern, p.colour2) for p in products}
    assert len(keys) == len(products)
    assert all((p.colour2 == "") == (p.pattern == "solid") for p in products)
    assert all(p.colour2 != p.colour for p in products)


def test_products_disjoint_across_splits(catalog):
    splits_per_product = catalog.groupby("product_id")["split"].nunique()
    assert (splits_per_product == 1).all()
    counts = catalog.drop_duplicates("product_id")["split"].value_counts()
    assert counts["train"] > counts["val"] > 0 and counts["train"] > counts["test"] > 0


@pytest.mark.parametrize("products", [sample.MIN_PRODUCTS, 13, 50, 240])
def test_every_split_can_have_both_negative_kinds(products):
    for seed in range(5):
        parts = pd.DataFrame([p.__dict__ for p in sample.make_products(products, seed)])
        for split, part in parts.groupby("split"):
            per_category = part["category"].value_counts()
            assert len(per_category) >= 2 and per_category.max() >= 2, (products, seed, split)
        assert set(parts["split"]) == {"train", "val", "test"}


def test_deterministic(out, tmp_path):
    again = generate_sample(tmp_path / "again", **PARAMS)
    assert _all_files(again) == _all_files(out)
    match, mismatch, errors = filecmp.cmpfiles(out, again, _all_files(out), shallow=False)
    assert not mismatch and not errors

    other = generate_sample(tmp_path / "other", **{**PARAMS, "seed": PARAMS["seed"] + 1})
    assert (other / "catalog.csv").read_bytes() != (out / "catalog.csv").read_bytes()
    assert (other / "images/p0000/catalog.jpg").read_bytes() != (out / "images/p0000/catalog.jpg").read_bytes()


def test_triplets(out, catalog):
    info = catalog.set_index("image")
    for split in ("train", "val", "test"):
        rows = _triplets(out, split)
        assert rows, split
        kinds, query_views = set(), set()
        for row in rows:
            assert len(row) == 3
            query, positive, negative = row
            for name in row:
                assert (out / name).is_file(), name
                assert info.loc[name, "split"] == split  # no image leaks into another split's triplets
            assert query != positive
            assert info.loc[query, "product_id"] == info.loc[positive, "product_id"]
            assert info.loc[query, "product_id"] != info.loc[negative, "product_id"]
            if info.loc[query, "view"] == "wild":
                assert info.loc[positive, "view"] == "catalog"
            same = info.loc[query, "category"] == info.loc[negative, "category"]
            kinds.add("in-class" if same else "out-of-class")
            query_views.add(info.loc[query, "view"])
        assert kinds == {"in-class", "out-of-class"}, split
        assert query_views == {"catalog", "wild"}, split
    # No header line: the first cell is an image path.
    assert (out / "train.csv").read_text().startswith("images/")


def test_images_open_at_size(out, catalog):
    for name in catalog["image"]:
        with Image.open(out / name) as img:
            assert img.format == "JPEG"
            assert img.size == (PARAMS["size"], PARAMS["size"])
            assert img.mode == "RGB"
            img.load()


def test_catalog_view_shows_the_named_colour_on_a_light_background():
    products = [p for p in sample.make_products(60, seed=0) if p.pattern == "solid"]
    assert len({p.colour for p in products}) >= 4
    size = 64
    for product in products:
        img = np.asarray(sample.render_catalog(product, size, seed=0), np.float32)
        assert img[:4, :4].mean() > 215 and img[-4:, -4:].mean() > 215  # studio background
        # A patch of plain fabric left of the centre line (clear of plackets, pockets and pleats).
        y, x = int(0.5 * size + 0.86 * size * 0.05), int(0.5 * size - 0.86 * size * 0.1)
        patch = img[y - 2 : y + 2, x - 2 : x + 2].reshape(-1, 3).mean(axis=0)
        expected = np.array(sample.COLOURS[product.colour], np.float32)
        assert np.abs(patch - expected).max() < 40, (product, patch, expected)


def test_wild_views_differ_from_catalog_view(out, catalog):
    for product_id, rows in list(catalog.groupby("product_id"))[:5]:
        pixels = {row.image: np.asarray(Image.open(out / row.image), np.float32) for row in rows.itertuples()}
        views = dict(zip(rows["image"], rows["view"]))
        catalog_img = next(img for name, img in pixels.items() if views[name] == "catalog")
        for name, img in pixels.items():
            if views[name] == "wild":
                assert np.abs(img - catalog_img).mean() > 10, (product_id, name)


def test_is_sample_complete(out, tmp_path):
    assert is_sample_complete(out)
    assert not is_sample_complete(tmp_path / "missing")
    assert not is_sample_complete(tmp_path)
    copy = generate_sample(tmp_path / "copy", **{**PARAMS, "products": 12, "size": 32, "wild_per_product": 1})
    assert is_sample_complete(copy)
    (copy / "images/p0003/wild-1.jpg").unlink()
    assert not is_sample_complete(copy)
    # An incomplete sample is regenerated rather than reused.
    generate_sample(copy, **{**PARAMS, "products": 12, "size": 32, "wild_per_product": 1})
    assert is_sample_complete(copy)


def test_reuses_a_complete_sample_and_reports_progress(out):
    before = {name: (out / name).stat().st_mtime_ns for name in _all_files(out)}
    calls = []
    assert generate_sample(out, progress=lambda done, total: calls.append((done, total)), **PARAMS) == out
    assert {name: (out / name).stat().st_mtime_ns for name in _all_files(out)} == before
    assert calls[-1] == (90, 90)


def test_progress_and_replacing_a_sample_with_other_parameters(tmp_path):
    target = tmp_path / "data"
    generate_sample(target, products=12, size=32, wild_per_product=1)
    calls = []
    generate_sample(target, products=12, size=40, wild_per_product=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 36) for i in range(1, 37)]
    with Image.open(target / "images/p0000/wild-2.jpg") as img:
        assert img.size == (40, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp or backup folders left


def test_interrupted_run_leaves_nothing_behind(tmp_path):
    def crash(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_sample(tmp_path / "data", products=12, size=32, wild_per_product=1, progress=crash)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_other_data(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty"):
        generate_sample(tmp_path, products=12, size=32, wild_per_product=1)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate_sample(tmp_path / "file", products=12, size=32, wild_per_product=1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"products": sample.MIN_PRODUCTS - 1}, "products must be between"),
        ({"products": sample.MAX_PRODUCTS + 1}, "products must be between"),
        ({"size": 31}, "size must be between"),
        ({"size": 48.0}, "size must be an integer"),
        ({"wild_per_product": 0}, "wild_per_product must be between"),
        ({"seed": -1}, "seed must be a non-negative"),
        ({"products": True}, "products must be an integer"),
    ],
)
def test_parameter_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_sample(tmp_path / "data", **{**PARAMS, **kwargs})
    assert not (tmp_path / "data").exists()


def test_a_sample_drawn_by_an_older_renderer_is_redrawn(tmp_path):
    params = {**PARAMS, "products": 12, "size": 32, "wild_per_product": 1}
    target = generate_sample(tmp_path / "data", **params)
    marker_path = target / "sample.json"
    marker = json.loads(marker_path.read_text())
    marker["version"] = sample.GENERATOR_VERSION - 1
    marker_path.write_text(json.dumps(marker))
    assert not is_sample_complete(target)
    generate_sample(target, **params)
    assert json.loads(marker_path.read_text())["version"] == sample.GENERATOR_VERSION and is_sample_complete(target)


def test_stripes_are_box_filtered_so_the_share_of_colour_is_exact():
    from mildnet.data.sample.render import _stripes

    x = np.linspace(0.0, 10.0, 2001) + 0.0017  # no sample exactly on an edge
    # A footprint of whole periods sees exactly the duty cycle wherever it lies; a tiny one sees the hard wave.
    np.testing.assert_allclose(_stripes(x, 0.35, 1.0), 0.35, atol=1e-5)
    hard = (x % 1.0 < 0.35).astype(np.float32)
    assert np.mean(np.abs(_stripes(x, 0.35, 1e-4) - hard)) < 1e-3
    soft = _stripes(x, 0.35, 0.2)
    assert soft.min() == 0.0 and soft.max() == 1.0 and 0 < np.mean((soft > 0) & (soft < 1)) < 0.5
