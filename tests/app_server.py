"""``streamlit run app.py`` as a subprocess on a free loopback port, for the browser tests and the browser and
load benches: started with the environment given, waited for until it answers its health check, stopped
afterwards. Its output goes to a log file whose tail is in the error when the server does not start.

    with running_app(app_env(root, "tiny"), root / "server.log") as url:
        ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.redis_server import free_port

PROJECT = Path(__file__).resolve().parents[1]


# Inherited from the caller's shell, these would point the app at someone else's Redis store or registry.
APP_UNSET = ("MILDNET_REDIS_URL", "MILDNET_USER_MANIFEST")


def app_vars(root: Path, dataset: str, *, manifest: Path | None = None, own_pretrained: bool = True) -> dict:
    """The app's MILDNET_* settings that keep every folder it writes under ``root`` (manifest, runs, store and,
    with ``own_pretrained``, the shipped runs too; without it the app uses the project's shipped models)."""
    values = {"MILDNET_MANIFEST": str(manifest or root / "manifest.csv"), "MILDNET_RUNS": str(root / "runs"),
              "MILDNET_STORE": str(root / "store"), "MILDNET_DATASET": dataset}
    if own_pretrained:
        values["MILDNET_PRETRAINED"] = str(root / "pretrained")
    return values


def app_env(root: Path, dataset: str, *, manifest: Path | None = None, own_pretrained: bool = True) -> dict:
    """A server's whole environment: the caller's, with :func:`app_vars`, no Redis store and no user registry."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               **app_vars(root, dataset, manifest=manifest, own_pretrained=own_pretrained))
    if not own_pretrained:
        env.pop("MILDNET_PRETRAINED", None)
    for key in APP_UNSET:
        env.pop(key, None)
    return env


@contextlib.contextmanager
def running_app(env: dict, log_path: Path, timeout: float = 90) -> Iterator[str]:
    """Yields the app's URL once ``/_stcore/health`` answers; RuntimeError (with the log's tail) when the
    server exits or does not answer within ``timeout`` seconds."""
    url = f"http://127.0.0.1:{free_port()}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", url.rsplit(":", 1)[1],
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, url, log_path, timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("streamlit did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.1)
