"""Custom layers every model in the zoo is built from.

They are registered under the ``mildnet`` package so that a saved ``.keras`` file reloads with
``safe_mode=True``: no ``Lambda`` layer (whose Python bytecode safe mode refuses to run) is used anywhere.
"""

import keras
from keras import ops

# ImageNet channel means in BGR order, as used by the Caffe-trained VGG and SqueezeNet weights.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

PREPROCESS_MODES = ("caffe", "tf", "unit", "lite", "none")


@keras.saving.register_keras_serializable(package="mildnet")
class Preprocess(keras.layers.Layer):
    """Maps float RGB pixels in [0, 255] to the range a backbone was trained on.

    Modes:
        - ``"caffe"``: RGB -> BGR, then subtract the ImageNet mean (VGG, SqueezeNet).
        - ``"tf"``: scale to [-1, 1] (MobileNet).
        - ``"unit"``: scale to [0, 1] (small models trained from scratch).
        - ``"lite"``: ``(x - 127) / 128``, the reference normalisation of EfficientNet-Lite.
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
        if self.mode == "lite":
            return (x - 127.0) / 128.0
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


def foreground_weights(x, border=5, scale=30.0, floor=0.05):
    """Soft foreground map (B, H, W, 1) in [floor, 1] of float RGB pixels ``x`` (B, H, W, 3) in [0, 255].

    Why: catalogue photos are shot on a plain background (a white or grey sweep), which fills most of the
    frame: unweighted, it dominates both the colour histogram and the pooled CNN features, so a red bag and a
    red watch on white look alike and a white tee on white looks like nothing. The background's colour is the
    per-channel median of a ``border``-pixel frame; a pixel's weight rises with its RGB distance d to it as
    ``1 - exp(-d^2 / (2 scale^2))`` (``scale`` 30 on the 0-255 scale: a step of a few grey levels is still
    background, a pale garment on white is not), never below ``floor`` so that a product of the background's
    own colour still counts a little. On a busy background (a bed, a floor) the median is one of its colours
    and the map is close to uniform, i.e. the plain average.
    """
    b = border
    frame = ops.concatenate([
        ops.reshape(x[:, :b], (ops.shape(x)[0], -1, 3)),
        ops.reshape(x[:, -b:], (ops.shape(x)[0], -1, 3)),
        ops.reshape(x[:, b:-b, :b], (ops.shape(x)[0], -1, 3)),
        ops.reshape(x[:, b:-b, -b:], (ops.shape(x)[0], -1, 3)),
    ], axis=1)
    background = ops.median(frame, axis=1)[:, None, None, :]
    d2 = ops.sum(ops.square(x - background), axis=-1, keepdims=True)
    return floor + (1.0 - floor) * (1.0 - ops.exp(-d2 / (2.0 * scale**2)))


def _check_grid(grid, least):
    if not isinstance(grid, int) or grid < least:
        raise ValueError(f"grid must be an integer >= {least}, got {grid!r}")


def _check_foreground(border, scale, floor, grid):
    if not isinstance(border, int) or not 1 <= border < grid // 2:
        raise ValueError(f"border must be an integer in [1, {grid // 2 - 1}], got {border!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")


@keras.saving.register_keras_serializable(package="mildnet")
class ForegroundWeights(keras.layers.Layer):
    """The soft foreground map of :func:`foreground_weights` on a ``grid`` x ``grid`` area-resized copy of
    the image: (B, grid, grid, 1). Feeds :class:`WeightedAverage`, which pools a feature map with it."""

    def __init__(self, grid=64, border=5, scale=30.0, floor=0.05, **kwargs):
        super().__init__(**kwargs)
        _check_grid(grid, 8)
        _check_foreground(border, scale, floor, grid)
        self.grid, self.border, self.scale, self.floor = grid, border, float(scale), float(floor)

    def call(self, inputs):
        x = ops.image.resize(ops.cast(inputs, "float32"), (self.grid, self.grid), interpolation="area")
        return ops.cast(foreground_weights(x, self.border, self.scale, self.floor), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid, self.grid, 1)

    def get_config(self):
        return {**super().get_config(), "grid": self.grid, "border": self.border, "scale": self.scale,
                "floor": self.floor}


@keras.saving.register_keras_serializable(package="mildnet")
class WeightedAverage(keras.layers.Layer):
    """Global average of a feature map (B, H, W, C) weighted by a map (B, h, w, 1), area-resized to H x W:
    a GlobalAveragePooling2D that counts the product's cells and not the background's."""

    def call(self, inputs):
        features, weights = inputs
        size = ops.shape(features)[1:3]
        # Sums in float32: over a 40x40 map they overflow float16 under a mixed-precision policy.
        x = ops.cast(features, "float32")
        w = ops.image.resize(ops.cast(weights, "float32"), (size[0], size[1]), interpolation="area")
        total = ops.sum(w, axis=(1, 2))
        return ops.cast(ops.sum(x * w, axis=(1, 2)) / ops.maximum(total, 1e-6), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        features_shape = input_shape[0]
        return (features_shape[0], features_shape[-1])


def foreground_box(weights, floor=0.05, mass=0.02, margin=0.06, min_side=0.25):
    """Square crop boxes (B, 3): centre y, centre x and side, as fractions of the image, around the foreground of
    ``weights`` (B, g, g, 1), a :func:`foreground_weights` map.

    The box spans the rows and columns between the ``mass`` and ``1 - mass`` quantiles of the foreground weight
    above ``floor`` (quantiles, not the extreme foreground pixels: a speck or a shadow at the edge does not widen
    it), grown by ``margin`` on each side, made square (the longer side; the network sees a square image, so the
    product keeps its proportions), at least ``min_side`` (a tiny product is enlarged at most 1/min_side times) and
    shifted to lie inside the image. With no foreground at all it is the whole image.
    """
    w = ops.maximum(ops.cast(weights[..., 0], "float32") - floor, 0.0)
    g = ops.cast(ops.shape(w)[1], "float32")
    total = ops.sum(w, axis=(1, 2))

    def span(profile):
        cdf = ops.cumsum(profile, axis=1) / ops.maximum(ops.sum(profile, axis=1, keepdims=True), 1e-6)
        low = ops.sum(ops.cast(cdf < mass, "float32"), axis=1) / g
        high = (ops.sum(ops.cast(cdf < 1.0 - mass, "float32"), axis=1) + 1.0) / g
        return low, ops.minimum(high, 1.0)

    y0, y1 = span(ops.sum(w, axis=2))
    x0, x1 = span(ops.sum(w, axis=1))
    side = ops.maximum(y1 - y0, x1 - x0) + 2.0 * margin
    side = ops.where(total > 1e-3 * g * g, ops.clip(side, min_side, 1.0), 1.0)
    half = side / 2.0
    cy = ops.clip((y0 + y1) / 2.0, half, 1.0 - half)
    cx = ops.clip((x0 + x1) / 2.0, half, 1.0 - half)
    return ops.stack([cy, cx, side], axis=1)


@keras.saving.register_keras_serializable(package="mildnet")
class ForegroundCrop(keras.layers.Layer):
    """The image cropped to a square around its product (:func:`foreground_box` of the foreground map on a
    ``grid`` x ``grid`` copy) and resized back to the input size, bilinearly.

    Why: a studio shot shows a bag or a watch small on a white sweep, a user photo a garment filling the frame; the
    CNN's pooled features describe the whole frame, so the same kind of product looks different in the two. On a
    busy background the map is near uniform and the box is (nearly) the whole image: nothing changes.
    """

    def __init__(self, grid=64, border=5, scale=30.0, floor=0.05, mass=0.02, margin=0.06, min_side=0.25, **kwargs):
        super().__init__(**kwargs)
        _check_grid(grid, 8)
        _check_foreground(border, scale, floor, grid)
        if not 0.0 <= mass < 0.5:
            raise ValueError(f"mass must be in [0, 0.5), got {mass!r}")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin!r}")
        if not 0.0 < min_side <= 1.0:
            raise ValueError(f"min_side must be in (0, 1], got {min_side!r}")
        self.grid, self.border, self.scale, self.floor = grid, border, float(scale), float(floor)
        self.mass, self.margin, self.min_side = float(mass), float(margin), float(min_side)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        small = ops.image.resize(x, (self.grid, self.grid), interpolation="area")
        box = foreground_box(foreground_weights(small, self.border, self.scale, self.floor), self.floor,
                             self.mass, self.margin, self.min_side)
        height = ops.cast(ops.shape(x)[1], "float32")
        width = ops.cast(ops.shape(x)[2], "float32")
        cy, cx, side = box[:, 0], box[:, 1], box[:, 2]
        # Output pixel (col, row) samples input ((cx - side/2) W + (col + 0.5) side - 0.5, likewise for rows).
        zeros = ops.zeros_like(side)
        transform = ops.stack([side, zeros, (cx - side / 2.0) * width + 0.5 * side - 0.5,
                               zeros, side, (cy - side / 2.0) * height + 0.5 * side - 0.5, zeros, zeros], axis=1)
        out = ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="nearest")
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "grid": self.grid, "border": self.border, "scale": self.scale,
                "floor": self.floor, "mass": self.mass, "margin": self.margin, "min_side": self.min_side}


COLOUR_SPACES = ("rgb", "hsv")


@keras.saving.register_keras_serializable(package="mildnet")
class ColourHistogram(keras.layers.Layer):
    """Centre-weighted colour histogram of float pixels in [0, 255], square-rooted and L2-normalised
    (Hellinger), so a cosine between two histograms is their Bhattacharyya coefficient.

    Why it is in the model: ImageNet features are trained to ignore colour (a red and a blue shirt are
    both "jersey"), while shoppers judge "similar" by colour first. On real photos, adding this branch to
    SqueezeNet's features lifted type+colour triplet accuracy by 3-5 points (docs/training-recipe.md).
    Pixels are weighted by a Gaussian around the centre (``sigma`` as a fraction of the half-width)
    because product photos frame the product there. With ``foreground=True`` they are also weighted by
    :func:`foreground_weights`, so a studio sweep's white stops filling the histogram. The image is first
    shrunk to ``grid`` px: colour proportions barely change and the count stays cheap. It has no weights; a
    Dense layer after it learns which cells matter.

    ``space="rgb"``: a joint ``bins**3`` RGB grid. ``space="hsv"``: ``bins`` hues x 4 saturations x 4
    values for coloured pixels, plus ``bins`` grey levels for pixels whose hue is noise (saturation or
    value below 0.15): ``17 * bins`` cells (hue shared between the two nearest hue cells), closer to how
    people name colours (a navy and a royal blue share a hue; a dark and a light grey do not share a colour).
    """

    def __init__(self, bins=8, grid=64, sigma=0.5, space="rgb", foreground=False, border=5, scale=30.0,
                 floor=0.05, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(bins, int) or not 2 <= bins <= 16:
            raise ValueError(f"bins must be an integer in [2, 16], got {bins!r}")
        _check_grid(grid, 4)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        if space not in COLOUR_SPACES:
            raise ValueError(f"unknown colour space {space!r}; expected one of {COLOUR_SPACES}")
        if foreground:
            _check_foreground(border, scale, floor, grid)
        self.bins, self.grid, self.sigma, self.space = bins, grid, float(sigma), space
        self.foreground, self.border, self.scale, self.floor = bool(foreground), border, float(scale), float(floor)

    @property
    def cells(self):
        return self.bins**3 if self.space == "rgb" else 17 * self.bins

    def _cells(self, x):
        """Each pixel's cell(s): (cell, other cell, share of the other cell), (B, g, g) each.

        RGB pixels fall in one cell (share 0). A coloured pixel's weight in HSV is shared between the two hue
        cells whose centres it lies between, linearly: hard hue cells split one red between cells 0 and 7 (at
        359 and 1 degrees) and made the result hang on where the boundaries fell (soft: Luma recall@5 0.82 vs
        0.79 zero-shot, the same type + colour accuracy; docs/training-recipe.md)."""
        if self.space == "rgb":
            level = ops.clip(ops.floor(x * (self.bins / 256.0)), 0, self.bins - 1)
            cell = (level[..., 0] * self.bins + level[..., 1]) * self.bins + level[..., 2]
            return cell, cell, ops.zeros_like(cell)
        hsv = ops.image.rgb_to_hsv(x / 255.0)
        h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
        grey_sat, dark = 0.15, 0.15
        position = h * self.bins - 0.5  # hue cell i is centred on (i + 0.5) / bins
        below = ops.floor(position)
        share = position - below
        low, high = below % self.bins, (below + 1) % self.bins
        si = ops.clip(ops.floor((s - grey_sat) / (1 - grey_sat) * 4), 0, 3)
        vi = ops.clip(ops.floor((v - dark) / (1 - dark) * 4), 0, 3)
        grey = (s < grey_sat) | (v < dark)
        grey_cell = 16 * self.bins + ops.clip(ops.floor(v * self.bins), 0, self.bins - 1)
        first = ops.where(grey, grey_cell, (low * 4 + si) * 4 + vi)
        second = ops.where(grey, grey_cell, (high * 4 + si) * 4 + vi)
        return first, second, ops.where(grey, 0.0, share)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        x = ops.image.resize(x, (self.grid, self.grid), interpolation="area")
        first, second, share = self._cells(x)
        centre = (self.grid - 1) / 2.0
        coords = (ops.arange(self.grid, dtype="float32") - centre) / (self.grid / 2.0)
        r2 = coords[:, None] ** 2 + coords[None, :] ** 2
        weight = ops.reshape(ops.exp(-r2 / (2.0 * self.sigma**2)), (1, -1))
        pixels = self.grid * self.grid
        weight = ops.broadcast_to(weight, (ops.shape(x)[0], pixels))
        if self.foreground:
            mask = foreground_weights(x, self.border, self.scale, self.floor)
            weight = weight * ops.reshape(mask, (-1, pixels))
        # A weighted count per row, not a one-hot (B, 4096, 512) product: that tensor cost 80% of the whole
        # model's time (4.7 of 5.9 ms an image on CPU); the counts agree to 1e-7.
        share = ops.reshape(share, (-1, pixels))
        hist = ops.bincount(ops.cast(ops.reshape(first, (-1, pixels)), "int32"), weights=weight * (1.0 - share),
                            minlength=self.cells)
        if self.space != "rgb":
            hist = hist + ops.bincount(ops.cast(ops.reshape(second, (-1, pixels)), "int32"), weights=weight * share,
                                       minlength=self.cells)
        hist = ops.sqrt(hist)
        hist = hist * ops.rsqrt(ops.maximum(ops.sum(ops.square(hist), axis=-1, keepdims=True), 1e-12))
        return ops.cast(hist, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.cells)

    def get_config(self):
        config = {**super().get_config(), "bins": self.bins, "grid": self.grid, "sigma": self.sigma}
        # Only settings away from the defaults of the first version: a model saved before they existed keeps
        # its config, so its fingerprint, its calibration and its cached embeddings stay valid.
        if self.space != "rgb":
            config["space"] = self.space
        if self.foreground:
            config.update(foreground=True, border=self.border, scale=self.scale, floor=self.floor)
        return config
