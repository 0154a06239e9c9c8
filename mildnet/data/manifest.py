"""The dataset registry: ``data_manifest.csv``, one row per dataset split, and ``prepare`` to make a
registered dataset usable (generate it, download it, or import it from a local copy).

Manifest columns (header row; ``#`` lines are comments; paths are relative to the manifest's folder):

- ``dataset``, ``split`` (train/val/test): the row's key, unique together.
- ``triplets``: the MILDNet triplet CSV (no header, paths relative to ``image_root``).
- ``image_root``: the folder triplet and catalog paths are relative to.
- ``catalog`` (optional): the ``catalog.csv`` of the dataset, where it has one.
- ``source``: how the files come to exist, one of ``SOURCES``:
  ``generated`` (the offline sample, rendered by :mod:`mildnet.data.sample`), ``class-folders``
  (an image archive with class sub-folders; catalog and triplets are generated from it),
  ``download`` (triplet CSVs and an image archive downloaded as they are), ``local`` (your own files,
  only checked).
- ``url`` / ``sha256``: where the triplet CSV is downloaded from, and its checksum (``download``).
- ``images_url`` / ``images_sha256``: the image archive (zip or tar) and its checksum.
- ``archive_dir``: the folder inside the archive (a name or glob) that becomes ``image_root``.
- ``licence``, ``notes``: free text shown to users.
- ``kind`` (optional): how the triplets were made, one of ``KINDS``: empty (as the files say), ``labelled``
  (positives share a product/class label), ``instance`` (no labels: each positive is an augmented view of the
  query's own photo, see :mod:`mildnet.data.instance`), so the app can say what the triplets mean.
- ``origin`` (optional): the folder the user registered with ``data add`` (their images; never written to).

The tracked ``data_manifest.csv`` is merged on read with a user registry beside it (``<stem>.user.csv``,
git-ignored, or ``$MILDNET_USER_MANIFEST``), which ``python -m mildnet data add/remove`` edit
(:mod:`mildnet.data.user_datasets`), so registering a folder never touches a tracked file.

Dataset-level columns (everything but split, triplets, url, sha256, notes) must agree across a
dataset's rows, because ``prepare`` treats the dataset as one unit.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mildnet.data import read_text_file
from mildnet.errors import DataError, DownloadError

log = logging.getLogger(__name__)

ENV_VAR = "MILDNET_MANIFEST"
USER_ENV_VAR = "MILDNET_USER_MANIFEST"
# A checkout's registry beside the package; an installed wheel's copy under the environment's share/ (pyproject's
# data-files), whose relative paths and user registry then live in the data home (the environment is no place to
# write, and may be read-only).
CHECKOUT_MANIFEST = Path(__file__).resolve().parents[2] / "data_manifest.csv"
INSTALLED_MANIFEST = Path(sys.prefix) / "share" / "mildnet" / "data_manifest.csv"
DEFAULT_MANIFEST = CHECKOUT_MANIFEST if CHECKOUT_MANIFEST.is_file() else INSTALLED_MANIFEST
SPLITS = ("train", "val", "test")
SOURCES = ("generated", "class-folders", "download", "local")
REQUIRED_COLUMNS = ("dataset", "split", "triplets", "image_root", "source")
OPTIONAL_COLUMNS = ("catalog", "url", "sha256", "images_url", "images_sha256", "archive_dir", "licence", "notes",
                    "kind", "origin")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
KINDS = ("", "labelled", "instance")
# Columns that describe the whole dataset rather than one split.
_DATASET_COLUMNS = ("image_root", "catalog", "source", "images_url", "images_sha256", "archive_dir", "licence",
                    "kind", "origin")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")

# progress(done, total_or_None, message): bytes while downloading, files while extracting or copying;
# the message says which stage (same signature as mildnet.cli.progress.ProgressBar.update).
Progress = Callable[[int, "int | None", str], None]


@dataclass(frozen=True)
class DatasetSplit:
    dataset: str
    split: str
    triplets: Path
    image_root: Path
    source: str
    catalog: Path | None = None
    url: str = ""
    sha256: str = ""
    images_url: str = ""
    images_sha256: str = ""
    archive_dir: str = ""
    licence: str = ""
    notes: str = ""
    kind: str = ""
    origin: str = ""

    @property
    def ready(self) -> bool:
        """Whether the files this split needs are present (not whether they are valid)."""
        return not missing_files([self])


# --- reading and looking up ------------------------------------------------------------------------


def manifest_path(path: str | os.PathLike | None = None) -> Path:
    """The manifest in use: ``path``, else ``$MILDNET_MANIFEST``, else the project's ``data_manifest.csv``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_MANIFEST


def user_manifest_path(manifest: str | os.PathLike | None = None) -> Path:
    """The user registry merged with ``manifest``: ``$MILDNET_USER_MANIFEST``, else ``<stem>.user.csv`` beside
    the manifest in use (``data_manifest.user.csv`` for the project's, git-ignored), in the data home for an
    installed package's."""
    env = os.environ.get(USER_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    base = manifest_path(manifest)
    name = f"{base.stem}.user{base.suffix or '.csv'}"
    return manifest_base(base) / name


def manifest_base(path: Path) -> Path:
    """What the relative paths of the manifest at ``path`` are relative to: its folder, or the data home for the
    copy an installed package ships."""
    from mildnet.home import data_home

    if path.expanduser().resolve() == INSTALLED_MANIFEST.resolve():
        return data_home().resolve()
    return path.expanduser().parent.resolve()


def load_manifest(path: str | os.PathLike | None = None, include_user: bool = True) -> list[DatasetSplit]:
    """Read and validate a manifest; relative paths are resolved against the manifest's folder.

    With ``include_user`` the user registry (:func:`user_manifest_path`) is appended when it exists; a name
    in both files is an error rather than one silently hiding the other. A damaged user registry is left out
    with a warning saying why: the tracked datasets stay usable.
    """
    path = manifest_path(path)
    text = read_text_file(path, "dataset manifest", hint=f" (set {ENV_VAR} to use another file)")
    splits = parse_manifest(text, base=manifest_base(path), name=str(path))
    if not include_user:
        return splits
    user_path = user_manifest_path(path)
    try:
        user = load_user_manifest(user_path)
    except DataError as exc:
        log.warning("%s; the datasets it lists are left out until it is repaired", exc)
        return splits
    clash = sorted(set(datasets(splits)) & set(datasets(user))) if user else []
    if clash:
        raise DataError(
            f"dataset {clash[0]!r} is registered both in {path} and in {user_path}; "
            f"unregister the second with `python -m mildnet data remove {clash[0]}` or rename it in one file"
        )
    return splits + user


def load_user_manifest(path: str | os.PathLike | None = None) -> list[DatasetSplit]:
    """The rows of the user registry (``[]`` when it does not exist yet or lists nothing)."""
    path = Path(path) if path is not None else user_manifest_path()
    if not path.is_file():
        return []
    text = read_text_file(path, "user dataset registry")
    return parse_manifest(text, base=path.parent.resolve(), name=str(path), allow_empty=True)


def save_user_manifest(splits: list[DatasetSplit], path: str | os.PathLike | None = None) -> Path:
    """Write the user registry atomically (temp file + rename): a reader sees the old or the new file, never
    half of one. Paths under the registry's folder are stored relative to it, others absolute."""
    path = Path(path) if path is not None else user_manifest_path()
    base = path.parent.resolve()
    _check_dataset_consistency(list(splits), str(path))

    def cell(value: Path | str | None) -> str:
        if value is None:
            return ""
        if isinstance(value, Path):
            return value.relative_to(base).as_posix() if value.is_relative_to(base) else value.as_posix()
        return value

    buffer = io.StringIO()
    buffer.write("# Datasets registered with `python -m mildnet data add` (not tracked by git); merged with the\n"
                 "# tracked manifest on read. Edit with `data add` / `data remove`; columns as in data_manifest.csv.\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for split in splits:
        writer.writerow([cell(getattr(split, column)) for column in COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write the dataset registry {path}: {exc.strerror or exc}") from None
    return path


def parse_manifest(text: str, base: Path, name: str = "manifest", allow_empty: bool = False) -> list[DatasetSplit]:
    # One csv.reader over the whole text: it splits records on \n and \r only (and keeps quoted ones whole), where
    # str.splitlines() also split on U+2028, U+0085, form feeds...: a folder name with one of those, written
    # correctly by csv.writer, broke the registry and with it every command and page (issue 18 F3). Physical line
    # numbers are kept for messages; comments and blank lines are dropped.
    lines: list[tuple[int, list[str]]] = []
    parser = csv.reader(io.StringIO(text, newline=""))
    try:
        for cells in parser:
            if any(c.strip() for c in cells) and not cells[0].lstrip().startswith("#"):
                lines.append((parser.line_num, cells))
    except csv.Error as exc:  # e.g. a field over the csv module's 131,072-character limit
        raise DataError(f"{name}: unreadable CSV ({exc})") from None
    if not lines:
        if allow_empty:
            return []
        raise DataError(f"{name}: empty manifest (needs a header row: {','.join(COLUMNS)})")
    reader = iter(cells for _, cells in lines)
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise DataError(f"{name}: unknown column(s) {', '.join(unknown)}; known columns: {', '.join(COLUMNS)}")
    if len(set(header)) != len(header):
        raise DataError(f"{name}: a column appears twice in the header")
    splits: list[DatasetSplit] = []
    seen: dict[tuple[str, str], int] = {}
    for (line_no, _), cells in zip(lines[1:], reader):
        where = f"{name} line {line_no}"
        if len(cells) != len(header):
            raise DataError(f"{where}: {len(cells)} fields, the header has {len(header)} (quote values with commas)")
        row = {column: cell.strip() for column, cell in zip(header, cells)}
        split = _row_to_split(row, base, where)
        key = (split.dataset, split.split)
        if key in seen:
            raise DataError(f"{where}: duplicate {split.dataset}/{split.split} (first on line {seen[key]})")
        seen[key] = line_no
        splits.append(split)
    if not splits and not allow_empty:
        raise DataError(f"{name}: the manifest has a header but no datasets")
    _check_dataset_consistency(splits, name)
    return splits


# A name becomes folder names with a prefix and suffix (".NAME.adding-1a2b3c4d") and store keys: 64 leaves room.
MAX_NAME_LENGTH = 64


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a dataset (it becomes a folder and a store key), or None."""
    if not _NAME_RE.match(name or ""):
        return f"dataset name {name!r} may use only letters, digits, '.', '_', '-' (starting with a letter or digit)"
    if len(name) > MAX_NAME_LENGTH:
        return f"dataset name {name[:20]}... is {len(name)} characters long; the most is {MAX_NAME_LENGTH}"
    return None


def _row_to_split(row: dict[str, str], base: Path, where: str) -> DatasetSplit:
    for column in REQUIRED_COLUMNS:
        if not row.get(column):
            raise DataError(f"{where}: empty {column!r}")
    if not _NAME_RE.match(row["dataset"]):
        raise DataError(f"{where}: dataset name {row['dataset']!r} may use only letters, digits, '.', '_', '-'")
    if row["split"] not in SPLITS:
        raise DataError(f"{where}: unknown split {row['split']!r} (use {', '.join(SPLITS)})")
    if row["source"] not in SOURCES:
        raise DataError(f"{where}: unknown source {row['source']!r} (use {', '.join(SOURCES)})")
    for column in ("sha256", "images_sha256"):
        if row.get(column) and not _SHA_RE.match(row[column]):
            raise DataError(f"{where}: {column} must be 64 hexadecimal characters or empty")
    if row.get("kind", "") not in KINDS:
        known = ", ".join(k for k in KINDS if k)
        raise DataError(f"{where}: unknown kind {row['kind']!r} (use {known} or leave empty)")
    if row["source"] == "download" and not row.get("url"):
        raise DataError(f"{where}: a 'download' dataset needs the triplet file's url")
    return DatasetSplit(
        dataset=row["dataset"],
        split=row["split"],
        triplets=_resolve(row["triplets"], base),
        image_root=_resolve(row["image_root"], base),
        source=row["source"],
        catalog=_resolve(row["catalog"], base) if row.get("catalog") else None,
        url=row.get("url", ""),
        sha256=row.get("sha256", "").lower(),
        images_url=row.get("images_url", ""),
        images_sha256=row.get("images_sha256", "").lower(),
        archive_dir=row.get("archive_dir", ""),
        licence=row.get("licence", ""),
        notes=row.get("notes", ""),
        kind=row.get("kind", ""),
        origin=row.get("origin", ""),
    )


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _check_dataset_consistency(splits: list[DatasetSplit], name: str) -> None:
    first: dict[str, DatasetSplit] = {}
    for split in splits:
        other = first.setdefault(split.dataset, split)
        for column in _DATASET_COLUMNS:
            if getattr(split, column) != getattr(other, column):
                raise DataError(
                    f"{name}: {split.dataset} has different {column!r} values in its rows "
                    f"({other.split}: {getattr(other, column)!s}, {split.split}: {getattr(split, column)!s})"
                )


def _as_list(manifest: list[DatasetSplit] | str | os.PathLike | None) -> list[DatasetSplit]:
    if manifest is None or isinstance(manifest, (str, os.PathLike)):
        return load_manifest(manifest)
    return list(manifest)


def datasets(manifest: list[DatasetSplit] | str | os.PathLike | None = None) -> list[str]:
    """Dataset names in manifest order."""
    return list(dict.fromkeys(s.dataset for s in _as_list(manifest)))


def dataset_splits(name: str, manifest: list[DatasetSplit] | str | os.PathLike | None = None) -> list[DatasetSplit]:
    """All rows of dataset ``name`` (train, val, test order where present)."""
    everything = _as_list(manifest)
    rows = [s for s in everything if s.dataset == name]
    if not rows:
        known = ", ".join(datasets(everything)) or "none"
        raise DataError(f"unknown dataset {name!r}; the manifest lists: {known}")
    return sorted(rows, key=lambda s: SPLITS.index(s.split))


def get_split(name: str, split: str, manifest: list[DatasetSplit] | str | os.PathLike | None = None) -> DatasetSplit:
    """The manifest row for ``name``/``split``; DataError listing the known names otherwise."""
    rows = dataset_splits(name, _as_list(manifest))
    for row in rows:
        if row.split == split:
            return row
    raise DataError(f"dataset {name!r} has no split {split!r}; it has: {', '.join(r.split for r in rows)}")


resolve = get_split  # the name ARCHITECTURE.md uses


def missing_files(splits: list[DatasetSplit]) -> list[Path]:
    """Files or folders the given splits need that do not exist (an empty image root counts as missing)."""
    missing: list[Path] = []
    for split in splits:
        for path in (split.triplets, split.catalog):
            if path is not None and not path.is_file() and path not in missing:
                missing.append(path)
        if not _non_empty_dir(split.image_root) and split.image_root not in missing:
            missing.append(split.image_root)
    return missing


def _non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


# --- relocation (``--to DIR``) ---------------------------------------------------------------------


def dataset_home(splits: list[DatasetSplit]) -> Path:
    """The folder holding all of a dataset's files (their common parent)."""
    paths = [p for s in splits for p in (s.triplets.parent, s.image_root, s.catalog and s.catalog.parent) if p]
    return Path(os.path.commonpath([str(p) for p in paths]))


def relocate(splits: list[DatasetSplit], dest: str | os.PathLike) -> list[DatasetSplit]:
    """The same dataset with its home folder moved to ``dest`` (layout inside it unchanged)."""
    home = dataset_home(splits)
    dest = Path(dest).expanduser().resolve()

    def move(path: Path) -> Path:
        return dest / path.relative_to(home)

    return [replace(s, triplets=move(s.triplets), image_root=move(s.image_root),
                    catalog=move(s.catalog) if s.catalog else None) for s in splits]


# --- prepare -------------------------------------------------------------------------------------


def prepare(
    name: str,
    manifest: list[DatasetSplit] | str | os.PathLike | None = None,
    progress: Progress | None = None,
    source_override: str | os.PathLike | None = None,
    dest: str | os.PathLike | None = None,
    force: bool = False,
    sample_options: dict | None = None,
) -> list[DatasetSplit]:
    """Make dataset ``name`` usable and return its splits (with the paths actually used).

    - ``generated``: render the sample catalog unless it is already complete (``sample_options`` are
      passed to :func:`mildnet.data.sample.generate_sample`, e.g. ``{"products": 12, "size": 64}``).
    - ``class-folders``: get the image archive (``images_url``, or ``source_override``: a zip/tar file
      or an already extracted folder), extract it to ``image_root``, then write ``catalog.csv`` and
      the triplet CSVs from its class folders.
    - ``download``: get each split's triplet CSV and the image archive (``source_override``: a
      folder holding files named as in the URLs, or the extracted archive folder).
    - ``local``: only check that the files exist.

    Steps whose output already exists are skipped unless ``force``. ``dest`` moves the dataset's
    home folder elsewhere (the manifest itself is not changed). Raises ``DataError`` or
    ``DownloadError`` with a one-line message; nothing falls back silently to another source.
    """
    splits = dataset_splits(name, _as_list(manifest))
    source = splits[0].source
    if dest is not None:
        if source == "local":
            raise DataError(f"{name} is a local dataset: its files stay where the manifest says (no --to)")
        splits = relocate(splits, dest)
    if sample_options and source != "generated":
        raise DataError(f"{name} is a {source} dataset: sample options apply only to the generated sample")
    if source_override is not None and source in ("generated", "local"):
        raise DataError(f"{name} is a {source} dataset: there is nothing to take from {source_override}")
    report = _reporter(progress)
    if source == "generated":
        _prepare_generated(splits, report, force, sample_options or {})
    elif source == "class-folders":
        _prepare_class_folders(splits, report, source_override, force)
    elif source == "download":
        _prepare_download(splits, report, source_override, force)
    missing = missing_files(splits)
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise DataError(f"dataset {name} is incomplete, missing: {shown}")
    return splits


def _reporter(progress: Progress | None) -> Progress:
    if progress is None:
        return lambda done, total, message="": None
    return progress


def _prepare_generated(splits: list[DatasetSplit], report: Progress, force: bool, options: dict) -> None:
    from mildnet.data import sample

    # The generator writes catalog.csv, {train,val,test}.csv and images/... into one folder, with image
    # paths relative to that folder (``images/<product>/catalog.jpg``): that folder is the image root.
    out_dir = splits[0].image_root
    for split in splits:
        wanted = {split.triplets: out_dir / f"{split.split}.csv", split.catalog: out_dir / "catalog.csv"}
        if any(path != want for path, want in wanted.items()):
            raise DataError(
                f"{split.dataset}: a generated sample lives in one folder: image_root {out_dir}, "
                f"triplets {out_dir}/<split>.csv, catalog {out_dir}/catalog.csv"
            )
    if not force and sample.is_sample_complete(out_dir):
        return
    report(0, None, "rendering sample")
    sample.generate_sample(out_dir, progress=lambda done, total: report(done, total, "rendering sample"), **options)


def _prepare_class_folders(splits: list[DatasetSplit], report: Progress, override, force: bool) -> None:
    first = splits[0]
    if force or not _non_empty_dir(first.image_root):
        _obtain_images(first, report, override)
    targets = [s.triplets for s in splits] + ([first.catalog] if first.catalog else [])
    if not force and all(p.is_file() for p in targets):
        return
    from mildnet.data.catalog import catalog_from_folder, generate_triplets, write_catalog
    from mildnet.data.triplets import write_triplets

    report(0, None, "building catalog and triplets")
    catalog = catalog_from_folder(first.image_root)
    tables = generate_triplets(catalog, seed=0)
    if first.catalog:
        write_catalog(first.catalog, catalog)
    for split in splits:
        write_triplets(split.triplets, tables[split.split])


def _prepare_download(splits: list[DatasetSplit], report: Progress, override, force: bool) -> None:
    folder = None
    if override is not None:
        from mildnet.data.fetch import local_path

        folder = local_path(override)
        if not folder.is_dir():
            raise DataError(
                f"--from for {splits[0].dataset} must be a folder holding its files "
                f"({', '.join(_file_names(splits))}); {folder} is not a folder"
            )
    from mildnet.data.fetch import download

    first = splits[0]
    todo = [s for s in splits if force or not s.triplets.is_file()]
    need_images = force or not _non_empty_dir(first.image_root)
    # Resolve every local source before copying anything, so a folder missing one file fails at once
    # instead of after the others were copied.
    sources = {s.split: _from_folder(folder, s.url) if folder is not None else s.url for s in todo}
    images = _images_in_folder(folder, first) if folder is not None and need_images else None
    for split in todo:
        label = _url_name(split.url)
        download(sources[split.split], split.triplets, sha256=split.sha256 or None, force=True,
                 progress=lambda done, total, label=label: report(done, total, label))
    if need_images:
        _obtain_images(first, report, images)


def _images_in_folder(folder: Path, first: DatasetSplit) -> Path:
    """The image archive in an override folder, or the folder it was already extracted to."""
    if first.images_url:
        archive = folder / _url_name(first.images_url)
        if archive.is_file():
            return archive
    if first.archive_dir and any(folder.glob(first.archive_dir)):
        from mildnet.data.fetch import find_subdir

        return folder / find_subdir(folder, first.archive_dir)
    wanted = " or ".join(
        ([_url_name(first.images_url)] if first.images_url else [])
        + ([f"the extracted folder {first.archive_dir}/"] if first.archive_dir else [])
    )
    raise DataError(f"{folder} has no images for {first.dataset} (expected {wanted or 'an image archive'})")


def _file_names(splits: list[DatasetSplit]) -> list[str]:
    names = [_url_name(s.url) for s in splits if s.url]
    if splits[0].images_url:
        names.append(_url_name(splits[0].images_url))
    return names


def _from_folder(folder: Path, url: str) -> Path:
    path = folder / _url_name(url)
    if not path.is_file():
        raise DataError(f"{folder} has no {_url_name(url)} (expected a local copy of {url})")
    return path


def _url_name(url: str) -> str:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"


def _obtain_images(first: DatasetSplit, report: Progress, override) -> None:
    """Fill ``first.image_root`` from the override (archive or folder) or the dataset's images_url."""
    from mildnet.data.fetch import download, extract, find_subdir, local_path, sha256_file

    image_root = first.image_root
    src = override if override is not None else first.images_url
    if not src:
        raise DataError(f"{first.dataset} has no images_url in the manifest; pass a local copy (--from PATH)")
    downloaded = None
    if override is not None:
        path = local_path(override)
        _refuse_overlap(path, image_root)
        if path.is_dir():
            inner = path
            if first.archive_dir and any(path.glob(first.archive_dir)):
                inner = path / find_subdir(path, first.archive_dir)
            _clear(image_root)
            report(0, None, f"copying {inner}")
            download(inner, image_root)
            return
        if not path.is_file():
            raise DownloadError(f"no such file or folder: {path}")
        if first.images_sha256:
            report(0, None, f"verifying {path.name}")
            actual = sha256_file(path)
            if actual != first.images_sha256:
                raise DownloadError(
                    f"checksum mismatch for {path}: expected sha256 {first.images_sha256}, got {actual}"
                )
        archive = path
    else:
        name = _url_name(first.images_url)
        archive = image_root.parent / "downloads" / name
        download(first.images_url, archive, sha256=first.images_sha256 or None,
                 progress=lambda done, total: report(done, total, name))
        downloaded = archive
    _clear(image_root)
    extract(archive, image_root, subdir=first.archive_dir or None,
            progress=lambda done, total: report(done, total, f"extracting {archive.name} (files)"))
    if downloaded is not None:
        # The extracted folder is what we use; keeping a second copy of a large archive wastes disk.
        downloaded.unlink()
        try:
            downloaded.parent.rmdir()
        except OSError:
            pass  # other files still there


def _refuse_overlap(source: Path, image_root: Path) -> None:
    # image_root is emptied before it is filled: a source inside it (or holding it) would be destroyed
    # or copied into itself.
    src, root = source.resolve(), image_root.resolve()
    if src == root or root in src.parents or src in root.parents:
        raise DataError(f"--from {source} overlaps the dataset's image folder {image_root}; use a copy elsewhere")


def _clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
