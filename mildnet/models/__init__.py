"""Model zoo: image -> L2-normalised embedding models, and their ``.keras`` save/load."""

from mildnet.models.io import load_model, save_model
from mildnet.models.layers import L2Normalize, Preprocess
from mildnet.models.zoo import DEFAULT_MODEL, MODEL_NAMES, build_model, describe_model

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_NAMES",
    "L2Normalize",
    "Preprocess",
    "build_model",
    "describe_model",
    "load_model",
    "save_model",
]
