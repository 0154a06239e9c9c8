"""MILDNet / RankNet deep-ranking visual search for e-commerce images.

Core package: never imports streamlit (the UI helpers live in ``mildnet.ui``).
"""

__version__ = "0.1.0"
