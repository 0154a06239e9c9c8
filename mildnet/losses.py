"""Triplet losses for deep ranking (MILDNet / RankNet).

Every function takes the embeddings of a batch of triplets, ``q`` (query), ``p`` (positive) and ``n``
(negative), each of shape (B, D), and L2-normalises them first, so models that already end with an
L2-normalisation layer (ours do) are unaffected and the losses stay meaningful on raw outputs too.

Two deliberate departures from the reference code (gofynd/mildnet ``trainer/loss.py``):

* The reference hinge loss summed ``1 + D(q,p) - D(q,n)`` over the batch and took ``max(0, .)`` of the
  *mean*: a batch where a few easy triplets are far on the right side cancels the hard ones, so the
  hard triplets get no gradient at all. Here the hinge is per triplet, then averaged
  (``mean(max(0, m + d(q,p) - d(q,n)))``), the usual triplet loss of the RankNet paper.
* The reference clipped the embeddings to ``[eps, 1 - eps]`` (a leftover of probability losses);
  on L2-normalised embeddings with negative components that would distort every distance, so no clip.

The hinge uses squared euclidean distance on unit vectors (``2 - 2 cos``, in [0, 4]); the contrastive
loss keeps the reference's euclidean distance ``D`` (in [0, 2]): ``D(q,p)^2`` pulls the positive pair
together, ``max(0, m - D(q,n))^2`` pushes the negative pair beyond the margin, averaged over the 2B
pairs of the batch (the reference divided the sum by ``batch_size * 2 / 3`` with its batch of 3B rows).

``*_per_triplet`` functions return a (B,) vector: the training loop needs per-example losses to scale
them correctly across replicas of a ``tf.distribute`` strategy.

:data:`LOSSES` is the one list of losses: settings validation (``mildnet.runs``), the training loop and the
CLI's ``--loss`` choices all read it. TensorFlow is imported inside the functions, so reading the list (a
run's settings, ``python -m mildnet --help``) does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import tensorflow as tf

# Below this squared distance, sqrt's gradient explodes (it is infinite at 0: identical embeddings).
_SQRT_FLOOR = 1e-12


def l2_normalize(x: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


def squared_distance(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Row-wise squared euclidean distance between L2-normalised ``a`` and ``b``: (B,) in [0, 4]."""
    import tensorflow as tf

    return tf.reduce_sum(tf.square(l2_normalize(a) - l2_normalize(b)), axis=-1)


def euclidean_distance(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Row-wise euclidean distance between L2-normalised rows: (B,) in [0, 2], safe gradient at 0."""
    import tensorflow as tf

    return tf.sqrt(tf.maximum(squared_distance(a, b), _SQRT_FLOOR))


def triplet_distances(q, p, n) -> tuple[tf.Tensor, tf.Tensor]:
    """``(d(q,p), d(q,n))``, squared euclidean on unit vectors: the distance ranking is judged on."""
    return squared_distance(q, p), squared_distance(q, n)


def hinge_per_triplet(q, p, n, margin: float = 1.0) -> tf.Tensor:
    import tensorflow as tf

    d_qp, d_qn = triplet_distances(q, p, n)
    return tf.maximum(0.0, margin + d_qp - d_qn)


def hinge_loss(q, p, n, margin: float = 1.0) -> tf.Tensor:
    """``mean(max(0, margin + d(q,p) - d(q,n)))`` with squared euclidean distance on unit vectors."""
    import tensorflow as tf

    return tf.reduce_mean(hinge_per_triplet(q, p, n, margin))


def contrastive_per_triplet(q, p, n, margin: float = 1.0) -> tf.Tensor:
    import tensorflow as tf

    # Mean of the triplet's two pair losses, so that mean over triplets == mean over the 2B pairs.
    d_qp = euclidean_distance(q, p)
    d_qn = euclidean_distance(q, n)
    positive = tf.square(d_qp)
    negative = tf.square(tf.maximum(0.0, margin - d_qn))
    return 0.5 * (positive + negative)


def contrastive_loss(q, p, n, margin: float = 1.0) -> tf.Tensor:
    """Contrastive loss of the reference configs: mean over pairs of ``y D^2 + (1-y) max(0, m-D)^2``."""
    import tensorflow as tf

    return tf.reduce_mean(contrastive_per_triplet(q, p, n, margin))


PerTripletLoss = Callable[..., "tf.Tensor"]

# The one list of losses (name -> per-triplet loss, called as ``loss(q, p, n, margin=m)``): TrainConfig's
# validation and the CLI's --loss choices read its names, the training loop its functions.
LOSSES: dict[str, PerTripletLoss] = {
    "hinge": hinge_per_triplet,
    "contrastive": contrastive_per_triplet,
}


def get_loss(name: str) -> PerTripletLoss:
    """The per-triplet loss function called ``name`` (one of :data:`LOSSES`)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}") from None
