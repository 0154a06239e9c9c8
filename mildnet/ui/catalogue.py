"""Your own catalogue in the app: add a folder or an uploaded zip, notice when it changed, fetch the demo.

Plain functions (no streamlit): the page (:mod:`mildnet.ui.add_page`) draws the widgets and progress, this
module does the work through :mod:`mildnet.data.user_datasets` (the same code as ``data add``), so the app
and the CLI register catalogues identically.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mildnet.data import manifest as mf
from mildnet.data import user_datasets as ud
from mildnet.data.staging import held_path, staging_path, sweep_abandoned, sweep_held
from mildnet.data.upload import ExtractReport, extract_images
from mildnet.errors import DataError
from mildnet.ui import settings

UPLOADS_DIR = ud.UPLOADS_DIR
DEMO = "clothing-small"
Progress = Callable[[int, "int | None", str], None]


def uploads_dir() -> Path:
    """Where uploaded zips are unpacked: ``data/uploads/<NAME>/`` beside the user registry (git-ignored).
    Outside ``data/<NAME>/``, which ``data remove`` deletes: the unpacked photos are the dataset's origin."""
    return ud.user_data_dir() / UPLOADS_DIR


def suggest_name(text: str, taken: list[str]) -> str:
    """A registry-safe dataset name from a folder or file name, not one of ``taken``."""
    stem = Path(text.strip().rstrip("/\\") or "catalogue").name
    stem = re.sub(r"\.zip$", "", stem, flags=re.IGNORECASE)
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._").lower()[:mf.MAX_NAME_LENGTH - 4].rstrip("-._")
    base = base or "catalogue"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def check_name(name: str) -> str:
    """The name, stripped, or a one-line DataError (bad characters, taken), before any work is done."""
    name = name.strip()
    if not name:
        raise DataError("give the catalogue a name")
    problem = mf.name_problem(name)
    if problem:
        raise DataError(problem)
    if name in mf.datasets():
        raise DataError(f"a dataset named {name!r} already exists; choose another name")
    return name


def add_folder(name: str, folder: str, labels: str | None = None, progress: Progress | None = None,
               served_locally: bool = True) -> ud.AddResult:
    """Register a folder on the machine running the app (as ``data add``); the folder and the labels CSV must be
    under :func:`settings.add_roots` when set, and are refused altogether when the app is served to others
    without them (anyone reaching the page could otherwise read the server's files)."""
    name = check_name(name)
    if not folder.strip():
        raise DataError("give the path of a folder on the machine running the app")
    labels = labels.strip() if labels and labels.strip() else None
    for path, what in ((folder.strip(), "the folder"), (labels, "the labels CSV")):
        if path is not None:
            _check_allowed(path, what, served_locally)
    return ud.add_dataset(name, folder.strip(), labels=labels, progress=progress)


def _check_allowed(path: str, what: str, served_locally: bool) -> None:
    roots = settings.add_roots()
    if roots is None:
        if not served_locally:
            raise DataError("this app is served to other machines, so it reads no folder of the server's disk "
                            "unless its owner set MILDNET_ADD_ROOTS to the folders catalogues may come from; "
                            "upload a zip instead")
        return
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        # The roots are the owner's own setting: naming them helps, and shows no other part of the disk.
        allowed = ", ".join(str(root) for root in roots)
        raise DataError(f"{what} must be inside {allowed} (MILDNET_ADD_ROOTS on the server)")


@dataclass(frozen=True)
class HeldUpload:
    """An uploaded zip kept on disk for one session until it is added: its file, and what the page shows."""
    path: Path
    name: str
    size: int


def hold_upload(upload: BinaryIO, name: str, size: int, session_id: str,
                previous: str | os.PathLike | None = None) -> HeldUpload:
    """Copy an upload's bytes to a file of its own in :func:`uploads_dir` (named after ``session_id`` and this
    process: :func:`mildnet.data.staging.held_path`), replacing the session's ``previous`` one, so the server
    need not keep them in memory until the session ends. A full or read-only disk is a one-line DataError and
    leaves no file behind. Held uploads of ended processes are swept first (those of ended sessions:
    :func:`sweep_held_uploads`)."""
    parent = uploads_dir()
    if previous is not None:
        discard_upload(previous)
    path = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_abandoned(parent)
        path = held_path(parent, session_id)
        with open(path, "xb") as handle:
            upload.seek(0)
            shutil.copyfileobj(upload, handle, 1 << 20)
    except OSError as exc:
        if path is not None:
            discard_upload(path)
        raise DataError(f"cannot keep the upload on the server's disk ({exc.strerror or exc}); free some space "
                        f"(or fix the permissions of {parent}), then upload it again") from None
    return HeldUpload(path, name, size)


def sweep_held_uploads(session_active: Callable[[str], bool | None], idle_seconds: float,
                       keep_session: str | None = None) -> list[Path]:
    """Delete the held uploads whose session or process has ended (:func:`mildnet.data.staging.sweep_held`)."""
    return sweep_held(uploads_dir(), session_active, idle_seconds, keep_session)


def discard_upload(path: str | os.PathLike) -> None:
    """Delete a held upload (added, failed, replaced); a file already gone is fine."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass  # a read-only disk: the sweep of its ended session tries again


def add_zip(name: str, upload: BinaryIO | str | os.PathLike, progress: Progress | None = None
            ) -> tuple[ud.AddResult, ExtractReport]:
    """Unpack an uploaded zip (only its photos; :func:`mildnet.data.upload.extract_images`) into
    :func:`uploads_dir` and register the result; nothing is left behind when any step fails. ``upload`` is the
    zip's path (a :func:`hold_upload` file, read where it is and left for its caller to delete) or a file object
    (copied to a temporary file first)."""
    name = check_name(name)
    report = progress or (lambda done, total, message="": None)
    target = uploads_dir() / name
    _clear_abandoned_upload(target, name)
    if target.exists() or target.is_symlink():
        raise DataError(f"{target} already exists (an earlier upload?); delete it or choose another name")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(target.parent)
    copied = None
    try:
        if isinstance(upload, (str, os.PathLike)):
            archive = Path(upload)
            if not archive.is_file():
                raise DataError("the uploaded zip is no longer on the server; upload it again")
        else:
            # The zip reader wants a file, on the same disk as the photos will be. Its name carries our pid, so a
            # server killed mid-upload leaves nothing that the next upload does not sweep.
            archive = copied = staging_path(target.parent, name, "upload", ".zip")
            with open(copied, "wb") as handle:
                upload.seek(0)
                shutil.copyfileobj(upload, handle)
        extracted = extract_images(archive, target,
                                   progress=lambda done, total: report(done, total, "unpacking photos"))
    except OSError as exc:
        raise DataError(f"cannot store the upload in {target.parent}: {exc.strerror or exc}") from None
    finally:
        if copied is not None:
            copied.unlink(missing_ok=True)
    try:
        ud.mark_upload(target, name)  # ours: `data remove` deletes it with the dataset
        added = ud.add_dataset(name, extracted.root, progress=progress)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return added, extracted


def _clear_abandoned_upload(target: Path, name: str) -> None:
    """An earlier upload of ``name`` that unpacked (and marked) its photos but was stopped before the dataset was
    registered (the server stopped, say) left ``target`` behind: ours, and in the way of the name for good."""
    marker = target / ud.UPLOAD_MARKER
    if (target.is_dir() and not target.is_symlink() and marker.is_file() and not marker.is_symlink()
            and marker.read_text(encoding="utf-8").strip() == name and name not in mf.datasets()):
        shutil.rmtree(target, ignore_errors=True)


def left_out_summary(left_out: dict[str, str], examples: int = 3) -> str:
    """``{name: reason}`` as one line: counts per reason with a few names."""
    return ExtractReport(Path("."), 0, left_out).summary(examples)


# --- the catalogue changed -------------------------------------------------------------------------------------


def folder_changes(name: str) -> ud.FolderChanges | None:
    """New/removed/replaced photos in the folder an added dataset came from; None for other datasets."""
    if not is_added(name):
        return None
    return ud.folder_changes(name)


# --- the demo catalogue ----------------------------------------------------------------------------------------


def demo_url() -> str:
    splits = mf.dataset_splits(DEMO)
    return splits[0].images_url


def demo_available() -> bool:
    return DEMO in mf.datasets()


def offline_message(error: Exception) -> str:
    """What to do when the demo cannot be downloaded: the URL, and the command for a local copy."""
    return (f"Could not download the demo catalogue: {error}. It comes from {demo_url()} ; on a machine without "
            f"internet access, copy that archive (or the extracted folder) to this server and give its path in "
            f"the field above (or run `python -m mildnet data fetch {DEMO} --from PATH`).")


def fetch_demo(progress: Progress | None = None, source: str | None = None, served_locally: bool = True):
    """Download (resuming a partial download) and prepare the demo catalogue, or take it from ``source`` (an
    archive or extracted folder on this server, within the owner's roots); DownloadError when offline."""
    if source is not None:
        _check_allowed(source, "the local copy", served_locally)
    return mf.prepare(DEMO, progress=progress, source_override=source)


def is_added(name: str) -> bool:
    return any(s.dataset == name for s in mf.load_user_manifest(mf.user_manifest_path()))
