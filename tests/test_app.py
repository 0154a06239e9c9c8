"""The Streamlit app driven through ``streamlit.testing.v1.AppTest`` on a tiny generated dataset.

Everything the app writes goes to a temporary folder (``MILDNET_MANIFEST``, ``MILDNET_RUNS``,
``MILDNET_STORE``, ``MILDNET_PRETRAINED``), never to the project's ``data/``, ``runs/`` or cache.
"""

from __future__ import annotations

import functools
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from mildnet.errors import ImageError  # noqa: E402
from tests.conftest import results_box  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app.py"
TIMEOUT = 180
MANIFEST_HEADER = "dataset,split,triplets,image_root,catalog,source\n"


def _manifest_rows(name: str, folder: str, source: str = "generated") -> str:
    return "".join(f"{name},{split},{folder}/{split}.csv,{folder},{folder}/catalog.csv,{source}\n"
                   for split in ("train", "val", "test"))


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """A 30-product, 48 px sample, a manifest naming it, and one trained tiny_cnn run."""
    from mildnet import training
    from mildnet.data.sample import generate_sample

    root = tmp_path_factory.mktemp("app")
    generate_sample(root / "tiny", products=30, size=48)
    (root / "manifest.csv").write_text(MANIFEST_HEADER + _manifest_rows("tiny", "tiny"))
    env = {
        "MILDNET_MANIFEST": str(root / "manifest.csv"),
        "MILDNET_RUNS": str(root / "runs"),
        "MILDNET_STORE": str(root / "store"),
        "MILDNET_PRETRAINED": str(root / "pretrained"),
        "MILDNET_DATASET": "tiny",
    }
    # No ImageNet weights anywhere (an empty cache, a download URL on a closed port): the app's baselines never
    # reach the network and the ImageNet ones are reported unavailable unless a test provides the weights.
    (root / "weights").mkdir()
    env["MILDNET_WEIGHTS_CACHE"] = str(root / "weights")
    # free_port's socket is closed again, so connections to the port are refused.
    env["MILDNET_WEIGHTS_URL_SQUEEZENET"] = f"http://127.0.0.1:{free_port()}/squeezenet.h5"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("MILDNET_REDIS_URL", raising=False)
        config = training.TrainConfig(
            images=str(root / "tiny"), triplets=str(root / "tiny" / "train.csv"),
            val_triplets=str(root / "tiny" / "val.csv"), dataset="tiny", out=str(root / "runs" / "first"),
            model="tiny_cnn", weights=None, image_size=32, epochs=1, batch_size=32)
        training.train(config)
        yield root


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    return at


def _no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _jpeg(path: Path) -> bytes:
    return path.read_bytes()


# --- home ----------------------------------------------------------------------------------------


def test_home_shows_dataset_model_and_cache(tiny_env):
    at = _app()
    _no_failure(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Dataset"] == "tiny"
    assert metrics["Catalog images"] == "150"
    assert metrics["Model · tiny_cnn"].endswith("accurate")
    assert metrics["Embedding cache"] == "ready"
    assert [s.label for s in at.sidebar.selectbox][:2] == ["Dataset", "Model"]


def test_the_model_figure_describes_what_it_measured(tmp_path):
    # Issue 19 (6): Home showed "89% accurate" for every dataset (the real-photo model's validation accuracy on
    # its own training data) and "99% accurate" on a flat folder's trivial view triplets.
    from mildnet.ui.home_page import model_figure
    from mildnet.ui.runs import Run

    def run(dataset, best):
        return Run(tmp_path, "r", config={"config": {"dataset": dataset, "model": "tiny_cnn"}},
                   metrics={"best": best})

    value, note = model_figure(run(None, {"val_accuracy": 0.89}), "tiny", "labelled")
    assert value == "trained on other photos" and "not on this catalogue" in note
    assert model_figure(run("clothing-small", {"val_accuracy": 0.89}), "tiny", "labelled")[0] == \
        "trained on clothing-small"
    value, note = model_figure(run("tiny", {"val_accuracy": 0.91}), "tiny", "labelled")
    assert value == "91% accurate" and "validation triplets" in note
    assert "training triplets" in model_figure(run("tiny", {"accuracy": 0.8}), "tiny", "labelled")[1]
    value, note = model_figure(run("flat", {"val_accuracy": 0.99}), "flat", "instance")
    assert value == "trained here" and "augmented views" in note


def test_first_start_prepares_a_missing_sample(tiny_env, monkeypatch, tmp_path):
    from mildnet.data import sample

    # The real first start renders 240 products; a smaller sample exercises the same path in a second.
    monkeypatch.setattr(sample, "generate_sample", functools.partial(sample.generate_sample, products=12, size=32))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(MANIFEST_HEADER + _manifest_rows("fresh", "fresh"))
    monkeypatch.setenv("MILDNET_MANIFEST", str(manifest))
    monkeypatch.setenv("MILDNET_DATASET", "fresh")
    at = _app()
    _no_failure(at)
    assert sample.is_sample_complete(tmp_path / "fresh")
    # Issue 19 (9): the one-off "Preparing dataset" box is gone once the dataset is ready.
    assert not any("fresh" in s.label for s in at.status), [s.label for s in at.status]
    assert {m.label: m.value for m in at.metric}["Catalog images"] == "60"
    # No run for this dataset yet: a clear message instead of a model.
    assert any("no trained model" in i.value.lower() for i in at.info)


def test_unavailable_dataset_shows_an_error_not_a_traceback(tiny_env, monkeypatch, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(MANIFEST_HEADER + _manifest_rows("tiny", str(tiny_env / "tiny"))
                        + _manifest_rows("mine", str(tmp_path / "nowhere"), source="local"))
    monkeypatch.setenv("MILDNET_MANIFEST", str(manifest))
    monkeypatch.setenv("MILDNET_DATASET", "mine")
    at = _app()
    assert not at.exception
    assert any("incomplete" in e.value for e in at.error)
    # The sidebar still works, so the user can switch back.
    at.sidebar.selectbox[0].set_value("tiny").run()
    _no_failure(at)


def test_broken_manifest_shows_an_error(tiny_env, monkeypatch, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("dataset,split\nx,train\n")
    monkeypatch.setenv("MILDNET_MANIFEST", str(manifest))
    for page in (None, "search", "triplets", "evaluation"):
        at = _app(page)
        assert not at.exception
        assert any("missing column" in e.value for e in at.error)


# --- search --------------------------------------------------------------------------------------


def test_search_upload_shows_top_five_and_click_searches_from_a_result(tiny_env):
    at = _app("search")
    _no_failure(at)
    photo = tiny_env / "tiny" / "images" / "p0003" / "wild-1.jpg"
    at.file_uploader(key="mn_upload").set_value(("photo.jpg", _jpeg(photo), "image/jpeg")).run()
    _no_failure(at)
    similar = [b for b in at.button if b.key and b.key.startswith("mn_similar_")]
    assert len(similar) == 5
    # The uploaded catalog photo finds itself first, with cosine similarity 1.
    html = " ".join(h.proto.body for h in at.get("html"))
    assert "p0003" in html and "1.000" in html
    assert results_box(at).value == 5

    results_box(at).set_value(8).run()
    assert len([b for b in at.button if b.key and b.key.startswith("mn_similar_")]) == 8

    at.button(key="mn_similar_2").click().run()
    _no_failure(at)
    assert at.session_state["mn_query"]["kind"] == "catalog"
    clicked = at.session_state["mn_query"]["id"]
    html = " ".join(h.proto.body for h in at.get("html"))
    assert clicked.split("/")[1] in html  # the clicked product is now the query card


def test_search_from_a_catalog_product(tiny_env):
    at = _app("search")
    at.selectbox(key="mn_pick_product").set_value("images/p0005/catalog.jpg").run()
    at.button(key="mn_pick_go").click().run()
    _no_failure(at)
    assert at.session_state["mn_query"] == {"kind": "catalog", "id": "images/p0005/catalog.jpg", "dataset": "tiny"}
    assert len([b for b in at.button if b.key and b.key.startswith("mn_similar_")]) == 5


def test_the_app_the_cli_and_the_engine_give_the_same_results(tiny_env, capsys):
    # Issue 20: one engine behind every caller; the API's side of this is tests/test_api.py.
    import json
    import os
    import re

    from mildnet.cli import main
    from mildnet.search.engine import Catalogue, LoadedModel, SearchEngine
    from mildnet.store import open_store

    query = "images/p0005/catalog.jpg"
    at = _app("search")
    at.selectbox(key="mn_pick_product").set_value(query).run()
    at.button(key="mn_pick_go").click().run()
    _no_failure(at)
    cards = [h.proto.body for h in at.get("html") if 'class="mn-rank"' in h.proto.body]
    shown = [(re.search(r'mn-card-title" title="([^"]+)"', c).group(1),
              float(re.search(r"cosine similarity ([0-9.]+)", c).group(1)),
              (lambda m: int(m.group(1)) if m else None)(re.search(r">(\d+)% match<", c))) for c in cards]
    assert len(shown) == 5
    warned = any("No close match" in w.value for w in at.warning)

    assert main(["search", "--run", str(tiny_env / "runs" / "first"), "--dataset", "tiny", "--id", query,
                 "--json", "-k", "5"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cli = [(r["id"], round(r["score"], 3), None if r["match"] is None else round(100 * r["match"]))
           for r in payload["results"]]
    assert cli == shown and (payload["close_match"] is False) == warned

    engine = SearchEngine.open(LoadedModel.from_run(tiny_env / "runs" / "first"), Catalogue.registered("tiny"),
                               open_store(os.environ["MILDNET_STORE"]))
    found = engine.query_id(query, k=5)
    assert [(r.id, r.score, r.match) for r in found.results] == [
        (r["id"], pytest.approx(r["score"], abs=1e-6), None if r["match"] is None else pytest.approx(r["match"],
                                                                                                       abs=1e-4))
        for r in payload["results"]]
    assert found.close_match == payload["close_match"] and found.reason == payload["close_match_reason"]


def test_results_can_be_limited_to_a_category_and_a_colour(tiny_env):
    # Issue 21: filters pushed into the search (the top k among the products that pass), offered in the app.
    import re

    import pandas as pd

    catalog = pd.read_csv(tiny_env / "tiny" / "catalog.csv", dtype=str).set_index("image")
    at = _app("search")
    query = "images/p0005/catalog.jpg"
    at.selectbox(key="mn_pick_product").set_value(query).run()
    at.button(key="mn_pick_go").click().run()

    def shown() -> list[str]:
        return [re.search(r'mn-card-title" title="([^"]+)"', h.proto.body).group(1) for h in at.get("html")
                if 'class="mn-rank"' in h.proto.body]

    unfiltered = shown()
    wanted = next(c for c in sorted(catalog["category"].unique()) if c != catalog.loc[query, "category"])
    at.selectbox(key="mn_only_category").set_value(wanted).run()
    _no_failure(at)
    ids = shown()
    available = (catalog["category"] == wanted).sum()
    assert len(ids) == min(5, available) and all(catalog.loc[i, "category"] == wanted for i in ids)
    assert set(ids) != set(unfiltered)
    colour = catalog.loc[ids[0], "colour"]
    at.selectbox(key="mn_only_colour").set_value(colour).run()
    ids = shown()
    assert ids and all((catalog.loc[i, "category"], catalog.loc[i, "colour"]) == (wanted, colour) for i in ids)
    at.selectbox(key="mn_only_category").set_value("All").run()
    at.selectbox(key="mn_only_colour").set_value("All").run()
    assert shown() == unfiltered


def test_the_product_picker_filters_by_category_and_colour_and_reads_as_titles(tiny_env):
    # Issue 19 (5): on clothing-small the picker listed 3,781 entries that all read "dress".
    import pandas as pd

    catalog = pd.read_csv(tiny_env / "tiny" / "catalog.csv", dtype=str).fillna("")
    row = catalog[catalog["image"].str.endswith("catalog.jpg")].iloc[0]
    at = _app("search")
    at.selectbox(key="mn_pick_category").set_value(row["category"]).run()
    at.selectbox(key="mn_pick_colour").set_value(row["colour"]).run()
    picker = at.selectbox(key="mn_pick_product")
    wanted = catalog[(catalog["category"] == row["category"]) & (catalog["colour"] == row["colour"])]
    assert sorted(picker.options) == sorted(picker.format_func(i) for i in wanted["image"])
    assert len(set(picker.options)) == len(picker.options)  # every entry reads differently
    assert all(row["category"] in label.lower() for label in picker.options)


@pytest.mark.parametrize("name,payload,reason", [
    ("notes.png", b"this is not an image at all", "not an image"),
    ("cut.jpg", None, "Truncated"),  # a truncated JPEG, built in the test
    ("empty.webp", b"", "empty"),
    # Past the uploader's 20 MB, as a direct request (not the browser) sends it (issue 18 F12).
    ("huge.jpg", b"\xff\xd8" + bytes(21 << 20), "too large"),
])
def test_bad_upload_shows_a_clear_error(tiny_env, name, payload, reason):
    if payload is None:
        payload = _jpeg(tiny_env / "tiny" / "images" / "p0001" / "catalog.jpg")[:300]
    at = _app("search")
    at.file_uploader(key="mn_upload").set_value((name, payload, "image/jpeg")).run()
    assert not at.exception
    assert len(at.error) == 1 and "cannot be used as a photo" in at.error[0].value and reason in at.error[0].value
    assert not [b for b in at.button if b.key and b.key.startswith("mn_similar_")]


def test_a_refused_oversized_upload_leaves_the_servers_memory_at_once(tiny_env, monkeypatch):
    # Issue 18 F12: Streamlit keeps a session's uploads until the browser drops them or the session ends (minutes
    # after its tab closes); a photo refused for its size must not stay there. The runtime's own file manager
    # is watched (its real remove_file runs), and after the refusal it no longer holds the bytes.
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    released = []
    remove = MemoryUploadedFileManager.remove_file

    def watched(self, session_id, file_id):
        remove(self, session_id, file_id)
        released.append((file_id, self.get_files(session_id, [file_id])))

    monkeypatch.setattr(MemoryUploadedFileManager, "remove_file", watched)
    at = _app("search")
    at.file_uploader(key="mn_upload").set_value(("huge.jpg", b"\xff\xd8" + bytes(21 << 20), "image/jpeg")).run()
    assert len(at.error) == 1 and "too large" in at.error[0].value
    assert len(released) == 1 and released[0][1] == []  # released during the run that refused it, and gone
    # A photo that is searched stays (the page reruns with it as the query).
    released.clear()
    photo = _jpeg(tiny_env / "tiny" / "images" / "p0003" / "wild-1.jpg")
    at.file_uploader(key="mn_upload").set_value(("photo.jpg", photo, "image/jpeg")).run()
    _no_failure(at)
    assert released == []


def test_upload_handler_decodes_formats_and_rejects_bad_bytes(tiny_env):
    from mildnet.search.model import LoadedModel
    from mildnet.ui.search_page import THUMB_PX

    bundle = LoadedModel.from_run(tiny_env / "runs" / "first")
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 4), dtype=np.uint8), "RGBA")
    for fmt in ("PNG", "WEBP", "JPEG"):
        buffer = io.BytesIO()
        (rgba.convert("RGB") if fmt == "JPEG" else rgba).save(buffer, format=fmt)
        vector, thumb = bundle.embed_with_preview(buffer.getvalue(), THUMB_PX)
        assert vector.shape == (32,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
        assert thumb.shape == (40, 60, 3)
    huge = io.BytesIO()
    Image.new("RGB", (8000, 7000)).save(huge, format="PNG")
    for bad in (b"GIF89a broken", huge.getvalue()):
        with pytest.raises(ImageError):
            bundle.embed_with_preview(bad, THUMB_PX)


# --- triplets ------------------------------------------------------------------------------------


def test_triplets_page_browses_filters_and_checks(tiny_env):
    at = _app("triplets")
    _no_failure(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["train triplets"] == "218" and metrics["val triplets"] == "39"
    assert metrics["Leaks"] == "0" and metrics["Missing / unreadable"] == "0"
    assert any("No problems found" in s.value for s in at.success)

    def rows():
        return [h.proto.body for h in at.get("html") if 'class="mn-rank"' in h.proto.body]

    first = rows()
    assert len(first) == 10
    at.get("pagination")[0].set_value(2).run()
    assert len(rows()) == 10 and rows() != first
    at.button(key="mn_triplets_shuffle").click().run()
    _no_failure(at)
    assert len(rows()) == 10

    at.button_group(key="mn_triplets_type").set_value(["in-class"]).run()
    shown = rows()
    assert shown and all("in-class" in r and "out-of-class" not in r for r in shown)
    at.button_group(key="mn_triplets_split").set_value("val").run()
    _no_failure(at)
    assert any("val triplets" in c.value for c in at.caption)
    at.selectbox(key="mn_triplets_category").set_value("dress").run()
    assert all("dress" in r.split("negative")[0] for r in rows())


def test_data_check_reports_missing_images_and_leaks(tiny_env, monkeypatch, tmp_path):
    import shutil

    data = tmp_path / "leaky"
    shutil.copytree(tiny_env / "tiny", data)
    (data / "test.csv").write_text((data / "val.csv").read_text())  # every test triplet is also in val
    (data / "images" / "p0001" / "catalog.jpg").unlink()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(MANIFEST_HEADER + _manifest_rows("leaky", str(data), source="local"))
    monkeypatch.setenv("MILDNET_MANIFEST", str(manifest))
    monkeypatch.setenv("MILDNET_DATASET", "leaky")
    at = _app("triplets")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Leaks"] == "1" and metrics["Missing / unreadable"] == "1"
    assert any("also appear in" in w.value for w in at.warning)
    assert any("missing" in c.value for c in at.code)


# --- evaluation ----------------------------------------------------------------------------------


def test_evaluation_page_scores_and_compares_runs(tiny_env):
    from mildnet import training

    second = tiny_env / "runs" / "second"
    if not second.exists():
        training.train(training.TrainConfig(
            images=str(tiny_env / "tiny"), triplets=str(tiny_env / "tiny" / "train.csv"),
            val_triplets=str(tiny_env / "tiny" / "val.csv"), dataset="tiny", out=str(second),
            model="tiny_cnn", weights=None, image_size=32, epochs=2, batch_size=32, seed=1))
    at = _app("evaluation")
    _no_failure(at)
    table = at.dataframe[0].value
    assert list(table["run"]) == [at.multiselect(key="mn_eval_runs").value[0].rsplit("/", 1)[-1]]
    assert 0.0 <= table["triplet accuracy"].iloc[0] <= 1.0
    assert table["recall@5"].iloc[0] is not None

    options = at.multiselect(key="mn_eval_runs").options
    assert len(options) == 2
    at.multiselect(key="mn_eval_runs").set_value([str(tiny_env / "runs" / n) for n in ("first", "second")]).run()
    at.selectbox(key="mn_eval_split").set_value("test").run()
    _no_failure(at)
    table = at.dataframe[0].value
    assert sorted(table["run"]) == ["first", "second"]
    assert (table["triplets"] == 39).all()
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 6  # per split, per type, two histograms, recall@k, loss, accuracy
    assert any(s.value == "Training history" for s in at.subheader)


def test_evaluation_shows_no_other_datasets_history_as_this_ones(tiny_env, tmp_path, monkeypatch):
    # Issue 19 (6): the real-photo model's training history was plotted on the sample as if it were the sample's.
    import json
    import shutil

    shipped = tmp_path / "pretrained" / "real"
    shutil.copytree(tiny_env / "runs" / "first", shipped)
    meta = json.loads((shipped / "config.json").read_text())
    meta["config"]["dataset"] = None  # as the shipped real-photo model: trained on a folder of other photos
    (shipped / "config.json").write_text(json.dumps(meta))
    monkeypatch.setenv("MILDNET_PRETRAINED", str(tmp_path / "pretrained"))
    at = _app("evaluation")
    at.multiselect(key="mn_eval_runs").set_value([str(shipped)]).run()
    _no_failure(at)
    assert any("trained on other photos: its training history is about that data" in c.value for c in at.caption)
    assert not any(c.value.startswith("Solid lines") for c in at.caption)  # no curves drawn for it


def test_evaluation_page_shows_the_no_learning_baselines(tiny_env, monkeypatch):
    from mildnet import evaluation
    from mildnet.ui import resources

    calls = []
    real = evaluation.evaluate_baselines
    monkeypatch.setattr(evaluation, "evaluate_baselines", lambda *a, **k: calls.append(1) or real(*a, **k))
    resources._baselines.clear()
    at = _app("evaluation")
    _no_failure(at)
    assert any(s.value.startswith("What training bought") for s in at.subheader)
    scores, table = at.dataframe[0].value, at.dataframe[1].value
    assert list(table["kind"]) == ["run", "baseline", "baseline"]
    assert list(table["model"])[1:] == ["pixels 32×32", "colour histogram"]
    run_accuracy = scores["triplet accuracy"].iloc[0]
    assert table["triplet accuracy"].iloc[0] == pytest.approx(run_accuracy)
    baselines = table.iloc[1:]
    assert ((baselines["triplet accuracy"] > 0) & (baselines["triplet accuracy"] <= 1)).all()
    np.testing.assert_allclose(baselines["gain (pts)"], 100 * (run_accuracy - baselines["triplet accuracy"]), atol=0.01)
    assert {"in-class", "out-of-class"} <= set(table.columns)
    # The ImageNet ones cannot be computed here: each says why and how to fix it, and none is dropped silently.
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("**ImageNet features** and **ImageNet + histogram** baselines unavailable: ")
    assert "could not download" in warnings[0] and "--baseline-weights" in warnings[0]
    assert any(m.label.endswith("vs the best baseline") and " pts over " in m.delta for m in at.metric)
    assert len(calls) == 1
    # Computed once per dataset and split: another session, or coming back to the page, reuses them.
    _no_failure(_app("evaluation"))
    assert len(calls) == 1


def test_evaluation_page_imagenet_baselines_with_cached_weights(tiny_env, monkeypatch, tmp_path, squeezenet_weights):
    from mildnet.models.squeezenet import WEIGHTS_FILENAME

    # Where the app finds the weights offline (the fix the unavailable message gives); a link, not a copy.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / WEIGHTS_FILENAME).symlink_to(squeezenet_weights)
    monkeypatch.setenv("MILDNET_WEIGHTS_CACHE", str(tmp_path))
    at = _app("evaluation")
    _no_failure(at)
    assert not at.warning
    table = at.dataframe[1].value
    assert list(table["model"])[1:] == ["pixels 32×32", "colour histogram", "ImageNet features", "ImageNet + histogram"]
    assert table["triplet accuracy"].notna().all()


# --- training from the sidebar -------------------------------------------------------------------


def _start_training(at: AppTest, epochs: int, batch_size: int, new_tiny_model: bool = True) -> None:
    """Fills the sidebar's training form (a new tiny_cnn at 32 px from random weights, unless
    ``new_tiny_model`` is False: then the form's model settings stay as they are) and submits it."""
    if new_tiny_model:
        at.selectbox(key="mn_train_model").set_value("tiny_cnn")
        at.selectbox(key="mn_train_weights").set_value("none")
        at.select_slider(key="mn_train_size").set_value(32)
    at.number_input(key="mn_train_epochs").set_value(epochs)
    at.number_input(key="mn_train_batch").set_value(batch_size)
    next(b for b in at.button if b.label == "Start training").click().run()


def test_sidebar_training_runs_in_the_background_and_the_new_run_becomes_selectable(tiny_env):
    at = _app("search")
    other = _app("search")  # a second browser session (a shopper) on the same server
    others_model = other.sidebar.selectbox[1].value
    before = list(at.sidebar.selectbox[1].options)
    _start_training(at, epochs=1, batch_size=32)
    assert not at.exception
    assert not at.error, [e.value for e in at.error]

    # The job runs in a worker thread: the script run that started it has returned long before it ends.
    assert _has_key(at, "mn_stop_training")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception
        if any("Training finished" in s.value for s in at.sidebar.success):
            break
        time.sleep(0.5)
    else:
        pytest.fail("training did not finish in time")
    assert any("is now selected" in s.value for s in at.sidebar.success)
    options = list(at.sidebar.selectbox[1].options)  # labels, newest run first
    assert len(options) == len(before) + 1 and options[0] not in before
    selected = Path(at.sidebar.selectbox[1].value)  # the finished run is selected
    assert selected.parent == tiny_env / "runs" and options[0].startswith(selected.name)
    assert (selected / "best.keras").is_file() and (selected / "history.csv").is_file()
    at.switch_page("pages/search.py").run()
    _no_failure(at)
    # Only the session that started the job switches: the other one lists the new run but keeps its model.
    other.run()
    assert other.sidebar.selectbox[1].value == others_model != str(selected)
    assert other.sidebar.selectbox[1].options[0].startswith(selected.name)  # listed first (labels, newest first)
    assert not any("is now selected" in s.value for s in other.sidebar.success)


def _has_key(at: AppTest, key: str) -> bool:
    try:
        at.button(key=key)
    except KeyError:
        return False
    return True


def test_one_job_at_a_time_and_stop_flag():
    import threading

    from mildnet.errors import MildnetError
    from mildnet.ui.jobs import STOPPED, JobManager

    started = threading.Event()

    class Result:
        status = "stopped"
        run_dir = "/tmp/x"

    def work(callbacks, stop_event):
        callbacks[0].on_train_begin(3, 10)
        started.set()
        while not stop_event.wait(0.01):
            callbacks[0].on_batch_end(1, 1, {"loss": 0.5, "accuracy": 0.5, "steps": 10})
        return Result()

    manager = JobManager()
    manager.start("a", work)
    assert started.wait(5)
    with pytest.raises(MildnetError, match="already running"):
        manager.start("b", work)
    snap = manager.current().snapshot()
    assert snap.active and snap.total_epochs == 3
    assert manager.stop()
    assert manager.wait(5)
    assert manager.current().snapshot().state == STOPPED


def test_stop_button_stops_a_running_job(tiny_env):
    at = _app("triplets")
    at.selectbox(key="mn_train_start").set_value(str(tiny_env / "runs" / "first"))  # incremental
    _start_training(at, epochs=200, batch_size=4, new_tiny_model=False)
    assert not at.exception and not at.error
    at.button(key="mn_stop_training").click().run()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        at.run()
        if any("Training stopped" in w.value for w in at.sidebar.warning):
            break
        time.sleep(0.3)
    else:
        pytest.fail("the job did not stop")
    assert not at.exception
    # The page itself kept working while the job ran and stopped.
    assert {m.label: m.value for m in at.metric}["train triplets"] == "218"


def test_incremental_training_continues_from_a_run(tiny_env):
    from mildnet import runs
    from mildnet.ui import jobs, sidebar

    manager = jobs.JobManager()
    job = sidebar.launch(manager, "tiny", model_name="ignored", weights="auto", image_size=999, epochs=1,
                         batch_size=32, learning_rate=1e-3, init_from=str(tiny_env / "runs" / "first"))
    assert manager.wait(120)
    state = job.snapshot()
    assert state.state == jobs.COMPLETED, state.error
    info = runs.read_run(state.run_dir)
    assert info.config.init_from == str((tiny_env / "runs" / "first").resolve())
    assert info.config.model == "tiny_cnn" and info.config.image_size == 32  # taken from the parent
    assert info.lineage and Path(state.run_dir).name.startswith("continued-")


def test_selection_is_kept_across_pages_and_default_model_listed_first(tiny_env, monkeypatch, tmp_path):
    import shutil

    pretrained = tmp_path / "pretrained"
    shutil.copytree(tiny_env / "runs" / "first", pretrained / "tiny")
    monkeypatch.setenv("MILDNET_PRETRAINED", str(pretrained))
    at = _app()
    model_box = at.sidebar.selectbox[1]
    assert model_box.options[0].startswith("★ tiny model")
    assert model_box.value == str(pretrained / "tiny")  # the default model is the default choice
    other = str(tiny_env / "runs" / "first")
    model_box.set_value(other).run()
    for page in ("search", "triplets", "evaluation"):
        at.switch_page(f"pages/{page}.py").run()
        _no_failure(at)
        assert at.sidebar.selectbox[1].value == other, page


def test_a_failing_job_reports_one_line_and_frees_the_slot():
    from mildnet.errors import DataError
    from mildnet.ui.jobs import COMPLETED, FAILED, JobManager

    def broken(callbacks, stop_event):
        raise DataError("3 of 10 images are missing under /x")

    def crashing(callbacks, stop_event):
        raise ValueError("boom\nwith a second line")

    manager = JobManager()
    manager.start("broken", broken)
    assert manager.wait(5)
    state = manager.current().snapshot()
    assert state.state == FAILED and state.error == "3 of 10 images are missing under /x"
    manager.start("crashing", crashing)  # the slot is free again
    assert manager.wait(5)
    assert manager.current().snapshot().error == "ValueError: boom"
    manager.start("fine", lambda callbacks, stop_event: None)
    assert manager.wait(5) and manager.current().snapshot().state == COMPLETED


def test_the_real_photo_model_is_listed_first_and_is_the_training_start(tiny_env, monkeypatch, tmp_path):
    import shutil

    from mildnet.ui import runs as uiruns

    pretrained = tmp_path / "pretrained"
    for name in ("real", "tiny"):
        shutil.copytree(tiny_env / "runs" / "first", pretrained / name)
    monkeypatch.setenv("MILDNET_PRETRAINED", str(pretrained))
    listed = uiruns.list_runs("tiny")
    assert [r.path for r in listed[:2]] == [pretrained / "real", pretrained / "tiny"]
    assert listed[0].label.startswith("★ real-photo model") and listed[1].label.startswith("★ tiny model")
    assert uiruns.list_runs("other")[0].path == pretrained / "real"  # every dataset gets it
    at = _app()
    assert at.sidebar.selectbox[1].value == str(pretrained / "real")
    assert at.selectbox(key="mn_train_start").value == str(pretrained / "real")
