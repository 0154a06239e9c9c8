"""Match strength: a model's cosine similarities turned into a probability of "same product", and the
"no close match in this catalogue" rule.

**Match strength.** A raw cosine means little (the shipped sample model puts unrelated products at 0.99+).
:func:`fit` learns a monotone map cosine -> match in [0, 1] from a run's *validation* triplets: the
(query, positive) cosines are matches, the (query, negative) cosines are not. It is a (centred, smoothed)
isotonic regression with both classes weighted equally, so ``match`` reads as P(same product | cosine) for
a pair that is a priori as likely a match as not (the balance of a triplet file), not as the chance that a
search result among thousands is the product. The map is stored as plain breakpoints in ``calibration.json``
inside the run directory (:func:`save` / :func:`load`) and applied with linear interpolation
(:meth:`Calibration.match`); numpy alone reads it back. :func:`calibrate_run` does it all for a trained run.

**Close match.** A query has a close match when its best result (a) has match >= :data:`MIN_MATCH` and
(b) is at least as close as catalogue images typically are to their own nearest neighbour: its cosine must
reach the :data:`CATALOGUE_QUANTILE` quantile of the catalogue's leave-one-out nearest-neighbour cosines
(:func:`catalogue_reference`). (b) is a conformal novelty test: a query drawn like the catalogue's own
images fails it with probability :data:`CATALOGUE_QUANTILE`, whatever the model; it adapts to how densely
the model packs each catalogue, which no fixed cosine threshold does.

Why (b) is needed, measured 2026-11-30 with the shipped sample model (``mildnet/pretrained/sample``) on the
default sample catalogue (1,200 images) and 300 random real photos of clothing-dataset-small:

- validation cosines (359 triplets): positives median 0.977 (5 % 0.799, 1 % 0.724); negatives median
  -0.145, but 5 % above 0.910 and 1 % above 0.993. The calibrated match is 0.5 at cosine 0.727, 0.83 at
  0.9, 0.94 at 0.99, 0.95 at 0.999, 1.0 at 1.
- the real photos' best cosine against the catalogue: median 0.9955 (5 % 0.980, 25 % 0.992, 75 % 0.997):
  calibration alone gives them a match of 0.94 (median; 90 % within 0.94-0.96) and flags 1 of the 300.
  The model maps everything, real photos included, onto the thin manifold its 1,200 catalogue images
  cover (a catalogue image's nearest other image is at cosine 0.9987, median), so no threshold on one
  cosine separates them.
- other signals tried, none better (AUC, real photos against catalogue images left out in turn or the
  test split's images): top-1 cosine 0.79; k-th neighbour cosine (k = 2...100) 0.71-0.80; top-1 minus
  k-th gap 0.65-0.69; reciprocal-neighbour rank 0.63; Mahalanobis distance of the embedding or of the
  multi-scale features 0.56-0.71; k-NN in the fc1 or fire-module features 0.51-0.82; pre-normalisation
  feature norms 0.52-0.65; embedding stability under flip and crop 0.66-0.69; colour histograms, 8-16 px
  thumbnails and edge/flatness statistics 0.49-0.86 (and those are blind to what a model learnt).
- rule (b) with the catalogue's nearest-neighbour cosines flags: at quantile 0.1 (cosine 0.9945) 38 % of
  the real photos, at 0.2 (0.9963) 61 %, at 0.3 (0.9974) 75 %; new synthetic products rendered with
  another seed (not in the catalogue, so "no close match" is right for many) 15 %, 24 %, 34 %. The default
  0.2 is the compromise: one catalogue product in five, picked as a query, is reported without a close
  match (those whose nearest other image is unusually far). On the whole clothing-dataset-small test split
  (372 photos) it flags 59 % (hats 67 %, outerwear 71 %, dresses 33 %); a catalogue photo uploaded as it
  is (cosine 1 with itself) never.

So for the sample model "no close match" catches most, not all, out-of-catalogue uploads. The match
strength is also generous at catalogue scale: over the 1,200 images the sample model's top result is the
same product for 13 % of catalogue queries (recall@1), at every cosine, while the match reads ~0.94.
Pairs at cosine 1.0 (the same picture) always map to 1.0 (see :func:`fit`).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mildnet import safe_json
from mildnet.errors import DataError, ModelError
from mildnet.runs import CALIBRATION_FILE, HELDOUT_FILE, read_run

__all__ = [
    "CALIBRATION_FILE", "CATALOGUE_QUANTILE", "MIN_MATCH", "Calibration", "CalibrationError", "Verdict",
    "assess", "calibrate_run", "catalogue_reference", "close_match", "fit", "load", "save",
]

FORMAT = 1
# A best result must be more likely a match than not...
MIN_MATCH = 0.5
# ...and at least as close as the nearest neighbours of 80 % of the catalogue's own images (see above).
CATALOGUE_QUANTILE = 0.2
# Catalogue images whose nearest neighbour is measured: enough for a stable 0.2 quantile, cheap for 100k images.
REFERENCE_ROWS = 2000
_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


class CalibrationError(ModelError):
    """A calibration file is unreadable or does not describe a valid cosine -> match map."""


@dataclass(frozen=True)
class Calibration:
    """A monotone cosine -> match map: ``matches[i]`` at ``cosines[i]``, linear in between, clipped outside."""

    cosines: tuple[float, ...]
    matches: tuple[float, ...]
    n_positive: int
    n_negative: int
    summary: dict = field(default_factory=dict, compare=False)
    source: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problem = _check_breakpoints(self.cosines, self.matches)
        if problem:
            raise CalibrationError(f"invalid calibration: {problem}")

    def match(self, cosines) -> np.ndarray:
        """Match strength in [0, 1] of each cosine (any shape; NaN stays NaN)."""
        x = np.asarray(cosines, dtype=np.float64)
        return np.interp(x, self.cosines, self.matches)

    @property
    def model_fingerprint(self) -> str | None:
        return self.source.get("model_fingerprint")

    def cosine_at(self, level: float) -> float | None:
        """The smallest cosine whose match reaches ``level`` (None if none does)."""
        xs, ys = np.asarray(self.cosines), np.asarray(self.matches)
        above = np.nonzero(ys >= level)[0]
        if not len(above):
            return None
        i = int(above[0])
        if i == 0 or ys[i] == ys[i - 1]:
            return float(xs[i])
        return float(xs[i - 1] + (level - ys[i - 1]) * (xs[i] - xs[i - 1]) / (ys[i] - ys[i - 1]))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "method": "isotonic",
            "cosines": [float(x) for x in self.cosines],
            "matches": [float(y) for y in self.matches],
            "n_positive": int(self.n_positive),
            "n_negative": int(self.n_negative),
            "summary": self.summary,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        if not isinstance(data, dict):
            raise CalibrationError("not a JSON object")
        if data.get("format") != FORMAT:
            raise CalibrationError(f"unknown format {data.get('format')!r} (this version reads {FORMAT})")
        try:
            cosines = tuple(_finite_float(x) for x in data["cosines"])
            matches = tuple(_finite_float(y) for y in data["matches"])
            n_pos, n_neg = _count(data["n_positive"]), _count(data["n_negative"])
        except KeyError as exc:
            raise CalibrationError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"bad value: {exc}") from None
        summary, source = data.get("summary") or {}, data.get("source") or {}
        if not isinstance(summary, dict) or not isinstance(source, dict):
            raise CalibrationError("'summary' and 'source' must be objects")
        return cls(cosines, matches, n_pos, n_neg, summary, source)


def _count(value) -> int:
    """A pair count: a non-negative whole number (1e999, Infinity and -5 are damage, not counts)."""
    number = _finite_float(value)
    if number < 0 or number != int(number):
        raise ValueError(f"{value!r} is not a count")
    return int(number)


def _finite_float(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not finite")
    return value


def _check_breakpoints(xs: Sequence[float], ys: Sequence[float]) -> str | None:
    if len(xs) != len(ys):
        return f"{len(xs)} cosines but {len(ys)} match values"
    if len(xs) < 2:
        return "fewer than two breakpoints"
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return "non-finite values"
    if np.any(np.diff(x) <= 0):
        return "cosines are not strictly increasing"
    if np.any(np.diff(y) < 0):
        return "match values decrease"
    if x[0] < -1.0 - 1e-9 or x[-1] > 1.0 + 1e-9:
        return "cosines outside [-1, 1]"
    if y[0] < 0.0 or y[-1] > 1.0:
        return "match values outside [0, 1]"
    return None


# --- fitting -------------------------------------------------------------------------------------


def fit(positive_cosines, negative_cosines, source: dict | None = None) -> Calibration:
    """Monotone cosine -> match map from the cosines of matching and non-matching pairs.

    An isotonic regression (pool-adjacent-violators, both classes weighted half) groups the sorted cosines
    into blocks of constant match rate; each block becomes one breakpoint at its mean cosine ("centred"
    isotonic regression, so the map rises smoothly instead of in steps), valued with add-one smoothing of
    its positive and negative counts, so a block of a few positives and no negatives reads e.g. 0.94,
    not a certainty the data cannot support.

    The top end is pinned to (cosine 1.0, match 1.0): cosine 1 means the same picture (or a pixel-identical
    copy), a match by definition, but a validation set rarely holds such pairs and its smoothed top block
    would otherwise cap the map below 1, showing a shopper's own catalogue photo as an uncertain match.
    Between the highest block and 1.0 the map rises linearly.
    """
    from sklearn.isotonic import IsotonicRegression

    pos = np.asarray(positive_cosines, dtype=np.float64).ravel()
    neg = np.asarray(negative_cosines, dtype=np.float64).ravel()
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        raise DataError(f"calibration needs matching and non-matching pairs; got {len(pos)} and {len(neg)}")
    x = np.clip(np.concatenate([pos, neg]), -1.0, 1.0)
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    separation = _rank_auc(x, y)
    if separation <= 0.5:
        # A collapsed or inverted model (every pair at cosine 1, say): a map fitted to it would show any result
        # as a certain match. No calibration; the app then shows plain cosines.
        raise DataError(f"the model does not rank matching pairs above non-matching ones (AUC {separation:.2f}); "
                        "no match strength fitted")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    n_pos, n_neg = len(pos), len(neg)
    # Each class weighs half in total: the map does not depend on how many pairs of each kind were drawn.
    weights = np.where(y == 1, 0.5 / n_pos, 0.5 / n_neg)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    fitted = iso.fit(x, y, sample_weight=weights).predict(x)
    cuts = np.concatenate([[0], np.nonzero(np.diff(fitted))[0] + 1, [len(x)]])
    n_blocks = len(cuts) - 1
    xs, ys = [], []
    for start, stop in zip(cuts[:-1], cuts[1:]):
        p = float(y[start:stop].sum())
        n = (stop - start) - p
        rate_pos, rate_neg = (p + 1) / (n_pos + n_blocks), (n + 1) / (n_neg + n_blocks)
        xs.append(float(x[start:stop].mean()))
        ys.append(rate_pos / (rate_pos + rate_neg))
    xs_arr, ys_arr = np.asarray(xs), np.maximum.accumulate(np.asarray(ys))
    keep = xs_arr < 1.0
    xs_arr, ys_arr = np.append(xs_arr[keep], 1.0), np.append(ys_arr[keep], 1.0)
    if len(xs_arr) == 1:  # every pair at cosine 1: nothing learnt below it
        xs_arr, ys_arr = np.array([-1.0, 1.0]), np.array([0.0, 1.0])
    summary = {
        "positive_cosine": _quantiles(pos),
        "negative_cosine": _quantiles(neg),
        "triplet_accuracy": float(np.mean(pos > neg)) if n_pos == n_neg else None,
    }
    probe = Calibration(tuple(xs_arr.tolist()), tuple(ys_arr.tolist()), n_pos, n_neg)
    half = probe.cosine_at(MIN_MATCH)
    summary["cosine_at_match_0.5"] = None if half is None else round(half, 6)
    return Calibration(probe.cosines, probe.matches, n_pos, n_neg, summary, dict(source or {}))


def rank_auc(positive, negative) -> float:
    """P(a positive score > a negative one), ties counting half (Mann-Whitney): the ROC AUC of two samples."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    return _rank_auc(np.concatenate([pos, neg]), np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]))


def _rank_auc(x: np.ndarray, y: np.ndarray) -> float:
    """P(a matching pair's cosine > a non-matching pair's), ties counting half (Mann-Whitney)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    ranks = ((last - counts + 1 + last) / 2.0)[inverse]  # tied values share their average rank
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _quantiles(values: np.ndarray) -> dict:
    return {f"{q:g}": round(float(np.quantile(values, q)), 6) for q in _QUANTILES} | {
        "mean": round(float(np.mean(values)), 6), "n": int(len(values))}


# --- files ---------------------------------------------------------------------------------------


def _file(run_dir_or_file: str | os.PathLike) -> Path:
    path = Path(run_dir_or_file)
    return path if path.suffix == ".json" else path / CALIBRATION_FILE


def save(calibration: Calibration, run_dir_or_file: str | os.PathLike) -> Path:
    """Writes ``calibration.json`` in a run directory (or to the given .json path), atomically."""
    return safe_json.write(_file(run_dir_or_file), calibration.to_dict(), indent=2)


def load(run_dir_or_file: str | os.PathLike) -> Calibration | None:
    """The run's calibration; None when it has none; CalibrationError naming the file when it is damaged."""
    path = _file(run_dir_or_file)
    if not path.is_file():
        return None
    hint = f"; rebuild it with `python -m mildnet calibrate --run {path.parent}`"
    try:
        data = safe_json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read {path}: {exc}{hint}") from None
    except ValueError as exc:
        raise CalibrationError(f"{path} is damaged (not JSON: {exc}){hint}") from None
    try:
        return Calibration.from_dict(data)
    except CalibrationError as exc:
        raise CalibrationError(f"{path} is damaged ({exc}){hint}") from None


# --- close match ---------------------------------------------------------------------------------


def catalogue_reference(vectors: np.ndarray, max_rows: int = REFERENCE_ROWS, seed: int = 0) -> np.ndarray:
    """Sorted leave-one-out nearest-neighbour cosines of (up to ``max_rows``, a seeded sample of) the
    catalogue's L2-normalised rows: how close a catalogue image's nearest other image is. Empty for a
    catalogue of fewer than two images."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or len(v) < 2:
        return np.zeros(0)
    rows = np.arange(len(v))
    if len(v) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(v), size=max_rows, replace=False))
    best = np.empty(len(rows))
    # Rows per block keep the similarity block near 64 MB whatever the catalogue's size.
    block = max(1, min(512, (1 << 24) // len(v)))
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        sims = v[chunk] @ v.T
        sims[np.arange(len(chunk)), chunk] = -np.inf
        best[start:start + len(chunk)] = sims.max(axis=1)
    return np.sort(np.clip(best, -1.0, 1.0))


def close_match(best_cosine: float, calibration: Calibration, reference: np.ndarray | None = None, *,
                min_match: float = MIN_MATCH, quantile: float = CATALOGUE_QUANTILE) -> bool:
    """Whether a query's best result is a close match (see the module docstring); ``reference`` is
    :func:`catalogue_reference` of the searched catalogue (None or empty: the match rule alone)."""
    return _verdict(best_cosine, calibration, reference, min_match, quantile)[0]


# Shopper-facing reasons for "no close match": plain words, no cosines.
NOTHING_ALIKE = "Nothing in this catalogue looks much like your photo: it may not sell this kind of product."
UNLIKELY_SAME = "Even the best result is unlikely to be the same product."


def _verdict(best_cosine: float, calibration: Calibration, reference: np.ndarray | None, min_match: float,
             quantile: float) -> tuple[bool, str | None]:
    if not math.isfinite(best_cosine):
        return False, "No results."
    if float(calibration.match(best_cosine)) < min_match:
        return False, UNLIKELY_SAME
    if reference is not None and len(reference):
        if best_cosine < float(np.quantile(reference, quantile)):
            return False, NOTHING_ALIKE
    return True, None


@dataclass(frozen=True)
class Verdict:
    """Match strengths of a result list and the query's close-match flag (both None when uncalibrated), and
    why there is no close match."""

    matches: list[float | None]
    close_match: bool | None
    reason: str | None = None


def assess(cosines: Sequence[float], calibration: Calibration | None,
           reference: np.ndarray | None = None, rule=None, ids: Sequence[str] | None = None, kinds=None) -> Verdict:
    """Match strength of each result (in rank order) and whether the best one is a close match.

    ``rule``: a catalogue's own close-match rule (``catalogue_calibration.CloseMatchRule``, anything with
    ``is_close(cosines, ids, kinds)``; ``ids``: the results' catalogue ids, which a rule reading their categories
    needs; ``kinds``: the query's product-type probabilities, which a rule reading them needs); it replaces the
    match-and-reference test, which is for a run's calibration."""
    cosines = [float(c) for c in cosines]
    if calibration is None:
        return Verdict([None] * len(cosines), None)
    matches = [float(m) for m in calibration.match(cosines)] if cosines else []
    if rule is not None:
        ok = bool(cosines) and rule.is_close(cosines, ids, kinds)
        return Verdict(matches, ok, None if ok else (NOTHING_ALIKE if cosines else "No results."))
    best = max(cosines) if cosines else float("nan")
    ok, reason = _verdict(best, calibration, reference, MIN_MATCH, CATALOGUE_QUANTILE)
    return Verdict(matches, ok, reason)


# --- calibrating a run ---------------------------------------------------------------------------


def calibrate_run(
    run_dir: str | os.PathLike,
    images: str | os.PathLike | None = None,
    triplets: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    distances: tuple[np.ndarray, np.ndarray] | None = None,
    fingerprint: str | None = None,
) -> Calibration:
    """Embeds a run's validation triplets with its best model, fits the match map and writes
    ``RUN/calibration.json``; returns the calibration.

    The triplets are ``images`` + ``triplets`` when given (both), else the run's own validation set: its
    config's ``images`` and ``val_triplets``, or the held-out ``val_triplets.csv`` the run wrote.
    ``distances`` (squared distances of the run's validation (query, positive) and (query, negative) pairs,
    measured with its best model) skips the embedding: training has them from its best epoch already, and
    ``fingerprint``, the best model's :func:`~mildnet.embeddings.model_fingerprint`, too: with both, the model is
    not loaded at all. ``progress(done, total)`` follows the embedding. DataError for missing data, ModelError for
    a bad run.
    """
    from mildnet.data.triplets import read_triplets
    from mildnet.embeddings import embed_paths, model_fingerprint
    from mildnet.evaluation import triplet_distances

    run_dir = Path(run_dir)
    if (images is None) != (triplets is None):
        raise DataError("give both the image folder and the triplet file, or neither (the run's own val split)")
    info = read_run(run_dir)
    if images is None:
        images, triplets = _run_validation_set(info)
    images, triplets = Path(images), Path(triplets)
    model = info.load_model("best") if distances is None or fingerprint is None else None
    if distances is None:
        if not images.is_dir():
            raise DataError(f"image folder not found: {images} (pass the folder the triplets' paths are relative to)")
        frame = read_triplets(triplets).triplets
        if frame.empty:
            raise DataError(f"{triplets} holds no usable triplets")
        paths = list(frame["query"]) + list(frame["positive"]) + list(frame["negative"])
        table = embed_paths(model, images, paths, info.config.image_size, progress=progress)
        d_pos, d_neg = triplet_distances(table, frame)
    else:
        d_pos, d_neg = distances
    # Squared distance of unit vectors is 2 - 2 cos.
    cos_pos, cos_neg = 1.0 - np.asarray(d_pos) / 2.0, 1.0 - np.asarray(d_neg) / 2.0
    source = {
        "run_fingerprint": info.fingerprint,
        "model_fingerprint": fingerprint if model is None else model_fingerprint(model),
        "images": str(images),
        "triplets": str(triplets),
        "n_triplets": int(len(d_pos)),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    calibration = fit(cos_pos, cos_neg, source)
    save(calibration, run_dir)
    return calibration


def _run_validation_set(info) -> tuple[Path, Path]:
    config = info.config
    if config.val_triplets:
        return Path(config.images), Path(config.val_triplets)
    heldout = info.run_dir / HELDOUT_FILE
    if heldout.is_file():
        return Path(config.images), heldout
    raise DataError(f"{info.run_dir} has no validation triplets (no val_triplets in its config, no {HELDOUT_FILE}); "
                    "pass an image folder and a triplet file")
