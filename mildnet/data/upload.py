"""Unpacking a zip of product photos a user uploaded (the app's "Add a catalogue" page).

An uploaded archive is untrusted, so this is stricter than :func:`mildnet.data.fetch.extract` (which refuses
a whole archive on one bad member, right for a pinned dataset download): every member is judged on its own
and the archive still yields its good photos, with a report of what was left out and why. Nothing leaves
the target folder: absolute paths, ``..`` and links are never written, only regular files with an image
extension whose header decodes are kept, and sizes are capped so a small zip cannot fill the disk.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mildnet.data.fetch import _unsafe_reason
from mildnet.data.images import IMAGE_EXTENSIONS, NAME_MAX_BYTES, name_problem
from mildnet.data.staging import discard, make_staging_dir, sweep_abandoned
from mildnet.errors import DataError

# A product photo is a few MB; 64 MB is a poster scan. Far larger members are refused, not written.
MAX_MEMBER_BYTES = 64 << 20
# All kept members together (uncompressed): a 3k-photo catalogue is well under 2 GB.
MAX_TOTAL_BYTES = 4 << 30
MAX_MEMBERS = 200_000
# Photos barely compress (JPEG, PNG, WebP are compressed already); a member shrunk more than this is a bomb.
MAX_RATIO = 100
_CHUNK = 1 << 20

ExtractProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExtractReport:
    root: Path  # the folder holding the photos (a zip's single top folder is unwrapped)
    kept: int
    skipped: dict[str, str] = field(default_factory=dict)  # member name -> why it was left out

    def summary(self, examples: int = 3) -> str:
        """One line: how many were skipped per reason, with a few example names."""
        if not self.skipped:
            return ""
        by_reason = Counter(self.skipped.values())
        parts = []
        for reason, count in by_reason.most_common():
            names = [n for n, r in self.skipped.items() if r == reason][:examples]
            parts.append(f"{count} {reason} (e.g. {', '.join(names)})")
        return "; ".join(parts)


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member is not extracted, or None for a photo to keep."""
    name = info.filename
    if _unsafe_reason(name):
        return f"unsafe path ({_unsafe_reason(name)})"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return "not a regular file"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return "hidden or system file"
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return "not an image (by extension)"
    if any(len(part.encode("utf-8")) > NAME_MAX_BYTES for part in parts):
        return f"a name in its path is longer than {NAME_MAX_BYTES} bytes (no file system keeps it)"
    unkept = name_problem("/".join(parts))
    if unkept:
        return unkept.split(":")[0]  # the catalogue could not list it; "rename it" is for the zip's maker
    if info.file_size > MAX_MEMBER_BYTES:
        return f"larger than {MAX_MEMBER_BYTES >> 20} MB"
    if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return "suspicious compression ratio"
    return None


def _readable(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()  # header and structure only: cheap, no full decode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"not a readable image ({type(exc).__name__})"
    return None


def extract_images(archive: str | os.PathLike, dest: str | os.PathLike,
                   progress: ExtractProgress | None = None) -> ExtractReport:
    """Unpack the photos of the zip ``archive`` into ``dest`` (which must not exist) and report the rest.

    Raises DataError when the file is not a zip, is corrupt, holds no photo at all, or is larger unpacked
    than :data:`MAX_TOTAL_BYTES`; ``dest`` is then left absent (staging folder + rename).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() or dest.is_symlink():
        raise DataError(f"{dest} already exists; choose another name")
    if not zipfile.is_zipfile(archive):
        raise DataError("the upload is not a zip archive (zip the folder of photos and upload the .zip)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(dest.parent)
    staging = make_staging_dir(dest.parent, dest.name, "unzip")
    skipped: dict[str, str] = {}
    kept = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if not members:
                raise DataError("the zip is empty: it holds no files")
            if len(members) > MAX_MEMBERS:
                raise DataError(f"the zip holds {len(members):,} files; at most {MAX_MEMBERS:,} are accepted")
            wanted = []
            for info in members:
                problem = _member_problem(info)
                if problem:
                    skipped[info.filename] = problem
                else:
                    wanted.append(info)
            total = sum(info.file_size for info in wanted)
            if total > MAX_TOTAL_BYTES:
                raise DataError(f"the zip's photos take {total / 2**30:.1f} GB unpacked; at most "
                                f"{MAX_TOTAL_BYTES / 2**30:.0f} GB are accepted "
                                "(give a folder on this machine instead)")
            seen: set[str] = set()
            for done, info in enumerate(wanted, start=1):
                try:
                    problem = _write_member(zf, info, staging, seen)
                except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                    problem = f"corrupt in the zip ({type(exc).__name__})"
                except (FileExistsError, NotADirectoryError, IsADirectoryError):
                    problem = "name clashes with another entry"
                if problem:
                    skipped[info.filename] = problem
                else:
                    kept += 1
                if progress is not None:
                    progress(done, len(wanted))
        if not kept:
            reasons = ExtractReport(staging, 0, skipped).summary()
            raise DataError(f"the zip holds no usable photos (jpg, png, webp, bmp, gif): {reasons}")
        os.replace(staging, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(f"the zip is corrupt or incomplete ({exc}); upload it again") from exc
    except OSError as exc:
        raise DataError(f"cannot unpack the zip: {exc.strerror or exc}") from exc
    finally:
        discard(staging)
    return ExtractReport(_single_top_folder(dest), kept, skipped)


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, staging: Path, seen: set[str]) -> str | None:
    relative = PurePosixPath(info.filename.replace("\\", "/"))
    key = relative.as_posix().lower()  # a.JPG and a.jpg are one file on case-insensitive file systems
    if key in seen:
        return "duplicate name"
    target = staging.joinpath(*relative.parts)
    # Belt and braces after the name checks: whatever the name, the file lands inside staging.
    if not target.resolve().is_relative_to(staging.resolve()):
        return "unsafe path (outside the folder)"
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as source, open(target, "xb") as out:
        # The header's size may lie: never write more than it declared.
        while written <= info.file_size:
            block = source.read(min(_CHUNK, info.file_size + 1 - written))
            if not block:
                break
            out.write(block)
            written += len(block)
    if written > info.file_size:
        target.unlink()
        return "size differs from the zip's record"
    problem = _readable(target)
    if problem:
        target.unlink()
        return problem
    seen.add(key)
    return None


def _single_top_folder(folder: Path) -> Path:
    """A zip of a folder holds one top folder: the photos (or class folders) are inside it."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
