"""Evaluation metrics on hand-made embeddings, plus embedding real (tiny) images with tiny_cnn."""

import math

import numpy as np
import pandas as pd
import pytest

from mildnet.data.images import ImageCache
from mildnet.errors import DataError
from mildnet.evaluation import (
    ColourHistogram,
    EmbeddingTable,
    PixelFeatures,
    embed_paths,
    evaluate_embeddings,
    evaluate_triplets,
    make_baseline,
    read_catalog_for,
    retrieval_metrics,
    triplet_accuracy,
)
from tests.conftest import make_labelled_folder


def unit(deg):
    r = math.radians(deg)
    return [math.cos(r), math.sin(r)]


# Four images on the unit circle at 0, 30, 50 and 90 degrees: a, b of product A; c, d of product B.
TABLE = EmbeddingTable(["a", "b", "c", "d"], np.array([unit(0), unit(30), unit(50), unit(90)]))
TRIPLETS = pd.DataFrame(
    [("a", "b", "d"), ("b", "a", "c"), ("c", "d", "a")],  # correct (30 < 90), wrong (30 > 20), correct (40 < 50)
    columns=["query", "positive", "negative"],
)
CATALOG = pd.DataFrame(
    {
        "image": ["a", "b", "c", "d"],
        "product_id": ["A", "A", "B", "B"],
        "category": ["shirt", "shirt", "shirt", "dress"],
        "view": ["catalog", "wild", "wild", "catalog"],
    }
)


def test_triplet_accuracy_and_ties():
    assert triplet_accuracy([0.1, 0.5, 0.2], [0.2, 0.4, 0.2]) == pytest.approx(1 / 3)  # a tie is wrong
    assert math.isnan(triplet_accuracy([], []))


def test_evaluate_embeddings_hand_computed():
    report = evaluate_embeddings(TABLE, TRIPLETS, CATALOG)
    assert report.n_triplets == 3 and report.n_images == 4
    assert report.triplet_accuracy == pytest.approx(2 / 3)
    # in-class: (b,a,c) wrong and (c,d,a) right; out-of-class: (a,b,d) right.
    assert report.by_type["in_class"] == {"n": 2, "accuracy": 0.5}
    assert report.by_type["out_of_class"] == {"n": 1, "accuracy": 1.0}
    assert report.by_type["catalog_query"] == {"n": 1, "accuracy": 1.0}
    assert report.by_type["wild_query"] == {"n": 2, "accuracy": 0.5}
    expected_pos = [2 - 2 * math.cos(math.radians(d)) for d in (30, 30, 40)]
    np.testing.assert_allclose(report.d_pos, expected_pos, atol=1e-5)
    assert report.distances["positive"]["mean"] == pytest.approx(np.mean(expected_pos), abs=1e-5)
    assert sum(report.distances["negative"]["histogram"]) == 3
    # Retrieval over a, b, c, d (see test_retrieval_metrics_hand_computed).
    assert report.retrieval["recall@1"] == pytest.approx(0.5)
    assert report.retrieval["mAP"] == pytest.approx(0.75)
    data = report.to_dict()
    assert data["triplet_accuracy"] == pytest.approx(2 / 3) and data["n_triplets"] == 3
    assert "in-class" in report.format()


def test_evaluate_without_catalog_has_no_types_or_retrieval():
    report = evaluate_embeddings(TABLE, TRIPLETS)
    assert report.by_type == {} and report.retrieval is None
    assert "no product ids" in report.format()


def test_retrieval_metrics_hand_computed():
    # Rankings: a -> b (hit at 1); b -> c, a (hit at 2); c -> b, d (hit at 2); d -> c (hit at 1).
    # The singleton e (180 deg) is never a query but sits in the gallery, always last.
    vectors = np.array([unit(0), unit(30), unit(50), unit(90), unit(180)])
    result = retrieval_metrics(vectors, ["A", "A", "B", "B", "C"])
    assert result["n_queries"] == 4 and result["n_gallery"] == 5
    assert result["recall@1"] == pytest.approx(0.5)
    assert result["recall@5"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    assert retrieval_metrics(vectors[:2], ["A", "B"]) is None  # nothing to find


def test_embedding_table_lookup():
    assert TABLE.rows(["d", "a", "d"]).shape == (3, 2)
    with pytest.raises(KeyError, match="zz"):
        TABLE.rows(["zz"])


@pytest.fixture(scope="module")
def tiny_model():
    from mildnet.models import build_model

    return build_model("tiny_cnn", input_size=32, embedding_dim=8)


def test_embed_paths_unique_and_partial_batch(tmp_path, tiny_model):
    from mildnet.data.images import load_image

    root = make_labelled_folder(tmp_path / "img", classes=("red", "blue"), per_class=3, size=32)
    paths = ["red/red_0.jpg", "blue/blue_1.jpg", "red/red_0.jpg", "red/red_1.jpg", "blue/blue_0.jpg",
             "red/red_2.jpg", "blue/blue_1.jpg"]
    calls = []
    table = embed_paths(tiny_model, root, paths, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    unique = list(dict.fromkeys(paths))
    assert table.paths == unique and table.vectors.shape == (5, 8)
    assert calls[-1] == (5, 5) and len(calls) == 3  # 2 + 2 + a last partial batch of 1
    direct = tiny_model.predict(np.stack([load_image(root / p, 32) for p in unique]).astype("float32"), verbose=0)
    np.testing.assert_allclose(table.vectors, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-5)


def test_embed_paths_missing_and_corrupt_images(tmp_path, tiny_model):
    root = make_labelled_folder(tmp_path / "img", classes=("red",), per_class=2, size=32)
    with pytest.raises(DataError, match=r"2 of 3 images are missing .*nope\.jpg"):
        embed_paths(tiny_model, root, ["red/red_0.jpg", "nope.jpg", "gone/x.jpg"])
    (root / "bad.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        embed_paths(tiny_model, root, ["red/red_0.jpg", "bad.jpg"])


def test_read_catalog_beside_the_image_folder(tmp_path):
    # The catalog names images relative to its own folder (images/...), the triplets relative to images/.
    make_labelled_folder(tmp_path / "images", classes=("red",), per_class=2, size=16)
    pd.DataFrame({"image": ["images/red/red_0.jpg", "images/red/red_1.jpg"], "product_id": ["p", "p"]}).to_csv(
        tmp_path / "catalog.csv", index=False
    )
    catalog = read_catalog_for(tmp_path / "images")
    assert list(catalog["image"]) == ["red/red_0.jpg", "red/red_1.jpg"]
    assert read_catalog_for(tmp_path)["image"].iloc[0] == "images/red/red_0.jpg"  # root = catalog folder
    assert read_catalog_for(tmp_path / "images" / "red") is None


# --- image cache ------------------------------------------------------------------------------------


def test_image_cache_holds_load_image_pixels_and_embeds_identically(tmp_path, tiny_model):
    from mildnet.data.images import load_image

    root = make_labelled_folder(tmp_path / "img", classes=("red", "blue"), per_class=3, size=40)
    paths = ["red/red_0.jpg", "blue/blue_2.jpg", "red/red_0.jpg", "red/red_1.jpg", "blue/blue_0.jpg"]
    done = []
    cache = ImageCache.decode(root, paths, 32, workers=2, progress=lambda d, t: done.append((d, t)))
    assert cache.paths == list(dict.fromkeys(paths)) and cache.pixels.shape == (4, 32, 32, 3)
    assert done[-1] == (4, 4) and cache.nbytes == 4 * 32 * 32 * 3
    for i, path in enumerate(cache.paths):
        np.testing.assert_array_equal(cache.pixels[i], load_image(root / path, 32))
    np.testing.assert_array_equal(cache.rows(["blue/blue_0.jpg", "red/red_0.jpg"]), [3, 0])
    with pytest.raises(KeyError, match="nope"):
        cache.rows(["nope.jpg"])

    streamed = embed_paths(tiny_model, root, paths, batch_size=3)
    cached = embed_paths(tiny_model, root, paths, batch_size=3, cache=cache)
    assert cached.paths == streamed.paths
    np.testing.assert_allclose(cached.vectors, streamed.vectors, atol=1e-6)
    # An image the cache lacks: decoded from disk instead.
    assert embed_paths(tiny_model, root, paths + ["blue/blue_1.jpg"], cache=cache).vectors.shape == (5, 8)


def test_image_cache_reports_missing_and_corrupt_images(tmp_path):
    root = make_labelled_folder(tmp_path / "img", classes=("red",), per_class=2, size=16)
    with pytest.raises(DataError, match=r"1 of 2 images are missing .*gone\.jpg"):
        ImageCache.decode(root, ["red/red_0.jpg", "gone.jpg"], 16)
    (root / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        ImageCache.decode(root, ["red/red_0.jpg", "bad.jpg"], 16)


# --- baselines --------------------------------------------------------------------------------------


def colour_triplets(rng_seed=0) -> pd.DataFrame:
    """Every (query, positive) pair of one colour against every image of another colour."""
    rows = []
    colours = ("red", "green", "blue")
    for c in colours:
        for other in colours:
            if other != c:
                for i in range(3):
                    rows.append((f"{c}/{c}_{i}.jpg", f"{c}/{c}_{(i + 1) % 3}.jpg", f"{other}/{other}_{i}.jpg"))
    return pd.DataFrame(rows, columns=["query", "positive", "negative"])


def test_histogram_baseline_separates_solid_colours(tmp_path):
    root = make_labelled_folder(tmp_path / "img", classes=("red", "green", "blue"), per_class=3, size=40)
    triplets = colour_triplets()
    report = evaluate_triplets(make_baseline("histogram"), root, triplets)
    assert report.triplet_accuracy == 1.0 and report.n_triplets == 18
    assert report.source == {"baseline": "histogram", "bins": 8, "space": "rgb", "decode_size": 64}
    table = ColourHistogram(bins=4).embed(root, ["red/red_0.jpg", "red/red_0.jpg"])
    assert table.vectors.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-6)
    assert (table.vectors >= 0).all()
    with pytest.raises(ValueError, match="divide 256"):
        ColourHistogram(bins=7)


def test_pixel_baseline_shape_and_normalisation(tmp_path):
    from mildnet.data.images import load_image

    root = make_labelled_folder(tmp_path / "img", classes=("red", "blue"), per_class=2, size=48)
    paths = ["blue/blue_1.jpg", "red/red_0.jpg", "blue/blue_1.jpg"]
    table = PixelFeatures().embed(root, paths)
    assert table.paths == ["blue/blue_1.jpg", "red/red_0.jpg"] and table.vectors.shape == (2, 32 * 32 * 3)
    np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-6)
    raw = load_image(root / "red/red_0.jpg", 32).reshape(-1).astype(np.float32)
    np.testing.assert_allclose(table.rows(["red/red_0.jpg"])[0], raw / np.linalg.norm(raw), atol=1e-6)
    assert PixelFeatures(size=8).embed(root, paths).vectors.shape == (2, 192)
    with pytest.raises(ValueError, match="unknown baseline 'sift'"):
        make_baseline("sift")
    with pytest.raises(DataError, match="missing"):
        PixelFeatures().embed(root, ["nope.jpg"])


def test_cli_evaluate_baselines(tmp_path, capsys):
    import json

    from mildnet.cli import main
    from mildnet.data.triplets import write_triplets

    root = make_labelled_folder(tmp_path / "img", classes=("red", "green", "blue"), per_class=3, size=40)
    write_triplets(tmp_path / "t.csv", colour_triplets())
    for name in ("histogram", "pixels"):
        rc = main(["evaluate", "--baseline", name, "--images", str(root), "--triplets", str(tmp_path / "t.csv"),
                   "--json", "--quiet"])
        assert rc == 0
        lines = capsys.readouterr().out.strip().splitlines()
        report = json.loads(lines[-1])
        assert report["source"]["baseline"] == name and report["n_triplets"] == 18
        assert lines[0].startswith(f"model: {name} baseline")
        if name == "histogram":
            assert report["triplet_accuracy"] == 1.0
    assert main(["evaluate", "--baseline", "pixels", "--model", "tiny_cnn", "--images", str(root),
                 "--triplets", str(tmp_path / "t.csv")]) == 2
    assert main(["evaluate", "--baseline", "pixels", "--image-size", "64", "--images", str(root),
                 "--triplets", str(tmp_path / "t.csv")]) == 2


def test_cli_unknown_split_is_a_bad_argument_before_any_download(capsys):
    from mildnet.cli import main

    assert main(["evaluate", "--baseline", "histogram", "--dataset", "clothing-small", "--split", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "cannot reach" not in err
