"""Shared fixtures. ``../shared`` (beside the project root) holds real data and weights; tests that
need it skip with a clear reason where it is absent."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A real redis-server per test module (tests/redis_server.py); imported here so every test file can use them.
from tests.redis_server import fresh_redis_server, redis_server, redis_url  # noqa: E402,F401

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _own_data_home(tmp_path_factory, monkeypatch):
    """Each test's own data home (shop.json...): nothing a test publishes reaches the project's .mildnet/, and
    nothing published there changes what a test sees. Tests that need another set MILDNET_HOME themselves."""
    monkeypatch.setenv("MILDNET_HOME", str(tmp_path_factory.mktemp("home")))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"


def _shared(*parts: str) -> Path:
    """A path under ../shared, or a skip saying what is missing."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared is not present beside the project ({SHARED}); real-data test skipped")
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


# Each test is marked after what it needs, from the fixtures whose skips say so (here, tests/redis_server.py and
# tests/test_browser.py), so `pytest -m "not redis"`, `-m browser`, `-m shared` select by need. Tests that need one
# another way (a skipif, a fixture looked up at run time) carry the mark themselves. `slow` is marked by hand.
FIXTURE_MARKS = {
    "redis_server": "redis",
    "redis_url": "redis",
    "fresh_redis_server": "redis",
    "playwright_api": "browser",
    "shared_dir": "shared",
    "clothing_dir": "shared",
    "luma_dir": "shared",
    "squeezenet_weights": "shared",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            mark = FIXTURE_MARKS.get(fixture)
            if mark is not None and item.get_closest_marker(mark) is None:
                item.add_marker(mark)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _shared()


@pytest.fixture(scope="session")
def clothing_dir() -> Path:
    return _shared("data", "clothing-dataset-small")


@pytest.fixture(scope="session")
def luma_dir() -> Path:
    return _shared("data", "magento-luma")


@pytest.fixture(scope="session")
def squeezenet_weights() -> Path:
    return _shared("weights", "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5")


def leave_held_upload(folder: Path, session: str, pid: int, mtime: float) -> Path:
    """A held upload (mildnet.data.staging's naming) of ``session`` and server process ``pid``, last touched at
    ``mtime``: what a closed tab or an ended server leaves behind for the sweeps."""
    path = folder / f".{session}.held-{pid}-{os.urandom(4).hex()}.zip"
    path.write_bytes(b"PK left")
    os.utime(path, (mtime, mtime))
    return path


def make_labelled_folder(root: Path, classes=("red", "green", "blue"), per_class=4, size=32, seed=0) -> Path:
    """Class sub-folders of tiny solid-colour JPEGs with a little noise: a real, decodable dataset."""
    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200),
               "yellow": (220, 210, 40), "grey": (128, 128, 128)}
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(colours.get(name, (100, 100, 100)), dtype=np.int16)
            pixels = np.clip(base + rng.integers(-25, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


def make_tiny_app_root(root: Path) -> Path:
    """What the app needs under ``root`` for the catalogue tests: a 12-product, 32 px sample in ``tiny/``, a
    ``manifest.csv`` naming it ``tiny``, and ``pretrained/real`` linking the shipped real-photo model."""
    from mildnet.data.sample import generate_sample

    generate_sample(root / "tiny", products=12, size=32)
    (root / "manifest.csv").write_text("dataset,split,triplets,image_root,catalog,source\n" + "".join(
        f"tiny,{s},tiny/{s}.csv,tiny,tiny/catalog.csv,generated\n" for s in ("train", "val", "test")))
    (root / "pretrained").mkdir()
    (root / "pretrained" / "real").symlink_to(PROJECT_ROOT / "mildnet" / "pretrained" / "real")
    return root


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    return make_labelled_folder(tmp_path / "images")


def results_box(at):
    """The Search page's "Results" box in an AppTest (its key changes with the value it was drawn from)."""
    return next(box for box in at.main.selectbox if box.label == "Results")


@contextlib.contextmanager
def app_environment(root: Path, dataset: str, unset: tuple[str, ...] = ()):
    """This process set up as the app's server would be (``tests/app_server.py``): AppTest runs the app here."""
    from tests.app_server import APP_UNSET, app_vars

    with pytest.MonkeyPatch.context() as mp:
        for key, value in app_vars(root, dataset).items():
            mp.setenv(key, value)
        for key in (*APP_UNSET, *unset):
            mp.delenv(key, raising=False)
        yield
