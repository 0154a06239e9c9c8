"""``python -m mildnet data ...``: sample, check, triplets, fetch."""

from __future__ import annotations

import argparse
from pathlib import Path

from mildnet.cli.progress import ProgressBar


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="datasets: sample catalog, checks, triplets, downloads")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    sample = commands.add_parser("sample", help="generate the offline sample catalog")
    sample.add_argument("--out", required=True, type=Path, help="output folder")
    sample.add_argument("--products", type=int, default=None, help="number of products")
    sample.add_argument("--size", type=int, default=128, help="image size in pixels")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=cmd_sample)

    check = commands.add_parser(
        "check", help="validate triplet files against an image folder (exit 0 clean, 1 problems)"
    )
    check.add_argument("--images", required=True, type=Path, help="image root the triplet paths are relative to")
    check.add_argument("--triplets", required=True, nargs="+", type=Path, metavar="CSV")
    check.add_argument("--no-verify", action="store_true", help="skip opening each image")
    check.set_defaults(func=cmd_check)

    triplets = commands.add_parser("triplets", help="generate triplets from a labelled image folder")
    triplets.add_argument("--images", required=True, type=Path, help="image folder (class sub-folders or with --labels)")
    triplets.add_argument("--labels", type=Path, help="CSV with image and product/label columns (optional category, split)")
    triplets.add_argument("--out", required=True, type=Path, help="output folder for catalog.csv, train/val/test.csv")
    triplets.add_argument("--per-query", type=int, default=2, help="triplets per query image")
    triplets.add_argument("--seed", type=int, default=0)
    triplets.set_defaults(func=cmd_triplets)

    fetch = commands.add_parser("fetch", help="download (or import from a local copy) a registered dataset")
    fetch.add_argument("name", help="dataset name in data_manifest.csv")
    fetch.add_argument("--to", type=Path, help="destination folder (default: the manifest's paths)")
    fetch.add_argument("--from", dest="source", help="local file or folder to use instead of downloading")
    fetch.set_defaults(func=cmd_fetch)


def cmd_sample(args: argparse.Namespace) -> int:
    from mildnet.data.sample import generate_sample

    options = {"size": args.size, "seed": args.seed}
    if args.products is not None:
        options["products"] = args.products
    try:
        with ProgressBar("rendering") as bar:
            out = generate_sample(args.out, progress=bar.update, **options)
    except ValueError as exc:  # out-of-range --products/--size/--seed: an argument error, no traceback
        from mildnet.cli import UsageError

        raise UsageError(str(exc)) from None
    print(f"sample catalog written to {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mildnet.data.triplets import check_triplets

    report = check_triplets(args.images, args.triplets, verify_images=not args.no_verify)
    print(report.format())
    return 0 if report.ok else 1


def cmd_triplets(args: argparse.Namespace) -> int:
    from mildnet.data.catalog import catalog_from_folder, generate_triplets, write_catalog
    from mildnet.data.triplets import write_triplets

    if args.per_query < 1:
        from mildnet.cli import UsageError

        raise UsageError("--per-query must be at least 1")
    if args.out.exists() and not args.out.is_dir():
        from mildnet.cli import UsageError

        raise UsageError(f"--out {args.out} exists and is not a folder; choose an output folder")
    catalog = catalog_from_folder(args.images, labels_csv=args.labels, seed=args.seed)
    splits = generate_triplets(catalog, per_query=args.per_query, seed=args.seed)
    write_catalog(args.out / "catalog.csv", catalog)
    for split, frame in splits.items():
        write_triplets(args.out / f"{split}.csv", frame)
    counts = ", ".join(f"{split} {len(frame)}" for split, frame in splits.items())
    print(f"{len(catalog)} images, {catalog['product_id'].nunique()} products; triplets: {counts}")
    print(f"written to {args.out} (image root: {args.images})")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from mildnet.data.manifest import prepare

    with ProgressBar("fetching") as bar:

        def progress(done, total, message=""):
            # Downloads count bytes; the other stages (rendering, extracting, copying) count files.
            counts_files = message.startswith(("rendering", "extracting", "building", "copying", "verifying"))
            bar.update(done, total, message, unit="" if counts_files else "B")

        splits = prepare(args.name, progress=progress, source_override=args.source, dest=args.to)
    for split in splits:
        print(f"{split.dataset}/{split.split}: triplets {split.triplets}, images {split.image_root}")
    return 0
