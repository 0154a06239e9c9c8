"""``check_triplets`` on the real MILDNet triplet CSVs vs a naive baseline.

Data: ``../shared/data/mildnet-csv/*.csv`` (tops_train_shuffle, tops_val_full, tops_test: ~100k rows, ~300k
image names). Skipped with a message if absent. The photos these CSVs name are not shipped, so the image
root is a temporary folder where ``--present`` of the referenced names exist (symlinks to one real photo
from clothing-dataset-small when available, so ``verify_image`` runs on them) and the rest are missing.

Baseline (what a first script would do): ``pandas.read_csv`` per file, ``os.path.exists`` per distinct image
name, a per-row Python loop for empty/degenerate/duplicate rows, ``PIL verify`` per present image, and the
leak check with Python sets.

    python bench/bench_check.py              # --present 2000, one repeat
    python bench/bench_check.py --full       # --present 20000, best of 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CSV_DIR = C.SHARED_DATA / "mildnet-csv"
PHOTOS = C.SHARED_DATA / "clothing-dataset-small"


def naive_check(root: Path, files: list[Path]) -> dict:
    import pandas as pd
    from PIL import Image

    frames, problems = {}, 0
    for f in files:
        df = pd.read_csv(f, header=None, names=["query", "positive", "negative"], dtype=str, keep_default_na=False)
        seen = set()
        keep = []
        for row in df.itertuples(index=False):
            cells = (row.query.strip(), row.positive.strip(), row.negative.strip())
            if not all(cells) or cells in seen or cells[2] in (cells[0], cells[1]):
                problems += 1
                continue
            seen.add(cells)
            keep.append(cells)
        frames[f.stem] = keep
    names = sorted({n for rows in frames.values() for r in rows for n in r})
    missing = [n for n in names if not os.path.exists(root / n)]
    unreadable = 0
    for n in names:
        if os.path.exists(root / n):
            try:
                with Image.open(root / n) as im:
                    im.verify()
            except Exception:  # noqa: BLE001 - baseline
                unreadable += 1
    leaks = 0
    stems = list(frames)
    for i, a in enumerate(stems):
        for b in stems[i + 1:]:
            ta, tb = set(frames[a]), set(frames[b])
            qa, qb = {r[0] for r in frames[a]}, {r[0] for r in frames[b]}
            leaks += bool(ta & tb or qa & qb)
    return {"images": len(names), "missing": len(missing), "unreadable": unreadable, "leaks": leaks,
            "row_problems": problems}


def make_root(tmp: Path, files: list[Path], present: int) -> int:
    """Image root with ``present`` of the referenced names present (symlinks to one real JPEG)."""
    from mildnet.data.triplets import read_triplets

    names = sorted(set().union(*(read_triplets(f).images for f in files)))
    photo = next(iter(sorted(PHOTOS.rglob("*.jpg"))), None) if PHOTOS.is_dir() else None
    if photo is None:  # a tiny JPEG of our own
        from PIL import Image
        photo = tmp / "_photo.jpg"
        Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    root = tmp / "images"
    root.mkdir()
    for n in names[:: max(1, len(names) // max(present, 1))][:present]:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(photo.resolve(), root / n)
    return len(names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--present", type=int, default=None, help="referenced images present under the root")
    p.add_argument("--repeat", type=int, default=None, help="best of N runs")
    p.add_argument("--full", action="store_true", help="--present 20000, best of 3")
    args = p.parse_args(argv)
    present = args.present if args.present is not None else (20000 if args.full else 2000)
    repeat = args.repeat or (3 if args.full else 1)

    files = sorted(CSV_DIR.glob("*.csv")) if CSV_DIR.is_dir() else []
    if not files:
        print(f"SKIP bench_check: no MILDNet CSVs under {CSV_DIR} (put tops_*.csv there to run it)")
        return 0
    from mildnet.data.triplets import check_triplets

    n_rows = sum(1 for f in files for line in f.open() if line.strip())
    print(C.machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        n_images = make_root(Path(tmp), files, present)
        root = Path(tmp) / "images"
        print(f"{len(files)} files, {n_rows:,} rows, {n_images:,} distinct images, {present:,} present "
              f"under the root\n", flush=True)
        t_naive, naive = C.best_of(lambda: naive_check(root, files), repeat)
        t_fast, report = C.best_of(lambda: check_triplets(root, files), repeat)
        t_noverify, _ = C.best_of(lambda: check_triplets(root, files, verify_images=False), repeat)
    counts = report.counts()
    same = (counts.get("missing", 0) == naive["missing"] and counts.get("unreadable", 0) == naive["unreadable"]
            and report.n_images == naive["images"])
    rows = [
        ["baseline: pandas + os.path.exists per name + row loop", n_rows, t_naive, n_rows / t_naive, "1.0x"],
        ["check_triplets (verify_images=True)", n_rows, t_fast, n_rows / t_fast, C.ratio(t_naive, t_fast)],
        ["check_triplets (verify_images=False)", n_rows, t_noverify, n_rows / t_noverify,
         C.ratio(t_naive, t_noverify)],
    ]
    C.print_table(
        "Triplet check on the MILDNet CSVs",
        ["method", "rows", "seconds", "rows/s", "ratio vs baseline"], rows,
        notes=[f"check_triplets: {report.n_images:,} images, {counts.get('missing', 0):,} missing, "
               f"{counts.get('unreadable', 0):,} unreadable, {len(report.leaks)} leak(s); "
               f"baseline agrees on counts: {same}",
               f"best of {repeat} run(s); present images are symlinks to one real JPEG (page cache warm)"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
