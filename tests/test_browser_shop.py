"""The shop in a real browser (issue 19): the owner signs in and publishes a catalogue; a shopper (another browser
context) lands on it with no owner action in reach; after a server restart both still hold."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.app_server import app_env, running_app
from tests.conftest import make_tiny_app_root
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, LOAD_TIMEOUT_MS, _idle, _shoot, playwright_api  # noqa: F401

PASSWORD = "s3cret-owner"


@contextlib.contextmanager
def _shop_server(root: Path):
    env = app_env(root, "other", own_pretrained=True)
    env.update(MILDNET_OWNER_PASSWORD=PASSWORD, MILDNET_HOME=str(root / "home"))
    try:
        with running_app(env, root / "server.log", timeout=90) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def shop_root(tmp_path_factory, playwright_api):  # noqa: F811
    """``tiny`` and ``other`` (the session default), both searchable with the shipped real-photo model."""
    root = make_tiny_app_root(tmp_path_factory.mktemp("browser-shop"))
    text = (root / "manifest.csv").read_text()
    (root / "manifest.csv").write_text(text + text.split("\n", 1)[1].replace("tiny", "other"))
    (root / "other").symlink_to(root / "tiny", target_is_directory=True)
    return root


def _nav_titles(page) -> list[str]:
    """The navigation's page titles (each link's last line: the icon's ligature name comes first)."""
    return [text.strip().splitlines()[-1] for text in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]


def _sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebar"]').inner_text()


@pytest.mark.slow
def test_owner_publishes_and_a_shopper_gets_it_across_a_restart(shop_root, playwright_api, tmp_path):  # noqa: F811
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        with _shop_server(shop_root) as url:
            owner = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            owner.goto(url, timeout=LOAD_TIMEOUT_MS)
            _idle(owner)
            assert not any("Add a catalogue" in t for t in _nav_titles(owner))  # a password is set: sign in first
            owner.get_by_text("Owner sign-in").click()
            owner.locator('input[type="password"]').fill(PASSWORD)
            owner.get_by_role("button", name="Sign in").click()
            _idle(owner)
            assert any("Add a catalogue" in t for t in _nav_titles(owner)), _nav_titles(owner)
            owner.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
            owner.get_by_role("option", name="tiny", exact=True).click()
            _idle(owner)
            owner.get_by_role("button", name="Publish for every visitor").click()
            _idle(owner)
            assert "Published: every visitor gets this catalogue and model" in _sidebar_text(owner)
            _shoot(owner, tmp_path, "shop-owner-published")

            shopper = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            shopper.goto(url, timeout=LOAD_TIMEOUT_MS)
            _idle(shopper)
            _check_shopper(shopper)
            _shoot(shopper, tmp_path, "shop-shopper")
        with _shop_server(shop_root) as url:  # a restart: the published choice is on disk, not in a session
            shopper = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            shopper.goto(url, timeout=LOAD_TIMEOUT_MS)
            _idle(shopper)
            _check_shopper(shopper)
            owner = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            owner.goto(url, timeout=LOAD_TIMEOUT_MS)
            _idle(owner)
            owner.get_by_text("Owner sign-in").click()
            owner.locator('input[type="password"]').fill(PASSWORD)
            owner.get_by_role("button", name="Sign in").click()
            _idle(owner)
            assert "Published: every visitor gets this catalogue and model" in _sidebar_text(owner)
        browser.close()


def _check_shopper(page) -> None:
    sidebar = _sidebar_text(page)
    assert "Catalogue: tiny" in sidebar, sidebar
    assert "Train a model" not in sidebar and "Publish" not in sidebar and "Dataset" not in sidebar
    assert _nav_titles(page) == ["Home", "Search"], _nav_titles(page)
    assert "Only the shop's owner" not in page.content()
