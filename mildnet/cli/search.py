"""``python -m mildnet search``: nearest catalog images for an image file or a catalog id."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mildnet.cli.common import (
    EmbeddingsMissing,
    UsageError,
    add_index_arguments,
    add_model_arguments,
    add_store_arguments,
    catalogue_from_args,
    index_from_args,
    loaded_model_from_args,
    open_store_from_args,
)
from mildnet.errors import ImageError, MildnetError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the catalog images most similar to an image file or a catalog id",
        description="Query embeddings stored by `embed` (same model, same store). With a calibrated --run "
        "(`calibrate`), each result also gets a match strength and the query a close-match verdict.",
    )
    add_model_arguments(parser)
    add_store_arguments(parser)
    add_index_arguments(parser)
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", type=Path, help="query image file")
    query.add_argument("--id", dest="item_id", help="query catalog id (its path relative to the image folder)")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=5, help="number of results (default 5)")
    parser.add_argument("--images", type=Path,
                        help="catalog image folder (picks the set when several catalogs are embedded with this "
                        "model; default for finding result images: the folder recorded at embed time)")
    parser.add_argument("--include", action="append", metavar="PREFIX", help="as given to embed")
    parser.add_argument("--dataset", help="dataset name as given to embed; a registered dataset (`data list`) also "
                        "supplies the image folder when --images is not given")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object (last line)")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="save the query and results as a PNG grid")
    parser.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from mildnet.data import manifest
    from mildnet.search.engine import SearchEngine, UnknownId

    if args.k < 1:
        raise UsageError("-k must be at least 1")
    if args.image is not None and not args.image.is_file():
        raise ImageError(f"query image not found: {args.image}")
    index, index_options = index_from_args(args)
    # A folder or a registered dataset is read before the model loads (one that is not ready fails at once); a
    # name that is neither is the one an earlier `embed` stored, found in the store below.
    named = args.images is not None or (bool(args.dataset) and args.dataset in manifest.datasets())
    catalogue = catalogue_from_args(args) if named else None
    model = loaded_model_from_args(args)
    run_hint = f"--run {args.run}" if args.run is not None else f"--model {args.model}"
    store = open_store_from_args(args)
    try:
        catalogue = catalogue or catalogue_from_args(args, store, model.fingerprint, run_hint)
        engine = SearchEngine.open(model, catalogue, store, index=index, index_options=index_options)
        if not engine.ready:
            raise EmbeddingsMissing(
                f"no embeddings of {catalogue.name} for this model in {store.describe()}; "
                f"run `python -m mildnet embed {run_hint} --images DIR` with the same store first")
        if catalogue.image_root.is_dir() and not engine.pending().up_to_date:
            print("warning: the catalog's images changed since they were embedded; run `embed` again to update",
                  file=sys.stderr)
        try:
            if args.image is not None:
                result = engine.query_image(args.image, k=args.k)
            else:
                result = engine.query_id(args.item_id, k=args.k)
        except UnknownId as exc:
            raise MildnetError(str(exc)) from None
    finally:
        store.close()

    root = catalogue.image_root
    if args.plot is not None:
        from mildnet.search import Hit, plot_results

        picture = args.image if args.image is not None else root / args.item_id
        hits = [Hit(r.id, r.id, r.score) for r in result.results]
        title = f"top {len(hits)} of {result.n_catalog} ({result.model})"
        plot_results(picture, hits, root, args.plot, title=title)
    payload = result.to_dict(image_root=root)
    if payload["note"]:
        print(f"note: {payload['note']}", file=sys.stderr)
    if args.json:
        payload["k"] = args.k
        if args.plot is not None:
            payload["plot"] = str(args.plot)
        print(json.dumps(payload))
    else:
        _print_results(args, payload)
    return 0


def _print_results(args: argparse.Namespace, payload: dict) -> None:
    print(f"query: {next(iter(payload['query'].values()))}  ({payload['n_catalog']} catalog images, "
          f"key {payload['key']})")
    # One row per result: rank, cosine, match strength (when calibrated), id last.
    for rank, r in enumerate(payload["results"], start=1):
        match = "" if r["match"] is None else f"  {r['match']:4.0%}"
        print(f"{rank:3d}  {r['score']:.4f}{match}  {r['id']}")
    if payload["close_match"] is False:
        print(f"no close match in this catalogue: {payload['close_match_reason']}")
    elif payload["close_match"]:
        print("close match: yes")
    if args.plot is not None:
        print(f"plot saved to {args.plot}")
