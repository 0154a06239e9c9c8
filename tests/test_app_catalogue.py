"""Adding your own catalogue in the app (issue 9), driven through ``streamlit.testing.v1.AppTest``: a folder,
an uploaded zip (and every bad one), the catalogue following its folder, the demo catalogue offline.

Everything goes to a temporary folder (``MILDNET_MANIFEST`` and the user registry beside it, ``MILDNET_STORE``,
``MILDNET_RUNS``, ``MILDNET_PRETRAINED`` holding a link to the shipped real-photo model).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from mildnet.data import user_datasets as ud
from mildnet.errors import DataError
from tests.conftest import app_environment, leave_held_upload, make_labelled_folder, make_tiny_app_root, results_box

PROJECT = Path(__file__).resolve().parents[1]
APP = PROJECT / "app.py"
TIMEOUT = 240


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = make_tiny_app_root(tmp_path_factory.mktemp("catalogue"))
    with app_environment(root, "tiny"):
        yield root


def _photo(rng, size=48) -> Image.Image:
    base = rng.integers(0, 255, 3)
    pixels = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _flat_folder(path: Path, n=8, seed=0) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        _photo(rng).save(path / f"item{i:02d}.jpg", quality=90)
    return path


def _jpeg_bytes(seed=0) -> bytes:
    buffer = io.BytesIO()
    _photo(np.random.default_rng(seed)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _zip(entries: list[tuple]) -> bytes:
    """``(name, bytes)`` entries, or ``(name, target, "link")`` for a symbolic link member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for entry in entries:
            if len(entry) == 3:
                info = zipfile.ZipInfo(entry[0])
                info.external_attr = 0o120777 << 16
                zf.writestr(info, entry[1])
            else:
                zf.writestr(entry[0], entry[1])
    return buffer.getvalue()


def _add_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/add.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _add_folder(at: AppTest, folder, name="") -> AppTest:
    at.text_input(key="mn_add_folder").set_value(str(folder))
    at.text_input(key="mn_add_folder_name").set_value(name)
    at.button(key="mn_add_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _add_zip(at: AppTest, payload: bytes, name: str) -> AppTest:
    at.file_uploader(key="mn_add_zip").set_value((f"{name}.zip", payload, "application/zip")).run()
    at.text_input(key="mn_add_zip_name").set_value(name)
    at.button(key="mn_add_zip_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _registered() -> list[str]:
    from mildnet.data import manifest

    return manifest.datasets()


def _hits(at: AppTest) -> list:
    return [b for b in at.button if b.key and b.key.startswith("mn_similar_")]


# --- add a folder --------------------------------------------------------------------------------------------


def test_add_a_flat_folder_then_search_it_with_real_photos_only(env, tmp_path):
    folder = _flat_folder(tmp_path / "shop photos")
    at = _add_folder(_add_page(), folder)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["mn_dataset"] == "shop-photos"  # named after the folder, made registry-safe
    assert any("is ready and selected" in s.value and "instance-level" in s.value for s in at.success)

    at.switch_page("pages/search.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.file_uploader(key="mn_upload").set_value(("q.jpg", (folder / "item03.jpg").read_bytes(), "image/jpeg")).run()
    assert not at.error, [e.value for e in at.error]
    assert len(_hits(at)) == 5
    # The augmented views feed the triplets but are never results: every catalogue id is a real photo.
    from mildnet.ui import resources

    ids = resources.gallery(resources.dataset("shop-photos"))["image"]
    assert len(ids) == 8 and all(i.startswith("photos/") for i in ids)

    at.switch_page("pages/triplets.py").run()
    assert not at.exception and not at.error
    assert any("Instance-level triplets" in i.value for i in at.info)


def test_add_class_folders_with_a_name(env, tmp_path):
    folder = make_labelled_folder(tmp_path / "cls")
    at = _add_folder(_add_page(), folder, name="colours")
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["mn_dataset"] == "colours"
    assert any("3 products" in s.value for s in at.success)


def test_the_number_of_results_asked_for_survives_a_smaller_catalogue(env, tmp_path):
    at = _add_folder(_add_page(), _flat_folder(tmp_path / "duo", n=2, seed=3), name="duo")
    at.sidebar.selectbox[0].set_value("tiny").run()
    at.switch_page("pages/search.py").run()
    photo = ("q.jpg", _jpeg_bytes(seed=4), "image/jpeg")
    at.file_uploader(key="mn_upload").set_value(photo).run()
    results_box(at).set_value(8).run()
    assert len(_hits(at)) == 8
    at.sidebar.selectbox[0].set_value("duo").run()  # two photos: at most two results
    at.file_uploader(key="mn_upload").set_value(photo).run()
    assert not at.exception and results_box(at).value == 2
    at.sidebar.selectbox[0].set_value("tiny").run()
    at.file_uploader(key="mn_upload").set_value(photo).run()
    assert results_box(at).value == 8 and len(_hits(at)) == 8


def test_a_product_picked_in_one_catalogue_is_not_looked_for_in_another(env, tmp_path):
    at = _add_folder(_add_page(), _flat_folder(tmp_path / "trio", n=3, seed=5), name="trio")
    at.sidebar.selectbox[0].set_value("tiny").run()
    at.switch_page("pages/search.py").run()
    at.file_uploader(key="mn_upload").set_value(("q.jpg", _jpeg_bytes(seed=6), "image/jpeg")).run()
    _hits(at)[1].click().run()  # "similar to this": a tiny catalogue product becomes the query
    assert at.session_state["mn_query"]["kind"] == "catalog"
    at.sidebar.selectbox[0].set_value("trio").run()
    assert not at.exception and not any("not in this catalog" in w.value for w in at.warning)
    assert any("pick a product to start" in i.value for i in at.info)


def test_a_catalogue_removed_under_a_session_is_named_not_switched_silently(env, tmp_path):
    # Issue 18 F18: `data remove` (or another session) removed the dataset a session used; it showed `sample`.
    at = _add_folder(_add_page(), _flat_folder(tmp_path / "gone", n=3, seed=8), name="doomed")
    assert at.session_state["mn_dataset"] == "doomed"
    ud.remove_dataset("doomed")  # as `python -m mildnet data remove doomed` would, from outside the session
    at.switch_page("pages/search.py").run()
    assert not at.exception and at.session_state["mn_dataset"] == "tiny"
    assert any("doomed" in w.value and "no longer registered" in w.value for w in at.sidebar.warning)


def test_a_catalogue_too_small_for_triplets_says_so(env, tmp_path):
    at = _add_folder(_add_page(), _flat_folder(tmp_path / "pair", n=2), name="pair")
    assert not at.error, [e.value for e in at.error]
    message = next(s.value for s in at.success if "is ready and selected" in s.value)
    assert "too few photos for any triplet" in message and "searched but not trained" in message


def test_folders_and_labels_only_under_the_owners_roots(env, tmp_path, monkeypatch):
    # Issue 18 F2: the Folder and Labels CSV fields read any file of the server's disk for anyone who could open
    # the page; MILDNET_ADD_ROOTS limits them, and an app served to others reads none without it.
    from mildnet.ui import catalogue

    allowed = tmp_path / "allowed"
    inside = _flat_folder(allowed / "shop", n=3, seed=11)
    outside = _flat_folder(tmp_path / "private", n=3, seed=12)
    secret = tmp_path / "shadow.csv"
    secret.write_text("image,product_id\n")
    monkeypatch.setenv("MILDNET_ADD_ROOTS", str(allowed))
    before = _registered()
    at = _add_folder(_add_page(), outside, "private")
    assert len(at.error) == 1 and "must be inside" in at.error[0].value and str(allowed) in at.error[0].value
    at = _add_page()
    at.text_input(key="mn_add_labels").set_value(str(secret))
    at = _add_folder(at, inside, "labelled")
    assert len(at.error) == 1 and "the labels CSV must be inside" in at.error[0].value
    assert _registered() == before
    (allowed / "escape").symlink_to(outside, target_is_directory=True)  # resolved before the check
    with pytest.raises(DataError, match="must be inside"):
        catalogue.add_folder("linked", str(allowed / "escape"))
    at = _add_folder(_add_page(), inside, "inside")
    assert not at.error and at.session_state["mn_dataset"] == "inside"
    monkeypatch.delenv("MILDNET_ADD_ROOTS")
    with pytest.raises(DataError, match="served to other machines"):
        catalogue.add_folder("exposed", str(outside), served_locally=False)
    ud.remove_dataset("inside")


@pytest.mark.parametrize("case,expected", [
    ("missing", "image folder not found"),
    ("empty", "no images"),
    ("file", "is not a folder"),
    ("blank", "give the path of a folder"),
    ("bad name", "dataset name"),
    ("taken", "already exists"),
    ("escaping link", "leads outside the folder"),
])
def test_add_folder_bad_input_is_one_clear_error(env, tmp_path, case, expected):
    name = ""
    if case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
        (folder / "notes.txt").write_text("no photos here")
    elif case == "file":
        folder = tmp_path / "a.jpg"
        folder.write_bytes(_jpeg_bytes())
    elif case == "blank":
        folder = ""
        name = "blank"
    elif case == "bad name":
        folder, name = _flat_folder(tmp_path / "ok"), "../evil"
    elif case == "taken":
        folder, name = _flat_folder(tmp_path / "ok"), "tiny"
    else:
        folder = _flat_folder(tmp_path / "links")
        outside = tmp_path / "outside.jpg"
        outside.write_bytes(_jpeg_bytes())
        os.symlink(outside, folder / "elsewhere.jpg")
    before = _registered()
    at = _add_folder(_add_page(), folder, name)
    assert len(at.error) == 1 and expected in at.error[0].value, [e.value for e in at.error]
    # Below the (collapsed) status box, not inside it, where the user would have to open it to see why.
    assert all(len(status.error) == 0 for status in at.status)
    assert _registered() == before
    assert at.session_state["mn_dataset"] == "tiny"


# --- upload a zip --------------------------------------------------------------------------------------------


def test_add_a_zip_keeps_only_photos_and_reports_the_rest(env):
    photos = [(f"shop/p{i}.jpg", _jpeg_bytes(i)) for i in range(7)]
    payload = _zip(photos + [
        ("../escape.jpg", _jpeg_bytes(20)),
        ("shop/../../up.jpg", _jpeg_bytes(21)),
        ("/abs.jpg", _jpeg_bytes(22)),
        ("shop/link.jpg", "/etc/passwd", "link"),
        ("shop/readme.txt", b"hello"),
        ("shop/fake.png", b"not a png"),
        ("__MACOSX/shop/._p0.jpg", b"resource fork"),
    ])
    at = _add_zip(_add_page(), payload, "zipped")
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["mn_dataset"] == "zipped"
    from mildnet.ui import catalogue

    unpacked = catalogue.uploads_dir() / "zipped"
    files = sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file())
    assert files == [ud.UPLOAD_MARKER] + [f"shop/p{i}.jpg" for i in range(7)]
    assert (unpacked / ud.UPLOAD_MARKER).read_text().strip() == "zipped"  # ours, deleted with the dataset
    assert not (unpacked.parent / "escape.jpg").exists() and not (env / "up.jpg").exists()
    report = " ".join(w.value for w in at.warning)
    assert "Skipped 7 entries of the zip" in report
    for reason in ("unsafe path ('..' in path)", "unsafe path (absolute path)", "symbolic link",
                   "not an image (by extension)", "hidden or system file", "not a readable image"):
        assert reason in report, reason


@pytest.fixture
def released(monkeypatch) -> list:
    """What the runtime's file manager still holds of each upload the app releases (its real remove_file runs,
    watched): ``[]`` per release once the bytes are gone."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    calls = []
    remove = MemoryUploadedFileManager.remove_file

    def watched(self, session_id, file_id):
        remove(self, session_id, file_id)
        calls.append(self.get_files(session_id, [file_id]))

    monkeypatch.setattr(MemoryUploadedFileManager, "remove_file", watched)
    return calls


def _held() -> list[Path]:
    """The zips the app holds on disk for its sessions (uploaded, not added yet)."""
    from mildnet.ui import catalogue

    return sorted(catalogue.uploads_dir().glob(".*.held-*.zip"))


def _upload(at: AppTest, payload: bytes, name: str = "shop.zip") -> AppTest:
    at.file_uploader(key="mn_add_zip").set_value((name, payload, "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption if "ready to add" in c.value)


def test_an_added_zip_leaves_the_servers_memory_once_unpacked(env, released):
    # Issue 18 F12: three sessions holding 250 MB zips kept +580 MB until their sessions ended. The zip's bytes are
    # dropped from the runtime's file manager as soon as they are on disk (before Add), and never taken back.
    at = _add_zip(_add_page(), _zip([(f"shop/p{i}.jpg", _jpeg_bytes(i)) for i in range(4)]), "released")
    assert not at.error and at.session_state["mn_dataset"] == "released"
    assert released == [[]]


def test_a_zip_uploaded_but_never_added_leaves_memory_at_once_and_is_held_on_disk(env, released):
    # Issue 18 F12: an upload the owner never adds stayed in the server's memory until its session ended.
    from mildnet.data import staging

    payload = _zip([(f"shop/p{i}.jpg", _jpeg_bytes(i)) for i in range(3)])
    at = _upload(_add_page(), payload)
    assert not at.error, [e.value for e in at.error]
    assert released == [[]]  # in the run that received it
    # The session's own copy of the uploader's value is emptied too (the widget keeps it until the next message).
    assert at.session_state["mn_add_zip"].getvalue() == b""
    held = _held()
    assert len(held) == 1 and held[0].read_bytes() == payload
    assert staging.held_session(held[0]) == (staging.session_tag("test session id"), os.getpid())
    assert "shop.zip" in _shown(at) and f"{len(payload) / 1e3:,.0f} kB" in _shown(at)
    assert not at.button(key="mn_add_zip_go").disabled
    at.text_input(key="mn_add_zip_name").set_value("later").run()  # reruns: still shown, still addable, no copy
    at.run()
    assert "shop.zip" in _shown(at) and not at.button(key="mn_add_zip_go").disabled
    assert _held() == held and released == [[]]
    at.file_uploader(key="mn_add_zip").clear().run()  # the owner removes it from the uploader: gone from disk
    assert not at.exception and not _held() and not _shown(at)
    assert at.button(key="mn_add_zip_go").disabled


def test_add_reads_the_held_zip_and_deletes_it(env, released, monkeypatch):
    from mildnet.ui import catalogue

    given = []
    add_zip = catalogue.add_zip
    monkeypatch.setattr(catalogue, "add_zip", lambda name, upload, **kw: given.append(upload)
                        or add_zip(name, upload, **kw))
    at = _upload(_add_page(), _zip([(f"p{i}.jpg", _jpeg_bytes(i)) for i in range(4)]))
    held = _held()
    at.text_input(key="mn_add_zip_name").set_value("tiny")  # taken: refused before the zip is read, so it stays
    at.button(key="mn_add_zip_go").click().run()
    assert len(at.error) == 1 and "already exists" in at.error[0].value
    assert _held() == held and not given and not at.button(key="mn_add_zip_go").disabled
    at.text_input(key="mn_add_zip_name").set_value("fromdisk")
    at.button(key="mn_add_zip_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["mn_dataset"] == "fromdisk"
    assert given == held and not _held()  # the file on disk was added, then deleted
    assert len(list((catalogue.uploads_dir() / "fromdisk").glob("*.jpg"))) == 4
    assert released == [[]]
    ud.remove_dataset("fromdisk")


def test_a_held_zip_that_vanished_asks_for_the_upload_again(env):
    at = _upload(_add_page(), _zip([("p.jpg", _jpeg_bytes())]))
    _held()[0].unlink()
    at.run()
    assert not at.exception and not at.error
    # Only this warning about the zip (a training job an earlier test stopped may add its own banner: the job
    # manager is one per server process).
    assert [w.value for w in at.warning if "zip" in w.value] == [
        "**shop.zip** is no longer on the server; upload it again."]
    assert at.button(key="mn_add_zip_go").disabled


def test_a_second_upload_replaces_the_sessions_held_zip(env, released):
    first, second = _zip([("a.jpg", _jpeg_bytes(1))]), _zip([("b.jpg", _jpeg_bytes(2)), ("c.jpg", _jpeg_bytes(3))])
    at = _upload(_add_page(), first, "first.zip")
    assert [p.read_bytes() for p in _held()] == [first]
    at = _upload(at, second, "second.zip")
    assert [p.read_bytes() for p in _held()] == [second]
    assert "second.zip" in _shown(at) and "first.zip" not in _shown(at)
    assert released == [[], []]
    at.file_uploader(key="mn_add_zip").clear().run()


def test_held_zips_of_ended_sessions_or_processes_are_swept_by_the_next_upload_or_add(env, monkeypatch):
    # A session that ends without adding or emptying the uploader (its tab closed) leaves its held zip: the next
    # upload or add deletes it once Streamlit no longer has that session and it went unseen for longer than
    # server.disconnectedSessionTTL, or at once when the server process that held it is gone.
    import subprocess
    import sys
    import time
    import uuid

    from mildnet.ui import catalogue, widgets

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live, ended, recent, other = (str(uuid.uuid4()) for _ in range(4))
    monkeypatch.setattr(widgets, "session_active", lambda session: session == live, raising=False)
    uploads = catalogue.uploads_dir()
    uploads.mkdir(parents=True, exist_ok=True)
    old = time.time() - 3600

    def leave(session, pid, age=old):
        return leave_held_upload(uploads, session, pid, age)

    dead_process = leave(str(uuid.uuid4()), gone.pid)
    ended_session = leave(ended, os.getpid())
    kept = [leave(live, os.getpid()), leave(recent, os.getpid(), age=time.time()), leave(other, 1)]
    try:
        at = _upload(_add_page(), _zip([("p.jpg", _jpeg_bytes())]))
        assert not dead_process.exists() and not ended_session.exists()
        assert all(p.exists() for p in kept)
        assert len(_held()) == len(kept) + 1  # and this session's own
        later = leave(ended, os.getpid())  # swept by an add too
        at.text_input(key="mn_add_zip_name").set_value("sweeper")
        at.button(key="mn_add_zip_go").click().run()
        assert not at.error and at.session_state["mn_dataset"] == "sweeper"
        assert not later.exists() and _held() == sorted(kept)
        ud.remove_dataset("sweeper")
    finally:
        for path in kept:
            path.unlink(missing_ok=True)


def test_a_full_disk_while_holding_an_upload_is_one_line_and_leaves_nothing(env, released, monkeypatch):
    import errno
    import shutil

    from mildnet.ui import catalogue

    def full(source, target, length=0):
        target.write(source.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)
    at = _upload(_add_page(), _zip([("p.jpg", _jpeg_bytes())]))
    assert len(at.error) == 1, [e.value for e in at.error]
    assert "cannot keep the upload on the server's disk (No space left on device)" in at.error[0].value
    assert "\n" not in at.error[0].value and "Traceback" not in at.error[0].value
    assert not _held() and not [p for p in catalogue.uploads_dir().iterdir() if ".held-" in p.name]
    assert released == [[]] and at.button(key="mn_add_zip_go").disabled


def test_the_uploader_keeps_the_file_id_of_an_upload_whose_bytes_were_released():
    # What the page relies on to tell "still in the uploader" from "removed" once a held upload's bytes left the
    # server (AppTest re-sends the bytes, so only this shows it): on the server, the uploader's value is then a
    # DeletedFile with the upload's file_id (checked in a real server too:
    # test_a_real_server_holds_an_upload_on_disk_not_in_memory_and_adds_it).
    from types import SimpleNamespace
    from unittest import mock

    from streamlit.elements.widgets import file_uploader
    from streamlit.proto.Common_pb2 import FileUploaderState
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    state = FileUploaderState()
    info = state.uploaded_file_info.add()
    info.file_id, info.name, info.size = "f1", "shop.zip", 10
    ctx = SimpleNamespace(session_id="s", uploaded_file_mgr=MemoryUploadedFileManager("/upload"))
    with mock.patch.object(file_uploader, "get_script_run_ctx", return_value=ctx):
        value = file_uploader.FileUploaderSerde(False, ["zip"]).deserialize(state)
    assert value is not None and value.file_id == "f1"


def _server_rss_mb(port: int) -> float | None:
    """Resident memory of the ``streamlit run`` listening on ``port`` (Linux /proc), None where unknown."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            if b"streamlit" in b" ".join(args) and str(port).encode() in args:
                status = (cmdline.parent / "status").read_text()
                return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
        except (OSError, StopIteration, ValueError):
            continue
    return None


@pytest.mark.slow
def test_a_real_server_holds_an_upload_on_disk_not_in_memory_and_adds_it(tmp_path):
    # AppTest hands a page its upload's bytes again on every run; a real server does not once they are released.
    # Through `streamlit run` and its websocket, as a browser: upload a zip (48 MB of it padding, skipped when
    # unpacked), rerun as the browser does (the uploader still showing the file), add it.
    import requests
    sync_client = pytest.importorskip("websockets.sync.client")
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    from tests.app_server import app_env, running_app

    root = make_tiny_app_root(tmp_path / "server")
    env = dict(app_env(root, "tiny"), STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION="false")
    photos = [(f"shop/p{i}.jpg", _jpeg_bytes(i)) for i in range(4)]
    payload = _zip(photos + [("shop/padding.bin", os.urandom(48 << 20))])

    with running_app(env, root / "server.log") as url, \
            sync_client.connect(url.replace("http", "ws") + "/_stcore/stream", subprotocols=["streamlit"],
                                max_size=None) as ws:
        session = {}

        def receive(until: str):
            while True:
                msg = ForwardMsg()
                msg.ParseFromString(ws.recv(timeout=TIMEOUT))
                kind = msg.WhichOneof("type")
                if kind == "new_session":
                    session["id"] = msg.new_session.initialize.session_id
                elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                    session["elements"].append(msg.delta.new_element)
                if kind == until:
                    return msg

        def run(*states):
            msg = BackMsg()
            msg.rerun_script.page_name = "add"
            msg.rerun_script.widget_states.widgets.extend(states)
            session["elements"] = []
            ws.send(msg.SerializeToString())
            while receive("script_finished").script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                pass  # st.rerun (or the navigation's first run): the page is drawn by the run that follows
            elements = session["elements"]
            return ({e.WhichOneof("type") + ":" + getattr(e, e.WhichOneof("type")).id: e for e in elements
                     if hasattr(getattr(e, e.WhichOneof("type")), "id")},
                    " ".join(getattr(e, t).body for e in elements for t in ("markdown", "alert")
                             if e.WhichOneof("type") == t))

        widgets, _ = run()
        uploader = next(k for k in widgets if k.startswith("file_uploader:") and k.endswith("mn_add_zip"))
        button = next(k for k in widgets if k.startswith("button:") and k.endswith("mn_add_zip_go"))
        name_box = next(k for k in widgets if k.startswith("text_input:") and k.endswith("mn_add_zip_name"))
        port = int(url.rsplit(":", 1)[1])
        before = _server_rss_mb(port)

        request = BackMsg()
        request.file_urls_request.request_id = "1"
        request.file_urls_request.file_names.append("shop.zip")
        request.file_urls_request.session_id = session["id"]
        ws.send(request.SerializeToString())
        urls = receive("file_urls_response").file_urls_response.file_urls[0]
        response = requests.put(url + urls.upload_url, files={"file": ("shop.zip", payload, "application/zip")},
                                timeout=TIMEOUT)
        assert response.status_code in (200, 204), response.text
        uploaded = WidgetState(id=uploader.split(":", 1)[1])
        info = uploaded.file_uploader_state_value.uploaded_file_info.add()
        info.file_id, info.name, info.size = urls.file_id, "shop.zip", len(payload)
        info.file_urls.CopyFrom(urls)

        widgets, text = run(uploaded)
        held = sorted(root.rglob(".*.held-*.zip"))
        assert len(held) == 1 and held[0].read_bytes() == payload and session["id"] in held[0].name
        assert "**shop.zip** (50.3 MB) is on the server, ready to add" in text
        if before is not None:  # the 50 MB left the server's memory with that run
            assert _server_rss_mb(port) - before < 24, (before, _server_rss_mb(port))
        named = WidgetState(id=name_box.split(":", 1)[1], string_value="served")
        widgets, text = run(uploaded, named)  # the browser still shows the file; its bytes are only on disk
        assert "ready to add" in text and not widgets[button].button.disabled
        clicked = WidgetState(id=button.split(":", 1)[1], trigger_value=True)
        _, text = run(uploaded, named, clicked)
        assert "**served** is ready and selected: 4 photos" in text, text
        assert not list(root.rglob(".*.held-*.zip"))


@pytest.mark.parametrize("case,expected", [
    ("empty zip", "the zip is empty"),
    ("only traversal", "no usable photos"),
    ("only a link", "no usable photos"),
    ("only non-images", "no usable photos"),
    ("not a zip", "not a zip archive"),
    ("corrupt photos", "no usable photos"),
])
def test_bad_zip_is_one_clear_error_and_leaves_nothing(env, case, expected):
    payload = {
        "empty zip": _zip([]),
        "only traversal": _zip([("../../evil.jpg", _jpeg_bytes())]),
        "only a link": _zip([("p.jpg", "/etc/hostname", "link")]),
        "only non-images": _zip([("a.txt", b"x"), ("b.csv", b"image\n")]),
        "not a zip": b"PK but not really a zip",
        "corrupt photos": _zip([("a.jpg", b"\xff\xd8 truncated"), ("b.png", b"\x89PNG nope")]),
    }[case]
    before = _registered()
    name = case.replace(" ", "-")
    at = _add_zip(_add_page(), payload, name)
    assert len(at.error) == 1 and expected in at.error[0].value, [e.value for e in at.error]
    assert _registered() == before
    from mildnet.ui import catalogue

    assert not (catalogue.uploads_dir() / name).exists()
    assert not [p for p in catalogue.uploads_dir().iterdir() if p.name.startswith(f".{name}.")]
    assert not _held()  # the held upload goes too: a refused zip is uploaded again
    at.run()
    assert not at.error and any("was not added; upload it" in c.value for c in at.caption)
    assert at.button(key="mn_add_zip_go").disabled
    assert not (env / "evil.jpg").exists()


def test_an_upload_stopped_by_a_server_shutdown_leaves_nothing_in_the_names_way(env):
    # Issue 18 F8: a server stopped mid-upload left data/uploads/NAME (marked ours, never registered) and the
    # temporary zip; the name was then refused for good ("already exists (an earlier upload?)").
    import subprocess
    import sys

    from mildnet.ui import catalogue

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    uploads = catalogue.uploads_dir()
    left = _flat_folder(uploads / "halfway", n=3)
    ud.mark_upload(left, "halfway")
    stale_zip = uploads / f".halfway.upload-{gone.pid}-0123abcd.zip"
    stale_zip.write_bytes(b"PK half a zip")
    stale_unzip = _flat_folder(uploads / f".halfway.unzip-{gone.pid}-0123abcd", n=2)
    payload = _zip([(f"p{i}.jpg", _jpeg_bytes(i)) for i in range(4)])
    added, _ = catalogue.add_zip("halfway", io.BytesIO(payload))
    assert added.photos == 4 and sorted(p.name for p in (uploads / "halfway").glob("*.jpg")) == [
        f"p{i}.jpg" for i in range(4)]
    assert not stale_zip.exists() and not stale_unzip.exists()
    assert not [p for p in uploads.iterdir() if p.name.startswith(".halfway.")]
    # A folder of someone else's photos under uploads/ (no marker of ours) is never taken for a leftover.
    mine = _flat_folder(uploads / "mine", n=2)
    with pytest.raises(DataError, match="already exists"):
        catalogue.add_zip("mine", io.BytesIO(payload))
    assert len(list(mine.glob("*.jpg"))) == 2
    ud.remove_dataset("halfway")


# --- the catalogue changed -----------------------------------------------------------------------------------


def test_catalogue_follows_its_folder_incrementally(env, tmp_path, monkeypatch):
    from mildnet import embeddings
    from mildnet.ui import resources

    folder = _flat_folder(tmp_path / "live")
    at = _add_folder(_add_page(), folder, name="live")
    assert at.session_state["mn_dataset"] == "live"
    rng = np.random.default_rng(7)
    _photo(rng).save(folder / "new1.jpg")
    _photo(rng).save(folder / "new2.jpg")
    (folder / "item00.jpg").unlink()
    resources.forget_folder_changes()  # the app re-lists a folder at most every few seconds

    embedded = []
    real = embeddings._embed_skipping
    monkeypatch.setattr(embeddings, "_embed_skipping", lambda model, paths, *a, **k: embedded.extend(paths)
                        or real(model, paths, *a, **k))
    monkeypatch.setenv("MILDNET_DATASET", "live")
    home = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    home.run()
    assert not home.exception and not home.error, [e.value for e in home.error]
    labels = [s.label for s in home.status]
    assert any("updated from your folder: 2 new, 1 removed" in label for label in labels), labels
    assert any(label.startswith("Catalog updated (2 new, 1 removed)") for label in labels), labels
    # Only the two new photos went through the model, not the whole catalogue.
    assert sorted(Path(p).name for p in embedded) == ["new1.jpg", "new2.jpg"]
    assert {m.label: m.value for m in home.metric}["Catalog images"] == "9"

    home.run()  # nothing changed since: no update, no embedding
    assert not any("updated" in s.label.lower() for s in home.status)


# --- the demo catalogue --------------------------------------------------------------------------------------


def test_demo_catalogue_offline_names_the_url_and_the_local_alternative(env, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the socket is: the download is refused, as offline
    url = f"http://127.0.0.1:{port}/clothing.zip"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("dataset,split,triplets,image_root,catalog,source,images_url,archive_dir\n" + "".join(
        f"tiny,{s},{env}/tiny/{s}.csv,{env}/tiny,{env}/tiny/catalog.csv,generated,,\n"
        f"clothing-small,{s},demo/{s}.csv,demo/images,demo/catalog.csv,class-folders,{url},clothing-*\n"
        for s in ("train", "val", "test")))
    monkeypatch.setenv("MILDNET_MANIFEST", str(manifest))
    at = _add_page()
    at.button(key="mn_demo_go").click().run()
    assert not at.exception
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert url in message and "data fetch clothing-small --from PATH" in message and "field above" in message
    assert at.session_state["mn_dataset"] == "tiny"
    # Issue 19 (7): the reason sat in a collapsed box under a stale "Connecting..." bar, and the page had no field
    # for a local copy. The error is outside the box, no bar is left, and a local copy is taken from the page.
    assert all(len(status.error) == 0 for status in at.status) and not at.get("progress")
    local = tmp_path / "copy" / "clothing-dataset-small-main"
    for label in ("hat", "shoes", "skirt"):
        _flat_folder(local / "train" / label, n=4, seed=len(label))
    at.text_input(key="mn_demo_local").set_value(str(local.parent))
    at.button(key="mn_demo_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["mn_dataset"] == "clothing-small"
    assert any("ready and selected: search it" in m.value for m in at.success)


def test_the_training_form_offers_and_submits_each_datasets_own_learning_rate(env, tmp_path):
    # Issue 17: a flat folder trains at INSTANCE_LEARNING_RATE, a labelled one at the default. The field is keyed by
    # dataset, so switching datasets shows each its own default, and what the form submits is what the run records.
    import json
    import time

    from mildnet.training import INSTANCE_LEARNING_RATE, TrainConfig

    ud.add_dataset("flatlr", _flat_folder(tmp_path / "flatlr", n=6, seed=3))
    try:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.run()

        def lr_field(dataset):
            return at.number_input(key=f"mn_train_lr:{dataset}")

        assert lr_field("tiny").value == TrainConfig().learning_rate
        at.sidebar.selectbox[0].set_value("flatlr").run()
        assert not at.exception and lr_field("flatlr").value == INSTANCE_LEARNING_RATE
        at.sidebar.selectbox[0].set_value("tiny").run()
        assert lr_field("tiny").value == TrainConfig().learning_rate
        at.sidebar.selectbox[0].set_value("flatlr").run()
        assert lr_field("flatlr").value == INSTANCE_LEARNING_RATE  # back to its own default, not tiny's

        runs = Path(os.environ["MILDNET_RUNS"])
        before = set(runs.iterdir()) if runs.is_dir() else set()
        at.selectbox(key="mn_train_start").set_value("new")
        at.selectbox(key="mn_train_model").set_value("tiny_cnn")
        at.selectbox(key="mn_train_weights").set_value("none")
        at.select_slider(key="mn_train_size").set_value(32)
        at.number_input(key="mn_train_epochs").set_value(1)
        next(b for b in at.button if b.label == "Start training").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        deadline = time.monotonic() + TIMEOUT
        while not any("Training finished" in s.value for s in at.sidebar.success):
            assert time.monotonic() < deadline, "training did not finish in time"
            time.sleep(0.5)
            at.run()
            assert not at.exception
        (run,) = set(runs.iterdir()) - before
        config = json.loads((run / "config.json").read_text())["config"]
        assert config["dataset"] == "flatlr" and config["learning_rate"] == INSTANCE_LEARNING_RATE
    finally:
        ud.remove_dataset("flatlr")
