"""``python -m mildnet embed``: embed a catalog folder into a local or Redis store (cached, incremental)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mildnet.cli.common import (
    UsageError,
    add_model_arguments,
    add_store_arguments,
    load_model_from_args,
    open_store_from_args,
)
from mildnet.cli.progress import ProgressBar
from mildnet.errors import MildnetError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed a catalog of images into a store (reused when unchanged, updated incrementally)",
        description="Embed every image of a catalog folder with a trained run (or a zoo model) and store the "
        "matrix. A cached set is reused when neither the model nor the image files changed; when only "
        "images were added/removed/changed, just those are (re-)embedded.",
    )
    add_model_arguments(parser)
    parser.add_argument("--images", type=Path, help="catalog image folder (ids are paths relative to it); "
                        "default: the image folder of --dataset NAME")
    parser.add_argument("--include", action="append", metavar="PREFIX",
                        help="only images whose relative path starts with PREFIX (repeatable), e.g. validation/")
    parser.add_argument("--dataset", help="a registered dataset (`data list`): its images and catalogue when --images "
                        "is not given; always the name in the store key (default: the image folder's name)")
    add_store_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    parser.add_argument("--shard", metavar="I/N", help="embed only slice I of N (0-based) under a shard key")
    parser.add_argument("--merge-shards", type=int, metavar="N", help="merge the N stored shards into the full set")
    parser.add_argument("--rebuild", action="store_true", help="ignore any cached set and embed everything")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="stored precision: float16 halves the store's RAM and Redis bytes (recall@5 against "
                        "float32 0.9997 on real photos); give it on every embed of that set (default float32)")
    parser.set_defaults(func=cmd_embed)


def registered_catalog(name: str) -> tuple[Path, list[str]]:
    """``(image root, searchable ids)`` of registered dataset ``name``: its catalogue's images without the
    augmented views of an instance-level dataset (the app searches the same ids), else every image."""
    from mildnet.data import manifest
    from mildnet.data.catalog import gallery, read_catalog_for
    from mildnet.embeddings import catalog_ids
    from mildnet.errors import DataError

    splits = manifest.dataset_splits(name)
    missing = manifest.missing_files(splits)
    if missing:
        raise DataError(f"dataset {name} is not ready (missing {missing[0]}); "
                        f"run `python -m mildnet data fetch {name}` first")
    root = splits[0].image_root
    catalog = read_catalog_for(root, splits[0].catalog) if splits[0].catalog is not None else None
    if catalog is None:
        return root, catalog_ids(root)
    return root, list(gallery(catalog)["image"])


def is_registered(name: str | None) -> bool:
    from mildnet.data import manifest

    return bool(name) and name in manifest.datasets()


def catalog_from_args(args: argparse.Namespace) -> tuple[Path, list[str] | None]:
    """``(image folder, ids or None for "every image")``: --images as given (--dataset then only names the
    store key, as before), else the folder and catalogue of the registered dataset --dataset NAME."""
    if args.images is not None:
        return args.images, None
    if not args.dataset:
        raise UsageError("give --images DIR (a catalog folder) or --dataset NAME (a registered dataset, see "
                         "`python -m mildnet data list`)")
    if not is_registered(args.dataset):
        from mildnet.data import manifest

        raise UsageError(f"--dataset {args.dataset!r} is not a registered dataset (registered: "
                         f"{', '.join(manifest.datasets())}); give --images DIR, or register the folder with "
                         f"`python -m mildnet data add {args.dataset} --images DIR`")
    return registered_catalog(args.dataset)


def print_skipped(skipped: list[dict], limit: int = 5) -> None:
    if not skipped:
        return
    print(f"warning: {len(skipped)} unreadable image(s) skipped:", file=sys.stderr)
    for entry in skipped[:limit]:
        print(f"  {entry['id']}: {entry['reason']}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more (listed in the set's metadata)", file=sys.stderr)


# --- the command -------------------------------------------------------------------------------------------------


def cmd_embed(args: argparse.Namespace) -> int:
    from mildnet import embeddings as emb

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    shard = None
    if args.shard is not None:
        try:
            shard = emb.parse_shard(args.shard)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.merge_shards is not None:
        if shard is not None or args.rebuild:
            raise UsageError("--merge-shards cannot be combined with --shard or --rebuild")
        if args.merge_shards < 1:
            raise UsageError("--merge-shards needs the number of shards (at least 1)")

    # The catalogue is resolved before the model loads, so a wrong name fails at once.
    images, registered_ids = catalog_from_args(args)
    model, config = load_model_from_args(args)
    store = open_store_from_args(args)
    try:
        model_fp = emb.model_fingerprint(model)
        dataset = args.dataset or emb.dataset_name(images)
        if args.include:
            dataset += "+" + "+".join(p.strip("/") for p in args.include)
        key = emb.cache_key(dataset, model_fp)
        print(f"store: {store.describe()}")
        if args.merge_shards is not None:
            merged = emb.merge_shards(store, key, args.merge_shards)
            print(f"key: {key}")
            print(f"images: {len(merged)}  dim: {merged.dim}")
            print(f"cache: merged {args.merge_shards} shard(s)")
            print_skipped(merged.meta.get("skipped", []))
            _calibrate(args, store, key, merged, model, images)
            return 0
        if registered_ids is None:
            ids = emb.catalog_ids(images, include=args.include)
        else:
            ids = [i for i in registered_ids if not args.include or i.startswith(tuple(args.include))]
            if not ids:
                raise MildnetError(f"no images of {args.dataset} match --include {', '.join(args.include)}")
        with ProgressBar("embedding") as bar:
            result = emb.update_catalog(
                model, images, store, ids, dataset=dataset, image_size=config.get("image_size"),
                batch_size=args.batch_size, progress=bar.update, shard=shard, rebuild=args.rebuild,
                model_fp=model_fp, model_name=config.get("model"),
                extra_meta={"include": list(args.include or []), "source": _source(args, config)},
            )
        s = result.embeddings
        print(f"key: {result.key}")
        print(f"images: {len(s)}  dim: {s.dim}  image size: {s.meta['image_size']}")
        detail = {
            "reused": "reused (nothing changed)",
            "updated": f"updated ({result.embedded} embedded, {result.removed} removed)",
            "built": f"built ({result.embedded} embedded)",
            "rebuilt": f"rebuilt ({result.embedded} embedded)",
        }[result.status]
        print(f"cache: {detail} in {result.seconds:.1f} s")
        print_skipped(result.skipped)
        if shard is not None:
            print(f"shard {shard[0]}/{shard[1]} stored; merge with --merge-shards {shard[1]} once all are done")
        else:
            _calibrate(args, store, result.key, s, model, images)
        return 0
    finally:
        store.close()


def catalogue_calibration(args: argparse.Namespace, store, key: str, embeddings, model, images: Path):
    """``(calibration or None, note)``: the catalogue's own calibration, fitted now unless one is kept for
    this very set (so `search` finds it, and the scores mean the same for every query)."""
    from mildnet import catalogue_calibration as cc

    catalog = None
    if is_registered(getattr(args, "dataset", None)):
        from mildnet.data import manifest

        catalog = manifest.dataset_splits(args.dataset)[0].catalog
    labels = cc.catalogue_labels(images, catalog) if images.is_dir() else None
    return cc.refresh(store, key, embeddings, model if images.is_dir() else None, images, labels,
                      embeddings.meta.get("image_size"))


def _calibrate(args, store, key, embeddings, model, images: Path) -> None:
    from mildnet.catalogue_calibration import describe

    found, note = catalogue_calibration(args, store, key, embeddings, model, images)
    if found is not None:
        print(describe(found))
    if note:
        print(f"note: {note}", file=sys.stderr)


def _source(args: argparse.Namespace, config: dict) -> str:
    if args.run is not None:
        return os.fspath(Path(args.run).resolve())
    return f"{config['model']} (weights: {config.get('weights')})"
