"""Start a real, throw-away ``redis-server`` for tests.

Usage: the fixtures ``redis_url``, ``redis_server`` (one server per test module) and ``fresh_redis_server``
are made available to every test by ``tests/conftest.py``::

    def test_something(redis_url): ...

or, outside pytest fixtures, ``with RedisServer() as server: server.url``. The server listens on a free
loopback port, persists nothing (``--save '' --appendonly no``) and keeps its files in a temp dir. Tests are
skipped (with the reason) only when the ``redis-server`` binary is missing; CI installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER_ENV = "MILDNET_REDIS_SERVER"  # optional path to the binary


def redis_server_binary() -> str | None:
    return os.environ.get(REDIS_SERVER_ENV) or shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def free_port() -> int:
    """A loopback port that was free a moment ago (the server start retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int, timeout: float = 0.2) -> bool:
    """Raw RESP PING, so this helper does not depend on the client under test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server subprocess on 127.0.0.1; ``start()``/``stop()`` or use as a context manager."""

    def __init__(self, binary: str | None = None, start_timeout: float = 10.0) -> None:
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="mildnet-redis-")
        last_output = ""
        for _attempt in range(3):  # the free port may be grabbed by someone else between probe and bind
            port = free_port()
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self._tmp.name, "--protected-mode", "yes"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _ping(port):
                    self.port = port
                    return self
                time.sleep(0.02)
            last_output = self._kill()
        self._tmp.cleanup()
        raise RuntimeError(f"redis-server did not start: {last_output[-500:]}")

    def _kill(self) -> str:
        out = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                out = self.proc.communicate(timeout=5)[0].decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out = self.proc.communicate()[0].decode("utf-8", "replace")
            self.proc = None
        return out

    def stop(self) -> None:
        self._kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_or_skip() -> RedisServer:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed; install it (apt-get install redis-server) to run Redis tests")
    return RedisServer().start()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One server per test module (starting takes ~50 ms, but sharing keeps modules independent)."""
    server = start_or_skip()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the module's server, flushed before each test so tests do not see each other's keys."""
    _flushall(redis_server.port)
    yield redis_server.url


def _flushall(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        if not s.recv(16).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed")


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that stop it."""
    server = start_or_skip()
    try:
        yield server
    finally:
        server.stop()
