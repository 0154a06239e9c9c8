"""The shipped model's card table: one model (or run) on every real-photo test set and the synthetic sample.

Test triplet accuracy (all, in-class half, other-type half) and recall@1/5 by product where the set has product
ids, on sets built by ``bench/real_sets.py`` (clothing-small: type + colour and garment type; magento-luma: type +
colour with the positive always another product, and variants for recall by product + colour) and the sample's
test split. Photos/s of the model on the Luma test photos (decoding included, 2 cores) beside it.

    python bench/real_sets.py --images ../shared/data/clothing-dataset-small --luma ../shared/data/magento-luma \\
        --out /tmp/real --sets class,typecolour,mix,luma,studio-mix
    python bench/real_eval.py --sets /tmp/real                      # the shipped default (mildnet/pretrained/real)
    python bench/real_eval.py --sets /tmp/real --run runs/real      # a run
    python bench/real_eval.py --sets /tmp/real --baseline imagenet+histogram
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
# label -> (set folder under --sets, image root)
CLOTHING, LUMA = SHARED / "data" / "clothing-dataset-small", SHARED / "data" / "magento-luma"
SETS = {
    "clothing-small type + colour": ("typecolour", CLOTHING),
    "clothing-small garment type": ("class", CLOTHING),
    "Luma type + colour (positive: another product)": ("luma-typecolour", LUMA),
    "Luma variant (recall by product + colour)": ("luma-variant", LUMA),
}


def _model(args):
    from mildnet.evaluation import make_baseline
    from mildnet.pretrained import default_run_dir
    from mildnet.runs import load_run_model, read_run

    if args.baseline:
        return make_baseline(args.baseline, str(WEIGHTS)), None, args.baseline
    run = Path(args.run) if args.run else default_run_dir()
    return load_run_model(run), read_run(run).config.image_size, str(run)


def _sample_set():
    from mildnet.data.manifest import get_split, prepare

    prepare("sample")
    split = get_split("sample", "test")
    return split.triplets, split.image_root, split.catalog


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=Path, required=True, help="the --out folder of bench/real_sets.py")
    parser.add_argument("--run", help="a run folder (default: the shipped real-photo model)")
    parser.add_argument("--baseline", help="a no-learning baseline instead (pixels, histogram, imagenet, ...)")
    args = parser.parse_args(argv)

    import pandas as pd

    from mildnet.data.catalog import read_catalog
    from mildnet.data.triplets import read_triplets
    from mildnet.evaluation import evaluate_triplets

    model, size, label = _model(args)
    sets = {name: (args.sets / folder / "test.csv", root, args.sets / folder / "catalog.csv")
            for name, (folder, root) in SETS.items()}
    # Recall by Luma's own product id (all colours of a product count as hits; they are recolours of one photo).
    by_product = read_catalog(args.sets / "luma-variant" / "catalog.csv")
    by_product["product_id"] = by_product["luma_product"]
    sets["Luma product (recall by product id)"] = (args.sets / "luma-variant" / "test.csv", LUMA, by_product)
    sets["synthetic sample"] = _sample_set()
    print(f"model: {label}\n")
    print("| test set | triplets | all | in-class | other type | recall@1 | recall@5 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (triplets, root, catalog) in sets.items():
        frame = read_triplets(triplets).triplets
        catalog = catalog if isinstance(catalog, pd.DataFrame) else read_catalog(catalog)
        report = evaluate_triplets(model, root, frame, image_size=size, catalog=catalog)
        cells = [report.by_type.get(k, {}).get("accuracy") for k in ("in_class", "out_of_class")]
        r = report.retrieval or {}
        row = [report.triplet_accuracy, *cells, r.get("recall@1"), r.get("recall@5")]
        text = " | ".join("" if v is None or pd.isna(v) else f"{v:.3f}" for v in row)
        print(f"| {name} | {report.n_triplets} | {text} |", flush=True)
    if size:
        _speed(model, size, args.sets)
    return 0


def _speed(model, size, sets):
    """Photos/s of the whole embedding path (decode + model) on the Luma test photos, best of 3."""
    import pandas as pd

    from mildnet.embeddings import embed_paths

    root = LUMA
    catalog = pd.read_csv(sets / "luma-variant" / "catalog.csv", dtype=str)
    paths = list(catalog["image"])
    embed_paths(model, root, paths[:64], size)  # compile
    best = min(_timed(lambda: embed_paths(model, root, paths, size)) for _ in range(3))
    print(f"\nembedding speed: {len(paths) / best:.0f} photos/s ({1000 * best / len(paths):.2f} ms a photo, "
          f"{len(paths)} Luma photos of 1080x1340 px, decoding included, {size} px)")


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
