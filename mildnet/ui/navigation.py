"""The app's pages, declared once for ``app.py``'s ``st.navigation``."""

from __future__ import annotations

import streamlit as st

from mildnet.ui import home_page, layout

ENTRY_KEY = "mn_entrypoint_ran"


def home() -> None:
    layout.run_page(home_page.render)


def pages() -> list:
    return [
        st.Page(home, title="Home", icon=":material/home:", default=True),
        st.Page("pages/search.py", title="Search", icon=":material/image_search:"),
        st.Page("pages/triplets.py", title="Triplets", icon=":material/view_module:"),
        st.Page("pages/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
        st.Page("pages/add.py", title="Add a catalogue", icon=":material/add_photo_alternate:"),
    ]


def run() -> None:
    st.session_state[ENTRY_KEY] = True
    st.navigation(pages()).run()


def ensure_entrypoint() -> None:
    """Reruns through ``app.py`` when a page file was executed without it.

    A fresh server treats the ``pages/`` folder the old way (each file is a page run on its own) until a
    script calls ``st.navigation``; the first visitor of a deep link (``/search``) would get file-name page
    titles and no wide layout. Declaring the navigation here switches the server to ``app.py``'s
    navigation, and the rerun then runs the same page through it.
    """
    if st.session_state.get(ENTRY_KEY):
        return
    st.session_state[ENTRY_KEY] = True  # once per session, whatever happens below
    try:
        st.navigation(pages(), position="hidden")
    except Exception:  # noqa: BLE001 - a page run on its own (no app.py beside it) still renders
        return
    st.rerun()
