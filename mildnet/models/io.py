"""Saving and loading whole models as self-contained ``.keras`` files."""

import os
import zipfile
from pathlib import Path

import keras

from mildnet.data.fetch import check_zip_sizes
from mildnet.errors import DataError, ModelError

# Importing the layers registers them, so load_model can rebuild any zoo model in safe mode.
from mildnet.models import layers as _layers  # noqa: F401

# Keras reads a model's weights member into memory: a small file declaring gigabytes would exhaust it. Our
# models are 3-30 MB; 2 GB leaves room for the largest backbones a shop would bring.
MAX_MODEL_BYTES = 2 << 30


def save_model(model: keras.Model, path) -> Path:
    """Writes ``model`` to ``path`` (must end in ``.keras``) atomically.

    The file is written next to its destination and renamed into place, so a crash or a full disk
    never leaves a half-written model where a previous good one was.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"model file must end in .keras, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelError(f"could not write model to {path}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_model(path, expected_name: str | None = None) -> keras.Model:
    """Loads a ``.keras`` embedding model saved by :func:`save_model` (safe mode, not compiled).

    ``expected_name`` (a zoo name such as ``"mildnet_squeezenet"``) rejects a file holding another
    architecture, e.g. when resuming training from the wrong checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a Keras model file (.keras zip archive); "
            "weights-only files (.h5, .weights.h5) are loaded with build_model(name, weights=PATH)"
        )
    try:
        check_zip_sizes(path, MAX_MODEL_BYTES, what="load")
    except DataError as exc:
        raise ModelError(str(exc)) from None
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types (ValueError, KeyError, TypeError...) on bad files
        raise ModelError(f"could not load model from {path}: {_first_line(exc)}") from exc
    _check_embedding_model(model, path)
    if expected_name is not None and model.name != expected_name:
        raise ModelError(f"{path} holds model {model.name!r}, expected {expected_name!r}")
    return model


def _check_embedding_model(model, path) -> None:
    """Rejects Keras files that load but are not image -> embedding models."""
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{path} is not an embedding model (expected one image input and one output)")
    in_shape = tuple(model.inputs[0].shape)
    out_shape = tuple(model.outputs[0].shape)
    if len(in_shape) != 4 or in_shape[-1] != 3 or len(out_shape) != 2:
        raise ModelError(
            f"{path} is not an embedding model: input shape {in_shape}, output shape {out_shape} "
            "(expected (batch, size, size, 3) -> (batch, dim))"
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
