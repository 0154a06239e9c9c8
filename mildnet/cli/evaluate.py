"""``python -m mildnet evaluate``: triplet accuracy, distance distributions and retrieval metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mildnet.cli.common import UsageError, build_model_from_args, use_default_run
from mildnet.cli.progress import ProgressBar
from mildnet.errors import DataError, ModelError

if TYPE_CHECKING:
    import numpy as np

# Kept literal (not imported from mildnet.evaluation) so `evaluate --help` does not import numpy/pandas;
# test_evaluation checks it matches evaluation.BASELINE_NAMES.
BASELINE_CHOICES = ("pixels", "histogram", "imagenet", "imagenet+histogram")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained run (or an untrained/pretrained model, or a baseline) on triplets",
        description="Triplet accuracy (overall, in-/out-of-class, wild/catalog queries), distance "
        "distributions, and recall@1/5/10 + mAP when a catalog with product ids is known. "
        "With --run and no data options, the run's own validation triplets are used.",
    )
    source = parser.add_argument_group("model (one of; default: the shipped real-photo model)")
    source.add_argument("--run", metavar="RUN_DIR", help="a training run folder (default: the shipped real-photo "
                        "model, mildnet/pretrained/real)")
    source.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which model of the run")
    source.add_argument("--model", metavar="NAME", help="a zoo model, untrained or pretrained (baseline)")
    source.add_argument("--weights", metavar="imagenet|none|PATH", default=None, help="with --model (default none)")
    source.add_argument("--embedding-dim", type=int, metavar="N", help="with --model")
    source.add_argument("--seed", type=int, default=0,
                        help="with --model: seed of the untrained layers (default 0, as training's default, so "
                        "this is the network a run with that seed starts from)")
    source.add_argument("--baseline", choices=BASELINE_CHOICES,
                        help="a no-learning baseline instead of a model: 32x32 raw pixels, an 8x8x8 RGB histogram, "
                        "SqueezeNet ImageNet features (no training), or those features plus the histogram")

    compare = parser.add_argument_group("baselines (scored on the same triplets, next to the model)")
    compare.add_argument("--baselines", metavar="LIST",
                         help=f"comma-separated baselines to compare with (default with --run/--model: all of "
                         f"{','.join(BASELINE_CHOICES)}; with --baseline: none)")
    compare.add_argument("--no-baselines", action="store_true", help="score the model alone")
    compare.add_argument("--baseline-weights", metavar="PATH",
                         help="local SqueezeNet ImageNet weights for the imagenet baselines (default: the shipped "
                         "real-photo model's frozen backbone, else the download; without either they are "
                         "reported unavailable)")

    data = parser.add_argument_group("data")
    data.add_argument("--images", metavar="DIR", help="image root the triplet paths are relative to")
    data.add_argument("--triplets", metavar="CSV", help="triplets to score")
    data.add_argument("--dataset", metavar="NAME", help="a data_manifest.csv entry instead of --images/--triplets")
    data.add_argument("--split", default="test", choices=("train", "val", "test"),
                      help="split of --dataset (default test)")
    data.add_argument("--catalog", metavar="CSV",
                      help="catalog.csv with product_id/category/view (default: one in or beside the image folder)")
    close = parser.add_argument_group(
        "close match as a decision (instead of triplets): the gallery is --images (rows of --split in its "
        "catalogue), calibrated on its own photos as search does; in-catalogue queries should be called close, "
        "out-of-catalogue ones not")
    close.add_argument("--close-match", action="store_true", help="score the close-match decision")
    close.add_argument("--hold-out", metavar="CATEGORIES", help="comma-separated categories left out of the "
                       "gallery: their photos are out-of-catalogue queries")
    close.add_argument("--in-queries", metavar="DIR", type=Path, help="a folder of photos of things the gallery "
                       "sells (default: the catalogue's rows of other splits whose category is in the gallery)")
    close.add_argument("--out-queries", metavar="DIR", type=Path, help="a folder of photos of things it does not sell")
    parser.add_argument("--image-size", type=int, metavar="PX", help="input size (default: the model's, or 224)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    parser.add_argument("--json", action="store_true", help="also print the metrics as one JSON object (last line)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_evaluate)


def _load_model(args: argparse.Namespace):
    if sum(bool(x) for x in (args.run, args.model, args.baseline)) > 1:
        raise UsageError(f"give one of --run RUN_DIR, --model NAME or --baseline {'|'.join(BASELINE_CHOICES)}")
    if not (args.run or args.model or args.baseline):
        if not (args.images or args.triplets or args.dataset):
            # The shipped run's own validation files live on the machine that trained it, not here.
            raise UsageError("give the triplets to score (--images DIR --triplets CSV, or --dataset NAME); "
                             "the model defaults to the shipped real-photo run")
        args.run = use_default_run(args)
    if args.baseline:
        if args.weights or args.embedding_dim or args.image_size:
            raise UsageError("--weights/--embedding-dim/--image-size go with --model, not --baseline "
                             "(local ImageNet weights for a baseline: --baseline-weights PATH)")
        from mildnet.evaluation import make_baseline

        baseline = make_baseline(args.baseline, args.baseline_weights or "imagenet")
        return baseline, None, baseline.describe()
    if args.run:
        if args.weights or args.embedding_dim:
            raise UsageError("--weights/--embedding-dim go with --model, not --run")
        from mildnet.runs import load_run_model, read_run

        info = read_run(args.run)
        model = load_run_model(args.run, args.checkpoint)
        source = {"run": str(Path(args.run).resolve()), "checkpoint": args.checkpoint, "model": info.config.model,
                  "fingerprint": info.fingerprint}
        return model, info, source
    model, _ = build_model_from_args(args, seed=args.seed)
    return model, None, {"model": args.model, "weights": args.weights or "none", "seed": args.seed}


def _load_data(args: argparse.Namespace, run_info):
    """(image_root, triplets DataFrame, catalog path or None, description)."""
    from mildnet.runs import HELDOUT_FILE
    from mildnet.training import dataset_splits, read_triplet_frame

    if args.dataset:
        if args.images or args.triplets:
            raise UsageError("give either --dataset or --images/--triplets, not both")
        splits = dataset_splits(args.dataset)
        if args.split not in splits:
            raise DataError(f"dataset {args.dataset!r} has no split {args.split!r}; it has: {', '.join(splits)}")
        split = splits[args.split]
        catalog = args.catalog or split.catalog
        return Path(split.image_root), read_triplet_frame(split.triplets), catalog, f"{args.dataset}:{args.split}"
    if args.images and args.triplets:
        return Path(args.images), read_triplet_frame(args.triplets), args.catalog, str(args.triplets)
    if args.images or args.triplets:
        raise UsageError("give both --images DIR and --triplets CSV")
    if run_info is None:
        raise UsageError("give --images DIR and --triplets CSV (or --dataset NAME)")
    config = run_info.config
    val = config.val_triplets or (run_info.run_dir / HELDOUT_FILE)
    if not Path(val).is_file():
        raise UsageError(f"{run_info.run_dir} has no validation triplets: give --images and --triplets")
    return Path(config.images), read_triplet_frame(val), args.catalog, f"{val} (the run's validation set)"


def _baseline_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The baselines to compare with: bad names and contradictory options are usage errors (exit 2),
    raised before anything is loaded."""
    if args.baseline_weights and not Path(args.baseline_weights).expanduser().is_file():
        raise UsageError(f"--baseline-weights: no such file: {args.baseline_weights}")
    if args.no_baselines:
        if args.baselines is not None:
            raise UsageError("give either --baselines LIST or --no-baselines, not both")
        return ()
    if args.baselines is None:
        # A baseline scored on its own is already the comparison; the others are asked for explicitly.
        return () if args.baseline else BASELINE_CHOICES
    names = [n.strip() for n in args.baselines.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINE_CHOICES]
    if unknown or not names:
        problem = f"unknown baseline {unknown[0]!r}" if unknown else "empty list"
        raise UsageError(f"--baselines: {problem}; choose from: {','.join(BASELINE_CHOICES)}")
    return tuple(dict.fromkeys(names))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mildnet.data.catalog import read_catalog_for
    from mildnet.embeddings import embed_paths, model_image_size
    from mildnet.evaluation import FeatureExtractor, evaluate_embeddings, format_baseline_table, unavailable_reason

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.close_match:
        return _close_match(args)
    baseline_names = _baseline_names(args)
    model, run_info, source = _load_model(args)
    image_root, triplets, catalog_path, described = _load_data(args, run_info)
    baseline = isinstance(model, FeatureExtractor)
    if baseline:
        size = model.decode_size  # None for a concatenated baseline: its parts decode at their own sizes
    else:
        size = model_image_size(model) or args.image_size or 224
        if args.image_size and args.image_size != size:
            raise UsageError(f"the model takes {size} px images; --image-size {args.image_size} does not fit")
    catalog = read_catalog_for(image_root, catalog_path)
    import pandas as pd

    images = pd.concat([triplets["query"], triplets["positive"], triplets["negative"]])

    def embed(progress=None):
        if baseline:
            try:
                return model.embed(image_root, images, progress)
            except ModelError as exc:
                # Only the ImageNet baselines load weights; say which option supplies a local copy.
                raise ModelError(unavailable_reason("imagenet", exc)) from None
        return embed_paths(model, image_root, images, size, args.batch_size, progress=progress)

    if args.quiet:
        table = embed()
    else:
        with ProgressBar("embedding", unit="") as bar:
            table = embed(bar.update)
    report = evaluate_embeddings(table, triplets, catalog)
    report.source = {**source, "data": described, "image_root": str(image_root), "image_size": size}
    shown = source.get("run") or source.get("model") or f"{source['baseline']} baseline"
    print(f"model: {shown}   data: {described}")
    print(report.format())
    result = report.to_dict()
    if baseline_names:
        summary = _score_baselines(args, baseline_names, image_root, triplets, catalog, report)
        label = source.get("baseline") or Path(source.get("run") or source.get("model") or "model").name
        print()
        print(format_baseline_table(label, report, summary))
        result["baselines"] = summary
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def _score_baselines(args, names, image_root, triplets, catalog, report) -> dict:
    from mildnet.evaluation import baseline_summary, evaluate_baselines

    weights = args.baseline_weights or "imagenet"
    if args.quiet:
        results = evaluate_baselines(image_root, triplets, catalog, weights, names)
    else:
        with ProgressBar("baselines", unit="") as bar:
            results = evaluate_baselines(image_root, triplets, catalog, weights, names, progress=bar.update)
    return baseline_summary(results, report.triplet_accuracy)


def _close_match(args: argparse.Namespace) -> int:
    from mildnet import catalogue_calibration as cc
    from mildnet.data.catalog import gallery
    from mildnet.embeddings import catalog_ids, embed_paths, model_image_size
    from mildnet.store import EmbeddingSet

    if args.baseline or not args.images:
        raise UsageError("--close-match needs --images DIR (the gallery) and a model (--run/--model, default the "
                         "shipped one), not a baseline")
    if not (args.run or args.model):
        args.run = use_default_run(args)
    model, _, source = _load_model(args)
    size = model_image_size(model) or args.image_size or 224
    root = Path(args.images)
    catalog = cc.catalogue_labels(root, args.catalog)
    held = {c.strip() for c in (args.hold_out or "").split(",") if c.strip()}
    if catalog is None:
        if held:
            raise UsageError("--hold-out needs a catalogue with categories (--catalog CSV)")
        rows, others = None, None
        gallery_ids = catalog_ids(root)
    else:
        table = gallery(catalog)
        in_split = table["split"].eq(args.split) if "split" in table else table["image"].notna()
        category = table["category"].fillna("").astype(str) if "category" in table else None
        kept = ~category.isin(held) if category is not None else in_split
        rows, others = table[in_split & kept], table[~in_split & kept]
        gallery_ids = list(rows["image"])
        unknown = held - set(category) if category is not None else held
        if unknown:
            raise UsageError(f"--hold-out: no category {sorted(unknown)[0]!r} in the catalogue")
    if len(gallery_ids) < 2:
        raise DataError(f"the gallery has {len(gallery_ids)} photo(s); a close-match test needs at least two")
    if args.in_queries:
        in_paths = _folder_photos(args.in_queries)
    else:
        in_paths = [root / i for i in (others["image"] if others is not None else [])]
    out_paths = _folder_photos(args.out_queries) if args.out_queries else []
    if held and catalog is not None:
        out_paths += [root / i for i in catalog[catalog["category"].astype(str).isin(held)]["image"]]
    if not in_paths or not out_paths:
        raise UsageError("--close-match needs in-catalogue queries (--in-queries DIR, or catalogue rows outside "
                         "--split) and out-of-catalogue ones (--out-queries DIR and/or --hold-out CATEGORIES)")

    def vectors(paths, base):
        table = embed_paths(model, base, [str(p) for p in paths], size, args.batch_size)
        return table, table.rows([str(p) for p in paths])

    g_table, g_vectors = vectors(gallery_ids, root)
    s = EmbeddingSet(list(gallery_ids), list(gallery_ids), g_vectors,
                     {"model_fingerprint": "evaluate", "catalog_fingerprint": "evaluate", "image_size": size})
    types = _run_types(args.run, model)
    calibration = cc.calibrate_catalogue(s, rows, model, root, size, types=types)
    in_v, out_v = _query_vectors(model, in_paths, size, args.batch_size), \
        _query_vectors(model, out_paths, size, args.batch_size)
    if not len(in_v) or not len(out_v):
        raise DataError(f"no {'in' if not len(in_v) else 'out-of'}-catalogue query photo could be read")
    result = cc.evaluate_close_match(calibration, g_vectors, in_v, out_v, gallery_ids, types)
    result.update(gallery=len(gallery_ids), held_out=sorted(held), source=source, rule=cc.describe(calibration))
    print(f"gallery: {root} ({len(gallery_ids)} photos{', without ' + ', '.join(sorted(held)) if held else ''})")
    print(cc.describe(calibration))
    if calibration.rule.considered:
        tried = calibration.rule.considered.items()
        print("scores tried (simulated AUC): " + ", ".join(f"{k} {a:.3f}" for k, a in tried))
    print(f"close-match ROC AUC          {result['auc']:.3f}")
    print(f"in-catalogue called close    {result['in_called_close']:.1%}  (n={result['n_in']})")
    print(f"out-of-catalogue not close   {result['out_called_not_close']:.1%}  (n={result['n_out']})")
    if args.json:
        print(json.dumps({"close_match": result}, sort_keys=True, default=str))
    return 0


def _run_types(run, model):
    """The run's product-type head (None for a zoo model or a run without one); a damaged one is an error here:
    the measurement would silently be of another rule."""
    from mildnet import product_types as pt
    from mildnet.embeddings import model_fingerprint

    if not run:
        return None
    try:
        return pt.load(run, model_fingerprint(model))
    except pt.ProductTypesError as exc:
        raise DataError(str(exc)) from None


def _query_vectors(model, paths: list[Path], size: int, batch_size: int) -> np.ndarray:
    """Unit vectors of the query photos that decode; the others are left out with one warning line (a query
    folder is somebody's photos: one broken file must not stop the measurement, as it stops no search)."""
    from mildnet.embeddings import embed_files, normalize_rows

    vectors, skipped = embed_files(model, [p.resolve() for p in paths], size, batch_size)
    if skipped:
        path, reason = next(iter(skipped.items()))
        reason = reason if path in reason else f"{path}: {reason}"
        print(f"warning: {len(skipped)} of {len(paths)} query photo(s) could not be read and are left out "
              f"(first: {reason})", file=sys.stderr)
    return normalize_rows(vectors)


def _folder_photos(folder: Path) -> list[Path]:
    from mildnet.embeddings import catalog_ids

    if not folder.is_dir():
        raise DataError(f"query folder not found: {folder}")
    return [folder / i for i in catalog_ids(folder)]
