"""Computes, once, everything the ablation needs per image (original and horizontally mirrored):

- ``feat``: the default ``squeezenet_colour`` features layer (4 L2-normalised GAP taps, 1,280, + the product's
  ColourHistogram, 512), exactly as training caches them (decode_batches at 160 px -> run_model, raw outputs);
- ``small``: the image area-resized to 64x64 (what ColourHistogram sees), float32, so that histogram variants can
  be computed in numpy without running the network again.

    python extract.py --size 160 --out feats160.npz
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root

# Sets, features and results live outside the repo (the features file is ~430 MB).
HERE = Path(os.environ.get("MILDNET_ABLATION_DIR", "/tmp/mildnet-ablation"))
SHARED = Path(__file__).resolve().parents[3] / "shared"
IMAGES = SHARED / "data" / "clothing-dataset-small"
WEIGHTS = str(SHARED / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5")


def all_paths():
    paths = []
    for s in ("class", "typecolour"):
        for split in ("train", "val", "test"):
            df = pd.read_csv(HERE / "sets" / s / f"{split}.csv", header=None)
            paths += list(df.values.ravel())
    return sorted(set(paths))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--out", default="feats160.npz")
    args = ap.parse_args()

    import keras
    from keras import ops

    from mildnet.data.images import decode_batches
    from mildnet.embeddings import run_model
    from mildnet.models import build_model

    paths = all_paths()
    print(len(paths), "images")
    model = build_model("squeezenet_colour", args.size, None, WEIGHTS)
    extractor = keras.Model(model.inputs[0], model.get_layer("features").output)
    feats, feats_f, smalls, smalls_f = [], [], [], []
    t0 = time.time()
    for batch in decode_batches([IMAGES / p for p in paths], args.size, 64):
        assert not batch.failed, batch.failed
        px = batch.pixels
        pf = np.ascontiguousarray(px[:, :, ::-1, :])
        feats.append(run_model(extractor, px))
        feats_f.append(run_model(extractor, pf))
        for arr, out in ((px, smalls), (pf, smalls_f)):
            out.append(np.asarray(ops.image.resize(arr.astype(np.float32), (64, 64), interpolation="area")))
    wall = time.time() - t0
    np.savez(HERE / args.out, paths=np.array(paths), feat=np.concatenate(feats), feat_flip=np.concatenate(feats_f),
             small=np.concatenate(smalls), small_flip=np.concatenate(smalls_f))
    print(f"decode + features (orig + flip) of {len(paths)} images: {wall:.1f}s")


if __name__ == "__main__":
    main()
