"""End to end in a real browser: ``streamlit run app.py`` as a subprocess, driven by headless Chromium
through Playwright, on a tiny generated dataset (environment overrides keep the project's folders clean).

Screenshots are written under pytest's tmp dir and copied to /tmp/mildnet-screens/ for a human to look at.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from tests.app_server import app_env, running_app

PROJECT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline machine: no background traffic, no component updates, no QUIC probes.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENS = Path("/tmp/mildnet-screens")
LOAD_TIMEOUT_MS = 120_000


@contextlib.contextmanager
def serve_app(root: Path, dataset: str):
    """``streamlit run app.py`` on a free port with every folder under ``root`` (manifest.csv, runs, store,
    pretrained); yields its URL once healthy and stops it afterwards."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(running_app(app_env(root, dataset), root / "server.log", timeout=60))
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield url


@pytest.fixture(scope="module")
def playwright_api():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_api


@pytest.fixture(scope="module")
def server(tmp_path_factory, playwright_api):
    from mildnet import training
    from mildnet.data.sample import generate_sample

    root = tmp_path_factory.mktemp("browser")
    generate_sample(root / "tiny", products=30, size=48)
    (root / "manifest.csv").write_text("dataset,split,triplets,image_root,catalog,source\n" + "".join(
        f"tiny,{s},tiny/{s}.csv,tiny,tiny/catalog.csv,generated\n" for s in ("train", "val", "test")))
    training.train(training.TrainConfig(
        images=str(root / "tiny"), triplets=str(root / "tiny" / "train.csv"),
        val_triplets=str(root / "tiny" / "val.csv"), dataset="tiny", out=str(root / "runs" / "tiny-run"),
        model="tiny_cnn", weights=None, image_size=32, epochs=2, batch_size=32))
    with serve_app(root, dataset="tiny") as url:
        yield {"url": url, "root": root}


@pytest.fixture(scope="module")
def page(playwright_api, server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1100})
        yield context.new_page()
        browser.close()


def _idle(page) -> None:
    """Waits for the script run to finish (Streamlit shows its status widget while running)."""
    page.wait_for_selector('[data-testid="stSidebar"]', timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(500)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(300)


def _shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    return path


def _hit_images(page) -> int:
    return page.locator('[class*="st-key-mn_hit_"] [data-testid="stImage"] img').count()


def upload_and_wait_for_five_results(page, photo: Path) -> None:
    """Drops ``photo`` on the Search page's uploader and waits until five result images have really loaded
    (complete, with pixels: not a broken link)."""
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(photo))
    page.wait_for_function(
        "document.querySelectorAll('[class*=\"st-key-mn_hit_\"] [data-testid=\"stImage\"] img').length >= 5",
        timeout=LOAD_TIMEOUT_MS)
    _idle(page)
    assert _hit_images(page) == 5
    loaded = page.eval_on_selector_all('[class*="st-key-mn_hit_"] [data-testid="stImage"] img',
                                       "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded == 5


@pytest.mark.slow
def test_search_upload_shows_five_results_and_click_searches_again(page, server, tmp_path):
    page.goto(server["url"] + "/search")
    _idle(page)
    assert page.locator(".mn-hero h1").inner_text() == "Visual search"
    photo = server["root"] / "tiny" / "images" / "p0003" / "wild-1.jpg"
    upload_and_wait_for_five_results(page, photo)
    first_card = page.locator(".st-key-mn_hit_1").inner_text()
    # The photo finds itself: cosine 1.000 on an uncalibrated model, "100% match" on a calibrated one. The card
    # reads as a shopper would (what the photo shows); its id is in the title's tooltip.
    first_id = page.locator(".st-key-mn_hit_1 .mn-card-title").get_attribute("title")
    assert first_id == "images/p0003/wild-1.jpg" and ("1.000" in first_card or "100% match" in first_card)
    assert "p0003" not in first_card
    assert not page.locator('[data-testid="stException"]').count()
    _shoot(page, tmp_path, "search-upload")

    # A click under a result searches from that product.
    second = page.locator(".st-key-mn_hit_2 .mn-card-title").get_attribute("title")
    page.locator(".st-key-mn_hit_2").get_by_role("button", name="Similar").click()
    page.wait_for_timeout(500)
    _idle(page)
    assert page.locator(".st-key-mn_query_card .mn-card-title").get_attribute("title") == second
    assert _hit_images(page) == 5
    _shoot(page, tmp_path, "search-click")


def test_bad_upload_shows_an_error_in_the_page(page, server, tmp_path):
    page.goto(server["url"] + "/search")
    _idle(page)
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"definitely not a PNG")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(bad))
    page.wait_for_selector('[data-testid="stAlertContentError"]', timeout=LOAD_TIMEOUT_MS)
    _idle(page)
    text = page.locator('[data-testid="stAlertContentError"]').inner_text()
    assert "cannot be used as a photo" in text
    assert not page.locator('[data-testid="stException"]').count()
    assert _hit_images(page) == 0
    _shoot(page, tmp_path, "search-bad-upload")


@pytest.mark.parametrize("path,marker", [("", "MILDNet visual search"), ("triplets", "Triplets"),
                                         ("evaluation", "Triplet accuracy per split")])
def test_pages_render_without_errors(page, server, tmp_path, path, marker):
    page.goto(f"{server['url']}/{path}")
    _idle(page)
    page.locator("[data-testid='stMain']").get_by_text(marker).first.wait_for(timeout=LOAD_TIMEOUT_MS)
    assert not page.locator('[data-testid="stException"]').count()
    assert not page.locator('[data-testid="stAlertContentError"]').count()
    # The sidebar is on every page: dataset and model pickers and the training form.
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_by_text("Dataset").first.is_visible()
    # app.py's navigation (titles and icons), even on a deep link to a fresh server.
    links = sidebar.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()
    assert [t.split()[-1] for t in links] == ["Home", "Search", "Triplets", "Evaluation", "catalogue"], links
    assert sidebar.get_by_text("Train a model").first.is_visible()
    _shoot(page, tmp_path, f"page-{path or 'home'}")
