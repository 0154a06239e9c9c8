"""The shop's app (issue 19): one published catalogue and model for every visitor, an owner who controls it.

``mildnet.shop`` (the published choice, in the data home), ``python -m mildnet publish``, and the app through
AppTest: the owner publishes from the sidebar; a new visitor lands on that catalogue and model, and a shopper
(a password is configured, not entered) sees no owner page, picker or training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from mildnet import shop  # noqa: E402
from mildnet.cli import main  # noqa: E402
from mildnet.errors import DataError  # noqa: E402
from tests.conftest import PROJECT_ROOT, app_environment, make_tiny_app_root  # noqa: E402

APP = PROJECT_ROOT / "app.py"
REAL = PROJECT_ROOT / "mildnet" / "pretrained" / "real"


# --- core and CLI ------------------------------------------------------------------------------------------------


def test_publish_load_and_clear(tmp_path):
    path = tmp_path / "home" / "shop.json"
    assert shop.load_published(path) is None
    published = shop.publish("tiny", REAL, datasets=["tiny", "other"], path=path)
    assert shop.load_published(path) == published and published.run == str(REAL.resolve())
    with pytest.raises(DataError, match="no dataset named 'nope'"):
        shop.publish("nope", datasets=["tiny"], path=path)
    with pytest.raises(DataError, match="not a training run folder"):
        shop.publish("tiny", tmp_path, path=path)
    assert shop.load_published(path) == published  # a refused publish changes nothing
    assert shop.unpublish(path) and shop.load_published(path) is None and not shop.unpublish(path)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": 1, "dataset": 5}', '{"format": 9, "dataset": "x"}'])
def test_a_damaged_shop_file_publishes_nothing_and_says_so(tmp_path, caplog, text):
    path = tmp_path / "shop.json"
    path.write_text(text)
    assert shop.load_published(path) is None
    assert "ignoring the shop settings" in caplog.text and str(path) in caplog.text


def test_the_publish_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MILDNET_HOME", str(tmp_path / "home"))
    assert main(["publish", "--show"]) == 0 and "nothing published" in capsys.readouterr().out
    assert main(["publish", "--dataset", "sample", "--run", str(REAL)]) == 0
    assert "published sample" in capsys.readouterr().out
    saved = json.loads((tmp_path / "home" / "shop.json").read_text())
    assert saved["dataset"] == "sample" and saved["run"] == str(REAL.resolve())
    assert main(["publish", "--dataset", "nope"]) == 1 and "no dataset named 'nope'" in capsys.readouterr().err
    assert main(["publish", "--run", str(REAL), "--show"]) == 2
    capsys.readouterr()
    assert main(["publish", "--clear"]) == 0 and not (tmp_path / "home" / "shop.json").exists()


# --- the app -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_env(tmp_path_factory):
    """Two catalogues, ``tiny`` (the session default) and ``other``; the shipped real-photo model for both."""
    root = make_tiny_app_root(tmp_path_factory.mktemp("shop"))
    text = (root / "manifest.csv").read_text()
    (root / "manifest.csv").write_text(text + text.split("\n", 1)[1].replace("tiny", "other"))
    (root / "other").symlink_to(root / "tiny", target_is_directory=True)
    with app_environment(root, "tiny", unset=("MILDNET_OWNER_PASSWORD",)):
        yield root


def _visit(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _page_titles(at: AppTest) -> list[str]:
    """The Home page's links to the other pages (AppTest has no accessor for page links: walk the tree)."""
    found = []

    def walk(node) -> None:
        if getattr(node, "type", None) == "page_link":
            found.append(node.proto.label)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    return found


def test_the_owner_publishes_and_every_new_visitor_gets_it(shop_env, monkeypatch):
    owner = _visit()
    assert owner.session_state["mn_dataset"] == "tiny"  # nothing published yet: the configured default
    owner.sidebar.selectbox(key="mn_dataset_widget").set_value("other").run()
    owner.sidebar.button(key="mn_publish").click().run()
    assert not owner.exception, [e.value for e in owner.exception]
    published = shop.load_published()
    assert published.dataset == "other" and Path(published.run).name == "real"
    assert any("Published" in c.value for c in owner.sidebar.caption)

    again = _visit()  # a reload, or the owner's next visit: the published choice, with its pickers
    assert again.session_state["mn_dataset"] == "other"
    assert {"Add a catalogue", "Evaluation", "Triplets"} <= set(_page_titles(again))

    monkeypatch.setenv("MILDNET_OWNER_PASSWORD", "s3cret")  # now visitors must sign in to be the owner
    shopper = _visit()
    assert shopper.session_state["mn_dataset"] == "other"
    assert _page_titles(shopper) == ["Search"]
    assert not [s for s in shopper.sidebar.selectbox if s.key == "mn_dataset_widget"]
    assert not [b for b in shopper.sidebar.button if b.key == "mn_publish"]
    assert not [e for e in shopper.sidebar.expander if "Train" in e.label]
    searched = _visit("pages/search.py")
    assert not searched.error, [e.value for e in searched.error]

    shopper.sidebar.text_input(key="mn_owner_password").set_value("wrong")
    shopper.sidebar.button(key="mn_owner_go").click().run()
    assert _page_titles(shopper) == ["Search"] and any("Wrong password" in e.value for e in shopper.sidebar.error)
    shopper.sidebar.text_input(key="mn_owner_password").set_value("s3cret")
    shopper.sidebar.button(key="mn_owner_go").click().run()
    assert {"Add a catalogue", "Evaluation"} <= set(_page_titles(shopper))
    shop.unpublish()


def test_a_shopper_opening_an_owner_page_is_told_it_is_the_owners(shop_env, monkeypatch):
    monkeypatch.setenv("MILDNET_OWNER_PASSWORD", "s3cret")
    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "add.py"), default_timeout=240)
    at.run()
    assert not at.exception and any("Only the shop's owner can add catalogues" in i.value for i in at.info)
    assert not at.main.text_input  # no folder field, no upload


def test_the_cli_finds_what_the_app_embedded_with_no_flags(shop_env, tmp_path, monkeypatch, capsys):
    # Issue 19 (4): `search --image PHOTO` looked in mildnet/pretrained/real/embeddings (inside the package) and
    # said to embed everything again; both now default to the data home's store.
    monkeypatch.delenv("MILDNET_STORE")
    monkeypatch.setenv("MILDNET_HOME", str(tmp_path / "home"))
    # The app embeds the session's catalogue on first use (searchers cached by earlier tests came from their own
    # stores, and are not reused for this one).
    home = _visit()
    assert any(m.label == "Embedding cache" and m.value == "ready" for m in home.metric)
    assert (tmp_path / "home" / "embeddings").is_dir()
    photo = shop_env / "tiny" / "images" / "p0003" / "catalog.jpg"
    assert main(["search", "--dataset", "tiny", "--image", str(photo), "--json"]) == 0, capsys.readouterr().err
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert results[0]["id"] == "images/p0003/catalog.jpg"
