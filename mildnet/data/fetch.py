"""Downloads and archive extraction, stdlib only.

``download`` fetches an http(s) URL, a ``file://`` URL or a local path to ``dest``: it streams into
``dest.part`` (resumed with an HTTP Range request when a previous attempt left one), checks the sha256
when one is given and renames into place, so ``dest`` is either absent or complete. ``extract`` unpacks a
zip or tar archive into a fresh folder, refusing members that would land outside it.

Every failure a user can cause is a ``DownloadError`` (or ``DataError`` for an unusable archive) whose
message names the URL or file and says what to do. Nothing falls back silently to another source.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from mildnet.data.images import refuse_unsafe_links
from mildnet.data.staging import discard
from mildnet.errors import DataError, DownloadError

Progress = Callable[[int, "int | None"], None]

CHUNK = 1 << 16
USER_AGENT = "mildnet-fetch/1 (+python urllib)"
LOCAL_HINT = "download it by other means and pass the local file or folder (--from PATH)"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def is_url(source: str | os.PathLike) -> bool:
    """True for http(s) URLs (network downloads); file:// URLs and plain paths are local."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


_URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def local_path(source: str | os.PathLike) -> Path:
    """The local path a ``file://`` URL or plain path points to (``~`` expanded). Any other URL is refused by
    name: read as a path, ``ftp://host/x.zip`` would only fail later as a missing ``ftp:/host/x.zip``."""
    scheme = _URL_SCHEME.match(source) if isinstance(source, str) else None
    if scheme and scheme.group(1).lower() != "file":
        kind = scheme.group(1).lower()
        hint = ("download it with `data fetch NAME` (no --from) or give the downloaded file"
                if kind in ("http", "https") else "only http(s) URLs and local files or folders are supported")
        raise DownloadError(f"{source} is not a local file or folder ({kind}:// URL); {hint}")
    if isinstance(source, str) and source.lower().startswith("file:"):
        parsed = urllib.parse.urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"file URL {source} names a remote host; use a local path instead")
        return Path(urllib.request.url2pathname(urllib.parse.unquote(parsed.path)))
    return Path(source).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalise_sha(sha256: str | None) -> str | None:
    if sha256 is None or not sha256.strip():
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.match(value):
        raise DownloadError(f"bad sha256 {sha256!r}: expected 64 hexadecimal characters")
    return value


def download(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: Progress | None = None,
    timeout: float = 30,
    force: bool = False,
) -> Path:
    """Fetch ``source`` (http(s) URL, ``file://`` URL or local path) to ``dest`` and return ``dest``.

    An existing ``dest`` is kept (no network) when it matches ``sha256``, or when no checksum is given,
    unless ``force``; one that fails its checksum is fetched again. A local folder is copied as a
    folder (no checksum possible). ``progress(done_bytes, total_bytes_or_None)`` is called as bytes
    arrive. Raises ``DownloadError`` naming the source on any failure.
    """
    dest = Path(dest)
    expected = _normalise_sha(sha256)
    if dest.exists() and not force:
        if dest.is_dir() or expected is None or sha256_file(dest) == expected:
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_url(source):
        part = _part_path(dest)
        _fetch_http(str(source), part, progress, timeout)
        label = str(source)
    else:
        path = local_path(source)
        label = str(path)
        if path.is_dir():
            src, target = path.resolve(), dest.resolve()
            if src == target or src in target.parents or target in src.parents:
                raise DownloadError(f"cannot copy folder {path} to {dest}: one contains the other")
            if expected is not None:
                raise DownloadError(f"{path} is a folder; a sha256 can only be checked for a file")
            try:
                refuse_unsafe_links(path, hint="copy the files in, or give the folder that holds them")
            except DataError as exc:
                raise DownloadError(str(exc)) from exc
            return _copy_tree(path, dest)
        if not path.is_file():
            raise DownloadError(f"no such file: {path}")
        if dest.exists() and path.resolve() == dest.resolve():
            part = None  # already in place; only verify
        else:
            part = _part_path(dest)
            _copy_file(path, part, progress)
    checked = dest if part is None else part
    if expected is not None:
        actual = sha256_file(checked)
        if actual != expected:
            checked.unlink()
            raise DownloadError(
                f"checksum mismatch for {label}: expected sha256 {expected}, got {actual}; "
                "the bad file was removed (the source changed or the transfer was corrupted)"
            )
    if part is not None:
        os.replace(part, dest)
    return dest


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _copy_file(path: Path, part: Path, progress: Progress | None) -> None:
    total = path.stat().st_size
    done = 0
    if progress:
        progress(0, total)
    try:
        with open(path, "rb") as src, open(part, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot copy {path}: {exc.strerror or exc}") from exc


class _CopyFailed(Exception):
    """Not an OSError, so that copytree stops at the first failure instead of collecting one per file
    (after a full disk it would otherwise try every remaining file)."""

    def __init__(self, source: str, error: OSError):
        super().__init__(source)
        self.source, self.error = source, error


def _copy_or_stop(source: str, target: str) -> str:
    try:
        return shutil.copy2(source, target)
    except OSError as exc:
        raise _CopyFailed(source, exc) from exc


def _copy_tree(path: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        # copytree needs a missing target; the staging dir keeps the copy on dest's filesystem so the
        # final rename is atomic.
        shutil.copytree(path, staging / "tree", symlinks=False, copy_function=_copy_or_stop)
        os.replace(staging / "tree", dest)
    except _CopyFailed as exc:
        raise DownloadError(f"cannot copy folder {path} to {dest}: {exc.source}: "
                            f"{exc.error.strerror or exc.error}") from None
    except shutil.Error as exc:  # folders that could not be made or stat'ed: name the first, count the rest
        errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        first = f"{errors[0][0]}: {errors[0][2]}" if errors else str(exc)[:200]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DownloadError(f"cannot copy folder {path} to {dest}: {first}{more}") from None
    except OSError as exc:
        raise DownloadError(f"cannot copy folder {path} to {dest}: {exc.strerror or exc}") from exc
    finally:
        discard(staging)
    return dest


def _fetch_http(url: str, part: Path, progress: Progress | None, timeout: float) -> None:
    """Stream ``url`` into ``part``, resuming from its current size when the server honours Range."""
    for attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            if offset:
                request.add_header("Range", f"bytes={offset}-")
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset and attempt == 0:
                # The partial file is as long as (or longer than) the resource: it is stale, start over.
                part.unlink()
                continue
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        except (ValueError, http.client.InvalidURL) as exc:
            # urllib parses the URL only here: a bad IPv6 literal is a ValueError, a bad port InvalidURL.
            raise DownloadError(f"malformed URL {url}: {exc}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(
                f"cannot reach {url} ({reason}); check the network, or {LOCAL_HINT}"
            ) from exc
        with response:
            status = response.status
            if offset and status == 206:
                match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", "").strip())
                if not match or int(match.group(1)) != offset:
                    raise DownloadError(
                        f"download of {url} failed: server answered the resume request with an "
                        f"unexpected range {response.headers.get('Content-Range')!r}; delete {part} "
                        "and try again"
                    )
                total = None if match.group(3) == "*" else int(match.group(3))
                mode = "ab"
            elif status == 200:
                # Either a fresh download or a server that ignores Range: in both cases the body is
                # the whole resource, so the partial file is discarded.
                offset = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                mode = "wb"
            else:
                raise DownloadError(f"download of {url} failed: unexpected HTTP status {status}")
            _stream(response, part, mode, offset, total, url, progress)
            return
    raise DownloadError(f"download of {url} failed: the server rejected the resume request twice")


def _stream(response, part: Path, mode: str, offset: int, total: int | None, url: str,
            progress: Progress | None) -> None:
    done = offset
    if progress:
        progress(done, total)
    try:
        with open(part, mode) as out:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except (OSError, http.client.HTTPException) as exc:
        # OSError covers timeouts and resets; http.client raises IncompleteRead when the connection
        # closes before Content-Length bytes arrived. The .part file is kept for the next attempt.
        raise DownloadError(
            f"download of {url} interrupted after {done} bytes ({exc!r}); run again to resume, "
            f"or {LOCAL_HINT}"
        ) from exc
    if total is not None and done != total:
        raise DownloadError(
            f"download of {url} stopped at {done} of {total} bytes; run again to resume, or {LOCAL_HINT}"
        )


# --- archives ---------------------------------------------------------------------------------------

ExtractProgress = Callable[[int, int], None]


def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name may not be extracted, or None when it stays inside the target."""
    # Zips made on Windows may use backslashes; treat them as separators so "..\\x" is caught too.
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' in path"
    if "\x00" in name:
        return "NUL in name"
    return None


def archive_kind(path: str | os.PathLike) -> str:
    """``zip`` or ``tar`` (any compression tarfile reads), by content rather than by file name."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError as exc:
        raise DataError(f"cannot read archive {path}: {exc}") from exc
    raise DataError(f"{path} is not a zip or tar archive (corrupt or incomplete download? delete it and fetch again)")


# Caps on what an archive may unpack to (zip bombs: a 1 MB zip can declare 1 GB of zeros). Images and
# CSVs never shrink 100-fold; a dataset is far below 32 GB (MILDNet's tops: 658 MB).
MAX_EXTRACT_BYTES = 32 << 30
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR = 1 << 20  # members this small may compress as they like (a 1 kB CSV of zeros is no threat)


def _check_sizes(archive: Path, sizes: list[tuple[str, int, int]], max_bytes: int = MAX_EXTRACT_BYTES,
                 what: str = "extract") -> None:
    """``sizes``: (name, uncompressed, compressed) per member; DataError naming the first cap exceeded."""
    total = sum(size for _, size, _ in sizes)
    if total > max_bytes:
        raise DataError(f"refusing to {what} {archive.name}: it would unpack to {total / 2**30:.1f} GB "
                        f"(at most {max_bytes / 2**30:g} GB)")
    for name, size, packed in sizes:
        if size > _RATIO_FLOOR and size > MAX_COMPRESSION_RATIO * max(packed, 1):
            raise DataError(f"refusing to {what} {archive.name}: member {name!r} would unpack {size / packed:.0f}"
                            f" times its packed size (a zip bomb?; at most {MAX_COMPRESSION_RATIO}x)")


def check_zip_sizes(path: str | os.PathLike, max_bytes: int, what: str = "open") -> None:
    """DataError when the zip at ``path`` (a ``.keras`` model, say) would inflate past ``max_bytes`` or a member
    past the compression-ratio cap: checked from the central directory before anything is read, and what it
    declares is what zipfile will read at most."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path.name}: {exc}") from None
    _check_sizes(path, [(i.filename, i.file_size, i.compress_size) for i in members], max_bytes, what)


def extract(
    archive: str | os.PathLike,
    dest_dir: str | os.PathLike,
    subdir: str | None = None,
    progress: ExtractProgress | None = None,
) -> Path:
    """Unpack ``archive`` (zip, tar, tar.gz, ...) so its content, or its top-level folder matching
    ``subdir`` (a name or glob, see :func:`find_subdir`), becomes ``dest_dir``.

    ``dest_dir`` must not exist yet (or be empty). The archive is unpacked into a temporary folder
    beside ``dest_dir`` and renamed into place, so an interrupted extraction leaves nothing behind.
    Members with absolute paths or ``..`` (and tar links or device files) are refused: ``DataError``.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise DataError(f"cannot extract {archive.name}: {dest_dir} already exists and is not empty")
    kind = archive_kind(archive)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extract.", dir=dest_dir.parent))
    try:
        if kind == "zip":
            _extract_zip(archive, staging, progress)
        else:
            _extract_tar(archive, staging, progress)
        top = staging / find_subdir(staging, subdir, what=archive.name) if subdir else staging
        if dest_dir.exists():
            dest_dir.rmdir()  # empty, checked above
        os.replace(top, dest_dir)
        # The staging folder came from mkdtemp (mode 0700): a dataset folder is readable like any other.
        os.chmod(dest_dir, 0o755)
    finally:
        discard(staging)
    return dest_dir


def find_subdir(folder: Path, pattern: str, what: str | None = None) -> str:
    """The one top-level folder of ``folder`` whose name matches ``pattern`` (a name or a glob such as
    ``clothing-dataset-small-*``, since archives of a Git commit and of a branch name their folder
    differently). Raises DataError unless exactly one matches."""
    if _unsafe_reason(pattern) or "/" in pattern.replace("\\", "/"):
        raise DataError(f"archive folder {pattern!r} must be a single folder name")
    names = sorted(p.name for p in Path(folder).iterdir())
    matches = [n for n in names if fnmatch.fnmatchcase(n, pattern) and (Path(folder) / n).is_dir()]
    if len(matches) != 1:
        found = "no" if not matches else f"{len(matches)}"
        raise DataError(
            f"{what or folder} has {found} folder matching {pattern!r} at its top level (found: {names[:10]})"
        )
    return matches[0]


def _extract_zip(archive: Path, target: Path, progress: ExtractProgress | None) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                reason = _unsafe_reason(info.filename)
                if reason:
                    raise DataError(f"refusing to extract {archive.name}: member {info.filename!r} ({reason})")
            # zipfile stops each member at its declared size, so the declared sizes bound what is written.
            _check_sizes(archive, [(i.filename, i.file_size, i.compress_size) for i in members])
            for i, info in enumerate(members, 1):
                zf.extract(info, target)
                if progress:
                    progress(i, len(members))
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise DataError(f"{archive} is corrupt ({exc}); delete it and fetch again") from exc
    except OSError as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc


def _extract_tar(archive: Path, target: Path, progress: ExtractProgress | None) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for info in members:
                reason = _unsafe_reason(info.name)
                if reason is None and not (info.isfile() or info.isdir()):
                    # Links can point outside the target and devices have no place in a dataset.
                    reason = "link or special file"
                if reason:
                    raise DataError(f"refusing to extract {archive.name}: member {info.name!r} ({reason})")
            # A compressed tar has one stream: the whole archive's size is what every member shares.
            packed = max(archive.stat().st_size, 1)
            total = sum(info.size for info in members)
            _check_sizes(archive, [(archive.name, total, packed)])
            for i, info in enumerate(members, 1):
                # The "data" filter (Python >= 3.11.4) re-checks paths and drops odd permission bits.
                if hasattr(tarfile, "data_filter"):
                    tf.extract(info, target, filter="data")
                else:  # pragma: no cover - older Pythons; members were vetted above
                    tf.extract(info, target)
                if progress:
                    progress(i, len(members))
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"{archive} is corrupt ({exc}); delete it and fetch again") from exc
    except OSError as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc
