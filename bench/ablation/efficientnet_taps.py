"""Which EfficientNet-Lite taps carry product similarity, zero-shot (docs/backbones.md, "Taps").

Each stage's last output and the head, pooled (GAP) and L2-normalised, then concatenated in subsets, with and
without the foreground HSV histogram; cosine on bench/real_sets.py's test triplets.

    python bench/ablation/efficientnet_taps.py --sets /tmp/effsets --variant lite0 --size 224
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[3] / "shared"
SETS = {"clothing tc": ("typecolour", SHARED / "data" / "clothing-dataset-small"),
        "garment type": ("class", SHARED / "data" / "clothing-dataset-small"),
        "Luma tc": ("luma-typecolour", SHARED / "data" / "magento-luma"),
        "Luma variant": ("luma-variant", SHARED / "data" / "magento-luma")}
SUBSETS = [("head",), ("stage5", "head"), ("stage6", "head"), ("stage4", "stage5", "stage6", "head"),
           ("stage3", "stage5", "head"), ("stage2", "stage3", "stage5", "head"), ("stage7",), ("stage5",)]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", type=Path, required=True)
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--weights", type=Path, default=Path("/tmp/effweights"))
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import pandas as pd

    from mildnet.data.catalog import read_catalog
    from mildnet.data.triplets import read_triplets
    from mildnet.embeddings import embed_paths, normalize_rows
    from mildnet.evaluation import evaluate_embeddings
    from mildnet.models import efficientnet_lite
    from mildnet.models.layers import ColourHistogram, Preprocess

    inputs = keras.Input((args.size, args.size, 3))
    maps = efficientnet_lite.efficientnet_lite_features(Preprocess("lite")(inputs), args.variant)
    taps = sorted({t for s in SUBSETS for t in s})
    pooled = [keras.layers.GlobalAveragePooling2D()(maps[t]) for t in taps]
    hist = ColourHistogram(space="hsv", foreground=True)(inputs)
    model = keras.Model(inputs, keras.layers.Concatenate()(pooled + [hist]))
    efficientnet_lite.load_weights(model, args.weights / f"efficientnet_{args.variant}_notop.npz")
    widths = [maps[t].shape[-1] for t in taps] + [hist.shape[-1]]
    edges = np.cumsum([0] + widths)
    cols = {name: slice(edges[i], edges[i + 1]) for i, name in enumerate(taps + ["hist"])}

    rows = {}
    for set_name, (folder, root) in SETS.items():
        frame = read_triplets(args.sets / folder / "test.csv").triplets
        catalog = read_catalog(args.sets / folder / "catalog.csv")
        images = pd.concat([frame["query"], frame["positive"], frame["negative"]])
        raw = embed_paths(model, root, images, args.size, normalize=False)
        for subset in SUBSETS:
            for with_hist in (False, True):
                parts = [normalize_rows(raw.vectors[:, cols[t]]) for t in subset + (("hist",) if with_hist else ())]
                v = normalize_rows(np.concatenate(parts, axis=1))
                r = evaluate_embeddings(dataclasses.replace(raw, vectors=v, meta={**raw.meta, "dim": v.shape[1]}),
                                        frame, catalog)
                value = (r.retrieval or {}).get("recall@5") if set_name == "Luma variant" else r.triplet_accuracy
                rows.setdefault((subset, with_hist), {})[set_name] = value
    print(f"{args.variant} @ {args.size}")
    print("| taps | histogram | clothing tc | garment type | Luma tc | Luma variant R@5 |")
    print("|---|---|---:|---:|---:|---:|")
    for (subset, with_hist), values in rows.items():
        print(f"| {' + '.join(subset)} | {'yes' if with_hist else ''} | "
              + " | ".join(f"{values[s]:.3f}" for s in SETS) + " |")


if __name__ == "__main__":
    main()
