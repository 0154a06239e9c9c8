"""Model zoo: image -> L2-normalised embedding models, and their ``.keras`` save/load."""

from mildnet.models.io import load_model, save_model
from mildnet.models.layers import L2Normalize, Preprocess
from mildnet.models.zoo import (
    DEFAULT_MODEL,
    MODEL_NAMES,
    build_model,
    describe_model,
    freeze_layers,
    has_pretrained_weights,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_NAMES",
    "L2Normalize",
    "Preprocess",
    "build_model",
    "describe_model",
    "freeze_layers",
    "has_pretrained_weights",
    "load_model",
    "save_model",
]
