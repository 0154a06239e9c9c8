"""Triplet losses on hand-computed cases (unit vectors in 2-D, so every distance is easy to check)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mildnet import losses

E1 = [1.0, 0.0]
E2 = [0.0, 1.0]
NEG_E1 = [-1.0, 0.0]


def t(rows):
    return tf.constant(rows, dtype=tf.float32)


def test_squared_distance_on_unit_vectors():
    d = losses.squared_distance(t([E1, E1, E1]), t([E1, E2, NEG_E1])).numpy()
    np.testing.assert_allclose(d, [0.0, 2.0, 4.0], atol=1e-6)


def test_hinge_is_per_triplet_then_mean():
    # triplet 1: d(q,p)=2, d(q,n)=4 -> max(0, 1+2-4) = 0
    # triplet 2: d(q,p)=4, d(q,n)=0 -> max(0, 1+4-0) = 5
    q, p, n = t([E1, E1]), t([E2, NEG_E1]), t([NEG_E1, E1])
    assert losses.hinge_loss(q, p, n, margin=1.0).numpy() == pytest.approx(2.5)
    np.testing.assert_allclose(losses.hinge_per_triplet(q, p, n).numpy(), [0.0, 5.0], atol=1e-6)


def test_hinge_differs_from_reference_max_after_mean():
    # An easy triplet (1 + 0 - 4 = -3) and a hard one (1 + 2 - 0 = 3): the reference's
    # max(0, mean(.)) is 0, so the hard triplet would get no gradient; per-triplet hinge gives 1.5.
    q, p, n = t([E1, E1]), t([E1, E2]), t([NEG_E1, E1])
    d_qp, d_qn = losses.triplet_distances(q, p, n)
    reference = max(0.0, float(tf.reduce_mean(1.0 + d_qp - d_qn)))
    assert reference == pytest.approx(0.0, abs=1e-6)
    assert losses.hinge_loss(q, p, n).numpy() == pytest.approx(1.5)


def test_hinge_margin_and_normalisation():
    # Unnormalised inputs are L2-normalised first: scaling changes nothing.
    q, p, n = t([[3.0, 0.0]]), t([[0.0, 0.5]]), t([[-2.0, 0.0]])
    assert losses.hinge_loss(q, p, n, margin=1.0).numpy() == pytest.approx(0.0)
    assert losses.hinge_loss(q, p, n, margin=3.0).numpy() == pytest.approx(1.0)


def test_contrastive_loss_hand_computed():
    # triplet 1: D(q,p) = sqrt 2 -> 2; D(q,n) = sqrt 2 > margin 1 -> 0; pair mean 1.0
    # triplet 2: D(q,p) = 0 -> 0; D(q,n) = 0.5 -> (1 - 0.5)^2 = 0.25; pair mean 0.125
    cos = 0.875  # 2 - 2 cos = 0.25 = 0.5^2
    n2 = [cos, math.sqrt(1 - cos**2)]
    q, p, n = t([E1, E1]), t([E2, E1]), t([E2, n2])
    np.testing.assert_allclose(losses.contrastive_per_triplet(q, p, n).numpy(), [1.0, 0.125], atol=1e-5)
    assert losses.contrastive_loss(q, p, n).numpy() == pytest.approx(0.5625, abs=1e-5)
    # Margin 2: the negative of triplet 1 is now inside the margin: (2 - sqrt 2)^2.
    expected = (2.0 + (2.0 - math.sqrt(2.0)) ** 2) / 2
    assert losses.contrastive_loss(t([E1]), t([E2]), t([E2]), margin=2.0).numpy() == pytest.approx(
        expected, abs=1e-5
    )


@pytest.mark.parametrize("name", ["hinge", "contrastive"])
def test_gradient_is_finite_for_identical_embeddings(name):
    fn = losses.get_loss(name)
    q = tf.Variable([[0.6, 0.8]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(fn(q, tf.constant([[0.6, 0.8]]), tf.constant([[0.6, 0.8]]), margin=1.0))
    grad = tape.gradient(loss, q)
    assert np.all(np.isfinite(grad.numpy()))


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="hinge"):
        losses.get_loss("triplet-ish")


# --- the one list of losses and of optimizers ------------------------------------------------------------------


def _train_option_choices(option: str) -> tuple:
    import argparse

    from mildnet.cli import build_parser

    commands = next(a for a in build_parser("train")._actions if isinstance(a, argparse._SubParsersAction))
    (action,) = [a for a in commands.choices["train"]._actions if option in a.option_strings]
    return tuple(action.choices)


def test_the_cli_offers_exactly_the_registered_losses_and_optimizers():
    from mildnet.optimizers import OPTIMIZERS

    assert _train_option_choices("--loss") == tuple(losses.LOSSES) == ("hinge", "contrastive")
    assert _train_option_choices("--optimizer") == tuple(OPTIMIZERS) == ("sgd", "adam")


def test_a_registered_loss_or_optimizer_is_valid_everywhere_at_once(monkeypatch):
    # One registry each: adding an entry is all it takes for the settings check, the trainer and the CLI.
    from mildnet import optimizers
    from mildnet.runs import TrainConfig, TrainConfigError
    from mildnet.training import make_optimizer

    config = TrainConfig(images="img", triplets="t.csv", loss="squared", optimizer="plain")
    with pytest.raises(TrainConfigError, match=r"optimizer must be one of sgd, adam.*loss must be one of hinge, "):
        config.validate()
    monkeypatch.setitem(losses.LOSSES, "squared", losses.hinge_per_triplet)
    monkeypatch.setitem(optimizers.OPTIMIZERS, "plain", lambda learning_rate, momentum: ("plain", learning_rate))
    assert config.validate() is config
    assert losses.get_loss("squared") is losses.hinge_per_triplet
    assert make_optimizer(config) == ("plain", config.learning_rate)
    assert "squared" in _train_option_choices("--loss") and "plain" in _train_option_choices("--optimizer")


def test_make_optimizer_builds_the_registered_optimizers():
    import keras

    from mildnet.optimizers import get_optimizer
    from mildnet.runs import TrainConfig
    from mildnet.training import make_optimizer

    sgd = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.01, momentum=0.8))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov
    assert float(sgd.learning_rate) == pytest.approx(0.01) and sgd.momentum == pytest.approx(0.8)
    adam = make_optimizer(TrainConfig(optimizer="adam", learning_rate=0.002))
    assert isinstance(adam, keras.optimizers.Adam) and float(adam.learning_rate) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="choose one of sgd, adam"):
        get_optimizer("rmsprop", 0.1, 0.9)


def test_reading_the_registries_does_not_load_tensorflow():
    # Validating a run's settings and building `python -m mildnet --help` read the names only.
    import subprocess
    import sys

    code = ("import sys; import mildnet.runs, mildnet.losses, mildnet.optimizers, mildnet.cli.train; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
