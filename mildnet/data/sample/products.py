"""The sample's products: what is for sale (garment type x colour x pattern) and which split each is in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES = ("t-shirt", "tank-top", "long-sleeve", "hoodie", "dress", "shirt")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (196, 30, 42),
    "maroon": (118, 24, 44),
    "orange": (238, 118, 28),
    "yellow": (242, 200, 36),
    "olive": (112, 116, 46),
    "green": (34, 138, 68),
    "teal": (18, 128, 132),
    "sky-blue": (120, 184, 232),
    "navy": (26, 38, 88),
    "purple": (112, 58, 150),
    "pink": (240, 138, 172),
    "beige": (214, 194, 158),
    "grey": (138, 140, 144),
    "black": (34, 34, 36),
    "white": (242, 242, 238),
}

PATTERNS = ("solid", "horizontal-stripes", "vertical-stripes", "polka-dots", "checks", "colour-block")

SPLITS = ("train", "val", "test")
SPLIT_SHARES = (0.70, 0.15, 0.15)
# Every split needs two products of one category (in-class negatives) and two categories (out-of-class).
MIN_PRODUCTS = 2 * len(CATEGORIES)
MAX_PRODUCTS = len(CATEGORIES) * len(COLOURS) * len(PATTERNS)


@dataclass(frozen=True)
class Product:
    """One sellable item: what a shopper would call the same product in any photo."""

    product_id: str
    index: int
    category: str
    colour: str
    pattern: str
    colour2: str  # secondary colour of the pattern; "" for solid
    split: str





def _luma(rgb) -> float:
    return float(np.asarray(rgb, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))


def _secondary_options(colour: str) -> list[str]:
    """Colours a pattern can pair with ``colour`` and still be seen at 64 px (clearly different brightness)."""
    y = _luma(COLOURS[colour])
    return [name for name, rgb in COLOURS.items() if name != colour and abs(_luma(rgb) - y) >= 70]


def make_products(products: int, seed: int) -> list[Product]:
    """Distinct (category, colour, pattern[, colour2]) products, balanced over categories, with splits."""
    rng = np.random.default_rng([seed, 1])
    colours, n_col, n_pat = list(COLOURS), len(COLOURS), len(PATTERNS)
    # A Latin-square walk per category: the first products of each category already cover every colour and
    # every pattern, so even a tiny sample is varied; each category walks a different permutation.
    walks = []
    for _ in CATEGORIES:
        col_order, pat_order = rng.permutation(n_col), rng.permutation(n_pat)
        walks.append([(colours[col_order[a]], PATTERNS[pat_order[(a + b) % n_pat]])
                      for b in range(n_pat) for a in range(n_col)])
    specs = []
    for i in range(products):
        c = i % len(CATEGORIES)
        colour, pattern = walks[c][i // len(CATEGORIES)]
        colour2 = "" if pattern == "solid" else str(rng.choice(_secondary_options(colour)))
        specs.append((CATEGORIES[c], colour, pattern, colour2))
    split_of = _assign_splits([s[0] for s in specs], rng)
    return [Product(f"p{i:04d}", i, *spec, split_of[i]) for i, spec in enumerate(specs)]


def _assign_splits(categories: list[str], rng: np.random.Generator) -> list[str]:
    """Products disjoint across splits, ~70/15/15, every split with in-class and out-of-class negatives.

    Products are dealt in same-category pairs (a leftover third joins its pair), pairs interleaved across
    categories, so the val and test sets each get at least two pairs of different categories.
    """
    by_cat: dict[str, list[int]] = {}
    for i, cat in enumerate(categories):
        by_cat.setdefault(cat, []).append(i)
    queues = []
    for cat in sorted(by_cat, key=lambda c: rng.random()):
        idx = [int(j) for j in rng.permutation(by_cat[cat])]
        units = [idx[k:k + 2] for k in range(0, len(idx) - len(idx) % 2, 2)]
        if len(idx) % 2 and units:
            units[-1].append(idx[-1])
        queues.append(units)
    units = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]
    n = len(categories)
    targets = {s: max(4, int(round(share * n))) for s, share in zip(SPLITS[1:], SPLIT_SHARES[1:])}
    out = ["train"] * n
    pos = 0
    for split in SPLITS[1:]:
        taken = 0
        while taken < targets[split] and pos < len(units) - 2:
            for j in units[pos]:
                out[j] = split
            taken += len(units[pos])
            pos += 1
    return out


