"""Downloads against a real loopback HTTP server (with Range support), and archive extraction."""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mildnet.data.fetch import download, extract, sha256_file
from mildnet.errors import DataError, DownloadError


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (url path -> bytes); honours ``Range: bytes=N-[M]`` unless told not to."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, "not found")
            return
        status, payload, headers = 200, body, {}
        if rng and srv.honour_range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(body) - 1
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, payload = 206, body[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        cut = srv.cut_after
        if cut is not None:
            # Simulate a dropped connection: announce the full length, send part of it, hang up.
            srv.cut_after = None
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args):  # keep pytest output quiet
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.daemon_threads = True
    srv.files, srv.requests, srv.honour_range, srv.cut_after = {}, [], True, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _members() -> dict[str, bytes]:
    rng = random.Random(0)
    # Incompressible and larger than one read chunk, so progress and resume span several blocks.
    big = rng.randbytes(200_000)
    return {"pkg/readme.txt": b"hello\n", "pkg/sub/data.bin": big}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verify_and_extract(server, tmp_path):
    body = _zip_bytes(_members())
    server.files["/ds.zip"] = body
    seen = []
    dest = download(f"{server.url}/ds.zip", tmp_path / "dl" / "ds.zip", sha256=_sha(body),
                    progress=lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == body
    assert not (tmp_path / "dl" / "ds.zip.part").exists()
    assert seen[0] == (0, len(body)) and seen[-1] == (len(body), len(body)) and len(seen) > 2
    assert server.requests == [("/ds.zip", None)]

    out = extract(dest, tmp_path / "images", subdir="pkg")
    assert (out / "readme.txt").read_bytes() == b"hello\n"
    assert (out / "sub" / "data.bin").read_bytes() == _members()["pkg/sub/data.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "images"]  # no staging left behind

    whole = extract(dest, tmp_path / "whole")
    assert (whole / "pkg" / "readme.txt").exists()


def test_existing_file_is_kept_without_network(server, tmp_path):
    body = b"x" * 1000
    dest = tmp_path / "f.bin"
    dest.write_bytes(body)
    download(f"{server.url}/missing", dest, sha256=_sha(body))
    download(f"{server.url}/missing", dest)
    assert server.requests == []


def test_existing_file_with_bad_checksum_is_fetched_again(server, tmp_path):
    body = b"good" * 100
    server.files["/f.bin"] = body
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    download(f"{server.url}/f.bin", dest, sha256=_sha(body))
    assert dest.read_bytes() == body


def test_resume_from_partial_file(server, tmp_path):
    body = _zip_bytes(_members())
    server.files["/ds.zip"] = body
    dest = tmp_path / "ds.zip"
    (tmp_path / "ds.zip.part").write_bytes(body[:1000])
    seen = []
    download(f"{server.url}/ds.zip", dest, sha256=_sha(body), progress=lambda d, t: seen.append((d, t)))
    assert server.requests == [("/ds.zip", "bytes=1000-")]
    assert dest.read_bytes() == body
    assert seen[0] == (1000, len(body))
    assert not (tmp_path / "ds.zip.part").exists()


def test_dropped_connection_then_resume(server, tmp_path):
    body = _zip_bytes(_members())
    server.files["/ds.zip"] = body
    server.cut_after = 50_000
    dest = tmp_path / "ds.zip"
    url = f"{server.url}/ds.zip"
    with pytest.raises(DownloadError, match="run again to resume") as info:
        download(url, dest, sha256=_sha(body))
    assert url in str(info.value)
    assert not dest.exists()
    kept = (tmp_path / "ds.zip.part").stat().st_size
    assert 0 < kept <= 50_000

    download(url, dest, sha256=_sha(body))
    assert server.requests[-1] == ("/ds.zip", f"bytes={kept}-")
    assert dest.read_bytes() == body


def test_server_ignoring_range_restarts(server, tmp_path):
    body = bytes(range(256)) * 400
    server.files["/f.bin"] = body
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not survive")
    dest = download(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=_sha(body))
    assert server.requests == [("/f.bin", "bytes=29-")]  # asked to resume, got the whole body
    assert dest.read_bytes() == body


def test_stale_partial_longer_than_file_restarts(server, tmp_path):
    body = b"short body"
    server.files["/f.bin"] = body
    stale = b"a partial file longer than the resource itself"
    (tmp_path / "f.bin.part").write_bytes(stale)
    dest = download(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=_sha(body))
    assert dest.read_bytes() == body
    assert [r[1] for r in server.requests] == [f"bytes={len(stale)}-", None]  # 416, then a fresh GET


def test_checksum_mismatch_removes_file(server, tmp_path):
    server.files["/f.bin"] = b"payload"
    url = f"{server.url}/f.bin"
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download(url, tmp_path / "f.bin", sha256="0" * 64)
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_checksum_string_rejected(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"a")
    with pytest.raises(DownloadError, match="bad sha256"):
        download(src, tmp_path / "b.bin", sha256="abc")


def test_http_error_names_url(server, tmp_path):
    url = f"{server.url}/nope.zip"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(url, tmp_path / "nope.zip")
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_names_url_and_local_option(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused, like being offline
    url = f"http://127.0.0.1:{port}/tops.zip"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "tops.zip", timeout=5)
    message = str(info.value)
    assert url in message and "--from PATH" in message and "\n" not in message


def test_local_path_file_url_and_folder(tmp_path):
    src = tmp_path / "src" / "a b.bin"
    src.parent.mkdir()
    src.write_bytes(b"local bytes")
    seen = []
    out = download(src, tmp_path / "out" / "a.bin", sha256=_sha(b"local bytes"),
                   progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == b"local bytes" and seen[-1] == (11, 11)
    out2 = download(src.as_uri(), tmp_path / "out" / "b.bin")
    assert out2.read_bytes() == b"local bytes"

    folder = tmp_path / "src"
    (folder / "nested").mkdir()
    (folder / "nested" / "c.txt").write_text("c")
    copied = download(folder, tmp_path / "copy")
    assert (copied / "nested" / "c.txt").read_text() == "c"
    with pytest.raises(DownloadError, match="folder"):
        download(folder, tmp_path / "copy2", sha256="0" * 64)
    with pytest.raises(DownloadError, match="one contains the other"):
        download(folder, folder / "nested" / "copy")

    with pytest.raises(DownloadError, match="no such file"):
        download(tmp_path / "missing.zip", tmp_path / "x.zip")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(src, tmp_path / "out" / "c.bin", sha256="1" * 64)
    assert not (tmp_path / "out" / "c.bin").exists()
    assert sha256_file(out) == _sha(b"local bytes")


@pytest.mark.parametrize("bad", ["../evil.txt", "pkg/../../evil.txt", "/abs/evil.txt", "..\\evil.txt"])
def test_zip_path_traversal_refused(tmp_path, bad):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes({"pkg/ok.txt": b"ok", bad: b"evil"}))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DataError, match="refusing to extract"):
        extract(archive, work / "out")
    assert list(work.iterdir()) == []  # nothing extracted, staging removed
    assert not list(tmp_path.rglob("evil.txt"))


def _tar_gz(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)


def test_tar_gz_extract_and_refusals(tmp_path):
    good = tmp_path / "good.tar.gz"
    _tar_gz(good, [tarfile.TarInfo("top/a.txt")], {"top/a.txt": b"A"})
    out = extract(good, tmp_path / "good", subdir="top")
    assert (out / "a.txt").read_bytes() == b"A"

    evil = tmp_path / "evil.tar.gz"
    _tar_gz(evil, [tarfile.TarInfo("../evil.txt")], {"../evil.txt": b"E"})
    with pytest.raises(DataError, match="refusing"):
        extract(evil, tmp_path / "evil")

    link = tarfile.TarInfo("top/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    linked = tmp_path / "link.tar.gz"
    _tar_gz(linked, [link], {})
    with pytest.raises(DataError, match="link"):
        extract(linked, tmp_path / "linked")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "linked").exists()


def test_extract_errors(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"pkg/a.txt": b"a"}))
    with pytest.raises(DataError, match="no folder matching .other."):
        extract(archive, tmp_path / "out", subdir="other")
    assert not (tmp_path / "out").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        extract(archive, busy)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a zip or tar"):
        extract(junk, tmp_path / "junk")


@pytest.mark.parametrize("source", ["ftp://example.com/x.zip", "sftp://host/x.tar.gz", "s3://bucket/x.zip"])
def test_other_url_schemes_are_refused_by_name(source, tmp_path):
    with pytest.raises(DownloadError, match=rf"not a local file or folder \({source.split(':')[0]}:// URL\)"):
        download(source, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_local_copy_option_refuses_a_web_url():
    from mildnet.data.fetch import local_path

    with pytest.raises(DownloadError, match=r"not a local file or folder \(https:// URL\); download it with"):
        local_path("https://example.com/x.zip")
    assert local_path("file:///tmp/x.zip") == Path("/tmp/x.zip")
