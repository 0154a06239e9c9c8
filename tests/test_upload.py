"""Search page upload path: one decode per upload, the same embedding as the catalog's decoder gives."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest
from PIL import Image

from mildnet.errors import ImageError


@pytest.fixture(scope="module")
def bundle():
    from mildnet.models import build_model
    from mildnet.search.model import LoadedModel

    return LoadedModel.from_keras(build_model("tiny_cnn", input_size=32, weights=None), {"image_size": 32})


def _photo(fmt: str, size=(90, 61)) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


# The 480x360 JPEG decodes at 1/8 scale for the 32 px model (draft mode): the case that used to give the
# upload other pixels than the catalogue (a full decode, then a resize), so a catalogue photo scored ~0.999.
@pytest.mark.parametrize("fmt,size", [("JPEG", (90, 61)), ("JPEG", (480, 360)), ("PNG", (700, 900)),
                                      ("PNG", (32, 32))])
def test_upload_is_decoded_once_and_embeds_like_the_catalog(bundle, monkeypatch, fmt, size):
    import mildnet.data.images as images
    from mildnet.embeddings import embed_image
    from mildnet.ui.search_page import THUMB_PX

    data = _photo(fmt, size)
    want = embed_image(bundle.model, data, 32)  # the catalog's path: load_image(data, 32)
    opened = []
    real = images._open
    monkeypatch.setattr(images, "_open", lambda source: opened.append(1) or real(source))
    vector, thumb = bundle.embed_with_preview(data, THUMB_PX)
    assert len(opened) == 1  # one decode serves the thumbnail and the model input
    np.testing.assert_array_equal(vector, want)
    # The thumbnail is as sharp as that one decode: full size, or for a large JPEG the reduced-scale decode
    # (at least the model's 32 px a side) that the model input needs.
    decoded = size if fmt == "PNG" or min(size) < 64 else (size[0] // 8, size[1] // 8)
    assert max(thumb.shape[:2]) == min(THUMB_PX, max(decoded)) and thumb.dtype == np.uint8


def test_bad_upload_is_an_image_error(bundle):
    with pytest.raises(ImageError):
        bundle.embed_with_preview(b"not an image", 64)


def test_an_upload_is_embedded_again_when_the_runs_weights_change(bundle, monkeypatch):
    import streamlit as st

    from mildnet.models import build_model
    from mildnet.search.model import LoadedModel
    from mildnet.ui import search_page

    monkeypatch.setattr(st, "session_state", {})  # the page's per-session cache, outside a script run
    photo = _photo("JPEG")
    uploaded = types.SimpleNamespace(file_id="f1", name="f1.jpg", size=len(photo), getvalue=lambda: photo)
    first = bundle
    vector, _ = search_page._upload_query(uploaded, first, "runs/a")
    assert search_page._upload_query(uploaded, first, "runs/a")[0] is vector  # a rerun reuses it
    # The same run folder with new weights (a run still training, or resumed): the query follows the model.
    retrained = LoadedModel.from_keras(build_model("tiny_cnn", input_size=32, weights=None), {"image_size": 32})
    assert retrained.fingerprint != first.fingerprint
    again, _ = search_page._upload_query(uploaded, retrained, "runs/a")
    assert again is not vector and not np.allclose(again, vector)
