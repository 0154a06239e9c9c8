"""What several commands share: :class:`UsageError`, the model and store options, and loading the model they
name (a training run through :mod:`mildnet.runs`, or a zoo model)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from mildnet.errors import MildnetError
from mildnet.pretrained import default_run_dir
from mildnet.runs import BEST_MODEL, CONFIG_FILE


class UsageError(MildnetError):
    """Bad combination of arguments that argparse itself cannot detect (exit code 2)."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (--run or --model; default: the shipped real-photo model)")
    group.add_argument("--run", type=Path, help=f"training run folder ({BEST_MODEL} + {CONFIG_FILE}; default: "
                       "the shipped real-photo model, mildnet/pretrained/real)")
    group.add_argument("--model", help="zoo model name, for an untrained or ImageNet-initialised network")
    group.add_argument("--weights", help="with --model: 'imagenet', a backbone weights file, or none (random)")
    group.add_argument("--image-size", type=int, help="with --model: input side in pixels (default 224)")
    group.add_argument("--embedding-dim", type=int, help="with --model: embedding size (default: the model's)")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        help="folder or redis://host:port/db (default: the app's: $MILDNET_STORE, else $MILDNET_REDIS_URL, else "
        "embeddings/ in the data home, $MILDNET_HOME or .mildnet)",
    )
    parser.add_argument("--fallback-local", type=Path, metavar="PATH",
                        help="use a local store at PATH when Redis cannot be reached (with a warning)")


def load_model_from_args(args: argparse.Namespace):
    """``(model, config)`` from --run or --model/--weights/--image-size/--embedding-dim."""
    # Imported here: reading runs needs pandas, which `--help` and the data commands do not.
    from mildnet.runs import open_run

    if args.run is not None and args.model is not None:
        raise UsageError("give one of --run RUN_DIR or --model NAME, not both")
    if args.run is None and args.model is None:
        if args.weights or args.image_size or args.embedding_dim:
            raise UsageError("--weights/--image-size/--embedding-dim go with --model NAME")
        args.run = use_default_run(args)
    if args.run is not None:
        if args.weights or args.image_size or args.embedding_dim:
            raise UsageError("--weights/--image-size/--embedding-dim go with --model, not --run (the run has its own)")
        return open_run(args.run)
    # A fixed seed makes a randomly initialised network (and so its fingerprint and cache key) the same in
    # every invocation, so `search --model NAME` finds what `embed --model NAME` stored.
    model, size = build_model_from_args(args, seed=0)
    return model, {"model": args.model, "image_size": size, "weights": args.weights or "none"}


def build_model_from_args(args: argparse.Namespace, seed: int):
    """``(model, input size)``: zoo model --model with --weights/--image-size/--embedding-dim, its untrained
    layers drawn with ``seed``."""
    import keras

    from mildnet.models import build_model

    size = check_model_arguments(args)
    keras.utils.set_random_seed(seed)
    return build_model(args.model, input_size=size, embedding_dim=args.embedding_dim, weights=args.weights), size


def check_model_arguments(args: argparse.Namespace) -> int:
    """The input size for --model NAME (default 224), after the checks ``train`` makes: a name, size or
    embedding size no zoo model accepts is a usage error (exit 2) in every command, not a model error."""
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
    run = default_run_dir()
    print(f"model: {run} (the shipped default; choose another with --run or --model)", file=sys.stderr)
    return run


def open_store_from_args(args: argparse.Namespace):
    from mildnet.home import store_spec
    from mildnet.store import StoreURLError, open_store

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # The app's store unless told otherwise: what one embedded, the other finds.
            store = open_store(args.store or store_spec(), fallback_local=args.fallback_local,
                               dtype=getattr(args, "dtype", None))
    except StoreURLError as exc:
        raise UsageError(str(exc)) from None
    for warning in caught:
        # One line on stderr instead of Python's two-line warning format with a source excerpt.
        print(f"warning: {warning.message}", file=sys.stderr)
    return store
