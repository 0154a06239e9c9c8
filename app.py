"""Home page of the MILDNet visual-search app (the full app is built in mildnet/ui and pages/)."""

import streamlit as st

st.set_page_config(page_title="MILDNet visual search", page_icon="👕", layout="wide")
st.title("MILDNet visual search")
st.write(
    "Find visually similar products (colour, pattern, shape) from a photo. "
    "Use the pages in the sidebar to browse triplets, evaluate models and search."
)
