"""Per-catalogue, per-model calibration: match strength and the "close match" decision fitted on the searched
catalogue's own photos, kept beside its cached embeddings (see docs/calibration.md for the measurements).

A run's calibration (:mod:`mildnet.calibration`) comes from its validation triplets, another set of photos: on a
studio catalogue it put sunglasses at "97 % match" for a handbag. Here both parts come from the catalogue:

**Match strength** (:func:`fit_match`): an isotonic cosine -> P(same product) map (:func:`mildnet.calibration.fit`)
whose matching pairs are (photo, an augmented view of it: crop, flip, light; made in memory, the only images
the model runs on) and pairs of photos of one product; non-matching pairs are photos of other products of the
same category (one at random and the nearest one), so "match" means "this product", not "this kind of thing".

**Close match** (:func:`fit_rule`): a threshold on a score of the query's results. A catalogue cannot show
us photos of things it does not sell, but a categorised one can simulate them: each photo queried against the
catalogue without its category ("a type it does not sell") versus against the catalogue without its product
("another photo of a type it sells"). The score (best cosine, the mean of the top 3, or a logistic
combination of the best cosine and the share of the top 5 in one category, fitted on the simulation) with the
higher simulated ROC AUC wins. A model with a product-type head (:mod:`mildnet.product_types`) that recognises the
catalogue's categories decides by kind instead: the share of the query's type probability on types the catalogue
sells, its outside simulated by holding out a whole type group, its threshold
:attr:`CatalogueSettings.kind_threshold`. Otherwise the threshold is the one that makes the larger of the two
simulated error rates smallest. Either is lowered where needed so that at most
:attr:`CatalogueSettings.max_in_rejected` of the sold-type simulation is rejected (a held-out category is often a
near neighbour of a sold one, tee and tank, so the simulated outside is harder than a bag or a watch; measured in
docs/calibration.md).
A catalogue without two categories cannot simulate the outside, so a *flat* rule is used: close when the
score reaches the ``max_in_rejected`` quantile of the photos' leave-one-product-out scores (90 % of photos
like the catalogue's own are called close; what is rejected is further from everything than nearly any
catalogue photo is from its nearest other product).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mildnet import product_types as pt
from mildnet.calibration import Calibration, CalibrationError, fit, rank_auc
from mildnet.errors import DataError, ImageError, StoreError

__all__ = [
    "DOCUMENT", "CatalogueCalibration", "CatalogueSettings", "CloseMatchRule", "calibrate_catalogue",
    "close_match_metrics", "evaluate_close_match", "fit_match", "fit_rule", "load_for", "refresh", "save_for",
    "catalogue_labels", "describe", "rule_scores", "top_cosines", "top_neighbours",
]

FORMAT = 1
DOCUMENT = "catalogue-calibration"
# The document's key when it records why the catalogue could not be calibrated instead of a calibration.
UNFITTED = "unfitted"
# Score name -> how many top results it reads. "top1"/"top3": the best cosine / the mean of the best three.
# "top1+agree5": a logistic combination, fitted on the catalogue's simulation, of the best cosine and the share of
# the top five results in one category (a tee among apparel gets tees; a bag gets neighbours of mixed types).
# "kind": the share of the query's product-type probability on types the catalogue sells (a model with a type
# head only); it needs the query's type probabilities, not its results.
SCORES = {"top1": 1, "top3": 3, "top1+agree5": 5, "kind": 1}
AGREE = "top1+agree5"
KIND = "kind"
METHODS = ("category holdout", "type-group holdout", "flat")


@dataclass(frozen=True)
class CatalogueSettings:
    """How much of a catalogue is used (caps keep it to seconds for any size)."""

    augmented_photos: int = 128  # photos whose augmented view the model embeds
    pair_photos: int = 2000  # photos drawn for the vector-only pairs and the close-match simulation
    # At most this share of the catalogue's own simulated queries (another photo of a type it sells) is called
    # "no close match": a shopper looking for something the shop sells should nearly always be shown it.
    max_in_rejected: float = 0.1
    # The fitted top1+agree5 score is offered only when both sides of the simulation have this many queries: on a
    # 20-photo catalogue its logistic fit took extreme weights (10.4, -31.4) from a handful of points.
    min_fit_queries: int = 100
    # The kind score (a model with a product-type head) is used where the head recognises the catalogue's
    # categories: at least this share of its categorised photos are typed as most of their category is.
    min_type_agreement: float = 0.6
    # ...and calls a photo close when at least this share of its type probability is on types the catalogue sells
    # (lower where the catalogue's own photos need it: max_in_rejected applies as to every score).
    kind_threshold: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class CloseMatchRule:
    """Close when ``score`` (see :data:`SCORES`) of a query's results is >= ``threshold``; the rest says how it
    was chosen and how it did on the catalogue's simulation (rates None for a flat rule). ``method``: how the
    outside was simulated: one category held out at a time ("category holdout"), the categories of one product type
    together ("type-group holdout", the kind score), or not at all ("flat")."""

    score: str
    threshold: float
    method: str
    auc: float | None = None
    in_called_close: float | None = None
    out_called_not_close: float | None = None
    n_in: int = 0
    n_out: int = 0
    note: str | None = None
    # "top1+agree5" only: (intercept, weight of the best cosine, weight of the agreement), and the category of
    # each catalogue photo id (a result without one counts as a category of its own).
    weights: tuple[float, float, float] | None = None
    categories: dict[str, str] | None = None
    # "kind" scores only: the catalogue's share of type probability per type (product_types.catalogue_share).
    sold_share: tuple[float, ...] | None = None
    # The simulated ROC AUC of every score that was tried (name -> AUC), the chosen one included.
    considered: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise CalibrationError(f"unknown close-match score {self.score!r}")
        # A document edited or damaged into other types must be refused here (and refitted), not fail later
        # with a traceback where the rule is described or applied.
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold):
            raise CalibrationError("close-match threshold is not a number")
        for name in ("auc", "in_called_close", "out_called_not_close"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= value <= 1.0):
                raise CalibrationError(f"close-match {name} must be a number in [0, 1] or null, got {value!r}")
        for name in ("n_in", "n_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CalibrationError(f"close-match {name} must be a count, got {value!r}")
        if self.method not in METHODS or not (self.note is None or isinstance(self.note, str)):
            raise CalibrationError(f"unknown close-match method {self.method!r}")
        if self.score == AGREE:
            if (not isinstance(self.weights, (list, tuple)) or len(self.weights) != 3
                    or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.weights)):
                raise CalibrationError(f"the {AGREE} score needs three finite weights")
            if not isinstance(self.categories, dict):
                raise CalibrationError(f"the {AGREE} score needs the catalogue's categories")
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if self.considered is not None and (not isinstance(self.considered, dict) or not all(
                isinstance(k, str) and isinstance(a, (int, float)) and 0.0 <= a <= 1.0
                for k, a in self.considered.items())):
            raise CalibrationError("close-match 'considered' must map score names to AUCs in [0, 1]")
        if self.score == KIND:
            if (not isinstance(self.sold_share, (list, tuple)) or len(self.sold_share) < 2 or not all(
                    isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in self.sold_share)):
                raise CalibrationError(f"the {self.score} score needs the catalogue's share of each product type")
            object.__setattr__(self, "sold_share", tuple(float(x) for x in self.sold_share))

    @property
    def k(self) -> int:
        return SCORES[self.score]

    @property
    def needs_kinds(self) -> bool:
        """Whether the score reads the query's product-type probabilities (``kinds`` of :meth:`value`)."""
        return self.score == KIND

    def value(self, cosines: Sequence[float], ids: Sequence[str] | None = None, kinds=None) -> float:
        """The score of one query's results: their cosines, (for ``top1+agree5``) their catalogue ids in the same
        order, and (for ``kind``) the query's type probabilities; NaN without results."""
        if self.needs_kinds:
            if kinds is None or len(kinds) != len(self.sold_share):
                raise CalibrationError(f"the {self.score} close-match score needs the query's product-type "
                                       f"probabilities ({len(self.sold_share)} types)")
            if not len(cosines):
                return float("nan")
            return float(pt.sold_mass(kinds, self.sold_share))
        if self.score != AGREE:
            top = sorted((float(c) for c in cosines), reverse=True)[:self.k]
            return float(np.mean(top)) if top else float("nan")
        if ids is None or len(ids) != len(cosines):
            raise CalibrationError(f"the {AGREE} close-match score needs the results' ids")
        ranked = sorted(zip((float(c) for c in cosines), ids), key=lambda x: -x[0])[:self.k]
        if not ranked:
            return float("nan")
        cats = [self.categories.get(str(i), f"\0{i}") for _, i in ranked]
        share = max(cats.count(c) for c in cats) / len(cats)
        return _combine(self.weights, ranked[0][0], share)

    def is_close(self, cosines: Sequence[float], ids: Sequence[str] | None = None, kinds=None) -> bool:
        value = self.value(cosines, ids, kinds)
        return math.isfinite(value) and value >= self.threshold


@dataclass(frozen=True)
class CatalogueCalibration:
    """Match map and close-match rule of one catalogue embedded by one model."""

    match: Calibration
    rule: CloseMatchRule
    model_fingerprint: str
    catalog_fingerprint: str
    summary: dict = field(default_factory=dict)
    labels_fingerprint: str = ""  # labels_fingerprint() of the table it was fitted with
    types_fingerprint: str = ""  # the product-type head it was fitted with ("" for none)

    def to_dict(self) -> dict:
        rule = asdict(self.rule)
        for name in ("weights", "sold_share"):
            if rule[name] is not None:
                rule[name] = list(rule[name])
        return {"format": FORMAT, "model_fingerprint": self.model_fingerprint,
                "catalog_fingerprint": self.catalog_fingerprint, "labels_fingerprint": self.labels_fingerprint,
                "types_fingerprint": self.types_fingerprint, "match": self.match.to_dict(), "rule": rule,
                "summary": self.summary}

    @classmethod
    def from_dict(cls, data: dict) -> CatalogueCalibration:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"unknown format {data.get('format') if isinstance(data, dict) else data!r}")
        try:
            rule = data["rule"]
            if not isinstance(rule, dict):
                raise TypeError("'rule' is not an object")
            return cls(Calibration.from_dict(data["match"]), CloseMatchRule(**rule), str(data["model_fingerprint"]),
                       str(data["catalog_fingerprint"]), dict(data.get("summary") or {}),
                       str(data.get("labels_fingerprint") or ""), str(data.get("types_fingerprint") or ""))
        except KeyError as exc:
            raise CalibrationError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"bad value: {exc}") from None


# --- scores --------------------------------------------------------------------------------------


def top_neighbours(vectors, queries, mask_of: Callable[[np.ndarray], np.ndarray] | None = None, k: int = 3,
                   block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(n_queries, k) best cosines of each query against ``vectors``, best first (-inf where fewer), and the
    catalogue rows they belong to; ``mask_of(query_rows)`` gives a (len(query_rows), n) mask of catalogue rows
    to leave out for them."""
    v = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    k = max(1, min(k, len(v)))
    out = np.full((len(q), k), -np.inf, dtype=np.float64)
    where = np.zeros((len(q), k), dtype=np.int64)
    for start in range(0, len(q), block):
        rows = np.arange(start, min(start + block, len(q)))
        sims = q[rows] @ v.T
        if mask_of is not None:
            sims[mask_of(rows)] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(
            np.arange(sims.shape[1]), (len(rows), 1))
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable")
        where[rows] = np.take_along_axis(part, order, 1)
        out[rows] = np.take_along_axis(sims, where[rows], 1)
    return out, where


def top_cosines(vectors, queries, mask_of: Callable[[np.ndarray], np.ndarray] | None = None, k: int = 3,
                block: int = 256) -> np.ndarray:
    """The cosines of :func:`top_neighbours`."""
    return top_neighbours(vectors, queries, mask_of, k, block)[0]


def _agreement(top: np.ndarray, top_category: np.ndarray, k: int = SCORES[AGREE]) -> np.ndarray:
    """Share of a query's top ``k`` results (those it has) in their most common category; 0 without results."""
    finite = np.isfinite(top[:, :k])
    cats = top_category[:, :k]
    counts = np.stack([((cats == cats[:, [j]]) & finite).sum(axis=1) for j in range(cats.shape[1])], axis=1)
    counts = np.where(finite, counts, 0)
    return counts.max(axis=1) / np.maximum(finite.sum(axis=1), 1)


def _combine(weights, top1, agreement):
    return weights[0] + weights[1] * top1 + weights[2] * agreement


def _logistic(x: np.ndarray, y: np.ndarray, iterations: int = 50, ridge: float = 1e-3) -> np.ndarray:
    """Weights (intercept first) of a logistic regression of y on the columns of x, both classes weighted
    equally (Newton steps on standardised columns, a little ridge so separable data stays finite)."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z = np.column_stack([np.ones(len(x)), (x - mu) / sd])
    weight = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))
    w = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (weight * (p - y)) + ridge * w
        hess = (z * (weight * p * (1 - p))[:, None]).T @ z + ridge * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    coef = w[1:] / sd
    return np.concatenate([[w[0] - float(coef @ mu)], coef])


def _score(top: np.ndarray, name: str) -> np.ndarray:
    """Score per query from its best cosines; a query with fewer than k results uses those it has."""
    t = top[:, :SCORES[name]]
    finite = np.isfinite(t)
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(axis=1), np.where(finite, t, 0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1),
                        -np.inf)


def close_match_metrics(in_scores, out_scores, threshold: float) -> dict:
    """ROC AUC of a score separating in- from out-of-catalogue queries, and both rates at ``threshold``."""
    pos, neg = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    return {
        "auc": rank_auc(pos, neg) if len(pos) and len(neg) else None,
        "in_called_close": float(np.mean(pos >= threshold)) if len(pos) else None,
        "out_called_not_close": float(np.mean(neg < threshold)) if len(neg) else None,
        "n_in": int(len(pos)), "n_out": int(len(neg)), "threshold": float(threshold),
    }


def _balanced_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The threshold whose larger error rate (in called not close, out called close) is smallest."""
    candidates = np.unique(np.concatenate([pos, neg]))
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    miss = np.searchsorted(pos_sorted, candidates, side="left") / len(pos)  # in-scores below the threshold
    false = 1.0 - np.searchsorted(neg_sorted, candidates, side="left") / len(neg)  # out-scores at or above it
    worst = np.maximum(miss, false) + 1e-9 * (miss + false)
    i = int(np.argmin(worst))
    # Halfway to the next lower score, so a query scoring just under the chosen in-score is not rejected by a hair.
    below = candidates[i - 1] if i > 0 else candidates[i]
    return float((candidates[i] + below) / 2.0)


# --- fitting -------------------------------------------------------------------------------------


def _labels(ids: Sequence[str], labels) -> tuple[np.ndarray, np.ndarray | None]:
    """Product and category code per row; a photo without a product id is its own product.

    A folder of class folders (``tee/a.jpg``, also under a train/val/test folder), with no table or with the table
    `data add` writes for it (product = class, no category), is a catalogue of *types*: each photo is its own
    product and its class folder the category. Read as products, the simulation of "a type it does not sell" had
    nothing to hold out and the flat rule called 35 % of real photos of unsold types close (18 % this way)."""
    from mildnet.data.catalog import folder_class

    classes = [folder_class(i) for i in ids]
    by_folder = None
    if None not in classes and len(set(classes)) >= 2:
        by_folder = np.unique(np.asarray(classes, dtype=object), return_inverse=True)[1]
    if labels is None:
        return np.arange(len(ids)), by_folder
    table = labels.drop_duplicates("image").set_index("image")
    products = table["product_id"] if "product_id" in table else None
    cats = table["category"] if "category" in table else None

    def cleaned(series):
        values = [None if series is None else series.get(i) for i in ids]
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == "" else str(v)
                for v in values]

    def codes(values):
        return np.unique(np.asarray(values, dtype=object), return_inverse=True)[1]

    product_values, category_values = cleaned(products), cleaned(cats)
    if by_folder is not None and all(c is None for c in category_values) and product_values == classes:
        return np.arange(len(ids)), by_folder  # the class-folder table: products are types
    product = codes([v if v is not None else f"\0{n}" for n, v in enumerate(product_values)])
    category = None if any(v is None for v in category_values) else codes(category_values)
    return product, category


def labels_fingerprint(ids: Sequence[str], labels) -> str:
    """What the calibration learnt from the labels: a hash of each photo's product and category as
    :func:`_labels` reads them, so a catalogue.csv added or edited later refits it (the set's own fingerprint
    follows the photos only)."""
    product, category = _labels(list(ids), labels)
    h = hashlib.sha256()
    h.update(np.asarray(product, dtype=np.int64).tobytes())
    h.update(b"-" if category is None else np.asarray(category, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _candidates(in_top, in_cat, out_top, out_cat, min_fit: int = 2):
    """(name, in-scores, out-scores, weights) of each close-match score on the simulation, simplest first; the
    fitted one only with ``min_fit`` queries on each side."""
    for name in ("top1", "top3"):
        yield name, _score(in_top, name), _score(out_top, name), None
    pos_ok, neg_ok = np.isfinite(in_top[:, 0]), np.isfinite(out_top[:, 0])
    x = np.concatenate([np.column_stack([t[ok, 0], _agreement(t[ok], c[ok])])
                        for t, c, ok in ((in_top, in_cat, pos_ok), (out_top, out_cat, neg_ok))])
    y = np.concatenate([np.ones(pos_ok.sum()), np.zeros(neg_ok.sum())])
    if pos_ok.sum() < max(2, min_fit) or neg_ok.sum() < max(2, min_fit):
        return
    weights = _logistic(x, y)
    value = _combine(weights, x[:, 0], x[:, 1])
    yield AGREE, value[y == 1], value[y == 0], tuple(float(w) for w in weights)


def _group_sums(kinds: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each photo's group index, the summed type probabilities of each group)."""
    codes, inverse = np.unique(group, return_inverse=True)
    sums = np.zeros((len(codes), kinds.shape[1]))
    np.add.at(sums, inverse, kinds)
    return inverse, sums


def _type_groups(kinds: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Per photo, the product type its category's photos are most probably of (the category's mean type
    probability, arg max): categories the type head sees as one kind (tee and tank: both t-shirts) form one group."""
    inverse, sums = _group_sums(kinds, category)
    return sums.argmax(axis=1)[inverse]


def _held_out_mass(kinds: np.ndarray, group: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Sold type mass of each of ``rows`` against the catalogue without the rows of its own ``group`` (its
    product, or its category): the type share the simulated catalogue would have."""
    inverse, sums = _group_sums(kinds, group)
    counts = np.bincount(inverse, minlength=len(sums)).astype(np.float64)
    left = np.maximum(len(kinds) - counts[inverse[rows]], 1)
    rest = (kinds.sum(axis=0)[None, :] - sums[inverse[rows]]) / left[:, None]
    return np.einsum("ij,ij->i", kinds[rows], np.minimum(1.0, rest / pt.SOLD_SHARE))


def _kind_simulation(kinds, product, category, rows, has_peer):
    """(in, out, agreement) of the kind score's simulation, or None where it cannot be run. In and out: sold type
    masses of each photo against the catalogue without its product, and without its whole type group (all
    categories of the product type its category is most probably of); agreement: the share of photos typed as
    most of their category is. A catalogue whose categories all fall in one type group (a shop of things the type
    head does not know) cannot show what an unsold type scores."""
    groups = _type_groups(kinds, category)
    if len(np.unique(groups)) < 2:
        return None
    pos = _held_out_mass(kinds, product, rows)[has_peer]
    neg = _held_out_mass(kinds, groups, rows)
    agreement = float(np.mean(kinds.argmax(axis=1) == groups))
    return (pos, neg, agreement) if len(pos) and len(neg) else None


def fit_rule(vectors: np.ndarray, product: np.ndarray, category: np.ndarray | None,
             settings: CatalogueSettings = CatalogueSettings(), ids: Sequence[str] | None = None,
             kinds: np.ndarray | None = None) -> CloseMatchRule:
    """The close-match rule of a catalogue (see the module docstring); DataError below two photos. ``ids``
    (catalogue photo ids, row order; default the row numbers) name the rows for a ``top1+agree5`` rule;
    ``kinds`` (the photos' product-type probabilities, row order) offers the kind score."""
    v = np.asarray(vectors, dtype=np.float32)
    if len(v) < 2:
        raise DataError("a close-match threshold needs at least two photos in the catalogue")
    rng = np.random.default_rng(settings.seed)
    rows = np.arange(len(v)) if len(v) <= settings.pair_photos else np.sort(
        rng.choice(len(v), settings.pair_photos, replace=False))
    k = max(SCORES.values())
    in_top, in_rows = top_neighbours(v, v[rows], lambda r: product[None, :] == product[rows[r], None], k)
    n_categories = 0 if category is None else len(np.unique(category))
    if n_categories >= 2:
        out_top, out_rows = top_neighbours(v, v[rows], lambda r: category[None, :] == category[rows[r], None], k)
        # A photo whose product is the only one of its category has no "type it sells" left when its product goes.
        has_peer = np.array([np.any((category == category[r]) & (product != product[r])) for r in rows])
        best, considered = None, {}
        for name, pos, neg, weights in _candidates(in_top[has_peer], category[in_rows[has_peer]], out_top,
                                                   category[out_rows], settings.min_fit_queries):
            pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
            if not len(pos) or not len(neg):
                break
            auc = rank_auc(pos, neg)
            considered[name] = round(float(auc), 4)
            if best is None or auc > best[1] + 0.005:  # a longer score must earn its place
                best = (name, auc, pos, neg, weights)
        method = "category holdout"
        kind = _kind_simulation(kinds, product, category, rows, has_peer) if kinds is not None else None
        if kind is not None:
            pos, neg, agreement = kind
            considered[KIND] = round(float(rank_auc(pos, neg)), 4)
            # Where the type head knows the catalogue's kinds, its answer replaces the cosine scores whatever their
            # simulated AUCs: the cosine does not carry across photo styles (a studio tee is further from a shop's
            # user photos of tees than a studio bag is; kind: AUC 0.95-0.99 there, cosine 0.44; docs/calibration.md),
            # and the simulation, made of the catalogue's own photos, cannot show that.
            if agreement >= settings.min_type_agreement:
                best, method = (KIND, considered[KIND], pos, neg, None), "type-group holdout"
        if best is not None:
            name, auc, pos, neg, weights = best
            # Where held-out categories are near the remaining ones (tee vs tank), the balanced point rejects far
            # more sold-type photos than a shopper would accept; real out-of-catalogue photos are further away.
            threshold = min(_balanced_threshold(pos, neg), float(np.quantile(pos, settings.max_in_rejected)))
            if name == KIND:
                # The simulated outside of a kind is a near kind (shirt without shirts, longsleeves left): its
                # balanced point sits at 0.98-0.99, which rejected 13 % of studio tees against user photos of tees.
                threshold = min(settings.kind_threshold, float(np.quantile(pos, settings.max_in_rejected)))
            m = close_match_metrics(pos, neg, threshold)
            categories = None if name != AGREE else {
                (str(ids[r]) if ids is not None else str(r)): str(int(category[r])) for r in range(len(v))}
            share = tuple(float(x) for x in pt.catalogue_share(kinds)) if name == KIND else None
            return CloseMatchRule(name, threshold, method, round(auc, 4), m["in_called_close"],
                                  m["out_called_not_close"], m["n_in"], m["n_out"], weights=weights,
                                  categories=categories, sold_share=share, considered=considered)
    pos = _score(in_top, "top1")
    pos = pos[np.isfinite(pos)]
    if not len(pos):
        raise DataError("a close-match threshold needs photos of at least two products")
    kept = f"{1 - settings.max_in_rejected:.0%}"
    note = (("no categories" if n_categories == 0 else "one category")
            + f": nothing to hold out, so the threshold keeps {kept} of catalogue-like photos close")
    return CloseMatchRule("top1", float(np.quantile(pos, settings.max_in_rejected)), "flat", n_in=int(len(pos)),
                          note=note)


def _augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A view a shopper's photo of the same product might give: a crop (70-95 % of the side), maybe mirrored,
    lighter or darker by up to 15 %."""
    from PIL import Image

    size = pixels.shape[0]
    side = int(round(size * rng.uniform(0.7, 0.95)))
    x, y = rng.integers(0, size - side + 1, size=2)
    image = Image.fromarray(pixels).crop((int(x), int(y), int(x) + side, int(y) + side)).resize((size, size),
                                                                                            Image.BILINEAR)
    out = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.clip(out * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)


def _augmented_cosines(model, image_root, ids, vectors, rows, image_size: int, seed: int) -> np.ndarray:
    from mildnet.data.images import load_image
    from mildnet.embeddings import normalize_rows, run_model

    rng = np.random.default_rng(seed)
    views, kept = [], []
    for r in rows:
        try:
            views.append(_augment(load_image(Path(image_root) / ids[r], image_size), rng))
        except ImageError:
            continue  # a photo that no longer decodes is simply not used; embedding reported it already
        kept.append(r)
    if not views:
        return np.zeros(0)
    out = []
    for start in range(0, len(views), 64):
        out.append(normalize_rows(run_model(model, np.stack(views[start:start + 64]))))
    return np.sum(np.concatenate(out) * vectors[np.asarray(kept)], axis=1)


def fit_match(vectors: np.ndarray, product: np.ndarray, category: np.ndarray | None,
              augmented: np.ndarray | None = None, settings: CatalogueSettings = CatalogueSettings(),
              source: dict | None = None) -> Calibration:
    """Isotonic match map from the catalogue's pairs (module docstring); ``augmented`` holds the cosines of
    photos with their augmented views. DataError when there are no matching or no non-matching pairs."""
    v = np.asarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(settings.seed + 1)
    rows = np.arange(len(v)) if len(v) <= settings.pair_photos else rng.choice(len(v), settings.pair_photos,
                                                                               replace=False)
    pos = [] if augmented is None else list(np.asarray(augmented, dtype=np.float64))
    neg = []
    same_cat = category is not None and len(np.unique(category)) >= 2
    for r in rows:
        mates = np.nonzero((product == product[r]) & (np.arange(len(v)) != r))[0]
        if len(mates):
            pos.append(float(v[r] @ v[rng.choice(mates)]))
        others = product != product[r]
        if same_cat:
            others &= category == category[r]
        others = np.nonzero(others)[0]
        if len(others):
            sims = v[others] @ v[r]
            neg.extend([float(sims[rng.integers(len(others))]), float(sims.max())])
    return fit(pos, neg, source)


def calibrate_catalogue(embeddings, labels=None, model=None, image_root=None, image_size: int | None = None,
                        settings: CatalogueSettings = CatalogueSettings(),
                        types: pt.ProductTypes | None = None) -> CatalogueCalibration:
    """Calibration of a cached catalogue set (``embeddings``: an EmbeddingSet) from its own photos.

    ``labels``: the catalogue table (``image``, ``product_id``, ``category``) or None for a flat folder;
    ``model`` + ``image_root`` + ``image_size`` add augmented views as matching pairs (without them only
    photos of one product are); ``types``, the model's product-type head, offers the kind score. DataError when
    the catalogue cannot be calibrated (one photo, no pairs).
    """
    ids = list(embeddings.ids)
    vectors = np.asarray(embeddings.vectors, dtype=np.float32)
    product, category = _labels(ids, labels)
    kinds = _kinds(types, vectors)
    rule = fit_rule(vectors, product, category, settings, ids, kinds)
    augmented = None
    if model is not None and image_root is not None:
        rng = np.random.default_rng(settings.seed + 2)
        n = min(settings.augmented_photos, len(ids))
        rows = np.sort(rng.choice(len(ids), n, replace=False))
        size = image_size or int(embeddings.meta.get("image_size") or 0)
        if size:
            augmented = _augmented_cosines(model, image_root, ids, vectors, rows, size, settings.seed)
    source = {"kind": "catalogue", "photos": len(ids), "augmented_views": 0 if augmented is None else len(augmented)}
    match = fit_match(vectors, product, category, augmented, settings, source)
    summary = {"photos": len(ids), "products": int(len(np.unique(product))),
               "categories": 0 if category is None else int(len(np.unique(category)))}
    return CatalogueCalibration(match, rule, embeddings.model_fingerprint, embeddings.catalog_fingerprint, summary,
                                labels_fingerprint(ids, labels), _types_fingerprint(types, vectors))


def _head_fits(types: pt.ProductTypes | None, vectors) -> bool:
    """Whether ``types`` is a type head that reads these (N, D) vectors."""
    shape = np.shape(vectors)
    return types is not None and len(shape) == 2 and shape[1] == types.dim


def _kinds(types: pt.ProductTypes | None, vectors: np.ndarray) -> np.ndarray | None:
    """The photos' type probabilities, or None without a type head that fits these vectors."""
    return types.probabilities(vectors) if _head_fits(types, vectors) and len(vectors) else None


def _types_fingerprint(types: pt.ProductTypes | None, vectors) -> str:
    return types.fingerprint if _head_fits(types, vectors) else ""


# --- beside the cached set -----------------------------------------------------------------------


def save_for(store, key: str, calibration: CatalogueCalibration) -> None:
    """Keeps the calibration beside the set stored under ``key`` (StoreError when the store cannot)."""
    store.put_document(key, DOCUMENT, calibration.to_dict())


def load_for(store, key: str, embeddings, labels=None, types: pt.ProductTypes | None = None
             ) -> CatalogueCalibration | None:
    """The calibration kept beside ``key`` when it was made for exactly this set, labels and type head (same model,
    catalogue, labels and types fingerprints), else None; CalibrationError when the document is damaged."""
    return _matching(_read(store, key), embeddings, labels, types)


def _read(store, key: str) -> dict | None:
    try:
        return store.get_document(key, DOCUMENT)
    except StoreError as exc:
        raise CalibrationError(f"the catalogue's calibration is unreadable: {exc}") from None


def _fingerprints(embeddings, labels, types=None) -> dict:
    return {"model_fingerprint": embeddings.model_fingerprint, "catalog_fingerprint": embeddings.catalog_fingerprint,
            "labels_fingerprint": labels_fingerprint(embeddings.ids, labels),
            "types_fingerprint": _types_fingerprint(types, embeddings.vectors)}


def _matching(document, embeddings, labels, types=None) -> CatalogueCalibration | None:
    if document is None or (isinstance(document, dict) and UNFITTED in document):
        return None
    try:
        found = CatalogueCalibration.from_dict(document)
    except CalibrationError as exc:
        raise CalibrationError(f"the catalogue's calibration is damaged ({exc}); embed the catalogue again") from None
    if (found.model_fingerprint, found.catalog_fingerprint) != (embeddings.model_fingerprint,
                                                                 embeddings.catalog_fingerprint):
        return None
    if found.labels_fingerprint != labels_fingerprint(embeddings.ids, labels):
        return None
    if found.types_fingerprint != _types_fingerprint(types, embeddings.vectors):
        return None  # fitted with another type head, or with one the model no longer has (or not yet had)
    return found


def _unfitted(document, embeddings, labels, settings: CatalogueSettings, types=None) -> str | None:
    """Why this very set (same fingerprints, same settings) could not be calibrated when that was last tried; None
    when it was not tried, or something changed since."""
    if not isinstance(document, dict) or not isinstance(document.get(UNFITTED), str):
        return None
    same = document.get("format") == FORMAT and document.get("settings") == asdict(settings) and all(
        document.get(k, "") == v for k, v in _fingerprints(embeddings, labels, types).items())
    return document[UNFITTED] if same else None


def catalogue_labels(image_root, catalog_path=None):
    """The catalogue table (product ids, categories) in or beside ``image_root``; None for a flat folder or a
    table that cannot be read (then the catalogue is calibrated as flat)."""
    from mildnet.data.catalog import read_catalog_for

    try:
        return read_catalog_for(image_root, catalog_path)
    except (DataError, OSError):
        return None


def describe(calibration: CatalogueCalibration) -> str:
    """One line for the CLI: how "close match" is decided for this catalogue."""
    rule = calibration.rule
    if rule.score == AGREE:
        b, w1, w2 = rule.weights
        line = (f"catalogue calibration: close match when {w1:.2f} x top1 cosine {w2:+.2f} x share of the top "
                f"{rule.k} in one category >= {rule.threshold - b:.4f} ({rule.method}")
    elif rule.score == KIND:
        line = (f"catalogue calibration: close match when >= {rule.threshold:.0%} of the photo's product-type "
                f"probability is on types the catalogue sells ({rule.method}")

    else:
        line = f"catalogue calibration: close match when {rule.score} cosine >= {rule.threshold:.4f} ({rule.method}"
    if rule.auc is not None:
        line += (f"; simulated AUC {rule.auc:.2f}, sold types called close {rule.in_called_close:.0%}, "
                 f"held-out types not close {rule.out_called_not_close:.0%}")
    return line + ")"


def refresh(store, key: str, embeddings, model=None, image_root=None, labels=None, image_size: int | None = None,
            settings: CatalogueSettings = CatalogueSettings(), types: pt.ProductTypes | None = None
            ) -> tuple[CatalogueCalibration | None, str | None]:
    """The calibration kept beside ``key`` when it belongs to ``embeddings``, else a new one, fitted and kept
    there; ``(None, why)`` when the catalogue cannot be calibrated (then search uses the run's calibration).
    A damaged document is replaced; a store that cannot keep it still gets the calibration for this call."""
    try:
        document = _read(store, key)
        found = _matching(document, embeddings, labels, types)
    except CalibrationError:
        document, found = None, None  # rebuilt below and written over the damaged one
    if found is not None:
        return found, None
    # A catalogue that cannot be calibrated is not tried again until it, its labels or the model change: every
    # CLI search opens a new engine, and each try embeds augmented views of the catalogue's photos.
    why = _unfitted(document, embeddings, labels, settings, types)
    if why is None:
        try:
            made = calibrate_catalogue(embeddings, labels, model, image_root, image_size, settings, types)
        except DataError as exc:
            why = str(exc)
            with contextlib.suppress(StoreError):  # not kept: tried again next time, nothing else lost
                store.put_document(key, DOCUMENT, {"format": FORMAT, UNFITTED: why, "settings": asdict(settings),
                                                   **_fingerprints(embeddings, labels, types)})
        else:
            try:
                save_for(store, key, made)
            except StoreError as exc:
                return made, f"the catalogue calibration could not be kept ({exc})"
            return made, None
    return None, f"no catalogue calibration ({why}); the model's own calibration is used"


# --- measured as a decision ----------------------------------------------------------------------


def rule_scores(rule: CloseMatchRule, gallery_vectors: np.ndarray, queries: np.ndarray,
                gallery_ids: Sequence[str] | None = None, query_kinds: np.ndarray | None = None) -> np.ndarray:
    """The rule's score of each query against the gallery (``gallery_ids``: its photo ids, default the row
    numbers as :func:`fit_rule` names them; ``query_kinds``: the queries' type probabilities, which the kind
    score needs); the same as :meth:`CloseMatchRule.value` on a search's results."""
    if not len(queries):
        return np.zeros(0)
    top, where = top_neighbours(gallery_vectors, queries, None, rule.k)
    if rule.needs_kinds:
        if query_kinds is None or np.shape(query_kinds) != (len(queries), len(rule.sold_share)):
            raise CalibrationError(f"the {rule.score} close-match score needs the queries' product-type probabilities")
        return np.where(np.isfinite(top[:, 0]), pt.sold_mass(query_kinds, rule.sold_share), -np.inf)
    if rule.score != AGREE:
        return _score(top, rule.score)
    names = [str(i) for i in gallery_ids] if gallery_ids is not None else [str(r) for r in range(len(gallery_vectors))]
    codes = np.unique([rule.categories.get(n, f"\0{n}") for n in names], return_inverse=True)[1]
    return np.where(np.isfinite(top[:, 0]), _combine(rule.weights, top[:, 0], _agreement(top, codes[where])), -np.inf)


def evaluate_close_match(calibration: CatalogueCalibration, gallery_vectors: np.ndarray, in_queries: np.ndarray,
                         out_queries: np.ndarray, gallery_ids: Sequence[str] | None = None,
                         types: pt.ProductTypes | None = None) -> dict:
    """The close-match decision of ``calibration`` (fitted on the gallery) on real queries: photos of things
    the gallery sells (``in_queries``, should be called close) and of things it does not (``out_queries``):
    ROC AUC of its score and both rates at its threshold (``types``: the model's type head, for the kind score)."""
    rule = calibration.rule
    scores = [rule_scores(rule, gallery_vectors, q, gallery_ids, _kinds(types, np.asarray(q, dtype=np.float32)))
              for q in (in_queries, out_queries)]
    return {**close_match_metrics(scores[0], scores[1], rule.threshold), "score": rule.score,
            "method": rule.method, "simulated": {"auc": rule.auc, "in_called_close": rule.in_called_close,
                                                 "out_called_not_close": rule.out_called_not_close}}
