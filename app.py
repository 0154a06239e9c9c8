"""MILDNet visual search: the Streamlit app (``streamlit run app.py``).

This file only declares the pages; each page draws the shared sidebar itself (``mildnet.ui.sidebar``), and
all logic lives in ``mildnet`` (UI helpers in ``mildnet/ui``).
"""

import streamlit as st

from mildnet.ui import home_page, layout

st.set_page_config(page_title="MILDNet visual search", page_icon="👕", layout="wide")


def home():
    layout.run_page(home_page.render)


navigation = st.navigation([
    st.Page(home, title="Home", icon=":material/home:", default=True),
    st.Page("pages/search.py", title="Search", icon=":material/image_search:"),
    st.Page("pages/triplets.py", title="Triplets", icon=":material/view_module:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
])
navigation.run()
