"""The app keeps its cached Keras models' session across Streamlit reruns (see layout.keep_keras_session)."""

from __future__ import annotations

import keras
from streamlit.runtime.scriptrunner import script_runner

import mildnet.ui.layout as layout


def test_streamlit_no_longer_clears_the_keras_session_after_a_run(monkeypatch):
    calls = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: calls.append(a))
    layout.keep_keras_session()  # idempotent: a second call must not wrap or undo the first
    script_runner._clean_problem_modules()
    assert calls == []
    assert script_runner._clean_problem_modules.keeps_keras_session
