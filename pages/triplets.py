"""Triplets page (the body lives in mildnet/ui/triplets_page.py)."""

from mildnet.ui import layout, triplets_page

layout.run_page(triplets_page.render)
