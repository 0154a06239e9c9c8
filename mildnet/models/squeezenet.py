"""SqueezeNet v1.1 in Keras 3, and loading of the public Keras-2 ImageNet weights.

The layout follows rcmalli/keras-squeezenet (the source of the pretrained no-top weights): conv1 3x3/2
(64, valid) -> maxpool 3/2 -> fire2, fire3 -> maxpool 3/2 -> fire4, fire5 -> maxpool 3/2 -> fire6..fire9.
Keras 3 refuses '/' in layer names, so ``fire2/squeeze1x1`` becomes ``fire2_squeeze1x1`` here and the
HDF5 arrays are copied by name with h5py instead of ``model.load_weights``.
"""

import os
from pathlib import Path

import h5py
import keras
from keras import layers

from mildnet.errors import ModelError

WEIGHTS_FILENAME = "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = f"https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/{WEIGHTS_FILENAME}"

# Overridable so tests (and air-gapped installs with a local mirror) control where weights come from.
URL_ENV = "MILDNET_WEIGHTS_URL_SQUEEZENET"
CACHE_ENV = "MILDNET_WEIGHTS_CACHE"

# (fire id, squeeze filters, expand filters per branch); a max-pool precedes fire4 and fire6.
FIRE_BLOCKS = ((2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128),
               (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256))
POOL_BEFORE = {4: "pool3", 6: "pool5"}


def fire_module(x, fire_id, squeeze, expand):
    """Squeeze 1x1 then parallel expand 1x1 / 3x3 branches, concatenated (1x1 channels first)."""
    prefix = f"fire{fire_id}_"
    x = layers.Conv2D(squeeze, 1, padding="valid", name=prefix + "squeeze1x1")(x)
    x = layers.Activation("relu", name=prefix + "relu_squeeze1x1")(x)
    left = layers.Conv2D(expand, 1, padding="valid", name=prefix + "expand1x1")(x)
    left = layers.Activation("relu", name=prefix + "relu_expand1x1")(left)
    right = layers.Conv2D(expand, 3, padding="same", name=prefix + "expand3x3")(x)
    right = layers.Activation("relu", name=prefix + "relu_expand3x3")(right)
    return layers.Concatenate(axis=-1, name=prefix + "concat")([left, right])


def squeezenet_features(x):
    """Applies the SqueezeNet v1.1 feature extractor to a Caffe-preprocessed tensor.

    Returns a dict from fire block name (``"fire2"`` .. ``"fire9"``) to its output tensor, so heads can
    tap intermediate blocks.
    """
    x = layers.Conv2D(64, 3, strides=2, padding="valid", name="conv1")(x)
    x = layers.Activation("relu", name="relu_conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    outputs = {}
    for fire_id, squeeze, expand in FIRE_BLOCKS:
        if fire_id in POOL_BEFORE:
            x = layers.MaxPooling2D(3, strides=2, name=POOL_BEFORE[fire_id])(x)
        x = fire_module(x, fire_id, squeeze, expand)
        outputs[f"fire{fire_id}"] = x
    return outputs


def conv_layer_names():
    """Keras 3 names of every SqueezeNet layer that holds weights."""
    names = ["conv1"]
    for fire_id, _, _ in FIRE_BLOCKS:
        names += [f"fire{fire_id}_{part}" for part in ("squeeze1x1", "expand1x1", "expand3x3")]
    return names


def load_weights(model: keras.Model, weights: str) -> None:
    """Loads ``weights`` ("imagenet" or a Keras-2 HDF5 file) into ``model``'s SqueezeNet layers.

    For "imagenet" the shipped real-photo model is read first when its backbone was frozen from these weights
    (``mildnet.pretrained.frozen_imagenet_backbone``): the same numbers, on disk, so training and baselines work
    offline. Only without it is the file downloaded (or taken from the Keras cache).
    """
    if weights == "imagenet":
        from mildnet.pretrained import frozen_imagenet_backbone

        shipped = frozen_imagenet_backbone()
        if shipped is not None:
            from mildnet.models.io import load_model

            source = load_model(shipped)
            for name in conv_layer_names():
                model.get_layer(name).set_weights(source.get_layer(name).get_weights())
            return
    load_keras2_weights(model, resolve_weights(weights))


def resolve_weights(weights: str) -> Path:
    """Returns a local path to the no-top weights: the cached download for "imagenet", else ``weights``."""
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"SqueezeNet weights file not found: {path}")
        return path
    url = os.environ.get(URL_ENV) or WEIGHTS_URL
    cache_dir = os.environ.get(CACHE_ENV) or None  # None: Keras' default, ~/.keras/models
    try:
        return Path(keras.utils.get_file(WEIGHTS_FILENAME, origin=url, cache_dir=cache_dir,
                                         cache_subdir="models"))
    except Exception as exc:  # urllib raises several types; all mean "not downloaded"
        raise ModelError(
            f"could not download ImageNet weights from {url} (offline?): {_first_line(exc)}; "
            f"pass weights=PATH to a local copy of {WEIGHTS_FILENAME}"
        ) from exc


def load_keras2_weights(model: keras.Model, path) -> None:
    """Copies the Keras-2 HDF5 arrays of ``path`` into ``model``'s SqueezeNet layers, checking shapes.

    Every layer must be found: a partial copy would leave a silently half-random network.
    """
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ModelError(f"{path} is not an HDF5 weights file: {_first_line(exc)}") from exc
    with h5:
        root = h5["model_weights"] if "model_weights" in h5 else h5  # full-model saves nest weights
        for name in conv_layer_names():
            h5_name = name.replace("_", "/", 1) if name.startswith("fire") else name
            layer = model.get_layer(name)
            layer.set_weights(_read_kernel_and_bias(root, h5_name, layer, path))


def _read_kernel_and_bias(root, h5_name, layer, path):
    if h5_name not in root:
        raise ModelError(f"{path} has no weights for SqueezeNet layer {h5_name!r}: not SqueezeNet v1.1 weights")
    group = root[h5_name]
    arrays = {}
    for weight_name in group.attrs.get("weight_names", []):
        weight_name = weight_name.decode() if isinstance(weight_name, bytes) else weight_name
        kind = "kernel" if "kernel" in weight_name else "bias" if "bias" in weight_name else None
        if kind:
            arrays[kind] = group[weight_name][()]
    expected = [tuple(w.shape) for w in layer.weights]
    found = [tuple(arrays[k].shape) if k in arrays else None for k in ("kernel", "bias")]
    if found != expected:
        raise ModelError(
            f"{path}: layer {h5_name!r} has weights of shapes {found}, expected {expected} "
            "(not SqueezeNet v1.1 no-top weights?)"
        )
    return [arrays["kernel"], arrays["bias"]]


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
