"""``python -m mildnet search``: nearest catalog images for an image file or a catalog id."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mildnet.cli.common import (
    UsageError,
    add_model_arguments,
    add_store_arguments,
    load_model_from_args,
    open_store_from_args,
)
from mildnet.cli.embed import catalogue_calibration, is_registered, registered_catalog
from mildnet.errors import ImageError, MildnetError


class EmbeddingsMissing(MildnetError):
    """The store holds no embeddings for this model (the user has to run ``embed`` first)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the catalog images most similar to an image file or a catalog id",
        description="Query embeddings stored by `embed` (same model, same store). With a calibrated --run "
        "(`calibrate`), each result also gets a match strength and the query a close-match verdict.",
    )
    add_model_arguments(parser)
    add_store_arguments(parser)
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


def _find_key(store, model_fp: str, args: argparse.Namespace, run_hint: str) -> str:
    from mildnet import embeddings as emb

    missing = EmbeddingsMissing(
        f"no embeddings for this model (fingerprint {model_fp[:16]}) in {store.describe()}; "
        f"run `python -m mildnet embed {run_hint} --images DIR` with the same store first"
    )
    if args.images is not None or args.dataset is not None:
        dataset = args.dataset or emb.dataset_name(args.images)
        if args.include:
            dataset += "+" + "+".join(p.strip("/") for p in args.include)
        return emb.cache_key(dataset, model_fp)
    suffix = "/" + model_fp[:16]
    candidates = [k for k in store.keys() if k.endswith(suffix)]
    if not candidates:
        raise missing
    if len(candidates) > 1:
        shown = ", ".join(k.rsplit("/", 1)[0] for k in candidates)
        raise UsageError(f"several catalogs are embedded with this model ({shown}); "
                         "pass --images DIR or --dataset NAME")
    return candidates[0]


def _calibration(args: argparse.Namespace, model_fp: str):
    """``(calibration or None, note for text output)``: a run's calibration.json when it belongs to this model."""
    from mildnet.calibration import load

    if args.run is None:
        return None, "a --model has no calibration: scores are raw cosines (a calibrated --run adds match strengths)"
    calibration = load(args.run)
    if calibration is None:
        return None, (f"{args.run} has no calibration: scores are raw cosines; "
                      f"run `python -m mildnet calibrate --run {args.run}` for match strengths")
    if calibration.model_fingerprint not in (None, model_fp):
        print(f"warning: {args.run}'s calibration was made for an earlier model; ignored until you run "
              f"`python -m mildnet calibrate --run {args.run}` again", file=sys.stderr)
        return None, "no valid calibration: scores are raw cosines"
    return calibration, None


def cmd_search(args: argparse.Namespace) -> int:
    from mildnet import embeddings as emb
    from mildnet.calibration import assess, catalogue_reference

    if args.k < 1:
        raise UsageError("-k must be at least 1")
    if args.image is not None and not args.image.is_file():
        raise ImageError(f"query image not found: {args.image}")
    registered_ids = None
    if args.images is None and is_registered(args.dataset):
        args.images, registered_ids = registered_catalog(args.dataset)

    model, config = load_model_from_args(args)
    model_fp = emb.model_fingerprint(model)
    key, embeddings, (own, own_note) = _embedded_set(args, model_fp, model)
    image_root = Path(args.images or embeddings.meta.get("image_root") or ".")
    _warn_if_catalogue_changed(args, embeddings, registered_ids)
    # The close-match score may average more results than are shown: ask for enough, show what was asked.
    shown = args.k
    args.k = max(shown, own.rule.k) if own is not None else shown
    hits, query_info, query_picture = _query(args, model, config, embeddings, key, image_root)
    args.k = shown

    if own is not None:
        calibration, note = own.match, own_note
        verdict = assess([h.score for h in hits], calibration, rule=own.rule, ids=[h.id for h in hits])
    else:
        calibration, note = _calibration(args, model_fp)
        note = "; ".join(n for n in (own_note, note) if n) or None
        verdict = assess([h.score for h in hits], calibration,
                         catalogue_reference(embeddings.vectors) if calibration is not None else None)
    hits = hits[:shown]
    verdict = type(verdict)(verdict.matches[:shown], verdict.close_match, verdict.reason)
    results = [{"id": h.id, "path": str(image_root / h.path), "score": round(h.score, 6),
                "match": None if m is None else round(m, 4)} for h, m in zip(hits, verdict.matches)]
    if args.plot is not None:
        from mildnet.search import plot_results

        title = f"top {len(hits)} of {len(embeddings)} ({config.get('model', model.name)})"
        plot_results(query_picture, hits, image_root, args.plot, title=title)
    if args.json:
        payload = {"query": query_info, "key": key, "model": config.get("model", model.name), "k": args.k,
                   "n_catalog": len(embeddings), "close_match": verdict.close_match,
                   "close_match_reason": verdict.reason, "calibrated": calibration is not None,
                   "calibration": "catalogue" if own is not None else ("run" if calibration is not None else None),
                   "results": results}
        if args.plot is not None:
            payload["plot"] = str(args.plot)
        print(json.dumps(payload))
    else:
        _print_results(args, query_info, key, len(embeddings), note, results, verdict)
    return 0


def _run_hint(args: argparse.Namespace) -> str:
    return f"--run {args.run}" if args.run is not None else f"--model {args.model}"


def _embedded_set(args: argparse.Namespace, model_fp: str, model=None):
    """``(key, set, (catalogue calibration or None, note))``: the stored embeddings of this model for the
    catalogue the arguments name, and the catalogue's own calibration (fitted and kept now if missing)."""
    run_hint = _run_hint(args)
    store = open_store_from_args(args)
    try:
        key = _find_key(store, model_fp, args, run_hint)
        embeddings = store.get(key)
        if embeddings is None:
            raise EmbeddingsMissing(
                f"no embeddings under {key!r} in {store.describe()}; "
                f"run `python -m mildnet embed {run_hint} --images DIR` with the same store first"
            )
        if embeddings.model_fingerprint != model_fp:
            raise EmbeddingsMissing(f"the set under {key!r} was made by another model; re-run `embed` with this one")
        root = Path(args.images or embeddings.meta.get("image_root") or ".")
        own = catalogue_calibration(args, store, key, embeddings, model, root)
    finally:
        store.close()
    return key, embeddings, own


def _warn_if_catalogue_changed(args: argparse.Namespace, embeddings, registered_ids) -> None:
    from mildnet import embeddings as emb

    if args.images is None or not args.images.is_dir():
        return
    include = embeddings.meta.get("include") or None
    if registered_ids is None:
        ids = emb.catalog_ids(args.images, include=include)
    else:
        ids = [i for i in registered_ids if not include or i.startswith(tuple(include))]
    if emb.catalog_fingerprint(args.images, ids) != embeddings.catalog_fingerprint:
        print("warning: the catalog's images changed since they were embedded; run `embed` again to update",
              file=sys.stderr)


def _query(args: argparse.Namespace, model, config: dict, embeddings, key: str, image_root: Path):
    """``(hits, what the query was, the query's picture)`` for ``--image`` or ``--id``."""
    from mildnet import embeddings as emb
    from mildnet.search import Searcher

    searcher = Searcher(embeddings)
    if args.image is not None:
        size = embeddings.meta.get("image_size") or config.get("image_size")
        vector = emb.embed_image(model, args.image, size)
        return searcher.query(vector, k=args.k)[0], {"image": str(args.image)}, args.image
    if args.item_id not in embeddings:
        raise MildnetError(
            f"id {args.item_id!r} is not in the embedded catalog ({len(embeddings)} images under {key!r}); "
            "ids are image paths relative to the image folder, e.g. " + repr(embeddings.ids[0])
        )
    hits = searcher.query_id(args.item_id, k=args.k, exclude_self=True)
    return hits, {"id": args.item_id}, image_root / args.item_id


def _print_results(args: argparse.Namespace, query_info: dict, key: str, n_catalog: int, note: str | None,
                   results: list[dict], verdict) -> None:
    print(f"query: {next(iter(query_info.values()))}  ({n_catalog} catalog images, key {key})")
    if note:
        print(f"note: {note}", file=sys.stderr)
    # One row per result: rank, cosine, match strength (when calibrated), id last.
    for rank, r in enumerate(results, start=1):
        match = "" if r["match"] is None else f"  {r['match']:4.0%}"
        print(f"{rank:3d}  {r['score']:.4f}{match}  {r['id']}")
    if verdict.close_match is False:
        print(f"no close match in this catalogue: {verdict.reason}")
    elif verdict.close_match:
        print("close match: yes")
    if args.plot is not None:
        print(f"plot saved to {args.plot}")
