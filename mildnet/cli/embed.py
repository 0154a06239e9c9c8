"""``python -m mildnet embed``: embed a catalog folder into a local or Redis store (cached, incremental)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mildnet.cli.common import (
    UsageError,
    add_index_arguments,
    add_model_arguments,
    add_store_arguments,
    catalogue_from_args,
    index_from_args,
    loaded_model_from_args,
    open_store_from_args,
)
from mildnet.cli.progress import ProgressBar


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
    add_index_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    parser.add_argument("--shard", metavar="I/N", help="embed only slice I of N (0-based) under a shard key")
    parser.add_argument("--merge-shards", type=int, metavar="N", help="merge the N stored shards into the full set")
    parser.add_argument("--rebuild", action="store_true", help="ignore any cached set and embed everything")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="stored precision: float16 halves the store's RAM and Redis bytes (recall@5 against "
                        "float32 0.9997 on real photos); give it on every embed of that set (default float32)")
    parser.set_defaults(func=cmd_embed)


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
    from mildnet.search.engine import SearchEngine

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
    index, index_options = index_from_args(args)
    catalogue = catalogue_from_args(args)
    model = loaded_model_from_args(args)
    store = open_store_from_args(args)
    try:
        print(f"store: {store.describe()}")
        key = emb.cache_key(catalogue.name, model.fingerprint)
        if args.merge_shards is not None:
            merged = emb.merge_shards(store, key, args.merge_shards)
            print(f"key: {key}")
            print(f"images: {len(merged)}  dim: {merged.dim}")
            print(f"cache: merged {args.merge_shards} shard(s)")
            print_skipped(merged.meta.get("skipped", []))
            _describe_calibration(SearchEngine.open(model, catalogue, store, index=index, index_options=index_options))
            return 0
        if shard is not None:
            # A slice of a job spread over machines: only its vectors, merged (and calibrated) later.
            with ProgressBar("embedding") as bar:
                result = emb.update_catalog(
                    model.model, catalogue.image_root, store, list(catalogue.ids), dataset=catalogue.name,
                    image_size=model.image_size, batch_size=args.batch_size, progress=bar.update, shard=shard,
                    model_fp=model.fingerprint, model_name=model.name,
                    extra_meta={"include": list(catalogue.include), "source": model.label})
            _print_result(result)
            print(f"shard {shard[0]}/{shard[1]} stored; merge with --merge-shards {shard[1]} once all are done")
            return 0
        # The index back end is built (or brought in step: a Milvus collection) over the new set by update().
        engine = SearchEngine.open(model, catalogue, store, calibrate=False, index=index, index_options=index_options)
        with ProgressBar("embedding") as bar:
            result = engine.update(bar.update, batch_size=args.batch_size, rebuild=args.rebuild)
        _print_result(result)
        _describe_calibration(engine)
        return 0
    finally:
        store.close()


def _print_result(result) -> None:
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


def _describe_calibration(engine) -> None:
    from mildnet.catalogue_calibration import describe

    found, note = engine.catalogue_calibration
    if found is not None:
        print(describe(found))
    if note:
        print(f"note: {note}", file=sys.stderr)
