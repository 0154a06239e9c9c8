"""Zero-shot backbone comparison: the frozen ``features`` of squeezenet_colour vs efficientnet_lite*_colour.

No training: each zoo model's ``features`` layer (L2-normalised GAP taps + foreground HSV histogram) is compared
by cosine, with and without the histogram, on the real-photo test sets of ``bench/real_sets.py`` (clothing-small
type + colour and garment type; Luma type + colour, in-class half, and recall by product + colour variant). Beside
each row its cost: photos/s of the whole model on the Luma test photos (decoding included) and ms a photo of the
network alone (a batch of 32 already in memory), measured in the same run.

    python bench/convert_efficientnet_lite.py --variant lite0 --out /tmp/effweights/efficientnet_lite0_notop.npz
    python bench/backbones.py --sets /tmp/effsets --lite-weights /tmp/effweights \\
        --configs squeezenet@160 lite0@160 lite0@224 lite2@260
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[2] / "shared"
SQUEEZENET_WEIGHTS = SHARED / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
SETS = {
    "clothing tc": ("typecolour", SHARED / "data" / "clothing-dataset-small"),
    "garment type": ("class", SHARED / "data" / "clothing-dataset-small"),
    "Luma tc": ("luma-typecolour", SHARED / "data" / "magento-luma"),
    "Luma variant": ("luma-variant", SHARED / "data" / "magento-luma"),
}
MODELS = {"squeezenet": "squeezenet_colour", "lite0": "efficientnet_lite0_colour",
          "lite2": "efficientnet_lite2_colour"}


def build(backbone, size, lite_weights):
    from mildnet.models import build_model

    weights = (SQUEEZENET_WEIGHTS if backbone == "squeezenet"
               else Path(lite_weights) / f"efficientnet_{backbone}_notop.npz")
    return build_model(MODELS[backbone], size, weights=str(weights))


def score(model, size, sets):
    """{set: {variant: EvaluationReport}} for the features with and without the histogram."""
    import keras
    import pandas as pd

    from mildnet.data.catalog import read_catalog
    from mildnet.data.triplets import read_triplets
    from mildnet.embeddings import embed_paths, normalize_rows
    from mildnet.evaluation import evaluate_embeddings

    features = keras.Model(model.inputs, model.get_layer("features").output)
    cells = model.get_layer("colour_histogram").cells
    out = {}
    for name, (folder, root) in SETS.items():
        frame = read_triplets(sets / folder / "test.csv").triplets
        catalog = read_catalog(sets / folder / "catalog.csv")
        images = pd.concat([frame["query"], frame["positive"], frame["negative"]])
        raw = embed_paths(features, root, images, size, normalize=False)
        variants = {"taps + histogram": raw.vectors, "taps": raw.vectors[:, :-cells]}
        out[name] = {}
        for label, v in variants.items():
            table = dataclasses.replace(raw, vectors=normalize_rows(v), meta={**raw.meta, "dim": v.shape[1]})
            out[name][label] = evaluate_embeddings(table, frame, catalog)
    return out


def speed(model, size, sets):
    """(photos/s decoding included on the Luma test photos, ms a photo of the network alone), best of 3."""
    import pandas as pd

    from mildnet.embeddings import embed_paths

    root = SHARED / "data" / "magento-luma"
    paths = list(pd.read_csv(sets / "luma-variant" / "catalog.csv", dtype=str)["image"])
    embed_paths(model, root, paths[:64], size)  # compile
    end_to_end = min(_timed(lambda: embed_paths(model, root, paths, size)) for _ in range(3))
    batch = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    model.predict_on_batch(batch)
    network = min(_timed(lambda: model.predict_on_batch(batch)) for _ in range(5))
    return len(paths) / end_to_end, 1000 * network / len(batch)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=Path, required=True, help="the --out folder of bench/real_sets.py")
    parser.add_argument("--lite-weights", type=Path, default=Path("/tmp/effweights"),
                        help="folder of the converted efficientnet_lite*_notop.npz")
    parser.add_argument("--configs", nargs="+", default=["squeezenet@160", "lite0@224"],
                        help="backbone@size, backbone one of " + ", ".join(MODELS))
    parser.add_argument("--speed-only", action="store_true",
                        help="only the cost columns (run alone: a busy CPU halves them)")
    args = parser.parse_args(argv)

    print("| backbone @ px | features | clothing tc | garment type | Luma tc | Luma tc in-class | "
          "Luma variant R@1 | R@5 | photos/s | network ms/photo |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for config in args.configs:
        backbone, size = config.split("@")
        size = int(size)
        model = build(backbone, size, args.lite_weights)
        per_s, ms = speed(model, size, args.sets)
        if args.speed_only:
            print(f"| {backbone} @ {size} | | | | | | | | {per_s:.0f} | {ms:.2f} |", flush=True)
            continue
        results = score(model, size, args.sets)
        for label in ("taps + histogram", "taps"):
            r = {name: results[name][label] for name in SETS}
            row = [r["clothing tc"].triplet_accuracy, r["garment type"].triplet_accuracy, r["Luma tc"].triplet_accuracy,
                   r["Luma tc"].by_type.get("in_class", {}).get("accuracy"),
                   (r["Luma variant"].retrieval or {}).get("recall@1"),
                   (r["Luma variant"].retrieval or {}).get("recall@5")]
            cells = " | ".join("" if v is None else f"{v:.3f}" for v in row)
            print(f"| {backbone} @ {size} | {label} | {cells} | {per_s:.0f} | {ms:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
