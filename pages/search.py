"""Search page (the body lives in mildnet/ui/search_page.py)."""

from mildnet.ui import layout, navigation, search_page

navigation.ensure_entrypoint()  # a deep link on a fresh server runs this file without app.py
layout.run_page(search_page.render, hero=search_page.HERO)
