"""Adding your own catalogue in a real browser (issue 9): ``streamlit run app.py`` driven by headless Chromium,
on temporary folders (the shipped real-photo model is linked in as the default model)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_tiny_app_root
from tests.test_browser import (  # noqa: F401 - playwright_api is a fixture
    CHROMIUM,
    CHROMIUM_ARGS,
    LOAD_TIMEOUT_MS,
    _hit_images,
    _idle,
    _shoot,
    playwright_api,
    serve_app,
    upload_and_wait_for_five_results,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, playwright_api):  # noqa: F811
    root = make_tiny_app_root(tmp_path_factory.mktemp("browser-catalogue"))
    with serve_app(root, dataset="tiny") as url:
        yield {"url": url, "root": root}


@pytest.fixture(scope="module")
def page(playwright_api, server):  # noqa: F811
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1100})
        yield context.new_page()
        browser.close()


@pytest.mark.slow
def test_add_a_folder_then_upload_a_photo_and_see_five_results(page, server, tmp_path):
    folder = tmp_path / "my shop"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(9):
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.integers(-30, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"item{i}.jpg", quality=90)

    page.goto(server["url"] + "/add")
    _idle(page)
    main = page.locator("[data-testid='stMain']")
    main.get_by_role("textbox", name="Folder", exact=True).fill(str(folder))
    main.get_by_role("button", name="Add this folder").click()
    main.get_by_text("is ready and selected").wait_for(timeout=LOAD_TIMEOUT_MS)
    _idle(page)
    assert not page.locator('[data-testid="stException"]').count()
    assert not page.locator('[data-testid="stAlertContentError"]').count()
    _shoot(page, tmp_path, "catalogue-added")

    # Same session (a link, not a reload): the new catalogue is selected on the Search page.
    main.get_by_role("link", name="Search it now").click()
    _idle(page)
    upload_and_wait_for_five_results(page, folder / "item4.jpg")
    # The photo finds itself first, among the real photos (never an augmented view).
    assert page.locator(".st-key-mn_hit_1 .mn-card-title").get_attribute("title") == "photos/item4.jpg"
    assert "item4" in page.locator(".st-key-mn_hit_1 .mn-card-title").inner_text()
    assert not page.locator('[data-testid="stException"]').count()
    _shoot(page, tmp_path, "catalogue-search")


@pytest.mark.slow
def test_the_number_of_results_holds_over_many_uploads_on_an_added_catalogue(page, server, tmp_path):
    """Issue 19 (3): on added catalogues the "Results" box fell from 5 to 1 by itself after the 2nd-7th upload
    (in every browser session tried), and each later search showed one card."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(5)
    photos = []
    for i in range(18):
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.integers(-30, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
        path = folder / f"item{i}.jpg" if i < 12 else tmp_path / f"query{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        photos.append(path)
    page.goto(server["url"] + "/add")
    _idle(page)
    main = page.locator("[data-testid='stMain']")
    main.get_by_role("textbox", name="Folder", exact=True).fill(str(folder))
    main.get_by_role("textbox", name="Name", exact=True).first.fill("many")
    main.get_by_role("button", name="Add this folder").click()
    main.get_by_text("is ready and selected").wait_for(timeout=LOAD_TIMEOUT_MS)
    _idle(page)
    main.get_by_role("link", name="Search it now").click()
    _idle(page)
    for photo in photos[12:]:
        upload_and_wait_for_five_results(page, photo)
        assert main.get_by_role("combobox", name="Results").input_value() == "5"
