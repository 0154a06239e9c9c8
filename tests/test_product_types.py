"""Product-type heads (mildnet/product_types.py) and the close-match "kind" score they give a catalogue's
calibration (mildnet/catalogue_calibration.py), down to a search engine's verdict on real (tiny) photos."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from mildnet import catalogue_calibration as cc
from mildnet import product_types as pt
from mildnet.calibration import CalibrationError
from tests.conftest import PROJECT_ROOT, _shared


def _clusters(types=("tee", "pants", "bag"), per=30, dim=16, seed=0):
    """Unit vectors around one random centre per type, and their type names."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(types), dim))
    vectors = np.concatenate([c + 0.3 * rng.normal(size=(per, dim)) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), [t for t in types for _ in range(per)]


def test_a_fitted_head_types_photos_and_round_trips_through_its_file(tmp_path):
    vectors, labels = _clusters()
    types = pt.fit(vectors, labels, "fp-1")
    assert types.names == ("bag", "pants", "tee") and types.dim == 16
    p = types.probabilities(vectors)
    assert p.shape == (90, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert np.mean(np.asarray(types.names)[p.argmax(axis=1)] == np.asarray(labels)) > 0.95
    assert types.probabilities(vectors[0]).shape == (3,)
    pt.save(types, tmp_path)
    again = pt.load(tmp_path, "fp-1")
    assert again.names == types.names and again.fingerprint == types.fingerprint
    assert np.allclose(again.probabilities(vectors), p, atol=1e-5)
    assert pt.load(tmp_path, "another model") is None  # a head belongs to one model's weights
    assert pt.load(tmp_path / "none") is None
    with pytest.raises(pt.ProductTypesError, match="dimensions"):
        types.probabilities(np.ones((2, 8)))


def test_damaged_or_unfit_heads_are_refused_with_the_reason(tmp_path):
    (tmp_path / pt.FILE).write_text("{not json")
    with pytest.raises(pt.ProductTypesError, match="damaged"):
        pt.load(tmp_path)
    vectors, labels = _clusters()
    data = pt.fit(vectors, labels, "fp").to_dict()
    data["bias"] = data["bias"][:2]
    (tmp_path / pt.FILE).write_text(json.dumps(data))
    with pytest.raises(pt.ProductTypesError, match="do not fit"):
        pt.load(tmp_path)
    with pytest.raises(pt.ProductTypesError, match="two types"):
        pt.fit(vectors[:30], labels[:30], "fp")
    with pytest.raises(pt.ProductTypesError, match="pair up"):
        pt.fit(vectors, labels[:10], "fp")


def test_sold_mass_counts_only_types_the_catalogue_has():
    share = pt.catalogue_share(np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]]))
    mass = pt.sold_mass(np.array([[0.95, 0.05, 0.0], [0.0, 0.05, 0.95]]), share)
    assert mass[0] == pytest.approx(1.0) and mass[1] == pytest.approx(0.05)


def test_a_catalogue_the_head_knows_is_judged_by_kind():
    # Catalogue: tees and pants (two products a type); a bag is a kind it does not sell.
    vectors, labels = _clusters(per=40)
    types = pt.fit(vectors, labels, "fp")
    sold = np.asarray(labels) != "bag"
    gallery, names = vectors[sold][::2], np.asarray(labels)[sold][::2]
    product = np.arange(len(gallery)) // 2
    category = np.unique(names, return_inverse=True)[1]
    rule = cc.fit_rule(gallery, product, category, kinds=types.probabilities(gallery))
    assert rule.score == cc.KIND and rule.method == "type-group holdout" and rule.threshold <= 0.9
    assert set(rule.considered) == {"top1", "top3", cc.KIND}
    queries = vectors[1::2]
    scores = cc.rule_scores(rule, gallery, queries, query_kinds=types.probabilities(queries))
    is_bag = np.asarray(labels)[1::2] == "bag"
    assert (scores[~is_bag] >= rule.threshold).mean() > 0.9 and (scores[is_bag] < rule.threshold).mean() > 0.9
    with pytest.raises(CalibrationError, match="product-type"):
        rule.value([0.9], kinds=None)
    assert rule.is_close([0.1], kinds=types.probabilities(vectors[sold][1]))  # a sold kind, however far
    again = cc.CloseMatchRule(**json.loads(json.dumps(dataclasses.asdict(rule))))
    assert again.sold_share == rule.sold_share and again.threshold == rule.threshold
    # Without the head's kinds, or where every category is one kind to it, the cosine scores decide as before.
    assert cc.fit_rule(gallery, product, category).score != cc.KIND
    one_kind = np.tile(types.probabilities(vectors[:1]), (len(gallery), 1))
    assert cc.fit_rule(gallery, product, category, kinds=one_kind).score != cc.KIND


@pytest.mark.shared
def test_search_with_the_shipped_model_says_which_kinds_a_real_catalogue_sells(tmp_path):
    """End to end on real photos: the shipped model and its type head over a catalogue of clothing-small test photos
    of three garment types (class folders); a validation photo of a sold type is a close match, photos of shoes and
    hats are not."""
    from mildnet.search.catalogue import Catalogue
    from mildnet.search.engine import LoadedModel, SearchEngine
    from mildnet.store import LocalStore

    data = _shared("data", "clothing-dataset-small")
    shop = tmp_path / "shop"
    for kind in ("t-shirt", "pants", "dress"):
        (shop / kind).mkdir(parents=True)
        for photo in sorted((data / "test" / kind).glob("*.jpg"))[:20]:
            (shop / kind / photo.name).symlink_to(photo)
    model = LoadedModel.from_run(PROJECT_ROOT / "mildnet" / "pretrained" / "real")
    engine = SearchEngine.open(model, Catalogue.folder(shop), LocalStore(tmp_path / "store"))
    engine.update()
    own, _ = engine.catalogue_calibration
    assert own.rule.score == cc.KIND and own.types_fingerprint == model.product_types.fingerprint
    sold = [sorted((data / "validation" / kind).glob("*.jpg"))[i] for kind in ("t-shirt", "pants") for i in (0, 1)]
    unsold = [sorted((data / "validation" / kind).glob("*.jpg"))[i] for kind in ("shoes", "hat") for i in (0, 1)]
    assert [engine.query_image(p).close_match for p in sold] == [True] * 4
    assert [engine.query_image(p).close_match for p in unsold] == [False] * 4
    # The same store opened by the model without its head does not use a calibration fitted with it.
    plain = dataclasses.replace(model, product_types=None)
    assert SearchEngine.open(plain, Catalogue.folder(shop), LocalStore(tmp_path / "store")
                             ).catalogue_calibration[0].rule.score != cc.KIND


def test_the_shipped_model_carries_its_type_head():
    from mildnet.search.engine import LoadedModel

    loaded = LoadedModel.from_run(PROJECT_ROOT / "mildnet" / "pretrained" / "real")
    assert loaded.product_types is not None and loaded.types_note is None
    assert {"t-shirt", "pants", "shoes", "bag", "watch"} <= set(loaded.product_types.names)
    assert loaded.product_types.dim == 256


def test_carry_over_keeps_a_head_only_where_the_new_model_types_photos_as_the_old_one():
    vectors, labels = _clusters(per=40)
    types = pt.fit(vectors, labels, "old")
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))[0]
    moved = vectors @ rotation  # a model whose space turned: the same photos, other coordinates
    head, agreement = pt.carry_over(types, vectors, moved, "new")
    assert head is not None and agreement > 0.95 and head.model_fingerprint == "new"
    assert head.summary["carried_over"]["photos"] == 120
    scrambled = np.random.default_rng(2).permutation(moved)  # a model that forgot what the photos were
    assert pt.carry_over(types, vectors, scrambled, "new")[0] is None
    with pytest.raises(pt.ProductTypesError, match="pair up"):
        pt.carry_over(types, vectors, moved[:5], "new")


@pytest.mark.shared
def test_a_run_continued_from_the_shipped_model_carries_its_product_types(tmp_path):
    """What the sidebar's training does: continue the shipped model on a shop's photos (two epochs, tiny folder);
    the new run has its own weights and a type head carried over to them, which search loads."""
    _shared("weights")  # the shipped model's backbone is read from its own file, but keep real-data tests together
    from mildnet import training
    from mildnet.search.engine import LoadedModel
    from tests.conftest import make_labelled_folder

    shop = make_labelled_folder(tmp_path / "shop", classes=("red", "green", "blue"), per_class=4, size=64)
    photos = sorted(p.relative_to(shop).as_posix() for p in shop.rglob("*.jpg"))
    # Positives of another colour: triplets the shipped model gets wrong, so that training moves its weights.
    rows = [f"{q},{p},{n}" for q in photos for p in photos for n in photos
            if q != n and q.split("/")[0] == n.split("/")[0] != p.split("/")[0]][::7]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    parent = PROJECT_ROOT / "mildnet" / "pretrained" / "real"
    config = training.TrainConfig(images=str(shop), triplets=str(tmp_path / "train.csv"), out=str(tmp_path / "run"),
                                  init_from=str(parent), epochs=2, batch_size=8, learning_rate=1e-4)
    training.train(config)
    run = LoadedModel.from_run(tmp_path / "run")
    assert run.fingerprint != LoadedModel.from_run(parent).fingerprint
    assert run.product_types is not None and run.product_types.model_fingerprint == run.fingerprint
    assert run.product_types.summary["carried_over"]["agreement"] >= 0.9
