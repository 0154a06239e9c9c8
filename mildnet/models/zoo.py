"""The model zoo: named image -> L2-normalised embedding models.

Every model maps float32 RGB pixels in [0, 255], shape ``(batch, size, size, 3)``, to unit-norm rows.
Backbone preprocessing lives inside the model (a :class:`Preprocess` layer), so a saved ``.keras`` file
is self-contained and never depends on the caller preparing pixels the right way.
"""

from dataclasses import dataclass
from typing import Callable

import keras
from keras import layers

from mildnet.errors import ModelError
from mildnet.models.layers import L2Normalize, Preprocess


@dataclass(frozen=True)
class ModelSpec:
    """How to build one zoo model and what to tell a user about it."""

    build: Callable[..., keras.Model]  # build(input_size, embedding_dim, weights) -> keras.Model
    default_embedding_dim: int
    description: str
    min_input_size: int = 32
    pretrained: bool = True  # whether weights="imagenet" means anything for this model


_REGISTRY: dict[str, ModelSpec] = {}


def _register(name, **spec_fields):
    def decorator(build):
        _REGISTRY[name] = ModelSpec(build=build, **spec_fields)
        return build

    return decorator


# ---------------------------------------------------------------------------------------------------
# tiny_cnn: a few thousand parameters, for fast tests and smoke runs. Not meant to search well.


@_register(
    "tiny_cnn",
    default_embedding_dim=32,
    description="Tiny 3-layer CNN (~7k params), random init: for tests and smoke runs only.",
    min_input_size=8,
    pretrained=False,
)
def _build_tiny_cnn(input_size, embedding_dim, weights):
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = Preprocess("unit", name="preprocess")(inputs)
    for i, filters in enumerate((8, 16, 32), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(embedding_dim, name="embedding")(x)
    outputs = L2Normalize(name="l2_norm")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


# ---------------------------------------------------------------------------------------------------
# Public API

DEFAULT_MODEL = "tiny_cnn"


def _model_names():
    return tuple(_REGISTRY)


MODEL_NAMES = _model_names()


def describe_model(name: str) -> str:
    """One-line description of a zoo model, for the UI and ``--help``."""
    return _spec(name).description


def build_model(
    name: str = DEFAULT_MODEL,
    input_size: int = 224,
    embedding_dim: int | None = None,
    weights: str | None = None,
) -> keras.Model:
    """Builds zoo model ``name`` for square ``input_size`` images.

    Args:
        name: one of :data:`MODEL_NAMES`.
        input_size: image side in pixels.
        embedding_dim: output size; ``None`` uses the model's default.
        weights: ``"imagenet"`` (download the backbone's ImageNet weights, cached), ``None`` or
            ``"none"`` (random init), or a path to a local backbone weights file.

    Raises:
        ModelError: unknown name, bad size, or weights that cannot be found or loaded. Never falls
            back to random weights silently.
    """
    spec = _spec(name)
    if not isinstance(input_size, int) or input_size < spec.min_input_size:
        raise ModelError(f"{name} needs input_size >= {spec.min_input_size}, got {input_size!r}")
    if embedding_dim is None:
        embedding_dim = spec.default_embedding_dim
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ModelError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    weights = _normalise_weights(weights)
    if weights is not None and not spec.pretrained:
        raise ModelError(f"{name} has no pretrained backbone; use weights=None")
    return spec.build(input_size, embedding_dim, weights)


def _spec(name) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def _normalise_weights(weights):
    if weights is None:
        return None
    weights = str(weights)
    if weights.strip().lower() in ("", "none", "random"):
        return None
    if weights.strip().lower() == "imagenet":
        return "imagenet"
    return weights
