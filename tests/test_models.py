"""Tests of the model zoo: shapes, unit norms, exact parameter counts, weights and save/load."""

import numpy as np
import pytest

import keras

from mildnet.errors import ModelError
from mildnet.models import MODEL_NAMES, build_model, describe_model, load_model, save_model


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
