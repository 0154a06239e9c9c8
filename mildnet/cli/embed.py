"""``python -m mildnet embed``: embed a catalog folder into a local or Redis store (cached, incremental)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

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


# --- shared with `search` --------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (--run or --model; default: the shipped real-photo model)")
    group.add_argument("--run", type=Path, help="training run folder (best.keras + config.json; default: "
                       "the shipped real-photo model, mildnet/pretrained/real)")
    group.add_argument("--model", help="zoo model name, for an untrained or ImageNet-initialised network")
    group.add_argument("--weights", help="with --model: 'imagenet', a backbone weights file, or none (random)")
    group.add_argument("--image-size", type=int, help="with --model: input side in pixels (default 224)")
    group.add_argument("--embedding-dim", type=int, help="with --model: embedding size (default: the model's)")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        help="folder or redis://host:port/db (default: $MILDNET_REDIS_URL, else RUN/embeddings with --run, "
        "else .mildnet/embeddings)",
    )
    parser.add_argument("--fallback-local", type=Path, metavar="PATH",
                        help="use a local store at PATH when Redis cannot be reached (with a warning)")


def load_model_from_args(args: argparse.Namespace):
    """``(model, config)`` from --run or --model/--weights/--image-size/--embedding-dim."""
    from mildnet.cli import UsageError

    if args.run is not None and args.model is not None:
        raise UsageError("give one of --run RUN_DIR or --model NAME, not both")
    if args.run is None and args.model is None:
        if args.weights or args.image_size or args.embedding_dim:
            raise UsageError("--weights/--image-size/--embedding-dim go with --model NAME")
        args.run = use_default_run(args)
    if args.run is not None:
        if args.weights or args.image_size or args.embedding_dim:
            raise UsageError("--weights/--image-size/--embedding-dim go with --model, not --run (the run has its own)")
        from mildnet.embeddings import open_run

        return open_run(args.run)
    import keras

    from mildnet.models import build_model

    size = check_model_arguments(args)
    # A fixed seed makes a randomly initialised network (and so its fingerprint and cache key) the same in
    # every invocation, so `search --model NAME` finds what `embed --model NAME` stored.
    keras.utils.set_random_seed(0)
    model = build_model(args.model, input_size=size, embedding_dim=args.embedding_dim, weights=args.weights)
    return model, {"model": args.model, "image_size": size, "weights": args.weights or "none"}


def check_model_arguments(args: argparse.Namespace) -> int:
    """The input size for --model NAME (default 224), after the checks ``train`` makes: a name, size or
    embedding size no zoo model accepts is a usage error (exit 2) in every command, not a model error."""
    from mildnet.cli import UsageError
    from mildnet.models.zoo import ModelArgumentError
    from mildnet.models.zoo import check_model_arguments as check

    size = 224 if args.image_size is None else args.image_size
    try:
        check(args.model, size, args.embedding_dim)
    except ModelArgumentError as exc:
        raise UsageError(str(exc)) from None
    return size


def use_default_run(args: argparse.Namespace) -> Path:
    """The shipped run used when neither --run nor --model is given, said on stderr (stdout may be JSON)."""
    from mildnet.pretrained import default_run_dir

    run = default_run_dir()
    print(f"model: {run} (the shipped default; choose another with --run or --model)", file=sys.stderr)
    return run


def open_store_from_args(args: argparse.Namespace):
    from mildnet.cli import UsageError
    from mildnet.store import DEFAULT_LOCAL_PATH, StoreURLError, open_store

    default_local = Path(args.run) / "embeddings" if getattr(args, "run", None) else Path(DEFAULT_LOCAL_PATH)
    store_log = logging.getLogger("mildnet.store")
    level = store_log.level
    # The fallback notice is both logged and warned; without logging configured the log copy would reach
    # stderr through logging's last-resort handler, printing the line twice.
    store_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = open_store(args.store, fallback_local=args.fallback_local, default_local=default_local,
                               dtype=getattr(args, "dtype", None))
    except StoreURLError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store_log.setLevel(level)
    for warning in caught:
        # One line on stderr instead of Python's two-line warning format with a source excerpt.
        print(f"warning: {warning.message}", file=sys.stderr)
    return store


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
    from mildnet.cli import UsageError

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
    from mildnet.cli import UsageError
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
        return 0
    finally:
        store.close()


def _source(args: argparse.Namespace, config: dict) -> str:
    if args.run is not None:
        return os.fspath(Path(args.run).resolve())
    return f"{config['model']} (weights: {config.get('weights')})"
