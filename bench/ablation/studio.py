"""Issue 17 ablation: foreground-aware features and studio training data, head-only runs on cached features.

Extracts once per photo of clothing-small and magento-luma (paths keyed relative to ``../shared/data``), at 160 px:
the 4 SqueezeNet taps pooled three ways (plain GAP as today; weighted by the foreground map; weighted by the
foreground map times the centre Gaussian), each tap L2-normalised, and the 64x64 area-resized image the colour
histogram sees (variants in numpy, ``hists.py``). Then, per feature variant and training set, trains the product's
head (``ablate.train_head``) over seeds and reports test triplet accuracy on clothing-small (type + colour, garment
type) and Luma (type + colour, its in-class/other-type halves), plus Luma product recall@1/5, zero-shot included.

    python bench/ablation/studio.py extract
    python bench/ablation/studio.py run --variants default,fg --train mix,studio-mix --seeds 0,1,2
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import ablate
import hists
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HERE = Path(os.environ.get("MILDNET_ABLATION_DIR", "/tmp/mildnet-ablation"))
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
WEIGHTS = str(DATA.parent / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5")
PREFIX = {"class": "clothing-dataset-small/", "typecolour": "clothing-dataset-small/",
          "mix": "clothing-dataset-small/", "luma-typecolour": "magento-luma/", "luma-variant": "magento-luma/",
          "studio-mix": "", "studio-mix2": "", "studio-mix3": ""}
EVAL_SETS = ("typecolour", "class", "luma-typecolour", "luma-variant")


def read_triplets(name, split):
    df = pd.read_csv(HERE / "sets" / name / f"{split}.csv", header=None, names=["q", "p", "n"], dtype=str)
    return df.apply(lambda col: PREFIX[name] + col)


def all_paths():
    paths = set()
    for name in PREFIX:
        if not (HERE / "sets" / name).is_dir():  # a set not built this time (the mix2/mix3 trials)
            continue
        for split in ("train", "val", "test"):
            paths.update(read_triplets(name, split).values.ravel())
    luma = pd.read_csv(HERE / "sets" / "luma-variant" / "catalog.csv", dtype=str)
    paths.update("magento-luma/" + luma["image"])
    return sorted(paths)


def extract(size, crop=False):
    import keras
    from keras import ops

    from mildnet.data.images import decode_batches
    from mildnet.embeddings import run_model
    from mildnet.models import build_model
    from mildnet.models.layers import ForegroundCrop, ForegroundWeights, L2Normalize, WeightedAverage
    from mildnet.models.zoo import SQUEEZENET_TAPS

    paths = all_paths()
    model = build_model("squeezenet_colour", size, None, WEIGHTS)
    image = model.inputs[0]
    if crop:  # every feature (and the 64 px copy the histograms see) of the photo cropped to its product
        body = keras.Model(image, [model.get_layer(n).output for n in
                                   ["features", *[f"{t}_concat" for t in SQUEEZENET_TAPS]]])
        image = keras.Input(image.shape[1:])
        cropped = ForegroundCrop()(image)
        outputs = body(cropped)
        layer_out = dict(zip(["features", *[f"{t}_concat" for t in SQUEEZENET_TAPS]], outputs))
    else:
        cropped = image
        layer_out = {n: model.get_layer(n).output for n in ["features", *[f"{t}_concat" for t in SQUEEZENET_TAPS]]}
    fg = ForegroundWeights(grid=64, scale=30.0)(cropped)
    centre = hists.centre_weight(64, 0.5).reshape(1, 64, 64, 1)
    fg_centre = fg * centre
    outs = {"feat": layer_out["features"], "crop": keras.layers.Flatten()(ops.image.resize(cropped, (64, 64),
                                                                          interpolation="area"))}
    for name, w in (("fg", fg), ("fgc", fg_centre)):
        parts = [L2Normalize()(WeightedAverage()([layer_out[f"{t}_concat"], w]))
                 for t in SQUEEZENET_TAPS]
        outs[name] = keras.layers.Concatenate()(parts)
    widths = {k: int(v.shape[-1]) for k, v in outs.items()}
    extractor = keras.Model(image, keras.layers.Concatenate()(list(outs.values())))  # run_model wants one output
    got = {k: [] for k in outs}
    small = []
    t0 = time.time()
    for batch in decode_batches([DATA / p for p in paths], size, 64):
        assert not batch.failed, batch.failed
        res = run_model(extractor, batch.pixels)
        for k, part in zip(outs, np.split(res, np.cumsum(list(widths.values()))[:-1], axis=1)):
            got[k].append(part)
        small.append(got["crop"].pop().reshape(-1, 64, 64, 3))  # what the colour histograms see
    print(f"{len(paths)} photos in {time.time() - t0:.1f}s")
    got.pop("crop")
    np.savez(HERE / f"studio{size}{'crop' if crop else ''}.npz", paths=np.array(paths), small=np.concatenate(small),
             **{k: np.concatenate(v) for k, v in got.items()})


def variant(data, name):
    """name = TAPS[+HIST] with TAPS in gap|fg|fgc and HIST in rgb|rgbfg|hsv|hsvfg|none (default: gap+rgb)."""
    taps, _, hist = name.partition("+")
    X = data["feat"][:, :1280] if taps == "gap" else data[taps]
    if hist in ("", "none"):
        return X.astype(np.float32)
    # HIST = SPACE[fg[SCALE]], SPACE in rgb|hsv|hsv16 (16 hues), SCALE the foreground map's scale (default 30).
    space, _, scale = hist.partition("fg")
    bg = float(scale or 30.0) if "fg" in hist else None
    kw = {"hue_bins": 16} if space.startswith("hsv16") else {}
    if space.endswith("c"):  # hsvc: hue cells centred on red (the product's)
        kw["centred"], space = True, space[:-1]
    if space.endswith("s"):  # hsvs: soft hue cells (a pixel shared between the two nearest hue centres)
        kw["soft"], space = True, space[:-1]
    h = hists.histogram(data["small"], space="hsv" if space.startswith("hsv") else "rgb", bg_s=bg, **kw)
    return np.hstack([X, h]).astype(np.float32)


def recall(emb, labels, ks=(1, 5)):
    e = ablate.l2n(emb)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)[:, : max(ks)]
    same = labels[order] == labels[:, None]
    has = np.array([(labels == lab).sum() > 1 for lab in labels])
    return {f"r@{k}": float(same[has, :k].any(1).mean()) for k in ks}


def luma_test(data, index):
    cat = pd.read_csv(HERE / "sets" / "luma-variant" / "catalog.csv", dtype=str)
    cat = cat[cat["split"] == "test"]
    rows = np.array([index["magento-luma/" + p] for p in cat["image"]])
    return rows, cat["variant"].to_numpy(), cat["luma_product"].to_numpy()


def halves(emb, trips, cat_of):
    e = ablate.l2n(emb)
    ok = ((e[trips[:, 0]] - e[trips[:, 1]]) ** 2).sum(-1) < ((e[trips[:, 0]] - e[trips[:, 2]]) ** 2).sum(-1)
    inclass = np.array([cat_of[q] == cat_of[n] for q, n in zip(trips[:, 0], trips[:, 2])])
    return float(ok.mean()), float(ok[inclass].mean()), float(ok[~inclass].mean())


GEAR = {"bag", "watch", "exercise_ball", "foam_roller", "jump_rope", "pushup_grips", "resistance_band",
        "water_bottle", "yoga_brick", "yoga_strap"}
CROSS_SOLD = {"tee", "pants", "shorts", "jacket", "hoodie_sweatshirt"}


def close_match_sets(paths, index):
    """(gallery rows, in-catalogue query rows, out-of-catalogue query rows, score) per close-match test of
    docs/calibration.md: Luma apparel test products vs gear (top1), clothing-small test without hat/shoes/skirt
    (top3), and the cross-domain one: Luma studio apparel and gear against clothing-small test photos (top3)."""
    cat = pd.read_csv(HERE / "sets" / "luma-variant" / "catalog.csv", dtype=str)
    rows = np.array([index["magento-luma/" + p] for p in cat["image"]])
    gear = cat["type"].isin(GEAR).to_numpy()
    test = (cat["split"] == "test").to_numpy()
    cs = [(i, p.split("/")[1], p.split("/")[2]) for i, p in enumerate(paths) if p.startswith("clothing")]
    cs_test = np.array([i for i, sp, _ in cs if sp == "test"])
    held = {"hat", "shoes", "skirt"}
    return {
        "cm-luma": (rows[test & ~gear], rows[~test & ~gear], rows[gear], 1),
        "cm-clothing": (np.array([i for i, sp, c in cs if sp == "test" and c not in held]),
                        np.array([i for i, sp, c in cs if sp != "test" and c not in held]),
                        np.array([i for i, sp, c in cs if c in held]), 3),
        "cm-cross": (cs_test, rows[cat["type"].isin(CROSS_SOLD).to_numpy()], rows[gear], 3),
    }


def close_match_auc(emb, gallery, inside, outside, k):
    from sklearn.metrics import roc_auc_score

    e = ablate.l2n(emb)

    def score(q):
        sims = e[q] @ e[gallery].T
        return np.sort(sims, axis=1)[:, -k:].mean(1)

    labels = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    return float(roc_auc_score(labels, np.r_[score(inside), score(outside)]))


def scores(emb, sets, luma, cat_of, cm=None):
    out = {name: close_match_auc(emb, *args) for name, args in (cm or {}).items()}
    for name, trips in sets.items():
        out[name] = halves(emb, trips["test"], cat_of)
    rows, variants, products = luma
    out["luma-recall-variant"] = recall(emb[rows], variants)
    out["luma-recall-product"] = recall(emb[rows], products)
    return out


def run(args):
    data = dict(np.load(HERE / args.features))
    index = {p: i for i, p in enumerate(data["paths"])}
    cat_of = np.array([p.split("/")[1] if p.startswith("clothing") else "" for p in data["paths"]], dtype=object)
    luma_cat = pd.read_csv(HERE / "sets" / "luma-variant" / "catalog.csv", dtype=str)
    for img, typ in zip(luma_cat["image"], luma_cat["type"]):
        cat_of[index["magento-luma/" + img]] = typ
    # The clothing type+colour set's category is the garment type (the folder after the split folder).
    for i, p in enumerate(data["paths"]):
        if p.startswith("clothing"):
            cat_of[i] = p.split("/")[2]
    def to_idx(name, split):
        return np.stack([read_triplets(name, split)[c].map(index).to_numpy() for c in "qpn"], 1)

    wanted = set(EVAL_SETS) | set(args.train.split(","))
    sets = {s: {sp: to_idx(s, sp) for sp in ("train", "val", "test")} for s in wanted}
    luma = luma_test(data, index)
    cm = close_match_sets(list(data["paths"]), index)
    with open(HERE / args.out, "a") as fh:
        for v in args.variants.split(","):
            X = variant(data, v)
            zs = scores(X, {s: sets[s] for s in EVAL_SETS}, luma, cat_of, cm)
            rec = dict(variant=v, train="zero-shot", lr=None, seed=None, dim=int(X.shape[1]), scores=zs)
            fh.write(json.dumps(rec) + "\n")
            print(fmt(rec), flush=True)
            for tset in args.train.split(",") if args.seeds else ():
                for seed in [int(s) for s in args.seeds.split(",")]:
                    t0 = time.time()
                    trips = dict(sets[tset])
                    best, _ = ablate.train_head(X, X, trips, seed, False, epochs=args.epochs, lr=args.lr)
                    W = np.asarray(best["kernel"])
                    trained = scores(X @ W, {s: sets[s] for s in EVAL_SETS}, luma, cat_of, cm)
                    rec = dict(variant=v, train=tset, seed=seed, lr=args.lr, dim=int(X.shape[1]),
                               best_epoch=best["epoch"], val=best["val_acc"], scores=trained,
                               seconds=round(time.time() - t0, 1))
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    print(fmt(rec), flush=True)


def fmt(rec):
    s = rec["scores"]
    tc, cl, lt = s["typecolour"], s["class"], s["luma-typecolour"]
    return (f"{rec['variant']:14s} {rec['train']:10s} seed {rec['seed']}: clothing tc {tc[0]:.3f} (in {tc[1]:.3f}) "
            f"type {cl[0]:.3f} | luma tc {lt[0]:.3f} (in {lt[1]:.3f} / other {lt[2]:.3f}) variant "
            f"{s['luma-variant'][0]:.3f} r@1 {s['luma-recall-variant']['r@1']:.3f} "
            f"r@5 {s['luma-recall-variant']['r@5']:.3f} | close-match AUC luma {s.get('cm-luma', 0):.3f} "
            f"clothing {s.get('cm-clothing', 0):.3f} cross {s.get('cm-cross', 0):.3f} | epoch {rec.get('best_epoch')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=("extract", "run"))
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--crop", action="store_true", help="extract from the photos cropped to their product")
    ap.add_argument("--features", default="studio160.npz")
    ap.add_argument("--variants", default="gap+rgb")
    ap.add_argument("--train", default="mix,studio-mix")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="studio.jsonl")
    args = ap.parse_args()
    extract(args.size, args.crop) if args.step == "extract" else run(args)


if __name__ == "__main__":
    main()
