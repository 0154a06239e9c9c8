"""What kind of product a photo shows: a softmax over a fixed vocabulary of product types (t-shirt, pants, shoes,
bag, watch, ...), read from a model's own embedding, kept in ``product_types.json`` beside a run's model.

Why: "no close match in this catalogue" asks whether the shop sells this *kind* of product. The cosine to the
nearest catalogue photo cannot answer that across photo styles: a studio shot of a tee (a model on white) is
further from a shop's user photos of tees than a studio shot of a bag is (docs/calibration.md, "cross domain"),
so every threshold on it calls the tee "not sold" and the bag "sold". A type classifier fitted on both kinds of
photo answers the question directly: the share of the query's type probability that falls on types the
catalogue sells (:func:`sold_mass`). :mod:`mildnet.catalogue_calibration` uses it as the close-match score when
the model has a type head that recognises the catalogue's categories.

The classifier is a multinomial logistic regression on the L2-normalised embedding (a (D, T) matrix and a
bias): no model file changes, the stored catalogue vectors are all it needs, and it belongs to one model's weights
(``model_fingerprint``; another model's embedding means nothing to it). Plain JSON, numpy reads it back.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mildnet import safe_json
from mildnet.errors import MildnetError

__all__ = ["FILE", "SOLD_SHARE", "ProductTypes", "ProductTypesError", "carry_over", "catalogue_share", "fit", "load",
           "save", "sold_mass"]

FILE = "product_types.json"
FORMAT = 1
# A catalogue "sells" a type when at least this share of its photos' type probability falls on it: a few photos
# of a type are enough for a shopper's photo of it to count as sold (a 2 % share is 8 photos of 400); below it the
# type counts in proportion, so the stray probability every photo puts on unrelated types does not add up to "sold".
SOLD_SHARE = 0.02


class ProductTypesError(MildnetError):
    """A product-type file that cannot be read or does not fit the model."""


@dataclass(frozen=True, eq=False)
class ProductTypes:
    """Type probabilities ``softmax(v @ weights + bias)`` of unit embeddings ``v`` (N, D) over ``names``."""

    names: tuple[str, ...]
    weights: np.ndarray  # (D, T)
    bias: np.ndarray  # (T,)
    model_fingerprint: str
    summary: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Held at the precision the file keeps, so a head and its reloaded copy have one fingerprint.
        w = np.round(np.asarray(self.weights, dtype=np.float64), 7)
        b = np.round(np.asarray(self.bias, dtype=np.float64), 7)
        names = tuple(str(n) for n in self.names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ProductTypesError("a product-type head needs at least two distinct type names")
        if w.ndim != 2 or w.shape[1] != len(names) or b.shape != (len(names),):
            raise ProductTypesError(f"weights {w.shape} and bias {b.shape} do not fit {len(names)} type names")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ProductTypesError("the product-type weights are not all finite numbers")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "bias", b)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    @property
    def fingerprint(self) -> str:
        """A hash of the head itself: a catalogue calibration fitted with it is refitted when it changes."""
        h = hashlib.sha256(json.dumps(self.names).encode())
        h.update(self.weights.astype("<f8").tobytes())
        h.update(self.bias.astype("<f8").tobytes())
        return h.hexdigest()[:16]

    def probabilities(self, vectors) -> np.ndarray:
        """(N, T) type probabilities of (N, D) unit embeddings (a single (D,) vector gives (T,))."""
        v = np.asarray(vectors, dtype=np.float64)
        single = v.ndim == 1
        v = np.atleast_2d(v)
        if v.shape[1] != self.dim:
            raise ProductTypesError(f"embeddings of {v.shape[1]} dimensions do not fit a type head of {self.dim}")
        logits = v @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return p[0] if single else p

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model_fingerprint": self.model_fingerprint, "names": list(self.names),
                "weights": self.weights.tolist(), "bias": self.bias.tolist(),
                "summary": self.summary}

    @classmethod
    def from_dict(cls, data) -> ProductTypes:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProductTypesError("unknown format")
        try:
            return cls(tuple(data["names"]), np.asarray(data["weights"], dtype=np.float64),
                       np.asarray(data["bias"], dtype=np.float64), str(data["model_fingerprint"]),
                       dict(data.get("summary") or {}))
        except KeyError as exc:
            raise ProductTypesError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ProductTypesError(f"bad value: {exc}") from None


def fit(vectors, labels: Sequence[str], model_fingerprint: str, *, c: float = 100.0,
        summary: dict | None = None) -> ProductTypes:
    """A type head fitted on unit embeddings (N, D) and their type names (multinomial logistic regression, L2
    strength ``1/c``; 100 measured best of 1/10/100 on clothing-small + Luma, docs/calibration.md)."""
    from sklearn.linear_model import LogisticRegression

    v = np.asarray(vectors, dtype=np.float64)
    y = np.asarray([str(label) for label in labels], dtype=object)
    if v.ndim != 2 or len(v) != len(y) or not len(v):
        raise ProductTypesError(f"{len(v)} embeddings and {len(y)} type names do not pair up")
    names, counts = np.unique(y, return_counts=True)
    if len(names) < 2:
        raise ProductTypesError("a product-type head needs photos of at least two types")
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ProductTypesError(f"c must be a positive number, got {c!r}")
    model = LogisticRegression(C=float(c), max_iter=5000).fit(v, y)
    order = [list(model.classes_).index(n) for n in names]
    accuracy = float(np.mean(model.predict(v) == y))
    info = {"photos": int(len(v)), "per_type": {str(n): int(k) for n, k in zip(names, counts)},
            "train_accuracy": round(accuracy, 4), "c": float(c), **(summary or {})}
    return ProductTypes(tuple(str(n) for n in names), model.coef_[order].T, model.intercept_[order],
                        model_fingerprint, info)


def carry_over(types: ProductTypes, old_vectors, new_vectors, model_fingerprint: str, *, ridge: float = 1.0,
               min_agreement: float = 0.9, summary: dict | None = None) -> tuple[ProductTypes | None, float]:
    """The head of a model fine-tuned from ``types``' model, without type labels: ``(head or None, agreement)``.

    ``old_vectors`` / ``new_vectors``: the same photos' unit embeddings by the parent and by the new model. A linear
    map A from the new space to the old one (ridge regression towards the identity, so few photos keep it near
    the parent's geometry) carries the weights over (``A @ W``). Kept only when it types the photos as the parent
    does for at least ``min_agreement`` of them (the agreement is returned either way): a model that moved further
    gets no head rather than a wrong one.
    """
    old = np.asarray(old_vectors, dtype=np.float64)
    new = np.asarray(new_vectors, dtype=np.float64)
    if old.shape != new.shape or old.ndim != 2 or not len(old):
        raise ProductTypesError(f"old {old.shape} and new {new.shape} embeddings of the same photos do not pair up")
    if old.shape[1] != types.dim:
        raise ProductTypesError(f"the parent's embeddings have {old.shape[1]} dimensions, its head {types.dim}")
    eye = np.eye(new.shape[1], old.shape[1])
    mapping = np.linalg.solve(new.T @ new + ridge * np.eye(new.shape[1]), new.T @ old + ridge * eye)
    head = ProductTypes(types.names, mapping @ types.weights, types.bias, model_fingerprint,
                        {**types.summary, **(summary or {})})
    agreement = float(np.mean(head.probabilities(new).argmax(axis=1) == types.probabilities(old).argmax(axis=1)))
    if agreement < min_agreement:
        return None, agreement
    head.summary["carried_over"] = {"photos": int(len(old)), "agreement": round(agreement, 4), "ridge": ridge}
    return head, agreement


def catalogue_share(probabilities: np.ndarray) -> np.ndarray:
    """(T,) share of a catalogue's photos' type probability on each type."""
    p = np.asarray(probabilities, dtype=np.float64)
    return p.mean(axis=0) if len(p) else np.zeros(p.shape[1])


def sold_mass(query_probabilities, share) -> np.ndarray:
    """How much of each query's type probability falls on types the catalogue sells (``share``: its
    :func:`catalogue_share`; a type counts fully from :data:`SOLD_SHARE` up): (N,) in [0, 1], or a float for one."""
    sold = np.minimum(1.0, np.asarray(share, dtype=np.float64) / SOLD_SHARE)
    return np.asarray(query_probabilities, dtype=np.float64) @ sold


def _file(run_dir_or_file) -> Path:
    path = Path(run_dir_or_file)
    return path if path.suffix == ".json" else path / FILE


def save(types: ProductTypes, run_dir_or_file) -> Path:
    """Writes ``product_types.json`` into a run folder (or to the given .json path), atomically."""
    return safe_json.write(_file(run_dir_or_file), types.to_dict())


def load(run_dir_or_file, model_fingerprint: str | None = None) -> ProductTypes | None:
    """The run's type head; None when it has none or (with ``model_fingerprint``) when it belongs to other weights
    (a run continued from one that had it); ProductTypesError naming the file when it is damaged."""
    path = _file(run_dir_or_file)
    if not path.is_file():
        return None
    try:
        types = ProductTypes.from_dict(safe_json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, ProductTypesError) as exc:
        raise ProductTypesError(f"{path} is damaged or unreadable: {exc}") from None
    if model_fingerprint is not None and types.model_fingerprint != model_fingerprint:
        return None
    return types
