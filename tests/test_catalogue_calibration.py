"""Per-catalogue calibration: pure numpy on synthetic embeddings (no model), plus its store document."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mildnet import calibration as cal
from mildnet import catalogue_calibration as cc
from mildnet.errors import DataError
from mildnet.store import EmbeddingSet, LocalStore


def clustered(categories=3, products=6, photos=2, dim=16, seed=0, spread=(0.25, 0.08)):
    """Unit vectors: categories far apart, products within them closer, photos of a product closest."""
    rng = np.random.default_rng(seed)
    rows, ids, table = [], [], []
    for c in range(categories):
        centre = rng.normal(size=dim)
        for p in range(products):
            product = centre + spread[0] * np.linalg.norm(centre) * rng.normal(size=dim) / np.sqrt(dim)
            for k in range(photos):
                rows.append(product + spread[1] * np.linalg.norm(centre) * rng.normal(size=dim) / np.sqrt(dim))
                ids.append(f"c{c}/p{p}_{k}.jpg")
                table.append({"image": ids[-1], "product_id": f"c{c}p{p}", "category": f"c{c}"})
    v = np.asarray(rows, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    meta = {"model_fingerprint": "m" * 64, "catalog_fingerprint": "c" * 64, "image_size": 32}
    return EmbeddingSet(ids, ids, v, meta), pd.DataFrame(table)


def test_categorised_catalogue_rule_separates_sold_from_unsold_types():
    s, table = clustered()
    made = cc.calibrate_catalogue(s, table)
    rule = made.rule
    assert rule.method == "category holdout" and rule.auc > 0.9
    assert rule.in_called_close >= 0.9 and rule.out_called_not_close >= 0.8
    # A new photo of a sold product's kind is close; a vector from nowhere is not, in plain words.
    assert cal.assess(s.vectors[:3] @ s.vectors[0], made.match, rule=rule).close_match is True
    far = np.random.default_rng(9).normal(size=s.dim).astype(np.float32)
    verdict = cal.assess(s.vectors @ (far / np.linalg.norm(far)), made.match, rule=rule)
    assert verdict.close_match is False and verdict.reason == cal.NOTHING_ALIKE and "cosine" not in verdict.reason
    # Match strength: another photo of the same product beats another product of the same category.
    same, other = float(s.vectors[0] @ s.vectors[1]), float(s.vectors[0] @ s.vectors[2])
    assert made.match.match(same) > made.match.match(other)


@pytest.mark.parametrize("categories,why", [(None, "no categories"), ("one", "one category")])
def test_flat_rule_without_two_categories(categories, why):
    s, table = clustered()
    # Product ids kept: without a model (no augmented views) photos of one product are the only matching pairs.
    labels = table.drop(columns="category") if categories is None else table.assign(category="all")
    rule = cc.calibrate_catalogue(s, labels).rule
    assert rule.method == "flat" and rule.auc is None and why in rule.note and rule.score == "top1"


def test_one_photo_cannot_be_calibrated_and_refresh_says_so_in_one_line(tmp_path, monkeypatch):
    s, table = clustered()
    one = s.subset(s.ids[:1])
    with pytest.raises(DataError, match="at least two photos"):
        cc.calibrate_catalogue(one, table)
    store = LocalStore(tmp_path)
    found, note = cc.refresh(store, "k/1", one, labels=table)
    assert found is None and "\n" not in note and "model's own calibration" in note
    # Not tried again for the same set (every CLI search opens a new engine): the reason is kept beside it.
    tries = []
    real = cc.calibrate_catalogue

    def counting(*args, **kwargs):
        tries.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cc, "calibrate_catalogue", counting)
    assert cc.refresh(store, "k/1", one, labels=table) == (None, note) and tries == []
    assert cc.load_for(store, "k/1", one, table) is None
    # Another set (a photo added) is tried, and a calibration that fits replaces the record.
    found, again = cc.refresh(store, "k/1", s, labels=table)
    assert tries == [1] and found is not None and again is None
    assert cc.load_for(store, "k/1", s, table) is not None


def test_document_round_trip_stale_and_damaged(tmp_path):
    s, table = clustered()
    store = LocalStore(tmp_path)
    made, note = cc.refresh(store, "shop/abc", s, labels=table)
    assert note is None
    again = cc.load_for(store, "shop/abc", s, table)
    assert again.rule == made.rule and again.match.cosines == made.match.cosines
    # Other labels for the same photos (a catalogue.csv added or edited): refitted, not reused.
    assert cc.load_for(store, "shop/abc", s, None) is None
    relabelled = table.assign(category=table["category"].where(table.index % 2 == 0, "other"))
    assert cc.load_for(store, "shop/abc", s, relabelled) is None
    # Another catalogue state (a photo added): the kept calibration is not used for it.
    moved = EmbeddingSet(s.ids, s.paths, s.vectors, {**s.meta, "catalog_fingerprint": "d" * 64})
    assert cc.load_for(store, "shop/abc", moved, table) is None
    path = next(tmp_path.rglob(f"{cc.DOCUMENT}.json"))
    path.write_text('{"format": 1, "rule": [1]')
    with pytest.raises(cal.CalibrationError, match="damaged") as err:
        cc.load_for(store, "shop/abc", s)
    assert "\n" not in str(err.value)
    path.write_text('{"format": 1, "rule": {"score": "top9", "threshold": 0.5, "method": "flat"}, "match": {}}')
    with pytest.raises(cal.CalibrationError, match="damaged"):
        cc.load_for(store, "shop/abc", s)
    fixed, note = cc.refresh(store, "shop/abc", s, labels=table)  # a damaged document is replaced
    assert fixed is not None and note is None and cc.load_for(store, "shop/abc", s, table) is not None


def test_close_match_metrics_and_threshold():
    m = cc.close_match_metrics([0.9, 0.8, 0.7], [0.1, 0.2, 0.75], threshold=0.72)
    assert m["auc"] == pytest.approx(8 / 9) and m["in_called_close"] == pytest.approx(2 / 3)
    assert m["out_called_not_close"] == pytest.approx(2 / 3) and m["n_in"] == 3 and m["n_out"] == 3
    rule = cc.CloseMatchRule("top3", 0.5, "flat")
    assert rule.value([0.9, 0.1, 0.2, 0.95]) == pytest.approx((0.95 + 0.9 + 0.2) / 3)
    assert not rule.is_close([]) and rule.is_close([0.6])
    with pytest.raises(cal.CalibrationError):
        cc.CloseMatchRule("median", 0.5, "flat")


def test_evaluate_close_match_bad_input_is_one_line(capsys, tmp_path):
    from mildnet.cli import main

    assert main(["evaluate", "--close-match"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--close-match needs --images DIR" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_agreement_score_is_chosen_where_it_separates_better_and_search_reads_it_alike(tmp_path):
    # Wide categories (products spread as far as categories are apart): cosine alone overlaps, but a held-out
    # category's photos get neighbours of mixed types while a sold type's get its own type.
    s, table = clustered(categories=6, products=8, spread=(1.5, 0.3))
    # 96 photos: below the default simulation size for the fitted score, which then is not offered at all.
    assert cc.calibrate_catalogue(s, table).rule.score != "top1+agree5"
    made = cc.calibrate_catalogue(s, table, settings=cc.CatalogueSettings(min_fit_queries=20))
    rule = made.rule
    assert rule.score == "top1+agree5" and rule.k == 5 and len(rule.weights) == 3 and rule.weights[2] > 0
    assert set(rule.categories) == set(s.ids) and "share of the top 5" in cc.describe(made)
    # The per-search value (results with their ids, in any order) is the score the calibration measured.
    queries = s.vectors[::7]
    batch = cc.rule_scores(rule, s.vectors, queries, s.ids)
    for q, expected in zip(queries, batch):
        cos = s.vectors @ q
        top = np.argsort(-cos)[:8][::-1]
        assert rule.value(cos[top], [s.ids[i] for i in top]) == pytest.approx(expected, abs=1e-4)
    # Same cosines, different neighbours: five results of one category score higher than five of five.
    one = [s.ids[i] for i in range(0, 10, 2)]  # c0 photos
    mixed = [s.ids[i * 16] for i in range(5)]  # one photo of each of five categories
    assert rule.value([0.8] * 5, one) > rule.value([0.8] * 5, mixed)
    with pytest.raises(cal.CalibrationError, match="needs the results' ids"):
        rule.value([0.8] * 5)
    # Kept beside the set and read back as it was.
    store = LocalStore(tmp_path)
    cc.save_for(store, "shop/w", made)
    assert cc.load_for(store, "shop/w", s, table).rule == rule


def test_agreement_counts_only_the_results_a_query_has():
    top = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.8, -np.inf, -np.inf, -np.inf]])
    cats = np.array([[1, 1, 2, 1, 3], [4, 5, 4, 4, 4]])
    assert cc._agreement(top, cats).tolist() == pytest.approx([3 / 5, 1 / 2])
    with pytest.raises(cal.CalibrationError, match="three finite weights"):
        cc.CloseMatchRule("top1+agree5", 0.1, "category holdout", weights=(1.0, float("nan"), 2.0), categories={})


@pytest.mark.parametrize("layout", ["data add table", "no table", "under split folders"])
def test_a_folder_of_class_folders_is_a_catalogue_of_types(layout):
    """Review of issue 17: `data add` writes product = class folder and no category for class folders; read as
    products, no category could be held out and the flat rule called most unsold types close. Its photos are
    products of the class-folder types, also under train/val/test folders (not categories themselves)."""
    s, table = clustered()
    if layout == "under split folders":
        ids = [f"{('train', 'test')[n % 2]}/{i}" for n, i in enumerate(s.ids)]
        s = EmbeddingSet(ids, ids, s.vectors, s.meta)
    classes = [i.split("/")[-2] for i in s.ids]
    labels = None if layout != "data add table" else pd.DataFrame(
        {"image": s.ids, "product_id": classes, "category": ""})
    product, category = cc._labels(s.ids, labels)  # what calibrate_catalogue fits (it also needs a model's views)
    assert len(np.unique(product)) == len(s.ids) and len(np.unique(category)) == 3
    rule = cc.fit_rule(s.vectors, product, category, ids=s.ids)
    assert rule.method == "category holdout" and rule.auc > 0.9, rule


def test_evaluation_page_table_says_the_rates_are_simulated_and_which_runs_are_not_embedded():
    """Review of issue 17: the page labelled the simulation's rates as if measured on real photos, and called a
    run whose catalogue was not embedded yet "decided by the run's own calibration"."""
    from types import SimpleNamespace

    from mildnet.ui.evaluation_page import close_match_table

    s, table = clustered()
    made = cc.fit_rule(s.vectors, *cc._labels(s.ids, table), ids=s.ids)
    runs = [SimpleNamespace(key="a"), SimpleNamespace(key="b"), SimpleNamespace(key="c")]
    frame = close_match_table(runs, {"a": "A", "b": "B", "c": "C"},
                              {"a": SimpleNamespace(rule=made), "b": None, "c": None},
                              {"a": True, "b": False, "c": True})
    assert {"simulated ROC AUC", "simulated: sold types called close"} <= set(frame.columns)
    assert list(frame["decided by"]) == [made.method, "not embedded yet (search once to embed)",
                                         "run's own calibration"]
    # Issue 19 (6): empty cells read "None" on the page.
    assert frame.loc[1, "score"] == "—" and frame["threshold"].isna().tolist() == [False, True, True]
    assert "None" not in frame.astype(str).to_string()


@pytest.mark.parametrize("field,value", [("auc", "0.98"), ("in_called_close", 1.5), ("n_in", "12"),
                                         ("threshold", True), ("method", "magic")])
def test_a_document_damaged_into_other_types_is_refused_and_refitted(tmp_path, field, value):
    """Review of issue 17: a parseable document with "auc": "0.98" passed and then `embed`/`search` failed with a
    traceback while describing the rule; it must count as damaged (one line) and be refitted."""
    s, table = clustered()
    store = LocalStore(tmp_path)
    made, _ = cc.refresh(store, "shop/abc", s, labels=table)
    path = next(tmp_path.rglob(f"{cc.DOCUMENT}.json"))
    document = json.loads(path.read_text())
    document["rule"][field] = value
    path.write_text(json.dumps(document))
    with pytest.raises(cal.CalibrationError, match="damaged"):
        cc.load_for(store, "shop/abc", s, table)
    fixed, note = cc.refresh(store, "shop/abc", s, labels=table)
    assert note is None and fixed.rule == made.rule and "simulated AUC" in cc.describe(fixed)


def test_evaluate_close_match_leaves_out_an_unreadable_query_photo_with_one_warning(capsys, tmp_path):
    from PIL import Image

    from mildnet.cli import main

    rng = np.random.default_rng(0)
    folders = {name: tmp_path / name for name in ("gallery", "sold", "unsold")}
    for name, folder in folders.items():
        folder.mkdir()
        for k in range(3):
            base = {"gallery": 40, "sold": 40, "unsold": 200}[name]
            pixels = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.jpg")
    (folders["sold"] / "broken.jpg").write_bytes(b"not a jpeg at all")
    args = ["evaluate", "--close-match", "--model", "tiny_cnn", "--image-size", "32", "--images",
            str(folders["gallery"]), "--in-queries", str(folders["sold"]), "--out-queries", str(folders["unsold"]),
            "--json", "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 of 4 query photo(s)" in warnings[0] and "broken.jpg" in warnings[0]
    result = json.loads(captured.out.strip().splitlines()[-1])["close_match"]
    assert result["n_in"] == 3 and result["n_out"] == 3
    # Nothing readable on one side is one line, not an empty measurement.
    for k in range(3):
        (folders["unsold"] / f"{k}.jpg").write_bytes(b"broken too")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no out-of-catalogue query photo could be read" in err and "Traceback" not in err
