"""Held uploads (issue 18 F12): a zip uploaded on the "Add a catalogue" page waits on disk, named after its session
and server process, and is swept once either has ended (the page's own tests: tests/test_app_catalogue.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from mildnet.data import staging
from tests.conftest import leave_held_upload


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_held_upload_is_named_after_its_session_and_process(tmp_path):
    path = staging.held_path(tmp_path, "3f2b8c1e-0d5a-4c55-9a4e-1b2c3d4e5f60")
    assert path.parent == tmp_path and path.name.startswith(".3f2b8c1e-0d5a-4c55-9a4e-1b2c3d4e5f60.held-")
    assert staging.held_session(path) == ("3f2b8c1e-0d5a-4c55-9a4e-1b2c3d4e5f60", os.getpid())
    odd = staging.held_path(tmp_path, "test session id/../x")  # any id: a safe, single name in the folder
    assert odd.parent == tmp_path and staging.held_session(odd) == ("test_session_id____x", os.getpid())
    assert staging.held_session(tmp_path / ".shop.upload-12-0123abcd.zip") is None  # add_zip's own copy


def test_sweep_held_removes_uploads_of_ended_processes_and_long_ended_sessions(tmp_path):
    old = time.time() - 3600

    def held(session, pid, mtime=old):
        return leave_held_upload(tmp_path, session, pid, mtime)

    dead_process = held("a", _dead_pid(), mtime=time.time())  # at once, whatever its age
    ended = held("ended", os.getpid())
    just_left = held("left", os.getpid(), mtime=time.time())  # may still reconnect
    connected = held("live", os.getpid())
    unknown = held("unknown", os.getpid())  # no runtime to ask: kept until the process ends
    mine = held("mine", os.getpid())
    other_server = held("other", 1)  # another live process's: its own to sweep
    unrelated = tmp_path / ".shop.upload-1-0123abcd.zip"
    unrelated.write_bytes(b"PK")
    answers = {"ended": False, "left": False, "live": True, "unknown": None, "mine": False}
    swept = staging.sweep_held(tmp_path, answers.get, idle_seconds=120, keep_session="mine")
    assert sorted(swept) == sorted([dead_process, ended])
    assert all(p.exists() for p in (just_left, connected, unknown, mine, other_server, unrelated))
    # The generic sweep of abandoned staging knows these names too: a dead process's held upload goes with it.
    again = held("b", _dead_pid())
    assert staging.sweep_abandoned(tmp_path) == [again]


def test_session_active_asks_the_runtime_and_says_none_where_it_cannot(monkeypatch):
    pytest.importorskip("streamlit")
    from unittest.mock import MagicMock

    from streamlit.runtime import Runtime

    from mildnet.ui import widgets

    monkeypatch.setattr(Runtime, "_instance", SimpleNamespace(is_active_session=lambda session: session == "on"))
    assert widgets.session_active("on") is True and widgets.session_active("off") is False
    monkeypatch.setattr(Runtime, "_instance", MagicMock(spec=Runtime))  # AppTest's stand-in runtime
    assert widgets.session_active("on") is None
    monkeypatch.setattr(Runtime, "_instance", None)  # bare mode: no runtime
    assert widgets.session_active("on") is None
