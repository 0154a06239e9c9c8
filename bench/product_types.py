"""Fits a run's product-type head (``product_types.json``, see mildnet/product_types.py) on the real photos we may
use: clothing-small's train + validation photos (its 10 garment types) and Luma's train + validation products (the
shop's types, mapped onto the same vocabulary; bags, watches and fitness gear as their own types). Test photos and
products are never seen; the type accuracy on them is printed and kept in the file's summary.

    python bench/real_sets.py ... --out runs/real-sets --sets class,typecolour,mix,luma,studio-mix   # Luma splits
    python bench/product_types.py --run mildnet/pretrained/real --sets runs/real-sets
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLOTHING, LUMA = SHARED / "data" / "clothing-dataset-small", SHARED / "data" / "magento-luma"
# Luma's types in clothing-small's words where it has them (a tank is sold where tees are; a hoodie is outerwear).
LUMA_TYPES = {"tee": "t-shirt", "tank": "t-shirt", "hoodie_sweatshirt": "outwear", "jacket": "outwear",
              "pants": "pants", "shorts": "shorts", "bra": "sports bra", "bag": "bag", "watch": "watch"}
OTHER_GEAR = "fitness gear"  # the other Luma gear: balls, bands, ropes, bottles, bricks, straps, rollers


def photos() -> pd.DataFrame:
    """One row per photo: path, type, split (train / val / test) and source."""
    rows = [(p, p.parent.name, p.parent.parent.name, "clothing-small")
            for p in sorted(CLOTHING.glob("*/*/*.jpg"))]
    return pd.DataFrame(rows, columns=["path", "type", "split", "source"])


def luma_photos(sets: Path) -> pd.DataFrame:
    cat = pd.read_csv(sets / "luma-variant" / "catalog.csv", dtype=str)
    return pd.DataFrame({"path": [LUMA / i for i in cat["image"]],
                         "type": [LUMA_TYPES.get(t, OTHER_GEAR) for t in cat["type"]],
                         "split": cat["split"], "source": "magento-luma"})


def main() -> int:
    from mildnet import product_types as pt
    from mildnet.embeddings import embed_files, model_fingerprint, model_image_size, normalize_rows
    from mildnet.runs import load_run_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--sets", required=True, type=Path, help="bench/real_sets.py output (for Luma's product split)")
    ap.add_argument("--c", type=float, default=100.0)
    ap.add_argument("--drop-types", default="",
                    help="types left out of the vocabulary (an open-set check: how photos of unknown kinds score)")
    ap.add_argument("--fit-splits", default="train,val",
                    help="splits to fit on (train alone leaves the validation photos for a fair close-match test)")
    args = ap.parse_args()

    table = pd.concat([photos(), luma_photos(args.sets)], ignore_index=True)
    model = load_run_model(args.run)
    size = model_image_size(model)
    raw, skipped = embed_files(model, list(table["path"]), size, 64)
    if skipped:
        raise SystemExit(f"{len(skipped)} photos did not decode, e.g. {next(iter(skipped.items()))}")
    vectors = normalize_rows(raw)
    table["split"] = table["split"].replace({"validation": "val"})
    test = table["split"].eq("test").to_numpy()
    dropped = table["type"].isin([t for t in args.drop_types.split(",") if t]).to_numpy()
    fitted = table["split"].isin(args.fit_splits.split(",")).to_numpy() & ~dropped
    test = test & ~dropped
    types = pt.fit(vectors[fitted], table["type"][fitted], model_fingerprint(model), c=args.c)
    predicted = np.asarray(types.names)[types.probabilities(vectors[test]).argmax(axis=1)]
    truth = table["type"][test].to_numpy()
    by_source = {s: round(float(np.mean(predicted[m] == truth[m])), 4)
                 for s in ("clothing-small", "magento-luma") for m in [table["source"][test].eq(s).to_numpy()]}
    summary = {**types.summary, "fit_splits": args.fit_splits,
               "test_accuracy": round(float(np.mean(predicted == truth)), 4),
               "test_accuracy_by_source": by_source, "test_photos": int(test.sum()),
               "data": f"clothing-dataset-small and magento-luma products, splits {args.fit_splits} (clothing-small "
                       "types = class folders; Luma types mapped as in bench/product_types.py)",
               "command": f"python bench/product_types.py --run {args.run} --sets {args.sets} --c {args.c:g} "
                          f"--fit-splits {args.fit_splits}"
                          + (f" --drop-types {args.drop_types}" if dropped.any() else "")}
    types = pt.ProductTypes(types.names, types.weights, types.bias, types.model_fingerprint, summary)
    path = pt.save(types, args.run)
    print(f"{path}: {len(types.names)} types ({', '.join(types.names)}); train {types.summary['photos']} photos, "
          f"accuracy {summary['train_accuracy']:.3f}; test {summary['test_photos']} photos, accuracy "
          f"{summary['test_accuracy']:.3f} ({by_source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
