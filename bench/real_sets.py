"""Real-photo triplet sets built from clothing-dataset-small, for the training ablations (docs/training-recipe.md).

Three sets, each a folder with ``catalog.csv`` and ``train/val/test.csv`` over the dataset's own image root:

- ``class``: the dataset's own labels (product = garment type); the negative is another type. Easy for
  ImageNet features, blind to colour.
- ``typecolour``: mirrors the kept-aside catalogue the issue measures on (positive = same article type AND
  colour; half of the negatives the same type in another colour, half another type). clothing-small has no
  colour labels, so each photo gets a colour name from its garment: the median hue/saturation/value of the
  central 40% of the frame (the garment is centred in these photos), named with a fixed 11-colour palette.
  The names are noisy (patterned garments, background bleeding in) and come from pixels, which flatters the
  colour-histogram baseline a little; they are a proxy, not ground truth.
- ``mix``: what the shipped real-photo model (mildnet/pretrained/real) trains on: all ``typecolour``
  training triplets plus a seeded 30% of the ``class`` ones (colour matters, but a garment type in another
  colour is still closer than another type), validated on ``typecolour`` val.
- ``instance``: positive = another augmented view (crop, flip, small rotation, light jitter) of the same photo,
  negative = another photo (half of the same type). Views and a copy of
  the originals are written as JPEGs under ``--out``.

Studio sets from magento-luma (``--luma DIR``; real studio catalogue photos with the shop's own product ids, types
and colours; split by product id, stratified by type; ``alt`` close-up views left out):

- ``luma-typecolour``: positive = same product type AND colour family (the shop's labels), half of the negatives
  the same type in another colour: often the query's own photo re-coloured (Luma's colour variants are recolours
  of one master photo), the hardest "same type, other colour" negative there is.
- ``luma-variant``: product = product id + colour (another view of the same variant is the positive), category =
  product type; for recall@k by product.
- ``studio-mix`` (needs ``class``, ``typecolour``, ``mix``): what the shipped real-photo model trains on since
  issue 17: clothing-small's ``mix`` train triplets, Luma's type + colour train triplets and one garment-type
  triplet per Luma train photo, image paths relative to a common root (the parent of both datasets), validated
  on both type + colour sets and clothing-small's garment-type set.

    python bench/real_sets.py --images ../shared/data/clothing-dataset-small --out /tmp/real
    python bench/real_sets.py --images ../shared/data/clothing-dataset-small --luma ../shared/data/magento-luma \
        --out /tmp/real --sets class,typecolour,mix,luma,studio-mix
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mildnet.data.catalog import catalog_from_folder, generate_triplets, write_catalog  # noqa: E402
from mildnet.data.images import load_image  # noqa: E402
from mildnet.data.triplets import write_triplets  # noqa: E402

# Hue boundaries in degrees (HSV); chroma-free colours are decided by saturation/value first.
_HUES = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (255, "blue"), (290, "purple"),
         (340, "pink"), (361, "red"))


def colour_name(image: np.ndarray) -> str:
    """A coarse colour name for the garment in the centre of a uint8 RGB photo."""
    h, w = image.shape[:2]
    centre = image[int(h * 0.3): int(h * 0.7), int(w * 0.3): int(w * 0.7)]
    hsv = np.asarray(Image.fromarray(centre).convert("HSV"), dtype=np.float32).reshape(-1, 3)
    hue, sat, val = hsv[:, 0] * (360 / 255), hsv[:, 1] / 255, hsv[:, 2] / 255
    s, v = float(np.median(sat)), float(np.median(val))
    if v < 0.22:
        return "black"
    if s < 0.18:
        return "white" if v > 0.72 else "grey"
    chromatic = sat >= 0.18
    # The circular mode of the hue of the coloured pixels (a median would average red's two ends).
    counts, edges = np.histogram(hue[chromatic], bins=36, range=(0, 360))
    peak = (edges[np.argmax(counts)] + 5.0) % 360
    name = next(n for bound, n in _HUES if peak < bound)
    if name in ("orange", "red") and v < 0.5:
        return "brown"
    return name


def class_set(images: Path, out: Path, seed: int) -> pd.DataFrame:
    catalog = catalog_from_folder(images)
    _write_set(out / "class", catalog, seed)
    return catalog


def typecolour_set(images: Path, out: Path, catalog: pd.DataFrame, seed: int) -> pd.DataFrame:
    colours = [colour_name(load_image(images / name, None)) for name in catalog["image"]]
    frame = catalog.assign(category=catalog["product_id"], colour=colours)
    frame["product_id"] = frame["category"] + "-" + frame["colour"]
    _write_set(out / "typecolour", frame, seed)
    return frame


def mix_set(out: Path, seed: int, class_share: float = 0.3) -> None:
    folder = out / "mix"
    folder.mkdir(parents=True, exist_ok=True)
    typecolour = pd.read_csv(out / "typecolour" / "train.csv", header=None, dtype=str)
    classes = pd.read_csv(out / "class" / "train.csv", header=None, dtype=str)
    classes = classes.sample(frac=class_share, random_state=seed)
    train = pd.concat([typecolour, classes], ignore_index=True)
    train.to_csv(folder / "train.csv", header=False, index=False, lineterminator="\n")
    for split in ("val", "test"):
        (folder / f"{split}.csv").write_bytes((out / "typecolour" / f"{split}.csv").read_bytes())
    print(f"mix: train {len(train)} triplets ({len(typecolour)} typecolour + {len(classes)} class)")


def instance_set(images: Path, out: Path, catalog: pd.DataFrame, seed: int, views: int = 2) -> None:
    """Each photo plus ``views`` augmented copies form one product; the copies live under out/instance/views."""
    rng = np.random.default_rng(seed)
    dest = out / "instance"
    rows = []
    for image, category, split in zip(catalog["image"], catalog["product_id"], catalog["split"]):
        product = Path(image).with_suffix("").as_posix()
        rows.append({"image": f"orig/{image}", "product_id": product, "category": category, "split": split})
        photo = Image.fromarray(load_image(images / image, None))
        for k in range(views):
            name = f"views/{product}-v{k}.jpg"
            path = dest / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            _augment(photo, rng).save(path, quality=90)
            rows.append({"image": name, "product_id": product, "category": category, "split": split})
    # Copies, not a symlink: image roots are confined, and a link leaving the root is refused on purpose.
    for image in catalog["image"]:
        target = dest / "images" / "orig" / image
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(images / image, target)
    _write_set(dest, pd.DataFrame(rows), seed)


def _augment(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = photo.size
    scale = rng.uniform(0.65, 0.9)
    cw, ch = int(w * scale), int(h * scale)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = photo.crop((x, y, x + cw, y + ch)).rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.85, 1.15)))
    return ImageEnhance.Contrast(view).enhance(float(rng.uniform(0.85, 1.15)))


LUMA_SPLIT = (0.55, 0.15, 0.30)
# Luma is small (613 photos): more triplets per query steady the test figure and give training more pairs.
LUMA_PER_QUERY = 6


def luma_catalog(luma: Path, seed: int) -> pd.DataFrame:
    """Luma's labels as a catalogue: one row a photo (no ``alt`` close-ups), split by product id within each type."""
    labels = pd.read_csv(luma / "labels.csv", dtype=str, keep_default_na=False)
    labels = labels[labels["view"] != "alt"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    split_of = {}
    for _, products in sorted(labels.groupby("product_type")["product_id"]):
        ids = np.array(sorted(products.unique()))
        rng.shuffle(ids)
        bounds = np.round(np.cumsum(LUMA_SPLIT) * len(ids)).astype(int)
        for i, pid in enumerate(ids):
            split_of[pid] = "train" if i < bounds[0] else "val" if i < bounds[1] else "test"
    return pd.DataFrame({
        "image": labels["image"], "luma_product": labels["product_id"], "variant": labels["variant_id"],
        "type": labels["product_type"], "colour": labels["colour"], "view": "",
        "split": labels["product_id"].map(split_of),
    })


def luma_sets(luma: Path, out: Path, seed: int) -> pd.DataFrame:
    base = luma_catalog(luma, seed)
    typecolour = base.assign(product_id=base["type"] + "-" + base["colour"], category=base["type"])
    folder = out / "luma-typecolour"
    folder.mkdir(parents=True, exist_ok=True)
    write_catalog(folder / "catalog.csv", typecolour)
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        triplets = typecolour_triplets(typecolour[typecolour["split"] == split], rng, LUMA_PER_QUERY)
        write_triplets(folder / f"{split}.csv", triplets)
        print(f"luma-typecolour: {split} {len(triplets)} triplets")
    variant = base.assign(product_id=base["variant"], category=base["type"])
    _write_set(out / "luma-variant", variant, seed, per_query=LUMA_PER_QUERY)
    return base


def typecolour_triplets(part: pd.DataFrame, rng: np.random.Generator, per_query: int) -> pd.DataFrame:
    """Type + colour triplets as the kept-aside catalogue has them: the positive is another *product* of the
    query's type and colour (never another view of the query's own product, which would be far easier), half
    of the negatives the same type in another colour (the query's own re-coloured photo among them)."""
    images, products = part["image"].to_numpy(), part["luma_product"].to_numpy()
    types, colours = part["type"].to_numpy(), part["colour"].to_numpy()
    rows = []
    for q in range(len(part)):
        positives = np.nonzero((types == types[q]) & (colours == colours[q]) & (products != products[q]))[0]
        in_class = np.nonzero((types == types[q]) & (colours != colours[q]))[0]
        other = np.nonzero(types != types[q])[0]
        if not len(positives) or not len(other):
            continue
        for _ in range(per_query):
            pool = in_class if len(in_class) and rng.random() < 0.5 else other
            rows.append((images[q], images[rng.choice(positives)], images[rng.choice(pool)]))
    return pd.DataFrame(rows, columns=["query", "positive", "negative"])


def type_triplets(part: pd.DataFrame, rng: np.random.Generator, per_query: int) -> pd.DataFrame:
    """Garment-type triplets: the positive another product of the query's type in any colour, the negative
    another type (what clothing-small's ``class`` set is to its ``typecolour`` set)."""
    images, products, types = part["image"].to_numpy(), part["luma_product"].to_numpy(), part["type"].to_numpy()
    rows = []
    for q in range(len(part)):
        positives = np.nonzero((types == types[q]) & (products != products[q]))[0]
        negatives = np.nonzero(types != types[q])[0]
        if len(positives) and len(negatives):
            rows += [(images[q], images[rng.choice(positives)], images[rng.choice(negatives)])
                     for _ in range(per_query)]
    return pd.DataFrame(rows, columns=["query", "positive", "negative"])


# Luma product types that clothing-small sells under another name (tanks, hoodies and bras have no clear match).
LUMA_TO_CLOTHING = {"tee": "t-shirt", "pants": "pants", "shorts": "shorts", "jacket": "outwear"}


def cross_domain_triplets(out: Path, prefixes: dict, rng: np.random.Generator, per_query: int = 2) -> pd.DataFrame:
    """Train triplets across the two domains: a Luma studio photo as the query and a clothing-small user photo of
    the same garment type and colour name as the positive, or the other way round; the negative a photo of the
    positive's domain, half the same type in another colour. Without them the model placed studio photos of the
    types clothing-small sells further from its photos than studio photos of bags and watches (docs/calibration.md)."""
    luma = pd.read_csv(out / "luma-typecolour" / "catalog.csv", dtype=str, keep_default_na=False)
    luma = luma[(luma["split"] == "train") & luma["type"].isin(list(LUMA_TO_CLOTHING))]
    luma = pd.DataFrame({"image": prefixes["luma"] + luma["image"], "type": luma["type"].map(LUMA_TO_CLOTHING),
                         "colour": luma["colour"].replace({"gray": "grey"})})
    clothing = pd.read_csv(out / "typecolour" / "catalog.csv", dtype=str, keep_default_na=False)
    clothing = clothing[clothing["split"] == "train"]
    clothing = pd.DataFrame({"image": prefixes["clothing"] + clothing["image"], "type": clothing["category"],
                             "colour": clothing["colour"]})
    rows = []
    for queries, others in ((luma, clothing), (clothing[clothing["type"].isin(list(LUMA_TO_CLOTHING.values()))], luma)):
        images, types, colours = others["image"].to_numpy(), others["type"].to_numpy(), others["colour"].to_numpy()
        for image, kind, colour in zip(queries["image"], queries["type"], queries["colour"]):
            positives = np.nonzero((types == kind) & (colours == colour))[0]
            in_class = np.nonzero((types == kind) & (colours != colour))[0]
            other = np.nonzero(types != kind)[0]
            if not len(positives) or not len(other):
                continue
            for _ in range(per_query):
                pool = in_class if len(in_class) and rng.random() < 0.5 else other
                rows.append((image, images[rng.choice(positives)], images[rng.choice(pool)]))
    return pd.DataFrame(rows)


def studio_mix_set(out: Path, clothing: Path, luma: Path, seed: int, cross: bool = False) -> None:
    """What the shipped model trains on: clothing-small's mix, Luma's type + colour triplets and one garment-type
    triplet per Luma photo, paths relative to the datasets' common parent. Validation: both type + colour sets
    and clothing-small's garment-type set, so the best epoch is not chosen for colour alone (without the type
    triplets and that validation the CLI's best epoch was the first, and garment type fell from 0.880 to 0.821)."""
    root = Path(os.path.commonpath([clothing.resolve(), luma.resolve()]))
    folder = out / ("studio-cross" if cross else "studio-mix")
    folder.mkdir(parents=True, exist_ok=True)
    catalog = pd.read_csv(out / "luma-typecolour" / "catalog.csv", dtype=str, keep_default_na=False)
    luma_types = type_triplets(catalog[catalog["split"] == "train"].reset_index(drop=True),
                               np.random.default_rng(seed), per_query=1)
    parts = {"train": [("mix", clothing), ("luma-typecolour", luma), (luma_types, luma)],
             "val": [("typecolour", clothing), ("luma-typecolour", luma), ("class", clothing)],
             "test": [("typecolour", clothing), ("luma-typecolour", luma)]}
    if cross:
        prefixes = {name: path.resolve().relative_to(root).as_posix() + "/"
                    for name, path in (("luma", luma), ("clothing", clothing))}
        parts["train"].append((cross_domain_triplets(out, prefixes, np.random.default_rng(seed)), None))
    for split, sources in parts.items():
        frames = []
        for src, images in sources:
            frame = pd.read_csv(out / src / f"{split}.csv", header=None, dtype=str) if isinstance(src, str) else src
            frame = frame.set_axis(range(3), axis=1)
            prefix = images.resolve().relative_to(root).as_posix() + "/" if images is not None else ""
            frames.append(frame.apply(lambda col, prefix=prefix: prefix + col))
        both = pd.concat(frames, ignore_index=True)
        both.to_csv(folder / f"{split}.csv", header=False, index=False, lineterminator="\n")
        print(f"studio-mix: {split} {len(both)} triplets (root {root})")


def _write_set(folder: Path, catalog: pd.DataFrame, seed: int, per_query: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_catalog(folder / "catalog.csv", catalog)
    for split, triplets in generate_triplets(catalog, per_query=per_query, seed=seed).items():
        write_triplets(folder / f"{split}.csv", triplets)
        print(f"{folder.name}: {split} {len(triplets)} triplets")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="clothing-dataset-small folder")
    parser.add_argument("--luma", type=Path, help="magento-luma folder (for the luma and studio-mix sets)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", default="class,typecolour,mix,instance")
    parser.add_argument("--class-share", type=float, default=0.3,
                        help="share of the garment-type (class) train triplets in the mix sets (default 0.3)")
    args = parser.parse_args(argv)
    wanted = set(args.sets.split(","))
    catalog = class_set(args.images, args.out, args.seed)
    if "typecolour" in wanted:
        frame = typecolour_set(args.images, args.out, catalog, args.seed)
        print(frame.groupby("colour").size().sort_values(ascending=False).to_string())
    if "mix" in wanted:
        mix_set(args.out, args.seed, class_share=args.class_share)
    if "instance" in wanted:
        instance_set(args.images, args.out, catalog, args.seed)
    if wanted & {"luma", "studio-mix", "studio-cross"}:
        if args.luma is None:
            parser.error("the luma and studio-mix sets need --luma DIR")
        base = luma_sets(args.luma, args.out, args.seed)
        print(base.groupby(["split", "type"]).size().unstack(0).fillna(0).astype(int).to_string())
    if "studio-mix" in wanted:
        studio_mix_set(args.out, args.images, args.luma, args.seed)
    if "studio-cross" in wanted:
        studio_mix_set(args.out, args.images, args.luma, args.seed, cross=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
