"""Streamlit helpers shared by ``app.py`` and ``pages/``: the only place that imports streamlit."""
