"""``python -m mildnet data ...``: sample, check, triplets, fetch, and your own catalogue: add, list, remove."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mildnet.cli.common import UsageError
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
    triplets.add_argument("--images", required=True, type=Path,
                          help="image folder (class sub-folders or with --labels)")
    triplets.add_argument("--labels", type=Path,
                          help="CSV with image and product/label columns (optional category, split)")
    triplets.add_argument("--out", required=True, type=Path, help="output folder for catalog.csv, train/val/test.csv")
    triplets.add_argument("--per-query", type=int, default=2, help="triplets per query image")
    triplets.add_argument("--seed", type=int, default=0)
    triplets.set_defaults(func=cmd_triplets)

    fetch = commands.add_parser("fetch", help="download (or import from a local copy) a registered dataset")
    fetch.add_argument("name", help="dataset name in data_manifest.csv")
    fetch.add_argument("--to", type=Path, help="destination folder (default: the manifest's paths)")
    fetch.add_argument("--from", dest="source", help="local file or folder to use instead of downloading")
    fetch.set_defaults(func=cmd_fetch)

    add = commands.add_parser(
        "add", help="register your own image folder as a dataset (searchable at once; triplets generated)",
        description="Register a folder of product photos without editing data_manifest.csv: class sub-folders, "
        "a folder plus a labels CSV, or a flat folder with no labels (then triplets are instance-level: the "
        "positive is an augmented view of the query's own photo). Derived files go to data/NAME/, never into "
        "your folder; splits are assigned by product, seeded.",
    )
    add.add_argument("name", help="dataset name (letters, digits, '.', '_', '-')")
    add.add_argument("--images", required=True, type=Path, help="your image folder (only read)")
    add.add_argument("--labels", type=Path, help="CSV: image, product_id/label, optional category, split")
    add.add_argument("--copy", action="store_true", help="copy the images into data/NAME/images first")
    add.add_argument("--seed", type=int, default=0, help="seed of the split assignment, triplets and views")
    add.set_defaults(func=cmd_add)

    listing = commands.add_parser("list", help="registered datasets: source, images, triplets, embeddings, state")
    listing.add_argument("--store", help="embedding store to look in (default: the app's and the shipped runs')")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(func=cmd_list)

    refresh = commands.add_parser(
        "refresh", help="follow the folder a dataset was added from: new photos in, removed ones out",
        description="For a dataset added with `data add` (or from the app): views and links for new or replaced "
        "photos only, removed photos dropped, existing photos keep their split, triplets regenerated. Then "
        "`embed --dataset NAME` embeds just the new photos (a job to run after each catalogue upload).")
    refresh.add_argument("name", help="the dataset's name")
    refresh.set_defaults(func=cmd_refresh)
    remove = commands.add_parser("remove", help="unregister a dataset added with `data add` (your images stay)")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_remove)


def cmd_sample(args: argparse.Namespace) -> int:
    from mildnet.data.sample import generate_sample

    options = {"size": args.size, "seed": args.seed}
    if args.products is not None:
        options["products"] = args.products
    try:
        with ProgressBar("rendering") as bar:
            out = generate_sample(args.out, progress=bar.update, **options)
    except ValueError as exc:  # out-of-range --products/--size/--seed: an argument error, no traceback
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
        raise UsageError("--per-query must be at least 1")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder; choose an output folder")
    catalog = catalog_from_folder(args.images, labels_csv=args.labels, seed=args.seed)
    splits = generate_triplets(catalog, per_query=args.per_query, seed=args.seed)
    write_catalog(args.out / "catalog.csv", catalog)
    for split, frame in splits.items():
        # An empty split file would fail every later check and training ("no triplets"): not written.
        if len(frame):
            write_triplets(args.out / f"{split}.csv", frame)
        else:
            (args.out / f"{split}.csv").unlink(missing_ok=True)
    counts = ", ".join(f"{split} {len(frame)}" for split, frame in splits.items())
    print(f"{len(catalog)} images, {catalog['product_id'].nunique()} products; triplets: {counts}")
    empty = [split for split, frame in splits.items() if not len(frame)]
    if empty:
        print(f"not written: {', '.join(empty)} (no product has two images in that split)")
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


# --- your own catalogue -----------------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    from mildnet.data.manifest import name_problem
    from mildnet.data.user_datasets import add_dataset

    problem = name_problem(args.name)
    if problem:
        raise UsageError(problem)
    with ProgressBar("adding") as bar:
        result = add_dataset(args.name, args.images, labels=args.labels, copy=args.copy, seed=args.seed,
                             progress=lambda done, total, message="": bar.update(done, total, message))
    counts = ", ".join(f"{split} {n}" for split, n in result.triplets.items())
    kind = (f"instance-level triplets (no labels: positives are {result.views} augmented views of each photo)"
            if result.kind == "instance" else f"{result.products} products")
    print(f"added {result.name}: {result.photos} images, {kind}; triplets: {counts} ({result.seconds:.1f} s)")
    print(f"images: {result.origin} ({result.placement}); image root {result.image_root}; files in {result.home}")
    if not any(result.triplets.values()):
        print("warning: too few images for triplets; the catalogue is searchable, but not trainable", file=sys.stderr)
    if result.left_out:
        first = next(iter(result.left_out.items()))
        print(f"warning: {len(result.left_out)} image(s) left out, e.g. {first[0]!r}: {first[1]}", file=sys.stderr)
    print(f"search it: python -m mildnet embed --dataset {result.name} && "
          f"python -m mildnet search --dataset {result.name} --image PHOTO")
    return 0


def _list_stores(args: argparse.Namespace) -> list:
    """The store `data list` looks in: --store, else the one the app and `embed` use (:mod:`mildnet.home`)."""
    from mildnet.home import store_spec
    from mildnet.store import LocalStore, open_store

    spec = args.store or store_spec()
    if "://" not in spec and not Path(spec).expanduser().is_dir():
        return []  # nothing embedded yet: not a reason to create the folder
    return [open_store(spec) if "://" in spec else LocalStore(spec)]


def cmd_list(args: argparse.Namespace) -> int:
    import json

    from mildnet.data.user_datasets import overview

    stores = _list_stores(args)
    try:
        infos = overview(stores=stores)
    finally:
        for store in stores:
            store.close()
    if args.json:
        print(json.dumps({"datasets": [
            {"name": i.name, "source": i.source, "kind": i.kind, "added": i.added, "images": i.images,
             "triplets": i.triplets, "embedded": i.embedded, "state": i.state} for i in infos]}))
        return 0

    def cell(value) -> str:
        return "-" if value is None else str(value)

    header = ("name", "source", "images", "triplets train/val/test", "embedded with", "state")
    rows = []
    for info in infos:
        triplets = "/".join(cell(info.triplets.get(split)) for split in ("train", "val", "test"))
        if info.kind == "instance":
            triplets += " (instance-level)"
        rows.append((info.name, info.source, cell(info.images), triplets, "; ".join(info.embedded) or "-", info.state))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from mildnet.data.user_datasets import folder_changes, refresh_dataset

    changes = folder_changes(args.name)
    if not changes:
        print(f"{args.name}: the folder has not changed")
        return 0
    with ProgressBar("refreshing") as bar:
        result = refresh_dataset(args.name, progress=lambda done, total, message="": bar.update(done, total, message))
    counts = ", ".join(f"{split} {n}" for split, n in result.triplets.items())
    print(f"refreshed {result.name} ({result.changes.describe()}): {result.photos} images; triplets: {counts} "
          f"({result.seconds:.1f} s)")
    if result.left_out:
        first = next(iter(result.left_out.items()))
        print(f"warning: {len(result.left_out)} new image(s) left out, e.g. {first[0]!r}: {first[1]}", file=sys.stderr)
    print(f"embed the new photos: python -m mildnet embed --dataset {result.name}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from mildnet.data.user_datasets import remove_dataset

    result = remove_dataset(args.name)
    if result.deleted_upload is not None:
        print(f"unregistered {result.name}; deleted the photos unpacked from its uploaded zip: {result.deleted_upload}")
    else:
        print(f"unregistered {result.name}; your images in {result.origin} were not touched")
    if result.removed is not None:
        print(f"deleted its derived files: {result.removed}")
    elif result.kept:
        print(f"note: {result.kept}", file=sys.stderr)
    return 0
