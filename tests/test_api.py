"""The HTTP API as a client sees it: real ``python -m mildnet serve`` processes on free ports, real HTTP requests.

Two servers run for the whole module: one embeds a registered 12-product sample (32 px, a tiny_cnn run) at start;
the other serves a plain folder with ``--no-embed`` on an empty store (not ready until an API-key reload embeds
it; later reloads follow the folder). The last test asks the CLI, the API and the engine in this process the same
questions and compares their answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mildnet.cli import main
from tests.conftest import PROJECT_ROOT, make_labelled_folder
from tests.test_embeddings import make_run

SIZE = 32
KEY = "test-key-0123456789"
UPLOAD_MB = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, name: str, env: dict, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"{name}.log"
        self._log = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mildnet", "serve", "--port", str(self.port), "--log-level", "warning", *args],
            cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True)

    def wait_up(self, ready: bool, timeout: float = 90) -> None:
        """Until /healthz answers (and /readyz says ``ready``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    if requests.get(self.url + "/readyz", timeout=5).ok == ready:
                        return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not up after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kw)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A registered 12-product sample ``tiny`` (manifest.csv), a tiny_cnn run, and this process's environment
    pointed at them (the in-process engine and CLI read the same registry)."""
    import keras

    from mildnet.data.sample import generate_sample
    from mildnet.models import build_model

    root = tmp_path_factory.mktemp("api")
    generate_sample(root / "tiny", products=12, size=SIZE, wild_per_product=2, seed=0)
    (root / "manifest.csv").write_text("dataset,split,triplets,image_root,catalog,source\n" + "".join(
        f"tiny,{s},tiny/{s}.csv,tiny,tiny/catalog.csv,generated\n" for s in ("train", "val", "test")))
    keras.utils.set_random_seed(0)
    run = make_run(root / "run", build_model("tiny_cnn", SIZE))
    env = {"MILDNET_MANIFEST": str(root / "manifest.csv"), "MILDNET_HOME": str(root / "home"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("MILDNET_STORE", "MILDNET_REDIS_URL", "MILDNET_API_KEYS", "MILDNET_USER_MANIFEST"):
            mp.delenv(key, raising=False)
        yield root, run, {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


@pytest.fixture(scope="module")
def servers(shop):
    root, run, env = shop
    ready = Server(root, "ready", env, "--dataset", "tiny", "--run", str(run), "--store", str(root / "store"),
                   "--max-upload-mb", str(UPLOAD_MB))
    # A plain folder (--images), so that the reload test may add and remove photos without touching `tiny`.
    make_labelled_folder(root / "shop", per_class=4, size=SIZE)
    cold = Server(root, "cold", {**env, "MILDNET_API_KEYS": f"other-key,{KEY}"}, "--images", str(root / "shop"),
                  "--run", str(run), "--store", str(root / "cold-store"), "--no-embed")
    try:
        ready.wait_up(ready=True)
        cold.wait_up(ready=False)
        yield ready, cold
    finally:
        ready.stop()
        cold.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def catalogue(shop):
    import pandas as pd

    return pd.read_csv(shop[0] / "tiny" / "catalog.csv")


def one_line_error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and body["error"], body
    return body["error"]


def test_health_catalogues_and_openapi(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/readyz").json() == {"ready": True, "catalogues": {"tiny": True}}
    listed = server.get("/v1/catalogues").json()["catalogues"]
    assert [c["name"] for c in listed] == ["tiny"] and listed[0]["ready"] and listed[0]["n_catalog"] > 12
    assert {"category", "colour", "product_id"} <= set(listed[0]["columns"])

    spec = server.get("/openapi.json").json()
    assert {"/v1/search", "/v1/products/{item_id}/similar", "/v1/catalogues", "/v1/catalogues/{name}/reload",
            "/healthz", "/readyz"} <= set(spec["paths"])
    search = spec["paths"]["/v1/search"]["post"]
    assert "image" in json.dumps(spec["components"]["schemas"][
        search["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]])
    assert {p["name"] for p in search["parameters"]} == {"k", "filter", "catalogue"}
    assert search["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("SearchResponse")
    assert "413" in search["responses"] and "API key" in spec["paths"]["/v1/catalogues/{name}/reload"]["post"][
        "summary"]
    docs = server.get("/docs")
    assert docs.ok and "swagger" in docs.text.lower()


def test_search_by_photo_and_by_id(server, shop, catalogue):
    from mildnet.api.server import SearchResponse

    photo = catalogue["image"][0]
    with open(shop[0] / "tiny" / photo, "rb") as f:
        response = server.post("/v1/search", params={"k": 3}, files={"image": ("mine.jpg", f, "image/jpeg")})
    assert response.ok, response.text
    body = SearchResponse.model_validate(response.json())
    assert body.query == {"image": "mine.jpg"} and body.k == 3 and len(body.results) == 3
    assert body.results[0].id == photo and body.results[0].score == pytest.approx(1.0, abs=1e-5)
    assert body.results[0].model_extra["product_id"] == catalogue["product_id"][0]

    response = server.get(f"/v1/products/{photo}/similar", params={"k": 4})
    body = SearchResponse.model_validate(response.json())
    assert body.query == {"id": photo} and len(body.results) == 4 and photo not in [r.id for r in body.results]
    scores = [r.score for r in body.results]
    assert scores == sorted(scores, reverse=True)
    default = server.get(f"/v1/products/{photo}/similar").json()
    assert default["k"] == 5 and len(default["results"]) == 5


def test_filters(server, catalogue):
    photo = catalogue["image"][0]
    category = catalogue["category"][0]
    body = server.get(f"/v1/products/{photo}/similar", params={"k": 50, "filter": f"category:{category}"}).json()
    assert body["results"] and {r["category"] for r in body["results"]} == {category}

    colours = sorted(set(catalogue["colour"]))[:2]
    body = server.get(f"/v1/products/{photo}/similar",
                      params=[("k", 50), ("filter", f"colour:{colours[0]}"), ("filter", f"colour:{colours[1]}")]).json()
    assert {r["colour"] for r in body["results"]} <= set(colours) and body["results"]

    error = one_line_error(server.get(f"/v1/products/{photo}/similar", params={"filter": "size:XL"}), 400)
    assert "no column 'size'" in error and "category" in error
    assert "COLUMN:VALUE" in one_line_error(server.get(f"/v1/products/{photo}/similar",
                                                       params={"filter": "category"}), 400)


def test_k_limits(server, catalogue):
    photo = catalogue["image"][0]
    for k in (0, 101, "five"):
        error = one_line_error(server.get(f"/v1/products/{photo}/similar", params={"k": k}), 422)
        assert error.startswith("query parameter k: ")
    assert len(server.get(f"/v1/products/{photo}/similar", params={"k": 100}).json()["results"]) == len(catalogue) - 1


def test_upload_limits_and_bad_photos(server, shop):
    big = b"\xff" * (2 * UPLOAD_MB << 20)
    # Refused from its Content-Length alone, before the body is read.
    error = one_line_error(server.post("/v1/search", files={"image": ("big.jpg", big)}), 413)
    assert "too large" in error and f"at most {UPLOAD_MB} MB" in error
    # Inside the multipart envelope's allowance, so the body is read: the photo itself is over the limit.
    error = one_line_error(server.post("/v1/search", files={"image": ("edge.jpg", big[:(UPLOAD_MB << 20) + 10])}),
                           413)
    assert "edge.jpg is too large" in error

    # Chunked (no Content-Length): refused once the bytes received pass the limit.
    boundary = "mildnetboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range(2 * UPLOAD_MB * 16):
            yield b"\xff" * (64 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = server.post("/v1/search", data=chunks(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "too large" in one_line_error(response, 413)

    error = one_line_error(server.post("/v1/search", files={"image": ("notes.jpg", b"not a photo at all")}), 400)
    assert "not an image" in error
    assert "empty" in one_line_error(server.post("/v1/search", files={"image": ("empty.jpg", b"")}), 400)
    assert one_line_error(server.post("/v1/search"), 422) == "form field image: Field required"


def test_unknown_ids_catalogues_and_routes(server, catalogue):
    error = one_line_error(server.get("/v1/products/images/nope/x.jpg/similar"), 404)
    assert "'images/nope/x.jpg' is not in catalogue tiny" in error
    assert "no catalogue 'other'" in one_line_error(
        server.get(f"/v1/products/{catalogue['image'][0]}/similar", params={"catalogue": "other"}), 404)
    assert "no such endpoint" in one_line_error(server.get("/v2/anything"), 404)
    # This server has no keys: writes are off, whatever is sent.
    assert "no API keys" in one_line_error(server.post("/v1/catalogues/tiny/reload", headers={"X-API-Key": KEY}),
                                           403)


def test_not_ready_until_a_reload_with_an_api_key_then_reload_follows_the_folder(servers, shop):
    cold = servers[1]
    root = shop[0] / "shop"
    (name,) = (c["name"] for c in cold.get("/v1/catalogues").json()["catalogues"])
    assert name.startswith("shop-")  # as `embed --images DIR` names it
    reload = f"/v1/catalogues/{name}/reload"
    readiness = cold.get("/readyz")
    assert readiness.status_code == 503 and readiness.json()["ready"] is False
    assert f"not embedded yet: {name}" in readiness.json()["error"]
    error = one_line_error(cold.get("/v1/products/red/red_0.jpg/similar"), 503)
    assert "has no embeddings" in error and "embed" in error

    assert "needs an API key" in one_line_error(cold.post(reload), 401)
    wrong = cold.post(reload, headers={"X-API-Key": "guess"})
    assert one_line_error(wrong, 401) == "the API key is not valid"
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert cold.get("/readyz").status_code == 503

    done = cold.post(reload, headers={"Authorization": f"Bearer {KEY}"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["embedded"], done.json()["n_catalog"]) == ("built", 12, 12)
    assert cold.get("/readyz").json() == {"ready": True, "catalogues": {name: True}}
    assert len(cold.get("/v1/products/red/red_0.jpg/similar").json()["results"]) == 5
    assert cold.post(reload, headers={"X-API-Key": KEY}).json()["status"] == "reused"

    # The folder changes: a reload re-reads it, embeds the new photo and drops the removed one.
    make_labelled_folder(root, classes=("yellow",), per_class=1, size=SIZE, seed=5)
    (root / "blue" / "blue_3.jpg").unlink()
    done = cold.post(reload, headers={"X-API-Key": KEY}).json()
    assert (done["status"], done["embedded"], done["removed"], done["n_catalog"]) == ("updated", 1, 1, 12)
    found = cold.post("/v1/search", files={"image": ("y.jpg", (root / "yellow" / "yellow_0.jpg").read_bytes())})
    assert found.json()["results"][0]["id"] == "yellow/yellow_0.jpg"
    assert "blue/blue_3.jpg" in one_line_error(cold.get("/v1/products/blue/blue_3.jpg/similar"), 404)

    # SIGTERM (docker stop, systemd) ends the server cleanly.
    assert cold.stop() == 0
    log = cold.log.read_text()
    assert log.rstrip().endswith("stopped") and "Traceback" not in log


def test_several_catalogues_on_one_server(server, shop):
    root, run, env = shop
    make_labelled_folder(root / "more", classes=("red", "blue"), per_class=3, size=SIZE)
    both = Server(root, "both", env, "--dataset", "tiny", "--images", str(root / "more"), "--run", str(run),
                  "--store", str(root / "store"), "--max-k", "3")
    try:
        both.wait_up(ready=True)
        names = [c["name"] for c in both.get("/v1/catalogues").json()["catalogues"]]
        assert names[0] == "tiny" and names[1].startswith("more-") and len(names) == 2
        assert both.get("/readyz").json()["catalogues"] == {names[0]: True, names[1]: True}

        error = one_line_error(both.get("/v1/products/red/red_0.jpg/similar"), 400)
        assert error == f"several catalogues are served ({names[0]}, {names[1]}); name one with ?catalogue=NAME"
        found = both.get("/v1/products/red/red_0.jpg/similar", params={"catalogue": names[1], "k": 3}).json()
        assert found["catalogue"] == names[1] and found["n_catalog"] == 6
        assert {r["id"].split("/")[0] for r in found["results"]} <= {"red", "blue"}
        with open(root / "more" / "blue" / "blue_1.jpg", "rb") as f:
            found = both.post("/v1/search", params={"catalogue": "tiny", "k": 2}, files={"image": ("b.jpg", f)})
        assert found.json()["catalogue"] == "tiny" and found.json()["results"][0]["id"].startswith("images/")
        # --max-k 3
        assert one_line_error(both.get("/v1/products/red/red_0.jpg/similar", params={"catalogue": names[1], "k": 4}),
                              422) == "query parameter k: Input should be less than or equal to 3"
    finally:
        assert both.stop() == 0


def test_cli_api_and_engine_give_identical_results(server, shop, catalogue, capsys):
    from mildnet.search.engine import Catalogue, LoadedModel, SearchEngine
    from mildnet.store import open_store

    root, run, _ = shop
    engine = SearchEngine.open(LoadedModel.from_run(run), Catalogue.registered("tiny"), open_store(str(root / "store")))
    assert engine.ready

    def summary(payload: dict) -> tuple:
        return ([(r["id"], r["score"], r["match"]) for r in payload["results"]], payload["close_match"])

    def cli(*query) -> dict:
        code = main(["search", "--run", str(run), "--store", str(root / "store"), "--dataset", "tiny", "-k", "4",
                     "--json", *query])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out.strip().splitlines()[-1])

    checked = 0
    for photo in catalogue["image"][:3]:
        by_engine = summary(engine.query_id(photo, k=4).to_dict())
        by_api = summary(server.get(f"/v1/products/{photo}/similar", params={"k": 4}).json())
        assert by_api == by_engine == summary(cli("--id", photo))

        path = root / "tiny" / photo
        by_engine = summary(engine.query_image(path, k=4).to_dict())
        with open(path, "rb") as f:
            by_api = summary(server.post("/v1/search", params={"k": 4}, files={"image": (path.name, f)}).json())
        assert by_api == by_engine == summary(cli("--image", str(path)))
        checked += by_engine[0][0][2] is not None  # match strengths compared, not only Nones
    assert checked == 3
