"""Custom layers every model in the zoo is built from.

They are registered under the ``mildnet`` package so that a saved ``.keras`` file reloads with
``safe_mode=True``: no ``Lambda`` layer (whose Python bytecode safe mode refuses to run) is used anywhere.
"""

import keras
from keras import ops

# ImageNet channel means in BGR order, as used by the Caffe-trained VGG and SqueezeNet weights.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

PREPROCESS_MODES = ("caffe", "tf", "unit", "none")


@keras.saving.register_keras_serializable(package="mildnet")
class Preprocess(keras.layers.Layer):
    """Maps float RGB pixels in [0, 255] to the range a backbone was trained on.

    Modes:
        - ``"caffe"``: RGB -> BGR, then subtract the ImageNet mean (VGG, SqueezeNet).
        - ``"tf"``: scale to [-1, 1] (MobileNet).
        - ``"unit"``: scale to [0, 1] (small models trained from scratch).
        - ``"none"``: pass through (backbones that rescale internally, e.g. EfficientNet).
    """

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {PREPROCESS_MODES}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="mildnet")
class L2Normalize(keras.layers.Layer):
    """Scales each row to unit L2 norm, so cosine similarity is a plain dot product.

    ``epsilon`` keeps an all-zero row (possible after a ReLU) finite instead of NaN.
    """

    def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon

    def call(self, inputs):
        squared_norm = ops.sum(ops.square(inputs), axis=self.axis, keepdims=True)
        return inputs * ops.rsqrt(ops.maximum(squared_norm, self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
