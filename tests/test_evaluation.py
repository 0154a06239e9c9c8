"""Evaluation metrics on hand-made embeddings, plus embedding real (tiny) images with tiny_cnn."""

import math

import numpy as np
import pandas as pd
import pytest

from mildnet.data.catalog import read_catalog_for
from mildnet.data.images import ImageCache
from mildnet.embeddings import embed_paths
from mildnet.errors import DataError
from mildnet.evaluation import (
    BASELINE_NAMES,
    ColourHistogram,
    ImageNetFeatures,
    PixelFeatures,
    baseline_summary,
    concat_tables,
    evaluate_baselines,
    evaluate_embeddings,
    evaluate_triplets,
    make_baseline,
    retrieval_metrics,
    triplet_accuracy,
)
from mildnet.store import EmbeddingSet
from tests.conftest import make_labelled_folder


def unit(deg):
    r = math.radians(deg)
    return [math.cos(r), math.sin(r)]


# Four images on the unit circle at 0, 30, 50 and 90 degrees: a, b of product A; c, d of product B.
TABLE = EmbeddingSet.from_paths(["a", "b", "c", "d"], np.array([unit(0), unit(30), unit(50), unit(90)]))
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


def test_embedding_has_one_home():
    # Training and calibration embed through mildnet.embeddings; evaluation only names the same function.
    import ast
    from pathlib import Path

    from mildnet import embeddings, evaluation

    assert evaluation.embed_paths is embeddings.embed_paths
    package = Path(embeddings.__file__).parent
    for path in [package / "calibration.py", *sorted((package / "training").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and any(a.name == "embed_paths" for a in node.names):
                assert node.module == "mildnet.embeddings", f"{path.name}:{node.lineno} imports it from {node.module}"


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


# --- baselines next to a run -----------------------------------------------------------------------


def colour_catalog(root) -> pd.DataFrame:
    """Catalog of the colour folder: one product per colour; red and green are tops, blue is bottoms, so
    colour_triplets holds both in-class (red vs green) and out-of-class (vs blue) negatives."""
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    colour = [p.split("/")[0] for p in images]
    return pd.DataFrame({"image": images, "product_id": colour, "split": "test",
                         "category": ["bottoms" if c == "blue" else "tops" for c in colour]})


@pytest.fixture
def unreachable_weights(monkeypatch, tmp_path):
    """No SqueezeNet weights anywhere: an empty cache, a download URL on a closed localhost port, and no
    shipped runs (whose frozen backbone would carry them)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the socket is: connections are refused
    cache = tmp_path / "weights-cache"
    cache.mkdir()
    monkeypatch.setenv("MILDNET_WEIGHTS_CACHE", str(cache))
    monkeypatch.setenv("MILDNET_WEIGHTS_URL_SQUEEZENET", f"http://127.0.0.1:{port}/squeezenet.h5")
    monkeypatch.setenv("MILDNET_PRETRAINED", str(tmp_path / "no-shipped-runs"))
    return cache


def test_cli_baseline_names_match_the_library():
    from mildnet.cli.evaluate import BASELINE_CHOICES

    assert BASELINE_CHOICES == BASELINE_NAMES == ("pixels", "histogram", "imagenet", "imagenet+histogram")


def test_concat_tables_weighs_parts_equally():
    a = EmbeddingSet.from_paths(["x", "y"], np.array([[3.0, 0.0], [0.0, 1.0]]))
    b = EmbeddingSet.from_paths(["x", "y"], np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))
    joined = concat_tables([a, b])
    assert joined.vectors.shape == (2, 5)
    np.testing.assert_allclose(np.linalg.norm(joined.vectors, axis=1), 1.0, atol=1e-6)
    # cos(x, y) is 0 in a and 1 in b: equal weight makes it their mean, whatever the parts' scales.
    assert float(joined.vectors[0] @ joined.vectors[1]) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="same paths"):
        concat_tables([a, EmbeddingSet.from_paths(["y", "x"], a.vectors)])


def test_evaluate_baselines_scores_each_on_the_same_triplets(tmp_path):
    root = make_labelled_folder(tmp_path / "img", classes=("red", "green", "blue"), per_class=3, size=40)
    triplets, catalog = colour_triplets(), colour_catalog(root)
    steps = []
    results = evaluate_baselines(root, triplets, catalog, names=("pixels", "histogram"),
                                 progress=lambda done, total, name: steps.append((name, done, total)))
    assert list(results) == ["pixels", "histogram"]
    assert ("histogram", 9, 9) in steps and ("pixels", 9, 9) in steps
    for name, report in results.items():
        alone = evaluate_triplets(make_baseline(name), root, triplets, catalog=catalog)
        assert report.n_triplets == 18
        assert report.triplet_accuracy == alone.triplet_accuracy
        np.testing.assert_allclose(report.d_pos, alone.d_pos, atol=1e-6)
        assert report.source == make_baseline(name).describe()
    hist = results["histogram"]
    assert hist.triplet_accuracy == 1.0
    assert hist.by_type["in_class"]["n"] == 6 and hist.by_type["out_of_class"]["n"] == 12

    summary = baseline_summary(results, run_accuracy=0.75)
    assert summary["histogram"]["gain_points"] == -25.0
    assert summary["histogram"]["by_type"]["in_class"] == {"n": 6, "accuracy": 1.0}
    assert summary["pixels"]["gain_points"] == pytest.approx(
        round(100 * (0.75 - results["pixels"].triplet_accuracy), 2))
    assert "gain_points" not in baseline_summary(results)["pixels"]
    with pytest.raises(ValueError, match="unknown baseline 'sift'"):
        evaluate_baselines(root, triplets, names=("sift",))


def test_imagenet_baselines_with_the_real_weights(tmp_path, squeezenet_weights):
    from mildnet.models import build_model

    root = make_labelled_folder(tmp_path / "img", classes=("red", "green", "blue"), per_class=3, size=40)
    triplets, catalog = colour_triplets(), colour_catalog(root)
    results = evaluate_baselines(root, triplets, catalog, weights=squeezenet_weights,
                                 names=("histogram", "imagenet", "imagenet+histogram"), image_size=64)
    imagenet, hist, both = results["imagenet"], results["histogram"], results["imagenet+histogram"]
    assert imagenet.source == {"baseline": "imagenet", "model": "squeezenet_gap", "weights": str(squeezenet_weights),
                               "image_size": 64}
    assert [part["baseline"] for part in both.source["parts"]] == ["imagenet", "histogram"]
    # Solid colours with noise: ImageNet features group them too, better than chance.
    assert imagenet.triplet_accuracy > 0.5
    # Equal weight: the concatenation's squared distance is the mean of its parts' distances.
    np.testing.assert_allclose(both.d_pos, (imagenet.d_pos + hist.d_pos) / 2, atol=1e-5)
    np.testing.assert_allclose(both.d_neg, (imagenet.d_neg + hist.d_neg) / 2, atol=1e-5)

    # The features are squeezenet_gap's with the ImageNet weights, not a random network's.
    paths = ["red/red_0.jpg", "blue/blue_1.jpg"]
    table = ImageNetFeatures(squeezenet_weights, image_size=64).embed(root, paths)
    pretrained = embed_paths(build_model("squeezenet_gap", 64, weights=str(squeezenet_weights)), root, paths)
    random = embed_paths(build_model("squeezenet_gap", 64, weights=None), root, paths)
    np.testing.assert_allclose(table.vectors, pretrained.vectors, atol=1e-5)
    assert not np.allclose(table.vectors, random.vectors, atol=1e-3)


def test_imagenet_baselines_unavailable_offline_are_reported_not_dropped(tmp_path, unreachable_weights):
    from mildnet.models.squeezenet import WEIGHTS_FILENAME

    root = make_labelled_folder(tmp_path / "img", classes=("red", "green", "blue"), per_class=3, size=32)
    results = evaluate_baselines(root, colour_triplets(), colour_catalog(root))
    assert list(results) == list(BASELINE_NAMES)
    assert results["histogram"].triplet_accuracy == 1.0 and results["pixels"].n_triplets == 18
    for name in ("imagenet", "imagenet+histogram"):
        reason = results[name]["unavailable"]
        assert "could not download" in reason and "127.0.0.1" in reason
        assert WEIGHTS_FILENAME in reason and "--baseline-weights PATH" in reason
        assert str(unreachable_weights) in reason  # where a copy would be found offline
    summary = baseline_summary(results, 0.9)
    assert summary["imagenet"] == {"unavailable": results["imagenet"]["unavailable"]}
    assert not list(unreachable_weights.rglob("*.h5"))
    # A weights file that is not SqueezeNet's is unavailable too, with the loader's reason.
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not hdf5")
    reason = evaluate_baselines(root, colour_triplets(), names=("imagenet",), weights=bogus)["imagenet"]["unavailable"]
    assert "not an HDF5 weights file" in reason


def _colour_data(tmp_path):
    from mildnet.data.triplets import write_triplets

    root = make_labelled_folder(tmp_path / "img", classes=("red", "green", "blue"), per_class=3, size=32)
    write_triplets(tmp_path / "t.csv", colour_triplets())
    colour_catalog(root).to_csv(tmp_path / "catalog.csv", index=False)
    return ["--images", str(root), "--triplets", str(tmp_path / "t.csv"), "--catalog", str(tmp_path / "catalog.csv")]


def test_cli_evaluate_shows_baselines_next_to_the_model(tmp_path, capsys, unreachable_weights):
    import json

    from mildnet.cli import main

    data = _colour_data(tmp_path)
    model = ["evaluate", "--model", "tiny_cnn", "--image-size", "32", *data]
    assert main([*model, "--json", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    baselines = report["baselines"]
    assert set(baselines) == set(BASELINE_NAMES)  # the JSON keys are sorted
    hist = baselines["histogram"]
    assert hist["triplet_accuracy"] == 1.0 and hist["n_triplets"] == report["n_triplets"] == 18
    assert set(hist["by_type"]) == {"in_class", "out_of_class"}
    assert hist["gain_points"] == round(100 * (report["triplet_accuracy"] - 1.0), 2)
    assert "--baseline-weights" in baselines["imagenet"]["unavailable"]
    text = "\n".join(lines[:-1])
    assert "no-learning baselines on the same 18 triplets" in text
    assert any(line.startswith("histogram") and line.endswith(" pts") for line in lines[:-1])
    assert any(line.startswith("imagenet ") and "unavailable: SqueezeNet ImageNet weights" in line
               for line in lines[:-1])

    assert main([*model, "--json", "--quiet", "--baselines", "histogram, pixels"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["baselines"]) == {"histogram", "pixels"}
    assert main([*model, "--json", "--quiet", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    assert "baselines" not in json.loads(out.strip().splitlines()[-1]) and "no-learning" not in out
    # --baseline NAME scores the baseline alone unless others are asked for.
    assert main(["evaluate", "--baseline", "pixels", *data, "--json", "--quiet"]) == 0
    assert "baselines" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["evaluate", "--baseline", "pixels", *data, "--json", "--quiet", "--baselines", "histogram"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["source"]["baseline"] == "pixels"
    assert report["baselines"]["histogram"]["gain_points"] == round(100 * (report["triplet_accuracy"] - 1.0), 2)

    for bad in (["--baselines", "sift"], ["--baselines", ","], ["--baselines", "pixels", "--no-baselines"],
                ["--baseline-weights", str(tmp_path / "nope.h5")]):
        assert main([*model, "--quiet", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    # The ImageNet baseline alone, with no weights reachable: a data/model problem, one line, with the fix.
    assert main(["evaluate", "--baseline", "imagenet", *data, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--baseline-weights PATH" in err


def test_cli_evaluate_imagenet_baselines_with_local_weights(tmp_path, capsys, squeezenet_weights,
                                                            unreachable_weights):
    import json

    from mildnet.cli import main

    data = _colour_data(tmp_path)
    assert main(["evaluate", "--model", "tiny_cnn", "--image-size", "32", *data, "--json", "--quiet",
                 "--baselines", "imagenet,imagenet+histogram", "--baseline-weights", str(squeezenet_weights)]) == 0
    baselines = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["baselines"]
    for name in ("imagenet", "imagenet+histogram"):
        assert 0.5 < baselines[name]["triplet_accuracy"] <= 1.0, baselines[name]
        assert set(baselines[name]["by_type"]) == {"in_class", "out_of_class"}
    assert baselines["imagenet"]["source"]["weights"] == str(squeezenet_weights)
    assert main(["evaluate", "--baseline", "imagenet+histogram", "--baseline-weights", str(squeezenet_weights),
                 *data, "--json", "--quiet"]) == 0
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert alone["triplet_accuracy"] == baselines["imagenet+histogram"]["triplet_accuracy"]
