import pandas as pd
import pytest

from mildnet.data.catalog import (
    assign_splits,
    catalog_from_folder,
    generate_triplets,
    read_catalog,
    triplet_types,
    write_catalog,
)
from mildnet.errors import DataError
from tests.conftest import make_labelled_folder


def test_class_folders_become_products(labelled_folder):
    catalog = catalog_from_folder(labelled_folder)
    assert len(catalog) == 12
    assert set(catalog["product_id"]) == {"red", "green", "blue"}
    # Split assignment keeps each product in one split.
    assert catalog.groupby("product_id")["split"].nunique().max() == 1


def test_split_folders_are_recognised(tmp_path):
    make_labelled_folder(tmp_path / "train", per_class=3)
    make_labelled_folder(tmp_path / "validation", per_class=2)
    catalog = catalog_from_folder(tmp_path)
    assert catalog.groupby("split").size().to_dict() == {"train": 9, "val": 6}
    assert set(catalog["product_id"]) == {"red", "green", "blue"}


def test_labels_csv(labelled_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {"image": ["red/red_0.jpg", "red/red_1.jpg", "blue/blue_0.jpg"], "label": ["r", "r", "b"],
         "category": ["top", "top", "top"]}
    ).to_csv(labels, index=False)
    catalog = catalog_from_folder(labelled_folder, labels_csv=labels)
    assert catalog["product_id"].tolist() == ["r", "r", "b"]
    assert (catalog["category"] == "top").all()


def test_labels_csv_split_spellings(labelled_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {"image": ["red/red_0.jpg", "red/red_1.jpg", "blue/blue_0.jpg"], "label": ["r", "r", "b"],
         "split": ["Train", "validation", "testing"]}
    ).to_csv(labels, index=False)
    catalog = catalog_from_folder(labelled_folder, labels_csv=labels)
    assert catalog["split"].tolist() == ["train", "val", "test"]


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"img": ["a.jpg"], "label": ["x"]}), "needs an 'image' column"),
        (pd.DataFrame({"image": ["a.jpg"], "colour": ["x"]}), "needs a product column"),
        (pd.DataFrame({"image": ["../a.jpg"], "label": ["x"]}), "stay under the image root"),
        (pd.DataFrame({"image": ["red/red_0.jpg", "red/red_0.jpg"], "label": ["x", "y"]}), "listed twice"),
        (pd.DataFrame({"image": ["red/nope.jpg"], "label": ["x"]}), "not under"),
    ],
)
def test_bad_labels_csv(labelled_folder, tmp_path, frame, message):
    labels = tmp_path / "labels.csv"
    frame.to_csv(labels, index=False)
    with pytest.raises(DataError, match=message):
        catalog_from_folder(labelled_folder, labels_csv=labels)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        catalog_from_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        catalog_from_folder(tmp_path)


def _catalog():
    rows = []
    for split, products in {"train": range(0, 6), "val": range(6, 9), "test": range(9, 12)}.items():
        for p in products:
            category = "tee" if p % 2 else "dress"
            rows.append({"image": f"p{p}_cat.jpg", "product_id": f"p{p}", "category": category, "split": split,
                         "view": "catalog"})
            for w in range(2):
                rows.append({"image": f"p{p}_wild{w}.jpg", "product_id": f"p{p}", "category": category, "split": split,
                             "view": "wild"})
    return pd.DataFrame(rows)


def test_generated_triplets_are_valid_split_aware_and_seeded():
    catalog = _catalog()
    info = catalog.set_index("image")
    triplets = generate_triplets(catalog, per_query=3, seed=1)
    assert generate_triplets(catalog, per_query=3, seed=1)["train"].equals(triplets["train"])
    assert not generate_triplets(catalog, per_query=3, seed=2)["train"].equals(triplets["train"])
    for split, frame in triplets.items():
        assert len(frame) > 0
        for column in ("query", "positive", "negative"):
            assert (info.loc[frame[column], "split"] == split).all()
        assert (info.loc[frame["query"], "product_id"].values == info.loc[frame["positive"], "product_id"].values).all()
        assert (info.loc[frame["query"], "product_id"].values != info.loc[frame["negative"], "product_id"].values).all()
        assert (frame["query"] != frame["positive"]).all()
    types = triplet_types(triplets["train"], catalog)
    assert set(types["negative_type"]) == {"in-class", "out-of-class"}
    # A wild query gets the catalog view of its product as the positive.
    wild = types["query_view"] == "wild"
    assert (info.loc[triplets["train"]["positive"][wild], "view"] == "catalog").all()


def test_in_class_share_extremes():
    catalog = _catalog()
    only_in = triplet_types(generate_triplets(catalog, in_class_share=1.0)["train"], catalog)
    only_out = triplet_types(generate_triplets(catalog, in_class_share=0.0)["train"], catalog)
    assert set(only_in["negative_type"]) == {"in-class"}
    assert set(only_out["negative_type"]) == {"out-of-class"}


def test_no_positive_possible_is_a_clear_error():
    catalog = pd.DataFrame({"image": ["a.jpg", "b.jpg"], "product_id": ["a", "b"], "split": ["train", "train"]})
    with pytest.raises(DataError, match="two or more images"):
        generate_triplets(catalog)


def test_catalog_round_trip(tmp_path):
    catalog = assign_splits(_catalog().assign(split=""), seed=3)
    path = write_catalog(tmp_path / "catalog.csv", catalog)
    assert read_catalog(path).equals(catalog)


def test_real_clothing_folders(clothing_dir):
    catalog = catalog_from_folder(clothing_dir)
    assert len(catalog) == 3781
    assert catalog["split"].value_counts().to_dict() == {"train": 3068, "test": 372, "val": 341}
    assert catalog["product_id"].nunique() == 10
