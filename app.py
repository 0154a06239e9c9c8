"""MILDNet visual search: the Streamlit app (``streamlit run app.py``).

This file only sets the page frame and declares the pages (``mildnet.ui.navigation``); each page draws the
shared sidebar itself (``mildnet.ui.sidebar``), and all logic lives in ``mildnet``.
"""

import streamlit as st

from mildnet.ui import navigation

st.set_page_config(page_title="MILDNet visual search", page_icon="👕", layout="wide")
navigation.run()
