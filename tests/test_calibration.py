"""Match strength and "no close match": the calibration module, ``calibrate`` / ``search`` on the CLI, and the
Search page, on tiny generated images and (where ../shared is present) real photos against the shipped sample
model and the default sample catalogue."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mildnet import calibration as cal
from mildnet.cli import main
from tests.conftest import make_labelled_folder

SIZE = 32
PROJECT = Path(__file__).resolve().parents[1]
SHIPPED = PROJECT / "mildnet" / "pretrained" / "sample"
# A real photo (a quilted jacket on a hanger, clothing-dataset-small test split): against the synthetic sample
# catalogue its best cosine is 0.980, below the catalogue's nearest-neighbour floor of 0.996; 59 % of that split's
# 372 photos are flagged (see mildnet/calibration.py), and this one with a clear margin.
REAL_PHOTO = ("test", "outwear", "01e4ab4f-6148-4dd7-9a43-df7681fbc71d.jpg")
# A real photo of a kind of product the sample does not sell (a hat; the sample sells tops and dresses). The app's
# default model (the real-photo one) with the catalogue's own close-match rule calls real photos of tops close
# (they are the kind of product it sells: the jacket above is, at 0.824 against a threshold of 0.772) and a hat
# not (0.615).
UNSOLD_PHOTO = ("test", "hat", "2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


# --- the module ----------------------------------------------------------------------------------


def _pairs(seed=0, n=300):
    rng = np.random.default_rng(seed)
    pos = np.clip(1 - rng.gamma(2.0, 0.02, n), -1, 1)  # mostly 0.9-1.0
    neg = np.clip(rng.normal(0.2, 0.35, n), -1, 0.999)  # broad, a tail overlapping the positives
    return pos, neg


def test_fit_is_monotone_in_unit_range_and_pins_identical_images():
    pos, neg = _pairs()
    c = cal.fit(pos, neg)
    grid = np.linspace(-1, 1, 2001)
    m = c.match(grid)
    assert np.all((m >= 0) & (m <= 1))
    assert np.all(np.diff(m) >= 0)
    assert m[0] < 0.05 and c.match(0.0) < 0.2 and c.match(0.97) > 0.8
    assert c.match(1.0) == 1.0 and c.match(0.99999) >= 0.99
    # Smoothed: no cosine short of identical reads as a certainty.
    assert c.match(max(pos.max(), neg.max())) < 1.0
    assert c.n_positive == c.n_negative == 300
    assert c.summary["cosine_at_match_0.5"] == pytest.approx(c.cosine_at(0.5))
    assert float(c.match(c.cosine_at(0.5))) == pytest.approx(0.5, abs=1e-9)


def test_fit_does_not_depend_on_class_sizes():
    pos, neg = _pairs()
    balanced = cal.fit(pos, neg)
    doubled = cal.fit(pos, np.concatenate([neg, neg]))
    grid = np.linspace(0.5, 0.999, 50)
    assert np.max(np.abs(balanced.match(grid) - doubled.match(grid))) < 0.05


def test_fit_needs_both_kinds_of_pairs():
    from mildnet.errors import DataError

    with pytest.raises(DataError, match="matching and non-matching"):
        cal.fit([0.9, 0.95], [])


def test_a_model_that_does_not_separate_the_pairs_is_not_calibrated():
    from mildnet.errors import DataError

    # A collapsed model puts every pair at cosine 1: fitted, cosine 1 read as a certain match for any result.
    with pytest.raises(DataError, match=r"does not rank matching pairs above non-matching ones \(AUC 0.50\)"):
        cal.fit(np.ones(15), np.ones(15))
    with pytest.raises(DataError, match=r"AUC 0.00"):
        cal.fit([0.1, 0.2], [0.8, 0.9])
    assert cal._rank_auc(np.array([0.5, 0.5, 0.9, 0.1]), np.array([1.0, 0.0, 1.0, 0.0])) == 0.875
    assert cal.fit([0.6, 0.9], [0.5, 0.7]).match(0.95) > 0.5  # weak but real separation (AUC 0.75) is fitted


def test_json_round_trip_and_absent_file(tmp_path):
    c = cal.fit(*_pairs(), source={"model_fingerprint": "abc"})
    path = cal.save(c, tmp_path)
    assert path == tmp_path / "calibration.json"
    data = json.loads(path.read_text())  # plain JSON, numbers only
    assert data["format"] == 1 and len(data["cosines"]) == len(data["matches"]) >= 2
    back = cal.load(tmp_path)
    assert back == c and back.model_fingerprint == "abc"
    assert not list(tmp_path.glob(".*.tmp"))
    assert cal.load(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("text,reason", [
    ("{", "not JSON"),
    ('{"format": 1, "cosines": [0, 1], "n_positive": 1, "n_negative": 1}', "missing field 'matches'"),
    ('{"format": 1, "cosines": [0, 1], "matches": [0.9, 0.2], "n_positive": 1, "n_negative": 1}', "decrease"),
    ('{"format": 1, "cosines": [1, 0], "matches": [0, 1], "n_positive": 1, "n_negative": 1}', "increasing"),
    ('{"format": 1, "cosines": [0, 1], "matches": [0, "x"], "n_positive": 1, "n_negative": 1}', "not a number"),
    ('{"format": 7, "cosines": [0, 1], "matches": [0, 1], "n_positive": 1, "n_negative": 1}', "format"),
])
def test_damaged_file_is_a_clear_error(tmp_path, text, reason):
    (tmp_path / "calibration.json").write_text(text)
    with pytest.raises(cal.CalibrationError) as info:
        cal.load(tmp_path)
    message = str(info.value)
    assert "is damaged" in message and reason in message and "calibrate --run" in message
    assert "\n" not in message


def test_catalogue_reference_and_close_match_rule():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    vectors = np.concatenate([base, base + rng.normal(scale=0.05, size=base.shape)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ref = cal.catalogue_reference(vectors)
    assert len(ref) == 80 and np.all(np.diff(ref) >= 0) and ref[0] > 0.98  # each row's twin
    sampled = cal.catalogue_reference(vectors, max_rows=10)
    assert len(sampled) == 10 and set(np.round(sampled, 6)) <= set(np.round(ref, 6))
    assert len(cal.catalogue_reference(vectors[:1])) == 0

    c = cal.fit(*_pairs())
    floor = float(np.quantile(ref, cal.CATALOGUE_QUANTILE))
    assert cal.close_match(1.0, c, ref)
    assert not cal.close_match(floor - 0.002, c, ref)  # a high match, but further than the catalogue's neighbours
    assert cal.close_match(floor - 0.002, c, None)  # without a catalogue, the match rule alone
    assert not cal.close_match(-0.5, c, None)
    verdict = cal.assess([floor - 0.002, 0.5], c, ref)
    assert verdict.close_match is False and verdict.reason == cal.NOTHING_ALIKE  # plain words, no cosines
    assert verdict.matches[0] >= verdict.matches[1]
    assert cal.assess([0.9, 0.8], None) == cal.Verdict([None, None], None)


# --- CLI on tiny images ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny_cnn run, 16 solid-colour images in 4 classes, val triplets, and their embeddings in a store."""
    import keras

    from mildnet.models import build_model
    from tests.test_embeddings import make_run

    root = tmp_path_factory.mktemp("calib")
    images = make_labelled_folder(root / "images", classes=("red", "green", "blue", "yellow"), per_class=4, size=SIZE)
    rows = []
    classes = ["red", "green", "blue", "yellow"]
    for ci, name in enumerate(classes):
        for i in range(4):
            other = classes[(ci + 1 + i % 3) % 4]
            rows.append(f"{name}/{name}_{i}.jpg,{name}/{name}_{(i + 1) % 4}.jpg,{other}/{other}_{i}.jpg")
    (root / "val.csv").write_text("\n".join(rows) + "\n")
    keras.utils.set_random_seed(0)
    run_dir = make_run(root / "run", build_model("tiny_cnn", SIZE))
    cal.calibrate_run(run_dir, images, root / "val.csv")
    return {"root": root, "images": images, "triplets": root / "val.csv", "run": run_dir, "store": root / "store"}


def test_calibrate_then_search_finds_itself_with_a_full_match(capsys, tiny):
    code, out, err = run(capsys, "calibrate", "--run", tiny["run"], "--images", tiny["images"],
                         "--triplets", tiny["triplets"], "--quiet", "--json")
    assert code == 0, err
    assert "calibrated on 16 triplets" in out and "written to" in out
    assert last_json(out)["n_positive"] == 16
    assert cal.load(tiny["run"]).source["n_triplets"] == 16

    assert run(capsys, "embed", "--run", tiny["run"], "--images", tiny["images"], "--store", tiny["store"])[0] == 0
    query = tiny["images"] / "green" / "green_2.jpg"
    code, out, err = run(capsys, "search", "--run", tiny["run"], "--store", tiny["store"], "--image", query,
                         "-k", 3, "--json")
    assert code == 0, err
    payload = last_json(out)
    top = payload["results"][0]
    assert top["id"] == "green/green_2.jpg" and top["score"] == pytest.approx(1.0, abs=1e-5)
    # The 12-photo catalogue is too small for a calibration of its own: the run's decides "close match", and the
    # results show plain cosines (a percentage only where it was calibrated for this catalogue), as in the app.
    assert payload["close_match"] is True and payload["calibrated"] is True and payload["calibration"] == "run"
    assert all(r["match"] is None for r in payload["results"]) and "calibration" in payload["note"]

    code, out, err = run(capsys, "search", "--run", tiny["run"], "--store", tiny["store"], "--image", query, "-k", 2)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split()[1:] == ["1.0000", "green/green_2.jpg"]  # rank, cosine, id
    assert lines[-1] == "close match: yes" and "Traceback" not in err


def test_uncalibrated_run_uses_the_catalogues_own_calibration(capsys, tiny, tmp_path):
    plain = tmp_path / "run"
    shutil.copytree(tiny["run"], plain, ignore=shutil.ignore_patterns("calibration.json", "embeddings"))
    store, flat = tmp_path / "store", tmp_path / "flat"
    flat.mkdir()
    for photo in tiny["images"].rglob("*.jpg"):  # a flat folder: every photo its own product, no categories
        shutil.copy(photo, flat / photo.name)
    code, out, err = run(capsys, "embed", "--run", plain, "--images", flat, "--store", store)
    assert code == 0 and "catalogue calibration: close match when top1 cosine >=" in out and "(flat" in out, err
    code, out, err = run(capsys, "search", "--run", plain, "--store", store, "--id", "red_0.jpg", "--json")
    assert code == 0, err
    payload = last_json(out)
    assert payload["calibration"] == "catalogue" and isinstance(payload["close_match"], bool)
    assert all(0.0 <= r["match"] <= 1.0 for r in payload["results"])


def test_search_without_any_calibration_reports_null(capsys, tiny, tmp_path):
    plain = tmp_path / "run"
    shutil.copytree(tiny["run"], plain, ignore=shutil.ignore_patterns("calibration.json", "embeddings"))
    one = tmp_path / "one" / "red"
    one.mkdir(parents=True)
    shutil.copy(tiny["images"] / "red" / "red_0.jpg", one / "red_0.jpg")
    store = tmp_path / "store"
    # One photo: nothing to calibrate on, said in one line; search falls back to the run, which has none.
    code, out, err = run(capsys, "embed", "--run", plain, "--images", one.parent, "--store", store)
    assert code == 0 and "no catalogue calibration (" in err and "Traceback" not in err, err
    where = ("--run", plain, "--store", store, "--images", one.parent, "--id", "red/red_0.jpg")
    code, out, err = run(capsys, "search", *where, "--json")
    assert code == 0, err
    payload = last_json(out)
    assert payload["close_match"] is None and payload["calibrated"] is False
    code, out, err = run(capsys, "search", *where)
    assert code == 0 and "not calibrated" in err and "calibrate --run" in err


def test_damaged_or_stale_calibration_in_search(capsys, tiny, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(tiny["run"], broken, ignore=shutil.ignore_patterns("embeddings"))
    store = tmp_path / "store"
    assert run(capsys, "embed", "--run", broken, "--images", tiny["images"], "--store", store)[0] == 0
    good = (broken / "calibration.json").read_text()

    (broken / "calibration.json").write_text(good[: len(good) // 2])
    # A damaged calibration does not take search down (in the app, the CLI and the API alike): plain cosines, and
    # a note saying what is wrong and how to rebuild it.
    code, out, err = run(capsys, "search", "--run", broken, "--store", store, "--id", "red/red_0.jpg")
    assert code == 0 and err.count("\n") == 1 and "is damaged" in err and "calibrate --run" in err
    assert "close match" not in out

    stale = json.loads(good)
    stale["source"]["model_fingerprint"] = "0" * 64
    (broken / "calibration.json").write_text(json.dumps(stale))
    code, out, err = run(capsys, "search", "--run", broken, "--store", store, "--id", "red/red_0.jpg", "--json")
    assert code == 0 and "earlier version" in err
    assert last_json(out)["close_match"] is None


def test_calibrate_argument_and_data_errors(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "calibrate", "--run", tiny["run"], "--images", tiny["images"])
    assert code == 2 and "together" in err
    code, _, err = run(capsys, "calibrate", "--run", tiny["run"], "--images", tiny["images"],
                       "--triplets", tmp_path / "nope.csv")
    assert code == 2 and "not found" in err
    # The run's config names no validation triplets and it wrote no held-out file.
    code, _, err = run(capsys, "calibrate", "--run", tiny["run"])
    assert code == 1 and err.count("\n") == 1 and "no validation triplets" in err
    code, _, err = run(capsys, "calibrate", "--run", tmp_path)
    assert code == 1 and err.count("\n") == 1 and "not a training run" in err
    missing = tmp_path / "missing.csv"
    missing.write_text("red/red_0.jpg,red/red_1.jpg,purple/none.jpg\n")
    code, _, err = run(capsys, "calibrate", "--run", tiny["run"], "--images", tiny["images"], "--triplets", missing,
                       "--quiet")
    assert code == 1 and err.count("\n") == 1 and "none.jpg" in err


# --- the shipped sample model against real photos ------------------------------------------------


@pytest.fixture(scope="module")
def sample_catalogue(tmp_path_factory):
    """The default sample catalogue (as the app renders it) embedded with the shipped model in a temp store."""
    from mildnet.data.sample import generate_sample

    root = tmp_path_factory.mktemp("sample")
    folder = generate_sample(root / "sample")
    store = root / "store"
    code = main(["embed", "--run", str(SHIPPED), "--images", str(folder), "--store", str(store)])
    assert code == 0
    return {"root": root, "images": folder, "store": store}


def test_shipped_model_is_calibrated():
    c = cal.load(SHIPPED)
    assert c is not None and c.n_positive > 300
    assert c.match(1.0) == 1.0 and c.match(0.0) < 0.1
    from mildnet.runs import read_run

    assert c.source["run_fingerprint"] == read_run(SHIPPED).fingerprint


@pytest.mark.slow  # the module's sample_catalogue fixture embeds the sample catalogue (~15 s); every user is slow
def test_sample_catalogue_image_is_a_close_match_and_a_real_photo_is_not(capsys, sample_catalogue, clothing_dir):
    base = ("search", "--run", SHIPPED, "--store", sample_catalogue["store"], "--json")
    own = sample_catalogue["images"] / "images" / "p0007" / "wild-2.jpg"
    code, out, err = run(capsys, *base, "--image", own)
    assert code == 0, err
    payload = last_json(out)
    assert payload["results"][0]["id"] == "images/p0007/wild-2.jpg"
    assert payload["results"][0]["match"] >= 0.99 and payload["close_match"] is True

    photo = clothing_dir.joinpath(*REAL_PHOTO)
    code, out, err = run(capsys, *base, "--image", photo)
    assert code == 0, err
    payload = last_json(out)
    assert payload["close_match"] is False, payload
    assert payload["close_match_reason"] == cal.NOTHING_ALIKE
    # The raw cosines are high, as the issue reported: they alone would not have said it.
    assert payload["results"][0]["score"] > 0.95

    code, out, _ = run(capsys, *base[:-1], "--image", photo)
    assert out.splitlines()[-1].startswith("no close match in this catalogue")


@pytest.mark.slow  # the module's sample_catalogue fixture embeds the sample catalogue (~15 s); every user is slow
def test_most_real_photos_are_flagged_and_catalogue_photos_are_not(sample_catalogue, clothing_dir):
    from mildnet.embeddings import embed_paths
    from mildnet.runs import load_run_model
    from mildnet.store import LocalStore

    store = LocalStore(sample_catalogue["store"])
    catalogue = store.get(store.keys()[0])
    reference = cal.catalogue_reference(catalogue.vectors)
    c = cal.load(SHIPPED)
    # The first 4 photos of each class of the test split (40 photos): measured 59 % flagged over the split.
    names = [str(p.relative_to(clothing_dir)) for d in sorted((clothing_dir / "test").iterdir())
             for p in sorted(d.glob("*.jpg"))[:4]]
    photos = embed_paths(load_run_model(SHIPPED), clothing_dir, names, 96).vectors
    best = (photos @ catalogue.vectors.T).max(axis=1)
    flagged = np.mean([not cal.close_match(float(b), c, reference) for b in best])
    assert flagged >= 0.4, flagged
    assert np.mean([cal.close_match(float(b), c, None) for b in best]) > 0.9  # calibration alone flags almost none
    # Catalogue photos uploaded as they are find themselves: never flagged.
    own = catalogue.vectors[::50]
    assert all(cal.close_match(float(s), c, reference) for s in (own @ catalogue.vectors.T).max(axis=1))


@pytest.mark.slow  # the module's sample_catalogue fixture embeds the sample catalogue (~15 s); every user is slow
def test_search_page_says_no_close_match_for_a_kind_of_product_it_does_not_sell(sample_catalogue, clothing_dir,
                                                                                   monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    root = sample_catalogue["root"]
    manifest = root / "manifest.csv"
    rows = [f"sample,{s},sample/{s}.csv,sample,sample/catalog.csv,generated" for s in ("train", "val", "test")]
    manifest.write_text("\n".join(["dataset,split,triplets,image_root,catalog,source", *rows]) + "\n")
    env = {"MILDNET_MANIFEST": manifest, "MILDNET_RUNS": root / "runs", "MILDNET_STORE": root / "app-store",
           "MILDNET_PRETRAINED": SHIPPED.parent, "MILDNET_DATASET": "sample"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("MILDNET_REDIS_URL", raising=False)

    at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/search.py").run()
    photo = clothing_dir.joinpath(*UNSOLD_PHOTO)
    at.file_uploader(key="mn_upload").set_value(("hat.jpg", photo.read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    warnings = [w.value for w in at.warning]
    assert any("No close match in this catalogue" in w for w in warnings), warnings
    # The app's default model for every dataset, the sample included, is the shipped real-photo model.
    assert at.sidebar.selectbox[1].value == str(SHIPPED.parent / "real")
    assert any(c.value.startswith("Why: Nothing in this catalogue looks much like") for c in at.caption)
    cards = " ".join(h.proto.body for h in at.get("html") if "mn-score" in h.proto.body)
    # Weak results say so instead of a percentage that reads like a contradiction of the warning above them.
    assert "weak match" in cards and "% match<" not in cards and "mn-weak" in cards
    assert 'title="cosine similarity ' in cards and "match strength " in cards

    own = sample_catalogue["images"] / "images" / "p0007" / "wild-2.jpg"
    at.file_uploader(key="mn_upload").set_value(("own.jpg", own.read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert not any("No close match" in w.value for w in at.warning)
    cards = [h.proto.body for h in at.get("html") if "mn-score" in h.proto.body]
    assert "100% match" in cards[0] and "mn-weak" not in cards[0] and 'title="cosine similarity 1.000"' in cards[0]


def test_results_show_a_plain_similarity_where_the_catalogue_has_no_calibration_of_its_own(tmp_path):
    # Issue 19 (5): a percentage on each result only where it was calibrated for this catalogue; the run's own
    # calibration (fitted on its validation photos) still decides "no close match".
    from mildnet import calibration as cal
    from mildnet.embeddings import EMBEDDING_VERSION, cache_key
    from mildnet.search.engine import Catalogue, LoadedModel, SearchEngine
    from mildnet.store import EmbeddingSet, LocalStore

    run_dir = Path(__file__).resolve().parents[1] / "mildnet" / "pretrained" / "sample"
    fingerprint = json.loads((run_dir / "calibration.json").read_text())["source"]["model_fingerprint"]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{k:02d}.jpg" for k in range(40)]
    store = LocalStore(tmp_path / "store")
    store.put(cache_key("c", fingerprint), EmbeddingSet(ids, ids, vectors, {
        "model_fingerprint": fingerprint, "catalog_fingerprint": "c", "image_size": 8,
        "embedding_version": EMBEDDING_VERSION}))
    model = LoadedModel(None, {}, "sample", 8, fingerprint, run_dir, cal.load(run_dir))
    engine = SearchEngine.open(model, Catalogue("c", tmp_path, tuple(ids)), store, calibrate=False)
    found = engine.query_vector(vectors[0], k=3)
    assert [r.match for r in found.results] == [None, None, None] and found.close_match is not None
    assert found.calibration == "run" and "cosine similarities" in found.note
