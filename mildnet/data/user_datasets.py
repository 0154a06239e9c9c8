"""Your own catalogue: register a folder of product photos as a dataset, list the datasets, unregister one.

``add_dataset`` (``python -m mildnet data add``) accepts three layouts:

- class sub-folders (optionally under ``train/``, ``validation/``, ``test/``): the class is the product;
- any folder plus a labels CSV (``image``, ``product_id``/``label``, optional ``category``, ``split``);
- a flat folder with no labels: each photo is its own product and the triplets are instance-level
  (:mod:`mildnet.data.instance`), so the catalogue is searchable at once and can still be trained and
  evaluated on. Labels where no product has two photos are treated the same way (keeping their categories).

The user's folder is only read. What we derive (``catalog.csv``, ``train/val/test.csv``, augmented views, and
with ``copy`` the images) goes to ``<user data dir>/<NAME>/``: ``data/<NAME>/`` beside the user registry
(:func:`mildnet.data.manifest.user_manifest_path`), never inside the user's folder. The registry row points
at it; the tracked ``data_manifest.csv`` is never edited. Every failure leaves the registry as it was: the
files are built in a staging folder, moved into place, and only then is the registry rewritten (atomically,
under a lock).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from mildnet import locks
from mildnet.data import manifest as mf
from mildnet.data.catalog import (
    assign_splits,
    catalog_from_folder,
    gallery,
    generate_triplets,
    normalise_catalog,
    read_catalog,
    write_catalog,
)
from mildnet.data.images import list_images, refuse_unsafe_links
from mildnet.data.instance import DEFAULT_VIEWS, PHOTOS_DIR, instance_catalog, write_views
from mildnet.data.staging import discard, staging_path, sweep_abandoned
from mildnet.data.triplets import COLUMNS as TRIPLET_COLUMNS
from mildnet.data.triplets import write_triplets
from mildnet.errors import DataError, StoreError

USER_DATA_DIR = "data"
_LOCK_FILE = ".user-registry.lock"
# Registry holds are a read-modify-write of one small CSV (milliseconds); a dataset's own lock covers a refresh
# that writes views for every new photo (~30 s per 3,000 photos), so a second refresh waits longer for it.
REGISTRY_LOCK_TIMEOUT = 30.0
DATASET_LOCK_TIMEOUT = 600.0
# How many offending files an error message names.
_EXAMPLES = 3

# progress(done, total_or_None, message), as mildnet.cli.progress.ProgressBar.update
Progress = Callable[[int, "int | None", str], None]


# Where the app unpacks uploaded zips (mildnet.ui.catalogue): one folder per dataset, the dataset's origin.
UPLOADS_DIR = "uploads"


def user_data_dir(manifest: str | os.PathLike | None = None) -> Path:
    """Where registered datasets keep their derived files: ``data/`` beside the user registry."""
    return mf.user_manifest_path(manifest).expanduser().resolve().parent / USER_DATA_DIR


# --- add -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddResult:
    name: str
    kind: str  # "labelled" or "instance"
    origin: Path  # the user's folder (resolved)
    home: Path  # our derived files
    image_root: Path  # what triplet and catalog paths are relative to
    photos: int  # photos in the catalogue (searchable)
    views: int  # augmented views per photo (instance-level), else 0
    products: int
    triplets: dict[str, int]
    placement: str  # how the images reach image_root: "in place", "copied", "hard-linked", ...
    left_out: dict[str, str] = field(default_factory=dict)  # image -> why it is not in the catalogue
    seconds: float = 0.0


def add_dataset(
    name: str,
    images: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    copy: bool = False,
    seed: int = 0,
    views: int = DEFAULT_VIEWS,
    manifest: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> AddResult:
    """Register the folder ``images`` as dataset ``name`` (see the module docstring); one-line DataError on
    bad input (unknown or empty folder, taken name, labels naming missing files, links leaving the folder)."""
    start = time.perf_counter()
    report = progress or (lambda done, total, message="": None)
    root, home, labels_path = _check_request(name, images, labels, manifest)
    left_out: dict[str, str] = {}
    photos = _photos_inside(root, left_out)
    catalog = _user_catalog(root, photos, labels_path, seed)
    left_out.update({image: "not in the labels CSV" for image in sorted(set(photos) - set(catalog["image"]))})
    kind = "labelled" if _has_positives(catalog) else "instance"

    home.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(home.parent)
    staging = staging_path(home.parent, name, "adding")
    try:
        staging.mkdir()
        if kind == "instance":
            catalog, placement = _stage_instance_views(root, catalog, staging, copy, views, seed, report, left_out)
            image_root = home / "images"
        elif copy:
            placement = _place(root, list(catalog["image"]), staging / "images", True, report)
            image_root = home / "images"
        else:
            placement, image_root = "in place", root
        report(0, None, "generating triplets")
        tables = _triplets(catalog, seed)
        write_catalog(staging / "catalog.csv", catalog)
        # Splits without triplets are left out, so training holds out part of train rather than failing on an
        # empty validation file; a catalogue too small for any triplet keeps an empty train file (searchable).
        wanted = [s for s in mf.SPLITS if len(tables[s])] or ["train"]
        for split in wanted:
            write_triplets(staging / f"{split}.csv", tables[split])
        rows = [
            mf.DatasetSplit(dataset=name, split=split, triplets=home / f"{split}.csv", image_root=image_root,
                            source="local", catalog=home / "catalog.csv", kind=kind, origin=root.as_posix(),
                            notes=_notes(kind, labels_path, placement, views))
            for split in wanted
        ]
        _commit(name, staging, home, rows, manifest)
    except BaseException:
        discard(staging)
        raise
    shown = gallery(catalog)
    return AddResult(
        name=name, kind=kind, origin=root, home=home, image_root=image_root, photos=len(shown),
        views=views if kind == "instance" else 0, products=int(shown["product_id"].nunique()),
        triplets={s: len(tables[s]) for s in mf.SPLITS}, placement=placement, left_out=left_out,
        seconds=time.perf_counter() - start,
    )


def _check_request(
    name: str, images: str | os.PathLike, labels: str | os.PathLike | None, manifest: str | os.PathLike | None
) -> tuple[Path, Path, Path | None]:
    """``(the folder resolved, our home for the dataset, the labels CSV)`` after every check that needs no
    image read: the name, the folder, where our files would go, the labels file."""
    problem = mf.name_problem(name)
    if problem:
        raise DataError(problem)
    _refuse_taken(name, manifest)
    folder = Path(images).expanduser()
    if not folder.exists():
        raise DataError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (give the folder that holds the photos)")
    root = folder.resolve()
    home = user_data_dir(manifest) / name
    _refuse_overlap(root, home)
    if home.exists() or home.is_symlink():
        raise DataError(f"{home} already exists (left from an earlier dataset?); delete it or choose another name")
    labels_path = None
    if labels is not None:
        labels_path = Path(labels).expanduser()
        if not labels_path.is_file():
            raise DataError(f"labels CSV not found: {labels_path}")
    return root, home, labels_path


def _photos_inside(root: Path, left_out: dict[str, str]) -> list[str]:
    """The folder's photos (those whose names a catalogue cannot keep go to ``left_out``); refused when there
    are none or when a link leads out of the folder."""
    photos = list_images(root, left_out)
    if not photos and left_out:
        first, why = next(iter(left_out.items()))
        raise DataError(f"none of the {len(left_out)} images under {root} can be used, e.g. {first!r}: {why}")
    if not photos:
        raise DataError(f"no images (jpg, png, webp, bmp, gif) found under {root}")
    refuse_unsafe_links(root)
    return photos


def _stage_instance_views(
    root: Path, catalog: pd.DataFrame, staging: Path, copy: bool, views: int, seed: int, report: Progress,
    left_out: dict[str, str],
) -> tuple[pd.DataFrame, str]:
    """An unlabelled folder: writes each photo's augmented views and places the photos under ``staging``;
    returns the instance catalogue and how the photos were placed. Unreadable photos go to ``left_out``."""
    report(0, len(catalog), "writing augmented views")
    unreadable = write_views(root, list(catalog["image"]), staging / "images", views=views, seed=seed,
                             progress=lambda done, total: report(done, total, "writing augmented views"))
    left_out.update({image: f"unreadable: {why}" for image, why in unreadable.items()})
    kept = [image for image in catalog["image"] if image not in unreadable]
    if not kept:
        first, why = next(iter(unreadable.items()))
        raise DataError(f"none of the {len(unreadable)} images under {root} can be read, e.g. {first}: {why}")
    placement = _place(root, kept, staging / "images" / PHOTOS_DIR, copy, report)
    return instance_catalog(catalog, views=views, leave_out=list(unreadable)), placement


def _refuse_taken(name: str, manifest) -> None:
    rows = [s for s in mf.load_manifest(manifest) if s.dataset == name]
    if not rows:
        return
    if rows[0].origin:
        raise DataError(f"dataset {name!r} already exists (added from {rows[0].origin}); choose another name "
                        f"or unregister it first with `python -m mildnet data remove {name}`")
    raise DataError(f"dataset {name!r} already exists in {mf.manifest_path(manifest)}; choose another name")


def _refuse_overlap(root: Path, home: Path) -> None:
    # Our files must never land inside the user's folder, and `data remove` deletes home: the user's photos
    # must never be inside it.
    home = home.resolve()
    if root == home or root.is_relative_to(home) or home.is_relative_to(root):
        raise DataError(f"{root} overlaps {home}, where the dataset's own files go; give a folder outside it")


def _user_catalog(root: Path, photos: list[str], labels: Path | None, seed: int) -> pd.DataFrame:
    if labels is not None:
        return catalog_from_folder(root, labels_csv=labels, seed=seed)
    if all("/" not in image for image in photos):
        # Flat, no labels: each photo is its own product. The file name, extension included, is the product
        # id (the stem alone would pair a.jpg with a.png as two photos of one product).
        frame = pd.DataFrame({"image": photos, "product_id": photos, "category": "", "split": ""})
        return assign_splits(normalise_catalog(frame, source=str(root)), seed=seed)
    return catalog_from_folder(root, seed=seed)


def _has_positives(catalog: pd.DataFrame) -> bool:
    """Whether some product has two images in one split (else only augmented views can give positives)."""
    return bool(catalog.groupby(["split", "product_id"]).size().ge(2).any())


def _triplets(catalog: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    # generate_triplets refuses a catalog where no split can make one (too few photos); such a catalogue is
    # still registered and searchable, with empty triplet files.
    possible = any(part["product_id"].nunique() >= 2 and part.groupby("product_id").size().ge(2).any()
                   for _, part in catalog.groupby("split"))
    if not possible:
        return {s: pd.DataFrame(columns=list(TRIPLET_COLUMNS)) for s in mf.SPLITS}
    return generate_triplets(catalog, per_query=2, seed=seed)


def _place(root: Path, images: list[str], dest: Path, copy: bool, report: Progress) -> str:
    """Put each ``root/image`` at ``dest/image``: copied with ``copy``, else hard-linked (no extra disk, and
    not a symbolic link, which would leave the image root), copied where the file system refuses links."""
    linked = copied = 0
    total = len(images)
    message = "copying images" if copy else "linking images"
    for done, image in enumerate(images, start=1):
        source, target = (root / image).resolve(), dest / image
        target.parent.mkdir(parents=True, exist_ok=True)
        if not copy and _hard_link(source, target):
            linked += 1
        elif target.exists() and os.path.samefile(source, target):
            linked += 1  # another session refreshing the same folder placed it a moment ago
        else:
            # Through a temporary name: a reader (or a second refresh) never sees half a photo.
            part = target.with_name(f".placing-{uuid.uuid4().hex}.part")
            try:
                shutil.copy2(source, part)
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
            copied += 1
        if done % 64 == 0:
            report(done, total, message)
    report(total, total, message)
    if copy or not linked:
        return "copied"
    return "hard-linked" if not copied else f"hard-linked ({copied} copied)"


def _hard_link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
    except OSError:
        return False  # another file system, or no permission to link: the caller copies instead
    return True


def _notes(kind: str, labels: Path | None, placement: str, views: int) -> str:
    if kind == "instance":
        what = (f"instance-level triplets: the positive is one of {views} augmented views of the query's own "
                "photo, negatives are other photos")
    elif labels is not None:
        what = f"labels from {labels.resolve().as_posix()}"
    else:
        what = "class folders: class = product"
    return f"{what}; images {placement}"


@contextmanager
def _registry_lock(data_dir: Path) -> Iterator[None]:
    # Two `data add` at once would each rewrite the registry from what they read: the second would drop the
    # first's rows. The lock serialises the read-modify-write; nothing slow happens under it.
    with _file_lock(data_dir / _LOCK_FILE, "the dataset registry", REGISTRY_LOCK_TIMEOUT):
        yield


def _dataset_lock(data_dir: Path, name: str, timeout: float, report: Progress | None = None):
    return _file_lock(data_dir / f".{name}.lock", f"dataset {name}", timeout, report)


@contextmanager
def _file_lock(path: Path, what: str, timeout: float, report: Progress | None = None) -> Iterator[None]:
    """An exclusive lock on ``path``, waited for at most ``timeout`` seconds (DataError naming the lock)."""
    def busy() -> DataError:
        return DataError(f"{what} is locked by another command or app session ({path}) and was not released "
                         f"within {timeout:g} s; try again when it has finished (a lock is released when its "
                         "process ends, even a killed one)")

    def waiting() -> None:
        if report is not None:
            report(0, None, f"waiting for another command working on {what}")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)  # a read-only disk is said here, in one line
    except OSError as exc:
        raise DataError(f"cannot lock {what} ({path}): {exc.strerror or exc}") from None
    with locks.exclusive(path, timeout, busy, waiting):
        yield


def _commit(name: str, staging: Path, home: Path, rows: list[mf.DatasetSplit], manifest) -> None:
    user_path = mf.user_manifest_path(manifest)
    with _registry_lock(home.parent):
        _refuse_taken(name, manifest)  # again: another `data add` may have taken it meanwhile
        if home.exists():
            raise DataError(f"{home} already exists; delete it or choose another name")
        os.replace(staging, home)
        try:
            mf.save_user_manifest(mf.load_user_manifest(user_path) + rows, user_path)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise


# --- refresh (the user's folder changed) ---------------------------------------------------------------------


@dataclass(frozen=True)
class FolderChanges:
    """How the user's folder differs from the registered catalogue (image names relative to the folder)."""
    new: list[str]
    removed: list[str]
    changed: list[str]  # same name, other file (size or modification time differ)

    def __bool__(self) -> bool:
        return bool(self.new or self.removed or self.changed)

    def describe(self) -> str:
        parts = [f"{len(self.new):,} new", f"{len(self.removed):,} removed"]
        if self.changed:
            parts.append(f"{len(self.changed):,} replaced")
        return ", ".join(parts)


@dataclass(frozen=True)
class RefreshResult:
    name: str
    changes: FolderChanges
    photos: int  # searchable photos after the refresh
    triplets: dict[str, int]
    left_out: dict[str, str] = field(default_factory=dict)  # new photo -> why it was not added
    seconds: float = 0.0


def _added_row(name: str, manifest) -> mf.DatasetSplit:
    rows = [s for s in mf.load_user_manifest(mf.user_manifest_path(manifest)) if s.dataset == name]
    if not rows:
        raise DataError(f"{name!r} was not added from a folder (with `data add` or the app): nothing to refresh")
    return rows[0]


def _photo_of(row: mf.DatasetSplit, image: str) -> str:
    """An image id of the catalogue -> its name in the user's folder."""
    prefix = f"{PHOTOS_DIR}/"
    return image[len(prefix):] if row.kind == "instance" and image.startswith(prefix) else image


def folder_changes(name: str, manifest: str | os.PathLike | None = None) -> FolderChanges:
    """New, removed and replaced photos in the folder dataset ``name`` was added from (stat calls only).

    A dataset added with a labels CSV follows the CSV, not the folder: it reports no changes."""
    row = _added_row(name, manifest)
    origin = Path(row.origin)
    if not origin.is_dir():
        raise DataError(f"the folder {name!r} was added from is gone: {origin}")
    if row.catalog is None or not row.catalog.is_file():
        raise DataError(f"{name}: catalog missing ({row.catalog}); remove the dataset and add it again")
    if row.notes.startswith("labels from"):
        return FolderChanges([], [], [])
    known = {_photo_of(row, image): image for image in gallery(read_catalog(row.catalog))["image"]}
    now = set(list_images(origin))
    changed = []
    for photo in sorted(now & set(known)):
        ours = row.image_root / known[photo]
        if ours.resolve() == (origin / photo).resolve():
            continue  # in place: the catalogue uses the user's file itself
        try:
            a, b = (origin / photo).stat(), ours.stat()
        except OSError:
            changed.append(photo)
            continue
        # A hard link is the same file (always equal); a copy keeps the mtime (copy2).
        if (a.st_size, a.st_mtime_ns) != (b.st_size, b.st_mtime_ns) and not os.path.samefile(origin / photo, ours):
            changed.append(photo)
    return FolderChanges(sorted(now - set(known)), sorted(set(known) - now), changed)


def refresh_dataset(name: str, manifest: str | os.PathLike | None = None, progress: Progress | None = None,
                    seed: int = 0) -> RefreshResult:
    """Bring dataset ``name`` in line with the folder it was added from: views written and photos linked only
    for new or replaced photos, removed ones dropped, existing photos keep their split; triplets regenerated.

    The embeddings are not touched here: :func:`mildnet.embeddings.update_catalog` then embeds only the new
    images. Works for flat (instance-level) and class-folder datasets; one added with a labels CSV follows
    its CSV (add it again to change it)."""
    start = time.perf_counter()
    report = progress or (lambda done, total, message="": None)
    row = _added_row(name, manifest)
    home = row.catalog.parent
    # One refresh of a dataset at a time (two app sessions may see the same change); the registry lock is
    # taken only for the registry's own few milliseconds, so adds and removes of other datasets never wait.
    with _dataset_lock(home.parent, name, DATASET_LOCK_TIMEOUT, report):
        changes = folder_changes(name, manifest)  # after the wait: what another refresh did is not redone
        origin = Path(row.origin)
        if not changes:
            catalog = read_catalog(row.catalog)
            return RefreshResult(name, changes, len(gallery(catalog)), {}, {}, time.perf_counter() - start)
        refuse_unsafe_links(origin, hint="remove them first")
        old = read_catalog(row.catalog)
        left_out: dict[str, str] = {}
        if row.kind == "instance":
            catalog, left_out = _refresh_instance(row, old, changes, report, seed)
        else:
            if row.image_root.resolve() != origin.resolve():
                raise DataError(f"{name} keeps a copy of your photos; remove it and add the folder again")
            report(0, None, "reading the class folders")
            photos = list_images(origin)
            catalog = _user_catalog(origin, photos, None, seed)
        report(0, None, "generating triplets")
        tables = _triplets(catalog, seed)
        write_catalog(row.catalog, catalog)
        # As in add_dataset: only splits with triplets are listed (an empty triplet file fails `data check`).
        wanted = [s for s in mf.SPLITS if len(tables[s])] or ["train"]
        for split in wanted:
            write_triplets(home / f"{split}.csv", tables[split])
        with _registry_lock(home.parent):
            user_path = mf.user_manifest_path(manifest)
            registry = mf.load_user_manifest(user_path)
            registered = [s.split for s in registry if s.dataset == name]
            if name in {s.dataset for s in registry} and set(wanted) != set(registered):
                template = next(s for s in registry if s.dataset == name)
                mine = [replace(template, split=s, triplets=home / f"{s}.csv") for s in wanted]
                mf.save_user_manifest([s for s in registry if s.dataset != name] + mine, user_path)
                for split in set(registered) - set(wanted):
                    (home / f"{split}.csv").unlink(missing_ok=True)
    return RefreshResult(name, changes, len(gallery(catalog)), {s: len(tables.get(s, ())) for s in mf.SPLITS},
                         left_out, time.perf_counter() - start)


def _refresh_instance(row: mf.DatasetSplit, old: pd.DataFrame, changes: FolderChanges, report: Progress,
                      seed: int) -> tuple[pd.DataFrame, dict[str, str]]:
    from mildnet.data.catalog import AUGMENTED_COLUMN
    from mildnet.data.instance import photo_name

    origin, root = Path(row.origin), row.image_root
    augmented = (old[AUGMENTED_COLUMN].fillna("").astype(str) if AUGMENTED_COLUMN in old
                 else pd.Series("", index=old.index))
    views = int(augmented[augmented.ne("")].value_counts().max()) if augmented.ne("").any() else DEFAULT_VIEWS
    gone = set(changes.removed) | set(changes.changed)
    gone_ids = {photo_name(p) for p in gone}
    drop = old["image"].isin(gone_ids) | augmented.isin(gone_ids)
    for image in old.loc[drop, "image"]:
        (root / image).unlink(missing_ok=True)  # our link or copy, or our view: never the user's file
    kept = old[~drop]
    added = sorted(set(changes.new) | set(changes.changed))
    left_out: dict[str, str] = {}
    if added:
        report(0, len(added), "writing augmented views")
        unreadable = write_views(origin, added, root, views=views, seed=seed,
                                 progress=lambda done, total: report(done, total, "writing augmented views"))
        left_out = {image: f"unreadable: {why}" for image, why in unreadable.items()}
        readable = [image for image in added if image not in unreadable]
        copy = "copied" in row.notes and "hard-linked" not in row.notes
        if readable:
            _place(origin, readable, root / PHOTOS_DIR, copy, report)
        # Existing photos keep their split (their triplets, and a model trained on them, stay valid).
        frame = pd.DataFrame({"image": readable, "product_id": readable, "category": "", "split": ""})
        fresh = instance_catalog(assign_splits(normalise_catalog(frame, source=str(origin)), seed=seed), views=views)
        kept = pd.concat([kept, fresh.reindex(columns=kept.columns, fill_value="")], ignore_index=True)
    return kept.reset_index(drop=True), left_out


# --- remove ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoveResult:
    name: str
    origin: str  # the user's folder, untouched (unless it was the app's own unpacked copy of an uploaded zip)
    removed: Path | None  # our derived files, deleted
    kept: str = ""  # why derived files were left in place
    deleted_upload: Path | None = None  # the app's unpacked copy of this dataset's uploaded zip, deleted


def remove_dataset(name: str, manifest: str | os.PathLike | None = None) -> RemoveResult:
    """Unregister a dataset added with :func:`add_dataset` and delete its derived files; the user's images
    are never touched (hard links to them are only names: removing one leaves the photo). The one folder of
    photos deleted is the app's unpacked copy of this dataset's uploaded zip (:func:`mark_upload`)."""
    user_path = mf.user_manifest_path(manifest)
    home = user_data_dir(manifest) / name
    # Not while a refresh writes into the dataset's folder (it would recreate files under a removed name).
    with _dataset_lock(home.parent, name, REGISTRY_LOCK_TIMEOUT):
        with _registry_lock(home.parent):
            user = mf.load_user_manifest(user_path)
            rows = [s for s in user if s.dataset == name]
            if not rows:
                tracked = mf.datasets(mf.load_manifest(manifest, include_user=False))
                if name in tracked:
                    raise DataError(f"{name} is listed in {mf.manifest_path(manifest)}, not added with `data add`; "
                                    "`data remove` only unregisters datasets you added")
                mine = ", ".join(mf.datasets(user)) or "none"
                raise DataError(f"no dataset {name!r} was added with `data add` (added: {mine})")
            mf.save_user_manifest([s for s in user if s.dataset != name], user_path)
        first = rows[0]
        upload = _remove_unpacked_upload(name, first.origin, user_data_dir(manifest))
        kept = _why_keep(home, first)
        if kept:
            return RemoveResult(name, first.origin, None, kept, upload)
        shutil.rmtree(home)
    return RemoveResult(name, first.origin, home, deleted_upload=upload)


# Written by the app into the folder it unpacks an uploaded zip into: the folder is then ours to delete with
# the dataset. Being under data/uploads/ is not enough: a user may keep (or register) photos of their own there.
UPLOAD_MARKER = ".mildnet-upload"


def mark_upload(folder: str | os.PathLike, name: str) -> None:
    """Marks ``folder`` (``data/uploads/<NAME>``) as the app's unpacked copy of dataset ``name``'s zip."""
    (Path(folder) / UPLOAD_MARKER).write_text(name + "\n", encoding="utf-8")


def _remove_unpacked_upload(name: str, origin: str | None, data_dir: Path) -> Path | None:
    """Deletes the app's unpacked copy of dataset ``name``'s uploaded zip (the user kept the zip): the folder
    directly under ``data/uploads/`` that holds ``origin`` (a zip with one top folder registers that folder) and
    carries this dataset's :data:`UPLOAD_MARKER`. Anything else under uploads/ is the user's and stays."""
    if not origin or Path(origin).is_symlink():
        return None
    uploads = (data_dir / UPLOADS_DIR).resolve()
    folder = Path(origin).resolve()
    if not folder.is_relative_to(uploads) or folder == uploads:
        return None
    while folder.parent != uploads:
        folder = folder.parent
    marker = folder / UPLOAD_MARKER
    try:
        owner = marker.read_text(encoding="utf-8").strip() if marker.is_file() and not marker.is_symlink() else None
    except (OSError, UnicodeDecodeError):
        owner = None
    if owner != name or folder.is_symlink() or not folder.is_dir():
        return None
    shutil.rmtree(folder)
    return folder


def _why_keep(home: Path, row: mf.DatasetSplit) -> str:
    if not home.is_dir() or home.is_symlink():
        return f"{home} is not a folder" if home.exists() or home.is_symlink() else ""
    if row.catalog is None or row.catalog.parent.resolve() != home.resolve():
        return f"{home} is not where this dataset's files are ({row.catalog}); left in place"
    origin = Path(row.origin).resolve() if row.origin else None
    if origin is not None and (origin == home.resolve() or origin.is_relative_to(home.resolve())
                               or home.resolve().is_relative_to(origin)):
        return f"{home} overlaps your folder {origin}; left in place"
    return ""


# --- list ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str  # the user's folder for an added dataset, else the manifest's source kind
    kind: str  # labelled | instance | "" (as the files say)
    added: bool  # registered with `data add`
    images: int | None  # searchable images (catalog rows without augmented views); None without a catalog
    triplets: dict[str, int | None]  # per split; None where the file is missing, absent splits left out
    embedded: list[str]  # one label per embedding set found in the stores
    state: str


def overview(manifest: str | os.PathLike | None = None, stores: Iterable = ()) -> list[DatasetInfo]:
    """One :class:`DatasetInfo` per registered dataset (tracked and added). Cheap: counts lines and reads
    catalogs, never decodes an image; ``stores`` (opened :class:`mildnet.store.Store` objects) are asked for
    keys of each dataset's name."""
    rows = mf.load_manifest(manifest)
    stores = list(stores)
    infos = []
    for name in mf.datasets(rows):
        splits = mf.dataset_splits(name, rows)
        first = splits[0]
        infos.append(DatasetInfo(
            name=name,
            source=first.origin or first.source,
            kind=first.kind,
            added=bool(first.origin),
            images=_count_images(first),
            triplets={s.split: _count_lines(s.triplets) for s in splits},
            embedded=[label for store in stores for label in embedded_with(store, name)],
            state=_state(name, splits),
        ))
    return infos


def _count_images(split: mf.DatasetSplit) -> int | None:
    if split.catalog is None or not split.catalog.is_file():
        return None
    try:
        return len(gallery(read_catalog(split.catalog)))
    except DataError:
        return None  # a broken catalog shows in the state column through `data check`, not here


def _count_lines(path: Path) -> int | None:
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return None


def _state(name: str, splits: list[mf.DatasetSplit]) -> str:
    missing = mf.missing_files(splits)
    if not missing:
        return "ready"
    source = splits[0].source
    if source == "generated":
        return "made on first use"
    if source in ("class-folders", "download"):
        return f"not fetched (python -m mildnet data fetch {name})"
    return f"missing {missing[0]}"


def embedded_with(store, name: str) -> list[str]:
    """Labels (run or model, fingerprint, image count) of the embedding sets stored for dataset ``name``."""
    try:
        keys = [k for k in store.keys() if k.startswith(f"{name}/") and k.count("/") == 1]
        labels = []
        for key in keys:
            embedded = store.get(key)
            if embedded is not None:
                labels.append(_embedding_label(key, embedded.meta, len(embedded)))
        return labels
    except StoreError as exc:
        return [f"? ({store.describe()}: {exc})"]


def _embedding_label(key: str, meta: dict, count: int) -> str:
    source = str(meta.get("source") or "")
    # `embed --run` records the run folder; show its name, which says more than the architecture.
    who = Path(source).name if source and os.path.isabs(source) else (meta.get("model_name") or "?")
    return f"{who} [{key.rsplit('/', 1)[1][:8]}] {count} images"
