"""Triplets page (the body lives in mildnet/ui/triplets_page.py)."""

from mildnet.ui import layout, navigation, triplets_page

navigation.ensure_entrypoint()  # a deep link on a fresh server runs this file without app.py
layout.run_page(triplets_page.render, hero=triplets_page.HERO)
