"""The app's navigation: ``app.py``'s ``st.navigation`` over Home and the page table (``pages_table``).

Page scripts call :func:`ensure_entrypoint` before ``layout.run_page``; the frame in ``layout`` knows no
page, so no page module imports this one back.
"""

from __future__ import annotations

import streamlit as st

from mildnet.ui import home_page, layout, owner
from mildnet.ui.pages_table import visible

ENTRY_KEY = "mn_entrypoint_ran"


def home() -> None:
    layout.run_page(home_page.render, hero=home_page.HERO)


def pages() -> list:
    """Home and the pages this visitor may open: a shopper's navigation has no owner pages, so their links
    (and deep links to them) lead nowhere."""
    return [st.Page(home, title="Home", icon=":material/home:", default=True)] + [
        st.Page(page.path, title=page.title, icon=page.icon) for page in visible(owner.is_owner())]


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
