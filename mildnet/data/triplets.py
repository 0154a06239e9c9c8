"""Triplet files in the MILDNet format: CSV, no header, ``query,positive,negative`` image paths.

Paths are relative to an image root (the reference code does ``img_path + row[0]``). Reading never
crashes on a bad row: :func:`read_triplets` keeps the good rows and lists what is wrong with the
others, and :func:`check_triplets` adds file-system checks (missing or unreadable images) and the
leak check between splits, all as a :class:`CheckReport`.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from mildnet.data import csv_rows, read_text_file
from mildnet.data.cells import escape_frame, unescape

COLUMNS = ("query", "positive", "negative")

# How many examples of one kind of problem a report lists; the count is always exact.
EXAMPLES = 5


@dataclass(frozen=True)
class Problem:
    kind: str  # malformed | empty | unsafe | duplicate | degenerate | missing | unreadable
    file: str
    line: int | None  # 1-based line in the triplet file; None for image-level problems
    detail: str


@dataclass
class TripletFile:
    """The good rows of one triplet file and the problems found while reading it."""

    path: Path
    triplets: pd.DataFrame  # columns query, positive, negative, line
    problems: list[Problem] = field(default_factory=list)
    n_rows: int = 0

    @property
    def images(self) -> set[str]:
        return set(self.triplets["query"]) | set(self.triplets["positive"]) | set(self.triplets["negative"])


def unsafe_reason(name: str) -> str | None:
    """Why an image name may not be used under an image root (escapes it), or None if it is safe."""
    # Fast path for the common case (called for every cell of 100k-row files): without these
    # characters a name can neither be absolute nor climb out of the root.
    if ".." not in name and ":" not in name and "\\" not in name and not name.startswith("/") and "\0" not in name:
        return None
    if "\0" in name:
        return "NUL character in the name"  # no file system accepts it; open() would raise, not report
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' escapes the image root"
    return None


def read_triplets(path: str | os.PathLike) -> TripletFile:
    """Read a MILDNet triplet CSV; malformed, empty, unsafe, duplicate and degenerate rows are
    reported, not returned. Raises DataError only when the file itself cannot be read."""
    path = Path(path)
    text = read_text_file(path, "triplet file")
    return parse_triplets(text, name=str(path), path=path)


def parse_triplets(text: str, name: str = "<triplets>", path: Path | None = None) -> TripletFile:
    problems: list[Problem] = []
    rows: list[tuple[str, str, str, int]] = []
    seen: dict[tuple[str, str, str], int] = {}
    n_rows = 0
    for line_no, row, error in csv_rows(text):
        if error is not None:
            n_rows += 1
            problems.append(Problem("malformed", name, line_no, error))
            continue
        if not row or all(not cell.strip() for cell in row):
            continue  # blank lines are harmless
        if n_rows == 0 and [cell.strip().lower() for cell in row] == list(COLUMNS):
            continue  # a header row (the format has none, but spreadsheets add one): not a triplet
        n_rows += 1
        if len(row) != 3:
            problems.append(Problem("malformed", name, line_no, f"expected 3 columns, found {len(row)}"))
            continue
        # Windows-style separators name the same file as '/' ones; normalising here means the check,
        # training and search all open exactly the path that was validated.
        cells = tuple(unescape(cell.strip()).replace("\\", "/") for cell in row)
        if not all(cells):
            problems.append(Problem("empty", name, line_no, "empty image name"))
            continue
        unsafe = next(((c, r) for c in cells if (r := unsafe_reason(c))), None)
        if unsafe:
            problems.append(Problem("unsafe", name, line_no, f"{unsafe[0]!r}: {unsafe[1]}"))
            continue
        if cells in seen:
            problems.append(Problem("duplicate", name, line_no, f"same triplet as line {seen[cells]}"))
            continue
        seen[cells] = line_no
        query, positive, negative = cells
        if negative in (query, positive):
            problems.append(Problem("degenerate", name, line_no, "negative is the query or the positive"))
            continue
        if positive == query:  # distance 0 by construction: it teaches and measures nothing
            problems.append(Problem("degenerate", name, line_no, "positive is the query itself"))
            continue
        rows.append((query, positive, negative, line_no))
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "line"])
    return TripletFile(path=path or Path(name), triplets=frame, problems=problems, n_rows=n_rows)


def write_triplets(path: str | os.PathLike, triplets: pd.DataFrame) -> Path:
    """Write triplets in the MILDNet format (no header), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    escape_frame(triplets.loc[:, list(COLUMNS)]).to_csv(tmp, header=False, index=False, lineterminator="\n")
    os.replace(tmp, path)
    return path


# --- checks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leak:
    split_a: str
    split_b: str
    shared_triplets: int
    shared_queries: int
    n_a: int
    n_b: int

    def describe(self) -> str:
        parts = []
        if self.shared_triplets:
            share = self.shared_triplets / max(self.n_a, 1)
            parts.append(
                f"{self.shared_triplets} triplets of {self.split_a} ({share:.0%}) also appear in {self.split_b}"
            )
        if self.shared_queries:
            parts.append(f"{self.shared_queries} query images of {self.split_a} are also queries in {self.split_b}")
        if self.shared_triplets == self.n_a:
            parts[0] = f"all {self.n_a} triplets of {self.split_a} also appear in {self.split_b}"
        return "; ".join(parts)


@dataclass
class CheckReport:
    image_root: Path
    files: list[TripletFile]
    image_problems: list[Problem]
    leaks: list[Leak]
    n_images: int
    bad_images: frozenset[str] = frozenset()  # missing or unreadable, as named in the triplet files

    @property
    def problems(self) -> list[Problem]:
        return [p for f in self.files for p in f.problems] + self.image_problems

    @property
    def ok(self) -> bool:
        return not self.problems and not self.leaks

    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def format(self) -> str:
        lines = [f"image root: {self.image_root}"]
        for f in self.files:
            lines.append(
                f"{f.path}: {f.n_rows} rows, {len(f.triplets)} valid triplets, {len(f.images)} distinct images"
            )
        lines.append(f"{self.n_images} distinct images referenced")
        by_kind: dict[str, list[Problem]] = {}
        for problem in self.problems:
            by_kind.setdefault(problem.kind, []).append(problem)
        if not by_kind and not self.leaks:
            lines.append("no problems found")
        for kind, items in by_kind.items():
            lines.append(f"{kind}: {len(items)}")
            for p in items[:EXAMPLES]:
                where = f"{p.file}:{p.line}" if p.line is not None else p.file
                lines.append(f"  {where}: {p.detail}")
            if len(items) > EXAMPLES:
                lines.append(f"  ... and {len(items) - EXAMPLES} more")
        for leak in self.leaks:
            lines.append(f"leak: {leak.describe()}")
        return "\n".join(lines)


def split_name(path: Path) -> str:
    """A readable split name from a triplet file name (``tops_val_full.csv`` -> ``tops_val_full``)."""
    return path.stem


def find_leaks(files: dict[str, pd.DataFrame]) -> list[Leak]:
    """Triplets, or query images, shared by two splits; each pair is reported once, from the smaller
    split's side ("all 7000 triplets of test also appear in val")."""
    keyed = {
        name: (set(zip(df["query"], df["positive"], df["negative"])), set(df["query"]), len(df))
        for name, df in files.items()
    }
    ordered = sorted(keyed, key=lambda name: (keyed[name][2], name))
    leaks = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            triplets_a, queries_a, n_a = keyed[a]
            triplets_b, queries_b, n_b = keyed[b]
            shared_triplets = len(triplets_a & triplets_b)
            shared_queries = len(queries_a & queries_b)
            if shared_triplets or shared_queries:
                leaks.append(Leak(a, b, shared_triplets, shared_queries, n_a, n_b))
    return leaks


def _existing_files(root: Path) -> set[str]:
    found = set()
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        found.update(prefix + name for name in filenames)
    return found


def check_triplets(
    image_root: str | os.PathLike,
    triplet_files: list[str | os.PathLike],
    verify_images: bool = True,
    workers: int = 8,
) -> CheckReport:
    """Validate triplet files against an image root: bad rows, missing and unreadable images, leaks.

    Fast on large files: the root is listed once (not one ``stat`` a name), so 100k rows of missing
    images take about a second.
    """
    from mildnet.data.images import verify_image

    root = Path(image_root)
    files = [read_triplets(p) for p in triplet_files]
    referenced = sorted(set().union(*(f.images for f in files))) if files else []
    # A file with nothing to train or evaluate on is a problem, not a clean pass with 0 triplets.
    image_problems: list[Problem] = [
        Problem("no triplets", str(f.path), None, f"{f.n_rows} rows, none of them a usable triplet")
        for f in files if f.triplets.empty
    ]
    existing = _existing_files(root) if root.is_dir() else set()
    missing = [name for name in referenced if name not in existing]
    if root.is_dir():
        image_problems.extend(Problem("missing", name, None, "file not found under the image root") for name in missing)
    else:
        detail = f"image root does not exist: all {len(referenced)} referenced images are missing"
        image_problems.append(Problem("missing", str(root), None, detail))
    if verify_images and existing:
        present = [name for name in referenced if name in existing]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = pool.map(lambda n: verify_image(root / n), present)
            image_problems.extend(
                Problem("unreadable", name, None, reason) for name, reason in zip(present, reasons) if reason
            )
    names = [split_name(f.path) for f in files]
    # Two files with the same stem (train.csv in two folders) keep their full paths as names.
    if len(set(names)) != len(names):
        names = [str(f.path) for f in files]
    leaks = find_leaks({name: f.triplets for name, f in zip(names, files)})
    bad = set(missing) | {p.file for p in image_problems if p.kind == "unreadable"}
    return CheckReport(root, files, image_problems, leaks, len(referenced), frozenset(bad))


def usable_triplets(report: CheckReport) -> dict[str, pd.DataFrame]:
    """Per file, the valid rows whose three images exist and are readable."""
    bad = report.bad_images
    return {
        str(f.path): f.triplets[
            ~(f.triplets["query"].isin(bad) | f.triplets["positive"].isin(bad) | f.triplets["negative"].isin(bad))
        ].reset_index(drop=True)
        for f in report.files
    }
