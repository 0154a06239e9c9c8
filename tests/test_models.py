"""Tests of the model zoo: shapes, unit norms, exact parameter counts, weights and save/load."""

import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from mildnet.errors import ModelError
from mildnet.models import MODEL_NAMES, build_model, describe_model, load_model, save_model
from tests.redis_server import free_port


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _assert_unit_rows(emb, dim):
    assert emb.shape[1] == dim
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def _has_lambda(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.Lambda):
            return True
        if isinstance(layer, keras.Model) and _has_lambda(layer):
            return True
    return False


# --- tiny_cnn and save/load -------------------------------------------------------------------------


def test_tiny_cnn_outputs_unit_rows():
    model = build_model("tiny_cnn", input_size=32, embedding_dim=16)
    assert model.count_params() < 10_000
    _assert_unit_rows(model.predict(_images(), verbose=0), 16)
    assert not _has_lambda(model)


def test_save_load_roundtrip_is_identical(tmp_path):
    model = build_model("tiny_cnn", input_size=32)
    path = save_model(model, tmp_path / "sub" / "m.keras")
    loaded = load_model(path, expected_name="tiny_cnn")
    x = _images()
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["m.keras"]  # no temp file left


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a Keras model file"):
        load_model(bad)
    corrupt = tmp_path / "corrupt.keras"
    good = save_model(build_model("tiny_cnn", input_size=16), tmp_path / "good.keras")
    corrupt.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ModelError):
        load_model(corrupt)
    garbage = tmp_path / "garbage.keras"
    with zipfile.ZipFile(garbage, "w") as archive:
        archive.writestr("config.json", '{"class_name": "NoSuchLayer", "config": {}}')
    with pytest.raises(ModelError, match="could not load model"):
        load_model(garbage)
    with pytest.raises(ModelError, match="expected 'mildnet_squeezenet'"):
        load_model(good, expected_name="mildnet_squeezenet")


def test_load_model_rejects_non_embedding_model(tmp_path):
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path / "other.keras"
    other.save(path)
    with pytest.raises(ModelError, match="not an embedding model"):
        load_model(path)


def test_save_model_needs_keras_suffix(tmp_path):
    with pytest.raises(ModelError, match=".keras"):
        save_model(build_model("tiny_cnn", input_size=16), tmp_path / "m.h5")


def test_unknown_model_lists_names():
    with pytest.raises(ModelError, match="tiny_cnn"):
        build_model("resnet9000")
    with pytest.raises(ModelError, match="tiny_cnn"):
        describe_model("resnet9000")


def test_every_name_has_a_description():
    for name in MODEL_NAMES:
        assert describe_model(name)


def test_bad_sizes_raise():
    with pytest.raises(ModelError, match="input_size"):
        build_model("tiny_cnn", input_size=2)
    with pytest.raises(ModelError, match="embedding_dim"):
        build_model("tiny_cnn", input_size=16, embedding_dim=0)
    with pytest.raises(ModelError, match="embedding_dim"):
        build_model("tiny_cnn", input_size=16, embedding_dim="big")
    assert build_model("tiny_cnn", input_size=np.int64(16)).input.shape[1] == 16


# --- every model --------------------------------------------------------------------------------------

SMALL_MODELS = [name for name in MODEL_NAMES if name not in ("multiscale_vgg19", "mildnet_vgg16")]


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_model_outputs_unit_rows_at_small_size(name):
    model = build_model(name, input_size=32)
    assert model.name == name
    assert not _has_lambda(model)
    _assert_unit_rows(model.predict(_images(), verbose=0), model.output.shape[-1])


def test_multiscale_vgg19_exact_parameter_count():
    model = build_model("multiscale_vgg19", input_size=224, embedding_dim=4096, weights=None)
    assert model.count_params() == 68_308_224
    assert model.get_layer("shallow_concat").output.shape[-1] == 2 * 4 * 4 * 96
    assert not _has_lambda(model)
    _assert_unit_rows(model.predict(_images(1, 224), verbose=0), 4096)


def test_mildnet_vgg16_exact_parameter_count_and_frozen_layers():
    model = build_model("mildnet_vgg16", input_size=224, weights=None)
    assert model.count_params() == 21_927_744
    assert model.get_layer("multiscale_concat").output.shape[-1] == 64 + 128 + 256 + 512 + 512
    assert not model.get_layer("block3_conv2").trainable
    assert model.get_layer("block3_conv3").trainable
    assert not _has_lambda(model)
    _assert_unit_rows(model.predict(_images(1, 224), verbose=0), 2048)


def test_embedding_dim_is_honoured():
    model = build_model("mildnet_squeezenet", input_size=48, embedding_dim=64)
    _assert_unit_rows(model.predict(_images(size=48), verbose=0), 64)
    with pytest.raises(ModelError, match="512"):
        build_model("squeezenet_gap", input_size=48, embedding_dim=64)


def test_caffe_preprocessing_flips_to_bgr_and_subtracts_mean():
    from mildnet.models.layers import CAFFE_BGR_MEAN, Preprocess

    rgb = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")
    out = np.asarray(Preprocess("caffe")(rgb))
    np.testing.assert_allclose(out[0, 0, 0], np.array([30.0, 20.0, 10.0]) - CAFFE_BGR_MEAN, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(Preprocess("tf")(rgb * 0 + 255.0)), 1.0)


def test_squeezenet_save_load_roundtrip_is_identical(tmp_path):
    model = build_model("mildnet_squeezenet", input_size=48)
    loaded = load_model(save_model(model, tmp_path / "sq.keras"), expected_name="mildnet_squeezenet")
    x = _images(size=48)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)


# --- weights --------------------------------------------------------------------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared"
SQUEEZENET_H5 = SHARED / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.mark.shared
@pytest.mark.skipif(not SQUEEZENET_H5.is_file(), reason=f"shared SqueezeNet weights not found at {SQUEEZENET_H5}")
@pytest.mark.parametrize("name", ["mildnet_squeezenet", "squeezenet_gap"])
def test_squeezenet_loads_shared_keras2_weights(name):
    keras.utils.set_random_seed(0)
    random_model = build_model(name, input_size=48)
    keras.utils.set_random_seed(0)
    model = build_model(name, input_size=48, weights=str(SQUEEZENET_H5))
    with h5py.File(SQUEEZENET_H5, "r") as h5:
        for layer, h5_name in [("conv1", "conv1"), ("fire9_expand3x3", "fire9/expand3x3")]:
            group = h5[h5_name]
            kernel = next(group[w][()] for w in group.attrs["weight_names"] if b"kernel" in w)
            np.testing.assert_array_equal(model.get_layer(layer).kernel.numpy(), kernel)
            assert not np.allclose(random_model.get_layer(layer).kernel.numpy(), kernel)
    x = _images(size=48)
    assert not np.allclose(model.predict(x, verbose=0), random_model.predict(x, verbose=0))


def _closed_port_url():
    return f"http://127.0.0.1:{free_port()}/squeezenet.h5"  # nothing listens there once the socket is closed


def test_imagenet_offline_raises_and_names_local_path_option(tmp_path, monkeypatch):
    monkeypatch.setenv("MILDNET_WEIGHTS_URL_SQUEEZENET", _closed_port_url())
    monkeypatch.setenv("MILDNET_WEIGHTS_CACHE", str(tmp_path))
    monkeypatch.setenv("MILDNET_PRETRAINED", str(tmp_path / "no-shipped-runs"))  # no local copy of the weights
    with pytest.raises(ModelError, match=r"could not download ImageNet weights.*weights=PATH"):
        build_model("mildnet_squeezenet", input_size=32, weights="imagenet")


def test_bad_weights_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        build_model("mildnet_squeezenet", input_size=32, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ModelError, match="not found"):
        build_model("mildnet_vgg16", input_size=32, weights=str(tmp_path / "missing.h5"))
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not an HDF5"):
        build_model("mildnet_squeezenet", input_size=32, weights=str(text))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5.create_group("conv1")
    with pytest.raises(ModelError, match="not SqueezeNet v1.1"):
        build_model("mildnet_squeezenet", input_size=32, weights=str(other))
    with pytest.raises(ModelError, match="no pretrained"):
        build_model("tiny_cnn", input_size=32, weights="imagenet")


def test_keras_application_loads_local_weights_file(tmp_path):
    backbone = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(path)
    model = build_model("mildnet_mobilenet", input_size=32, weights=str(path))
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), backbone.get_layer("conv1").kernel.numpy())


def _reference_histogram(images: np.ndarray, bins: int, sigma: float) -> np.ndarray:
    """ColourHistogram written out in numpy for images already at the layer's grid size (its area resize is then
    the identity): centre-weighted counts per RGB cell, square-rooted, L2-normalised."""
    n, grid = images.shape[0], images.shape[1]
    level = np.clip(np.floor(images * (bins / 256.0)), 0, bins - 1).astype(np.int64)
    cell = (level[..., 0] * bins + level[..., 1]) * bins + level[..., 2]
    coords = (np.arange(grid) - (grid - 1) / 2.0) / (grid / 2.0)
    weight = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2.0 * sigma**2)).ravel()
    hist = np.stack([np.bincount(cell[i].ravel(), weights=weight, minlength=bins**3) for i in range(n)])
    hist = np.sqrt(hist)
    return hist / np.linalg.norm(hist, axis=1, keepdims=True)


@pytest.mark.parametrize("batch", [1, 5])
def test_colour_histogram_layer_matches_a_numpy_reference(batch):
    from mildnet.models.layers import ColourHistogram

    rng = np.random.default_rng(batch)
    # Few distinct colours, so cells hold many pixels and a miscounted weight would show.
    palette = rng.integers(0, 256, (6, 3))
    images = palette[rng.integers(0, 6, (batch, 16, 16))].astype(np.float32)
    out = np.asarray(ColourHistogram(bins=4, grid=16, sigma=0.5)(images))
    assert out.shape == (batch, 64)
    np.testing.assert_allclose(out, _reference_histogram(images, 4, 0.5), atol=1e-6)


def test_colour_histogram_of_a_solid_image_is_one_cell():
    from mildnet.models.layers import ColourHistogram

    red = np.zeros((1, 32, 32, 3), np.float32)
    red[..., 0] = 250.0
    out = np.asarray(ColourHistogram(bins=8, grid=16)(red))[0]
    assert np.argmax(out) == 7 * 64 and out.max() == pytest.approx(1.0) and np.sum(out > 0) == 1


def _studio_photo(product_rgb, background=(245, 245, 245), size=32):
    """A product square on a plain studio background."""
    image = np.empty((1, size, size, 3), np.float32)
    image[...] = background
    image[:, size // 3: 2 * size // 3, size // 3: 2 * size // 3] = product_rgb  # small, like a watch on white
    return image


def test_foreground_weights_are_low_on_the_background_and_high_on_the_product():
    from mildnet.models.layers import ForegroundWeights

    layer = ForegroundWeights(grid=32, border=3, scale=30.0, floor=0.05)
    w = np.asarray(layer(_studio_photo((200, 30, 30))))[0, ..., 0]
    assert w.shape == (32, 32)
    assert w[0, 0] == pytest.approx(0.05) and w[16, 16] == pytest.approx(1.0, abs=1e-3)


def test_foreground_crop_fills_the_frame_with_the_product_and_leaves_a_busy_photo_alone():
    from mildnet.models.layers import ForegroundCrop

    layer = ForegroundCrop(grid=32, border=3)
    out = np.asarray(layer(_studio_photo((200, 30, 30), size=96)))[0]
    assert out.shape == (96, 96, 3)
    red = np.all(np.abs(out - (200, 30, 30)) < 40, axis=-1)
    assert red.mean() > 0.4  # a ninth of the frame before
    busy = np.random.default_rng(0).uniform(0, 255, (1, 96, 96, 3)).astype(np.float32)
    assert np.allclose(np.asarray(layer(busy)), busy, atol=1.0)  # no plain background: the whole photo
    with pytest.raises(ValueError, match="min_side"):
        ForegroundCrop(min_side=0)


def test_foreground_histogram_describes_the_product_not_the_studio_sweep():
    """On white, two products of one colour share their histogram and a product of another colour does not;
    without the foreground weighting the sweep's white makes all three look alike."""
    from mildnet.models.layers import ColourHistogram

    red, red2, blue = _studio_photo((200, 30, 30)), _studio_photo((185, 25, 40)), _studio_photo((30, 40, 200))

    def cos(layer, a, b):
        return float(np.sum(np.asarray(layer(a)) * np.asarray(layer(b))))

    fg = ColourHistogram(space="hsv", foreground=True, grid=32, border=3)
    plain = ColourHistogram(space="rgb", grid=32)
    assert cos(fg, red, red2) > 0.95 and cos(fg, red, blue) < 0.2
    assert cos(plain, red, blue) > 0.5  # the white sweep alone makes them look alike


def test_hsv_histogram_puts_greys_in_grey_cells_and_has_17_bins_cells():
    from mildnet.models.layers import ColourHistogram

    layer = ColourHistogram(space="hsv", bins=8, grid=16)
    grey = np.full((1, 16, 16, 3), 128.0, np.float32)
    out = np.asarray(layer(grey))[0]
    assert out.shape == (136,) and np.argmax(out) == 16 * 8 + 4 and np.sum(out > 0) == 1


def test_weighted_average_pools_only_where_the_weights_are():
    from mildnet.models.layers import WeightedAverage

    features = np.zeros((1, 4, 4, 2), np.float32)
    features[0, :2, :, 0] = 1.0  # channel 0 lives in the top half
    features[0, 2:, :, 1] = 1.0  # channel 1 in the bottom half
    weights = np.zeros((1, 8, 8, 1), np.float32)
    weights[0, :4] = 1.0  # the top half (resized to 4x4 by area)
    out = np.asarray(WeightedAverage()([features, weights]))[0]
    np.testing.assert_allclose(out, [1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(space="lab"), dict(foreground=True, border=0), dict(foreground=True, scale=0),
                                    dict(foreground=True, floor=1.5)])
def test_colour_histogram_rejects_bad_settings(kwargs):
    from mildnet.models.layers import ColourHistogram

    with pytest.raises(ValueError):
        ColourHistogram(**kwargs)


def test_colour_histogram_config_of_the_first_version_is_unchanged():
    """Models saved before the HSV/foreground settings existed must keep their fingerprint (and so their
    calibration and cached embeddings): default settings add no keys to the config."""
    from mildnet.models.layers import ColourHistogram

    config = ColourHistogram(bins=8, grid=64, sigma=0.5).get_config()
    assert {"space", "foreground", "border", "scale", "floor"}.isdisjoint(config)
    rebuilt = ColourHistogram.from_config(ColourHistogram(space="hsv", foreground=True, scale=20.0).get_config())
    assert (rebuilt.space, rebuilt.foreground, rebuilt.scale) == ("hsv", True, 20.0)


# --- EfficientNet-Lite (converted ImageNet weights, docs/backbones.md) ---------------------------------------

@pytest.fixture(scope="module")
def lite0():
    return build_model("efficientnet_lite0_colour", input_size=64)


def _lite_arrays(model, seed=0):
    """A weights file's arrays for ``model``: every backbone variable under its key, random values."""
    from mildnet.models.efficientnet_lite import backbone_layers, weight_key

    rng = np.random.default_rng(seed)
    return {weight_key(layer, v): rng.uniform(0.5, 1.5, v.shape).astype("float32")
            for layer in backbone_layers(model) for v in layer.weights}


def test_efficientnet_lite_builds_the_reference_layout(lite0):
    from mildnet.models.efficientnet_lite import backbone_layers, block_names

    assert len(block_names("lite0")) == 16 and len(block_names("lite2")) == 21
    # Stem/head fixed at 32/1280, no squeeze-excite, ReLU6: the parameter count of the converted state dict
    # (bench/convert_efficientnet_lite.py: 3.41M values, BN moving statistics included, classifier excluded).
    assert sum(int(np.prod(v.shape)) for layer in backbone_layers(lite0) for v in layer.weights) == 3_413_024
    assert lite0.get_layer("features").output.shape[-1] == 24 + 40 + 112 + 1280 + 17 * 8
    assert lite0.get_layer("block2b_add") is not None and lite0.get_layer("head_relu").get_config()["max_value"] == 6
    assert not _has_lambda(lite0)
    _assert_unit_rows(lite0.predict(_images(size=64), verbose=0), 256)
    lite2 = build_model("efficientnet_lite2_colour", input_size=64)
    assert lite2.get_layer("features").output.shape[-1] == 24 + 48 + 120 + 1280 + 17 * 8


def test_efficientnet_lite_loader_maps_every_weight(lite0, tmp_path):
    from mildnet.models import efficientnet_lite

    arrays = _lite_arrays(lite0)
    np.savez(tmp_path / "w.npz", **arrays)
    model = build_model("efficientnet_lite0_colour", input_size=64, weights=str(tmp_path / "w.npz"))
    for layer in efficientnet_lite.backbone_layers(model):
        for v in layer.weights:
            np.testing.assert_array_equal(np.asarray(v), arrays[efficientnet_lite.weight_key(layer, v)])


@pytest.mark.parametrize("change", ["missing", "shape", "extra", "not npz"])
def test_efficientnet_lite_loader_refuses_a_wrong_file_with_one_line(lite0, tmp_path, change):
    from mildnet.models import efficientnet_lite

    arrays = _lite_arrays(lite0)
    path = tmp_path / "w.npz"
    if change == "missing":
        arrays.pop("block3a_dw_bn/moving_mean")
    elif change == "shape":
        arrays["head_conv/kernel"] = arrays["head_conv/kernel"][..., :10]
    elif change == "extra":
        arrays["block17a_dw_conv/kernel"] = np.zeros((3, 3, 4, 1), "float32")
    np.savez(path, **arrays)
    if change == "not npz":
        path.write_bytes(b"not a zip")
    before = [np.asarray(v).copy() for v in lite0.weights]
    with pytest.raises(ModelError) as caught:
        efficientnet_lite.load_weights(lite0, path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    assert all(np.array_equal(a, np.asarray(v)) for a, v in zip(before, lite0.weights))  # nothing half-loaded


def test_efficientnet_lite_imagenet_without_converted_file_names_the_converter(tmp_path, monkeypatch):
    monkeypatch.setenv("MILDNET_WEIGHTS_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="convert_efficientnet_lite.py"):
        build_model("efficientnet_lite0_colour", input_size=64, weights="imagenet")


def test_efficientnet_lite_saves_and_loads_in_safe_mode(lite0, tmp_path):
    from mildnet.models.layers import Preprocess

    loaded = load_model(save_model(lite0, tmp_path / "e.keras"), expected_name="efficientnet_lite0_colour")
    x = _images(size=64)
    np.testing.assert_allclose(lite0.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(Preprocess("lite")(np.full((1, 1, 1, 3), 255.0, "float32"))), 1.0)
