"""What several commands share: :class:`UsageError`, the model and store options, loading the model they name
(a training run through :mod:`mildnet.runs`, or a zoo model) and the catalogue they name (the search engine's
:class:`~mildnet.search.catalogue.Catalogue`)."""

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


class EmbeddingsMissing(MildnetError):
    """The store holds no embeddings for this model (the user has to run ``embed`` first)."""


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


def _check_model_choice(args: argparse.Namespace) -> None:
    """--run or --model, not both, each with its own options; neither means the shipped default run."""
    if args.run is not None and args.model is not None:
        raise UsageError("give one of --run RUN_DIR or --model NAME, not both")
    if args.run is None and args.model is None:
        if args.weights or args.image_size or args.embedding_dim:
            raise UsageError("--weights/--image-size/--embedding-dim go with --model NAME")
        args.run = use_default_run(args)
    if args.run is not None and (args.weights or args.image_size or args.embedding_dim):
        raise UsageError("--weights/--image-size/--embedding-dim go with --model, not --run (the run has its own)")


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    from mildnet.search.index import index_names

    parser.add_argument("--index", metavar="INDEX",
                        help=f"index back end that finds the nearest products: {', '.join(index_names())}, or "
                        "milvus://HOST:PORT for a Milvus server (default: $MILDNET_INDEX, else exact)")


def index_from_args(args: argparse.Namespace) -> tuple[str, dict]:
    """``(back end name, options)`` for ``SearchEngine.open`` from --index (usage error for an unknown one)."""
    from mildnet.errors import DataError
    from mildnet.home import index_spec
    from mildnet.search.index import parse_index_spec

    try:
        return parse_index_spec(getattr(args, "index", None) or index_spec())
    except DataError as exc:
        raise UsageError(str(exc)) from None


def loaded_model_from_args(args: argparse.Namespace):
    """The :class:`~mildnet.search.model.LoadedModel` of --run, or of --model/--weights/--image-size/
    --embedding-dim; neither: the shipped default run."""
    # Imported here: reading runs needs pandas and TensorFlow, which `--help` and the data commands do not.
    from mildnet.search.model import LoadedModel

    _check_model_choice(args)
    if args.run is not None:
        return LoadedModel.from_run(args.run)
    # A fixed seed makes a randomly initialised network (and so its fingerprint and cache key) the same in
    # every invocation, so `search --model NAME` finds what `embed --model NAME` stored.
    model, size = build_model_from_args(args, seed=0)
    return LoadedModel.from_keras(model, {"model": args.model, "image_size": size, "weights": args.weights or "none"})


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


# --- the catalogue (embed, search, serve) ------------------------------------------------------------------


def _find_key(store, model_fp: str, run_hint: str) -> str:
    """The one catalogue this model embedded in the store, when the arguments name none."""
    suffix = "/" + model_fp[:16]
    candidates = [k for k in store.keys() if k.endswith(suffix)]
    if not candidates:
        raise EmbeddingsMissing(
            f"no embeddings for this model (fingerprint {model_fp[:16]}) in {store.describe()}; "
            f"run `python -m mildnet embed {run_hint} --images DIR` with the same store first")
    if len(candidates) > 1:
        shown = ", ".join(k.rsplit("/", 1)[0] for k in candidates)
        raise UsageError(f"several catalogs are embedded with this model ({shown}); "
                         "pass --images DIR or --dataset NAME")
    return candidates[0]


def catalogue_from_args(args: argparse.Namespace, store=None, model_fp: str | None = None, run_hint: str = ""):
    """The :class:`~mildnet.search.catalogue.Catalogue` the arguments name: --images DIR (--dataset then only
    names its store key, and labels it when registered), a registered --dataset, or (``store`` given) the
    catalogue an earlier `embed` stored for this model, found by its key."""
    from mildnet.data import manifest
    from mildnet.embeddings import cache_key
    from mildnet.search.catalogue import Catalogue, catalogue_name

    registered = bool(args.dataset) and args.dataset in manifest.datasets()
    if args.images is not None:
        labels = manifest.dataset_splits(args.dataset)[0].catalog if registered else None
        return Catalogue.folder(args.images, name=args.dataset, include=args.include, catalog_path=labels)
    if registered:
        return Catalogue.registered(args.dataset, include=args.include)
    if store is None and args.dataset:
        raise UsageError(f"--dataset {args.dataset!r} is not a registered dataset (registered: "
                         f"{', '.join(manifest.datasets())}); give --images DIR, or register the folder with "
                         f"`python -m mildnet data add {args.dataset} --images DIR`")
    if store is None:
        raise UsageError("give --images DIR (a catalog folder) or --dataset NAME (a registered dataset, see "
                         "`python -m mildnet data list`)")
    # Not registered here: the folder recorded when it was embedded.
    if args.dataset:
        key = cache_key(catalogue_name(args.dataset, args.include), model_fp)
    else:
        key = _find_key(store, model_fp, run_hint)
    stored = store.get(key)
    if stored is None:
        raise EmbeddingsMissing(f"no embeddings under {key!r} in {store.describe()}; "
                                f"run `python -m mildnet embed {run_hint} --images DIR` with the same store first")
    return Catalogue(key.rsplit("/", 1)[0], Path(stored.meta.get("image_root") or "."), tuple(stored.ids),
                     include=tuple(stored.meta.get("include") or ()))
